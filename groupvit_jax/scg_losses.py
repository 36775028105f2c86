"""SCG's region adaptation loss: captions' nouns against image regions, InfoNCE over the global
batch.

For image i and caption t, with unit region embeddings r_im (present regions only) and unit noun
embeddings n_tk (valid nouns only):

* 'noun_to_region' (the paper's choice): s_it = mean_k max_m <n_tk, r_im>: every noun finds its
  most similar region; the caption's score is the mean over its nouns.
* 'region_to_noun': s_it = mean_m max_k <r_im, n_tk> over the image's present regions.
* 'both': the mean of the two scores.

The loss is symmetric InfoNCE on logits = scale * s (image -> caption rows and caption -> image
columns, each the mean cross-entropy over the batch, averaged; the usual log-softmax form the
paper's printed equation omits). `scg_losses` works on global arrays; `sharded_scg_losses` gives
the same values with each device scoring its local images against gathered nouns and its local
captions against gathered regions. All arithmetic is float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

DIRECTIONS = ('noun_to_region', 'region_to_noun', 'both')
_NEG = -1e9


def _unit(x):
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def pair_scores(
  regions: jnp.ndarray,
  present: jnp.ndarray,
  nouns: jnp.ndarray,
  noun_valid: jnp.ndarray,
  direction: str,
) -> jnp.ndarray:
  """Image-caption scores.

  Args:
    regions: [I, M, E] unit region embeddings; present: bool [I, M] (at least one True per row).
    nouns: [T, K, E] unit noun embeddings; noun_valid: bool [T, K] (at least one True per row).
    direction: one of DIRECTIONS.
  Returns:
    float32 [I, T].
  """
  if direction not in DIRECTIONS:
    raise ValueError(f'direction must be one of {DIRECTIONS}, got {direction!r}')
  sim = jnp.einsum('ime,tke->itmk', regions, nouns, precision='highest')
  out = []
  if direction in ('noun_to_region', 'both'):
    best = jnp.max(jnp.where(present[:, None, :, None], sim, _NEG), axis=2)  # [I, T, K]
    w = noun_valid.astype(jnp.float32)[None]
    out.append(jnp.sum(best * w, axis=-1) / jnp.sum(w, axis=-1))
  if direction in ('region_to_noun', 'both'):
    best = jnp.max(jnp.where(noun_valid[None, :, None, :], sim, _NEG), axis=3)  # [I, T, M]
    w = present.astype(jnp.float32)[:, None]
    out.append(jnp.sum(best * w, axis=-1) / jnp.sum(w, axis=-1))
  return sum(out) / len(out)


def _terms(rows_i2t, rows_t2i, offset):
  """Per-row cross-entropies and hits of local score rows [n, N] (image rows, caption rows)."""
  own = offset + jnp.arange(rows_i2t.shape[0])
  pick = lambda logits: jnp.take_along_axis(logits, own[:, None], axis=1)[:, 0]  # noqa: E731
  loss_i2t = jax.nn.logsumexp(rows_i2t, axis=-1) - pick(rows_i2t)
  loss_t2i = jax.nn.logsumexp(rows_t2i, axis=-1) - pick(rows_t2i)
  hits = (jnp.argmax(rows_i2t, -1) == own, jnp.argmax(rows_t2i, -1) == own)
  return loss_i2t, loss_t2i, hits


def _finish(loss_i2t, loss_t2i, hits, total, reduce):
  loss = 0.5 * (reduce(jnp.sum(loss_i2t)) + reduce(jnp.sum(loss_t2i))) / total
  return {
    'loss': loss,
    'loss/noun_region': loss,
    'acc/i2t': reduce(jnp.sum(hits[0].astype(jnp.float32))) / total,
    'acc/t2i': reduce(jnp.sum(hits[1].astype(jnp.float32))) / total,
  }


def scg_losses(
  region_embed: jnp.ndarray,
  present: jnp.ndarray,
  noun_embed: jnp.ndarray,
  noun_valid: jnp.ndarray,
  logit_scale: jnp.ndarray,
  direction: str = 'noun_to_region',
) -> dict[str, jnp.ndarray]:
  """The loss on global arrays.

  Args:
    region_embed: [N, M, E] region embeddings (normalised here); present: bool [N, M].
    noun_embed: [N, K, E] noun-prompt embeddings of each image's caption; noun_valid: bool [N, K].
    logit_scale: scalar inverse temperature (already exponentiated and clamped).
    direction: see the module docstring.
  Returns:
    'loss', 'loss/noun_region', 'acc/i2t', 'acc/t2i' (scalars).
  """
  s = logit_scale * pair_scores(
    _unit(region_embed), present, _unit(noun_embed), noun_valid, direction
  )
  loss_i2t, loss_t2i, hits = _terms(s, s.T, 0)
  return _finish(loss_i2t, loss_t2i, hits, s.shape[0], lambda x: x)


def sharded_scg_losses(
  mesh: Mesh,
  batch_axes: tuple[str, ...],
  region_embed,
  present,
  noun_embed,
  noun_valid,
  logit_scale,
  direction: str = 'noun_to_region',
) -> dict[str, jnp.ndarray]:
  """`scg_losses` via shard_map: inputs sharded over `batch_axes` on their leading axis, the
  scale replicated; memory per device is [n_local, N, M, K] instead of [N, N, M, K]."""
  batch = P(batch_axes)

  def local(reg, pres, nouns, valid, scale):
    reg, nouns = _unit(reg), _unit(nouns)
    gather = lambda x: jax.lax.all_gather(x, batch_axes, axis=0, tiled=True)  # noqa: E731
    reduce = lambda x: jax.lax.psum(x, batch_axes)  # noqa: E731
    offset = jax.lax.axis_index(batch_axes) * reg.shape[0]
    rows_i2t = scale * pair_scores(reg, pres, gather(nouns), gather(valid), direction)
    rows_t2i = scale * pair_scores(gather(reg), gather(pres), nouns, valid, direction).T
    loss_i2t, loss_t2i, hits = _terms(rows_i2t, rows_t2i, offset)
    return _finish(loss_i2t, loss_t2i, hits, reduce(jnp.float32(reg.shape[0])), reduce)

  fn = jax.shard_map(
    local,
    mesh=mesh,
    in_specs=(batch, batch, batch, batch, P()),
    out_specs=P(),
    check_vma=False,
  )
  return fn(region_embed, present, noun_embed, noun_valid, logit_scale)


def noun_mask(prompts: jnp.ndarray, text: jnp.ndarray) -> jnp.ndarray:
  """Which prompts are nouns: int [N, K, L] prompt tokens and [N, L] caption tokens -> bool
  [N, K].

  The data pipeline fills a caption with fewer than K nouns up to K with copies of the caption
  itself (GroupViT's rule); those copies and repeated prompts are not nouns. A caption without a
  single noun keeps its first prompt (the caption), so every row scores something.
  """
  is_caption = jnp.all(prompts == text[:, None, :], axis=-1)
  same = jnp.all(prompts[:, :, None, :] == prompts[:, None, :, :], axis=-1)  # [N, K, K]
  earlier = jnp.tril(jnp.ones(same.shape[1:], bool), k=-1)
  valid = ~is_caption & ~jnp.any(same & earlier, axis=-1)
  first = jnp.arange(prompts.shape[1]) == 0
  return jnp.where(jnp.any(valid, axis=-1, keepdims=True), valid, first[None])
