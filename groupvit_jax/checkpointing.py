"""Orbax checkpoints of the full training state plus every process's data-iterator position.

Layout: WORKDIR/checkpoints/<step>/{state, data}. `state` is the sharded TrainState written
cooperatively by all processes; `data` is JSON: the list of per-process iterator states (gathered
to process 0, which writes it) and the run's base RNG key.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils


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


class Checkpointer:
  """Async keep-N checkpoints under WORKDIR/checkpoints with auto-resume."""

  def __init__(self, workdir: str, keep: int, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=async_save
    )
    self.manager = ocp.CheckpointManager(
      self.directory, options=options, item_names=('state', 'data')
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(
    self, step: int, state: Any, data_state: Any, rng: jax.Array, force: bool = False
  ) -> bool:
    """Saves (asynchronously) state + all processes' data states. Collective across processes."""
    data = {
      'iterators': gather_json(data_state),
      'rng': np.asarray(jax.random.key_data(rng)).tolist(),
    }
    return self.manager.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data)),
      force=force,
    )

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, Any, jax.Array]:
    """(state placed as `abstract_state`'s shardings, this process's data state, base rng)."""
    restored = self.manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
      ),
    )
    data = restored['data']
    iterators = data['iterators']
    if len(iterators) != jax.process_count():
      raise ValueError(
        f'checkpoint step {step} holds data states of {len(iterators)} '
        f'processes; this run has {jax.process_count()}'
      )
    rng = jax.random.wrap_key_data(np.asarray(data['rng'], np.uint32))
    return restored['state'], iterators[jax.process_index()], rng

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
