"""Semantic-segmentation metrics: confusion matrix, mIoU family, boundary IoU and the oracle
relabelling.

Conventions
-----------
* Confusion matrix ``conf`` has shape ``[C, C]``; **rows are ground truth, columns are prediction**:
  ``conf[g, p]`` counts pixels of ground-truth class ``g`` predicted as ``p``.
* A pixel is counted only if its ground truth is in ``[0, C)`` and not ``ignore_index``, its
  prediction is in ``[0, C)``, and (when given) its ``valid`` flag is true. Out-of-range predictions
  are therefore *dropped*, not counted as errors; callers that can produce them must check (the
  ``evaluation.score`` CLI refuses such prediction maps).
* All reported scores are **percentages** (0-100), like the tables of the GroupViT paper.
* Classes absent from both ground truth and prediction over the whole dataset get IoU ``NaN`` and
  are left out of the means (mmsegmentation's ``nanmean`` behaviour).

Overflow
--------
A single image batch has far fewer than 2**31 pixels, so the on-device per-batch counts of
:func:`confusion_matrix_update` are safe in int32. A dataset is not: PASCAL Context val (5105 images
of about 500x375) has ~1e9 pixels and COCO val2017 (5000 images of about 640x480) ~1.5e9, so a
background cell, and certainly ``conf.sum()``, can come close to or pass int32's 2,147,483,647.
Dataset-level accumulation should therefore be in int64: :class:`ConfusionMatrix` sums each batch's
int32 counts into an int64 numpy array on the host (a ``C x C`` transfer per batch, negligible).
:func:`confusion_matrix_update` adds into whatever dtype ``conf`` has, so an int64 ``conf`` also
works when ``jax_enable_x64`` is on.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from groupvit_jax.ops.confusion import confusion_matrix_update

__all__ = [
  'confusion_matrix_update',
  'confusion_matrix_np',
  'ConfusionMatrix',
  'segmentation_metrics',
  'default_class_names',
  'boundary_dilation',
  'mask_to_boundary',
  'boundary_intersection_union',
  'boundary_iou_metrics',
  'BoundaryIoU',
  'oracle_group_labels',
  'oracle_relabel',
  'format_table',
  'json_safe',
]


# --------------------------------------------------------------------------------------------------
# Confusion matrix
# --------------------------------------------------------------------------------------------------


def confusion_matrix_np(
  pred: np.ndarray,
  gt: np.ndarray,
  num_classes: int,
  ignore_index: Optional[int] = 255,
  valid: Optional[np.ndarray] = None,
) -> np.ndarray:
  """Host (numpy) confusion matrix with the same skipping rules as :func:`confusion_matrix_update`.

  Args:
    pred: integer array of any shape (e.g. ``[H, W]`` or ``[B, H, W]``).
    gt: integer array, same shape as ``pred``.
    num_classes: ``C``.
    ignore_index: ground-truth value to skip (``None``: none).
    valid: optional boolean array of the same shape; ``False`` pixels are skipped.

  Returns:
    int64 ``[C, C]`` counts, rows = ground truth, columns = prediction.
  """
  pred = np.asarray(pred)
  gt = np.asarray(gt)
  if pred.shape != gt.shape:
    raise ValueError(f'pred shape {pred.shape} != gt shape {gt.shape}')
  pred = pred.astype(np.int64, copy=False)
  gt = gt.astype(np.int64, copy=False)
  keep = (gt >= 0) & (gt < num_classes) & (pred >= 0) & (pred < num_classes)
  if ignore_index is not None:
    keep &= gt != ignore_index
  if valid is not None:
    valid = np.asarray(valid, dtype=bool)
    if valid.shape != gt.shape:
      raise ValueError(f'valid shape {valid.shape} != gt shape {gt.shape}')
    keep &= valid
  flat = gt[keep] * num_classes + pred[keep]
  return (
    np.bincount(flat, minlength=num_classes * num_classes)
    .astype(np.int64)
    .reshape(num_classes, num_classes)
  )


class ConfusionMatrix:
  """Dataset-level confusion-matrix accumulator: per-batch counts in JAX, running sum in int64 on
  host.

  Example::

    cm = ConfusionMatrix(num_classes=21)
    for pred, gt in batches:          # [B, H, W] each
        cm.update(pred, gt)
    results = segmentation_metrics(cm.matrix, class_names)
  """

  def __init__(self, num_classes: int, ignore_index: Optional[int] = 255):
    self.num_classes = int(num_classes)
    self.ignore_index = ignore_index
    self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

  def update(self, pred, gt, valid=None) -> None:
    """Adds a ``[B, H, W]`` (or ``[H, W]``) batch using the jitted JAX kernel.

    The kernel is compiled once per input shape: for images of varying sizes pad them to a fixed
    shape and pass ``valid`` (``False`` on padding), or use :meth:`update_np`.
    """
    zeros = jnp.zeros((self.num_classes, self.num_classes), jnp.int32)
    batch = confusion_matrix_update(
      zeros, pred, gt, num_classes=self.num_classes, ignore_index=self.ignore_index, valid=valid
    )
    self.matrix += np.asarray(batch, dtype=np.int64)

  def update_np(self, pred, gt, valid=None) -> None:
    """Adds a batch with the numpy implementation (no device round trip)."""
    self.matrix += confusion_matrix_np(pred, gt, self.num_classes, self.ignore_index, valid)

  def reset(self) -> None:
    self.matrix[...] = 0

  def compute(self, class_names: Optional[Sequence[str]] = None) -> dict:
    """:func:`segmentation_metrics` of the accumulated matrix."""
    return segmentation_metrics(self.matrix, class_names)


# --------------------------------------------------------------------------------------------------
# Scores from the confusion matrix
# --------------------------------------------------------------------------------------------------


def default_class_names(num_classes: int) -> list[str]:
  """``['class_0', ..., 'class_{C-1}']``."""
  return [f'class_{i}' for i in range(num_classes)]


def nanmean(x: np.ndarray) -> float:
  """Mean over the non-NaN entries of `x` (any shape); NaN when every entry is NaN."""
  x = np.asarray(x, dtype=np.float64)
  finite = ~np.isnan(x)
  return float(x[finite].mean()) if finite.any() else float('nan')


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  num = np.asarray(num, np.float64)
  den = np.asarray(den, np.float64)
  out = np.full(num.shape, np.nan)
  np.divide(num, den, out=out, where=den > 0)
  return out


def segmentation_metrics(conf: np.ndarray, class_names: Optional[Sequence[str]] = None) -> dict:
  """mIoU and related scores from a confusion matrix, all in percent.

  Args:
    conf: ``[C, C]`` counts (rows = ground truth, columns = prediction); any integer dtype or a jax
      array (converted to int64 on host).
    class_names: ``C`` names (default ``class_0..``).

  Returns:
    dict with
      ``mIoU``: mean IoU over classes present in ground truth or prediction (NaN IoUs excluded);
      ``per_class_iou``: ``{name: IoU}``, NaN for classes absent from both GT and prediction;
      ``pixel_accuracy``: correct / counted pixels;
      ``mean_accuracy``: mean over classes present in GT of per-class recall;
      ``per_class_accuracy``: ``{name: recall}``, NaN when the class is absent from GT;
      ``fwIoU``: IoU weighted by GT class frequency;
      ``num_pixels``: number of counted pixels (int);
      ``num_classes_present``: number of classes with a non-NaN IoU.
  """
  conf = np.asarray(conf).astype(np.int64)
  if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
    raise ValueError(f'conf must be [C, C], got {conf.shape}')
  c = conf.shape[0]
  names = list(class_names) if class_names is not None else default_class_names(c)
  if len(names) != c:
    raise ValueError(f'{len(names)} class names for a {c}x{c} confusion matrix')
  inter = np.diag(conf).astype(np.float64)
  area_gt = conf.sum(axis=1).astype(np.float64)
  area_pred = conf.sum(axis=0).astype(np.float64)
  union = area_gt + area_pred - inter
  total = float(conf.sum())
  iou = _ratio(inter, union) * 100.0
  acc = _ratio(inter, area_gt) * 100.0
  if total > 0:
    freq = area_gt / total
    fw = float(np.sum(freq[union > 0] * iou[union > 0]))
    pix_acc = float(inter.sum() / total * 100.0)
  else:
    fw = float('nan')
    pix_acc = float('nan')
  return {
    'mIoU': nanmean(iou),
    'per_class_iou': {n: float(v) for n, v in zip(names, iou)},
    'pixel_accuracy': pix_acc,
    'mean_accuracy': nanmean(acc),
    'per_class_accuracy': {n: float(v) for n, v in zip(names, acc)},
    'fwIoU': fw,
    'num_pixels': int(total),
    'num_classes_present': int(np.sum(~np.isnan(iou))),
  }


# --------------------------------------------------------------------------------------------------
# Boundary IoU (Cheng et al., "Boundary IoU: Improving Object-Centric Image Segmentation
# Evaluation", CVPR 2021), per class for semantic segmentation.
# --------------------------------------------------------------------------------------------------


def boundary_dilation(height: int, width: int, dilation_ratio: float = 0.02) -> int:
  """Band width ``d`` in pixels: ``max(1, round(dilation_ratio * sqrt(H^2 + W^2)))``."""
  return max(1, int(round(dilation_ratio * math.hypot(height, width))))


def mask_to_boundary(mask: np.ndarray, dilation: int) -> np.ndarray:
  """Inner boundary band of a binary mask.

  A pixel is in the band if it is in ``mask`` and some pixel within Chebyshev distance ``dilation``
  (a ``(2d+1) x (2d+1)`` square) is outside the mask; the area outside the image counts as outside
  the mask, so a mask touching the image border has a band along it (as in Cheng et al.'s reference,
  which pads with zeros before eroding).

  Args:
    mask: boolean ``[H, W]``.
    dilation: band width ``d >= 1`` in pixels.

  Returns:
    boolean ``[H, W]`` band ``mask & ~erode(mask, d)``.
  """
  mask = np.asarray(mask, dtype=bool)
  if mask.ndim != 2:
    raise ValueError(f'mask must be [H, W], got {mask.shape}')
  d = int(dilation)
  if d < 1:
    raise ValueError(f'dilation must be >= 1, got {dilation}')
  h, w = mask.shape
  k = 2 * d + 1
  padded = np.pad(mask, d, constant_values=False).astype(np.int32)
  # Summed-area table with a leading zero row/column: window sums in O(HW) for any d.
  sat = np.zeros((h + 2 * d + 1, w + 2 * d + 1), np.int32)
  sat[1:, 1:] = padded.cumsum(axis=0).cumsum(axis=1)
  window = sat[k:, k:] - sat[:-k, k:] - sat[k:, :-k] + sat[:-k, :-k]
  eroded = window == k * k
  return mask & ~eroded


def _as_batch(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim == 2:
    return x[None]
  if x.ndim != 3:
    raise ValueError(f'expected [H, W] or [B, H, W], got shape {x.shape}')
  return x


def boundary_intersection_union(
  pred: np.ndarray,
  gt: np.ndarray,
  num_classes: int,
  dilation_ratio: float = 0.02,
  ignore_index: Optional[int] = 255,
  valid: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Per-class boundary intersection and union pixel counts of one image (or a batch of images).

  Pixels the confusion matrix does not count (ground truth ``ignore_index`` or out of range, or
  ``valid`` false) are first removed from *both* maps, i.e. belong to no class in either; then for
  each class ``c`` the boundary bands (width :func:`boundary_dilation` of the image diagonal, see
  :func:`mask_to_boundary`) of ``gt == c`` and ``pred == c`` are intersected and united. Hence what
  is predicted on ignored pixels never matters, and a prediction equal to the ground truth on every
  counted pixel scores 100. (Removed pixels do border the class masks, so e.g. VOC's ignore ring
  around an object places the object's band just inside the ring, for both maps alike.) Summing the
  counts over a dataset and dividing gives the dataset-level boundary IoU of each class
  (:func:`boundary_iou_metrics`).

  Args:
    pred: integer ``[H, W]`` or ``[B, H, W]`` at the ground truth's resolution, *unpadded* (the band
      width comes from the array's ``H, W``).
    gt: integer, same shape.
    num_classes: ``C``.
    dilation_ratio: band width as a fraction of the image diagonal (Cheng et al.'s default 0.02).
    ignore_index: ground-truth value whose pixels are not counted (``None``: none).
    valid: optional boolean mask of the same shape; ``False`` pixels are not counted.

  Returns:
    ``(intersection, union)``, each int64 ``[C]``.
  """
  pred_b = _as_batch(pred)
  gt_b = _as_batch(gt)
  if pred_b.shape != gt_b.shape:
    raise ValueError(f'pred shape {np.shape(pred)} != gt shape {np.shape(gt)}')
  valid_b = None if valid is None else _as_batch(np.asarray(valid, dtype=bool))
  if valid_b is not None and valid_b.shape != gt_b.shape:
    raise ValueError(f'valid shape {np.shape(valid)} != gt shape {np.shape(gt)}')
  inter = np.zeros(num_classes, np.int64)
  union = np.zeros(num_classes, np.int64)
  for i in range(gt_b.shape[0]):
    p = pred_b[i].astype(np.int64, copy=False)
    g = gt_b[i].astype(np.int64, copy=False)
    counted = (g >= 0) & (g < num_classes)
    if ignore_index is not None:
      counted &= g != ignore_index
    if valid_b is not None:
      counted &= valid_b[i]
    g = np.where(counted, g, -1)
    p = np.where(counted, p, -1)
    d = boundary_dilation(g.shape[0], g.shape[1], dilation_ratio)
    present = np.union1d(np.unique(g[counted]), np.unique(p[counted]))
    for c in present:
      if c < 0 or c >= num_classes:
        continue
      gb = mask_to_boundary(g == c, d)
      pb = mask_to_boundary(p == c, d)
      inter[c] += np.count_nonzero(gb & pb)
      union[c] += np.count_nonzero(gb | pb)
  return inter, union


