"""Converted Hugging Face / NVlabs checkpoints give the reference model's outputs.

Tolerance: 1e-4 absolute on L2-normalised float32 embeddings. Both sides run float32 with the same
operations in a different order (fused vs split q/k/v, XLA vs oneDNN matmuls, Welford vs two-pass
LayerNorm); over 12+12 blocks we observe ~1e-6, so 1e-4 leaves two orders of margin while still
catching any real mapping error (a wrong transpose or eps moves outputs by >1e-2).
"""

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')

from groupvit_jax import load_pretrained  # noqa: E402
from groupvit_jax.checkpoints.keymaps import CheckpointMismatchError  # noqa: E402
from groupvit_jax.convert import convert  # noqa: E402
from references import hf_groupvit  # noqa: E402
from tests.conftest import REPO, SHARED_DATA  # noqa: E402

ATOL = 1e-4

CAPTIONS = [
  'a dog runs on the beach',
  'Two people riding bikes & a red bus &amp; more',
  '',
  'ÜBER café — naïve façade 東京 🚲 ' * 6,
]


def _captions():
  path = SHARED_DATA / 'captions' / 'cc3m_validation_first1000.txt'
  if path.exists():
    return CAPTIONS + path.read_text().splitlines()[:12]
  return CAPTIONS


def _images(n=3):
  return hf_groupvit.real_images(
    SHARED_DATA if SHARED_DATA.is_dir() else None, n
  ) or hf_groupvit.synthetic_images(n)


def _hf_image(model, pixels_nhwc, interpolate=False):
  x = torch.from_numpy(np.ascontiguousarray(pixels_nhwc.transpose(0, 3, 1, 2)))
  embeddings = model.vision_model.embeddings
  original = embeddings.forward
  if interpolate:  # this transformers version has the switch on the embeddings only
    embeddings.forward = lambda pixels, **kw: original(pixels, interpolate_pos_encoding=True)
  try:
    with torch.no_grad():
      out = model.vision_model(x, output_attentions=True, return_dict=True)
      emb = model.visual_projection(out.pooler_output)
  finally:
    embeddings.forward = original
  emb = torch.nn.functional.normalize(emb, dim=-1).numpy()
  maps, acc = [], None  # compose soft maps across stages: patches x groups
  for a in out.attentions:
    m = a.permute(0, 2, 1)
    acc = m if acc is None else acc @ m
    maps.append(acc.numpy())
  return emb, maps


def _hf_text(model, tokens):
  with torch.no_grad():
    out = model.get_text_features(input_ids=torch.from_numpy(tokens.astype(np.int64)))
  out = out if torch.is_tensor(out) else out.pooler_output
  return torch.nn.functional.normalize(out, dim=-1).numpy()


def _compare(model_dir, hf, sizes=((224, 224),)):
  ours = load_pretrained(str(model_dir))
  images = _images()
  for size in sizes:
    pixels = np.stack(
      [
        ours.preprocess([im])[0]
        if size == (ours.config.image.image_size,) * 2
        else _resize_norm(im, size)
        for im in images
      ]
    )
    interpolate = size != (ours.config.image.image_size,) * 2
    ref_emb, ref_maps = _hf_image(hf, pixels, interpolate)
    np.testing.assert_allclose(ours.encode_pixels(pixels), ref_emb, atol=ATOL)
    maps = ours.group_maps(pixels, preprocess=False)
    assert len(maps) == len(ref_maps)
    for m, r in zip(maps, ref_maps):
      m = m.reshape(r.shape)
      np.testing.assert_allclose(m, r, atol=ATOL)
      np.testing.assert_array_equal(m.argmax(-1), r.argmax(-1))
  # uint8 entry point == preprocessing + pixels, and unit norm
  emb = ours.encode_image(images)
  np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(emb, _hf_image(hf, ours.preprocess(images))[0], atol=ATOL)
  captions = _captions()
  np.testing.assert_allclose(
    ours.encode_text(captions), _hf_text(hf, ours.tokenize(captions)), atol=ATOL
  )
  return ours


def _resize_norm(image, size):
  from PIL import Image

  from groupvit_jax.preprocessing import normalize

  return normalize(np.asarray(Image.fromarray(image).resize(size[::-1], Image.BILINEAR)))


@pytest.mark.slow
def test_released_architecture_from_hf_directory_via_cli(tmp_path):
  hf = hf_groupvit.random_hf_model(seed=1)
  hf.save_pretrained(tmp_path / 'hf')
  out = tmp_path / 'converted'
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'groupvit_jax.convert',
      '--source',
      str(tmp_path / 'hf'),
      '--output',
      str(out),
    ],
    capture_output=True,
    text=True,
    cwd=REPO,
  )
  assert proc.returncode == 0, proc.stderr
  assert '55,726,609 parameters' in proc.stdout  # HF has no multi-label scale
  # 224 (training size) and 448 x 320 (evaluation: bicubic-resized position embedding)
  _compare(out, hf, sizes=((224, 224), (448, 320)))


