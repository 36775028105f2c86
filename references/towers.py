"""Test references for the CLIP, DINO and MAE towers: random-weight PyTorch models (Hugging Face
`CLIPModel`, `ViTModel`, `ViTMAEForPreTraining`, OpenAI's `clip/model.py` CLIP, a small DINO v1
ViT written here) and independent renamings of their state dicts into the canonical names, written
separately from the library's mapping. torch and transformers are imported only when called.
"""

from __future__ import annotations

import importlib.util
import math
import pathlib
import re

import numpy as np

torch = None


def _torch():
  global torch
  if torch is None:
    import torch as t

    torch = t
  return torch


def randomize_(model, seed: int, scale: float = 0.05):
  """Adds N(0, scale^2) noise to every parameter (LayerNorm affines and zero biases included), so
  that no mapping error hides behind an identity initialisation. Returns the model in eval mode."""
  t = _torch()
  gen = t.Generator().manual_seed(seed)
  with t.no_grad():
    for _, p in sorted(model.named_parameters()):
      p.add_(t.randn(p.shape, generator=gen) * scale)
  return model.eval()


def to_numpy(sd) -> dict[str, np.ndarray]:
  return {k: v.detach().cpu().numpy() for k, v in sd.items()}


# --- OpenAI CLIP ------------------------------------------------------------------------------
def openai_clip_module():
  """OpenAI's `clip/model.py` loaded on its own (importing the `clip` package needs
  pkg_resources and torchvision), or None when openai-clip is not installed."""
  _torch()
  spec = importlib.util.find_spec('clip')
  if spec is None or not spec.submodule_search_locations:
    return None
  for location in spec.submodule_search_locations:
    path = pathlib.Path(location) / 'model.py'
    if path.is_file():
      file_spec = importlib.util.spec_from_file_location('_openai_clip_model_ref', path)
      module = importlib.util.module_from_spec(file_spec)
      file_spec.loader.exec_module(module)
      return module
  return None


def random_openai_clip(seed: int = 0, **kwargs):
  """OpenAI `CLIP(embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
  context_length, vocab_size, transformer_width, transformer_heads, transformer_layers)` in float32
  with perturbed weights. Vision heads are vision_width // 64, as in OpenAI's code."""
  t = _torch()
  module = openai_clip_module()
  t.manual_seed(seed)
  return randomize_(module.CLIP(**kwargs), seed)


# --- Hugging Face CLIP -> OpenAI names --------------------------------------------------------
def random_hf_clip(seed: int = 0, vision=None, text=None, projection_dim: int = 32):
  """A Hugging Face CLIPModel of the given sizes with perturbed weights, in eval mode."""
  t = _torch()
  from transformers import CLIPConfig, CLIPModel

  cfg = CLIPConfig(text_config=dict(text or {}), vision_config=dict(vision or {}))
  cfg.projection_dim = projection_dim
  t.manual_seed(seed)
  return randomize_(CLIPModel(cfg), seed)


_HF_CLIP_BLOCK = {
  'layer_norm1': 'ln_1',
  'layer_norm2': 'ln_2',
  'mlp.fc1': 'mlp.c_fc',
  'mlp.fc2': 'mlp.c_proj',
  'self_attn.out_proj': 'attn.out_proj',
}
_HF_CLIP_TOP = {
  'vision_model.embeddings.class_embedding': 'visual.class_embedding',
  'vision_model.embeddings.patch_embedding.weight': 'visual.conv1.weight',
  'vision_model.embeddings.position_embedding.weight': 'visual.positional_embedding',
  'vision_model.pre_layrnorm.weight': 'visual.ln_pre.weight',
  'vision_model.pre_layrnorm.bias': 'visual.ln_pre.bias',
  'vision_model.post_layernorm.weight': 'visual.ln_post.weight',
  'vision_model.post_layernorm.bias': 'visual.ln_post.bias',
  'text_model.embeddings.token_embedding.weight': 'token_embedding.weight',
  'text_model.embeddings.position_embedding.weight': 'positional_embedding',
  'text_model.final_layer_norm.weight': 'ln_final.weight',
  'text_model.final_layer_norm.bias': 'ln_final.bias',
  'logit_scale': 'logit_scale',
}


