"""SCG inference: regions of a grouper, named by a region-token CLIP.

scg = PretrainedSCG.from_towers(CLIP_DIR, DINO_DIR)     # no training: region tokens = class token
scg = groupvit_jax.load_pretrained(SCG_DIR)             # a trained / saved SCG model directory
labels = scg.segment(image, ['cat', 'dog'], background_words=['grass', 'sky'])
out = scg.regions(uint8_images)   # {'region_ids' [B, H, W], 'region_embeds' [B, M, E], ...}

Both towers are converted model directories (`python -m groupvit_jax.convert`): the CLIP names the
regions; the grouper (DINO / timm ViT by default, an MAE, or a CLIP) clusters. See
`groupvit_jax.models.scg` for the exact algorithm and docs/scg.md for the choices.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from groupvit_jax import prompts, segmenter
from groupvit_jax.checkpoints import store
from groupvit_jax.models import kmeans
from groupvit_jax.models import scg as scg_lib
from groupvit_jax.preprocessing import resize_square
from groupvit_jax.pretrained_towers import NamedByCLIP, PretrainedCLIP


class PretrainedSCG(NamedByCLIP):
  """An SCG model: `config` (SCGConfig) and `variables` ({'clip', 'grouper', 'params'[,
  'centroids']})."""

  kind = 'scg'

  def __init__(self, config: scg_lib.SCGConfig, variables: dict[str, Any]):
    config.validate()
    self.config = config
    self.variables = prompts.local_variables(variables)
    self._clip = PretrainedCLIP(config.clip, {'params': self.variables['clip']['params']})

  # --- construction --------------------------------------------------------------------------
  @classmethod
  def from_towers(
    cls,
    clip_dir: str,
    grouper_dir: str,
    dtype: str | None = None,
    centroids: np.ndarray | None = None,
    **overrides,
  ) -> 'PretrainedSCG':
    """SCG from a converted CLIP and a converted grouper, without training (the paper's "no
    fine-tuning" row): region tokens are the class token, the temperature is the CLIP's.

    Args:
      clip_dir, grouper_dir: model directories of a CLIP and of a ViT / MAE / CLIP.
      dtype: compute dtype of both towers ('float32' or 'bfloat16'), default as saved.
      centroids: [M, C] dataset-level centroids (`fit_dataset_centroids`); sets
        centroids='dataset'.
      **overrides: SCGConfig fields (num_regions, kmeans_iters, grouper_layer, masking).
    """
    if centroids is not None:
      overrides['centroids'] = 'dataset'
    cfg, clip_vars, grouper_vars = store.load_scg_towers(clip_dir, grouper_dir, dtype, **overrides)
    variables = {
      'clip': clip_vars,
      'grouper': grouper_vars,
      'params': scg_lib.init_params(cfg, clip_vars['params']),
    }
    if cfg.centroids == 'dataset':
      variables['centroids'] = jnp.asarray(scg_lib.check_centroids(cfg, centroids))
    return cls(cfg, variables)

  def with_centroids(self, centroids: np.ndarray) -> 'PretrainedSCG':
    """The same model assigning every image to dataset-level `centroids` [M, C]."""
    cfg = dataclasses.replace(self.config, centroids='dataset', num_regions=len(centroids))
    variables = dict(self.variables, centroids=jnp.asarray(scg_lib.check_centroids(cfg, centroids)))
    if cfg.num_regions != self.config.num_regions:
      raise ValueError(
        f'{len(centroids)} centroids for {self.config.num_regions} region tokens: fit as many '
        'centroids as the model has regions'
      )
    return PretrainedSCG(cfg, variables)

  def save(self, directory: str, overwrite: bool = False) -> str:
    """Writes a self-contained model directory (`groupvit_jax.load_pretrained` reads it)."""
    return store.save_model(directory, self.config, self.variables, overwrite=overwrite)

  # --- images ----------------------------------------------------------------------------------
  @property
  def naming_input_size(self) -> int:
    """The side whole images are resized to for image-level naming: the CLIP's training size."""
    return self.config.clip.vision.image_size

  def image_embeddings(self, images: np.ndarray) -> np.ndarray:
    """uint8 [B, S, S, 3] -> the recognising CLIP's own image embeddings [B, E]: SCG names
    regions, and its image-level naming is its CLIP's."""
    return self._clip.image_embeddings(images)

  @functools.cached_property
  def _regions_fn(self):
    cfg = self.config

    def fn(variables, pixels):
      out = scg_lib.forward(cfg, variables, pixels)
      h, w = pixels.shape[1:3]
      out['region_ids'] = scg_lib.resize_scores(out['scores'], (h, w))
      return out

    return jax.jit(fn)

  def regions(self, images, size: int | None = None) -> dict[str, np.ndarray]:
    """Regions of uint8 images [B, H, W, 3] (or a list), resized to `size` x `size` (default: the
    CLIP's training size rounded to both towers' patch multiple).

    Returns: `region_ids` int32 [B, S, S] (high-resolution masks), `scores` [B, h, w, M]
    (grouper grid), `region_embeds` [B, M, E] (not normalised), `present` bool [B, M].
    """
    q = self.config.patch_multiple
    size = size or self.config.clip.vision.image_size
    size = max(q, size // q * q)
    batch = [resize_square(im, size) for im in images]
    out = self._regions_fn(self.variables, jnp.asarray(np.stack(batch)))
    return {k: np.asarray(v) for k, v in out.items()}

  def segment(
    self,
    image,
    class_names: Sequence[str],
    background_threshold: float | None = None,
    mode: str = 'slide',
    **kwargs,
  ) -> np.ndarray:
    """Zero-shot segmentation of one uint8 image [H, W, 3] (the released protocol's windows):
    each region takes its best class. Background: `background_words=[...]` (the paper's rule: a
    region named as one of them is background) or `background_threshold`; either makes label 0
    background and the classes 1..N. Other kwargs: `templates` and `Protocol` fields.
    Returns int32 [H, W]."""
    return segmenter.segment(self, image, class_names, background_threshold, mode, **kwargs)


def fit_dataset_centroids(
  model: PretrainedSCG,
  images: Sequence[np.ndarray],
  size: int = 224,
  iters: int = 50,
  batch_size: int = 16,
) -> np.ndarray:
  """Dataset-level centroids [M, C]: spherical k-means over the grouper's patch features of
  `images` (uint8, each resized to `size`); save them with `model.with_centroids(c).save(DIR)`."""
  cfg = model.config
  q = cfg.patch_multiple
  size = max(q, size // q * q)
  fn = jax.jit(functools.partial(scg_lib.grouper_features, cfg))
  feats = []
  for i in range(0, len(images), batch_size):
    chunk = [resize_square(im, size) for im in images[i : i + batch_size]]
    f = np.asarray(fn(model.variables['grouper'], jnp.asarray(np.stack(chunk))))
    feats.append(f.reshape(-1, f.shape[-1]))
  if not feats:
    raise ValueError('no images to fit centroids on')
  return kmeans.fit_centroids(np.concatenate(feats), cfg.num_regions, iters)
