"""ZeroSeg's losses (float32), per image and then averaged over the batch.

With teacher views v_1..v_V (unit, [B, V, E], v_1 the whole crop), the student's global vector z
[B, E] and segment embeddings g_1..g_S [B, S, E]:

* **multi-scale distillation** ('multiscale'): the mean over the V views of L1(z, v_j);
* **segment matching** ('matching'): sum_i min_j L1(g_i, v_j) over the local views j (every grid
  but 1x1), divided by S when `segment_reduction='mean'` (our default: the weight then means the
  same for any number of segments) or not (`'sum'`, the paper's formula);
* the **MAE** reconstruction loss ('mae', computed by the model).

L1(a, b) is the mean of |a - b| over the E channels (`l1_reduction='mean'`, as torch's
`L1Loss`, our default) or the sum (`'sum'`). The paper gives no weights; each term has one in
`config.zeroseg.weights` (1.0 each by default). Every term is a mean over images, so under `jit`
on a batch sharded over devices the compiler's all-reduce gives the same value as one device.
"""

from __future__ import annotations

import jax.numpy as jnp

L1_REDUCTIONS = ('mean', 'sum')
SEGMENT_REDUCTIONS = ('mean', 'sum')
TERMS = ('multiscale', 'matching', 'mae')


def l1_distance(a: jnp.ndarray, b: jnp.ndarray, reduction: str = 'mean') -> jnp.ndarray:
  """L1 between broadcastable [..., E] arrays, reduced over E: [...] float32."""
  if reduction not in L1_REDUCTIONS:
    raise ValueError(f'l1 reduction must be one of {L1_REDUCTIONS}, got {reduction!r}')
  d = jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))
  return jnp.mean(d, axis=-1) if reduction == 'mean' else jnp.sum(d, axis=-1)


def global_distillation(
  global_embed: jnp.ndarray, views: jnp.ndarray, l1_reduction: str = 'mean'
) -> jnp.ndarray:
  """global_embed [B, E], views [B, V, E] -> scalar: mean over images and views of L1(z, v_j)."""
  return jnp.mean(l1_distance(global_embed[:, None], views, l1_reduction))


def segment_matching(
  segment_embeds: jnp.ndarray,
  views: jnp.ndarray,
  local: jnp.ndarray,
  l1_reduction: str = 'mean',
  segment_reduction: str = 'mean',
) -> jnp.ndarray:
  """segment_embeds [B, S, E], views [B, V, E], local bool [V] (the views a segment may match)
  -> scalar: the batch mean of sum_i (or mean_i) min_{j local} L1(g_i, v_j)."""
  if segment_reduction not in SEGMENT_REDUCTIONS:
    raise ValueError(
      f'segment reduction must be one of {SEGMENT_REDUCTIONS}, got {segment_reduction!r}'
    )
  d = l1_distance(segment_embeds[:, :, None], views[:, None], l1_reduction)  # [B, S, V]
  best = jnp.min(jnp.where(local, d, jnp.inf), axis=-1)  # [B, S]
  per_image = jnp.mean(best, -1) if segment_reduction == 'mean' else jnp.sum(best, -1)
  return jnp.mean(per_image)


def zeroseg_losses(
  out: dict,
  views: jnp.ndarray,
  local: jnp.ndarray,
  weights: dict[str, float],
  l1_reduction: str = 'mean',
  segment_reduction: str = 'mean',
) -> dict[str, jnp.ndarray]:
  """The weighted total and every term.

  Args:
    out: the student's training output (`segment_embeds` [B, S, E], `global_embed` [B, E],
      `mae_loss` []).
    views: [B, V, E] teacher embeddings; local: bool [V].
    weights: {'multiscale', 'matching', 'mae'} -> float; a zero weight skips the term's compute
      (the ablations of the paper's Table 4) and reports it as 0 (the MAE term is the model's:
      the trainer skips the decoder when its weight is 0).
  Returns:
    {'loss', 'multiscale_loss', 'matching_loss', 'mae_loss'} float32 scalars.
  """
  unknown = sorted(set(weights) - set(TERMS))
  if unknown:
    raise ValueError(f'unknown loss weight(s) {unknown}; terms: {TERMS}')
  zero = jnp.zeros((), jnp.float32)
  terms = {
    'multiscale_loss': global_distillation(out['global_embed'], views, l1_reduction)
    if weights.get('multiscale', 0.0)
    else zero,
    'matching_loss': segment_matching(
      out['segment_embeds'], views, local, l1_reduction, segment_reduction
    )
    if weights.get('matching', 0.0)
    else zero,
    'mae_loss': out['mae_loss'].astype(jnp.float32),
  }
  total = sum(float(weights.get(t, 0.0)) * terms[f'{t}_loss'] for t in TERMS)
  return dict(terms, loss=total)
