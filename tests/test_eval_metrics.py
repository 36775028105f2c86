"""Tests of evaluation.metrics and the evaluation.score CLI."""

import json
import math
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from evaluation import metrics as M
from evaluation import score

REPO_ROOT = Path(__file__).resolve().parents[1]


def _reference_confusion(pred, gt, num_classes, ignore_index, valid):
  """Independent implementation: explicit filtering and np.add.at."""
  conf = np.zeros((num_classes, num_classes), np.int64)
  p = pred.reshape(-1)
  g = gt.reshape(-1)
  v = np.ones_like(g, bool) if valid is None else valid.reshape(-1)
  sel = [
    i
    for i in range(g.size)
    if v[i] and g[i] != ignore_index and 0 <= g[i] < num_classes and 0 <= p[i] < num_classes
  ]
  np.add.at(conf, (g[sel], p[sel]), 1)
  return conf


# --------------------------------------------------------------------------------------------- conf


def test_jax_confusion_matches_reference_with_ignore_and_padding():
  rng = np.random.default_rng(0)
  c = 5
  gt = rng.integers(0, c, size=(3, 17, 23)).astype(np.uint8)
  gt[rng.random(gt.shape) < 0.15] = 255  # ignore pixels
  pred = rng.integers(0, c, size=gt.shape).astype(np.int32)
  valid = np.ones(gt.shape, bool)
  valid[1, 12:, :] = False  # padding rows of image 1
  valid[2, :, 19:] = False  # padding columns of image 2

  expected = _reference_confusion(pred, gt, c, 255, valid)
  got = M.confusion_matrix_update(
    jnp.zeros((c, c), jnp.int32), pred, gt, num_classes=c, valid=valid
  )
  assert got.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(got), expected)
  np.testing.assert_array_equal(M.confusion_matrix_np(pred, gt, c, 255, valid), expected)

  # Without a valid mask, and accumulating onto a non-zero matrix.
  expected_all = _reference_confusion(pred, gt, c, 255, None)
  start = jnp.asarray(np.arange(c * c, dtype=np.int32).reshape(c, c))
  got2 = M.confusion_matrix_update(start, pred, gt, num_classes=c)
  np.testing.assert_array_equal(np.asarray(got2), expected_all + np.arange(c * c).reshape(c, c))
  assert expected_all.sum() == np.count_nonzero(gt != 255)


def test_confusion_skips_out_of_range_values():
  gt = np.array([[0, 1, 7, 255]])
  pred = np.array([[1, 9, 0, 0]])
  expected = np.zeros((3, 3), np.int64)
  expected[0, 1] = 1  # only the first pixel counts
  got = M.confusion_matrix_update(jnp.zeros((3, 3), jnp.int32), pred, gt, num_classes=3)
  np.testing.assert_array_equal(np.asarray(got), expected)
  np.testing.assert_array_equal(M.confusion_matrix_np(pred, gt, 3), expected)


def test_confusion_matrix_accumulator_is_int64():
  rng = np.random.default_rng(1)
  cm = M.ConfusionMatrix(4)
  total = np.zeros((4, 4), np.int64)
  for _ in range(2):
    gt = rng.integers(0, 4, size=(2, 8, 8))
    pred = rng.integers(0, 4, size=(2, 8, 8))
    cm.update(pred, gt)
    total += _reference_confusion(pred, gt, 4, 255, None)
  cm.update_np(pred, gt)
  total += _reference_confusion(pred, gt, 4, 255, None)
  assert cm.matrix.dtype == np.int64
  np.testing.assert_array_equal(cm.matrix, total)


# ------------------------------------------------------------------------------------------- scores


def test_metrics_hand_computed():
  gt = np.array([[0, 0, 1, 1]])
  pred = np.array([[0, 1, 1, 1]])
  conf = M.confusion_matrix_np(pred, gt, 3)
  np.testing.assert_array_equal(conf, [[1, 1, 0], [0, 2, 0], [0, 0, 0]])
  r = M.segmentation_metrics(conf, ['bg', 'cat', 'dog'])
  assert r['per_class_iou']['bg'] == pytest.approx(50.0)
  assert r['per_class_iou']['cat'] == pytest.approx(200 / 3)
  assert math.isnan(r['per_class_iou']['dog'])  # absent from GT and prediction: excluded
  assert r['mIoU'] == pytest.approx((50 + 200 / 3) / 2)
  assert r['pixel_accuracy'] == pytest.approx(75.0)
  assert r['mean_accuracy'] == pytest.approx(75.0)
  assert r['fwIoU'] == pytest.approx(0.5 * 50 + 0.5 * 200 / 3)
  assert r['num_pixels'] == 4
  assert r['num_classes_present'] == 2


