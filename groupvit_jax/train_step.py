"""The training state and one pure, jitted training step (forward, losses, backward, AdamW)."""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from groupvit_jax import losses as losses_lib
from groupvit_jax import sharding as sharding_lib
from groupvit_jax.models.groupvit import GroupViT, init_variables


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray  # int32 scalar: optimizer steps taken
  params: Any
  batch_stats: Any
  opt_state: Any


def initial_state(
  optimizer: optax.GradientTransformation, params: Any, batch_stats: Any
) -> TrainState:
  """Step 0 of a state whose trained part is `params` (traceable)."""
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=batch_stats,
    opt_state=optimizer.init(params),
  )


def apply_update(
  state: TrainState,
  grads: Any,
  terms: dict[str, Any],
  optimizer: optax.GradientTransformation,
  schedule: optax.Schedule,
  batch_stats: Any = None,
  keep: Callable[[Any, Any], Any] | None = None,
) -> tuple[TrainState, dict[str, Any]]:
  """One optimizer update of `state` with `grads` (traceable).

  Args:
    terms: the step's loss terms, returned with grad_norm, lr and param_norm added.
    batch_stats: the new `batch_stats` (default: unchanged, e.g. frozen towers).
    keep: optional (new params, old params) -> params, for params that must not move.
  Returns:
    (the next state, metrics).
  """
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  if keep is not None:
    params = keep(params, state.params)
  metrics = dict(
    terms,
    grad_norm=optax.tree.norm(grads),
    lr=schedule(state.step),
    param_norm=optax.tree.norm(params),
  )
  new_state = TrainState(
    step=state.step + 1,
    params=params,
    batch_stats=state.batch_stats if batch_stats is None else batch_stats,
    opt_state=opt_state,
  )
  return new_state, metrics


def jit_train_step(
  train_step: Callable, mesh: Mesh, state_sharding: TrainState, batch_keys: tuple[str, ...]
) -> Callable:
  """`train_step(state, batch, rng)` jitted with the state's shardings, the batch split over every
  mesh axis, the rng and metrics replicated, and the state donated."""
  replicated = sharding_lib.replicated(mesh)
  batch_spec = sharding_lib.batch_sharding(mesh)
  return jax.jit(
    train_step,
    in_shardings=(state_sharding, {k: batch_spec for k in batch_keys}, replicated),
    out_shardings=(state_sharding, replicated),
    donate_argnums=(0,),
  )


def abstract_state(model: GroupViT, optimizer: optax.GradientTransformation) -> TrainState:
  """Shapes of the whole training state, without allocating anything."""

  def init(rng):
    variables = init_variables(model, rng)
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=variables['params'],
      batch_stats=variables['batch_stats'],
      opt_state=optimizer.init(variables['params']),
    )

  return jax.eval_shape(init, jax.random.key(0))


def state_shardings(abstract: TrainState, mesh: Mesh, rules) -> TrainState:
  return sharding_lib.tree_shardings(abstract, rules, mesh)


def create_state(
  model: GroupViT, optimizer: optax.GradientTransformation, rng: jax.Array, shardings: TrainState
) -> TrainState:
  """Initialises the state directly in its shardings (never materialised on one device)."""

  @functools.partial(jax.jit, out_shardings=shardings)
  def init(rng):
    variables = init_variables(model, rng)
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=variables['params'],
      batch_stats=variables['batch_stats'],
      opt_state=optimizer.init(variables['params']),
    )

  return init(rng)


