"""The GroupViT multi-label prompt rule (pure Python, no TF); templates: `groupvit_jax.prompts`.

GroupViT (``datasets/builder.py: WordAugTokenizeWrapper``) augments each caption with K extra
texts: it POS-tags the caption, keeps the words whose tag is in a tag set, picks
``min(K, #words)`` of them without replacement, wraps each in a template drawn uniformly from the
80 CLIP ImageNet templates, and fills up to K with the caption itself.  ``build_prompts``
implements that rule; randomness comes from a caller-supplied ``random.Random`` so the result is
a deterministic function of the sample's seed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from groupvit_jax.prompts import IMAGENET_TEMPLATES

__all__ = [
  'REFERENCE_TAGS',
  'NOUN_TAGS',
  'WORD_SETS',
  'word_tags',
  'build_prompts',
]

# Penn Treebank tags kept by GroupViT's released code (``get_tag`` call in builder.py): nouns
# (no NNPS) and all verb forms.
REFERENCE_TAGS = ('NN', 'NNS', 'NNP', 'VB', 'VBD', 'VBG', 'VBN', 'VBP', 'VBZ')
# "Nouns" as the paper describes: the four noun tags.
NOUN_TAGS = ('NN', 'NNS', 'NNP', 'NNPS')
WORD_SETS = {'reference': REFERENCE_TAGS, 'nouns': NOUN_TAGS}


def word_tags(word_set: str = 'reference', override: Sequence[str] | None = None) -> frozenset[str]:
  """The tag set to keep: ``override`` if given, else ``WORD_SETS[word_set]``."""
  if override:
    return frozenset(override)
  if word_set not in WORD_SETS:
    raise ValueError(f'text.word_set must be one of {sorted(WORD_SETS)}, got {word_set!r}.')
  return frozenset(WORD_SETS[word_set])


def build_prompts(
  caption: str,
  words: Sequence[str],
  num_prompts: int,
  rng: random.Random,
  templates: Sequence[str] = IMAGENET_TEMPLATES,
) -> list[str]:
  """GroupViT's prompt rule.

  Args:
    caption: the (stripped) caption.
    words: candidate words in caption order (already filtered by tag); repeated words count as
      distinct positions.
    num_prompts: K.
    rng: source of randomness.
    templates: templates with one ``{}``.

  Returns:
    K strings: ``min(K, len(words))`` distinct word positions in random order, each formatted
    into a uniformly drawn template, followed by copies of ``caption`` up to K.
  """
  k = min(num_prompts, len(words))
  picks = rng.sample(range(len(words)), k) if k else []
  out = [templates[rng.randrange(len(templates))].format(words[i]) for i in picks]
  out.extend([caption] * (num_prompts - k))
  return out
