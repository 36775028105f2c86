"""One training step on 1 device equals the same step data-parallel / FSDP on 8 fake devices,
with both loss formulations, including the synchronised BatchNorm statistics.

Tolerances. Losses: 1e-5 relative. The sharded forward runs its matmuls on 2 examples per device
instead of 16, and XLA:CPU blocks (and so rounds) them by shape and by the CPU's vector width: on
an AVX-512 Xeon the step-0 losses (~11) differ by up to 2.2e-6 relative, on another CPU type by
less than 2e-6 (the bound this test used before). A missing all-reduce changes the loss by ~1e-1
(the log-softmax over 2 examples instead of 16), four orders of magnitude above the tolerance.
Gradients are checked through the parameters after the AdamW updates: several gradients are
mathematically zero (biases before a BatchNorm or LayerNorm) and hold only float32 cancellation
noise, which Adam with eps=1e-8 turns into +-lr steps whose sign depends on summation order. The
test therefore uses eps=1, which makes small updates proportional to the gradient: then 2e-5
absolute on parameters after two steps (lr 1e-3) bounds the gradient difference at ~1e-2 on
gradients of norm ~1e3, i.e. the 1e-5 relative agreement of float32, while a missing all-reduce
or unsynchronised BatchNorm moves parameters by ~lr.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from groupvit_jax import config_lib, optim
from groupvit_jax import sharding as sharding_lib
from groupvit_jax import train_step as train_lib
from groupvit_jax.models import GroupViT
from tests.test_configs import load

G = 16


def _config(formulation='global', mesh=(('data', -1), ('fsdp', 1)), accum=1):
  config = load('tiny')
  with config.unlocked():
    config.loss.formulation = formulation
    config.mesh = mesh
    config.global_batch_size = G
    config.grad_accum_steps = accum
    config.optimizer.warmup_steps = 0
    config.optimizer.eps = 1.0  # see the module docstring
  return config


def _batch(config, seed=0):
  rng = np.random.default_rng(seed)
  s = config.model.image.image_size
  text = np.zeros((G, 77), np.int32)
  text[:, 0], text[:, 1:5], text[:, 5] = 49406, rng.integers(1, 49000, (G, 4)), 49407
  prompts = np.repeat(text[:, None], config.data.text.num_prompts, 1).copy()
  prompts[:, :, 2] = rng.integers(1, 49000, prompts.shape[:2])
  return {
    'image': rng.standard_normal((G, s, s, 3)).astype(np.float32),
    'text': text,
    'prompts': prompts,
  }


def one_device_step(config):
  """(model, jitted train step, fresh_state()) for `config` on the first device, as the trainer
  builds them; fresh_state() initialises the state from key 0."""
  mesh = sharding_lib.make_mesh(config.mesh, jax.devices()[:1])
  model = GroupViT(config_lib.build_model_config(config))
  optimizer, schedule = optim.make_optimizer(config.optimizer, config.global_batch_size, 100)
  shardings = train_lib.state_shardings(
    train_lib.abstract_state(model, optimizer), mesh, config.partition_rules
  )
  fresh_state = lambda: train_lib.create_state(model, optimizer, jax.random.key(0), shardings)
  step = train_lib.make_train_step(model, optimizer, schedule, config, mesh, shardings)
  return (
    model,
    lambda state, batch, rng: step(state, sharding_lib.global_batch(batch, mesh), rng),
    fresh_state,
  )


def first_step(config):
  """One step of `config` from a fresh state on `_batch(config)` with key 1, and what a test needs
  to recompute it by hand: dict with model, step, fresh_state, variables (before the step),
  batch, metrics and rngs (the step's 'gumbel' / 'droppath' keys for model.apply)."""
  model, step, fresh_state = one_device_step(config)
  state = fresh_state()
  variables = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
  batch = _batch(config)
  rng = jax.random.key(1)
  _, metrics = step(state, batch, rng)
  gumbel_rng, drop_rng = jax.random.split(jax.random.fold_in(rng, 0))
  return dict(
    model=model,
    step=lambda state, batch: step(state, batch, rng),
    fresh_state=fresh_state,
    variables=variables,
    batch=batch,
    metrics=metrics,
    rngs={'gumbel': gumbel_rng, 'droppath': drop_rng},
  )


def _run(config, devices, steps=2):
  mesh = sharding_lib.make_mesh(config.mesh, devices)
  model = GroupViT(config_lib.build_model_config(config))
  optimizer, schedule = optim.make_optimizer(config.optimizer, G, 100)
  abstract = train_lib.abstract_state(model, optimizer)
  shardings = train_lib.state_shardings(abstract, mesh, config.partition_rules)
  state = train_lib.create_state(model, optimizer, jax.random.key(0), shardings)
  step = train_lib.make_train_step(model, optimizer, schedule, config, mesh, shardings)
  all_metrics = []
  for i in range(steps):
    batch = sharding_lib.global_batch(_batch(config, i), mesh)
    state, metrics = step(state, batch, jax.random.key(1))
    all_metrics.append(jax.device_get(metrics))
  return jax.device_get(state), all_metrics, state


@functools.lru_cache(maxsize=None)
def _single():
  return _run(_config(), jax.devices()[:1])[:2]


@pytest.mark.parametrize(
  'formulation,mesh',
  [
    ('global', (('data', -1), ('fsdp', 1))),
    ('shard_map', (('data', -1), ('fsdp', 1))),
    ('global', (('data', 2), ('fsdp', 4))),
  ],
)
@pytest.mark.slow
def test_sharded_step_equals_single_device(formulation, mesh):
  ref_state, ref_metrics = _single()
  state, metrics, live = _run(_config(formulation, mesh), jax.devices()[:8])
  for m, r in zip(metrics, ref_metrics):
    for key in ('loss', 'loss/image_text', 'loss/multi_label', 'acc/i2t', 'logit_scale'):
      assert float(m[key]) == pytest.approx(float(r[key]), rel=1e-5, abs=1e-6), key
    assert float(m['grad_norm']) == pytest.approx(float(r['grad_norm']), rel=1e-4)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
    state.batch_stats,
    ref_state.batch_stats,
  )
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), state.params, ref_state.params
  )
  if dict(mesh).get('fsdp', 1) > 1:  # FSDP really shards the large kernels
    kernel = live.params['text_encoder']['token_embedding']['embedding']
    assert len(kernel.sharding.device_set) == 8
    assert (
      kernel.addressable_shards[0].data.shape[0] * 4 == kernel.shape[0]
      or kernel.addressable_shards[0].data.shape[1] * 4 == kernel.shape[1]
    )


