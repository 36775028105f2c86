"""benchmarks/pod_plan.py (HLO collective parser, a tiny plan) and benchmarks/device_check.py
(--dry-run) work: the parser gives the bytes known for hand-made collectives, both scripts print
well-formed JSON rows from subprocesses.

The in-process test uses the 8 fake CPU devices of conftest.py; the scripts run in subprocesses
because they fix their own device counts and platforms.
"""

import importlib.util
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tests.conftest import REPO


def _load_pod_plan():
  # Registered in sys.modules before it runs: its dataclass looks its module up there.
  spec = importlib.util.spec_from_file_location('pod_plan', REPO / 'benchmarks' / 'pod_plan.py')
  module = importlib.util.module_from_spec(spec)
  sys.modules['pod_plan'] = module
  spec.loader.exec_module(module)
  return module


pod_plan = _load_pod_plan()


def test_collectives_of_a_compiled_shard_map():
  """psum, all_gather and psum_scatter of a local f32[4, 16] (256 bytes) on 8 devices."""
  mesh = Mesh(np.array(jax.devices()[:8]), ('x',))

  def local(a):  # a: [4, 16] per device
    s = jax.lax.psum(a, 'x')  # all-reduce, operand 256 B
    g = jax.lax.all_gather(a * 2.0, 'x', axis=0, tiled=True)  # all-gather -> [32, 16], 2048 B
    r = jax.lax.psum_scatter(g * 3.0, 'x', scatter_dimension=0, tiled=True)  # operand 2048 B
    return s + r

  fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=P('x'), out_specs=P('x')))
  arg = jax.ShapeDtypeStruct((32, 16), jnp.float32, sharding=NamedSharding(mesh, P('x')))
  colls = pod_plan.collectives(fn.lower(arg).compile().as_text(), 8)
  by_op = {c.op: c for c in colls}
  assert sorted(by_op) == ['all-gather', 'all-reduce', 'reduce-scatter'], colls
  assert len(colls) == 3
  ar, ag, rs = by_op['all-reduce'], by_op['all-gather'], by_op['reduce-scatter']
  assert (ar.operand_bytes, ar.result_bytes, ar.group, ar.runs) == (256, 256, 8, 1)
  assert (ag.operand_bytes, ag.result_bytes, ag.group) == (256, 2048, 8)
  assert (rs.operand_bytes, rs.result_bytes, rs.group) == (2048, 256, 8)
  assert ar.wire_bytes == pytest.approx(2 * 7 / 8 * 256)
  assert ag.wire_bytes == pytest.approx(7 / 8 * 2048)
  assert rs.wire_bytes == pytest.approx(7 / 8 * 2048)
  summary = pod_plan.summarize(colls)
  assert summary['collectives']['all-gather']['count'] == 1
  assert summary['comm_operand_mib'] * 2**20 == pytest.approx(256 + 256 + 2048)


HLO = """HloModule m, num_partitions=8

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %s = f32[] add(%x, %y)
}

%body (p: (s32[], bf16[8,4])) -> (s32[], bf16[8,4]) {
  %p = (s32[], bf16[8,4]{1,0}) parameter(0)
  %v = bf16[8,4]{1,0} get-tuple-element(%p), index=1
  %ar = bf16[8,4]{1,0} all-reduce(%v), replica_groups=[2,4]<=[8], to_apply=%add
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %t = (s32[], bf16[8,4]{1,0}) tuple(%i, %ar)
}

%cond (p: (s32[], bf16[8,4])) -> pred[] {
  %p = (s32[], bf16[8,4]{1,0}) parameter(0)
  ROOT %c = pred[] constant(true)
}

ENTRY %main (a: f32[16], b: bf16[8,4]) -> f32[128] {
  %a = f32[16]{0} parameter(0)
  %b = bf16[8,4]{1,0} parameter(1)
  %ags = (f32[16]{0}, f32[128]{0}) all-gather-start(f32[16]{0} %a), replica_groups={}, dimensions={0}
  %agd = f32[128]{0} all-gather-done(%ags)
  %z = s32[] constant(0)
  %init = (s32[], bf16[8,4]{1,0}) tuple(%z, %b)
  %w = (s32[], bf16[8,4]{1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"5"}}
  %cp = f32[128]{0} collective-permute(%agd), source_target_pairs={{0,1},{1,0}}
  ROOT %two = (f32[128]{0}, f32[128]{0}) all-reduce(%agd, %cp), replica_groups=mesh['a'=2,'b'=4] {'b'}, to_apply=%add
}
"""  # noqa: E501


