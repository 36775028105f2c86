"""Every CLIP / DINO / MAE checkpoint format users hold reads into the canonical state dict."""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from groupvit_jax.checkpoints.tower_sources import (
  TowerSourceError,
  detect_family,
  load_tower_source,
)

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
from safetensors.torch import save_file  # noqa: E402

from references import checkpoint_files as cf  # noqa: E402

OPENAI_NON_WEIGHTS = ('input_resolution', 'context_length', 'vocab_size')


def _np(sd):
  return {k: v.detach().float().numpy() for k, v in sd.items()}


def _assert_state_dict(got, expected):
  assert sorted(got) == sorted(expected)
  for key, value in expected.items():
    assert got[key].dtype == np.float32, key
    assert got[key].shape == value.shape, key
    np.testing.assert_array_equal(got[key], value, err_msg=key)


def _openai_expected(model):
  return {k: v for k, v in _np(model.state_dict()).items() if k not in OPENAI_NON_WEIGHTS}


# ------------------------------------------------------------------ expected renamings, by hand


def _hf_clip_expected(hf):
  """OpenAI names from HF CLIPModel names, written out independently of the reader's tables."""
  hf = _np(hf)
  e = {
    'visual.class_embedding': hf['vision_model.embeddings.class_embedding'],
    'visual.conv1.weight': hf['vision_model.embeddings.patch_embedding.weight'],
    'visual.positional_embedding': hf['vision_model.embeddings.position_embedding.weight'],
    'visual.ln_pre.weight': hf['vision_model.pre_layrnorm.weight'],
    'visual.ln_pre.bias': hf['vision_model.pre_layrnorm.bias'],
    'visual.ln_post.weight': hf['vision_model.post_layernorm.weight'],
    'visual.ln_post.bias': hf['vision_model.post_layernorm.bias'],
    'visual.proj': hf['visual_projection.weight'].T,
    'token_embedding.weight': hf['text_model.embeddings.token_embedding.weight'],
    'positional_embedding': hf['text_model.embeddings.position_embedding.weight'],
    'ln_final.weight': hf['text_model.final_layer_norm.weight'],
    'ln_final.bias': hf['text_model.final_layer_norm.bias'],
    'text_projection': hf['text_projection.weight'].T,
    'logit_scale': hf['logit_scale'],
  }
  for tower, ours in (('vision_model', 'visual.transformer'), ('text_model', 'transformer')):
    for i in range(2):
      h, o = f'{tower}.encoder.layers.{i}.', f'{ours}.resblocks.{i}.'
      for p in ('weight', 'bias'):
        qkv = [hf[f'{h}self_attn.{x}_proj.{p}'] for x in 'qkv']
        e[f'{o}attn.in_proj_{p}'] = np.concatenate(qkv, 0)
        e[f'{o}attn.out_proj.{p}'] = hf[f'{h}self_attn.out_proj.{p}']
        e[f'{o}ln_1.{p}'] = hf[f'{h}layer_norm1.{p}']
        e[f'{o}ln_2.{p}'] = hf[f'{h}layer_norm2.{p}']
        e[f'{o}mlp.c_fc.{p}'] = hf[f'{h}mlp.fc1.{p}']
        e[f'{o}mlp.c_proj.{p}'] = hf[f'{h}mlp.fc2.{p}']
  return e


def _hf_vit_block(hf, h, o, e):
  """timm block names from a transformers>=5 in-memory ViT layer (q/k/v/o_proj, mlp.fc1/2)."""
  for p in ('weight', 'bias'):
    e[f'{o}attn.qkv.{p}'] = np.concatenate([hf[f'{h}attention.{x}_proj.{p}'] for x in 'qkv'], 0)
    e[f'{o}attn.proj.{p}'] = hf[f'{h}attention.o_proj.{p}']
    e[f'{o}norm1.{p}'] = hf[f'{h}layernorm_before.{p}']
    e[f'{o}norm2.{p}'] = hf[f'{h}layernorm_after.{p}']
    e[f'{o}mlp.fc1.{p}'] = hf[f'{h}mlp.fc1.{p}']
    e[f'{o}mlp.fc2.{p}'] = hf[f'{h}mlp.fc2.{p}']


