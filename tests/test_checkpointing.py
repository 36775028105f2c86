"""Checkpoints that are damaged, foreign or fail to save, and the one-trainer-per-workdir lock.

In-process on a small state; the trainer end to end (exact resume, one-line errors, two
processes) is in tests/test_trainer.py.
"""

import os
import resource
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from groupvit_jax import checkpointing, workdir_lock


def _state(width=256, value=0.0):
  """Random weights (as trained ones are: they do not compress) plus `value` as a marker."""
  w = jax.random.normal(jax.random.key(int(value)), (width, 512)) + value
  return {'params': {'w': w, 'b': jnp.zeros((width,))}, 'step': jnp.asarray(0, jnp.int32)}


def _abstract(width=256):
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), _state(width)
  )


SETTINGS = {'model': {'width': 256, 'depths': (1, 2)}, 'optimizer': {'base_lr': 1e-3}}


def _write_steps(workdir, steps=(1, 2, 3)):
  ckpt = checkpointing.Checkpointer(str(workdir), keep=5, async_save=False, log=lambda m: None)
  for s in steps:
    ckpt.save(s, _state(value=float(s)), {'pos': s}, jax.random.key(s), SETTINGS)
  ckpt.close()


def _largest_file(directory):
  files = [os.path.join(r, f) for r, _, fs in os.walk(directory) for f in fs]
  return max(files, key=os.path.getsize)


def _truncate(path):
  os.truncate(path, os.path.getsize(path) // 2)


def _garbage(path):
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 3)
    f.write(os.urandom(4096))


def _delete_metadata(step_dir):
  os.remove(os.path.join(step_dir, 'state', '_METADATA'))


def _array_data(step_dir):
  return _largest_file(os.path.join(step_dir, 'state', 'ocdbt.process_0'))


DAMAGE = {
  'truncated array data': lambda d: _truncate(_array_data(d)),
  'truncated metadata': lambda d: _truncate(os.path.join(d, 'state', '_METADATA')),
  'garbage bytes': lambda d: _garbage(_array_data(d)),
  'deleted metadata': _delete_metadata,
}


def _restore(workdir, settings=SETTINGS, width=256):
  logs = []
  ckpt = checkpointing.Checkpointer(str(workdir), keep=5, async_save=False, log=logs.append)
  try:
    return ckpt.restore_latest(_abstract(width), settings), logs
  finally:
    ckpt.close()


@pytest.mark.parametrize('damage', sorted(DAMAGE))
def test_damaged_newest_step_is_moved_aside_and_the_previous_restores(tmp_path, damage):
  _write_steps(tmp_path)
  DAMAGE[damage](str(tmp_path / 'checkpoints' / '3'))
  restored, logs = _restore(tmp_path)
  assert restored.step == 2
  np.testing.assert_array_equal(restored.state['params']['w'], _state(value=2.0)['params']['w'])
  assert restored.data_state == {'pos': 2}
  assert (
    jax.random.key_data(restored.rng).tolist() == jax.random.key_data(jax.random.key(2)).tolist()
  )
  # one line: the step, the cause, where it went, where the run resumes
  assert len(logs) == 1 and logs[0].startswith('checkpoint step 3 does not restore (')
  assert 'resuming from step 2' in logs[0]
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1', '2']
  aside = sorted(os.listdir(tmp_path / checkpointing.DAMAGED_DIR))
  assert len(aside) == 2 and aside[0].startswith('3-') and aside[1] == 'step_3.txt'
  # the moved step no longer counts: saving step 3 again works and keep-N ignores the damaged copy
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=2, async_save=False, log=lambda m: None)
  ckpt.save(3, _state(value=3.0), {'pos': 3}, jax.random.key(3), SETTINGS)
  ckpt.close()
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '3']
  assert len(os.listdir(tmp_path / checkpointing.DAMAGED_DIR)) == 2


def test_the_damaged_file_is_named(tmp_path):
  _write_steps(tmp_path, steps=(1, 2))
  data = _array_data(str(tmp_path / 'checkpoints' / '2'))
  size = os.path.getsize(data)
  _truncate(data)
  _, logs = _restore(tmp_path)
  name = os.path.relpath(data, tmp_path / 'checkpoints' / '2')
  assert f'(file {name} has {size // 2} bytes, {size} when written)' in logs[0], logs[0]


def test_without_a_checksum_record_the_reader_names_the_array(tmp_path):
  """Steps written before checksums existed (or killed between save and seal) still fall back."""
  _write_steps(tmp_path, steps=(1, 2))
  os.remove(tmp_path / 'checkpoints' / '2' / checkpointing.INTEGRITY_FILE)
  _truncate(_array_data(str(tmp_path / 'checkpoints' / '2')))
  restored, logs = _restore(tmp_path)
  assert restored.step == 1
  assert 'OUT_OF_RANGE' in logs[0] and 'params.w' in logs[0], logs[0]


def test_no_step_restores_is_an_error_naming_every_step_and_nothing_moves(tmp_path):
  _write_steps(tmp_path, steps=(1, 2))
  for step in ('1', '2'):
    _truncate(_largest_file(str(tmp_path / 'checkpoints' / step / 'state')))
  with pytest.raises(checkpointing.CheckpointError) as e:
    _restore(tmp_path)
  message = str(e.value)
  assert 'no checkpoint' in message and 'step 2:' in message and 'step 1:' in message
  assert '\n' not in message
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1', '2']


def test_empty_workdir_restores_nothing(tmp_path):
  assert _restore(tmp_path)[0] is None


