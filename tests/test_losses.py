"""Contrastive losses: the spec's formulas, and both sharded formulations on 8 fake devices.

Tolerance 1e-5: float32 values of O(1-10) computed with different reduction orders (per-device
partial sums, gathered keys) differ by a few ulps (~1e-6); a wrong target, missing negative or
mis-scaled term changes them by >1e-2.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from groupvit_jax import losses
from groupvit_jax.sharding import make_mesh

N, K, D = 16, 3, 8
TOL = 1e-5


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  img = rng.standard_normal((N, D)).astype(np.float32)
  txt = (img + 0.8 * rng.standard_normal((N, D))).astype(np.float32)
  prm = (img[:, None] + rng.standard_normal((N, K, D))).astype(np.float32)
  return img, txt, prm, np.float32(14.3), np.float32(9.1)


def _reference(img, txt, prm, s, s_ml):
  """Straight from the reference text, in float64 numpy."""
  n = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  img, txt, prm = n(img.astype(np.float64)), n(txt.astype(np.float64)), n(prm.astype(np.float64))

  def ce(logits, targets):  # soft-target cross entropy, mean over rows
    logp = (
      logits
      - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True))
      - logits.max(1, keepdims=True)
    )
    return float(np.mean(-(targets * logp).sum(1)))

  eye = np.eye(N)
  it = 0.5 * (ce(s * img @ txt.T, eye) + ce(s * txt @ img.T, eye))
  flat = prm.reshape(N * K, D)
  owner = np.repeat(np.arange(N), K)
  t_img = (owner[None, :] == np.arange(N)[:, None]) / K  # 1/K on own prompts
  t_prm = (np.arange(N)[None, :] == owner[:, None]).astype(float)
  ml = 0.5 * (ce(s_ml * img @ flat.T, t_img) + ce(s_ml * flat @ img.T, t_prm))
  return it, ml


def test_global_losses_match_the_reference_formulas():
  args = _inputs()
  out = losses.contrastive_losses(
    *map(jnp.asarray, args[:2]), jnp.asarray(args[3]), jnp.asarray(args[2]), jnp.asarray(args[4])
  )
  it, ml = _reference(*args)
  assert float(out['loss/image_text']) == pytest.approx(it, abs=TOL)
  assert float(out['loss/multi_label']) == pytest.approx(ml, abs=TOL)
  assert float(out['loss']) == pytest.approx(it + ml, abs=TOL)
  assert 0.0 <= float(out['acc/i2t']) <= 1.0


@pytest.mark.parametrize('mesh_axes', [(('data', 8),), (('data', 2), ('fsdp', 4))])
@pytest.mark.parametrize('formulation', ['global', 'shard_map'])
def test_sharded_losses_and_gradients_equal_single_device(mesh_axes, formulation):
  img, txt, prm, s, s_ml = _inputs(1)
  mesh = make_mesh(mesh_axes)
  axes = tuple(mesh.axis_names)

  def loss(img, txt, prm, s, s_ml, fn):
    return fn(img, txt, s, prm, s_ml)['loss']

  single = jax.value_and_grad(
    lambda *a: loss(*a, losses.contrastive_losses), argnums=(0, 1, 2, 3, 4)
  )
  ref_val, ref_grads = jax.jit(single)(img, txt, prm, s, s_ml)  # unsharded: one device

  if formulation == 'global':
    fn = losses.contrastive_losses
  else:
    fn = lambda *a: losses.sharded_contrastive_losses(mesh, axes, *a)
  batch = NamedSharding(mesh, P(axes))
  put = lambda x: jax.device_put(x, batch)
  sharded = jax.jit(jax.value_and_grad(lambda *a: loss(*a, fn), argnums=(0, 1, 2, 3, 4)))
  val, grads = sharded(put(img), put(txt), put(prm), s, s_ml)
  assert float(val) == pytest.approx(float(ref_val), abs=TOL)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=TOL)


def test_shard_map_metrics_equal_global_metrics():
  img, txt, prm, s, s_ml = _inputs(2)
  mesh = make_mesh((('data', 8),))
  put = lambda x: jax.device_put(x, NamedSharding(mesh, P(('data',))))
  a = losses.contrastive_losses(img, txt, s, prm, s_ml)
  b = jax.jit(lambda *x: losses.sharded_contrastive_losses(mesh, ('data',), *x))(
    put(img), put(txt), s, put(prm), s_ml
  )
  for key in a:
    assert float(b[key]) == pytest.approx(float(a[key]), abs=TOL), key
