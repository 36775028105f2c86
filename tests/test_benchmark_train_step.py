"""benchmarks/train_step.py runs end to end on the tiny model and prints one well-formed JSON row.

It runs in a subprocess: the script restricts its CPUs (--threads) before JAX starts, which must not
happen to the pytest process. The subprocess inherits the 8 fake CPU devices of conftest.py, so this
also checks that the benchmark builds its mesh on one device. One thread keeps it cheap.
"""

import json
import math
import subprocess
import sys

import pytest

pytest.importorskip('torch')
pytest.importorskip('transformers')

from tests.conftest import REPO  # noqa: E402

pytestmark = pytest.mark.slow  # subprocess runs of the trainer or a benchmark script

POSITIVE_KEYS = (
  'jax_images_per_s',
  'torch_images_per_s',
  'ratio',
  'mfu',
  'torch_mfu',
  'compile_s',
  'torch_peak_rss_mib',
  'step_gflops',
  'peak_rss_mib',
  'matmul_peak_gflops',
  'jax_params',
  'torch_params',
)


def test_tiny_row_json():
  cmd = [
    sys.executable,
    str(REPO / 'benchmarks' / 'train_step.py'),
    '--model',
    'tiny',
    '--batch',
    '8',
    '--dtype',
    'float32',
    '--rounds',
    '1',
    '--steps-per-round',
    '1',
    '--threads',
    '1',
    '--peak-size',
    '1024',
    '--json',
  ]
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]
  assert len(rows) == 1, proc.stdout
  row = rows[0]
  assert (row['model'], row['batch'], row['dtype'], row['multi_label']) == (
    'tiny',
    8,
    'float32',
    False,
  )
  for key in POSITIVE_KEYS:
    assert math.isfinite(row[key]) and row[key] > 0, (key, row[key])
  assert row['ratio'] == pytest.approx(
    row['jax_images_per_s'] / row['torch_images_per_s'], rel=1e-12
  )
  assert row['jax_params'] == row['torch_params']  # same architecture
  assert math.isfinite(row['jax_loss']) and math.isfinite(row['torch_loss'])
  # Compiled as the trainer compiles it: the tiny tower (width 64) keeps XLA:CPU's defaults.
  assert row['compiler_options'] is None


def test_profile_summary_attributes_kernels_to_model_ops():
  sys.path.insert(0, str(REPO / 'benchmarks'))
  import profile_step

  hlo = '\n'.join(
    [
      '  %ynn_fusion.3 = f32[8,16]{1,0} fusion(%p), kind=kCustom, '
      'metadata={op_name="jit(train_step)/'
      'jvp(GroupViT)/GroupViT.encode_image/img_encoder/layers_0/blocks_2/mlp/fc1/dot_general"}',
      '  %ynn_fusion.9 = f32[8,16]{1,0} fusion(%p), kind=kCustom, '
      'metadata={op_name="jit(train_step)/'
      'transpose(jvp(GroupViT))/GroupViT.encode_image/img_encoder/layers_1/blocks_0/mlp/fc1/'
      'dot_general"}',
      '  %copy_fusion.1 = f32[16,8]{1,0} fusion(%p), kind=kLoop, '
      'metadata={op_name="jit(train_step)/'
      'jvp(GroupViT)/GroupViT.encode_image/img_encoder/layers_1/blocks_4/mlp/fc1/dot_general"}',
    ]
  )
  names = profile_step.hlo_op_names(hlo)
  events = [
    {'ph': 'X', 'name': 'ynn_fusion.3', 'dur': 3000},
    {'ph': 'X', 'name': 'ynn_fusion.9', 'dur': 5000},
    {'ph': 'X', 'name': 'copy_fusion.1', 'dur': 1000},
    {'ph': 'X', 'name': 'ynn_fusion.3', 'dur': 1000},
  ]
  by_kind, by_op = profile_step.summarise(events, names, steps=2)
  assert by_kind == [('ynn_fusion', 4.5), ('copy_fusion', 0.5)]
  op = 'GroupViT/GroupViT.encode_image/img_encoder/layers_N/blocks_N/mlp/fc1/dot_general'
  assert by_op[0] == (('bwd', 'ynn_fusion', op), 2.5, 0)
  assert by_op[1] == (('fwd', 'ynn_fusion', op), 2.0, 1)
