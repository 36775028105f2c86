"""Zero-shot image classification on an ImageNet-style folder (the release's ImageNet evaluation).

Layout: ``root/<class_dir>/*.{jpg,jpeg,png}``; classes are the sub-folders in sorted order. Their
names come from a text file (one per line, in the sorted-folder order), else, for the 1000 ImageNet
WordNet-id folders (``n01440764`` ...), from CLIP's curated ImageNet names
(:data:`evaluation.class_names.IMAGENET_CLASSES`), else from the folder names (``_`` -> space).

Protocol of the release for a GroupViT: the eval transform (short side to 256/224 of the model
size with PIL bilinear, centre crop, ImageNet normalisation), the 7 ``subset`` templates, class
embedding = mean of the *unnormalised* template features then L2-normalised, cosine similarity,
top-1 / top-5 in percent. A converted CLIP uses its own transform (bicubic short side to the input
size, centre crop, CLIP mean/std) and OpenAI's class embedding (each template's embedding
normalised, averaged, normalised again); everything else is the same.
"""

from __future__ import annotations

import functools
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from evaluation import class_names, pooled
from evaluation.datasets import read_class_names, read_image
from groupvit_jax import prompts
from groupvit_jax.segmenter import _prefetch_map, compile_stats

__all__ = ['ImageFolder', 'evaluate_classification']

_EXTS = ('.jpg', '.jpeg', '.png')
_WNID = re.compile(r'^n\d{8}$')


class ImageFolder:
  """``root/<class>/<image>`` files: ``paths`` [N], ``targets`` [N] (class index), ``class_dirs``
  [C]."""

  def __init__(self, root: str | os.PathLike):
    root = Path(root)
    if not root.is_dir():
      raise FileNotFoundError(f'image folder not found: {root}')
    self.class_dirs = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not self.class_dirs:
      raise FileNotFoundError(f'no class sub-folders in {root}')
    self.paths, self.targets = [], []
    for c, d in enumerate(self.class_dirs):
      for name in sorted(os.listdir(root / d)):
        if name.lower().endswith(_EXTS):
          self.paths.append(root / d / name)
          self.targets.append(c)
    if not self.paths:
      raise FileNotFoundError(f'no images ({", ".join(_EXTS)}) under {root}/<class>/')
    self.root = root

  def __len__(self) -> int:
    return len(self.paths)

  def default_class_names(self) -> list[str]:
    if len(self.class_dirs) == len(class_names.IMAGENET_CLASSES) and all(
      _WNID.match(d) for d in self.class_dirs
    ):
      return list(class_names.IMAGENET_CLASSES)
    return [d.replace('_', ' ') for d in self.class_dirs]


@functools.partial(jax.jit, static_argnames=('embed', 'k'))
def _classify(variables, pixels, text, targets, valid, *, embed, k: int):
  """pixels [B, S, S, 3] normalised -> (top-1 hits, top-k hits) counted over valid rows.
  `embed`: (variables, pixels) -> unnormalised image embeddings [B, D]."""
  logits = pooled.cosine(embed(variables, pixels), text)
  _, top = jax.lax.top_k(logits, k)
  hit1 = (top[:, 0] == targets) & valid
  hitk = jnp.any(top == targets[:, None], axis=1) & valid
  return jnp.sum(hit1, dtype=jnp.int32), jnp.sum(hitk, dtype=jnp.int32)


def evaluate_classification(
  pretrained: Any,
  root: str | os.PathLike,
  class_names: Optional[Sequence[str] | str] = None,
  *,
  templates: prompts.Templates = 'subset',
  batch_size: int = 32,
  max_images: Optional[int] = None,
  topk: int = 5,
  prefetch: int = 2,
) -> dict:
  """Zero-shot top-1 / top-k accuracy of ``pretrained`` on an image folder.

  Args:
    pretrained: a GroupViT ``Pretrained`` or a ``PretrainedCLIP`` (``load_pretrained``).
    root: ``root/<class>/*.jpg``.
    class_names: list of names or a path to a names file (one per line, sorted-folder order);
      default: see the module docstring.
    templates: prompt templates (``'subset'``: the release's 7 ImageNet templates).
    batch_size: images per device call (the last batch is padded and masked).
    max_images: evaluate the first N images (in folder order) only.
    topk: the k of top-k accuracy (5).

  Returns:
    dict with ``top1``, ``top{k}`` (percent), ``num_images``, ``num_classes``, ``class_names``,
    ``templates``, ``timing``. Multi-host: process p takes images p::P; counts are summed.
  """
  t0 = time.perf_counter()
  c0 = compile_stats()
  folder = ImageFolder(root)
  if isinstance(class_names, (str, os.PathLike)):
    class_names = read_class_names(class_names)
  names = list(class_names) if class_names is not None else folder.default_class_names()
  if len(names) != len(folder.class_dirs):
    raise ValueError(
      f'{len(names)} class names for {len(folder.class_dirs)} class folders in {root}'
    )
  text = jnp.asarray(pretrained.class_embeddings(names, templates))
  k = min(topk, len(names))
  total = len(folder) if max_images is None else min(len(folder), max_images)
  pc, pi = jax.process_count(), jax.process_index()
  shard = list(range(pi, total, pc))
  steps = math.ceil(math.ceil(total / pc) / batch_size) if total else 0
  size = pretrained.image_size

  def load(i):
    return pretrained.eval_transform(read_image(folder.paths[i])), folder.targets[i]

  variables = prompts.local_variables(pretrained.variables)
  hits1 = hitsk = 0
  pending = []
  loaded = _prefetch_map(load, shard, prefetch * batch_size)
  for _ in range(steps):  # every process runs the same number of steps
    pixels = np.zeros((batch_size, size, size, 3), np.float32)
    targets = np.zeros((batch_size,), np.int32)
    valid = np.zeros((batch_size,), bool)
    for j in range(batch_size):
      try:
        pixels[j], targets[j] = next(loaded)
        valid[j] = True
      except StopIteration:
        break
    pending.append(
      _classify(
        variables,
        pixels,
        targets=targets,
        text=text,
        valid=valid,
        embed=pretrained.image_embed_fn,
        k=k,
      )
    )
  for h1, hk in pending:
    hits1 += int(h1)
    hitsk += int(hk)
  counts = np.array([hits1, hitsk, len(shard)], np.int64)
  if pc > 1:
    counts = np.asarray(multihost_utils.process_allgather(counts)).sum(0)
  n = int(counts[2])
  seconds = time.perf_counter() - t0
  c1 = compile_stats()
  return {
    'top1': 100.0 * counts[0] / n if n else float('nan'),
    f'top{k}': 100.0 * counts[1] / n if n else float('nan'),
    'num_images': n,
    'num_classes': len(names),
    'class_names': names,
    'templates': templates if isinstance(templates, str) else list(templates),
    'timing': {
      'seconds': seconds,
      'images_per_second': n / seconds if seconds else float('nan'),
      'compile_seconds': c1['compile_seconds'] - c0['compile_seconds'],
    },
  }