def test_metrics_class_predicted_but_absent_from_gt_counts_as_zero():
  gt = np.array([[0, 0, 0, 0]])
  pred = np.array([[0, 0, 0, 2]])
  r = M.segmentation_metrics(M.confusion_matrix_np(pred, gt, 3))
  assert r['per_class_iou']['class_0'] == pytest.approx(75.0)
  assert math.isnan(r['per_class_iou']['class_1'])
  assert r['per_class_iou']['class_2'] == 0.0
  assert r['mIoU'] == pytest.approx(37.5)
  assert math.isnan(r['per_class_accuracy']['class_2'])
  assert r['mean_accuracy'] == pytest.approx(75.0)


def test_metrics_perfect_and_empty():
  gt = np.array([[0, 1], [2, 255]])
  r = M.segmentation_metrics(M.confusion_matrix_np(gt, gt, 3))
  assert r['mIoU'] == 100.0 and r['pixel_accuracy'] == 100.0 and r['num_pixels'] == 3
  empty = M.segmentation_metrics(np.zeros((2, 2), np.int64))
  assert math.isnan(empty['mIoU']) and empty['num_pixels'] == 0
  with pytest.raises(ValueError):
    M.segmentation_metrics(np.zeros((2, 2)), ['only_one'])


# ------------------------------------------------------------------------------------- boundary IoU


def _brute_boundary(mask, d):
  h, w = mask.shape
  padded = np.pad(mask, d, constant_values=False)
  eroded = np.ones_like(mask)
  for dy in range(2 * d + 1):
    for dx in range(2 * d + 1):
      eroded &= padded[dy : dy + h, dx : dx + w]
  return mask & ~eroded


def test_mask_to_boundary_matches_brute_force():
  square = np.zeros((30, 30), bool)
  square[10:20, 10:20] = True
  band = M.mask_to_boundary(square, 1)
  assert band.sum() == 100 - 64  # one-pixel ring of a 10x10 square
  rng = np.random.default_rng(2)
  blob = rng.random((25, 31)) < 0.6
  for d in (1, 2, 4):
    np.testing.assert_array_equal(M.mask_to_boundary(blob, d), _brute_boundary(blob, d))
  # A mask covering the whole image has a band along the image border.
  full = M.mask_to_boundary(np.ones((10, 12), bool), 2)
  assert full.sum() == 10 * 12 - 6 * 8


def test_boundary_dilation():
  assert M.boundary_dilation(500, 500) == round(0.02 * math.hypot(500, 500))
  assert M.boundary_dilation(10, 10) == 1  # at least one pixel


def _two_class_image():
  gt = np.zeros((60, 80), np.uint8)
  gt[15:45, 20:50] = 1
  gt[0:5, 70:80] = 255
  return gt


def test_boundary_iou_perfect_and_shifted():
  gt = _two_class_image()
  b = M.BoundaryIoU(2)
  b.update(gt, gt)
  r = b.compute(['bg', 'fg'])
  assert r['per_class_boundary_iou']['fg'] == pytest.approx(100.0)
  assert r['mBoundaryIoU'] == pytest.approx(100.0)

  shifted = np.zeros_like(gt)
  shifted[18:48, 24:54] = 1  # the object moved by (3, 4) pixels
  b2 = M.BoundaryIoU(2)
  b2.update(shifted, gt)
  r2 = b2.compute(['bg', 'fg'])
  assert 0.0 < r2['per_class_boundary_iou']['fg'] < 90.0
  # Boundary IoU is stricter than mask IoU for the same shift.
  mask_iou = M.segmentation_metrics(M.confusion_matrix_np(shifted, gt, 2))['per_class_iou'][
    'class_1'
  ]
  assert r2['per_class_boundary_iou']['fg'] < mask_iou


