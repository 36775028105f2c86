"""Image decoding and augmentation in the TF graph (GroupViT / timm ``create_transform`` recipe).

Training transform of GroupViT (``configs/default.yml``: ``deit_aug: true``), i.e. timm's
``transforms_imagenet_train``:

1. ``RandomResizedCrop(224, scale=(0.08, 1), ratio=(3/4, 4/3), bilinear)`` -- torchvision's
   algorithm (10 attempts, then a centre crop clamped to the ratio range); JPEGs are decoded only
   inside the crop window (``tf.image.decode_and_crop_jpeg``); the resize is bilinear with
   antialiasing (like PIL's bilinear ``resize``) and rounded to uint8;
2. horizontal flip with probability 0.5;
3. RandAugment ``rand-m9-mstd0.5-inc1`` (GroupViT's config; ``inc1`` selects timm's
   "increasing" op variants): 2 ops drawn uniformly with replacement from 15, each applied with
   probability 0.5 at magnitude ``clip(N(9, 0.5), 0, 10)``; geometric ops fill with the ImageNet
   mean colour (124, 116, 104) and use bilinear resampling (timm passes ``interpolation`` through);
   colour jitter is not used because timm disables it when auto-augment is set;
4. ``ToTensor`` + ImageNet mean/std normalisation;
5. timm ``RandomErasing(probability=0.25, mode='pixel', max_count=1)`` (GroupViT sets
   ``re_mode: 'pixel'``: the erased box is filled with per-pixel N(0, 1) noise in the normalised
   space; ``'const'`` (zeros) and ``'rand'`` (per-channel noise) are available too).

The RandAugment ops mirror PIL's integer semantics (autocontrast/equalize LUTs, posterize,
solarize, the truncating ``Image.blend`` used by ``ImageEnhance``, the 3x3 SMOOTH kernel of
``Sharpness`` with untouched borders, affine transforms with PIL's pixel-centre convention, edge
clamping and fill) and match PIL exactly for the pointwise/colour ops and to +-1 for the
geometric ones (float32 vs float64 coordinates); see ``tests/test_input_augment.py``.  They work
on channel-first float32 "planes" [3, H, W] and blend with arithmetic masks instead of
``tf.where``: on CPU, per-channel broadcasts/reductions and selects are several times cheaper
that way, and this is the hot loop of the pipeline.  Differences from the reference: Pillow >= 10
rejects ``posterize(bits=0)`` (timm's "increasing" posterize at magnitude 10), which here gives a
black image as older Pillow did; JPEG decoding uses TF's libjpeg-turbo (like PIL) but only
decodes the crop window.

All randomness comes from stateless RNG ops keyed by a per-sample seed (int32 [2]), so results do
not depend on threading and can be reproduced exactly.
"""

from __future__ import annotations

import dataclasses
import math
import re

import tensorflow as tf

