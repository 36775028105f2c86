"""The inspection notebook runs top to bottom on a tiny checkpoint; the plain-ViT segmentation
baselines (pixel-wise and k-means) compute what they claim; the trainer's evaluation hook writes its
JSON and PNG grid."""

import json
import os
import pathlib

import jax
import numpy as np
import pytest
from PIL import Image

from evaluation import inspect_groups, token_baselines
from evaluation.synthetic import SyntheticSegmentationDataset
from groupvit_jax import prompts
from groupvit_jax.checkpoints import store
from groupvit_jax.config_lib import model_config
from groupvit_jax.models.config import GroupViTConfig
from groupvit_jax.models.groupvit import GroupViT, init_variables, l2_normalize
from groupvit_jax.pretrained import Pretrained, load_pretrained
from input_pipeline.synthetic_shapes import SyntheticConfig

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / 'notebooks' / 'inspect_groups.ipynb'


def _model(**image):
  base = dict(
    image_size=64,
    patch_size=16,
    width=64,
    num_heads=2,
    depths=(1, 1, 1),
    num_group_tokens=(8, 4, 0),
    num_output_groups=(8, 4),
    drop_path_rate=0.0,
  )
  base.update(image)
  cfg = GroupViTConfig.from_dict(
    model_config(
      image=base,
      text=dict(width=32, num_layers=1, num_heads=2, context_length=16),
      projection_dim=32,
      projection_hidden_dim=64,
    )
  )
  return Pretrained(cfg, init_variables(GroupViT(cfg), jax.random.PRNGKey(0)))


@pytest.fixture(scope='module')
def groupvit(tmp_path_factory):
  model = _model()
  directory = str(tmp_path_factory.mktemp('ckpt') / 'model')
  store.save_model(directory, model.config, model.variables)
  return directory


@pytest.fixture(scope='module')
def vit():
  return _model(depths=(2,), num_group_tokens=(0,), num_output_groups=())


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(groupvit, tmp_path, monkeypatch):
  out = tmp_path / 'figures'
  monkeypatch.setenv('GROUPVIT_CHECKPOINT', groupvit)
  monkeypatch.setenv('GROUPVIT_NOTEBOOK_OUT', str(out))
  monkeypatch.setenv('GROUPVIT_NUM_IMAGES', '8')
  monkeypatch.setenv('GROUPVIT_VOCABULARY', 'star, heart, ring')
  shown = []
  namespace = {'display': shown.append, '__name__': '__main__'}
  nb = json.loads(NOTEBOOK.read_text())
  for cell in nb['cells']:
    if cell['cell_type'] == 'code':
      exec(compile(''.join(cell['source']), str(NOTEBOOK), 'exec'), namespace)
  names = {'stage_groups', 'group_concepts', 'group_concepts_stage1', 'segmentation'}
  assert {p.stem for p in out.glob('*.png')} == names
  assert len(shown) == len(names) and all(isinstance(im, Image.Image) for im in shown)
  # 6 rows (images) of input + 2 stages in the stage panel.
  assert Image.open(out / 'stage_groups.png').height >= 6 * 160
  assert len(namespace['predictions']) == 6
  assert all(p.shape == (64, 64) and p.max() <= 3 for p in namespace['predictions'])


def test_stage_group_ids_follow_the_model_maps(groupvit):
  from groupvit_jax.segmenter import resize_uint8

  model = load_pretrained(groupvit)
  data = SyntheticSegmentationDataset(SyntheticConfig(image_size=64), seed=3, num_examples=2)
  ids = inspect_groups.stage_group_ids(
    model, [s.image for s in data] + [np.zeros((40, 90, 3), np.uint8)]
  )
  assert [[g.shape for g in per_stage] for per_stage in ids] == [[(64, 64)] * 2] * 2 + [
    [(40, 90)] * 2
  ]
  assert all(per_stage[0].max() < 8 and per_stage[1].max() < 4 for per_stage in ids)
  # Images as small as the 4x4 patch grid: the model sees them resized to 64 px, and the maps come
  # back at 4x4 unresampled, so each pixel's group is exactly its patch's argmax.
  small = [np.random.default_rng(i).integers(0, 256, (4, 4, 3), dtype=np.uint8) for i in range(3)]
  ids = inspect_groups.stage_group_ids(model, small)
  maps = model.group_maps(_norm([resize_uint8(im, 64, 64) for im in small]), preprocess=False)
  for i in range(3):
    for s in range(2):
      assert np.array_equal(ids[i][s], np.argmax(maps[s][i], axis=-1))


def _norm(images):
  from groupvit_jax.preprocessing import normalize

  return normalize(np.stack(images))


