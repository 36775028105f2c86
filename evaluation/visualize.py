"""Colouring label maps and group maps, and side-by-side evaluation panels (Pillow only).

A panel is ``input | groups of stage 1 | ... | groups of stage S | prediction | ground truth``, each
at the image's size (scaled down when taller than ``max_height``), with a caption strip naming the
columns and the classes present in the prediction.
"""

from __future__ import annotations

import colorsys
import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
  'voc_palette',
  'group_palette',
  'colorize',
  'save_label_png',
  'make_panel',
]


def voc_palette(n: int = 256) -> np.ndarray:
  """The PASCAL VOC colour map: uint8 ``[n, 3]`` (class ``i``'s colour spreads the bits of ``i``
  over the high bits of R, G, B; 255 is (224, 224, 192))."""
  pal = np.zeros((n, 3), np.uint8)
  for i in range(n):
    c, r, g, b = i, 0, 0, 0
    for shift in range(7, -1, -1):
      r |= ((c >> 0) & 1) << shift
      g |= ((c >> 1) & 1) << shift
      b |= ((c >> 2) & 1) << shift
      c >>= 3
    pal[i] = (r, g, b)
  return pal


def group_palette(n: int, seed: float = 0.13) -> np.ndarray:
  """``n`` well-separated colours (golden-ratio hue steps, alternating lightness): uint8 ``[n,
  3]``."""
  out = np.zeros((n, 3), np.uint8)
  for i in range(n):
    hue = (seed + i * 0.618033988749895) % 1.0
    light = (0.45, 0.6, 0.35)[i % 3]
    sat = (0.85, 0.65)[(i // 3) % 2]
    out[i] = np.round(np.array(colorsys.hls_to_rgb(hue, light, sat)) * 255)
  return out


def colorize(
  label: np.ndarray,
  palette: np.ndarray,
  ignore_index: Optional[int] = 255,
  ignore_color=(255, 255, 255),
) -> np.ndarray:
  """Integer ``[H, W]`` -> uint8 RGB ``[H, W, 3]``; ``ignore_index`` pixels get ``ignore_color``;
  values beyond the palette wrap around."""
  label = np.asarray(label).astype(np.int64)
  rgb = palette[np.mod(label, len(palette))]
  if ignore_index is not None:
    rgb[label == ignore_index] = ignore_color
  return rgb


def save_label_png(
  path: str | os.PathLike, label: np.ndarray, palette: Optional[np.ndarray] = None
) -> None:
  """Writes a label map as a palette PNG (values = palette indices = class ids; VOC palette by
  default), or as a 16-bit grey PNG when a value exceeds 255."""
  label = np.asarray(label)
  if label.size and (label.min() < 0 or label.max() > 65535):
    raise ValueError(f'label values must be in [0, 65535], got [{label.min()}, {label.max()}]')
  if label.size and label.max() > 255:
    Image.fromarray(label.astype(np.uint16)).save(path)
    return
  img = Image.fromarray(label.astype(np.uint8), mode='P')
  pal = voc_palette() if palette is None else np.asarray(palette, np.uint8)
  img.putpalette(pal[:256].reshape(-1).tolist())
  img.save(path)


def _fit(img: Image.Image, height: int, nearest: bool) -> Image.Image:
  if img.height <= height:
    return img
  width = max(1, round(img.width * height / img.height))
  return img.resize((width, height), Image.NEAREST if nearest else Image.BILINEAR)


def make_panel(
  image: np.ndarray,
  stage_groups: Sequence[np.ndarray],
  pred: np.ndarray,
  gt: Optional[np.ndarray] = None,
  class_names: Optional[Sequence[str]] = None,
  ignore_index: Optional[int] = 255,
  max_height: int = 512,
  gap: int = 4,
) -> Image.Image:
  """Side-by-side panel.

  Args:
    image: uint8 ``[H, W, 3]``.
    stage_groups: per grouping stage an integer ``[H, W]`` group id map.
    pred: integer ``[H, W]`` predicted labels.
    gt: integer ``[H, W]`` ground truth (``ignore_index`` drawn white), or ``None``.
    class_names: names of the label values (listed in the caption for the predicted classes).
    max_height: panels taller than this are scaled down.
    gap: white pixels between columns.

  Returns:
    RGB ``PIL.Image``.
  """
  voc = voc_palette()
  cols = [('input', Image.fromarray(np.asarray(image, np.uint8)), False)]
  for s, groups in enumerate(stage_groups):
    n = int(np.max(groups)) + 1 if np.size(groups) else 1
    cols.append(
      (
        f'stage {s + 1} groups',
        Image.fromarray(colorize(groups, group_palette(max(n, 1)), None)),
        True,
      )
    )
  cols.append(('prediction', Image.fromarray(colorize(pred, voc, None)), True))
  if gt is not None:
    cols.append(('ground truth', Image.fromarray(colorize(gt, voc, ignore_index)), True))
  tiles = [(title, _fit(im, max_height, nearest)) for title, im, nearest in cols]
  font = ImageFont.load_default()
  caption_h = 16
  present = [int(v) for v in np.unique(pred)]
  names = ', '.join(
    class_names[v] if class_names is not None and v < len(class_names) else str(v) for v in present
  )
  width = sum(t.width for _, t in tiles) + gap * (len(tiles) - 1)
  height = max(t.height for _, t in tiles) + 2 * caption_h
  canvas = Image.new('RGB', (width, height), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  x = 0
  for title, t in tiles:
    canvas.paste(t, (x, caption_h))
    draw.text((x + 2, 2), title, fill=(0, 0, 0), font=font)
    x += t.width + gap
  draw.text((2, height - caption_h + 2), f'predicted: {names}'[:400], fill=(0, 0, 0), font=font)
  return canvas
