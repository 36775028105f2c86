"""In-graph augmentation vs PIL/timm semantics: RandAugment ops, RandomResizedCrop, erasing.

The RandAugment ops work on channel-first float "planes" [3, H, W]; PIL images are [H, W, 3].
"""

import io
import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from input_pipeline import augment as A
from input_pipeline.testing import image_bytes

FILL = (124, 116, 104)  # timm img_mean for ImageNet


@pytest.fixture(scope='module')
def img():
  rng = np.random.default_rng(0)
  im = Image.fromarray(rng.integers(0, 256, (28, 28, 3)).astype(np.uint8)).resize(
    (224, 224), Image.BILINEAR
  )
  return im, tf.transpose(tf.constant(np.asarray(im), tf.float32), [2, 0, 1])


def _diff(ours, ref):
  ours = np.asarray(ours)
  if ours.ndim == 3 and ours.shape[0] == 3:
    ours = ours.transpose(1, 2, 0)
  return np.abs(ours.astype(np.int32) - np.asarray(ref).astype(np.int32))


def test_pointwise_ops_match_pil_exactly(img):
  im, x = img
  cases = [
    (A.auto_contrast(x), ImageOps.autocontrast(im)),
    (A.equalize(x), ImageOps.equalize(im)),
    (A.invert(x), ImageOps.invert(im)),
    (
      A.solarize_add(x, 50.0),
      im.point([min(255, i + 50) if i < 128 else i for i in range(256)] * 3),
    ),
  ]
  cases += [(A.posterize(x, tf.constant(float(b))), ImageOps.posterize(im, b)) for b in (1, 3, 4)]
  cases += [(A.solarize(x, float(t)), ImageOps.solarize(im, t)) for t in (0, 77, 256)]
  for f in (0.1, 0.55, 1.0, 1.81):
    cases += [
      (A.color(x, f), ImageEnhance.Color(im).enhance(f)),
      (A.contrast(x, f), ImageEnhance.Contrast(im).enhance(f)),
      (A.brightness(x, f), ImageEnhance.Brightness(im).enhance(f)),
      (A.sharpness(x, f), ImageEnhance.Sharpness(im).enhance(f)),
    ]
  for i, (ours, ref) in enumerate(cases):
    assert _diff(ours, ref).max() == 0, i
  # Posterize to 0 bits (timm "increasing" at magnitude 10) is black, as in Pillow < 10.
  assert float(tf.reduce_max(A.posterize(x, tf.constant(0.0)))) == 0.0


def test_geometric_ops_match_pil(img):
  im, x = img
  cases = [
    (A.rotate(x, -27.0, FILL), im.rotate(-27.0, resample=Image.BILINEAR, fillcolor=FILL)),
    (A.rotate(x, 13.5, FILL), im.rotate(13.5, resample=Image.BILINEAR, fillcolor=FILL)),
  ]
  for f in (-0.27, 0.1):
    cases.append(
      (
        A.apply_op('ShearX', x, tf.constant(f), FILL),
        im.transform(im.size, Image.AFFINE, (1, f, 0, 0, 1, 0), Image.BILINEAR, fillcolor=FILL),
      )
    )
    cases.append(
      (
        A.apply_op('ShearY', x, tf.constant(f), FILL),
        im.transform(im.size, Image.AFFINE, (1, 0, 0, f, 1, 0), Image.BILINEAR, fillcolor=FILL),
      )
    )
  for p in (-0.4, 0.13):
    cases.append(
      (
        A.apply_op('TranslateXRel', x, tf.constant(p), FILL),
        im.transform(
          im.size, Image.AFFINE, (1, 0, p * 224, 0, 1, 0), Image.BILINEAR, fillcolor=FILL
        ),
      )
    )
    cases.append(
      (
        A.apply_op('TranslateYRel', x, tf.constant(p), FILL),
        im.transform(
          im.size, Image.AFFINE, (1, 0, 0, 0, 1, p * 224), Image.BILINEAR, fillcolor=FILL
        ),
      )
    )
  for p in (0.0, -0.4):  # the slice-based translate equals the general affine resampler (+-1)
    d = np.abs(
      A.translate(x, tf.constant(p * 224), 2, FILL).numpy()
      - A.affine(x, tf.constant([1, 0, p * 224, 0, 1, 0.0]), FILL).numpy()
    )
    assert d.max() <= 1 and d.mean() < 0.1
  for ours, ref in cases:
    d = _diff(ours, ref)
    # Same geometry, fill and edge clamping as PIL; float32 vs float64 coordinates give +-1.
    assert d.max() <= 1 and d.mean() < 0.1, (d.max(), d.mean())


def test_randaugment_parse_and_levels():
  c = A.parse_randaugment('rand-m9-mstd0.5-inc1')
  assert (c.num_layers, c.magnitude, c.magnitude_std, c.increasing) == (2, 9.0, 0.5, True)
  assert A.parse_randaugment('') is None and A.parse_randaugment('none') is None
  assert math.isinf(A.parse_randaugment('rand-m9-mstd101').magnitude_std)
  assert A.parse_randaugment('rand-n3-m5').num_layers == 3
  with pytest.raises(ValueError):
    A.parse_randaugment('rand-m9-w0')
  with pytest.raises(ValueError):
    A.parse_randaugment('augmix-m3')
  lv = lambda name, level, neg=False: float(
    A._level_args(name, tf.constant(level), tf.constant(neg), c)
  )  # noqa
  assert lv('Rotate', 9.0) == pytest.approx(27.0) and lv('Rotate', 9.0, True) == pytest.approx(
    -27.0
  )
  assert lv('Posterize', 9.0) == 4 - 3 and lv('Solarize', 9.0) == 256 - 230
  assert lv('SolarizeAdd', 9.0) == 99 and lv('Color', 10.0, True) == pytest.approx(0.1)
  assert lv('TranslateXRel', 10.0) == pytest.approx(0.45)


