"""Parameter names of the released checkpoints and how they map onto this library's variables.

The NVlabs state dict is the canonical source format: Hugging Face `GroupViTModel` state dicts are
first renamed into it (`hf_to_nvlabs`), then every leaf of our variable tree is looked up by name
(`nvlabs_to_variables`). Any key left unused, any leaf left missing and any shape mismatch is an
error that lists them all: nothing is silently dropped or left at its initial value.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import numpy as np

# Buffers that carry no information for the model (counters, constant index tables).
IGNORED_SUFFIXES = (
  'num_batches_tracked',
  'text_model.embeddings.position_ids',
  'vision_model.embeddings.position_ids',
)


class CheckpointMismatchError(ValueError):
  """The source checkpoint does not fit the model: lists missing, unused and misshapen entries."""

  def __init__(self, missing=(), unused=(), shapes=()):
    self.missing, self.unused, self.shapes = list(missing), list(unused), list(shapes)
    parts = []
    if self.missing:
      parts.append(f'{len(self.missing)} missing key(s): {_preview(self.missing)}')
    if self.unused:
      parts.append(f'{len(self.unused)} unused key(s): {_preview(self.unused)}')
    if self.shapes:
      parts.append(f'{len(self.shapes)} shape mismatch(es): {_preview(self.shapes)}')
    super().__init__('checkpoint does not match the model: ' + '; '.join(parts))


def _preview(items, n=12):
  items = [str(i) for i in items]
  return ', '.join(items[:n]) + (f', ... ({len(items) - n} more)' if len(items) > n else '')


# --- Hugging Face -> NVlabs ------------------------------------------------------------------
_HF_RENAMES = [
  (r'^vision_model\.embeddings\.patch_embeddings\.projection\.', 'img_encoder.patch_embed.proj.'),
  (r'^vision_model\.embeddings\.layernorm\.', 'img_encoder.patch_embed.norm.'),
  (r'^vision_model\.embeddings\.position_embeddings$', 'img_encoder.pos_embed'),
  (r'^vision_model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.', r'img_encoder.layers.\1.blocks.\2.'),
  (r'^vision_model\.encoder\.stages\.(\d+)\.', r'img_encoder.layers.\1.'),
  (r'^vision_model\.layernorm\.', 'img_encoder.norm.'),
  (r'^text_model\.embeddings\.token_embedding\.', 'text_encoder.token_embedding.'),
  (r'^text_model\.embeddings\.position_embedding\.weight$', 'text_encoder.positional_embedding'),
  (r'^text_model\.encoder\.layers\.(\d+)\.', r'text_encoder.transformer.resblocks.\1.'),
  (r'^text_model\.final_layer_norm\.', 'text_encoder.ln_final.'),
  (r'^visual_projection\.0\.', 'img_projector.linear_hidden.0.'),
  (r'^visual_projection\.1\.', 'img_projector.linear_hidden.1.'),
  (r'^visual_projection\.3\.', 'img_projector.linear_out.'),
  (r'^text_projection\.0\.', 'text_projector.linear_hidden.0.'),
  (r'^text_projection\.1\.', 'text_projector.linear_hidden.1.'),
  (r'^text_projection\.3\.', 'text_projector.linear_out.'),
]
_HF_BLOCK_RENAMES = {  # inside image blocks / text resblocks
  'img': [
    ('layer_norm1.', 'norm1.'),
    ('layer_norm2.', 'norm2.'),
    ('self_attn.out_proj.', 'attn.proj.'),
  ],
  'text': [
    ('layer_norm1.', 'ln_1.'),
    ('layer_norm2.', 'ln_2.'),
    ('mlp.fc1.', 'mlp.c_fc.'),
    ('mlp.fc2.', 'mlp.c_proj.'),
    ('self_attn.out_proj.', 'attn.out_proj.'),
  ],
}


def is_hf_state_dict(sd: Mapping[str, Any]) -> bool:
  return any(k.startswith(('vision_model.', 'text_model.')) for k in sd)


def hf_to_nvlabs(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Renames a Hugging Face GroupViTModel state dict to NVlabs names; fuses split q/k/v.

  Keys that match no rule are kept under their own name so that the strict load reports them.
  """
  out: dict[str, np.ndarray] = {}
  qkv: dict[tuple[str, str], dict[str, np.ndarray]] = {}
  for key, value in sd.items():
    new = key
    for pattern, repl in _HF_RENAMES:
      new, n = re.subn(pattern, repl, new)
      if n:
        break
    m = re.match(
      r'^(img_encoder\.layers\.\d+\.blocks\.\d+\.|text_encoder\.transformer\.'
      r'resblocks\.\d+\.)(.*)$',
      new,
    )
    if m:
      prefix, rest = m.groups()
      kind = 'img' if prefix.startswith('img') else 'text'
      qm = re.match(r'^self_attn\.([qkv])_proj\.(weight|bias)$', rest)
      if qm:
        qkv.setdefault((prefix, qm[2]), {})[qm[1]] = value
        continue
      for a, b in _HF_BLOCK_RENAMES[kind]:
        if rest.startswith(a):
          rest = b + rest[len(a) :]
      new = prefix + rest
    new = new.replace('.pre_assign_attn.attn.out_proj.', '.pre_assign_attn.attn.proj.')
    out[new] = value
  for (prefix, kind), parts in qkv.items():
    if set(parts) != {'q', 'k', 'v'}:
      for name, value in parts.items():  # incomplete: report under the original names
        out[f'{prefix}self_attn.{name}_proj.{kind}'] = value
      continue
    fused = np.concatenate([parts['q'], parts['k'], parts['v']], axis=0)
    if prefix.startswith('img'):
      out[f'{prefix}attn.qkv.{kind}'] = fused
    else:
      out[f'{prefix}attn.in_proj_{kind}'] = fused
  return out


