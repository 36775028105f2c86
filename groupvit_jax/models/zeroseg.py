"""ZeroSeg (Chen et al., ICCV 2023): a masked autoencoder whose grouping head learns segment tokens
that match a frozen CLIP's embeddings of local views; trained on images alone.

The student on pixels [B, S, S, 3] (ImageNet-normalised, as MAE):

* **Encoder**: the MAE encoder (`models.mae`, absolute sin-cos position embeddings) over the
  visible patches, a per-sample random `mask_ratio` of them removed (0.6 as the paper).
* **Decoder**: the MAE decoder (8 blocks) reconstructs the removed patches' pixels (MSE, the
  `norm_pix_loss` option).
* **Segmentation head**: the encoder's patch tokens (class token dropped), projected to
  `head.width`, go through GroupViT's grouping stages (`models.image_encoder.GroupingStage`):
  with the default `head` 2 blocks with 32 group tokens, a grouping block to 32 segments, 2 blocks
  with 8 new group tokens, a grouping block to 8, one block, a final LayerNorm: segment tokens
  [B, 8, W_h]. Every GroupViT knob (hard/soft assignment, Gumbel, group projector) is `head`'s.
* **Global head**: `global_depth` transformer blocks over the segment tokens, mean pooling and an
  MLP (`global_mlp_ratio`): the global vector [B, W_h].
* **Projections** into the teacher's embedding space E: `segment_proj` and `global_proj`
  ('linear' or a 2-layer 'mlp'), L2-normalised when `normalize` (the teacher targets are unit
  vectors, so the L1 distances then compare directions only).

What the head sees: in training the visible tokens of the masked pass (`head_input='visible'`,
one encoder pass; our default, the paper is silent) or the tokens of a second, unmasked pass
(`'full'`); at inference always every patch, no masking. Masking draws its noise from the
'masking' rng stream (or a given `noise`, as Hugging Face ViTMAE), the assignment noise from
'gumbel'.

The teacher CLIP's config rides along (`teacher`): its text tower names the segments at
inference, and the export holds its variables next to the student's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from groupvit_jax.models.clip import CLIPConfig
from groupvit_jax.models.config import (
  ConfigError,
  ImageEncoderConfig,
  JsonConfig,
  _build,
  _to_plain,
)
from groupvit_jax.models.grouping import Assignment
from groupvit_jax.models.groupvit import compose_group_maps, l2_normalize
from groupvit_jax.models.image_encoder import GroupingStage
from groupvit_jax.models.layers import Mlp, ViTBlock, dense_init, layer_norm
from groupvit_jax.models.mae import MAE, MAEConfig, mae_encoder_config, reconstruction_loss
from groupvit_jax.models.vit import ViTConfig

PROJECTIONS = ('linear', 'mlp')
HEAD_INPUTS = ('visible', 'full')


def zeroseg_head_config(**kwargs) -> ImageEncoderConfig:
  """The segmentation head as GroupViT stages: 5 blocks at width 384, grouping to 32 after the
  2nd and to 8 after the 4th, no stochastic depth; `kwargs` override any field."""
  base = dict(
    width=384,
    num_heads=6,
    depths=(2, 2, 1),
    num_group_tokens=(32, 8, 0),
    num_output_groups=(32, 8),
    drop_path_rate=0.0,
    layer_norm_eps=1e-6,
  )
  base.update(kwargs)
  return ImageEncoderConfig(**base)


def _zeroseg_mae() -> MAEConfig:
  return MAEConfig(mask_ratio=0.6, norm_pix_loss=True)


@dataclasses.dataclass(frozen=True)
class ZeroSegConfig(JsonConfig):
  """The ZeroSeg student and its teacher's config.

  teacher: the frozen CLIP (E = teacher.embed_dim is the target space).
  mae: encoder + decoder (MAE ViT-B/16, decoder 512 x 8, mask ratio 0.6, norm_pix_loss on: MAE's
    recommended setting, our default).
  head: the segmentation head's GroupViT stages (`zeroseg_head_config`); its image_size and
    patch_size are the encoder's.
  head_input: 'visible' | 'full' (module docstring).
  global_depth: blocks of the global head over the segment tokens.
  global_mlp_ratio: hidden width of the global MLP as a multiple of head.width.
  projection: 'linear' | 'mlp' for both projections into E.
  normalize: L2-normalise segment and global embeddings before the losses.
  """

  teacher: CLIPConfig = dataclasses.field(default_factory=CLIPConfig)
  mae: MAEConfig = dataclasses.field(default_factory=_zeroseg_mae)
  head: ImageEncoderConfig = dataclasses.field(default_factory=zeroseg_head_config)
  head_input: str = 'visible'
  global_depth: int = 1
  global_mlp_ratio: float = 4.0
  projection: str = 'linear'
  normalize: bool = True

  @property
  def encoder(self) -> ViTConfig:
    return self.mae.encoder

  @property
  def embed_dim(self) -> int:
    return self.teacher.embed_dim

  @property
  def num_segments(self) -> int:
    h = self.head
    return h.num_output_groups[h.num_grouping_stages - 1]

  def validate(self) -> None:
    self.teacher.validate()
    self.mae.validate()
    self.head.validate()
    if self.head.num_grouping_stages == 0:
      raise ConfigError('the segmentation head needs at least one grouping stage')
    enc = self.encoder
    if (self.head.image_size, self.head.patch_size) != (enc.image_size, enc.patch_size):
      raise ConfigError(
        f'head image_size/patch_size {self.head.image_size}/{self.head.patch_size} must be the '
        f"encoder's {enc.image_size}/{enc.patch_size}"
      )
    if self.head_input not in HEAD_INPUTS:
      raise ConfigError(f'head_input must be one of {HEAD_INPUTS}, got {self.head_input!r}')
    if self.projection not in PROJECTIONS:
      raise ConfigError(f'projection must be one of {PROJECTIONS}, got {self.projection!r}')
    if self.global_depth < 0:
      raise ConfigError(f'global_depth must be >= 0, got {self.global_depth}')
    if self.mae.decoder_depth == 0:
      raise ConfigError('the ZeroSeg student needs the MAE decoder (mae.decoder_depth > 0)')

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'ZeroSegConfig':
    """Builds a config from a (possibly partial) nested mapping; unknown keys are an error.
    Missing `mae` / `head` fields take ZeroSeg's defaults; the head's image_size and patch_size
    default to the encoder's."""
    d = dict(_to_plain(d))
    teacher = CLIPConfig.from_dict(d.pop('teacher', {}))
    mae_d = dict(d.pop('mae', {}))
    encoder = ViTConfig.from_dict(
      {**mae_encoder_config().to_dict(), **mae_d.pop('encoder', {})}, 'zeroseg.mae.encoder'
    )
    mae = _build(MAEConfig, {**_mae_defaults(), **mae_d}, 'zeroseg.mae', encoder=encoder)
    head_d = {
      **zeroseg_head_config().__dict__,
      'image_size': encoder.image_size,
      'patch_size': encoder.patch_size,
      **d.pop('head', {}),
    }
    head = _build(ImageEncoderConfig, head_d, 'zeroseg.head')
    cfg = _build(cls, d, 'zeroseg', teacher=teacher, mae=mae, head=head)
    cfg.validate()
    return cfg


