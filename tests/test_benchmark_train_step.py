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

POSITIVE_KEYS = ('jax_images_per_s', 'torch_images_per_s', 'ratio', 'mfu', 'torch_mfu', 'compile_s',
                 'step_gflops', 'peak_rss_mib', 'matmul_peak_gflops', 'jax_params', 'torch_params')


def test_tiny_row_json():
  cmd = [sys.executable, str(REPO / 'benchmarks' / 'train_step.py'), '--model', 'tiny', '--batch', '8',
         '--dtype', 'float32', '--rounds', '1', '--steps-per-round', '1', '--threads', '1',
         '--peak-size', '1024', '--json']
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]
  assert len(rows) == 1, proc.stdout
  row = rows[0]
  assert (row['model'], row['batch'], row['dtype'], row['multi_label']) == ('tiny', 8, 'float32', False)
  for key in POSITIVE_KEYS:
    assert math.isfinite(row[key]) and row[key] > 0, (key, row[key])
  assert row['ratio'] == pytest.approx(row['jax_images_per_s'] / row['torch_images_per_s'], rel=1e-12)
  assert row['jax_params'] == row['torch_params']  # same architecture
  assert math.isfinite(row['jax_loss']) and math.isfinite(row['torch_loss'])
