"""The pieces the built-in benchmark runs on: the plain-CLIP task, prerequisites (a teacher trained
first, an existing one reused), SCG without training through the trainer (total_steps=0), both
background rules in the evaluation hook, and the scene levels."""

from __future__ import annotations

import json

import jax
import ml_collections
import numpy as np
import pytest

from groupvit_jax import main, optim
from groupvit_jax import sharding as sharding_lib
from groupvit_jax import train_step as train_lib
from groupvit_jax.checkpoints import store
from input_pipeline import scene_levels
from input_pipeline.synthetic_shapes import SyntheticConfig
from tests.conftest import load_script
from tests.test_scg_eval import _tiny_clip

TINY_CLIP = dict(
  vision=dict(image_size=32, patch_size=8, width=32, depth=1, num_heads=2),
  text=dict(width=32, num_layers=1, num_heads=2, context_length=16),
  embed_dim=16,
)


def _clip_recipe() -> ml_collections.ConfigDict:
  config = load_script('configs/synthetic_clip.py').get_config()
  config.clip.model = ml_collections.ConfigDict(TINY_CLIP)
  config.data.image_size = 32
  config.data.text.context_length = 16
  config.global_batch_size = 8
  return config


@pytest.mark.parametrize('multi_label', [False, True])
def test_clip_task_trains_and_exports_a_clip_model_directory(tmp_path, multi_label):
  from groupvit_jax import clip_train, load_pretrained

  config = _clip_recipe()
  config.clip.multi_label = multi_label
  task = clip_train.CLIPTask(config)
  task.validate(config)
  mesh = sharding_lib.make_mesh(config.mesh)
  optimizer, schedule = optim.make_optimizer(config.optimizer, 8, 10)
  abstract = task.abstract_state(optimizer)
  shardings = train_lib.state_shardings(abstract, mesh, config.partition_rules)
  state = task.create_state(optimizer, jax.random.key(0), shardings)
  step = task.make_train_step(optimizer, schedule, config, mesh, shardings)
  rng = np.random.default_rng(0)
  batch = {
    'image': rng.normal(size=(8, 32, 32, 3)).astype(np.float32),
    'text': rng.integers(1, 400, (8, 16)).astype(np.int32),
    'prompts': rng.integers(1, 400, (8, 3, 16)).astype(np.int32),
  }
  batch = {k: batch[k] for k in task.batch_keys}
  losses = []
  for _ in range(3):
    state, metrics = step(state, sharding_lib.global_batch(batch, mesh), jax.random.key(0))
    losses.append(float(metrics['loss']))
  assert ('loss/multi_label' in metrics) == multi_label
  assert losses[-1] < losses[0]  # one batch, fitted
  task.export(str(tmp_path / 'model'), state)
  model = load_pretrained(str(tmp_path / 'model'))
  assert model.kind == 'clip' and model.config.vision.image_size == 32
  emb = model.image_embeddings(rng.integers(0, 255, (2, 32, 32, 3), np.uint8))
  np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-5)


def test_clip_task_refuses_other_normalisation_and_sizes():
  from groupvit_jax import clip_train

  config = _clip_recipe()
  config.data.mean = (0.485, 0.456, 0.406)
  with pytest.raises(ValueError, match="CLIP's"):
    clip_train.CLIPTask(config).validate(config)
  config = _clip_recipe()
  config.data.image_size = 64
  with pytest.raises(ValueError, match='image_size'):
    clip_train.CLIPTask(config).validate(config)


def test_prerequisites_reuse_an_existing_model_and_keep_given_keys(tmp_path, monkeypatch):
  config = load_script('configs/synthetic_scg.py').get_config()
  workdir = tmp_path / 'run'
  model_dir = workdir / 'clip' / 'model'
  store.save_model(str(model_dir), _tiny_clip(), store.init_model(_tiny_clip(), jax.random.key(0)))
  trained = []
  monkeypatch.setattr(main, 'train_and_evaluate', lambda c, w: trained.append(w))
  main.resolve_prerequisites(config, str(workdir))
  assert trained == []  # the finished teacher is reused, not retrained
  assert config.scg.clip_dir == config.scg.grouper_dir == str(model_dir)
  config.scg.clip_dir = '/given'
  config.scg.grouper_dir = ''
  main.resolve_prerequisites(config, str(tmp_path / 'other'))
  assert config.scg.clip_dir == '/given'  # a key given on the command line is used as is
  assert trained == [str(tmp_path / 'other' / 'clip')]  # a missing one is trained first ...
  assert config.scg.grouper_dir == str(tmp_path / 'other' / 'clip' / 'model')
  bad = load_script('configs/synthetic_scg.py').get_config()
  bad.prerequisites = (('scg.no_such_key', 'configs/synthetic_clip.py', 'clip'),)
  with pytest.raises(main.TrainingError, match='not a config key'):
    main.resolve_prerequisites(bad, str(workdir))


def test_prerequisite_seed_is_the_runs(tmp_path, monkeypatch):
  config = load_script('configs/synthetic_zeroseg.py').get_config()
  config.seed = 3
  seen = []
  monkeypatch.setattr(main, 'train_and_evaluate', lambda c, w: seen.append((c.seed, c.method)))
  main.resolve_prerequisites(config, str(tmp_path))
  assert seen == [(3, 'clip')]


