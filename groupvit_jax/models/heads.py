"""Projection heads (Dense -> BatchNorm -> ReLU -> Dense) with PyTorch BatchNorm semantics."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from groupvit_jax.models.layers import dense_init

Dtype = Any


class BatchNorm(nn.Module):
  """BatchNorm over every leading axis of [..., C], as torch (Sync)BatchNorm1d does.

  Training normalises with the biased batch variance and updates the running variance with the
  unbiased one (PyTorch's convention; flax.linen.BatchNorm uses the biased one for both). With
  `axis_name`, statistics are averaged over that mapped axis (SyncBatchNorm); under `jit` on global
  arrays the batch already is global and no axis name is needed. Computes in float32.
  """

  momentum: float = 0.1
  eps: float = 1e-5
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (c,), jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (c,), jnp.float32)
    xf = x.astype(jnp.float32).reshape(-1, c)
    if train:
      count = jnp.float32(xf.shape[0])
      mean = jnp.mean(xf, axis=0)
      if self.axis_name is not None:
        mean = jax.lax.pmean(mean, self.axis_name)
      var = jnp.mean(jnp.square(xf - mean), axis=0)
      if self.axis_name is not None:
        var = jax.lax.pmean(var, self.axis_name)
        count = count * jax.lax.psum(1.0, self.axis_name)
      if not self.is_initializing():
        m = self.momentum
        unbiased = var * (count / jnp.maximum(count - 1.0, 1.0))
        ra_mean.value = (1 - m) * ra_mean.value + m * mean
        ra_var.value = (1 - m) * ra_var.value + m * unbiased
    else:
      mean, var = ra_mean.value, ra_var.value
    y = (xf - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias
    return y.reshape(x.shape)


class ProjectionHead(nn.Module):
  """[..., C_in] -> [..., out_dim]: (Dense -> BatchNorm -> ReLU) x (num_layers - 1) -> Dense.

  num_layers = 0 is the identity (no projection), as in the reference.
  """

  hidden_dim: int = 4096
  out_dim: int = 256
  num_layers: int = 2
  bn_momentum: float = 0.1
  bn_eps: float = 1e-5
  bn_axis_name: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    for i in range(self.num_layers - 1):
      x = nn.Dense(
        self.hidden_dim, dtype=self.dtype, kernel_init=dense_init, name=f'linear_hidden_{i}'
      )(x)
      x = BatchNorm(self.bn_momentum, self.bn_eps, self.bn_axis_name, name=f'bn_{i}')(x, train)
      x = nn.relu(x)
    if self.num_layers > 0:
      x = nn.Dense(self.out_dim, dtype=self.dtype, kernel_init=dense_init, name='linear_out')(x)
    return x.astype(jnp.float32)
