"""SCG through the zero-shot protocol: the zero-training command on a VOC-layout dataset, the
segment() call, dataset centroids, the three masking strategies and the model directory."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from evaluation import class_names as cn
from evaluation import run
from groupvit_jax import load_pretrained
from groupvit_jax.checkpoints import store
from groupvit_jax.models.clip import CLIPConfig, clip_vision_config
from groupvit_jax.models.config import TextEncoderConfig
from groupvit_jax.models.vit import ViTConfig
from groupvit_jax.pretrained_scg import PretrainedSCG, fit_dataset_centroids


def _tiny_clip() -> CLIPConfig:
  return CLIPConfig(
    vision=clip_vision_config(image_size=32, patch_size=16, width=32, depth=2, num_heads=2),
    text=TextEncoderConfig(width=32, num_heads=2, num_layers=1, context_length=16),
    embed_dim=24,
  )


def _tiny_dino() -> ViTConfig:
  return ViTConfig(image_size=32, patch_size=8, width=32, depth=2, num_heads=2)


@pytest.fixture(scope='module')
def towers(tmp_path_factory):
  root = tmp_path_factory.mktemp('scg_towers')
  clip_dir, dino_dir = str(root / 'clip'), str(root / 'dino')
  store.save_model(clip_dir, _tiny_clip(), store.init_model(_tiny_clip(), jax.random.key(1)))
  store.save_model(dino_dir, _tiny_dino(), store.init_model(_tiny_dino(), jax.random.key(2)))
  return clip_dir, dino_dir


def _voc(root):
  from tests.test_segmentation_run import _voc_layout

  return _voc_layout(root, [(120, 160), (96, 200)])


def test_zero_training_command_on_voc_layout(towers, tmp_path):
  clip_dir, dino_dir = towers
  data = _voc(tmp_path)
  out = tmp_path / 'scg.json'
  args = ['--method', 'scg', '--clip', clip_dir, '--grouper', dino_dir, '--dataset', 'voc']
  args += ['--data_dir', str(data.parent), '--output', str(out), '--oracle']
  args += ['--save_predictions', str(tmp_path / 'preds'), '--visualize', '1']
  args += ['--scg', 'num_regions=6', '--scg', 'kmeans_iters=3']
  assert run.main(args) == 0
  result = json.loads(out.read_text())
  assert result['num_images'] == 2
  assert 0.0 <= result['mIoU'] <= 100.0
  assert result['oracle']['mIoU'] >= 0.0
  cfg = result['config']
  assert cfg['method'] == 'scg' and cfg['background_rule'] == 'vocabulary'
  assert cfg['background_words'] == list(cn.background_vocabulary('voc'))
  assert result['towers'] == {'clip': clip_dir, 'grouper': dino_dir}
  assert len(list((tmp_path / 'preds').glob('*.png'))) == 2
  # The threshold rule as an option; a CLIP in the grouper's place is refused.
  out2 = tmp_path / 'scg_thr.json'
  args2 = [a if a != str(out) else str(out2) for a in args[:-4]]
  assert run.main(args2 + ['--background', 'threshold', '--threshold', '0.5']) == 0
  assert json.loads(out2.read_text())['config']['background_rule'] == 'threshold'
  bad = ['--method', 'scg', '--clip', dino_dir, '--grouper', dino_dir, '--dataset', 'voc']
  assert run.main(bad + ['--data_dir', str(data.parent), '--output', str(out2)]) == 2


@pytest.mark.parametrize('masking', ['context', 'tokens', 'pixels'])
def test_segment_and_regions_for_each_masking(towers, masking):
  scg = PretrainedSCG.from_towers(*towers, num_regions=5, kmeans_iters=2, masking=masking)
  rng = np.random.default_rng(0)
  image = rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)
  labels = scg.segment(image, ['cat', 'dog', 'bird'], background_words=['grass', 'sky'])
  assert labels.shape == (70, 90) and labels.dtype == np.int32
  assert labels.min() >= 0 and labels.max() <= 3
  labels = scg.segment(image, ['cat', 'dog'], mode='whole')
  assert labels.max() <= 1
  out = scg.regions([image, image[::-1]], size=64)
  assert out['region_ids'].shape == (2, 64, 64)
  assert out['region_embeds'].shape == (2, 5, 24)
  assert out['present'].any(axis=1).all()


def test_dataset_centroids_and_model_directory_round_trip(towers, tmp_path):
  scg = PretrainedSCG.from_towers(*towers, num_regions=4, kmeans_iters=2)
  rng = np.random.default_rng(1)
  images = [rng.integers(0, 255, (40, 48, 3), dtype=np.uint8) for _ in range(5)]
  cent = fit_dataset_centroids(scg, images, size=32, iters=5)
  assert cent.shape == (4, 32)
  np.testing.assert_allclose(np.linalg.norm(cent, axis=1), 1.0, atol=1e-5)
  shared = scg.with_centroids(cent)
  path = shared.save(str(tmp_path / 'scg_model'))
  again = load_pretrained(path)
  assert isinstance(again, PretrainedSCG)
  assert again.config == shared.config and again.config.centroids == 'dataset'
  np.testing.assert_array_equal(np.asarray(again.variables['centroids']), cent)
  a = shared.regions(images[:2], size=32)['region_ids']
  b = again.regions(images[:2], size=32)['region_ids']
  np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match='centroids must be'):
    scg.with_centroids(cent[:, :8])


def test_images_with_fewer_patches_than_regions(towers):
  scg = PretrainedSCG.from_towers(*towers, kmeans_iters=2)  # 27 regions, 4 x 4 grouper patches
  image = np.random.default_rng(3).integers(0, 255, (32, 32, 3), dtype=np.uint8)
  out = scg.regions([image], size=32)
  assert out['region_embeds'].shape[1] == 27
  assert out['present'][0, 16:].sum() == 0 and out['region_ids'].max() < 16


@pytest.mark.slow
def test_speed_benchmark_runs(capsys):
  import importlib.util

  from tests.conftest import REPO

  spec = importlib.util.spec_from_file_location('scg_speed', REPO / 'benchmarks' / 'scg_speed.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  module.main(['--tiny', '--images', '1', '--rounds', '1', '--masking', 'context', '--json'])
  rows = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith('{')]
  assert {r['row'] for r in rows} == {'window', 'protocol'}
  assert all(r.get('ms_per_window', 1) > 0 and r.get('images_per_s', 1) > 0 for r in rows)
