"""Image-level naming: does the pooled image embedding rank the classes that are in the picture?

Zero-shot segmentation needs two things at once: groups that follow objects (the oracle mIoU
measures that alone) and group embeddings that match the right class prompt. This module measures
the second half without the first: each image's pooled embedding (the one both training losses see)
is scored against the prompt embedding of every foreground class, and each class's images are ranked
by that score. The ground truth of "class k is in image i" is read from the segmentation label map,
so any segmentation dataset (VOC, the synthetic val split, ...) can be scored. A model that names
the objects at the image level but not per group has a high ``naming_mAP`` and a low mIoU; a model
with chance-level ``naming_mAP`` cannot segment zero-shot however good its groups are.

For a model with groups, the same pass also scores naming at the group level: every final group that
covers at least one labelled pixel is an item, its class is the ground-truth class most of its
pixels belong to, and each class's groups are ranked by their own embedding's similarity to the
class prompt. A model whose group embeddings all carry the image's object name (whatever pixels they
hold) names images perfectly, but its background groups rank as high as its object groups, and
``group mAP`` falls towards that of a ranking that only knows the image; ``background_leak`` counts
how often a background group's best class is one present in its image, and ``within_image_auc`` how
often, in one image, a group on class c scores c higher than a group on anything else (50 when the
groups carry only the image's names, 100 when each names its own pixels). Given the words the
captions use for backgrounds, ``background_word_auc`` asks the converse: in one image, how often a
group on the background scores them higher than a group on an object (100 = the background concept
sits on the background; 0 = the model swapped the two, its object names on the background group).

      result = image_naming(pretrained, dataset, spec, max_images=200)
      result['mAP'], result['chance_mAP'], result['per_class_ap']
      result['groups']['mAP'], result['groups']['background_leak']   # None for a model without
      groups
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from evaluation import pooled
from evaluation.evaluator import resolve_classes
from evaluation.inspect_groups import upsampled_group_ids
from evaluation.metrics import nanmean
from groupvit_jax import prompts
from groupvit_jax.models.config import GroupViTConfig
from groupvit_jax.segmenter import resize_uint8


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """Per-class average precision: the mean of the precision at the rank of every positive example
  (non-interpolated, as scikit-learn's ``average_precision_score``).

  Args:
    scores: float ``[N, K]``: higher = more likely.
    targets: ``[N, K]`` in {0, 1}.

  Returns:
    float64 ``[K]``; NaN for a class with no positive example. Tied scores keep their input order.
  """
  scores, targets = np.asarray(scores, np.float64), np.asarray(targets, np.float64)
  if scores.shape != targets.shape or scores.ndim != 2:
    raise ValueError(f'scores {scores.shape} and targets {targets.shape} must both be [N, K]')
  ap = np.full(scores.shape[1], np.nan)
  for k in range(scores.shape[1]):
    hits = targets[np.argsort(-scores[:, k], kind='stable'), k]
    if hits.sum() == 0:
      continue
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    ap[k] = float((precision * hits).sum() / hits.sum())
  return ap


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
  """Mean of :func:`average_precision` over the classes with at least one positive example
  (NaN when there is none)."""
  return nanmean(average_precision(scores, targets))


_image_scores = jax.jit(pooled.class_similarities, static_argnames=('config',))
_group_scores = jax.jit(pooled.group_similarities, static_argnames=('config',))


def image_naming(
  pretrained: Any,
  dataset: Sequence,
  spec_or_class_names,
  *,
  max_images: Optional[int] = None,
  batch_size: int = 32,
  templates: prompts.Templates = 'simple',
  input_size: Optional[int] = None,
  background_words: Optional[Sequence[str]] = None,
) -> dict:
  """Image-level (and, for a model with groups, group-level) zero-shot naming of a dataset's
  classes.

  Args:
    pretrained: ``Pretrained`` (``config``, ``variables``, ``tokenize``).
    dataset: sequence of ``Sample(name, image uint8 [H, W, 3], label [H, W])``.
    spec_or_class_names: a ``DatasetSpec`` or class names; a leading ``background`` class is not
      scored (it has no prompt).
    max_images: only the first ``max_images`` samples.
    batch_size: images per compiled call (the last batch is padded).
    templates: prompt templates ("a photo of a {}." by default, as the segmentation).
    input_size: the side the model sees (default: its training ``image_size``; a multiple of the
      patch size); position embeddings are interpolated to other grids.
    background_words: words or phrases for the background (e.g. the ones training captions use);
      with them, each final group's background score is its best similarity to any of their
      prompts. Not class names: they play no part in the rankings.

  Each image is resized whole (not cropped: a crop could cut the objects the label counts) to
  ``input_size``.

  Returns:
    dict: ``mAP`` (percent, over classes present in at least one image), ``chance_mAP`` (percent:
    the mean frequency of those classes, what a ranking that carries no information scores in
    expectation), ``per_class_ap`` (``{name: percent or None}``), ``num_images``, ``input_size``.
    When no image contains any foreground class, ``mAP`` and ``chance_mAP`` are NaN.
    ``groups``: ``None`` for a model without grouping stages, else the same scores over the
    final groups (``mAP``, ``chance_mAP``, ``per_class_ap``), with ``num_groups`` (groups
    covering a labelled pixel), ``num_background_groups`` (those mostly on background),
    ``background_leak`` (percent of the background groups whose best class is present in their
    image; NaN without any) and ``within_image_auc`` (percent, over ``num_pairs`` pairs of groups
    of one image with different majority classes, the first on a class c: how often the first
    scores c higher; a tie counts half; NaN without pairs), ``num_background_pairs`` and
    ``background_word_auc`` (percent, over the pairs of a mostly-background and a mostly-object
    group of one image: how often the first has the higher background score; NaN without
    ``background_words`` or pairs).
  """
  # The threshold plays no part here; resolve_classes only insists on one when there is a
  # background.
  names, fg_names, with_bg, ignore = resolve_classes(
    spec_or_class_names, 0.0 if _starts_with_background(spec_or_class_names) else None
  )
  config = pretrained.config
  total = len(dataset) if max_images is None else min(len(dataset), max_images)
  if total < 1:
    raise ValueError('no images to score')
  if not isinstance(config, GroupViTConfig):
    return _embedding_naming(
      pretrained,
      dataset,
      names,
      fg_names,
      with_bg,
      ignore,
      total,
      batch_size,
      templates,
      input_size,
    )
  background_words = list(background_words or ())
  # One embedding table, one compiled call: the class columns first, then the background words.
  class_embed = jnp.asarray(
    prompts.class_embeddings(
      config,
      pretrained.variables,
      pretrained.tokenize,
      list(fg_names) + background_words,
      templates,
    ),
    jnp.float32,
  )
  num_classes = len(fg_names)
  size = pooled.checked_input_size(config, input_size)
  offset = 1 if with_bg else 0
  # Global (multi-host, sharded) training variables -> this process's first device, as the
  # segmenter does.
  variables = prompts.local_variables(pretrained.variables)
  with_groups = config.image.num_grouping_stages > 0
  grid = size // config.image.patch_size
  scores, targets, groups = [], [], _GroupItems(len(fg_names))
  for samples, pix in pooled.whole_image_batches(dataset, total, batch_size, size):
    if with_groups:
      out = jax.device_get(_group_scores(variables, jnp.asarray(pix), class_embed, config=config))
      s = out['image']
    else:
      s = np.asarray(_image_scores(variables, jnp.asarray(pix), class_embed, config=config))
    scores.append(s[: len(samples), :num_classes])
    for i, sample in enumerate(samples):
      label = np.asarray(sample.label).astype(np.int64)
      counted = (label != ignore) & (label >= 0) & (label < len(names))  # background included
      row = _targets(label, names, fg_names, offset, ignore)
      targets.append(row)
      if with_groups:
        ids = upsampled_group_ids(out['maps'][i].reshape(grid, grid, -1), *label.shape)
        sims = out['groups'][i]
        groups.add(
          ids[counted],
          label[counted] - offset,
          sims[:, :num_classes],
          row,
          sims[:, num_classes:].max(1) if background_words else None,
        )
  scores, targets = np.concatenate(scores), np.stack(targets)
  return {
    **_ranking_scores(scores, targets, fg_names),
    'num_images': int(total),
    'input_size': size,
    'groups': groups.result(fg_names) if with_groups else None,
  }


def _targets(label: np.ndarray, names, fg_names, offset: int, ignore) -> np.ndarray:
  """float32 [K]: 1 for each foreground class present in a label map."""
  label = np.asarray(label).astype(np.int64)
  counted = (label != ignore) & (label >= 0) & (label < len(names))
  row = np.zeros(len(fg_names), np.float32)
  row[np.unique(label[counted & (label >= offset)]) - offset] = 1.0
  return row


def _embedding_naming(
  pretrained, dataset, names, fg_names, with_bg, ignore, total, batch_size, templates, input_size
) -> dict:
  """Image-level naming of a model that is not a GroupViT (a CLIP, ZeroSeg, SCG's CLIP) through
  its `image_embeddings(uint8 [B, S, S, 3]) -> [B, E]` and `naming_input_size`."""
  size = int(input_size or pretrained.naming_input_size)
  class_embed = np.asarray(pretrained.class_embeddings(list(fg_names), templates), np.float32)
  offset = 1 if with_bg else 0
  scores, targets = [], []
  for start in range(0, total, batch_size):
    samples = [dataset[i] for i in range(start, min(total, start + batch_size))]
    pix = np.stack([resize_uint8(np.asarray(s.image, np.uint8), size, size) for s in samples])
    pad = batch_size - len(samples)
    if pad:  # one compiled shape for every batch
      pix = np.concatenate([pix, np.repeat(pix[-1:], pad, axis=0)])
    emb = np.array(pretrained.image_embeddings(pix), np.float32)[: len(samples)]
    emb /= np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
    scores.append(emb @ class_embed.T)
    targets.extend(_targets(s.label, names, fg_names, offset, ignore) for s in samples)
  scores, targets = np.concatenate(scores), np.stack(targets)
  return {
    **_ranking_scores(scores, targets, fg_names),
    'num_images': int(total),
    'input_size': size,
    'groups': None,
  }


def _ranking_scores(scores: np.ndarray, targets: np.ndarray, fg_names: Sequence[str]) -> dict:
  """mAP, chance mAP and per-class AP (percent) of items ``[N, K]`` ranked per class."""
  ap = average_precision(scores, targets)
  seen = targets.sum(0) > 0
  return {
    'mAP': 100.0 * nanmean(ap),  # NaN exactly for the classes not in `seen`
    'chance_mAP': 100.0 * float(np.mean(targets.mean(0)[seen])) if seen.any() else float('nan'),
    'per_class_ap': {n: (None if np.isnan(v) else 100.0 * float(v)) for n, v in zip(fg_names, ap)},
  }


def _pairs_won(higher: np.ndarray, lower: np.ndarray) -> tuple[int, float]:
  """(number of pairs, wins) over every pair of an item of ``higher`` ``[A]`` (or a scalar) and
  one of ``lower`` ``[B]``: a win when the first scores above the second, half a win on a tie
  (the pairwise form of the ROC AUC)."""
  diff = np.reshape(higher, (-1, 1)) - np.reshape(lower, (1, -1))
  return diff.size, float(np.sum(diff > 0) + 0.5 * np.sum(diff == 0))


class _GroupItems:
  """Collects one ranking item per final group that covers a labelled pixel, and the within-image
  pairs of groups that hold different classes."""

  def __init__(self, num_classes: int):
    self.num_classes = num_classes
    self.scores, self.targets = [], []
    self.background = self.leaks = 0
    self.pairs = self.pairs_won = 0.0
    self.background_pairs = self.background_pairs_won = 0.0

  def add(
    self,
    ids: np.ndarray,
    classes: np.ndarray,
    sims: np.ndarray,
    present: np.ndarray,
    background_scores: Optional[np.ndarray] = None,
  ):
    """One image.

    Args:
      ids: int ``[P]`` final group of each counted pixel.
      classes: int ``[P]`` its class, ``-1`` for background, else ``0..K-1``.
      sims: ``[G, K]`` each group's similarity to the classes.
      present: ``[K]`` 1 where the class is in the image.
      background_scores: ``[G]`` each group's background-word score, or None.
    """
    num_groups = sims.shape[0]
    sims = np.asarray(sims, np.float64)
    # Rows: groups; columns: background, then the K classes.
    joint = np.bincount(
      ids * (self.num_classes + 1) + classes + 1, minlength=num_groups * (self.num_classes + 1)
    )
    joint = joint.reshape(num_groups, self.num_classes + 1)
    visible = np.flatnonzero(joint.sum(1))
    majority = np.argmax(joint[visible], axis=1) - 1  # ties: background, then the lower class
    for g, c in zip(visible, majority):
      row = np.zeros(self.num_classes, np.float32)
      if c >= 0:
        row[c] = 1.0
        # Against every visible group of another class (or background) in the same image,
        # on this group's class: a win when it scores higher, half a win on a tie.
        n, won = _pairs_won(sims[g, c], sims[visible[majority != c], c])
        self.pairs += n
        self.pairs_won += won
      else:
        self.background += 1
        self.leaks += int(present[int(np.argmax(sims[g]))] > 0)
      self.scores.append(sims[g])
      self.targets.append(row)
    if background_scores is not None:
      bg = np.asarray(background_scores, np.float64)
      n, won = _pairs_won(bg[visible[majority < 0]], bg[visible[majority >= 0]])
      self.background_pairs += n
      self.background_pairs_won += won

  def result(self, fg_names: Sequence[str]) -> dict:
    if self.scores:
      out = _ranking_scores(np.stack(self.scores), np.stack(self.targets), fg_names)
    else:  # every pixel ignored: nothing to rank
      out = {
        'mAP': float('nan'),
        'chance_mAP': float('nan'),
        'per_class_ap': {n: None for n in fg_names},
      }
    nan = float('nan')
    out.update(
      num_groups=len(self.scores),
      num_background_groups=self.background,
      background_leak=100.0 * self.leaks / self.background if self.background else nan,
      num_pairs=int(self.pairs),
      within_image_auc=100.0 * self.pairs_won / self.pairs if self.pairs else nan,
      num_background_pairs=int(self.background_pairs),
      background_word_auc=(
        100.0 * self.background_pairs_won / self.background_pairs if self.background_pairs else nan
      ),
    )
    return out


def _starts_with_background(spec_or_class_names) -> bool:
  names = getattr(spec_or_class_names, 'class_names', spec_or_class_names)
  return bool(names) and str(names[0]).strip().lower() == 'background'
