"""SCG's stage-1 window function for the zero-shot protocol (`groupvit_jax.segmenter`), and the
background rule by vocabulary that every method can use.

A window [B, hp, wp, 3] goes through `models.scg.forward`: region ids per pixel come from the
grouper's score maps resized bilinearly to the window (`kmeans.upsample_assign`) and each region's
class table row is **one-hot**: the region takes its best class, as the paper assigns one class
per region. Overlapping windows then vote (the protocol averages the tables of the windows that
cover a pixel). Background:

* `num_fg` given (the vocabulary rule, the paper's): the class list is the foreground classes
  followed by background words; a region whose best class is a background word is background.
* `with_background` without `num_fg` (the threshold rule, an option): with
  p = softmax(min(exp(logit_scale), 100) * cosine) over the foreground classes, a region is
  background when its best p is below min(threshold, the best p of any present region in the
  window): the form of GroupViT's released rule, so every window keeps at least one region.
* neither: every region gets a foreground class.

With `naming='noun'` (our extension, after `image_top_k`'s filter) the classes pick instead: each
of the image's top-k foreground classes claims the present region closest to it, and a region no
class claimed is background under either rule (with no background, it keeps its own best class).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from groupvit_jax.models import kmeans
from groupvit_jax.models import scg as scg_lib

HIGHEST = jax.lax.Precision.HIGHEST


def vocabulary_background(scores: jnp.ndarray, num_fg: int) -> jnp.ndarray:
  """The vocabulary rule on any per-group scores.

  Args:
    scores: [B, G, K + Kb] scores over K foreground classes then Kb background words (padding
      classes must already score lowest).
    num_fg: K.
  Returns:
    [B, G, 1 + K]: channel 0 is 1.0 for a group whose best class is a background word (its
    foreground scores are zeroed), else 0.0 with the group's foreground scores.
  """
  is_bg = jnp.argmax(scores, axis=-1) >= num_fg
  fg = jnp.where(is_bg[..., None], 0.0, scores[..., :num_fg])
  return jnp.concatenate([is_bg[..., None].astype(scores.dtype), fg], axis=-1)


def region_class_table(
  region_embeds: jnp.ndarray,
  present: jnp.ndarray,
  class_embed: jnp.ndarray,
  class_mask: jnp.ndarray,
  logit_scale: jnp.ndarray,
  threshold: jnp.ndarray,
  with_background: bool,
  num_fg: int | None,
  naming: str = 'region',
) -> jnp.ndarray:
  """One-hot class rows per region (module docstring).

  Args:
    region_embeds: [B, M, E]; present: bool [B, M]; class_embed: [K', E] unit rows (foreground,
      then background words with `num_fg`); class_mask: bool [K'] or [B, 1, K'] (False = padding,
      or a class the image-level filter left out);
    logit_scale: scalar log inverse temperature; threshold: scalar.
  Returns:
    float32 [B, M, C]: C = K (no background) or 1 + K (channel 0 background).
  """
  cos = jnp.einsum(
    'bme,ke->bmk', kmeans.l2_normalize(region_embeds), class_embed.astype(jnp.float32),
    precision=HIGHEST,
  )  # fmt: skip
  cos = jnp.where(class_mask, cos, -jnp.inf)
  onehot = jax.nn.one_hot(jnp.argmax(cos, -1), cos.shape[-1])
  if naming == 'noun':
    return _noun_table(cos, present, class_mask, onehot, with_background, num_fg)
  if num_fg is not None:
    return vocabulary_background(onehot, num_fg)
  if not with_background:
    return onehot
  scale = jnp.minimum(jnp.exp(logit_scale), 100.0)
  best = jnp.max(jax.nn.softmax(scale * cos, axis=-1), axis=-1)  # [B, M]
  window_best = jnp.max(jnp.where(present, best, 0.0), axis=-1, keepdims=True)
  bg = best < jnp.minimum(threshold, window_best)
  fg = jnp.where(bg[..., None], 0.0, onehot)
  return jnp.concatenate([bg[..., None].astype(jnp.float32), fg], axis=-1)


def noun_claims(
  score: jnp.ndarray, present: jnp.ndarray, claim_mask: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Noun->region naming: every allowed class claims the present region that scores it highest.

  Args:
    score: [B, M, K'] region-class scores; present: bool [B, M]; claim_mask: bool [B, 1, K'] or
      [K'], the classes that claim (the image's top-k foreground classes).
  Returns:
    (claimed bool [B, M], class int32 [B, M]: the highest-scoring class among those that claimed
    the region; meaningless where not claimed).
  """
  score = jnp.where(present[..., None], score, -jnp.inf)
  m = score.shape[1]
  closest = jnp.argmax(score, axis=1)  # [B, K']: each class's region
  claims = (closest[:, None, :] == jnp.arange(m)[None, :, None]) & claim_mask  # [B, M, K']
  claims = claims & present[..., None]
  claimed = jnp.any(claims, axis=-1)
  cls = jnp.argmax(jnp.where(claims, score, -jnp.inf), axis=-1).astype(jnp.int32)
  return claimed, cls


