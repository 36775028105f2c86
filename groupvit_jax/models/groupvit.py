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
    head = lambda: ProjectionHead(
      cfg.projection_hidden_dim,
      cfg.projection_dim,
      cfg.projection_layers,
      cfg.bn_momentum,
      cfg.bn_eps,
      cfg.bn_axis_name,
      dtype=dtype,
    )
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
  def encode_image(
    self, images: jnp.ndarray, train: bool = False, with_groups: bool = False
  ) -> dict[str, Any]:
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

  def encode_text(self, text: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """text int [N, L] -> [N, D] projected end-of-text features (not normalised)."""
    return self.text_projector(self.text_encoder(text), train)

  def __call__(
    self,
    images: jnp.ndarray,
    text: jnp.ndarray,
    prompts: jnp.ndarray | None = None,
    train: bool = False,
    with_groups: bool = False,
  ) -> dict[str, Any]:
    """The training forward pass.

    Args:
      images: [B, H, W, 3] normalised images.
      text: int [B, L] caption tokens.
      prompts: int [B, K, L] prompt tokens for the multi-label loss, or None.
      train: batch statistics, Gumbel noise and stochastic depth when True.
      with_groups: also return 'group_embeds' [B, S, D] and 'group_mask' bool [B, S] (groups that
        own a patch) for the best-group multi-label loss (`config.loss.multi_label_pooling='max'`,
        not in the release).
    Returns:
      dict with 'image_embed' [B, D], 'text_embed' [B, D], 'prompt_embed' [B, K, D] (if prompts),
      'assignments', and the used scales; embeddings are float32 and not normalised.
    """
    if with_groups:
      image = self.encode_image(images, train, with_groups=True)
      image['group_mask'] = _groups_owning_patches(
        image['assignments'], image['group_embeds'].shape[:2]
      )
    else:
      image = self.encode_image(images, train)
    b = text.shape[0]
    if prompts is not None:
      k = prompts.shape[1]
      # One text-head call over captions and prompts: the released model's BatchNorm statistics
      # are over both together.
      all_text = jnp.concatenate([text[:, None], prompts], axis=1).reshape(b * (k + 1), -1)
      embeds = self.encode_text(all_text, train).reshape(b, k + 1, -1)
      text_embed, prompt_embed = embeds[:, 0], embeds[:, 1:]
    else:
      text_embed, prompt_embed = self.encode_text(text, train), None
    out = {
      'image_embed': image['image_embed'],
      'text_embed': text_embed,
      'assignments': image['assignments'],
    }
    if prompt_embed is not None:
      out['prompt_embed'] = prompt_embed
    if with_groups:
      out['group_embeds'], out['group_mask'] = image['group_embeds'], image['group_mask']
    out.update(self.scales())
    return out


def _groups_owning_patches(
  assignments: tuple[Assignment, ...], shape: tuple[int, int]
) -> jnp.ndarray:
  """bool [B, S]: final groups that own at least one patch under the hard assignment (all True
  for a model without grouping, whose tokens are the patches themselves)."""
  if not assignments:
    return jnp.ones(shape, bool)
  return jnp.sum(compose_group_maps(assignments, use_soft=False)[-1], axis=1) >= 0.5


def compose_group_maps(
  assignments: tuple[Assignment, ...], use_soft: bool = True
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
  prompts = (
    jnp.zeros((batch_size, 1, cfg.text.context_length), jnp.int32) if cfg.multi_label else None
  )
  params_rng, gumbel_rng, drop_rng = jax.random.split(rng, 3)
  return model.init(
    {'params': params_rng, 'gumbel': gumbel_rng, 'droppath': drop_rng},
    images,
    text,
    prompts,
    train=False,
  )
