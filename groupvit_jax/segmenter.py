"""Zero-shot semantic segmentation with the released GroupViT protocol, as fixed-shape jitted JAX.

The protocol (NVlabs ``GroupViTSegInference`` inside mmsegmentation's ``EncoderDecoder``)
-----------------------------------------------------------------------------------------
1. Resize like ``mmcv.imrescale(img, (2048, 448))``: ``s = min(2048 / long, 448 / short)``, new size
   ``int(x * s + 0.5)``, OpenCV ``INTER_LINEAR`` on uint8. :func:`resize_uint8` is a numpy port of
   OpenCV's fixed-point algorithm (11-bit coefficients, its border rules, its rounding) and is
   **bit-exact** with ``cv2.resize`` 4.x and 5.x (checked on hundreds of random sizes), so OpenCV is
   not a dependency. Then ImageNet normalisation ``(x - 255 * mean) * (1 / (255 * std))`` (mmcv).
2. ``mode='slide'``: 448x448 windows, stride 224, placed like mmseg's ``slide_inference``
   (``y2 = min(y1 + 448, H); y1 = max(y2 - 448, 0)``: the last window is shifted back inside the
   image). A canvas side shorter than 448 (only when the long-side cap applies, aspect > 2048/448)
   gives windows of that full side; the model sees ``floor(side / patch)`` patches as the release's
   stride-16 convolution does.
   ``mode='whole'`` (the demo): the whole resized canvas at once.
3. Per window: compose the grouping stages' soft maps (patches x 64 @ 64 x 8), resize them
   bilinearly to the window (``F.interpolate``, ``align_corners=False``), one-hot argmax group per
   pixel. Group embeddings (image head on the final segment tokens) and the pooled image embedding
   are L2-normalised; with ``s = min(exp(logit_scale), 100)``:
   ``pre = softmax_k(s * cos(group, class))``; keep the top-5 classes of
   ``softmax_k(s * cos(image, class))``; ``score = softmax over the kept classes * pre``. With a
   background threshold ``t``, channel 0 is 1 where the pixel's best score is below
   ``min(t, best score of any group in the window)``.
4. Window logits are summed and divided by the number of windows covering each pixel, resized
   bilinearly to the original image size, softmaxed over classes (mmseg's ``inference``) and
   averaged over test-time views (``scales``, ``flip``: mmseg's ``aug_test`` averages the softmax
   outputs, so that is what ``flip=True`` does here), then argmax.

How it runs (no recompilation across image sizes in slide mode)
--------------------------------------------------------------
* Host (numpy, in a background thread): resize, crop windows.
* Device, stage 1 (``_window_fn``): a fixed-size batch of windows ``uint8 [Bw, 448, 448, 3]`` from
  any images (padding windows are ignored) -> per-pixel group ids ``uint8 [Bw, 448, 448]`` and each
  window's class table ``[Bw, G, C]`` (C = classes, plus the background channel). Resize matrices
  are data, so short windows of any height share the compiled function of their patch grid.
* Device, stage 2 (``_tile_step`` / ``_tile_finalize``): the output image is cut into fixed
  ``tile_size`` x ``tile_size`` tiles. The overlap average and the final bilinear resize are linear
  and separable, so each window's contribution to an output tile is
  ``sum_{a,b} wr[y, a] * wc[x, b] * table[groups[ry[y, a], cx[x, b]]]`` with two bilinear taps per
  axis whose weights already include ``1 / count`` (the window count is separable too). Tiles of any
  image are batched, accumulated ``windows_per_step`` windows at a time, softmaxed per view, arg-
  maxed and added to an on-device confusion matrix. All shapes are fixed by the protocol, not by the
  image, so a new image size never recompiles anything in slide mode. ``mode='whole'`` compiles once
  per distinct patch grid (as any whole-image ViT inference must).

Floating-point differences from the reference are at the 1e-6 level (summation order, matmul
precision); they can flip the argmax of a pixel sitting on a near-tie only.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import threading
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from groupvit_jax import prompts, scg_inference, xla_cpu
from groupvit_jax.models.config import GroupViTConfig
from groupvit_jax.models.groupvit import GroupViT, compose_group_maps, l2_normalize
from groupvit_jax.models.scg import SCGConfig
from groupvit_jax.models.zeroseg import ZeroSegConfig, ZeroSegStudent
from groupvit_jax.ops.confusion import confusion_matrix_update
from groupvit_jax.ops.resize import resize_matrix

__all__ = [
  'Protocol',
  'rescale_size',
  'resize_uint8',
  'window_starts',
  'class_table',
  'ZeroShotSegmenter',
  'SegmentResult',
  'segment',
  'compile_stats',
]

HIGHEST = jax.lax.Precision.HIGHEST
# mmseg's img_norm_cfg: mean/std on the 0-255 scale;
# mmcv.imnormalize computes (x - mean) * (1 / std).
_MEAN255 = np.array([123.675, 116.28, 103.53], np.float32)
_INV_STD255 = (1.0 / np.array([58.395, 57.12, 57.375], np.float64)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Compilation accounting (jax.monitoring): used for timing reports and the no-recompilation test.
# --------------------------------------------------------------------------------------------------

_COMPILE_STATS = {'backend_compiles': 0, 'compile_seconds': 0.0}
_COMPILE_LOCK = threading.Lock()


def _on_event_duration(event: str, duration: float, **_) -> None:
  if event.startswith('/jax/core/compile/'):
    with _COMPILE_LOCK:
      _COMPILE_STATS['compile_seconds'] += float(duration)
      if event.endswith('backend_compile_duration'):
        _COMPILE_STATS['backend_compiles'] += 1


jax.monitoring.register_event_duration_secs_listener(_on_event_duration)


def compile_stats() -> dict:
  """Process-wide JAX compilation counters since import: ``backend_compiles`` (XLA compilations of
  any function) and ``compile_seconds`` (tracing + lowering + compiling)."""
  with _COMPILE_LOCK:
    return dict(_COMPILE_STATS)


# --------------------------------------------------------------------------------------------------
# Host-side protocol pieces (numpy)
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Protocol:
  """Test-time protocol and batching knobs.

  Attributes:
    mode: ``'slide'`` (the benchmarks) or ``'whole'`` (the demo: the whole resized image at once).
    scales: image-scale ratios (mmseg ``img_ratios``): scale ``r`` resizes to
      ``(int(long_side * r), int(short_side * r))``. Views are averaged after a softmax.
    flip: also run horizontally flipped views (mmseg ``flip=True``).
    crop_size, stride: sliding-window size and stride (448, 224 in the release).
    short_side, long_side: ``img_scale=(2048, 448)`` of the release.
    top_k: classes kept from the pooled image embedding (5).
    window_batch: windows per device call (stage 1).
    tile_size: output tile side (stage 2); 512 covers VOC/Context images in one tile.
    tile_batch: tiles per device call (stage 2).
    windows_per_step: window contributions accumulated per stage-2 call.
  """

  mode: str = 'slide'
  scales: tuple[float, ...] = (1.0,)
  flip: bool = False
  crop_size: int = 448
  stride: int = 224
  short_side: int = 448
  long_side: int = 2048
  top_k: int = 5
  window_batch: int = 4
  tile_size: int = 512
  tile_batch: int = 2
  windows_per_step: int = 2

  def __post_init__(self):
    if self.mode not in ('slide', 'whole'):
      raise ValueError(f"mode must be 'slide' or 'whole', got {self.mode!r}")
    if not self.scales or any(s <= 0 for s in self.scales):
      raise ValueError(f'scales must be positive, got {self.scales}')
    for name in (
      'crop_size',
      'stride',
      'window_batch',
      'tile_size',
      'tile_batch',
      'windows_per_step',
      'top_k',
      'short_side',
      'long_side',
    ):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1')

  def view_list(self) -> list[tuple[float, bool]]:
    """(scale ratio, flipped) of every test-time view, in mmseg's order."""
    return [(r, f) for r in self.scales for f in ((False, True) if self.flip else (False,))]


