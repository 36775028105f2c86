"""Writes tiny random-weight CLIP / DINO / MAE checkpoints in the formats users hold (tests only).

Needs PyTorch and transformers. Every writer returns what it wrote, so a test can compare a reader's
output with the tensors it started from.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from references.towers import openai_clip_module

# Small enough to build, save and trace in well under a second.
CLIP_DIMS = dict(
  embed_dim=24,
  image_resolution=16,
  vision_layers=2,
  vision_width=64,
  vision_patch_size=8,
  context_length=7,
  vocab_size=50,
  transformer_width=64,
  transformer_heads=1,
  transformer_layers=2,
)


def tiny_openai_clip(seed: int = 0, with_release_buffers: bool = True) -> torch.nn.Module:
  """A tiny OpenAI CLIP (float32) with random weights.

  With `with_release_buffers`, it carries the `input_resolution`, `context_length` and
  `vocab_size` tensors OpenAI's released archives hold next to the weights.
  """
  torch.manual_seed(seed)
  model = openai_clip_module().CLIP(**CLIP_DIMS)
  # Random LayerNorm affines and biases, so that a swapped or zeroed entry would show.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith(('bias', 'ln_1.weight', 'ln_2.weight', 'ln_pre.weight', 'ln_final.weight')):
        p.normal_()
  if with_release_buffers:
    for name, dim in (
      ('input_resolution', 'image_resolution'),
      ('context_length', 'context_length'),
      ('vocab_size', 'vocab_size'),
    ):
      if hasattr(model, name):
        delattr(model, name)
      model.register_buffer(name, torch.tensor(CLIP_DIMS[dim]))
  return model.eval()


def save_openai_torchscript(
  model: torch.nn.Module, path, dims: dict = CLIP_DIMS
) -> torch.jit.ScriptModule:
  """Converts to float16 as OpenAI did (clip/model.py convert_weights), traces, jit-saves.
  `dims`: the model's constructor arguments (image_resolution, context_length)."""
  openai_clip_module().convert_weights(model)
  size = dims['image_resolution']
  inputs = (
    torch.randn(1, 3, size, size).half(),
    torch.zeros(1, dims['context_length'], dtype=torch.long),
  )
  # The float16 CPU trace re-run disagrees on dtypes; the graph itself is what matters here.
  traced = torch.jit.trace(model, inputs, check_trace=False)
  torch.jit.save(traced, os.fspath(path))
  return traced


def tiny_hf_clip(seed: int = 0):
  import transformers

  torch.manual_seed(seed)
  # 64-wide heads, so OpenAI's clip/model.py (heads = width // 64) can run the same weights.
  common = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2)
  config = transformers.CLIPConfig(
    # eos_token_id 2 selects HF's legacy pooling at the argmax token, as OpenAI pools.
    text_config=dict(
      common, vocab_size=50, max_position_embeddings=7, bos_token_id=0, eos_token_id=2
    ),
    vision_config=dict(common, image_size=16, patch_size=8),
    projection_dim=24,
  )
  return _randomize(transformers.CLIPModel(config))


def tiny_hf_vit(seed: int = 0):
  import transformers

  torch.manual_seed(seed)
  config = transformers.ViTConfig(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=16,
    patch_size=8,
    layer_norm_eps=1e-6,
  )
  return _randomize(transformers.ViTModel(config))


def tiny_hf_vit_mae(seed: int = 0):
  import transformers

  torch.manual_seed(seed)
  config = transformers.ViTMAEConfig(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=16,
    patch_size=8,
    decoder_hidden_size=16,
    decoder_num_hidden_layers=2,
    decoder_num_attention_heads=4,
    decoder_intermediate_size=32,
    norm_pix_loss=True,
    mask_ratio=0.5,
  )
  return _randomize(transformers.ViTMAEForPreTraining(config))


def _randomize(model):
  with torch.no_grad():
    for p in model.parameters():
      p.normal_()
  return model.eval()


def save_hf_bin_directory(model, directory) -> None:
  """A Hugging Face directory as older hubs hold them: config.json + pytorch_model.bin."""
  from safetensors.torch import load_file

  model.save_pretrained(directory)
  weights = os.path.join(directory, 'model.safetensors')
  torch.save(load_file(weights), os.path.join(directory, 'pytorch_model.bin'))
  os.remove(weights)


