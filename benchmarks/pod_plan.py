"""Pod-scale memory and communication plan of the GroupViT training step, from compiled programs.

Usage (from the repository root; nothing runs on any device, every number is read from programs
compiled for fake CPU devices):

    .venv/bin/python benchmarks/pod_plan.py                 # the default plan, markdown tables
    .venv/bin/python benchmarks/pod_plan.py --quick         # 64 and 256 devices at batch 4096 only
    .venv/bin/python benchmarks/pod_plan.py --full          # + more remat, hybrid meshes, bf16
    .venv/bin/python benchmarks/pod_plan.py --json          # one JSON object per row
    .venv/bin/python benchmarks/pod_plan.py --model tiny --devices 8 --batch 16 --no-losses

What is compiled. The training step of ``groupvit_jax.train_step.make_train_step`` (forward, the
image-text and multi-label losses, backward, global-norm clipping, AdamW), built as
``groupvit_jax/main.py`` builds it: ``config_lib.trainer_defaults()`` with ``model`` =
``GroupViTConfig()`` (the released GroupViT-S, float32 compute unless a row says bfloat16, K = 3
prompts), the state's shardings from ``config.partition_rules`` (the default ``(('.*', 'fsdp'),)``:
every tensor sharded on its largest dimension divisible by the ``fsdp`` axis, replicated when the
axis has size 1), the batch split over every mesh axis, abstract ``jax.ShapeDtypeStruct`` inputs,
``.lower(...).compile(compiler_options=xla_cpu.compiler_options(model) + opt level 0)``. LLVM's
optimisation level changes neither the HLO nor the buffer assignment (checked: identical HLO text
at 64 devices), only the machine code, and saves about a quarter of the compile time.

Meshes (``config.mesh``; the core supports all three, no new partition rules are needed):

* ``dp``: ``(('data', -1), ('fsdp', 1))``: pure data parallelism, state replicated;
* ``fsdp``: ``(('data', 1), ('fsdp', -1))``: state fully sharded over all devices (ZeRO-3 style);
* ``hybrid``: ``(('data', -1), ('fsdp', 8))``: state sharded within groups of 8 devices
  (``--full`` only).

The device count is fixed per process (``--xla_force_host_platform_device_count``), so each count
runs in its own subprocess (``--worker``), which prints JSON rows to the parent.

Columns, per device (one device's SPMD program):

* ``params`` / ``opt state``: bytes of that device's shards of the parameters and of the AdamW
  state (``mu``, ``nu``), from the state's shardings;
* ``args`` / ``temp`` / ``total``: ``compiled.memory_analysis()``: ``argument_size`` (state +
  batch), ``temp_size`` (activations kept for the backward pass, gradients, scratch) and
  ``total = argument + output - alias + temp`` (the state is donated, so its outputs alias its
  inputs): the device memory the step needs, up to the backend's fusion and layout choices;
* collectives: every all-reduce, all-gather, reduce-scatter, all-to-all and collective-permute of
  the compiled HLO, with its operand bytes (from the operands' shapes) times how often it runs
  (while loops with a known trip count multiply), and ``wire``: the bytes one device sends per step
  under a ring schedule on a group of n devices: all-reduce 2 (n-1)/n x operand, all-gather
  (n-1)/n x result, reduce-scatter and all-to-all (n-1)/n x operand, collective-permute the operand.

The global-negative losses alone (``--losses``, on by default): value and gradient of
``losses.contrastive_losses`` (``global``) and ``losses.sharded_contrastive_losses``
(``shard_map``) w.r.t. the embeddings ``[N, 256]`` (and prompts ``[N, 3, 256]``), batch sharded
over all devices, for growing N.

Caveat: this is XLA:CPU's SPMD partitioner and buffer assignment. TPU and GPU compilers partition
the same way but fuse differently (their temp sizes are usually smaller, bfloat16 keeps activations
at 2 bytes), and they turn "all-reduce then keep my slice" into reduce-scatter, which XLA:CPU does
not: the FSDP rows here all-reduce whole gradients.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import json
import math
import os
import pathlib
import platform
import re
import shlex
import subprocess
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
MIB = 2**20
GIB = 2**30
COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all', 'collective-permute')
# Accelerators the plan is read against: usable memory per chip (GiB).
TARGETS = {'v5e (16 GiB)': 16, 'H100 (80 GiB)': 80}


# --------------------------------------------------------------------------------------------------
# HLO text -> collectives
# --------------------------------------------------------------------------------------------------

_BYTES = {
  'pred': 1,
  's4': 0.5,
  'u4': 0.5,
  's8': 1,
  'u8': 1,
  's16': 2,
  'u16': 2,
  'f16': 2,
  'bf16': 2,
  's32': 4,
  'u32': 4,
  'f32': 4,
  's64': 8,
  'u64': 8,
  'f64': 8,
  'c64': 8,
  'c128': 16,
}
_SHAPE = re.compile(r'\b([a-z]+[0-9]*(?:e[0-9]m[0-9]\w*)?)\[([\d,]*)\]')
_INSTR = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([a-z][\w\-]*)\((.*)$')
_COMP = re.compile(r'^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$')
_OP = re.compile(r'^(' + '|'.join(COLLECTIVES) + r')(-start)?$')


def shape_bytes(type_text: str) -> int:
  """Bytes of an HLO type, e.g. 'f32[4,16]{1,0}' -> 256; tuples are summed; token/opaque: 0."""
  total = 0.0
  for dtype, dims in _SHAPE.findall(type_text):
    size = _BYTES.get(dtype, 1 if dtype.startswith('f8') else 0)
    n = 1
    for d in filter(None, dims.split(',')):
      n *= int(d)
    total += n * size
  return int(total)


def _split_args(text: str) -> tuple[str, str]:
  """'a, b), attrs' -> ('a, b', 'attrs'): the operand list up to the matching parenthesis."""
  depth = 0
  for i, ch in enumerate(text):
    if ch in '([{':
      depth += 1
    elif ch in ')]}':
      if depth == 0:
        return text[:i], text[i + 1 :]
      depth -= 1
  return text, ''


def _top_level(text: str) -> list[str]:
  items, depth, start = [], 0, 0
  for i, ch in enumerate(text):
    if ch in '([{':
      depth += 1
    elif ch in ')]}':
      depth -= 1
    elif ch == ',' and depth == 0:
      items.append(text[start:i])
      start = i + 1
  items.append(text[start:])
  return [s.strip() for s in items if s.strip()]


def group_size(attrs: str, num_devices: int) -> int:
  """Devices per replica group from an instruction's attributes (every HLO spelling):
  ``replica_groups={{0,1},{2,3}}``, ``replica_groups=[2,4]<=[8]``,
  ``replica_groups=mesh['x'=4,'y'=2] {'x'}`` or ``{}`` (all ``num_devices``)."""
  m = re.search(r'replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}', attrs)
  if m:
    sizes = {k: int(v) for k, v in re.findall(r"'([^']+)'=(\d+)", m.group(1))}
    axes = re.findall(r"'([^']+)'", m.group(2))
    return int(math.prod(sizes[a] for a in axes)) if axes else num_devices
  m = re.search(r'replica_groups=\[([\d,]+)\]<=', attrs)
  if m:
    return int(m.group(1).split(',')[-1])
  m = re.search(r'replica_groups=\{\{([\d,\s]*)\}', attrs)
  if m:
    return len([x for x in m.group(1).split(',') if x.strip()])
  return num_devices


def wire_bytes(op: str, operand: int, result: int, n: int) -> float:
  """Bytes one device sends for one collective under a ring schedule on n devices."""
  if op == 'collective-permute':
    return float(operand)
  if n <= 1:
    return 0.0
  f = (n - 1) / n
  if op == 'all-reduce':
    return 2 * f * operand
  if op == 'all-gather':
    return f * result
  return f * operand  # reduce-scatter, all-to-all


@dataclasses.dataclass
class Collective:
  """One collective instruction of a compiled HLO module.

  op: 'all-reduce', ...; runs: executions per step (trip counts of enclosing while loops);
  operand_bytes / result_bytes: per execution, per device; group: devices per replica group.
  """

  op: str
  name: str
  computation: str
  runs: int
  operand_bytes: int
  result_bytes: int
  group: int

  @property
  def wire_bytes(self) -> float:
    return self.runs * wire_bytes(self.op, self.operand_bytes, self.result_bytes, self.group)


def collectives(hlo_text: str, num_devices: int) -> list[Collective]:
  """Every collective of an HLO module's text (``compiled.as_text()``), with per-device sizes.

  Operand sizes come from the operands' shapes: printed inline by older XLA versions, else looked
  up by name. Async pairs (``*-start`` / ``*-done``) count once, with the ``-done`` shape as the
  result. A collective inside a while body runs ``known_trip_count`` times per enclosing loop
  (1 when the count is unknown); one inside a conditional branch counts as if it ran.
  """
  types: dict[str, str] = {}
  comp_of: dict[str, str] = {}
  calls: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
  found = []  # (op, name, computation, operands, result_type, attrs)
  done_type: dict[str, str] = {}
  entry, current = None, None
  for line in hlo_text.splitlines():
    m = _COMP.match(line)
    if m and not line.startswith(' '):
      current = m.group(2)
      if m.group(1):
        entry = current
      continue
    m = _INSTR.match(line)
    if not m or current is None:
      continue
    name, rtype, opcode, rest = m.groups()
    types[name] = rtype
    comp_of[name] = current
    args, attrs = _split_args(rest)
    trip = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', attrs)
    for key in ('body', 'condition', 'to_apply', 'calls'):
      for callee in re.findall(key + r'=%?([\w.\-]+)', attrs):
        runs = int(trip.group(1)) if (trip and key == 'body') else 1
        calls[current].append((callee, runs))
    for group in re.findall(r'branch_computations=\{([^}]*)\}', attrs):
      for callee in re.findall(r'%?([\w.\-]+)', group):
        calls[current].append((callee, 1))
    for key in ('true_computation', 'false_computation'):
      for callee in re.findall(key + r'=%?([\w.\-]+)', attrs):
        calls[current].append((callee, 1))
    if opcode.endswith('-done') and opcode[: -len('-done')] in COLLECTIVES:
      for operand in _top_level(args):
        done_type[operand.split()[-1].lstrip('%')] = rtype
      continue
    op = _OP.match(opcode)
    if op:
      found.append((op.group(1), name, current, args, rtype, attrs))
  # Executions per step of every computation reachable from ENTRY (callees are printed first).
  runs = {entry: 1} if entry else {}
  changed = True
  while changed:
    changed = False
    for caller, callees in calls.items():
      if caller not in runs:
        continue
      for callee, n in callees:
        value = runs[caller] * n
        if runs.get(callee, 0) < value:
          runs[callee] = value
          changed = True
  out = []
  for op, name, comp, args, rtype, attrs in found:
    operand = 0
    for item in _top_level(args):
      if _SHAPE.search(item):
        operand += shape_bytes(item)
      else:
        operand += shape_bytes(types.get(item.lstrip('%'), ''))
    result = done_type.get(name, rtype)
    out.append(
      Collective(
        op=op,
        name=name,
        computation=comp,
        runs=runs.get(comp, 1),
        operand_bytes=operand,
        result_bytes=shape_bytes(result),
        group=group_size(attrs, num_devices),
      )
    )
  return out


def summarize(colls: list[Collective]) -> dict:
  """Per op: executions per step, operand MiB and wire MiB per step and device; and the totals."""
  per = {}
  for op in COLLECTIVES:
    mine = [c for c in colls if c.op == op]
    if not mine:
      continue
    per[op] = {
      'count': sum(c.runs for c in mine),
      'operand_mib': sum(c.runs * c.operand_bytes for c in mine) / MIB,
      'result_mib': sum(c.runs * c.result_bytes for c in mine) / MIB,
      'wire_mib': sum(c.wire_bytes for c in mine) / MIB,
    }
  return {
    'collectives': per,
    'comm_operand_mib': sum(v['operand_mib'] for v in per.values()),
    'comm_wire_mib': sum(v['wire_mib'] for v in per.values()),
  }


# --------------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------------

MESHES = {
  'dp': (('data', -1), ('fsdp', 1)),
  'fsdp': (('data', 1), ('fsdp', -1)),
  'hybrid': (('data', -1), ('fsdp', 8)),
}

TINY_MODEL = dict(
  image=dict(
    image_size=64,
    patch_size=16,
    width=64,
    num_heads=2,
    depths=(1, 1, 1),
    num_group_tokens=(8, 4, 0),
    num_output_groups=(8, 4),
    drop_path_rate=0.0,
  ),
  text=dict(width=32, num_layers=2, num_heads=2),
  projection_dim=32,
  projection_hidden_dim=128,
)


def plan_rows(args) -> list[dict]:
  """The (devices, mesh, batch, remat, accum, dtype) rows to compile."""
  if args.devices or args.batch or args.mesh:
    devices = args.devices or [64, 256]
    batches = args.batch or [4096]
    meshes = args.mesh or ['dp', 'fsdp']
    remats = [False, True] if args.remat == 'both' else [args.remat == 'on']
    return [
      dict(devices=d, mesh=m, batch=b, remat=r, accum=args.accum, dtype=args.dtype)
      for d in devices
      for m in meshes
      for b in batches
      for r in remats
    ]
  row = lambda d, m, b, r=False, a=1, t='float32': dict(
    devices=d, mesh=m, batch=b, remat=r, accum=a, dtype=t
  )
  if args.quick:
    return [row(d, m, 4096) for d in (64, 256) for m in ('dp', 'fsdp')]
  rows = [row(d, m, b) for d in (64, 256) for m in ('dp', 'fsdp') for b in (4096, 32768)]
  rows += [row(64, 'dp', 32768, True), row(256, 'dp', 32768, True)]
  rows += [row(8, 'dp', 4096), row(8, 'dp', 4096, True), row(8, 'dp', 4096, False, 4)]
  if args.full:
    rows += [row(d, m, b, True) for d in (64, 256) for m in ('fsdp',) for b in (4096, 32768)]
    rows += [row(d, 'dp', 4096, True) for d in (64, 256)]
    rows += [row(d, 'hybrid', b) for d in (64, 256) for b in (4096, 32768)]
    rows += [row(64, 'dp', 4096, False, 1, 'bfloat16'), row(8, 'dp', 4096, True, 1, 'bfloat16')]
    rows += [row(8, 'fsdp', 4096, True), row(8, 'dp', 4096, True, 2)]
  return rows


def _tree_bytes(tree, shardings) -> int:
  import jax

  leaves = jax.tree.leaves(tree)
  shards = jax.tree.leaves(shardings, is_leaf=lambda x: hasattr(x, 'shard_shape'))
  total = 0
  for leaf, sharding in zip(leaves, shards):
    total += math.prod(sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
  return total


def compile_step(row: dict, model_name: str) -> dict:
  """Compiles one training step on the fake devices of this process; returns its plan row."""
  import jax
  import jax.numpy as jnp

  from groupvit_jax import config_lib, optim, xla_cpu
  from groupvit_jax import sharding as sharding_lib
  from groupvit_jax import train_step as train_lib
  from groupvit_jax.models.groupvit import GroupViT

  config = config_lib.trainer_defaults()
  overrides = dict(TINY_MODEL) if model_name == 'tiny' else {}
  config.model = config_lib.model_config(dtype=row['dtype'], remat=row['remat'], **overrides)
  config.global_batch_size = row['batch']
  config.grad_accum_steps = row['accum']
  config.mesh = MESHES[row['mesh']]
  devices = jax.devices()[: row['devices']]
  if len(devices) < row['devices'] or row['batch'] % (row['devices'] * row['accum']):
    raise SystemExit(f'cannot place batch {row["batch"]} on {len(devices)} devices: {row}')
  mesh = sharding_lib.make_mesh(config.mesh, devices)
  model_cfg = config_lib.build_model_config(config)
  model = GroupViT(model_cfg)
  optimizer, schedule = optim.make_optimizer(
    config.optimizer, int(config.global_batch_size), int(config.total_steps)
  )
  abstract = train_lib.abstract_state(model, optimizer)
  shardings = train_lib.state_shardings(abstract, mesh, config.partition_rules)
  abstract = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )
  g, s, length = row['batch'], model_cfg.image.image_size, model_cfg.text.context_length
  k = 3  # input_pipeline's default data.text.num_prompts, as released
  sh = sharding_lib.batch_sharding(mesh)
  batch = {
    'image': jax.ShapeDtypeStruct((g, s, s, 3), jnp.float32, sharding=sh),
    'text': jax.ShapeDtypeStruct((g, length), jnp.int32, sharding=sh),
  }
  if model_cfg.multi_label:
    batch['prompts'] = jax.ShapeDtypeStruct((g, k, length), jnp.int32, sharding=sh)
  rng = jax.random.key(0)
  step = train_lib.make_train_step(model, optimizer, schedule, config, mesh, shardings)
  t0 = time.perf_counter()
  lowered = step.lower(abstract, batch, jax.ShapeDtypeStruct(rng.shape, rng.dtype))
  t1 = time.perf_counter()
  options = dict(xla_cpu.compiler_options(model_cfg) or {})
  options['xla_backend_optimization_level'] = 0  # same HLO and buffers, faster codegen
  compiled = lowered.compile(compiler_options=options)
  t2 = time.perf_counter()
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
  n = len(devices)
  colls = collectives(compiled.as_text(), n)
  out = dict(row)
  out.update(
    kind='train_step',
    model=model_name,
    mesh_shape=dict(mesh.shape),
    per_device_batch=g // n,
    params=sum(x.size for x in jax.tree.leaves(abstract.params)),
    params_mib=_tree_bytes(abstract.params, shardings.params) / MIB,
    opt_state_mib=_tree_bytes(abstract.opt_state, shardings.opt_state) / MIB,
    batch_mib=sum(math.prod(sh.shard_shape(v.shape)) * v.dtype.itemsize for v in batch.values())
    / MIB,
    argument_mib=mem.argument_size_in_bytes / MIB,
    output_mib=mem.output_size_in_bytes / MIB,
    alias_mib=mem.alias_size_in_bytes / MIB,
    temp_mib=mem.temp_size_in_bytes / MIB,
    total_mib=(
      mem.argument_size_in_bytes
      + mem.output_size_in_bytes
      - mem.alias_size_in_bytes
      + mem.temp_size_in_bytes
    )
    / MIB,
    gflops_per_device=float(cost.get('flops', math.nan)) / 1e9,
    lower_s=t1 - t0,
    compile_s=t2 - t1,
  )
  out.update(summarize(colls))
  return out


def compile_losses(n: int, formulation: str, k: int, devices: int, dim: int = 256) -> dict:
  """Value and gradient of the global-negative losses alone on `devices` devices, batch n."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P

  from groupvit_jax import losses

  mesh = Mesh(np.array(jax.devices()[:devices]), ('data',))

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
  out = dict(
    kind='losses',
    formulation=formulation,
    prompts=k,
    devices=devices,
    batch=n,
    per_device_batch=n // devices,
    temp_mib=mem.temp_size_in_bytes / MIB,
    compile_s=compile_s,
  )
  out.update(summarize(collectives(compiled.as_text(), devices)))
  return out


