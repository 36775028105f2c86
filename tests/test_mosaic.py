"""Mosaic training (groupvit_jax/mosaic.py): tiles land where their regions say, tile embeddings
pool the groups that cover each tile, and the training step uses them in the captions' order."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from groupvit_jax import config_lib
from groupvit_jax import mosaic as mosaic_lib
from groupvit_jax.models import GroupViT
from groupvit_jax.models.groupvit import compose_group_maps, init_variables
from tests.test_configs import load


def _cfg(fraction, grid=(1, 2), roll=True):
  return ml_collections.ConfigDict(dict(fraction=fraction, grid=grid, roll=roll))


@pytest.mark.parametrize('grid,with_shifts', [((1, 2), False), ((2, 2), True), ((2, 3), True)])
def test_every_patch_comes_from_the_image_its_region_names(grid, with_shifts):
  tiles, p, h, w = grid[0] * grid[1], 4, 8, 12
  m = 3
  # Image i is constant i + 1 (channel c adds 100 c), so every pixel tells where it came from.
  images = (np.arange(m * tiles, dtype=np.float32)[:, None, None, None] + 1
            + 100 * np.arange(3, dtype=np.float32)) * np.ones((m * tiles, h, w, 3), np.float32)
  shifts = None
  if with_shifts:
    shifts = mosaic_lib.random_shifts(jax.random.key(0), m, grid, (h // p, w // p))
    assert np.any(np.asarray(shifts) > 0)
  mosaics, regions = mosaic_lib.build_mosaics(jnp.asarray(images), grid, p, shifts)
  mosaics, regions = np.asarray(mosaics), np.asarray(regions)
  gh, gw = grid[0] * h // p, grid[1] * w // p
  assert mosaics.shape == (m, grid[0] * h, grid[1] * w, 3)
  assert regions.shape == (m, gh * gw, tiles)
  np.testing.assert_array_equal(regions.sum(-1), 1.0)
  # Each tile keeps all of its patches.
  np.testing.assert_array_equal(regions.sum(1), (h // p) * (w // p))
  patches = mosaics.reshape(m, gh, p, gw, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(m, gh * gw,
                                                                                    -1, 3)
  source = patches[..., 0] - 1  # [m, N, p*p]: the image index of every pixel
  expected = np.arange(m)[:, None] * tiles + regions.argmax(-1)  # [m, N]
  np.testing.assert_array_equal(source, np.broadcast_to(expected[..., None], source.shape))
  np.testing.assert_array_equal(patches[..., 2] - patches[..., 0], 200.0)


def test_region_pool_weights_groups_by_their_share_of_each_tile():
  rng = np.random.default_rng(0)
  tokens = rng.standard_normal((1, 3, 5)).astype(np.float32)
  # 4 patches, 2 tiles: tile 0 = patches 0, 1 (groups 0 and 1), tile 1 = patches 2, 3 (group 2,
  # and half of patch 3 to group 1).
  maps = np.array([[[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0.5, 0.5]]], np.float32)
  regions = np.array([[[1, 0], [1, 0], [0, 1], [0, 1]]], np.float32)
  pooled = np.asarray(mosaic_lib.region_pool(tokens, regions, maps))
  np.testing.assert_allclose(pooled[0, 0], (tokens[0, 0] + tokens[0, 1]) / 2, rtol=1e-6)
  np.testing.assert_allclose(pooled[0, 1], 0.25 * tokens[0, 1] + 0.75 * tokens[0, 2], rtol=1e-6)
  # Without a patch -> token map the tokens are the patches themselves.
  patch_tokens = rng.standard_normal((1, 4, 5)).astype(np.float32)
  pooled = np.asarray(mosaic_lib.region_pool(patch_tokens, regions))
  np.testing.assert_allclose(pooled[0, 1], patch_tokens[0, 2:].mean(0), rtol=1e-6)


def test_counts_and_errors():
  assert mosaic_lib.num_mosaic_examples(64, _cfg(0.5)) == 32
  assert mosaic_lib.num_mosaic_examples(10, _cfg(0.5, (2, 2))) == 4
  assert mosaic_lib.num_mosaic_examples(64, _cfg(0.0)) == 0
  mosaic_lib.validate(_cfg(0.0), 8)
  with pytest.raises(ValueError, match='makes no mosaic'):
    mosaic_lib.validate(_cfg(0.1, (2, 2)), 8)
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    mosaic_lib.validate(_cfg(1.5), 8)
  with pytest.raises(ValueError, match='at least 2 tiles'):
    mosaic_lib.validate(_cfg(0.5, (1, 1)), 8)
  with pytest.raises(ValueError, match='do not fill'):
    mosaic_lib.build_mosaics(jnp.zeros((3, 8, 8, 3)), (1, 2), 4)


@pytest.mark.parametrize('variant', ['mosaic', 'vit_mosaic'])
def test_forward_puts_tile_embeddings_after_whole_images_in_caption_order(variant):
  """The model's mosaic path equals composing the public pieces: whole images first, then each
  mosaic's tiles in the order of the examples they came from."""
  config = load('synthetic', variant)
  model = GroupViT(config_lib.build_model_config(config))
  variables = init_variables(model, jax.random.key(0))
  rng = np.random.default_rng(1)
  s, p = config.model.image.image_size, config.model.image.patch_size
  images = jnp.asarray(rng.standard_normal((6, s, s, 3)), jnp.float32)
  text = jnp.asarray(rng.integers(1, 1000, (6, config.model.text.context_length)), jnp.int32)
  shifts = jnp.array([[0, 3], [5, 9]], jnp.int32)
  mosaics, regions = mosaic_lib.build_mosaics(images[2:], (1, 2), p, shifts)
  out = model.apply(variables, images[:2], text, train=False, mosaics=mosaics,
                    mosaic_regions=regions)
  assert out['image_embed'].shape == (6, config.model.projection_dim)

  def expected(module):
    whole = module.img_encoder(images[:2]).pooled
    mos = module.img_encoder(mosaics)
    maps = compose_group_maps(mos.assignments, use_soft=False)[-1] if mos.assignments else None
    tiles = mosaic_lib.region_pool(mos.tokens, regions, maps).reshape(4, -1)
    return module.img_projector(jnp.concatenate([whole, tiles]), False)

  np.testing.assert_allclose(out['image_embed'], model.apply(variables, method=expected),
                             rtol=1e-5, atol=1e-5)
  # Tile embeddings differ from the whole-image embeddings of the same examples (the model saw
  # them in a mosaic), and the two tiles of one mosaic differ from each other.
  whole = model.apply(variables, images, text, train=False)['image_embed']
  assert not np.allclose(out['image_embed'][2:], whole[2:], atol=1e-3)
  assert not np.allclose(out['image_embed'][2], out['image_embed'][3], atol=1e-3)
  with pytest.raises(ValueError, match='image embeddings for'):
    model.apply(variables, images[:3], text, train=False, mosaics=mosaics,
                mosaic_regions=regions)


