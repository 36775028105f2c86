"""`python -m evaluation.run` end to end on a tiny VOC-layout dataset with a converted tiny random
model: the JSON, the prediction PNGs (re-scored by `evaluation.score` to the same confusion matrix),
  the
visualisations; multi-process sharding; no recompilation across image sizes or new variables."""

import json

import jax
import numpy as np
import pytest
from PIL import Image

pytest.importorskip('torch')
pytest.importorskip('transformers')

from evaluation import class_names as cn  # noqa: E402
from evaluation import datasets, evaluator, run, score
from evaluation.visualize import save_label_png  # noqa: E402
from groupvit_jax import segmenter  # noqa: E402
from groupvit_jax.pretrained import Pretrained  # noqa: E402
from references import segmentation as ref  # noqa: E402
from tests.conftest import SHARED_DATA  # noqa: E402

SIZES = [(375, 500), (333, 500), (500, 281), (200, 700)]


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
  _, ours, path = ref.tiny_models(str(tmp_path_factory.mktemp('run')), seed=5)
  return ours, path


def _voc_layout(root, sizes):
  base = root / 'VOC2012'
  for d in ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation'):
    (base / d).mkdir(parents=True)
  rng = np.random.default_rng(0)
  names = []
  for i, image in enumerate(ref.synthetic_images(sizes, seed=7)):
    name = f'2099_{i:06d}'
    names.append(name)
    Image.fromarray(image).save(base / 'JPEGImages' / f'{name}.jpg', quality=95)
    h, w = image.shape[:2]
    label = np.zeros((h, w), np.uint8)
    for _ in range(3):  # a few rectangles of random classes with an ignore border
      y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
      y1, x1 = y0 + rng.integers(20, h // 2), x0 + rng.integers(20, w // 2)
      label[y0:y1, x0:x1] = 255
      label[y0 + 3 : y1 - 3, x0 + 3 : x1 - 3] = rng.integers(1, 21)
    save_label_png(base / 'SegmentationClass' / f'{name}.png', label)
  (base / 'ImageSets/Segmentation/val.txt').write_text('\n'.join(names) + '\n')
  return base


def _check_run(tmp_path, ours_dir, data_dir, split, expected_images):
  out = tmp_path / 'result.json'
  preds = tmp_path / 'preds'
  vis = tmp_path / 'vis'
  rc = run.main(
    [
      '--checkpoint',
      ours_dir,
      '--dataset',
      'voc',
      '--data_dir',
      str(data_dir),
      '--split',
      split,
      '--output',
      str(out),
      '--save_predictions',
      str(preds),
      '--visualize',
      '2',
      '--visualize_dir',
      str(vis),
      '--oracle',
      '--naming',
      '--batch_windows',
      '3',
      '--num_devices',
      '1',
    ]
  )
  assert rc == 0
  result = json.loads(out.read_text())
  for key in (
    'mIoU',
    'pixel_accuracy',
    'per_class_iou',
    'num_images',
    'config',
    'timing',
    'confusion_matrix',
    'boundary_iou',
    'oracle',
    'mean_accuracy',
  ):
    assert key in result, key
  assert result['num_images'] == expected_images
  assert set(result['per_class_iou']) == set(cn.VOC_CLASSES)
  assert result['config']['threshold'] == 0.95 and result['config']['mode'] == 'slide'
  assert result['timing']['images_per_second'] > 0
  assert result['oracle']['mIoU'] is not None
  assert (
    result['naming']['num_images'] == expected_images
    and result['naming']['groups']['num_groups'] > 0
  )
  assert len(list(preds.glob('*.png'))) == expected_images
  assert len(list(vis.glob('*.png'))) == min(2, expected_images)
  # predictions re-scored from the PNGs give the same confusion matrix and metrics
  ds = datasets.VOCDataset(data_dir, split)
  gt_dir = tmp_path / 'gt'
  gt_dir.mkdir()
  for name, path in zip(ds.names, ds.label_paths):
    (gt_dir / f'{name}.png').write_bytes(path.read_bytes())
  rescored = score.score_dirs(preds, gt_dir, 21, class_names=cn.VOC_CLASSES)
  assert rescored['confusion_matrix'] == result['confusion_matrix']
  assert rescored['mIoU'] == pytest.approx(result['mIoU'])
  assert rescored['boundary_iou']['mBoundaryIoU'] == pytest.approx(
    result['boundary_iou']['mBoundaryIoU']
  )
  with Image.open(next(preds.glob('*.png'))) as im:
    assert im.mode == 'P'
  return result


@pytest.mark.slow
def test_run_end_to_end_on_voc_layout(tmp_path, model_dir):
  _, path = model_dir
  data = _voc_layout(tmp_path / 'data', SIZES[1:])
  _check_run(tmp_path / 'out', path, data, 'val', len(SIZES) - 1)


def test_run_on_shared_voc_sample(tmp_path, model_dir):
  root = SHARED_DATA / 'voc_sample' / 'VOC2012'
  if not root.is_dir():
    pytest.skip('../shared/data/voc_sample is not present')
  _, path = model_dir
  n = len(datasets.VOCDataset(root, 'trainval'))
  _check_run(tmp_path, path, root, 'trainval', n)


def test_process_shards_sum_to_the_whole(tmp_path, model_dir, monkeypatch):
  ours, _ = model_dir
  data = _voc_layout(tmp_path / 'data', SIZES[:3])
  ds = datasets.VOCDataset(data, 'val')
  spec = cn.get_spec('voc')
  kw = dict(threshold=0.95, batch_windows=3, boundary=False, devices=jax.devices()[:1])
  full = evaluator.evaluate_segmentation(ours, ds, spec, **kw)
  monkeypatch.setattr(evaluator, '_gather_sum', lambda tree: tree)  # one process plays both
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  parts = []
  for index in (0, 1):
    monkeypatch.setattr(jax, 'process_index', lambda index=index: index)
    parts.append(evaluator.evaluate_segmentation(ours, ds, spec, **kw))
  assert [p['num_images'] for p in parts] == [2, 1]  # shard 1 ran a masked repeat as well
  np.testing.assert_array_equal(
    np.add(parts[0]['confusion_matrix'], parts[1]['confusion_matrix']), full['confusion_matrix']
  )


@pytest.mark.slow
def test_no_recompilation_across_sizes_or_new_variables(tmp_path, model_dir):
  ours, _ = model_dir
  images = ref.synthetic_images([(375, 500), (333, 500), (640, 480), (200, 700), (480, 640)])
  labels = [
    np.random.default_rng(i).integers(0, 21, im.shape[:2]).astype(np.uint8)
    for i, im in enumerate(images)
  ]
  ce = np.random.default_rng(0).standard_normal((20, ours.config.projection_dim)).astype(np.float32)
  ce /= np.linalg.norm(ce, axis=1, keepdims=True)

  def run_all(variables, items):
    seg = segmenter.ZeroShotSegmenter(
      ours.config, variables, ce, 0.5, segmenter.Protocol(window_batch=2), jax.devices()[:2]
    )  # sharded over two (fake CPU) devices
    out = list(seg.run(items))
    return seg, out

  run_all(ours.variables, [(0, images[0], labels[0])])  # warm-up: compiles every function once
  before = segmenter.compile_stats()['backend_compiles']
  seg, out = run_all(
    ours.variables, [(i, im, lab) for i, (im, lab) in enumerate(zip(images, labels))]
  )
  assert len(out) == len(images) and seg.confusion_matrix().sum() == sum(
    label.size for label in labels
  )
  assert segmenter.compile_stats()['backend_compiles'] == before
  # the trainer's case: a new Pretrained with new variables of the same shapes, via the evaluator
  new_vars = jax.tree.map(lambda x: np.asarray(x) * np.float32(1.01), ours.variables)
  data = _voc_layout(tmp_path / 'data', SIZES[:2])
  ds = datasets.VOCDataset(data, 'val')
  kw = dict(threshold=0.95, batch_windows=2, boundary=False, devices=jax.devices()[:1])
  evaluator.evaluate_segmentation(ours, ds, cn.get_spec('voc'), **kw)
  before = segmenter.compile_stats()['backend_compiles']
  res = evaluator.evaluate_segmentation(
    Pretrained(ours.config, new_vars), ds, cn.get_spec('voc'), **kw
  )
  assert res['timing']['backend_compiles'] == 0
  assert segmenter.compile_stats()['backend_compiles'] == before


@pytest.mark.slow
def test_folder_dataset_without_background_and_errors(tmp_path, model_dir):
  ours, path = model_dir
  root = tmp_path / 'folder'
  (root / 'images').mkdir(parents=True)
  (root / 'labels').mkdir()
  (root / 'classes.txt').write_text('sky\ngrass\nwater\n')
  for i, image in enumerate(ref.synthetic_images([(200, 300), (300, 200)])):
    Image.fromarray(image).save(root / 'images' / f'im{i}.png')
    save_label_png(
      root / 'labels' / f'im{i}.png',
      (np.arange(image.shape[0])[:, None] * 3 // image.shape[0] + np.zeros(image.shape[1], int)),
    )
  out = tmp_path / 'f.json'
  assert (
    run.main(
      [
        '--checkpoint',
        path,
        '--dataset',
        'folder',
        '--data_dir',
        str(root),
        '--output',
        str(out),
        '--num_devices',
        '1',
      ]
    )
    == 0
  )
  result = json.loads(out.read_text())
  assert set(result['per_class_iou']) == {'sky', 'grass', 'water'} and result['num_images'] == 2
  assert result['config']['with_background'] is False
  # a threshold without a background class is an error (exit code 2)
  assert (
    run.main(
      [
        '--checkpoint',
        path,
        '--dataset',
        'folder',
        '--data_dir',
        str(root),
        '--output',
        str(out),
        '--threshold',
        '0.5',
      ]
    )
    == 2
  )
  with pytest.raises(ValueError, match='threshold is required'):
    evaluator.resolve_classes(['background', 'cat'], None)
