"""A plain Vision Transformer (class token, learned or fixed position embedding, pre-norm blocks)
shared by the CLIP image tower, DINO / timm ViTs and the MAE encoder and decoder.

Pixels are NHWC. The residual stream is float32; matmuls run in the config's `dtype` and norms and
softmaxes in float32, as in the GroupViT towers. Position embeddings are stored for the training
grid and resized when the input grid differs, either as Hugging Face / open_clip do (bicubic to the
target size) or as DINO v1 does (bicubic with a scale factor of (n + 0.1) / g, see `dino_resize`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from groupvit_jax.models.config import ConfigError, JsonConfig, _build, _to_plain
from groupvit_jax.models.layers import ViTBlock, cotangent_barrier, dense_init, layer_norm
from groupvit_jax.ops.resize import _cubic_weights, resize_2d

ACTIVATIONS = ('gelu', 'quick_gelu')
POS_INTERPOLATIONS = ('bicubic', 'dino', 'none')
POS_INITS = ('trunc_normal', 'sincos')


@dataclasses.dataclass(frozen=True)
class ViTConfig(JsonConfig):
  """A ViT image tower. Defaults are DINO ViT-S/16.

  patch_bias: the patch projection has a bias (DINO, MAE) or not (CLIP's `conv1`).
  pre_norm: a LayerNorm after the position embedding (CLIP's `ln_pre`).
  pos_interpolation: how the position embedding follows other input grids: 'bicubic' (PyTorch
    bicubic to the target grid, as Hugging Face ViT/CLIP/ViTMAE and open_clip), 'dino' (DINO v1's
    scale factor with the +0.1 offset) or 'none' (other grids are an error, as OpenAI CLIP).
  pos_init: initialiser of a fresh model's position embedding: 'trunc_normal' (std 0.02) or
    'sincos' (MAE's fixed 2D sin-cos table). Loaded checkpoints always overwrite it.
  layer_scale_init: per-channel residual scales (timm `ls1`, open_clip `ls_1`) when not None.
  dtype: compute dtype of matmuls, 'float32' or 'bfloat16'.
  remat: rematerialise each block in the backward pass.
  """

  image_size: int = 224
  patch_size: int = 16
  in_channels: int = 3
  width: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  eps: float = 1e-6
  activation: str = 'gelu'
  patch_bias: bool = True
  pre_norm: bool = False
  pos_interpolation: str = 'dino'
  pos_init: str = 'trunc_normal'
  layer_scale_init: float | None = None
  dtype: str = 'float32'
  remat: bool = False

  @property
  def grid_size(self) -> int:
    return self.image_size // self.patch_size

  def validate(self) -> None:
    if self.width % self.num_heads:
      raise ConfigError(f'width {self.width} is not divisible by num_heads {self.num_heads}')
    if self.image_size % self.patch_size:
      raise ConfigError(
        f'image_size {self.image_size} is not a multiple of patch_size {self.patch_size}'
      )
    for name, value, allowed in (
      ('activation', self.activation, ACTIVATIONS),
      ('pos_interpolation', self.pos_interpolation, POS_INTERPOLATIONS),
      ('pos_init', self.pos_init, POS_INITS),
      ('dtype', self.dtype, ('float32', 'bfloat16')),
    ):
      if value not in allowed:
        raise ConfigError(f'{name} must be one of {allowed}, got {value!r}')
    if self.pos_init == 'sincos' and self.width % 4:
      raise ConfigError(f'sincos position embeddings need width % 4 == 0, got {self.width}')

  @classmethod
  def from_dict(cls, d: Mapping[str, Any], where: str = 'vit') -> 'ViTConfig':
    """Builds a config from a (possibly partial) mapping; unknown keys are an error."""
    cfg = _build(cls, dict(_to_plain(d)), where)
    cfg.validate()
    return cfg


def sincos_pos_embed(grid: int, width: int, cls_token: bool = True) -> np.ndarray:
  """MAE's fixed 2D sin-cos position table: [1, (1 +) grid*grid, width] float32.

  Channels are [sin(col w) | cos(col w) | sin(row w) | cos(row w)], each width/4 wide with
  w_k = 10000^(-k / (width/4)); the MAE release builds exactly this column-first layout (its
  meshgrid puts the column index in the half it calls 'h'), and its checkpoints store it. The class
  token's row is zero.
  """
  if width % 4:
    raise ValueError(f'width {width} is not a multiple of 4')
  quarter = width // 4
  omega = 1.0 / 10000.0 ** (np.arange(quarter, dtype=np.float64) / quarter)
  rows, cols = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid), indexing='ij')
  col = cols.reshape(-1, 1) * omega
  row = rows.reshape(-1, 1) * omega
  table = np.concatenate([np.sin(col), np.cos(col), np.sin(row), np.cos(row)], axis=1)
  if cls_token:
    table = np.concatenate([np.zeros((1, width)), table], axis=0)
  return table[None].astype(np.float32)


def sincos_init(grid: int, cls_token: bool = True):
  """A Flax initialiser returning `sincos_pos_embed` for a [1, (1 +) grid^2, C] param."""

  def init(key, shape, dtype=jnp.float32):
    del key
    table = sincos_pos_embed(grid, shape[-1], cls_token)
    if table.shape != tuple(shape):
      raise ValueError(f'sincos table {table.shape} does not fit the param shape {shape}')
    return jnp.asarray(table, dtype)

  return init


@functools.lru_cache(maxsize=64)
def _scaled_bicubic_matrix(in_size: int, out_size: int, scale: float) -> np.ndarray:
  """[out, in] PyTorch bicubic weights (align_corners=False) for an explicit `scale_factor`.

  When F.interpolate is given scale_factor (and recompute_scale_factor is not set) PyTorch maps
  output i to the source coordinate (i + 0.5) / scale - 0.5 rather than using in/out, so DINO's
  offset scale also shifts every sample, not only the output size.
  """
  src = (np.arange(out_size, dtype=np.float64) + 0.5) / scale - 0.5
  i0 = np.floor(src).astype(np.int64)
  weights = _cubic_weights(src - i0)
  m = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)
  for k in range(4):
    np.add.at(m, (rows, np.clip(i0 - 1 + k, 0, in_size - 1)), weights[:, k])
  return m


def dino_resize(patch_pos: jnp.ndarray, grid: tuple[int, int]) -> jnp.ndarray:
  """DINO v1's `interpolate_pos_encoding` for the patch part: [1, g*g, C] -> [1, h*w, C].

  DINO calls F.interpolate(mode='bicubic', scale_factor=((h + 0.1) / g, (w + 0.1) / g)); the 0.1
  keeps floor(g * scale) from rounding below h. The output size is that floor, which is h.
  """
  n, c = patch_pos.shape[1:]
  g = _square_side(n)
  h, w = grid
  mats = []
  for out in (h, w):
    scale = (out + 0.1) / g
    size = int(np.floor(g * scale))
    if size != out:
      raise ValueError(f'DINO interpolation gives {size} positions for a grid side of {out}')
    mats.append(jnp.asarray(_scaled_bicubic_matrix(g, out, scale), jnp.float32))
  pe = patch_pos.reshape(g, g, c).astype(jnp.float32)
  pe = jnp.einsum('oh,hwc->owc', mats[0], pe, precision='highest')
  pe = jnp.einsum('pw,owc->opc', mats[1], pe, precision='highest')
  return pe.reshape(1, h * w, c)


def _square_side(n: int) -> int:
  g = int(round(np.sqrt(n)))
  if g * g != n:
    raise ValueError(f'position embedding of {n} tokens is not a square grid')
  return g


def resize_patch_pos(patch_pos: jnp.ndarray, grid: tuple[int, int], mode: str) -> jnp.ndarray:
  """Patch position embedding [1, g*g, C] for another grid -> [1, h*w, C] (`mode` as in
  `ViTConfig.pos_interpolation`); unchanged when (h, w) == (g, g)."""
  n, c = patch_pos.shape[1:]
  g = _square_side(n)
  if tuple(grid) == (g, g):
    return patch_pos
  if mode == 'none':
    raise ValueError(
      f'input grid {grid} differs from the position embedding grid {(g, g)} and this model does '
      "not interpolate (pos_interpolation='none')"
    )
  if mode == 'dino':
    return dino_resize(patch_pos, grid)
  pe = resize_2d(patch_pos.reshape(1, g, g, c), grid, 'bicubic')
  return pe.reshape(1, grid[0] * grid[1], c)


class VisionTransformer(nn.Module):
  """ViT: pixels [B, H, W, C_in] (H, W multiples of the patch size) -> dict of
  `cls` [B, C] and `patches` [B, h, w, C] (both after the final norm) and, when `layer` is given,
  `layer_tokens` [B, 1 + h*w, C], the output of block `layer` (negative counts from the end)
  before any final norm.

  Params: `patch_embed` (Conv), `cls_token` [1, 1, C], `pos_embed` [1, 1 + g*g, C], optional
  `ln_pre`, `blocks_{i}` (ViTBlock), `norm`. `embed` and `transform` split the forward pass so
  that MAE can drop tokens in between.
  """

  cfg: ViTConfig

  def setup(self):
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    p = cfg.patch_size
    self.patch_embed = nn.Conv(
      cfg.width,
      (p, p),
      strides=(p, p),
      padding='VALID',
      use_bias=cfg.patch_bias,
      dtype=dtype,
      kernel_init=dense_init,
    )
    self.cls_token = self.param(
      'cls_token', nn.initializers.truncated_normal(0.02), (1, 1, cfg.width), jnp.float32
    )
    pos_init = (
      sincos_init(cfg.grid_size)
      if cfg.pos_init == 'sincos'
      else nn.initializers.truncated_normal(0.02)
    )
    self.pos_embed = self.param(
      'pos_embed', pos_init, (1, 1 + cfg.grid_size**2, cfg.width), jnp.float32
    )
    if cfg.pre_norm:
      self.ln_pre = layer_norm(cfg.eps)
    block_cls = nn.remat(ViTBlock, static_argnums=(2,)) if cfg.remat else ViTBlock
    self.blocks = [
      block_cls(
        cfg.num_heads,
        cfg.mlp_ratio,
        eps=cfg.eps,
        activation=cfg.activation,
        dtype=dtype,
        layer_scale_init=cfg.layer_scale_init,
        name=f'blocks_{i}',
      )
      for i in range(cfg.depth)
    ]
    self.norm = layer_norm(cfg.eps)

  def embed(self, pixels: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, tuple[int, int]]:
    """Patch embedding plus position embedding.

    Args:
      pixels: [B, H, W, C_in] float.
    Returns:
      (cls [B, 1, C] float32 with its position added, patches [B, h*w, C] float32 with theirs,
      (h, w)).
    """
    cfg = self.cfg
    p = cfg.patch_size
    if pixels.ndim != 4 or pixels.shape[1] % p or pixels.shape[2] % p:
      raise ValueError(
        f'pixels must be [B, H, W, {cfg.in_channels}] with H, W multiples of {p}; '
        f'got {pixels.shape}'
      )
    x = self.patch_embed(pixels.astype(jnp.dtype(cfg.dtype)))
    b, h, w, c = x.shape
    x = x.reshape(b, h * w, c).astype(jnp.float32)
    patch_pos = resize_patch_pos(self.pos_embed[:, 1:], (h, w), cfg.pos_interpolation)
    cls = jnp.broadcast_to(self.cls_token + self.pos_embed[:, :1], (b, 1, c))
    return cls, x + patch_pos, (h, w)

  def transform(
    self, tokens: jnp.ndarray, layer: int | None = None, mask: jnp.ndarray | None = None
  ) -> tuple[jnp.ndarray, jnp.ndarray | None]:
    """Optional ln_pre, the blocks and the final norm: [B, N, C] -> ([B, N, C], block `layer`'s
    un-normalised output [B, N, C] or None). `mask`: optional bool attention mask broadcastable to
    [B, heads, N, N] (True = may attend), used by every block."""
    x = self.ln_pre(tokens) if self.cfg.pre_norm else tokens
    depth = self.cfg.depth
    if layer is not None and not -depth <= layer < depth:
      raise ValueError(f'layer {layer} is out of range for {depth} blocks')
    picked = None
    for i, block in enumerate(self.blocks):
      x = cotangent_barrier(block(x, True, mask))
      if layer is not None and i == layer % depth:
        picked = x
    return self.norm(x), picked

  def __call__(self, pixels: jnp.ndarray, layer: int | None = None) -> dict[str, jnp.ndarray]:
    cls, patches, (h, w) = self.embed(pixels)
    x, picked = self.transform(jnp.concatenate([cls, patches], axis=1), layer)
    out = {'cls': x[:, 0], 'patches': x[:, 1:].reshape(x.shape[0], h, w, x.shape[-1])}
    if picked is not None:
      out['layer_tokens'] = picked
    return out
