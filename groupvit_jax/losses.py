"""Contrastive losses with negatives from the whole global batch (reference section 4).

Two formulations, equal up to float32 summation order:
  * global: written on global arrays [N, D]; under `jit` with sharded inputs the compiler inserts
    the collectives (`contrastive_losses`).
  * shard_map: each device scores its local rows against keys gathered from every device with a
    differentiable `all_gather`, then the per-row losses are summed with `psum`
    (`sharded_contrastive_losses`). Memory per device is [n_local, N] instead of [N, N].
Both compute positives as row-wise dot products, never as the diagonal of a sharded matrix.
All arithmetic is float32.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from groupvit_jax.models.groupvit import l2_normalize


def _image_text_terms(img, txt, keys_img, keys_txt, scale, offset=0):
  """Per-row losses of local rows against (gathered) keys.

  img, txt: [n, D] local normalised embeddings; keys_*: [N, D] all embeddings; `offset`: global
  index of the first local row. Returns (loss_i2t [n], loss_t2i [n], correct_i2t [n],
  correct_t2i [n]).
  """
  pos = scale * jnp.sum(img * txt, axis=-1)
  logits_i2t = scale * jnp.einsum('nd,md->nm', img, keys_txt, precision='highest')
  logits_t2i = scale * jnp.einsum('nd,md->nm', txt, keys_img, precision='highest')
  loss_i2t = jax.nn.logsumexp(logits_i2t, axis=-1) - pos
  loss_t2i = jax.nn.logsumexp(logits_t2i, axis=-1) - pos
  own = offset + jnp.arange(img.shape[0])
  correct_i2t = jnp.argmax(logits_i2t, axis=-1) == own
  correct_t2i = jnp.argmax(logits_t2i, axis=-1) == own
  return loss_i2t, loss_t2i, correct_i2t, correct_t2i


def _multi_label_terms(img, prompts, keys_img, keys_prompts, scale):
  """Per-row multi-label losses.

  img: [n, D]; prompts: [n, K, D]; keys_img: [N, D]; keys_prompts: [N*K, D].
  image -> prompts: soft target 1/K on the image's own K prompts among all N*K prompts.
  prompt -> image: each prompt against the N images, one-hot on its own image.
  Returns (loss_img [n], loss_prompt [n, K]).
  """
  k = prompts.shape[1]
  own = scale * jnp.einsum('nd,nkd->nk', img, prompts, precision='highest')  # [n, K]
  logits_img = scale * jnp.einsum('nd,md->nm', img, keys_prompts, precision='highest')
  loss_img = jax.nn.logsumexp(logits_img, axis=-1) - jnp.sum(own, axis=-1) / k
  logits_prompt = scale * jnp.einsum('nkd,md->nkm', prompts, keys_img, precision='highest')
  loss_prompt = jax.nn.logsumexp(logits_prompt, axis=-1) - own
  return loss_img, loss_prompt


def _best_group(scores: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """scores [..., S] -> [...]: the highest score among the groups that own patches (mask)."""
  return jnp.max(jnp.where(mask, scores, -jnp.inf), axis=-1)


def _multi_label_group_terms(groups, mask, prompts, keys_groups, keys_mask, keys_prompts, scale):
  """Per-row multi-label losses where an image scores a prompt with its best-matching group.

  groups: [n, S, D] normalised final-group embeddings; mask: bool [n, S] (groups that own at
  least one patch; empty groups never reach a segmentation, so they may not carry a name);
  prompts: [n, K, D]; keys_groups: [N, S, D]; keys_mask: [N, S]; keys_prompts: [N*K, D].
  The same two terms as `_multi_label_terms`, with every image-prompt logit the maximum over the
  image's groups instead of the pooled embedding's. Returns (loss_img [n], loss_prompt [n, K]).
  """
  k = prompts.shape[1]
  own = scale * _best_group(
    jnp.einsum('nsd,nkd->nks', groups, prompts, precision='highest'), mask[:, None, :]
  )  # [n, K]
  logits_img = scale * _best_group(
    jnp.einsum('nsd,md->nms', groups, keys_prompts, precision='highest'), mask[:, None, :]
  )
  loss_img = jax.nn.logsumexp(logits_img, axis=-1) - jnp.sum(own, axis=-1) / k
  logits_prompt = scale * _best_group(
    jnp.einsum('nkd,msd->nkms', prompts, keys_groups, precision='highest'), keys_mask[None, None]
  )
  loss_prompt = jax.nn.logsumexp(logits_prompt, axis=-1) - own
  return loss_img, loss_prompt


def _finish(terms_it, terms_ml, total_rows, reduce):
  loss_i2t, loss_t2i, ok_i2t, ok_t2i = terms_it
  mean = lambda x: reduce(jnp.sum(x)) / total_rows
  image_text = 0.5 * (mean(loss_i2t) + mean(loss_t2i))
  out = {
    'loss/image_text': image_text,
    'acc/i2t': mean(ok_i2t.astype(jnp.float32)),
    'acc/t2i': mean(ok_t2i.astype(jnp.float32)),
  }
  total = image_text
  if terms_ml is not None:
    loss_img, loss_prompt = terms_ml
    k = loss_prompt.shape[1]
    multi = 0.5 * (mean(loss_img) + reduce(jnp.sum(loss_prompt)) / (total_rows * k))
    out['loss/multi_label'] = multi
    total = total + multi
  out['loss'] = total
  return out


def contrastive_losses(
  image_embed: jnp.ndarray,
  text_embed: jnp.ndarray,
  logit_scale: jnp.ndarray,
  prompt_embed: jnp.ndarray | None = None,
  multi_label_scale: jnp.ndarray | None = None,
  group_embed: jnp.ndarray | None = None,
  group_mask: jnp.ndarray | None = None,
) -> dict[str, jnp.ndarray]:
  """Image-text (+ multi-label) losses on global arrays.

  Args:
    image_embed: [N, D] pooled image embeddings (not normalised).
    text_embed: [N, D] caption embeddings.
    logit_scale: scalar, the clamped exp(logit_scale).
    prompt_embed: [N, K, D] prompt embeddings, or None to skip the multi-label loss.
    multi_label_scale: scalar for the multi-label logits.
    group_embed: [N, S, D] final-group embeddings, or None (the release): with them the
      multi-label loss scores each image-prompt pair by the image's best group
      (`config.loss.multi_label_pooling='max'`, an extension not in the release).
    group_mask: bool [N, S], the groups that own patches (required with group_embed).
  Returns:
    dict with 'loss' (total), 'loss/image_text', 'loss/multi_label', 'acc/i2t', 'acc/t2i'.
  """
  img, txt = l2_normalize(image_embed), l2_normalize(text_embed)
  terms = _image_text_terms(img, txt, img, txt, logit_scale)
  ml = None
  if prompt_embed is not None:
    prm = l2_normalize(prompt_embed)
    keys = prm.reshape(-1, prm.shape[-1])
    if group_embed is None:
      ml = _multi_label_terms(img, prm, img, keys, multi_label_scale)
    else:
      grp = l2_normalize(group_embed)
      ml = _multi_label_group_terms(grp, group_mask, prm, grp, group_mask, keys, multi_label_scale)
  return _finish(terms, ml, img.shape[0], lambda x: x)


def sharded_contrastive_losses(
  mesh: Mesh,
  batch_axes: tuple[str, ...],
  image_embed,
  text_embed,
  logit_scale,
  prompt_embed=None,
  multi_label_scale=None,
  group_embed=None,
  group_mask=None,
) -> dict[str, jnp.ndarray]:
  """The same losses via `shard_map`: local rows against keys gathered over `batch_axes`.

  Inputs are global arrays whose leading (batch) axis is sharded over `batch_axes` of `mesh`;
  scales are replicated. Returns replicated scalars, equal to `contrastive_losses`.
  """
  with_prompts = prompt_embed is not None
  with_groups = with_prompts and group_embed is not None
  batch = P(batch_axes)

  def local(img, txt, scale, prm, ml_scale, grp, grp_mask):
    img, txt = l2_normalize(img), l2_normalize(txt)
    gather = lambda x: jax.lax.all_gather(x, batch_axes, axis=0, tiled=True)
    reduce = lambda x: jax.lax.psum(x, batch_axes)
    total_rows = reduce(jnp.float32(img.shape[0]))
    offset = jax.lax.axis_index(batch_axes) * img.shape[0]
    terms = _image_text_terms(img, txt, gather(img), gather(txt), scale, offset)
    ml = None
    if with_prompts:
      prm = l2_normalize(prm)
      keys = gather(prm.reshape(-1, prm.shape[-1]))
      if with_groups:
        grp = l2_normalize(grp)
        ml = _multi_label_group_terms(
          grp, grp_mask, prm, gather(grp), gather(grp_mask), keys, ml_scale
        )
      else:
        ml = _multi_label_terms(img, prm, gather(img), keys, ml_scale)
    return _finish(terms, ml, total_rows, reduce)

  n = image_embed.shape[0]
  dummy = jnp.zeros((), jnp.float32)
  prm = prompt_embed if with_prompts else jnp.zeros((n, 1, 1), jnp.float32)
  ml_scale = multi_label_scale if with_prompts else dummy
  grp = group_embed if with_groups else jnp.zeros((n, 1, 1), jnp.float32)
  grp_mask = group_mask if with_groups else jnp.ones((n, 1), bool)
  fn = jax.shard_map(
    local,
    mesh=mesh,
    in_specs=(batch, batch, P(), batch, P(), batch, batch),
    out_specs=P(),
    check_vma=False,
  )
  return fn(image_embed, text_embed, logit_scale, prm, ml_scale, grp, grp_mask)


def embedding_stats(image_embed, text_embed) -> dict[str, Any]:
  """Mean positive and negative cosine similarities (diagnostics for the logs)."""
  img, txt = l2_normalize(image_embed), l2_normalize(text_embed)
  n = img.shape[0]
  pos = jnp.mean(jnp.sum(img * txt, axis=-1))
  total = jnp.dot(jnp.sum(img, axis=0), jnp.sum(txt, axis=0))  # sum of all N x N cosines
  neg = (total - pos * n) / jnp.maximum(n * (n - 1), 1)
  return {'sim/positive': pos, 'sim/negative': neg}
