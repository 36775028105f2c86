"""Masked autoencoder (He et al., 2022): a ViT encoder over a random subset of patches and a light
ViT decoder that predicts the pixels of the removed ones.

Masking is per sample, as in the MAE release and Hugging Face `ViTMAE`: uniform noise [B, N] is
argsorted ascending and the first int(N * (1 - mask_ratio)) patches are kept. The fixed 2D sin-cos
position embeddings are ordinary params here, so that loaded checkpoints provide them; fresh models
initialise them with `sincos_pos_embed` (train them frozen to follow the paper).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from groupvit_jax.models.config import ConfigError, JsonConfig, _build, _to_plain
from groupvit_jax.models.layers import ViTBlock, cotangent_barrier, layer_norm
from groupvit_jax.models.vit import VisionTransformer, ViTConfig, sincos_init


def mae_encoder_config(**kwargs) -> ViTConfig:
  """A ViTConfig with the MAE release's conventions (ViT-B/16 defaults): patch bias, eps 1e-6,
  exact GELU, sin-cos initial position embedding; `kwargs` override any field."""
  base = dict(
    width=768,
    depth=12,
    num_heads=12,
    eps=1e-6,
    activation='gelu',
    pos_interpolation='bicubic',
    pos_init='sincos',
  )
  base.update(kwargs)
  return ViTConfig(**base)


@dataclasses.dataclass(frozen=True)
class MAEConfig(JsonConfig):
  """MAE: encoder ViT plus decoder sizes. decoder_depth 0 means an encoder-only model (the
  released non-`_full` files); then only `MAE.encode`/masked encoding work."""

  encoder: ViTConfig = dataclasses.field(default_factory=mae_encoder_config)
  decoder_width: int = 512
  decoder_depth: int = 8
  decoder_num_heads: int = 16
  decoder_mlp_ratio: float = 4.0
  norm_pix_loss: bool = False
  mask_ratio: float = 0.75

  def validate(self) -> None:
    self.encoder.validate()
    if self.decoder_depth < 0:
      raise ConfigError(f'decoder_depth must be >= 0, got {self.decoder_depth}')
    if self.decoder_depth and self.decoder_width % self.decoder_num_heads:
      raise ConfigError(
        f'decoder_width {self.decoder_width} is not divisible by decoder_num_heads '
        f'{self.decoder_num_heads}'
      )
    if not 0.0 <= self.mask_ratio < 1.0:
      raise ConfigError(f'mask_ratio must be in [0, 1), got {self.mask_ratio}')

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'MAEConfig':
    """Builds a config from a (possibly partial) nested mapping; unknown keys are an error.
    Missing `encoder` fields take `mae_encoder_config`'s MAE defaults, not ViTConfig's."""
    d = dict(_to_plain(d))
    encoder = ViTConfig.from_dict(
      {**mae_encoder_config().to_dict(), **d.pop('encoder', {})}, 'mae.encoder'
    )
    cfg = _build(cls, d, 'mae', encoder=encoder)
    cfg.validate()
    return cfg


def random_masking(
  noise: jnp.ndarray, mask_ratio: float
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Per-sample shuffling by argsort of `noise` [B, N].

  Returns (ids_keep int [B, K] with K = int(N * (1 - mask_ratio)), mask float32 [B, N] with 0 for
  kept and 1 for removed patches, ids_restore int [B, N], the inverse permutation).
  """
  n = noise.shape[1]
  keep = int(n * (1 - mask_ratio))
  ids_shuffle = jnp.argsort(noise, axis=1)
  ids_restore = jnp.argsort(ids_shuffle, axis=1)
  mask = (ids_restore >= keep).astype(jnp.float32)
  return ids_shuffle[:, :keep], mask, ids_restore


def patchify(pixels: jnp.ndarray, patch: int) -> jnp.ndarray:
  """[B, H, W, C] -> [B, h*w, p*p*C], each patch flattened in (row, column, channel) order as the
  MAE release's `patchify` (and so `decoder_pred`'s output) orders it."""
  b, hh, ww, c = pixels.shape
  h, w = hh // patch, ww // patch
  x = pixels.reshape(b, h, patch, w, patch, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * w, patch * patch * c)


def unpatchify(patches: jnp.ndarray, patch: int, grid: tuple[int, int]) -> jnp.ndarray:
  """Inverse of `patchify`: [B, h*w, p*p*C] -> [B, h*p, w*p, C]."""
  b = patches.shape[0]
  h, w = grid
  x = patches.reshape(b, h, w, patch, patch, -1).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * patch, w * patch, -1)


def reconstruction_loss(
  pixels: jnp.ndarray, pred: jnp.ndarray, mask: jnp.ndarray, patch: int, norm_pix: bool
) -> jnp.ndarray:
  """MAE loss: per-patch MSE averaged over removed patches.

  Args:
    pixels: [B, H, W, C] the encoder's input; pred: [B, N, p*p*C]; mask: [B, N] (1 = removed).
    norm_pix: normalise each target patch by its mean and (unbiased) variance + 1e-6, as the
      release does.
  Returns:
    scalar float32.
  """
  target = patchify(pixels.astype(jnp.float32), patch)
  if norm_pix:
    mean = jnp.mean(target, axis=-1, keepdims=True)
    var = jnp.var(target, axis=-1, keepdims=True, ddof=1)
    target = (target - mean) / jnp.sqrt(var + 1e-6)
  per_patch = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)
  return jnp.sum(per_patch * mask) / jnp.sum(mask)