def test_collectives_of_hlo_text():
  """Async pairs, inline operand shapes, loops with a trip count, tuples, every group format."""
  colls = {c.name: c for c in pod_plan.collectives(HLO, 8)}
  assert sorted(colls) == ['ags', 'ar', 'cp', 'two']
  ags = colls['ags']  # inline operand shape, result from the -done, replica_groups={} = all 8
  assert (ags.op, ags.operand_bytes, ags.result_bytes, ags.group) == ('all-gather', 64, 512, 8)
  ar = colls['ar']  # in the while body: runs 5 times; iota groups [2,4] -> 4 per group
  assert (ar.runs, ar.operand_bytes, ar.group) == (5, 64, 4)
  assert ar.wire_bytes == pytest.approx(5 * 2 * 3 / 4 * 64)
  assert colls['cp'].wire_bytes == 512
  two = colls['two']  # two operands looked up by name; mesh axes {'b'} -> 4
  assert (two.operand_bytes, two.result_bytes, two.group) == (1024, 1024, 4)
  summary = pod_plan.summarize(list(colls.values()))
  assert summary['collectives']['all-reduce']['count'] == 6


def _json_lines(stdout: str) -> list[dict]:
  return [json.loads(line) for line in stdout.splitlines() if line.startswith('{')]


def test_tiny_pod_plan_subprocess():
  cmd = [sys.executable, 'benchmarks/pod_plan.py', '--model', 'tiny', '--devices', '8']
  cmd += ['--batch', '16', '--mesh', 'dp', '--no-losses', '--json']
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (row,) = _json_lines(proc.stdout)
  assert (row['devices'], row['mesh'], row['batch'], row['per_device_batch']) == (8, 'dp', 16, 2)
  # Pure data parallelism: every device holds all parameters and both AdamW moments (float32).
  assert row['params_mib'] * 2**20 == pytest.approx(4 * row['params'])
  assert row['opt_state_mib'] == pytest.approx(2 * row['params_mib'], rel=1e-3)
  assert row['temp_mib'] > 0 and row['total_mib'] > row['params_mib'] + row['opt_state_mib']
  # The gradients are all-reduced (the token-embedding table's gradient, most of this tiny
  # model's parameters, is not: the ids and cotangents are all-gathered instead, 4 all-gathers),
  # with 2 x 7/8 of the bytes on the wire.
  ar = row['collectives']['all-reduce']
  assert ar['count'] > 10 and ar['operand_mib'] > 0.5 * row['params_mib']
  assert row['collectives']['all-gather']['count'] == 4
  assert ar['wire_mib'] == pytest.approx(2 * 7 / 8 * ar['operand_mib'], rel=1e-6)


@pytest.mark.slow  # about 2 minutes on 2 CPU cores: several processes compile and run
def test_device_check_dry_run():
  cmd = [sys.executable, 'benchmarks/device_check.py', '--dry-run']
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = _json_lines(proc.stdout)
  assert rows[0]['meta']['dry_run'] is True
  rows = {r['row']: r for r in rows[1:]}
  errors = {k: r['error'] for k, r in rows.items() if 'error' in r}
  assert not errors, errors
  assert rows['matmul peak']['peak_tflops'] > 0
  scg_rows = {k: r for k, r in rows.items() if k.startswith('scg')}
  assert len(scg_rows) == 2, sorted(rows)
  assert all(
    r.get('images_per_s', 1) > 0 and r.get('windows_per_s', 1) > 0 for r in scg_rows.values()
  )
  rows = {k: r for k, r in rows.items() if k not in scg_rows}
  jax_rows = [r for r in rows.values() if r.get('impl') == 'jax' and 'batch' in r]
  torch_rows = [r for r in rows.values() if r.get('impl', '').startswith('torch') and 'batch' in r]
  seg_rows = [r for r in rows.values() if 'windows_per_s' in r]
  assert {r['dtype'] for r in jax_rows} == {'bfloat16'}  # --dry-run skips the float32 group
  assert {r['impl'] for r in torch_rows} == {'torch eager', 'torch.compile'}
  for r in jax_rows + torch_rows:
    assert r['images_per_s'] > 0 and r['step_ms'] > 0 and r['mfu'] > 0, r
  assert len(seg_rows) == 2 and all(r['windows_per_s'] > 0 for r in seg_rows)
  # Same weights and protocol on both sides: the label maps agree.
  assert [r for r in seg_rows if 'pixel_agreement' in r][0]['pixel_agreement'] > 0.99
  assert '| row | images/s |' in proc.stdout
