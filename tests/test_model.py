"""Behaviour of the Flax GroupViT modules on the tiny config (one model, shared compiled calls)."""

import dataclasses
import functools
import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from groupvit_jax.config_lib import build_model_config
from groupvit_jax.models import GroupViT, GroupViTConfig, compose_group_maps, init_variables
from groupvit_jax.models.config import ConfigError
from groupvit_jax.models.grouping import assign_probs
from groupvit_jax.models.heads import BatchNorm
from groupvit_jax.ops.resize import resize_2d
from tests.conftest import REPO


def _tiny_config(**model_overrides) -> GroupViTConfig:
  spec = importlib.util.spec_from_file_location('tiny', REPO / 'configs' / 'tiny.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = build_model_config(module.get_config())
  return dataclasses.replace(cfg, **model_overrides)


CFG = _tiny_config()
B, K = 4, 3


@functools.lru_cache(maxsize=None)
def _setup(cfg: GroupViTConfig = CFG):
  model = GroupViT(cfg)
  variables = jax.jit(lambda r: init_variables(model, r))(jax.random.key(0))
  rng = np.random.default_rng(0)
  s = cfg.image.image_size
  images = jnp.asarray(rng.standard_normal((B, s, s, 3)), jnp.float32)
  text = np.zeros((B, 77), np.int32)
  text[:, 0] = 49406
  text[:, 1:6] = rng.integers(1, 49000, (B, 5))
  text[:, 6] = 49407
  prompts = np.repeat(text[:, None], K, axis=1)
  prompts[:, :, 2] = rng.integers(1, 49000, (B, K))
  return model, variables, images, jnp.asarray(text), jnp.asarray(prompts)


def _forward(model, variables, images, text, prompts, train, seed=0):
  rngs = {'gumbel': jax.random.key(seed), 'droppath': jax.random.key(seed + 1)}
  return model.apply(
    variables,
    images,
    text,
    prompts,
    train=train,
    rngs=rngs,
    mutable=['batch_stats'] if train else False,
  )


@functools.lru_cache(maxsize=None)
def _jitted_forward(train: bool):
  model, variables, images, text, prompts = _setup()
  return jax.jit(lambda v, seed: _forward(model, v, images, text, prompts, train, seed))


def test_output_shapes_and_assignments():
  _, variables, _, _, _ = _setup()
  out = _jitted_forward(False)(variables, 0)
  d = CFG.projection_dim
  assert out['image_embed'].shape == (B, d) and out['image_embed'].dtype == jnp.float32
  assert out['text_embed'].shape == (B, d)
  assert out['prompt_embed'].shape == (B, K, d)
  n = CFG.image.grid_size**2
  a0, a1 = out['assignments']
  assert a0.soft.shape == (B, 8, n) and a1.soft.shape == (B, 4, 8)
  # softmax over the group axis: each image token distributes 1 over the groups
  np.testing.assert_allclose(np.asarray(a0.soft).sum(1), 1.0, atol=1e-5)
  # evaluation uses the noise-free one-hot argmax of the soft map
  np.testing.assert_array_equal(np.asarray(a0.hard).argmax(1), np.asarray(a0.soft).argmax(1))
  # straight-through: one-hot + soft - stop_gradient(soft), one-hot up to float rounding
  np.testing.assert_allclose(np.asarray(a0.hard).sum(1), 1.0, atol=1e-6)
  assert set(np.round(np.asarray(a0.hard), 5).ravel()) <= {0.0, 1.0}
  assert float(out['logit_scale']) == pytest.approx(1 / 0.07, rel=1e-5)
  maps = compose_group_maps(out['assignments'])
  assert [m.shape for m in maps] == [(B, n, 8), (B, n, 4)]
  np.testing.assert_allclose(np.asarray(maps[1]).sum(-1), 1.0, atol=1e-5)


def test_training_forward_uses_gumbel_noise_and_updates_batch_stats():
  _, variables, _, _, _ = _setup()
  fwd = _jitted_forward(True)
  out0, state0 = fwd(variables, 0)
  out0b, _ = fwd(variables, 0)
  out1, _ = fwd(variables, 7)
  np.testing.assert_array_equal(out0['assignments'][0].hard, out0b['assignments'][0].hard)
  assert not np.array_equal(out0['assignments'][0].hard, out1['assignments'][0].hard)
  old = variables['batch_stats']['img_projector']['bn_0']['mean']
  new = state0['batch_stats']['img_projector']['bn_0']['mean']
  assert not np.allclose(old, new)


def test_logit_scale_is_clamped():
  _, variables, _, _, _ = _setup()
  params = dict(variables['params'], logit_scale=jnp.float32(10.0))
  out = _jitted_forward(False)({**variables, 'params': params}, 0)
  assert float(out['logit_scale']) == 100.0


def test_straight_through_gradient_is_the_soft_gradient():
  logits = jax.random.normal(jax.random.key(1), (2, 5, 7))
  w = jax.random.normal(jax.random.key(2), (2, 5, 7))
  hard = lambda x: jnp.sum(assign_probs(x, axis=1, hard=True, gumbel_key=None) * w)
  soft = lambda x: jnp.sum(jax.nn.softmax(x, axis=1) * w)
  np.testing.assert_allclose(jax.grad(hard)(logits), jax.grad(soft)(logits), atol=1e-6)
  out = assign_probs(logits, axis=1, hard=True, gumbel_key=None)
  np.testing.assert_allclose(np.asarray(out).sum(1), 1.0, atol=1e-6)


def test_soft_assignment_variant_pools_with_soft_maps():
  cfg = _tiny_config(image=dataclasses.replace(CFG.image, hard_assignment=False, gumbel=False))
  model, variables, images, text, prompts = _setup(cfg)
  out = jax.jit(lambda v: model.apply(v, images, text, prompts, train=False))(variables)
  for a in out['assignments']:
    np.testing.assert_allclose(a.hard, a.soft, atol=1e-6)


def test_paper_one_stage_variant_without_pre_assignment_attention():
  image = dataclasses.replace(
    CFG.image,
    depths=(1, 1),
    num_group_tokens=(8, 0),
    num_output_groups=(4,),
    pre_assign_attention=False,
  )
  cfg = _tiny_config(image=image)
  model, variables, images, text, prompts = _setup(cfg)
  flat = jax.tree_util.tree_flatten_with_path(variables['params'])[0]
  assert not any('pre_assign_attn' in jax.tree_util.keystr(p) for p, _ in flat)
  out = jax.jit(lambda v: model.apply(v, images, text, prompts, train=False))(variables)
  assert len(out['assignments']) == 1 and out['assignments'][0].soft.shape[1] == 4


def test_bfloat16_compute_keeps_float32_params_and_outputs():
  cfg = _tiny_config(dtype='bfloat16')
  model = GroupViT(cfg)
  _, variables, images, text, prompts = _setup()  # same float32 params
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables['params']))
  out16 = jax.jit(lambda v: model.apply(v, images, text, prompts, train=False))(variables)
  out32 = _jitted_forward(False)(variables, 0)
  for key in ('image_embed', 'text_embed'):
    assert out16[key].dtype == jnp.float32
    a = np.asarray(out16[key])
    b = np.asarray(out32[key])
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cos.min() > 0.99, cos  # bf16 has ~3 significant digits
  assert out16['assignments'][0].soft.dtype == jnp.float32


