"""A built-in synthetic image-caption dataset of shapes, for training GroupViT on a laptop.

Each image shows 1..N plain-coloured (lightly shaded) shapes (circle, square, triangle, star, ...)
on a textured random background; its caption is a noisy, web-like sentence that names (most of) the
shapes. The shape *category* can only be told from the outline: every instance's colour is drawn
independently of its category (and the background uses the same palette), so colour is no shortcut
to the class. A val split adds the ground-truth segmentation (0 = background, ``1..K`` = category
ids, visible pixels only) for zero-shot evaluation with the class names of :func:`category_names`
(see :mod:`evaluation.synthetic`).

Everything is deterministic per ``(seed, split, index)``: example ``i`` is rendered from a random
stream seeded with ``(seed, split, i)`` alone, so a tf.data position *is* an index (resuming =
``start_index``) and the train and val splits never share a stream. The image and the caption use
two separate child
streams: changing a caption knob leaves the images unchanged.

Rendering: each shape is a few polygons and discs in a unit frame (drawn, or erased, in order: a
  ring is
a disc minus a disc), rotated, scaled and drawn with Pillow on a 4x supersampled canvas over a tight
crop, then box-filtered down: the coverage is the object's alpha. A pixel belongs to an object's
mask when the object covers at least half of it (8 of its 16 sub-pixels) and no later object does;
the image, textures and compositing are numpy. About 1,000 images/s on one core at 64x64 with the
defaults (also through :func:`as_tf_dataset`), about 900/s at 96 px and 350/s at 128 px.

Typical use::

    from input_pipeline import synthetic_shapes as ss
    cfg = ss.SyntheticConfig(image_size=64, num_categories=8)
    ex = ss.generate(cfg, seed=0, index=17)            # image, caption, mask, categories, ...
    ds = ss.as_tf_dataset(cfg, seed=0, split="train")  # infinite, {'image', 'caption'}
    names = ss.category_names(cfg)                      # ['circle', 'square', ...] for prompts
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
import textwrap
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
  'Category',
  'CATEGORIES',
  'PALETTE',
  'BACKGROUND_TYPES',
  'CAPTION_STYLES',
  'CASE_STYLES',
  'SPLITS',
  'SyntheticConfig',
  'SceneObject',
  'Scene',
  'category_names',
  'render_scene',
  'make_caption',
  'generate',
  'as_tf_dataset',
  'tf_examples_by_id',
]

# --------------------------------------------------------------------------------------------------
# Vocabulary: categories, colours, phrases.
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Category:
  """A shape category.

  Attributes:
    name: canonical class name (used in zero-shot prompts and most often in captions).
    synonyms: ``(singular, plural)`` pairs; the first is the canonical name.
  """

  name: str
  synonyms: tuple[tuple[str, str], ...]

  @property
  def words(self) -> tuple[str, ...]:
    """Every singular and plural form, e.g. ``('circle', 'circles', 'disc', ...)``."""
    return tuple(w for pair in self.synonyms for w in pair)


def _cat(name: str, plural: str, *others: tuple[str, str]) -> Category:
  return Category(name, ((name, plural),) + tuple(others))


# Order matters: ``num_categories=K`` uses the first K. The first 8 are the most distinct outlines
# at 64 px; hexagon (close to a circle when small), lightning bolt and house come last.
CATEGORIES: tuple[Category, ...] = (
  _cat(
    'circle',
    'circles',
    ('disc', 'discs'),
    ('dot', 'dots'),
    ('round disc', 'round discs'),
    ('ball', 'balls'),
  ),
  _cat('square', 'squares', ('box', 'boxes'), ('block', 'blocks'), ('square tile', 'square tiles')),
  _cat(
    'triangle',
    'triangles',
    ('triangular shape', 'triangular shapes'),
    ('triangle sign', 'triangle signs'),
  ),
  _cat(
    'star',
    'stars',
    ('starburst', 'starbursts'),
    ('five-pointed star', 'five-pointed stars'),
    ('star shape', 'star shapes'),
  ),
  _cat(
    'cross',
    'crosses',
    ('plus sign', 'plus signs'),
    ('plus', 'pluses'),
    ('plus symbol', 'plus symbols'),
  ),
  _cat(
    'heart',
    'hearts',
    ('love heart', 'love hearts'),
    ('heart shape', 'heart shapes'),
    ('valentine heart', 'valentine hearts'),
  ),
  _cat('ring', 'rings', ('donut', 'donuts'), ('doughnut', 'doughnuts'), ('hoop', 'hoops')),
  _cat('crescent', 'crescents', ('crescent moon', 'crescent moons'), ('moon', 'moons')),
  _cat('arrow', 'arrows', ('pointer', 'pointers'), ('arrow sign', 'arrow signs')),
  _cat(
    'hexagon',
    'hexagons',
    ('hex', 'hexes'),
    ('six-sided shape', 'six-sided shapes'),
    ('honeycomb cell', 'honeycomb cells'),
  ),
  _cat(
    'lightning bolt',
    'lightning bolts',
    ('bolt', 'bolts'),
    ('thunderbolt', 'thunderbolts'),
    ('zigzag', 'zigzags'),
  ),
  _cat('house', 'houses', ('hut', 'huts'), ('home icon', 'home icons'), ('cottage', 'cottages')),
)

# (name, caption words, RGB centre). Instance colours are a palette entry plus uniform per-channel
# jitter, so the colour *word* in a caption always matches the pixels.
PALETTE: tuple[tuple[str, tuple[str, ...], tuple[int, int, int]], ...] = (
  ('red', ('red', 'red', 'crimson'), (215, 35, 35)),
  ('orange', ('orange',), (245, 135, 20)),
  ('yellow', ('yellow',), (240, 215, 35)),
  ('green', ('green',), (45, 160, 55)),
  ('cyan', ('cyan', 'turquoise', 'teal'), (40, 195, 210)),
  ('blue', ('blue',), (35, 75, 215)),
  ('purple', ('purple', 'violet'), (130, 50, 185)),
  ('pink', ('pink',), (240, 120, 185)),
  ('brown', ('brown',), (125, 75, 35)),
  ('white', ('white',), (245, 245, 240)),
  ('gray', ('gray', 'grey'), (128, 128, 128)),
  ('black', ('black',), (20, 20, 25)),
)
_PALETTE_RGB = np.array([p[2] for p in PALETTE], dtype=np.float32)
# Rec. 601 luma of each palette entry; the dark half (luma < 120: red, green, blue, purple, brown,
# black) and the light half (orange, yellow, cyan, pink, white, gray) for `object_polarity`.
_PALETTE_LUMA = _PALETTE_RGB @ np.array([0.299, 0.587, 0.114], np.float32)
_DARK = tuple(int(i) for i in np.flatnonzero(_PALETTE_LUMA < 120))
_LIGHT = tuple(int(i) for i in np.flatnonzero(_PALETTE_LUMA >= 120))
_LIGHTER_BACKGROUND_SCALE = 0.6  # dims the background further so jitter cannot close the gap
POLARITIES: tuple[str, ...] = ('any', 'lighter')

BACKGROUND_TYPES: tuple[str, ...] = ('flat', 'noise', 'stripes', 'gradient', 'checker', 'blobs')
CAPTION_STYLES: tuple[str, ...] = ('sentence', 'list', 'count', 'tags')
CASE_STYLES: tuple[str, ...] = ('lower', 'sentence', 'title', 'upper')
SPLITS: dict[str, int] = {'train': 0, 'val': 1}

_BACKGROUND_WORDS = {
  'flat': ('plain background', 'solid background', 'simple backdrop', 'blank background'),
  'noise': ('noisy background', 'grainy texture', 'speckled background'),
  'stripes': ('striped background', 'stripes', 'striped pattern'),
  'gradient': ('gradient background', 'smooth gradient', 'colour gradient'),
  'checker': ('checkered background', 'checkerboard pattern', 'checked pattern'),
  'blobs': ('blotchy background', 'camouflage pattern', 'cloudy texture'),
}

# Words/phrases that never name a category (checked at import).
_DISTRACTORS = (
  'photo',
  'stock image',
  'stock photo',
  'wallpaper',
  'hd wallpaper',
  'vector illustration',
  'clipart',
  'clip art',
  'royalty free',
  'digital art',
  '4k',
  'free download',
  'minimalist poster',
  'sticker',
  'graphic design',
  'kids drawing',
  'sketch',
  'cartoon',
  'flat design',
  'logo',
  'pattern',
  'abstract art',
  'icon',
  'emoji',
  'screenshot',
  'high resolution',
  'image',
  'design element',
  'illustration',
  'art print',
)
_HASHTAGS = (
  '#art',
  '#design',
  '#wallpaper',
  '#minimal',
  '#vector',
  '#cute',
  '#abstract',
  '#pattern',
  '#graphic',
  '#instaart',
  '#doodle',
  '#geometry',
)
_INTROS = (
  '',
  '',
  '',
  'a photo of ',
  'an image of ',
  'picture of ',
  'a drawing of ',
  'illustration of ',
  'close-up of ',
  'a cartoon of ',
  'a simple picture of ',
  'my drawing of ',
)
_VERBS = (
  'floating',
  'sitting',
  'resting',
  'hovering',
  'drawn',
  'placed',
  'painted',
  'shown',
  'lying',
)
_STANDALONE_VERBS = (
  'floating',
  'hovering',
  'resting',
  'sitting',
  'drifting',
  'floating around',
  'on display',
)
_SMALL = ('small', 'tiny', 'little')
_LARGE = ('big', 'large', 'huge')
_NUMBERS = {
  2: ('two', '2', 'a pair of', 'a couple of'),
  3: ('three', '3', 'several'),
  4: ('four', '4', 'several'),
  5: ('five', '5', 'several', 'many'),
}
_POSITIONS = {
  (0, 0): ('in the top left corner', 'at the upper left', 'in the top left'),
  (0, 1): ('at the top', 'near the top', 'at the top of the image'),
  (0, 2): ('in the top right corner', 'at the upper right', 'in the top right'),
  (1, 0): ('on the left', 'on the left side', 'at the left'),
  (1, 1): ('in the middle', 'in the center', 'in the centre'),
  (1, 2): ('on the right', 'on the right side', 'at the right'),
  (2, 0): ('in the bottom left corner', 'at the lower left', 'in the bottom left'),
  (2, 1): ('at the bottom', 'near the bottom', 'at the bottom of the image'),
  (2, 2): ('in the bottom right corner', 'at the lower right', 'in the bottom right'),
}
_LAST_JOINERS = (' and ', ' and ', ', and ', ' with ', ' & ')
_REST_JOINERS = (', ', ' and ', ', also ')
_BACKGROUND_LEADS = ('on a ', 'on a ', 'over a ', 'with a ')
_EMPTY_LEADS = ('', '', 'a ', 'just a ', 'an empty ', 'nothing but a ', 'a photo of a ')
_SINGLE_LEADS = ('look at this ', 'i like this ', 'check out this ')
_LIST_SEPARATORS = (', ', ', ', ' / ', ' + ', ' | ', ' ')
_COUNT_LEADS = {True: ('there are ', 'i count '), False: ('there is ', 'just ')}
_DISTRACTOR_SEPARATORS = (' - ', ', ', ' | ', ': ', ' ')
_ON_TOP = ('on top of', 'overlapping', 'partly covering', 'in front of')
_BEHIND = ('behind', 'partly hidden by', 'under')
_NEAR = ('next to', 'near', 'beside', 'with', 'and')
_DIRECTIONS = {
  'left': ('to the left of', 'left of'),
  'right': ('to the right of', 'right of'),
  'above': ('above', 'over'),
  'below': ('below', 'beneath'),
}


def _check_vocabulary() -> None:

  words = [w for c in CATEGORIES for w in c.words]
  pattern = re.compile(
    r'\b(' + '|'.join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + r')\b'
  )
  others = (
    _DISTRACTORS
    + _HASHTAGS
    + _INTROS
    + _VERBS
    + _STANDALONE_VERBS
    + _SMALL
    + _LARGE
    + _ON_TOP
    + _BEHIND
    + _NEAR
    + _LAST_JOINERS
    + _REST_JOINERS
    + _BACKGROUND_LEADS
    + _EMPTY_LEADS
    + _SINGLE_LEADS
    + _LIST_SEPARATORS
    + _COUNT_LEADS[True]
    + _COUNT_LEADS[False]
    + _DISTRACTOR_SEPARATORS
    + ('there is ', 'there are ', 'a ', 'an ', '#')
    + tuple(w for v in _BACKGROUND_WORDS.values() for w in v)
    + tuple(w for v in _POSITIONS.values() for w in v)
    + tuple(w for v in _DIRECTIONS.values() for w in v)
    + tuple(w for v in _NUMBERS.values() for w in v)
    + tuple(w for p in PALETTE for w in p[1])
  )
  bad = [o for o in others if pattern.search(o)]
  if bad:  # pragma: no cover - a vocabulary editing error
    raise AssertionError(f'non-category phrases contain category words: {bad}')


_check_vocabulary()

# --------------------------------------------------------------------------------------------------
# Config.
# --------------------------------------------------------------------------------------------------


def _weights(pairs: Any, allowed: Sequence[str], what: str) -> tuple[tuple[str, float], ...]:
  items = list(pairs.items()) if isinstance(pairs, Mapping) else [tuple(p) for p in pairs]
  out = []
  for item in items:
    if len(item) != 2:
      raise ValueError(f'{what}: expected (name, weight) pairs, got {item!r}')
    name, w = str(item[0]), float(item[1])
    if name not in allowed:
      raise ValueError(f'{what}: unknown name {name!r}; allowed: {", ".join(allowed)}')
    if not (w >= 0 and math.isfinite(w)):
      raise ValueError(f'{what}: weight of {name!r} must be finite and >= 0, got {w}')
    out.append((name, w))
  if not out or sum(w for _, w in out) <= 0:
    raise ValueError(f'{what}: needs at least one positive weight')
  return tuple(out)


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Difficulty knobs of the synthetic shapes dataset (all have defaults; frozen and hashable).

  Scene:
    image_size: ``H = W`` in pixels (64 default; 96 or 128 also work).
    min_objects, max_objects: objects per image, uniform in ``[min, max]`` (an object that cannot be
      placed within ``placement_tries`` under the occlusion limit is dropped, so rarely fewer).
    num_categories: ``K``, uses the first ``K`` of :data:`CATEGORIES` (8..12). Mask ids are
      ``1..K``.
    size_range: object radius (half its extent) as a fraction of ``image_size``, uniform in this
      range.
    rotation: rotate shapes; if ``False`` they are upright.
    rotation_range: rotation angle uniform in ``[-r, r]`` degrees.
    max_occlusion: the largest fraction of an object's area that later objects may hide (0 = no
      overlap at all); partial overlap is allowed up to this.
    min_visible_pixels: every object keeps at least this many visible pixels.
    placement_tries: random positions tried per object before it is dropped.

  Appearance:
    background_types: textures sampled uniformly: ``flat``, ``noise``, ``stripes``, ``gradient``,
      ``checker``, ``blobs``.
    background_strength: texture contrast in ``[0, 1]`` (0 = flat background colour).
    colour_jitter: uniform per-channel jitter of an object's palette colour, as a fraction of 255.
    background_jitter: the same for the two background colours.
    min_contrast: an object's colour is re-drawn (up to 16 times) until its RGB distance to the mean
      background under it and to the colours of objects it touches is at least this (0..441).
    object_shading: strength of a random linear shading across each object (0 = flat colour).
    pixel_noise: std of uniform per-channel pixel noise added to the final image (0..255 scale).
    object_polarity: ``any`` (objects and backgrounds take any palette colours) or ``lighter``
      (backgrounds from the dark half of the palette, dimmed, and objects from the light half, so
      every object is brighter than what is behind it; colour still says nothing about the
      category). ``lighter`` makes "where the objects are" a linear function of the pixels.

  Captions:
    p_omit_object_in_caption: each object is left unmentioned with this probability (if all would
      be, one random object is kept).
    p_distractor_words: probability of adding 1-2 non-category phrases ("stock image", "#art").
    p_background_words: probability of describing the background ("on a striped background").
    p_background_only: probability that a *train* scene has no object at all; its caption then
      names only the background ("just a striped background"). Real captions name what is behind
      the objects too (grass, sky), which gives background regions concepts of their own; these
      scenes are that signal for a recogniser that names regions (SCG). Val scenes always hold
      objects; 0 (the default) leaves the train stream unchanged.
    p_colour_word, p_size_word, p_position_word: probability that a mention carries a colour word,
      a size word (only for objects in the smallest/largest quarter of ``size_range``), a position.
    p_relation: in sentence captions with >= 2 mentions, probability of a relation ("above",
      "on top of"), always true to the picture.
    p_canonical_name: probability a mention uses the canonical name (else a random synonym).
    caption_styles: ``(style, weight)`` pairs over ``sentence``, ``list``, ``count``, ``tags``.
    case_styles: ``(style, weight)`` pairs over ``lower``, ``sentence``, ``title``, ``upper``.

  Splits:
    num_val_examples: size of the finite val split (default 500).
    num_train_examples: 0 (default) = the train split is an infinite stream of distinct examples;
      ``N > 0`` = the training pipeline cycles over the examples ``0 .. N-1`` (a finite training
      set, e.g. one whose teacher embeddings are cached).  Other uses ignore it.
  """

  image_size: int = 64
  min_objects: int = 1
  max_objects: int = 4
  num_categories: int = 8
  size_range: tuple[float, float] = (0.12, 0.25)
  rotation: bool = True
  rotation_range: float = 180.0
  max_occlusion: float = 0.3
  min_visible_pixels: int = 16
  placement_tries: int = 30
  background_types: tuple[str, ...] = BACKGROUND_TYPES
  background_strength: float = 0.5
  colour_jitter: float = 0.06
  background_jitter: float = 0.15
  min_contrast: float = 80.0
  object_shading: float = 0.15
  pixel_noise: float = 4.0
  object_polarity: str = 'any'
  p_omit_object_in_caption: float = 0.1
  p_distractor_words: float = 0.4
  p_background_words: float = 0.15
  p_background_only: float = 0.0
  p_colour_word: float = 0.6
  p_size_word: float = 0.5
  p_position_word: float = 0.25
  p_relation: float = 0.3
  p_canonical_name: float = 0.6
  caption_styles: tuple[tuple[str, float], ...] = (
    ('sentence', 0.5),
    ('list', 0.2),
    ('count', 0.2),
    ('tags', 0.1),
  )
  case_styles: tuple[tuple[str, float], ...] = (
    ('lower', 0.6),
    ('sentence', 0.25),
    ('title', 0.1),
    ('upper', 0.05),
  )
  num_val_examples: int = 500
  num_train_examples: int = 0

  def __post_init__(self):
    def err(msg):
      raise ValueError(f'SyntheticConfig: {msg}')

    # Scalars must have their default's type: a string "False" for `rotation` would be truthy.
    for f in dataclasses.fields(self):
      v, default = getattr(self, f.name), f.default
      if isinstance(default, bool):
        ok = isinstance(v, (bool, np.bool_))
      elif isinstance(default, int):
        ok = isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
      elif isinstance(default, float):
        ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
      elif isinstance(default, str):
        ok = isinstance(v, str)
      else:
        continue
      if not ok:
        err(
          f'{f.name} must be {type(default).__name__} (like its default {default!r}), '
          f'got {v!r} of type {type(v).__name__}'
        )

    object.__setattr__(self, 'size_range', tuple(float(x) for x in self.size_range))
    object.__setattr__(self, 'background_types', tuple(str(x) for x in self.background_types))
    object.__setattr__(
      self,
      'caption_styles',
      _weights(self.caption_styles, CAPTION_STYLES, 'SyntheticConfig.caption_styles'),
    )
    object.__setattr__(
      self, 'case_styles', _weights(self.case_styles, CASE_STYLES, 'SyntheticConfig.case_styles')
    )
    if not 16 <= self.image_size <= 1024:
      err(f'image_size must be in [16, 1024], got {self.image_size}')
    if not 1 <= self.min_objects <= self.max_objects <= 12:
      err(f'need 1 <= min_objects <= max_objects <= 12, got {self.min_objects}, {self.max_objects}')
    if not 8 <= self.num_categories <= len(CATEGORIES):
      err(f'num_categories must be in [8, {len(CATEGORIES)}], got {self.num_categories}')
    if len(self.size_range) != 2:
      err(f'size_range must be (lo, hi), got {self.size_range}')
    lo, hi = self.size_range
    if not 0 < lo <= hi <= 0.45:
      err(f'size_range must be (lo, hi) with 0 < lo <= hi <= 0.45, got {self.size_range}')
    if self.image_size * lo < 3:
      err(f'objects of radius {self.image_size * lo:.1f} px are too small; raise size_range[0]')
    if not 0 <= self.rotation_range <= 180:
      err(f'rotation_range must be in [0, 180] degrees, got {self.rotation_range}')
    if not 0 <= self.max_occlusion < 1:
      err(f'max_occlusion must be in [0, 1), got {self.max_occlusion}')
    if self.min_visible_pixels < 1 or self.placement_tries < 1:
      err('min_visible_pixels and placement_tries must be >= 1')
    if not self.background_types or any(t not in BACKGROUND_TYPES for t in self.background_types):
      err(
        f'background_types must be a non-empty subset of {BACKGROUND_TYPES}, '
        f'got {self.background_types}'
      )
    for name in (
      'background_strength',
      'colour_jitter',
      'background_jitter',
      'object_shading',
      'p_omit_object_in_caption',
      'p_distractor_words',
      'p_background_words',
      'p_background_only',
      'p_colour_word',
      'p_size_word',
      'p_position_word',
      'p_relation',
      'p_canonical_name',
    ):
      v = getattr(self, name)
      if not 0 <= v <= 1:
        err(f'{name} must be in [0, 1], got {v}')
    if not 0 <= self.min_contrast <= 441:
      err(f'min_contrast must be in [0, 441], got {self.min_contrast}')
    if self.object_polarity not in POLARITIES:
      err(f'object_polarity must be one of {POLARITIES}, got {self.object_polarity!r}')
    if self.pixel_noise < 0:
      err(f'pixel_noise must be >= 0, got {self.pixel_noise}')
    if self.num_val_examples < 1:
      err(f'num_val_examples must be >= 1, got {self.num_val_examples}')
    if self.num_train_examples < 0:
      err(f'num_train_examples must be >= 0, got {self.num_train_examples}')

  @classmethod
  def from_dict(cls, d: Optional[Mapping[str, Any]]) -> 'SyntheticConfig':
    """Builds a config from a mapping (e.g. an ``ml_collections.ConfigDict`` or parsed YAML).

    Lists are accepted for tuple fields, and ``{style: weight}`` mappings for ``caption_styles`` /
    ``case_styles``. Missing keys keep their defaults.

    Raises:
      ValueError: for keys that are not fields (listing them and the valid ones) or invalid values.
    """
    if d is None:
      return cls()
    if hasattr(d, 'to_dict'):
      d = d.to_dict()
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
      raise ValueError(
        f'unknown SyntheticConfig key(s): {", ".join(map(repr, unknown))}; '
        f'valid keys: {", ".join(sorted(fields))}'
      )
    kwargs = {}
    for k, v in d.items():
      if k in ('caption_styles', 'case_styles'):
        kwargs[k] = v if isinstance(v, Mapping) else tuple(tuple(p) for p in v)
      elif isinstance(v, list):
        kwargs[k] = tuple(v)
      else:
        kwargs[k] = v
    return cls(**kwargs)

  def to_dict(self) -> dict:
    """Plain-python dict of every field (round-trips through :meth:`from_dict`)."""
    return dataclasses.asdict(self)


