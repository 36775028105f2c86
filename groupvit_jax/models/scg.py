"""Spatially-consistent grouping (SCG, Zhang et al. 2023): k-means regions of a self-supervised ViT,
named by a CLIP image tower whose region tokens see only their region.

One SCG forward on a batch of images [B, H, W, 3] (pixel values 0..255):

1. **Grouping.** The grouper (a converted DINO / timm ViT, an MAE encoder, or a CLIP image tower)
   gives patch features [B, h, w, C] (its final-norm output, or block `grouper_layer`'s). Spherical
   k-means with M clusters per image (`models.kmeans`), or the nearest of M dataset-level
   centroids, gives score maps [B, h, w, M] (cosine of each patch to each centre).
2. **Regions on CLIP's grid.** The score maps are resized bilinearly (PyTorch `align_corners=False`
   rule) to CLIP's patch grid and arg-maxed: each CLIP patch joins exactly one region, the one its
   bilinearly interpolated grouper feature is nearest to (the same rule that gives the
   high-resolution masks at pixel resolution, `kmeans.upsample_assign`, so the region a CLIP patch
   is counted in is the region of the pixel at its centre when both grids have the same patch
   size).
3. **Recognition** (`masking`):
   * `'context'` (the paper's context-aware masking, in the MaskCLIP form): M region tokens join
     the class and patch tokens in one pass. Tokens are ordered [class, patches, regions].
     Class and patch tokens attend to the class and patch tokens as in plain CLIP; region token m
     attends to the class token and to the patches of region m; no token attends to any region
     token, not even the region token itself. Region token m's output after `ln_post` and `proj`
     is region m's embedding. A region with no CLIP patch still sees the class token (no row of
     the mask is empty).
   * `'tokens'` (masking tokens): the same region tokens, but patch tokens also attend only to the
     class token and to the patches of their own region, so no feature crosses a region border
     (one pass; our reading of the paper's Table 3 row).
   * `'pixels'` (masking pixels): M passes of plain CLIP, pass m on the image with every pixel
     outside region m set to the normalisation mean (0 after normalisation); the class token's
     embedding names the region. Pixel masks are the high-resolution region ids at CLIP's input.
   Region tokens are learned ([M, W], `region_tokens`); untrained they are the class token plus its
   position embedding (`initial_region_tokens`), so at step 0 each region token is the class
   token restricted to its region.

The CLIP position embedding follows other input grids bicubically when the converted CLIP does not
interpolate (`pos_interpolation='none'`, as OpenAI CLIP): SCG runs CLIP at the evaluation
protocol's 448-pixel windows.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from groupvit_jax.models import kmeans
from groupvit_jax.models.clip import CLIP, CLIPConfig
from groupvit_jax.models.config import ConfigError, JsonConfig, _build, _to_plain
from groupvit_jax.models.mae import MAE, MAEConfig
from groupvit_jax.models.vit import VisionTransformer, ViTConfig
from groupvit_jax.ops.resize import resize_matrix

MASKINGS = ('context', 'tokens', 'pixels')
CENTROIDS = ('per_image', 'dataset')
NAMINGS = ('region', 'noun')
GROUPER_KINDS = {'vit': ViTConfig, 'mae': MAEConfig, 'clip': CLIPConfig}
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


@dataclasses.dataclass(frozen=True)
class SCGConfig(JsonConfig):
  """SCG: the recognising CLIP, the grouper and the grouping / masking choices.

  clip: the CLIP's config (its image tower gets the region tokens).
  grouper_kind / grouper: 'vit' (DINO / timm), 'mae' (its encoder) or 'clip' (its image tower)
    and that model's config.
  num_regions: M, k-means clusters and region tokens (27 as the paper).
  kmeans_iters: Lloyd iterations of the per-image k-means.
  grouper_layer: None: the grouper's final-norm patch features; an int: block `grouper_layer`'s
    output (negative from the end) before the final norm.
  centroids: 'per_image' (k-means on every image) or 'dataset' (assign to M centroids fitted once,
    stored with the model as variables['centroids']).
  masking: 'context', 'tokens' or 'pixels' (module docstring).
  image_top_k: 0 (the paper's): every region takes its best class. k > 0 (our extension, GroupViT's
    image-level filter): a region's class is chosen among the k foreground classes that the whole
    image's CLIP embedding ranks highest (background words stay allowed).
  naming: who picks. 'region' (the paper's): every region takes its best class. 'noun' (our
    extension; needs image_top_k): each of the image's top-k classes claims the present region
    closest to it, a claimed region takes the closest class that claimed it, and every region no
    class claimed is background (`groupvit_jax.scg_inference.noun_claims`).
  """

  clip: CLIPConfig = dataclasses.field(default_factory=CLIPConfig)
  grouper_kind: str = 'vit'
  grouper: Any = dataclasses.field(default_factory=ViTConfig)
  num_regions: int = 27
  kmeans_iters: int = 20
  grouper_layer: int | None = None
  centroids: str = 'per_image'
  masking: str = 'context'
  image_top_k: int = 0
  naming: str = 'region'

  @property
  def grouper_vit(self) -> ViTConfig:
    """The grouper's ViT (the MAE encoder, the CLIP image tower)."""
    if self.grouper_kind == 'mae':
      return self.grouper.encoder
    if self.grouper_kind == 'clip':
      return self.grouper.vision
    return self.grouper

  @property
  def patch_multiple(self) -> int:
    """Input sides must be multiples of both towers' patch sizes."""
    return math.lcm(self.clip.vision.patch_size, self.grouper_vit.patch_size)

  def validate(self) -> None:
    self.clip.validate()
    if self.grouper_kind not in GROUPER_KINDS:
      raise ConfigError(
        f'grouper_kind must be one of {sorted(GROUPER_KINDS)}, got {self.grouper_kind!r}'
      )
    if not isinstance(self.grouper, GROUPER_KINDS[self.grouper_kind]):
      raise ConfigError(f'grouper is a {type(self.grouper).__name__}, not a {self.grouper_kind}')
    self.grouper.validate()
    for name, value, allowed in (
      ('masking', self.masking, MASKINGS),
      ('centroids', self.centroids, CENTROIDS),
    ):
      if value not in allowed:
        raise ConfigError(f'{name} must be one of {allowed}, got {value!r}')
    if self.naming not in NAMINGS:
      raise ConfigError(f'naming must be one of {NAMINGS}, got {self.naming!r}')
    if self.naming == 'noun' and not self.image_top_k:
      raise ConfigError("naming='noun' needs image_top_k >= 1: the image's classes do the claiming")
    if self.num_regions < 1 or self.kmeans_iters < 0 or self.image_top_k < 0:
      raise ConfigError('num_regions must be >= 1, kmeans_iters and image_top_k >= 0')
    depth = self.grouper_vit.depth
    if self.grouper_layer is not None and not -depth <= self.grouper_layer < depth:
      raise ConfigError(f'grouper_layer {self.grouper_layer} is out of range for {depth} blocks')

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d['grouper'] = self.grouper.to_dict()
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'SCGConfig':
    """From a nested mapping (a model_config.json); unknown keys are an error."""
    d = dict(_to_plain(d))
    clip = CLIPConfig.from_dict(d.pop('clip', {}))
    kind = d.get('grouper_kind', 'vit')
    if kind not in GROUPER_KINDS:
      raise ConfigError(f'grouper_kind must be one of {sorted(GROUPER_KINDS)}, got {kind!r}')
    grouper_cls = GROUPER_KINDS[kind]
    raw = d.pop('grouper', {})
    grouper = (
      grouper_cls.from_dict(raw, 'scg.grouper')
      if grouper_cls is ViTConfig
      else grouper_cls.from_dict(raw)
    )
    cfg = _build(cls, d, 'scg', clip=clip, grouper=grouper)
    cfg.validate()
    return cfg


