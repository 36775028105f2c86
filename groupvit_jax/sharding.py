"""Device mesh, parameter partition rules and global batches built from per-process data.

The mesh is data in the config, e.g. `(('data', -1), ('fsdp', 1))` (-1: the remaining devices).
The batch is sharded over every mesh axis. Parameters follow regex rules on their '/'-joined
path: 'replicate', or 'fsdp' (shard the largest dimension divisible by the 'fsdp' axis size).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh(axes: Sequence[tuple[str, int]], devices=None) -> Mesh:
  """Mesh from [(name, size)] with at most one size -1 (all remaining devices)."""
  devices = list(jax.devices() if devices is None else devices)
  names = [a for a, _ in axes]
  sizes = [int(s) for _, s in axes]
  if sizes.count(-1) > 1:
    raise ValueError(f'at most one mesh axis may be -1, got {list(axes)}')
  known = int(np.prod([s for s in sizes if s != -1]))
  if len(devices) % known:
    raise ValueError(f'{len(devices)} devices cannot form a mesh {list(axes)}')
  sizes = [len(devices) // known if s == -1 else s for s in sizes]
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(
      f'mesh {dict(zip(names, sizes))} needs {int(np.prod(sizes))} devices, '
      f'{len(devices)} available'
    )
  return Mesh(np.asarray(devices).reshape(sizes), names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every mesh axis."""
  return NamedSharding(mesh, P(tuple(mesh.axis_names)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _leaf_spec(path: str, shape: tuple[int, ...], rules, mesh: Mesh) -> P:
  for pattern, rule in rules:
    if re.search(pattern, path):
      if rule == 'replicate':
        return P()
      if rule == 'fsdp':
        size = mesh.shape.get('fsdp', 1)
        if size == 1:
          return P()
        dims = sorted(range(len(shape)), key=lambda d: -shape[d])
        for d in dims:
          if shape[d] % size == 0:
            spec = [None] * len(shape)
            spec[d] = 'fsdp'
            return P(*spec)
        return P()  # nothing divisible: small tensors stay replicated
      raise ValueError(f'unknown partition rule {rule!r} for {pattern!r}')
  return P()


def tree_shardings(tree: Any, rules: Sequence[tuple[str, str]], mesh: Mesh) -> Any:
  """NamedShardings for every leaf of `tree` (arrays or ShapeDtypeStructs) from the rules."""

  def one(path, leaf):
    name = '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)
    return NamedSharding(mesh, _leaf_spec(name, tuple(getattr(leaf, 'shape', ())), rules, mesh))

  return jax.tree_util.tree_map_with_path(one, tree)


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Per-process batch (leading axis = this process's rows) -> global jax.Arrays."""
  sharding = batch_sharding(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()
  }