def worker(args) -> int:
  """Runs in a subprocess whose fake device count is args.worker; prints one JSON line per row."""
  import tempfile

  for row in json.loads(args.rows):
    # XLA's C++ warnings go to fd 2: catch them per row to count the partitioner's "involuntary
    # full rematerialization" (a tensor replicated because no efficient resharding was found).
    with tempfile.TemporaryFile(mode='w+b') as log:
      saved = os.dup(2)
      os.dup2(log.fileno(), 2)
      try:
        if row.get('kind') == 'losses':
          out = compile_losses(row['batch'], row['formulation'], row['prompts'], row['devices'])
        else:
          out = compile_step(row, args.model)
      finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
      log.seek(0)
      text = log.read().decode(errors='replace')
    out['involuntary_remats'] = text.count('Involuntary full rematerialization')
    print(json.dumps(out), flush=True)
  return 0


def loss_rows(args, devices: list[int]) -> list[dict]:
  if not args.losses:
    return []
  batches = [4096] if args.quick else [4096, 16384, 32768, 65536]
  return [
    dict(kind='losses', devices=d, batch=b, formulation=f, prompts=k)
    for d in devices
    for f in ('global', 'shard_map')
    for k in (0, 3)
    for b in batches
    if b % d == 0
  ]


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


