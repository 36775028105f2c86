"""GroupViT: image tower + text tower + projection heads + learned temperatures."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from groupvit_jax.models.config import GroupViTConfig
from groupvit_jax.models.grouping import Assignment
from groupvit_jax.models.heads import ProjectionHead
from groupvit_jax.models.image_encoder import ImageEncoder
from groupvit_jax.models.text_encoder import TextEncoder
from groupvit_jax.mosaic import (DEFAULT_MIN_TILE_SHARE, region_pool,
                                 tile_groups as mosaic_tile_groups)

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def l2_normalize(x: jnp.ndarray, axis: int = -1, eps: float = 1e-12) -> jnp.ndarray:
  """x / max(||x||, eps) in float32, as torch.nn.functional.normalize."""
  x = x.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, eps)


class GroupViT(nn.Module):
  """The whole model. Variables: 'params' and 'batch_stats' (projection-head BatchNorms).

  RNG streams in training: 'gumbel' (assignment noise) and 'droppath' (stochastic depth).
  """

  config: GroupViTConfig

  def setup(self):
    cfg = self.config
    dtype = _DTYPES[cfg.dtype]
    self.img_encoder = ImageEncoder(cfg.image, dtype=dtype, remat=cfg.remat)
    self.text_encoder = TextEncoder(cfg.text, dtype=dtype, remat=cfg.remat)
    head = lambda: ProjectionHead(cfg.projection_hidden_dim, cfg.projection_dim,
                                  cfg.projection_layers, cfg.bn_momentum, cfg.bn_eps,
                                  cfg.bn_axis_name, dtype=dtype)
    self.img_projector = head()
    self.text_projector = head()
    init = nn.initializers.constant(cfg.logit_scale_init)
    self.logit_scale = self.param('logit_scale', init, (), jnp.float32)
    if cfg.multi_label:
      self.multi_label_logit_scale = self.param('multi_label_logit_scale', init, (), jnp.float32)

  # --- scales ------------------------------------------------------------------------------
  def scales(self) -> dict[str, jnp.ndarray]:
    """The temperatures actually used: min(exp(log_scale), logit_scale_max), float32 scalars."""
    cap = self.config.logit_scale_max
    out = {'logit_scale': jnp.minimum(jnp.exp(self.logit_scale), cap)}
    if self.config.multi_label:
      out['multi_label_logit_scale'] = jnp.minimum(jnp.exp(self.multi_label_logit_scale), cap)
    return out

  # --- towers ------------------------------------------------------------------------------
  def encode_image(self, images: jnp.ndarray, train: bool = False,
                   with_groups: bool = False) -> dict[str, Any]:
    """images [B, H, W, 3] normalised -> dict.

    Keys: 'image_embed' [B, D] (projected pooled feature, not normalised), 'assignments' (one
    `Assignment` per grouping stage, maps [B, S_out, N_in]), 'grid' (h, w); with `with_groups`,
    also 'group_embeds' [B, S, D] (projected final segment tokens, not normalised).
    """
    out = self.img_encoder(images, deterministic=not train)
    result = {'assignments': out.assignments, 'grid': out.grid}
    if with_groups:
      # One head call for the pooled feature and the groups: in training its BatchNorm then
      # normalises both together (evaluation uses running statistics, so nothing changes there).
      feats = jnp.concatenate([out.pooled[:, None], out.tokens], axis=1)  # [B, 1 + S, C]
      embeds = self.img_projector(feats, train)
      result.update(image_embed=embeds[:, 0], group_embeds=embeds[:, 1:])
    else:
      result['image_embed'] = self.img_projector(out.pooled, train)
    return result

  def _encode_with_mosaics(self, images, mosaics, regions, train, with_groups=False,
                           min_tile_share=DEFAULT_MIN_TILE_SHARE):
    """Pooled features of whole images and of mosaic tiles, projected by one head call (its
    BatchNorm sees both together, as it sees one batch without mosaics). With `with_groups`,
    also the final groups of every row ([B, S, D]; a tile's row holds its mosaic's groups) and
    which of them may speak for the row ([B, S]; a tile's: `mosaic.tile_groups`)."""
    pooled, assignments, groups, masks = [], (), [], []
    if images.shape[0]:
      out = self.img_encoder(images, deterministic=not train)
      pooled.append(out.pooled.astype(jnp.float32))
      assignments = out.assignments
      groups.append(out.tokens.astype(jnp.float32))
      masks.append(_groups_owning_patches(out.assignments, out.tokens.shape[:2]))
    mos = self.img_encoder(mosaics, deterministic=not train)
    patch_to_token = compose_group_maps(mos.assignments, use_soft=False)[-1] \
        if mos.assignments else None
    tiles = region_pool(mos.tokens, regions, patch_to_token)  # [M, T, C]
    m, t, c = tiles.shape
    pooled.append(tiles.reshape(-1, c))
    rows = jnp.concatenate(pooled)  # [B, C]
    if not with_groups:
      return {'image_embed': self.img_projector(rows, train), 'assignments': assignments}
    if patch_to_token is None:
      raise ValueError('best-group losses on mosaics need a model with grouping stages')
    s = mos.tokens.shape[1]
    mosaic_groups = mos.tokens.astype(jnp.float32)  # [M, S, C]
    feats = jnp.concatenate([rows] + [g.reshape(-1, c) for g in groups]
                            + [mosaic_groups.reshape(-1, c)])
    embeds = self.img_projector(feats, train)
    b, b1 = rows.shape[0], rows.shape[0] - m * t
    group_embeds = embeds[b:b + b1 * s].reshape(b1, s, -1)
    tile_embeds = jnp.repeat(embeds[b + b1 * s:].reshape(m, 1, s, -1), t, axis=1)
    tile_mask = mosaic_tile_groups(regions, patch_to_token, min_tile_share)  # [M, T, S]
    return {'image_embed': embeds[:b], 'assignments': assignments,
            'group_embeds': jnp.concatenate([group_embeds, tile_embeds.reshape(m * t, s, -1)]),
            'group_mask': jnp.concatenate(masks + [tile_mask.reshape(m * t, s)])}

  def encode_text(self, text: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """text int [N, L] -> [N, D] projected end-of-text features (not normalised)."""
    return self.text_projector(self.text_encoder(text), train)

  def __call__(self, images: jnp.ndarray, text: jnp.ndarray, prompts: jnp.ndarray | None = None,
               train: bool = False, mosaics: jnp.ndarray | None = None,
               mosaic_regions: jnp.ndarray | None = None,
               with_groups: bool = False,
               mosaic_min_tile_share: float = DEFAULT_MIN_TILE_SHARE) -> dict[str, Any]:
    """The training forward pass.

    Args:
      images: [B_1, H, W, 3] normalised images (B_1 may be 0 when every example is in a mosaic).
      text: int [B, L] caption tokens, B = B_1 + M * T.
      prompts: int [B, K, L] prompt tokens for the multi-label loss, or None.
      train: batch statistics, Gumbel noise and stochastic depth when True.
      mosaics: [M, H', W', 3] images tiled from T examples each (groupvit_jax/mosaic.py), or None.
      mosaic_regions: [M, N', T] patch -> tile one-hot of the mosaics.
      with_groups: also return 'group_embeds' [B, S, D] and 'group_mask' bool [B, S] (groups that
        own a patch; for a mosaic tile, its mosaic's groups and those that belong to the tile,
        `mosaic.tile_groups`) for the best-group losses.
      mosaic_min_tile_share: the share of its patches a mosaic group needs inside a tile to
        belong to it.
    Returns:
      dict with 'image_embed' [B, D] (whole images, then mosaic tiles), 'text_embed' [B, D],
      'prompt_embed' [B, K, D] (if prompts), 'assignments' (of `images`), and the used scales;
      embeddings are float32 and not normalised.
    """
    if mosaics is not None:
      image = self._encode_with_mosaics(images, mosaics, mosaic_regions, train, with_groups,
                                        mosaic_min_tile_share)
    elif with_groups:
      image = self.encode_image(images, train, with_groups=True)
      image['group_mask'] = _groups_owning_patches(image['assignments'],
                                                   image['group_embeds'].shape[:2])
    else:
      image = self.encode_image(images, train)
    b = text.shape[0]
    if image['image_embed'].shape[0] != b:
      raise ValueError(f"{image['image_embed'].shape[0]} image embeddings for {b} captions")
    if prompts is not None:
      k = prompts.shape[1]
      # One text-head call over captions and prompts: the released model's BatchNorm statistics
      # are over both together.
      all_text = jnp.concatenate([text[:, None], prompts], axis=1).reshape(b * (k + 1), -1)
      embeds = self.encode_text(all_text, train).reshape(b, k + 1, -1)
      text_embed, prompt_embed = embeds[:, 0], embeds[:, 1:]
    else:
      text_embed, prompt_embed = self.encode_text(text, train), None
    out = {'image_embed': image['image_embed'], 'text_embed': text_embed,
           'assignments': image['assignments']}
    if prompt_embed is not None:
      out['prompt_embed'] = prompt_embed
    if with_groups:
      out['group_embeds'], out['group_mask'] = image['group_embeds'], image['group_mask']
    out.update(self.scales())
    return out


def _groups_owning_patches(assignments: tuple[Assignment, ...], shape: tuple[int, int]
                           ) -> jnp.ndarray:
  """bool [B, S]: final groups that own at least one patch under the hard assignment (all True
  for a model without grouping, whose tokens are the patches themselves)."""
  if not assignments:
    return jnp.ones(shape, bool)
  return jnp.sum(compose_group_maps(assignments, use_soft=False)[-1], axis=1) >= 0.5


def compose_group_maps(assignments: tuple[Assignment, ...], use_soft: bool = True
                       ) -> list[jnp.ndarray]:
  """Per-stage maps from image patches to groups, composed across stages.

  Args:
    assignments: per grouping stage, maps [B, S_s, N_s] with N_0 = h*w patches and N_s = S_{s-1}.
  Returns:
    list over stages of [B, h*w, S_s] float32: stage 0's map transposed, then products
    (patches x S_0) @ (S_0 x S_1) ... as the released segmentation does.
  """
  maps, acc = [], None
  for a in assignments:
    m = jnp.swapaxes(a.soft if use_soft else a.hard, 1, 2).astype(jnp.float32)
    acc = m if acc is None else jnp.einsum('bns,bst->bnt', acc, m, precision='highest')
    maps.append(acc)
  return maps


def init_variables(model: GroupViT, rng: jax.Array, batch_size: int = 2) -> dict[str, Any]:
  """Initialises 'params' and 'batch_stats' with dummy inputs of the configured sizes."""
  cfg = model.config
  s = cfg.image.image_size
  images = jnp.zeros((batch_size, s, s, cfg.image.in_channels), jnp.float32)
  text = jnp.zeros((batch_size, cfg.text.context_length), jnp.int32)
  prompts = jnp.zeros((batch_size, 1, cfg.text.context_length), jnp.int32) if cfg.multi_label \
      else None
  params_rng, gumbel_rng, drop_rng = jax.random.split(rng, 3)
  return model.init({'params': params_rng, 'gumbel': gumbel_rng, 'droppath': drop_rng},
                    images, text, prompts, train=False)