def test_group_concepts_rank_images_by_group_area(groupvit):
  model = load_pretrained(groupvit)
  data = SyntheticSegmentationDataset(SyntheticConfig(image_size=64), seed=4, num_examples=10)
  images = [s.image for s in data]
  ids = [s[-1] for s in inspect_groups.stage_group_ids(model, images)]
  _, shown = inspect_groups.group_concepts(model, images, per_group=4)
  assert shown
  for g, idx in shown.items():
    areas = [np.mean(ids[i] == g) for i in idx]
    assert areas == sorted(areas, reverse=True) and areas[0] > 0
    others = [np.mean(ids[i] == g) for i in range(len(images)) if i not in idx]
    assert len(idx) == 4 or not any(a > 0 for a in others)
    assert all(a <= areas[-1] for a in others)


def test_cosine_kmeans_recovers_separated_clusters():
  rng = np.random.default_rng(0)
  centres = np.eye(8)[:3]
  truth = rng.integers(0, 3, 60)
  x = centres[truth] + 0.05 * rng.normal(size=(60, 8))
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  ids = np.asarray(token_baselines.cosine_kmeans(jax.numpy.asarray(x, jax.numpy.float32), 3))
  # Same partition up to relabelling.
  pairs = set(zip(truth.tolist(), ids.tolist()))
  assert len(pairs) == 3 and len({a for a, _ in pairs}) == 3 and len({b for _, b in pairs}) == 3


def test_pixel_baseline_classifies_each_patch_token(vit):
  names = ['circle', 'square', 'triangle', 'star', 'cross']
  data = SyntheticSegmentationDataset(SyntheticConfig(image_size=64), seed=5, num_examples=4)
  # No background and top_k covering all classes: a patch's label is its best class (argmax of
  # softmax(l) * softmax(l) = argmax of l).
  class_embed = prompts.class_embeddings(vit.config, vit.variables, vit.tokenize, names, 'simple')
  pix = _norm([s.image for s in data])
  out = GroupViT(vit.config).apply(
    vit.variables, pix, with_groups=True, method=GroupViT.encode_image
  )
  tok = np.asarray(l2_normalize(out['group_embeds']))  # [B, 16, D]
  expected = np.argmax(tok @ np.asarray(class_embed).T, axis=-1).reshape(-1, 4, 4)
  pred, _ = token_baselines._segment_batch(
    vit.variables,
    jax.numpy.asarray(pix),
    class_embed,
    jax.numpy.float32(0),
    config=vit.config,
    method='pixel',
    num_clusters=4,
    top_k=5,
    with_background=False,
    out_hw=(64, 64),
  )
  pred = np.asarray(pred)
  assert np.array_equal(pred[:, 8::16, 8::16], expected)
  for method in token_baselines.METHODS:
    result = token_baselines.evaluate_token_baseline(
      vit, data, data.spec, threshold=0.5, method=method, num_clusters=4, batch_size=3
    )
    assert result['num_images'] == 4 and 0 <= result['mIoU'] <= 100
    assert (result['oracle'] is None) == (method == 'pixel')


def test_token_baseline_rejects_grouping_models(groupvit):
  model = load_pretrained(groupvit)
  data = SyntheticSegmentationDataset(SyntheticConfig(image_size=64), seed=5, num_examples=2)
  with pytest.raises(ValueError, match='without grouping'):
    token_baselines.evaluate_token_baseline(model, data, data.spec, threshold=0.5)


@pytest.mark.slow
def test_eval_hook_writes_json_and_grid(groupvit, vit, tmp_path):
  from evaluation import hooks
  from groupvit_jax.main import base_config

  config = base_config()
  config.eval.datasets = ('synthetic',)
  config.eval.max_images = 4
  config.eval.num_visualize = 3
  config.data.synthetic.image_size = 64
  model = load_pretrained(groupvit)
  (run,) = hooks.build_evaluators(config.eval, model.config, str(tmp_path), data_config=config.data)
  metrics = run(model.variables, 7)
  assert set(metrics) == {
    'eval/synthetic/mIoU',
    'eval/synthetic/pixel_accuracy',
    'eval/synthetic/images_per_s',
    'eval/synthetic/oracle_mIoU',
    'eval/synthetic/naming_mAP',
    'eval/synthetic/naming_chance_mAP',
    'eval/synthetic/group_naming_mAP',
    'eval/synthetic/group_naming_chance_mAP',
    'eval/synthetic/background_leak',
    'eval/synthetic/within_image_auc',
    'eval/synthetic/background_word_auc',
  }
  result = json.loads((tmp_path / 'eval_synthetic.json').read_text())
  # Scored with the captions' background words of the configured background types.
  assert result['naming']['groups']['background_word_auc'] == pytest.approx(
    metrics['eval/synthetic/background_word_auc'], nan_ok=True
  )
  assert result['step'] == 7 and result['num_images'] == 4
  assert result['naming']['mAP'] == pytest.approx(metrics['eval/synthetic/naming_mAP'])
  assert result['naming']['num_images'] == 4
  assert result['naming']['groups']['mAP'] == pytest.approx(
    metrics['eval/synthetic/group_naming_mAP'], nan_ok=True
  )
  assert result['config']['crop_size'] == 64 and result['config']['img_scale'] == [64, 64]
  assert result['mIoU'] == pytest.approx(metrics['eval/synthetic/mIoU'])
  grid = Image.open(tmp_path / 'eval_synthetic.png')
  assert grid.height >= 3 * 64
  (run,) = hooks.build_evaluators(
    config.eval, vit.config, str(tmp_path / 'vit'), data_config=config.data
  )
  os.makedirs(tmp_path / 'vit')
  metrics = run(vit.variables, 1)
  assert set(metrics) == {
    f'eval/synthetic/{m}_{k}' for m in ('pixel', 'kmeans') for k in ('mIoU', 'accuracy')
  } | {
    'eval/synthetic/kmeans_oracle_mIoU',
    'eval/synthetic/naming_mAP',
    'eval/synthetic/naming_chance_mAP',
  }