def category_names(config: Optional[SyntheticConfig] = None) -> list[str]:
  """Canonical class names of the ``K = config.num_categories`` categories, for zero-shot prompts.

  Index ``i`` of the result is mask id ``i + 1`` (mask id 0 is background, not listed here).
  """
  config = config or SyntheticConfig()
  return [c.name for c in CATEGORIES[: config.num_categories]]


def background_phrases(config: Optional[SyntheticConfig] = None) -> list[str]:
  """Every phrase the captions use for the backgrounds of ``config.background_types``
  ("striped background", "grainy texture", ...), in a fixed order; what an evaluation can score a
  model's background concept with."""
  config = config or SyntheticConfig()
  return [w for kind in config.background_types for w in _BACKGROUND_WORDS[kind]]


# --------------------------------------------------------------------------------------------------
# Shapes as signed distance functions in a unit frame (y up, extent about 1).
# --------------------------------------------------------------------------------------------------


def _regular(n, r, phase=math.pi / 2):
  a = phase + 2 * math.pi * np.arange(n) / n
  return np.stack([r * np.cos(a), r * np.sin(a)], 1)


def _star(points=5, outer=1.0, inner=0.42):
  a = math.pi / 2 + math.pi * np.arange(2 * points) / points
  r = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
  return np.stack([r * np.cos(a), r * np.sin(a)], 1)


