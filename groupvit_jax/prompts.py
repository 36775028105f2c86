"""Prompt templates and zero-shot text classifiers (class-name embeddings) of the released GroupViT.

Template sets, by the names the release's configs use:

* ``simple``: ``"a photo of a {}."``: zero-shot segmentation (all three benchmarks).
* ``subset``: the 7 templates of the release's ImageNet zero-shot numbers.
* ``full``: CLIP's 80 ImageNet templates (also the prompt templates of training).
* ``identity``: the bare class name.

A class embedding is built as the release's ``build_text_embedding`` does: encode every
``template.format(name)``, take the projected text features **before** L2 normalisation, average
them over the templates, then L2-normalise the mean.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from groupvit_jax.models.config import GroupViTConfig
from groupvit_jax.models.groupvit import GroupViT

__all__ = [
  'TEMPLATE_SETS',
  'IDENTITY_TEMPLATES',
  'SIMPLE_TEMPLATES',
  'SUBSET_TEMPLATES',
  'IMAGENET_TEMPLATES',
  'get_templates',
  'build_prompts',
  'encode_texts',
  'class_embeddings',
  'local_variables',
]

# The 80 prompt templates of CLIP's ImageNet zero-shot evaluation (same order as CLIP's
# notebook and GroupViT's ``full_imagenet_templates``).
IMAGENET_TEMPLATES = (
  'a bad photo of a {}.',
  'a photo of many {}.',
  'a sculpture of a {}.',
  'a photo of the hard to see {}.',
  'a low resolution photo of the {}.',
  'a rendering of a {}.',
  'graffiti of a {}.',
  'a bad photo of the {}.',
  'a cropped photo of the {}.',
  'a tattoo of a {}.',
  'the embroidered {}.',
  'a photo of a hard to see {}.',
  'a bright photo of a {}.',
  'a photo of a clean {}.',
  'a photo of a dirty {}.',
  'a dark photo of the {}.',
  'a drawing of a {}.',
  'a photo of my {}.',
  'the plastic {}.',
  'a photo of the cool {}.',
  'a close-up photo of a {}.',
  'a black and white photo of the {}.',
  'a painting of the {}.',
  'a painting of a {}.',
  'a pixelated photo of the {}.',
  'a sculpture of the {}.',
  'a bright photo of the {}.',
  'a cropped photo of a {}.',
  'a plastic {}.',
  'a photo of the dirty {}.',
  'a jpeg corrupted photo of a {}.',
  'a blurry photo of the {}.',
  'a photo of the {}.',
  'a good photo of the {}.',
  'a rendering of the {}.',
  'a {} in a video game.',
  'a photo of one {}.',
  'a doodle of a {}.',
  'a close-up photo of the {}.',
  'a photo of a {}.',
  'the origami {}.',
  'the {} in a video game.',
  'a sketch of a {}.',
  'a doodle of the {}.',
  'a origami {}.',
  'a low resolution photo of a {}.',
  'the toy {}.',
  'a rendition of the {}.',
  'a photo of the clean {}.',
  'a photo of a large {}.',
  'a rendition of a {}.',
  'a photo of a nice {}.',
  'a photo of a weird {}.',
  'a blurry photo of a {}.',
  'a cartoon {}.',
  'art of a {}.',
  'a sketch of the {}.',
  'a embroidered {}.',
  'a pixelated photo of a {}.',
  'itap of the {}.',
  'a jpeg corrupted photo of the {}.',
  'a good photo of a {}.',
  'a plushie {}.',
  'a photo of the nice {}.',
  'a photo of the small {}.',
  'a photo of the weird {}.',
  'the cartoon {}.',
  'art of the {}.',
  'a drawing of the {}.',
  'a photo of the large {}.',
  'a black and white photo of a {}.',
  'the plushie {}.',
  'a dark photo of a {}.',
  'itap of a {}.',
  'graffiti of the {}.',
  'a toy {}.',
  'itap of my {}.',
  'a photo of a cool {}.',
  'a photo of a small {}.',
  'a tattoo of the {}.',
)
assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80

# The 7-template subset CLIP recommends (GroupViT's ``sub_imagenet_template``).
SUBSET_TEMPLATES = (
  'itap of a {}.',
  'a bad photo of a {}.',
  'a origami {}.',
  'a photo of the large {}.',
  'a {} in a video game.',
  'art of the {}.',
  'a photo of the small {}.',
)
SIMPLE_TEMPLATES = ('a photo of a {}.',)
IDENTITY_TEMPLATES = ('{}',)
TEMPLATE_SETS = {
  'full': IMAGENET_TEMPLATES,
  'subset': SUBSET_TEMPLATES,
  'simple': SIMPLE_TEMPLATES,
  'identity': IDENTITY_TEMPLATES,
}


Templates = Union[str, Sequence[str]]


def get_templates(templates: Templates) -> tuple[str, ...]:
  """A template-set name (``simple``, ``subset``, ``full``, ``identity``) or an explicit list of
  format strings with one ``{}`` each -> tuple of templates."""
  if isinstance(templates, str):
    if templates not in TEMPLATE_SETS:
      raise KeyError(
        f'unknown template set {templates!r}; known: {", ".join(TEMPLATE_SETS)} '
        "(or pass a list of templates such as ['a photo of a {}.'])"
      )
    return TEMPLATE_SETS[templates]
  out = tuple(templates)
  if not out:
    raise ValueError('no templates given')
  for t in out:
    if t.count('{}') != 1:
      raise ValueError(f"template {t!r} must contain exactly one '{{}}'")
  return out


def build_prompts(class_names: Sequence[str], templates: Templates = 'simple') -> list[str]:
  """``N`` class names x ``T`` templates -> ``N * T`` prompts, class-major (class 0's T prompts
  first)."""
  ts = get_templates(templates)
  return [t.format(name) for name in class_names for t in ts]


@functools.partial(jax.jit, static_argnames=('config',))
def _text_features(variables: Any, tokens: jnp.ndarray, *, config: GroupViTConfig) -> jnp.ndarray:
  """tokens int32 [N, L] -> projected, *unnormalised* text features float32 [N, D]."""
  out = GroupViT(config).apply(variables, tokens, method=GroupViT.encode_text)
  return out.astype(jnp.float32)


def local_variables(variables: Any, placement: Any = None) -> Any:
  """The variables as arrays on this process's devices: gathered to the host first when they are
  global multi-host arrays, then ``jax.device_put`` onto ``placement`` (a device or sharding;
  default: the first local device). Normalising the placement keeps jit cache keys stable, so
  numpy, single-device or sharded variables of the same shapes all reuse one compilation."""
  leaves = jax.tree.leaves(variables)
  if not all(not isinstance(x, jax.Array) or x.is_fully_addressable for x in leaves):
    variables = multihost_utils.process_allgather(variables, tiled=True)
  return jax.device_put(variables, placement if placement is not None else jax.local_devices()[0])


def _bucket(n: int, chunk: int) -> int:
  """Padded batch size for n prompts: next power of two (>= 8) up to `chunk`."""
  size = 8
  while size < min(n, chunk):
    size *= 2
  return min(size, chunk)


def run_in_buckets(fn: Callable[[np.ndarray], Any], tokens: np.ndarray, chunk: int = 256):
  """``fn`` over int32 ``[N, L]`` tokens in zero-padded chunks of a few fixed sizes (powers of two
  up to ``chunk``), so that vocabularies of any size reuse a handful of compiled shapes ->
  float32 ``[N, D]``."""
  tokens = np.asarray(tokens, np.int32)
  n = tokens.shape[0]
  size = _bucket(n, chunk)
  outs = []
  for start in range(0, n, size):
    part = tokens[start : start + size]
    pad = size - part.shape[0]
    if pad:
      part = np.concatenate([part, np.zeros((pad, part.shape[1]), np.int32)])
    outs.append(np.asarray(fn(part), np.float32)[: size - pad])
  return np.concatenate(outs, axis=0)


def encode_texts(
  config: GroupViTConfig, variables: Any, tokens: np.ndarray, chunk: int = 256
) -> np.ndarray:
  """Unnormalised projected text features of ``tokens`` int32 ``[N, L]`` -> float32 ``[N, D]``.

  Runs in fixed-size padded chunks (`run_in_buckets`); the jitted function is shared by every
  model of the same config (new variables of the same shapes do not recompile).
  """
  variables = local_variables(variables)
  return run_in_buckets(lambda t: _text_features(variables, t, config=config), tokens, chunk)


def pool_templates(feats: np.ndarray, num_classes: int, normalize_each: bool = False) -> np.ndarray:
  """Text features ``[K * T, D]`` (class-major, as `build_prompts`) -> ``[K, D]`` unit class
  embeddings: the mean over each class's T templates, L2-normalised. ``normalize_each``
  normalises every template's feature before the mean (OpenAI CLIP's zero-shot recipe); without
  it the unnormalised features are averaged (GroupViT's ``build_text_embedding``)."""
  feats = np.asarray(feats, np.float32).reshape(num_classes, -1, feats.shape[-1])
  if normalize_each:
    feats = feats / np.maximum(np.linalg.norm(feats, axis=-1, keepdims=True), 1e-12)
  mean = feats.mean(axis=1)
  norm = np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)
  return (mean / norm).astype(np.float32)


def class_embeddings(
  config: GroupViTConfig,
  variables: Any,
  tokenize: Callable[[list[str]], np.ndarray],
  class_names: Sequence[str],
  templates: Templates = 'simple',
) -> np.ndarray:
  """Zero-shot classifier: one L2-normalised embedding per class name.

  Args:
    config, variables: the model.
    tokenize: strings -> int32 ``[N, L]`` token ids (e.g. ``Pretrained.tokenize``).
    class_names: ``K`` names put into the templates.
    templates: a template-set name or a list of templates.

  Returns:
    float32 ``[K, D]``: mean over templates of the unnormalised text features, then L2-normalised
    (the release's ``build_text_embedding``).
  """
  names = list(class_names)
  if not names:
    raise ValueError('no class names given')
  ts = get_templates(templates)
  feats = encode_texts(config, variables, tokenize(build_prompts(names, ts)))
  return pool_templates(feats, len(names))