def test_boundary_iou_ignores_ignored_pixels_and_batches():
  gt = _two_class_image()
  pred = gt.copy()
  pred[gt == 255] = 1  # anything predicted on ignored pixels must not matter
  inter, union = M.boundary_intersection_union(np.where(gt == 255, 0, gt), gt, 2)
  i2, u2 = M.boundary_intersection_union(np.stack([pred, pred]), np.stack([gt, gt]), 2)
  np.testing.assert_array_equal(inter, union)
  assert union.min() > 0
  np.testing.assert_array_equal(i2, 2 * inter)
  np.testing.assert_array_equal(u2, 2 * union)
  assert M.boundary_iou_metrics(i2, u2)['mBoundaryIoU'] == pytest.approx(100.0)


# ------------------------------------------------------------------------------------------- oracle


def test_oracle_picks_max_iou_not_majority():
  gt = np.zeros((10, 20), np.int64)  # class 0 everywhere except ...
  gt[0, 0:4] = 2  # ... a 4-pixel object of class 2
  gt[9, :] = 255  # an ignored row
  groups = np.zeros_like(gt)
  groups[0, 0:10] = 1  # group 1: the 4 class-2 pixels + 6 class-0 pixels (majority class 0)
  groups[9, :] = 2  # group 2 lies entirely on ignored pixels
  labels = M.oracle_group_labels(groups, gt, num_classes=3, num_groups=4, empty_label=0)
  # group 1: IoU with class 2 = 4/10, with class 0 = 6/(10+180-6) -> class 2 despite the majority.
  np.testing.assert_array_equal(labels, [0, 2, 0, 0])
  relabelled = M.oracle_relabel(groups, gt, num_classes=3)
  assert relabelled.shape == gt.shape
  np.testing.assert_array_equal(relabelled[0, :10], 2)
  np.testing.assert_array_equal(relabelled[1:9], 0)
  r = M.segmentation_metrics(M.confusion_matrix_np(relabelled, gt, 3))
  assert r['per_class_iou']['class_2'] == pytest.approx(40.0)
  # class 0: 176 GT pixels, 170 predicted, all correct.
  assert r['per_class_iou']['class_0'] == pytest.approx(170 / 176 * 100)


def test_oracle_perfect_grouping_gives_perfect_score():
  rng = np.random.default_rng(3)
  gt = rng.integers(0, 4, size=(12, 12))
  groups = (gt + 1) * 3 % 5  # a bijective renaming of the classes
  pred = M.oracle_relabel(groups, gt, num_classes=4)
  np.testing.assert_array_equal(pred, gt)


# ---------------------------------------------------------------------------------------- score CLI


def _voc_palette():
  pal = []
  for i in range(256):
    r = g = b = 0
    c = i
    for j in range(8):
      r |= ((c >> 0) & 1) << (7 - j)
      g |= ((c >> 1) & 1) << (7 - j)
      b |= ((c >> 2) & 1) << (7 - j)
      c >>= 3
    pal += [r, g, b]
  return pal


def _save_palette(arr, path):
  arr = np.ascontiguousarray(arr, dtype=np.uint8)
  img = Image.frombytes('P', (arr.shape[1], arr.shape[0]), arr.tobytes())
  img.putpalette(_voc_palette())
  img.save(path)


def _make_score_dirs(tmp_path, n_classes=4):
  rng = np.random.default_rng(4)
  gt_dir, pred_dir = tmp_path / 'gt', tmp_path / 'pred'
  gt_dir.mkdir()
  pred_dir.mkdir()
  gts, preds = [], []
  for i, (h, w) in enumerate([(20, 30), (25, 18), (16, 16)]):
    gt = rng.integers(0, n_classes, size=(h, w)).astype(np.uint8)
    gt[:2] = 255
    pred = gt.copy()
    flip = rng.random((h, w)) < 0.3
    pred[flip] = rng.integers(0, n_classes, size=int(flip.sum()))
    pred[gt == 255] = 0
    # Ground truth as palette PNGs, predictions as grey PNGs (and one the other way round).
    if i < 2:
      _save_palette(gt, gt_dir / f'img{i}.png')
      Image.fromarray(pred).save(pred_dir / f'img{i}.png')
    else:
      Image.fromarray(gt).save(gt_dir / f'img{i}.png')
      _save_palette(pred, pred_dir / f'img{i}.png')
    gts.append(gt)
    preds.append(pred)
  return gt_dir, pred_dir, gts, preds


