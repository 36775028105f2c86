"""The released GroupViT-S recipe (gcc_yfcc): 2 grouping stages, 64 -> 8 groups.

Model: ViT-S width 384, depths [6, 3, 3], group tokens [64, 8, 0], hard Gumbel assignment,
pre-assignment cross-attention, CLIP text tower 256 x 12, 4096-wide projection heads, multi-label
loss with K = 3 prompts; the recipe of `groupvit_jax.main.released_recipe`. Point `data.train` at
your shards, e.g. --config.data.train='("webdataset:/data/cc3m/{000000..000436}.tar",)'.
"""

import ml_collections

from groupvit_jax.main import released_recipe


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  return released_recipe()
