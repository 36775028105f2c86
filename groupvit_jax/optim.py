"""Optimizer of the released recipe: AdamW, warmup + cosine (timm semantics), clipping, wd mask."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

REFERENCE_BATCH = 4096  # the release scales every learning rate by batch / 4096


def scaled_lrs(opt: ml_collections.ConfigDict, effective_batch: int) -> tuple[float, float, float]:
  """(peak, warmup-start, final) learning rates scaled by effective_batch / 4096 as released."""
  scale = effective_batch / REFERENCE_BATCH if opt.scale_lr_by_batch else 1.0
  return opt.base_lr * scale, opt.warmup_lr * scale, opt.min_lr * scale


def learning_rate_schedule(
  peak: float, warmup_init: float, final: float, warmup_steps: int, total_steps: int
) -> optax.Schedule:
  """timm CosineLRScheduler(t_in_epochs=False) as used by the release.

  Linear warmup from `warmup_init` to `peak` over `warmup_steps`; afterwards
  final + (peak - final) * (1 + cos(pi * t / total_steps)) / 2 on the UN-shifted step t.
  """

  def schedule(step):
    t = jnp.asarray(step, jnp.float32)
    warm = warmup_init + t * (peak - warmup_init) / max(warmup_steps, 1)
    cos = final + 0.5 * (peak - final) * (
      1.0 + jnp.cos(math.pi * jnp.minimum(t, total_steps) / total_steps)
    )
    return jnp.where(t < warmup_steps, warm, cos)

  return schedule


def weight_decay_mask(params: Any) -> Any:
  """True where the release applies weight decay: not on 1-D tensors nor biases.

  0-D logit scales, position embeddings and group tokens ARE decayed (as released).
  """

  def decide(path, leaf):
    name = getattr(path[-1], 'key', str(path[-1]))
    return not (jnp.ndim(leaf) == 1 or name == 'bias')

  return jax.tree_util.tree_map_with_path(decide, params)


def make_optimizer(
  opt: ml_collections.ConfigDict, effective_batch: int, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW + global-norm clipping with the released schedule. Returns (optimizer, schedule)."""
  peak, warm, final = scaled_lrs(opt, effective_batch)
  schedule = learning_rate_schedule(peak, warm, final, opt.warmup_steps, total_steps)
  chain = []
  if opt.clip_grad_norm:
    chain.append(optax.clip_by_global_norm(opt.clip_grad_norm))
  chain.append(
    optax.adamw(
      schedule,
      b1=opt.b1,
      b2=opt.b2,
      eps=opt.eps,
      weight_decay=opt.weight_decay,
      mask=weight_decay_mask,
    )
  )
  return optax.chain(*chain), schedule
