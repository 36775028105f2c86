"""Helpers shared by the recipe files in `configs/`: typed model sections, argument parsing."""

from __future__ import annotations

import ast
from typing import Any

import ml_collections

from groupvit_jax.models.config import GroupViTConfig


def model_config(**overrides) -> ml_collections.ConfigDict:
  """The released GroupViT-S as a ConfigDict, with nested overrides, e.g.
  model_config(image=dict(depths=(6, 6)), multi_label=False). Unknown keys raise."""
  base = GroupViTConfig().to_dict()
  for key, value in overrides.items():
    if key not in base:
      raise KeyError(f'unknown model key {key!r}; valid: {sorted(base)}')
    if isinstance(value, dict):
      unknown = set(value) - set(base[key])
      if unknown:
        raise KeyError(f'unknown model.{key} key(s) {sorted(unknown)}; valid: {sorted(base[key])}')
      base[key].update(value)
    else:
      base[key] = value
  GroupViTConfig.from_dict(base)  # validates
  return ml_collections.ConfigDict(base)


def build_model_config(config: ml_collections.ConfigDict) -> GroupViTConfig:
  """The typed model config of a recipe (`config.model`)."""
  return GroupViTConfig.from_dict(config.model)


def parse_override(item: str, flag: str) -> tuple[str, Any]:
  """``'KEY=VALUE'`` -> ``(KEY, VALUE)``, the value as a Python literal (``3``, ``True``,
  ``(0.1, 0.3)``) or else the raw string. Raises ValueError naming ``flag`` without a ``=`` or a key.
  """
  key, sep, raw = item.partition('=')
  key, raw = key.strip(), raw.strip()
  if not sep or not key:
    raise ValueError(f'{flag} expects KEY=VALUE, got {item!r}')
  try:
    return key, ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return key, raw


def _convert(key: str, raw: str, default: Any, valid: list[str]) -> Any:
  """``raw`` as the type of ``default``; ValueError naming ``key`` and ``valid`` otherwise."""
  def fail():
    return ValueError(f'config argument {key}={raw!r} is not a {type(default).__name__} (like '
                      f'its default {default!r}); valid keys: {valid}')
  if isinstance(default, bool):
    if raw.lower() in ('true', '1'):
      return True
    if raw.lower() in ('false', '0'):
      return False
    raise fail()
  if isinstance(default, (int, float)):
    try:
      return type(default)(raw)
    except ValueError:
      raise fail() from None
  if isinstance(default, tuple):
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      raise fail() from None
    if isinstance(value, list):
      value = tuple(value)
    if not isinstance(value, tuple):
      raise fail()
    return value
  if isinstance(default, str):
    return raw
  raise TypeError(f'parse_arg: default of {key} must be bool, int, float, str or tuple, '
                  f'got {type(default).__name__}')


def _split_top_level(arg: str) -> list[str]:
  """Splits on the commas outside brackets; drops empty items."""
  items, depth, start = [], 0, 0
  for i, ch in enumerate(arg):
    if ch in '([{':
      depth += 1
    elif ch in ')]}':
      depth -= 1
    elif ch == ',' and depth == 0:
      items.append(arg[start:i])
      start = i + 1
  items.append(arg[start:])
  return [item.strip() for item in items if item.strip()]


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """A recipe's argument string (big_vision style) -> ConfigDict of ``defaults`` updated by it.

  ``arg`` is ``'key=value,key=value'`` (what follows ``:`` in ``--config=FILE:ARG``); each value
  takes the type of its default: bool (True/False/true/false/1/0), int, float, str, or tuple
  (a Python literal, e.g. ``(1, 2)``; commas inside brackets do not split). ``None`` or ``''``
  gives the defaults. Raises ValueError, naming the key and the valid keys, for an unknown key, a
  missing ``=`` or a value that does not convert.
  """
  config = ml_collections.ConfigDict(defaults)
  valid = sorted(defaults)
  for item in _split_top_level(arg or ''):
    key, sep, raw = item.partition('=')
    key, raw = key.strip(), raw.strip()
    if not sep or not key:
      raise ValueError(f'config argument {item!r} is not key=value; valid keys: {valid}')
    if key not in defaults:
      raise ValueError(f'unknown config argument {key!r}; valid keys: {valid}')
    config[key] = _convert(key, raw, defaults[key], valid)
  return config


