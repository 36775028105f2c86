"""GroupViT on the built-in synthetic shapes on 2 CPU cores (about 21 minutes).

A 2-stage GroupViT (64 px, patch 8, width 128, 16 -> 4 groups) and a 2-layer text tower learn from
synthetic image-caption pairs alone (input_pipeline/synthetic_shapes.py); the trainer's evaluation
then segments the synthetic val split zero-shot with the category names as the vocabulary.

Arguments (`--config=configs/synthetic_groupvit.py:key=value,key=value`; none: the release's
objective):
  assignment=hard|soft     Gumbel straight-through assignment (the release) or soft (Table 1)
  multi_label=True|False   with or without the multi-label loss (Table 1)
  stages=2|1               two grouping stages, or one of 4 groups at the same depth (Table 3)
  arch=groupvit|vit        vit: a plain ViT of the same depth and width, same loss and budget,
                           segmented pixel-wise and by k-means (Table 4)
  group_max=False|True     not in the release: the multi-label loss scores an image against a noun
                           by its best-matching final group (`loss.multi_label_pooling='max'`)
  scenes=default|easy|hard the scene level (input_pipeline/scene_levels.py); default and easy
                           hold one object and take the release's background threshold 0.95
The best-group recipe is `:group_max=True`. Until the scene levels existed this file was
configs/synthetic.py, whose default scenes are `scenes=hard` here and whose `scenes=easy` is
`scenes=default` here (docs/results.md and docs/emergence.md keep the old commands).
"""

import ml_collections

from groupvit_jax.config_lib import model_config, parse_arg
from groupvit_jax.main import base_config
from input_pipeline.scene_levels import LEVELS, builtin_data

_CHOICES = dict(
  assignment=('hard', 'soft'), stages=(2, 1), arch=('groupvit', 'vit'), scenes=tuple(LEVELS)
)


def _parse(arg: str | None) -> ml_collections.ConfigDict:
  args = parse_arg(
    arg,
    assignment='hard',
    multi_label=True,
    stages=2,
    arch='groupvit',
    group_max=False,
    scenes='default',
  )
  for key, choices in _CHOICES.items():
    if args[key] not in choices:
      raise ValueError(f'{key}={args[key]!r}: expected one of {choices}')
  if args.arch == 'vit' and (args.assignment != 'hard' or args.stages != 2):
    raise ValueError('arch=vit has no grouping: it takes neither assignment= nor stages=')
  if args.group_max and not args.multi_label:
    raise ValueError('group_max=True changes the multi-label loss: it needs multi_label=True')
  return args


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = _parse(arg)
  image = dict(
    image_size=64,
    patch_size=8,
    width=128,
    num_heads=4,
    depths=(2, 2, 1),
    num_group_tokens=(16, 4, 0),
    num_output_groups=(16, 4),
    drop_path_rate=0.0,
  )
  if args.assignment == 'soft':
    image['hard_assignment'] = False
  if args.stages == 1:
    image.update(depths=(3, 2), num_group_tokens=(4, 0), num_output_groups=(4,))
  if args.arch == 'vit':
    image.update(depths=(5,), num_group_tokens=(0,), num_output_groups=())
  config = base_config()
  config.model = model_config(
    image=image,
    text=dict(width=128, num_layers=2, num_heads=4, context_length=32),
    projection_dim=128,
    projection_hidden_dim=512,
    multi_label=args.multi_label,
  )

  builtin_data(config.data, args.scenes)
  if args.group_max:
    config.loss.multi_label_pooling = 'max'
  config.global_batch_size = 64
  config.total_steps = 1500
  config.log_every_steps = 50
  config.checkpoint_every_steps = 500
  config.optimizer.base_lr = 1e-3
  config.optimizer.warmup_lr = 1e-5
  config.optimizer.min_lr = 1e-5
  config.optimizer.warmup_steps = 50
  config.optimizer.scale_lr_by_batch = False

  config.eval.every_steps = 500
  config.eval.datasets = ('synthetic',)
  config.eval.max_images = 200
  config.eval.synthetic_seed = 1  # val stream; training uses the train stream of config.seed
  config.eval.kmeans_clusters = 4  # as many clusters as GroupViT's final groups
  if args.scenes != 'hard':
    # One object per scene: the release's background threshold for VOC and COCO-Object.
    config.eval.threshold = 0.95
  return config
