"""Transformer building blocks shared by the image tower, the text tower and later methods.

Conventions: tokens are [B, N, C]; matmuls run in `dtype` (float32 or bfloat16) with float32
params; LayerNorm and softmax always compute in float32, and LayerNorm uses the two-pass variance
(as PyTorch does) rather than E[x^2] - E[x]^2.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

# NVlabs/timm initialise Linear weights with trunc_normal(std=.02) and zero biases.
dense_init = nn.initializers.truncated_normal(stddev=0.02)


class LayerNorm(nn.Module):
  """LayerNorm over the last axis in float32, computed as torch.nn.LayerNorm: [..., C] -> [..., C].

  Params 'scale' and 'bias' [C], as flax.linen.LayerNorm names them. The variance is two-pass,
  E[(x - mean)^2]. Unlike flax's LayerNorm, which first multiplies rsqrt(var) [..., 1] by the
  scale [C] into a [..., C] tensor that XLA:CPU materialises, the normalised value is scaled
  afterwards, so the whole affine part fuses into one elementwise pass.
  """

  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    x = x.astype(jnp.float32)
    centred = x - jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
    return centred * jax.lax.rsqrt(var + self.epsilon) * scale + bias


def layer_norm(eps: float, name: str | None = None) -> LayerNorm:
  """A float32 LayerNorm with PyTorch's variance computation."""
  return LayerNorm(epsilon=eps, name=name)


def gelu(x: jnp.ndarray) -> jnp.ndarray:
  """Exact (erf) GELU written as torch.nn.GELU() computes it: x/2 * (1 + erf(x / sqrt(2))).

  jax.nn.gelu(approximate=False) uses erfc, which XLA:CPU evaluates through exp and selects at
  about twice the cost of its erf polynomial; the two agree to float32 rounding.
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.float32(2**-0.5)).astype(x.dtype))


def quick_gelu(x: jnp.ndarray) -> jnp.ndarray:
  """CLIP's x * sigmoid(1.702 x)."""
  return x * jax.nn.sigmoid(1.702 * x)


def get_activation(name: str) -> Callable[[jnp.ndarray], jnp.ndarray]:
  return {'gelu': gelu, 'quick_gelu': quick_gelu}[name]


def _materialized(g: jnp.ndarray) -> jnp.ndarray:
  """g, computed once into a buffer: a conditional is a boundary XLA:CPU does not fuse across."""
  flat = g.reshape(-1)
  first = flat[0] if flat.size else jnp.zeros((), g.dtype)
  # Equal branches would be folded away; they differ only when the first entry is NaN, and then
  # the whole cotangent is NaN, which the step's non-finite guard rejects in any case.
  return jax.lax.cond(first == first, lambda a: a, lambda a: jnp.full_like(a, jnp.nan), g)


@jax.custom_vjp
def cotangent_barrier(x: jnp.ndarray) -> jnp.ndarray:
  """Identity whose cotangent is materialised on CPU; [...] -> [...].

  Placed between residual blocks. Without it XLA:CPU fuses the elementwise chain of residual-stream
  cotangents (g_l = g_{l+1} + LayerNorm backward terms) into each layer's weight-gradient transpose,
  recomputing every later layer's chain: quadratic work in depth (a 12-layer text tower's backward
  took 1.25 s instead of 0.80 s at batch 16). Optimization barriers do not help: XLA:CPU drops them
  before fusion. Other platforms get a plain identity. Being a custom_vjp, it supports reverse-mode
  differentiation only: forward-mode (jax.jvp, jax.jacfwd) through the towers raises.
  """
  return x


def _cotangent_barrier_fwd(x):
  return x, None


def _cotangent_barrier_bwd(_, g):
  return (jax.lax.platform_dependent(g, cpu=_materialized, default=lambda a: a),)


cotangent_barrier.defvjp(_cotangent_barrier_fwd, _cotangent_barrier_bwd)


class Mlp(nn.Module):
  """Two-layer MLP over the last axis: [..., C_in] -> [..., hidden] -> [..., C_out]."""

  hidden_dim: int
  out_dim: int | None = None
  activation: str = 'gelu'
  dtype: Dtype = jnp.float32
  fc1_name: str = 'fc1'
  fc2_name: str = 'fc2'
  kernel_init: Callable = dense_init

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    out_dim = self.out_dim or x.shape[-1]
    x = nn.Dense(
      self.hidden_dim, dtype=self.dtype, kernel_init=self.kernel_init, name=self.fc1_name
    )(x)
    x = get_activation(self.activation)(x)
    return nn.Dense(out_dim, dtype=self.dtype, kernel_init=self.kernel_init, name=self.fc2_name)(x)


class MixerMlp(nn.Module):
  """MLP over the token axis: [B, S_in, C] -> [B, S_out, C] (MLP-Mixer token mixing)."""

  hidden_dim: int
  out_tokens: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = jnp.swapaxes(x, 1, 2)
    x = Mlp(self.hidden_dim, self.out_tokens, dtype=self.dtype, name='mlp')(x)
    return jnp.swapaxes(x, 1, 2)


