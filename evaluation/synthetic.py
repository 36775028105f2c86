"""Zero-shot segmentation reader for the val split of the synthetic shapes dataset.

:class:`SyntheticSegmentationDataset` has the interface of the readers in :mod:`evaluation.datasets`
(``len()``, indexing, iteration over :class:`evaluation.datasets.Sample`, ``names``,
``class_names``,
``ignore_index``, ``spec``) but renders its examples on the fly from
:mod:`input_pipeline.synthetic_shapes` (about a millisecond each, deterministic), so nothing is
stored on disk. Labels: 0 = background, ``1..K`` = the categories of
:func:`input_pipeline.synthetic_shapes. category_names`; no pixel is ignored (``ignore_index`` = 255
never occurs).

The val split uses a random stream disjoint from the train split's for the same seed, so evaluating
on
``SyntheticSegmentationDataset(cfg, seed)`` after training on ``as_tf_dataset(cfg, seed, 'train')``
never shows a training image.
"""

from __future__ import annotations

from typing import Optional

from evaluation.class_names import DatasetSpec
from evaluation.datasets import Sample, SampleSequence
from input_pipeline import synthetic_shapes as ss

__all__ = ['DEFAULT_BACKGROUND_THRESHOLD', 'SyntheticSegmentationDataset', 'synthetic_spec']

# GroupViT's background rule: a pixel is background when its best foreground class probability (the
# softmax over the prompts of the group-text similarities, as for the released VOC 0.95 / Context
# 0.35) is below the threshold. With only 8-12 classes a moderately confident 0.5 is a sensible
# starting point; it is a knob: tune it on a separate seed's val split, never on the reported one.
DEFAULT_BACKGROUND_THRESHOLD = 0.5


def synthetic_spec(
  config: Optional[ss.SyntheticConfig] = None,
  background_threshold: float = DEFAULT_BACKGROUND_THRESHOLD,
) -> DatasetSpec:
  """The :class:`~evaluation.class_names.DatasetSpec` of the synthetic val split.

  Args:
    config: dataset knobs (``None`` = defaults); ``num_categories`` sets the class list.
    background_threshold: foreground-probability threshold below which a pixel is background
      (default :data:`DEFAULT_BACKGROUND_THRESHOLD`).

  Returns:
    spec named ``synthetic_shapes`` with ``class_names = prompt_names = ('background',
    *categories)`` (``C = K + 1``), no paper threshold, ``ignore_index`` 255.
  """
  names = ('background',) + tuple(ss.category_names(config or ss.SyntheticConfig()))
  return DatasetSpec('synthetic_shapes', names, names, float(background_threshold), None)


class SyntheticSegmentationDataset(SampleSequence):
  """The synthetic val split as a sequence of :class:`~evaluation.datasets.Sample`.

  Sample ``i`` is ``synthetic_shapes.generate(config, seed, i, split='val')``: ``image`` uint8
  ``[H, W, 3]``, ``label`` uint8 ``[H, W]`` (0 = background, ``1..K`` = category), named
  ``synthetic_<seed>_<i:06d>``.

  Args:
    config: dataset knobs (``None`` = defaults).
    seed: stream seed (same meaning as for training; the val stream is disjoint from train's).
    num_examples: number of samples (default ``config.num_val_examples``, 500).
    background_threshold: stored in :attr:`spec` (see :func:`synthetic_spec`).

  Attributes:
    names: ``N`` sample names.
    class_names: ``('background', *category_names)``.
    ignore_index: 255 (never present in the labels).
    spec: the :class:`~evaluation.class_names.DatasetSpec`.
    background_words: the phrases captions use for these backgrounds
      (:func:`~input_pipeline.synthetic_shapes.background_phrases`).
    config, seed: as given.
  """

  def __init__(
    self,
    config: Optional[ss.SyntheticConfig] = None,
    seed: int = 0,
    num_examples: Optional[int] = None,
    background_threshold: float = DEFAULT_BACKGROUND_THRESHOLD,
  ):
    self.config = config or ss.SyntheticConfig()
    self.seed = int(seed)
    if self.seed < 0:
      raise ValueError(f'seed must be >= 0, got {seed}')
    n = self.config.num_val_examples if num_examples is None else int(num_examples)
    if n < 1:
      raise ValueError(f'num_examples must be >= 1, got {num_examples}')
    self.spec = synthetic_spec(self.config, background_threshold)
    self.class_names = self.spec.class_names
    self.ignore_index = self.spec.ignore_index
    self.names = [f'synthetic_{self.seed}_{i:06d}' for i in range(n)]
    # The captions' words for the backgrounds, for naming's background-word placement score.
    self.background_words = tuple(ss.background_phrases(self.config))

  def _load(self, index: int) -> Sample:
    ex = ss.generate(self.config, self.seed, index, split='val')
    return Sample(self.names[index], ex['image'], ex['mask'])

  def example(self, index: int) -> dict:
    """The full :func:`~input_pipeline.synthetic_shapes.generate` dict of sample ``index``
    (caption, instance mask, categories, ...)."""
    if not 0 <= index < len(self):
      raise IndexError(index)
    return ss.generate(self.config, self.seed, index, split='val')

  def check_sizes(self) -> None:
    """No-op (rendered images and labels always agree); kept for interface parity."""

  def __repr__(self) -> str:
    return (
      f'{type(self).__name__}({len(self)} samples, {len(self.class_names)} classes, '
      f'seed={self.seed}, image_size={self.config.image_size})'
    )