def boundary_iou_metrics(
  intersection: np.ndarray, union: np.ndarray, class_names: Optional[Sequence[str]] = None
) -> dict:
  """Dataset-level boundary IoU from accumulated counts, in percent.

  Args:
    intersection: ``[C]`` summed boundary intersections.
    union: ``[C]`` summed boundary unions.
    class_names: ``C`` names (default ``class_0..``).

  Returns:
    dict with ``mBoundaryIoU`` (mean over classes with a non-empty union) and
    ``per_class_boundary_iou`` (``{name: IoU}``, NaN where the union is empty).
  """
  intersection = np.asarray(intersection, np.int64)
  union = np.asarray(union, np.int64)
  names = list(class_names) if class_names is not None else default_class_names(len(union))
  if len(names) != len(union):
    raise ValueError(f'{len(names)} class names for {len(union)} classes')
  iou = _ratio(intersection, union) * 100.0
  return {
    'mBoundaryIoU': nanmean(iou),
    'per_class_boundary_iou': {n: float(v) for n, v in zip(names, iou)},
  }


class BoundaryIoU:
  """Dataset-level boundary IoU accumulator (host/numpy)."""

  def __init__(
    self, num_classes: int, dilation_ratio: float = 0.02, ignore_index: Optional[int] = 255
  ):
    self.num_classes = int(num_classes)
    self.dilation_ratio = float(dilation_ratio)
    self.ignore_index = ignore_index
    self.intersection = np.zeros(self.num_classes, np.int64)
    self.union = np.zeros(self.num_classes, np.int64)

  def update(self, pred, gt, valid=None) -> None:
    """Adds one ``[H, W]`` image or a ``[B, H, W]`` batch of same-size unpadded images."""
    i, u = boundary_intersection_union(
      pred, gt, self.num_classes, self.dilation_ratio, self.ignore_index, valid
    )
    self.intersection += i
    self.union += u

  def compute(self, class_names: Optional[Sequence[str]] = None) -> dict:
    """:func:`boundary_iou_metrics` of the accumulated counts."""
    return boundary_iou_metrics(self.intersection, self.union, class_names)


