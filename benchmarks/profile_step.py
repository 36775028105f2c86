"""Where the training step's time goes: a jax.profiler trace of the compiled step, summarised.

Usage (from the repository root):

    .venv/bin/python benchmarks/profile_step.py --model groupvit_s --batch 16 --dtype float32
    .venv/bin/python benchmarks/profile_step.py --model tiny --batch 8 --top 15 --trace-dir
    /tmp/trace

Builds the same step as ``benchmarks/train_step.py`` (the trainer's ``make_train_step`` on one
device, compiled ahead of time), runs one warm-up step, then ``--steps`` steps under
``jax.profiler.trace(create_perfetto_trace=True)``. The trace (TensorBoard / Perfetto readable)
stays in
``--trace-dir``. XLA:CPU records one event per executed kernel (a fusion, a matmul, a copy); each is
attributed to the model code that produced it through the ``op_name`` metadata of the compiled HLO
(layer indices folded, forward vs backward from JAX's ``transpose(jvp(...))`` prefix), and printed
as:

* kernel kinds: total time per kind (``ynn_fusion`` = matmuls with their fused elementwise
  producers,
  ``copy_*`` / ``transpose_*`` = layout changes, ``wrapped_broadcast`` = materialised broadcasts,
  ...);
* top entries: total time per (forward/backward, kind, model op), summed over layers.

Times are kernel times per step summed over the threads that launch kernels; a matmul kernel also
uses the pool's other threads, so shares (not sums) are what compare with the step's wall time,
which is printed too.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import re
import sys
import tempfile
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / 'benchmarks'))

import train_step as bench  # noqa: E402  (the benchmark's step builder and random batch)

# Events of the runtime itself rather than of a kernel.
_RUNTIME = re.compile(r'^\$|Thunk|Slinky|Pjit|PjRt|CreateOutputs|ExecuteHelper|ParseArguments')


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument('--model', choices=bench.MODELS, default='groupvit_s')
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--dtype', choices=bench.DTYPES, default='float32')
  p.add_argument('--multi-label', action='store_true')
  p.add_argument('--steps', type=int, default=2, help='profiled steps (after one warm-up step)')
  p.add_argument('--top', type=int, default=25, help='rows of the top-entries table')
  p.add_argument('--trace-dir', default=None, help='where the trace is kept (default: a temp dir)')
  p.add_argument('--seed', type=int, default=0)
  return p.parse_args(argv)


def hlo_op_names(hlo_text: str) -> dict[str, str]:
  """Instruction name -> the op_name metadata of the compiled HLO module's instructions."""
  pattern = re.compile(r'^\s*(?:ROOT )?%([\w.\-]+) = .*?op_name="([^"]*)"', re.M)
  return {m.group(1): m.group(2) for m in pattern.finditer(hlo_text)}


def kernel_key(kernel: str, op_names: dict[str, str]) -> tuple[str, str, str]:
  """(fwd|bwd, kernel kind, model op with layer indices folded) of one kernel event."""
  op = op_names.get(kernel, '?')
  direction = 'bwd' if 'transpose(jvp(' in op else 'fwd'
  op = re.sub(r'^jit\([^)]*\)/', '', op)
  op = re.sub(r'transpose\(|jvp\(|\)', '', op)
  op = re.sub(r'_\d+(?=/|$)', '_N', op)
  return direction, re.sub(r'\.\d+$', '', kernel), op


def kernel_events(trace_dir: pathlib.Path) -> list[dict]:
  """Complete ('X') kernel events of the newest perfetto trace under `trace_dir`."""
  traces = sorted(trace_dir.glob('**/perfetto_trace.json.gz'), key=lambda p: p.stat().st_mtime)
  if not traces:
    raise SystemExit(f'no perfetto_trace.json.gz under {trace_dir}')
  with gzip.open(traces[-1]) as f:
    events = json.load(f)['traceEvents']
  return [e for e in events if e.get('ph') == 'X' and not _RUNTIME.search(e['name'])]


def summarise(events: list[dict], op_names: dict[str, str], steps: int):
  """Per-step milliseconds by kernel kind and by (direction, kind, op), largest first."""
  by_kind, by_op = collections.Counter(), collections.Counter()
  counts = collections.Counter()
  for e in events:
    key = kernel_key(e['name'], op_names)
    ms = e.get('dur', 0) / 1e3 / steps
    by_kind[key[1]] += ms
    by_op[key] += ms
    counts[key] += 1
  return by_kind.most_common(), [(k, v, counts[k] // steps) for k, v in by_op.most_common()]


def main(argv=None) -> int:
  args = parse_args(argv)
  import jax

  from groupvit_jax import config_lib

  config = bench.recipe(args.model, args.batch, args.dtype, args.multi_label)
  model_cfg = config_lib.build_model_config(config)
  batch = bench.host_batch(
    args.batch,
    model_cfg.image.image_size,
    model_cfg.text.context_length,
    int(config.data.text.num_prompts),
    args.multi_label,
    args.seed,
  )
  side = bench.JaxSide(config, batch, args.seed)
  side.run(1)
  wall = side.run(args.steps) / args.steps
  trace_dir = pathlib.Path(args.trace_dir or tempfile.mkdtemp(prefix='groupvit_profile_'))
  with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
    side.run(args.steps)
  by_kind, by_op = summarise(
    kernel_events(trace_dir), hlo_op_names(side.compiled.as_text()), args.steps
  )
  total = sum(v for _, v in by_kind)
  command = ' '.join(
    ['.venv/bin/python', 'benchmarks/profile_step.py'] + list(argv or sys.argv[1:])
  )
  print(f'command: `{command}`')
  print(
    f'{time.strftime("%Y-%m-%d")}; jax {jax.__version__}; {args.model}, batch {args.batch}, '
    f'{args.dtype}; '
    f'step wall time {wall * 1e3:.0f} ms (unprofiled), kernel time {total:.0f} ms/step; '
    f'trace: {trace_dir}'
  )
  print('\n| kernel kind | ms/step | share |\n|---|---:|---:|')
  for kind, ms in by_kind[:12]:
    print(f'| {kind} | {ms:.1f} | {100 * ms / total:.1f}% |')
  print(
    '\n| pass | kernel kind | model op (layers folded) | kernels/step | ms/step | share |\n'
    '|---|---|---|---:|---:|---:|'
  )
  for (direction, kind, op), ms, n in by_op[: args.top]:
    print(f'| {direction} | {kind} | `{op}` | {n} | {ms:.1f} | {100 * ms / total:.1f}% |')
  return 0


if __name__ == '__main__':
  sys.exit(main())