class MAE(nn.Module):
  """Masked autoencoder over pixels [B, H, W, 3].

  Params: `encoder` (VisionTransformer) and, with decoder_depth > 0, `mask_token` [1, 1, Dd],
  `decoder_pos_embed` [1, 1 + g*g, Dd], `decoder_embed`, `decoder_blocks_{i}`, `decoder_norm`,
  `decoder_pred` (Dd -> p*p*3). Masking noise comes from the `noise` argument or the 'masking'
  rng stream.
  """

  cfg: MAEConfig

  def setup(self):
    cfg = self.cfg
    enc = cfg.encoder
    self.encoder = VisionTransformer(enc)
    if cfg.decoder_depth:
      dtype = jnp.dtype(enc.dtype)
      dw = cfg.decoder_width
      self.mask_token = self.param(
        'mask_token', nn.initializers.normal(0.02), (1, 1, dw), jnp.float32
      )
      self.decoder_pos_embed = self.param(
        'decoder_pos_embed', sincos_init(enc.grid_size), (1, 1 + enc.grid_size**2, dw), jnp.float32
      )
      self.decoder_embed = nn.Dense(dw, dtype=dtype, kernel_init=nn.initializers.xavier_uniform())
      block_cls = nn.remat(ViTBlock, static_argnums=(2,)) if enc.remat else ViTBlock
      self.decoder_blocks = [
        block_cls(
          cfg.decoder_num_heads,
          cfg.decoder_mlp_ratio,
          eps=enc.eps,
          activation=enc.activation,
          dtype=dtype,
          name=f'decoder_blocks_{i}',
        )
        for i in range(cfg.decoder_depth)
      ]
      self.decoder_norm = layer_norm(enc.eps)
      self.decoder_pred = nn.Dense(
        enc.patch_size**2 * enc.in_channels,
        dtype=dtype,
        kernel_init=nn.initializers.xavier_uniform(),
      )

  def encode(self, pixels: jnp.ndarray, layer: int | None = None) -> dict[str, jnp.ndarray]:
    """The encoder on all patches (feature extraction): see `VisionTransformer.__call__`."""
    return self.encoder(pixels, layer)

  def encode_masked(
    self, pixels: jnp.ndarray, noise: jnp.ndarray | None = None
  ) -> dict[str, jnp.ndarray]:
    """The encoder on a random subset of patches.

    Args:
      pixels: [B, H, W, 3]; noise: [B, h*w] float, or None to draw it from the 'masking' rng.
    Returns:
      `latent` [B, 1 + K, C] (class token first, final norm applied), `mask` [B, h*w] (1 =
      removed), `ids_restore` int [B, h*w].
    """
    cls, patches, _ = self.encoder.embed(pixels)
    b, n, c = patches.shape
    if noise is None:
      noise = jax.random.uniform(self.make_rng('masking'), (b, n))
    if noise.shape != (b, n):
      raise ValueError(f'noise must be [B, N] = {(b, n)}, got {noise.shape}')
    ids_keep, mask, ids_restore = random_masking(noise, self.cfg.mask_ratio)
    kept = jnp.take_along_axis(patches, ids_keep[..., None], axis=1)
    latent, _ = self.encoder.transform(jnp.concatenate([cls, kept], axis=1))
    return {'latent': latent, 'mask': mask, 'ids_restore': ids_restore}

  def decode(self, latent: jnp.ndarray, ids_restore: jnp.ndarray) -> jnp.ndarray:
    """latent [B, 1 + K, C], ids_restore [B, N] -> predicted patch pixels [B, N, p*p*3]."""
    if not self.cfg.decoder_depth:
      raise ValueError('this MAE has no decoder (decoder_depth 0: an encoder-only checkpoint)')
    n = ids_restore.shape[1]
    if n != self.decoder_pos_embed.shape[1] - 1:
      raise ValueError(
        f'the decoder runs only at its training grid ({self.decoder_pos_embed.shape[1] - 1} '
        f'patches); got {n}'
      )
    x = self.decoder_embed(latent).astype(jnp.float32)
    b, k1, dw = x.shape
    fill = jnp.broadcast_to(self.mask_token, (b, n + 1 - k1, dw))
    patches = jnp.concatenate([x[:, 1:], fill], axis=1)
    patches = jnp.take_along_axis(patches, ids_restore[..., None], axis=1)
    x = jnp.concatenate([x[:, :1], patches], axis=1) + self.decoder_pos_embed
    for block in self.decoder_blocks:
      x = cotangent_barrier(block(x, True))
    x = self.decoder_pred(self.decoder_norm(x))
    return x[:, 1:].astype(jnp.float32)

  def __call__(
    self, pixels: jnp.ndarray, noise: jnp.ndarray | None = None
  ) -> dict[str, jnp.ndarray]:
    """Masked encoding, and with a decoder also `logits` [B, N, p*p*3] and the scalar `loss`
    (see `reconstruction_loss`). Keys as `encode_masked` plus those two."""
    out = self.encode_masked(pixels, noise)
    if self.cfg.decoder_depth:
      out['logits'] = self.decode(out['latent'], out['ids_restore'])
      out['loss'] = reconstruction_loss(
        pixels, out['logits'], out['mask'], self.cfg.encoder.patch_size, self.cfg.norm_pix_loss
      )
    return out
