"""ZeroSeg in the one trainer: the training state, and one jitted step on images alone.

`params` is the student's (groupvit_jax/models/zeroseg.py); the frozen teacher CLIP rides in the
state's `batch_stats` slot as {'teacher': its variables}: never differentiated, saved with every
checkpoint, so a resumed run or an evaluation hook needs nothing but the workdir (the cost is the
teacher's size per checkpoint).

A step: images [G, S, S, 3] (ImageNet-normalised centre crops) -> the student with a fresh mask
and assignment noise (rng folded with the step) -> `zeroseg_losses` against the teacher's view
embeddings: `batch['teacher']` [G, V, E] from the cache (`config.zeroseg.teacher='cache'`, the
paper's) or computed in the step from the same crops (`'online'`). The MAE's sin-cos position
embeddings stay fixed, as in the MAE release (`models.zeroseg.is_fixed`).
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

from groupvit_jax import sharding as sharding_lib
from groupvit_jax import teacher_views, zeroseg_losses
from groupvit_jax import train_step as train_lib
from groupvit_jax.checkpoints import store
from groupvit_jax.models import zeroseg as zeroseg_lib
from groupvit_jax.models.grouping import Assignment
from groupvit_jax.models.groupvit import compose_group_maps
from groupvit_jax.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from groupvit_jax.train_step import TrainState

TEACHER_MODES = ('cache', 'online')


def build_config(config: ml_collections.ConfigDict) -> tuple[zeroseg_lib.ZeroSegConfig, Any]:
  """The ZeroSegConfig of a recipe (`config.zeroseg`) and the teacher's variables."""
  z = config.zeroseg
  if not z.teacher_dir:
    raise ValueError('config.zeroseg.teacher_dir is empty: give a CLIP model directory')
  if z.teacher not in TEACHER_MODES:
    raise ValueError(f'config.zeroseg.teacher must be one of {TEACHER_MODES}, got {z.teacher!r}')
  teacher_cfg, teacher_vars = store.load_model(z.teacher_dir)
  if store.kind_of(teacher_cfg) != 'clip':
    raise ValueError(f'{z.teacher_dir} holds a {store.kind_of(teacher_cfg)}, not a CLIP')
  cfg = zeroseg_lib.ZeroSegConfig.from_dict({**z.model.to_dict(), 'teacher': teacher_cfg.to_dict()})
  cfg = store.with_dtype(cfg, cfg.encoder.dtype)
  return cfg, jax.tree.map(np.asarray, teacher_vars)


def _initial_student(cfg: zeroseg_lib.ZeroSegConfig, init_from: str, rng: jax.Array):
  """Fresh student params, with the encoder and decoder of the MAE directory `init_from` if
  given (its shapes must be the student's)."""
  params = jax.jit(functools.partial(zeroseg_lib.init_params, cfg))(rng)
  if not init_from:
    return params
  mae_cfg, mae_vars = store.load_model(init_from)
  if store.kind_of(mae_cfg) != 'mae':
    raise ValueError(f'config.zeroseg.init_from {init_from} holds a {store.kind_of(mae_cfg)}')
  want = jax.tree.map(lambda x: x.shape, params['mae'])
  got = jax.tree.map(lambda x: x.shape, mae_vars['params'])
  if want != got:
    raise ValueError(
      f'config.zeroseg.init_from {init_from}: its MAE does not match config.zeroseg.model.mae '
      f'(encoder {mae_cfg.encoder.width}x{mae_cfg.encoder.depth}, decoder '
      f'{mae_cfg.decoder_width}x{mae_cfg.decoder_depth})'
    )
  return dict(params, mae=jax.tree.map(jnp.asarray, mae_vars['params']))


def segments_owning_patches(assignments: tuple[Assignment, ...]) -> jnp.ndarray:
  """Mean number of final segments that own at least one token under the hard assignment: a
  collapse of the grouping shows here first. -> float32 []."""
  hard = compose_group_maps(assignments, use_soft=False)[-1]  # [B, N, S]
  return jnp.mean(jnp.sum(jnp.sum(hard, axis=1) >= 0.5, axis=-1).astype(jnp.float32))


