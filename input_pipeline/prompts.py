"""Prompt templates and the GroupViT multi-label prompt rule (pure Python, no TF).

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

__all__ = [
    "IMAGENET_TEMPLATES",
    "SUBSET_TEMPLATES",
    "SIMPLE_TEMPLATES",
    "IDENTITY_TEMPLATES",
    "TEMPLATE_SETS",
    "REFERENCE_TAGS",
    "NOUN_TAGS",
    "WORD_SETS",
    "word_tags",
    "build_prompts",
]

# The 80 prompt templates of CLIP's ImageNet zero-shot evaluation (same order as CLIP's
# notebook and GroupViT's ``full_imagenet_templates``).
IMAGENET_TEMPLATES = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)
assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80

# The 7-template subset CLIP recommends (GroupViT's ``sub_imagenet_template``).
SUBSET_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of a {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)
SIMPLE_TEMPLATES = ("a photo of a {}.",)
IDENTITY_TEMPLATES = ("{}",)
TEMPLATE_SETS = {
    "full": IMAGENET_TEMPLATES,
    "subset": SUBSET_TEMPLATES,
    "simple": SIMPLE_TEMPLATES,
    "identity": IDENTITY_TEMPLATES,
}

# Penn Treebank tags kept by GroupViT's released code (``get_tag`` call in builder.py): nouns
# (no NNPS) and all verb forms.
REFERENCE_TAGS = ("NN", "NNS", "NNP", "VB", "VBD", "VBG", "VBN", "VBP", "VBZ")
# "Nouns" as the paper describes: the four noun tags.
NOUN_TAGS = ("NN", "NNS", "NNP", "NNPS")
WORD_SETS = {"reference": REFERENCE_TAGS, "nouns": NOUN_TAGS}


def word_tags(word_set: str = "reference", override: Sequence[str] | None = None) -> frozenset[str]:
    """The tag set to keep: ``override`` if given, else ``WORD_SETS[word_set]``."""
    if override:
        return frozenset(override)
    if word_set not in WORD_SETS:
        raise ValueError(f"text.word_set must be one of {sorted(WORD_SETS)}, got {word_set!r}.")
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
