"""A GroupViT small enough that a training step takes well under a second on one CPU core.

Same structure as the release (2 grouping stages, pre-assignment attention, group projector,
multi-label loss) at toy sizes: 64 px images, width 64, 1 block per stage, 8 -> 4 groups, a
2-layer text tower; trains on the built-in synthetic data out of the box in seconds.
"""

import ml_collections

from groupvit_jax.config_lib import model_config
from groupvit_jax.main import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = base_config()
  config.model = model_config(
    image=dict(
      image_size=64,
      patch_size=16,
      width=64,
      num_heads=2,
      depths=(1, 1, 1),
      num_group_tokens=(8, 4, 0),
      num_output_groups=(8, 4),
      drop_path_rate=0.0,
    ),
    text=dict(width=32, num_layers=2, num_heads=2),
    projection_dim=32,
    projection_hidden_dim=128,
  )
  config.data.train = ('synthetic',)
  config.data.image_size = 64
  config.global_batch_size = 16
  config.total_steps = 20
  config.log_every_steps = 5
  config.checkpoint_every_steps = 10
  config.optimizer.base_lr = 1e-3
  config.optimizer.warmup_lr = 1e-5
  config.optimizer.min_lr = 1e-5
  config.optimizer.warmup_steps = 5
  config.optimizer.scale_lr_by_batch = False
  return config
