"""SCG on the built-in synthetic data: k-means regions of a CLIP trained here, each named by its own
region token (context-aware masking), with or without region adaptation.

The CLIP (configs/synthetic_clip.py with a tenth of its scenes background-only, trained first into
WORKDIR/clip unless `--config.scg.clip_dir` names one) is both the recogniser and the grouper: its
final patch tokens are clustered. Why the CLIP's own tokens and not a self-supervised ViT: on these
scenes k-means on a contrastively trained ViT's tokens already separates objects from background
(oracle 65 in docs/emergence.md, section 7; 67-73 here, section 12), and it keeps the command
within one trained model.

Arguments (`--config=configs/synthetic_scg.py:key=value`):
  scenes=default|easy|hard   the scene level of the CLIP and of the evaluation
  adapt=False|True           False: no training (the paper's "no fine-tuning" row, total_steps 0);
                             True: region adaptation (only the region tokens and the temperature)
  direction=noun_to_region|region_to_noun|both   the adaptation loss (Table 5)
  masking=context|tokens|pixels                  Table 3
  image_top_k=0              0: the paper's naming; k: a region's class among the k foreground
                             classes the whole image's CLIP embedding ranks first (our extension)
  naming=region|noun         region: every region takes its best class (the paper's); noun: each
                             of the image's top-k classes claims the region with the best margin
                             over its background words, the rest are background (our extension)
  grouper_layer=final|N      k-means on the final-norm patch tokens, or on block N's output
"""

import ml_collections

from groupvit_jax.config_lib import parse_arg
from groupvit_jax.main import base_config
from input_pipeline.scene_levels import builtin_data

_CHOICES = dict(
  scenes=('default', 'easy', 'hard'),
  direction=('noun_to_region', 'region_to_noun', 'both'),
  masking=('context', 'tokens', 'pixels'),
  naming=('region', 'noun'),
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(
    arg,
    scenes='default',
    adapt=False,
    direction='noun_to_region',
    masking='context',
    image_top_k=0,
    naming='region',
    grouper_layer='final',
  )
  for key, choices in _CHOICES.items():
    if args[key] not in choices:
      raise ValueError(f'{key}={args[key]!r}: expected one of {choices}')
  config = base_config()
  config.method = 'scg'
  clip = f'configs/synthetic_clip.py:scenes={args.scenes},background_only=0.1,steps=1500'
  config.prerequisites = (('scg.clip_dir', clip, 'clip'), ('scg.grouper_dir', clip, 'clip'))
  builtin_data(config.data, args.scenes)
  s = config.scg
  # As many regions as the scenes hold things: more cut objects into parts that are named apart
  # (docs/emergence.md, section 12).
  s.num_regions = int(config.data.synthetic.max_objects) + 1
  s.kmeans_iters = 10
  s.masking = args.masking
  s.direction = args.direction
  s.image_top_k = args.image_top_k
  s.naming = args.naming
  if args.grouper_layer != 'final':
    try:
      s.grouper_layer = int(args.grouper_layer)
    except ValueError:
      raise ValueError(f'grouper_layer={args.grouper_layer!r}: expected final or a block index')
  config.data.text.num_prompts = 3
  config.global_batch_size = 64
  config.total_steps = 300 if args.adapt else 0
  config.log_every_steps = 50
  config.checkpoint_every_steps = 300
  config.optimizer.base_lr = 5e-4  # the paper's AdamW settings
  config.optimizer.weight_decay = 0.01
  config.optimizer.warmup_lr = 5e-6
  config.optimizer.min_lr = 5e-6
  config.optimizer.warmup_steps = 30
  config.optimizer.scale_lr_by_batch = False
  config.eval.every_steps = 300
  config.eval.datasets = ('synthetic',)
  config.eval.max_images = 200
  config.eval.synthetic_seed = 1
  # The paper's rule first; GroupViT's threshold rule reported as threshold_mIoU.
  config.eval.background_rules = ('vocabulary', 'threshold')
  config.eval.threshold = 0.5
  return config
