"""GroupViT image tower: patch embedding, stages of ViT blocks with group tokens, grouping
blocks."""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from groupvit_jax.models.config import ImageEncoderConfig
from groupvit_jax.models.grouping import Assignment, GroupingBlock
from groupvit_jax.models.layers import MixerMlp, ViTBlock, cotangent_barrier, dense_init, layer_norm
from groupvit_jax.ops.resize import resize_2d

Dtype = Any


class ImageEncoderOutput(NamedTuple):
  pooled: jnp.ndarray  # [B, C] mean of the final tokens
  tokens: jnp.ndarray  # [B, S_last, C] final (normalised) segment tokens
  assignments: tuple[Assignment, ...]  # one per grouping stage, maps [B, S_out, N_in]
  grid: tuple[int, int]  # (h, w) patch grid of the input


def resize_pos_embed(pos_embed: jnp.ndarray, grid: tuple[int, int]) -> jnp.ndarray:
  """[1, g*g, C] learned position embedding -> [1, h*w, C], bicubic with PyTorch semantics."""
  n, c = pos_embed.shape[1:]
  g = int(round(np.sqrt(n)))
  if g * g != n:
    raise ValueError(f'position embedding of {n} tokens is not a square grid')
  if grid == (g, g):
    return pos_embed
  pe = resize_2d(pos_embed.reshape(1, g, g, c), grid, 'bicubic')
  return pe.reshape(1, grid[0] * grid[1], c)


class GroupingStage(nn.Module):
  """ViT blocks over [image tokens | group tokens], then optionally a grouping block.

  Input x: [B, N, C]; prev_groups: [B, S_prev, C] or None. Returns (x', groups', assignment) where
  x' is [B, S_out, C] when this stage groups, otherwise [B, N, C].
  """

  cfg: ImageEncoderConfig
  stage: int
  drop_path: tuple[float, ...]
  dtype: Dtype = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x, prev_groups, deterministic: bool = True):
    cfg = self.cfg
    b, n, c = x.shape
    num_groups = cfg.num_group_tokens[self.stage]
    groups = None
    if num_groups > 0:
      projected = prev_groups is not None and cfg.group_projector
      # Tokens that receive a projection of the previous stage's groups start at zero.
      init = nn.initializers.zeros if projected else nn.initializers.truncated_normal(0.02)
      token = self.param('group_token', init, (1, num_groups, c), jnp.float32)
      groups = jnp.broadcast_to(token, (b, num_groups, c))
      if projected:
        proj = layer_norm(cfg.layer_norm_eps, 'group_projector_norm')(prev_groups)
        proj = MixerMlp(c // 2, num_groups, dtype=self.dtype, name='group_projector')(proj)
        groups = groups + proj
      tokens = jnp.concatenate([x, groups.astype(x.dtype)], axis=1)
    else:
      tokens = x
    block_cls = nn.remat(ViTBlock, static_argnums=(2,)) if self.remat else ViTBlock
    for i in range(cfg.depths[self.stage]):
      tokens = block_cls(
        cfg.num_heads,
        cfg.mlp_ratio,
        self.drop_path[i],
        cfg.layer_norm_eps,
        dtype=self.dtype,
        name=f'blocks_{i}',
      )(tokens, deterministic)
      tokens = cotangent_barrier(tokens)
    if num_groups == 0:
      return tokens, None, None
    x, groups = tokens[:, :n], tokens[:, n:]
    block = GroupingBlock(
      cfg.num_heads,
      cfg.num_output_groups[self.stage],
      tuple(cfg.assign_mlp_ratio),
      hard=cfg.hard_assignment,
      gumbel=cfg.gumbel,
      gumbel_tau=cfg.gumbel_tau,
      assign_eps=cfg.assign_eps,
      pre_assign_attention=cfg.pre_assign_attention,
      pre_assign_mlp_ratio=cfg.pre_assign_mlp_ratio,
      eps=cfg.layer_norm_eps,
      dtype=self.dtype,
      name='downsample',
    )
    x, assignment = block(x, groups, deterministic)
    return x, groups, assignment


class ImageEncoder(nn.Module):
  """GroupViT image tower: images [B, H, W, 3] (normalised) -> ImageEncoderOutput.

  H and W must be multiples of the patch size; other grids than the training one get a bicubic
  resized position embedding (evaluation runs at 448).
  """

  cfg: ImageEncoderConfig
  dtype: Dtype = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, images: jnp.ndarray, deterministic: bool = True) -> ImageEncoderOutput:
    cfg = self.cfg
    p = cfg.patch_size
    if images.ndim != 4 or images.shape[1] % p or images.shape[2] % p:
      raise ValueError(
        f'images must be [B, H, W, {cfg.in_channels}] with H, W multiples of '
        f'{p}; got {images.shape}'
      )
    x = nn.Conv(
      cfg.width,
      (p, p),
      strides=(p, p),
      padding='VALID',
      dtype=self.dtype,
      kernel_init=dense_init,
      name='patch_embed',
    )(images.astype(self.dtype))
    b, h, w, c = x.shape
    x = layer_norm(cfg.layer_norm_eps, 'patch_norm')(x.reshape(b, h * w, c))
    pos = self.param(
      'pos_embed', nn.initializers.truncated_normal(0.02), (1, cfg.grid_size**2, c), jnp.float32
    )
    x = x + resize_pos_embed(pos, (h, w))

    rates = np.linspace(0.0, cfg.drop_path_rate, sum(cfg.depths)).tolist()
    offsets = np.cumsum((0,) + tuple(cfg.depths)).tolist()
    groups, assignments = None, []
    for s in range(len(cfg.depths)):
      stage = GroupingStage(
        cfg,
        s,
        tuple(rates[offsets[s] : offsets[s + 1]]),
        dtype=self.dtype,
        remat=self.remat,
        name=f'layers_{s}',
      )
      x, groups, assignment = stage(x, groups, deterministic)
      if assignment is not None:
        assignments.append(assignment)
    x = layer_norm(cfg.layer_norm_eps, 'norm')(x)
    return ImageEncoderOutput(
      pooled=jnp.mean(x, axis=1), tokens=x, assignments=tuple(assignments), grid=(h, w)
    )