def _poly(verts):
  return ('poly', np.asarray(verts, dtype=np.float64))


def _disc(cx, cy, r):
  return ('disc', (float(cx), float(cy), float(r)))


def _build_shapes() -> list[tuple[tuple[bool, tuple], ...]]:
  """Each shape: ``(add, primitive)`` steps drawn in order (``add=False`` erases), unit frame y
  up."""
  a, b = 0.29, 0.92
  k, oy = 1.32, 0.3  # heart: a diamond and two discs on its upper edges, scaled and centred
  lobe = math.hypot(0.3, 0.3) * k
  return [
    ((True, _disc(0, 0, 0.86)),),  # circle
    ((True, _poly([(-0.72, -0.72), (0.72, -0.72), (0.72, 0.72), (-0.72, 0.72)])),),  # square
    ((True, _poly(_regular(3, 1.0) + np.array([0.0, -0.12]))),),  # triangle
    ((True, _poly(_star())),),  # star
    (
      (
        True,
        _poly(
          [
            (a, a),
            (a, b),
            (-a, b),
            (-a, a),
            (-b, a),
            (-b, -a),
            (-a, -a),
            (-a, -b),
            (a, -b),
            (a, -a),
            (b, -a),
            (b, a),
          ]
        ),
      ),
    ),  # cross
    (
      (
        True,
        _poly(
          np.array([(0, -0.95), (0.6, -0.35), (0, 0.25), (-0.6, -0.35)]) * k + np.array([0, oy * k])
        ),
      ),
      (True, _disc(-0.3 * k, (-0.05 + oy) * k, lobe)),
      (True, _disc(0.3 * k, (-0.05 + oy) * k, lobe)),
    ),  # heart
    ((True, _disc(0, 0, 0.95)), (False, _disc(0, 0, 0.47))),  # ring
    ((True, _disc(0, 0, 0.95)), (False, _disc(0.42, 0.1, 0.74))),  # crescent
    (
      (
        True,
        _poly(
          [
            (-0.95, -0.2),
            (0.1, -0.2),
            (0.1, -0.62),
            (0.97, 0.0),
            (0.1, 0.62),
            (0.1, 0.2),
            (-0.95, 0.2),
          ]
        ),
      ),
    ),  # arrow
    ((True, _poly(_regular(6, 0.95, 0.0))),),  # hexagon
    (
      (
        True,
        _poly(
          [
            (0.05, 1.0),
            (-0.6, -0.08),
            (-0.08, -0.08),
            (-0.3, -1.0),
            (0.62, 0.18),
            (0.1, 0.18),
            (0.48, 1.0),
          ]
        ),
      ),
    ),  # lightning bolt
    (
      (True, _poly([(-0.72, -0.85), (0.72, -0.85), (0.72, 0.12), (0.0, 0.92), (-0.72, 0.12)])),
      (False, _poly([(-0.2, -1.2), (0.2, -1.2), (0.2, -0.3), (-0.2, -0.3)])),
    ),  # house
  ]