def _run_dir(tmp_path):
  """The config.json a training run leaves in its workdir (the model comes from a fixture)."""
  from groupvit_jax.main import base_config

  config = base_config()
  config.eval.datasets = ('synthetic',)
  config.eval.max_images = 3
  config.eval.synthetic_seed = 4
  config.data.synthetic.image_size = 64
  config.data.synthetic.max_objects = 1
  (tmp_path / 'config.json').write_text(config.to_json())
  return config


@pytest.mark.slow
def test_run_cli_rescores_a_synthetic_run(groupvit, vit, tmp_path, capsys):
  """`python -m evaluation.run --dataset synthetic` is the trainer's hook with the run's knobs,
  overridden by the flags (another val stream, knobs, threshold, resolution)."""
  from evaluation import hooks, run

  config = _run_dir(tmp_path)
  out = tmp_path / 'rescored.json'
  rc = run.main(
    [
      '--checkpoint',
      groupvit,
      '--dataset',
      'synthetic',
      '--data_dir',
      str(tmp_path),
      '--synthetic_seed',
      '9',
      '--synthetic',
      'max_objects=3',
      '--synthetic',
      'size_range=(0.15,0.3)',
      '--threshold',
      '0.9',
      '--visualize',
      '2',
      '--synthetic_scale',
      '2',
      '--output',
      str(out),
    ]
  )
  assert rc == 0
  result = json.loads(out.read_text())
  assert result['num_images'] == 3 and 'step' not in result
  assert result['dataset']['seed'] == 9
  assert result['dataset']['knobs']['max_objects'] == 3
  assert result['dataset']['knobs']['size_range'] == [0.15, 0.3]
  assert result['config']['threshold'] == 0.9
  assert result['config']['crop_size'] == 128  # one window at twice the 64 px training size
  assert result['naming']['input_size'] == 128
  assert (tmp_path / 'visualize' / 'synthetic.png').exists()
  # The same numbers as the hook called with those settings.
  config.eval.synthetic_seed, config.eval.threshold, config.eval.synthetic_scale = 9, 0.9, 2.0
  config.data.synthetic.max_objects, config.data.synthetic.size_range = 3, (0.15, 0.3)
  (hook,) = hooks.build_evaluators(
    config.eval, load_pretrained(groupvit).config, '', data_config=config.data
  )
  assert hook(load_pretrained(groupvit).variables, 0)['eval/synthetic/mIoU'] == pytest.approx(
    result['mIoU'], abs=1e-9
  )

  vit_dir = tmp_path / 'vit_model'
  store.save_model(str(vit_dir), vit.config, vit.variables)
  rc = run.main(
    [
      '--checkpoint',
      str(vit_dir),
      '--dataset',
      'synthetic',
      '--data_dir',
      str(tmp_path),
      '--synthetic_scale',
      '1.5',
      '--output',
      str(tmp_path / 'vit.json'),
    ]
  )
  assert rc == 0
  result = json.loads((tmp_path / 'vit.json').read_text())
  assert set(result) >= {'pixel', 'kmeans'} and result['num_images'] == 3
  assert result['pixel']['input_size'] == result['kmeans']['input_size'] == 96
  assert result['dataset']['seed'] == 4  # the run's own val stream

  capsys.readouterr()
  for bad, message in (
    (['--synthetic', 'max_object=3'], "unknown SyntheticConfig key(s): 'max_object'"),
    (['--synthetic', 'max_objects'], 'expects KEY=VALUE'),
    (['--data_dir', str(tmp_path / 'nowhere')], 'config.json not found'),
    (
      ['--synthetic_scale', '1.1'],
      'input size 70 must be a positive multiple of the patch size 16',
    ),
  ):
    args = [
      '--checkpoint',
      groupvit,
      '--dataset',
      'synthetic',
      '--data_dir',
      str(tmp_path),
      '--output',
      str(tmp_path / 'bad.json'),
    ] + bad
    assert run.main(args) == 2
    assert message in capsys.readouterr().err
  assert not (tmp_path / 'bad.json').exists()
