"""Periodic evaluation inside the trainer: the same zero-shot segmentation code as
`python -m evaluation.run`, on small held-out sets named in `config.eval.datasets`.

Dataset entries: 'synthetic' (the built-in shapes val split), or 'NAME:PATH' with NAME one of
voc, context, coco_object, folder (PATH = the dataset root as for evaluation.run).
"""

from __future__ import annotations

from typing import Any, Callable

import ml_collections

from groupvit_jax.models.config import GroupViTConfig
from groupvit_jax.pretrained import Pretrained

Evaluator = Callable[[dict[str, Any]], dict[str, float]]


def _dataset(entry: str, max_images: int):
  if entry == 'synthetic':
    from evaluation.synthetic import SyntheticSegmentationDataset  # pylint: disable=g-import-not-at-top
    data = SyntheticSegmentationDataset(num_examples=max_images)
    return 'synthetic', data, data.spec
  name, sep, root = entry.partition(':')
  if not sep or not root:
    raise ValueError(f"eval dataset {entry!r}: expected 'synthetic' or 'NAME:PATH'")
  from evaluation.datasets import build_dataset  # pylint: disable=g-import-not-at-top
  data = build_dataset(name, root)
  return name, data, data.spec if name != 'folder' else list(data.class_names)


def build_evaluators(eval_config: ml_collections.ConfigDict, model_config: GroupViTConfig,
                     workdir: str) -> list[Evaluator]:
  """One callable per dataset: variables -> {'eval/<name>/<metric>': value}. Datasets are opened
  (and missing paths reported) here, at start-up, not at the first evaluation."""
  del workdir
  from evaluation.evaluator import evaluate_segmentation  # pylint: disable=g-import-not-at-top
  evaluators = []
  for entry in eval_config.datasets:
    name, data, spec = _dataset(entry, int(eval_config.max_images))
    threshold = eval_config.threshold
    if threshold is None:
      threshold = getattr(spec, 'background_threshold', None)

    def run(variables, name=name, data=data, spec=spec, threshold=threshold):
      result = evaluate_segmentation(
          Pretrained(model_config, variables), data, spec, threshold=threshold,
          mode=eval_config.mode, max_images=int(eval_config.max_images), boundary=False)
      return {f'eval/{name}/mIoU': float(result['mIoU']),
              f'eval/{name}/pixel_accuracy': float(result['pixel_accuracy']),
              f'eval/{name}/images_per_s': float(result['timing']['images_per_second'])}

    evaluators.append(run)
  return evaluators