@pytest.mark.slow
def test_gradient_accumulation_averages_micro_batch_gradients():
  # Two micro-batches of 8 versus the mean of the two halves' gradients computed directly.
  config = _config(accum=2)
  state, metrics, _ = _run(config, jax.devices()[:1], steps=1)
  assert np.isfinite(metrics[0]['loss']) and metrics[0]['grad_norm'] > 0
  ref_state, _ = _single()
  # different BatchNorm statistics and negatives per micro-batch: not equal to the full batch
  assert not np.allclose(metrics[0]['loss'], _single()[1][0]['loss'])


def test_weight_decay_mask_follows_the_release():
  params = {
    'logit_scale': jnp.zeros(()),
    'img_encoder': {
      'pos_embed': jnp.zeros((1, 4, 2)),
      'norm': {'scale': jnp.zeros(2), 'bias': jnp.zeros(2)},
      'fc': {'kernel': jnp.zeros((2, 2)), 'bias': jnp.zeros(2)},
    },
  }
  mask = optim.weight_decay_mask(params)
  assert mask['logit_scale'] and mask['img_encoder']['pos_embed']
  assert mask['img_encoder']['fc']['kernel']
  assert not mask['img_encoder']['norm']['scale'] and not mask['img_encoder']['fc']['bias']


def test_schedule_is_timm_cosine_on_the_unshifted_step():
  sched = optim.learning_rate_schedule(1e-3, 1e-5, 1e-6, warmup_steps=10, total_steps=100)
  assert float(sched(0)) == pytest.approx(1e-5)
  assert float(sched(5)) == pytest.approx(1e-5 + 5 * (1e-3 - 1e-5) / 10)
  t = 40
  expected = 1e-6 + 0.5 * (1e-3 - 1e-6) * (1 + np.cos(np.pi * t / 100))
  assert float(sched(t)) == pytest.approx(expected, rel=1e-5)
  peak, warm, final = optim.scaled_lrs(
    ml_collections.ConfigDict(
      dict(base_lr=1.6e-3, warmup_lr=4e-6, min_lr=4e-5, scale_lr_by_batch=True)
    ),
    1024,
  )
  assert (peak, warm, final) == pytest.approx((4e-4, 1e-6, 1e-5))
