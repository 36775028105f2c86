"""Zero-shot evaluation of a model directory: segmentation benchmarks or ImageNet-style
classification.

    python -m evaluation.run --checkpoint DIR --dataset voc --data_dir VOCdevkit --output voc.json
    python -m evaluation.run --checkpoint DIR --dataset context --data_dir VOCdevkit
    --paper_threshold \
        --output ctx.json
    python -m evaluation.run --checkpoint DIR --dataset folder --data_dir MY_SET --threshold 0.9 \
        --save_predictions preds/ --visualize 8 --output my.json
    python -m evaluation.run --checkpoint DIR --dataset imagenet_folder --data_dir imagenet/val \
        --output in1k.json [--class_names names.txt] [--templates subset]

Segmentation (``voc``, ``context``, ``coco_object``, ``folder``): the released protocol of
:mod:`groupvit_jax.segmenter`; the background threshold defaults to the released config's (VOC 0.95,
Context 0.35, COCO-Object 0.95); ``--paper_threshold`` uses the paper's, ``--threshold X`` any
value. A ``folder`` dataset (``images/``, ``labels/``, ``classes.txt``) with ``background`` as its
first class needs ``--threshold``. The JSON holds every metric (``mIoU``, ``per_class_iou``,
``pixel_accuracy``, boundary IoU, oracle mIoU with ``--oracle``, image- and group-level naming with
``--naming``), the confusion matrix, the configuration and timing.

Classification (``imagenet_folder``): :mod:`evaluation.classification` (top-1/top-5, 7 templates).

Synthetic (``synthetic``): re-scores a model trained on the built-in data with the trainer's own
evaluation hook (``evaluation/hooks.py``: one window per image, oracle and naming scores, the
plain-ViT baselines for a model without grouping stages) on another val stream, more images, another
background threshold, another resolution (``--synthetic_scale``: a multiple of the training size, as
the release segments at twice its own) or other generator knobs than it was trained and evaluated
with. ``--data_dir`` is the training run's workdir; its ``config.json`` gives the generator's knobs
and the evaluation settings, which the flags override (``--data_dir`` left out: the default knobs)::

    python -m evaluation.run --checkpoint RUN/model --dataset synthetic --data_dir RUN \
        --synthetic_seed 7 --max_images 500 --synthetic max_objects=3 --synthetic rotation=True \
        --output RUN/eval_seed7_hard.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import jax
import ml_collections
import numpy as np

from evaluation import class_names as cn
from evaluation import datasets, hooks
from evaluation.classification import evaluate_classification
from evaluation.evaluator import evaluate_segmentation
from evaluation.metrics import json_safe
from evaluation.naming import image_naming
from groupvit_jax import load_pretrained
from groupvit_jax.config_lib import parse_override
from input_pipeline.synthetic_shapes import SyntheticConfig

__all__ = ['main']


def _parse_scales(text: str) -> tuple[float, ...]:
  try:
    scales = tuple(float(s) for s in text.split(',') if s.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(f'--scales expects comma-separated numbers, got {text!r}')
  if not scales or any(s <= 0 for s in scales):
    raise argparse.ArgumentTypeError(f'--scales must be positive numbers, got {text!r}')
  return scales


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument(
    '--checkpoint',
    default=None,
    help='model directory (groupvit_jax.convert or trainer; a trained SCG model directory)',
  )
  p.add_argument(
    '--method',
    choices=('groupvit', 'scg'),
    default=None,
    help="the method (default: the checkpoint's kind; scg when --clip and --grouper are given)",
  )
  p.add_argument('--clip', default=None, help='SCG without training: a converted CLIP directory')
  p.add_argument(
    '--grouper', default=None, help='SCG without training: a converted DINO / ViT / MAE directory'
  )
  p.add_argument(
    '--scg',
    action='append',
    default=[],
    metavar='KEY=VALUE',
    help='SCG setting (groupvit_jax/models/scg.py SCGConfig: num_regions, kmeans_iters, '
    'grouper_layer, masking), repeatable',
  )
  p.add_argument(
    '--centroids', default=None, help='SCG: dataset-level centroids, an .npy file [M, C]'
  )
  p.add_argument(
    '--background',
    choices=('threshold', 'vocabulary'),
    default=None,
    help="background rule: 'threshold' (GroupViT's) or 'vocabulary' (SCG's: a region named as "
    "one of the dataset's background words is background); default: GroupViT threshold, SCG "
    "vocabulary; with --dataset synthetic the other rule is reported too (default: the run's)",
  )
  p.add_argument(
    '--background_words',
    default=None,
    help='file of background words (one per line) for the vocabulary rule (default: the '
    "dataset's list, evaluation/class_names.py BACKGROUND_VOCABULARIES)",
  )
  p.add_argument(
    '--dataset',
    required=True,
    help='voc | context | coco_object | folder | imagenet_folder | synthetic',
  )
  p.add_argument(
    '--data_dir', default=None, help="dataset root (synthetic: the training run's workdir)"
  )
  p.add_argument('--output', required=True, help='result JSON path')
  p.add_argument('--split', default=None, help='split (default: val; val2017 for coco_object)')
  g = p.add_mutually_exclusive_group()
  g.add_argument('--threshold', type=float, default=None, help='background threshold')
  g.add_argument(
    '--paper_threshold',
    action='store_true',
    help="the paper's threshold instead of the released config's",
  )
  p.add_argument('--mode', choices=('slide', 'whole'), default='slide')
  p.add_argument('--scales', type=_parse_scales, default=(1.0,), help='e.g. 1.0,1.5')
  p.add_argument('--flip', action='store_true', help='add horizontally flipped views')
  p.add_argument(
    '--templates',
    default=None,
    help='template set: simple | subset | full | identity (default: simple for segmentation, '
    'subset for classification)',
  )
  p.add_argument('--max_images', type=int, default=None)
  p.add_argument('--save_predictions', default=None, help='folder for <name>.png predictions')
  p.add_argument(
    '--visualize', type=int, default=0, metavar='N', help='write N side-by-side panels'
  )
  p.add_argument(
    '--visualize_dir', default=None, help='panel folder (default: <output dir>/visualize)'
  )
  p.add_argument(
    '--oracle',
    action='store_true',
    help='also the oracle mIoU (groups given their best-IoU ground-truth class)',
  )
  p.add_argument(
    '--naming',
    action='store_true',
    help='also image- and group-level naming '
    '(evaluation/naming.py: naming mAP, group naming mAP, background leak, within-image '
    "AUC), each image resized whole to the model's input size",
  )
  p.add_argument('--no_boundary', action='store_true', help='skip boundary IoU')
  p.add_argument('--batch_windows', type=int, default=4, help='windows per device call')
  p.add_argument('--tile_size', type=int, default=512)
  p.add_argument('--tile_batch', type=int, default=2)
  p.add_argument(
    '--num_devices', type=int, default=None, help='use the first N local devices (default: all)'
  )
  p.add_argument(
    '--class_names',
    default=None,
    help='class-name file (folder datasets: overrides classes.txt; imagenet_folder: one '
    'name per class folder in sorted order)',
  )
  p.add_argument('--batch_size', type=int, default=32, help='classification batch size')
  p.add_argument('--log_every', type=int, default=50)
  p.add_argument(
    '--synthetic_seed',
    type=int,
    default=None,
    help="synthetic: the val stream's seed (default: the run's config.eval.synthetic_seed)",
  )
  p.add_argument(
    '--synthetic_scale',
    type=float,
    default=None,
    help='synthetic: evaluate at this multiple of the training resolution (the image is '
    "resized by it before the model sees it; default: the run's config.eval."
    'synthetic_scale)',
  )
  p.add_argument(
    '--synthetic',
    action='append',
    default=[],
    metavar='KEY=VALUE',
    help='synthetic: a generator knob (input_pipeline/synthetic_shapes.py SyntheticConfig), '
    'e.g. max_objects=3; repeatable',
  )
  return p


def _synthetic_configs(args) -> tuple[Any, Any]:
  """(eval config, data config) for the hook: the run's saved ones (or the defaults), then the
  command line's flags."""
  eval_cfg = hooks.default_eval_config().to_dict()
  knobs = SyntheticConfig().to_dict()
  if args.data_dir is not None:
    path = Path(args.data_dir) / 'config.json'
    if not path.is_file():
      raise FileNotFoundError(
        f"{path} not found: --dataset synthetic takes the training run's workdir "
        f"as --data_dir (its config.json holds the generator's knobs); leave "
        f'--data_dir out for the default knobs'
      )
    saved = json.loads(path.read_text())
    eval_cfg.update(saved.get('eval', {}))
    knobs.update(saved.get('data', {}).get('synthetic', {}))
  for item in args.synthetic:
    key, value = parse_override(item, '--synthetic')
    knobs[key] = value
  SyntheticConfig.from_dict(knobs)  # unknown keys and bad values are reported here, by name
  eval_cfg.update(
    datasets=('synthetic',),
    num_visualize=args.visualize,
    oracle=bool(eval_cfg.get('oracle')) or args.oracle,
    naming=bool(eval_cfg.get('naming')) or args.naming,
    max_images=args.max_images or int(eval_cfg['max_images']),
  )
  if args.synthetic_seed is not None:
    eval_cfg['synthetic_seed'] = args.synthetic_seed
  if args.threshold is not None:
    eval_cfg['threshold'] = args.threshold
  if args.synthetic_scale is not None:
    eval_cfg['synthetic_scale'] = args.synthetic_scale
  if args.background is not None:  # the other rule is reported too, as <rule>_mIoU
    other = [r for r in hooks.BACKGROUND_RULES if r != args.background]
    eval_cfg['background_rules'] = (args.background, *other)
  return ml_collections.ConfigDict(eval_cfg), ml_collections.ConfigDict({'synthetic': knobs})