@pytest.mark.slow
def test_remat_gives_identical_values_and_gradients():
  model, variables, images, text, prompts = _setup()
  remat_model = GroupViT(dataclasses.replace(CFG, remat=True))

  def loss(m, params):
    out, _ = _forward(m, {**variables, 'params': params}, images, text, prompts, True)
    return jnp.sum(out['image_embed'] ** 2) + jnp.sum(out['text_embed'] * 0.1)

  l1, g1 = jax.jit(jax.value_and_grad(functools.partial(loss, model)))(variables['params'])
  l2, g2 = jax.jit(jax.value_and_grad(functools.partial(loss, remat_model)))(variables['params'])
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  # Recomputation changes fusion and summation order. Compared as whole gradient vectors:
  # several leaves are mathematically zero (biases cancelled by a following LayerNorm or
  # softmax) and hold only float32 cancellation noise, so per-leaf relative checks are meaningless.
  v1 = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g1)])
  v2 = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g2)])
  assert np.linalg.norm(v1 - v2) <= 1e-5 * np.linalg.norm(v1)


def test_stochastic_depth_drops_whole_samples():
  from groupvit_jax.models.layers import DropPath

  x = jnp.ones((64, 3, 2))
  y = DropPath(0.5).apply({}, x, False, rngs={'droppath': jax.random.key(0)})
  per_sample = np.asarray(y)[:, 0, 0]
  assert set(np.unique(per_sample)) <= {0.0, 2.0} and 10 < (per_sample == 0).sum() < 54
  np.testing.assert_array_equal(np.asarray(y), np.broadcast_to(per_sample[:, None, None], y.shape))
  np.testing.assert_array_equal(DropPath(0.5).apply({}, x, True), x)


def test_text_output_is_read_at_end_of_text_and_is_causal():
  model, variables, _, text, _ = _setup()
  encode = jax.jit(lambda t: model.apply(variables, t, method=GroupViT.encode_text))
  changed = text.at[:, 10:].set(123)  # tokens after the end-of-text id (position 6)
  np.testing.assert_allclose(encode(text), encode(changed), atol=1e-6)
  earlier = text.at[:, 3].set(999)
  assert not np.allclose(encode(text), encode(earlier))