class ZeroSegTask:
  """What the trainer needs of the ZeroSeg method (the counterpart of the GroupViT step)."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.model_config, self._teacher = build_config(config)
    z = config.zeroseg
    self.online = z.teacher == 'online'
    self.grids = teacher_views.check_grids(z.grids)
    self.init_from = z.init_from
    self.image_size = int(config.data.image_size)
    self.batch_keys = ('image',) if self.online else ('image', 'teacher')

  @property
  def teacher_variables(self) -> Any:
    """The frozen teacher CLIP's variables (host arrays) read from config.zeroseg.teacher_dir."""
    return self._teacher

  def _state(self, optimizer, teacher, params) -> TrainState:
    return train_lib.initial_state(optimizer, params, {'teacher': teacher})

  def abstract_state(self, optimizer) -> TrainState:
    fresh = functools.partial(zeroseg_lib.init_params, self.model_config)
    return jax.eval_shape(
      lambda t, r: self._state(optimizer, t, fresh(r)), self._teacher, jax.random.key(0)
    )

  def create_state(self, optimizer, rng, shardings) -> TrainState:
    params = _initial_student(self.model_config, self.init_from, rng)
    place = jax.jit(functools.partial(self._state, optimizer), out_shardings=shardings)
    return place(self._teacher, params)

  def export(self, directory: str, state: TrainState) -> None:
    variables = {'params': state.params, 'teacher': state.batch_stats['teacher']}
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
    {'image' [G, S, S, 3] ImageNet-normalised[, 'teacher' [G, V, E] unit]}."""
    cfg = self.model_config
    z = config.zeroseg
    weights = {k: float(v) for k, v in z.weights.items()}
    l1, seg_red = str(z.l1_reduction), str(z.segment_reduction)
    local = jnp.asarray(teacher_views.local_view_mask(self.grids))
    if int(config.grad_accum_steps) != 1:
      raise ValueError('ZeroSeg trains without gradient accumulation (grad_accum_steps=1)')
    student = zeroseg_lib.ZeroSegStudent(cfg)
    grids, online = self.grids, self.online
    decode = weights.get('mae', 0.0) > 0

    def loss_fn(params, frozen, batch, rng):
      masking_rng, gumbel_rng = jax.random.split(rng)
      out = student.apply(
        {'params': params},
        batch['image'],
        train=True,
        decode=decode,
        rngs={'masking': masking_rng, 'gumbel': gumbel_rng},
      )
      if online:
        pixels = (batch['image'] * IMAGENET_STD + IMAGENET_MEAN) * 255.0
        teacher = jax.lax.stop_gradient(frozen['teacher']['params'])
        views = jax.lax.stop_gradient(
          teacher_views.teacher_embeddings(cfg.teacher, teacher, pixels, grids)
        )
      else:
        views = batch['teacher']
      terms = zeroseg_losses.zeroseg_losses(out, views, local, weights, l1, seg_red)
      terms['segments_used'] = segments_owning_patches(out['assignments'])
      return terms['loss'], terms

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def keep_fixed(new, old):
      def leaf(path, n, o):
        return o if zeroseg_lib.is_fixed(tuple(getattr(k, 'key', str(k)) for k in path)) else n

      return jax.tree_util.tree_map_with_path(leaf, new, old)

    def train_step(state: TrainState, batch, rng):
      step_rng = jax.random.fold_in(rng, state.step)
      (_, terms), grads = grad_fn(state.params, state.batch_stats, batch, step_rng)
      return train_lib.apply_update(state, grads, terms, optimizer, schedule, keep=keep_fixed)

    return train_lib.jit_train_step(train_step, mesh, state_sharding, self.batch_keys)

  def abstract_batch(self, config: ml_collections.ConfigDict, mesh: Mesh) -> dict[str, Any]:
    g, s = int(config.global_batch_size), self.image_size
    sh = sharding_lib.batch_sharding(mesh)
    batch = {'image': jax.ShapeDtypeStruct((g, s, s, 3), jnp.float32, sharding=sh)}
    if not self.online:
      v, e = teacher_views.num_views(self.grids), self.model_config.embed_dim
      batch['teacher'] = jax.ShapeDtypeStruct((g, v, e), jnp.float32, sharding=sh)
    return batch

  def validate(self, config: ml_collections.ConfigDict) -> None:
    """Start-time checks of a recipe against the student, the teacher and the data."""
    enc = self.model_config.encoder
    if self.image_size != enc.image_size:
      raise ValueError(
        f'data.image_size {self.image_size} != zeroseg.model.mae.encoder.image_size '
        f'{enc.image_size}'
      )
    unknown = sorted(set(config.zeroseg.weights) - set(zeroseg_losses.TERMS))
    if unknown:
      raise ValueError(f'zeroseg.weights: unknown term(s) {unknown}; terms {zeroseg_losses.TERMS}')
    for name, valid in (
      ('l1_reduction', zeroseg_losses.L1_REDUCTIONS),
      ('segment_reduction', zeroseg_losses.SEGMENT_REDUCTIONS),
    ):
      if config.zeroseg[name] not in valid:
        raise ValueError(f'zeroseg.{name} must be one of {valid}')
    if self.online:
      return
    data = config.data
    if not data.get('teacher_cache'):
      raise ValueError(
        "zeroseg.teacher='cache' needs data.teacher_cache (python -m "
        "input_pipeline.prepare_teacher), or set zeroseg.teacher='online'"
      )
    if tuple(data.get('teacher_grids', ())) != self.grids:
      raise ValueError(
        f'data.teacher_grids {tuple(data.get("teacher_grids", ()))} != zeroseg.grids {self.grids}'
      )
    # The cache holds views of the centre crop: any other crop or a flip would pair an image with
    # another image's views.
    moved = [
      name
      for name, bad in (
        ("crop != 'center'", data.get('crop', 'random_resized') != 'center'),
        ('hflip_prob > 0', float(data.hflip_prob) > 0),
        ('randaugment', bool(data.randaugment)),
        ('random_erasing.prob > 0', float(data.random_erasing.prob) > 0),
      )
      if bad
    ]
    if moved:
      raise ValueError(
        'the teacher cache holds views of centre crops; config.data has ' + ', '.join(moved)
      )