def clip_for_any_grid(config: CLIPConfig) -> CLIPConfig:
  """`config` with bicubic position interpolation where it had none (OpenAI CLIP)."""
  if config.vision.pos_interpolation != 'none':
    return config
  vision = dataclasses.replace(config.vision, pos_interpolation='bicubic')
  return dataclasses.replace(config, vision=vision)


def _grouper_for_any_grid(cfg: SCGConfig):
  if cfg.grouper_kind == 'clip':
    return clip_for_any_grid(cfg.grouper)
  if cfg.grouper_vit.pos_interpolation == 'none':
    vit = dataclasses.replace(cfg.grouper_vit, pos_interpolation='bicubic')
    return dataclasses.replace(cfg.grouper, encoder=vit) if cfg.grouper_kind == 'mae' else vit
  return cfg.grouper


def initial_region_tokens(clip_params: Mapping[str, Any], num_regions: int) -> jnp.ndarray:
  """[M, W]: M copies of the class token plus its position embedding (the residual stream value
  of the class token before `ln_pre`)."""
  visual = clip_params['visual']
  cls = (
    jnp.asarray(visual['cls_token'], jnp.float32)[0, 0]
    + jnp.asarray(visual['pos_embed'], jnp.float32)[0, 0]
  )
  return jnp.broadcast_to(cls, (num_regions, cls.shape[-1]))