def _evaluate_synthetic(args, model) -> tuple[dict, str]:
  """(result, summary line) of the trainer's synthetic evaluation hook on `model`."""

  if args.paper_threshold:
    raise ValueError('--paper_threshold needs a benchmark dataset (voc, context, coco_object)')
  eval_cfg, data_cfg = _synthetic_configs(args)
  with tempfile.TemporaryDirectory() as tmp:
    (evaluator,) = hooks.build_evaluators(eval_cfg, model.config, tmp, data_config=data_cfg)
    metrics = evaluator(model.variables, 0)
    result = json.loads((Path(tmp) / 'eval_synthetic.json').read_text())
    grid = Path(tmp) / 'eval_synthetic.png'
    if args.visualize and grid.exists():
      vis_dir = Path(args.visualize_dir or Path(args.output).resolve().parent / 'visualize')
      vis_dir.mkdir(parents=True, exist_ok=True)
      shutil.copyfile(grid, vis_dir / 'synthetic.png')
  # The hook's JSON records the training step; a saved model carries none.
  for part in (result, *(v for v in result.values() if isinstance(v, dict))):
    part.pop('step', None)
  result['task'] = 'segmentation'
  result['dataset'] = {
    'name': 'synthetic',
    'run_dir': args.data_dir,
    'seed': int(eval_cfg.synthetic_seed),
    'knobs': data_cfg.synthetic.to_dict(),
  }
  if 'num_images' not in result:  # the ViT baselines: {'pixel': ..., 'kmeans': ...}
    result['num_images'] = result['pixel']['num_images']
    result['timing'] = result['pixel']['timing']
  summary = '  '.join(
    f'{k.split("/", 2)[-1]} {v:.2f}'
    for k, v in sorted(metrics.items())
    if not k.endswith('images_per_s')
  )
  return result, summary


