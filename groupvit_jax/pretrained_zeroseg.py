"""ZeroSeg inference: the student's segments, named against its teacher CLIP's text embeddings.

model = groupvit_jax.load_pretrained(ZEROSEG_DIR)      # the trainer's WORKDIR/model
labels = model.segment(image, ['cat', 'dog'], background_threshold=0.95)
out = model.groups(uint8_images)   # {'group_ids' [B, S, S], 'segment_embeds' [B, G, E], ...}

Segmentation runs the released GroupViT protocol (`groupvit_jax.segmenter`) with the segments in
the place of GroupViT's final groups and the global vector in the place of its pooled embedding;
the temperature is the teacher's. See `groupvit_jax.models.zeroseg` for the student.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from groupvit_jax import prompts, segmenter
from groupvit_jax.checkpoints import store
from groupvit_jax.models import zeroseg as zeroseg_lib
from groupvit_jax.models.groupvit import compose_group_maps
from groupvit_jax.preprocessing import IMAGENET_MEAN, IMAGENET_STD, resize_square
from groupvit_jax.pretrained_towers import NamedByCLIP, PretrainedCLIP


class PretrainedZeroSeg(NamedByCLIP):
  """A ZeroSeg model: `config` (ZeroSegConfig) and `variables` ({'params', 'teacher'})."""

  kind = 'zeroseg'

  def __init__(self, config: zeroseg_lib.ZeroSegConfig, variables: dict[str, Any]):
    config.validate()
    missing = sorted({'params', 'teacher'} - set(variables))
    if missing:
      raise ValueError(f'ZeroSeg variables lack {missing}: expected the student and its teacher')
    self.config = config
    self.variables = prompts.local_variables(variables)
    self._clip = PretrainedCLIP(config.teacher, {'params': self.variables['teacher']['params']})

  def save(self, directory: str, overwrite: bool = False) -> str:
    """Writes a self-contained model directory (`groupvit_jax.load_pretrained` reads it)."""
    return store.save_model(directory, self.config, self.variables, overwrite=overwrite)

  # --- images ----------------------------------------------------------------------------------
  @functools.cached_property
  def _groups_fn(self):
    student = zeroseg_lib.ZeroSegStudent(self.config)

    def fn(params, pixels):
      x = (pixels.astype(jnp.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
      out = student.apply({'params': params}, x, method=zeroseg_lib.ZeroSegStudent.encode_image)
      h, w = out.pop('grid')
      maps = compose_group_maps(out.pop('assignments'))
      b = x.shape[0]
      soft = maps[-1].reshape(b, h, w, -1)
      up = jax.image.resize(soft, (b, *pixels.shape[1:3], soft.shape[-1]), 'bilinear')
      out['group_ids'] = jnp.argmax(up, axis=-1).astype(jnp.int32)
      out['group_maps'] = soft
      out.pop('segment_tokens')
      return out

    return jax.jit(fn)

  @functools.cached_property
  def _stage_maps_fn(self):
    student = zeroseg_lib.ZeroSegStudent(self.config)

    def fn(params, pixels):
      x = (pixels.astype(jnp.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
      out = student.apply({'params': params}, x, method=zeroseg_lib.ZeroSegStudent.encode_image)
      h, w = out['grid']
      maps = compose_group_maps(out['assignments'])
      return [m.reshape(m.shape[0], h, w, m.shape[-1]) for m in maps]

    return jax.jit(fn)

  def stage_maps(self, pixels: np.ndarray) -> list[np.ndarray]:
    """uint8 [B, S, S, 3] (S a multiple of the patch size) -> per grouping stage the soft
    patch-to-group maps composed across stages, [B, h, w, G_s]."""
    maps = self._stage_maps_fn(self.variables['params'], jnp.asarray(pixels))
    return [np.asarray(m) for m in maps]

  def groups(self, images, size: int | None = None) -> dict[str, np.ndarray]:
    """Segments of uint8 images [B, H, W, 3] (or a list), resized to `size` x `size` (default the
    training size, rounded to the patch size).

    Returns: `group_ids` int32 [B, S, S] (each pixel's segment), `group_maps` [B, h, w, G] (soft
    patch-to-segment maps), `segment_embeds` [B, G, E], `global_embed` [B, E].
    """
    p = self.config.encoder.patch_size
    size = size or self.config.encoder.image_size
    size = max(p, size // p * p)
    batch = np.stack([resize_square(im, size) for im in images])
    out = self._groups_fn(self.variables['params'], jnp.asarray(batch))
    return {k: np.asarray(v) for k, v in out.items()}

  @property
  def naming_input_size(self) -> int:
    """The side whole images are resized to for image-level naming: the training size."""
    return self.config.encoder.image_size

  def image_embeddings(self, images: np.ndarray) -> np.ndarray:
    """uint8 [B, S, S, 3] at the input size -> the global vectors [B, E] (image-level naming)."""
    return self.groups(images, size=np.asarray(images).shape[1])['global_embed']

  def segment(
    self,
    image,
    class_names: Sequence[str],
    background_threshold: float | None = None,
    mode: str = 'slide',
    **kwargs,
  ) -> np.ndarray:
    """Zero-shot segmentation of one uint8 image [H, W, 3] with the released protocol (the paper's
    thresholds: 0.95 VOC, 0.05 Context, 0.35 COCO-Object); `background_words=[...]` is the
    vocabulary rule instead. Other kwargs: `templates` and `Protocol` fields. Returns int32
    [H, W]."""
    return segmenter.segment(self, image, class_names, background_threshold, mode, **kwargs)
