"""ZeroSeg on the built-in synthetic data: a small MAE student whose grouping head learns to match
the embeddings a CLIP trained here gives to 1x1..4x4 grid views of each image; no captions.

The teacher (configs/synthetic_clip.py, trained first into WORKDIR/clip unless
`--config.zeroseg.teacher_dir` names one) embeds the views of every batch inside the step
(`zeroseg.teacher='online'`): the synthetic stream is endless, so there is nothing to cache once.

Arguments (`--config=configs/synthetic_zeroseg.py:key=value`):
  scenes=default|easy|hard     the scene level of the teacher, the student and the evaluation
  grids=1234|1|12|123|13|...   the views (Table 3): the digits of the grids used
  multiscale=True|False        the multi-scale distillation term (Table 4)
  matching=True|False          the segment matching term (Table 4)
  mask_ratio=0.6               Table 5
"""

import ml_collections

from groupvit_jax.config_lib import parse_arg
from groupvit_jax.main import base_config
from input_pipeline.scene_levels import builtin_data


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(
    arg, scenes='default', grids='1234', multiscale=True, matching=True, mask_ratio=0.6
  )
  grids = tuple(int(c) for c in args.grids)
  config = base_config()
  config.method = 'zeroseg'
  clip = f'configs/synthetic_clip.py:scenes={args.scenes}'
  config.prerequisites = (('zeroseg.teacher_dir', clip, 'clip'),)
  z = config.zeroseg
  z.teacher = 'online'
  z.grids = grids
  z.weights.multiscale = 1.0 if args.multiscale else 0.0
  z.weights.matching = 1.0 if args.matching else 0.0
  m = z.model
  m.mae.encoder.update(image_size=64, patch_size=8, width=128, depth=4, num_heads=4)
  m.mae.update(decoder_width=64, decoder_depth=2, decoder_num_heads=4, mask_ratio=args.mask_ratio)
  m.head.update(
    image_size=64, patch_size=8, width=128, num_heads=4, num_group_tokens=(16, 4, 0),
    num_output_groups=(16, 4),
  )  # fmt: skip
  builtin_data(config.data, args.scenes)
  data = config.data
  data.captions = False
  data.crop = 'center'
  config.global_batch_size = 64
  config.total_steps = 1500
  config.log_every_steps = 50
  config.checkpoint_every_steps = 500
  config.optimizer.base_lr = (
    1.5e-4 * 64 / 256 * 16
  )  # MAE's 1.5e-4 x batch / 256, x16 for 1.5k steps
  config.optimizer.b2 = 0.95
  config.optimizer.warmup_lr = 1e-5
  config.optimizer.min_lr = 1e-5
  config.optimizer.warmup_steps = 100
  config.optimizer.scale_lr_by_batch = False
  config.eval.every_steps = 500
  config.eval.datasets = ('synthetic',)
  config.eval.max_images = 200
  config.eval.synthetic_seed = 1
  config.eval.background_rules = ('threshold', 'vocabulary')
  config.eval.threshold = 0.5
  return config
