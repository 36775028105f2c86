"""groupvit_jax: text-supervised semantic segmentation by learned grouping, in JAX/Flax."""

from groupvit_jax.models import GroupViT, GroupViTConfig, ImageEncoderConfig, TextEncoderConfig
from groupvit_jax.pretrained import Pretrained, load_pretrained

__all__ = [
  'GroupViT',
  'GroupViTConfig',
  'ImageEncoderConfig',
  'Pretrained',
  'TextEncoderConfig',
  'load_pretrained',
]
__version__ = '0.1.0'
