"""CLIP (OpenAI / open_clip ViT models): a ViT image tower and the CLIP text transformer, each with
a linear projection into the joint embedding space, and the learned temperature.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from groupvit_jax.models.config import ConfigError, JsonConfig, TextEncoderConfig, _build, _to_plain
from groupvit_jax.models.text_encoder import TextEncoder
from groupvit_jax.models.vit import VisionTransformer, ViTConfig


def clip_vision_config(**kwargs) -> ViTConfig:
  """A ViTConfig with OpenAI CLIP's conventions (ViT-B/16 defaults): no patch bias, `ln_pre`,
  QuickGELU, LayerNorm eps 1e-5, bicubic position interpolation; `kwargs` override any field."""
  base = dict(
    image_size=224,
    patch_size=16,
    width=768,
    depth=12,
    num_heads=12,
    eps=1e-5,
    activation='quick_gelu',
    patch_bias=False,
    pre_norm=True,
    pos_interpolation='bicubic',
  )
  base.update(kwargs)
  return ViTConfig(**base)


@dataclasses.dataclass(frozen=True)
class CLIPConfig(JsonConfig):
  """CLIP: image tower `vision`, text tower `text`, joint width `embed_dim`.

  The text tower is the library's `TextEncoder` (QuickGELU, as OpenAI CLIP). `logit_bias` adds the
  SigLIP-style scalar bias of some open_clip models. The compute dtype and remat switch of both
  towers are those of `vision`.
  """

  vision: ViTConfig = dataclasses.field(default_factory=clip_vision_config)
  text: TextEncoderConfig = dataclasses.field(
    default_factory=lambda: TextEncoderConfig(width=512, num_heads=8, num_layers=12)
  )
  embed_dim: int = 512
  logit_bias: bool = False
  logit_scale_init: float = float(np.log(1 / 0.07))

  def validate(self) -> None:
    self.vision.validate()
    self.text.validate()
    if self.embed_dim <= 0:
      raise ConfigError(f'embed_dim must be positive, got {self.embed_dim}')

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'CLIPConfig':
    """Builds a config from a (possibly partial) nested mapping; unknown keys are an error.
    Missing `vision` fields take `clip_vision_config`'s CLIP defaults, not ViTConfig's."""
    d = dict(_to_plain(d))
    vision = ViTConfig.from_dict(
      {**clip_vision_config().to_dict(), **d.pop('vision', {})}, 'clip.vision'
    )
    text = _build(TextEncoderConfig, d.pop('text', {}), 'clip.text')
    cfg = _build(cls, d, 'clip', vision=vision, text=text)
    cfg.validate()
    return cfg


def _normalize(x: jnp.ndarray) -> jnp.ndarray:
  x = x.astype(jnp.float32)
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


class CLIP(nn.Module):
  """CLIP with `encode_image`, `image_features`, `encode_text` and a contrastive `__call__`.

  Params: `visual` (VisionTransformer; its final `norm` is CLIP's ln_post), `proj` [W, E],
  `text` (TextEncoder), `text_projection` [Wt, E], `logit_scale` [] (log of the inverse
  temperature) and, with `cfg.logit_bias`, `logit_bias` [].
  """

  cfg: CLIPConfig

  def setup(self):
    cfg = self.cfg
    width, t_width = cfg.vision.width, cfg.text.width
    self.visual = VisionTransformer(cfg.vision)
    self.proj = self.param(
      'proj', nn.initializers.normal(width**-0.5), (width, cfg.embed_dim), jnp.float32
    )
    self.text = TextEncoder(cfg.text, dtype=jnp.dtype(cfg.vision.dtype), remat=cfg.vision.remat)
    self.text_projection = self.param(
      'text_projection', nn.initializers.normal(t_width**-0.5), (t_width, cfg.embed_dim)
    )
    self.logit_scale = self.param(
      'logit_scale', nn.initializers.constant(cfg.logit_scale_init), (), jnp.float32
    )
    if cfg.logit_bias:
      self.logit_bias = self.param('logit_bias', nn.initializers.constant(-10.0), (), jnp.float32)

  def _project(self, x: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
    dtype = jnp.dtype(self.cfg.vision.dtype)
    return jnp.matmul(x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)

  def image_features(self, pixels: jnp.ndarray, layer: int | None = None) -> dict[str, jnp.ndarray]:
    """Everything the image tower offers for pixels [B, H, W, 3]:

    `embedding` [B, E] (ln_post(class token) @ proj, not normalised), `cls` [B, W] (after
    ln_post), `patches` [B, h, w, W] (after ln_post, un-projected), `patch_embeddings` [B, h, w, E]
    (the same projected with `proj`, MaskCLIP-style dense features) and, when `layer` is given,
    `layer_tokens` [B, 1 + h*w, W] (block `layer`'s output, before ln_post).
    """
    out = self.visual(pixels, layer)
    out['embedding'] = self._project(out['cls'], self.proj)
    out['patch_embeddings'] = self._project(out['patches'], self.proj)
    return out

  def encode_image(self, pixels: jnp.ndarray) -> jnp.ndarray:
    """pixels [B, H, W, 3] (CLIP-normalised) -> image embedding [B, E] float32, not normalised."""
    return self._project(self.visual(pixels)['cls'], self.proj)

  def region_embeddings(
    self, pixels: jnp.ndarray, region_tokens: jnp.ndarray, attention_mask: jnp.ndarray
  ) -> jnp.ndarray:
    """One forward pass of the image tower with M extra region tokens (SCG).

    Args:
      pixels: [B, H, W, 3] CLIP-normalised.
      region_tokens: [M, W] or [B, M, W], in the residual stream before `ln_pre` (the class token
        plus its position embedding is the template: `models.scg.initial_region_tokens`).
      attention_mask: bool [B, 1, T, T] with T = 1 + h*w + M over the tokens
        [class, patches (row-major), regions] (`models.scg.region_attention_mask`).
    Returns:
      [B, M, E] region embeddings: ln_post(region token) @ proj, float32, not normalised.
    """
    cls, patches, _ = self.visual.embed(pixels)
    b, n, c = patches.shape
    m = region_tokens.shape[-2]
    regions = jnp.broadcast_to(region_tokens.astype(jnp.float32), (b, m, c))
    x, _ = self.visual.transform(
      jnp.concatenate([cls, patches, regions], axis=1), mask=attention_mask
    )
    return self._project(x[:, 1 + n :], self.proj)

  def encode_text(self, tokens: jnp.ndarray) -> jnp.ndarray:
    """tokens int [B, L] -> text embedding [B, E] float32, not normalised; read at each row's
    end-of-text token (its largest id), as CLIP does."""
    return self._project(self.text(tokens), self.text_projection)

  def __call__(self, pixels: jnp.ndarray, tokens: jnp.ndarray) -> dict[str, jnp.ndarray]:
    """pixels [B, H, W, 3], tokens [T, L] -> unit `image_embeds` [B, E], `text_embeds` [T, E] and
    `logits_per_image` [B, T] = exp(logit_scale) * cosine (+ logit_bias)."""
    image = _normalize(self.encode_image(pixels))
    text = _normalize(self.encode_text(tokens))
    logits = jnp.exp(self.logit_scale) * image @ text.T
    if self.cfg.logit_bias:
      logits = logits + self.logit_bias
    return {'image_embeds': image, 'text_embeds': text, 'logits_per_image': logits}