_SHAPES = _build_shapes()
assert len(_SHAPES) == len(CATEGORIES)
_EXTENT = 1.0  # every shape lies within radius 1 of its centre
_SUPERSAMPLE = 4  # anti-aliasing: 4x4 sub-pixels per pixel
_HALF = 120  # mask threshold on reduced coverage: 7/16 -> 112, 8/16 -> 127.5 (i.e. at least half)


def _rasterise(steps, scale: float, angle: float, fx: float, fy: float):
  """Anti-aliased coverage of one shape over a tight crop.

  The shape is drawn with Pillow on a 4x supersampled canvas and box-filtered down.

  Args:
    steps: a shape from ``_SHAPES``.
    scale: pixels per unit (the object's radius in pixels).
    angle: rotation in radians (counter-clockwise as seen on screen).
    fx, fy: sub-pixel position of the centre within its pixel, in ``[0, 1)``.

  Returns:
    ``(coverage uint8 [h, w] (255 = fully covered), cx, cy)``: ``cx, cy`` = the centre in crop pixel
    coordinates (pixel ``j`` spans ``[j, j + 1)``).
  """

  s = _SUPERSAMPLE
  r = int(math.ceil(scale * _EXTENT + 1))
  n = 2 * r + 1
  canvas = Image.new('L', (n * s, n * s), 0)
  draw = ImageDraw.Draw(canvas)
  cx, cy = (r + fx) * s, (r + fy) * s
  k = scale * s
  c, sn = math.cos(angle) * k, math.sin(angle) * k
  # unit (u, v), v up  ->  canvas (x, y), y down, rotated counter-clockwise on screen by `angle`.
  m = np.array([[c, -sn], [-sn, -c]])
  for add, (kind, geom) in steps:
    fill = 255 if add else 0
    if kind == 'poly':
      xy = geom @ m + (cx, cy)
      draw.polygon([tuple(p) for p in xy.tolist()], fill=fill)
    else:
      u, v, rad = geom
      x, y, rr = cx + c * u - sn * v, cy - sn * u - c * v, rad * k
      draw.ellipse((x - rr, y - rr, x + rr, y + rr), fill=fill)
  cov = np.frombuffer(canvas.reduce(s).tobytes(), np.uint8).reshape(n, n)
  rows = np.flatnonzero(cov.max(axis=1))
  cols = np.flatnonzero(cov.max(axis=0))
  y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
  return cov[y0:y1, x0:x1], r + fx - x0, r + fy - y0