@pytest.mark.slow
@pytest.mark.parametrize('recipe', ['configs/synthetic_scg.py', 'configs/synthetic.py'])
def test_untrained_scg_through_the_trainer_reports_both_background_rules(tmp_path, recipe):
  """The SCG recipe and the README's main job (noun naming, k-means on block -2) evaluate and
  export through the trainer."""
  clip_dir = str(tmp_path / 'clip')
  store.save_model(clip_dir, _tiny_clip(), store.init_model(_tiny_clip(), jax.random.key(1)))
  config = load_script(recipe).get_config()
  config.scg.clip_dir = config.scg.grouper_dir = clip_dir
  config.scg.num_regions = 3
  config.data.image_size = 32
  config.data.text.context_length = 16
  config.eval.max_images = 4
  config.eval.num_visualize = 2
  final = main.train_and_evaluate(config, str(tmp_path / 'run'))
  assert {'eval/synthetic/mIoU', 'eval/synthetic/threshold_mIoU'} <= set(final)
  result = json.loads((tmp_path / 'run' / 'eval_synthetic.json').read_text())
  assert result['background_rule'] == 'vocabulary'
  assert 'threshold' in result['other_background_rules']
  assert (tmp_path / 'run' / 'eval_synthetic.png').exists()
  assert store.kind_of(store.load_config(str(tmp_path / 'run' / 'model'))) == 'scg'
  exported = store.load_config(str(tmp_path / 'run' / 'model'))
  assert (exported.naming, exported.grouper_layer) == (config.scg.naming, config.scg.grouper_layer)


def test_bad_background_rule_is_an_error_at_start():
  from evaluation import hooks

  eval_config = hooks.default_eval_config()
  eval_config.datasets = ('synthetic',)
  eval_config.background_rules = ('threshold', 'oracle')
  with pytest.raises(ValueError, match='background_rules'):
    hooks.build_evaluators(eval_config, _tiny_clip(), None)


def test_total_steps_zero_is_only_for_untrained_scg():
  config = _clip_recipe()
  config.total_steps = 0
  with pytest.raises(main.TrainingError, match='total_steps'):
    main.validate(config)


def test_scene_levels_set_their_knobs_and_keep_colour_independent():
  for name in scene_levels.LEVELS:
    synth = ml_collections.ConfigDict(SyntheticConfig().to_dict())
    scene_levels.apply_level(synth, name)
    cfg = SyntheticConfig.from_dict(synth)
    assert cfg.p_colour_word == 0.0  # no caption word ties a colour to a shape
  default = scene_levels.apply_level(
    ml_collections.ConfigDict(SyntheticConfig().to_dict()), 'default'
  )
  assert default.object_polarity == 'lighter'
  hard = scene_levels.apply_level(ml_collections.ConfigDict(SyntheticConfig().to_dict()), 'hard')
  assert hard.object_polarity == 'any' and hard.max_objects == 3
  assert default.max_objects == 1 and not default.rotation
  with pytest.raises(ValueError, match='unknown scene level'):
    scene_levels.apply_level(ml_collections.ConfigDict(SyntheticConfig().to_dict()), 'medium')


def _notebook_model(tmp_path, kind: str) -> str:
  from groupvit_jax.models import zeroseg
  from groupvit_jax.pretrained_scg import PretrainedSCG
  from tests.test_zeroseg import STUDENT

  path = str(tmp_path / kind)
  if kind == 'zeroseg':
    cfg = zeroseg.ZeroSegConfig.from_dict(STUDENT)
    store.save_model(path, cfg, store.init_model(cfg, jax.random.key(0)))
  else:
    clip_dir = str(tmp_path / 'clip')
    store.save_model(clip_dir, _tiny_clip(), store.init_model(_tiny_clip(), jax.random.key(1)))
    PretrainedSCG.from_towers(clip_dir, clip_dir, num_regions=4, kmeans_iters=3).save(path)
  return path


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['zeroseg', 'scg'])
def test_notebook_shows_zeroseg_segments_and_scg_regions(tmp_path, monkeypatch, kind):
  from PIL import Image

  from tests.test_inspect_and_baselines import NOTEBOOK

  out = tmp_path / 'figures'
  monkeypatch.setenv('GROUPVIT_CHECKPOINT', _notebook_model(tmp_path, kind))
  monkeypatch.setenv('GROUPVIT_NOTEBOOK_OUT', str(out))
  monkeypatch.setenv('GROUPVIT_NUM_IMAGES', '6')
  monkeypatch.setenv('GROUPVIT_VOCABULARY', 'star, heart, ring')
  namespace = {'display': lambda _: None, '__name__': '__main__'}
  for cell in json.loads(NOTEBOOK.read_text())['cells']:
    if cell['cell_type'] == 'code':
      exec(compile(''.join(cell['source']), str(NOTEBOOK), 'exec'), namespace)
  names = {'stage_groups', 'group_concepts', 'group_concepts_stage1', 'segmentation'}
  assert {p.stem for p in out.glob('*.png')} == names
  assert Image.open(out / 'stage_groups.png').height >= 6 * 160
  assert len(namespace['predictions']) == 6 and all(p.max() <= 3 for p in namespace['predictions'])


def test_image_filter_keeps_the_images_top_classes_and_every_background_word():
  import jax.numpy as jnp

  from groupvit_jax import scg_inference

  eye = np.eye(6, dtype=np.float32)  # classes 0-2 foreground, 3-4 background words, 5 padding
  image = jnp.asarray([[0.1, 0.9, 0.3, 0.0, 0.0, 0.0], [0.8, 0.0, 0.7, 0.0, 0.0, 1.0]])
  mask = jnp.asarray([True] * 5 + [False])
  keep = np.asarray(scg_inference.image_filter(image, jnp.asarray(eye), mask, 1, num_fg=3))
  assert keep.shape == (2, 1, 6)
  np.testing.assert_array_equal(keep[:, 0], [[0, 1, 0, 1, 1, 0], [1, 0, 0, 1, 1, 0]])
  keep2 = np.asarray(scg_inference.image_filter(image, jnp.asarray(eye), mask, 2, num_fg=None))
  np.testing.assert_array_equal(keep2[:, 0].sum(-1), [2, 2])  # padding never counts