__all__ = [
  'IMAGENET_MEAN',
  'IMAGENET_STD',
  'RandAugmentConfig',
  'parse_randaugment',
  'image_format',
  'random_resized_crop_window',
  'decode_and_random_crop',
  'center_crop_window',
  'decode_and_center_crop',
  'randaugment',
  'apply_op',
  'RAND_OPS',
  'normalize',
  'random_erasing',
  'augment_image',
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# timm's _RAND_INCREASING_TRANSFORMS order (the non-increasing variants share the slot).
RAND_OPS = (
  'AutoContrast',
  'Equalize',
  'Invert',
  'Rotate',
  'Posterize',
  'Solarize',
  'SolarizeAdd',
  'Color',
  'Contrast',
  'Brightness',
  'Sharpness',
  'ShearX',
  'ShearY',
  'TranslateXRel',
  'TranslateYRel',
)


@dataclasses.dataclass(frozen=True)
class RandAugmentConfig:
  """Parsed timm RandAugment string (``rand-m9-mstd0.5-inc1``)."""

  num_layers: int = 2
  magnitude: float = 10.0
  magnitude_std: float = 0.0
  magnitude_max: float = 10.0
  increasing: bool = False
  prob: float = 0.5
  translate_pct: float = 0.45


def parse_randaugment(spec: str | None) -> RandAugmentConfig | None:
  """Parses timm's ``rand-...`` string (keys ``m``, ``n``, ``mstd``, ``mmax``, ``inc``).

  Returns None for ``None``/``""``/``"none"``.  Weighted op choice (``w``) is not supported.
  """
  if not spec or spec == 'none':
    return None
  parts = spec.split('-')
  if parts[0] != 'rand':
    raise ValueError(f"Only timm RandAugment strings 'rand-...' are supported, got {spec!r}.")
  kw = {}
  for part in parts[1:]:
    cs = re.split(r'(\d.*)', part)
    if len(cs) < 2:
      continue
    key, val = cs[:2]
    if key == 'm':
      kw['magnitude'] = float(int(val))
    elif key == 'n':
      kw['num_layers'] = int(val)
    elif key == 'mstd':
      mstd = float(val)
      kw['magnitude_std'] = math.inf if mstd > 100 else mstd
    elif key == 'mmax':
      kw['magnitude_max'] = float(int(val))
    elif key == 'inc':
      kw['increasing'] = bool(int(val))
    else:
      raise ValueError(f'Unsupported RandAugment option {key!r} in {spec!r}.')
  return RandAugmentConfig(**kw)


# ----------------------------------------------------------------------------------- seeds


def _sub(seed: tf.Tensor, i: int) -> tf.Tensor:
  """Independent stateless sub-seed number ``i`` of ``seed`` (int32/int64 [2])."""
  return tf.random.experimental.stateless_fold_in(seed, i)


def _uniform(seed, shape=(), minval=0.0, maxval=1.0, dtype=tf.float32):
  return tf.random.stateless_uniform(shape, seed, minval=minval, maxval=maxval, dtype=dtype)


# ----------------------------------------------------------------------------------- decode + crop


def image_format(data: tf.Tensor) -> tf.Tensor:
  """Format code from magic bytes: 1 JPEG, 2 PNG, 3 GIF, 4 BMP, 5 WebP, 0 unknown (int32, same
  shape).

  Works elementwise on a string tensor of any shape.
  """
  # Zero-padded so that the sub-string ops below never run past the end of short inputs.
  head = tf.strings.join([tf.strings.substr(data, 0, 12), b'\x00' * 12])

  def starts(pos, magic):
    return tf.equal(tf.strings.substr(head, pos, len(magic)), magic)

  code = tf.zeros(tf.shape(data), tf.int32)
  checks = [
    (5, starts(0, b'RIFF') & starts(8, b'WEBP')),
    (4, starts(0, b'BM')),
    (3, starts(0, b'GIF')),
    (2, starts(0, b'\x89PNG\r\n\x1a\n')),
    (1, starts(0, b'\xff\xd8\xff')),
  ]
  for value, hit in checks:  # later entries win; the magics are mutually exclusive anyway
    code = tf.where(hit, value, code)
  return code


def random_resized_crop_window(
  height: tf.Tensor,
  width: tf.Tensor,
  seed: tf.Tensor,
  scale=(0.08, 1.0),
  ratio=(3.0 / 4.0, 4.0 / 3.0),
  attempts: int = 10,
) -> tf.Tensor:
  """torchvision ``RandomResizedCrop.get_params``: returns int32 [4] ``(top, left, h, w)``.

  Draws ``attempts`` candidates at once (area fraction ~ U(scale), log aspect ~ U(log ratio)),
  keeps the first that fits, else falls back to the centre crop clamped to ``ratio``.
  """
  h = tf.cast(height, tf.float64)
  w = tf.cast(width, tf.float64)
  area = h * w
  s = tf.random.stateless_uniform([attempts], _sub(seed, 0), scale[0], scale[1], dtype=tf.float64)
  logr = tf.random.stateless_uniform(
    [attempts], _sub(seed, 1), math.log(ratio[0]), math.log(ratio[1]), dtype=tf.float64
  )
  ar = tf.exp(logr)
  target = s * area
  cw = tf.round(tf.sqrt(target * ar))  # tf.round is half-to-even like Python's round()
  ch = tf.round(tf.sqrt(target / ar))
  ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
  k = tf.argmax(tf.cast(ok, tf.int32), output_type=tf.int32)
  u_i = tf.random.stateless_uniform([attempts], _sub(seed, 2), dtype=tf.float64)
  u_j = tf.random.stateless_uniform([attempts], _sub(seed, 3), dtype=tf.float64)
  ch_k, cw_k = ch[k], cw[k]
  top = tf.floor(u_i[k] * (h - ch_k + 1))
  left = tf.floor(u_j[k] * (w - cw_k + 1))
  # Fallback: whole image clamped to the ratio range, centred.
  in_ratio = w / h
  fw = tf.where(in_ratio < ratio[0], w, tf.where(in_ratio > ratio[1], tf.round(h * ratio[1]), w))
  fh = tf.where(in_ratio < ratio[0], tf.round(w / ratio[0]), h)
  ftop = tf.floor((h - fh) / 2)
  fleft = tf.floor((w - fw) / 2)
  any_ok = tf.reduce_any(ok)
  win = tf.where(any_ok, tf.stack([top, left, ch_k, cw_k]), tf.stack([ftop, fleft, fh, fw]))
  return tf.cast(win, tf.int32)


def _resize_uint8(img: tf.Tensor, size: int) -> tf.Tensor:
  out = tf.image.resize(img, [size, size], method='bilinear', antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)


def decode_and_random_crop(data: tf.Tensor, seed: tf.Tensor, size: int, scale, ratio) -> tf.Tensor:
  """Decodes image bytes and applies RandomResizedCrop: uint8 [size, size, 3].

  JPEG: the crop window is computed from the header shape and only that window is decoded.
  Other formats (PNG/GIF/BMP/WebP) are decoded whole (first frame) and then cropped.
  Raises (inside the graph) on undecodable data; wrap with ``readers.try_call``.
  """
  fmt = image_format(data)

  def jpeg():
    shape = tf.image.extract_jpeg_shape(data)
    win = random_resized_crop_window(shape[0], shape[1], seed, scale, ratio)
    img = tf.image.decode_and_crop_jpeg(data, win, channels=3)
    return _resize_uint8(img, size)

  def other():
    img = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
    shape = tf.shape(img)
    win = random_resized_crop_window(shape[0], shape[1], seed, scale, ratio)
    img = tf.image.crop_to_bounding_box(img, win[0], win[1], win[2], win[3])
    return _resize_uint8(img, size)

  out = tf.cond(tf.equal(fmt, 1), jpeg, other)
  out.set_shape([size, size, 3])
  return out


def center_crop_window(height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
  """int32 [4] ``(top, left, s, s)``: the centred square of side ``s = min(height, width)``.

  The offset along the long side is ``(long - short) // 2`` (rounded down to whole pixels).
  """
  h = tf.cast(height, tf.int32)
  w = tf.cast(width, tf.int32)
  s = tf.minimum(h, w)
  return tf.stack([(h - s) // 2, (w - s) // 2, s, s])


def decode_and_center_crop(data: tf.Tensor, size: int) -> tf.Tensor:
  """Decodes image bytes and takes the centre crop: uint8 [size, size, 3].

  Rule (the teacher cache stores it in its ``meta.json``): the centred square of side
  ``min(H, W)`` (``center_crop_window``) is cut out and resized to ``size x size``, bilinear with
  antialiasing and rounded (``_resize_uint8``, as the random crop).  That is "resize the short
  side to ``size``, then centre-crop ``size x size``" with the long side scaled by exactly
  ``size / short`` (no rounding of the resized long side) and the crop offset rounded down to
  whole source pixels; cropping first lets JPEGs be decoded only inside the window
  (``tf.image.decode_and_crop_jpeg``).  Other formats (PNG/GIF/BMP/WebP) are decoded whole (first
  frame).  Raises (inside the graph) on undecodable data.
  """
  fmt = image_format(data)

  def jpeg():
    shape = tf.image.extract_jpeg_shape(data)
    img = tf.image.decode_and_crop_jpeg(data, center_crop_window(shape[0], shape[1]), channels=3)
    return _resize_uint8(img, size)

  def other():
    img = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
    shape = tf.shape(img)
    win = center_crop_window(shape[0], shape[1])
    img = tf.image.crop_to_bounding_box(img, win[0], win[1], win[2], win[3])
    return _resize_uint8(img, size)

  out = tf.cond(tf.equal(fmt, 1), jpeg, other)
  out.set_shape([size, size, 3])
  return out


# ----------------------------------------------------------------------------------- PIL-like ops
# Images are float32 [3, H, W] ("planes", channel first) holding integers in [0, 255]; every op
# returns the same.  Channel-first makes per-channel broadcasts and reductions cheap, and the ops
# use arithmetic blends instead of tf.where: on CPU both are several times faster (this is the
# hot loop of the input pipeline).


def _mix(a: tf.Tensor, b: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
  """``where(mask, b, a)`` for float tensors (mask 0/1, broadcastable), without tf.where."""
  return a + mask * (b - a)


def _blend(degenerate: tf.Tensor, img: tf.Tensor, factor) -> tf.Tensor:
  """PIL ``Image.blend(degenerate, img, factor)`` on uint8 data (truncation + clipping)."""
  return tf.floor(tf.clip_by_value(degenerate + factor * (img - degenerate), 0.0, 255.0))


def _gray(img: tf.Tensor) -> tf.Tensor:
  """PIL ``convert("L")``: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16 -> float [1, H, W].

  Exact in float32 (every intermediate is an integer below 2**24).
  """
  g = img[0] * 19595.0 + img[1] * 38470.0 + img[2] * 7471.0 + 32768.0
  return tf.floor(g * (1.0 / 65536.0))[None]


def auto_contrast(img: tf.Tensor) -> tf.Tensor:
  """``ImageOps.autocontrast`` (cutoff 0) per channel (PIL's float64 LUT arithmetic)."""
  lo = tf.reduce_min(img, axis=[1, 2], keepdims=True)
  hi = tf.reduce_max(img, axis=[1, 2], keepdims=True)
  lo64, hi64 = tf.cast(lo, tf.float64), tf.cast(hi, tf.float64)
  scale = 255.0 / tf.maximum(hi64 - lo64, 1.0)
  out = tf.floor(tf.cast(img, tf.float64) * scale - lo64 * scale)
  out = tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.float32)
  return _mix(img, out, tf.cast(hi > lo, tf.float32))


def equalize(img: tf.Tensor) -> tf.Tensor:
  """``ImageOps.equalize`` per channel (PIL's LUT construction)."""
  idx = tf.cast(img, tf.int32) + tf.constant([0, 256, 512], tf.int32)[:, None, None]
  hist = tf.reshape(tf.math.bincount(tf.reshape(idx, [-1]), minlength=768, maxlength=768), [3, 256])
  hist = tf.cast(hist, tf.int64)
  nonzero = hist > 0
  count_nz = tf.reduce_sum(tf.cast(nonzero, tf.int32), axis=1)
  last_nz = 255 - tf.argmax(
    tf.cast(tf.reverse(nonzero, [1]), tf.int32), axis=1, output_type=tf.int32
  )
  last_val = tf.gather(hist, last_nz, batch_dims=1)
  step = (tf.reduce_sum(hist, axis=1) - last_val) // 255
  safe_step = tf.maximum(step, 1)
  lut = (safe_step[:, None] // 2 + tf.cumsum(hist, axis=1, exclusive=True)) // safe_step[:, None]
  lut = tf.minimum(lut, 255)
  identity = tf.broadcast_to(tf.range(256, dtype=tf.int64)[None, :], [3, 256])
  use = (count_nz > 1) & (step > 0)
  lut = tf.cast(tf.where(use[:, None], lut, identity), tf.float32)
  return tf.gather(tf.reshape(lut, [-1]), idx)


def invert(img):
  return 255.0 - img


def posterize(img, bits):
  """Keep the ``bits`` most significant bits (``bits >= 8``: unchanged; 0: black)."""
  div = tf.pow(2.0, 8.0 - tf.cast(tf.minimum(bits, 8), tf.float32))
  return tf.floor(img / div) * div


def solarize(img, threshold):
  """Invert values >= threshold."""
  return img + tf.cast(img >= threshold, tf.float32) * (255.0 - 2.0 * img)


def solarize_add(img, add, threshold=128.0):
  """Add ``add`` (saturating) to values < threshold."""
  return img + tf.cast(img < threshold, tf.float32) * (tf.minimum(img + add, 255.0) - img)


def color(img, factor):
  return _blend(_gray(img), img, factor)


def contrast(img, factor):
  mean = tf.floor(tf.reduce_mean(_gray(img)) + 0.5)
  return _blend(mean, img, factor)


def brightness(img, factor):
  return tf.floor(tf.clip_by_value(factor * img, 0.0, 255.0))


def sharpness(img, factor):
  """``ImageEnhance.Sharpness``: blend with the 3x3 SMOOTH filter (image border kept).

  SMOOTH = [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 = (3x3 box sum + 4 * centre) / 13, computed
  with separable integer sums (exact, so PIL's rounding is reproduced).
  """
  rows = img[:, :, :-2] + img[:, :, 1:-1] + img[:, :, 2:]
  box = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
  smooth = tf.floor((box + 4.0 * img[:, 1:-1, 1:-1]) * (1.0 / 13.0) + 0.5)
  shape = tf.shape(img)
  inner = tf.pad(tf.ones([1, shape[1] - 2, shape[2] - 2]), [[0, 0], [1, 1], [1, 1]])
  degenerate = _mix(img, tf.pad(smooth, [[0, 0], [1, 1], [1, 1]]), inner)
  return _blend(degenerate, img, factor)


def _pil_round(x):
  """PIL stores its bilinear-transform results by truncation."""
  return tf.floor(tf.clip_by_value(x, 0.0, 255.0))


def _fill_planes(fill) -> tf.Tensor:
  return tf.constant(fill, tf.float32)[:, None, None]


def affine(img: tf.Tensor, matrix: tf.Tensor, fill) -> tf.Tensor:
  """PIL ``Image.transform(size, AFFINE, matrix, BILINEAR, fillcolor=fill)``.

  ``matrix`` = (a, b, c, d, e, f) maps an output pixel centre (x + .5, y + .5) to the input
  point (a x + b y + c, d x + e y + f); as in PIL, points outside the input get ``fill`` and
  the bilinear neighbours of inside points are clamped to the border.
  """
  m = tf.cast(matrix, tf.float32)
  a, b, c, d, e, f = m[0], m[1], m[2], m[3], m[4], m[5]
  h, w = tf.shape(img)[1], tf.shape(img)[2]
  hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
  # Pixel-index form for TF: in_idx = M (out_idx + .5) + t - .5
  c2 = a * 0.5 + b * 0.5 + c - 0.5
  f2 = d * 0.5 + e * 0.5 + f - 0.5
  transform = tf.stack([a, b, c2, d, e, f2, 0.0, 0.0])[None]
  out = tf.raw_ops.ImageProjectiveTransformV3(
    images=tf.transpose(img, [1, 2, 0])[None],
    transforms=transform,
    output_shape=tf.stack([h, w]),
    fill_value=0.0,
    interpolation='BILINEAR',
    fill_mode='NEAREST',
  )[0]
  out = tf.transpose(out, [2, 0, 1])
  ys = tf.range(hf)[:, None] + 0.5
  xs = tf.range(wf)[None, :] + 0.5
  xin = a * xs + b * ys + c
  yin = d * xs + e * ys + f
  inside = tf.cast((xin >= 0.0) & (xin < wf) & (yin >= 0.0) & (yin < hf), tf.float32)[None]
  return _mix(_fill_planes(fill) + tf.zeros_like(img), _pil_round(out), inside)


def translate(img: tf.Tensor, pixels: tf.Tensor, axis: int, fill) -> tf.Tensor:
  """PIL affine translation ``in(x + pixels)`` along ``axis`` (2 = x, 1 = y), bilinear.

  Same result as ``affine`` with matrix (1, 0, p, 0, 1, 0) / (1, 0, 0, 0, 1, p), via two
  shifted slices instead of a general resampler.
  """
  n = tf.shape(img)[axis]
  p = tf.cast(pixels, tf.float32)
  k = tf.floor(p)
  frac = p - k
  ki = tf.cast(k, tf.int32)
  pads = [[0, 0], [0, 0], [0, 0]]
  pads[axis] = [1, 1]
  edge = tf.pad(img, pads, mode='SYMMETRIC')  # index -1 -> 0 and n -> n-1 (PIL's clamping)
  pads[axis] = [n + 1, n + 1]
  big = tf.pad(edge, pads)  # room for any shift; those pixels are outside anyway
  # Output x reads padded index x + k + n + 2 (and the next one); clipped shifts are all outside.
  start = tf.clip_by_value(n + 2 + ki, 0, 2 * n + 3)

  def window(offset):
    begin = [0, 0, 0]
    size = [-1, -1, -1]
    begin[axis] = start + offset
    size[axis] = n
    return tf.slice(big, tf.stack(begin), tf.stack(size))

  v = window(0) + frac * (window(1) - window(0))
  pos = tf.range(tf.cast(n, tf.float32)) + 0.5 + p
  inside = tf.cast((pos >= 0.0) & (pos < tf.cast(n, tf.float32)), tf.float32)
  inside = inside[None, None, :] if axis == 2 else inside[None, :, None]
  return _mix(_fill_planes(fill) + tf.zeros_like(img), _pil_round(v), inside)


def rotate(img, degrees, fill):
  """PIL ``img.rotate(degrees)`` (counter-clockwise about the centre, same size)."""
  h = tf.cast(tf.shape(img)[1], tf.float32)
  w = tf.cast(tf.shape(img)[2], tf.float32)
  angle = -tf.cast(degrees, tf.float32) * (math.pi / 180.0)
  cos, sin = tf.cos(angle), tf.sin(angle)
  cx, cy = w / 2.0, h / 2.0
  a, b, d, e = cos, sin, -sin, cos
  c = a * -cx + b * -cy + cx
  f = d * -cx + e * -cy + cy
  return affine(img, tf.stack([a, b, c, d, e, f]), fill)


def _level_args(name: str, level: tf.Tensor, negate: tf.Tensor, cfg: RandAugmentConfig):
  """timm's ``LEVEL_TO_ARG`` for op ``name`` at magnitude ``level`` (float scalar)."""
  sign = tf.where(negate, -1.0, 1.0)
  frac = level / 10.0
  if name == 'Rotate':
    return frac * 30.0 * sign
  if name in ('ShearX', 'ShearY'):
    return frac * 0.3 * sign
  if name in ('TranslateXRel', 'TranslateYRel'):
    return frac * cfg.translate_pct * sign
  if name == 'Posterize':
    bits = tf.floor(frac * 4.0)
    return 4.0 - bits if cfg.increasing else bits
  if name == 'Solarize':
    t = tf.floor(frac * 256.0)
    return 256.0 - t if cfg.increasing else t
  if name == 'SolarizeAdd':
    return tf.floor(frac * 110.0)
  if name in ('Color', 'Contrast', 'Brightness', 'Sharpness'):
    if cfg.increasing:
      return tf.maximum(0.1, 1.0 + frac * 0.9 * sign)
    return frac * 1.8 + 0.1
  return None


def apply_op(name: str, img: tf.Tensor, arg, fill) -> tf.Tensor:
  """Applies RandAugment op ``name`` (argument already converted) to planes [3, H, W]."""
  h = tf.cast(tf.shape(img)[1], tf.float32)
  w = tf.cast(tf.shape(img)[2], tf.float32)
  zero = tf.constant(0.0)
  one = tf.constant(1.0)
  if name == 'AutoContrast':
    return auto_contrast(img)
  if name == 'Equalize':
    return equalize(img)
  if name == 'Invert':
    return invert(img)
  if name == 'Rotate':
    return rotate(img, arg, fill)
  if name == 'Posterize':
    return posterize(img, arg)
  if name == 'Solarize':
    return solarize(img, arg)
  if name == 'SolarizeAdd':
    return solarize_add(img, arg)
  if name == 'Color':
    return color(img, arg)
  if name == 'Contrast':
    return contrast(img, arg)
  if name == 'Brightness':
    return brightness(img, arg)
  if name == 'Sharpness':
    return sharpness(img, arg)
  if name == 'ShearX':
    return affine(img, tf.stack([one, arg, zero, zero, one, zero]), fill)
  if name == 'ShearY':
    return affine(img, tf.stack([one, zero, zero, arg, one, zero]), fill)
  if name == 'TranslateXRel':
    return translate(img, arg * w, 2, fill)
  if name == 'TranslateYRel':
    return translate(img, arg * h, 1, fill)
  raise ValueError(name)


def randaugment(img: tf.Tensor, seed: tf.Tensor, cfg: RandAugmentConfig, fill) -> tf.Tensor:
  """timm ``RandAugment`` on planes float32 [3, H, W] with integer values in [0, 255]."""
  for layer in range(cfg.num_layers):
    s = _sub(seed, 100 + layer)
    op = tf.random.stateless_uniform([], _sub(s, 0), 0, len(RAND_OPS), dtype=tf.int32)
    apply = _uniform(_sub(s, 1)) <= cfg.prob
    if math.isinf(cfg.magnitude_std):
      level = _uniform(_sub(s, 2), maxval=cfg.magnitude)
    elif cfg.magnitude_std > 0:
      level = cfg.magnitude + cfg.magnitude_std * tf.random.stateless_normal([], _sub(s, 2))
    else:
      level = tf.constant(cfg.magnitude)
    level = tf.clip_by_value(level, 0.0, cfg.magnitude_max)
    negate = _uniform(_sub(s, 3)) > 0.5

    def run(img=img, op=op, level=level, negate=negate):
      branches = [
        (lambda name=name: apply_op(name, img, _level_args(name, level, negate, cfg), fill))
        for name in RAND_OPS
      ]
      return tf.switch_case(op, branches)

    img = tf.cond(apply, run, lambda img=img: img)
    img.set_shape([3, None, None])
  return img


# -------------------------------------------------------------------------------- normalise + erase


def normalize(img: tf.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> tf.Tensor:
  """Planes [3, H, W] in [0, 255] -> (x / 255 - mean) / std."""
  scale = tf.constant([1.0 / (255.0 * s) for s in std], tf.float32)[:, None, None]
  offset = tf.constant([m / s for m, s in zip(mean, std)], tf.float32)[:, None, None]
  return img * scale - offset


def random_erasing(
  img: tf.Tensor,
  seed: tf.Tensor,
  prob: float = 0.25,
  mode: str = 'pixel',
  min_area: float = 0.02,
  max_area: float = 1.0 / 3.0,
  min_aspect: float = 0.3,
  max_aspect: float | None = None,
  count: int = 1,
  attempts: int = 10,
) -> tf.Tensor:
  """timm ``RandomErasing`` on normalised planes float32 [C, H, W].

  With probability ``prob``: ``count`` boxes (``count > 1``: a uniform number in [1, count],
  each of area scaled by 1/that number); per box the first of ``attempts`` candidates with
  ``h < H`` and ``w < W`` is erased with zeros (``const``), one N(0,1) colour per channel
  (``rand``) or per-pixel N(0,1) noise (``pixel``).
  """
  if prob <= 0:
    return img
  if mode not in ('pixel', 'rand', 'const'):
    raise ValueError(f'Unknown random erasing mode {mode!r}.')
  max_aspect = max_aspect or 1.0 / min_aspect
  shape = tf.shape(img)
  cc, hh, ww = shape[0], shape[1], shape[2]
  del shape
  hf, wf = tf.cast(hh, tf.float64), tf.cast(ww, tf.float64)

  def erase(img):
    n = (
      tf.random.stateless_uniform([], _sub(seed, 1), 1, count + 1, dtype=tf.int32)
      if count > 1
      else tf.constant(1)
    )
    for box in range(count):
      s = _sub(seed, 10 + box)
      target = tf.random.stateless_uniform(
        [attempts], _sub(s, 0), min_area, max_area, dtype=tf.float64
      )
      target = target * hf * wf / tf.cast(n, tf.float64)
      ar = tf.exp(
        tf.random.stateless_uniform(
          [attempts], _sub(s, 1), math.log(min_aspect), math.log(max_aspect), dtype=tf.float64
        )
      )
      bh = tf.round(tf.sqrt(target * ar))
      bw = tf.round(tf.sqrt(target / ar))
      ok = (bw < wf) & (bh < hf)
      k = tf.argmax(tf.cast(ok, tf.int32), output_type=tf.int32)
      top = tf.floor(
        tf.random.stateless_uniform([], _sub(s, 2), dtype=tf.float64) * (hf - bh[k] + 1)
      )
      left = tf.floor(
        tf.random.stateless_uniform([], _sub(s, 3), dtype=tf.float64) * (wf - bw[k] + 1)
      )
      enabled = tf.cast(tf.reduce_any(ok) & (box < n), tf.float32)
      rows = tf.range(hh)
      cols = tf.range(ww)
      t32, l32 = tf.cast(top, tf.int32), tf.cast(left, tf.int32)
      h32, w32 = tf.cast(bh[k], tf.int32), tf.cast(bw[k], tf.int32)
      rmask = tf.cast((rows >= t32) & (rows < t32 + h32), tf.float32)[:, None]
      cmask = tf.cast((cols >= l32) & (cols < l32 + w32), tf.float32)[None, :]
      mask = (rmask * cmask * enabled)[None]
      if mode == 'pixel':
        # Noise only for the box (normal sampling is the expensive part), placed by padding.
        # (A disabled box has size 0 at the origin, so the padding is always valid.)
        on = tf.cast(enabled > 0, tf.int32)
        bt, bl, bh32, bw32 = t32 * on, l32 * on, h32 * on, w32 * on
        noise = tf.random.stateless_normal(tf.stack([cc, bh32, bw32]), _sub(s, 4))
        fill = tf.pad(noise, tf.stack([[0, 0], [bt, hh - bt - bh32], [bl, ww - bl - bw32]]))
      elif mode == 'rand':
        fill = tf.random.stateless_normal([cc, 1, 1], _sub(s, 4))
      else:
        fill = tf.zeros([cc, 1, 1])
      img = _mix(img, fill, mask)
    return img

  return tf.cond(_uniform(_sub(seed, 0)) < prob, lambda: erase(img), lambda: img)


def augment_image(img_u8: tf.Tensor, seed: tf.Tensor, cfg) -> tf.Tensor:
  """Flip + RandAugment + normalise + random erasing of a cropped uint8 [S, S, 3] image.

  Args:
    img_u8: uint8 [S, S, 3] output of ``decode_and_random_crop``.
    seed: int32 [2] per-sample seed.
    cfg: ``config.data`` (ConfigDict or attribute dict) -- uses ``hflip_prob``, ``randaugment``,
      ``mean``, ``std`` and ``random_erasing.*``.

  Returns:
    float32 [S, S, 3] normalised image.
  """
  img = tf.transpose(tf.cast(img_u8, tf.float32), [2, 0, 1])
  flip = _uniform(_sub(seed, 50)) < cfg.hflip_prob
  img = tf.cond(flip, lambda: tf.reverse(img, [2]), lambda: img)
  ra = parse_randaugment(cfg.randaugment)
  if ra is not None:
    fill = tuple(float(min(255, round(255 * m))) for m in cfg.mean)
    img = randaugment(img, _sub(seed, 51), ra, fill)
  img = normalize(img, tuple(cfg.mean), tuple(cfg.std))
  re_cfg = cfg.random_erasing
  img = random_erasing(
    img,
    _sub(seed, 52),
    prob=re_cfg.prob,
    mode=re_cfg.mode,
    min_area=re_cfg.min_area,
    max_area=re_cfg.max_area,
    min_aspect=re_cfg.min_aspect,
    count=re_cfg.count,
  )
  return tf.transpose(img, [1, 2, 0])
