"""ZeroSeg: the student against Hugging Face ViTMAE, the losses against float64 loops and on 8
devices, the teacher views, the trained model's segmentation API and the trainer's checks.

Tolerances: 1e-4 absolute against PyTorch (as tests/test_towers.py: float32 on both sides in
another operation order, observed 1e-6..1e-5); 1e-6 against the float64 loss loops (float32
sums of at most a few hundred terms of size <= 2); 1e-6 between 1 and 8 devices (the same float32
terms reduced in another order).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from groupvit_jax import teacher_views, zeroseg_losses
from groupvit_jax.checkpoints import store
from groupvit_jax.models import zeroseg as zs
from groupvit_jax.models.clip import CLIP, CLIPConfig, clip_vision_config
from groupvit_jax.models.config import ConfigError, TextEncoderConfig

TEACHER = CLIPConfig(
  vision=clip_vision_config(image_size=32, patch_size=8, width=32, depth=1, num_heads=2),
  text=TextEncoderConfig(width=32, num_heads=2, num_layers=1, context_length=16),
  embed_dim=16,
)
# The student of the HF comparison: MAE_SPEC's sizes (tests/test_towers.py).
STUDENT = dict(
  teacher=TEACHER.to_dict(),
  mae=dict(
    encoder=dict(image_size=32, patch_size=8, width=48, depth=2, num_heads=3),
    decoder_width=32,
    decoder_depth=2,
    decoder_num_heads=4,
    mask_ratio=0.6,
  ),
  head=dict(width=32, num_heads=2, num_group_tokens=(8, 4, 0), num_output_groups=(8, 4)),
)


def _cfg(**overrides) -> zs.ZeroSegConfig:
  d = {**STUDENT, **overrides}
  return zs.ZeroSegConfig.from_dict(d)


def test_config_round_trip_defaults_and_errors():
  cfg = _cfg()
  assert zs.ZeroSegConfig.from_dict(cfg.to_dict()) == cfg
  assert (cfg.head.image_size, cfg.head.patch_size) == (32, 8)  # follows the encoder
  assert cfg.num_segments == 4 and cfg.embed_dim == 16
  default = zs.ZeroSegConfig()
  assert default.mae.mask_ratio == 0.6 and default.mae.norm_pix_loss
  assert default.head.depths == (2, 2, 1) and default.head.num_output_groups == (32, 8)
  with pytest.raises(ConfigError, match='unknown key'):
    zs.ZeroSegConfig.from_dict({**STUDENT, 'heads': {}})
  with pytest.raises(ConfigError, match='head_input'):
    _cfg(head_input='masked')
  with pytest.raises(ConfigError, match='decoder'):
    _cfg(mae={**STUDENT['mae'], 'decoder_depth': 0})


def test_student_shapes_and_inference_at_other_sizes():
  cfg = _cfg()
  params = zs.init_params(cfg, jax.random.key(0))
  student = zs.ZeroSegStudent(cfg)
  x = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
  rngs = {'masking': jax.random.key(2), 'gumbel': jax.random.key(3)}
  out = jax.jit(functools.partial(student.apply, rngs=rngs))({'params': params}, x)
  assert out['segment_embeds'].shape == (3, 4, 16) and out['global_embed'].shape == (3, 16)
  np.testing.assert_allclose(np.linalg.norm(out['segment_embeds'], axis=-1), 1.0, atol=1e-5)
  assert np.asarray(out['mask']).sum(1).tolist() == [10.0] * 3  # int(16 * 0.4) = 6 kept
  maps = [a.hard.shape for a in out['assignments']]
  assert maps == [(3, 8, 6), (3, 4, 8)]  # the head saw the 6 visible tokens
  full = student.apply(
    {'params': params}, jnp.zeros((1, 48, 64, 3)), method=zs.ZeroSegStudent.encode_image
  )
  assert full['grid'] == (6, 8) and full['assignments'][0].soft.shape == (1, 8, 48)
  # A zero mask ratio keeps one parameter layout (the decoder is initialised) and a zero MAE loss.
  cfg0 = _cfg(mae={**STUDENT['mae'], 'mask_ratio': 0.0})
  p0 = zs.init_params(cfg0, jax.random.key(0))
  assert jax.tree.structure(p0) == jax.tree.structure(params)
  out0 = zs.ZeroSegStudent(cfg0).apply({'params': p0}, x, rngs=rngs)
  assert float(out0['mae_loss']) == 0.0 and np.asarray(out0['mask']).sum() == 0


def test_student_masks_and_reconstructs_as_hugging_face_vitmae():
  torch = pytest.importorskip('torch')
  pytest.importorskip('transformers')
  from groupvit_jax.checkpoints import towers
  from references import towers as ref
  from tests.test_towers import MAE_SPEC, _nchw, _pixels

  hf = ref.random_hf_mae(seed=3, norm_pix_loss=True, mask_ratio=0.6, **MAE_SPEC)
  sd = ref.hf_mae_to_release(hf.state_dict())
  cfg = _cfg()
  params = zs.init_params(cfg, jax.random.key(0))
  abstract = {'params': jax.eval_shape(lambda: params['mae'])}
  params = dict(params, mae=towers.mae_to_variables(sd, abstract)['params'])
  pixels = _pixels((32, 32), n=3)
  noise = torch.rand(3, 16, generator=torch.Generator().manual_seed(0))
  with torch.no_grad():
    ref_out = hf(_nchw(pixels), noise=noise)
    latent = hf.vit(_nchw(pixels), noise=noise).last_hidden_state.numpy()
  student = zs.ZeroSegStudent(cfg)
  out = jax.jit(functools.partial(student.apply, train=False))(
    {'params': params}, pixels, noise.numpy()
  )
  np.testing.assert_array_equal(np.asarray(out['mask']), ref_out.mask.numpy())
  assert abs(float(out['mae_loss']) - float(ref_out.loss)) < 1e-4
  # The head sees exactly the reference's visible tokens: the heads on HF's latent agree.
  heads = student.apply({'params': params}, jnp.asarray(latent[:, 1:]), method=student.segments)
  for key in ('segment_embeds', 'global_embed'):
    np.testing.assert_allclose(out[key], heads[key], atol=1e-4)


def _reference_losses(z, g, v, local, l1, seg):
  z, g, v = (np.asarray(a, np.float64) for a in (z, g, v))
  b, s, _ = g.shape
  red = np.mean if l1 == 'mean' else np.sum
  ms, match = 0.0, 0.0
  for i in range(b):
    ms += np.mean([red(np.abs(z[i] - v[i, j])) for j in range(v.shape[1])])
    per = [min(red(np.abs(g[i, k] - v[i, j])) for j in np.flatnonzero(local)) for k in range(s)]
    match += np.mean(per) if seg == 'mean' else np.sum(per)
  return ms / b, match / b


@pytest.mark.parametrize('l1,seg', [('mean', 'mean'), ('sum', 'sum')])
def test_losses_match_float64_loops(l1, seg):
  rng = np.random.default_rng(0)
  unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
  z, g, v = (
    unit(rng.normal(size=s)).astype(np.float32) for s in ((4, 16), (4, 8, 16), (4, 30, 16))
  )
  local = teacher_views.local_view_mask((1, 2, 3, 4))
  out = {'global_embed': z, 'segment_embeds': g, 'mae_loss': jnp.float32(0.7)}
  w = {'multiscale': 2.0, 'matching': 0.5, 'mae': 1.0}
  got = zeroseg_losses.zeroseg_losses(out, v, local, w, l1, seg)
  ms, match = _reference_losses(z, g, v, local, l1, seg)
  assert abs(float(got['multiscale_loss']) - ms) < 1e-6 * max(1.0, ms)
  assert abs(float(got['matching_loss']) - match) < 1e-6 * max(1.0, match)
  assert abs(float(got['loss']) - (2 * ms + 0.5 * match + 0.7)) < 1e-5
  # Table 4's rows: a zero weight drops the term (reported as 0).
  base = zeroseg_losses.zeroseg_losses(out, v, local, {'multiscale': 0.0, 'matching': 0.0})
  assert float(base['matching_loss']) == 0.0 and float(base['loss']) == 0.0
  with pytest.raises(ValueError, match='unknown loss weight'):
    zeroseg_losses.zeroseg_losses(out, v, local, {'global': 1.0})


def test_losses_equal_on_one_and_eight_devices():
  devices = jax.devices()
  if len(devices) < 8:
    pytest.skip('needs 8 (fake) devices')
  cfg = _cfg()
  params = zs.init_params(cfg, jax.random.key(0))
  student = zs.ZeroSegStudent(cfg)
  rng = np.random.default_rng(1)
  x = rng.normal(size=(8, 32, 32, 3)).astype(np.float32)
  v = rng.normal(size=(8, 30, 16)).astype(np.float32)
  v /= np.linalg.norm(v, axis=-1, keepdims=True)
  noise = rng.uniform(size=(8, 16)).astype(np.float32)
  local = teacher_views.local_view_mask((1, 2, 3, 4))
  w = {'multiscale': 1.0, 'matching': 1.0, 'mae': 1.0}

  def loss(params, x, v, noise):
    out = student.apply({'params': params}, x, noise, rngs={'gumbel': jax.random.key(5)})
    return zeroseg_losses.zeroseg_losses(out, v, local, w)

  one = jax.jit(loss)(params, x, v, noise)
  mesh = Mesh(np.array(devices[:8]), ('data',))
  shard = lambda a: jax.device_put(a, NamedSharding(mesh, P('data')))
  eight = jax.jit(loss)(params, shard(x), shard(v), shard(noise))
  for key in one:
    assert abs(float(one[key]) - float(eight[key])) < 1e-6, key


def test_teacher_views_order_cells_and_embeddings():
  assert teacher_views.num_views() == 30
  assert teacher_views.cell_borders(224, 3) == [0, 75, 149, 224]
  np.testing.assert_array_equal(teacher_views.view_indices((1, 3)), [0, *range(5, 14)])
  assert teacher_views.local_view_mask((1, 2)).tolist() == [False] + [True] * 4
  with pytest.raises(ValueError, match='distinct'):
    teacher_views.check_grids((1, 5))
  x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
  views = teacher_views.cut_views(x, (1, 2), 32)
  np.testing.assert_allclose(views[:, 0], x, atol=1e-3)  # the whole crop at its own size
  # The 2x2 cells are the four quarters, upsampled: their means survive the resize.
  for k, (i, j) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
    quarter = x[:, 16 * i : 16 * i + 16, 16 * j : 16 * j + 16]
    np.testing.assert_allclose(views[:, 1 + k].mean((1, 2)), quarter.mean((1, 2)), atol=1.0)
  variables = store.init_model(TEACHER, jax.random.key(0))
  emb = teacher_views.teacher_embeddings(TEACHER, variables['params'], x, (1, 2))
  assert emb.shape == (2, 5, 16)
  whole = CLIP(TEACHER).apply(
    variables, (x / 255.0 - teacher_views.CLIP_MEAN) / teacher_views.CLIP_STD,
    method=CLIP.encode_image,
  )  # fmt: skip
  whole = whole / jnp.linalg.norm(whole, axis=-1, keepdims=True)
  np.testing.assert_allclose(emb[:, 0], whole, atol=1e-4)


def test_trained_model_directory_segments_and_shows_groups(tmp_path):
  from groupvit_jax import load_pretrained

  cfg = _cfg()
  variables = store.init_model(cfg, jax.random.key(0))
  store.save_model(str(tmp_path / 'm'), cfg, variables)
  model = load_pretrained(str(tmp_path / 'm'))
  assert model.kind == 'zeroseg' and model.config == cfg
  image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), np.uint8)
  labels = model.segment(image, ['cat', 'dog', 'car'], background_threshold=0.95)
  assert labels.shape == (40, 56) and set(np.unique(labels)) <= {0, 1, 2, 3}
  groups = model.groups([image, image])
  assert groups['group_ids'].shape == (2, 32, 32) and groups['group_ids'].max() < 4
  assert groups['segment_embeds'].shape == (2, 4, 16)


def _recipe(teacher_dir: str) -> ml_collections.ConfigDict:
  from tests.conftest import load_script

  config = load_script('configs/zeroseg_tiny.py').get_config()
  config.zeroseg.teacher_dir = teacher_dir
  return config


def test_trainer_refuses_a_cache_with_moving_crops_and_keeps_pos_embed_fixed(tmp_path):
  from groupvit_jax import optim, zeroseg_train
  from groupvit_jax import sharding as sharding_lib
  from groupvit_jax import train_step as train_lib

  teacher = dataclasses.replace(TEACHER, vision=dataclasses.replace(TEACHER.vision, image_size=64))
  store.save_model(str(tmp_path / 'clip'), teacher, store.init_model(teacher, jax.random.key(0)))
  config = _recipe(str(tmp_path / 'clip'))
  config.zeroseg.teacher = 'cache'
  config.data.teacher_cache = str(tmp_path / 'cache')
  config.data.crop = 'random_resized'
  task = zeroseg_train.ZeroSegTask(config)
  with pytest.raises(ValueError, match="crop != 'center'"):
    task.validate(config)
  config.zeroseg.teacher = 'online'
  config.zeroseg.model.mae.encoder.image_size = 32
  with pytest.raises(ValueError, match='image_size'):
    zeroseg_train.ZeroSegTask(config).validate(config)
  config.zeroseg.model.mae.encoder.image_size = 64
  task = zeroseg_train.ZeroSegTask(config)
  task.validate(config)

  mesh = sharding_lib.make_mesh(config.mesh)
  optimizer, schedule = optim.make_optimizer(config.optimizer, 8, 10)
  abstract = task.abstract_state(optimizer)
  shardings = train_lib.state_shardings(abstract, mesh, config.partition_rules)
  state = task.create_state(optimizer, jax.random.key(0), shardings)
  before = jax.tree.map(np.asarray, state.params)
  step = task.make_train_step(optimizer, schedule, config, mesh, shardings)
  batch = {'image': np.random.default_rng(0).normal(size=(8, 64, 64, 3)).astype(np.float32)}
  for _ in range(2):
    state, metrics = step(state, sharding_lib.global_batch(batch, mesh), jax.random.key(1))
  assert np.isfinite(float(metrics['loss'])) and 1 <= float(metrics['segments_used']) <= 4
  after = jax.tree.map(np.asarray, state.params)
  np.testing.assert_array_equal(
    after['mae']['encoder']['pos_embed'], before['mae']['encoder']['pos_embed']
  )
  np.testing.assert_array_equal(
    after['mae']['decoder_pos_embed'], before['mae']['decoder_pos_embed']
  )
  assert not np.array_equal(after['head_in']['kernel'], before['head_in']['kernel'])
  teacher_after = jax.tree.map(np.asarray, state.batch_stats['teacher'])
  for a, b in zip(jax.tree.leaves(teacher_after), jax.tree.leaves(task.teacher_variables)):
    np.testing.assert_array_equal(a, b)
