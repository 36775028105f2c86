"""SCG region adaptation in the one trainer: the training state, and one jitted step.

Only `params` = {'region_tokens' [M, W], 'logit_scale' []} are trained (AdamW, the trainer's
optimizer). The CLIP and the grouper (and dataset centroids) ride in the state's `batch_stats`
slot as {'clip', 'grouper'[, 'centroids']}: never differentiated, returned unchanged, so they are
sharded by the same partition rules and saved with every checkpoint (a resumed run needs nothing
but its workdir; the cost is the towers' size per checkpoint).

A step: pixels (the pipeline's ImageNet-normalised images, mapped back to 0..255) -> grouping ->
region embeddings with the learned tokens (`models.scg.forward`); the caption's noun prompts
(`batch['prompts']`, nouns only: `scg_losses.noun_mask`) -> the frozen CLIP text tower; then
`scg_losses` over the global batch.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from groupvit_jax import scg_losses
from groupvit_jax import sharding as sharding_lib
from groupvit_jax import train_step as train_lib
from groupvit_jax.checkpoints import store
from groupvit_jax.models import scg as scg_lib
from groupvit_jax.models.clip import CLIP
from groupvit_jax.train_step import TrainState

_SCG_MODEL_KEYS = (
  'num_regions',
  'kmeans_iters',
  'grouper_layer',
  'masking',
  'image_top_k',
  'naming',
)


def build_config(config: ml_collections.ConfigDict) -> tuple[scg_lib.SCGConfig, dict[str, Any]]:
  """The SCGConfig and the frozen variables {'clip', 'grouper'[, 'centroids']} of a recipe
  (`config.scg`: `config_lib.scg_defaults`)."""
  s = config.scg
  for name in ('clip_dir', 'grouper_dir'):
    if not s[name]:
      raise ValueError(f'config.scg.{name} is empty: give a converted model directory')
  if s.direction not in scg_losses.DIRECTIONS:
    raise ValueError(f'config.scg.direction must be one of {scg_losses.DIRECTIONS}')
  kw = {k: s[k] for k in _SCG_MODEL_KEYS}
  kw['centroids'] = 'dataset' if s.centroids else 'per_image'
  dtype = config.model.get('dtype', 'float32')
  cfg, clip_vars, grouper_vars = store.load_scg_towers(s.clip_dir, s.grouper_dir, dtype, **kw)
  # Host arrays: every process read the same files, and create_state places them in the state's
  # shardings.
  frozen = jax.tree.map(np.asarray, {'clip': clip_vars, 'grouper': grouper_vars})
  if s.centroids:
    frozen['centroids'] = scg_lib.check_centroids(cfg, np.load(s.centroids))
  return cfg, frozen


class SCGTask:
  """What the trainer needs of the SCG method (the counterpart of the GroupViT step)."""

  batch_keys = ('image', 'text', 'prompts')

  def __init__(self, config: ml_collections.ConfigDict):
    self.model_config, self._frozen = build_config(config)
    self.image_size = int(config.data.image_size)
    self.context_length = self.model_config.clip.text.context_length

  def _init(self, optimizer, frozen):
    params = scg_lib.init_params(self.model_config, frozen['clip']['params'])
    return train_lib.initial_state(optimizer, params, frozen)

  def abstract_state(self, optimizer) -> TrainState:
    return jax.eval_shape(lambda f: self._init(optimizer, f), self._frozen)

  def create_state(self, optimizer, rng, shardings) -> TrainState:
    del rng  # nothing is random: tokens start as the class token, the scale as the CLIP's
    return jax.jit(functools.partial(self._init, optimizer), out_shardings=shardings)(self._frozen)

  def export(self, directory: str, state: TrainState) -> None:
    variables = dict(state.batch_stats, params=state.params)
    store.save_model(directory, self.model_config, variables, overwrite=True)

  def make_train_step(
    self,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    state_sharding: TrainState,
  ) -> Callable:
    """`train_step(state, batch, rng) -> (state, metrics)`, jitted, the state donated; batch
    {'image' [G, S, S, 3] ImageNet-normalised, 'text' [G, L], 'prompts' [G, K, L]}."""
    cfg = self.model_config
    direction, max_scale = config.scg.direction, float(config.scg.max_logit_scale)
    batch_axes = tuple(mesh.axis_names)
    if int(config.grad_accum_steps) != 1:
      raise ValueError('SCG trains without gradient accumulation (grad_accum_steps=1)')
    clip = CLIP(cfg.clip)

    def loss_fn(params, frozen, batch):
      frozen = jax.lax.stop_gradient(frozen)
      pixels = (batch['image'] * scg_lib.IMAGENET_STD + scg_lib.IMAGENET_MEAN) * 255.0
      out = scg_lib.forward(cfg, dict(frozen, params=params), pixels)
      g, k, length = batch['prompts'].shape
      nouns = clip.apply(
        {'params': frozen['clip']['params']},
        batch['prompts'].reshape(g * k, length),
        method=CLIP.encode_text,
      ).reshape(g, k, -1)
      valid = scg_losses.noun_mask(batch['prompts'], batch['text'])
      scale = jnp.minimum(jnp.exp(params['logit_scale']), max_scale)
      args = (out['region_embeds'], out['present'], nouns, valid, scale, direction)
      if config.loss.formulation == 'shard_map':
        terms = scg_losses.sharded_scg_losses(mesh, batch_axes, *args)
      else:
        terms = scg_losses.scg_losses(*args)
      terms['logit_scale'] = scale
      terms['regions_present'] = jnp.mean(jnp.sum(out['present'], axis=-1).astype(jnp.float32))
      terms['nouns_per_caption'] = jnp.mean(jnp.sum(valid, axis=-1).astype(jnp.float32))
      return terms['loss'], terms

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch, rng):
      del rng
      (_, terms), grads = grad_fn(state.params, state.batch_stats, batch)
      return train_lib.apply_update(state, grads, terms, optimizer, schedule)

    return train_lib.jit_train_step(train_step, mesh, state_sharding, self.batch_keys)

  def abstract_batch(self, config: ml_collections.ConfigDict, mesh: Mesh) -> dict[str, Any]:
    g, s = int(config.global_batch_size), self.image_size
    sh = sharding_lib.batch_sharding(mesh)
    k, length = int(config.data.text.num_prompts), self.context_length
    return {
      'image': jax.ShapeDtypeStruct((g, s, s, 3), jnp.float32, sharding=sh),
      'text': jax.ShapeDtypeStruct((g, length), jnp.int32, sharding=sh),
      'prompts': jax.ShapeDtypeStruct((g, k, length), jnp.int32, sharding=sh),
    }

  def validate(self, config: ml_collections.ConfigDict) -> None:
    """Start-time checks of a recipe against the two towers."""
    q = self.model_config.patch_multiple
    if self.image_size % q:
      raise ValueError(f'data.image_size {self.image_size} is not a multiple of {q}')
    if int(config.data.text.context_length) != self.context_length:
      raise ValueError(
        f'data.text.context_length {config.data.text.context_length} != the CLIP text '
        f"tower's {self.context_length}"
      )