def test_train_step_loss_equals_the_losses_of_the_mosaic_forward():
  """The jitted step tiles the last examples of the batch and scores them against their own
  captions: its loss equals the contrastive losses of the model's mosaic forward, computed by
  hand with the step's random keys (roll off, so the tiling is fixed)."""
  from groupvit_jax import losses as losses_lib
  from tests.test_train_step import first_step

  config = load('tiny')
  with config.unlocked():
    config.global_batch_size = 16
    config.loss.mosaic.fraction = 0.5
    config.loss.mosaic.roll = False
  run = first_step(config)
  batch, metrics = run['batch'], run['metrics']
  p = config.model.image.patch_size
  mosaics, regions = mosaic_lib.build_mosaics(jnp.asarray(batch['image'][8:]), (1, 2), p)
  out = run['model'].apply(run['variables'], batch['image'][:8], batch['text'], batch['prompts'],
                           train=True, mosaics=mosaics, mosaic_regions=regions, rngs=run['rngs'],
                           mutable=['batch_stats'])[0]
  expected = losses_lib.contrastive_losses(out['image_embed'], out['text_embed'],
                                           out['logit_scale'], out.get('prompt_embed'),
                                           out.get('multi_label_logit_scale'))
  np.testing.assert_allclose(metrics['loss'], expected['loss'], rtol=1e-5)
  # Swapping the captions of the two tiles of the first mosaic changes the loss: the tiles are
  # scored against their own captions, not against a whole-mosaic embedding.
  swapped = dict(batch, text=batch['text'][np.r_[0:8, 9, 8, 10:16]],
                 prompts=batch['prompts'][np.r_[0:8, 9, 8, 10:16]])
  _, metrics_swapped = run['step'](run['fresh_state'](), swapped)
  assert abs(float(metrics_swapped['loss']) - float(metrics['loss'])) > 1e-4


