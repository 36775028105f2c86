"""The streaming confusion-matrix update of the zero-shot protocol (rows ground truth, columns
prediction); dataset-level metrics live in `evaluation.metrics`."""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp


@functools.partial(jax.jit, static_argnames=('num_classes', 'ignore_index'))
def confusion_matrix_update(
  conf: jax.Array,
  pred: jax.Array,
  gt: jax.Array,
  num_classes: int,
  ignore_index: Optional[int] = 255,
  valid: Optional[jax.Array] = None,
) -> jax.Array:
  """Adds a batch of predictions to a confusion matrix (jitted; ``num_classes``/``ignore_index``
  static).

  Args:
    conf: ``[C, C]`` integer array (int32, or int64 under ``jax_enable_x64``); rows = ground truth,
      columns = prediction. Sum datasets in int64 (`evaluation.metrics.ConfusionMatrix`):
      a background cell of a large dataset can pass int32.
    pred: ``[B, H, W]`` (any shape matching ``gt``) integer predicted class ids.
    gt: ``[B, H, W]`` integer ground-truth class ids; ``ignore_index`` and values outside ``[0, C)``
      are skipped.
    num_classes: ``C``.
    ignore_index: ground-truth value to skip (``None``: skip nothing besides out-of-range values).
    valid: optional boolean ``[B, H, W]``; ``False`` pixels (e.g. batch padding) are skipped.

  Returns:
    ``conf`` plus this batch's counts, same shape and dtype as ``conf``.
  """
  c = num_classes
  pred = jnp.asarray(pred).astype(jnp.int32)
  gt = jnp.asarray(gt).astype(jnp.int32)
  if pred.shape != gt.shape:
    raise ValueError(f'pred shape {pred.shape} != gt shape {gt.shape}')
  keep = (gt >= 0) & (gt < c) & (pred >= 0) & (pred < c)
  if ignore_index is not None:
    keep &= gt != ignore_index
  if valid is not None:
    valid = jnp.asarray(valid)
    if valid.shape != gt.shape:
      raise ValueError(f'valid shape {valid.shape} != gt shape {gt.shape}')
    keep &= valid.astype(bool)
  # Skipped pixels go to an extra overflow bin that is dropped;
  # no float weights, so counts are exact.
  flat = jnp.where(keep, gt * c + pred, c * c).reshape(-1)
  counts = jnp.bincount(flat, length=c * c + 1)[: c * c].reshape(c, c)
  return conf + counts.astype(conf.dtype)