def _check_model_fits_task(model, checkpoint: str, dataset_name: str) -> None:
  """Converted towers do not segment: a CLIP classifies (and names synthetic images), DINO and
  MAE have no text tower."""
  kind = getattr(model, 'kind', 'groupvit')
  classification = dataset_name in ('imagenet_folder', 'imagenet', 'classification')
  if kind == 'clip' and not (classification or dataset_name == 'synthetic'):
    raise ValueError(
      f'{checkpoint} is a CLIP: it evaluates zero-shot classification (--dataset '
      f'imagenet_folder) and image-level naming (--dataset synthetic), not --dataset {dataset_name}'
    )
  if kind in ('scg', 'zeroseg') and classification:
    raise ValueError(f'a {kind} model segments, it does not classify: not {dataset_name}')
  if kind in ('vit', 'mae'):
    raise ValueError(
      f'{checkpoint} is a {"DINO/timm ViT" if kind == "vit" else "MAE"} without a text tower: '
      'it cannot name classes zero-shot; use its features() instead'
    )


def _load_model(args):
  """The model of the command line: a model directory, or SCG from --clip and --grouper."""
  towers = args.clip is not None or args.grouper is not None
  method = args.method or ('scg' if towers else None)
  if towers:
    if args.checkpoint is not None:
      raise ValueError('give --checkpoint (a model directory) or --clip and --grouper, not both')
    if args.clip is None or args.grouper is None or method != 'scg':
      raise ValueError('SCG without training needs --method scg, --clip DIR and --grouper DIR')
    from groupvit_jax.pretrained_scg import PretrainedSCG

    overrides = dict(parse_override(item, '--scg') for item in args.scg)
    centroids = np.load(args.centroids) if args.centroids else None
    return PretrainedSCG.from_towers(args.clip, args.grouper, centroids=centroids, **overrides)
  if args.checkpoint is None:
    raise ValueError('--checkpoint is required (or --method scg --clip DIR --grouper DIR)')
  model = load_pretrained(args.checkpoint)
  kind = getattr(model, 'kind', 'groupvit')
  if method is not None and method != kind and kind in ('groupvit', 'scg'):
    raise ValueError(f'--method {method} but {args.checkpoint} holds a {kind} model')
  if args.scg or args.centroids:
    if kind != 'scg':
      raise ValueError('--scg and --centroids apply to SCG models only')
    if args.scg:
      import dataclasses

      overrides = dict(parse_override(item, '--scg') for item in args.scg)
      model = type(model)(dataclasses.replace(model.config, **overrides), model.variables)
    if args.centroids:
      model = model.with_centroids(np.load(args.centroids))
  return model


