"""The grouping block: learned group tokens take over image tokens by (Gumbel) assignment.

Shapes: image/segment tokens x [B, N, C]; group tokens [B, S_in, C]; output segments [B, S_out, C];
assignment maps [B, S_out, N] (softmax over the group axis: each image token picks one group).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from groupvit_jax.models.layers import CrossAttention, MixerMlp, Mlp, dense_init, layer_norm

Dtype = Any


class Assignment(NamedTuple):
  """What a grouping block reports about its assignment, both [B, S_out, N] float32."""

  hard: jnp.ndarray  # the map actually used (one-hot for hard assignment, soft otherwise)
  soft: jnp.ndarray  # the noise-free softmax over groups, used for segmentation


def _one_hot_argmax(probs: jnp.ndarray, axis: int) -> jnp.ndarray:
  idx = jnp.argmax(probs, axis=axis)
  return jax.nn.one_hot(idx, probs.shape[axis], axis=axis, dtype=probs.dtype)


def straight_through(probs: jnp.ndarray, axis: int) -> jnp.ndarray:
  """One-hot of argmax in the forward pass, gradient of `probs` in the backward pass."""
  hard = _one_hot_argmax(probs, axis)
  return hard + probs - jax.lax.stop_gradient(probs)


def assign_probs(
  logits: jnp.ndarray, *, axis: int, hard: bool, gumbel_key: jax.Array | None, tau: float = 1.0
) -> jnp.ndarray:
  """Assignment weights from logits along `axis` (float32).

  With `gumbel_key`, adds Gumbel(0, 1) noise and divides by `tau` before the softmax (training).
  With `hard`, returns the straight-through one-hot of the (noisy) softmax.
  """
  logits = logits.astype(jnp.float32)
  if gumbel_key is not None:
    logits = (logits + jax.random.gumbel(gumbel_key, logits.shape, jnp.float32)) / tau
  probs = jax.nn.softmax(logits, axis=axis)
  return straight_through(probs, axis) if hard else probs


class AssignAttention(nn.Module):
  """Single-head assignment of image tokens to groups and the pooled group update.

  new_g = proj( sum_i A[g, i] v_i / (sum_i A[g, i] + assign_eps) ), A from softmax over groups.
  """

  hard: bool = True
  gumbel: bool = True
  gumbel_tau: float = 1.0
  assign_eps: float = 1.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
    self, groups: jnp.ndarray, x: jnp.ndarray, deterministic: bool = True
  ) -> tuple[jnp.ndarray, Assignment]:
    """groups: [B, S, C], x: [B, N, C] -> ([B, S, C], Assignment with maps [B, S, N])."""
    c = groups.shape[-1]
    dense = lambda name: nn.Dense(c, dtype=self.dtype, kernel_init=dense_init, name=name)
    q = dense('q_proj')(groups)
    k = dense('k_proj')(x)
    v = dense('v_proj')(x)
    logits = jnp.einsum('bsc,bnc->bsn', q, k, preferred_element_type=jnp.float32) * c**-0.5
    use_noise = self.gumbel and not deterministic
    key = self.make_rng('gumbel') if use_noise else None
    attn = assign_probs(logits, axis=1, hard=self.hard, gumbel_key=key, tau=self.gumbel_tau)
    soft = jax.nn.softmax(logits, axis=1)
    weights = attn / (jnp.sum(attn, axis=-1, keepdims=True) + self.assign_eps)
    out = jnp.einsum('bsn,bnc->bsc', weights.astype(v.dtype), v)
    out = dense('proj')(out)
    return out, Assignment(hard=attn, soft=soft)


class CrossAttnBlock(nn.Module):
  """Group tokens attend to image tokens (no pre-norm on q/k), MLP, then a post LayerNorm."""

  num_heads: int
  mlp_ratio: float = 4.0
  eps: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, query: jnp.ndarray, key: jnp.ndarray) -> jnp.ndarray:
    """query: [B, S, C], key: [B, N, C] -> [B, S, C]."""
    c = query.shape[-1]
    x = query + CrossAttention(self.num_heads, dtype=self.dtype, name='attn')(query, key)
    y = layer_norm(self.eps, 'norm2')(x)
    x = x + Mlp(int(c * self.mlp_ratio), dtype=self.dtype, name='mlp')(y)
    return layer_norm(self.eps, 'norm_post')(x)


class GroupingBlock(nn.Module):
  """Merges image tokens [B, N, C] into `num_output_groups` segment tokens [B, S_out, C]."""

  num_heads: int
  num_output_groups: int
  assign_mlp_ratio: tuple[float, float] = (0.5, 4.0)
  hard: bool = True
  gumbel: bool = True
  gumbel_tau: float = 1.0
  assign_eps: float = 1.0
  pre_assign_attention: bool = True
  pre_assign_mlp_ratio: float = 4.0
  eps: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
    self, x: jnp.ndarray, group_tokens: jnp.ndarray, deterministic: bool = True
  ) -> tuple[jnp.ndarray, Assignment]:
    """x: [B, N, C], group_tokens: [B, S_in, C] -> (segments [B, S_out, C], Assignment)."""
    c = x.shape[-1]
    tokens_dim, channels_dim = (int(r * c) for r in self.assign_mlp_ratio)
    group_tokens = layer_norm(self.eps, 'norm_tokens')(group_tokens)
    x = layer_norm(self.eps, 'norm_x')(x)
    groups = MixerMlp(tokens_dim, self.num_output_groups, dtype=self.dtype, name='mlp_inter')(
      group_tokens
    )
    groups = layer_norm(self.eps, 'norm_post_tokens')(groups)
    if self.pre_assign_attention:
      groups = CrossAttnBlock(
        self.num_heads,
        self.pre_assign_mlp_ratio,
        eps=self.eps,
        dtype=self.dtype,
        name='pre_assign_attn',
      )(groups, x)
    new, assignment = AssignAttention(
      hard=self.hard,
      gumbel=self.gumbel,
      gumbel_tau=self.gumbel_tau,
      assign_eps=self.assign_eps,
      dtype=self.dtype,
      name='assign',
    )(groups, x, deterministic)
    new = new + groups
    y = layer_norm(self.eps, 'norm_new_x')(new)
    new = new + Mlp(channels_dim, dtype=self.dtype, name='mlp_channels')(y)
    return new, assignment
