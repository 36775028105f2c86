"""CLIP, DINO / timm ViT and MAE checkpoints: configs inferred from tensor shapes, and strict maps
from their canonical PyTorch state dicts onto this library's Flax variables.

Canonical names (what the file readers hand over; other sources are renamed into these first):
  clip: OpenAI CLIP (`visual.conv1.weight`, `visual.transformer.resblocks.{i}.attn.in_proj_weight`,
    `token_embedding.weight`, `text_projection`, `logit_scale`, ...), plus open_clip's optional
    `logit_bias` and vision `ls_1.gamma` / `ls_2.gamma`.
  vit: DINO / timm (`cls_token`, `pos_embed`, `patch_embed.proj.*`, `blocks.{i}.{norm1, attn.qkv,
    attn.proj, norm2, mlp.fc1, mlp.fc2}.*`, `norm.*`, optional `blocks.{i}.ls1.gamma`).
  mae: the vit keys plus, in `_full` files, `mask_token`, `decoder_pos_embed`, `decoder_embed.*`,
    `decoder_blocks.{i}.*`, `decoder_norm.*`, `decoder_pred.*`.

Shapes give widths, depths, patch and grid sizes, MLP ratios and the joint embedding width. They do
not give head counts, activations or epsilons: those come from `declared` values, else from the
family's release (CLIP: heads = width / 64, QuickGELU, eps 1e-5; DINO and MAE: heads = width / 64
except 16 for the 1280-wide ViT-H, exact GELU, eps 1e-6; MAE decoder: 16 heads).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Mapping

import jax
import numpy as np

from groupvit_jax.checkpoints.keymaps import CheckpointMismatchError
from groupvit_jax.models.clip import CLIPConfig, clip_vision_config
from groupvit_jax.models.config import ConfigError, TextEncoderConfig
from groupvit_jax.models.mae import MAEConfig, mae_encoder_config
from groupvit_jax.models.vit import ViTConfig

# Head counts of released towers whose heads are not 64 wide (ViT-H/14: 1280 wide, 16 heads).
_VISION_HEADS = {1280: 16}
_MAE_DECODER_HEADS = 16  # every MAE release and Hugging Face's ViTMAEConfig default
# Layer-scale gammas are loaded, so their initial value only has to be set.
_LAYER_SCALE_INIT = 1e-5

DECLARED_KEYS = {
  'clip': ('activation', 'eps', 'image_size', 'num_heads', 'text_num_heads'),
  'vit': ('activation', 'eps', 'image_size', 'num_heads'),
  'mae': (
    'activation',
    'decoder_num_heads',
    'eps',
    'image_size',
    'mask_ratio',
    'norm_pix_loss',
    'num_heads',
  ),
}


# --- shapes -> configs -----------------------------------------------------------------------
def _declared(family: str, declared: Mapping[str, Any]) -> dict[str, Any]:
  """Declared values that are set (None means not declared); unknown names are an error."""
  unknown = sorted(set(declared) - set(DECLARED_KEYS[family]))
  if unknown:
    raise ConfigError(
      f'unknown declared key(s) {unknown} for a {family} checkpoint; '
      f'accepted: {list(DECLARED_KEYS[family])}'
    )
  return {k: v for k, v in declared.items() if v is not None}


def _shape(sd: Mapping[str, Any], key: str) -> tuple[int, ...]:
  if key not in sd:
    raise ConfigError(f'cannot infer the architecture: key {key!r} is missing')
  return tuple(np.shape(sd[key]))


def _indices(sd: Mapping[str, Any], prefix: str) -> int:
  """Number of consecutively numbered blocks `prefix{i}.` (0..n-1); gaps are an error."""
  found = sorted(
    {int(m[1]) for k in sd for m in [re.match(re.escape(prefix) + r'(\d+)\.', k)] if m}
  )
  if found != list(range(len(found))):
    raise ConfigError(f'blocks {prefix}* are not numbered 0..n-1: {found}')
  return len(found)


def _grid(n_tokens: int, key: str) -> int:
  g = int(round(math.sqrt(n_tokens)))
  if g * g != n_tokens:
    raise ConfigError(f'{key}: {n_tokens} patch positions are not a square grid')
  return g


def _image_size(declared: Mapping[str, Any], grid: int, patch: int) -> int:
  size = grid * patch
  if declared.get('image_size', size) != size:
    raise ConfigError(
      f'declared image_size={declared["image_size"]} contradicts the weights '
      f'({grid}x{grid} positions of {patch}-pixel patches: {size})'
    )
  return size


def _timm_encoder(sd: Mapping[str, Any], declared: Mapping[str, Any], **base) -> ViTConfig:
  """The ViTConfig of timm-named encoder keys (`cls_token`, `pos_embed`, `blocks.{i}`, ...)."""
  width, in_ch, patch, _ = _shape(sd, 'patch_embed.proj.weight')
  n_pos, pos_width = _shape(sd, 'pos_embed')[1:]
  if pos_width != width:
    raise ConfigError(f'pos_embed width {pos_width} != patch_embed width {width}')
  grid = _grid(n_pos - 1, 'pos_embed')
  hidden = _shape(sd, 'blocks.0.mlp.fc1.weight')[0]
  cfg = ViTConfig(
    **{
      **base,
      'image_size': _image_size(declared, grid, patch),
      'patch_size': patch,
      'in_channels': in_ch,
      'width': width,
      'depth': _indices(sd, 'blocks.'),
      'num_heads': declared.get('num_heads', _VISION_HEADS.get(width, max(width // 64, 1))),
      'mlp_ratio': hidden / width,
      'eps': declared.get('eps', base['eps']),
      'activation': declared.get('activation', base['activation']),
      'patch_bias': 'patch_embed.proj.bias' in sd,
      'layer_scale_init': _LAYER_SCALE_INIT if 'blocks.0.ls1.gamma' in sd else None,
    }
  )
  cfg.validate()
  return cfg


def vit_config_from_shapes(sd: Mapping[str, Any], **declared) -> ViTConfig:
  """A DINO-convention ViTConfig (eps 1e-6, GELU, DINO position interpolation) consistent with the
  shapes of a timm-named state dict. declared: activation, eps, image_size, num_heads."""
  declared = _declared('vit', declared)
  return _timm_encoder(sd, declared, **ViTConfig().to_dict())


def mae_config_from_shapes(sd: Mapping[str, Any], **declared) -> MAEConfig:
  """An MAEConfig consistent with an MAE state dict; decoder_depth is 0 when it has no decoder.
  declared: activation, decoder_num_heads, eps, image_size, mask_ratio, norm_pix_loss,
  num_heads."""
  declared = _declared('mae', declared)
  encoder = _timm_encoder(sd, declared, **mae_encoder_config().to_dict())
  base = MAEConfig()
  kwargs = dict(
    encoder=encoder,
    norm_pix_loss=bool(declared.get('norm_pix_loss', base.norm_pix_loss)),
    mask_ratio=float(declared.get('mask_ratio', base.mask_ratio)),
  )
  if 'decoder_embed.weight' in sd:
    dw, in_w = _shape(sd, 'decoder_embed.weight')
    if in_w != encoder.width:
      raise ConfigError(f'decoder_embed takes width {in_w}, the encoder has {encoder.width}')
    depth = _indices(sd, 'decoder_blocks.')
    hidden = _shape(sd, 'decoder_blocks.0.mlp.fc1.weight')[0] if depth else 4 * dw
    kwargs.update(
      decoder_width=dw,
      decoder_depth=depth,
      decoder_num_heads=declared.get('decoder_num_heads', _MAE_DECODER_HEADS),
      decoder_mlp_ratio=hidden / dw,
    )
  else:
    kwargs.update(decoder_depth=0)
  cfg = MAEConfig(**kwargs)
  cfg.validate()
  return cfg


def clip_config_from_shapes(sd: Mapping[str, Any], **declared) -> CLIPConfig:
  """A CLIPConfig consistent with the shapes of an OpenAI-named CLIP state dict.

  declared: activation ('quick_gelu' or 'gelu', both towers), eps, image_size, num_heads
  (vision), text_num_heads.
  """
  declared = _declared('clip', declared)
  activation = declared.get('activation', 'quick_gelu')
  if any(re.match(r'transformer\.resblocks\.\d+\.ls_\d\.gamma$', k) for k in sd):
    raise ConfigError('layer scale (ls_1/ls_2) in the CLIP text tower is not supported')
  if 'visual.proj' not in sd:
    raise ConfigError('no visual.proj: only ViT image towers with a projection are supported')
  width, in_ch, patch, _ = _shape(sd, 'visual.conv1.weight')
  grid = _grid(_shape(sd, 'visual.positional_embedding')[0] - 1, 'visual.positional_embedding')
  hidden = _shape(sd, 'visual.transformer.resblocks.0.mlp.c_fc.weight')[0]
  eps = declared.get('eps', 1e-5)
  vision = clip_vision_config(
    image_size=_image_size(declared, grid, patch),
    patch_size=patch,
    in_channels=in_ch,
    width=width,
    depth=_indices(sd, 'visual.transformer.resblocks.'),
    num_heads=declared.get('num_heads', _VISION_HEADS.get(width, max(width // 64, 1))),
    mlp_ratio=hidden / width,
    eps=eps,
    activation=activation,
    patch_bias='visual.conv1.bias' in sd,
    layer_scale_init=(
      _LAYER_SCALE_INIT if 'visual.transformer.resblocks.0.ls_1.gamma' in sd else None
    ),
  )
  vocab, t_width = _shape(sd, 'token_embedding.weight')
  t_hidden = _shape(sd, 'transformer.resblocks.0.mlp.c_fc.weight')[0]
  text = TextEncoderConfig(
    vocab_size=vocab,
    context_length=_shape(sd, 'positional_embedding')[0],
    width=t_width,
    num_layers=_indices(sd, 'transformer.resblocks.'),
    num_heads=declared.get('text_num_heads', max(t_width // 64, 1)),
    mlp_ratio=t_hidden / t_width,
    layer_norm_eps=eps,
    activation=activation,
  )
  embed_dim = _shape(sd, 'visual.proj')[1]
  t_embed = _shape(sd, 'text_projection')[1]
  if t_embed != embed_dim:
    raise ConfigError(f'text_projection gives {t_embed} dims, visual.proj {embed_dim}')
  cfg = CLIPConfig(vision=vision, text=text, embed_dim=embed_dim, logit_bias='logit_bias' in sd)
  cfg.validate()
  return cfg


# --- variables <- state dicts ----------------------------------------------------------------
_Rules = list[tuple[str, str]]

_LEAF_RULES: _Rules = [(r'/kernel$', '/weight'), (r'/scale$', '/weight')]
_TIMM_RULES: _Rules = [
  (r'^patch_embed/', 'patch_embed/proj/'),
  (r'^ln_pre/', 'norm_pre/'),  # timm's name for a pre-blocks norm
  (r'blocks_(\d+)/', r'blocks/\1/'),  # also decoder_blocks_{i}
]
_CLIP_RULES: _Rules = [
  (r'^visual/patch_embed/', 'visual/conv1/'),
  (r'^visual/cls_token$', 'visual/class_embedding'),
  (r'^visual/pos_embed$', 'visual/positional_embedding'),
  (r'^visual/norm/', 'visual/ln_post/'),
  (r'^proj$', 'visual/proj'),
  (r'^visual/blocks_(\d+)/', r'visual/transformer/resblocks/\1/'),
  (r'/norm1/', '/ln_1/'),
  (r'/norm2/', '/ln_2/'),
  (r'/attn/(qkv|in_proj)/kernel$', '/attn/in_proj_weight'),
  (r'/attn/(qkv|in_proj)/bias$', '/attn/in_proj_bias'),
  (r'/attn/proj/', '/attn/out_proj/'),
  (r'/mlp/fc1/', '/mlp/c_fc/'),
  (r'/mlp/fc2/', '/mlp/c_proj/'),
  (r'/ls(\d)/', r'/ls_\1/'),
  (r'^text/resblocks_(\d+)/', r'transformer/resblocks/\1/'),
  (r'^text/token_embedding/embedding$', 'token_embedding/weight'),
  (r'^text/', ''),
]


def _renamer(rules: _Rules, strip: str = '') -> Callable[[tuple[str, ...]], str]:
  def key(path: tuple[str, ...]) -> str:
    s = '/'.join(path)
    if strip:
      s = re.sub(strip, '', s)
    for pattern, repl in rules + _LEAF_RULES:
      s = re.sub(pattern, repl, s)
    return s.replace('/', '.')

  return key


clip_key = _renamer(_CLIP_RULES)
clip_key.__doc__ = "Canonical (OpenAI) key of a CLIP param path, e.g. ('proj',) -> 'visual.proj'."
vit_key = _renamer(_TIMM_RULES)
vit_key.__doc__ = 'Canonical (timm) key of a VisionTransformer param path.'
mae_key = _renamer(_TIMM_RULES, strip=r'^encoder/')
mae_key.__doc__ = 'Canonical (MAE release) key of an MAE param path.'


def _to_leaf(name: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
  """A torch-layout tensor in the layout of our leaf `name` [shape], float32.

  Linear weights [out, in] are transposed, Conv2d weights [out, in, kh, kw] go to [kh, kw, in,
  out]; other tensors may differ from the leaf only by unit axes (CLIP's class embedding [W] is our
  [1, 1, W]). Anything else is returned as is, for the caller's shape check to report.
  """
  value = np.asarray(value)
  if name == 'kernel':
    value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
  elif value.shape != shape:
    squeeze = lambda s: tuple(d for d in s if d != 1)
    if squeeze(value.shape) == squeeze(shape):
      value = value.reshape(shape)
  return value.astype(np.float32, copy=False)


def _fill(
  sd: Mapping[str, Any], abstract: Mapping[str, Any], key_of: Callable[[tuple[str, ...]], str]
) -> dict[str, Any]:
  """Every leaf of `abstract` from `sd[key_of(path)]`; raises CheckpointMismatchError listing all
  missing, unused and misshapen keys."""
  used, missing, shapes = set(), [], []

  def fill(keypath, leaf):
    collection = keypath[0].key
    path = tuple(k.key for k in keypath[1:])
    if collection != 'params':
      raise ValueError(f'unexpected variable collection {collection!r}')
    key = key_of(path)
    if key not in sd:
      missing.append(key)
      return None
    used.add(key)
    value = _to_leaf(path[-1], sd[key], tuple(leaf.shape))
    if value.shape != tuple(leaf.shape):
      shapes.append(
        f'{key}: checkpoint {tuple(np.shape(sd[key]))} -> {value.shape}, model {tuple(leaf.shape)}'
      )
      return None
    return value

  variables = jax.tree_util.tree_map_with_path(fill, dict(abstract))
  unused = sorted(k for k in sd if k not in used)
  if missing or unused or shapes:
    raise CheckpointMismatchError(missing, unused, shapes)
  return variables


def clip_to_variables(sd: Mapping[str, Any], abstract: Mapping[str, Any]) -> dict[str, Any]:
  """Variables of `CLIP` (the tree `abstract`, e.g. `jax.eval_shape` of init) from an OpenAI-named
  state dict; raises CheckpointMismatchError listing every missing/unused/misshapen key."""
  return _fill(sd, abstract, clip_key)


def vit_to_variables(sd: Mapping[str, Any], abstract: Mapping[str, Any]) -> dict[str, Any]:
  """Variables of `VisionTransformer` from a timm / DINO-named state dict (strict, as above)."""
  return _fill(sd, abstract, vit_key)


def mae_to_variables(sd: Mapping[str, Any], abstract: Mapping[str, Any]) -> dict[str, Any]:
  """Variables of `MAE` from an MAE-release-named state dict (strict, as above)."""
  return _fill(sd, abstract, mae_key)


# --- one entry point for the converter -------------------------------------------------------
_CONFIG_FROM_SHAPES = {
  'clip': clip_config_from_shapes,
  'vit': vit_config_from_shapes,
  'mae': mae_config_from_shapes,
}
TO_VARIABLES = {'clip': clip_to_variables, 'vit': vit_to_variables, 'mae': mae_to_variables}


def config_from_source(
  family: str, sd: Mapping[str, Any], declared: Mapping[str, Any], kind: str, notes: list[str]
) -> CLIPConfig | ViTConfig | MAEConfig:
  """The config of a tower read by `tower_sources.load_tower_source`.

  Declared values the family has no use for (an MAE's mask ratio when it is read as a plain ViT)
  are dropped with a note. Position interpolation follows the file's origin: ViTs from Hugging
  Face directories interpolate as Hugging Face ViT does (bicubic to the target grid), DINO files
  as DINO does (the +0.1 offset); `--set pos_interpolation=...` changes it.
  """
  accepted = {k: v for k, v in declared.items() if k in DECLARED_KEYS[family]}
  dropped = sorted(set(declared) - set(accepted))
  if dropped:
    notes.append(f'declared {dropped} do not apply to a {family} model; ignored')
  cfg = _CONFIG_FROM_SHAPES[family](sd, **accepted)
  if family == 'vit' and kind.startswith('hf_'):
    cfg = dataclasses.replace(cfg, pos_interpolation='bicubic')
  return cfg
