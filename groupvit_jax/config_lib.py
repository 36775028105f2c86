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
