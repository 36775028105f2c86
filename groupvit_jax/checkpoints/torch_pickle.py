"""Reads `torch.save` zip archives (`.pth`, `pytorch_model.bin`) into numpy without PyTorch.

A torch zip archive holds `<root>/data.pkl` (a pickle whose tensors are persistent references to
storages) and one raw little-endian file per storage under `<root>/data/`. Tensors are rebuilt as
numpy views with the saved offset, shape and strides, then copied. Non-torch objects in the pickle
(e.g. the OmegaConf config of the NVlabs release) unpickle normally when their package is installed.
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

_STORAGE_DTYPES = {
  'FloatStorage': np.float32,
  'DoubleStorage': np.float64,
  'HalfStorage': np.float16,
  'BFloat16Storage': ml_dtypes.bfloat16,
  'LongStorage': np.int64,
  'IntStorage': np.int32,
  'ShortStorage': np.int16,
  'CharStorage': np.int8,
  'ByteStorage': np.uint8,
  'BoolStorage': np.bool_,
}


class TorchArchiveError(ValueError):
  """The file is not a torch zip archive this reader understands."""


class _StorageType:
  def __init__(self, name: str):
    if name not in _STORAGE_DTYPES:
      raise TorchArchiveError(f'unsupported tensor storage type torch.{name}')
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage, offset, size, stride, *unused):
  itemsize = storage.dtype.itemsize
  if not size:
    return np.array(storage[offset], copy=True)
  view = np.lib.stride_tricks.as_strided(
    storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
  )
  return np.array(view, copy=True)


def _rebuild_parameter(data, *unused):
  return data


class _Unpickler(pickle.Unpickler):
  def __init__(self, fileobj, archive: zipfile.ZipFile, root: str):
    super().__init__(fileobj)
    self._archive = archive
    self._root = root
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module: str, name: str) -> Any:
    if module == 'torch._utils' and name == '_rebuild_tensor_v2':
      return _rebuild_tensor
    if module == 'torch._utils' and name in ('_rebuild_parameter', '_rebuild_parameter_with_state'):
      return _rebuild_parameter
    if module == 'torch' and name.endswith('Storage'):
      return _StorageType(name)
    if module == 'torch' and name == 'Size':
      return tuple
    if module == 'collections' and name == 'OrderedDict':
      return collections.OrderedDict
    if module.split('.')[0] == '__torch__':
      raise TorchArchiveError(
        f'this is a TorchScript archive (it pickles {module}.{name}); read it with '
        'groupvit_jax.checkpoints.torchscript.load_torchscript_state_dict'
      )
    if module.split('.')[0] == 'torch':
      raise TorchArchiveError(f'cannot read torch object {module}.{name} without PyTorch')
    return super().find_class(module, name)

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == 'storage'):
      raise TorchArchiveError(f'unexpected persistent id {pid!r}')
    _, storage_type, key, _location, _numel = pid
    if key not in self._storages:
      raw = self._archive.read(f'{self._root}data/{key}')
      self._storages[key] = np.frombuffer(raw, storage_type.dtype)
    return self._storages[key]


def load_torch_archive(path: str | os.PathLike) -> Any:
  """Loads the object saved by `torch.save(obj, path)`; tensors become numpy arrays."""
  path = os.fspath(path)
  if not zipfile.is_zipfile(path):
    raise TorchArchiveError(
      f'{path} is not a torch zip archive (saved by torch < 1.6 or not a checkpoint); '
      're-save it with a recent torch: torch.save(torch.load(p), p)'
    )
  with zipfile.ZipFile(path) as archive:
    root = archive_root(archive, path)
    with archive.open(f'{root}data.pkl') as f:
      return _Unpickler(f, archive, root).load()


def archive_root(archive: zipfile.ZipFile, path: str) -> str:
  """The folder prefix ('' or 'name/') holding `data.pkl` in a torch or TorchScript zip."""
  pkl = [n for n in archive.namelist() if n.endswith('/data.pkl') or n == 'data.pkl']
  # TorchScript archives can carry extra pickles (e.g. extra_files); the top-level one counts.
  if len(pkl) > 1:
    pkl = [n for n in pkl if n.count('/') <= 1]
  if len(pkl) != 1:
    raise TorchArchiveError(f'{path}: expected one data.pkl in the archive, found {pkl}')
  root = pkl[0][: -len('data.pkl')]
  byteorder = f'{root}byteorder'
  if byteorder in archive.namelist() and archive.read(byteorder).strip() != b'little':
    raise TorchArchiveError(f'{path}: big-endian archives are not supported')
  return root
