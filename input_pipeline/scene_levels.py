"""Named difficulty levels of the built-in synthetic scenes (`input_pipeline.synthetic_shapes`).

A level is a set of generator knobs; recipes apply one (`configs/synthetic*.py:scenes=LEVEL`) and
any knob stays overridable after it (`--config.data.synthetic.KEY=VALUE`). Colour never tells the
shape in any level: object and background colours are drawn independently of the category.

* `easy`: `default` on flat backgrounds.
* `default`: what the main job trains on, learnable in the CPU budget (a plain CLIP names the
  shape of 97 % of val images after 600 steps, docs/emergence.md): one upright object brighter
  than its textured background (a patch embedding tells a bright shape on a dark ground from its
  complement only with that polarity fixed: docs/emergence.md, section 2), every caption naming
  the background.
* `hard`: the research scenes the emergence study started from: 1-3 rotated objects of any
  polarity on textured backgrounds. Two rotated objects with the `default` polarity were not
  learned in budget either (naming 33-40 after 600-1,000 steps).

The levels share the captions of `configs/synthetic_groupvit.py` (no colour words, mild noise).
"""

from __future__ import annotations

from typing import Any

import ml_collections

# Knobs every level sets (the recipe's captions and object sizes).
_COMMON = dict(
  size_range=(0.2, 0.35),
  background_strength=0.3,
  p_distractor_words=0.1,
  p_canonical_name=0.8,
  p_colour_word=0.0,
  caption_styles=(('sentence', 0.6), ('list', 0.3), ('count', 0.1)),
)

LEVELS: dict[str, dict[str, Any]] = {
  'easy': dict(
    _COMMON,
    object_polarity='lighter',
    max_objects=1,
    rotation=False,
    p_background_words=1.0,
    background_strength=0.0,
  ),
  'default': dict(
    _COMMON,
    object_polarity='lighter',
    max_objects=1,
    rotation=False,
    p_background_words=1.0,
  ),
  'hard': dict(
    _COMMON,
    object_polarity='any',
    max_objects=3,
    rotation=True,
    p_background_words=0.15,
  ),
}


def apply_level(synthetic: ml_collections.ConfigDict, level: str) -> ml_collections.ConfigDict:
  """Sets the knobs of `level` on `config.data.synthetic` (in place; returned for chaining)."""
  if level not in LEVELS:
    raise ValueError(f'unknown scene level {level!r}; levels: {sorted(LEVELS)}')
  for key, value in LEVELS[level].items():
    if key not in synthetic:
      raise KeyError(f'scene level {level!r} sets unknown knob {key!r}')
    synthetic[key] = value
  return synthetic


def builtin_data(data: ml_collections.ConfigDict, level: str) -> ml_collections.ConfigDict:
  """`config.data` as the built-in benchmark's recipes train on it (in place): the synthetic
  source at 64 px, whole scenes (the captions name the objects: mild crops, no flips since
  captions say "on the left", no RandAugment or erasing), 32-token captions, the evaluation's
  prompt template, and the scene `level`."""
  data.train = ('synthetic',)
  data.image_size = 64
  data.crop_scale = (0.8, 1.0)
  data.hflip_prob = 0.0
  data.randaugment = ''
  data.random_erasing.prob = 0.0
  data.text.context_length = 32
  data.text.templates = 'simple'  # "a photo of a {}."
  apply_level(data.synthetic, level)
  return data
