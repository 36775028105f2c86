"""Test helpers: random-weight Hugging Face GroupViT models and an independent re-keying of their
weights into the NVlabs release's names (written separately from the library's own mapping)."""

from __future__ import annotations

import io
import re
import tarfile

import numpy as np

torch = None


def _torch():
  global torch
  if torch is None:
    import torch as t

    torch = t
  return torch


def random_hf_model(seed: int = 0, **config_kwargs):
  """A GroupViTModel with every parameter and BatchNorm buffer randomised, in eval mode."""
  t = _torch()
  from transformers import GroupViTConfig, GroupViTModel, GroupViTTextConfig, GroupViTVisionConfig

  vision = config_kwargs.pop('vision', {})
  text = config_kwargs.pop('text', {})
  cfg = GroupViTConfig(
    text_config=GroupViTTextConfig(**text).to_dict(),
    vision_config=GroupViTVisionConfig(**vision).to_dict(),
    **config_kwargs,
  )
  t.manual_seed(seed)
  model = GroupViTModel(cfg).eval()
  with t.no_grad():
    for _, p in model.named_parameters():
      p.add_(t.randn_like(p) * 0.02)
    for name, b in model.named_buffers():
      if name.endswith('running_mean'):
        b.normal_(0, 0.1)
      elif name.endswith('running_var'):
        b.uniform_(0.5, 1.5)
  return model


def hf_state_to_nvlabs(sd: dict) -> dict:
  """HF GroupViTModel state dict -> NVlabs release names (torch tensors)."""
  t = _torch()
  out, pending = {}, {}
  for k, v in sd.items():
    if k.endswith('position_ids'):
      continue
    n = k
    n = n.replace(
      'vision_model.embeddings.patch_embeddings.projection', 'img_encoder.patch_embed.proj'
    )
    n = n.replace('vision_model.embeddings.layernorm', 'img_encoder.patch_embed.norm')
    n = n.replace('vision_model.embeddings.position_embeddings', 'img_encoder.pos_embed')
    n = n.replace('vision_model.layernorm', 'img_encoder.norm')
    n = re.sub(
      r'vision_model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.',
      r'img_encoder.layers.\1.blocks.\2.',
      n,
    )
    n = re.sub(r'vision_model\.encoder\.stages\.(\d+)\.', r'img_encoder.layers.\1.', n)
    n = re.sub(
      r'text_model\.encoder\.layers\.(\d+)\.', r'text_encoder.transformer.resblocks.\1.', n
    )
    n = n.replace('text_model.embeddings.token_embedding', 'text_encoder.token_embedding')
    n = n.replace(
      'text_model.embeddings.position_embedding.weight', 'text_encoder.positional_embedding'
    )
    n = n.replace('text_model.final_layer_norm', 'text_encoder.ln_final')
    for hf, nv in (('visual_projection', 'img_projector'), ('text_projection', 'text_projector')):
      n = n.replace(f'{hf}.0.', f'{nv}.linear_hidden.0.').replace(
        f'{hf}.1.', f'{nv}.linear_hidden.1.'
      )
      n = n.replace(f'{hf}.3.', f'{nv}.linear_out.')
    if '.blocks.' in n:
      n = (
        n.replace('layer_norm1', 'norm1')
        .replace('layer_norm2', 'norm2')
        .replace('self_attn.out_proj', 'attn.proj')
      )
    if 'resblocks.' in n:
      n = (
        n.replace('layer_norm1', 'ln_1')
        .replace('layer_norm2', 'ln_2')
        .replace('mlp.fc1', 'mlp.c_fc')
        .replace('mlp.fc2', 'mlp.c_proj')
        .replace('self_attn.out_proj', 'attn.out_proj')
      )
    n = n.replace('pre_assign_attn.attn.out_proj', 'pre_assign_attn.attn.proj')
    m = re.match(r'(.*)self_attn\.([qkv])_proj\.(weight|bias)$', n)
    if m:
      pending.setdefault((m[1], m[3]), {})[m[2]] = v
      continue
    if re.search(r'_projector\.(linear_hidden\.0|linear_out)\.weight$', n):
      v = v[..., None]  # Linear -> Conv1d(kernel_size=1)
    out[n] = v
  for (prefix, kind), parts in pending.items():
    fused = t.cat([parts['q'], parts['k'], parts['v']], 0)
    if 'resblocks' in prefix:
      out[prefix + ('attn.in_proj_weight' if kind == 'weight' else 'attn.in_proj_bias')] = fused
    else:
      out[prefix + f'attn.qkv.{kind}'] = fused
  return out


def real_images(shared_data_dir, n: int = 4):
  """Up to n real photos (uint8 [H, W, 3]) from the shared webdataset shard, or None."""
  from PIL import Image

  path = shared_data_dir / 'webdataset_coco' / '00000.tar' if shared_data_dir else None
  if path is None or not path.exists():
    return None
  images = []
  with tarfile.open(path) as tar:
    for member in tar:
      if member.name.endswith('.jpg'):
        images.append(
          np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert('RGB'))
        )
        if len(images) == n:
          break
  return images


def synthetic_images(n: int = 4, seed: int = 0):
  """Smooth random images of assorted sizes, uint8 [H, W, 3]."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    h, w = 200 + 37 * i, 260 - 21 * i
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(6 * xx + i), np.cos(5 * yy - i), np.sin(4 * (xx + yy))], -1)
    out.append(
      ((base * 0.4 + 0.5 + 0.1 * rng.standard_normal((h, w, 3))).clip(0, 1) * 255).astype(np.uint8)
    )
  return out
