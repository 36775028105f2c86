"""Host-side pieces of the zero-shot protocol against the reference implementation
(`references/segmentation.py`) and OpenCV goldens."""

from __future__ import annotations

import hashlib

import numpy as np

from references.segmentation import cv2_resize_linear, imrescale_size

# --------------------------------------------------------------------------------------------------
# Checks of the host-side pieces (ours against the mmcv/mmseg formulas and OpenCV goldens)
# --------------------------------------------------------------------------------------------------

# sha256 of cv2.resize(INTER_LINEAR) outputs (OpenCV 4.10.0 and 5.0.0 agree) for the inputs of
# _golden_input(); recorded once with OpenCV installed.
CV2_GOLDEN = {
  (375, 500, 448, 597): '9875b35f45c2831ac41e94b06b4767e782d2850b59545acbe85d97d8bb155263',
  (500, 281, 797, 448): '65e17efeeaff1c420952608bfc9e003723225aca160fe10ccc3f13f31228346e',
  (120, 700, 351, 2048): '47e14af7057ad86759b6107b88e3e26dc7eba8e9346d501a50efd49bf27eed4f',
  (896, 1200, 448, 600): '31a98af062aa86c8db21316d895724911dfc3fab47e0d64e46bd56b15acac87a',
  (37, 53, 448, 641): 'ca1002aa076cb2f32fa63e96b13f663afa306f1a312101b3185ae8b6886394b5',
  (1000, 700, 640, 448): '64d347feee5636f060efd71589665e2fb7c45e79c40d54651d6f822a5fe46619',
}


def _golden_input(h: int, w: int) -> np.ndarray:
  """Deterministic, reproducible uint8 [h, w, 3] test image (no RNG stream dependence)."""
  y, x, c = np.meshgrid(np.arange(h), np.arange(w), np.arange(3), indexing='ij')
  v = (x * 7 + y * 13 + c * 101 + (x * y) % 17 * 11 + ((x ^ y) & 31) * 3) % 256
  return v.astype(np.uint8)


def _sha(a: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def test_resize_uint8_matches_opencv_goldens():
  from groupvit_jax.segmenter import resize_uint8

  for (h, w, nh, nw), digest in CV2_GOLDEN.items():
    img = _golden_input(h, w)
    ours = resize_uint8(img, nh, nw)
    assert ours.shape == (nh, nw, 3)
    assert _sha(ours) == digest, (h, w, nh, nw)
    np.testing.assert_array_equal(ours, cv2_resize_linear(img, nh, nw))


def test_rescale_size_and_windows_follow_mmcv_mmseg():
  from groupvit_jax.segmenter import rescale_size, window_starts

  for h, w in [
    (375, 500),
    (500, 281),
    (448, 448),
    (200, 700),
    (90, 500),
    (700, 120),
    (1, 1),
    (333, 500),
  ]:
    assert rescale_size(h, w) == imrescale_size(h, w)
  assert rescale_size(375, 500) == (448, 597)
  assert rescale_size(90, 500) == (369, 2048)  # long side capped: short side < 448
  assert window_starts(597, 448, 224) == [0, 149]
  assert window_starts(448, 448, 224) == [0]
  assert window_starts(369, 448, 224) == [0]
  assert window_starts(2048, 448, 224) == [0, 224, 448, 672, 896, 1120, 1344, 1568, 1600]
  assert window_starts(1568, 448, 224) == [0, 224, 448, 672, 896, 1120]
