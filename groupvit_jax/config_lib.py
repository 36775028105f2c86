"""Helpers shared by the recipe files in `configs/`: model sections built from the typed defaults."""

from __future__ import annotations

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


def released_recipe(**overrides) -> ml_collections.ConfigDict:
  """The released optimisation recipe (reference section 6), with overrides."""
  recipe = dict(
      global_batch_size=4096, epochs=30, warmup_epochs=2, base_lr=1.6e-3, warmup_lr=4e-6,
      min_lr=4e-5, weight_decay=0.05, clip_grad_norm=5.0, adam_b1=0.9, adam_b2=0.999,
      adam_eps=1e-8, num_prompts=3, image_size=224)
  unknown = set(overrides) - set(recipe)
  if unknown:
    raise KeyError(f'unknown recipe key(s) {sorted(unknown)}; valid: {sorted(recipe)}')
  recipe.update(overrides)
  return ml_collections.ConfigDict(recipe)


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
  config.loss = ml_collections.ConfigDict(dict(formulation='global'))
  # Mesh axes (name, size; -1 = the rest) and parameter partition rules (regex on the
  # '/'-joined parameter path -> 'replicate' | 'fsdp'); the batch is split over all axes.
  config.mesh = (('data', -1), ('fsdp', 1))
  config.partition_rules = (('.*', 'fsdp'),)
  config.eval = ml_collections.ConfigDict(dict(
      every_steps=0, datasets=(), max_images=64, mode='slide'))
  return config
