"""Zero-shot segmentation of a model *without* grouping (the paper's Table 4 baselines).

A plain ViT trained with the same contrastive loss has no group tokens, so it is segmented from its
final patch tokens, projected by the image head into the joint space:

* ``pixel``: every patch token is its own group (pixel-wise classification);
* ``kmeans``: the projected, normalised patch tokens of each image are clustered into ``k`` groups
  by cosine k-means (deterministic farthest-point initialisation, fixed iterations) and each
  cluster's mean embedding is classified.

Either way the groups go through the *same* per-group class table as GroupViT
(:func:`groupvit_jax.segmenter.class_table`: top-k classes from the pooled embedding, background by
threshold), and each pixel takes the label of the group that wins after bilinear upsampling of the
patch-to-group map, so the three rows of the table differ only in where the groups come from. Works
for any model (GroupViT too: its final tokens are then the groups, which is not what ``pixel``
means, so use it for plain ViTs). Images are evaluated whole at the model's training resolution
(resized if they differ), which is the synthetic protocol.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from evaluation.evaluator import resolve_classes
from evaluation.metrics import ConfusionMatrix, oracle_relabel, segmentation_metrics
from evaluation.pooled import checked_input_size, whole_image_batches
from groupvit_jax import prompts
from groupvit_jax.models.config import GroupViTConfig
from groupvit_jax.models.groupvit import GroupViT, l2_normalize
from groupvit_jax.ops.resize import resize_matrix
from groupvit_jax.segmenter import HIGHEST, class_table

__all__ = ['METHODS', 'cosine_kmeans', 'evaluate_token_baseline']

METHODS = ('pixel', 'kmeans')


def cosine_kmeans(x: jnp.ndarray, k: int, iters: int = 10) -> jnp.ndarray:
  """Cosine k-means of one set of vectors.

  Args:
    x: ``[N, D]`` L2-normalised vectors.
    k: clusters (``<= N``).
    iters: Lloyd iterations.

  Returns:
    int32 ``[N]`` cluster ids. Initialisation is farthest-point from vector 0 (deterministic); an
    emptied cluster keeps its previous centre.
  """

  def pick(centres, i):
    sim = jnp.max(jnp.where(jnp.arange(k)[None, :] < i, x @ centres.T, -jnp.inf), axis=1)
    nxt = x[jnp.argmin(sim)]
    return centres.at[i].set(nxt), None

  centres = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(x[0])
  centres, _ = jax.lax.scan(pick, centres, jnp.arange(1, k))

  def lloyd(centres, _):
    ids = jnp.argmax(x @ centres.T, axis=1)
    onehot = jax.nn.one_hot(ids, k, dtype=x.dtype)  # [N, k]
    sums = onehot.T @ x
    counts = jnp.sum(onehot, axis=0)[:, None]
    new = jnp.where(counts > 0, l2_normalize(sums), centres)
    return new, None

  centres, _ = jax.lax.scan(lloyd, centres, None, length=iters)
  return jnp.argmax(x @ centres.T, axis=1).astype(jnp.int32)


@functools.partial(
  jax.jit,
  static_argnames=('config', 'method', 'num_clusters', 'top_k', 'with_background', 'out_hw'),
)
def _segment_batch(
  variables,
  pixels,
  class_embed,
  threshold,
  *,
  config: GroupViTConfig,
  method: str,
  num_clusters: int,
  top_k: int,
  with_background: bool,
  out_hw: tuple[int, int],
):
  """Normalised pixels ``[B, S, S, 3]`` -> (int32 labels ``[B, H, W]``, int32 group ids ``[B, H,
  W]``)."""
  model = GroupViT(config)
  out = model.apply(variables, pixels, with_groups=True, method=GroupViT.encode_image)
  h, w = out['grid']
  tokens = l2_normalize(out['group_embeds'].astype(jnp.float32))  # [B, N, D], N = h * w
  if tokens.shape[1] != h * w:
    raise ValueError(
      f"the model's final tokens ({tokens.shape[1]}) are not the {h}x{w} patches; "
      'token baselines need a model without grouping stages'
    )
  b, n, _ = tokens.shape
  if method == 'pixel':
    groups = tokens
    assign = jnp.broadcast_to(jnp.eye(n, dtype=jnp.float32), (b, n, n))
  else:
    ids = jax.vmap(lambda t: cosine_kmeans(t, num_clusters))(tokens)  # [B, N]
    assign = jax.nn.one_hot(ids, num_clusters, dtype=jnp.float32)  # [B, N, k]
    sums = jnp.einsum('bnk,bnd->bkd', assign, tokens, precision=HIGHEST)
    groups = l2_normalize(sums)
  scale = model.apply(variables, method=GroupViT.scales)['logit_scale']
  table = class_table(
    groups, out['image_embed'], class_embed, scale, threshold, top_k, with_background
  )  # [B, G, C]
  rh = jnp.asarray(resize_matrix(h, out_hw[0], 'bilinear'), jnp.float32)
  rw = jnp.asarray(resize_matrix(w, out_hw[1], 'bilinear'), jnp.float32)
  maps = assign.reshape(b, h, w, -1)
  maps = jnp.einsum('oh,bhwg->bowg', rh, maps, precision=HIGHEST)
  maps = jnp.einsum('pw,bowg->bopg', rw, maps, precision=HIGHEST)
  group_of_pixel = jnp.argmax(maps, axis=-1)  # [B, H, W]
  label_of_group = jnp.argmax(table, axis=-1)  # [B, G]
  labels = jnp.take_along_axis(label_of_group[:, None, :], group_of_pixel.reshape(b, 1, -1), axis=2)
  return labels.reshape(b, *out_hw).astype(jnp.int32), group_of_pixel.astype(jnp.int32)


def evaluate_token_baseline(
  pretrained: Any,
  dataset: Sequence,
  spec_or_class_names,
  *,
  threshold: Optional[float],
  method: str = 'pixel',
  num_clusters: int = 8,
  max_images: Optional[int] = None,
  batch_size: int = 16,
  top_k: int = 5,
  templates: prompts.Templates = 'simple',
  input_size: Optional[int] = None,
) -> dict:
  """Zero-shot segmentation scores of a model without grouping, from its patch tokens.

  Args:
    pretrained: ``Pretrained`` (``config``, ``variables``, ``tokenize``).
    dataset: sequence of ``Sample(name, image uint8 [H, W, 3], label [H, W])``, all of one size.
    spec_or_class_names: as for :func:`evaluation.evaluator.evaluate_segmentation`.
    threshold: background threshold (required iff the classes start with ``background``).
    method: ``'pixel'`` or ``'kmeans'``.
    num_clusters: ``k`` of ``kmeans``.
    max_images: only the first ``max_images`` samples.
    batch_size: images per compiled call (the last batch is padded).
    top_k, templates: as for GroupViT (top-5 classes, "a photo of a {}.").
    input_size: the side each image is resized to before the model sees it (default: the model's
      training ``image_size``; a multiple of the patch size).

  Returns:
    dict: ``mIoU``, ``per_class_iou``, ``pixel_accuracy``, ``num_images``, ``method``,
      ``input_size``,
    ``oracle`` (``kmeans`` only: ``{mIoU, pixel_accuracy}`` with every cluster relabelled with its
    best-IoU ground-truth class, as GroupViT's oracle; else ``None``), ``timing`` (``seconds``,
    ``images_per_second``). Scores in percent.
  """
  if method not in METHODS:
    raise ValueError(f'method must be one of {METHODS}, got {method!r}')
  names, fg_names, with_bg, ignore = resolve_classes(spec_or_class_names, threshold)
  config = pretrained.config
  class_embed = prompts.class_embeddings(
    config, pretrained.variables, pretrained.tokenize, fg_names, templates
  )
  size = checked_input_size(config, input_size)
  total = len(dataset) if max_images is None else min(len(dataset), max_images)
  if total < 1:
    raise ValueError('no images to evaluate')
  cm = ConfusionMatrix(len(names), ignore)
  oracle_cm = ConfusionMatrix(len(names), ignore) if method == 'kmeans' else None
  thr = jnp.float32(threshold if with_bg else 0.0)
  t0 = time.perf_counter()
  out_hw = None
  for samples, pix in whole_image_batches(dataset, total, batch_size, size):
    hw = samples[0].image.shape[:2]
    if out_hw is None:
      out_hw = tuple(int(v) for v in hw)
    if any(s.image.shape[:2] != out_hw for s in samples):
      raise ValueError(f'token baselines need images of one size; got {hw} after {out_hw}')
    pred, group_ids = _segment_batch(
      pretrained.variables,
      jnp.asarray(pix),
      class_embed,
      thr,
      config=config,
      method=method,
      num_clusters=int(num_clusters),
      top_k=min(int(top_k), len(fg_names)),
      with_background=with_bg,
      out_hw=out_hw,
    )
    pred = np.asarray(pred)[: len(samples)]
    labels = np.stack([np.asarray(s.label) for s in samples])
    cm.update_np(pred, labels)
    if oracle_cm is not None:
      for ids, label in zip(np.asarray(group_ids), labels):
        oracle_cm.update_np(
          oracle_relabel(ids, label, len(names), ignore, num_groups=num_clusters), label
        )
  seconds = time.perf_counter() - t0
  metrics = segmentation_metrics(cm.matrix, names)
  oracle = None
  if oracle_cm is not None:
    om = segmentation_metrics(oracle_cm.matrix, names)
    oracle = {'mIoU': om['mIoU'], 'pixel_accuracy': om['pixel_accuracy']}
  return {
    'mIoU': metrics['mIoU'],
    'per_class_iou': metrics['per_class_iou'],
    'pixel_accuracy': metrics['pixel_accuracy'],
    'num_images': total,
    'method': method,
    'oracle': oracle,
    'input_size': size,
    'timing': {'seconds': seconds, 'images_per_second': total / seconds},
  }
