"""The released GroupViT-S recipe (gcc_yfcc / gcc_redcap): 2 grouping stages, 64 -> 8 groups.

Model: ViT-S width 384, depths [6, 3, 3], group tokens [64, 8, 0], hard Gumbel assignment,
pre-assignment cross-attention, CLIP text tower 256 x 12, 4096-wide projection heads, multi-label
loss with K = 3 prompts. Recipe: global batch 4096, AdamW lr 1.6e-3 * batch / 4096, warmup 2 of 30
epochs from 4e-6, cosine to 4e-5, weight decay 0.05, clip 5.0 (see the reference, section 6).
"""

import ml_collections

from groupvit_jax.config_lib import model_config, released_recipe


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = ml_collections.ConfigDict()
  config.model = model_config()
  config.recipe = released_recipe()
  return config