# --------------------------------------------------------------------------------------------------
# Scenes.
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class SceneObject:
  """One rendered object, in paint order (later objects are on top).

  Attributes:
    layer: paint order (0 = bottom); ``instance_mask == layer + 1`` marks its visible pixels.
    category: mask id ``1..K`` (``CATEGORIES[category - 1]``).
    colour: palette name (the caption's colour word refers to this).
    rgb: float32 ``[3]`` base colour actually painted (before shading and noise).
    center: ``(x, y)`` in image pixels.
    scale: radius in pixels.
    size01: ``scale`` normalised to ``[0, 1]`` within ``size_range`` (for size words).
    angle: rotation in degrees.
    box: ``(y0, x0, h, w)`` of the crop holding ``full_mask``.
    full_mask: bool ``[h, w]``: pixels the object covers by at least half, occluded or not.
    visible_pixels: pixels of ``full_mask`` not hidden by later objects (its area in the mask).
  """

  layer: int
  category: int
  colour: str
  rgb: np.ndarray
  center: tuple[float, float]
  scale: float
  size01: float
  angle: float
  box: tuple[int, int, int, int]
  full_mask: np.ndarray
  visible_pixels: int = 0

  def overlaps(self, other: 'SceneObject') -> bool:
    """Whether the two objects' full masks share a pixel."""
    ay, ax, ah, aw = self.box
    by, bx, bh, bw = other.box
    y0, y1 = max(ay, by), min(ay + ah, by + bh)
    x0, x1 = max(ax, bx), min(ax + aw, bx + bw)
    if y0 >= y1 or x0 >= x1:
      return False
    a = self.full_mask[y0 - ay : y1 - ay, x0 - ax : x1 - ax]
    b = other.full_mask[y0 - by : y1 - by, x0 - bx : x1 - bx]
    return bool(np.any(a & b))


@dataclasses.dataclass
class Scene:
  """A rendered image with its annotations.

  Attributes:
    image: uint8 ``[H, W, 3]``.
    instance_mask: uint8 ``[H, W]``: 0 = background, ``k + 1`` = ``objects[k]`` (visible pixels).
    mask: uint8 ``[H, W]``: 0 = background, ``1..K`` = category id.
    objects: the objects in paint order.
    background: the background texture type.
  """

  image: np.ndarray
  instance_mask: np.ndarray
  mask: np.ndarray
  objects: list[SceneObject]
  background: str


def _streams(
  seed: int, index: int, split: str
) -> tuple[np.random.Generator, random.Random, random.Random]:
  """The example's pixel, scene and caption streams."""
  if split not in SPLITS:
    raise ValueError(f'split must be one of {", ".join(SPLITS)}, got {split!r}')
  seed, index = int(seed), int(index)
  if seed < 0 or index < 0:
    raise ValueError(f'seed and index must be >= 0, got seed={seed}, index={index}')
  state = np.random.SeedSequence([seed, SPLITS[split], index]).generate_state(3, dtype=np.uint64)
  return (
    np.random.Generator(np.random.PCG64(int(state[0]))),
    random.Random(int(state[1])),
    random.Random(int(state[2])),
  )


def _jittered(idx: int, jitter: float, rng: random.Random) -> np.ndarray:
  j = jitter * 255.0
  base = _PALETTE_RGB[idx]
  return np.clip(base + np.array([rng.uniform(-j, j) for _ in range(3)], np.float32), 0, 255)


def _background(config: SyntheticConfig, nprng: np.random.Generator, rng: random.Random):
  size = config.image_size
  kind = rng.choice(config.background_types)
  if config.object_polarity == 'lighter':
    i1, i2 = rng.sample(_DARK, 2)
  else:
    i1 = rng.randrange(len(PALETTE))
    i2 = rng.randrange(len(PALETTE) - 1)
    i2 += i2 >= i1
  c1 = _jittered(i1, config.background_jitter, rng)
  c2 = _jittered(i2, config.background_jitter, rng)
  if config.object_polarity == 'lighter':
    c1, c2 = c1 * _LIGHTER_BACKGROUND_SCALE, c2 * _LIGHTER_BACKGROUND_SCALE
  strength = config.background_strength
  if kind == 'flat' or strength == 0:
    p = None
  elif kind == 'noise':
    half = (size + 1) // 2
    p = nprng.random((half, half), dtype=np.float32)
    p = np.repeat(np.repeat(p, 2, 0), 2, 1)[:size, :size]
  elif kind == 'blobs':
    cells = rng.randint(3, 6)
    low = nprng.random((cells, cells), dtype=np.float32)
    p = np.asarray(Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC))
    p = (p - p.min()) / max(float(p.max() - p.min()), 1e-6)
  else:
    theta = rng.uniform(0, math.pi)
    coords = np.arange(size, dtype=np.float32) + 0.5
    u = math.cos(theta) * coords[None, :] + math.sin(theta) * coords[:, None]
    if kind == 'gradient':
      p = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
    elif kind == 'stripes':
      period = rng.uniform(0.08, 0.25) * size
      p = 0.5 + 0.5 * np.sin(u * (2 * math.pi / period) + rng.uniform(0, 2 * math.pi))
    else:  # checker
      v = -math.sin(theta) * coords[None, :] + math.cos(theta) * coords[:, None]
      cell = rng.uniform(0.06, 0.18) * size
      p = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
  if p is None:
    img = np.broadcast_to(c1, (size, size, 3)).copy()
  else:
    img = c1 + (strength * p)[..., None] * (c2 - c1)
  return img.astype(np.float32, copy=False), kind


def _pick_colour(config, rng, bg_mean, neighbours):
  best, best_d = None, -1.0
  for _ in range(16):
    idx = rng.choice(_LIGHT) if config.object_polarity == 'lighter' else rng.randrange(len(PALETTE))
    rgb = _jittered(idx, config.colour_jitter, rng)
    d = float(np.linalg.norm(rgb - bg_mean))
    for nb in neighbours:
      d = min(d, float(np.linalg.norm(rgb - nb)))
    if d >= config.min_contrast:
      return idx, rgb
    if d > best_d:
      best, best_d = (idx, rgb), d
  return best