def rescale_size(
  height: int, width: int, long_side: int = 2048, short_side: int = 448
) -> tuple[int, int]:
  """``mmcv.rescale_size``: the size fitting ``(long_side, short_side)`` with the aspect ratio kept.

  Returns:
    ``(new_height, new_width)`` with ``s = min(long_side / max(h, w), short_side / min(h, w))`` and
    ``new = int(old * s + 0.5)``.
  """
  scale = min(long_side / max(height, width), short_side / min(height, width))
  return int(height * float(scale) + 0.5), int(width * float(scale) + 0.5)


def _cv_taps(in_size: int, out_size: int, clamp_weights: bool):
  """OpenCV INTER_LINEAR taps of one axis: (i0 [out], i1 [out], w0 [out], w1 [out]) with 11-bit
  integer weights. OpenCV clamps the weights only horizontally; vertically it clamps the source
  rows but keeps the weights (so the two weights of a border row may sum to 2047 or 2049)."""
  scale = 1.0 / (out_size / in_size)
  f = ((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
  s = np.floor(f).astype(np.int64)
  f = (f - s.astype(np.float32)).astype(np.float32)
  if clamp_weights:
    low, high = s < 0, s >= in_size - 1
    f[low], s[low] = 0, 0
    f[high], s[high] = 0, in_size - 1
  w1 = np.rint(f * np.float32(2048)).astype(np.int64)  # saturate_cast<short>: round half to even
  w0 = np.rint((np.float32(1) - f) * np.float32(2048)).astype(np.int64)
  return np.clip(s, 0, in_size - 1), np.clip(s + 1, 0, in_size - 1), w0, w1


def resize_uint8(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """``cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)`` for uint8, bit-exact.

  Args:
    image: uint8 ``[H, W]`` or ``[H, W, C]``.
    height, width: output size.
  Returns:
    uint8 ``[height, width(, C)]``.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f'expected uint8 pixels, got {image.dtype}')
  squeeze = image.ndim == 2
  src = image[..., None] if squeeze else image
  h, w = src.shape[:2]
  if (h, w) == (height, width):
    out = src.copy()
  else:
    # (An exact 2x downscale is INTER_AREA in OpenCV; the result is the same as below.)
    x0, x1, a0, a1 = _cv_taps(w, width, clamp_weights=True)
    y0, y1, b0, b1 = _cv_taps(h, height, clamp_weights=False)
    s = src.astype(np.int32)
    rows = s[:, x0] * a0[None, :, None].astype(np.int32) + s[:, x1] * a1[None, :, None].astype(
      np.int32
    )
    r0 = (rows[y0] >> 4).astype(np.int64)
    r1 = (rows[y1] >> 4).astype(np.int64)
    out = (((b0[:, None, None] * r0) >> 16) + ((b1[:, None, None] * r1) >> 16) + 2) >> 2
    out = out.astype(np.uint8)
  return out[..., 0] if squeeze else out


def window_starts(size: int, crop: int, stride: int) -> list[int]:
  """Window start offsets along one axis, as mmseg's ``slide_inference``.

  ``n = max(size - crop + stride - 1, 0) // stride + 1`` windows; window ``i`` ends at
  ``min(i * stride + crop, size)`` and starts ``crop`` before that (at least 0).
  """
  n = max(size - crop + stride - 1, 0) // stride + 1
  out = []
  for i in range(n):
    end = min(i * stride + crop, size)
    out.append(max(end - crop, 0))
  return out


def _bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Two-tap form of ``resize_matrix(in_size, out_size, 'bilinear')`` (F.interpolate semantics).

  Returns:
    idx int64 ``[out, 2]`` and weights float64 ``[out, 2]`` (a clamped tap has weight 0).
  """
  m = resize_matrix(in_size, out_size, 'bilinear')
  rows = np.arange(out_size)
  i0 = np.argmax(m != 0, axis=1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  w0 = m[rows, i0]
  w1 = np.where(i1 != i0, m[rows, i1], 0.0)
  return np.stack([i0, i1], 1), np.stack([w0, w1], 1)


def _padded_resize_matrix(grid: int, size: int, padded: int) -> np.ndarray:
  """float32 ``[padded, grid]``: bilinear grid -> size rows, zero rows after ``size``."""
  m = np.zeros((padded, grid), np.float32)
  m[:size] = resize_matrix(grid, size, 'bilinear')
  return m


# --------------------------------------------------------------------------------------------------
# Device functions
# --------------------------------------------------------------------------------------------------


def class_table(
  group_embeds: jnp.ndarray,
  image_embed: jnp.ndarray,
  class_embed: jnp.ndarray,
  logit_scale: jnp.ndarray,
  threshold: Optional[jnp.ndarray],
  top_k: int,
  with_background: bool,
  class_mask: Optional[jnp.ndarray] = None,
) -> jnp.ndarray:
  """Per-group class scores of the released ``encode_decode``.

  Args:
    group_embeds: ``[B, G, D]`` projected final segment tokens (normalised here).
    image_embed: ``[B, D]`` projected pooled feature (normalised here).
    class_embed: ``[K, D]`` L2-normalised class embeddings.
    logit_scale: scalar, already clamped (``min(exp(.), 100)``).
    threshold: scalar background threshold (used when ``with_background``).
    top_k: classes kept from the pooled embedding (already at most ``K``). When fewer than
      ``top_k`` classes are real, the kept set includes padding classes, which never score.
    with_background: prepend the background channel.
    class_mask: optional bool ``[K]``: False marks padding classes (never scored).

  Returns:
    float32 ``[B, G, K + 1]`` (channel 0 = background: 1.0 or 0.0 per group) or ``[B, G, K]``.
  """
  ge = l2_normalize(group_embeds)
  ie = l2_normalize(image_embed)
  ce = class_embed.astype(jnp.float32)
  k = ce.shape[0]
  logits = jnp.einsum('bgd,kd->bgk', ge, ce, precision=HIGHEST) * logit_scale
  avg_logits = jnp.einsum('bd,kd->bk', ie, ce, precision=HIGHEST) * logit_scale
  if class_mask is not None:
    logits = jnp.where(class_mask, logits, -jnp.inf)
    avg_logits = jnp.where(class_mask, avg_logits, -jnp.inf)
  pre = jax.nn.softmax(logits, axis=-1)
  avg = jax.nn.softmax(avg_logits, axis=-1)
  _, top = jax.lax.top_k(avg, min(top_k, k))
  keep = jnp.any(jax.nn.one_hot(top, k, dtype=jnp.bool_), axis=1)  # [B, K]
  masked = jnp.where(keep[:, None, :], logits, -jnp.inf)
  scores = jax.nn.softmax(masked, axis=-1) * pre
  if not with_background:
    return scores
  best_group = jnp.max(scores, axis=-1)  # [B, G]
  thresh = jnp.minimum(threshold, jnp.max(best_group, axis=-1))  # [B]
  bg = (best_group < thresh[:, None]).astype(jnp.float32)
  return jnp.concatenate([bg[..., None], scores], axis=-1)


def _encode_window(variables, x, config: GroupViTConfig | ZeroSegConfig):
  """The grouping model on normalised windows x [B, h*p, w*p, 3] -> (assignments, (h, w),
  group embeddings [B, G, D], image embedding [B, D], clamped logit scale []): GroupViT's final
  groups and pooled embedding, or ZeroSeg's segments and global vector with its teacher's
  temperature."""
  if isinstance(config, ZeroSegConfig):
    out = ZeroSegStudent(config).apply(
      {'params': variables['params']}, x, method=ZeroSegStudent.encode_image
    )
    scale = jnp.minimum(jnp.exp(variables['teacher']['params']['logit_scale']), 100.0)
    return out['assignments'], out['grid'], out['segment_embeds'], out['global_embed'], scale
  model = GroupViT(config)
  out = model.apply(variables, x, with_groups=True, method=GroupViT.encode_image)
  scale = model.apply(variables, method=GroupViT.scales)['logit_scale']
  return out['assignments'], out['grid'], out['group_embeds'], out['image_embed'], scale


def _window_impl(
  variables,
  class_embed,
  class_mask,
  threshold,
  pixels,
  rh,
  rw,
  *,
  config: GroupViTConfig | ZeroSegConfig,
  top_k: int,
  with_background: bool,
  num_fg: Optional[int] = None,
):
  """Stage 1. pixels uint8 [B, hp, wp, 3]; rh [B, Ho, gh], rw [B, Wo, gw] bilinear matrices ->
  (group ids uint8 [B, Ho, Wo], class tables float32 [B, G, C]). With `num_fg`, the first
  `num_fg` classes are the foreground and the rest background words (the vocabulary rule)."""
  x = (pixels.astype(jnp.float32) - _MEAN255) * _INV_STD255
  assignments, (gh, gw), group_embeds, image_embed, scale = _encode_window(variables, x, config)
  b = x.shape[0]
  maps = compose_group_maps(assignments)[-1].reshape(b, gh, gw, -1)
  maps = jnp.einsum('boh,bhwg->bowg', rh, maps, precision=HIGHEST)
  maps = jnp.einsum('bpw,bowg->bopg', rw, maps, precision=HIGHEST)
  dtype = jnp.uint8 if maps.shape[-1] <= 256 else jnp.int32
  groups = jnp.argmax(maps, axis=-1).astype(dtype)
  table = class_table(
    group_embeds,
    image_embed,
    class_embed,
    scale,
    threshold,
    top_k,
    with_background and num_fg is None,
    class_mask,
  )
  if num_fg is not None:
    table = scg_inference.vocabulary_background(table, num_fg)
  return groups, table


def _stage_maps_impl(variables, pixels, *, config: GroupViTConfig | ZeroSegConfig):
  """uint8 [B, H, W, 3] -> per grouping stage soft maps composed across stages, [B, h, w, G_s]."""
  x = (pixels.astype(jnp.float32) - _MEAN255) * _INV_STD255
  assignments, (h, w), *_ = _encode_window(variables, x, config)
  return [m.reshape(m.shape[0], h, w, m.shape[-1]) for m in compose_group_maps(assignments)]


def _contributions(groups, tables, rtap, rwt, ctap, cwt):
  """Sum of window contributions to output tiles.

  groups [T, N, Ho, Wo] (uint8/int32); tables [T, N, G, C]; rtap/ctap int32 [T, N, To, 2];
  rwt/cwt float32 [T, N, To, 2] -> float32 [T, To, To, C].

  Per output pixel and window: the group ids at its 2 x 2 bilinear taps, one-hot over the G groups
  and weighted (the weights include 1 / window count), then one contraction with the tables over
  (window, group). (Measured on XLA:CPU, this is faster than gathering table rows at window
  resolution and resizing them.)
  """
  g = groups.astype(jnp.int32)
  num_groups = tables.shape[2]

  def gather(gm, rt, ct):  # [Ho, Wo], [To, 2], [To, 2] -> [To, 2, To, 2]
    return gm[rt][:, :, ct]

  vals = jax.vmap(jax.vmap(gather))(g, rtap, ctap)
  iota = jnp.arange(num_groups, dtype=jnp.int32)
  onehot = None
  for a in range(2):
    for b in range(2):
      w = rwt[:, :, :, a, None, None] * cwt[:, :, None, :, b, None]  # [T, N, To, To, 1]
      term = w * (vals[:, :, :, a, :, b, None] == iota).astype(jnp.float32)
      onehot = term if onehot is None else onehot + term
  return jnp.einsum('tnyxg,tngc->tyxc', onehot, tables.astype(jnp.float32), precision=HIGHEST)


def _window_fn(config: GroupViTConfig | SCGConfig | ZeroSegConfig):
  """The stage-1 window function of the method of `config` (GroupViT or SCG), jitted with its
  XLA:CPU compiler options (groupvit_jax.xla_cpu)."""
  impl = scg_inference.window_impl if isinstance(config, SCGConfig) else _window_impl
  return xla_cpu.jit_for(
    config, impl, static_argnames=('config', 'top_k', 'with_background', 'num_fg')
  )


def _stage_maps_fn(config: GroupViTConfig | SCGConfig | ZeroSegConfig):
  """The group / region maps function of `config`'s method, jitted with its compiler options."""
  impl = scg_inference.maps_impl if isinstance(config, SCGConfig) else _stage_maps_impl
  return xla_cpu.jit_for(config, impl, static_argnames=('config',))


def _geometry(config: GroupViTConfig | SCGConfig | ZeroSegConfig) -> tuple[int, int, int]:
  """(window sides are multiples of this, pixels per cell of the group maps, groups per window)
  for GroupViT (final-stage groups), SCG (regions) or ZeroSeg (segments)."""
  if isinstance(config, SCGConfig):
    return config.patch_multiple, config.grouper_vit.patch_size, config.num_regions
  if isinstance(config, ZeroSegConfig):
    p = config.encoder.patch_size
    return p, p, config.num_segments
  image = config.image
  return image.patch_size, image.patch_size, image.num_output_groups[image.num_grouping_stages - 1]


@functools.partial(jax.jit, donate_argnums=(0, 1))
def _tile_step(probs, carry, groups, tables, rtap, rwt, ctap, cwt, fold, first):
  """Stage 2 accumulation. probs, carry: float32 [T, To, To, C] (donated; zeroed when `first`);
  fold bool [T]: the chunk closes a view: its logits are softmaxed into `probs` and the carry
  is reset."""
  probs = jnp.where(first, 0.0, probs)
  carry = jnp.where(first, 0.0, carry) + _contributions(groups, tables, rtap, rwt, ctap, cwt)
  f = fold[:, None, None, None]
  probs = probs + jnp.where(f, jax.nn.softmax(carry, axis=-1), 0.0)
  carry = jnp.where(f, 0.0, carry)
  return probs, carry


@functools.partial(jax.jit, static_argnames=('num_classes', 'ignore_index'), donate_argnums=(1,))
def _tile_finalize(probs, conf, gt, valid, *, num_classes: int, ignore_index: Optional[int]):
  """argmax of the accumulated probabilities -> (pred int32 [T, To, To], conf updated)."""
  pred = jnp.argmax(probs, axis=-1).astype(jnp.int32)
  conf = confusion_matrix_update(
    conf, pred, gt, num_classes=num_classes, ignore_index=ignore_index, valid=valid
  )
  return pred, conf


@jax.jit
def _tile_argmax(probs):
  return jnp.argmax(probs, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('shape',))
def _zeros(shape):
  return jnp.zeros(shape, jnp.float32)


# --------------------------------------------------------------------------------------------------
# Host-side plan and scheduler
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class _Window:
  image: '_Image'
  view: int
  index: int  # within its view, row-major over the window grid
  pixels: Optional[np.ndarray]  # uint8 [hp, wp, 3]
  rh: np.ndarray  # float32 [Ho, gh]
  rw: np.ndarray  # float32 [Wo, gw]
  key: tuple  # (hp, wp, Ho, Wo)
  groups: Optional[np.ndarray] = None  # result: [Ho, Wo]
  table: Optional[np.ndarray] = None  # result: [G, C]


@dataclasses.dataclass(eq=False)
class _View:
  canvas_hw: tuple[int, int]
  flip: bool
  row_starts: list[int]
  col_starts: list[int]
  crop_hw: tuple[int, int]
  windows: list[_Window]


@dataclasses.dataclass(eq=False)
class _Image:
  key: Any
  hw: tuple[int, int]
  label: Optional[np.ndarray]
  payload: Any
  views: list[_View] = dataclasses.field(default_factory=list)
  windows_left: int = 0
  tiles_left: int = 0
  pred: Optional[np.ndarray] = None
  group_ids: Optional[np.ndarray] = None
  valid: bool = True


@dataclasses.dataclass
class SegmentResult:
  """One image's output.

  Attributes:
    key: what the caller passed with the image.
    pred: int32 ``[H, W]`` channel index per pixel (background = 0 when a threshold is used), or
      ``None`` when predictions were not requested.
    group_ids: int32 ``[H, W]`` index of the (window, group) each pixel belongs to in the first view
      (window-major: ``window * G + group``), only with ``oracle=True``.
    label: the label passed with the image (or ``None``).
    payload: the caller's payload.
  """

  key: Any
  pred: Optional[np.ndarray]
  group_ids: Optional[np.ndarray]
  label: Optional[np.ndarray]
  payload: Any = None


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


class ZeroShotSegmenter:
  """Runs the protocol over a stream of images with batched, fixed-shape device calls.

  Jitted functions are module-level and keyed by the model config and static shapes, so a new
  segmenter (e.g. the trainer's every evaluation, with new variables of the same shapes) reuses
  every compiled function.

  Args:
    config: the model config: a ``GroupViTConfig``, an ``SCGConfig`` (regions from k-means,
      named by the region-token CLIP: :mod:`groupvit_jax.scg_inference`) or a ``ZeroSegConfig``
      (the student's segments, named against its teacher's text embeddings as GroupViT's groups).
    variables: the model's variables (any placement; copied to the local devices).
    class_embed: float32 ``[K, D]`` L2-normalised class embeddings (the model's
      ``class_embeddings``).
    background_threshold: ``None``: no background channel, predictions are classes ``0..K-1``;
      a float: channel 0 is background and classes are ``1..K``.
    background_embed: float32 ``[Kb, D]`` embeddings of background words: the vocabulary rule
      (a group or region whose best class is one of them is background, channel 0) instead of
      the threshold (then ``background_threshold`` must be ``None``).
    protocol: :class:`Protocol`.
    devices: local devices to spread each batch over (default: ``jax.local_devices()``).
    pad_classes_to: pad the class list to a multiple of this with masked, never-scored classes, so
      vocabularies of similar sizes share compiled functions (``segment`` uses 16). ``None``: no
      padding (the exact channel count of the release).
  """

  def __init__(
    self,
    config: GroupViTConfig,
    variables: Any,
    class_embed: np.ndarray,
    background_threshold: Optional[float] = None,
    protocol: Protocol = Protocol(),
    devices: Optional[Sequence[jax.Device]] = None,
    pad_classes_to: Optional[int] = None,
    background_embed: Optional[np.ndarray] = None,
  ):
    self.config = config
    self.protocol = protocol
    # Resolved once: the compiler options (groupvit_jax.xla_cpu) depend only on the model.
    self._window = _window_fn(config)
    self._stage_maps = _stage_maps_fn(config)
    self.patch, self.map_patch, self.num_groups = _geometry(config)
    if background_embed is not None and background_threshold is not None:
      raise ValueError('give background_threshold or background_embed, not both')
    self.with_background = background_threshold is not None or background_embed is not None
    self.threshold = float(background_threshold) if background_threshold is not None else 0.0
    ce = np.asarray(class_embed, np.float32)
    if ce.ndim != 2:
      raise ValueError(f'class_embed must be [K, D], got {ce.shape}')
    self.num_fg = ce.shape[0]
    # Rounded up: vocabularies of similar size share compilations.
    padded = _round_up(self.num_fg, pad_classes_to) if pad_classes_to else self.num_fg
    mask = np.arange(padded) < self.num_fg
    ce = np.concatenate([ce, np.zeros((padded - self.num_fg, ce.shape[1]), np.float32)])
    self.num_channels = padded + int(self.with_background)
    # The vocabulary rule: background words follow the (padded) foreground classes.
    self._num_fg_static = None
    if background_embed is not None:
      be = np.asarray(background_embed, np.float32)
      if be.ndim != 2 or be.shape[1] != ce.shape[1] or not len(be):
        raise ValueError(f'background_embed must be [Kb >= 1, {ce.shape[1]}], got {be.shape}')
      nb = _round_up(len(be), pad_classes_to) if pad_classes_to else len(be)
      be = np.concatenate([be, np.zeros((nb - len(be), be.shape[1]), np.float32)])
      mask = np.concatenate([mask, np.arange(nb) < len(background_embed)])
      ce = np.concatenate([ce, be])
      self._num_fg_static = padded
    self.devices = list(devices) if devices is not None else jax.local_devices()
    n = len(self.devices)
    self.window_batch = _round_up(protocol.window_batch, n)
    self.tile_batch = _round_up(protocol.tile_batch, n)
    if n > 1:
      mesh = jax.sharding.Mesh(np.array(self.devices), ('data',))
      self._batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
      self._replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    else:
      self._batch_sharding = self._replicated = jax.sharding.SingleDeviceSharding(self.devices[0])
    self.variables = prompts.local_variables(variables, self._replicated)
    self.class_embed = jax.device_put(ce, self._replicated)
    self.class_mask = jax.device_put(mask, self._replicated)
    self._threshold = jax.device_put(np.float32(self.threshold), self._replicated)
    self._first = {flag: jax.device_put(np.bool_(flag), self._replicated) for flag in (False, True)}
    self._oracle_channels = self._max_windows_first_view() * self.num_groups
    self._buffers: dict = {}
    self._conf_device = None
    self._conf_pixels = 0
    self.confusion = None  # host int64 [C, C] once labels were seen
    self.ignore_index: Optional[int] = 255

  # --- planning ------------------------------------------------------------------------------
  def _max_windows_first_view(self) -> int:
    p = self.protocol
    if p.mode == 'whole':
      return 1
    r = p.scales[0]
    short, long = int(p.short_side * r), int(p.long_side * r)
    per_axis = lambda size: len(window_starts(size, p.crop_size, p.stride))  # noqa: E731
    return per_axis(short) * per_axis(long)

  def plan(
    self, key: Any, image: np.ndarray, label: Optional[np.ndarray] = None, payload: Any = None
  ) -> _Image:
    """Host work for one image: resize each view, cut its windows (thread-safe, no device)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
      raise ValueError(f'expected a uint8 RGB image [H, W, 3], got {image.dtype} {image.shape}')
    h, w = image.shape[:2]
    if label is not None and np.shape(label) != (h, w):
      raise ValueError(f'label shape {np.shape(label)} differs from image {(h, w)}')
    p, patch = self.protocol, self.patch
    img = _Image(key=key, hw=(h, w), label=label, payload=payload)
    for vi, (ratio, flip) in enumerate(p.view_list()):
      nh, nw = rescale_size(h, w, int(p.long_side * ratio), int(p.short_side * ratio))
      if nh < patch or nw < patch:
        raise ValueError(
          f'image {key!r} ({h}x{w}) resizes to {nh}x{nw}, smaller than one {patch}x{patch} patch'
        )
      canvas = resize_uint8(image, nh, nw)
      if flip:
        canvas = canvas[:, ::-1]
      if p.mode == 'slide':
        hc, wc = min(p.crop_size, nh), min(p.crop_size, nw)
        rows, cols = (
          window_starts(nh, p.crop_size, p.stride),
          window_starts(nw, p.crop_size, p.stride),
        )
        out_h, out_w = p.crop_size, p.crop_size
      else:
        hc, wc = nh, nw
        rows, cols = [0], [0]
        out_h, out_w = (nh // patch) * patch + patch - 1, (nw // patch) * patch + patch - 1
      gh, gw = hc // patch, wc // patch
      # The maps are on the model's grid over the gh x gw patches it sees (map_patch pixels per
      # cell: SCG's grouper can have a finer grid than the window multiple).
      rh = _padded_resize_matrix(gh * patch // self.map_patch, hc, out_h)
      rw = _padded_resize_matrix(gw * patch // self.map_patch, wc, out_w)
      key_ = (gh * patch, gw * patch, out_h, out_w)
      view = _View((nh, nw), flip, rows, cols, (hc, wc), [])
      for y1 in rows:
        for x1 in cols:
          pix = np.ascontiguousarray(canvas[y1 : y1 + gh * patch, x1 : x1 + gw * patch])
          view.windows.append(_Window(img, vi, len(view.windows), pix, rh, rw, key_))
      img.views.append(view)
    img.windows_left = sum(len(v.windows) for v in img.views)
    return img

  # --- stage 2 geometry ----------------------------------------------------------------------
  def _axis_weights(self, view: _View, axis: int, out_size: int):
    """Per window start along `axis`: taps (int32 [out, 2]) relative to the window and weights
    (float32 [out, 2]) including 1 / count."""
    canvas = view.canvas_hw[axis]
    crop = view.crop_hw[axis]
    starts = view.row_starts if axis == 0 else view.col_starts
    idx, wt = _bilinear_taps(canvas, out_size)
    if axis == 1 and view.flip:
      idx, wt = idx[::-1], wt[::-1]
    count = np.zeros(canvas, np.float64)
    for s in starts:
      count[s : s + crop] += 1
    out = []
    for s in starts:
      inside = (idx >= s) & (idx < s + crop)
      taps = np.where(inside, idx - s, 0).astype(np.int32)
      weights = np.where(inside, wt / count[idx], 0.0).astype(np.float32)
      out.append((taps, weights))
    return out

  def _tile_jobs(self, img: _Image, oracle: bool) -> list['_TileJob']:
    h, w = img.hw
    to = self.protocol.tile_size
    views = img.views[:1] if oracle else img.views
    per_view = []
    for view in views:
      rows = self._axis_weights(view, 0, h)
      cols = self._axis_weights(view, 1, w)
      per_view.append((view, rows, cols))
    jobs = []
    for ty in range(0, h, to):
      for tx in range(0, w, to):
        steps = []
        for view, rows, cols in per_view:
          slots = []
          for wi, win in enumerate(view.windows):
            r, c = divmod(wi, len(view.col_starts))
            rt, rw_ = (a[ty : ty + to] for a in rows[r])
            ct, cw = (a[tx : tx + to] for a in cols[c])
            if not rw_.any() or not cw.any():
              continue
            slots.append(
              (win, _pad_rows(rt, to), _pad_rows(rw_, to), _pad_rows(ct, to), _pad_rows(cw, to))
            )
          n = self.protocol.windows_per_step
          chunks = [slots[i : i + n] for i in range(0, len(slots), n)] or [[]]
          for i, chunk in enumerate(chunks):
            steps.append((chunk, i == len(chunks) - 1))
        jobs.append(_TileJob(img, ty, tx, steps, oracle))
    return jobs

  # --- device calls --------------------------------------------------------------------------
  def _put(self, x):
    return jax.device_put(x, self._batch_sharding)

  def _run_windows(self, key: tuple, windows: list[_Window]):
    bw = self.window_batch
    hp, wp, ho, wo = key
    pixels = np.zeros((bw, hp, wp, 3), np.uint8)
    rh = np.zeros((bw, ho, windows[0].rh.shape[1]), np.float32)
    rw = np.zeros((bw, wo, windows[0].rw.shape[1]), np.float32)
    for i, win in enumerate(windows):
      pixels[i], rh[i], rw[i] = win.pixels, win.rh, win.rw
      win.pixels = None
    return self._window(
      self.variables,
      self.class_embed,
      self.class_mask,
      self._threshold,
      self._put(pixels),
      self._put(rh),
      self._put(rw),
      config=self.config,
      top_k=min(self.protocol.top_k, self.class_embed.shape[0]),
      with_background=self.with_background,
      num_fg=self._num_fg_static,
    )

  def _buffers_for(self, channels: int):
    shape = (self.tile_batch, self.protocol.tile_size, self.protocol.tile_size, channels)
    if channels not in self._buffers:
      z = jax.device_put(_zeros(shape), self._batch_sharding)
      self._buffers[channels] = (z, jax.device_put(_zeros(shape), self._batch_sharding))
    return self._buffers.pop(channels)

  def _run_tiles(self, jobs: list['_TileJob'], key: tuple, need_pred: bool):
    """Runs a batch of tile jobs of one (kind, window output shape); returns host preds or None."""
    oracle, ho, wo = key
    bt, to, nw = self.tile_batch, self.protocol.tile_size, self.protocol.windows_per_step
    channels = self._oracle_channels if oracle else self.num_channels
    g = self.num_groups
    probs, carry = self._buffers_for(channels)
    n_steps = max(len(j.steps) for j in jobs)
    gdtype = np.uint8 if g <= 256 else np.int32
    for s in range(n_steps):
      groups = np.zeros((bt, nw, ho, wo), gdtype)
      tables = np.zeros((bt, nw, g, channels), np.float32)
      rtap = np.zeros((bt, nw, to, 2), np.int32)
      ctap = np.zeros((bt, nw, to, 2), np.int32)
      rwt = np.zeros((bt, nw, to, 2), np.float32)
      cwt = np.zeros((bt, nw, to, 2), np.float32)
      fold = np.zeros((bt,), bool)
      for t, job in enumerate(jobs):
        if s >= len(job.steps):
          continue
        chunk, fold[t] = job.steps[s]
        for n, (win, rt, rw_, ct, cw) in enumerate(chunk):
          groups[t, n] = win.groups
          if oracle:
            tables[t, n, :, win.index * g : (win.index + 1) * g] = np.eye(g, dtype=np.float32)
          else:
            tables[t, n] = win.table
          rtap[t, n], rwt[t, n], ctap[t, n], cwt[t, n] = rt, rw_, ct, cw
      probs, carry = _tile_step(
        probs,
        carry,
        *map(self._put, (groups, tables, rtap, rwt, ctap, cwt, fold)),
        self._first[s == 0],
      )
    if not oracle and any(j.image.label is not None for j in jobs):
      gt = np.full((bt, to, to), -1, np.int32)
      valid = np.zeros((bt, to, to), bool)
      for t, job in enumerate(jobs):
        if job.image.label is None:
          continue
        lab = job.image.label[job.ty : job.ty + to, job.tx : job.tx + to]
        gt[t, : lab.shape[0], : lab.shape[1]] = lab
        valid[t, : lab.shape[0], : lab.shape[1]] = job.image.valid
      if self._conf_device is None:
        self._conf_device = jax.device_put(
          np.zeros((channels, channels), np.int32), self._replicated
        )
      pred, self._conf_device = _tile_finalize(
        probs,
        self._conf_device,
        self._put(gt),
        self._put(valid),
        num_classes=channels,
        ignore_index=self.ignore_index,
      )
      self._conf_pixels += int(valid.sum())
      if self._conf_pixels > 2**30:
        self._flush_confusion()
    else:
      pred = _tile_argmax(probs)
    self._buffers[channels] = (probs, carry)
    return np.asarray(pred) if need_pred else None

  def _flush_confusion(self):
    if self._conf_device is None:
      return
    c = np.asarray(self._conf_device, np.int64)
    self.confusion = c if self.confusion is None else self.confusion + c
    self._conf_device = jax.device_put(np.zeros(c.shape, np.int32), self._replicated)
    self._conf_pixels = 0

  # --- the driver ----------------------------------------------------------------------------
  def run(
    self,
    items: Iterable[tuple],
    *,
    need_pred: bool = True,
    oracle: bool = False,
    ignore_index: Optional[int] = 255,
    prefetch: int = 4,
  ) -> Iterator[SegmentResult]:
    """Segments a stream of images.

    Args:
      items: iterable of ``(key, image uint8 [H, W, 3], label [H, W] or None[, payload])``;
        ``label`` adds to the on-device confusion matrix (:meth:`confusion_matrix`). A payload of
        ``{'valid': False}`` marks padding (computed, never counted).
      need_pred: fetch predictions to the host (``SegmentResult.pred``).
      oracle: also compute ``group_ids`` (first view) for the oracle relabelling.
      ignore_index: label value not counted.
      prefetch: images planned ahead in a background thread.

    Yields:
      :class:`SegmentResult` per image, in completion order (not necessarily input order).
    """
    self.ignore_index = ignore_index
    pending_windows: dict[tuple, list[_Window]] = collections.defaultdict(list)
    pending_tiles: dict[tuple, list[_TileJob]] = collections.defaultdict(list)
    in_flight: collections.deque = collections.deque()
    done: list[SegmentResult] = []

    def finish_image(img: _Image):
      done.append(SegmentResult(img.key, img.pred, img.group_ids, img.label, img.payload))

    def tiles_done(jobs, preds):
      for t, job in enumerate(jobs):
        img = job.image
        if preds is not None:
          h, w = img.hw
          to = self.protocol.tile_size
          target = img.group_ids if job.oracle else img.pred
          part = preds[t, : min(to, h - job.ty), : min(to, w - job.tx)]
          target[job.ty : job.ty + part.shape[0], job.tx : job.tx + part.shape[1]] = part
        img.tiles_left -= 1
        if img.tiles_left == 0:
          for view in img.views:  # free the window results
            for win in view.windows:
              win.groups = win.table = None
          finish_image(img)

    def flush_tiles(key, force=False):
      queue = pending_tiles[key]
      while len(queue) >= self.tile_batch or (force and queue):
        jobs, queue[:] = queue[: self.tile_batch], queue[self.tile_batch :]
        want = need_pred or key[0]
        preds = self._run_tiles(jobs, key, want)
        tiles_done(jobs, preds)

    def image_ready(img: _Image):
      h, w = img.hw
      jobs = self._tile_jobs(img, oracle=False)
      if need_pred:
        img.pred = np.zeros((h, w), np.int32)
      if oracle:
        img.group_ids = np.zeros((h, w), np.int32)
        jobs = jobs + self._tile_jobs(img, oracle=True)
      img.tiles_left = len(jobs)
      for job in jobs:
        key = (job.oracle,) + job.out_hw
        pending_tiles[key].append(job)
        flush_tiles(key)

    def collect(force_all=False):
      while in_flight and (force_all or len(in_flight) > 1):
        windows, (groups, tables) = in_flight.popleft()
        groups, tables = np.asarray(groups), np.asarray(tables)
        for i, win in enumerate(windows):
          win.groups, win.table = groups[i], tables[i]
          win.image.windows_left -= 1
          if win.image.windows_left == 0:
            image_ready(win.image)

    def launch(key, force=False):
      queue = pending_windows[key]
      while len(queue) >= self.window_batch or (force and queue):
        batch, queue[:] = queue[: self.window_batch], queue[self.window_batch :]
        in_flight.append((batch, self._run_windows(key, batch)))
        collect()

    def plan_item(item):
      key, image, label = item[:3]
      payload = item[3] if len(item) > 3 else None
      img = self.plan(key, image, label, payload)
      if isinstance(payload, dict) and payload.get('valid') is False:
        img.valid = False
      return img

    for img in _prefetch_map(plan_item, items, prefetch):
      for view in img.views:
        for win in view.windows:
          pending_windows[win.key].append(win)
          launch(win.key)
      yield from _drain(done)
    for key in list(pending_windows):
      launch(key, force=True)
    collect(force_all=True)
    for key in list(pending_tiles):
      flush_tiles(key, force=True)
    yield from _drain(done)
    self._flush_confusion()

  def confusion_matrix(self) -> Optional[np.ndarray]:
    """int64 ``[C, C]`` (rows = ground truth) of every labelled image run so far, or ``None``."""
    self._flush_confusion()
    return self.confusion

  # --- group maps for visualisation ----------------------------------------------------------
  def stage_group_maps(self, image: np.ndarray, size: int = 448) -> list[np.ndarray]:
    """Per grouping stage, the group id of each pixel of ``image`` (uint8 ``[H, W, 3]``).

    The image is resized (OpenCV-exact bilinear) to ``size`` x ``size`` (one compiled shape for
    any image), encoded, and each stage's composed soft map is resized bilinearly back to
    ``[H, W]`` and arg-maxed.

    Returns:
      list over stages of int32 ``[H, W]``.
    """
    h, w = image.shape[:2]
    size = max(self.patch, (size // self.patch) * self.patch)  # a window multiple
    pix = resize_uint8(np.asarray(image, np.uint8), size, size)[None]
    maps = self._stage_maps(
      self.variables, jax.device_put(pix, self._replicated), config=self.config
    )
    out = []
    for m in maps:
      m = np.asarray(m[0], np.float64)  # [gh, gw, G]
      mh = resize_matrix(m.shape[0], h, 'bilinear')
      mw = resize_matrix(m.shape[1], w, 'bilinear')
      full = np.einsum('oh,hwg->owg', mh, m)
      full = np.einsum('pw,owg->opg', mw, full)
      out.append(np.argmax(full, axis=-1).astype(np.int32))
    return out


@dataclasses.dataclass(eq=False)
class _TileJob:
  image: _Image
  ty: int
  tx: int
  steps: list  # [(slots, fold)]
  oracle: bool

  @property
  def out_hw(self) -> tuple[int, int]:
    for chunk, _ in self.steps:
      if chunk:
        return chunk[0][0].key[2:]
    raise AssertionError('a tile without windows')


def _pad_rows(a: np.ndarray, n: int) -> np.ndarray:
  if a.shape[0] == n:
    return a
  out = np.zeros((n,) + a.shape[1:], a.dtype)
  out[: a.shape[0]] = a
  return out


def _drain(items: list) -> Iterator:
  while items:
    yield items.pop(0)


def _prefetch_map(fn: Callable, iterable: Iterable, depth: int) -> Iterator:
  """map(fn, iterable) computed up to `depth` items ahead in a background thread (order kept)."""
  if depth <= 0:
    yield from map(fn, iterable)
    return
  it = iter(iterable)
  with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
    futures: collections.deque = collections.deque()
    exhausted = False
    while True:
      while not exhausted and len(futures) < depth:
        try:
          futures.append(pool.submit(fn, next(it)))
        except StopIteration:
          exhausted = True
      if not futures:
        return
      yield futures.popleft().result()


# --------------------------------------------------------------------------------------------------
# One-call API
# --------------------------------------------------------------------------------------------------


def segment(
  model: Any,
  image: np.ndarray,
  class_names: Sequence[str],
  background_threshold: Optional[float] = None,
  mode: str = 'slide',
  *,
  templates: prompts.Templates = 'simple',
  scales: Sequence[float] = (1.0,),
  flip: bool = False,
  class_embed: Optional[np.ndarray] = None,
  devices: Optional[Sequence[jax.Device]] = None,
  background_words: Optional[Sequence[str]] = None,
  **protocol_kwargs,
) -> np.ndarray:
  """Zero-shot segmentation of one image with any vocabulary.

  Args:
    model: a :class:`groupvit_jax.pretrained.Pretrained` or
      :class:`groupvit_jax.pretrained_scg.PretrainedSCG` (``config``, ``variables``,
      ``class_embeddings``).
    image: uint8 ``[H, W, 3]`` RGB.
    class_names: ``N`` class names (the words put into the prompts).
    background_threshold: ``None``: every pixel gets one of the ``N`` classes (labels ``0..N-1``);
      a float (e.g. 0.95 as the release uses for VOC): label 0 is background and classes are
      ``1..N``.
    mode: ``'slide'`` (448 windows, stride 224: the benchmarks' protocol) or ``'whole'``.
    templates: prompt templates (``'simple'`` = "a photo of a {}.").
    scales, flip: test-time augmentation (see :class:`Protocol`).
    class_embed: precomputed ``[N, D]`` class embeddings (skips the text tower).
    devices: devices to run on (default: the first local device; one image gains little from more).
    background_words: the vocabulary rule instead of the threshold: a group / region whose best
      class is one of these words is background (label 0; classes are ``1..N``).
    **protocol_kwargs: other :class:`Protocol` fields.

  Returns:
    int32 ``[H, W]`` label map.
  """
  if class_embed is None:
    class_embed = model.class_embeddings(list(class_names), templates)
  background_embed = None
  if background_words is not None:
    background_embed = model.class_embeddings(list(background_words), templates)
  protocol = Protocol(mode=mode, scales=tuple(scales), flip=flip, **protocol_kwargs)
  devices = list(devices) if devices is not None else jax.local_devices()[:1]
  seg = ZeroShotSegmenter(
    model.config,
    model.variables,
    class_embed,
    background_threshold,
    protocol,
    devices,
    pad_classes_to=16,
    background_embed=background_embed,
  )
  (result,) = list(seg.run([(0, image, None)], prefetch=0))
  return result.pred
