"""Reads the CLIP, DINO and MAE checkpoints users hold into canonical numpy state dicts.

Every source becomes a `TowerSource`: one family ('clip', 'vit' for DINO / timm ViTs, 'mae'),
a state dict in that family's canonical naming, the architecture hints the file declares, and
notes on what was dropped or assumed. Canonical names:

- clip: OpenAI CLIP's (`visual.conv1.weight`, `visual.transformer.resblocks.{i}.attn.in_proj_weight`
  [3W, W] with q|k|v rows, `visual.proj` [W, E], `token_embedding.weight`, `text_projection`
  [Wt, E], `logit_scale`, optional `logit_bias` and open_clip LayerScale `ls_{1,2}.gamma`).
- vit: timm / DINO's (`cls_token` [1, 1, D], `pos_embed` [1, N+1, D], `patch_embed.proj.*`,
  `blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.*`, `norm.*`).
- mae: the vit names plus the optional decoder (`mask_token`, `decoder_pos_embed`,
  `decoder_embed.*`, `decoder_blocks.{i}.*`, `decoder_norm.*`, `decoder_pred.*`).

Files read (no PyTorch needed): OpenAI TorchScript `.pt`; torch.save archives and safetensors
files holding a state dict in OpenAI, open_clip or Hugging Face naming; open_clip training
checkpoints (`{'state_dict': ...}`); DINO hub backbones and full training checkpoints
(`teacher` / `student`); MAE `{'model': ...}` checkpoints; Hugging Face `CLIPModel`, `ViTModel`
and `ViTMAEForPreTraining` directories and open_clip hub directories.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import zipfile
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from groupvit_jax.checkpoints import sources, torchscript
from groupvit_jax.checkpoints.torch_pickle import load_torch_archive

FAMILIES = ('clip', 'vit', 'mae')
DECLARED_KEYS = frozenset(
  (
    'activation',
    'eps',
    'num_heads',
    'text_num_heads',
    'decoder_num_heads',
    'norm_pix_loss',
    'mask_ratio',
    'image_size',
  )
)
_GROUPVIT_PREFIXES = ('img_encoder.', 'vision_model.encoder.stages.')
_OPEN_CLIP_WEIGHTS = ('open_clip_model.safetensors', 'open_clip_pytorch_model.bin')
# Non-weight entries of OpenAI's releases (build_model deletes them too).
_OPENAI_NON_WEIGHTS = ('input_resolution', 'context_length', 'vocab_size')


class TowerSourceError(ValueError):
  """The file is not a CLIP / DINO / MAE checkpoint this reader understands."""


class NotATowerError(TowerSourceError):
  """The file was read, but its tensors are in no CLIP, DINO/timm ViT or MAE naming (a GroupViT
  checkpoint, for instance)."""


@dataclasses.dataclass
class TowerSource:
  """A pretrained tower checkpoint in canonical naming; see the module docstring."""

  family: str  # 'clip' | 'vit' | 'mae'
  state_dict: dict[str, np.ndarray]  # canonical names; floating arrays float32
  declared: dict[str, Any]  # keys from DECLARED_KEYS only
  kind: str  # the file format, e.g. 'openai_torchscript', 'hf_vit', 'dino_training', 'mae_full'
  notes: list[str]  # what was dropped or assumed


# --------------------------------------------------------------------------- canonical key sets

_CLIP_BLOCK = (
  r'attn\.in_proj_(weight|bias)|attn\.out_proj\.(weight|bias)|ln_[12]\.(weight|bias)'
  r'|mlp\.c_fc\.(weight|bias)|mlp\.c_proj\.(weight|bias)|ls_[12]\.gamma'
)
_CLIP_KEY = re.compile(
  r'visual\.(class_embedding|positional_embedding|conv1\.weight|ln_pre\.(weight|bias)'
  r'|ln_post\.(weight|bias)|proj)'
  rf'|visual\.transformer\.resblocks\.\d+\.({_CLIP_BLOCK})'
  r'|token_embedding\.weight|positional_embedding|ln_final\.(weight|bias)|text_projection'
  r'|logit_scale|logit_bias'
  rf'|transformer\.resblocks\.\d+\.({_CLIP_BLOCK})'
)
_VIT_BLOCK = r'(norm1|attn\.qkv|attn\.proj|norm2|mlp\.fc1|mlp\.fc2)\.(weight|bias)'
_VIT_KEY = re.compile(
  rf'cls_token|pos_embed|patch_embed\.proj\.(weight|bias)|norm\.(weight|bias)|blocks\.\d+\.{_VIT_BLOCK}'
)
_MAE_DECODER_KEY = re.compile(
  r'mask_token|decoder_pos_embed|decoder_embed\.(weight|bias)|decoder_norm\.(weight|bias)'
  rf'|decoder_pred\.(weight|bias)|decoder_blocks\.\d+\.{_VIT_BLOCK}'
)


def _is_mae_decoder_key(key: str) -> bool:
  return _MAE_DECODER_KEY.fullmatch(key) is not None


# --------------------------------------------------------------------------- naming styles


def _naming_style(sd: Mapping[str, Any]) -> str | None:
  """'hf_clip' | 'hf_vit_mae' | 'hf_vit' | 'openai' | 'timm', or None."""
  keys = list(sd)
  if any(k.startswith(('vision_model.', 'text_model.')) for k in keys):
    return 'hf_clip'
  if any(k.startswith('decoder.decoder_') for k in keys):
    return 'hf_vit_mae'
  if any(
    k.startswith(('embeddings.patch_embeddings.', 'vit.embeddings.patch_embeddings.')) for k in keys
  ):
    return 'hf_vit'
  if any(k.startswith(('visual.', 'text.')) for k in keys) or 'token_embedding.weight' in sd:
    return 'openai'
  if 'patch_embed.proj.weight' in sd or 'cls_token' in sd:
    return 'timm'
  return None


def detect_family(state_dict: Mapping[str, Any]) -> str | None:
  """The family of a flat state dict from its key names: 'clip', 'vit', 'mae' or None.

  A timm-named ViT is 'mae' only when it carries MAE decoder keys; an encoder-only MAE file is
  told apart by its `{'model': ...}` wrapper, which `load_tower_source` looks at.
  """
  sd = {_strip_wrappers(k): v for k, v in state_dict.items()}
  style = _naming_style(sd)
  if style in ('hf_clip', 'openai'):
    return 'clip'
  if style == 'hf_vit_mae':
    return 'mae'
  if style == 'hf_vit':
    return 'vit'
  if style == 'timm':
    return 'mae' if any(_is_mae_decoder_key(k) for k in sd) else 'vit'
  return None


def _strip_wrappers(key: str) -> str:
  # DistributedDataParallel and torch.compile wrap the module whose state dict was saved.
  for prefix in ('module.', '_orig_mod.'):
    key = key.removeprefix(prefix)
  return key


# --------------------------------------------------------------------------- Hugging Face names

# Per-layer names of a HF ViT / ViTMAE layer: the on-disk (pre-v5) naming and the naming of
# transformers >= 5 modules (what `torch.save(model.state_dict())` writes there).
_HF_VIT_LAYER = {
  'attention.attention.query': 'q',
  'attention.attention.key': 'k',
  'attention.attention.value': 'v',
  'attention.q_proj': 'q',
  'attention.k_proj': 'k',
  'attention.v_proj': 'v',
  'attention.output.dense': 'attn.proj',
  'attention.o_proj': 'attn.proj',
  'intermediate.dense': 'mlp.fc1',
  'output.dense': 'mlp.fc2',
  'mlp.fc1': 'mlp.fc1',
  'mlp.fc2': 'mlp.fc2',
  'layernorm_before': 'norm1',
  'layernorm_after': 'norm2',
}
_HF_CLIP_LAYER = {
  'self_attn.q_proj': 'q',
  'self_attn.k_proj': 'k',
  'self_attn.v_proj': 'v',
  'self_attn.out_proj': 'attn.out_proj',
  'layer_norm1': 'ln_1',
  'layer_norm2': 'ln_2',
  'mlp.fc1': 'mlp.c_fc',
  'mlp.fc2': 'mlp.c_proj',
}


class _Renamer:
  """Collects renamed entries, joining separate q / k / v projections into one."""

  def __init__(self, path: str):
    self.path = path
    self.out: dict[str, np.ndarray] = {}
    self._qkv: dict[tuple[str, str], dict[str, np.ndarray]] = {}

  def put(self, key: str, value: np.ndarray):
    if key in self.out:
      raise TowerSourceError(f'{self.path}: two entries map to {key}')
    self.out[key] = value

  def layer(self, table: dict[str, str], suffix: str, value, prefix: str, fused: str) -> bool:
    """Renames `suffix` ('<module>.<weight|bias>') of one layer; False if it is unknown."""
    module, _, param = suffix.rpartition('.')
    target = table.get(module)
    if target is None or param not in ('weight', 'bias'):
      return False
    if target in ('q', 'k', 'v'):
      self._qkv.setdefault((f'{prefix}{fused}', param), {})[target] = value
    else:
      self.put(f'{prefix}{target}.{param}', value)
    return True

  def finish(self, clip_style: bool) -> dict[str, np.ndarray]:
    for (fused, param), parts in self._qkv.items():
      if set(parts) != {'q', 'k', 'v'}:
        raise TowerSourceError(
          f'{self.path}: {fused} lacks the {param} of {set("qkv") - set(parts)}'
        )
      stacked = np.concatenate([parts['q'], parts['k'], parts['v']], axis=0)
      # OpenAI's nn.MultiheadAttention names the fused projection in_proj_{weight,bias}.
      name = f'{fused}in_proj_{param}' if clip_style else f'{fused}.{param}'
      self.put(name, stacked)
    return self.out


_HF_LAYER_RE = re.compile(
  r'(encoder\.layer|layers|decoder_layers|decoder_encoder\.layer)\.(\d+)\.(.*)'
)


def _hf_vit_encoder(sd: dict, ren: _Renamer, prefix: str, notes: list[str], unknown: list[str]):
  """Renames HF ViT encoder keys (without `prefix`) into timm names in `ren`."""
  for key, value in sd.items():
    if not key.startswith(prefix):
      unknown.append(key)
      continue
    rest = key[len(prefix) :]
    simple = {
      'embeddings.cls_token': 'cls_token',
      'embeddings.position_embeddings': 'pos_embed',
      'embeddings.patch_embeddings.projection.weight': 'patch_embed.proj.weight',
      'embeddings.patch_embeddings.projection.bias': 'patch_embed.proj.bias',
      'layernorm.weight': 'norm.weight',
      'layernorm.bias': 'norm.bias',
    }
    if rest in simple:
      ren.put(simple[rest], value)
      continue
    m = _HF_LAYER_RE.fullmatch(rest)
    if m and m.group(1) in ('encoder.layer', 'layers'):
      i = int(m.group(2))
      if ren.layer(_HF_VIT_LAYER, m.group(3), value, f'blocks.{i}.', 'attn.qkv'):
        continue
    if rest.startswith('pooler.'):
      _note_once(notes, 'dropped HF pooler.* (initialised randomly by HF; not part of DINO/MAE)')
    elif rest == 'embeddings.mask_token':
      _note_once(notes, 'dropped HF embeddings.mask_token (only used for masked image modeling)')
    else:
      unknown.append(key)


def _hf_vit_to_canonical(sd: dict, path: str, notes: list[str]) -> dict[str, np.ndarray]:
  ren = _Renamer(path)
  unknown: list[str] = []
  prefix = 'vit.' if any(k.startswith('vit.embeddings.') for k in sd) else ''
  _hf_vit_encoder(sd, ren, prefix, notes, unknown)
  decoder_simple = {
    'decoder.mask_token': 'mask_token',
    'decoder.decoder_pos_embed': 'decoder_pos_embed',
  }
  for part in ('decoder_embed', 'decoder_norm', 'decoder_pred'):
    for param in ('weight', 'bias'):
      decoder_simple[f'decoder.{part}.{param}'] = f'{part}.{param}'
  leftover = []
  for key in unknown:
    if key in decoder_simple:
      ren.put(decoder_simple[key], sd[key])
      continue
    m = _HF_LAYER_RE.fullmatch(key.removeprefix('decoder.'))
    if key.startswith('decoder.') and m and m.group(1).startswith('decoder_'):
      i = int(m.group(2))
      if ren.layer(_HF_VIT_LAYER, m.group(3), sd[key], f'decoder_blocks.{i}.', 'attn.qkv'):
        continue
    if prefix and key.startswith('classifier.'):
      _note_once(notes, 'dropped the HF classifier.* head (not part of the backbone)')
      continue
    leftover.append(key)
  _reject_unknown(leftover, path, 'Hugging Face ViT / ViTMAE')
  return ren.finish(clip_style=False)


def _hf_clip_to_canonical(sd: dict, path: str, notes: list[str]) -> dict[str, np.ndarray]:
  ren = _Renamer(path)
  unknown = []
  simple = {
    'vision_model.embeddings.class_embedding': 'visual.class_embedding',
    'vision_model.embeddings.patch_embedding.weight': 'visual.conv1.weight',
    'vision_model.embeddings.position_embedding.weight': 'visual.positional_embedding',
    'text_model.embeddings.token_embedding.weight': 'token_embedding.weight',
    'text_model.embeddings.position_embedding.weight': 'positional_embedding',
    'logit_scale': 'logit_scale',
    'logit_bias': 'logit_bias',
  }
  for hf, ours in (
    ('vision_model.pre_layrnorm', 'visual.ln_pre'),
    ('vision_model.post_layernorm', 'visual.ln_post'),
    ('text_model.final_layer_norm', 'ln_final'),
  ):
    for param in ('weight', 'bias'):
      simple[f'{hf}.{param}'] = f'{ours}.{param}'
  towers = {
    'vision_model.': 'visual.transformer.resblocks.',
    'text_model.': 'transformer.resblocks.',
  }
  for key, value in sd.items():
    if key in simple:
      ren.put(simple[key], value)
    elif key in ('visual_projection.weight', 'text_projection.weight'):
      # nn.Linear stores [E, W]; OpenAI multiplies x @ proj with proj [W, E].
      name = 'visual.proj' if key.startswith('visual') else 'text_projection'
      ren.put(name, np.ascontiguousarray(value.T))
    elif key.endswith('embeddings.position_ids'):
      _note_once(notes, 'dropped HF position_ids (a constant index buffer)')
    else:
      tower = next((t for t in towers if key.startswith(f'{t}encoder.layers.')), None)
      if tower is not None:
        i, _, suffix = key[len(f'{tower}encoder.layers.') :].partition('.')
        if i.isdigit() and ren.layer(
          _HF_CLIP_LAYER, suffix, value, f'{towers[tower]}{int(i)}.', 'attn.'
        ):
          continue
      unknown.append(key)
  _reject_unknown(unknown, path, 'Hugging Face CLIPModel')
  return ren.finish(clip_style=True)


# --------------------------------------------------------------------------- OpenAI / timm names


def _openai_to_canonical(sd: dict, path: str, notes: list[str]) -> dict[str, np.ndarray]:
  out = {}
  for key, value in sd.items():
    if key in _OPENAI_NON_WEIGHTS:
      continue
    # open_clip's CustomTextCLIP keeps its text tower under `text.`.
    name = key.removeprefix('text.')
    if name in out:
      raise TowerSourceError(f'{path}: both {key} and another entry map to {name}')
    out[name] = value
  unknown = [k for k in out if not _CLIP_KEY.fullmatch(k)]
  if any(k.startswith(('visual.layer1.', 'visual.attnpool.')) for k in unknown):
    raise TowerSourceError(f'{path}: a ResNet CLIP; only ViT image towers are supported')
  if any(k.startswith('visual.trunk.') for k in unknown):
    raise TowerSourceError(f'{path}: an open_clip timm image tower; only ViT CLIP is supported')
  _reject_unknown(unknown, path, 'ViT CLIP (OpenAI / open_clip)')
  if any('.ls_1.' in k or '.ls_2.' in k for k in out):
    notes.append('open_clip LayerScale (ls_1/ls_2.gamma) present; the tower must apply it')
  return out


def _timm_to_canonical(sd: dict, path: str, family: str, notes: list[str]):
  out, unknown, decoder = {}, [], []
  for key, value in sd.items():
    if _VIT_KEY.fullmatch(key):
      out[key] = value
    elif _is_mae_decoder_key(key):
      decoder.append(key)
      if family == 'mae':
        out[key] = value
    elif key.startswith('head.'):
      _note_once(notes, 'dropped head.* (a projection / classification head, not the backbone)')
    else:
      unknown.append(key)
  _reject_unknown(unknown, path, 'timm / DINO / MAE ViT')
  if decoder and family == 'vit':
    notes.append(f'family vit: dropped the {len(decoder)} MAE decoder entries')
  return out


def _reject_unknown(keys: list[str], path: str, what: str):
  if keys:
    shown = ', '.join(sorted(keys)[:8]) + (' ...' if len(keys) > 8 else '')
    raise TowerSourceError(f'{path}: {len(keys)} entries are not part of a {what}: {shown}')


def _note_once(notes: list[str], note: str):
  if note not in notes:
    notes.append(note)


# --------------------------------------------------------------------------- reading files


def _read_file(path: str) -> tuple[Any, bool]:
  """(loaded object, is TorchScript) for a torch zip, TorchScript or safetensors file."""
  if zipfile.is_zipfile(path):
    if torchscript.is_torchscript_archive(path):
      return torchscript.load_torchscript_state_dict(path), True
    return load_torch_archive(path), False
  with open(path, 'rb') as f:
    head = f.read(9)
  if len(head) == 9 and head[8:9] == b'{':  # 8-byte header length, then the JSON header
    return sources.read_safetensors(path), False
  if head[:2] == b'\x80\x02':
    raise TowerSourceError(
      f'{path}: a legacy (torch < 1.6) torch.save file; re-save it with a recent torch: '
      'torch.save(torch.load(p), p)'
    )
  raise TowerSourceError(
    f'{path}: unknown format (first bytes {head!r}); expected a torch.save / TorchScript zip '
    'archive, a .safetensors file, or a Hugging Face / open_clip directory'
  )


def _flat_tensors(obj: Any, path: str, where: str) -> dict[str, np.ndarray]:
  if not isinstance(obj, Mapping):
    raise TowerSourceError(f'{path}: expected a state dict{where}, got {type(obj).__name__}')
  out = {}
  for key, value in obj.items():
    if not isinstance(value, np.ndarray):
      raise TowerSourceError(
        f'{path}: entry {key!r}{where} is a {type(value).__name__}, not a tensor; is this a '
        'training checkpoint with its weights under another key?'
      )
    name = _strip_wrappers(key)
    if name in out:
      raise TowerSourceError(f'{path}: {key!r} and another entry are both {name!r}')
    out[name] = value
  return out


def _unwrap(obj: Any, path: str, dino_branch: str) -> tuple[dict, str | None, dict, list[str]]:
  """(flat state dict, wrapper kind or None, declared hints, notes) of a loaded torch object."""
  notes: list[str] = []
  declared: dict[str, Any] = {}
  if not isinstance(obj, Mapping):
    raise TowerSourceError(f'{path}: expected a state dict or checkpoint dict, got {type(obj)}')

  def mapping(key):
    return isinstance(obj.get(key), Mapping)

  if mapping('teacher') or mapping('student'):
    if dino_branch not in obj or not mapping(dino_branch):
      raise TowerSourceError(f'{path}: DINO checkpoint without a {dino_branch!r} state dict')
    flat = _flat_tensors(obj[dino_branch], path, f" under '{dino_branch}'")
    backbone = {k.removeprefix('backbone.'): v for k, v in flat.items()}
    head = [k for k in backbone if k.startswith('head.')]
    for k in head:
      del backbone[k]
    if head:
      notes.append(f'dropped the DINO head ({len(head)} head.* entries)')
    notes.append(f'read the DINO {dino_branch} branch')
    return backbone, 'dino_training', declared, notes
  if mapping('model'):
    args = obj.get('args')
    for attr, key in (
      ('norm_pix_loss', 'norm_pix_loss'),
      ('mask_ratio', 'mask_ratio'),
      ('input_size', 'image_size'),
    ):
      if hasattr(args, attr):  # MAE's main_pretrain.py saves its argparse.Namespace
        declared[key] = getattr(args, attr)
    return _flat_tensors(obj['model'], path, " under 'model'"), 'mae', declared, notes
  if mapping('state_dict'):
    flat = _flat_tensors(obj['state_dict'], path, " under 'state_dict'")
    return flat, 'open_clip_training', declared, notes
  return _flat_tensors(obj, path, ''), None, declared, notes


def _read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


# Defaults of the transformers config classes, for config.json files that leave keys out.
_HF_DEFAULTS = {
  'clip_vision': {
    'hidden_act': 'quick_gelu',
    'layer_norm_eps': 1e-5,
    'num_attention_heads': 12,
    'image_size': 224,
  },
  'clip_text': {'num_attention_heads': 8},
  'vit': {
    'hidden_act': 'gelu',
    'layer_norm_eps': 1e-12,
    'num_attention_heads': 12,
    'image_size': 224,
  },
  'vit_mae': {
    'hidden_act': 'gelu',
    'layer_norm_eps': 1e-12,
    'num_attention_heads': 12,
    'image_size': 224,
    'decoder_num_attention_heads': 16,
    'norm_pix_loss': False,
    'mask_ratio': 0.75,
  },
}


def _activation(hidden_act: str, notes: list[str]) -> str | None:
  if hidden_act in ('gelu', 'quick_gelu'):
    return hidden_act
  notes.append(f'config activation {hidden_act!r} is neither gelu nor quick_gelu; not declared')
  return None


def _hf_declared(config: dict, notes: list[str]) -> dict[str, Any]:
  model_type = config.get('model_type')

  def get(cfg, defaults, key):
    if key in cfg:
      return cfg[key]
    notes.append(f'config.json lacks {key}; using the transformers default {defaults[key]!r}')
    return defaults[key]

  declared: dict[str, Any] = {}
  if model_type == 'clip':
    vision = config.get('vision_config') or {}
    text = config.get('text_config') or {}
    vd, td = _HF_DEFAULTS['clip_vision'], _HF_DEFAULTS['clip_text']
    act = get(vision, vd, 'hidden_act')
    if text.get('hidden_act', act) != act:
      notes.append(f'text hidden_act {text["hidden_act"]!r} differs from the image one {act!r}')
    declared['activation'] = _activation(act, notes)
    declared['eps'] = get(vision, vd, 'layer_norm_eps')
    declared['num_heads'] = get(vision, vd, 'num_attention_heads')
    declared['text_num_heads'] = get(text, td, 'num_attention_heads')
    declared['image_size'] = get(vision, vd, 'image_size')
  else:
    defaults = _HF_DEFAULTS[model_type]
    declared['activation'] = _activation(get(config, defaults, 'hidden_act'), notes)
    declared['eps'] = get(config, defaults, 'layer_norm_eps')
    declared['num_heads'] = get(config, defaults, 'num_attention_heads')
    declared['image_size'] = get(config, defaults, 'image_size')
    if model_type == 'vit_mae':
      declared['decoder_num_heads'] = get(config, defaults, 'decoder_num_attention_heads')
      declared['norm_pix_loss'] = get(config, defaults, 'norm_pix_loss')
      declared['mask_ratio'] = get(config, defaults, 'mask_ratio')
  return {k: v for k, v in declared.items() if v is not None}


def _open_clip_declared(cfg: dict) -> dict[str, Any]:
  """Hints from an open_clip_config.json ({'model_cfg': {...}, 'preprocess_cfg': ...})."""
  model_cfg = cfg.get('model_cfg', cfg)
  declared: dict[str, Any] = {
    # open_clip builds nn.GELU unless the model config asks for QuickGELU.
    'activation': 'quick_gelu' if model_cfg.get('quick_gelu', False) else 'gelu',
  }
  vision = model_cfg.get('vision_cfg') or {}
  text = model_cfg.get('text_cfg') or {}
  if 'width' in vision:
    declared['num_heads'] = vision['width'] // vision.get('head_width', 64)
  if 'image_size' in vision and isinstance(vision['image_size'], int):
    declared['image_size'] = vision['image_size']
  if text and 'hf_model_name' not in text:
    declared['text_num_heads'] = text.get('heads', 8)
  eps = (vision.get('norm_kwargs') or {}).get('eps')
  declared['eps'] = eps if eps is not None else 1e-5  # open_clip's LayerNorm default
  return declared


def _open_clip_training_quick_gelu(path: str) -> bool | None:
  """QuickGELU from open_clip's `params.txt` (logs/<name>/params.txt beside checkpoints/)."""
  params = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))), 'params.txt')
  if not os.path.exists(params):
    return None
  values = {}
  with open(params) as f:
    for line in f:
      key, sep, value = line.partition(':')
      if sep:
        values[key.strip()] = value.strip()
  if 'model' not in values:
    return None
  return values['model'].endswith('-quickgelu') or values.get('force_quick_gelu') == 'True'