def test_non_square_and_larger_inputs_run_with_resized_position_embedding():
  model, variables, _, _, _ = _setup()
  x = jnp.zeros((1, 96, 80, 3))
  out = jax.jit(lambda v: model.apply(v, x, with_groups=True, method=GroupViT.encode_image))(
    variables
  )
  assert out['grid'] == (6, 5)
  assert out['assignments'][0].soft.shape == (1, 8, 30)
  assert out['group_embeds'].shape == (1, 4, CFG.projection_dim)
  with pytest.raises(ValueError, match='multiples of 16'):
    model.apply(variables, jnp.zeros((1, 70, 64, 3)), method=GroupViT.encode_image)


@pytest.mark.parametrize(
  'src,dst', [((14, 14), (28, 28)), ((14, 14), (28, 20)), ((14, 14), (9, 11)), ((5, 7), (13, 3))]
)
def test_resize_matches_pytorch_interpolate(src, dst):
  torch = pytest.importorskip('torch')
  x = np.random.default_rng(0).standard_normal((2, *src, 5)).astype(np.float32)
  t = torch.from_numpy(x).permute(0, 3, 1, 2)
  for method in ('bicubic', 'bilinear'):
    ref = torch.nn.functional.interpolate(t, size=dst, mode=method, align_corners=False)
    ours = resize_2d(jnp.asarray(x), dst, method)
    # PyTorch computes the tap weights in float32, we in float64: ~1e-6 relative differences
    np.testing.assert_allclose(np.asarray(ours), ref.permute(0, 2, 3, 1).numpy(), atol=1e-5)


def test_batchnorm_matches_pytorch_training_and_eval():
  torch = pytest.importorskip('torch')
  x = np.random.default_rng(0).standard_normal((6, 5, 16)).astype(np.float32) * 3 + 1
  bn_t = torch.nn.BatchNorm1d(16, momentum=0.1, eps=1e-5)
  with torch.no_grad():
    bn_t.weight.uniform_(0.5, 1.5)
    bn_t.bias.normal_()
  bn = BatchNorm()
  variables = bn.init(jax.random.key(0), jnp.asarray(x), False)
  params = {
    'scale': jnp.asarray(bn_t.weight.detach().numpy()),
    'bias': jnp.asarray(bn_t.bias.detach().numpy()),
  }
  y, state = bn.apply(
    {'params': params, 'batch_stats': variables['batch_stats']},
    jnp.asarray(x),
    True,
    mutable=['batch_stats'],
  )
  ref = bn_t.train()(torch.from_numpy(x).permute(0, 2, 1)).permute(0, 2, 1)
  np.testing.assert_allclose(np.asarray(y), ref.detach().numpy(), atol=1e-5)
  np.testing.assert_allclose(state['batch_stats']['mean'], bn_t.running_mean.numpy(), atol=1e-6)
  np.testing.assert_allclose(state['batch_stats']['var'], bn_t.running_var.numpy(), atol=1e-5)
  y_eval = bn.apply({'params': params, 'batch_stats': state['batch_stats']}, jnp.asarray(x), False)
  ref_eval = bn_t.eval()(torch.from_numpy(x).permute(0, 2, 1)).permute(0, 2, 1)
  np.testing.assert_allclose(np.asarray(y_eval), ref_eval.detach().numpy(), atol=1e-5)


def test_config_errors_name_the_problem():
  with pytest.raises(ConfigError, match='unknown key.*depthz'):
    GroupViTConfig.from_dict({'image': {'depthz': (1, 1)}})
  with pytest.raises(ConfigError, match='num_group_tokens'):
    GroupViTConfig.from_dict({'image': {'depths': (1, 1), 'num_group_tokens': (8, 4, 0)}})
  with pytest.raises(ConfigError, match='not divisible'):
    GroupViTConfig.from_dict({'image': {'width': 100, 'num_heads': 3}})
  with pytest.raises(ConfigError, match='dtype'):
    GroupViTConfig.from_dict({'dtype': 'float16'})
  # a string where a switch belongs would be truthy: 'False' must not mean hard assignment
  with pytest.raises(ConfigError, match='hard_assignment must be bool'):
    GroupViTConfig.from_dict({'image': {'hard_assignment': 'False'}})
  with pytest.raises(ConfigError, match='width must be int'):
    GroupViTConfig.from_dict({'image': {'width': 96.0}})
  assert GroupViTConfig.from_dict({'image': {'gumbel_tau': 1}}).image.gumbel_tau == 1.0


def test_model_directories_with_a_retired_key_load_only_with_the_released_value(tmp_path):
  from groupvit_jax.checkpoints import store

  config = json.loads(CFG.to_json())
  config['image']['group_token_residual'] = True  # written by the trainer before its removal
  (tmp_path / store.CONFIG_FILE).write_text(json.dumps(config))
  assert store.load_config(str(tmp_path)) == CFG
  config['image']['group_token_residual'] = False
  (tmp_path / store.CONFIG_FILE).write_text(json.dumps(config))
  with pytest.raises(ValueError, match='group_token_residual=False is a retired option.*ae3acf4'):
    store.load_config(str(tmp_path))
