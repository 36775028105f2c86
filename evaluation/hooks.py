"""Periodic evaluation inside the trainer: the same zero-shot segmentation code as
`python -m evaluation.run`, on small held-out sets named in `config.eval.datasets`.

Dataset entries: 'synthetic' (the built-in shapes val split, rendered with the training data's
`config.data.synthetic` knobs and the seed `config.eval.synthetic_seed`), or 'NAME:PATH' with NAME
one of voc, context, coco_object, folder (PATH = the dataset root as for evaluation.run).

Each evaluation writes `WORKDIR/eval_<name>.json` (the full result: per-class IoU, confusion matrix,
protocol, timing, step) and, when `config.eval.num_visualize > 0`, `WORKDIR/eval_<name>.png`: one
row per image with the input, the groups of every stage, the prediction and the ground truth.
A model without grouping stages (the plain-ViT baseline) is scored by pixel-wise classification and
k-means on its tokens instead (`eval/<name>/pixel_mIoU`, `eval/<name>/kmeans_mIoU`). With
`config.eval.oracle`, also the oracle mIoU (every group relabelled with its best-IoU ground-truth
class: how well the groups follow objects, whatever their names). With `config.eval.naming`, also
`eval/<name>/naming_mAP` and `naming_chance_mAP` (image level: how well the pooled embedding ranks
the classes present, whatever the groups; evaluation/naming.py), stored under `naming` in the JSON;
for a model with groups also `group_naming_mAP`, `group_naming_chance_mAP` (the same ranking with
every final group's own embedding and majority class), `background_leak` (percent of background
groups whose best class is in their image) and `within_image_auc` (how often a group on class c
scores c above another group of its image that holds something else: 50 = group embeddings carry
only the image).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable, Optional

import ml_collections
import numpy as np
from PIL import Image

from evaluation.datasets import build_dataset
from evaluation.evaluator import evaluate_segmentation
from evaluation.inspect_groups import stack_rows
from evaluation.naming import image_naming
from evaluation.pooled import checked_input_size
from evaluation.synthetic import SyntheticSegmentationDataset
from evaluation.token_baselines import evaluate_token_baseline
from groupvit_jax.models.clip import CLIPConfig
from groupvit_jax.models.config import GroupViTConfig
from groupvit_jax.models.scg import SCGConfig
from groupvit_jax.models.zeroseg import ZeroSegConfig
from groupvit_jax.pretrained import Pretrained
from groupvit_jax.pretrained_scg import PretrainedSCG
from groupvit_jax.pretrained_towers import PretrainedCLIP
from groupvit_jax.pretrained_zeroseg import PretrainedZeroSeg
from input_pipeline.synthetic_shapes import SyntheticConfig

# (variables, step) -> {'eval/<name>/<metric>': value}
Evaluator = Callable[[dict[str, Any], int], dict[str, float]]


def default_eval_config() -> ml_collections.ConfigDict:
  """The trainer's `config.eval` section with its defaults.

  every_steps: 0 = no periodic evaluation. datasets: 'synthetic' or 'NAME:PATH' entries.
  threshold: None = the dataset's released background threshold (synthetic: 0.5). Each evaluation
  writes WORKDIR/eval_<name>.json and, with num_visualize > 0, a PNG grid WORKDIR/eval_<name>.png.
  synthetic_seed: the val stream of the built-in data (never the training stream).
  synthetic_scale: its images are resized by this factor before the model sees them (one window
  per image; position embeddings interpolated), as the release evaluates at twice its training
  size; 1 = the training resolution.
  kmeans_clusters: k of the k-means segmentation of models without grouping (ViT baseline).
  background_rules: how background is decided, the first rule the primary (`mIoU`, the JSON, the
  PNG grid), the others reported as `<rule>_mIoU`: 'threshold' (GroupViT's released rule at
  `threshold`) or 'vocabulary' (SCG's: the background words are extra classes and a group or
  region named as one is background; on the synthetic data the captions' background phrases).
  oracle, naming: also the oracle mIoU and the naming scores (module docstring).
  """
  return ml_collections.ConfigDict(
    dict(
      every_steps=0,
      datasets=(),
      max_images=64,
      mode='slide',
      threshold=ml_collections.config_dict.placeholder(float),
      num_visualize=8,
      synthetic_seed=0,
      synthetic_scale=1.0,
      kmeans_clusters=8,
      background_rules=('threshold',),
      oracle=True,
      naming=True,
    )
  )


def synthetic_eval_size(
  image_size: int, eval_config: ml_collections.ConfigDict, model_config: GroupViTConfig
) -> int:
  """The side synthetic val images are resized to: `image_size * config.eval.synthetic_scale`.

  Raises ValueError unless it is a positive multiple of the model's patch size.
  """

  scale = float(eval_config.get('synthetic_scale', 1.0))
  try:
    size = int(round(image_size * scale))
    if not isinstance(model_config, GroupViTConfig):
      q = _patch_multiple(model_config)
      if size <= 0 or size % q:
        raise ValueError(f'input size {size} must be a positive multiple of {q}')
      return size
    return checked_input_size(model_config, size)
  except ValueError as e:
    raise ValueError(
      f'config.eval.synthetic_scale={scale} resizes the {image_size} px val images: {e}'
    ) from None


def _patch_multiple(model_config: CLIPConfig | SCGConfig | ZeroSegConfig) -> int:
  if isinstance(model_config, SCGConfig):
    return model_config.patch_multiple
  if isinstance(model_config, CLIPConfig):
    return model_config.vision.patch_size
  return model_config.encoder.patch_size


def trained_model(model_config, variables: dict[str, Any]):
  """The inference object of a model's variables: a training state's {'params', 'batch_stats'}
  (SCG and ZeroSeg keep their frozen towers in `batch_stats`: groupvit_jax/scg_train.py,
  groupvit_jax/zeroseg_train.py) or a model directory's (`store.save_model`)."""
  frozen = variables.get('batch_stats', variables)
  if isinstance(model_config, SCGConfig):
    towers = {k: frozen[k] for k in ('clip', 'grouper', 'centroids') if k in frozen}
    return PretrainedSCG(model_config, dict(towers, params=variables['params']))
  if isinstance(model_config, ZeroSegConfig):
    return PretrainedZeroSeg(
      model_config, {'params': variables['params'], 'teacher': frozen['teacher']}
    )
  if isinstance(model_config, CLIPConfig):
    return PretrainedCLIP(model_config, {'params': variables['params']})
  return Pretrained(model_config, variables)


BACKGROUND_RULES = ('threshold', 'vocabulary')


def _background_rules(eval_config: ml_collections.ConfigDict) -> tuple[str, ...]:
  rules = tuple(eval_config.get('background_rules', ('threshold',)))
  if not rules or len(set(rules)) != len(rules) or set(rules) - set(BACKGROUND_RULES):
    raise ValueError(
      f'config.eval.background_rules {rules}: distinct rules from {BACKGROUND_RULES}, the first '
      'the primary'
    )
  return rules


def _background_vocabulary(name: str, data) -> list[str]:
  """The vocabulary rule's background words: the synthetic captions' background phrases, or a
  benchmark's (evaluation/class_names.py)."""
  words = getattr(data, 'background_words', None)
  if words:
    return list(words)
  from evaluation.class_names import background_vocabulary

  return list(background_vocabulary(name))


def _dataset(
  entry: str,
  eval_config: ml_collections.ConfigDict,
  data_config: Optional[ml_collections.ConfigDict],
  model_config: GroupViTConfig,
):
  """(name, dataset, spec, protocol geometry) of one `config.eval.datasets` entry."""
  if entry == 'synthetic':
    knobs = data_config.get('synthetic') if data_config is not None else None
    synth = SyntheticConfig.from_dict(knobs)
    data = SyntheticSegmentationDataset(
      synth, seed=int(eval_config.synthetic_seed), num_examples=int(eval_config.max_images)
    )
    # One window per image, at the training resolution unless `synthetic_scale` asks for a multiple
    # of it (as the release evaluates at twice its training size): the released 448 px geometry
    # would upsample a 64 px image sevenfold.
    size = synthetic_eval_size(synth.image_size, eval_config, model_config)
    geometry = dict(crop_size=size, stride=size, short_side=size, long_side=size)
    return 'synthetic', data, data.spec, geometry
  name, sep, root = entry.partition(':')
  if not sep or not root:
    raise ValueError(f"eval dataset {entry!r}: expected 'synthetic' or 'NAME:PATH'")

  data = build_dataset(name, root)
  return name, data, data.spec if name != 'folder' else list(data.class_names), {}


def _write_grid(panel_dir: str, path: str) -> None:
  """Stacks the per-image panels of `panel_dir` (sorted by name) into one PNG."""

  panels = [
    Image.open(os.path.join(panel_dir, f)).convert('RGB')
    for f in sorted(os.listdir(panel_dir))
    if f.endswith('.png')
  ]
  if not panels:
    return
  tmp = path + '.tmp.png'
  stack_rows(panels).save(tmp)
  os.replace(tmp, path)


def _write_json(path: str, obj: Any) -> None:
  """Writes `obj` as JSON, atomically (a reader never sees half a file)."""
  with open(path + '.tmp', 'w') as f:
    json.dump(obj, f, indent=1)
  os.replace(path + '.tmp', path)


def _jsonable(result: dict, step: int) -> dict:
  out = {'step': int(step)}
  for k, v in result.items():
    out[k] = v.tolist() if isinstance(v, np.ndarray) else v
  return out


def _naming(eval_config, pretrained, name, data, spec, metrics, results, input_size) -> None:
  """Adds the image-level naming scores to `metrics` and `results` when `config.eval.naming`."""
  if not eval_config.naming:
    return

  background_words = getattr(data, 'background_words', None)  # the synthetic split has them
  result = image_naming(
    pretrained,
    data,
    spec,
    max_images=int(eval_config.max_images),
    input_size=input_size,
    background_words=background_words,
  )
  results['naming'] = result
  metrics[f'eval/{name}/naming_mAP'] = float(result['mAP'])
  metrics[f'eval/{name}/naming_chance_mAP'] = float(result['chance_mAP'])
  if result['groups'] is not None:
    metrics[f'eval/{name}/group_naming_mAP'] = float(result['groups']['mAP'])
    metrics[f'eval/{name}/group_naming_chance_mAP'] = float(result['groups']['chance_mAP'])
    metrics[f'eval/{name}/background_leak'] = float(result['groups']['background_leak'])
    metrics[f'eval/{name}/within_image_auc'] = float(result['groups']['within_image_auc'])
    if background_words:
      metrics[f'eval/{name}/background_word_auc'] = float(result['groups']['background_word_auc'])


def _naming_evaluator(
  eval_config, model_config, workdir, name, data, spec, is_main_process, input_size
) -> Evaluator:
  """A plain CLIP has no groups to segment with: its evaluation is image-level naming."""

  def run(variables, step):
    metrics, results = {}, {'step': int(step)}
    pretrained = trained_model(model_config, variables)
    _naming(eval_config, pretrained, name, data, spec, metrics, results, input_size)
    if is_main_process and workdir:
      _write_json(os.path.join(workdir, f'eval_{name}.json'), results)
    return metrics

  return run


def _token_baseline_evaluator(
  eval_config, model_config, workdir, name, data, spec, threshold, is_main_process, input_size
) -> Evaluator:
  """A model without grouping (plain ViT baseline) has no groups to segment with: score it by
  pixel-wise classification and by k-means on its patch tokens (evaluation/token_baselines.py)."""

  def run(variables, step):
    metrics, results = {}, {}
    pretrained = Pretrained(model_config, variables)
    for method in ('pixel', 'kmeans'):
      result = evaluate_token_baseline(
        pretrained,
        data,
        spec,
        threshold=threshold,
        method=method,
        num_clusters=int(eval_config.kmeans_clusters),
        max_images=int(eval_config.max_images),
        input_size=input_size,
      )
      results[method] = _jsonable(result, step)
      metrics[f'eval/{name}/{method}_mIoU'] = float(result['mIoU'])
      metrics[f'eval/{name}/{method}_accuracy'] = float(result['pixel_accuracy'])
      if result['oracle'] is not None:
        metrics[f'eval/{name}/{method}_oracle_mIoU'] = float(result['oracle']['mIoU'])
    _naming(eval_config, pretrained, name, data, spec, metrics, results, input_size)
    if is_main_process and workdir:
      _write_json(os.path.join(workdir, f'eval_{name}.json'), results)
    return metrics

  return run


def build_evaluators(
  eval_config: ml_collections.ConfigDict,
  model_config: GroupViTConfig,
  workdir: str,
  data_config: Optional[ml_collections.ConfigDict] = None,
  is_main_process: bool = True,
) -> list[Evaluator]:
  """One callable per dataset: (variables, step) -> {'eval/<name>/<metric>': value}.

  Datasets are opened (and missing paths reported) here, at start-up, not at the first evaluation.
  Files (`eval_<name>.json`, `eval_<name>.png`) are written by the main process only.
  """

  _background_rules(eval_config)  # a bad rule is an error at start
  evaluators = []
  for entry in eval_config.datasets:
    name, data, spec, geometry = _dataset(entry, eval_config, data_config, model_config)
    input_size = geometry.get('crop_size')  # naming and token baselines see what the segmenter sees
    threshold = eval_config.threshold
    if threshold is None:
      threshold = getattr(spec, 'background_threshold', None)

    if isinstance(model_config, CLIPConfig):  # no groups: image-level naming only
      evaluators.append(
        _naming_evaluator(
          eval_config, model_config, workdir, name, data, spec, is_main_process, input_size
        )
      )
      continue
    is_groupvit = isinstance(model_config, GroupViTConfig)
    if is_groupvit and model_config.image.num_grouping_stages == 0:
      evaluators.append(
        _token_baseline_evaluator(
          eval_config,
          model_config,
          workdir,
          name,
          data,
          spec,
          threshold,
          is_main_process,
          input_size,
        )
      )
      continue

    def run(
      variables,
      step,
      name=name,
      data=data,
      spec=spec,
      threshold=threshold,
      geometry=geometry,
      input_size=input_size,
    ):
      rules = _background_rules(eval_config)
      num_vis = int(eval_config.num_visualize) if is_main_process and workdir else 0
      pretrained = trained_model(model_config, variables)
      runs = {}
      for i, rule in enumerate(rules):
        kwargs = dict(threshold=threshold, background_words=None)
        if rule == 'vocabulary':
          kwargs = dict(threshold=None, background_words=_background_vocabulary(name, data))
        vis = num_vis if i == 0 else 0
        with tempfile.TemporaryDirectory() as panel_dir:
          runs[rule] = evaluate_segmentation(
            pretrained,
            data,
            spec,
            mode=eval_config.mode,
            max_images=int(eval_config.max_images),
            boundary=False,
            oracle=bool(eval_config.oracle) and i == 0,
            visualize=vis,
            visualize_dir=panel_dir,
            **kwargs,
            **geometry,
          )
          if vis:
            _write_grid(panel_dir, os.path.join(workdir, f'eval_{name}.png'))
      result = runs[rules[0]]
      metrics = {
        f'eval/{name}/mIoU': float(result['mIoU']),
        f'eval/{name}/pixel_accuracy': float(result['pixel_accuracy']),
        f'eval/{name}/images_per_s': float(result['timing']['images_per_second']),
      }
      if result['oracle'] is not None:
        metrics[f'eval/{name}/oracle_mIoU'] = float(result['oracle']['mIoU'])
      result = _jsonable(result, step)
      result['background_rule'] = rules[0]
      for rule in rules[1:]:
        metrics[f'eval/{name}/{rule}_mIoU'] = float(runs[rule]['mIoU'])
        result.setdefault('other_background_rules', {})[rule] = _jsonable(runs[rule], step)
      _naming(eval_config, pretrained, name, data, spec, metrics, result, input_size)
      if is_main_process and workdir:
        _write_json(os.path.join(workdir, f'eval_{name}.json'), result)
      return metrics

    evaluators.append(run)
  return evaluators
