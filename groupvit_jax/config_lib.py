"""Helpers shared by the recipe files in `configs/`: typed model sections, argument parsing."""

from __future__ import annotations

import ast
from typing import Any

import ml_collections

from groupvit_jax.models.clip import CLIPConfig
from groupvit_jax.models.config import GroupViTConfig
from groupvit_jax.models.zeroseg import ZeroSegConfig


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
  ``(0.1, 0.3)``) or else the raw string. Raises ValueError naming ``flag`` without a ``=`` or a
  key.
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
    return ValueError(
      f'config argument {key}={raw!r} is not a {type(default).__name__} (like '
      f'its default {default!r}); valid keys: {valid}'
    )

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
  raise TypeError(
    f'parse_arg: default of {key} must be bool, int, float, str or tuple, '
    f'got {type(default).__name__}'
  )


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


def scg_defaults() -> ml_collections.ConfigDict:
  """`config.scg` (with config.method='scg'): the two converted model directories and SCG's
  choices (groupvit_jax/models/scg.py, groupvit_jax/scg_losses.py)."""
  c = ml_collections.ConfigDict()
  c.clip_dir = ''
  c.grouper_dir = ''
  c.num_regions = 27
  c.kmeans_iters = 20
  c.grouper_layer = ml_collections.config_dict.placeholder(int)  # None: final-norm features
  c.masking = 'context'  # 'context' | 'tokens' | 'pixels'
  c.image_top_k = 0  # 0: the paper's; k: a region's class among the image's top-k (models/scg.py)
  c.naming = 'region'  # the paper's | 'noun': the image's top-k classes claim regions
  c.centroids = ''  # an .npy [M, C] of dataset-level centroids; '' = per-image k-means
  c.direction = 'noun_to_region'  # | 'region_to_noun' | 'both'
  c.max_logit_scale = 100.0
  return c


def zeroseg_student_defaults() -> ml_collections.ConfigDict:
  """`config.zeroseg.model`: the student's ZeroSegConfig fields (groupvit_jax/models/zeroseg.py)
  without the teacher, which comes from `config.zeroseg.teacher_dir`."""
  d = ZeroSegConfig().to_dict()
  del d['teacher']
  return ml_collections.ConfigDict(d)


def zeroseg_defaults() -> ml_collections.ConfigDict:
  """`config.zeroseg` (with config.method='zeroseg'): the teacher, where its view embeddings come
  from, the views, the loss terms and the student (groupvit_jax/zeroseg_train.py)."""
  c = ml_collections.ConfigDict()
  c.teacher_dir = ''  # a CLIP model directory (groupvit_jax.convert, or trained here)
  # 'cache': batch['teacher'] from config.data.teacher_cache (input_pipeline.prepare_teacher), the
  # paper's; 'online': the teacher embeds the views of every batch inside the step.
  c.teacher = 'cache'
  c.grids = (1, 2, 3, 4)  # the views (Table 3): n x n grids of the centre crop
  c.init_from = ''  # an MAE model directory whose encoder and decoder start the student
  c.weights = ml_collections.ConfigDict(dict(multiscale=1.0, matching=1.0, mae=1.0))
  c.l1_reduction = 'mean'  # | 'sum': over the embedding channels
  c.segment_reduction = 'mean'  # | 'sum' (the paper's formula): over the segments
  c.model = zeroseg_student_defaults()
  return c


def clip_defaults() -> ml_collections.ConfigDict:
  """`config.clip` (with config.method='clip'): the CLIP's config (groupvit_jax/models/clip.py)
  and its losses (groupvit_jax/clip_train.py)."""
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(CLIPConfig().to_dict())
  c.multi_label = False  # also GroupViT's multi-label loss on the caption's noun prompts
  c.max_logit_scale = 100.0
  return c


def trainer_defaults() -> ml_collections.ConfigDict:
  """The core's training settings with their defaults: seed, model, batch, steps, checkpoints,
  optimizer, loss, mesh. The trainer adds the data and evaluation sections
  (`groupvit_jax.main.base_config`, which recipes start from)."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  # 'groupvit' trains config.model; 'scg' trains the region tokens of config.scg's towers;
  # 'zeroseg' trains config.zeroseg's student on images alone; 'clip' a plain CLIP (config.clip).
  config.method = 'groupvit'
  config.clip = clip_defaults()
  config.scg = scg_defaults()
  config.zeroseg = zeroseg_defaults()
  config.model = model_config()
  # Models this recipe builds on, trained first when missing: (KEY, RECIPE[:ARG], SUBDIR) triples
  # (groupvit_jax.main.resolve_prerequisites).
  config.prerequisites = ()
  config.global_batch_size = 4096
  config.grad_accum_steps = 1
  config.total_steps = 1000
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.async_checkpoints = True
  config.export_model = True  # WORKDIR/model at the end, readable by load_pretrained
  config.optimizer = ml_collections.ConfigDict(
    dict(
      base_lr=1.6e-3,
      warmup_lr=4e-6,
      min_lr=4e-5,
      warmup_steps=0,
      weight_decay=0.05,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      clip_grad_norm=5.0,
      scale_lr_by_batch=True,
    )
  )  # lr * global_batch / 4096, as released
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
  return config
