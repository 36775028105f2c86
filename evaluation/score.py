"""Scores a folder of predicted label PNGs against a folder of ground-truth label PNGs.

Usage::

  python -m evaluation.score --pred_dir P --gt_dir G --num_classes N \
      [--ignore_index 255] [--class_names FILE] [--output RESULT.json]

Files are matched by stem (``<stem><suffix>``; suffixes default to ``.png``, use
``--gt_suffix _instanceTrainIds.png`` for COCO-Object). Palette and grey PNGs are read as indices,
never as colours. Every ground-truth file needs a prediction of the same size; predictions must lie
in
``[0, N)`` and ground truth in ``[0, N)`` or ``ignore_index``; violations are reported with the
offending stems. Scores are percentages; in the JSON, NaN (class absent from both GT and prediction)
is ``null``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from evaluation.datasets import read_class_names, read_label
from evaluation.metrics import (
  BoundaryIoU,
  confusion_matrix_np,
  default_class_names,
  format_table,
  json_safe,
  segmentation_metrics,
)

__all__ = ['ScoreError', 'match_files', 'score_dirs', 'main']

_MAX_LISTED = 20


class ScoreError(ValueError):
  """Inputs that cannot be scored (missing predictions, size mismatches, out-of-range values)."""


def _listed(items: Sequence[str]) -> str:
  shown = ', '.join(items[:_MAX_LISTED])
  return shown + (f' (+{len(items) - _MAX_LISTED} more)' if len(items) > _MAX_LISTED else '')


def _by_stem(folder: Path, suffix: str) -> dict[str, Path]:
  if not folder.is_dir():
    raise FileNotFoundError(f'folder not found: {folder}')
  out = {}
  for e in os.scandir(folder):
    if e.name.endswith(suffix) and len(e.name) > len(suffix):
      out[e.name[: -len(suffix)]] = Path(e.path)
  return out


def match_files(
  pred_dir: os.PathLike, gt_dir: os.PathLike, pred_suffix: str = '.png', gt_suffix: str = '.png'
) -> tuple[list[str], list[Path], list[Path], list[str]]:
  """Pairs ground-truth files with predictions by stem.

  Returns:
    ``(stems, pred_paths, gt_paths, extra_pred_stems)`` sorted by stem.

  Raises:
    ScoreError: no ground truth, or ground-truth stems without a prediction (all listed).
  """
  gts = _by_stem(Path(gt_dir), gt_suffix)
  preds = _by_stem(Path(pred_dir), pred_suffix)
  if not gts:
    raise ScoreError(f'no ground-truth files *{gt_suffix} in {gt_dir}')
  stems = sorted(gts)
  missing = [s for s in stems if s not in preds]
  if missing:
    raise ScoreError(
      f'{len(missing)} of {len(stems)} ground-truth files have no prediction '
      f'{pred_dir}/<stem>{pred_suffix}: {_listed(missing)}'
    )
  extra = sorted(set(preds) - set(gts))
  return stems, [preds[s] for s in stems], [gts[s] for s in stems], extra


def _size(path: Path) -> tuple[int, int]:
  with Image.open(path) as img:
    return img.size


def score_dirs(
  pred_dir: os.PathLike,
  gt_dir: os.PathLike,
  num_classes: int,
  ignore_index: int = 255,
  class_names: Optional[Sequence[str]] = None,
  pred_suffix: str = '.png',
  gt_suffix: str = '.png',
  boundary: bool = True,
  dilation_ratio: float = 0.02,
) -> dict:
  """Scores every ground-truth PNG of ``gt_dir`` against the same-stem PNG of ``pred_dir``.

  Args:
    pred_dir, gt_dir: folders of label PNGs (palette or grey, values = class ids).
    num_classes: ``N``.
    ignore_index: ground-truth value excluded from the scores.
    class_names: ``N`` names (default ``class_0..``).
    pred_suffix, gt_suffix: file-name endings that follow the shared stem.
    boundary: also compute boundary IoU (slower: per class and image).
    dilation_ratio: boundary band width as a fraction of the image diagonal.

  Returns:
    JSON-ready dict (NaN kept as float NaN here): ``mIoU``, ``pixel_accuracy``, ``mean_accuracy``,
    ``fwIoU``, ``per_class_iou``, ``per_class_accuracy``, ``num_images``, ``num_pixels``,
    ``num_classes``, ``class_names``, ``ignore_index``, ``confusion_matrix`` (``[N][N]``, rows =
    GT),
    ``boundary_iou`` (``{mBoundaryIoU, per_class_boundary_iou, dilation_ratio}``, or ``None``),
    ``extra_predictions`` (stems without ground truth, ignored).

  Raises:
    ScoreError: missing predictions, size mismatches, or out-of-range values (offending stems
      listed).
  """
  names = list(class_names) if class_names is not None else default_class_names(num_classes)
  if len(names) != num_classes:
    raise ScoreError(f'{len(names)} class names given for num_classes={num_classes}')
  stems, pred_paths, gt_paths, extra = match_files(pred_dir, gt_dir, pred_suffix, gt_suffix)

  mismatched = []
  for s, p, g in zip(stems, pred_paths, gt_paths):
    ps, gs = _size(p), _size(g)
    if ps != gs:
      mismatched.append(f'{s} (pred {ps[0]}x{ps[1]}, gt {gs[0]}x{gs[1]})')
  if mismatched:
    raise ScoreError(
      f'{len(mismatched)} prediction(s) differ in size from the ground truth: {_listed(mismatched)}'
    )

  conf = np.zeros((num_classes, num_classes), np.int64)
  biou = BoundaryIoU(num_classes, dilation_ratio, ignore_index) if boundary else None
  bad_pred, bad_gt = [], []
  for s, p, g in zip(stems, pred_paths, gt_paths):
    pred = read_label(p).astype(np.int64)
    gt = read_label(g).astype(np.int64)
    out_of_range = (pred < 0) | (pred >= num_classes)
    if out_of_range.any():
      bad_pred.append(f'{s} (values {sorted(np.unique(pred[out_of_range]).tolist())[:5]})')
      continue
    gt_bad = ((gt < 0) | (gt >= num_classes)) & (gt != ignore_index)
    if gt_bad.any():
      bad_gt.append(f'{s} (values {sorted(np.unique(gt[gt_bad]).tolist())[:5]})')
      continue
    conf += confusion_matrix_np(pred, gt, num_classes, ignore_index)
    if biou is not None:
      biou.update(pred, gt)
  errors = []
  if bad_pred:
    errors.append(
      f'{len(bad_pred)} prediction(s) have values outside [0, {num_classes}): {_listed(bad_pred)}'
    )
  if bad_gt:
    errors.append(
      f'{len(bad_gt)} ground-truth map(s) have values outside [0, {num_classes}) that are not '
      f'ignore_index={ignore_index}: {_listed(bad_gt)}'
    )
  if errors:
    raise ScoreError('; '.join(errors))

  m = segmentation_metrics(conf, names)
  result = {
    'mIoU': m['mIoU'],
    'pixel_accuracy': m['pixel_accuracy'],
    'mean_accuracy': m['mean_accuracy'],
    'fwIoU': m['fwIoU'],
    'per_class_iou': m['per_class_iou'],
    'per_class_accuracy': m['per_class_accuracy'],
    'num_images': len(stems),
    'num_pixels': m['num_pixels'],
    'num_classes': num_classes,
    'class_names': names,
    'ignore_index': ignore_index,
    'confusion_matrix': conf.tolist(),
    'boundary_iou': None,
    'extra_predictions': extra,
  }
  if biou is not None:
    b = biou.compute(names)
    result['boundary_iou'] = {**b, 'dilation_ratio': dilation_ratio}
  return result


def render(result: dict) -> str:
  """Human-readable per-class table and summary of a :func:`score_dirs` result."""
  columns = {'IoU': result['per_class_iou'], 'Acc': result['per_class_accuracy']}
  if result.get('boundary_iou'):
    columns['BoundaryIoU'] = result['boundary_iou']['per_class_boundary_iou']
  summary = {
    'images': result['num_images'],
    'pixels': result['num_pixels'],
    'mIoU': result['mIoU'],
    'pixel accuracy': result['pixel_accuracy'],
    'mean accuracy': result['mean_accuracy'],
    'fwIoU': result['fwIoU'],
  }
  if result.get('boundary_iou'):
    summary['mBoundaryIoU'] = result['boundary_iou']['mBoundaryIoU']
  return format_table(columns, summary)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
    description='Score predicted label PNGs against ground-truth PNGs (mIoU etc. in percent).'
  )
  parser.add_argument('--pred_dir', required=True)
  parser.add_argument('--gt_dir', required=True)
  parser.add_argument('--num_classes', required=True, type=int)
  parser.add_argument('--ignore_index', type=int, default=255)
  parser.add_argument('--class_names', default=None, help='text file, one class name per line')
  parser.add_argument('--output', default=None, help='write the results as JSON here')
  parser.add_argument('--pred_suffix', default='.png')
  parser.add_argument('--gt_suffix', default='.png')
  parser.add_argument('--no_boundary', action='store_true', help='skip boundary IoU')
  parser.add_argument('--boundary_dilation_ratio', type=float, default=0.02)
  args = parser.parse_args(argv)
  try:
    names = read_class_names(args.class_names) if args.class_names else None
    result = score_dirs(
      args.pred_dir,
      args.gt_dir,
      args.num_classes,
      args.ignore_index,
      names,
      args.pred_suffix,
      args.gt_suffix,
      not args.no_boundary,
      args.boundary_dilation_ratio,
    )
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(render(result))
  if result['extra_predictions']:
    print(
      f'note: {len(result["extra_predictions"])} prediction(s) without ground truth were ignored: '
      f'{_listed(result["extra_predictions"])}',
      file=sys.stderr,
    )
  if args.output:
    out = Path(args.output)
    if out.parent and not out.parent.exists():
      out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, 'w', encoding='utf-8') as f:
      json.dump(json_safe(result), f, indent=2, allow_nan=False)
      f.write('\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