def _hf_vit_expected(hf, prefix=''):
  hf = _np(hf)
  e = {
    'cls_token': hf[f'{prefix}embeddings.cls_token'],
    'pos_embed': hf[f'{prefix}embeddings.position_embeddings'],
    'patch_embed.proj.weight': hf[f'{prefix}embeddings.patch_embeddings.projection.weight'],
    'patch_embed.proj.bias': hf[f'{prefix}embeddings.patch_embeddings.projection.bias'],
    'norm.weight': hf[f'{prefix}layernorm.weight'],
    'norm.bias': hf[f'{prefix}layernorm.bias'],
  }
  for i in range(2):
    _hf_vit_block(hf, f'{prefix}layers.{i}.', f'blocks.{i}.', e)
  return e


def _hf_mae_expected(hf):
  e = _hf_vit_expected(hf, prefix='vit.')
  hf = _np(hf)
  e['mask_token'] = hf['decoder.mask_token']
  e['decoder_pos_embed'] = hf['decoder.decoder_pos_embed']
  for part in ('decoder_embed', 'decoder_norm', 'decoder_pred'):
    for p in ('weight', 'bias'):
      e[f'{part}.{p}'] = hf[f'decoder.{part}.{p}']
  for i in range(2):
    _hf_vit_block(hf, f'decoder.decoder_layers.{i}.', f'decoder_blocks.{i}.', e)
  return e


# ------------------------------------------------------------------ OpenAI / open_clip CLIP


def test_openai_torchscript(tmp_path):
  model = cf.tiny_openai_clip()
  cf.save_openai_torchscript(model, tmp_path / 'ViT-tiny.pt')  # converts `model` to float16
  src = load_tower_source(tmp_path / 'ViT-tiny.pt')
  assert (src.family, src.kind) == ('clip', 'openai_torchscript')
  assert src.declared == {
    'activation': 'quick_gelu',
    'eps': 1e-5,
    'num_heads': 1,
    'text_num_heads': 1,
    'image_size': 16,
  }
  _assert_state_dict(src.state_dict, _openai_expected(model))


def test_openai_state_dict_declares_quick_gelu_only_with_release_buffers(tmp_path):
  model = cf.tiny_openai_clip()
  expected = _openai_expected(model)
  torch.save(model.state_dict(), tmp_path / 'openai.pt')
  src = load_tower_source(tmp_path / 'openai.pt')
  assert (src.family, src.kind, src.declared['activation']) == (
    'clip',
    'openai_state_dict',
    'quick_gelu',
  )
  _assert_state_dict(src.state_dict, expected)

  bare = {k: v for k, v in model.state_dict().items() if k not in OPENAI_NON_WEIGHTS}
  save_file({k: v.contiguous() for k, v in bare.items()}, tmp_path / 'bare.safetensors')
  src = load_tower_source(tmp_path / 'bare.safetensors')
  assert 'activation' not in src.declared and any('activation unknown' in n for n in src.notes)
  _assert_state_dict(src.state_dict, expected)
  assert load_tower_source(tmp_path / 'bare.safetensors', quick_gelu=False).declared == {
    'activation': 'gelu'
  }


@pytest.mark.parametrize(
  'weights, quick_gelu',
  [('open_clip_pytorch_model.bin', True), ('open_clip_model.safetensors', None)],
)
def test_open_clip_hub_directory(tmp_path, weights, quick_gelu):
  model = cf.tiny_openai_clip(with_release_buffers=False)
  sd = {k: v.half() for k, v in model.state_dict().items()}  # hub files are often float16
  if weights.endswith('.bin'):
    torch.save(sd, tmp_path / weights)
  else:
    save_file(sd, tmp_path / weights)
  cf.save_open_clip_config(tmp_path, quick_gelu)
  expected = _np(sd)
  activation = 'quick_gelu' if quick_gelu else 'gelu'
  for path in (tmp_path, tmp_path / weights):
    src = load_tower_source(path)
    assert (src.family, src.kind) == ('clip', 'open_clip' if path == tmp_path else src.kind)
    assert src.declared == {
      'activation': activation,
      'num_heads': 1,
      'text_num_heads': 1,
      'image_size': 16,
      'eps': 1e-5,
    }
    _assert_state_dict(src.state_dict, expected)
  src = load_tower_source(tmp_path, quick_gelu=not quick_gelu)
  assert src.declared['activation'] != activation and any('overrides' in n for n in src.notes)


