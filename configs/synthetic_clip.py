"""A plain CLIP on the built-in synthetic data (2 CPU cores, minutes): the recogniser of SCG and the
teacher of ZeroSeg on the built-in benchmark.

A ViT image tower (64 px, patch 8, width 128, 4 blocks, class token) and a 2-layer text tower of
width 128 learn from the synthetic image-caption pairs with the image-text loss; the trainer's
evaluation scores image-level naming on the val split (`eval/synthetic/naming_mAP`). The export,
WORKDIR/model, is a CLIP model directory like a converted OpenAI CLIP (CLIP's mean/std).

Arguments (`--config=configs/synthetic_clip.py:key=value`):
  scenes=default|easy|hard   the scene level (input_pipeline/scene_levels.py)
  multi_label=False|True     also GroupViT's multi-label loss on the caption's noun prompts
  background_only=0.0        the fraction of training scenes without an object, captioned by their
                             background alone: a recogniser of regions (SCG) then has a concept for
                             background regions (docs/emergence.md, section 12)
  steps=1000                 training steps (the learning rate's cosine spans them)
"""

import ml_collections

from groupvit_jax.config_lib import parse_arg
from groupvit_jax.main import base_config
from input_pipeline.scene_levels import builtin_data

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_model(image_size: int = 64) -> dict:
  """The built-in benchmark's CLIP (also the size SCG and ZeroSeg recipes expect)."""
  return dict(
    vision=dict(image_size=image_size, patch_size=8, width=128, depth=4, num_heads=4),
    text=dict(width=128, num_layers=2, num_heads=4, context_length=32),
    embed_dim=128,
  )


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, scenes='default', multi_label=False, background_only=0.0, steps=1000)
  config = base_config()
  config.method = 'clip'
  config.clip.model = ml_collections.ConfigDict(clip_model())
  config.clip.multi_label = args.multi_label
  builtin_data(config.data, args.scenes)
  config.data.synthetic.p_background_only = args.background_only
  config.data.mean, config.data.std = CLIP_MEAN, CLIP_STD
  config.global_batch_size = 64
  config.total_steps = int(args.steps)
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
  config.eval.synthetic_seed = 1
  return config