def _background_words(args, model, spec) -> Optional[list[str]]:
  """The background words of the vocabulary rule, or None for the threshold rule."""
  rule = args.background or ('vocabulary' if getattr(model, 'kind', '') == 'scg' else 'threshold')
  if rule == 'threshold':
    if args.background_words:
      raise ValueError('--background_words needs --background vocabulary')
    return None
  if args.threshold is not None or args.paper_threshold:
    raise ValueError('the vocabulary rule takes no --threshold / --paper_threshold')
  if args.background_words:
    words = [w.strip() for w in Path(args.background_words).read_text().splitlines()]
    words = [w for w in words if w]
    if not words:
      raise ValueError(f'{args.background_words} holds no words')
    return words
  if spec is None:
    raise ValueError('a folder dataset needs --background_words FILE for the vocabulary rule')
  return list(cn.background_vocabulary(spec.name))


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(argv)

  dataset_name = args.dataset.strip().lower()
  try:
    if args.data_dir is None and dataset_name != 'synthetic':
      raise ValueError(f'--data_dir is required for --dataset {args.dataset}')
    model = _load_model(args)
    _check_model_fits_task(model, args.checkpoint or args.clip, dataset_name)
    if dataset_name == 'synthetic':
      result, summary = _evaluate_synthetic(args, model)
    elif dataset_name in ('imagenet_folder', 'imagenet', 'classification'):
      result = evaluate_classification(
        model,
        args.data_dir,
        args.class_names,
        templates=args.templates or 'subset',
        batch_size=args.batch_size,
        max_images=args.max_images,
      )
      result['task'] = 'classification'
      summary = f'top1 {result["top1"]:.2f}  top5 {result.get("top5", float("nan")):.2f}'
    else:
      kwargs = {}
      if dataset_name == 'folder' and args.class_names:
        kwargs['class_names'] = datasets.read_class_names(args.class_names)
      ds = datasets.build_dataset(dataset_name, args.data_dir, args.split, **kwargs)
      spec = ds.spec
      words = _background_words(args, model, spec) if spec is not None or args.background else None
      if words is not None:
        classes = spec if spec is not None else list(ds.class_names)
        threshold = None
      elif spec is not None and getattr(model, 'kind', '') == 'zeroseg' and args.threshold is None:
        # ZeroSeg's own paper quotes one threshold per benchmark; its default and its paper's.
        threshold = cn.ZEROSEG_BACKGROUND_THRESHOLDS[spec.name]
        classes = spec
      elif spec is not None:
        threshold = (
          args.threshold
          if args.threshold is not None
          else spec.paper_background_threshold
          if args.paper_threshold and spec.paper_background_threshold is not None
          else spec.background_threshold
        )
        if args.paper_threshold and spec.paper_background_threshold is None:
          print(
            f'note: the paper quotes no threshold for {spec.name}; using the released '
            f'{spec.background_threshold}',
            file=sys.stderr,
          )
        classes = spec
      else:
        if args.paper_threshold:
          raise ValueError(
            '--paper_threshold needs a benchmark dataset (voc, context, coco_object)'
          )
        classes = list(ds.class_names)
        threshold = args.threshold if classes[0].strip().lower() == 'background' else None
        if args.threshold is not None and threshold is None:
          raise ValueError("--threshold given but the folder's first class is not 'background'")
      vis_dir = args.visualize_dir or str(Path(args.output).resolve().parent / 'visualize')

      devices = jax.local_devices()[: args.num_devices] if args.num_devices else None
      result = evaluate_segmentation(
        model,
        ds,
        classes,
        threshold=threshold,
        mode=args.mode,
        batch_windows=args.batch_windows,
        max_images=args.max_images,
        save_predictions=args.save_predictions,
        visualize=args.visualize,
        visualize_dir=vis_dir,
        oracle=args.oracle,
        boundary=not args.no_boundary,
        scales=args.scales,
        flip=args.flip,
        templates=args.templates or 'simple',
        tile_size=args.tile_size,
        tile_batch=args.tile_batch,
        log_every=args.log_every,
        devices=devices,
        background_words=words,
      )
      if args.naming:
        result['naming'] = image_naming(
          model, ds, classes, max_images=args.max_images, templates=args.templates or 'simple'
        )
      result['task'] = 'segmentation'
      result['dataset'] = {
        'name': dataset_name,
        'data_dir': str(args.data_dir),
        'split': args.split,
      }
      summary = f'mIoU {result["mIoU"]:.2f}  pixel accuracy {result["pixel_accuracy"]:.2f}'
      if args.naming:
        groups = result['naming']['groups'] or {}
        summary += (
          f'  naming mAP {result["naming"]["mAP"]:.2f}  within-image AUC '
          f'{groups.get("within_image_auc", float("nan")):.2f}'
        )
  except (FileNotFoundError, ValueError, KeyError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  result['checkpoint'] = str(args.checkpoint)
  if args.clip is not None:
    result['towers'] = {'clip': str(args.clip), 'grouper': str(args.grouper)}
  result['command'] = 'python -m evaluation.run ' + ' '.join(
    argv if argv is not None else sys.argv[1:]
  )

  out = Path(args.output)
  out.parent.mkdir(parents=True, exist_ok=True)
  with open(out, 'w', encoding='utf-8') as f:
    json.dump(json_safe(result), f, indent=2, allow_nan=False)
    f.write('\n')
  print(f'{summary}  ({result["num_images"]} images, {result["timing"]["seconds"]:.1f} s) -> {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
