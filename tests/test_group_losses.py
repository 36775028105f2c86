"""The best-group multi-label loss (`config.loss.multi_label_pooling='max'`, not in the release).

Each image-prompt logit is the best score over the image's final groups that own patches. Checked
against a float64 numpy reference, against the released (pooled) loss when every image has one
group, on 8 fake devices in both formulations, and through the jitted train step. Tolerance 1e-5
as in tests/test_losses.py: float32 values of O(1-10) summed in different orders.
"""

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from groupvit_jax import losses
from groupvit_jax import train_step as train_lib
from groupvit_jax.sharding import make_mesh
from tests import test_losses

N, K, D = test_losses.N, test_losses.K, test_losses.D
S = 4
TOL = 1e-5


def _inputs(seed=0):
  """test_losses' embeddings and scales, plus S groups per image and which of them own patches."""
  img, txt, prm, s, s_ml = test_losses._inputs(seed)
  rng = np.random.default_rng(seed + 100)
  groups = (img[:, None] + rng.standard_normal((N, S, D))).astype(np.float32)
  mask = rng.random((N, S)) < 0.7
  mask[:, 0] = True  # every image owns its patches somewhere
  return img, txt, prm, groups, mask, s, s_ml


def _ce(logits, targets):  # soft-target cross entropy, mean over rows
  shift = logits.max(1, keepdims=True)
  logp = logits - shift - np.log(np.exp(logits - shift).sum(1, keepdims=True))
  return float(np.mean(-(targets * logp).sum(1)))


def _best_group_scores(groups, texts, mask):
  """[N images, M texts]: the best cosine over each image's groups that own patches (float64)."""
  n = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  scores = np.einsum('nsd,md->nms', n(groups.astype(np.float64)), n(texts.astype(np.float64)))
  return np.where(mask[:, None, :], scores, -np.inf).max(-1)


def _reference_multi_label(prm, groups, mask, s_ml):
  scores = _best_group_scores(groups, prm.reshape(N * K, D), mask)  # [N, N*K]
  owner = np.repeat(np.arange(N), K)
  t_img = (owner[None, :] == np.arange(N)[:, None]) / K
  t_prm = (np.arange(N)[None, :] == owner[:, None]).astype(float)
  return 0.5 * (_ce(s_ml * scores, t_img) + _ce(s_ml * scores.T, t_prm))


def _loss(img, txt, prm, groups, mask, s, s_ml):
  return losses.contrastive_losses(img, txt, s, prm, s_ml, groups, mask)


def test_matches_the_reference_and_ignores_groups_without_patches():
  img, txt, prm, groups, mask, s, s_ml = _inputs()
  out = _loss(img, txt, prm, groups, mask, s, s_ml)
  assert float(out['loss/multi_label']) == pytest.approx(
    _reference_multi_label(prm, groups, mask, s_ml), abs=TOL
  )
  # The image-text loss still uses the pooled embedding, as released.
  released = losses.contrastive_losses(img, txt, s, prm, s_ml)
  assert float(out['loss/image_text']) == pytest.approx(float(released['loss/image_text']), abs=TOL)
  # An empty group that matches a prompt perfectly changes nothing; once it owns patches it does.
  i, g = np.argwhere(~mask)[0]
  moved = groups.copy()
  moved[i, g] = prm[i, 0] * 10
  same = _loss(img, txt, prm, moved, mask, s, s_ml)
  assert float(same['loss/multi_label']) == pytest.approx(float(out['loss/multi_label']), abs=TOL)
  owned = mask.copy()
  owned[i, g] = True
  changed = _loss(img, txt, prm, moved, owned, s, s_ml)
  assert abs(float(changed['loss/multi_label']) - float(out['loss/multi_label'])) > 1e-3


def test_one_group_per_image_is_the_released_loss():
  img, txt, prm, _, _, s, s_ml = _inputs(1)
  grouped = _loss(img, txt, prm, img[:, None], np.ones((N, 1), bool), s, s_ml)
  released = losses.contrastive_losses(img, txt, s, prm, s_ml)
  for key in released:
    assert float(grouped[key]) == pytest.approx(float(released[key]), abs=TOL), key


