"""A GroupViT small enough that a training step takes well under a second on one CPU core.

Same structure as the release (2 grouping stages, pre-assignment attention, group projector,
multi-label scale) at toy sizes: 64 px images, width 64, 1 block per stage, 8 -> 4 groups, a
2-layer text tower.
"""

import ml_collections

from groupvit_jax.config_lib import model_config, released_recipe


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = ml_collections.ConfigDict()
  config.model = model_config(
      image=dict(image_size=64, patch_size=16, width=64, num_heads=2, depths=(1, 1, 1),
                 num_group_tokens=(8, 4, 0), num_output_groups=(8, 4), drop_path_rate=0.0),
      text=dict(width=32, num_layers=2, num_heads=2),
      projection_dim=32, projection_hidden_dim=128)
  config.recipe = released_recipe(
      global_batch_size=8, epochs=1, warmup_epochs=0, base_lr=1e-3, warmup_lr=1e-5,
      min_lr=1e-5, image_size=64)
  return config