def hf_clip_to_openai(sd) -> dict[str, np.ndarray]:
  """HF CLIPModel state dict -> OpenAI CLIP names (numpy); q/k/v fused into in_proj."""
  sd = to_numpy(sd)
  out, qkv = {}, {}
  for key, value in sd.items():
    if key.endswith('position_ids'):
      continue
    if key in _HF_CLIP_TOP:
      out[_HF_CLIP_TOP[key]] = value
      continue
    if key == 'visual_projection.weight':
      out['visual.proj'] = value.T
      continue
    if key == 'text_projection.weight':
      out['text_projection'] = value.T
      continue
    m = re.fullmatch(r'(vision|text)_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)', key)
    if not m:
      raise KeyError(f'unexpected HF CLIP key {key}')
    tower, i, module, kind = m.groups()
    prefix = ('visual.' if tower == 'vision' else '') + f'transformer.resblocks.{i}.'
    if module in ('self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'):
      qkv.setdefault((prefix, kind), {})[module[10]] = value
      continue
    out[f'{prefix}{_HF_CLIP_BLOCK[module]}.{kind}'] = value
  for (prefix, kind), parts in qkv.items():
    out[f'{prefix}attn.in_proj_{kind}'] = np.concatenate([parts[c] for c in 'qkv'], axis=0)
  return out


# --- Hugging Face ViT / ViTMAE -> timm names --------------------------------------------------
def random_hf_vit(seed: int = 0, **config):
  """A Hugging Face ViTModel (no pooler) with DINO's eps 1e-6 and exact GELU unless overridden."""
  t = _torch()
  from transformers import ViTConfig, ViTModel

  cfg = ViTConfig(**{'layer_norm_eps': 1e-6, 'hidden_act': 'gelu', **config})
  t.manual_seed(seed)
  return randomize_(ViTModel(cfg, add_pooling_layer=False), seed)


def random_hf_mae(seed: int = 0, perturb: bool = True, **config):
  """A Hugging Face ViTMAEForPreTraining with the release's eps 1e-6 unless overridden."""
  t = _torch()
  from transformers import ViTMAEConfig, ViTMAEForPreTraining

  cfg = ViTMAEConfig(**{'layer_norm_eps': 1e-6, 'hidden_act': 'gelu', **config})
  t.manual_seed(seed)
  model = ViTMAEForPreTraining(cfg)
  return randomize_(model, seed) if perturb else model.eval()


# Both the transformers 5 layout (layers.{i}.attention.q_proj) and the older one
# (encoder.layer.{i}.attention.attention.query).
_HF_VIT_BLOCK = [
  (r'attention\.(?:attention\.)?(q_proj|query)\.', 'q.'),
  (r'attention\.(?:attention\.)?(k_proj|key)\.', 'k.'),
  (r'attention\.(?:attention\.)?(v_proj|value)\.', 'v.'),
  (r'attention\.(o_proj|output\.dense)\.', 'attn.proj.'),
  (r'layernorm_before\.', 'norm1.'),
  (r'layernorm_after\.', 'norm2.'),
  (r'intermediate\.dense\.', 'mlp.fc1.'),
  (r'output\.dense\.', 'mlp.fc2.'),
]


def _hf_block(rest: str) -> str:
  for pattern, repl in _HF_VIT_BLOCK:
    new = re.sub('^' + pattern, repl, rest)
    if new != rest:
      return new
  return rest


def hf_vit_to_timm(sd, prefix: str = '') -> dict[str, np.ndarray]:
  """HF ViTModel (or ViTMAE encoder under `prefix`) state dict -> timm / DINO names (numpy)."""
  sd = to_numpy(sd)
  out, qkv = {}, {}
  for key, value in sd.items():
    if not key.startswith(prefix):
      continue
    k = key[len(prefix) :]
    simple = {
      'embeddings.cls_token': 'cls_token',
      'embeddings.position_embeddings': 'pos_embed',
      'embeddings.patch_embeddings.projection.weight': 'patch_embed.proj.weight',
      'embeddings.patch_embeddings.projection.bias': 'patch_embed.proj.bias',
      'layernorm.weight': 'norm.weight',
      'layernorm.bias': 'norm.bias',
    }
    if k in simple:
      out[simple[k]] = value
      continue
    m = re.fullmatch(r'(?:encoder\.layer|layers)\.(\d+)\.(.+)', k)
    if not m:
      raise KeyError(f'unexpected HF ViT key {key}')
    name = _hf_block(m[2])
    if name[:2] in ('q.', 'k.', 'v.'):
      qkv.setdefault((m[1], name[2:]), {})[name[0]] = value
      continue
    out[f'blocks.{m[1]}.{name}'] = value
  for (i, kind), parts in qkv.items():
    out[f'blocks.{i}.attn.qkv.{kind}'] = np.concatenate([parts[c] for c in 'qkv'], axis=0)
  return out


