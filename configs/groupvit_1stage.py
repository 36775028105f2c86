"""The paper's 1-stage GroupViT (Table 3): 64 group tokens mixed into 8 output segments.

Same width and total depth as the released model (12 blocks: 6 before the grouping block, 6 on
the 8 segment tokens), without the pre-assignment cross-attention (the paper has none); the
released training recipe.
"""

import ml_collections

from groupvit_jax.main import released_recipe


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  return released_recipe(
    image=dict(
      depths=(6, 6), num_group_tokens=(64, 0), num_output_groups=(8,), pre_assign_attention=False
    )
  )