def dot_product_attention(
  q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, mask: jnp.ndarray | None = None
) -> jnp.ndarray:
  """Scaled dot-product attention with a float32 softmax.

  Args:
    q: [B, Nq, H, D]; k, v: [B, Nk, H, D]; mask: boolean, broadcastable to [B, H, Nq, Nk],
      True where attention is allowed.
  Returns:
    [B, Nq, H, D] in the dtype of `v`.
  """
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32) * scale
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum('bhqk,bkhd->bqhd', probs, v)


class SelfAttention(nn.Module):
  """Multi-head self-attention with a fused q|k|v projection: [B, N, C] -> [B, N, C].

  The fused kernel's output columns are ordered (q|k|v, head, head_dim), the row order of the
  PyTorch `qkv` / `in_proj_weight` tensors, so checkpoints map without permutation.
  """

  num_heads: int
  dtype: Dtype = jnp.float32
  qkv_name: str = 'qkv'
  out_name: str = 'proj'
  qkv_init: Callable = dense_init
  out_init: Callable = dense_init

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray | None = None) -> jnp.ndarray:
    b, n, c = x.shape
    qkv = nn.Dense(3 * c, dtype=self.dtype, kernel_init=self.qkv_init, name=self.qkv_name)(x)
    qkv = qkv.reshape(b, n, 3, self.num_heads, c // self.num_heads)
    out = dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], mask)
    return nn.Dense(c, dtype=self.dtype, kernel_init=self.out_init, name=self.out_name)(
      out.reshape(b, n, c)
    )


class CrossAttention(nn.Module):
  """Multi-head attention of queries [B, Nq, C] over keys/values [B, Nk, C] -> [B, Nq, C]."""

  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, query: jnp.ndarray, key: jnp.ndarray) -> jnp.ndarray:
    b, nq, c = query.shape
    nk = key.shape[1]
    h = self.num_heads
    dense = lambda name: nn.Dense(c, dtype=self.dtype, kernel_init=dense_init, name=name)
    q = dense('q_proj')(query).reshape(b, nq, h, c // h)
    k = dense('k_proj')(key).reshape(b, nk, h, c // h)
    v = dense('v_proj')(key).reshape(b, nk, h, c // h)
    out = dot_product_attention(q, k, v)
    return dense('proj')(out.reshape(b, nq, c))


class DropPath(nn.Module):
  """Stochastic depth: drops the whole residual branch per sample (rng stream 'droppath')."""

  rate: float

  @nn.compact
  def __call__(self, x: jnp.ndarray, deterministic: bool) -> jnp.ndarray:
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(
      self.make_rng('droppath'), keep, (x.shape[0],) + (1,) * (x.ndim - 1)
    )
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


class LayerScale(nn.Module):
  """Per-channel learned scale of a residual branch (CaiT / timm `ls1`, open_clip `ls_1`).

  [..., C] -> [..., C]; param 'gamma' [C] in float32, initialised to `init_value`.
  """

  init_value: float = 1e-5

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    init = nn.initializers.constant(self.init_value)
    gamma = self.param('gamma', init, (x.shape[-1],), jnp.float32)
    return x * gamma.astype(x.dtype)


class ViTBlock(nn.Module):
  """Pre-norm transformer block: x + attn(LN(x)); x + mlp(LN(x)). [B, N, C] -> [B, N, C].

  With `layer_scale_init` set, each branch is scaled by a LayerScale ('ls1', 'ls2') before the
  residual sum; left None, the block has no such params. `mask` (bool, broadcastable to
  [B, H, N, N], True = may attend) restricts the attention, as SCG's region tokens need.
  """

  num_heads: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  eps: float = 1e-5
  activation: str = 'gelu'
  dtype: Dtype = jnp.float32
  layer_scale_init: float | None = None

  @nn.compact
  def __call__(
    self, x: jnp.ndarray, deterministic: bool = True, mask: jnp.ndarray | None = None
  ) -> jnp.ndarray:
    c = x.shape[-1]
    y = layer_norm(self.eps, 'norm1')(x)
    y = SelfAttention(self.num_heads, dtype=self.dtype, name='attn')(y, mask)
    if self.layer_scale_init is not None:
      y = LayerScale(self.layer_scale_init, name='ls1')(y)
    x = x + DropPath(self.drop_path, name='drop_path1')(y, deterministic)
    y = layer_norm(self.eps, 'norm2')(x)
    y = Mlp(int(c * self.mlp_ratio), activation=self.activation, dtype=self.dtype, name='mlp')(y)
    if self.layer_scale_init is not None:
      y = LayerScale(self.layer_scale_init, name='ls2')(y)
    return x + DropPath(self.drop_path, name='drop_path2')(y, deterministic)