def _mae_defaults() -> dict[str, Any]:
  out = _zeroseg_mae().to_dict()
  out.pop('encoder')
  return out


def with_encoder(cfg: ZeroSegConfig, **encoder_fields) -> ZeroSegConfig:
  """`cfg` with encoder fields replaced and the head's image/patch size kept in step."""
  enc = dataclasses.replace(cfg.encoder, **encoder_fields)
  head = dataclasses.replace(cfg.head, image_size=enc.image_size, patch_size=enc.patch_size)
  return dataclasses.replace(cfg, mae=dataclasses.replace(cfg.mae, encoder=enc), head=head)


class _Projection(nn.Module):
  kind: str
  out_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.kind == 'mlp':
      return Mlp(x.shape[-1], self.out_dim, dtype=self.dtype, name='mlp')(x)
    return nn.Dense(self.out_dim, dtype=self.dtype, kernel_init=dense_init, name='dense')(x)


class ZeroSegStudent(nn.Module):
  """The student. Params: `mae` (encoder + decoder, the MAE module's names), `head_in`,
  `head_layers_{s}` (GroupViT stages), `head_norm`, `global_blocks_{i}`, `global_norm`,
  `global_mlp`, `segment_proj`, `global_proj`."""

  cfg: ZeroSegConfig

  def setup(self):
    cfg = self.cfg
    dtype = jnp.dtype(cfg.encoder.dtype)
    head = cfg.head
    self.mae = MAE(cfg.mae)
    self.head_in = nn.Dense(head.width, dtype=dtype, kernel_init=dense_init)
    self.head_layers = [
      GroupingStage(
        head,
        s,
        (0.0,) * head.depths[s],
        dtype=dtype,
        remat=cfg.encoder.remat,
        name=f'head_layers_{s}',
      )
      for s in range(len(head.depths))
    ]
    self.head_norm = layer_norm(head.layer_norm_eps)
    self.global_blocks = [
      ViTBlock(
        head.num_heads, head.mlp_ratio, eps=head.layer_norm_eps, dtype=dtype, name=f'global_{i}'
      )
      for i in range(cfg.global_depth)
    ]
    self.global_norm = layer_norm(head.layer_norm_eps)
    self.global_mlp = Mlp(int(head.width * cfg.global_mlp_ratio), head.width, dtype=dtype)
    self.segment_proj = _Projection(cfg.projection, cfg.embed_dim, dtype)
    self.global_proj = _Projection(cfg.projection, cfg.embed_dim, dtype)

  def segments(self, tokens: jnp.ndarray, deterministic: bool = True) -> dict[str, Any]:
    """The heads on encoder patch tokens [B, N, C] (final norm applied, no class token).

    Returns:
      `segment_embeds` [B, S, E], `global_embed` [B, E] (float32; unit when `cfg.normalize`),
      `segment_tokens` [B, S, W_h], `assignments` (one `Assignment` per grouping stage, maps
      [B, S_out, N_in]).
    """
    x = self.head_in(tokens)
    groups, assignments = None, []
    for stage in self.head_layers:
      x, groups, assignment = stage(x, groups, deterministic)
      if assignment is not None:
        assignments.append(assignment)
    seg = self.head_norm(x)
    y = seg
    for block in self.global_blocks:
      y = block(y, deterministic)
    y = self.global_mlp(jnp.mean(self.global_norm(y), axis=1))
    seg_e = self.segment_proj(seg).astype(jnp.float32)
    glob_e = self.global_proj(y).astype(jnp.float32)
    if self.cfg.normalize:
      seg_e, glob_e = l2_normalize(seg_e), l2_normalize(glob_e)
    return {
      'segment_embeds': seg_e,
      'global_embed': glob_e,
      'segment_tokens': seg,
      'assignments': tuple(assignments),
    }

  def encode_image(self, pixels: jnp.ndarray) -> dict[str, Any]:
    """Inference: every patch, no masking, deterministic assignment. pixels [B, H, W, 3]
    (H, W multiples of the patch size; other grids interpolate the position embedding).
    Returns `segments`' keys plus `grid` (h, w)."""
    out = self.mae.encode(pixels)
    b, h, w, c = out['patches'].shape
    result = self.segments(out['patches'].reshape(b, h * w, c), True)
    result['grid'] = (h, w)
    return result

  def __call__(
    self,
    pixels: jnp.ndarray,
    noise: jnp.ndarray | None = None,
    train: bool = True,
    decode: bool = True,
  ) -> dict[str, Any]:
    """Training forward. pixels [B, S, S, 3]; noise [B, N] or None (the 'masking' rng).

    Returns `segments`' keys plus the MAE's `mask` [B, N] (1 = removed) and its scalar
    `mae_loss` (with `decode`; 0.0 without, or when the mask ratio is 0 and nothing is removed).
    """
    cfg = self.cfg
    masked = self.mae.encode_masked(pixels, noise)
    mae_loss = jnp.zeros((), jnp.float32)
    # The decoder's params exist whatever the ratio, so that checkpoints keep one layout.
    if decode and (cfg.mae.mask_ratio > 0 or self.is_initializing()):
      pred = self.mae.decode(masked['latent'], masked['ids_restore'])
      if cfg.mae.mask_ratio > 0:
        mae_loss = reconstruction_loss(
          pixels, pred, masked['mask'], cfg.encoder.patch_size, cfg.mae.norm_pix_loss
        )
    if cfg.head_input == 'visible':
      tokens = masked['latent'][:, 1:]
    else:
      out = self.mae.encode(pixels)
      b, h, w, c = out['patches'].shape
      tokens = out['patches'].reshape(b, h * w, c)
    result = self.segments(tokens, not train)
    result.update(mask=masked['mask'], mae_loss=mae_loss)
    return result


def init_params(cfg: ZeroSegConfig, rng: jax.Array) -> dict[str, Any]:
  """Fresh student params (batch 1 at the training size)."""
  s = cfg.encoder.image_size
  pixels = jnp.zeros((1, s, s, cfg.encoder.in_channels), jnp.float32)
  noise = jnp.zeros((1, cfg.encoder.grid_size**2), jnp.float32)
  params_rng, gumbel_rng = jax.random.split(rng)
  variables = ZeroSegStudent(cfg).init(
    {'params': params_rng, 'gumbel': gumbel_rng}, pixels, noise, train=False
  )
  return variables['params']


FIXED_PARAMS = ('pos_embed', 'decoder_pos_embed')


def is_fixed(path: tuple[str, ...]) -> bool:
  """Whether a student param stays at its initial value in training: the MAE's sin-cos position
  embeddings (fixed in the MAE release)."""
  return bool(path) and path[0] == 'mae' and path[-1] in FIXED_PARAMS


def composed_maps(assignments: tuple[Assignment, ...]) -> jnp.ndarray:
  """Patches -> final segments: [B, h*w, S] soft maps composed over the stages (as GroupViT's
  segmentation)."""
  return compose_group_maps(assignments)[-1]
