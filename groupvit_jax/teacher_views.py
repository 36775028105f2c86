"""ZeroSeg's teacher views: a centre crop cut into n x n grids, every cell resized to the teacher's
input size and embedded by a frozen CLIP image tower.

The order of views is fixed: the grids in ascending n, each grid's cells row-major. With the
paper's grids (1, 2, 3, 4) that is 1 + 4 + 9 + 16 = 30 views, view 0 the whole crop. The cache
(`input_pipeline.prepare_teacher`) always stores all 30; a recipe that uses fewer grids (the
paper's Table 3) selects them with `view_indices`.

Cells of an S-pixel crop split by n have their borders at round(i * S / n) (a 224 crop split by 3
gives cells of 75, 74 and 75 pixels: our choice, the paper is silent). Each cell is resized with
`jax.image.resize` bicubic (antialiased when shrinking), as CLIP's own bicubic preprocessing.
Embeddings are the CLIP's projected image embedding, L2-normalised, float32.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from groupvit_jax.models.clip import CLIP, CLIPConfig

ALL_GRIDS = (1, 2, 3, 4)
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def check_grids(grids: Sequence[int]) -> tuple[int, ...]:
  """`grids` as a sorted tuple of distinct values from ALL_GRIDS; ValueError otherwise."""
  out = tuple(sorted(int(n) for n in grids))
  if not out or len(set(out)) != len(out) or any(n not in ALL_GRIDS for n in out):
    raise ValueError(f'grids must be distinct values from {ALL_GRIDS}, got {tuple(grids)}')
  return out


def num_views(grids: Sequence[int] = ALL_GRIDS) -> int:
  """Views of a set of grids: sum of n * n (30 for the paper's four)."""
  return sum(n * n for n in check_grids(grids))


def view_indices(grids: Sequence[int], stored: Sequence[int] = ALL_GRIDS) -> np.ndarray:
  """Indices [V] of the views of `grids` among the views of `stored` (both in the fixed order)."""
  grids, stored = check_grids(grids), check_grids(stored)
  missing = sorted(set(grids) - set(stored))
  if missing:
    raise ValueError(f'grids {missing} are not among the stored grids {stored}')
  out, start = [], 0
  for n in stored:
    if n in grids:
      out.extend(range(start, start + n * n))
    start += n * n
  return np.asarray(out, np.int32)


def local_view_mask(grids: Sequence[int]) -> np.ndarray:
  """bool [V]: False for the whole-image view (grid 1), True for the cells of finer grids."""
  return np.concatenate([np.full(n * n, n > 1) for n in check_grids(grids)])


def cell_borders(size: int, n: int) -> list[int]:
  """Pixel borders [n + 1] of an n-way split of `size` pixels: round(i * size / n)."""
  return [int(round(i * size / n)) for i in range(n + 1)]


def cut_views(pixels: jnp.ndarray, grids: Sequence[int], out_size: int) -> jnp.ndarray:
  """pixels [B, S, S, 3] (any float range) -> views [B, V, out_size, out_size, 3] float32."""
  b, h, w, c = pixels.shape
  if h != w:
    raise ValueError(f'teacher views are cut from square crops, got {h}x{w}')
  x = pixels.astype(jnp.float32)
  views = []
  for n in check_grids(grids):
    edges = cell_borders(h, n)
    for i in range(n):
      for j in range(n):
        cell = x[:, edges[i] : edges[i + 1], edges[j] : edges[j + 1]]
        views.append(jax.image.resize(cell, (b, out_size, out_size, c), 'bicubic'))
  return jnp.stack(views, axis=1)


def teacher_embeddings(
  clip_cfg: CLIPConfig,
  clip_params: Any,
  pixels: jnp.ndarray,
  grids: Sequence[int] = ALL_GRIDS,
) -> jnp.ndarray:
  """The teacher's unit embeddings of every view.

  Args:
    clip_cfg / clip_params: the frozen CLIP (its image tower and `proj`).
    pixels: [B, S, S, 3] a centre crop, pixel values 0..255.
    grids: which grids to cut.
  Returns:
    [B, V, E] float32, L2-normalised, views in the fixed order.
  """
  size = clip_cfg.vision.image_size
  views = cut_views(pixels, grids, size)
  b, v = views.shape[:2]
  views = (jnp.clip(views, 0.0, 255.0) / 255.0 - CLIP_MEAN) / CLIP_STD
  emb = CLIP(clip_cfg).apply(
    {'params': clip_params}, views.reshape(b * v, size, size, 3), method=CLIP.encode_image
  )
  emb = emb.astype(jnp.float32).reshape(b, v, -1)
  return emb / jnp.linalg.norm(emb, axis=-1, keepdims=True)