def test_palette_png_reads_indices(tmp_path):
  arr = np.array([[0, 1, 15], [255, 3, 20]], np.uint8)
  _save_palette(arr, tmp_path / 'x.png')
  with Image.open(tmp_path / 'x.png') as im:
    assert im.mode == 'P'
  from evaluation.datasets import read_label

  np.testing.assert_array_equal(read_label(tmp_path / 'x.png'), arr)


def test_score_cli_end_to_end(tmp_path, capsys):
  gt_dir, pred_dir, gts, preds = _make_score_dirs(tmp_path)
  names_file = tmp_path / 'classes.txt'
  names_file.write_text('background\ncat\ndog\nbird\n')
  out = tmp_path / 'res' / 'result.json'
  rc = score.main(
    [
      '--pred_dir',
      str(pred_dir),
      '--gt_dir',
      str(gt_dir),
      '--num_classes',
      '4',
      '--class_names',
      str(names_file),
      '--output',
      str(out),
    ]
  )
  assert rc == 0
  printed = capsys.readouterr().out
  assert 'mIoU' in printed and 'dog' in printed
  res = json.loads(out.read_text())
  conf = sum(M.confusion_matrix_np(p, g, 4) for p, g in zip(preds, gts))
  expected = M.segmentation_metrics(conf, ['background', 'cat', 'dog', 'bird'])
  assert res['num_images'] == 3
  assert res['confusion_matrix'] == conf.tolist()
  assert res['mIoU'] == pytest.approx(expected['mIoU'])
  assert res['pixel_accuracy'] == pytest.approx(expected['pixel_accuracy'])
  assert res['per_class_iou']['dog'] == pytest.approx(expected['per_class_iou']['dog'])
  assert 0 < res['boundary_iou']['mBoundaryIoU'] <= 100
  assert set(res['boundary_iou']['per_class_boundary_iou']) == {'background', 'cat', 'dog', 'bird'}


def test_score_nan_is_null_and_default_names(tmp_path):
  gt_dir, pred_dir, _, _ = _make_score_dirs(tmp_path)
  out = tmp_path / 'r.json'
  assert (
    score.main(
      [
        '--pred_dir',
        str(pred_dir),
        '--gt_dir',
        str(gt_dir),
        '--num_classes',
        '6',
        '--output',
        str(out),
        '--no_boundary',
      ]
    )
    == 0
  )
  res = json.loads(out.read_text())
  assert res['per_class_iou']['class_5'] is None  # absent everywhere: NaN -> null
  assert res['boundary_iou'] is None


def test_score_errors_list_offending_stems(tmp_path, capsys):
  gt_dir, pred_dir, _, _ = _make_score_dirs(tmp_path)
  args = ['--pred_dir', str(pred_dir), '--gt_dir', str(gt_dir), '--num_classes', '4']
  (pred_dir / 'img1.png').unlink()
  with pytest.raises(score.ScoreError, match='img1'):
    score.score_dirs(pred_dir, gt_dir, 4)
  assert score.main(args) == 2
  assert 'img1' in capsys.readouterr().err

  Image.fromarray(np.zeros((7, 9), np.uint8)).save(pred_dir / 'img1.png')  # wrong size
  with pytest.raises(score.ScoreError, match=r'img1 \(pred 9x7, gt 18x25\)'):
    score.score_dirs(pred_dir, gt_dir, 4)

  Image.fromarray(np.full((25, 18), 9, np.uint8)).save(
    pred_dir / 'img1.png'
  )  # value 9 >= 4 classes
  with pytest.raises(score.ScoreError, match='img1'):
    score.score_dirs(pred_dir, gt_dir, 4)


def test_score_module_subprocess(tmp_path):
  gt_dir, pred_dir, _, _ = _make_score_dirs(tmp_path)
  out = tmp_path / 'r.json'
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'evaluation.score',
      '--pred_dir',
      str(pred_dir),
      '--gt_dir',
      str(gt_dir),
      '--num_classes',
      '4',
      '--output',
      str(out),
    ],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stderr
  res = json.loads(out.read_text())
  for key in (
    'mIoU',
    'pixel_accuracy',
    'per_class_iou',
    'num_images',
    'confusion_matrix',
    'boundary_iou',
  ):
    assert key in res