def _upcast(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = {}
  for key, value in sd.items():
    if value.dtype == ml_dtypes.bfloat16 or np.issubdtype(value.dtype, np.floating):
      value = value.astype(np.float32)
    out[key] = value
  return out


# --------------------------------------------------------------------------- entry point


def _read_directory(path: str) -> tuple[dict, str, dict, list[str], str | None]:
  """(raw state dict, kind, declared, notes, HF model_type or None) of a model directory."""
  notes: list[str] = []
  config_path = os.path.join(path, 'config.json')
  if os.path.exists(config_path):
    config = _read_json(config_path)
    model_type = config.get('model_type')
    if model_type in ('clip', 'vit', 'vit_mae'):
      raw = sources.read_hf_weights(path)
      return raw, f'hf_{model_type}', _hf_declared(config, notes), notes, model_type
    if not any(os.path.exists(os.path.join(path, n)) for n in _OPEN_CLIP_WEIGHTS):
      raise NotATowerError(
        f"{config_path}: model_type {model_type!r} is not 'clip', 'vit' or 'vit_mae'"
      )
  for name in _OPEN_CLIP_WEIGHTS:
    weights = os.path.join(path, name)
    if os.path.exists(weights):
      obj, _ = _read_file(weights)
      raw, _, declared, notes = _unwrap(obj, weights, 'teacher')
      return raw, 'open_clip', declared, notes, None
  raise TowerSourceError(
    f'{path} is a directory without a Hugging Face config.json or open_clip weights '
    f'({", ".join(_OPEN_CLIP_WEIGHTS)}); found {sorted(os.listdir(path))[:10]}'
  )


def load_tower_source(
  path: str | os.PathLike,
  *,
  family: str | None = None,
  quick_gelu: bool | None = None,
  dino_branch: str = 'teacher',
) -> TowerSource:
  """Reads a CLIP / DINO / MAE checkpoint file or directory into canonical naming.

  Args:
    path: a checkpoint file (TorchScript, torch.save archive, safetensors) or a Hugging Face /
      open_clip directory; see the module docstring.
    family: 'clip', 'vit' or 'mae' to force the family (a timm-named ViT is 'mae' only with
      decoder keys or MAE's `{'model': ...}` wrapper; forcing 'vit' on an MAE drops its decoder).
    quick_gelu: whether a CLIP uses QuickGELU (True) or exact GELU (False), overriding what the
      file declares; needed where a file declares nothing (a bare state dict).
    dino_branch: 'teacher' (DINO's released weights) or 'student', for DINO training checkpoints.

  Returns:
    A TowerSource; e.g. for OpenAI ViT-B/16 `visual.conv1.weight` [768, 3, 16, 16] and
    `visual.proj` [768, 512], for DINO ViT-S/16 `pos_embed` [1, 197, 384] and
    `blocks.0.attn.qkv.weight` [1152, 384]; every floating array float32.
  """
  path = os.fspath(path)
  if family not in (None, *FAMILIES):
    raise ValueError(f'family must be one of {FAMILIES} or None, got {family!r}')
  if dino_branch not in ('teacher', 'student'):
    raise ValueError(f"dino_branch must be 'teacher' or 'student', got {dino_branch!r}")
  if not os.path.exists(path):
    raise FileNotFoundError(f'checkpoint source {path} does not exist')

  model_type = None
  is_torchscript = False
  if os.path.isdir(path):
    raw, kind, declared, notes, model_type = _read_directory(path)
  else:
    obj, is_torchscript = _read_file(path)
    raw, kind, declared, notes = _unwrap(obj, path, dino_branch)
    if is_torchscript:
      kind = 'openai_torchscript'
  raw = {_strip_wrappers(k): v for k, v in raw.items()}

  if any(k.startswith(_GROUPVIT_PREFIXES) for k in raw):
    # HF GroupViT shares CLIP's `text_model.` names; its grouping stages tell them apart.
    raise NotATowerError(f'{path}: a GroupViT state dict (NVlabs or Hugging Face naming)')
  style = _naming_style(raw)
  if style is None:
    shown = ', '.join(list(raw)[:6])
    raise NotATowerError(
      f'{path}: not a CLIP, DINO/timm ViT or MAE state dict (first keys: {shown})'
    )
  if model_type is not None:
    expected = {'clip': ('hf_clip',), 'vit': ('hf_vit',), 'vit_mae': ('hf_vit', 'hf_vit_mae')}
    if style not in expected[model_type]:
      raise TowerSourceError(
        f'{path}: config.json says {model_type!r} but the weights look like {style} naming'
      )

  found = {'hf_clip': 'clip', 'openai': 'clip', 'hf_vit': 'vit', 'hf_vit_mae': 'mae'}.get(style)
  if style == 'timm':
    has_decoder = any(_is_mae_decoder_key(k) for k in raw)
    found = 'mae' if has_decoder or kind == 'mae' else 'vit'
  if model_type == 'vit_mae':
    found = 'mae'
  if family is None:
    family = found
  elif (family == 'clip') != (found == 'clip'):
    raise TowerSourceError(
      f'{path}: family={family!r} was asked for, but the file holds a {found} checkpoint '
      f'({style} naming)'
    )

  if style == 'hf_clip':
    sd = _hf_clip_to_canonical(raw, path, notes)
  elif style == 'openai':
    sd = _openai_to_canonical(raw, path, notes)
  elif style in ('hf_vit', 'hf_vit_mae'):
    sd = _hf_vit_to_canonical(raw, path, notes)
    if family == 'vit':
      sd = _timm_to_canonical(sd, path, 'vit', notes)
  else:
    sd = _timm_to_canonical(raw, path, family, notes)

  # The kind names the file format when the container alone did not.
  if kind is None:
    if style in ('hf_clip', 'hf_vit', 'hf_vit_mae'):
      kind = style
    elif style == 'openai':
      kind = 'openai_state_dict'
    else:
      kind = 'mae_full' if any(_is_mae_decoder_key(k) for k in raw) else 'dino_backbone'
  elif kind == 'mae' and any(_is_mae_decoder_key(k) for k in raw):
    kind = 'mae_full'

  if family == 'clip':
    _clip_activation(path, raw, kind, declared, notes, quick_gelu, is_torchscript)
    if kind == 'openai_state_dict' and (
      any(k.startswith('text.') for k in raw)
      or 'logit_bias' in raw
      or os.path.basename(path).startswith('open_clip')
    ):
      kind = 'open_clip'
  elif quick_gelu is not None:
    notes.append(f'quick_gelu={quick_gelu} ignored: it only applies to CLIP')

  if family != 'clip' and not declared and not model_type:
    notes.append('the file declares no architecture: heads, eps and activation are left to shapes')
  sd = _upcast(sd)
  return TowerSource(family=family, state_dict=sd, declared=declared, kind=kind, notes=notes)


def _clip_activation(
  path: str,
  raw: dict,
  kind: str,
  declared: dict,
  notes: list[str],
  quick_gelu: bool | None,
  is_torchscript: bool,
):
  """Fills declared hints of a CLIP (activation above all) from what the file tells."""
  origin = None
  if is_torchscript or any(k in raw for k in _OPENAI_NON_WEIGHTS):
    # Only OpenAI's releases carry input_resolution & co.; OpenAI's CLIP uses QuickGELU, eps 1e-5
    # and width / 64 heads (clip/model.py build_model).
    declared['activation'] = 'quick_gelu'
    declared['eps'] = 1e-5
    declared['num_heads'] = raw['visual.conv1.weight'].shape[0] // 64
    text_ln = raw.get('ln_final.weight', raw.get('text.ln_final.weight'))
    if text_ln is not None:
      declared['text_num_heads'] = text_ln.shape[0] // 64
    if 'input_resolution' in raw:
      declared['image_size'] = int(raw['input_resolution'])
    origin = 'an OpenAI release'
  elif 'activation' in declared:
    origin = 'the Hugging Face config' if kind.startswith('hf_') else 'the file'
  elif not os.path.isdir(path):
    config = os.path.join(os.path.dirname(os.path.abspath(path)), 'open_clip_config.json')
    if os.path.exists(config):
      declared.update(_open_clip_declared(_read_json(config)))
      origin = 'open_clip_config.json'
    elif kind == 'open_clip_training':
      found = _open_clip_training_quick_gelu(path)
      if found is not None:
        declared['activation'] = 'quick_gelu' if found else 'gelu'
        origin = 'open_clip params.txt'
  else:
    config = os.path.join(path, 'open_clip_config.json')
    if os.path.exists(config):
      declared.update(_open_clip_declared(_read_json(config)))
      origin = 'open_clip_config.json'
  if quick_gelu is not None:
    wanted = 'quick_gelu' if quick_gelu else 'gelu'
    if origin is not None and declared.get('activation') != wanted:
      notes.append(f'quick_gelu={quick_gelu} overrides {declared.get("activation")} from {origin}')
    declared['activation'] = wanted
  elif 'activation' not in declared:
    notes.append(
      'activation unknown (QuickGELU or GELU): the file declares none; pass quick_gelu= '
      '(OpenAI weights use QuickGELU, LAION open_clip ones GELU)'
    )