# --- NVlabs -> our variables -----------------------------------------------------------------
_PATH_RULES = [
  (r'^img_encoder/patch_embed/', 'img_encoder/patch_embed/proj/'),
  (r'^img_encoder/patch_norm/', 'img_encoder/patch_embed/norm/'),
  (r'/group_projector_norm/', '/group_projector/0/'),
  (r'/group_projector/mlp/', '/group_projector/1/'),
  (r'/mlp_inter/mlp/', '/mlp_inter/'),
  (r'^text_encoder/resblocks_(\d+)/', r'text_encoder/transformer/resblocks/\1/'),
  (r'^text_encoder/token_embedding/embedding$', 'text_encoder/token_embedding/weight'),
  (r'/attn/in_proj/kernel$', '/attn/in_proj_weight'),
  (r'/attn/in_proj/bias$', '/attn/in_proj_bias'),
  (r'_projector/linear_hidden_(\d+)/', lambda m: f'_projector/linear_hidden/{3 * int(m[1])}/'),
  (r'_projector/bn_(\d+)/', lambda m: f'_projector/linear_hidden/{3 * int(m[1]) + 1}/'),
  (r'(layers|blocks)_(\d+)/', r'\1/\2/'),
  (r'/kernel$', '/weight'),
  (r'/scale$', '/weight'),
]


def nvlabs_key(collection: str, path: tuple[str, ...]) -> str:
  """The NVlabs state-dict key of one of our leaves, e.g. ('params', ('img_encoder', 'norm',
  'scale')) -> 'img_encoder.norm.weight'."""
  s = '/'.join(path)
  for pattern, repl in _PATH_RULES:
    s = re.sub(pattern, repl, s)
  if collection == 'batch_stats':
    s = re.sub(r'/mean$', '/running_mean', s)
    s = re.sub(r'/var$', '/running_var', s)
  return s.replace('/', '.')


