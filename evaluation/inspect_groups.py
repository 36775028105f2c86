"""Looking inside a trained grouping model: per-stage groups over images, what single group tokens
capture across many images (the paper's Figure 7), and segmentation with a typed vocabulary.

Works for the three methods' model directories: GroupViT (its grouping stages), ZeroSeg (the
student's grouping stages) and SCG (one "stage": the k-means regions of its grouper).

Used by ``notebooks/inspect_groups.ipynb``; every function returns arrays or ``PIL`` images, so it
works the same in a notebook, a script or a test. Images are resized (OpenCV-exact bilinear) to one
square side, a multiple of the patch size (default: the model's training size), so one compiled
shape serves any image; group maps are upsampled back to the image's own size.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from evaluation.visualize import colorize, group_palette, voc_palette
from groupvit_jax.ops.resize import resize_matrix
from groupvit_jax.preprocessing import normalize
from groupvit_jax.segmenter import resize_uint8

__all__ = [
  'describe',
  'input_geometry',
  'stage_group_ids',
  'upsampled_group_ids',
  'group_overlay',
  'stage_panel',
  'group_concepts',
  'segmentation_panel',
  'stack_rows',
]


def input_geometry(pretrained) -> tuple[int, int]:
  """(input sides must be multiples of this, the training input size) of a GroupViT, ZeroSeg or
  SCG model."""
  kind = getattr(pretrained, 'kind', 'groupvit')
  cfg = pretrained.config
  if kind == 'scg':
    return cfg.patch_multiple, cfg.clip.vision.image_size
  if kind == 'zeroseg':
    return cfg.encoder.patch_size, cfg.encoder.image_size
  return cfg.image.patch_size, cfg.image.image_size


def describe(pretrained) -> str:
  """One line: the method, input size and groups per stage."""
  kind = getattr(pretrained, 'kind', 'groupvit')
  patch, size = input_geometry(pretrained)
  cfg = pretrained.config
  if kind == 'scg':
    groups = (cfg.num_regions,)
  elif kind == 'zeroseg':
    groups = tuple(cfg.head.num_output_groups)
  else:
    groups = tuple(cfg.image.num_output_groups)
  return f'{kind}: {size}px input, patch {patch}, groups per stage {groups}'


def _square_side(pretrained, size: Optional[int]) -> int:
  patch, default = input_geometry(pretrained)
  size = default if size is None else int(size)
  return max(patch, size // patch * patch)


def _stage_maps(pretrained, pixels: np.ndarray) -> list[np.ndarray]:
  """uint8 [B, S, S, 3] -> per stage [B, h, w, G] group weights (SCG: its region scores)."""
  kind = getattr(pretrained, 'kind', 'groupvit')
  if kind == 'scg':
    return [pretrained.regions(pixels, size=pixels.shape[1])['scores']]
  if kind == 'zeroseg':
    return pretrained.stage_maps(pixels)
  return pretrained.group_maps(normalize(pixels), preprocess=False)


def stage_group_ids(
  pretrained, images: Sequence[np.ndarray], size: Optional[int] = None
) -> list[list[np.ndarray]]:
  """The group of every pixel at every grouping stage.

  Args:
    pretrained: a ``Pretrained`` (GroupViT), ``PretrainedZeroSeg`` or ``PretrainedSCG`` model.
    images: uint8 RGB images ``[H_i, W_i, 3]`` (any sizes).
    size: square side the model sees (default: its training size).

  Returns:
    ``ids[i][s]``: int32 ``[H_i, W_i]`` group index (``0..G_s-1``) of image ``i`` at stage ``s``
    (argmax of the soft assignment composed across stages, bilinearly upsampled).
  """
  side = _square_side(pretrained, size)
  pixels = np.stack([resize_uint8(np.asarray(im, np.uint8), side, side) for im in images])
  maps = _stage_maps(pretrained, pixels)  # per stage [B, h, w, G]
  return [[upsampled_group_ids(m[i], *im.shape[:2]) for m in maps] for i, im in enumerate(images)]


def upsampled_group_ids(group_map: np.ndarray, height: int, width: int) -> np.ndarray:
  """The group of every pixel, from a patch-grid map of group weights.

  Args:
    group_map: float ``[h, w, G]`` weights of each patch over the groups.
    height, width: the output size.

  Returns:
    int32 ``[height, width]``: argmax over the groups of the map, bilinearly upsampled.
  """
  m = np.asarray(group_map, np.float64)
  full = np.einsum('oh,hwg->owg', resize_matrix(m.shape[0], height, 'bilinear'), m)
  full = np.einsum('pw,owg->opg', resize_matrix(m.shape[1], width, 'bilinear'), full)
  return np.argmax(full, axis=-1).astype(np.int32)


def group_overlay(image: np.ndarray, ids: np.ndarray, alpha: float = 0.55) -> np.ndarray:
  """uint8 ``[H, W, 3]``: ``image`` blended with one colour per group, group borders in white."""
  ids = np.asarray(ids)
  colours = colorize(ids, group_palette(int(ids.max()) + 1), None).astype(np.float32)
  out = (1 - alpha) * np.asarray(image, np.float32) + alpha * colours
  edge = np.zeros(ids.shape, bool)
  edge[1:] |= ids[1:] != ids[:-1]
  edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
  out[edge] = 255
  return out.round().astype(np.uint8)


def _labelled_row(
  tiles: Sequence[tuple[str, np.ndarray]], height: int, gap: int = 4
) -> Image.Image:
  ims = []
  for title, arr in tiles:
    im = Image.fromarray(np.asarray(arr, np.uint8))
    scale = height / im.height
    ims.append((title, im.resize((max(1, round(im.width * scale)), height), Image.NEAREST)))
  caption = 14
  canvas = Image.new(
    'RGB',
    (sum(im.width for _, im in ims) + gap * (len(ims) - 1), height + caption),
    (255, 255, 255),
  )
  draw, font, x = ImageDraw.Draw(canvas), ImageFont.load_default(), 0
  for title, im in ims:
    canvas.paste(im, (x, caption))
    draw.text((x + 2, 1), title[: max(4, im.width // 6)], fill=(0, 0, 0), font=font)
    x += im.width + gap
  return canvas


def stack_rows(rows: Sequence[Image.Image]) -> Image.Image:
  """The ``PIL`` images ``rows`` stacked top to bottom on white, left-aligned."""
  grid = Image.new(
    'RGB', (max(r.width for r in rows), sum(r.height for r in rows)), (255, 255, 255)
  )
  y = 0
  for r in rows:
    grid.paste(r, (0, y))
    y += r.height
  return grid


def stage_panel(
  pretrained, images: Sequence[np.ndarray], size: Optional[int] = None, height: int = 160
) -> Image.Image:
  """One row per image: the input, then its groups at each stage overlaid (``PIL`` image)."""
  ids = stage_group_ids(pretrained, images, size)
  rows = []
  for im, per_stage in zip(images, ids):
    tiles = [('input', im)] + [
      (f'stage {s + 1}, groups: {len(np.unique(g))}', group_overlay(im, g))
      for s, g in enumerate(per_stage)
    ]
    rows.append(_labelled_row(tiles, height))
  return stack_rows(rows)


def group_concepts(
  pretrained,
  images: Sequence[np.ndarray],
  stage: int = -1,
  groups: Optional[Sequence[int]] = None,
  per_group: int = 6,
  size: Optional[int] = None,
  height: int = 96,
) -> tuple[Image.Image, dict[int, list[int]]]:
  """What individual group tokens capture across a set of images (the paper's Figure 7).

  For each group token ``g`` of ``stage``, the ``per_group`` images in which ``g`` covers the
  largest area are shown with everything outside ``g``'s region dimmed.

  Args:
    pretrained: a ``Pretrained`` model.
    images: uint8 RGB images.
    stage: grouping stage (default: the last).
    groups: group indices to show (default: every group that wins any pixel, by total area).
    per_group: images per group.
    size, height: model input side; row height in pixels.

  Returns:
    (grid image with one row per group, ``{group: [image indices shown]}``).
  """
  ids = [per_stage[stage] for per_stage in stage_group_ids(pretrained, images, size)]
  num_groups = int(max(g.max() for g in ids)) + 1
  area = np.array([[np.mean(g == k) for k in range(num_groups)] for g in ids])  # [N, G]
  if groups is None:
    groups = [int(k) for k in np.argsort(-area.sum(0)) if area[:, k].sum() > 0]
  rows, shown = [], {}
  for k in groups:
    order = [int(i) for i in np.argsort(-area[:, k], kind='stable')[:per_group] if area[i, k] > 0]
    shown[int(k)] = order
    tiles = []
    for i in order:
      inside = (ids[i] == k)[..., None]
      dimmed = np.where(
        inside, images[i], (np.asarray(images[i], np.float32) * 0.25).astype(np.uint8)
      )
      tiles.append((f'{100 * area[i, k]:.0f}%', dimmed))
    if tiles:
      rows.append(
        _labelled_row([(f'group {k}', np.full_like(images[0][:8, :8], 255))] + tiles, height)
      )
  return stack_rows(rows) if rows else Image.new('RGB', (1, 1)), shown


def segmentation_panel(
  pretrained,
  images: Sequence[np.ndarray],
  class_names: Sequence[str],
  background_threshold: Optional[float] = None,
  height: int = 160,
  **segment_kwargs,
) -> tuple[Image.Image, list[np.ndarray]]:
  """Zero-shot segmentation of ``images`` with a typed vocabulary.

  Args:
    pretrained: a ``Pretrained`` model.
    images: uint8 RGB images.
    class_names: the vocabulary (any words).
    background_threshold: ``None`` (every pixel gets a class) or a float (label 0 = background).
    height: row height in pixels.
    **segment_kwargs: passed to ``Pretrained.segment`` (``mode``, ``crop_size``, ``short_side``,
    ...).

  Returns:
    (grid image: input | prediction overlay, with the predicted names; list of int32 ``[H, W]``
    labels).
  """
  names = (['background'] if background_threshold is not None else []) + list(class_names)
  palette = voc_palette()
  rows, preds = [], []
  for im in images:
    pred = np.asarray(
      pretrained.segment(im, list(class_names), background_threshold, **segment_kwargs)
    )
    preds.append(pred)
    over = (0.45 * np.asarray(im, np.float32) + 0.55 * colorize(pred, palette, None)).astype(
      np.uint8
    )
    present = ', '.join(names[v] for v in np.unique(pred) if v < len(names))
    rows.append(_labelled_row([('input', im), (present or '-', over)], height))
  return stack_rows(rows), preds