def render_scene(config: SyntheticConfig, seed: int, index: int, split: str = 'train') -> Scene:
  """Renders example ``index`` of stream ``(seed, split)`` (deterministic; no caption).

  Args:
    config: the knobs.
    seed: non-negative integer.
    index: non-negative integer.
    split: ``'train'`` or ``'val'`` (disjoint random streams).

  Returns:
    A :class:`Scene` with image uint8 ``[H, W, 3]``, masks uint8 ``[H, W]`` and the objects.
  """
  nprng, rng, _ = _streams(seed, index, split)
  return _render(config, nprng, rng, _background_only(config, seed, index, split))


def _background_only(config: SyntheticConfig, seed: int, index: int, split: str) -> bool:
  """Whether train example `index` has no object (`p_background_only`), from a fourth word of
  the example's seed sequence (`generate_state` is prefix-stable: the three streams of every
  example are unchanged, so the scenes that keep their objects are the default stream's)."""
  if split != 'train' or config.p_background_only <= 0:
    return False
  words = np.random.SeedSequence([int(seed), SPLITS[split], int(index)]).generate_state(
    4, np.uint64
  )
  return random.Random(int(words[3])).random() < config.p_background_only


def _render(
  config: SyntheticConfig,
  nprng: np.random.Generator,
  rng: random.Random,
  background_only: bool = False,
) -> Scene:
  size = config.image_size
  img, bg_kind = _background(config, nprng, rng)
  bg = img.copy() if config.min_contrast > 0 else img
  inst = np.zeros((size, size), np.uint8)
  n_obj = 0 if background_only else rng.randint(config.min_objects, config.max_objects)
  lo, hi = config.size_range
  objects: list[SceneObject] = []
  full_area: list[int] = []
  visible: list[int] = []
  for _ in range(n_obj):
    cat = rng.randrange(config.num_categories)
    size01 = rng.random()
    scale = (lo + (hi - lo) * size01) * size
    angle = rng.uniform(-config.rotation_range, config.rotation_range) if config.rotation else 0.0
    cov8, ccx, ccy = _rasterise(
      _SHAPES[cat], scale, math.radians(angle), rng.random(), rng.random()
    )
    h, w = cov8.shape
    if h > size or w > size:
      continue
    full = cov8 > _HALF
    area = int(full.sum())
    if area < config.min_visible_pixels:
      continue
    placed = None
    k = len(objects)
    for _ in range(config.placement_tries):
      y0, x0 = rng.randint(0, size - h), rng.randint(0, size - w)
      region = inst[y0 : y0 + h, x0 : x0 + w]
      hidden = np.bincount(region[full], minlength=k + 1)[1:]
      ok = True
      for j in np.flatnonzero(hidden):
        left = visible[j] - int(hidden[j])
        if left < config.min_visible_pixels or left < (1 - config.max_occlusion) * full_area[j]:
          ok = False
          break
      if ok:
        placed = (y0, x0, hidden)
        break
    if placed is None:
      continue
    y0, x0, hidden = placed
    box = (y0, x0, h, w)
    probe = SceneObject(
      k, cat + 1, '', np.zeros(3, np.float32), (x0 + ccx, y0 + ccy), scale, size01, angle, box, full
    )
    neighbours = []
    for o in objects:
      oy, ox, oh, ow = o.box
      if oy <= y0 + h and y0 <= oy + oh and ox <= x0 + w and x0 <= ox + ow:  # touching boxes
        neighbours.append(o.rgb)
    bg_mean = bg[y0 : y0 + h, x0 : x0 + w][full].mean(axis=0)
    cidx, rgb = _pick_colour(config, rng, bg_mean, neighbours)
    probe.colour, probe.rgb = PALETTE[cidx][0], rgb
    # Paint: colour with a random linear shading, alpha = coverage.
    alpha = cov8[..., None] * np.float32(1 / 255)
    if config.object_shading > 0:
      phi = rng.uniform(0, 2 * math.pi)
      gx = (np.arange(w, dtype=np.float32) + 0.5 - ccx) * (math.cos(phi) / scale)
      gy = (np.arange(h, dtype=np.float32) + 0.5 - ccy) * (math.sin(phi) / scale)
      shade = 1.0 + config.object_shading * np.clip(gx[None, :] + gy[:, None], -1, 1)
      layer = np.clip(rgb * shade[..., None], 0, 255)
    else:
      layer = rgb
    patch = img[y0 : y0 + h, x0 : x0 + w]
    patch += alpha * (layer - patch)
    inst[y0 : y0 + h, x0 : x0 + w][full] = k + 1
    for j in np.flatnonzero(hidden):
      visible[j] -= int(hidden[j])
    objects.append(probe)
    full_area.append(area)
    visible.append(area)
  for o, v in zip(objects, visible):
    o.visible_pixels = v
  if config.pixel_noise > 0:
    noise = np.frombuffer(nprng.bytes(img.size), np.uint8).reshape(img.shape)
    img += (noise.astype(np.float32) - 127.5) * np.float32(config.pixel_noise / 73.9)
  image = np.clip(img + 0.5, 0, 255).astype(np.uint8)
  lut = np.zeros(256, np.uint8)
  lut[1 : len(objects) + 1] = [o.category for o in objects]
  return Scene(image, inst, lut[inst], objects, bg_kind)


# --------------------------------------------------------------------------------------------------
# Captions.
# --------------------------------------------------------------------------------------------------


def _weighted(rng: random.Random, pairs: Sequence[tuple[str, float]]) -> str:
  total = sum(w for _, w in pairs)
  x = rng.random() * total
  for name, w in pairs:
    x -= w
    if x < 0:
      return name
  return pairs[-1][0]


def _article(phrase: str) -> str:
  return ('an ' if phrase[:1] in 'aeiou' else 'a ') + phrase


def _noun(config, rng, cat: int, plural: bool = False, single_word: bool = False) -> str:
  syns = CATEGORIES[cat - 1].synonyms
  if single_word:
    syns = tuple(s for s in syns if ' ' not in s[0]) or syns
    if rng.random() < config.p_canonical_name:
      return syns[0][plural]
    return rng.choice(syns)[plural]
  if len(syns) == 1 or rng.random() < config.p_canonical_name:
    return syns[0][plural]
  return rng.choice(syns[1:])[plural]


def _colour_word(o: SceneObject, rng) -> str:
  for name, words, _ in PALETTE:
    if name == o.colour:
      return rng.choice(words)
  return o.colour


def _position(o: SceneObject, size: int, rng) -> str:
  x, y = o.center
  col = 0 if x < size / 3 else (2 if x > 2 * size / 3 else 1)
  row = 0 if y < size / 3 else (2 if y > 2 * size / 3 else 1)
  return rng.choice(_POSITIONS[(row, col)])


def _describe(config, rng, o: SceneObject, with_article: bool = True, position: bool = True) -> str:
  words = []
  if rng.random() < config.p_size_word:
    if o.size01 < 0.25:
      words.append(rng.choice(_SMALL))
    elif o.size01 > 0.75:
      words.append(rng.choice(_LARGE))
  if rng.random() < config.p_colour_word:
    words.append(_colour_word(o, rng))
  words.append(_noun(config, rng, o.category))
  phrase = ' '.join(words)
  if with_article:
    phrase = _article(phrase)
  if position and rng.random() < config.p_position_word:
    phrase += ' ' + _position(o, config.image_size, rng)
  return phrase


