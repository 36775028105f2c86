"""Training metrics: TensorBoard via clu, WORKDIR/metrics.jsonl, and a progress line with ETA.

Only process 0 writes. metrics.jsonl holds one JSON object per logged step; on resume, entries
after the restored step are dropped so a resumed run's file matches an uninterrupted run's.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

import jax


def _plain(value: Any) -> Any:
  """A JSON-safe scalar: floats as numbers, non-finite values as strings ('nan', 'inf')."""
  if isinstance(value, (str, bool)):
    return value
  value = float(value)
  return value if math.isfinite(value) else str(value)


class MetricsWriter:
  """Writes scalars to TensorBoard and metrics.jsonl (process 0 only)."""

  def __init__(self, workdir: str, resume_step: int | None = None):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    # clu's writers import tensorflow: loaded only when a run writes metrics, so that recipes (which
    # import the trainer for base_config) load where only the core is installed.
    from clu import metric_writers

    self._tb = (
      metric_writers.create_default_writer(
        workdir, just_logging=not self.active, asynchronous=False
      )
      if self.active
      else None
    )
    if self.active:
      self._truncate(resume_step)

  def _truncate(self, resume_step: int | None) -> None:
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = [line for line in f if line.strip()]
    keep = [
      line
      for line in lines
      if resume_step is not None and json.loads(line).get('step', 0) <= resume_step
    ]
    with open(self.path, 'w') as f:
      f.writelines(keep)

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.active:
      return
    row = {'step': int(step)}
    row.update({k: _plain(v) for k, v in sorted(scalars.items())})
    with open(self.path, 'a') as f:
      f.write(json.dumps(row) + '\n')
    numeric = {k: v for k, v in row.items() if k != 'step' and isinstance(v, (int, float))}
    self._tb.write_scalars(int(step), numeric)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()


class Progress:
  """Throughput and ETA between log steps (steps after the first compiled one)."""

  def __init__(self, total_steps: int, start_step: int, global_batch: int):
    self.total, self.batch = total_steps, global_batch
    self._t0, self._s0 = time.time(), start_step
    self._last_t, self._last_s = self._t0, start_step

  def tick(self, step: int) -> dict[str, float]:
    now = time.time()
    dt = max(now - self._last_t, 1e-9)
    rate = (step - self._last_s) / dt
    self._last_t, self._last_s = now, step
    remaining = (self.total - step) / rate if rate > 0 else float('inf')
    return {'steps_per_s': rate, 'images_per_s': rate * self.batch, 'eta_s': remaining}

  @staticmethod
  def line(step: int, total: int, scalars: Mapping[str, Any], timing: Mapping[str, float]) -> str:
    eta = timing['eta_s']
    eta_txt = time.strftime('%H:%M:%S', time.gmtime(eta)) if math.isfinite(eta) else '?'
    return (
      f'step {step}/{total} loss {float(scalars["loss"]):.4f} '
      f'lr {float(scalars["lr"]):.2e} {timing["images_per_s"]:.1f} img/s ETA {eta_txt}'
    )


def log(msg: str) -> None:
  """A progress message from process 0 (stdout; the trainer silences absl INFO chatter)."""
  if jax.process_index() == 0:
    print(msg, flush=True)
