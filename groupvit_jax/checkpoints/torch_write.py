"""Writes `torch.save`-compatible zip archives from numpy arrays, without PyTorch.

The layout is the one `torch.load` (including `weights_only=True`) and `torch_pickle` read:

  <root>/data.pkl       protocol-2 pickle; each tensor is `torch._utils._rebuild_tensor_v2(storage,
                        offset, size, stride, requires_grad, backward_hooks)` whose storage is the
                        persistent id ('storage', torch.<Type>Storage, key, 'cpu', numel)
  <root>/byteorder      'little'
  <root>/data/<key>     the raw little-endian bytes of one storage (one storage per tensor here)
  <root>/version        archive format version '3'

The pickle is emitted opcode by opcode rather than with `pickle.Pickler`: the pickler must name
`torch._utils._rebuild_tensor_v2` and `torch.FloatStorage` as globals, and the standard pickler
only writes globals it can import. Only the opcodes the weights-only unpickler accepts are used.
"""

from __future__ import annotations

import collections
import math
import os
import pickle
import struct
import zipfile
from typing import Any, Mapping

import ml_dtypes
import numpy as np

_STORAGE_TYPES = {
  np.dtype(np.float32): 'FloatStorage',
  np.dtype(np.float64): 'DoubleStorage',
  np.dtype(np.float16): 'HalfStorage',
  np.dtype(ml_dtypes.bfloat16): 'BFloat16Storage',
  np.dtype(np.int64): 'LongStorage',
  np.dtype(np.int32): 'IntStorage',
  np.dtype(np.int16): 'ShortStorage',
  np.dtype(np.int8): 'CharStorage',
  np.dtype(np.uint8): 'ByteStorage',
  np.dtype(np.bool_): 'BoolStorage',
}
# torch aligns each storage's bytes to 64 in the file (memory-mapped loads read them in place).
_ALIGNMENT = 64
_LOCAL_HEADER_SIZE = 30  # fixed part of a zip local file header
_PAD_EXTRA_ID = 0x4246  # the extra-field id torch uses for its alignment padding ('FB')


class _Writer:
  """Emits a protocol-2 pickle of plain containers and numpy arrays (as torch tensors)."""

  def __init__(self):
    self.out = bytearray(pickle.PROTO + b'\x02')
    self.storages: list[np.ndarray] = []

  def _global(self, module: str, name: str) -> None:
    self.out += pickle.GLOBAL + f'{module}\n{name}\n'.encode('ascii')

  def _ordered_dict(self) -> None:
    self._global('collections', 'OrderedDict')
    self.out += pickle.EMPTY_TUPLE + pickle.REDUCE

  def _int(self, v: int) -> None:
    if 0 <= v < 256:
      self.out += pickle.BININT1 + bytes([v])
    elif 0 <= v < 65536:
      self.out += pickle.BININT2 + struct.pack('<H', v)
    elif -(2**31) <= v < 2**31:
      self.out += pickle.BININT + struct.pack('<i', v)
    else:
      raw = v.to_bytes((v.bit_length() + 8) // 8, 'little', signed=True)
      self.out += pickle.LONG1 + bytes([len(raw)]) + raw

  def _tuple(self, items) -> None:
    self.out += pickle.MARK
    for item in items:
      self.dump(item)
    self.out += pickle.TUPLE

  def _tensor(self, array: np.ndarray) -> None:
    dtype = array.dtype.newbyteorder('=')
    if dtype not in _STORAGE_TYPES:
      raise TypeError(f'cannot save arrays of dtype {array.dtype} as torch tensors')
    key = str(len(self.storages))
    self.storages.append(np.ascontiguousarray(array, dtype=dtype.newbyteorder('<')))
    contiguous = [math.prod(array.shape[i + 1 :]) for i in range(array.ndim)]
    self._global('torch._utils', '_rebuild_tensor_v2')
    self.out += pickle.MARK
    self.out += pickle.MARK  # the storage's persistent id
    self.dump('storage')
    self._global('torch', _STORAGE_TYPES[dtype])
    self.dump(key)
    self.dump('cpu')
    self._int(array.size)
    self.out += pickle.TUPLE + pickle.BINPERSID
    self._int(0)  # storage offset
    self._tuple(array.shape)
    self._tuple(contiguous)
    self.out += pickle.NEWFALSE  # requires_grad
    self._ordered_dict()  # backward hooks
    self.out += pickle.TUPLE + pickle.REDUCE

  def dump(self, obj: Any) -> None:
    if obj is None:
      self.out += pickle.NONE
    elif isinstance(obj, (bool, np.bool_)):
      self.out += pickle.NEWTRUE if obj else pickle.NEWFALSE
    elif isinstance(obj, (int, np.integer)):
      self._int(int(obj))
    elif isinstance(obj, (float, np.floating)):
      self.out += pickle.BINFLOAT + struct.pack('>d', float(obj))
    elif isinstance(obj, str):
      raw = obj.encode('utf-8', 'surrogatepass')
      self.out += pickle.BINUNICODE + struct.pack('<I', len(raw)) + raw
    elif isinstance(obj, np.ndarray):
      self._tensor(obj)
    elif isinstance(obj, tuple):
      self._tuple(obj)
    elif isinstance(obj, list):
      self.out += pickle.EMPTY_LIST + pickle.MARK
      for item in obj:
        self.dump(item)
      self.out += pickle.APPENDS
    elif isinstance(obj, Mapping):
      if isinstance(obj, collections.OrderedDict):
        self._ordered_dict()
      else:
        self.out += pickle.EMPTY_DICT
      self.out += pickle.MARK
      for k, v in obj.items():
        self.dump(k)
        self.dump(v)
      self.out += pickle.SETITEMS
    else:
      raise TypeError(
        f'cannot save {type(obj).__name__} in a torch archive (supported: None, bool, int, '
        'float, str, tuple, list, dict, numpy arrays)'
      )


def _write_aligned(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
  """Stores `data` uncompressed with its first byte at a multiple of _ALIGNMENT in the file."""
  info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
  info.compress_type = zipfile.ZIP_STORED
  start = archive.fp.tell() + _LOCAL_HEADER_SIZE + len(name.encode('utf-8')) + 4
  pad = -start % _ALIGNMENT
  info.extra = struct.pack('<HH', _PAD_EXTRA_ID, pad) + b'\0' * pad
  archive.writestr(info, data)


def save_torch_archive(obj: Any, path: str | os.PathLike, root: str = 'archive') -> None:
  """Writes `obj` (nested dict/list/tuple/str/number/None with numpy arrays as tensors) so that
  `torch.load(path, weights_only=True)` returns it with torch tensors in place of the arrays.

  Arrays keep their shape and dtype (float32 [N, C] -> torch.float32 [N, C]); a 0-d array becomes
  a 0-d tensor. `collections.OrderedDict` stays an OrderedDict (state dicts are ordered).
  """
  writer = _Writer()
  writer.dump(obj)
  writer.out += pickle.STOP
  path = os.fspath(path)
  # No `.format_version` record: with it, torch may compute storage offsets from the exact
  # byte layout of its own zip writer, which Python's zipfile does not reproduce.
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as archive:
    _write_aligned(archive, f'{root}/data.pkl', bytes(writer.out))
    _write_aligned(archive, f'{root}/byteorder', b'little')
    for key, array in enumerate(writer.storages):
      _write_aligned(archive, f'{root}/data/{key}', array.tobytes())
    _write_aligned(archive, f'{root}/version', b'3\n')
