"""Shared layers against PyTorch's definitions, and the CPU cotangent barrier's contract."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from groupvit_jax.models import layers

torch = pytest.importorskip('torch')


def test_layer_norm_matches_torch_forward_and_grad():
  rng = np.random.default_rng(0)
  x = (rng.standard_normal((3, 5, 32)) * 4 + 2).astype(np.float32)
  scale = rng.standard_normal(32).astype(np.float32)
  bias = rng.standard_normal(32).astype(np.float32)
  g = rng.standard_normal((3, 5, 32)).astype(np.float32)
  ln = layers.layer_norm(1e-5)
  params = {'params': {'scale': jnp.asarray(scale), 'bias': jnp.asarray(bias)}}
  assert jax.tree.map(jnp.shape, ln.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, params)
  y, vjp = jax.vjp(lambda p, v: ln.apply(p, v), params, jnp.asarray(x))
  dparams, dx = vjp(jnp.asarray(g))

  tx = torch.tensor(x, requires_grad=True)
  ref = torch.nn.LayerNorm(32, eps=1e-5)
  with torch.no_grad():
    ref.weight.copy_(torch.from_numpy(scale))
    ref.bias.copy_(torch.from_numpy(bias))
  ty = ref(tx)
  ty.backward(torch.from_numpy(g))
  # float32 reductions in a different order: a few ulps of values of magnitude ~10.
  np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=2e-5)
  np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=2e-5)
  np.testing.assert_allclose(
    dparams['params']['scale'], ref.weight.grad.numpy(), rtol=1e-4, atol=1e-4
  )
  np.testing.assert_allclose(dparams['params']['bias'], ref.bias.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_gelu_matches_torch_and_keeps_dtype():
  x = np.linspace(-10, 10, 20001, dtype=np.float32)
  ref = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
  np.testing.assert_allclose(layers.gelu(jnp.asarray(x)), ref, rtol=0, atol=2e-6)
  assert layers.gelu(jnp.ones(4, jnp.bfloat16)).dtype == jnp.bfloat16


def _residual_stack(x, barrier):
  for i in range(4):
    x = x + jnp.tanh(x * (i + 1.0))
    x = layers.cotangent_barrier(x) if barrier else x
  return jnp.sum(x**2)


def test_cotangent_barrier_is_an_identity_for_values_and_gradients():
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 7, 8)), jnp.float32)
  np.testing.assert_array_equal(layers.cotangent_barrier(x), x)
  with_barrier = jax.jit(jax.grad(lambda v: _residual_stack(v, True)))(x)
  without = jax.jit(jax.grad(lambda v: _residual_stack(v, False)))(x)
  np.testing.assert_allclose(with_barrier, without, rtol=1e-6, atol=1e-6)


def test_cotangent_barrier_survives_xla_cpu_optimisation():
  # The speed-up rests on XLA keeping one conditional per barrier in the backward pass; if a future
  # XLA folded it away (as it does with optimization_barrier) this test says so.
  x = jnp.ones((2, 7, 8), jnp.float32)
  hlo = jax.jit(jax.grad(lambda v: _residual_stack(v, True))).lower(x).compile().as_text()
  assert hlo.count(' conditional(') >= 4


def test_cotangent_barrier_nan_cotangent_stays_non_finite():
  grad = jax.grad(lambda v: jnp.sum(layers.cotangent_barrier(v) * jnp.array([jnp.nan, 1.0, 2.0])))
  assert not np.isfinite(np.asarray(grad(jnp.ones(3)))).all()