def test_tile_groups_keep_the_groups_that_hold_their_own_tile():
  """A group belongs to the tile holding at least min_share of its patches; a group spread over
  both tiles belongs to neither; a tile without any group keeps its largest one."""
  # One mosaic of 2 tiles, 10 patches each; 4 groups.
  regions = jax.nn.one_hot(jnp.repeat(jnp.arange(2), 10), 2)[None]  # [1, 20, 2]
  group_of_patch = jnp.array([0] * 6 + [1] * 4 + [1] * 4 + [2] * 5 + [0])  # group 3 is empty
  maps = jax.nn.one_hot(group_of_patch, 4)[None]  # [1, 20, 4]
  owned = np.asarray(mosaic_lib.tile_groups(regions, maps, 0.85))[0]
  # Group 0: 6 of 7 patches in tile 0 (0.857); group 1: 4 + 4 (spread); group 2: all in tile 1.
  np.testing.assert_array_equal(owned, [[True, False, False, False], [False, False, True, False]])
  strict = np.asarray(mosaic_lib.tile_groups(regions, maps, 0.9))[0]
  # Group 0 falls below 0.9: tile 0 has no group of its own and keeps its largest, group 0.
  np.testing.assert_array_equal(strict, owned)
  spread = jax.nn.one_hot(jnp.array([1] * 20), 4)[None]  # one group over everything
  np.testing.assert_array_equal(np.asarray(mosaic_lib.tile_groups(regions, spread, 0.9))[0],
                                [[False, True, False, False]] * 2)
  with pytest.raises(ValueError, match='min_tile_share'):
    mosaic_lib.validate(ml_collections.ConfigDict(dict(fraction=0.5, grid=(1, 2),
                                                       min_tile_share=0.5)), 8)


def test_train_step_best_group_loss_on_mosaics():
  """With the best-group loss, a tile's caption is scored by the groups of its mosaic that
  belong to the tile: the step's loss equals the losses of the forward computed by hand, and the
  tile masks are `tile_groups` of the mosaic's hard group maps."""
  from groupvit_jax import losses as losses_lib
  from tests.test_train_step import first_step

  config = load('tiny')
  with config.unlocked():
    config.global_batch_size = 16
    config.loss.mosaic.fraction = 0.5
    config.loss.mosaic.roll = False
    config.loss.multi_label_pooling = 'max'
  run = first_step(config)
  batch, metrics = run['batch'], run['metrics']
  p = config.model.image.patch_size
  mosaics, regions = mosaic_lib.build_mosaics(jnp.asarray(batch['image'][8:]), (1, 2), p)
  out = run['model'].apply(
      run['variables'], batch['image'][:8], batch['text'], batch['prompts'], train=True,
      mosaics=mosaics, mosaic_regions=regions, with_groups=True, rngs=run['rngs'],
      mutable=['batch_stats'])[0]
  expected = losses_lib.contrastive_losses(
      out['image_embed'], out['text_embed'], out['logit_scale'], out['prompt_embed'],
      out['multi_label_logit_scale'], out['group_embeds'], out['group_mask'], ('multi_label',))
  np.testing.assert_allclose(metrics['loss'], expected['loss'], rtol=1e-5)
  s = out['group_embeds'].shape[1]
  assert out['group_embeds'].shape[0] == 16 and out['group_mask'].shape == (16, s)
  # Without noise (evaluation mode) the masks are exactly tile_groups of the mosaic's hard maps,
  # and the two tiles of a mosaic share its group embeddings.
  model, variables = run['model'], run['variables']
  det = model.apply(variables, batch['image'][:8], batch['text'], batch['prompts'], train=False,
                    mosaics=mosaics, mosaic_regions=regions, with_groups=True,
                    mosaic_min_tile_share=0.6)

  def hard_maps(module):
    return compose_group_maps(module.img_encoder(mosaics).assignments, use_soft=False)[-1]

  owned = mosaic_lib.tile_groups(regions, model.apply(variables, method=hard_maps), 0.6)
  np.testing.assert_array_equal(det['group_mask'][8:], np.asarray(owned).reshape(8, s))
  np.testing.assert_array_equal(det['group_embeds'][8], det['group_embeds'][9])
  assert not np.array_equal(det['group_embeds'][8], det['group_embeds'][10])