def base_config() -> ml_collections.ConfigDict:
  """Every trainer setting with its default; recipes start from this and override.

  Overrides on the command line (--config.key=value) of keys not listed here are errors.
  """
  from input_pipeline.config import default_data_config  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = model_config()
  config.data = default_data_config()
  config.global_batch_size = 4096
  config.grad_accum_steps = 1
  config.total_steps = 1000
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.async_checkpoints = True
  config.export_model = True  # WORKDIR/model at the end, readable by load_pretrained
  config.optimizer = ml_collections.ConfigDict(dict(
      base_lr=1.6e-3, warmup_lr=4e-6, min_lr=4e-5, warmup_steps=0, weight_decay=0.05,
      b1=0.9, b2=0.999, eps=1e-8, clip_grad_norm=5.0,
      scale_lr_by_batch=True))  # lr * global_batch / 4096, as released
  # 'global': losses on global arrays (the compiler inserts collectives); 'shard_map': local
  # rows against all-gathered keys (memory [n_local, N] per device).
  # multi_label_pooling: 'mean' (the release) scores an image against a noun prompt with its
  # pooled embedding; 'max', the one extension beyond the release (not in it), with its
  # best-matching final group that owns patches, so that a noun is pulled onto one group and
  # pushed off the best groups of the images it does not describe (measurements:
  # docs/results.md). The image-text loss always uses the pooled embedding, as released.
  config.loss = ml_collections.ConfigDict(dict(formulation='global', multi_label_pooling='mean'))
  # Mesh axes (name, size; -1 = the rest) and parameter partition rules (regex on the
  # '/'-joined parameter path -> 'replicate' | 'fsdp'); the batch is split over all axes.
  config.mesh = (('data', -1), ('fsdp', 1))
  config.partition_rules = (('.*', 'fsdp'),)
  # Periodic zero-shot segmentation (evaluation/hooks.py): 'synthetic' or 'NAME:PATH' entries;
  # threshold None = the dataset's released background threshold (synthetic: 0.5). Each evaluation
  # writes WORKDIR/eval_<name>.json and, with num_visualize > 0, a PNG grid WORKDIR/eval_<name>.png.
  # synthetic_seed: the val stream of the built-in data (never the training stream).
  # synthetic_scale: its images are resized by this factor before the model sees them (one window
  # per image; position embeddings interpolated), as the release evaluates at twice its training
  # size; 1 = the training resolution.
  # kmeans_clusters: k of the k-means segmentation of models without grouping (ViT baseline).
  # oracle: also eval/<name>/oracle_mIoU (groups relabelled with their best ground-truth class).
  # naming: also eval/<name>/naming_mAP (image-level: the pooled embedding ranks the classes present
  # in the image, evaluation/naming.py), which separates naming from grouping; with groups also
  # group_naming_mAP (each final group's embedding ranked against its majority class),
  # background_leak (background groups whose best class is in their image) and within_image_auc
  # (50 = groups carry only the image's names), which measure whether groups name their own pixels.
  config.eval = ml_collections.ConfigDict(dict(
      every_steps=0, datasets=(), max_images=64, mode='slide',
      threshold=ml_collections.config_dict.placeholder(float), num_visualize=8,
      synthetic_seed=0, synthetic_scale=1.0, kmeans_clusters=8, oracle=True, naming=True))
  return config


# CC3M + CC12M + YFCC14M as released (28.66M pairs).
RELEASED_NUM_PAIRS = 2_891_445 + 11_156_203 + 14_615_499
RELEASED_SHARDS = (
    'webdataset:local_data/gcc3m_shards/gcc-train-{000000..000436}.tar',
    'webdataset:local_data/gcc12m_shards/gcc-conceptual-12m-{000000..001943}.tar',
    'webdataset:local_data/yfcc14m_shards/yfcc14m-{000000..001888}.tar',
)


def released_recipe(**model_overrides) -> ml_collections.ConfigDict:
  """The released training recipe (reference section 6) around a model with overrides:
  global batch 4096, 30 epochs with 2 of warmup, AdamW lr 1.6e-3 * batch / 4096 from 4e-6 to
  4e-5, weight decay 0.05, clip 5.0, bfloat16 compute (the release trains with apex O1)."""
  config = base_config()
  config.model = model_config(dtype='bfloat16', **model_overrides)
  config.data.train = RELEASED_SHARDS
  config.global_batch_size = 4096
  steps_per_epoch = RELEASED_NUM_PAIRS // config.global_batch_size
  config.total_steps = 30 * steps_per_epoch
  config.optimizer.warmup_steps = 2 * steps_per_epoch
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2000
  return config
