"""Per-device memory and communication of the global-negative contrastive losses vs the global
batch.

Usage (from the repository root; fakes the devices itself unless XLA_FLAGS already sets a count):

    .venv/bin/python benchmarks/loss_scaling.py
    .venv/bin/python benchmarks/loss_scaling.py --devices 8 --batch 256 1024 4096 16384 --prompts 0
    3

For each loss formulation of ``groupvit_jax.losses`` (``global``: written on global arrays, the
compiler partitions it; ``shard_map``: local rows against all-gathered keys), with and without the
multi-label loss (K prompts per image), and each global batch N, this compiles the loss's value and
gradient with respect to the embeddings ``[N, D]`` (and prompts ``[N, K, D]``), sharded over the
batch on a ``--devices``-device mesh, and reads from the compiled SPMD program (one device's
program):

* ``temp MiB``: XLA's ``memory_analysis().temp_size_in_bytes`` (scratch: logits, softmaxes, their
  gradients), per device;
* ``collectives``: the collectives in the compiled HLO with their per-device result sizes, and
  ``comm MiB``, the sum of those result sizes, i.e. the bytes each device receives or reduces.

Nothing runs: these are properties of the compiled program, so fake CPU devices give the numbers a
pod slice's compiler would plan for the same mesh (up to backend-specific fusion and layouts).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import time


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument('--devices', type=int, default=8)
  p.add_argument('--batch', type=int, nargs='+', default=[256, 1024, 4096, 16384])
  p.add_argument(
    '--prompts', type=int, nargs='+', default=[0, 3], help='K; 0 = no multi-label loss'
  )
  p.add_argument('--dim', type=int, default=256, help='embedding size D (GroupViT: 256)')
  p.add_argument(
    '--formulation', nargs='+', choices=('global', 'shard_map'), default=['global', 'shard_map']
  )
  return p.parse_args(argv)


_BYTES = {
  'f32': 4,
  'bf16': 2,
  'f16': 2,
  's32': 4,
  'u32': 4,
  'pred': 1,
  's8': 1,
  'u8': 1,
  'f64': 8,
  's64': 8,
}
_COLLECTIVE = re.compile(
  r'= (.*?) (all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)'
  r'(?:-start)?\('
)


def collectives(hlo_text: str) -> list[tuple[str, int]]:
  """(op, per-device result bytes) of every collective in a compiled HLO module."""
  out = []
  for line in hlo_text.splitlines():
    m = _COLLECTIVE.search(line)
    if not m:
      continue
    size = 0
    for dtype, dims in re.findall(r'(\w+)\[([\d,]*)\]', m.group(1)):
      n = 1
      for d in filter(None, dims.split(',')):
        n *= int(d)
      size += n * _BYTES.get(dtype, 4)
    out.append((m.group(2), size))
  return out


def measure(formulation: str, n: int, k: int, dim: int, mesh) -> dict:
  """Compiles value-and-grad of the loss for one configuration; returns its per-device figures."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from groupvit_jax import losses

  def loss(img, txt, prm):
    scale = jnp.float32(100.0)
    prompts = prm if k else None
    if formulation == 'global':
      out = losses.contrastive_losses(img, txt, scale, prompts, scale if k else None)
    else:
      out = losses.sharded_contrastive_losses(
        mesh, ('data',), img, txt, scale, prompts, scale if k else None
      )
    return out['loss']

  rows = NamedSharding(mesh, P('data'))
  shapes = (
    jax.ShapeDtypeStruct((n, dim), jnp.float32, sharding=rows),
    jax.ShapeDtypeStruct((n, dim), jnp.float32, sharding=rows),
    jax.ShapeDtypeStruct((n, max(k, 1), dim), jnp.float32, sharding=rows),
  )
  t = time.perf_counter()
  compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(*shapes).compile()
  compile_s = time.perf_counter() - t
  mem = compiled.memory_analysis()
  comms = collectives(compiled.as_text())
  kinds = collections.Counter(op for op, _ in comms)
  return {
    'formulation': formulation,
    'batch': n,
    'prompts': k,
    'per_device_rows': n // mesh.size,
    'temp_mib': mem.temp_size_in_bytes / 2**20 if mem is not None else float('nan'),
    'comm_mib': sum(size for _, size in comms) / 2**20,
    'collectives': ', '.join(f'{v} {op}' for op, v in sorted(kinds.items())) or 'none',
    'compile_s': compile_s,
  }


def main(argv=None) -> int:
  args = parse_args(argv)
  if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = (
      os.environ.get('XLA_FLAGS', '') + f' --xla_force_host_platform_device_count={args.devices}'
    ).strip()
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import jax
  import numpy as np
  from jax.sharding import Mesh

  devices = jax.devices()[: args.devices]
  if len(devices) < args.devices:
    raise SystemExit(
      f'only {len(devices)} devices; set XLA_FLAGS=--xla_force_host_platform_device_count='
      f'{args.devices}'
    )
  bad = [n for n in args.batch if n % args.devices]
  if bad:
    raise SystemExit(f'global batches {bad} do not split over {args.devices} devices')
  mesh = Mesh(np.array(devices), ('data',))
  print(
    'command: `'
    + ' '.join(['.venv/bin/python', 'benchmarks/loss_scaling.py'] + list(argv or sys.argv[1:]))
    + '`'
  )
  print(
    f'{time.strftime("%Y-%m-%d")}; jax {jax.__version__}; {args.devices} {devices[0].platform} '
    'devices; '
    f'D = {args.dim}; value and gradient of the loss w.r.t. the embeddings; per device\n'
  )
  print(
    '| formulation | K | global batch | rows/device | temp MiB | comm MiB | collectives '
    '| compile s |\n'
    '|---|---:|---:|---:|---:|---:|---|---:|'
  )
  for formulation in args.formulation:
    for k in args.prompts:
      for n in args.batch:
        r = measure(formulation, n, k, args.dim, mesh)
        print(
          f'| {formulation} | {k} | {n} | {r["per_device_rows"]} | {r["temp_mib"]:.1f} | '
          f'{r["comm_mib"]:.2f} | {r["collectives"]} | {r["compile_s"]:.1f} |',
          flush=True,
        )
  return 0


if __name__ == '__main__':
  sys.exit(main())