def _join(items: Sequence[str], rng) -> str:
  if len(items) == 1:
    return items[0]
  last = rng.choice(_LAST_JOINERS)
  return ', '.join(items[:-1]) + last + items[-1]


def _relation(a: SceneObject, b: SceneObject, rng) -> str:
  """A true spatial relation of ``a`` with respect to ``b``."""
  if a.overlaps(b):
    return rng.choice(_ON_TOP if a.layer > b.layer else _BEHIND)
  dx, dy = a.center[0] - b.center[0], a.center[1] - b.center[1]
  if rng.random() < 0.35 or max(abs(dx), abs(dy)) < 4:
    return rng.choice(_NEAR)
  if abs(dx) > 1.5 * abs(dy):
    return rng.choice(_DIRECTIONS['left' if dx < 0 else 'right'])
  if abs(dy) > 1.5 * abs(dx):
    return rng.choice(_DIRECTIONS['above' if dy < 0 else 'below'])
  return rng.choice(_NEAR)


def _background_phrase(kind: str, rng) -> str:
  return rng.choice(_BACKGROUND_LEADS) + rng.choice(_BACKGROUND_WORDS[kind])


def _sentence(config, rng, scene: Scene, mentioned: list[SceneObject]) -> str:
  if len(mentioned) >= 2 and rng.random() < config.p_relation:
    a, b = mentioned[0], mentioned[1]
    rest = [_describe(config, rng, o) for o in mentioned[2:]]
    head = (
      _describe(config, rng, a, position=False)
      + (' ' + rng.choice(_VERBS) if rng.random() < 0.4 else '')
      + ' '
      + _relation(a, b, rng)
      + ' '
      + _describe(config, rng, b, position=False)
    )
    text = head + ('' if not rest else rng.choice(_REST_JOINERS) + _join(rest, rng))
    return rng.choice(_INTROS) + text
  descs = [_describe(config, rng, o) for o in mentioned]
  body = _join(descs, rng)
  form = rng.randrange(5)
  if form == 0:
    return ('there is ' if len(descs) == 1 else 'there are ') + body
  if form == 1:
    return body + ' ' + rng.choice(_STANDALONE_VERBS)
  if form == 2 and len(descs) == 1:
    return rng.choice(_SINGLE_LEADS) + body[body.index(' ') + 1 :]
  return rng.choice(_INTROS) + body


def _list(config, rng, scene, mentioned) -> str:
  sep = rng.choice(_LIST_SEPARATORS)
  return sep.join(_describe(config, rng, o, with_article=False, position=False) for o in mentioned)


def _count(config, rng, scene, mentioned) -> str:
  groups: dict[int, list[SceneObject]] = {}
  for o in mentioned:
    groups.setdefault(o.category, []).append(o)
  parts = []
  for cat, objs in groups.items():
    n = len(objs)
    colours = {o.colour for o in objs}
    colour = (
      (_colour_word(objs[0], rng) + ' ')
      if len(colours) == 1 and rng.random() < config.p_colour_word
      else ''
    )
    if n == 1:
      parts.append(_article(colour + _noun(config, rng, cat)))
    else:
      number = rng.choice(_NUMBERS.get(n, (str(n), 'many', 'several')))
      parts.append(f'{number} {colour}{_noun(config, rng, cat, plural=True)}')
  rng.shuffle(parts)
  body = _join(parts, rng)
  if rng.random() < 0.3:
    many = len(mentioned) > 1
    return rng.choice(_COUNT_LEADS[many]) + body
  return rng.choice(_INTROS) + body


def _tags(config, rng, scene, mentioned) -> str:
  tags = []
  for o in mentioned:
    if rng.random() < config.p_colour_word:
      tags.append('#' + _colour_word(o, rng))
    tags.append('#' + _noun(config, rng, o.category, single_word=True))
  return ' '.join(tags)


_STYLE_FNS = {'sentence': _sentence, 'list': _list, 'count': _count, 'tags': _tags}


def _case(text: str, style: str) -> str:
  if style == 'lower':
    return text.lower()
  if style == 'upper':
    return text.upper()
  if style == 'title':
    return ' '.join(w[:1].upper() + w[1:] for w in text.split(' '))
  return text[:1].upper() + text[1:]


def make_caption(
  config: SyntheticConfig, scene: Scene, rng: random.Random
) -> tuple[str, list[bool]]:
  """Writes a web-like caption for a scene.

  Args:
    config: the caption knobs.
    scene: from :func:`render_scene`.
    rng: the caption's random stream.

  Returns:
    ``(caption, mentioned)``: ``mentioned[k]`` tells whether ``scene.objects[k]`` is named.
  """
  objs = scene.objects
  mentioned = [rng.random() >= config.p_omit_object_in_caption for _ in objs]
  if objs and not any(mentioned):
    mentioned[rng.randrange(len(objs))] = True
  order = [o for o, m in zip(objs, mentioned) if m]
  rng.shuffle(order)
  style = _weighted(rng, config.caption_styles)
  if not objs:  # no object was kept (e.g. all under min_visible_pixels): name the background
    text = rng.choice(_EMPTY_LEADS) + rng.choice(_BACKGROUND_WORDS[scene.background])
  else:
    text = _STYLE_FNS[style](config, rng, scene, order) if order else ''
    if rng.random() < config.p_background_words:
      text += ' ' + _background_phrase(scene.background, rng)
  if rng.random() < config.p_distractor_words:
    if style == 'tags' or rng.random() < 0.3:
      extra = ' '.join(rng.sample(_HASHTAGS, rng.randint(1, 2)))
      text = f'{text} {extra}'
    else:
      extra = rng.choice(_DISTRACTORS)
      sep = rng.choice(_DISTRACTOR_SEPARATORS)
      text = f'{extra}{sep}{text}' if rng.random() < 0.5 else f'{text}{sep}{extra}'
  text = text.strip()
  if style == 'sentence' and rng.random() < 0.3:
    text += '.'
  return _case(text, _weighted(rng, config.case_styles)), mentioned


def generate(
  config: Optional[SyntheticConfig], seed: int, index: int, split: str = 'train'
) -> dict:
  """Example ``index`` of the ``(seed, split)`` stream; identical for identical arguments.

  Args:
    config: the knobs (``None`` = defaults).
    seed: non-negative integer.
    index: non-negative integer.
    split: ``'train'`` or ``'val'``; the two splits use disjoint random streams.

  Returns:
    dict with
      ``image``: uint8 ``[H, W, 3]``;
      ``caption``: str;
      ``mask``: uint8 ``[H, W]``: 0 = background, ``1..K`` = category id (the class index into
      ``['background'] + category_names(config)``); only meant for evaluation;
      ``categories``: list of the objects' category ids (``1..K``) in paint order (bottom first);
      ``instance_mask``: uint8 ``[H, W]``: 0 = background, ``k + 1`` = the ``k``-th object;
      ``mentioned``: list of bool, whether each object is named in the caption;
      ``colours``: list of the objects' palette colour names.
  """
  config = config or SyntheticConfig()
  nprng, rng, caption_rng = _streams(seed, index, split)
  scene = _render(config, nprng, rng, _background_only(config, seed, index, split))
  caption, mentioned = make_caption(config, scene, caption_rng)
  return {
    'image': scene.image,
    'caption': caption,
    'mask': scene.mask,
    'categories': [o.category for o in scene.objects],
    'instance_mask': scene.instance_mask,
    'mentioned': mentioned,
    'colours': [o.colour for o in scene.objects],
  }


