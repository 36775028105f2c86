"""One trainer per workdir: WORKDIR/lock.json names the holder (host, pid, start time).

Process 0 of a run creates the file atomically (O_EXCL) and refreshes its modification time from
a heartbeat thread. A second run refuses to start while the holder lives. The holder is stale when
it ran on this host and its process is gone (or the pid now belongs to a later process), or, on
another host whose processes this one cannot see, when the heartbeat stopped more than
`stale_after_s` ago; a stale lock is taken over with a warning. Two runs taking over one stale
lock at once race on an atomic rename: one wins, the other sees the winner as a live holder.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Any, Callable

LOCK_FILE = 'lock.json'


class WorkdirBusyError(RuntimeError):
  """Another live trainer holds the workdir."""


def _process_start_ticks(pid: int) -> int | None:
  """The kernel's start time of `pid` (Linux /proc), to tell a pid reused by a later process."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      # The command name (field 2) may hold spaces; the fields after its ')' are fixed.
      return int(f.read().rsplit(')', 1)[1].split()[19])
  except (OSError, IndexError, ValueError):
    return None


def _alive(pid: int, start_ticks: int | None) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by another user
    return True
  if start_ticks is not None:
    now = _process_start_ticks(pid)
    return now is None or now == start_ticks
  return True


def describe(holder: dict[str, Any]) -> str:
  started = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('start_time', 0)))
  return f'host {holder.get("host")}, pid {holder.get("pid")}, started {started}'


class WorkdirLock:
  """Held by process 0 of a run for the run's lifetime; see the module docstring."""

  def __init__(
    self,
    workdir: str,
    stale_after_s: float = 300.0,
    heartbeat_s: float = 30.0,
    log: Callable[[str], None] = print,
  ):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
    self.stale_after_s = stale_after_s
    self.heartbeat_s = heartbeat_s
    self._log = log
    self._me = {
      'host': socket.gethostname(),
      'pid': os.getpid(),
      'start_time': time.time(),
      'start_ticks': _process_start_ticks(os.getpid()),
    }
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def holder(self) -> dict[str, Any] | None:
    """The recorded holder, or None when nobody holds the workdir."""
    try:
      with open(self.path) as f:
        return json.load(f)
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {'host': '?', 'pid': -1, 'start_time': 0, 'unreadable': True}

  def is_stale(self, holder: dict[str, Any]) -> bool:
    if holder.get('unreadable'):
      return self._heartbeat_age() > self.stale_after_s
    if holder.get('host') == self._me['host']:
      return not _alive(int(holder.get('pid', -1)), holder.get('start_ticks'))
    return self._heartbeat_age() > self.stale_after_s

  def _heartbeat_age(self) -> float:
    try:
      return time.time() - os.path.getmtime(self.path)
    except OSError:
      return float('inf')

  def _create(self) -> bool:
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, 'w') as f:
      json.dump(self._me, f)
    return True

  def acquire(self) -> None:
    """Takes the workdir or raises WorkdirBusyError naming the live holder."""
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    if not self._create():
      holder = self.holder()
      if holder is not None and not self.is_stale(holder):
        raise WorkdirBusyError(
          f'{os.path.dirname(self.path)} is in use by another trainer ({describe(holder)}); '
          f'stop it first, or use another --workdir. If that process is gone, delete {self.path}.'
        )
      stale = f'{self.path}.stale-{os.getpid()}'
      try:
        os.rename(self.path, stale)  # atomic: of two runs taking over, one rename succeeds
      except FileNotFoundError:
        pass
      if not self._create():
        holder = self.holder() or {}
        raise WorkdirBusyError(
          f'{os.path.dirname(self.path)} was taken by another trainer ({describe(holder)}) '
          'while this one started; use another --workdir.'
        )
      if os.path.exists(stale):
        os.remove(stale)
      if holder is not None:
        self._log(
          f'warning: took over {os.path.dirname(self.path)} from a trainer that is gone '
          f'({describe(holder)})'
        )
    self._thread = threading.Thread(target=self._beat, name='workdir-lock', daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      try:
        os.utime(self.path)
      except OSError:  # the file was removed under us: nothing to refresh
        return

  def release(self) -> None:
    """Stops the heartbeat and removes the file if it still names this process."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    holder = self.holder()
    if holder and holder.get('pid') == self._me['pid'] and holder.get('host') == self._me['host']:
      os.remove(self.path)
