"""SCG region adaptation on the built-in synthetic data at toy sizes: seconds per step on a CPU.

Give two converted (or randomly initialised) model directories of small towers whose patch sizes
divide 64:

    python -m groupvit_jax.main --config=configs/scg_tiny.py --workdir=RUN \
      --config.scg.clip_dir=CLIP_DIR --config.scg.grouper_dir=DINO_DIR
"""

import ml_collections

from groupvit_jax.main import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = base_config()
  config.method = 'scg'
  config.scg.num_regions = 6
  config.scg.kmeans_iters = 5
  config.data.train = ('synthetic',)
  config.data.image_size = 64
  config.data.text.context_length = 16
  config.global_batch_size = 8
  config.total_steps = 6
  config.log_every_steps = 2
  config.checkpoint_every_steps = 3
  config.optimizer.base_lr = 1e-3
  config.optimizer.warmup_lr = 1e-5
  config.optimizer.min_lr = 1e-5
  config.optimizer.warmup_steps = 2
  config.optimizer.weight_decay = 0.01
  config.optimizer.scale_lr_by_batch = False
  return config