def vit_state_dict(
  seed: int = 0, depth: int = 2, width: int = 32, patch: int = 8, tokens: int = 5, decoder=False
) -> dict[str, torch.Tensor]:
  """A DINO / timm (or with `decoder`, an MAE) ViT state dict of random tensors."""
  g = torch.Generator().manual_seed(seed)

  def rand(*shape):
    return torch.randn(*shape, generator=g)

  def blocks(prefix, n, d):
    out = {}
    for i in range(n):
      b = f'{prefix}{i}.'
      for norm in ('norm1', 'norm2'):
        out[f'{b}{norm}.weight'], out[f'{b}{norm}.bias'] = rand(d), rand(d)
      out[f'{b}attn.qkv.weight'], out[f'{b}attn.qkv.bias'] = rand(3 * d, d), rand(3 * d)
      out[f'{b}attn.proj.weight'], out[f'{b}attn.proj.bias'] = rand(d, d), rand(d)
      out[f'{b}mlp.fc1.weight'], out[f'{b}mlp.fc1.bias'] = rand(4 * d, d), rand(4 * d)
      out[f'{b}mlp.fc2.weight'], out[f'{b}mlp.fc2.bias'] = rand(d, 4 * d), rand(d)
    return out

  sd = {
    'cls_token': rand(1, 1, width),
    'pos_embed': rand(1, tokens, width),
    'patch_embed.proj.weight': rand(width, 3, patch, patch),
    'patch_embed.proj.bias': rand(width),
    **blocks('blocks.', depth, width),
    'norm.weight': rand(width),
    'norm.bias': rand(width),
  }
  if decoder:
    dd = width // 2
    sd.update(
      {
        'mask_token': rand(1, 1, dd),
        'decoder_pos_embed': rand(1, tokens, dd),
        'decoder_embed.weight': rand(dd, width),
        'decoder_embed.bias': rand(dd),
        **blocks('decoder_blocks.', 2, dd),
        'decoder_norm.weight': rand(dd),
        'decoder_norm.bias': rand(dd),
        'decoder_pred.weight': rand(patch * patch * 3, dd),
        'decoder_pred.bias': rand(patch * patch * 3),
      }
    )
  return sd


def dino_head_state_dict(seed: int = 1) -> dict[str, torch.Tensor]:
  """The entries of DINO's projection head (`DINOHead`), dropped by readers."""
  g = torch.Generator().manual_seed(seed)
  return {
    'head.mlp.0.weight': torch.randn(16, 32, generator=g),
    'head.mlp.0.bias': torch.randn(16, generator=g),
    'head.last_layer.weight_g': torch.randn(64, 1, generator=g),
    'head.last_layer.weight_v': torch.randn(64, 16, generator=g),
  }


def save_dino_training_checkpoint(path, teacher: dict, student: dict) -> None:
  """What DINO's main_dino.py saves: the student under DDP, the teacher bare, plus extras."""
  head = dino_head_state_dict()
  torch.save(
    {
      'student': {f'module.backbone.{k}': v for k, v in student.items()}
      | {f'module.{k}': v for k, v in head.items()},
      'teacher': {f'backbone.{k}': v for k, v in teacher.items()} | head,
      'optimizer': {'state': {}, 'param_groups': [{'lr': 0.1}]},
      'epoch': 100,
      'args': argparse.Namespace(arch='vit_small', patch_size=8),
      'dino_loss': {'center': torch.zeros(1, 64)},
    },
    path,
  )


def save_open_clip_config(directory, quick_gelu: bool | None) -> None:
  """An open_clip_config.json as open_clip's hub export writes it, for CLIP_DIMS."""
  model_cfg = {
    'embed_dim': CLIP_DIMS['embed_dim'],
    'vision_cfg': {
      'image_size': CLIP_DIMS['image_resolution'],
      'layers': CLIP_DIMS['vision_layers'],
      'width': CLIP_DIMS['vision_width'],
      'patch_size': CLIP_DIMS['vision_patch_size'],
    },
    'text_cfg': {
      'context_length': CLIP_DIMS['context_length'],
      'vocab_size': CLIP_DIMS['vocab_size'],
      'width': CLIP_DIMS['transformer_width'],
      'heads': CLIP_DIMS['transformer_heads'],
      'layers': CLIP_DIMS['transformer_layers'],
    },
  }
  if quick_gelu is not None:
    model_cfg['quick_gelu'] = quick_gelu
  with open(os.path.join(directory, 'open_clip_config.json'), 'w') as f:
    json.dump({'model_cfg': model_cfg, 'preprocess_cfg': {'mean': [0.5] * 3}}, f)