def _to_leaf(path: tuple[str, ...], value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """Transposes/reshapes a torch tensor into the layout of our leaf."""
  value = np.asarray(value)
  if path[-1] == 'kernel':
    if value.ndim == 4:  # Conv2d [out, in, kh, kw] -> [kh, kw, in, out]
      value = value.transpose(2, 3, 1, 0)
    else:
      if value.ndim == 3 and value.shape[-1] == 1:  # Conv1d(k=1) in the NVlabs heads
        value = value[..., 0]
      value = value.T
  if value.dtype != np.float32:
    value = value.astype(np.float32)
  return value


def nvlabs_to_variables(
  sd: Mapping[str, np.ndarray], abstract: Mapping[str, Any]
) -> dict[str, Any]:
  """Fills the variable tree `abstract` (e.g. from `jax.eval_shape` of init) from an NVlabs
  state dict. Raises CheckpointMismatchError listing every missing/unused/misshapen entry."""
  used, missing, shapes = set(), [], []

  def fill(keypath, leaf):
    collection = keypath[0].key
    path = tuple(k.key for k in keypath[1:])
    key = nvlabs_key(collection, path)
    if key not in sd:
      missing.append(key)
      return None
    used.add(key)
    value = _to_leaf(path, sd[key], leaf.shape)
    if tuple(value.shape) != tuple(leaf.shape):
      shapes.append(
        f'{key}: checkpoint {tuple(np.shape(sd[key]))} -> {tuple(value.shape)}, '
        f'model {tuple(leaf.shape)}'
      )
      return None
    return value

  variables = jax.tree_util.tree_map_with_path(fill, dict(abstract))
  unused = sorted(k for k in sd if k not in used and not k.endswith(IGNORED_SUFFIXES))
  if missing or unused or shapes:
    raise CheckpointMismatchError(missing, unused, shapes)
  return variables


# --- our variables -> NVlabs -> Hugging Face (export) ------------------------------------------
def _from_leaf(path: tuple[str, ...], value: np.ndarray, conv1d: bool) -> np.ndarray:
  """The torch layout of one of our leaves: the inverse of `_to_leaf`."""
  value = np.asarray(value)
  if path[-1] == 'kernel':
    if value.ndim == 4:  # [kh, kw, in, out] -> Conv2d [out, in, kh, kw]
      value = value.transpose(3, 2, 0, 1)
    else:
      value = value.T
      if conv1d:
        value = value[..., None]
  return np.array(value, order='C')  # ascontiguousarray would make 0-d arrays 1-d


def variables_to_nvlabs(
  variables: Mapping[str, Any], conv1d_projectors: bool = True
) -> dict[str, np.ndarray]:
  """Our variable tree ({'params', 'batch_stats'}) -> an NVlabs state dict (numpy, torch layouts).

  The inverse of `nvlabs_to_variables`: Dense kernels [in, out] become Linear weights [out, in],
  the patch-embedding kernel [kh, kw, C, D] becomes Conv2d [D, C, kh, kw], and with
  `conv1d_projectors` the projection heads' weights get the trailing kernel axis of the release's
  Conv1d(k=1) ([out, in, 1]). Every BatchNorm also gets the `num_batches_tracked` counter (int64
  scalar, 0: the count is not tracked here and momentum-based BatchNorm never reads it).
  """
  out: dict[str, np.ndarray] = {}
  for keypath, leaf in jax.tree_util.tree_flatten_with_path(dict(variables))[0]:
    collection = keypath[0].key
    path = tuple(k.key for k in keypath[1:])
    key = nvlabs_key(collection, path)
    conv1d = conv1d_projectors and path[0].endswith('_projector')
    out[key] = _from_leaf(path, np.asarray(jax.device_get(leaf)), conv1d)
    if collection == 'batch_stats' and path[-1] == 'mean':
      out[key.removesuffix('running_mean') + 'num_batches_tracked'] = np.array(0, np.int64)
  return out


_NV_TO_HF_RENAMES = [
  (r'^img_encoder\.patch_embed\.proj\.', 'vision_model.embeddings.patch_embeddings.projection.'),
  (r'^img_encoder\.patch_embed\.norm\.', 'vision_model.embeddings.layernorm.'),
  (r'^img_encoder\.pos_embed$', 'vision_model.embeddings.position_embeddings'),
  (r'^img_encoder\.layers\.(\d+)\.blocks\.(\d+)\.', r'vision_model.encoder.stages.\1.layers.\2.'),
  (r'^img_encoder\.layers\.(\d+)\.', r'vision_model.encoder.stages.\1.'),
  (r'^img_encoder\.norm\.', 'vision_model.layernorm.'),
  (r'^text_encoder\.token_embedding\.', 'text_model.embeddings.token_embedding.'),
  (r'^text_encoder\.positional_embedding$', 'text_model.embeddings.position_embedding.weight'),
  (r'^text_encoder\.transformer\.resblocks\.(\d+)\.', r'text_model.encoder.layers.\1.'),
  (r'^text_encoder\.ln_final\.', 'text_model.final_layer_norm.'),
  (r'^img_projector\.linear_hidden\.([01])\.', r'visual_projection.\1.'),
  (r'^img_projector\.linear_out\.', 'visual_projection.3.'),
  (r'^text_projector\.linear_hidden\.([01])\.', r'text_projection.\1.'),
  (r'^text_projector\.linear_out\.', 'text_projection.3.'),
  (r'^logit_scale$', 'logit_scale'),
]


def nvlabs_to_hf(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Renames an NVlabs state dict to Hugging Face GroupViTModel names; splits fused q/k/v.

  The inverse of `hf_to_nvlabs`: fused `qkv` / `in_proj_*` tensors [3C, ...] become q/k/v
  projections [C, ...] and Conv1d(k=1) head weights [out, in, 1] become Linear [out, in]. Raises
  ValueError naming every key that a GroupViTModel has no place for (e.g.
  `multi_label_logit_scale`, or the layers of a projection head deeper than two).
  """
  out: dict[str, np.ndarray] = {}
  unplaced = []
  for key, value in sd.items():
    new = None
    for pattern, repl in _NV_TO_HF_RENAMES:
      new, n = re.subn(pattern, repl, key)
      if n:
        break
    else:
      unplaced.append(key)
      continue
    value = np.asarray(value)
    if new.startswith(('visual_projection.', 'text_projection.')) and value.ndim == 3:
      value = value[..., 0]
    block = re.match(r'^(vision_model\.encoder\.stages\.\d+\.layers\.\d+\.)(.*)$', new)
    layer = re.match(r'^(text_model\.encoder\.layers\.\d+\.)(.*)$', new)
    if block or layer:
      prefix, rest = (block or layer).groups()
      fused = re.match(r'^attn\.(?:qkv\.|in_proj_)(weight|bias)$', rest)
      if fused:
        for name, part in zip('qkv', np.split(value, 3, axis=0)):
          out[f'{prefix}self_attn.{name}_proj.{fused[1]}'] = np.ascontiguousarray(part)
        continue
      kind = 'img' if block else 'text'
      for hf_name, nv_name in _HF_BLOCK_RENAMES[kind]:
        if rest.startswith(nv_name):
          rest = hf_name + rest[len(nv_name) :]
          break
      new = prefix + rest
    new = new.replace('.pre_assign_attn.attn.proj.', '.pre_assign_attn.attn.out_proj.')
    out[new] = value
  if unplaced:
    raise ValueError(
      f'{len(unplaced)} tensor(s) have no place in a Hugging Face GroupViTModel: '
      f'{_preview(unplaced)}'
    )
  return out
