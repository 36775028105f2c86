"""CLIP, DINO and MAE towers loaded from canonical state dicts give the PyTorch references' outputs.

References: OpenAI's `clip/model.py` CLIP and Hugging Face CLIPModel (two architectures each), a
small DINO v1 ViT (references/towers.py) and HF ViTModel, HF ViTMAEForPreTraining with fixed noise.

Tolerance: 1e-4 absolute, on outputs of magnitude ~1 (LayerNorm outputs, projections of them, and
L2-normalised embeddings; the few larger outputs are divided by their scale first). Both sides run
float32 with the same operations in another order (fused vs split q/k/v, XLA vs oneDNN matmuls,
two-pass vs Welford LayerNorm, position-embedding resizing as a matrix product vs PyTorch's
bicubic kernel); we observe 1e-6 to 1e-5, so 1e-4 leaves an order of margin while any real mapping
error (a missed transpose, a wrong eps, head count or interpolation offset) moves outputs by >1e-3.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')

from groupvit_jax.checkpoints import towers  # noqa: E402
from groupvit_jax.checkpoints.keymaps import CheckpointMismatchError  # noqa: E402
from groupvit_jax.models.clip import CLIP, CLIPConfig  # noqa: E402
from groupvit_jax.models.config import ConfigError  # noqa: E402
from groupvit_jax.models.mae import MAE, MAEConfig  # noqa: E402
from groupvit_jax.models.vit import VisionTransformer, ViTConfig, sincos_pos_embed  # noqa: E402
from groupvit_jax.tokenizer import default_tokenizer  # noqa: E402
from references import hf_groupvit  # noqa: E402
from references import towers as ref  # noqa: E402
from tests.conftest import SHARED_DATA  # noqa: E402

ATOL = 1e-4
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
CAPTIONS = ['a dog runs on the beach', 'two people riding bikes', '', 'ÜBER café 東京 🚲 ' * 3]


def _captions():
  path = SHARED_DATA / 'captions' / 'cc3m_validation_first1000.txt'
  if path.exists():
    return CAPTIONS + path.read_text().splitlines()[:4]
  return CAPTIONS


def _pixels(hw: tuple[int, int], n: int = 2) -> np.ndarray:
  """n real (else synthetic) photos resized to hw and CLIP-normalised: [n, H, W, 3] float32."""
  from PIL import Image

  images = hf_groupvit.real_images(SHARED_DATA if SHARED_DATA.is_dir() else None, n)
  images = images or hf_groupvit.synthetic_images(n)
  out = [
    np.asarray(Image.fromarray(im).resize(hw[::-1], Image.BICUBIC), np.float32) / 255.0
    for im in images
  ]
  return (np.stack(out) - CLIP_MEAN) / CLIP_STD


def _nchw(x: np.ndarray):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _close(name: str, ours, theirs, scale: float = 1.0):
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  assert ours.shape == theirs.shape, (name, ours.shape, theirs.shape)
  diff = float(np.max(np.abs(ours - theirs))) / scale
  assert diff < ATOL, f'{name}: max abs difference {diff:.3g}'


def _run(model, variables, *args, **kwargs):
  """model.apply(variables, *args, **kwargs) under jit (eager Flax runs op by op, ~4x slower)."""
  return jax.jit(functools.partial(model.apply, **kwargs))(variables, *args)


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _load(model, example_args, sd, to_variables):
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), *example_args)
  return to_variables(sd, abstract)


def _clip_variables(cfg: CLIPConfig, sd):
  model = CLIP(cfg)
  size = cfg.vision.image_size
  example = (jnp.zeros((1, size, size, 3)), jnp.zeros((1, cfg.text.context_length), jnp.int32))
  return model, _load(model, example, sd, towers.clip_to_variables)


# --- CLIP ------------------------------------------------------------------------------------
OPENAI_ARCHS = {
  'w64-p8-r32': dict(
    embed_dim=32,
    image_resolution=32,
    vision_layers=2,
    vision_width=64,
    vision_patch_size=8,
    context_length=24,
    vocab_size=49408,
    transformer_width=32,
    transformer_heads=2,
    transformer_layers=2,
  ),
  'w128-p14-r56': dict(
    embed_dim=48,
    image_resolution=56,
    vision_layers=3,
    vision_width=128,
    vision_patch_size=14,
    context_length=77,
    vocab_size=49408,
    transformer_width=64,
    transformer_heads=4,
    transformer_layers=1,
  ),
}


@pytest.mark.parametrize('arch', sorted(OPENAI_ARCHS))
def test_openai_clip_parity(arch):
  kw = OPENAI_ARCHS[arch]
  theirs = ref.random_openai_clip(seed=1, **kw)
  sd = ref.to_numpy(theirs.state_dict())
  cfg = towers.clip_config_from_shapes(sd, text_num_heads=kw['transformer_heads'])
  assert (cfg.vision.num_heads, cfg.vision.depth, cfg.embed_dim) == (
    kw['vision_width'] // 64,
    kw['vision_layers'],
    kw['embed_dim'],
  )
  model, variables = _clip_variables(cfg, sd)

  size = kw['image_resolution']
  pixels = _pixels((size, size))
  tokens = default_tokenizer()(_captions(), kw['context_length'])
  captured = {}
  hook = theirs.visual.transformer.register_forward_hook(
    lambda m, i, o: captured.update(tokens=o.permute(1, 0, 2))
  )
  try:
    with torch.no_grad():
      image_ref = theirs.encode_image(_nchw(pixels)).numpy()
      text_ref = theirs.encode_text(torch.from_numpy(tokens.astype(np.int64))).numpy()
      logits_ref, _ = theirs(_nchw(pixels), torch.from_numpy(tokens.astype(np.int64)))
      patches_ref = theirs.visual.ln_post(captured['tokens'][:, 1:])
      patch_emb_ref = (patches_ref @ theirs.visual.proj).numpy()
      patches_ref = patches_ref.numpy()
  finally:
    hook.remove()

  feats = _run(model, variables, pixels, method=CLIP.image_features)
  _close('openai_clip.image_embedding', feats['embedding'], image_ref)
  _close('openai_clip.image_embedding_unit', _unit(feats['embedding']), _unit(image_ref))
  grid = size // kw['vision_patch_size']
  shape = (len(pixels), grid, grid, -1)
  _close('openai_clip.patches', feats['patches'], patches_ref.reshape(shape))
  _close('openai_clip.patch_embeddings', feats['patch_embeddings'], patch_emb_ref.reshape(shape))
  text = _run(model, variables, tokens, method=CLIP.encode_text)
  _close('openai_clip.text_embedding', text, text_ref)
  logits = _run(model, variables, pixels, tokens)['logits_per_image']
  scale = float(np.exp(sd['logit_scale']))
  _close('openai_clip.logits/scale', logits, logits_ref.numpy(), scale=scale)


HF_CLIP_ARCHS = {
  'w32-p8-r32': dict(
    vision=dict(
      hidden_size=32,
      num_hidden_layers=2,
      num_attention_heads=2,
      intermediate_size=128,
      image_size=32,
      patch_size=8,
    ),
    text=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
    projection_dim=24,
  ),
  'w48-p16-r48': dict(
    vision=dict(
      hidden_size=48,
      num_hidden_layers=3,
      num_attention_heads=3,
      intermediate_size=96,
      image_size=48,
      patch_size=16,
      hidden_act='gelu',  # as LAION's open_clip models
    ),
    text=dict(
      hidden_size=64,
      num_hidden_layers=1,
      num_attention_heads=2,
      intermediate_size=256,
      max_position_embeddings=40,
      hidden_act='gelu',
    ),
    projection_dim=40,
  ),
}


@pytest.mark.parametrize('arch', sorted(HF_CLIP_ARCHS))
def test_hf_clip_parity(arch):
  spec = HF_CLIP_ARCHS[arch]
  hf = ref.random_hf_clip(seed=2, **spec)
  sd = ref.hf_clip_to_openai(hf.state_dict())
  cfg = towers.clip_config_from_shapes(
    sd,
    num_heads=spec['vision']['num_attention_heads'],
    text_num_heads=spec['text']['num_attention_heads'],
    activation=spec['vision'].get('hidden_act', 'quick_gelu'),
  )
  assert (
    cfg.text.activation == cfg.vision.activation == spec['vision'].get('hidden_act', 'quick_gelu')
  )
  model, variables = _clip_variables(cfg, sd)
  size, patch = spec['vision']['image_size'], spec['vision']['patch_size']
  tokens = default_tokenizer()(_captions(), cfg.text.context_length)
  for hw in ((size, size), (size + patch, size + 2 * patch)):
    pixels = _pixels(hw)
    interpolate = hw != (size, size)
    with torch.no_grad():
      out = hf.vision_model(_nchw(pixels), interpolate_pos_encoding=interpolate)
      image_ref = hf.visual_projection(out.pooler_output).numpy()
      patches_ref = hf.vision_model.post_layernorm(out.last_hidden_state[:, 1:])
      patch_emb_ref = hf.visual_projection(patches_ref).numpy()
    feats = _run(model, variables, pixels, method=CLIP.image_features)
    shape = (len(pixels), hw[0] // patch, hw[1] // patch, -1)
    tag = f'hf_clip{"@interp" if interpolate else ""}'
    _close(f'{tag}.image_embedding', feats['embedding'], image_ref)
    _close(f'{tag}.patches', feats['patches'], patches_ref.numpy().reshape(shape))
    _close(f'{tag}.patch_embeddings', feats['patch_embeddings'], patch_emb_ref.reshape(shape))
  with torch.no_grad():
    text_ref = hf.get_text_features(input_ids=torch.from_numpy(tokens.astype(np.int64)))
    text_ref = text_ref if torch.is_tensor(text_ref) else text_ref.pooler_output
  text = _run(model, variables, tokens, method=CLIP.encode_text)
  _close('hf_clip.text_embedding', text, text_ref.numpy())


def test_clip_layer_scale_and_logit_bias():
  """open_clip extras: ls_1/ls_2 gammas scale the residual branches; logit_bias is added."""
  kw = OPENAI_ARCHS['w64-p8-r32']
  theirs = ref.random_openai_clip(seed=3, **kw)
  sd = ref.to_numpy(theirs.state_dict())
  pixels = _pixels((32, 32))
  tokens = default_tokenizer()(CAPTIONS, kw['context_length'])
  base_cfg = towers.clip_config_from_shapes(sd, text_num_heads=2)
  model, variables = _clip_variables(base_cfg, sd)
  base = _run(model, variables, pixels, tokens)

  extra = dict(sd, logit_bias=np.float32(-3.0))
  for i in range(kw['vision_layers']):
    for j in (1, 2):
      extra[f'visual.transformer.resblocks.{i}.ls_{j}.gamma'] = np.ones(64, np.float32)
  cfg = towers.clip_config_from_shapes(extra, text_num_heads=2)
  assert cfg.logit_bias and cfg.vision.layer_scale_init is not None
  model, variables = _clip_variables(cfg, extra)
  out = _run(model, variables, pixels, tokens)
  _close('clip.layer_scale_ones', out['image_embeds'], base['image_embeds'])
  _close('clip.logit_bias', out['logits_per_image'], base['logits_per_image'] - 3.0, scale=100.0)
  # A gamma of 0 removes the branch: the blocks then pass the embedded tokens through.
  for i in range(kw['vision_layers']):
    for j in (1, 2):
      extra[f'visual.transformer.resblocks.{i}.ls_{j}.gamma'] = np.zeros(64, np.float32)
  variables = towers.clip_to_variables(extra, variables)
  feats = _run(model, variables, pixels, method=CLIP.image_features, layer=-1)
  embedded = model.apply(
    variables,
    pixels,
    method=lambda m, x: m.visual.ln_pre(jnp.concatenate(m.visual.embed(x)[:2], 1)),
  )
  _close('clip.layer_scale_zero', feats['layer_tokens'], embedded)


# --- DINO / timm ViT -------------------------------------------------------------------------
def _vit_variables(cfg: ViTConfig, sd):
  model = VisionTransformer(cfg)
  example = (jnp.zeros((1, cfg.image_size, cfg.image_size, 3)),)
  return model, _load(model, example, sd, towers.vit_to_variables)


def test_dino_parity_with_interpolation():
  theirs = ref.dino_vit(seed=4, img_size=32, patch_size=8, dim=48, depth=3, heads=3)
  sd = ref.to_numpy(theirs.state_dict())
  cfg = towers.vit_config_from_shapes(sd, num_heads=3)
  assert (cfg.eps, cfg.activation, cfg.pos_interpolation) == (1e-6, 'gelu', 'dino')
  model, variables = _vit_variables(cfg, sd)
  captured = {}
  hook = theirs.blocks[1].register_forward_hook(lambda m, i, o: captured.update(layer=o))
  try:
    for hw in ((32, 32), (56, 40), (24, 24)):
      pixels = _pixels(hw)
      with torch.no_grad():
        tokens = theirs(_nchw(pixels)).numpy()
      out = _run(model, variables, pixels, layer=1)
      tag = f'dino@{hw[0]}x{hw[1]}'
      _close(f'{tag}.cls', out['cls'], tokens[:, 0])
      _close(f'{tag}.patches', out['patches'], tokens[:, 1:].reshape(out['patches'].shape))
      _close(f'{tag}.layer_tokens', out['layer_tokens'], captured['layer'].numpy())
  finally:
    hook.remove()


def test_hf_vit_parity_and_dino_offset_matters():
  hf = ref.random_hf_vit(
    seed=5,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    image_size=48,
    patch_size=16,
  )
  sd = ref.hf_vit_to_timm(hf.state_dict())
  cfg = towers.vit_config_from_shapes(sd, num_heads=4)
  hf_cfg = dataclasses.replace(cfg, pos_interpolation='bicubic')
  model, variables = _vit_variables(hf_cfg, sd)
  for hw in ((48, 48), (80, 64)):
    pixels = _pixels(hw)
    with torch.no_grad():
      ref_tokens = hf(_nchw(pixels), interpolate_pos_encoding=hw != (48, 48)).last_hidden_state
    out = _run(model, variables, pixels)
    tag = f'hf_vit@{hw[0]}x{hw[1]}'
    _close(f'{tag}.cls', out['cls'], ref_tokens[:, 0].numpy())
    _close(
      f'{tag}.patches', out['patches'], ref_tokens[:, 1:].numpy().reshape(out['patches'].shape)
    )
  # DINO's +0.1 offset changes the interpolated embedding noticeably (so the DINO test can tell).
  dino = _run(VisionTransformer(cfg), variables, pixels)
  assert np.max(np.abs(np.asarray(dino['patches']) - np.asarray(out['patches']))) > 1e-3


# --- MAE -------------------------------------------------------------------------------------
MAE_SPEC = dict(
  hidden_size=48,
  num_hidden_layers=2,
  num_attention_heads=3,
  intermediate_size=192,
  image_size=32,
  patch_size=8,
  decoder_hidden_size=32,
  decoder_num_hidden_layers=2,
  decoder_num_attention_heads=4,
  decoder_intermediate_size=128,
)


def _mae_variables(cfg: MAEConfig, sd):
  model = MAE(cfg)
  size = cfg.encoder.image_size
  n = cfg.encoder.grid_size**2
  example = (jnp.zeros((1, size, size, 3)), jnp.zeros((1, n)))
  return model, _load(model, example, sd, towers.mae_to_variables)


@pytest.mark.parametrize('norm_pix_loss', [False, True])
def test_mae_parity(norm_pix_loss):
  hf = ref.random_hf_mae(seed=6, norm_pix_loss=norm_pix_loss, **MAE_SPEC)
  sd = ref.hf_mae_to_release(hf.state_dict())
  cfg = towers.mae_config_from_shapes(
    sd, num_heads=3, decoder_num_heads=4, norm_pix_loss=norm_pix_loss
  )
  assert (cfg.decoder_depth, cfg.decoder_width, cfg.mask_ratio) == (2, 32, 0.75)
  model, variables = _mae_variables(cfg, sd)
  pixels = _pixels((32, 32), n=3)
  noise = torch.rand(3, 16, generator=torch.Generator().manual_seed(0))
  with torch.no_grad():
    out_ref = hf(_nchw(pixels), noise=noise)
    latent_ref = hf.vit(_nchw(pixels), noise=noise).last_hidden_state.numpy()
  out = _run(model, variables, pixels, noise.numpy())
  np.testing.assert_array_equal(np.asarray(out['mask']), out_ref.mask.numpy())
  np.testing.assert_array_equal(np.asarray(out['ids_restore']), out_ref.ids_restore.numpy())
  assert np.asarray(out['mask']).sum(1).tolist() == [12.0] * 3
  tag = f'mae[norm_pix={norm_pix_loss}]'
  _close(f'{tag}.latent', out['latent'], latent_ref)
  _close(f'{tag}.logits', out['logits'], out_ref.logits.numpy())
  _close(f'{tag}.loss', out['loss'], out_ref.loss.numpy())

  # Noise drawn from the 'masking' rng: a valid mask of the same ratio, different per sample.
  drawn = _run(model, variables, pixels, rngs={'masking': jax.random.PRNGKey(1)})
  mask = np.asarray(drawn['mask'])
  assert mask.sum(1).tolist() == [12.0] * 3 and len({tuple(row) for row in mask}) == 3
  assert np.isfinite(float(drawn['loss']))


def test_mae_sincos_matches_release_layout():
  hf = ref.random_hf_mae(seed=0, perturb=False, **MAE_SPEC)
  hf.decoder.initialize_weights(16)  # HF's sin-cos table, rotated into the release's layout
  np.testing.assert_allclose(
    sincos_pos_embed(4, 32), hf.decoder.decoder_pos_embed.detach().numpy(), atol=1e-6
  )
  fresh = MAE(
    MAEConfig.from_dict(
      {
        'encoder': dict(image_size=32, patch_size=8, width=48, depth=1, num_heads=3),
        'decoder_width': 32,
        'decoder_depth': 1,
        'decoder_num_heads': 4,
      }
    )
  )
  params = jax.jit(fresh.init)(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 16)))
  np.testing.assert_allclose(params['params']['encoder']['pos_embed'], sincos_pos_embed(4, 48))
  np.testing.assert_allclose(params['params']['decoder_pos_embed'], sincos_pos_embed(4, 32))


def test_mae_encoder_only():
  hf = ref.random_hf_mae(seed=7, **MAE_SPEC)
  sd = ref.hf_mae_to_release(hf.state_dict())
  encoder_sd = {k: v for k, v in sd.items() if not k.startswith(('decoder_', 'mask_token'))}
  cfg = towers.mae_config_from_shapes(encoder_sd, num_heads=3)
  assert cfg.decoder_depth == 0
  model, variables = _mae_variables(cfg, encoder_sd)
  assert set(variables['params']) == {'encoder'}
  pixels = _pixels((32, 32))
  noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(1))
  out = _run(model, variables, pixels, noise.numpy())
  assert set(out) == {'latent', 'mask', 'ids_restore'}
  with torch.no_grad():
    latent_ref = hf.vit(_nchw(pixels), noise=noise).last_hidden_state.numpy()
  _close('mae_encoder_only.latent', out['latent'], latent_ref)
  feats = _run(model, variables, pixels, method=MAE.encode)
  assert feats['patches'].shape == (2, 4, 4, 48)
  with pytest.raises(ValueError, match='no decoder'):
    _run(model, variables, out['latent'], out['ids_restore'], method=MAE.decode)


# --- mapping and config errors ---------------------------------------------------------------
def test_mapping_errors_list_every_key():
  theirs = ref.dino_vit(seed=8, img_size=32, patch_size=8, dim=48, depth=2, heads=3)
  sd = ref.to_numpy(theirs.state_dict())
  cfg = towers.vit_config_from_shapes(sd, num_heads=3)
  model = VisionTransformer(cfg)
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  bad = dict(sd)
  del bad['blocks.1.mlp.fc2.bias']
  del bad['norm.weight']
  bad['head.weight'] = np.zeros((10, 48), np.float32)
  bad['blocks.0.attn.qkv.weight'] = np.zeros((144, 40), np.float32)
  with pytest.raises(CheckpointMismatchError) as info:
    towers.vit_to_variables(bad, abstract)
  err = info.value
  assert sorted(err.missing) == ['blocks.1.mlp.fc2.bias', 'norm.weight']
  assert err.unused == ['head.weight']
  assert len(err.shapes) == 1 and err.shapes[0].startswith('blocks.0.attn.qkv.weight')
  assert '2 missing' in str(err) and '1 unused' in str(err)

  # CLIP: a logit_bias the config does not expect, and a text projection of the wrong width.
  kw = OPENAI_ARCHS['w64-p8-r32']
  clip_sd = ref.to_numpy(ref.random_openai_clip(seed=8, **kw).state_dict())
  cfg = towers.clip_config_from_shapes(clip_sd, text_num_heads=2)
  model = CLIP(cfg)
  abstract = jax.eval_shape(
    model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 24), jnp.int32)
  )
  bad = dict(clip_sd, logit_bias=np.float32(0.0), text_projection=np.zeros((32, 16), np.float32))
  with pytest.raises(CheckpointMismatchError) as info:
    towers.clip_to_variables(bad, abstract)
  assert info.value.unused == ['logit_bias'] and not info.value.missing
  assert info.value.shapes[0].startswith('text_projection')

  # MAE: a decoder key present in a file the model treats as encoder-only is unused.
  hf_sd = ref.hf_mae_to_release(ref.random_hf_mae(seed=8, **MAE_SPEC).state_dict())
  encoder_sd = {k: v for k, v in hf_sd.items() if not k.startswith(('decoder_', 'mask_token'))}
  model, _ = _mae_variables(towers.mae_config_from_shapes(encoder_sd, num_heads=3), encoder_sd)
  abstract = jax.eval_shape(
    model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 16))
  )
  with pytest.raises(CheckpointMismatchError) as info:
    towers.mae_to_variables(dict(encoder_sd, mask_token=hf_sd['mask_token']), abstract)
  assert info.value.unused == ['mask_token']


def test_config_errors_and_round_trips():
  theirs = ref.dino_vit(seed=9, img_size=32, patch_size=8, dim=48, depth=1, heads=3)
  sd = ref.to_numpy(theirs.state_dict())
  with pytest.raises(ConfigError, match='unknown declared'):
    towers.vit_config_from_shapes(sd, num_heads=3, text_num_heads=2)
  with pytest.raises(ConfigError, match='image_size'):
    towers.vit_config_from_shapes(sd, num_heads=3, image_size=64)
  with pytest.raises(ConfigError, match='not divisible'):
    towers.vit_config_from_shapes(sd, num_heads=5)
  with pytest.raises(ConfigError, match='missing'):
    towers.vit_config_from_shapes({k: v for k, v in sd.items() if k != 'pos_embed'})
  assert towers.vit_config_from_shapes(sd, num_heads=3, eps=1e-5, image_size=None).eps == 1e-5
  clip_sd = ref.to_numpy(ref.random_openai_clip(seed=9, **OPENAI_ARCHS['w64-p8-r32']).state_dict())
  gelu = towers.clip_config_from_shapes(clip_sd, activation='gelu')
  assert (gelu.vision.activation, gelu.text.activation) == ('gelu', 'gelu')
  with pytest.raises(ConfigError, match='activation'):
    towers.clip_config_from_shapes(clip_sd, activation='relu')
  with pytest.raises(ConfigError, match='text tower'):
    towers.clip_config_from_shapes(
      dict(clip_sd, **{'transformer.resblocks.0.ls_1.gamma': np.ones(32, np.float32)})
    )
  clip_cfg = towers.clip_config_from_shapes(clip_sd, text_num_heads=2)
  assert CLIPConfig.from_dict(clip_cfg.to_dict()) == clip_cfg
  mae_cfg = MAEConfig(decoder_depth=0)
  assert MAEConfig.from_dict(mae_cfg.to_dict()) == mae_cfg
  vit_cfg = ViTConfig(pos_interpolation='bicubic', layer_scale_init=0.1)
  assert ViTConfig.from_dict(vit_cfg.to_dict()) == vit_cfg
  with pytest.raises(ConfigError, match='unknown key'):
    ViTConfig.from_dict({'widht': 3})
  with pytest.raises(ConfigError, match='pos_interpolation'):
    ViTConfig.from_dict({'pos_interpolation': 'bilinear'})
  with pytest.raises(ValueError, match='does not interpolate'):
    none_cfg = ViTConfig(
      image_size=32, patch_size=8, width=32, depth=1, num_heads=2, pos_interpolation='none'
    )
    VisionTransformer(none_cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 40, 32, 3)))


# --- bfloat16 and remat ----------------------------------------------------------------------
def test_bf16_and_remat_smoke():
  kw = OPENAI_ARCHS['w64-p8-r32']
  sd = ref.to_numpy(ref.random_openai_clip(seed=10, **kw).state_dict())
  cfg = towers.clip_config_from_shapes(sd, text_num_heads=2)
  model, variables = _clip_variables(cfg, sd)
  bf16 = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, dtype='bfloat16'))
  pixels = _pixels((32, 32))
  tokens = default_tokenizer()(CAPTIONS, kw['context_length'])
  full = jax.jit(model.apply)(variables, pixels, tokens)
  half = jax.jit(CLIP(bf16).apply)(variables, pixels, tokens)
  for key in ('image_embeds', 'text_embeds'):
    assert half[key].dtype == jnp.float32 and np.all(np.isfinite(half[key]))
    diff = float(np.max(np.abs(np.asarray(half[key]) - np.asarray(full[key]))))
    assert diff < 0.05, (key, diff)

  # remat recomputes the blocks in the backward pass and must not change gradients.
  vit_cfg = ViTConfig(image_size=32, patch_size=8, width=32, depth=2, num_heads=2)
  params = jax.jit(VisionTransformer(vit_cfg).init)(jax.random.PRNGKey(0), pixels)

  def grad(remat):
    model = VisionTransformer(dataclasses.replace(vit_cfg, remat=remat))
    loss = lambda p: jnp.sum(jnp.square(model.apply(p, pixels)['patches']))
    return jax.jit(jax.grad(loss))(params)

  for a, b in zip(jax.tree_util.tree_leaves(grad(True)), jax.tree_util.tree_leaves(grad(False))):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
