"""Infers a GroupViTConfig from an NVlabs state dict's shapes, then applies a declared config.

Shapes determine almost everything (widths, depths, group tokens, outputs, MLP ratios, heads'
sizes, which optional blocks exist). They cannot determine attention head counts or training-only
switches (hard assignment, drop path); those come from the declared config (Hugging Face
`config.json` or the NVlabs OmegaConf config) when there is one, else from the released defaults
(heads = width / 64, as CLIP and GroupViT-S use). A declared config that contradicts the shapes
is an error.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

import numpy as np

from groupvit_jax.models.config import (
  ConfigError,
  GroupViTConfig,
  ImageEncoderConfig,
  TextEncoderConfig,
)


def _indices(sd, pattern) -> list[int]:
  found = {int(m[1]) for k in sd for m in [re.match(pattern, k)] if m}
  return sorted(found)


def config_from_shapes(sd: Mapping[str, np.ndarray]) -> GroupViTConfig:
  """A config consistent with every tensor shape of the NVlabs-named state dict `sd`."""

  def shape(key):
    if key not in sd:
      raise ConfigError(f'cannot infer the architecture: key {key!r} is missing')
    return tuple(np.shape(sd[key]))

  n_pos, width = shape('img_encoder.pos_embed')[1:]
  out_c, in_ch, patch, _ = shape('img_encoder.patch_embed.proj.weight')
  grid = int(round(math.sqrt(n_pos)))
  if grid * grid != n_pos:
    raise ConfigError(f'position embedding of {n_pos} tokens is not a square grid')
  stages = _indices(sd, r'^img_encoder\.layers\.(\d+)\.')
  if stages != list(range(len(stages))) or not stages:
    raise ConfigError(f'image stages are not numbered 0..n-1: {stages}')
  depths, group_tokens, output_groups = [], [], []
  for s in stages:
    blocks = _indices(sd, rf'^img_encoder\.layers\.{s}\.blocks\.(\d+)\.')
    depths.append(len(blocks))
    gkey = f'img_encoder.layers.{s}.group_token'
    group_tokens.append(shape(gkey)[1] if gkey in sd else 0)
    okey = f'img_encoder.layers.{s}.downsample.mlp_inter.fc2.weight'
    if okey in sd:
      output_groups.append(shape(okey)[0])
  mlp_hidden = shape('img_encoder.layers.0.blocks.0.mlp.fc1.weight')[0]
  assign_ratio, pre_assign_ratio = (0.5, 4.0), 4.0
  pre_key = 'img_encoder.layers.0.downsample.pre_assign_attn.mlp.fc1.weight'
  if pre_key in sd:
    pre_assign_ratio = shape(pre_key)[0] / width
  if output_groups:
    tokens_dim = shape('img_encoder.layers.0.downsample.mlp_inter.fc1.weight')[0]
    channels_dim = shape('img_encoder.layers.0.downsample.mlp_channels.fc1.weight')[0]
    assign_ratio = (tokens_dim / width, channels_dim / width)
  image = ImageEncoderConfig(
    image_size=grid * patch,
    patch_size=patch,
    in_channels=in_ch,
    width=width,
    num_heads=max(width // 64, 1),
    mlp_ratio=mlp_hidden / width,
    depths=tuple(depths),
    num_group_tokens=tuple(group_tokens),
    num_output_groups=tuple(output_groups),
    assign_mlp_ratio=assign_ratio,
    pre_assign_attention=any('.pre_assign_attn.' in k for k in sd),
    pre_assign_mlp_ratio=pre_assign_ratio,
    group_projector=any('.group_projector.' in k for k in sd),
  )

  vocab, t_width = shape('text_encoder.token_embedding.weight')
  context = shape('text_encoder.positional_embedding')[0]
  t_layers = _indices(sd, r'^text_encoder\.transformer\.resblocks\.(\d+)\.')
  t_hidden = shape('text_encoder.transformer.resblocks.0.mlp.c_fc.weight')[0]
  text = TextEncoderConfig(
    vocab_size=vocab,
    context_length=context,
    width=t_width,
    num_layers=len(t_layers),
    num_heads=max(t_width // 64, 1),
    mlp_ratio=t_hidden / t_width,
  )

  hidden = _indices(sd, r'^img_projector\.linear_hidden\.(\d+)\.weight$')
  convs = [i for i in hidden if len(shape(f'img_projector.linear_hidden.{i}.weight')) > 1]
  proj_layers = len(convs) + (1 if 'img_projector.linear_out.weight' in sd else 0)
  hidden_dim = shape('img_projector.linear_hidden.0.weight')[0] if convs else 4096
  out_dim = shape('img_projector.linear_out.weight')[0] if proj_layers else width
  _require_equal_text_head(sd, shape, convs, proj_layers)
  cfg = GroupViTConfig(
    image=image,
    text=text,
    projection_dim=out_dim,
    projection_hidden_dim=hidden_dim,
    projection_layers=proj_layers,
    multi_label='multi_label_logit_scale' in sd,
  )
  cfg.validate()
  return cfg


def _require_equal_text_head(sd, shape, convs, proj_layers):
  t_hidden = _indices(sd, r'^text_projector\.linear_hidden\.(\d+)\.weight$')
  t_convs = [i for i in t_hidden if len(shape(f'text_projector.linear_hidden.{i}.weight')) > 1]
  t_layers = len(t_convs) + (1 if 'text_projector.linear_out.weight' in sd else 0)
  if t_layers != proj_layers:
    raise ConfigError(f'image head has {proj_layers} layers but text head has {t_layers}')


def _check(name, declared, inferred):
  if declared is not None and declared != inferred:
    raise ConfigError(f'declared {name}={declared!r} contradicts the weights ({inferred!r})')


def apply_hf_config(cfg: GroupViTConfig, hf: Mapping[str, Any]) -> GroupViTConfig:
  """Takes heads and epsilons from a Hugging Face GroupViTConfig dict; checks the rest."""
  v, t = hf.get('vision_config', {}) or {}, hf.get('text_config', {}) or {}
  for name, act, want in (
    ('vision', v.get('hidden_act', 'gelu'), 'gelu'),
    ('text', t.get('hidden_act', 'quick_gelu'), 'quick_gelu'),
  ):
    if act != want:
      raise ConfigError(f'{name} hidden_act={act!r} is not supported (GroupViT uses {want!r})')
  _check('vision hidden_size', v.get('hidden_size'), cfg.image.width)
  _check('vision depths', tuple(v['depths']) if 'depths' in v else None, cfg.image.depths)
  _check('text hidden_size', t.get('hidden_size'), cfg.text.width)
  _check('projection_dim', hf.get('projection_dim'), cfg.projection_dim)
  image = dataclasses.replace(
    cfg.image,
    num_heads=v.get('num_attention_heads', cfg.image.num_heads),
    layer_norm_eps=v.get('layer_norm_eps', cfg.image.layer_norm_eps),
    assign_eps=v.get('assign_eps', cfg.image.assign_eps),
  )
  text = dataclasses.replace(
    cfg.text,
    num_heads=t.get('num_attention_heads', cfg.text.num_heads),
    layer_norm_eps=t.get('layer_norm_eps', cfg.text.layer_norm_eps),
  )
  out = dataclasses.replace(cfg, image=image, text=text)
  out.validate()
  return out


def apply_nvlabs_config(cfg: GroupViTConfig, model_cfg: Mapping[str, Any]) -> GroupViTConfig:
  """Takes heads and the assignment type from the NVlabs `config.model`; checks the rest."""
  img = dict(model_cfg.get('img_encoder', {}) or {})
  txt = dict(model_cfg.get('text_encoder', {}) or {})
  heads = img.get('num_heads')
  if heads is not None:
    heads = list(heads)
    if len(set(heads)) != 1:
      raise ConfigError(f'per-stage head counts {heads} are not supported (one count for all)')
    heads = heads[0]
  _check('img_encoder.embed_dim', img.get('embed_dim'), cfg.image.width)
  _check('img_encoder.depths', tuple(img['depths']) if 'depths' in img else None, cfg.image.depths)
  _check('text_encoder.width', txt.get('width'), cfg.text.width)
  _check('text_encoder.layers', txt.get('layers'), cfg.text.num_layers)
  factors = img.get('embed_factors')
  if factors is not None and any(f != 1 for f in factors):
    raise ConfigError(f'embed_factors {list(factors)} != 1 are not supported')
  hard = bool(img.get('hard_assignment', cfg.image.hard_assignment))
  image = dataclasses.replace(
    cfg.image,
    num_heads=heads or cfg.image.num_heads,
    hard_assignment=hard,
    gumbel=hard,
    drop_path_rate=float(img.get('drop_path_rate', cfg.image.drop_path_rate)),
  )
  out = dataclasses.replace(cfg, image=image)
  out.validate()
  return out


# --- GroupViTConfig -> declared configs (export) ---------------------------------------------
def _hidden(width: int, ratio: float) -> int:
  return int(width * ratio)  # as the model layers size their MLPs


def hf_config_dict(cfg: GroupViTConfig) -> dict[str, Any]:
  """A complete Hugging Face GroupViTConfig dict (config.json) for `cfg`: the inverse of
  `config_from_shapes` + `apply_hf_config` for everything a GroupViTModel can express.

  Raises ConfigError naming the first field whose value no GroupViTModel can hold: HF always
  builds the cross-attention before assignment (with the blocks' MLP width), the group projector
  between grouping stages, and two-layer projection heads.
  """
  im, tx = cfg.image, cfg.text
  grouping = im.num_grouping_stages
  if grouping and not im.pre_assign_attention:
    raise ConfigError('image.pre_assign_attention=False cannot be expressed in Hugging Face')
  if grouping and im.pre_assign_attention and im.pre_assign_mlp_ratio != im.mlp_ratio:
    raise ConfigError(
      f'image.pre_assign_mlp_ratio={im.pre_assign_mlp_ratio} != image.mlp_ratio={im.mlp_ratio} '
      'cannot be expressed in Hugging Face (its pre-assignment MLP uses intermediate_size)'
    )
  if grouping > 1 and not im.group_projector:
    raise ConfigError('image.group_projector=False cannot be expressed in Hugging Face')
  for i in range(1, grouping if im.group_projector else 0):
    # HF sizes the group projector's input by num_output_groups[i - 1], but it receives the
    # previous stage's num_group_tokens[i - 1] tokens.
    if im.num_output_groups[i - 1] != im.num_group_tokens[i - 1]:
      raise ConfigError(
        f'image.num_output_groups[{i - 1}]={im.num_output_groups[i - 1]} != '
        f'image.num_group_tokens[{i - 1}]={im.num_group_tokens[i - 1]} before a group projector '
        'cannot be expressed in Hugging Face'
      )
  if cfg.projection_layers != 2:
    raise ConfigError(
      f'projection_layers={cfg.projection_layers} cannot be expressed in Hugging Face '
      '(its projection heads are Linear-BatchNorm-ReLU-Linear)'
    )
  # HF reads num_output_groups[i] for every stage; stages without group tokens ignore it.
  outputs = list(im.num_output_groups[:grouping])
  outputs += [outputs[-1] if outputs else 0] * (len(im.depths) - len(outputs))
  init = {'initializer_range': 0.02, 'initializer_factor': 1.0}
  vision = {
    'model_type': 'groupvit_vision_model',
    'hidden_size': im.width,
    'intermediate_size': _hidden(im.width, im.mlp_ratio),
    'num_hidden_layers': sum(im.depths),
    'depths': list(im.depths),
    'num_group_tokens': list(im.num_group_tokens),
    'num_output_groups': outputs,
    'num_attention_heads': im.num_heads,
    'image_size': im.image_size,
    'patch_size': im.patch_size,
    'num_channels': im.in_channels,
    'hidden_act': 'gelu',
    'layer_norm_eps': im.layer_norm_eps,
    'dropout': 0.0,
    'attention_dropout': 0.0,
    'assign_eps': im.assign_eps,
    'assign_mlp_ratio': list(im.assign_mlp_ratio),
    **init,
  }
  text = {
    'model_type': 'groupvit_text_model',
    'vocab_size': tx.vocab_size,
    'hidden_size': tx.width,
    'intermediate_size': _hidden(tx.width, tx.mlp_ratio),
    'num_hidden_layers': tx.num_layers,
    'num_attention_heads': tx.num_heads,
    'max_position_embeddings': tx.context_length,
    'hidden_act': tx.activation,
    'layer_norm_eps': tx.layer_norm_eps,
    'dropout': 0.0,
    'attention_dropout': 0.0,
    # CLIP BPE ids of the tokenizer this library uses (groupvit_jax.tokenizer)
    'pad_token_id': 1,
    'bos_token_id': 49406,
    'eos_token_id': 49407,
    **init,
  }
  return {
    'architectures': ['GroupViTModel'],
    'model_type': 'groupvit',
    'projection_dim': cfg.projection_dim,
    'projection_intermediate_dim': cfg.projection_hidden_dim,
    'logit_scale_init_value': cfg.logit_scale_init,
    'output_segmentation': False,
    'dtype': 'float32',
    'text_config': text,
    'vision_config': vision,
    **init,
  }


def nvlabs_config_dict(cfg: GroupViTConfig) -> dict[str, Any]:
  """The NVlabs OmegaConf `config.model` section for `cfg`, as plain dicts and lists: the keys
  that `apply_nvlabs_config` reads plus the constructor arguments of the release's
  `MultiLabelContrastive` / `GroupViT` / `TextTransformer` that describe this architecture."""
  im, tx = cfg.image, cfg.text
  if tx.activation != 'quick_gelu':
    raise ConfigError(f'text.activation={tx.activation!r}: the NVlabs text tower is QuickGELU only')
  stages = len(im.depths)
  return {
    'type': 'MultiLabelContrastive',
    'img_encoder': {
      'type': 'GroupViT',
      'img_size': im.image_size,
      'patch_size': im.patch_size,
      'in_chans': im.in_channels,
      'embed_dim': im.width,
      'embed_factors': [1] * stages,
      'depths': list(im.depths),
      'num_heads': [im.num_heads] * stages,
      'num_group_tokens': list(im.num_group_tokens),
      'num_output_groups': list(im.num_output_groups[: im.num_grouping_stages]),
      'hard_assignment': im.hard_assignment,
      'mlp_ratio': im.mlp_ratio,
      'qkv_bias': True,
      'drop_rate': 0.0,
      'attn_drop_rate': 0.0,
      'drop_path_rate': im.drop_path_rate,
      'patch_norm': True,
      'pos_embed_type': 'simple',
    },
    'text_encoder': {
      'type': 'TextTransformer',
      'context_length': tx.context_length,
      'width': tx.width,
      'layers': tx.num_layers,
      'vocab_size': tx.vocab_size,
    },
    'contrast_temperature': math.exp(-cfg.logit_scale_init),
    'proj_num_layers': cfg.projection_layers,
    'output_dim': cfg.projection_dim,
    # The release's value is the number of extra captions per image; any positive count creates
    # `multi_label_logit_scale`, which is all the architecture depends on.
    'multi_label': 1 if cfg.multi_label else 0,
  }
