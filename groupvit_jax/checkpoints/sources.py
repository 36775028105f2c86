"""Reads the checkpoints users hold into (NVlabs-named numpy state dict, GroupViTConfig).

Sources: an NVlabs `.pth` (state dict under 'model', optionally an OmegaConf 'config'), a Hugging
Face `GroupViTModel` directory (config.json + model.safetensors or pytorch_model.bin, sharded or
not), or a bare state dict file in either naming.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from groupvit_jax.checkpoints import infer, keymaps
from groupvit_jax.checkpoints.torch_pickle import load_torch_archive
from groupvit_jax.models.config import GroupViTConfig


@dataclasses.dataclass
class LoadedSource:
  state_dict: dict[str, np.ndarray]  # NVlabs names
  config: GroupViTConfig
  kind: str  # 'nvlabs', 'huggingface', 'state_dict'
  config_origin: str  # where the architecture came from


_SAFETENSORS_DTYPES = {
  'F64': np.float64,
  'F32': np.float32,
  'F16': np.float16,
  'BF16': ml_dtypes.bfloat16,
  'I64': np.int64,
  'I32': np.int32,
  'I16': np.int16,
  'I8': np.int8,
  'U8': np.uint8,
  'BOOL': np.bool_,
}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of a `.safetensors` file, bfloat16 included (safetensors.numpy lacks it)."""
  with open(path, 'rb') as f:
    header_len = int.from_bytes(f.read(8), 'little')
    header = json.loads(f.read(header_len))
  size = os.path.getsize(path) - 8 - header_len
  # np.memmap refuses an empty region (a file of only empty tensors).
  data = (
    np.memmap(path, np.uint8, mode='r', offset=8 + header_len) if size else np.empty(0, np.uint8)
  )
  out = {}
  for name, entry in header.items():
    if name == '__metadata__':
      continue
    if entry['dtype'] not in _SAFETENSORS_DTYPES:
      raise ValueError(f'{path}: tensor {name!r} has unsupported dtype {entry["dtype"]}')
    begin, end = entry['data_offsets']
    dtype = np.dtype(_SAFETENSORS_DTYPES[entry['dtype']])
    out[name] = np.array(data[begin:end].view(dtype).reshape(entry['shape']), copy=True)
  return out


def _read_tensor_file(path: str) -> dict[str, Any]:
  if path.endswith('.safetensors'):
    return read_safetensors(path)
  return load_torch_archive(path)


def read_hf_weights(directory: str) -> dict[str, np.ndarray]:
  for index_name in ('model.safetensors.index.json', 'pytorch_model.bin.index.json'):
    index_path = os.path.join(directory, index_name)
    if os.path.exists(index_path):
      with open(index_path) as f:
        files = sorted(set(json.load(f)['weight_map'].values()))
      sd = {}
      for name in files:
        sd.update(_read_tensor_file(os.path.join(directory, name)))
      return sd
  for name in ('model.safetensors', 'pytorch_model.bin'):
    path = os.path.join(directory, name)
    if os.path.exists(path):
      return _read_tensor_file(path)
  raise FileNotFoundError(
    f'{directory} has config.json but no model.safetensors or '
    'pytorch_model.bin (nor a sharded index)'
  )


def _plain(obj: Any) -> Any:
  """OmegaConf / mappings -> plain dicts and lists."""
  try:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(obj, (DictConfig, ListConfig)):
      return OmegaConf.to_container(obj, resolve=True)
  except ImportError:  # omegaconf is a dependency, but a bare dict needs nothing of it
    pass
  if isinstance(obj, Mapping):
    return {k: _plain(v) for k, v in obj.items()}
  return obj


def _as_state_dict(obj: Any, path: str) -> dict[str, np.ndarray]:
  if not isinstance(obj, Mapping):
    raise ValueError(
      f'{path}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}'
    )
  sd = {}
  for k, v in obj.items():
    if not isinstance(v, np.ndarray):
      raise ValueError(
        f'{path}: entry {k!r} is a {type(v).__name__}, not a tensor; is this a '
        'training checkpoint whose weights are under another key?'
      )
    sd[k.removeprefix('module.')] = v
  return sd


def load_source(path: str) -> LoadedSource:
  """Loads any supported source and infers its architecture. See the module docstring."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'checkpoint source {path} does not exist')
  declared_hf = declared_nv = None
  if os.path.isdir(path):
    cfg_path = os.path.join(path, 'config.json')
    if not os.path.exists(cfg_path):
      raise FileNotFoundError(
        f'{path} is a directory without config.json; expected a Hugging '
        'Face GroupViTModel directory'
      )
    with open(cfg_path) as f:
      declared_hf = json.load(f)
    if declared_hf.get('model_type') not in (None, 'groupvit'):
      raise ValueError(
        f"{cfg_path}: model_type {declared_hf.get('model_type')!r} is not 'groupvit'"
      )
    raw = read_hf_weights(path)
    kind = 'huggingface'
  else:
    obj = _read_tensor_file(path)
    kind = 'state_dict'
    if isinstance(obj, Mapping) and 'model' in obj and isinstance(obj['model'], Mapping):
      kind = 'nvlabs'
      if obj.get('config') is not None:
        declared_nv = _plain(obj['config'])
      obj = obj['model']
    elif (
      isinstance(obj, Mapping) and 'state_dict' in obj and isinstance(obj['state_dict'], Mapping)
    ):
      obj = obj['state_dict']
    raw = _as_state_dict(obj, path)

  sd = keymaps.hf_to_nvlabs(raw) if keymaps.is_hf_state_dict(raw) else dict(raw)
  if kind == 'state_dict' and keymaps.is_hf_state_dict(raw):
    kind = 'huggingface'
  cfg = infer.config_from_shapes(sd)
  origin = 'tensor shapes'
  if declared_hf is not None:
    cfg = infer.apply_hf_config(cfg, declared_hf)
    origin = 'Hugging Face config.json'
  elif declared_nv is not None and 'model' in declared_nv:
    cfg = infer.apply_nvlabs_config(cfg, declared_nv['model'])
    origin = 'NVlabs embedded config'
  else:
    logging.warning(
      'No declared config in %s: heads assumed width/64 (%d image, %d text); '
      'pass --set image.num_heads=N to override.',
      path,
      cfg.image.num_heads,
      cfg.text.num_heads,
    )
  return LoadedSource(sd, cfg, kind, origin)