def test_open_clip_custom_text_and_logit_bias(tmp_path):
  model = cf.tiny_openai_clip(with_release_buffers=False)
  sd = {
    (k if k.startswith(('visual.', 'logit_scale')) else f'text.{k}'): v
    for k, v in model.state_dict().items()
  }
  sd['logit_bias'] = torch.tensor([-10.0])
  torch.save(sd, tmp_path / 'siglip_like.bin')
  src = load_tower_source(tmp_path / 'siglip_like.bin', quick_gelu=False)
  expected = _openai_expected(model) | {'logit_bias': np.array([-10.0], np.float32)}
  assert (src.kind, src.declared) == ('open_clip', {'activation': 'gelu'})
  _assert_state_dict(src.state_dict, expected)


def test_open_clip_training_checkpoint(tmp_path):
  model = cf.tiny_openai_clip(with_release_buffers=False)
  run = tmp_path / 'logs' / 'run'
  (run / 'checkpoints').mkdir(parents=True)
  (run / 'params.txt').write_text(
    'batch_size: 8\nforce_quick_gelu: False\nmodel: ViT-B-32-quickgelu\n'
  )
  path = run / 'checkpoints' / 'epoch_2.pt'
  torch.save(
    {
      'epoch': 2,
      'name': 'run',
      'state_dict': {f'module.{k}': v for k, v in model.state_dict().items()},
      'optimizer': {'state': {}, 'param_groups': [{'lr': 1e-3}]},
    },
    path,
  )
  src = load_tower_source(path)
  assert (src.family, src.kind, src.declared) == (
    'clip',
    'open_clip_training',
    {'activation': 'quick_gelu'},
  )
  _assert_state_dict(src.state_dict, _openai_expected(model))


# ------------------------------------------------------------------ Hugging Face


@pytest.fixture(scope='module')
def hf_clip():
  return cf.tiny_hf_clip()


@pytest.mark.parametrize('layout', ['safetensors', 'sharded', 'bin', 'state_dict_file'])
def test_hf_clip(tmp_path, hf_clip, layout):
  if layout == 'safetensors':
    hf_clip.save_pretrained(tmp_path)
  elif layout == 'sharded':
    hf_clip.save_pretrained(tmp_path, max_shard_size='40KB')
    assert (tmp_path / 'model.safetensors.index.json').exists()
  elif layout == 'bin':
    cf.save_hf_bin_directory(hf_clip, tmp_path)
  path = tmp_path
  if layout == 'state_dict_file':
    path = tmp_path / 'clip.bin'
    sd = dict(hf_clip.state_dict())
    sd['text_model.embeddings.position_ids'] = torch.arange(7)[None]  # as in older files
    torch.save(sd, path)
  src = load_tower_source(path)
  assert (src.family, src.kind) == ('clip', 'hf_clip')
  if layout == 'state_dict_file':
    assert 'activation' not in src.declared
    assert any('position_ids' in n for n in src.notes)
  else:
    assert src.declared == {
      'activation': 'quick_gelu',
      'eps': 1e-5,
      'num_heads': 2,
      'text_num_heads': 2,
      'image_size': 16,
    }
  _assert_state_dict(src.state_dict, _hf_clip_expected(hf_clip.state_dict()))


