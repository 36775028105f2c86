"""Image/feature resizing with PyTorch `F.interpolate` semantics, as separable matrix products.

`jax.image.resize` uses Keys a = -0.5 and antialiasing, and so does not reproduce the released
model, whose position embeddings are resized by `F.interpolate(mode='bicubic', align_corners=False)`
(a = -0.75, no antialias, border-clamped taps) and whose maps are upsampled with `mode='bilinear'`.
The interpolation weights depend only on static sizes, so they are built once in numpy and applied
as two small matmuls, which XLA fuses and which are exact to float32 rounding.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

_CUBIC_A = -0.75  # PyTorch's Keys coefficient for bicubic


def _cubic_weights(t: np.ndarray) -> np.ndarray:
  """Keys cubic convolution weights for taps at offsets -1, 0, 1, 2. t: [N] in [0, 1) -> [N, 4]."""
  a = _CUBIC_A

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.lru_cache(maxsize=256)
def resize_matrix(in_size: int, out_size: int, method: str) -> np.ndarray:
  """The [out_size, in_size] float64 matrix M with out = M @ in along one axis.

  Matches `torch.nn.functional.interpolate(size=..., align_corners=False)` for
  method 'bilinear' or 'bicubic' (no antialias), including PyTorch's border handling:
  bilinear clamps negative source coordinates to 0; bicubic does not, but clamps tap indices.
  """
  if in_size <= 0 or out_size <= 0:
    raise ValueError(f'sizes must be positive, got {in_size} -> {out_size}')
  scale = in_size / out_size
  dst = np.arange(out_size, dtype=np.float64)
  src = (dst + 0.5) * scale - 0.5
  m = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)
  if method == 'bilinear':
    src = np.maximum(src, 0.0)
    i0 = np.floor(src).astype(np.int64)
    i0 = np.minimum(i0, in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam = src - i0
    np.add.at(m, (rows, i0), 1.0 - lam)
    np.add.at(m, (rows, i1), lam)
  elif method == 'bicubic':
    i0 = np.floor(src).astype(np.int64)
    w = _cubic_weights(src - i0)
    for k in range(4):
      idx = np.clip(i0 - 1 + k, 0, in_size - 1)
      np.add.at(m, (rows, idx), w[:, k])
  else:
    raise ValueError(f"method must be 'bilinear' or 'bicubic', got {method!r}")
  return m


def resize_2d(
  x: jnp.ndarray, out_hw: tuple[int, int], method: str, axes: tuple[int, int] = (-3, -2)
) -> jnp.ndarray:
  """Resizes two spatial axes of `x` (default: [..., H, W, C]) like PyTorch's F.interpolate.

  Args:
    x: array with spatial axes at `axes`, e.g. [B, H, W, C].
    out_hw: (out_H, out_W).
    method: 'bilinear' or 'bicubic'.
    axes: positions of the (H, W) axes.
  Returns:
    array with the same dtype as `x` and the spatial axes resized, e.g. [B, out_H, out_W, C].
  """
  ax_h, ax_w = (a % x.ndim for a in axes)
  in_h, in_w = x.shape[ax_h], x.shape[ax_w]
  out_h, out_w = out_hw
  if (in_h, in_w) == (out_h, out_w):
    return x
  dtype = x.dtype
  mh = jnp.asarray(resize_matrix(in_h, out_h, method), jnp.float32)
  mw = jnp.asarray(resize_matrix(in_w, out_w, method), jnp.float32)
  xf = jnp.moveaxis(x.astype(jnp.float32), (ax_h, ax_w), (-2, -1))
  hp = 'highest'
  y = jnp.einsum('oh,...hw->...ow', mh, xf, precision=hp)
  y = jnp.einsum('pw,...ow->...op', mw, y, precision=hp)
  return jnp.moveaxis(y, (-2, -1), (ax_h, ax_w)).astype(dtype)
