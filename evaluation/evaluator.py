"""Zero-shot segmentation evaluation over a dataset: mIoU, boundary IoU, oracle mIoU, timing.

    from groupvit_jax import load_pretrained
    from evaluation import datasets, evaluator
    from evaluation.class_names import get_spec
    model = load_pretrained(DIR)
    ds = datasets.build_dataset('voc', ROOT)
    result = evaluator.evaluate_segmentation(model, ds, get_spec('voc'), threshold=0.95)

Multi-host: process ``p`` of ``P`` evaluates ``dataset[p::P]``; the shards are padded to the same
length with masked repeats (computed, never counted), the device work of each process runs on its
own local devices, and the confusion matrices (and boundary / oracle counts) are summed over
processes with ``multihost_utils.process_allgather``. With one process this is the plain loop.

The trainer can call this repeatedly with ``Pretrained(config, variables)`` of new variables: every
jitted function is keyed by the config and shapes, so nothing recompiles after the first call.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import jax
import numpy as np
from jax.experimental import multihost_utils

from evaluation import class_names as cn
from evaluation import visualize as vis
from evaluation.metrics import (
  BoundaryIoU,
  ConfusionMatrix,
  boundary_iou_metrics,
  oracle_relabel,
  segmentation_metrics,
)
from groupvit_jax import prompts, segmenter

__all__ = ['resolve_classes', 'evaluate_segmentation']


def resolve_classes(
  spec_or_class_names: Union[cn.DatasetSpec, Sequence[str]], threshold: Optional[float]
) -> tuple[list[str], list[str], bool, int]:
  """-> (class names [C], prompt names of the foreground classes, with_background, ignore_index).

  A vocabulary whose first name is ``background`` (every benchmark's) gets no prompt for it: it is
  predicted by the threshold, which is then required. Without a background class the threshold must
  be ``None``.
  """
  if isinstance(spec_or_class_names, cn.DatasetSpec):
    names, prompt_names = (
      list(spec_or_class_names.class_names),
      list(spec_or_class_names.prompt_names),
    )
    ignore = spec_or_class_names.ignore_index
  else:
    names = list(spec_or_class_names)
    prompt_names, ignore = list(names), 255
  if not names:
    raise ValueError('no class names')
  with_bg = names[0].strip().lower() == 'background'
  if with_bg and threshold is None:
    raise ValueError(
      "the classes start with 'background': a background threshold is required "
      '(the release uses 0.95 for VOC and COCO-Object, 0.35 for Context)'
    )
  if not with_bg and threshold is not None:
    raise ValueError(
      "a background threshold was given but the class list has no 'background' class at index 0"
    )
  fg = prompt_names[1:] if with_bg else prompt_names
  if not fg:
    raise ValueError('no foreground classes')
  return names, fg, with_bg, ignore


def _gather_sum(tree: Any) -> Any:
  """Sums a pytree of numpy arrays over processes (identity with one process)."""
  if jax.process_count() == 1:
    return tree

  gathered = multihost_utils.process_allgather(tree)
  return jax.tree.map(lambda x: np.asarray(x).sum(axis=0), gathered)


def evaluate_segmentation(
  pretrained: Any,
  dataset: Sequence,
  spec_or_class_names,
  *,
  threshold: Optional[float],
  mode: str = 'slide',
  batch_windows: int = 4,
  max_images: Optional[int] = None,
  save_predictions: Optional[str] = None,
  visualize: int = 0,
  visualize_dir: Optional[str] = None,
  oracle: bool = False,
  boundary: bool = True,
  scales: Sequence[float] = (1.0,),
  flip: bool = False,
  templates: prompts.Templates = 'simple',
  tile_size: int = 512,
  tile_batch: int = 2,
  windows_per_step: int = 2,
  prefetch: int = 4,
  log_every: int = 0,
  devices: Optional[Sequence[jax.Device]] = None,
  crop_size: int = 448,
  stride: int = 224,
  short_side: int = 448,
  long_side: int = 2048,
  top_k: int = 5,
  background_words: Optional[Sequence[str]] = None,
) -> dict:
  """Zero-shot segmentation metrics of ``pretrained`` on ``dataset``.

  Args:
    pretrained: a ``Pretrained`` (GroupViT) or ``PretrainedSCG`` (``config``, ``variables``,
      ``class_embeddings``).
    dataset: sequence of ``Sample(name, image uint8 [H, W, 3], label [H, W])``.
    spec_or_class_names: a :class:`DatasetSpec` (names, prompt words, ignore index) or class names
      (index = label value; ``'background'`` first means thresholded background).
    threshold: background threshold (required iff there is a background class).
    mode: ``'slide'`` or ``'whole'``.
    batch_windows: windows per device call.
    max_images: evaluate only the first ``max_images`` images.
    save_predictions: folder for ``<name>.png`` palette predictions (VOC palette).
    visualize: number of panels (input | stage groups | prediction | ground truth) to write.
    visualize_dir: folder of the panels (default ``<save_predictions>/../visualize`` or
      ``./visualize``).
    oracle: also the oracle mIoU: every group of the first view relabelled with its best-IoU ground
      truth class (paper Table C.3).
    boundary: also boundary IoU (host-side, per image).
    scales, flip: test-time augmentation.
    templates: prompt templates (``'simple'``).
    tile_size, tile_batch, windows_per_step, prefetch: batching of the assembly stage and host
    prefetch.
    log_every: print progress every N images (0: never).
    devices: this process's devices to spread each batch over (default: all local devices).
    crop_size, stride, short_side, long_side, top_k: the protocol's geometry (released: 448 windows
      at stride 224 on images resized to fit 2048x448, top-5 classes); small-image data such as
    background_words: the vocabulary rule for the background class instead of ``threshold`` (then
      ``None``): a group / region whose best class is one of these words is background.
      the synthetic val split uses its own size for all of them (one window at the model's
      training resolution).

  Returns:
    dict: ``mIoU``, ``per_class_iou``, ``pixel_accuracy``, ``mean_accuracy``,
      ``per_class_accuracy``,
    ``fwIoU``, ``num_images``, ``num_pixels``, ``confusion_matrix`` ([C][C], rows = ground truth),
    ``boundary_iou`` (``{mBoundaryIoU, per_class_boundary_iou}`` or ``None``), ``oracle``
    (``{mIoU, per_class_iou, pixel_accuracy}`` or ``None``), ``config`` and ``timing``
    (``seconds``, ``images_per_second``, ``compile_seconds``, ``backend_compiles``). Scores in
    percent.
  """
  t_start = time.perf_counter()
  compile0 = segmenter.compile_stats()
  by_vocabulary = background_words is not None
  if by_vocabulary and threshold is not None:
    raise ValueError('give threshold or background_words, not both')
  names, fg_names, with_bg, ignore = resolve_classes(
    spec_or_class_names, 0.0 if by_vocabulary else threshold
  )
  if by_vocabulary and not with_bg:
    raise ValueError("background_words needs a dataset whose first class is 'background'")
  num_classes = len(names)
  class_embed = pretrained.class_embeddings(fg_names, templates)
  background_embed = None
  if by_vocabulary:
    background_embed = pretrained.class_embeddings(list(background_words), templates)
  protocol = segmenter.Protocol(
    mode=mode,
    scales=tuple(scales),
    flip=flip,
    window_batch=batch_windows,
    tile_size=tile_size,
    tile_batch=tile_batch,
    windows_per_step=windows_per_step,
    crop_size=crop_size,
    stride=stride,
    short_side=short_side,
    long_side=long_side,
    top_k=top_k,
  )
  seg = segmenter.ZeroShotSegmenter(
    pretrained.config,
    pretrained.variables,
    class_embed,
    threshold if with_bg and not by_vocabulary else None,
    protocol,
    devices,
    background_embed=background_embed,
  )

  total = len(dataset) if max_images is None else min(len(dataset), max_images)
  pc, pi = jax.process_count(), jax.process_index()
  shard = list(range(pi, total, pc))
  per_process = math.ceil(total / pc) if total else 0
  padding = per_process - len(shard)

  def items():
    for i in shard:
      s = dataset[i]
      if s.label is None:
        raise ValueError(f'sample {s.name!r} has no label')
      yield (i, s.image, s.label, {'name': s.name, 'valid': True})
    for _ in range(padding):  # masked repeats: equal work on every process, counted nowhere
      s = dataset[shard[0] if shard else 0]
      yield (-1, s.image, s.label, {'name': s.name, 'valid': False})

  save_dir = Path(save_predictions) if save_predictions else None
  if save_dir:
    save_dir.mkdir(parents=True, exist_ok=True)
  if visualize and not visualize_dir:
    visualize_dir = str(save_dir.parent / 'visualize') if save_dir else 'visualize'
  vis_dir = Path(visualize_dir) if visualize else None
  if vis_dir:
    vis_dir.mkdir(parents=True, exist_ok=True)
  biou = BoundaryIoU(num_classes, ignore_index=ignore) if boundary else None
  oracle_cm = ConfusionMatrix(num_classes, ignore) if oracle else None
  need_pred = bool(boundary or save_dir or visualize or oracle)
  done, visualized = 0, 0
  for res in seg.run(
    items(), need_pred=need_pred, oracle=oracle, ignore_index=ignore, prefetch=prefetch
  ):
    if not res.payload['valid']:
      continue
    name, label, pred = res.payload['name'], res.label, res.pred
    if biou is not None:
      biou.update(pred, label)
    if oracle_cm is not None:
      relabelled = oracle_relabel(
        res.group_ids, label, num_classes, ignore, num_groups=seg._oracle_channels
      )
      oracle_cm.update_np(relabelled, label)
    if save_dir is not None:
      vis.save_label_png(save_dir / f'{name}.png', pred)
    if vis_dir is not None and visualized < visualize:
      image = dataset[res.key].image
      panel = vis.make_panel(
        image, seg.stage_group_maps(image, size=protocol.crop_size), pred, label, names, ignore
      )
      panel.save(vis_dir / f'{name}.png')
      visualized += 1
    done += 1
    if log_every and done % log_every == 0:
      el = time.perf_counter() - t_start
      print(f'[eval] {done}/{len(shard)} images, {done / el:.2f} images/s', flush=True)

  conf = seg.confusion_matrix()
  if conf is None:
    conf = np.zeros((num_classes, num_classes), np.int64)
  sums = {'conf': conf, 'n': np.array(done, np.int64)}
  if biou is not None:
    sums['bi'], sums['bu'] = biou.intersection, biou.union
  if oracle_cm is not None:
    sums['oracle'] = oracle_cm.matrix
  sums = _gather_sum(sums)
  metrics = segmentation_metrics(sums['conf'], names)
  seconds = time.perf_counter() - t_start
  compile1 = segmenter.compile_stats()
  result = {
    'mIoU': metrics['mIoU'],
    'per_class_iou': metrics['per_class_iou'],
    'pixel_accuracy': metrics['pixel_accuracy'],
    'mean_accuracy': metrics['mean_accuracy'],
    'per_class_accuracy': metrics['per_class_accuracy'],
    'fwIoU': metrics['fwIoU'],
    'num_images': int(sums['n']),
    'num_pixels': metrics['num_pixels'],
    'confusion_matrix': np.asarray(sums['conf']).tolist(),
    'boundary_iou': boundary_iou_metrics(sums['bi'], sums['bu'], names) if boundary else None,
    'oracle': None,
    'config': {
      'mode': mode,
      'threshold': None if by_vocabulary else threshold,
      'with_background': with_bg,
      'background_rule': ('vocabulary' if by_vocabulary else 'threshold') if with_bg else None,
      'background_words': list(background_words) if by_vocabulary else None,
      'method': getattr(pretrained, 'kind', 'groupvit'),
      'scales': list(scales),
      'flip': flip,
      'templates': templates if isinstance(templates, str) else list(templates),
      'class_names': names,
      'prompt_names': fg_names,
      'ignore_index': ignore,
      'crop_size': protocol.crop_size,
      'stride': protocol.stride,
      'img_scale': [protocol.long_side, protocol.short_side],
      'top_k': protocol.top_k,
      'batch_windows': seg.window_batch,
      'tile_size': tile_size,
      'tile_batch': seg.tile_batch,
      'windows_per_step': windows_per_step,
      'process_count': pc,
    },
    'timing': {
      'seconds': seconds,
      'images_per_second': done / seconds if seconds > 0 else float('nan'),
      'compile_seconds': compile1['compile_seconds'] - compile0['compile_seconds'],
      'backend_compiles': compile1['backend_compiles'] - compile0['backend_compiles'],
    },
  }
  if oracle:
    om = segmentation_metrics(sums['oracle'], names)
    result['oracle'] = {
      'mIoU': om['mIoU'],
      'per_class_iou': om['per_class_iou'],
      'pixel_accuracy': om['pixel_accuracy'],
    }
  return result