@pytest.mark.parametrize('formulation', ['global', 'shard_map'])
def test_sharded_loss_and_gradients_equal_single_device(formulation):
  img, txt, prm, groups, mask, s, s_ml = _inputs(2)
  mesh = make_mesh((('data', 8),))
  axes = tuple(mesh.axis_names)
  if formulation == 'global':
    fn = losses.contrastive_losses
  else:
    fn = lambda *a: losses.sharded_contrastive_losses(mesh, axes, *a)

  def loss(fn, img, txt, prm, groups, mask):
    return fn(img, txt, s, prm, s_ml, groups, mask)['loss']

  grad = lambda fn: jax.jit(jax.value_and_grad(lambda *a: loss(fn, *a), argnums=(0, 1, 2, 3)))
  ref_val, ref_grads = grad(losses.contrastive_losses)(img, txt, prm, groups, mask)
  put = lambda x: jax.device_put(x, NamedSharding(mesh, P(axes)))
  val, grads = grad(fn)(*map(put, (img, txt, prm, groups, mask)))
  assert float(val) == pytest.approx(float(ref_val), abs=TOL)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=TOL)
  # Gradients reach only the groups that own patches.
  assert np.all(np.asarray(ref_grads[3])[~mask] == 0)


def _loss_config(multi_label):
  return ml_collections.ConfigDict(dict(loss=dict(multi_label_pooling=multi_label)))


def test_pooling_option_is_validated():
  best_group = train_lib.multi_label_by_best_group
  assert best_group(_loss_config('mean'), True) is False
  assert best_group(_loss_config('mean'), False) is False
  assert best_group(_loss_config('max'), True) is True
  with pytest.raises(ValueError, match="multi_label_pooling must be 'mean' or 'max'"):
    best_group(_loss_config('min'), True)
  with pytest.raises(ValueError, match='needs the multi-label loss'):
    best_group(_loss_config('max'), False)


@pytest.mark.slow
def test_train_step_scores_prompts_with_the_groups_of_the_forward():
  """The jitted step's loss equals the losses of the model's grouped forward computed by hand with
  the step's keys; the mask holds exactly the final groups that own patches."""
  from groupvit_jax.models.groupvit import compose_group_maps
  from tests.test_configs import load
  from tests.test_train_step import first_step

  config = load('tiny')
  g = 16  # tests.test_train_step._batch makes 16 examples
  with config.unlocked():
    config.global_batch_size = g
    config.loss.multi_label_pooling = 'max'
  run = first_step(config)
  batch, metrics = run['batch'], run['metrics']
  out = run['model'].apply(
    run['variables'],
    batch['image'],
    batch['text'],
    batch['prompts'],
    train=True,
    with_groups=True,
    rngs=run['rngs'],
    mutable=['batch_stats'],
  )[0]
  num_groups = config.model.image.num_output_groups[-1]
  assert out['group_embeds'].shape == (g, num_groups, config.model.projection_dim)
  hard = compose_group_maps(out['assignments'], use_soft=False)[-1]
  np.testing.assert_array_equal(out['group_mask'], np.asarray(hard).sum(1) > 0)
  assert np.all(np.asarray(out['group_mask']).any(-1))
  expected = losses.contrastive_losses(
    out['image_embed'],
    out['text_embed'],
    out['logit_scale'],
    out['prompt_embed'],
    out['multi_label_logit_scale'],
    out['group_embeds'],
    out['group_mask'],
  )
  np.testing.assert_allclose(metrics['loss'], expected['loss'], rtol=1e-5)
  released = losses.contrastive_losses(
    out['image_embed'],
    out['text_embed'],
    out['logit_scale'],
    out['prompt_embed'],
    out['multi_label_logit_scale'],
  )
  # The image-text loss is the pooled embedding's, as released; only the multi-label one moves.
  assert float(released['loss/image_text']) == float(expected['loss/image_text'])
  assert abs(float(released['loss/multi_label']) - float(expected['loss/multi_label'])) > 1e-4