def _split_micro(batch: dict[str, jnp.ndarray], accum: int) -> dict[str, jnp.ndarray]:
  """[G, ...] -> [accum, G / accum, ...] taking every accum-th row, so that each micro-batch
  draws evenly from every device's shard of the batch."""

  def split(x):
    g = x.shape[0]
    x = x.reshape(g // accum, accum, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1)

  return jax.tree.map(split, batch)


def multi_label_by_best_group(config: ml_collections.ConfigDict, multi_label: bool) -> bool:
  """Validates `config.loss.multi_label_pooling` and says whether the multi-label loss scores an
  image against a noun prompt by its best-matching final group ('max'; an extension, not in the
  release; measurements in docs/results.md) instead of its pooled embedding ('mean', the
  release)."""
  pooling = config.loss.get('multi_label_pooling', 'mean')
  if pooling not in ('mean', 'max'):
    raise ValueError(f"loss.multi_label_pooling must be 'mean' or 'max', got {pooling!r}")
  if pooling == 'max' and not multi_label:
    raise ValueError(
      "loss.multi_label_pooling='max' needs the multi-label loss (model.multi_label=True)"
    )
  return pooling == 'max'


def make_train_step(
  model: GroupViT,
  optimizer: optax.GradientTransformation,
  schedule: optax.Schedule,
  config: ml_collections.ConfigDict,
  mesh: Mesh,
  state_sharding: TrainState,
) -> Callable:
  """Builds `train_step(state, batch, rng) -> (state, metrics)`, jitted with explicit in/out
  shardings and the state donated.

  batch: {'image' [G, H, W, 3] float32, 'text' [G, L] int32, 'prompts' [G, K, L] int32} global
  arrays sharded over the batch. rng: the run's base key; each step folds in its step number, so
  a resumed run draws exactly the noise an uninterrupted one would.
  """
  accum = int(config.grad_accum_steps)
  multi_label = model.config.multi_label
  batch_axes = tuple(mesh.axis_names)
  batch_spec = sharding_lib.batch_sharding(mesh)

  best_group = multi_label_by_best_group(config, multi_label)

  def compute_losses(out):
    args = (
      out['image_embed'],
      out['text_embed'],
      out['logit_scale'],
      out.get('prompt_embed'),
      out.get('multi_label_logit_scale'),
      out.get('group_embeds'),
      out.get('group_mask'),
    )
    if config.loss.formulation == 'shard_map':
      return losses_lib.sharded_contrastive_losses(mesh, batch_axes, *args)
    if config.loss.formulation == 'global':
      return losses_lib.contrastive_losses(*args)
    raise ValueError(
      f'loss.formulation must be global or shard_map, got {config.loss.formulation!r}'
    )

  def loss_fn(params, batch_stats, micro, rng):
    gumbel_rng, drop_rng = jax.random.split(rng)
    out, new_vars = model.apply(
      {'params': params, 'batch_stats': batch_stats},
      micro['image'],
      micro['text'],
      micro['prompts'] if multi_label else None,
      train=True,
      rngs={'gumbel': gumbel_rng, 'droppath': drop_rng},
      mutable=['batch_stats'],
      with_groups=best_group,
    )
    terms = compute_losses(out)
    terms.update(losses_lib.embedding_stats(out['image_embed'], out['text_embed']))
    terms['logit_scale'] = out['logit_scale']
    if multi_label:
      terms['multi_label_logit_scale'] = out['multi_label_logit_scale']
    return terms['loss'], (terms, new_vars['batch_stats'])

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, batch: dict[str, jnp.ndarray], rng: jax.Array):
    step_rng = jax.random.fold_in(rng, state.step)
    if accum == 1:
      (_, (terms, batch_stats)), grads = grad_fn(state.params, state.batch_stats, batch, step_rng)
    else:
      micro_batches = _split_micro(batch, accum)

      def body(carry, xs):
        grads_sum, stats = carry
        micro, i = xs
        micro = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, batch_spec), micro)
        (_, (terms, stats)), grads = grad_fn(
          state.params, stats, micro, jax.random.fold_in(step_rng, i)
        )
        return (jax.tree.map(jnp.add, grads_sum, grads), stats), terms

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (grads, batch_stats), all_terms = jax.lax.scan(
        body, (zeros, state.batch_stats), (micro_batches, jnp.arange(accum))
      )
      grads = jax.tree.map(lambda g: g / accum, grads)
      terms = jax.tree.map(lambda x: jnp.mean(x, axis=0), all_terms)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(
      terms, grad_norm=grad_norm, lr=schedule(state.step), param_norm=optax.tree.norm(params)
    )
    new_state = TrainState(
      step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    return new_state, metrics

  replicated = sharding_lib.replicated(mesh)
  batch_shardings = {'image': batch_spec, 'text': batch_spec}
  if multi_label:
    batch_shardings['prompts'] = batch_spec
  return jax.jit(
    train_step,
    in_shardings=(state_sharding, batch_shardings, replicated),
    out_shardings=(state_sharding, replicated),
    donate_argnums=(0,),
  )
