"""The README's main job: a small GroupViT trained on the built-in synthetic shapes in minutes on CPU.

Draft under tuning (issue #6).
"""

import ml_collections

from groupvit_jax.config_lib import base_config, model_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = base_config()
  config.model = model_config(
      image=dict(image_size=64, patch_size=8, width=128, num_heads=4, depths=(2, 2, 1),
                 num_group_tokens=(16, 4, 0), num_output_groups=(16, 4), drop_path_rate=0.0),
      text=dict(width=128, num_layers=2, num_heads=4, context_length=32),
      projection_dim=128, projection_hidden_dim=512)
  config.data.train = ('synthetic',)
  config.data.image_size = 64
  config.data.crop_scale = (0.8, 1.0)
  config.data.hflip_prob = 0.0
  config.data.randaugment = ''
  config.data.random_erasing.prob = 0.0
  config.data.text.context_length = 32
  synth = config.data.synthetic
  synth.max_objects = 3
  synth.size_range = (0.2, 0.35)
  synth.background_strength = 0.3
  synth.p_distractor_words = 0.1
  synth.p_canonical_name = 0.8
  synth.p_colour_word = 0.8
  synth.caption_styles = (('sentence', 0.6), ('list', 0.3), ('count', 0.1))
  config.data.text.templates = 'simple'
  config.global_batch_size = 64
  config.total_steps = 1500
  config.log_every_steps = 20
  config.checkpoint_every_steps = 500
  config.optimizer.base_lr = 1e-3
  config.optimizer.warmup_lr = 1e-5
  config.optimizer.min_lr = 1e-5
  config.optimizer.warmup_steps = 50
  config.optimizer.scale_lr_by_batch = False
  config.eval.every_steps = 500
  config.eval.datasets = ('synthetic',)
  config.eval.max_images = 100
  config.eval.synthetic_seed = 1
  return config
