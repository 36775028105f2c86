"""Reads TorchScript archives (`torch.jit.save`, e.g. OpenAI's CLIP `.pt`) without PyTorch.

A TorchScript archive is a torch zip archive whose `data.pkl` pickles the module tree itself:
every module is an instance of a class `__torch__.<path>.<Name>` whose pickled state is a dict of
all its attributes (parameters, buffers, submodules, and plain attributes such as `training` or a
tensor attribute like CLIP's `attn_mask`). Which attributes are parameters and buffers is recorded
only in the class definitions under `<root>/code/` (`__parameters__ = [...]`,
`__buffers__ = [...]`), so the reader parses those lists and walks the tree with them; the result
is what `torch.jit.load(path).state_dict()` returns.
"""

from __future__ import annotations

import dataclasses
import os
import re
import zipfile
from typing import Any

import numpy as np

from groupvit_jax.checkpoints.torch_pickle import TorchArchiveError, _Unpickler, archive_root

# `class Name(Module):` (a module) or `class Name:` (a TorchScript class, never state).
_CLASS_RE = re.compile(r'^class (\w+)(\((\w+)\))?:[^\n]*\n((?:[ \t]+[^\n]*\n|[ \t]*\n)*)', re.M)
_LIST_RE = r'^[ \t]+{}[ \t]*=[ \t]*\[(.*?)\]'


@dataclasses.dataclass(frozen=True)
class _ClassInfo:
  is_module: bool
  parameters: tuple[str, ...]
  buffers: tuple[str, ...]


class _ScriptObject:
  """An instance of a pickled `__torch__` class; its attributes are kept in `attrs`."""

  qualname = ''

  def __setstate__(self, state):
    # Classes with a custom `__getstate__` pickle something else than a dict; such objects are
    # never modules, so their state is only kept for completeness.
    self.attrs = state if isinstance(state, dict) else {}


@dataclasses.dataclass
class _Opaque:
  """A torch object other than a tensor (a device, a quantized tensor, ...); never state."""

  name: str
  args: tuple = ()

  def __call__(self, *args, **kwargs):
    return _Opaque(self.name, args)


def _typed_collection(value, *unused):
  return value


class _ScriptUnpickler(_Unpickler):
  def __init__(self, fileobj, archive: zipfile.ZipFile, root: str):
    super().__init__(fileobj, archive, root)
    self._classes: dict[str, type] = {}

  def find_class(self, module: str, name: str) -> Any:
    if module.split('.')[0] == '__torch__':
      qualname = f'{module}.{name}'
      if qualname not in self._classes:
        self._classes[qualname] = type(name, (_ScriptObject,), {'qualname': qualname})
      return self._classes[qualname]
    if module == 'torch.jit._pickle':
      # Typed lists and dicts of module attributes (List[int], Dict[str, Tensor], ...).
      if name.startswith('build_') and name != 'build_tensor_from_id':
        return _typed_collection
      if name == 'restore_type_tag':
        return _typed_collection
    try:
      return super().find_class(module, name)
    except TorchArchiveError:
      # Whatever torch object this is, it is not a float tensor; if it turns out to be a
      # parameter or buffer the walk below names it.
      return _Opaque(f'{module}.{name}')


def _read_class_infos(archive: zipfile.ZipFile, root: str) -> dict[str, _ClassInfo]:
  code = f'{root}code/'
  infos = {}
  for member in archive.namelist():
    if not (member.startswith(code) and member.endswith('.py')):
      continue
    module = member[len(code) : -len('.py')].replace('/', '.')
    source = archive.read(member).decode('utf-8')
    for match in _CLASS_RE.finditer(source):
      name, base, body = match.group(1), match.group(3), match.group(4)
      lists = {}
      for field in ('__parameters__', '__buffers__'):
        found = re.search(_LIST_RE.format(field), body, re.M | re.S)
        lists[field] = tuple(re.findall(r'"([^"]*)"', found.group(1))) if found else ()
      infos[f'{module}.{name}'] = _ClassInfo(
        is_module=base == 'Module',
        parameters=lists['__parameters__'],
        buffers=lists['__buffers__'],
      )
  return infos


def is_torchscript_archive(path: str | os.PathLike) -> bool:
  """Whether `path` is a zip archive written by `torch.jit.save` (it holds a `code/` folder)."""
  path = os.fspath(path)
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as archive:
    return any(f'/{n}'.find('/code/') != -1 for n in archive.namelist())


def _collect(
  obj: _ScriptObject,
  prefix: str,
  infos: dict[str, _ClassInfo],
  out: dict[str, np.ndarray],
  path: str,
) -> None:
  info = infos.get(obj.qualname)
  if info is None:
    raise TorchArchiveError(
      f'{path}: the archive has no class definition for {obj.qualname} under code/, so its '
      'parameters cannot be told from its other attributes'
    )
  attrs = obj.attrs
  # nn.Module.state_dict order: own parameters, own buffers, then submodules in attribute order.
  for name in info.parameters + info.buffers:
    value = attrs.get(name)
    if value is None:  # an optional parameter left unset (e.g. MultiheadAttention.q_proj_weight)
      continue
    if not isinstance(value, np.ndarray):
      raise TorchArchiveError(
        f'{path}: {prefix}{name} is a {getattr(value, "name", type(value).__name__)}, '
        'not a dense tensor this reader can rebuild'
      )
    out[prefix + name] = value
  for name, value in attrs.items():
    if not isinstance(value, _ScriptObject):
      continue
    sub = infos.get(value.qualname)
    if sub is None or sub.is_module:  # an unknown class errors inside
      _collect(value, f'{prefix}{name}.', infos, out, path)


def load_torchscript_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Parameters and buffers of a TorchScript archive, as `torch.jit.load(path).state_dict()`.

  Args:
    path: a file written by `torch.jit.save` (e.g. OpenAI's `ViT-B-16.pt`).

  Returns:
    {dotted attribute path: array}, arrays in their stored dtype (OpenAI's CLIP files are partly
    float16) and shape, e.g. `visual.conv1.weight` [W, 3, P, P]. Non-state attributes (the
    `training` flag, plain tensor attributes such as `attn_mask`) are left out.
  """
  path = os.fspath(path)
  if not zipfile.is_zipfile(path):
    raise TorchArchiveError(f'{path} is not a zip archive, so not a TorchScript file')
  with zipfile.ZipFile(path) as archive:
    root = archive_root(archive, path)
    infos = _read_class_infos(archive, root)
    if not infos:
      raise TorchArchiveError(
        f'{path} has no TorchScript code/ folder; it is a plain torch.save archive '
        '(read it with torch_pickle.load_torch_archive)'
      )
    with archive.open(f'{root}data.pkl') as f:
      top = _ScriptUnpickler(f, archive, root).load()
  if not isinstance(top, _ScriptObject):
    raise TorchArchiveError(
      f'{path}: data.pkl holds a {type(top).__name__}, not a TorchScript module'
    )
  out: dict[str, np.ndarray] = {}
  _collect(top, '', infos, out, path)
  return out