def _noun_table(cos, present, class_mask, onehot, with_background, num_fg):
  k_all = cos.shape[-1]
  foreground = jnp.arange(k_all) < (k_all if num_fg is None else num_fg)
  score = cos
  if num_fg is not None:
    # A class's margin over the region's best background word: the large background region sits
    # close to every prompt, so its raw cosine to the shape often beats the object's own region.
    best_bg = jnp.max(jnp.where(foreground, -jnp.inf, cos), axis=-1, keepdims=True)
    score = cos - best_bg
  claimed, cls = noun_claims(score, present, class_mask & foreground)
  if num_fg is None and not with_background:
    return jnp.where(claimed[..., None], jax.nn.one_hot(cls, k_all), onehot)
  k = k_all if num_fg is None else num_fg
  fg = jnp.where(claimed[..., None], jax.nn.one_hot(cls, k), 0.0)
  return jnp.concatenate([(~claimed)[..., None].astype(jnp.float32), fg], axis=-1)


def image_filter(
  image_embed: jnp.ndarray,
  class_embed: jnp.ndarray,
  class_mask: jnp.ndarray,
  top_k: int,
  num_fg: int | None,
) -> jnp.ndarray:
  """The classes a region of each image may take under `image_top_k`: the `top_k` foreground
  classes closest to the image embedding [B, E], and every background word.

  Returns bool [B, 1, K'] (padding stays False).
  """
  cos = jnp.einsum(
    'be,ke->bk', kmeans.l2_normalize(image_embed), class_embed.astype(jnp.float32),
    precision=HIGHEST,
  )  # fmt: skip
  k_all = class_embed.shape[0]
  foreground = jnp.arange(k_all) < (k_all if num_fg is None else num_fg)
  cos = jnp.where(class_mask & foreground, cos, -jnp.inf)
  _, top = jax.lax.top_k(cos, min(top_k, k_all))
  keep = jnp.any(jax.nn.one_hot(top, k_all, dtype=jnp.bool_), axis=1) | ~foreground
  return (keep & class_mask)[:, None, :]


def window_impl(
  variables,
  class_embed,
  class_mask,
  threshold,
  pixels,
  rh,
  rw,
  *,
  config: scg_lib.SCGConfig,
  top_k: int,
  with_background: bool,
  num_fg: int | None = None,
):
  """Stage 1 for SCG. pixels uint8 [B, hp, wp, 3]; rh [B, Ho, gh], rw [B, Wo, gw] (grouper grid
  to window pixels) -> (region ids uint8 [B, Ho, Wo], one-hot class tables float32 [B, M, C]).
  `top_k` is GroupViT's image-level filter; SCG names regions from their own tokens only."""
  del top_k
  out = scg_lib.forward(config, variables, pixels)
  if config.image_top_k:
    class_mask = image_filter(
      out['image_embed'], class_embed, class_mask, config.image_top_k, num_fg
    )
  ids = kmeans.upsample_assign(out['scores'], rh, rw)
  dtype = jnp.uint8 if config.num_regions <= 256 else jnp.int32
  table = region_class_table(
    out['region_embeds'],
    out['present'],
    class_embed,
    class_mask,
    variables['params']['logit_scale'],
    threshold,
    with_background,
    num_fg,
    config.naming,
  )
  return ids.astype(dtype), table


def maps_impl(variables, pixels, *, config: scg_lib.SCGConfig):
  """uint8 [B, H, W, 3] -> [score maps [B, h, w, M]] (one 'stage': the regions)."""
  return [scg_lib.score_maps(config, variables['grouper'], pixels, variables.get('centroids'))]