def _coll_text(r: dict) -> str:
  parts = [f'{v["count"]} {op} ({v["operand_mib"]:.1f})' for op, v in r['collectives'].items()]
  return ', '.join(parts) or 'none'


def fits(r: dict) -> str:
  """'yes' / 'no' per memory target of TARGETS (total per device <= the chip's memory)."""
  return ' / '.join('yes' if r['total_mib'] <= gib * 1024 else 'no' for gib in TARGETS.values())


STEP_HEADER = (
  '| devices | mesh | global batch | per device | remat | accum | dtype | params MiB | '
  'opt state MiB | args MiB | temp MiB | total GiB | fits (16 / 80 GiB) | collectives: count '
  '(operand MiB) | comm operand MiB | comm wire MiB | involuntary remats | compile s |\n'
  '|---:|---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|'
)


def step_markdown(r: dict) -> str:
  return (
    f'| {r["devices"]} | {r["mesh"]} | {r["batch"]} | {r["per_device_batch"]} | '
    f'{"on" if r["remat"] else "off"} | {r["accum"]} | {r["dtype"]} | {r["params_mib"]:.1f} | '
    f'{r["opt_state_mib"]:.1f} | {r["argument_mib"]:.1f} | {r["temp_mib"]:.0f} | '
    f'{r["total_mib"] / 1024:.2f} | {fits(r)} | {_coll_text(r)} | '
    f'{r["comm_operand_mib"]:.1f} | {r["comm_wire_mib"]:.1f} | {r["involuntary_remats"]} | '
    f'{r["compile_s"]:.1f} |'
  )