# --------------------------------------------------------------------------------------------------
# tf.data.
# --------------------------------------------------------------------------------------------------


def as_tf_dataset(
  config: Optional[SyntheticConfig],
  seed: int,
  split: str = 'train',
  start_index: int = 0,
  num_examples: Optional[int] = None,
  num_parallel_calls: Optional[int] = None,
):
  """A ``tf.data.Dataset`` whose element ``i`` is ``generate(config, seed, start_index + i,
  split)``.

  Built as ``Dataset.counter(start_index)`` (train, infinite) or ``Dataset.range(start_index, N)``
  (val, finite: indices ``start_index .. N-1``) mapped through ``tf.numpy_function`` with
  ``deterministic=True``: the order and the
  content depend only on ``(config, seed, split, index)``, whatever the parallelism, so a run that
  consumed ``n`` train elements resumes exactly with ``start_index=n``. Each element is rendered in
  numpy (about a millisecond at 64 px); ``numpy_function`` holds the GIL for the Python parts, so
  extra parallel calls help only partially.

  Args:
    config: the knobs (``None`` = defaults).
    seed: non-negative integer.
    split: ``'train'`` (infinite; ``image`` and ``caption`` only, no masks) or ``'val'`` (finite;
      adds ``mask``).
    start_index: first index.
    num_examples: val size (default ``config.num_val_examples``); must be ``None`` for train.
    num_parallel_calls: for ``map`` (default ``tf.data.AUTOTUNE``).

  Returns:
    Dataset of dicts: ``image`` uint8 ``[H, W, 3]``, ``caption`` tf.string ``[]``, and for val
    ``mask`` uint8 ``[H, W]`` (0 = background, ``1..K`` = category id).
  """
  import tensorflow as tf

  config = config or SyntheticConfig()
  if split not in SPLITS:
    raise ValueError(f'split must be one of {", ".join(SPLITS)}, got {split!r}')
  if int(start_index) < 0 or int(seed) < 0:
    raise ValueError(f'seed and start_index must be >= 0, got {seed}, {start_index}')
  seed, start_index = int(seed), int(start_index)
  size = config.image_size
  with_mask = split == 'val'
  if with_mask:
    n = config.num_val_examples if num_examples is None else int(num_examples)
    indices = tf.data.Dataset.range(start_index, n)
  else:
    if num_examples is not None:
      raise ValueError("the train split is infinite; num_examples applies to split='val' only")
    indices = tf.data.Dataset.counter(start=start_index)

  def render(i):
    ex = generate(config, seed, int(i), split)
    out = (ex['image'], np.array(ex['caption'].encode('utf-8'), dtype=object))
    return out + (ex['mask'],) if with_mask else out

  def to_dict(i):
    tout = (tf.uint8, tf.string) + ((tf.uint8,) if with_mask else ())
    parts = tf.numpy_function(render, [i], tout, stateful=False)
    out = {
      'image': tf.ensure_shape(parts[0], (size, size, 3)),
      'caption': tf.ensure_shape(parts[1], ()),
    }
    if with_mask:
      out['mask'] = tf.ensure_shape(parts[2], (size, size))
    return out

  calls = tf.data.AUTOTUNE if num_parallel_calls is None else num_parallel_calls
  return indices.map(to_dict, num_parallel_calls=calls, deterministic=True)


def tf_examples_by_id(config: Optional[SyntheticConfig], seed: int, ids, split: str = 'train'):
  """Maps a dataset of int64 example ids to ``{'image', 'caption'}`` train examples.

  Element ``i`` of the result is ``generate(config, seed, ids[i], split)`` whatever the parallelism:
  the training pipeline feeds *global* example ids here, so every process layout sees the same
  global batches.

  Args:
    config: the knobs (``None`` = defaults).
    seed: non-negative integer.
    ids: ``tf.data.Dataset`` of int64 scalars (non-negative).
    split: ``'train'`` or ``'val'``.

  Returns:
    Dataset of ``{'image': uint8 [H, W, 3], 'caption': tf.string []}``.
  """
  import tensorflow as tf

  config = config or SyntheticConfig()
  if split not in SPLITS:
    raise ValueError(f'split must be one of {", ".join(SPLITS)}, got {split!r}')
  seed, size = int(seed), config.image_size

  def render(i):
    ex = generate(config, seed, int(i), split)
    return ex['image'], np.array(ex['caption'].encode('utf-8'), dtype=object)

  def to_dict(i):
    image, caption = tf.numpy_function(render, [i], (tf.uint8, tf.string), stateful=False)
    return {
      'image': tf.ensure_shape(image, (size, size, 3)),
      'caption': tf.ensure_shape(caption, ()),
    }

  return ids.map(
    tf.autograph.experimental.do_not_convert(to_dict),
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=True,
  )


# --------------------------------------------------------------------------------------------------
# Preview (for humans).
# --------------------------------------------------------------------------------------------------

_MASK_COLOURS = np.array(
  [
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
  ],
  dtype=np.uint8,
)


def preview_grid(
  config: Optional[SyntheticConfig] = None,
  seed: int = 0,
  split: str = 'val',
  num: int = 16,
  columns: int = 4,
  zoom: int = 2,
):
  """A PIL image showing ``num`` examples: image, colour-coded mask, caption and category names.

  Args:
    config: the knobs (``None`` = defaults).
    seed, split: the stream; examples ``0..num-1`` are shown.
    num: number of examples.
    columns: grid columns.
    zoom: integer upscaling of each picture (nearest neighbour).

  Returns:
    ``PIL.Image.Image`` (RGB).
  """

  config = config or SyntheticConfig()
  names = category_names(config)
  size = config.image_size * zoom
  try:
    font = ImageFont.load_default(size=11)
  except TypeError:  # pragma: no cover - Pillow without FreeType
    font = ImageFont.load_default()
  text_h = 58
  cell_w, cell_h = 2 * size + 12, size + text_h + 8
  rows = (num + columns - 1) // columns
  canvas = Image.new('RGB', (columns * cell_w, rows * cell_h), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  chars = max(20, int(cell_w / 6.2))
  for i in range(num):
    ex = generate(config, seed, i, split)
    x, y = (i % columns) * cell_w + 4, (i // columns) * cell_h + 4
    big = np.repeat(np.repeat(ex['image'], zoom, 0), zoom, 1)
    mask = np.repeat(np.repeat(_MASK_COLOURS[ex['mask']], zoom, 0), zoom, 1)
    canvas.paste(Image.fromarray(big), (x, y))
    canvas.paste(Image.fromarray(mask), (x + size + 4, y))
    objs = ', '.join(
      f'{c} {names[k - 1]}' + ('' if m else ' (unmentioned)')
      for k, c, m in zip(ex['categories'], ex['colours'], ex['mentioned'])
    )
    lines = textwrap.wrap(ex['caption'], chars)[:3] + textwrap.wrap('[' + objs + ']', chars)[:2]
    draw.multiline_text((x, y + size + 2), '\n'.join(lines), fill=(0, 0, 0), font=font, spacing=1)
  return canvas


if __name__ == '__main__':  # python -m input_pipeline.synthetic_shapes OUT.png [seed]
  import sys

  out = sys.argv[1] if len(sys.argv) > 1 else 'synthetic_preview.png'
  preview_grid(seed=int(sys.argv[2]) if len(sys.argv) > 2 else 0).save(out, optimize=True)
  print(f'wrote {out}')
