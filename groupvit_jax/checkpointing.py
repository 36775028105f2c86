"""Orbax checkpoints of the full training state plus every process's data-iterator position.

Layout: WORKDIR/checkpoints/<step>/{state, data}. `state` is the sharded TrainState written
cooperatively by all processes; `data` is JSON: the list of per-process iterator states (gathered
to process 0, which writes it), the run's base RNG key and the model and optimizer settings that
produced the state.

A checkpoint never costs a run (docs/checkpoints.md):
- damaged: a step that does not restore (truncated or corrupt array files, missing metadata, files
  that differ from the sizes and CRC32s recorded in <step>/integrity.json when it was written) is
  moved to WORKDIR/checkpoints_damaged/ (kept for inspection, outside keep-N) and the next older
  step is tried; when none restores the run stops naming every step tried, and nothing is moved;
- foreign: a step written with other parameter shapes or other model / optimizer settings stops
  the run before any step, listing the differences;
- failed save: the run stops naming the step, the cause and the newest complete step, which is
  checked to still read back. Orbax writes each step into a temporary directory and renames it
  when complete, so a failed save never leaves a step that looks complete. No retry: a full disk
  or a lost mount does not heal in a second, and a clear stop costs less than a silent gap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import sys
import time
import zlib
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

DAMAGED_DIR = 'checkpoints_damaged'
INTEGRITY_FILE = 'integrity.json'


class CheckpointError(RuntimeError):
  """A checkpoint problem the run cannot go past; the message says which step and the way out."""


def gather_json(obj: Any) -> list[Any]:
  """Every process's JSON-serialisable `obj`, in process order (a collective)."""
  if jax.process_count() == 1:
    return [obj]
  data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
  lengths = multihost_utils.process_allgather(np.array([data.size], np.int32))
  padded = np.zeros(int(lengths.max()), np.uint8)
  padded[: data.size] = data
  gathered = multihost_utils.process_allgather(padded)
  return [
    json.loads(bytes(row[: int(n)]).decode()) for row, n in zip(gathered, lengths.reshape(-1))
  ]


@dataclasses.dataclass
class Restored:
  step: int
  state: Any
  data_state: Any  # this process's iterator state
  rng: jax.Array


class _QuietStderr(io.TextIOBase):
  """Collects what other threads print while a read or write fails.

  When one array of a step cannot be read, orbax abandons its event loop while tensorstore still
  completes the step's other reads; each completion prints a 'RuntimeError: Event loop is closed'
  traceback from a worker thread (hundreds for one damaged file). Those are the symptom, not the
  cause: they are kept for the damaged step's report instead of burying the one line that matters.
  """

  def __init__(self):
    super().__init__()
    self.parts: list[str] = []
    self.failed = False  # set when the text is noise of a failure, not to be passed on

  def write(self, text: str) -> int:
    self.parts.append(text)
    return len(text)

  def text(self) -> str:
    return ''.join(self.parts)


@contextlib.contextmanager
def _stderr_collected():
  """Collects stderr for the block; passes it on if the block raised nothing (ordinary warnings)."""
  quiet, previous = _QuietStderr(), sys.stderr
  sys.stderr = quiet
  try:
    yield quiet
  except BaseException:
    quiet.failed = True
    raise
  finally:
    sys.stderr = previous
    if not quiet.failed:
      previous.write(quiet.text())


def root_cause(error: BaseException) -> str:
  """The innermost message of an exception chain on one line: orbax wraps the tensorstore error
  that names the file and the array in a generic 'Encountered error while reading ...'."""
  chain, seen = [], set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    chain.append(error)
    error = error.__cause__ or error.__context__
  innermost = chain[-1]
  text = ' '.join(str(innermost).split()) or type(innermost).__name__
  return f'{type(innermost).__name__}: {text}'


def _leaf_name(path) -> str:
  parts = []
  for key in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return '.'.join(parts)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  return {
    _leaf_name(path): tuple(leaf.shape)
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    if hasattr(leaf, 'shape')
  }


def _flat(d: Any, prefix: str = '') -> dict[str, Any]:
  if not isinstance(d, dict):
    return {prefix: d}
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f'{prefix}.{k}' if prefix else str(k)))
  return out


