"""The trainer end to end on configs/tiny.py with the built-in synthetic data (subprocesses).

Covers: metrics.jsonl contents, determinism, exact resume after SIGKILL, SIGTERM saves and exits,
start-time errors for bad configs, two processes (CPU collectives) equal to one, and checkpoints
that must not cost a run: damaged, foreign, failing to save, or a workdir held by another trainer
(the cases in-process: tests/test_checkpointing.py).
"""

import json
import os
import resource
import shutil
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
      'configs/synthetic_groupvit.py:scenes=easy,group_max=True',
      '--config.model.multi_label=False',
      "multi_label_pooling='max' needs the multi-label loss",
    ),
    (
      'configs/synthetic_groupvit.py:group_max=True,multi_label=False',
      '--config.seed=1',
      'group_max=True changes the multi-label loss: it needs multi_label=True',
    ),
    (
      'configs/synthetic_groupvit.py:scenes=easy,stages=3',
      '--config.seed=1',
      'stages=3: expected one of',
    ),
    ('configs/synthetic_groupvit.py:sfot=1', '--config.seed=1', "unknown config argument 'sfot'"),
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


# --- damaged, foreign and contested checkpoints ---------------------------------------------------
def _last_line(text):
  return text.strip().splitlines()[-1]


def _array_data(step_dir):
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir / 'state') for f in fs]
  return max((f for f in files if os.sep + 'd' + os.sep in f), key=os.path.getsize)


def _garbage(path):
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 3)
    f.write(os.urandom(4096))


def _copy_run(reference_run, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(reference_run, workdir, ignore=shutil.ignore_patterns('model', 'lock.json'))
  return workdir


def test_damaged_newest_checkpoint_resumes_exactly_from_the_previous(reference_run, tmp_path):
  workdir = _copy_run(reference_run, tmp_path)
  _garbage(_array_data(workdir / 'checkpoints' / '12'))
  proc = _train(workdir)
  line = next(x for x in proc.stdout.splitlines() if x.startswith('checkpoint step 12'))
  assert 'does not restore (file state/' in line and 'resuming from step 8' in line, line
  assert _losses(workdir) == _losses(reference_run)  # steps 9-12 trained again, identically
  assert [p.name[:3] for p in (workdir / 'checkpoints_damaged').iterdir() if p.is_dir()] == ['12-']


def test_no_checkpoint_restores_one_line_error_never_a_fresh_start(reference_run, tmp_path):
  workdir = _copy_run(reference_run, tmp_path)
  for step in (4, 8, 12):
    os.truncate(_array_data(workdir / 'checkpoints' / str(step)), 100)
  proc = _train(workdir, check=False)
  assert proc.returncode == 1
  last = _last_line(proc.stderr)
  assert last.startswith('error: no checkpoint in ') and 'step 12: file' in last, last
  assert 'step 8: file' in last and 'step 4: file' in last
  assert _losses(workdir) == _losses(reference_run)  # nothing trained, nothing rewritten


def test_foreign_checkpoint_fails_before_any_step(reference_run, tmp_path):
  workdir = _copy_run(reference_run, tmp_path)
  proc = _train(workdir, '--config.model.image.width=96', check=False)
  assert proc.returncode == 1
  last = _last_line(proc.stderr)
  assert last.startswith('error: ') and 'another model or optimizer' in last, last
  assert 'parameters differ in shape: ' in last and ' (64,) in the checkpoint vs (96,) here' in last
  assert 'model.image.width 64 -> 96' in last and 'another --workdir' in last
  assert 'train step compiled' not in proc.stdout
  assert _losses(workdir) == _losses(reference_run)


def test_failed_save_stops_then_the_rerun_resumes_exactly(reference_run, tmp_path):
  workdir = _copy_run(reference_run, tmp_path)
  for step in ('8', '12'):
    shutil.rmtree(workdir / 'checkpoints' / step)

  def file_size_limit():  # EFBIG on the 10 MiB state file, as a full disk would fail it
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, resource.RLIM_INFINITY))

  proc = subprocess.run(
    _cmd(workdir),
    cwd=REPO,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=600,
    preexec_fn=file_size_limit,
  )
  assert proc.returncode == 1
  last = _last_line(proc.stderr)
  assert last.startswith('error: saving checkpoint step 8 in '), last
  assert 'File too large' in last and 'step 4, reads back' in last
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()) == ['4']
  _train(workdir)
  assert _losses(workdir) == _losses(reference_run)


def test_a_second_trainer_on_a_held_workdir_refuses_then_takes_over_when_it_dies(tmp_path):
  holder = subprocess.Popen(
    _cmd(tmp_path, '--config.total_steps=100000'),
    cwd=REPO,
    env=_env(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  try:
    deadline = time.time() + 300
    while not (tmp_path / 'lock.json').exists():
      assert holder.poll() is None and time.time() < deadline
      time.sleep(0.05)
    second = _train(tmp_path, check=False)
    assert second.returncode == 1
    last = _last_line(second.stderr)
    assert f'pid {holder.pid}, started ' in last and 'is in use by another trainer' in last, last
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  third = _train(tmp_path, '--config.total_steps=4')
  assert f'warning: took over {tmp_path} from a trainer that is gone' in third.stdout
  assert f'pid {holder.pid}' in third.stdout
  assert not (tmp_path / 'lock.json').exists()


def _run_processes(workdir, *overrides, n=2):
  port = _free_port()
  procs = [
    subprocess.Popen(
      _cmd(
        workdir,
        *overrides,
        f'--coordinator_address=127.0.0.1:{port}',
        f'--num_processes={n}',
        f'--process_id={i}',
      ),
      cwd=REPO,
      env=_env(2),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(n)
  ]
  return [(p, *p.communicate(timeout=600)) for p in procs]


def test_two_processes_refuse_a_held_workdir_and_resume_past_a_damaged_step(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  # held by a live process on this host: this test's own
  (workdir / 'lock.json').write_text(
    json.dumps({'host': socket.gethostname(), 'pid': os.getpid(), 'start_time': time.time()})
  )
  for proc, _, err in _run_processes(workdir, '--config.total_steps=8'):
    assert proc.returncode == 1 and f'pid {os.getpid()}' in _last_line(err), err[-2000:]
  (workdir / 'lock.json').unlink()

  runs = _run_processes(workdir, '--config.total_steps=8')
  assert all(p.returncode == 0 for p, _, _ in runs), runs[0][2][-2000:] + runs[1][2][-2000:]
  uninterrupted = _losses(workdir)
  _garbage(_array_data(workdir / 'checkpoints' / '8'))
  runs = _run_processes(workdir, '--config.total_steps=8')
  assert all(p.returncode == 0 for p, _, _ in runs), runs[0][2][-2000:] + runs[1][2][-2000:]
  assert 'checkpoint step 8 does not restore' in runs[0][1]
  assert 'resuming from step 4' in runs[0][1]
  assert _losses(workdir) == uninterrupted