def test_other_shapes_are_a_foreign_checkpoint_listing_them(tmp_path):
  _write_steps(tmp_path, steps=(1,))
  with pytest.raises(checkpointing.CheckpointError) as e:
    _restore(tmp_path, width=128)
  message = str(e.value)
  assert 'another model or optimizer' in message
  assert 'params.w (256, 512) in the checkpoint vs (128, 512) here' in message
  assert 'params.b (256,) in the checkpoint vs (128,) here' in message
  assert 'another --workdir' in message
  assert os.listdir(tmp_path / 'checkpoints') == ['1']  # a foreign checkpoint is not damaged


def test_other_settings_with_equal_shapes_are_a_foreign_checkpoint(tmp_path):
  _write_steps(tmp_path, steps=(1,))
  changed = {'model': {'width': 256, 'depths': (1, 2)}, 'optimizer': {'base_lr': 5e-4}}
  with pytest.raises(checkpointing.CheckpointError, match=r'optimizer.base_lr 0.001 -> 0.0005'):
    _restore(tmp_path, settings=changed)
  restored, _ = _restore(tmp_path)  # the same settings (tuples and lists alike) resume
  assert restored.step == 1


def test_failed_save_stops_naming_the_step_and_keeps_the_previous(tmp_path):
  """A real write error: the file size limit (EFBIG) stands in for a full disk."""
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=5, async_save=False, log=lambda m: None)
  ckpt.save(1, _state(value=1.0), {'pos': 1}, jax.random.key(1), SETTINGS)
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))  # the state's array is 512 KiB
  try:
    with pytest.raises(checkpointing.CheckpointError) as e:
      ckpt.save(2, _state(value=2.0), {'pos': 2}, jax.random.key(2), SETTINGS)
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, previous)
  ckpt.close()
  message = str(e.value)
  assert message.startswith('saving checkpoint step 2 in ')
  assert 'File too large' in message and 'step 1, reads back' in message, message
  assert os.listdir(tmp_path / 'checkpoints') == ['1'] or all(
    not name.isdigit() or name == '1' for name in os.listdir(tmp_path / 'checkpoints')
  )
  restored, _ = _restore(tmp_path)
  assert restored.step == 1


def test_failed_async_save_is_reported_by_close(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=5, async_save=True, log=lambda m: None)
  ckpt.save(1, _state(value=1.0), {'pos': 1}, jax.random.key(1), SETTINGS)
  ckpt.wait()
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
  try:
    with pytest.raises(checkpointing.CheckpointError, match='saving checkpoint step 2'):
      ckpt.save(2, _state(value=2.0), {'pos': 2}, jax.random.key(2), SETTINGS)
      ckpt.close()
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, previous)
  assert [n for n in os.listdir(tmp_path / 'checkpoints') if n.isdigit()] == ['1']


# --- the workdir lock ----------------------------------------------------------------------------
def test_a_live_holder_is_named_and_keeps_the_workdir(tmp_path):
  first = workdir_lock.WorkdirLock(str(tmp_path))
  first.acquire()
  try:
    with pytest.raises(workdir_lock.WorkdirBusyError) as e:
      workdir_lock.WorkdirLock(str(tmp_path)).acquire()
    message = str(e.value)
    assert f'host {socket.gethostname()}, pid {os.getpid()}, started ' in message
  finally:
    first.release()
  assert not (tmp_path / workdir_lock.LOCK_FILE).exists()
  second = workdir_lock.WorkdirLock(str(tmp_path))
  second.acquire()  # released: free again
  second.release()


def test_a_holder_whose_process_is_gone_is_taken_over_with_a_warning(tmp_path):
  child = subprocess.Popen(
    [
      sys.executable,
      '-c',
      'import sys; from groupvit_jax import workdir_lock; '
      'workdir_lock.WorkdirLock(sys.argv[1]).acquire()',
      str(tmp_path),
    ]
  )
  assert child.wait(timeout=120) == 0  # exits holding the lock, as a killed trainer would
  logs = []
  lock = workdir_lock.WorkdirLock(str(tmp_path), log=logs.append)
  lock.acquire()
  try:
    assert lock.holder()['pid'] == os.getpid()
    assert (
      len(logs) == 1 and logs[0].startswith('warning: took over') and f'pid {child.pid}' in logs[0]
    )
  finally:
    lock.release()


def test_a_holder_on_another_host_is_stale_only_when_its_heartbeat_stops(tmp_path):
  path = tmp_path / workdir_lock.LOCK_FILE
  path.write_text('{"host": "other-host", "pid": 1, "start_time": 0}')
  with pytest.raises(workdir_lock.WorkdirBusyError, match='host other-host, pid 1'):
    workdir_lock.WorkdirLock(str(tmp_path), stale_after_s=60).acquire()
  old = time.time() - 120
  os.utime(path, (old, old))
  lock = workdir_lock.WorkdirLock(str(tmp_path), stale_after_s=60, log=lambda m: None)
  lock.acquire()
  lock.release()


def test_the_heartbeat_refreshes_the_lock(tmp_path):
  lock = workdir_lock.WorkdirLock(str(tmp_path), heartbeat_s=0.05)
  lock.acquire()
  try:
    path = tmp_path / workdir_lock.LOCK_FILE
    old = time.time() - 1000
    os.utime(path, (old, old))
    deadline = time.time() + 10
    while os.path.getmtime(path) < time.time() - 100:
      assert time.time() < deadline
      time.sleep(0.05)
  finally:
    lock.release()