LOSS_HEADER = (
  '| devices | formulation | K | global batch | per device | temp MiB | collectives: count '
  '(operand MiB) | comm operand MiB | comm wire MiB | compile s |\n'
  '|---:|---|---:|---:|---:|---:|---|---:|---:|---:|'
)


def loss_markdown(r: dict) -> str:
  return (
    f'| {r["devices"]} | {r["formulation"]} | {r["prompts"]} | {r["batch"]} | '
    f'{r["per_device_batch"]} | {r["temp_mib"]:.1f} | {_coll_text(r)} | '
    f'{r["comm_operand_mib"]:.2f} | {r["comm_wire_mib"]:.2f} | {r["compile_s"]:.1f} |'
  )


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument('--quick', action='store_true', help='64 and 256 devices, batch 4096, no remat')
  p.add_argument('--full', action='store_true', help='the default rows plus remat/hybrid/bf16')
  p.add_argument('--devices', type=int, nargs='+', help='custom plan: device counts')
  p.add_argument('--batch', type=int, nargs='+', help='custom plan: global batches')
  p.add_argument('--mesh', nargs='+', choices=sorted(MESHES), help='custom plan: meshes')
  p.add_argument('--remat', choices=('off', 'on', 'both'), default='off', help='custom plan')
  p.add_argument('--accum', type=int, default=1, help='custom plan: grad_accum_steps')
  p.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32')
  p.add_argument('--model', choices=('groupvit_s', 'tiny'), default='groupvit_s')
  p.add_argument('--no-losses', dest='losses', action='store_false')
  p.add_argument('--json', action='store_true', help='one JSON object per row on stdout')
  p.add_argument('--json-out', help='also write the JSON rows to this file')
  p.add_argument('--worker', type=int, help=argparse.SUPPRESS)
  p.add_argument('--rows', help=argparse.SUPPRESS)
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.worker:
    return worker(args)
  command = shlex.join(
    ['.venv/bin/python', 'benchmarks/pod_plan.py'] + list(sys.argv[1:] if argv is None else argv)
  )
  rows = plan_rows(args)
  by_devices = collections.defaultdict(list)
  for r in rows:
    by_devices[r['devices']].append(r)
  for r in loss_rows(args, sorted({d for d in by_devices if d > 8} or set(by_devices))):
    by_devices[r['devices']].append(r)
  meta = {
    'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
    'machine': f'{platform.machine()}, {os.cpu_count()} CPU cores',
    'command': command,
  }
  if not args.json:
    print(f'command: `{command}`\n{meta["date"]}; {meta["machine"]}; fake CPU devices\n')
  t0 = time.perf_counter()
  results = []
  for n, todo in sorted(by_devices.items()):
    env = dict(os.environ)
    flags = [f for f in env.get('XLA_FLAGS', '').split() if 'device_count' not in f]
    env['XLA_FLAGS'] = ' '.join(flags + [f'--xla_force_host_platform_device_count={n}'])
    env['PYTHONPATH'] = os.pathsep.join([str(REPO_ROOT)] + env.get('PYTHONPATH', '').split(':'))
    cmd = [sys.executable, __file__, '--worker', str(n), '--model', args.model]
    cmd += ['--rows', json.dumps(todo)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    for line in proc.stdout:
      r = json.loads(line)
      r.update(meta)
      results.append(r)
      if args.json_out:
        with open(args.json_out, 'a') as f:
          f.write(json.dumps(r) + '\n')
      if args.json:
        print(json.dumps(r), flush=True)
      else:
        what = r['kind'] + (f' {r["mesh"]}' if r['kind'] == 'train_step' else '')
        print(f'... {n} devices, {what}, batch {r["batch"]}: {r["compile_s"]:.1f} s', flush=True)
    if proc.wait():
      raise SystemExit(f'the {n}-device worker failed (exit code {proc.returncode})')
  if not args.json:
    steps = [r for r in results if r['kind'] == 'train_step']
    if steps:
      print(f'\nTraining step ({args.model}), per device:\n\n{STEP_HEADER}')
      for r in steps:
        print(step_markdown(r))
    losses = [r for r in results if r['kind'] == 'losses']
    if losses:
      print(f'\nGlobal-negative losses alone (value and gradient), per device:\n\n{LOSS_HEADER}')
      for r in losses:
        print(loss_markdown(r))
    print(f'\ntotal wall time {time.perf_counter() - t0:.0f} s')
  return 0


if __name__ == '__main__':
  sys.exit(main())