def region_attention_mask(region_ids: jnp.ndarray, num_regions: int, masking: str) -> jnp.ndarray:
  """The attention mask of the region-token forward pass.

  Args:
    region_ids: int [B, N]: the region of each CLIP patch (row-major).
    num_regions: M.
    masking: 'context' or 'tokens' (module docstring).
  Returns:
    bool [B, 1, T, T], T = 1 + N + M, over [class, patches, regions]; True = may attend.
  """
  if masking not in ('context', 'tokens'):
    raise ValueError(f"masking must be 'context' or 'tokens' for one pass, got {masking!r}")
  b, n = region_ids.shape
  m = num_regions
  member = region_ids[:, None, :] == jnp.arange(m)[None, :, None]  # [B, M, N]
  ones = lambda *s: jnp.ones(s, bool)  # noqa: E731
  zeros = lambda *s: jnp.zeros(s, bool)  # noqa: E731
  if masking == 'context':
    patch_rows = ones(b, n, n)
  else:
    patch_rows = region_ids[:, :, None] == region_ids[:, None, :]
  # Row blocks: class, patches, regions; column blocks: class, patches, regions.
  cls_row = jnp.concatenate([ones(b, 1, 1), ones(b, 1, n), zeros(b, 1, m)], axis=2)
  patch_block = jnp.concatenate([ones(b, n, 1), patch_rows, zeros(b, n, m)], axis=2)
  region_block = jnp.concatenate([ones(b, m, 1), member, zeros(b, m, m)], axis=2)
  return jnp.concatenate([cls_row, patch_block, region_block], axis=1)[:, None]


def normalize_pixels(pixels: jnp.ndarray, mean: np.ndarray, std: np.ndarray) -> jnp.ndarray:
  """[B, H, W, 3] pixel values 0..255 (uint8 or float) -> float32 (x / 255 - mean) / std."""
  return (pixels.astype(jnp.float32) / 255.0 - mean) / std


def grouper_features(cfg: SCGConfig, variables: Any, pixels: jnp.ndarray) -> jnp.ndarray:
  """The grouper's patch features: pixels [B, H, W, 3] (0..255) -> [B, h, w, C] float32."""
  model_cfg = _grouper_for_any_grid(cfg)
  if cfg.grouper_kind == 'clip':
    x = normalize_pixels(pixels, CLIP_MEAN, CLIP_STD)
    out = CLIP(model_cfg).apply(variables, x, cfg.grouper_layer, method=CLIP.image_features)
  else:
    x = normalize_pixels(pixels, IMAGENET_MEAN, IMAGENET_STD)
    if cfg.grouper_kind == 'mae':
      out = MAE(model_cfg).apply(variables, x, cfg.grouper_layer, method=MAE.encode)
    else:
      out = VisionTransformer(model_cfg).apply(variables, x, cfg.grouper_layer)
  if cfg.grouper_layer is None:
    return out['patches'].astype(jnp.float32)
  b, h, w, c = out['patches'].shape
  return out['layer_tokens'][:, 1:].reshape(b, h, w, c).astype(jnp.float32)


def score_maps(
  cfg: SCGConfig, grouper_variables: Any, pixels: jnp.ndarray, centroids: jnp.ndarray | None
) -> jnp.ndarray:
  """Grouping: pixels [B, H, W, 3] (0..255) -> cosines of patches to centres [B, h, w, M].

  `centroids` [M, C] (dataset level) or None (per-image k-means with `cfg.kmeans_iters`).
  """
  feats = grouper_features(cfg, grouper_variables, pixels)
  b, h, w, c = feats.shape
  if cfg.centroids == 'dataset':
    if centroids is None:
      raise ValueError("centroids='dataset' needs fitted centroids (variables['centroids'])")
    return kmeans.scores(feats, centroids)
  # An input with fewer patches than regions (a small image) clusters into as many regions as
  # it has patches; the other regions score below any cosine and stay empty.
  m = min(cfg.num_regions, h * w)
  centres, _ = kmeans.kmeans(feats.reshape(b, h * w, c), m, cfg.kmeans_iters)
  scores = kmeans.scores(feats, centres)
  if m < cfg.num_regions:
    scores = jnp.pad(scores, ((0, 0),) * 3 + ((0, cfg.num_regions - m),), constant_values=-2.0)
  return scores


def resize_scores(scores: jnp.ndarray, out_hw: tuple[int, int]) -> jnp.ndarray:
  """Region ids on another grid: scores [B, h, w, M] -> int32 [B, Ho, Wo] (bilinear, argmax)."""
  _, h, w, _ = scores.shape
  rh = jnp.asarray(resize_matrix(h, out_hw[0], 'bilinear'), jnp.float32)
  rw = jnp.asarray(resize_matrix(w, out_hw[1], 'bilinear'), jnp.float32)
  return kmeans.upsample_assign(scores, rh, rw)


