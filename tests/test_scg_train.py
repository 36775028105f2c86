"""SCG region adaptation: the noun/region loss against float64 NumPy in all three directions, equal
on 1 and 8 devices; noun masks; a tiny run of the one trainer (only the region tokens and the
temperature move; resume; evaluation hook; the exported model directory)."""

from __future__ import annotations

import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from groupvit_jax import load_pretrained, scg_losses
from groupvit_jax.checkpoints import store
from tests.conftest import REPO
from tests.test_scg_eval import _tiny_clip, _tiny_dino


def _reference(reg, pres, nouns, valid, scale, direction):
  """float64, loop by loop."""
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
  reg, nouns = unit(np.float64(reg)), unit(np.float64(nouns))
  n = len(reg)
  s = np.zeros((n, n))
  for i in range(n):
    for t in range(n):
      sim = reg[i][pres[i]] @ nouns[t][valid[t]].T  # [m, k]
      n2r, r2n = sim.max(0).mean(), sim.max(1).mean()
      s[i, t] = {'noun_to_region': n2r, 'region_to_noun': r2n, 'both': (n2r + r2n) / 2}[direction]
  logits = scale * s

  def ce(rows):
    return np.mean([np.log(np.exp(r - r.max()).sum()) + r.max() - r[i] for i, r in enumerate(rows)])

  return 0.5 * (ce(logits) + ce(logits.T))


def _inputs(n=8, m=5, k=3, e=6, seed=0):
  rng = np.random.default_rng(seed)
  reg = rng.normal(size=(n, m, e)).astype(np.float32)
  nouns = rng.normal(size=(n, k, e)).astype(np.float32)
  pres = rng.random((n, m)) > 0.3
  pres[:, 0] = True
  valid = rng.random((n, k)) > 0.4
  valid[:, 1] = True
  return reg, pres, nouns, valid


@pytest.mark.parametrize('direction', scg_losses.DIRECTIONS)
def test_loss_matches_float64_and_is_equal_on_8_devices(direction):
  reg, pres, nouns, valid = _inputs()
  scale = 7.0
  expected = _reference(reg, pres, nouns, valid, scale, direction)
  got = scg_losses.scg_losses(reg, pres, nouns, valid, jnp.float32(scale), direction)
  np.testing.assert_allclose(float(got['loss']), expected, rtol=1e-5)
  mesh = Mesh(np.array(jax.devices()[:8]), ('data',))
  put = lambda x: jax.device_put(x, NamedSharding(mesh, P('data')))  # noqa: E731
  fn = jax.jit(lambda *a: scg_losses.sharded_scg_losses(mesh, ('data',), *a, direction=direction))
  sharded = fn(put(reg), put(pres), put(nouns), put(valid), jnp.float32(scale))
  for key in got:
    np.testing.assert_allclose(float(sharded[key]), float(got[key]), rtol=1e-5, atol=1e-6)
  glob = jax.jit(lambda *a: scg_losses.scg_losses(*a, direction=direction))(
    put(reg), put(pres), put(nouns), put(valid), jnp.float32(scale)
  )
  np.testing.assert_allclose(float(glob['loss']), float(got['loss']), rtol=1e-5)


def test_noun_mask_drops_caption_copies_and_repeats():
  text = np.array([[1, 5, 9, 2], [1, 7, 7, 2]])
  prompts = np.array(
    [
      [[1, 3, 2, 0], [1, 3, 2, 0], [1, 5, 9, 2]],  # a noun, its repeat, the caption copy
      [[1, 7, 7, 2], [1, 7, 7, 2], [1, 7, 7, 2]],  # no noun: the caption stands in once
    ]
  )
  mask = np.asarray(scg_losses.noun_mask(jnp.asarray(prompts), jnp.asarray(text)))
  np.testing.assert_array_equal(mask, [[True, False, False], [True, False, False]])


def _load_config(name):
  spec = importlib.util.spec_from_file_location(name, REPO / 'configs' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.slow
def test_tiny_region_adaptation_run_resume_and_evaluate(tmp_path):
  from groupvit_jax import main

  clip_dir, dino_dir = str(tmp_path / 'clip'), str(tmp_path / 'dino')
  clip_vars = store.init_model(_tiny_clip(), jax.random.key(1))
  store.save_model(clip_dir, _tiny_clip(), clip_vars)
  store.save_model(dino_dir, _tiny_dino(), store.init_model(_tiny_dino(), jax.random.key(2)))
  config = _load_config('scg_tiny')
  config.scg.clip_dir, config.scg.grouper_dir = clip_dir, dino_dir
  config.total_steps = 4
  config.checkpoint_every_steps = 2
  config.async_checkpoints = False
  config.eval.every_steps = 4
  config.eval.datasets = ('synthetic',)
  config.eval.max_images = 4
  config.eval.num_visualize = 0
  config.eval.naming = False
  workdir = str(tmp_path / 'run')
  final = main.train_and_evaluate(config, workdir)
  assert np.isfinite(final['loss']) and 'eval/synthetic/mIoU' in final
  result = json.loads((tmp_path / 'run' / 'eval_synthetic.json').read_text())
  assert 0.0 <= result['mIoU'] <= 100.0 and result['config']['method'] == 'scg'
  model = load_pretrained(str(tmp_path / 'run' / 'model'))
  assert model.kind == 'scg' and model.config.num_regions == 6
  # The towers are frozen: bit-identical to what was read; the region tokens moved.
  same = jax.tree.map(
    lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
    model.variables['clip'],
    clip_vars,
  )
  assert all(jax.tree.leaves(same))
  start = (
    np.asarray(clip_vars['params']['visual']['cls_token'])[0, 0]
    + np.asarray(clip_vars['params']['visual']['pos_embed'])[0, 0]
  )
  tokens = np.asarray(model.variables['params']['region_tokens'])
  assert tokens.shape == (6, 32) and not np.allclose(tokens, start[None])
  # Resume: two more steps continue from step 4.
  config.total_steps = 6
  config.eval.every_steps = 0
  main.train_and_evaluate(config, workdir)
  lines = [json.loads(x) for x in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  assert max(x['step'] for x in lines) == 6