# --------------------------------------------------------------------------------------------------
# Oracle relabelling of groups (GroupViT paper, Table C.3)
# --------------------------------------------------------------------------------------------------


def oracle_group_labels(
  group_ids: np.ndarray,
  gt: np.ndarray,
  num_classes: int,
  ignore_index: Optional[int] = 255,
  num_groups: Optional[int] = None,
  empty_label: int = 0,
) -> np.ndarray:
  """Ground-truth class that maximises each group's IoU with that class, for one image.

  IoU of group ``g`` and class ``c`` is ``|g & c| / |g | c|`` counted over pixels whose ground truth
  is in ``[0, C)`` and not ``ignore_index``. Ties go to the lower class index. A group with no
  counted pixel (absent, or entirely on ignored pixels) gets ``empty_label``; it cannot change any
  metric.

  Args:
    group_ids: integer ``[H, W]`` group index per pixel, values in ``[0, G)``.
    gt: integer ``[H, W]`` ground truth.
    num_classes: ``C``.
    ignore_index: ground-truth value to skip.
    num_groups: ``G`` (default ``group_ids.max() + 1``).
    empty_label: label for groups without counted pixels.

  Returns:
    int32 ``[G]`` class per group.
  """
  group_ids = np.asarray(group_ids).astype(np.int64)
  gt = np.asarray(gt).astype(np.int64)
  if group_ids.shape != gt.shape or group_ids.ndim != 2:
    raise ValueError(f'group_ids {group_ids.shape} and gt {gt.shape} must both be [H, W]')
  if group_ids.size and group_ids.min() < 0:
    raise ValueError('group ids must be >= 0')
  g = (
    int(num_groups)
    if num_groups is not None
    else (int(group_ids.max()) + 1 if group_ids.size else 0)
  )
  if group_ids.size and group_ids.max() >= g:
    raise ValueError(f'group id {group_ids.max()} >= num_groups {g}')
  counted = (gt >= 0) & (gt < num_classes)
  if ignore_index is not None:
    counted &= gt != ignore_index
  joint = (
    np.bincount(group_ids[counted] * num_classes + gt[counted], minlength=g * num_classes)
    .reshape(g, num_classes)
    .astype(np.float64)
  )
  area_group = joint.sum(axis=1, keepdims=True)
  area_class = joint.sum(axis=0, keepdims=True)
  union = area_group + area_class - joint
  iou = np.divide(joint, union, out=np.zeros_like(joint), where=union > 0)
  labels = np.argmax(iou, axis=1).astype(np.int32)
  labels[area_group[:, 0] == 0] = empty_label
  return labels


