"""Whole-image scoring with the pooled image embedding: the pieces shared by the image-level
evaluations.

Zero-shot classification (:mod:`evaluation.classification`), image-level naming
(:mod:`evaluation.naming`) and the token baselines (:mod:`evaluation.token_baselines`) all feed
whole images at the model's input size and, for the first two, compare the pooled image embedding
(the one the contrastive losses train) with class prompt embeddings; group-level naming also
compares each final group's embedding (the one the segmentation uses).
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from groupvit_jax.models.config import GroupViTConfig
from groupvit_jax.models.groupvit import GroupViT, compose_group_maps, l2_normalize
from groupvit_jax.preprocessing import normalize
from groupvit_jax.segmenter import HIGHEST, resize_uint8


def class_similarities(
  variables, pixels: jnp.ndarray, class_embed: jnp.ndarray, *, config: GroupViTConfig
) -> jnp.ndarray:
  """Cosine similarity of each image's pooled embedding with each class embedding (traceable).

  Args:
    variables: the model's variables.
    pixels: float32 ``[B, S, S, 3]``, normalised.
    class_embed: ``[K, D]`` L2-normalised class embeddings.
    config: the model's config.

  Returns:
    float32 ``[B, K]``. The embedding is normalised in float32 whatever the model's dtype.
  """
  out = GroupViT(config).apply(variables, pixels, with_groups=False, method=GroupViT.encode_image)
  return cosine(out['image_embed'], class_embed)


def cosine(embeds: jnp.ndarray, class_embed: jnp.ndarray) -> jnp.ndarray:
  """``[..., D]`` unnormalised embeddings x ``[K, D]`` normalised classes -> float32 ``[..., K]``
  (normalised in float32 whatever the model's dtype)."""
  emb = l2_normalize(embeds.astype(jnp.float32))
  return jnp.einsum('...d,kd->...k', emb, class_embed.astype(jnp.float32), precision=HIGHEST)


def group_similarities(
  variables, pixels: jnp.ndarray, class_embed: jnp.ndarray, *, config: GroupViTConfig
) -> dict[str, jnp.ndarray]:
  """Cosine similarities of the pooled embedding and of every final group with each class
  (traceable).

  Args:
    variables: the variables of a model with at least one grouping stage.
    pixels: float32 ``[B, S, S, 3]``, normalised.
    class_embed: ``[K, D]`` L2-normalised class embeddings.
    config: the model's config.

  Returns:
    ``image`` float32 ``[B, K]`` (as :func:`class_similarities`), ``groups`` float32 ``[B, G, K]``
    (each final group's projected embedding, normalised in float32) and ``maps`` float32
    ``[B, h*w, G]``: each patch's soft weights over the final groups, composed across stages as
    the segmentation composes them.
  """
  out = GroupViT(config).apply(variables, pixels, with_groups=True, method=GroupViT.encode_image)
  return {
    'image': cosine(out['image_embed'], class_embed),
    'groups': cosine(out['group_embeds'], class_embed),
    'maps': compose_group_maps(out['assignments'])[-1],
  }


def checked_input_size(config: GroupViTConfig, input_size: Optional[int] = None) -> int:
  """The side whole images are resized to: ``input_size``, or the model's training ``image_size``.

  Raises ``ValueError`` unless it is a positive multiple of the patch size (the patch embedding
  would otherwise drop the last row and column of pixels without a word).
  """
  size = config.image.image_size if input_size is None else int(input_size)
  patch = config.image.patch_size
  if size <= 0 or size % patch:
    raise ValueError(f'input size {size} must be a positive multiple of the patch size {patch}')
  return size


def whole_image_batches(
  dataset: Sequence, total: int, batch_size: int, size: int
) -> Iterator[tuple[list, np.ndarray]]:
  """Fixed-size batches of whole images, for one compiled call per batch.

  Args:
    dataset: sequence of samples with an ``image`` uint8 ``[H, W, 3]``.
    total: use ``dataset[:total]``.
    batch_size: images per batch; the last batch is padded by repeating its last image.
    size: the model's input size; every image is resized whole (not cropped) to ``size x size``.

  Yields:
    ``(samples, pixels)``: the batch's samples (without padding) and float32
    ``[batch_size, size, size, 3]`` ImageNet-normalised pixels.
  """
  for start in range(0, total, batch_size):
    samples = [dataset[i] for i in range(start, min(total, start + batch_size))]
    pix = normalize(
      np.stack([resize_uint8(np.asarray(s.image, np.uint8), size, size) for s in samples])
    )
    pad = batch_size - len(samples)
    if pad:
      pix = np.concatenate([pix, np.repeat(pix[-1:], pad, axis=0)])
    yield samples, pix