@pytest.mark.slow
def test_three_stage_nvlabs_pth_with_embedded_config(tmp_path):
  omegaconf = pytest.importorskip('omegaconf')
  hf = hf_groupvit.random_hf_model(
    seed=2,
    vision=dict(
      hidden_size=96,
      intermediate_size=192,
      num_attention_heads=3,
      depths=[2, 1, 1, 1],
      num_group_tokens=[16, 8, 4, 0],
      num_output_groups=[16, 8, 4, 4],
      image_size=64,
      patch_size=8,
    ),
    # NVlabs text towers always have width / 64 heads
    text=dict(hidden_size=64, intermediate_size=128, num_attention_heads=1, num_hidden_layers=2),
    projection_dim=48,
    projection_intermediate_dim=96,
  )
  sd = hf_groupvit.hf_state_to_nvlabs(hf.state_dict())
  sd['multi_label_logit_scale'] = torch.tensor(2.0)
  # image heads (3) cannot be read from shapes: they must come from the config
  cfg = omegaconf.OmegaConf.create(
    {
      'model': {
        'type': 'MultiLabelContrastive',
        'img_encoder': {
          'type': 'GroupViT',
          'embed_dim': 96,
          'num_heads': [3, 3, 3, 3],
          'depths': [2, 1, 1, 1],
          'num_group_tokens': [16, 8, 4, 0],
          'num_output_groups': [16, 8, 4],
          'drop_path_rate': 0.1,
          'patch_size': 8,
          'img_size': 64,
        },
        'text_encoder': {
          'type': 'TextTransformer',
          'context_length': 77,
          'width': 64,
          'layers': 2,
          'vocab_size': 49408,
        },
      }
    }
  )
  torch.save({'model': sd, 'config': cfg, 'epoch': 29}, tmp_path / 'ckpt.pth')
  config = convert(str(tmp_path / 'ckpt.pth'), str(tmp_path / 'converted'))
  assert config.image.num_heads == 3 and config.multi_label
  assert config.image.num_group_tokens == (16, 8, 4, 0)
  _compare(tmp_path / 'converted', hf, sizes=((64, 64), (96, 80)))
  # Without a config, heads default to width / 64 (1 here): the weights load but the outputs
  # differ; `--set` supplies what shapes cannot tell.
  torch.save(sd, tmp_path / 'bare.pth')
  convert(str(tmp_path / 'bare.pth'), str(tmp_path / 'guessed'))
  with pytest.raises(AssertionError):
    _compare(tmp_path / 'guessed', hf)
  convert(str(tmp_path / 'bare.pth'), str(tmp_path / 'set'), overrides=['image.num_heads=3'])
  _compare(tmp_path / 'set', hf)


@pytest.mark.slow
def test_one_stage_bare_state_dict_inferred_from_shapes(tmp_path):
  hf = hf_groupvit.random_hf_model(
    seed=3,
    vision=dict(
      hidden_size=128,
      intermediate_size=256,
      num_attention_heads=2,
      depths=[2, 2],
      num_group_tokens=[16, 0],
      num_output_groups=[4, 4],
      image_size=32,
      patch_size=8,
    ),
    text=dict(hidden_size=64, intermediate_size=256, num_attention_heads=1, num_hidden_layers=1),
    projection_dim=32,
    projection_intermediate_dim=64,
  )
  torch.save(hf.state_dict(), tmp_path / 'hf_bare.bin')  # HF names, no config
  config = convert(str(tmp_path / 'hf_bare.bin'), str(tmp_path / 'a'))
  assert config.image.depths == (2, 2) and config.image.num_output_groups == (4,)
  _compare(tmp_path / 'a', hf, sizes=((32, 32), (48, 40)))
  sd = hf_groupvit.hf_state_to_nvlabs(hf.state_dict())
  torch.save(sd, tmp_path / 'nv_bare.pth')  # NVlabs names, no config
  convert(str(tmp_path / 'nv_bare.pth'), str(tmp_path / 'b'))
  _compare(tmp_path / 'b', hf)


def test_mismatched_checkpoints_are_errors_naming_the_keys(tmp_path):
  hf = hf_groupvit.random_hf_model(
    seed=4,
    vision=dict(
      hidden_size=64,
      intermediate_size=128,
      num_attention_heads=1,
      depths=[1, 1],
      num_group_tokens=[4, 0],
      num_output_groups=[2, 2],
      image_size=16,
      patch_size=8,
    ),
    text=dict(hidden_size=64, intermediate_size=64, num_attention_heads=1, num_hidden_layers=1),
    projection_dim=16,
    projection_intermediate_dim=32,
  )
  sd = hf_groupvit.hf_state_to_nvlabs(hf.state_dict())
  extra = dict(sd, **{'img_encoder.unexpected.weight': torch.zeros(3)})
  torch.save({'model': extra}, tmp_path / 'extra.pth')
  with pytest.raises(CheckpointMismatchError, match='unused.*img_encoder.unexpected.weight'):
    convert(str(tmp_path / 'extra.pth'), str(tmp_path / 'o1'))
  missing = {k: v for k, v in sd.items() if not k.endswith('assign.proj.bias')}
  torch.save({'model': missing}, tmp_path / 'missing.pth')
  with pytest.raises(CheckpointMismatchError, match='missing.*downsample.assign.proj.bias'):
    convert(str(tmp_path / 'missing.pth'), str(tmp_path / 'o2'))
  bad = dict(sd)
  bad['img_encoder.layers.0.blocks.0.attn.proj.weight'] = torch.zeros(64, 63)
  torch.save({'model': bad}, tmp_path / 'shape.pth')
  with pytest.raises(CheckpointMismatchError, match='shape mismatch.*attn.proj.weight'):
    convert(str(tmp_path / 'shape.pth'), str(tmp_path / 'o3'))
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'groupvit_jax.convert',
      '--source',
      str(tmp_path / 'nope.pth'),
      '--output',
      str(tmp_path / 'o4'),
    ],
    capture_output=True,
    text=True,
    cwd=REPO,
  )
  assert proc.returncode == 2 and 'does not exist' in proc.stderr
