"""ZeroSeg on the built-in synthetic data at toy sizes: seconds per step on a CPU.

Give a CLIP model directory as the teacher (converted, trained here, or randomly initialised);
with the default `zeroseg.teacher='online'` the teacher embeds each batch's views in the step, so
no cache is needed:

    python -m groupvit_jax.main --config=configs/zeroseg_tiny.py --workdir=RUN \
      --config.zeroseg.teacher_dir=CLIP_DIR
"""

import ml_collections

from groupvit_jax.main import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = base_config()
  config.method = 'zeroseg'
  z = config.zeroseg
  z.teacher = 'online'
  z.model.mae.encoder.update(image_size=64, patch_size=8, width=32, depth=2, num_heads=2)
  z.model.mae.update(decoder_width=32, decoder_depth=1, decoder_num_heads=2)
  z.model.head.update(
    image_size=64, patch_size=8, width=32, num_heads=2, num_group_tokens=(8, 4, 0),
    num_output_groups=(8, 4),
  )  # fmt: skip
  data = config.data
  data.train = ('synthetic',)
  data.image_size = 64
  data.crop = 'center'
  data.captions = False
  data.hflip_prob = 0.0
  data.randaugment = ''
  data.random_erasing.prob = 0.0
  data.text.context_length = 16
  config.global_batch_size = 8
  config.total_steps = 6
  config.log_every_steps = 2
  config.checkpoint_every_steps = 3
  config.optimizer.base_lr = 1e-3
  config.optimizer.warmup_lr = 1e-5
  config.optimizer.min_lr = 1e-5
  config.optimizer.warmup_steps = 2
  config.optimizer.scale_lr_by_batch = False
  return config