def test_randaugment_deterministic_and_applies(img):
  _, x = img
  cfg = A.parse_randaugment('rand-m9-mstd0.5-inc1')
  f = tf.function(lambda s: A.randaugment(x, s, cfg, FILL), autograph=False)
  outs = [f(tf.constant([7, i])).numpy() for i in range(40)]
  np.testing.assert_array_equal(outs[0], f(tf.constant([7, 0])).numpy())
  changed = sum(not np.array_equal(o, x.numpy()) for o in outs)
  # P(no op applied) = 0.25 (+ ops that are identities on this image): most outputs change.
  assert 20 <= changed <= 40
  assert all(o.min() >= 0 and o.max() <= 255 and np.array_equal(o, np.round(o)) for o in outs)
  assert all(o.shape == (3, 224, 224) for o in outs)


def test_random_resized_crop_window():
  f = tf.function(lambda h, w, s: A.random_resized_crop_window(h, w, s), autograph=False)
  fracs = []
  for i in range(300):
    top, left, ch, cw = f(tf.constant(300), tf.constant(400), tf.constant([1, i])).numpy()
    assert 0 <= top <= 300 - ch and 0 <= left <= 400 - cw and ch > 0 and cw > 0
    fracs.append(ch * cw / (300 * 400))
    assert 0.75 * 0.95 <= cw / ch <= 4 / 3 * 1.05 or ch == 300 or cw == 400
  assert 0.07 <= min(fracs) and max(fracs) <= 1.0 and 0.4 < np.mean(fracs) < 0.65
  # Extreme aspect ratio: no attempt fits, so torchvision's centred fallback clamps the ratio.
  top, left, ch, cw = f(tf.constant(10), tf.constant(1000), tf.constant([0, 0])).numpy()
  assert (top, ch, cw, left) == (0, 10, 13, (1000 - 13) // 2)


def test_decode_crop_same_window_for_jpeg_and_png():
  seed = tf.constant([3, 4], tf.int32)
  f = tf.function(
    lambda b: A.decode_and_random_crop(b, seed, 64, (0.08, 1.0), (0.75, 4 / 3)), autograph=False
  )
  jpg = f(tf.constant(image_bytes(9, size=(120, 160), fmt='JPEG', quality=98))).numpy()
  png = f(tf.constant(image_bytes(9, size=(120, 160), fmt='PNG'))).numpy()
  assert jpg.shape == png.shape == (64, 64, 3) and jpg.dtype == np.uint8
  assert _diff(jpg, png).mean() < 3.0
  for fmt, code in (('JPEG', 1), ('PNG', 2), ('GIF', 3), ('BMP', 4), ('WEBP', 5)):
    assert int(A.image_format(tf.constant(image_bytes(0, fmt=fmt)))) == code
  assert (
    int(A.image_format(tf.constant(b''))) == 0 and int(A.image_format(tf.constant(b'<html>'))) == 0
  )
  # A grey image stays grey through crop + resize (no colour shift in decoding).
  buf = io.BytesIO()
  Image.new('RGB', (50, 40), (90, 90, 90)).save(buf, 'PNG')
  assert np.all(f(tf.constant(buf.getvalue())).numpy() == 90)


def test_random_erasing_statistics():
  zeros = tf.zeros([3, 64, 48])
  f = tf.function(lambda s: A.random_erasing(zeros, s, prob=0.25, mode='pixel'), autograph=False)
  erased, areas = 0, []
  for i in range(400):
    out = f(tf.constant([5, i])).numpy()
    mask = np.any(out != 0, axis=0)
    if mask.any():
      erased += 1
      areas.append(mask.mean())
      ys, xs = np.nonzero(mask)
      assert mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all()  # one rectangle
      assert abs(out[:, mask].std() - 1.0) < 0.35  # per-pixel N(0, 1)
  assert 0.17 < erased / 400 < 0.33
  assert min(areas) >= 0.015 and max(areas) <= 0.34
  const = tf.function(
    lambda s: A.random_erasing(tf.ones([3, 16, 16]), s, prob=1.0, mode='const'), autograph=False
  )(tf.constant([0, 1])).numpy()
  assert (const == 0).any() and set(np.unique(const)) <= {0.0, 1.0}


def test_normalize_and_full_augment():
  from input_pipeline.config import default_data_config

  cfg = default_data_config()
  x = tf.fill([224, 224, 3], tf.constant(128, tf.uint8))
  n = A.normalize(tf.transpose(tf.cast(x, tf.float32), [2, 0, 1])).numpy()
  np.testing.assert_allclose(
    n[:, 0, 0], (128 / 255 - np.array(A.IMAGENET_MEAN)) / np.array(A.IMAGENET_STD), rtol=1e-5
  )
  f = tf.function(lambda s: A.augment_image(x, s, cfg), autograph=False)
  a, b = f(tf.constant([1, 2])).numpy(), f(tf.constant([1, 2])).numpy()
  assert a.shape == (224, 224, 3) and a.dtype == np.float32
  np.testing.assert_array_equal(a, b)