def hf_mae_to_release(sd) -> dict[str, np.ndarray]:
  """HF ViTMAEForPreTraining state dict -> the MAE release's names (numpy)."""
  out = hf_vit_to_timm(sd, prefix='vit.')
  decoder = {k[len('decoder.') :]: v for k, v in sd.items() if k.startswith('decoder.')}
  layers = {}
  for k, v in decoder.items():
    m = re.fullmatch(r'decoder_layers\.(\d+)\.(.+)', k)
    if m:
      layers[f'layers.{m[1]}.{m[2]}'] = v
    else:
      out[k] = v.detach().cpu().numpy()
  for k, v in hf_vit_to_timm(layers).items():
    out['decoder_' + k] = v
  return out


# --- DINO v1 ViT ------------------------------------------------------------------------------
def dino_vit(
  seed: int = 0,
  img_size: int = 32,
  patch_size: int = 8,
  dim: int = 48,
  depth: int = 2,
  heads: int = 3,
  mlp_ratio: float = 4.0,
):
  """A small DINO v1 ViT (timm names, eps 1e-6, exact GELU, qkv bias) with random weights.

  forward(x [B, 3, H, W]) -> final-normed tokens [B, 1 + N, D], with the position embedding
  interpolated as DINO's `interpolate_pos_encoding`: bicubic with scale factors
  ((H/p + 0.1) / g, (W/p + 0.1) / g).
  """
  t = _torch()
  nn, F = t.nn, t.nn.functional

  class Attention(nn.Module):
    def __init__(self):
      super().__init__()
      self.qkv = nn.Linear(dim, 3 * dim)
      self.proj = nn.Linear(dim, dim)

    def forward(self, x):
      b, n, _ = x.shape
      q, k, v = self.qkv(x).reshape(b, n, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
      weights = ((q @ k.transpose(-1, -2)) * (dim // heads) ** -0.5).softmax(-1)
      return self.proj((weights @ v).transpose(1, 2).reshape(b, n, dim))

  class Mlp(nn.Module):
    def __init__(self):
      super().__init__()
      self.fc1 = nn.Linear(dim, int(dim * mlp_ratio))
      self.fc2 = nn.Linear(int(dim * mlp_ratio), dim)

    def forward(self, x):
      return self.fc2(F.gelu(self.fc1(x)))

  class Block(nn.Module):
    def __init__(self):
      super().__init__()
      self.norm1 = nn.LayerNorm(dim, eps=1e-6)
      self.attn = Attention()
      self.norm2 = nn.LayerNorm(dim, eps=1e-6)
      self.mlp = Mlp()

    def forward(self, x):
      x = x + self.attn(self.norm1(x))
      return x + self.mlp(self.norm2(x))

  class PatchEmbed(nn.Module):
    def __init__(self):
      super().__init__()
      self.proj = nn.Conv2d(3, dim, patch_size, patch_size)

  class DinoViT(nn.Module):
    def __init__(self):
      super().__init__()
      self.patch_embed = PatchEmbed()
      n = (img_size // patch_size) ** 2
      self.cls_token = nn.Parameter(t.zeros(1, 1, dim))
      self.pos_embed = nn.Parameter(t.zeros(1, n + 1, dim))
      self.blocks = nn.ModuleList([Block() for _ in range(depth)])
      self.norm = nn.LayerNorm(dim, eps=1e-6)

    def interpolate_pos_encoding(self, n_patches, height, width):
      n = self.pos_embed.shape[1] - 1
      if n_patches == n and height == width:
        return self.pos_embed
      g = math.sqrt(n)
      rows = height // patch_size + 0.1
      cols = width // patch_size + 0.1
      grid = self.pos_embed[:, 1:].reshape(1, int(g), int(g), dim).permute(0, 3, 1, 2)
      grid = F.interpolate(grid, scale_factor=(rows / g, cols / g), mode='bicubic')
      assert grid.shape[-2:] == (int(rows), int(cols))
      grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
      return t.cat([self.pos_embed[:, :1], grid], dim=1)

    def forward(self, x):
      height, width = x.shape[-2:]
      tokens = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
      tokens = t.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
      tokens = tokens + self.interpolate_pos_encoding(tokens.shape[1] - 1, height, width)
      for block in self.blocks:
        tokens = block(tokens)
      return self.norm(tokens)

  t.manual_seed(seed)
  model = DinoViT()
  with t.no_grad():
    model.cls_token.normal_(0, 0.02)
    model.pos_embed.normal_(0, 0.02)
  return randomize_(model, seed)
