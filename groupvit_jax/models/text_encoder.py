"""CLIP text transformer: token ids [B, L] -> the end-of-text token's feature [B, C]."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from groupvit_jax.models.config import TextEncoderConfig
from groupvit_jax.models.layers import Mlp, SelfAttention, cotangent_barrier, layer_norm

Dtype = Any


class ResidualAttentionBlock(nn.Module):
  """CLIP's pre-norm block (QuickGELU as OpenAI's, or GELU as most open_clip models):
  [B, L, C] -> [B, L, C]."""

  num_heads: int
  num_layers: int
  mlp_ratio: float = 4.0
  eps: float = 1e-5
  dtype: Dtype = jnp.float32
  activation: str = 'quick_gelu'

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    c = x.shape[-1]
    # CLIP's initialisation: residual projections scaled down with depth.
    attn_std = c**-0.5
    proj_std = attn_std * (2 * self.num_layers) ** -0.5
    fc_std = (2 * c) ** -0.5
    normal = nn.initializers.normal
    y = layer_norm(self.eps, 'ln_1')(x)
    x = x + SelfAttention(
      self.num_heads,
      dtype=self.dtype,
      qkv_name='in_proj',
      out_name='out_proj',
      qkv_init=normal(attn_std),
      out_init=normal(proj_std),
      name='attn',
    )(y, mask)
    y = layer_norm(self.eps, 'ln_2')(x)
    return x + Mlp(
      int(c * self.mlp_ratio),
      activation=self.activation,
      dtype=self.dtype,
      fc1_name='c_fc',
      fc2_name='c_proj',
      kernel_init=normal(fc_std),
      name='mlp',
    )(y)


class TextEncoder(nn.Module):
  """Causal CLIP transformer. text: int [B, L] (L <= context_length) -> features [B, C] float32.

  The output is read at the end-of-text token, i.e. the largest id of each row, as CLIP does.
  """

  cfg: TextEncoderConfig
  dtype: Dtype = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, text: jnp.ndarray) -> jnp.ndarray:
    cfg = self.cfg
    b, length = text.shape
    if length > cfg.context_length:
      raise ValueError(f'text has {length} tokens, more than context_length {cfg.context_length}')
    x = nn.Embed(
      cfg.vocab_size, cfg.width, embedding_init=nn.initializers.normal(0.02), name='token_embedding'
    )(text)
    pos = self.param(
      'positional_embedding',
      nn.initializers.normal(0.01),
      (cfg.context_length, cfg.width),
      jnp.float32,
    )
    x = x + pos[:length]
    causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
    block_cls = nn.remat(ResidualAttentionBlock) if self.remat else ResidualAttentionBlock
    for i in range(cfg.num_layers):
      x = block_cls(
        cfg.num_heads,
        cfg.num_layers,
        cfg.mlp_ratio,
        cfg.layer_norm_eps,
        dtype=self.dtype,
        activation=cfg.activation,
        name=f'resblocks_{i}',
      )(x, causal)
      x = cotangent_barrier(x)
    # LayerNorm is per token, so normalising only the gathered end-of-text token is the same.
    eot = jnp.argmax(text, axis=-1)
    x = jnp.take_along_axis(x, eot[:, None, None], axis=1)[:, 0]
    return layer_norm(cfg.layer_norm_eps, 'ln_final')(x)
