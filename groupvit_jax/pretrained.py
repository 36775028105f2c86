"""Inference on a converted or trained model: embeddings and group maps from plain inputs.

model = groupvit_jax.load_pretrained(DIR)
z_img = model.encode_image(uint8_images)      # [B, D], L2-normalised
z_txt = model.encode_text(['a photo of a dog.'])  # [N, D], L2-normalised
maps = model.group_maps(uint8_images)          # per stage [B, h, w, G_s] soft maps
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from groupvit_jax import preprocessing, pretrained_towers, prompts, segmenter
from groupvit_jax.checkpoints import store
from groupvit_jax.models.config import GroupViTConfig
from groupvit_jax.models.groupvit import GroupViT, compose_group_maps, l2_normalize
from groupvit_jax.tokenizer import default_tokenizer


class Pretrained:
  """A GroupViT with its variables and jitted inference functions (batch shapes are cached)."""

  kind = 'groupvit'

  def __init__(self, config: GroupViTConfig, variables: dict[str, Any]):
    self.config = config
    self.model = GroupViT(config)
    self.variables = variables
    self._tokenizer = None

  # --- jitted pieces -------------------------------------------------------------------------
  @functools.cached_property
  def _image_fn(self):
    def fn(variables, pixels):
      out = self.model.apply(variables, pixels, with_groups=False, method=GroupViT.encode_image)
      return l2_normalize(out['image_embed'])

    return jax.jit(fn)

  @functools.cached_property
  def _text_fn(self):
    def fn(variables, tokens):
      return l2_normalize(self.model.apply(variables, tokens, method=GroupViT.encode_text))

    return jax.jit(fn)

  @functools.cached_property
  def _maps_fn(self):
    def fn(variables, pixels):
      out = self.model.apply(variables, pixels, method=GroupViT.encode_image)
      h, w = out['grid']
      maps = compose_group_maps(out['assignments'])
      return [m.reshape(m.shape[0], h, w, m.shape[-1]) for m in maps]

    return jax.jit(fn)

  @functools.cached_property
  def image_embed_fn(self):
    """Traceable (variables, pixels [B, S, S, 3]) -> unnormalised image embeddings [B, D]."""
    model = self.model

    def fn(variables, pixels):
      out = model.apply(variables, pixels, with_groups=False, method=GroupViT.encode_image)
      return out['image_embed']

    return fn

  @property
  def image_size(self) -> int:
    return self.config.image.image_size

  def eval_transform(self, image) -> np.ndarray:
    """One uint8 image [H, W, 3] -> float32 [S, S, 3] (the release's eval transform)."""
    return preprocessing.eval_transform(image, self.image_size)

  def class_embeddings(
    self, class_names: Sequence[str], templates: prompts.Templates = 'simple'
  ) -> np.ndarray:
    """Zero-shot classifier [K, D]: the mean of each class's unnormalised template features,
    L2-normalised (the release's `build_text_embedding`)."""
    return prompts.class_embeddings(
      self.config, self.variables, self.tokenize, list(class_names), templates
    )

  @property
  def tokenizer(self):
    if self._tokenizer is None:
      self._tokenizer = default_tokenizer()
    return self._tokenizer

  # --- public API ----------------------------------------------------------------------------
  def preprocess(self, images) -> np.ndarray:
    """uint8 [B, H, W, 3] or a list of images -> float32 [B, S, S, 3] (the release's eval
    transform: short side to 256/224*S, centre crop S, ImageNet normalisation)."""
    return preprocessing.eval_batch(images, self.config.image.image_size)

  def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
    """Already normalised float pixels [B, H, W, 3] (H, W multiples of the patch) -> [B, D]."""
    return np.asarray(self._image_fn(self.variables, jnp.asarray(pixels, jnp.float32)))

  def encode_image(self, images) -> np.ndarray:
    """uint8 RGB images [B, H, W, 3] (or a list) -> L2-normalised embeddings [B, D]."""
    return self.encode_pixels(self.preprocess(images))

  def tokenize(self, texts: str | Sequence[str]) -> np.ndarray:
    """Strings -> int32 [N, context_length] CLIP token ids."""
    if isinstance(texts, str):
      texts = [texts]
    return self.tokenizer(list(texts), context_length=self.config.text.context_length)

  def encode_text(self, texts: str | Sequence[str]) -> np.ndarray:
    """Strings -> L2-normalised embeddings [N, D]."""
    return np.asarray(self._text_fn(self.variables, jnp.asarray(self.tokenize(texts))))

  def group_maps(self, images, preprocess: bool = True) -> list[np.ndarray]:
    """Per grouping stage, soft maps from patches to groups composed across stages.

    Args:
      images: uint8 [B, H, W, 3] (or a list) with `preprocess`, else normalised float pixels.
    Returns:
      list over stages of float32 [B, h, w, G_s] (h, w: patch grid; each pixel's weights over
      the stage's groups; argmax gives the group of each patch).
    """
    pixels = self.preprocess(images) if preprocess else np.asarray(images, np.float32)
    return [np.asarray(m) for m in self._maps_fn(self.variables, jnp.asarray(pixels))]

  def segment(
    self,
    image,
    class_names: Sequence[str],
    background_threshold: float | None = None,
    mode: str = 'slide',
    **kwargs,
  ) -> np.ndarray:
    """Zero-shot segmentation of one image with any vocabulary (the released protocol).

    Args:
      image: uint8 RGB [H, W, 3].
      class_names: N class names, put into the prompt "a photo of a {}." (see `templates`).
      background_threshold: None: every pixel gets one of the N classes, labels 0..N-1. A float
        (the release uses 0.95 on VOC and COCO, 0.35 on Context): label 0 is background (a pixel
        whose best class score is below min(threshold, the window's best group score)) and the
        classes are labels 1..N.
      mode: 'slide' (448x448 windows, stride 224, after resizing the short side to 448: the
        benchmarks' protocol) or 'whole' (the whole resized image at once, as the release's demo).
      **kwargs: `templates` (a template-set name or list), `scales`, `flip`, and other
        `groupvit_jax.segmenter.Protocol` fields.
    Returns:
      int32 [H, W] label map.
    """
    templates = kwargs.pop('templates', 'simple')
    cache = self.__dict__.setdefault('_segment_class_embeds', {})
    key = (
      id(self.variables),
      tuple(class_names),
      templates if isinstance(templates, str) else tuple(templates),
    )
    if key not in cache:
      cache.clear()
      cache[key] = prompts.class_embeddings(
        self.config, self.variables, self.tokenize, list(class_names), templates
      )
    return segmenter.segment(
      self,
      image,
      class_names,
      background_threshold,
      mode,
      templates=templates,
      class_embed=cache[key],
      **kwargs,
    )


def load_pretrained(directory: str, dtype: str | None = None):
  """Loads a model directory written by `python -m groupvit_jax.convert` or the trainer.

  Args:
    directory: the model directory.
    dtype: compute dtype of the matmuls, 'float32' or 'bfloat16' (norms, softmaxes and the
      embeddings stay float32); default: as saved.
  Returns:
    the object for the directory's model kind: `Pretrained` (GroupViT), or from
    `groupvit_jax.pretrained_towers` `PretrainedCLIP`, `PretrainedViT` (DINO / timm) or
    `PretrainedMAE`, `groupvit_jax.pretrained_scg.PretrainedSCG` or
    `groupvit_jax.pretrained_zeroseg.PretrainedZeroSeg`.
  """
  config, variables = store.load_model(directory)
  kind = store.kind_of(config)
  if dtype is not None:
    config = store.with_dtype(config, dtype)
  if kind == 'groupvit':
    return Pretrained(config, variables)
  if kind == 'scg':
    from groupvit_jax.pretrained_scg import PretrainedSCG  # it imports this module's peers

    return PretrainedSCG(config, variables)
  if kind == 'zeroseg':
    from groupvit_jax.pretrained_zeroseg import PretrainedZeroSeg  # it imports this module's peers

    return PretrainedZeroSeg(config, variables)
  return pretrained_towers.TOWER_CLASSES[kind](config, variables)
