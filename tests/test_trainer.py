"""The trainer end to end on configs/tiny.py with the built-in synthetic data (subprocesses).

Covers: metrics.jsonl contents, determinism, exact resume after SIGKILL, SIGTERM saves and exits,
start-time errors for bad configs, and two processes (CPU collectives) equal to one.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # subprocess runs of the trainer or a benchmark script

STEPS = 12


def _env(devices=1):
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  env['TF_CPP_MIN_LOG_LEVEL'] = '3'
  return env


def _cmd(workdir, *overrides, config='configs/tiny.py'):
  return [
    sys.executable,
    '-m',
    'groupvit_jax.main',
    f'--config={config}',
    f'--workdir={workdir}',
    f'--config.total_steps={STEPS}',
    '--config.log_every_steps=1',
    '--config.checkpoint_every_steps=4',
    '--config.global_batch_size=8',
    '--config.async_checkpoints=False',
    *overrides,
  ]


def _train(workdir, *overrides, devices=1, check=True):
  proc = subprocess.run(
    _cmd(workdir, *overrides),
    cwd=REPO,
    env=_env(devices),
    capture_output=True,
    text=True,
    timeout=600,
  )
  if check:
    assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def _metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]


def _losses(workdir):
  return {r['step']: r['loss'] for r in _metrics(workdir) if 'loss' in r}


@pytest.fixture(scope='module')
def reference_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('reference')
  # with the periodic evaluation hook on the synthetic held-out split at the last step
  _train(
    workdir,
    f'--config.eval.every_steps={STEPS}',
    '--config.eval.datasets=("synthetic",)',
    '--config.eval.max_images=4',
  )
  return workdir


def test_metrics_jsonl_and_exported_model(reference_run):
  rows = [r for r in _metrics(reference_run) if 'loss' in r]
  assert [r['step'] for r in rows] == list(range(1, STEPS + 1))
  for key in (
    'loss',
    'loss/image_text',
    'loss/multi_label',
    'lr',
    'logit_scale',
    'multi_label_logit_scale',
    'grad_norm',
    'images_per_s',
    'acc/i2t',
    'acc/t2i',
  ):
    assert key in rows[-1], key
  assert rows[0]['lr'] < rows[4]['lr']  # warmup
  evals = [r for r in _metrics(reference_run) if 'eval/synthetic/mIoU' in r]
  assert [r['step'] for r in evals] == [STEPS] and 0 <= evals[0]['eval/synthetic/mIoU'] <= 100
  assert 0 <= evals[0]['eval/synthetic/naming_mAP'] <= 100
  import groupvit_jax

  model = groupvit_jax.load_pretrained(str(reference_run / 'model'))
  assert model.encode_text(['a red circle']).shape == (1, 32)
  assert (reference_run / 'checkpoints').is_dir()
  assert any(p.name.startswith('events.out.tfevents') for p in reference_run.rglob('*'))


def test_same_seed_gives_identical_losses(reference_run, tmp_path):
  _train(tmp_path)
  assert _losses(tmp_path) == _losses(reference_run)


def test_sigkill_then_restart_continues_exactly(reference_run, tmp_path):
  proc = subprocess.Popen(
    _cmd(tmp_path), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  deadline = time.time() + 300
  while not (tmp_path / 'checkpoints' / '8').is_dir():
    assert proc.poll() is None and time.time() < deadline, 'run ended before step 8'
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  _train(tmp_path)  # resumes from the last checkpoint (step 8)
  assert _losses(tmp_path) == _losses(reference_run)


def test_sigterm_saves_the_step_it_stopped_at(tmp_path):
  proc = subprocess.Popen(
    _cmd(tmp_path, '--config.total_steps=100000'),
    cwd=REPO,
    env=_env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  for line in proc.stdout:
    if line.startswith('step 3/'):
      proc.send_signal(signal.SIGTERM)
      break
  out = proc.stdout.read()
  assert proc.wait(timeout=300) == 0, out
  steps = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit())
  last_logged = max(_losses(tmp_path))
  assert steps[-1] == last_logged and last_logged >= 3


@pytest.mark.parametrize(
  'override,message',
  [
    ('--config.model.image.widht=3', 'widht'),
    ('--config.global_batch_size=6', 'not divisible by the 4 devices'),
    ('--config.data.train=("webdataset:/nonexistent/{0..3}.tar",)', 'nonexistent'),
    ('--config.loss.multi_label_pooling=min', "multi_label_pooling must be 'mean' or 'max'"),
  ],
)
def test_bad_configs_fail_at_start_naming_the_problem(tmp_path, override, message):
  proc = subprocess.run(
    _cmd(tmp_path, override), cwd=REPO, env=_env(4), capture_output=True, text=True, timeout=300
  )
  assert proc.returncode != 0
  assert message in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize(
  'config,override,message',
  [
    # group_max=True, given after a comma, reached get_config: it conflicts with the override.
    (
      'configs/synthetic.py:scenes=easy,group_max=True',
      '--config.model.multi_label=False',
      "multi_label_pooling='max' needs the multi-label loss",
    ),
    (
      'configs/synthetic.py:group_max=True,multi_label=False',
      '--config.seed=1',
      'group_max=True changes the multi-label loss: it needs multi_label=True',
    ),
    ('configs/synthetic.py:scenes=easy,stages=3', '--config.seed=1', 'stages=3: expected one of'),
    ('configs/synthetic.py:sfot=1', '--config.seed=1', "unknown config argument 'sfot'"),
  ],
)
def test_recipe_arguments_reach_the_trainer(tmp_path, config, override, message):
  """`--config=FILE:key=value,key=value` hands the whole argument to the recipe's get_config."""
  proc = subprocess.run(
    _cmd(tmp_path, override, config=config),
    cwd=REPO,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode != 0
  assert message in proc.stderr, proc.stderr[-2000:]


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_equal_one_process(tmp_path):
  """2 processes x 2 CPU devices (gloo collectives) = 1 process x 4 devices, same global batch."""
  single = tmp_path / 'single'
  _train(single, '--config.total_steps=4', devices=4)
  port = _free_port()
  procs = [
    subprocess.Popen(
      _cmd(
        tmp_path / 'multi',
        '--config.total_steps=4',
        f'--coordinator_address=127.0.0.1:{port}',
        '--num_processes=2',
        f'--process_id={i}',
      ),
      cwd=REPO,
      env=_env(2),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), outs[0][-2000:] + outs[1][-2000:]
  assert '2 process(es), 4 device(s)' in outs[0]
  assert 'step 4/4' in outs[0] and 'step 4/4' not in outs[1]  # only process 0 reports
  assert (tmp_path / 'multi' / 'checkpoints' / '4').is_dir()
  multi, ref = _losses(tmp_path / 'multi'), _losses(single)
  assert sorted(multi) == sorted(ref) == [1, 2, 3, 4]
  # The global batch holds the same samples in another row order: float32 sums differ in order
  # (~1e-6 relative on losses ~10); a different batch or a missing all-reduce differs by >1e-2.
  for step in ref:
    assert multi[step] == pytest.approx(ref[step], rel=1e-5), step


def test_non_finite_values_stop_the_run_naming_step_and_terms(tmp_path):
  proc = subprocess.run(
    _cmd(
      tmp_path,
      '--config.optimizer.base_lr=1e38',
      '--config.optimizer.warmup_steps=0',
      '--config.log_every_steps=4',
    ),
    cwd=REPO,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 1
  # lr 1e38 overflows the parameters in the first update: the guard names step 1 and the term
  # (it checks every step's metrics at the log step, not only the logged one)
  assert 'non-finite values at step 1: param_norm' in proc.stderr, proc.stderr[-2000:]
