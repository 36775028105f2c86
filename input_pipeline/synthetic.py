"""Minimal built-in synthetic image-caption source (coloured shapes on a plain background).

``synthetic_examples(seed)`` is the only entry point the pipeline uses; a richer generator can
replace it as long as it keeps the signature and the element structure, and generates element
``i`` as a pure function of ``(seed, i)`` (that is what makes the source resumable and
splittable across processes by element index).
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["COLORS", "SHAPES", "synthetic_examples", "synthetic_examples_by_id"]

COLORS = (
    ("red", (220, 40, 40)),
    ("green", (40, 170, 60)),
    ("blue", (40, 70, 220)),
    ("yellow", (235, 215, 40)),
    ("purple", (140, 60, 180)),
    ("orange", (245, 140, 30)),
    ("white", (245, 245, 245)),
    ("black", (20, 20, 20)),
)
SHAPES = ("circle", "square", "triangle")
_SIZE = 256


def _shape_mask(kind, cx, cy, r, size):
    yy, xx = tf.meshgrid(tf.range(size, dtype=tf.float32), tf.range(size, dtype=tf.float32), indexing="ij")
    circle = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
    square = (tf.abs(xx - cx) <= r) & (tf.abs(yy - cy) <= r)
    triangle = (yy >= cy - r) & (yy <= cy + r) & (tf.abs(xx - cx) <= (yy - (cy - r)) / 2.0)
    return tf.switch_case(kind, [lambda: circle, lambda: square, lambda: triangle])


def _example(seed: tf.Tensor, i: tf.Tensor, size: int) -> dict[str, tf.Tensor]:
    s = tf.random.experimental.stateless_fold_in(seed, i)

    def u(k, shape=(), lo=0.0, hi=1.0):
        return tf.random.stateless_uniform(shape, tf.random.experimental.stateless_fold_in(s, k), lo, hi)

    def ui(k, hi):
        return tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(s, k), 0, hi, tf.int32)

    palette = tf.constant([c for _, c in COLORS], tf.float32)
    color_names = tf.constant([n for n, _ in COLORS])
    shape_names = tf.constant(list(SHAPES))
    bg = tf.fill([size, size, 3], 1.0) * (110.0 + u(0, [3], 0.0, 60.0))
    img = bg
    n_shapes = 1 + ui(1, 2)
    parts = []
    for k in range(2):
        col = ui(10 + k, len(COLORS))
        kind = ui(20 + k, len(SHAPES))
        r = u(30 + k, (), size * 0.08, size * 0.22)
        cx = u(40 + k, (), r, size - r)
        cy = u(50 + k, (), r, size - r)
        mask = _shape_mask(kind, cx, cy, r, size) & (k < n_shapes)
        img = tf.where(mask[:, :, None], tf.gather(palette, col)[None, None, :], img)
        parts.append(tf.strings.join([tf.gather(color_names, col), " ", tf.gather(shape_names, kind)]))
    caption = tf.where(
        n_shapes > 1,
        tf.strings.join(["a photo of a ", parts[0], " and a ", parts[1]]),
        tf.strings.join(["a photo of a ", parts[0]]),
    )
    return {"image": tf.cast(img, tf.uint8), "caption": caption}


def synthetic_examples_by_id(seed: int, ids: tf.data.Dataset, size: int = _SIZE) -> tf.data.Dataset:
    """Element ``i`` for every int64 id ``i`` of ``ids`` (same elements as ``synthetic_examples``)."""
    seed_t = tf.constant([seed, 0x5EED], tf.int64)
    fn = tf.autograph.experimental.do_not_convert(lambda i: _example(seed_t, i, size))
    return ids.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def synthetic_examples(seed: int, *, start: int = 0, step: int = 1, size: int = _SIZE) -> tf.data.Dataset:
    """Infinite deterministic dataset of synthetic image-caption pairs.

    Element ``i`` (for ``i = start, start + step, ...``) is a pure function of ``(seed, i)``: one or
    two shapes (circle/square/triangle in one of 8 named colours) on a random grey background, and
    the caption "a photo of a red circle" or "a photo of a red circle and a blue square".

    Args:
      seed: generator seed.
      start, step: which element indices to produce (processes use ``start=process_index``,
        ``step=process_count``; resuming uses a later ``start``).
      size: image side in pixels.

    Returns:
      tf.data.Dataset of ``{'image': uint8 [size, size, 3], 'caption': tf.string []}``.
    """
    seed_t = tf.constant([seed, 0x5EED], tf.int64)
    fn = tf.autograph.experimental.do_not_convert(lambda i: _example(seed_t, i, size))
    return tf.data.Dataset.range(start, 2**62, step).map(
        fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