def test_hf_clip_canonical_dict_runs_in_openai_clip(tmp_path, hf_clip):
  """The renamed weights give OpenAI's CLIP the features HF computes (a semantic check)."""
  hf_clip.save_pretrained(tmp_path)
  sd = load_tower_source(tmp_path).state_dict
  dims = dict(cf.CLIP_DIMS, vision_width=128, transformer_width=128, transformer_heads=2)
  model = cf.openai_clip_module().CLIP(**dims)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
  model.eval()
  images = torch.randn(2, 3, 16, 16)
  tokens = torch.tensor([[0, 5, 7, 49, 3, 3, 3], [0, 8, 49, 2, 2, 2, 2]])  # EOT = the max id
  with torch.no_grad():
    ours_img, ours_txt = model.encode_image(images), model.encode_text(tokens)
    ref_img = hf_clip.get_image_features(pixel_values=images)
    ref_txt = hf_clip.get_text_features(input_ids=tokens)
  ref_img = getattr(ref_img, 'pooler_output', ref_img)
  ref_txt = getattr(ref_txt, 'pooler_output', ref_txt)
  np.testing.assert_allclose(ours_img.numpy(), ref_img.numpy(), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(ours_txt.numpy(), ref_txt.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('layout', ['safetensors', 'bin', 'state_dict_file'])
def test_hf_vit_dino(tmp_path, layout):
  model = cf.tiny_hf_vit()
  path = tmp_path
  if layout == 'safetensors':
    model.save_pretrained(tmp_path)
  elif layout == 'bin':
    cf.save_hf_bin_directory(model, tmp_path)
  else:
    path = tmp_path / 'vit.pth'
    torch.save(model.state_dict(), path)  # transformers>=5 in-memory naming
  src = load_tower_source(path)
  assert (src.family, src.kind) == ('vit', 'hf_vit')
  assert any('pooler' in n for n in src.notes)
  if layout != 'state_dict_file':
    assert src.declared == {'activation': 'gelu', 'eps': 1e-6, 'num_heads': 2, 'image_size': 16}
  _assert_state_dict(src.state_dict, _hf_vit_expected(model.state_dict()))


def test_hf_vit_mae(tmp_path):
  model = cf.tiny_hf_vit_mae()
  model.save_pretrained(tmp_path)
  expected = _hf_mae_expected(model.state_dict())
  src = load_tower_source(tmp_path)
  assert (src.family, src.kind) == ('mae', 'hf_vit_mae')
  assert src.declared == {
    'activation': 'gelu',
    'eps': 1e-12,
    'num_heads': 2,
    'image_size': 16,
    'decoder_num_heads': 4,
    'norm_pix_loss': True,
    'mask_ratio': 0.5,
  }
  _assert_state_dict(src.state_dict, expected)
  # The on-disk (legacy) naming: what the hub's facebook/vit-mae-* files use.
  legacy = tmp_path / 'legacy.bin'
  renames = {
    'attention.q_proj': 'attention.attention.query',
    'attention.k_proj': 'attention.attention.key',
    'attention.v_proj': 'attention.attention.value',
    'attention.o_proj': 'attention.output.dense',
    'mlp.fc1': 'intermediate.dense',
    'mlp.fc2': 'output.dense',
  }
  sd = {}
  for k, v in model.state_dict().items():
    k = k.replace('vit.layers.', 'vit.encoder.layer.')
    for new, old in renames.items():
      k = k.replace(f'.{new}.', f'.{old}.')
    sd[k] = v
  torch.save(sd, legacy)
  _assert_state_dict(load_tower_source(legacy).state_dict, expected)
  vit = load_tower_source(tmp_path, family='vit')
  assert vit.family == 'vit' and any('decoder' in n for n in vit.notes)
  _assert_state_dict(
    vit.state_dict, {k: v for k, v in expected.items() if 'decoder' not in k and k != 'mask_token'}
  )


# ------------------------------------------------------------------ DINO and MAE originals


def test_dino_hub_backbone(tmp_path):
  sd = cf.vit_state_dict()
  torch.save(sd, tmp_path / 'dino_deitsmall8_pretrain.pth')
  save_file({k: v.half() for k, v in sd.items()}, tmp_path / 'dino.safetensors')
  src = load_tower_source(tmp_path / 'dino_deitsmall8_pretrain.pth')
  assert (src.family, src.kind, src.declared) == ('vit', 'dino_backbone', {})
  _assert_state_dict(src.state_dict, _np(sd))
  half = load_tower_source(tmp_path / 'dino.safetensors')
  _assert_state_dict(half.state_dict, _np({k: v.half() for k, v in sd.items()}))
  save_file({k: v.bfloat16() for k, v in sd.items()}, tmp_path / 'dino_bf16.safetensors')
  bf16 = load_tower_source(tmp_path / 'dino_bf16.safetensors')
  _assert_state_dict(bf16.state_dict, _np({k: v.bfloat16() for k, v in sd.items()}))
  forced = load_tower_source(tmp_path / 'dino.safetensors', family='mae')
  assert forced.family == 'mae' and sorted(forced.state_dict) == sorted(sd)


@pytest.mark.parametrize('branch', ['teacher', 'student'])
def test_dino_training_checkpoint(tmp_path, branch):
  teacher, student = cf.vit_state_dict(seed=0), cf.vit_state_dict(seed=1)
  cf.save_dino_training_checkpoint(tmp_path / 'checkpoint.pth', teacher, student)
  src = load_tower_source(tmp_path / 'checkpoint.pth', dino_branch=branch)
  assert (src.family, src.kind) == ('vit', 'dino_training')
  assert any('DINO head' in n for n in src.notes)
  _assert_state_dict(src.state_dict, _np(teacher if branch == 'teacher' else student))


def test_mae_checkpoints(tmp_path):
  encoder = cf.vit_state_dict()
  full = cf.vit_state_dict(decoder=True)
  torch.save({'model': encoder}, tmp_path / 'mae_pretrain_vit_base.pth')
  args = argparse.Namespace(norm_pix_loss=True, mask_ratio=0.75, input_size=224, lr=None)
  torch.save({'model': full, 'epoch': 799, 'args': args}, tmp_path / 'mae_visualize_full.pth')
  src = load_tower_source(tmp_path / 'mae_pretrain_vit_base.pth')
  assert (src.family, src.kind, src.declared) == ('mae', 'mae', {})
  _assert_state_dict(src.state_dict, _np(encoder))
  src = load_tower_source(tmp_path / 'mae_visualize_full.pth')
  assert (src.family, src.kind) == ('mae', 'mae_full')
  assert src.declared == {'norm_pix_loss': True, 'mask_ratio': 0.75, 'image_size': 224}
  _assert_state_dict(src.state_dict, _np(full))
  # Without the wrapper, the decoder keys alone say MAE.
  torch.save(full, tmp_path / 'bare_full.pth')
  assert load_tower_source(tmp_path / 'bare_full.pth').family == 'mae'
  as_vit = load_tower_source(tmp_path / 'mae_pretrain_vit_base.pth', family='vit')
  assert as_vit.family == 'vit'
  _assert_state_dict(as_vit.state_dict, _np(encoder))


def test_detect_family():
  assert detect_family(cf.vit_state_dict()) == 'vit'
  assert detect_family(cf.vit_state_dict(decoder=True)) == 'mae'
  assert detect_family({'module.visual.conv1.weight': 0}) == 'clip'
  assert detect_family({'vision_model.embeddings.class_embedding': 0}) == 'clip'
  assert detect_family({'embeddings.patch_embeddings.projection.weight': 0}) == 'vit'
  assert detect_family({'decoder.decoder_embed.weight': 0}) == 'mae'
  assert detect_family({'foo': 0}) is None


# ------------------------------------------------------------------ errors


def test_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    load_tower_source(tmp_path / 'missing.pth')

  (tmp_path / 'weights.npz').write_bytes(b'PK-not-really\x00\x01' * 4)
  with pytest.raises(TowerSourceError, match='unknown format'):
    load_tower_source(tmp_path / 'weights.npz')

  torch.save({'something.else': torch.ones(2)}, tmp_path / 'other.pth')
  with pytest.raises(TowerSourceError, match='not a CLIP, DINO/timm ViT or MAE'):
    load_tower_source(tmp_path / 'other.pth')

  torch.save(cf.vit_state_dict(), tmp_path / 'dino.pth')
  with pytest.raises(TowerSourceError, match="family='clip'.*vit"):
    load_tower_source(tmp_path / 'dino.pth', family='clip')
  torch.save(cf.tiny_openai_clip().state_dict(), tmp_path / 'clip.pt')
  with pytest.raises(TowerSourceError, match="family='mae'.*clip"):
    load_tower_source(tmp_path / 'clip.pt', family='mae')
  with pytest.raises(ValueError, match='family must be'):
    load_tower_source(tmp_path / 'clip.pt', family='dino')

  torch.save(cf.vit_state_dict() | {'epoch': 3}, tmp_path / 'with_int.pth')
  with pytest.raises(TowerSourceError, match="'epoch' is a int, not a tensor"):
    load_tower_source(tmp_path / 'with_int.pth')

  torch.save(cf.vit_state_dict() | {'dist_token': torch.ones(1, 1, 32)}, tmp_path / 'deit.pth')
  with pytest.raises(TowerSourceError, match='dist_token'):
    load_tower_source(tmp_path / 'deit.pth')

  empty = tmp_path / 'empty_dir'
  empty.mkdir()
  with pytest.raises(TowerSourceError, match='without a Hugging Face config.json'):
    load_tower_source(empty)
  (empty / 'config.json').write_text(json.dumps({'model_type': 'bert'}))
  with pytest.raises(TowerSourceError, match="'bert' is not"):
    load_tower_source(empty)


def test_reader_does_not_import_torch():
  code = (
    'import sys; import groupvit_jax.checkpoints.tower_sources; '
    "assert 'torch' not in sys.modules, 'torch imported'"
  )
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  subprocess.run([sys.executable, '-c', code], check=True, env=env, cwd=os.getcwd())