def _file_digests(directory: str) -> dict[str, tuple[int, int]]:
  """{path relative to `directory`: (bytes, CRC32)} of every file below it but the record."""
  digests = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, directory)
      if rel == INTEGRITY_FILE:
        continue
      crc = 0
      with open(path, 'rb') as f:
        while chunk := f.read(1 << 22):
          crc = zlib.crc32(chunk, crc)
      digests[rel] = (os.path.getsize(path), crc)
  return digests


def _agreed(reason: str | None) -> str | None:
  """The first process's reason, if any process has one: a step one process cannot read is
  damaged for all (a collective)."""
  bad = [(i, r) for i, r in enumerate(gather_json(reason)) if r is not None]
  if not bad:
    return None
  process, why = bad[0]
  return f'process {process}: {why}' if jax.process_count() > 1 else why


def _jsonable(settings: dict[str, Any] | None) -> dict[str, Any] | None:
  """As the checkpoint's JSON holds them (tuples become lists), so the two compare equal."""
  return None if settings is None else json.loads(json.dumps(settings))


def _preview(items: list[str], n: int = 8) -> str:
  shown = ', '.join(items[:n])
  return shown + (f' and {len(items) - n} more' if len(items) > n else '')


def describe_mismatch(
  saved_shapes: dict[str, tuple[int, ...]],
  run_shapes: dict[str, tuple[int, ...]],
  saved_settings: dict[str, Any] | None,
  run_settings: dict[str, Any],
) -> list[str]:
  """What differs between a checkpoint and this run: settings, then shapes (flattened names)."""
  problems = []
  differ = [
    k for k in sorted(set(saved_shapes) & set(run_shapes)) if saved_shapes[k] != run_shapes[k]
  ]
  # The optimizer's moments mirror the parameters: name the parameters, count their mirrors.
  params = [k for k in differ if k.startswith('params.')]
  suffixes = tuple('.' + k.removeprefix('params.') for k in params)
  others = [k for k in differ if k not in params and not k.endswith(suffixes)]
  for label, keys in (('parameters', params), ('other arrays', others)):
    if keys:
      listed = [f'{k} {saved_shapes[k]} in the checkpoint vs {run_shapes[k]} here' for k in keys]
      problems.append(f'{len(keys)} {label} differ in shape: {_preview(listed)}')
  only_saved = sorted(set(saved_shapes) - set(run_shapes))
  only_run = sorted(set(run_shapes) - set(saved_shapes))
  if only_saved:
    problems.append(f'{len(only_saved)} arrays only in the checkpoint: {_preview(only_saved)}')
  if only_run:
    problems.append(f'{len(only_run)} arrays only in this run: {_preview(only_run)}')
  if saved_settings is not None:
    saved, run = _flat(saved_settings), _flat(run_settings)
    changed = [
      f'{k} {saved.get(k, "(absent)")!r} -> {run.get(k, "(absent)")!r}'
      for k in sorted(set(saved) | set(run))
      if saved.get(k) != run.get(k)
    ]
    if changed:
      problems.insert(0, f'settings changed: {_preview(changed)}')
  return problems