def region_embeddings(
  cfg: SCGConfig,
  clip_variables: Any,
  region_tokens: jnp.ndarray,
  pixels: jnp.ndarray,
  scores: jnp.ndarray,
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Recognition: one embedding per region.

  Args:
    cfg: the SCG config (`masking`).
    clip_variables: the CLIP's variables.
    region_tokens: [M, W] learned region tokens (unused with masking='pixels').
    pixels: [B, H, W, 3] pixel values 0..255.
    scores: [B, h, w, M] grouping score maps.
  Returns:
    (region embeddings [B, M, E] float32, not normalised; present bool [B, M]: the region owns at
    least one CLIP patch).
  """
  clip_cfg = clip_for_any_grid(cfg.clip)
  model = CLIP(clip_cfg)
  x = normalize_pixels(pixels, CLIP_MEAN, CLIP_STD)
  b, height, width, _ = x.shape
  p = clip_cfg.vision.patch_size
  m = cfg.num_regions
  ids = resize_scores(scores, (height // p, width // p)).reshape(b, -1)
  present = jnp.any(ids[:, None, :] == jnp.arange(m)[None, :, None], axis=-1)
  if cfg.masking == 'pixels':
    pixel_ids = resize_scores(scores, (height, width))  # [B, H, W]
    keep = pixel_ids[:, None] == jnp.arange(m)[None, :, None, None]  # [B, M, H, W]
    masked = jnp.where(keep[..., None], x[:, None], 0.0).reshape(b * m, height, width, 3)
    emb = model.apply(clip_variables, masked, method=CLIP.encode_image)
    return emb.reshape(b, m, -1), present
  mask = region_attention_mask(ids, m, cfg.masking)
  emb = model.apply(clip_variables, x, region_tokens, mask, method=CLIP.region_embeddings)
  return emb, present


def forward(
  cfg: SCGConfig, variables: Mapping[str, Any], pixels: jnp.ndarray
) -> dict[str, jnp.ndarray]:
  """Grouping and recognition of pixels [B, H, W, 3] (0..255, sides multiples of
  `cfg.patch_multiple`).

  variables: {'clip', 'grouper', 'params': {'region_tokens' [M, W], 'logit_scale' []}} and, with
  dataset centroids, 'centroids' [M, C].
  Returns: `scores` [B, h, w, M] (grouper grid), `region_embeds` [B, M, E], `present` bool [B, M]
  and, with `cfg.image_top_k`, `image_embed` [B, E] (the plain CLIP's, not normalised).
  """
  scores = score_maps(cfg, variables['grouper'], pixels, variables.get('centroids'))
  emb, present = region_embeddings(
    cfg, variables['clip'], variables['params']['region_tokens'], pixels, scores
  )
  out = {'scores': scores, 'region_embeds': emb, 'present': present}
  if cfg.image_top_k:
    x = normalize_pixels(pixels, CLIP_MEAN, CLIP_STD)
    model = CLIP(clip_for_any_grid(cfg.clip))
    out['image_embed'] = model.apply(variables['clip'], x, method=CLIP.encode_image)
  return out


def init_params(cfg: SCGConfig, clip_params: Mapping[str, Any]) -> dict[str, jnp.ndarray]:
  """The trained parameters at step 0: region tokens from the class token and the CLIP's own
  temperature (log of its logit scale)."""
  return {
    'region_tokens': jnp.array(initial_region_tokens(clip_params, cfg.num_regions)),
    'logit_scale': jnp.asarray(clip_params['logit_scale'], jnp.float32),
  }


def check_centroids(cfg: SCGConfig, centroids: Any) -> np.ndarray:
  """Dataset-level centroids as float32 [M, C] (regions, grouper width), or a clear error."""
  if centroids is None:
    raise ValueError("centroids='dataset' needs centroids (fit_dataset_centroids)")
  c = np.asarray(centroids, np.float32)
  want = (cfg.num_regions, cfg.grouper_vit.width)
  if c.shape != want:
    raise ValueError(f'centroids must be {want} (regions, grouper width), got {c.shape}')
  return c


def check_input(cfg: SCGConfig, shape: tuple[int, ...]) -> None:
  """A clear error for pixels the two towers cannot both patch."""
  q = cfg.patch_multiple
  if len(shape) != 4 or shape[-1] != 3 or shape[1] % q or shape[2] % q:
    raise ValueError(f'SCG pixels must be [B, H, W, 3] with H, W multiples of {q}; got {shape}')


__all__ = [
  'SCGConfig',
  'forward',
  'init_params',
  'region_attention_mask',
  'region_embeddings',
  'score_maps',
  'grouper_features',
  'initial_region_tokens',
  'resize_scores',
]