def oracle_relabel(
  group_ids: np.ndarray,
  gt: np.ndarray,
  num_classes: int,
  ignore_index: Optional[int] = 255,
  num_groups: Optional[int] = None,
  empty_label: int = 0,
) -> np.ndarray:
  """Oracle prediction of one image: every pixel gets its group's best-IoU ground-truth class.

  Feed the result to the same confusion matrix as a normal prediction to get the oracle mIoU.

  Args:
    group_ids: integer ``[H, W]`` group index per pixel (e.g. argmax of the final grouping
      attention, resized to the ground truth's resolution).
    gt, num_classes, ignore_index, num_groups, empty_label: as in :func:`oracle_group_labels`.

  Returns:
    int32 ``[H, W]`` relabelled prediction.
  """
  labels = oracle_group_labels(group_ids, gt, num_classes, ignore_index, num_groups, empty_label)
  return labels[np.asarray(group_ids).astype(np.int64)]


# --------------------------------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------------------------------


def _fmt(v: Optional[float]) -> str:
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return 'nan'
  return f'{v:.2f}'


def format_table(
  per_class: Mapping[str, Mapping[str, Optional[float]]],
  summary: Optional[Mapping[str, Optional[float]]] = None,
) -> str:
  """Plain-text table.

  Args:
    per_class: ``{column_title: {class_name: value}}``; every column must share the class names.
    summary: optional ``{name: value}`` lines printed under the table.
  """
  columns = list(per_class)
  names: Iterable[str] = list(next(iter(per_class.values()))) if columns else []
  width = max([len('class')] + [len(n) for n in names])
  lines = ['  '.join(['class'.ljust(width)] + [c.rjust(max(8, len(c))) for c in columns])]
  for n in names:
    row = [n.ljust(width)] + [_fmt(per_class[c].get(n)).rjust(max(8, len(c))) for c in columns]
    lines.append('  '.join(row))
  if summary:
    lines.append('')
    for k, v in summary.items():
      lines.append(f'{k}: {_fmt(v) if isinstance(v, float) or v is None else v}')
  return '\n'.join(lines)


def json_safe(x):
  """`x` (nested dicts / lists of numbers) with float NaNs replaced by None, for strict JSON.

  NaN marks a class absent from both prediction and ground truth; JSON has no NaN.
  """
  if isinstance(x, float) and math.isnan(x):
    return None
  if isinstance(x, dict):
    return {k: json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [json_safe(v) for v in x]
  return x