class Checkpointer:
  """Async keep-N checkpoints under WORKDIR/checkpoints with auto-resume past damaged steps."""

  def __init__(
    self,
    workdir: str,
    keep: int,
    async_save: bool = True,
    log: Callable[[str], None] = print,
  ):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, 'checkpoints')
    self._log = log
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=async_save
    )
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=options,
      item_names=('state', 'data'),
      item_handlers={'state': ocp.StandardCheckpointHandler(), 'data': ocp.JsonCheckpointHandler()},
    )
    self._pending: int | None = None  # the step whose asynchronous save may still be running
    self._unsealed: list[int] = []  # saved steps whose files are not yet checksummed

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  # --- saving --------------------------------------------------------------------------------
  def save(
    self,
    step: int,
    state: Any,
    data_state: Any,
    rng: jax.Array,
    settings: dict[str, Any] | None = None,
    force: bool = False,
  ) -> bool:
    """Saves (asynchronously) state + all processes' data states + `settings` (the model and
    optimizer config, checked on resume). Collective across processes. A failed save of this or
    the previous step raises CheckpointError."""
    data = {
      'iterators': gather_json(data_state),
      'rng': np.asarray(jax.random.key_data(rng)).tolist(),
      'settings': _jsonable(settings),
    }
    previous = self._pending
    try:
      # A failed write, like a failed read, makes tensorstore's other writes print tracebacks.
      with _stderr_collected():
        self.manager.check_for_errors()  # the previous asynchronous save's outcome
        self._pending = step
        saved = self.manager.save(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data)),
          force=force,
        )
        in_progress = self.manager.is_saving_in_progress()
        if not in_progress:
          self.manager.check_for_errors()
    except Exception as e:  # any write error: disk full, permissions, a lost mount
      failed = previous if previous is not None and previous not in self._complete_steps() else step
      raise self._save_failed(failed, e) from e
    # A save starts only after the previous one completed: that one can be sealed now.
    self._seal_complete(exclude=step if in_progress else None)
    if saved and in_progress:
      self._unsealed.append(step)
    elif saved:
      self._seal(step)
    return saved

  def _seal_complete(self, exclude: int | None = None) -> None:
    for step in [s for s in self._unsealed if s != exclude]:
      self._seal(step)
    self._unsealed = [s for s in self._unsealed if s == exclude]

  def _seal(self, step: int) -> None:
    """Records every file's size and CRC32 of a complete step (process 0, shared file system):
    array data is stored with no checksum of its own, so garbage in it would restore silently."""
    if jax.process_index() == 0:
      directory = os.path.join(self.directory, str(step))
      if os.path.isdir(directory):
        with open(os.path.join(directory, INTEGRITY_FILE), 'w') as f:
          json.dump(_file_digests(directory), f, sort_keys=True)

  def _complete_steps(self) -> list[int]:
    self.manager.reload()
    return list(self.manager.all_steps())

  def _save_failed(self, step: int, error: BaseException) -> CheckpointError:
    complete = [s for s in self._complete_steps() if s != step]
    if step in self.manager.all_steps():
      # A store without atomic renames can leave a finalised-looking step: never resume from it.
      self._log(f'moved the incomplete step {step} to {self._move_aside(step)}')
    newest = max(complete) if complete else None
    if newest is None:
      kept = 'there is no complete checkpoint yet (a rerun starts from step 0)'
    else:
      try:
        self.manager.item_metadata(newest)
        kept = f'the newest complete checkpoint, step {newest}, reads back'
      except Exception as e:  # noqa: BLE001 -- reported, not hidden
        kept = f'the newest complete checkpoint, step {newest}, does not read back either ({e})'
    return CheckpointError(
      f'saving checkpoint step {step} in {self.directory} failed: {root_cause(error)}; {kept}. '
      'Fix the cause (e.g. free disk space) and rerun the same command to resume.'
    )

  def wait(self) -> None:
    try:
      with _stderr_collected():
        self.manager.wait_until_finished()
        self.manager.check_for_errors()
    except Exception as e:
      raise self._save_failed(self._pending if self._pending is not None else -1, e) from e
    self._pending = None
    self._seal_complete()

  def close(self) -> None:
    try:
      self.wait()
    except CheckpointError:
      with contextlib.suppress(Exception):  # secondary to the error being raised
        self.manager.close()
      raise
    self.manager.close()

  # --- restoring -----------------------------------------------------------------------------
  def _read_step(self, step: int, abstract_state: Any, settings: dict[str, Any] | None):
    """(restored, None) or (None, reason); raises CheckpointError for a foreign checkpoint.

    Every phase ends with the processes agreeing: orbax's reads are collectives, so a process
    must not start one that another has skipped."""
    reason = _agreed(self._verify(step))
    if reason is not None:
      return None, reason
    metadata = saved_data = None
    try:
      metadata = self.manager.item_metadata(step)['state']
      if metadata is None:
        raise ValueError('the state metadata is missing')
      saved = self.manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))
      saved_data = saved['data']
    except Exception as e:  # noqa: BLE001 -- any unreadable metadata means a damaged step
      reason = f'its metadata does not read: {root_cause(e)}'
    reason = _agreed(reason)
    if reason is not None:
      return None, reason
    problems = describe_mismatch(
      _shapes(metadata),
      _shapes(abstract_state),
      saved_data.get('settings') if settings is not None else None,
      _jsonable(settings) or {},
    )
    if problems:
      raise CheckpointError(
        f'{self.directory} holds checkpoints of another model or optimizer (step {step}): '
        + '; '.join(problems)
        + '. To start fresh, pass another --workdir (or move the checkpoints directory away); '
        'to resume it, run with the settings it was written with.'
      )
    iterators = saved_data['iterators']
    if len(iterators) != jax.process_count():
      raise CheckpointError(
        f'checkpoint step {step} holds data states of {len(iterators)} processes; this run has '
        f'{jax.process_count()}. Resume with {len(iterators)} processes or start a new --workdir.'
      )
    restored = None
    try:
      restored = self.manager.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
        ),
      )
      jax.block_until_ready(restored['state'])
    except Exception as e:  # noqa: BLE001 -- reported with its cause and the step moved aside
      reason = root_cause(e)
    reason = _agreed(reason)
    if reason is not None:
      return None, reason
    rng = jax.random.wrap_key_data(np.asarray(saved_data['rng'], np.uint32))
    return Restored(step, restored['state'], iterators[jax.process_index()], rng), None

  def _verify(self, step: int) -> str | None:
    """What differs from the step's recorded sizes and checksums, if they were recorded (process 0
    reads the files once for all processes)."""
    if jax.process_index() != 0:
      return None
    directory = os.path.join(self.directory, str(step))
    try:
      with open(os.path.join(directory, INTEGRITY_FILE)) as f:
        recorded = json.load(f)
    except FileNotFoundError:
      return None  # written before sealing existed, or killed between its save and its seal
    except (OSError, ValueError) as e:
      return f'its {INTEGRITY_FILE} does not read: {root_cause(e)}'
    found = _file_digests(directory)
    for name, (size, crc) in sorted(recorded.items()):
      if name not in found:
        return f'file {name} is missing'
      if found[name][0] != size:
        return f'file {name} has {found[name][0]} bytes, {size} when written'
      if found[name][1] != crc:
        return f'file {name} has changed since it was written (CRC32 differs)'
    return None

  def restore_latest(
    self, abstract_state: Any, settings: dict[str, Any] | None = None
  ) -> Restored | None:
    """The newest step that restores (placed as `abstract_state`'s shardings), or None for an
    empty directory. Damaged newer steps are moved aside; raises CheckpointError when no step
    restores or the checkpoints are foreign (`settings` differ or shapes do not match)."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    failures: list[tuple[int, str]] = []
    restored = None
    with _stderr_collected() as noise:
      for step in steps:
        restored, reason = self._read_step(step, abstract_state, settings)
        if reason is None:
          break
        failures.append((step, reason))
        noise.failed = True
    for step, why in failures:
      self._write_report(step, why, noise.text())
    if restored is not None:
      for step, why in failures:
        target = self._move_aside(step)
        self._log(
          f'checkpoint step {step} does not restore ({why}); moved to {target}; '
          f'resuming from step {restored.step}'
        )
      return restored
    if not failures:
      return None
    tried = '; '.join(f'step {s}: {why}' for s, why in failures)
    raise CheckpointError(
      f'no checkpoint in {self.directory} restores ({tried}). Nothing was moved or deleted. '
      'Restore the files, or start fresh with another --workdir.'
    )

  # --- damaged steps -------------------------------------------------------------------------
  def _report_path(self, step: int) -> str:
    return os.path.join(self.workdir, DAMAGED_DIR, f'step_{step}.txt')

  def _write_report(self, step: int, why: str, noise: str) -> None:
    if jax.process_index() != 0:
      return
    os.makedirs(os.path.join(self.workdir, DAMAGED_DIR), exist_ok=True)
    with open(self._report_path(step), 'w') as f:
      f.write(f'checkpoint step {step} did not restore at {time.strftime("%Y-%m-%d %H:%M:%S")}\n')
      f.write(f'{why}\n\n--- output of the failed read ---\n{noise}')

  def _move_aside(self, step: int) -> str:
    """Moves step's directory to WORKDIR/checkpoints_damaged/<step>-<time>; returns that path."""
    target = os.path.join(self.workdir, DAMAGED_DIR, f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
    if jax.process_index() == 0:
      source = os.path.join(self.directory, str(step))
      os.makedirs(os.path.dirname(target), exist_ok=True)
      if os.path.exists(source):
        shutil.move(source, target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'checkpoint_moved_{step}')
    self.manager.reload()
    return target
