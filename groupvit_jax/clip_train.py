"""A plain CLIP in the one trainer (`config.method='clip'`): the ViT image tower and the text tower
of `groupvit_jax.models.clip`, trained with the image-text loss of `groupvit_jax.losses` (and,
with `config.clip.multi_label`, GroupViT's multi-label loss on the caption's noun prompts, scored
against the same temperature).

The export is a model directory of the pretrained-towers kind ({"model_kind": "clip"}), so a CLIP
trained here serves as SCG's recogniser and grouper and as ZeroSeg's teacher exactly as a
converted OpenAI CLIP does.
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

from groupvit_jax import losses as losses_lib
from groupvit_jax import sharding as sharding_lib
from groupvit_jax import train_step as train_lib
from groupvit_jax.checkpoints import store
from groupvit_jax.models.clip import CLIP, CLIPConfig
from groupvit_jax.preprocessing import CLIP_MEAN, CLIP_STD
from groupvit_jax.train_step import TrainState


def build_config(config: ml_collections.ConfigDict) -> CLIPConfig:
  """The CLIPConfig of a recipe (`config.clip.model`); unknown keys are errors."""
  return CLIPConfig.from_dict(config.clip.model)


class CLIPTask:
  """What the trainer needs of a plain CLIP (the counterpart of the GroupViT step)."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.model_config = build_config(config)
    self.model = CLIP(self.model_config)
    self.multi_label = bool(config.clip.multi_label)
    self.batch_keys = ('image', 'text', 'prompts') if self.multi_label else ('image', 'text')

  def _init(self, optimizer, rng) -> TrainState:
    cfg = self.model_config
    s = cfg.vision.image_size
    pixels = jnp.zeros((1, s, s, cfg.vision.in_channels), jnp.float32)
    text = jnp.zeros((1, cfg.text.context_length), jnp.int32)
    params = self.model.init(rng, pixels, text)['params']
    return train_lib.initial_state(optimizer, params, {})

  def abstract_state(self, optimizer) -> TrainState:
    return jax.eval_shape(functools.partial(self._init, optimizer), jax.random.key(0))

  def create_state(self, optimizer, rng, shardings) -> TrainState:
    return jax.jit(functools.partial(self._init, optimizer), out_shardings=shardings)(rng)

  def export(self, directory: str, state: TrainState) -> None:
    store.save_model(directory, self.model_config, {'params': state.params}, overwrite=True)

  def make_train_step(
    self,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    state_sharding: TrainState,
  ) -> Callable:
    """`train_step(state, batch, rng) -> (state, metrics)`, jitted, the state donated; batch
    {'image' [G, S, S, 3] normalised, 'text' [G, L][, 'prompts' [G, K, L]]}."""
    if int(config.grad_accum_steps) != 1:
      raise ValueError('the CLIP task trains without gradient accumulation (grad_accum_steps=1)')
    model, multi_label = self.model, self.multi_label
    max_scale = float(config.clip.max_logit_scale)
    batch_axes = tuple(mesh.axis_names)

    def loss_fn(params, batch):
      apply = functools.partial(model.apply, {'params': params})
      image = apply(batch['image'], method=CLIP.encode_image)
      text = apply(batch['text'], method=CLIP.encode_text)
      prompts = None
      if multi_label:
        g, k, length = batch['prompts'].shape
        flat = batch['prompts'].reshape(g * k, length)
        prompts = apply(flat, method=CLIP.encode_text).reshape(g, k, -1)
      scale = jnp.minimum(jnp.exp(params['logit_scale']), max_scale)
      args = (image, text, scale, prompts, scale if multi_label else None)
      if config.loss.formulation == 'shard_map':
        terms = losses_lib.sharded_contrastive_losses(mesh, batch_axes, *args)
      else:
        terms = losses_lib.contrastive_losses(*args)
      terms.update(losses_lib.embedding_stats(image, text))
      terms['logit_scale'] = scale
      return terms['loss'], terms

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch, rng):
      del rng  # nothing is random in a CLIP step
      (_, terms), grads = grad_fn(state.params, batch)
      return train_lib.apply_update(state, grads, terms, optimizer, schedule)

    return train_lib.jit_train_step(train_step, mesh, state_sharding, self.batch_keys)

  def abstract_batch(self, config: ml_collections.ConfigDict, mesh: Mesh) -> dict[str, Any]:
    g, s = int(config.global_batch_size), self.model_config.vision.image_size
    sh = sharding_lib.batch_sharding(mesh)
    length = self.model_config.text.context_length
    batch = {
      'image': jax.ShapeDtypeStruct((g, s, s, 3), jnp.float32, sharding=sh),
      'text': jax.ShapeDtypeStruct((g, length), jnp.int32, sharding=sh),
    }
    if self.multi_label:
      k = int(config.data.text.num_prompts)
      batch['prompts'] = jax.ShapeDtypeStruct((g, k, length), jnp.int32, sharding=sh)
    return batch

  def validate(self, config: ml_collections.ConfigDict) -> None:
    """Start-time checks of a recipe against the model."""
    cfg = self.model_config
    if int(config.data.image_size) != cfg.vision.image_size:
      raise ValueError(
        f'data.image_size {config.data.image_size} != clip.model.vision.image_size '
        f'{cfg.vision.image_size}'
      )
    if int(config.data.text.context_length) != cfg.text.context_length:
      raise ValueError(
        f'data.text.context_length {config.data.text.context_length} != '
        f'clip.model.text.context_length {cfg.text.context_length}'
      )
    # SCG and ZeroSeg feed an exported CLIP with CLIP's normalisation, as any converted CLIP.
    for name, want in (('mean', CLIP_MEAN), ('std', CLIP_STD)):
      if not np.allclose(np.asarray(config.data[name], np.float32), want, atol=1e-6):
        raise ValueError(f"data.{name} must be CLIP's {tuple(want.tolist())} to train a CLIP")
