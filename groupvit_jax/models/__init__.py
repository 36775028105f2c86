"""Flax modules of the released GroupViT and reusable ViT / grouping / CLIP-text blocks."""

from groupvit_jax.models.clip import CLIP, CLIPConfig
from groupvit_jax.models.config import (
  ConfigError,
  GroupViTConfig,
  ImageEncoderConfig,
  TextEncoderConfig,
)
from groupvit_jax.models.grouping import Assignment, GroupingBlock
from groupvit_jax.models.groupvit import GroupViT, compose_group_maps, init_variables, l2_normalize
from groupvit_jax.models.image_encoder import ImageEncoder
from groupvit_jax.models.mae import MAE, MAEConfig
from groupvit_jax.models.text_encoder import TextEncoder
from groupvit_jax.models.vit import VisionTransformer, ViTConfig

__all__ = [
  'Assignment',
  'ConfigError',
  'GroupViT',
  'GroupViTConfig',
  'GroupingBlock',
  'ImageEncoder',
  'ImageEncoderConfig',
  'TextEncoder',
  'TextEncoderConfig',
  'compose_group_maps',
  'init_variables',
  'l2_normalize',
  # CLIP, DINO / timm ViT and MAE towers
  'CLIP',
  'CLIPConfig',
  'MAE',
  'MAEConfig',
  'ViTConfig',
  'VisionTransformer',
]
