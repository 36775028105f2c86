"""CLIP, DINO and MAE checkpoints in the formats users hold, converted by the CLI in an interpreter
where torch and transformers cannot be imported, loaded with `load_pretrained` and compared with
the PyTorch models that wrote them.

Tolerance: 1e-4 absolute in float32 (as tests/test_towers.py: a few ulps per op, accumulated over
a few blocks, on outputs of order 1).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')

from groupvit_jax import load_pretrained, preprocessing  # noqa: E402
from groupvit_jax.checkpoints import store  # noqa: E402
from groupvit_jax.convert import main as convert_main  # noqa: E402
from groupvit_jax.export import ExportError, export  # noqa: E402
from groupvit_jax.pretrained_towers import PretrainedCLIP, PretrainedMAE, PretrainedViT  # noqa: E402
from groupvit_jax.tokenizer import default_tokenizer  # noqa: E402
from references import checkpoint_files as cf  # noqa: E402
from references import hf_groupvit  # noqa: E402
from references import towers as ref  # noqa: E402
from tests.conftest import SHARED_DATA  # noqa: E402
from tests.test_dependencies import _run_blocked  # noqa: E402

ATOL = 1e-4
CAPTIONS = ['a dog runs on the beach', 'two people riding bikes', '', 'ÜBER café 東京 🚲 ' * 3]
# OpenAI CLIP of another shape than the defaults: 96 wide (heads 96 // 64 = 1), 12 px patches.
OPENAI = dict(
  embed_dim=40,
  image_resolution=36,
  vision_layers=2,
  vision_width=96,
  vision_patch_size=12,
  context_length=20,
  vocab_size=49408,
  transformer_width=128,
  transformer_heads=2,  # width // 64, as every OpenAI release (its archives declare no heads)
  transformer_layers=2,
)
HF_CLIP = dict(
  vision=dict(
    hidden_size=48,
    num_hidden_layers=2,
    num_attention_heads=3,
    intermediate_size=96,
    image_size=32,
    patch_size=8,
    hidden_act='gelu',
  ),
  text=dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=24,
    hidden_act='gelu',
  ),
  projection_dim=20,
)
DINO = dict(img_size=40, patch_size=8, dim=48, depth=2, heads=3)
MAE = dict(
  hidden_size=48,
  num_hidden_layers=2,
  num_attention_heads=3,
  intermediate_size=96,
  image_size=32,
  patch_size=8,
  decoder_hidden_size=32,
  decoder_num_hidden_layers=2,
  decoder_num_attention_heads=4,
  decoder_intermediate_size=64,
  norm_pix_loss=True,
  mask_ratio=0.6,
)


def _images(n: int = 3) -> list[np.ndarray]:
  """Real photos from ../shared/data where present, else generated ones (uint8 [H, W, 3])."""
  found = hf_groupvit.real_images(SHARED_DATA if SHARED_DATA.is_dir() else None, n)
  return found or hf_groupvit.synthetic_images(n)


def _captions() -> list[str]:
  path = SHARED_DATA / 'captions' / 'cc3m_validation_first1000.txt'
  extra = path.read_text().splitlines()[:3] if path.exists() else []
  return CAPTIONS + extra


def _nchw(x: np.ndarray):
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


def _close(name: str, ours, theirs):
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  assert ours.shape == theirs.shape, (name, ours.shape, theirs.shape)
  diff = float(np.max(np.abs(ours - theirs)))
  assert diff < ATOL, f'{name}: max abs difference {diff:.3g}'


def _unit(x):
  x = np.asarray(x.detach().numpy() if torch.is_tensor(x) else x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _features(out):  # transformers versions differ: a tensor or an output with pooler_output
  return out if torch.is_tensor(out) else out.pooler_output


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  """Writes one checkpoint per format, converts all of them with the CLI in a single interpreter
  without torch, and returns {name: (model directory, the torch model)}."""
  tmp = tmp_path_factory.mktemp('towers')
  jobs, models = {}, {}

  openai = ref.random_openai_clip(seed=11, **OPENAI)
  cf.save_openai_torchscript(openai, tmp / 'ViT-T-12.pt', OPENAI)
  models['openai_torchscript'] = openai.float().eval()  # the float16-rounded weights, upcast
  jobs['openai_torchscript'] = [str(tmp / 'ViT-T-12.pt')]

  hf_clip = ref.random_hf_clip(seed=12, **HF_CLIP)
  hf_clip.save_pretrained(tmp / 'hf_clip')
  models['hf_clip'] = hf_clip
  jobs['hf_clip'] = [str(tmp / 'hf_clip')]

  # open_clip training checkpoint: DDP prefixes, activation from params.txt (GELU, as LAION's).
  (tmp / 'logs/run/checkpoints').mkdir(parents=True)
  (tmp / 'logs/run/params.txt').write_text('model: ViT-T-12\nforce_quick_gelu: False\n')
  sd = {f'module.{k}': v for k, v in ref.hf_clip_to_openai(hf_clip.state_dict()).items()}
  sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
  torch.save({'epoch': 3, 'state_dict': sd}, tmp / 'logs/run/checkpoints/epoch_3.pt')
  models['open_clip_training'] = hf_clip
  # Heads are not 64 wide here, and a training checkpoint declares none.
  heads = ['--set', 'vision.num_heads=3', '--set', 'text.num_heads=2']
  jobs['open_clip_training'] = [str(tmp / 'logs/run/checkpoints/epoch_3.pt'), *heads]

  teacher, student = ref.dino_vit(seed=13, **DINO), ref.dino_vit(seed=14, **DINO)
  cf.save_dino_training_checkpoint(
    tmp / 'dino_checkpoint.pth', teacher.state_dict(), student.state_dict()
  )
  models['dino_teacher'], models['dino_student'] = teacher, student
  jobs['dino_teacher'] = [str(tmp / 'dino_checkpoint.pth'), '--set', 'num_heads=3']
  jobs['dino_student'] = jobs['dino_teacher'] + ['--dino_branch', 'student']

  hf_vit = ref.random_hf_vit(
    seed=15,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=80,
    image_size=24,
    patch_size=6,
  )
  hf_vit.save_pretrained(tmp / 'hf_vit')
  models['hf_vit'] = hf_vit
  jobs['hf_vit'] = [str(tmp / 'hf_vit')]

  mae = ref.random_hf_mae(seed=16, **MAE)
  release = {
    k: torch.from_numpy(np.ascontiguousarray(v))
    for k, v in ref.hf_mae_to_release(mae.state_dict()).items()
  }
  args = argparse.Namespace(norm_pix_loss=True, mask_ratio=0.6, input_size=32, model='mae_tiny')
  torch.save({'model': release, 'args': args, 'epoch': 1}, tmp / 'mae_tiny_full.pth')
  encoder_only = {k: v for k, v in release.items() if not k.startswith(('decoder', 'mask_token'))}
  torch.save({'model': encoder_only}, tmp / 'mae_tiny.pth')
  mae.save_pretrained(tmp / 'hf_mae')
  models['mae_full'] = models['mae_encoder'] = models['hf_mae'] = mae
  heads = ['--set', 'encoder.num_heads=3', '--set', 'decoder_num_heads=4']
  jobs['mae_full'] = [str(tmp / 'mae_tiny_full.pth'), *heads]
  jobs['mae_encoder'] = [str(tmp / 'mae_tiny.pth'), '--set', 'encoder.num_heads=3']
  jobs['hf_mae'] = [str(tmp / 'hf_mae')]

  calls = {
    name: ['--source', a[0], '--output', str(tmp / f'out_{name}'), *a[1:]]
    for name, a in jobs.items()
  }
  out = _run_blocked(
    ('torch', 'transformers', 'tensorflow', 'spacy'),
    f"""
import sys
from groupvit_jax.convert import main
for name, argv in {calls!r}.items():
  assert main(argv) == 0, name
loaded = sorted(n for n in ('torch', 'transformers') if sys.modules.get(n) is not None)
print('converted', len({calls!r}), 'loaded', loaded)
""",
  )
  assert f'converted {len(calls)} loaded []' in out, out
  return {name: (str(tmp / f'out_{name}'), models[name]) for name in jobs}


def test_openai_torchscript_archive(converted):
  directory, theirs = converted['openai_torchscript']
  clip = load_pretrained(directory)
  assert isinstance(clip, PretrainedCLIP)
  assert (clip.config.vision.activation, clip.config.vision.num_heads) == ('quick_gelu', 1)
  with open(f'{directory}/source.json') as f:
    assert json.load(f)['kind'] == 'openai_torchscript'
  images = _images()
  pixels = clip.preprocess(images)
  assert pixels.shape == (len(images), 36, 36, 3)
  with torch.no_grad():
    image_ref = theirs.encode_image(_nchw(pixels))
    tokens = default_tokenizer()(_captions(), context_length=OPENAI['context_length'])
    text_ref = theirs.encode_text(torch.from_numpy(tokens.astype(np.int64)))
  _close('openai.encode_image', clip.encode_image(images), _unit(image_ref))
  _close('openai.encode_pixels', clip.encode_pixels(pixels), _unit(image_ref))
  _close('openai.encode_text', clip.encode_text(_captions()), _unit(text_ref))
  assert clip.logit_scale == pytest.approx(float(theirs.logit_scale.exp()), rel=1e-6)


def test_clip_preprocessing_is_openai_s(converted):
  """Bicubic short side to the input size, centre crop, CLIP mean/std (clip.clip._transform)."""
  from PIL import Image

  clip = load_pretrained(converted['openai_torchscript'][0])
  image = _images(1)[0]
  h, w = image.shape[:2]
  short = 36
  size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
  resized = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))
  top, left = int(round((resized.shape[0] - 36) / 2)), int(round((resized.shape[1] - 36) / 2))
  crop = resized[top : top + 36, left : left + 36].astype(np.float32) / 255
  expected = (crop - preprocessing.CLIP_MEAN) / preprocessing.CLIP_STD
  np.testing.assert_allclose(clip.preprocess(image)[0], expected, atol=1e-6)


@pytest.mark.parametrize('name', ['hf_clip', 'open_clip_training'])
def test_gelu_clip_from_hf_directory_and_open_clip_training_checkpoint(converted, name):
  directory, hf = converted[name]
  clip = load_pretrained(directory)
  assert (clip.config.vision.activation, clip.config.text.activation) == ('gelu', 'gelu')
  images = _images()
  pixels = clip.preprocess(images)
  captions = _captions()
  tokens = clip.tokenize(captions)
  with torch.no_grad():
    image_ref = _features(hf.get_image_features(pixel_values=_nchw(pixels)))
    text_ref = _features(hf.get_text_features(input_ids=torch.from_numpy(tokens.astype(np.int64))))
  _close(f'{name}.encode_image', clip.encode_image(images), _unit(image_ref))
  _close(f'{name}.encode_text', clip.encode_text(captions), _unit(text_ref))
  feats = clip.image_features(pixels, preprocess=False)
  with torch.no_grad():
    out = hf.vision_model(_nchw(pixels))
    patches = hf.vision_model.post_layernorm(out.last_hidden_state[:, 1:]).numpy()
  _close(f'{name}.patches', feats['patches'], patches.reshape(feats['patches'].shape))


@pytest.mark.parametrize('branch', ['teacher', 'student'])
def test_dino_training_checkpoint_features_at_two_sizes(converted, branch):
  directory, theirs = converted[f'dino_{branch}']
  dino = load_pretrained(directory)
  assert isinstance(dino, PretrainedViT) and dino.config.pos_interpolation == 'dino'
  images = _images()
  for size in (40, 56):  # the training size, then an interpolated position embedding
    pixels = dino.preprocess(images, image_size=size)
    with torch.no_grad():
      tokens = theirs(_nchw(pixels)).numpy()
    out = dino.features(pixels, preprocess=False)
    g = size // 8
    assert out['patches'].shape == (len(images), g, g, 48)
    _close(f'dino_{branch}@{size}.cls', out['cls'], tokens[:, 0])
    _close(f'dino_{branch}@{size}.patches', out['patches'], tokens[:, 1:].reshape(-1, g, g, 48))
  out = dino.features(images)  # uint8 in, DINO's own preprocessing
  assert out['cls'].shape == (len(images), 48)


def test_hf_vit_directory(converted):
  directory, hf = converted['hf_vit']
  vit = load_pretrained(directory)
  assert vit.config.pos_interpolation == 'bicubic'  # as Hugging Face ViT interpolates
  images = _images()
  for size in (24, 36):
    pixels = vit.preprocess(images, image_size=size)
    with torch.no_grad():
      tokens = hf(_nchw(pixels), interpolate_pos_encoding=size != 24).last_hidden_state.numpy()
    out = vit.features(pixels, preprocess=False, layer=-1)
    g = size // 6
    _close(f'hf_vit@{size}.cls', out['cls'], tokens[:, 0])
    _close(f'hf_vit@{size}.patches', out['patches'], tokens[:, 1:].reshape(-1, g, g, 32))
    assert out['layer_tokens'].shape == (len(images), 1 + g * g, 32)


@pytest.mark.parametrize('name', ['mae_full', 'hf_mae'])
def test_mae_reconstruction_with_a_fixed_noise(converted, name):
  directory, hf = converted[name]
  mae = load_pretrained(directory)
  assert isinstance(mae, PretrainedMAE)
  assert (mae.config.norm_pix_loss, mae.config.mask_ratio, mae.config.decoder_depth) == (
    True,
    0.6,
    2,
  )
  images = _images()
  pixels = mae.preprocess(images)
  noise = np.random.default_rng(0).uniform(size=(len(images), 16)).astype(np.float32)
  with torch.no_grad():
    out_ref = hf(pixel_values=_nchw(pixels), noise=torch.from_numpy(noise))
  out = mae.reconstruct(pixels, noise=noise, preprocess=False)
  np.testing.assert_array_equal(out['mask'], out_ref.mask.numpy())
  np.testing.assert_array_equal(out['ids_restore'], out_ref.ids_restore.numpy())
  _close(f'{name}.logits', out['logits'], out_ref.logits.numpy())
  _close(f'{name}.loss', out['loss'], out_ref.loss.numpy())
  assert out['reconstruction'].shape == pixels.shape


def test_mae_encoder_only_features(converted):
  directory, hf = converted['mae_encoder']
  mae = load_pretrained(directory)
  assert mae.config.decoder_depth == 0
  pixels = mae.preprocess(_images())
  out = mae.features(pixels, preprocess=False)
  # All patches kept: Hugging Face ViTMAE with mask_ratio 0 runs the encoder on every patch, in
  # the order of the noise; identity noise (increasing) keeps them in place.
  hf.vit.config.mask_ratio = 0.0
  hf.vit.embeddings.config.mask_ratio = 0.0
  noise = torch.arange(16, dtype=torch.float32).repeat(len(pixels), 1)
  with torch.no_grad():
    tokens = hf.vit(pixel_values=_nchw(pixels), noise=noise).last_hidden_state.numpy()
  _close('mae.cls', out['cls'], tokens[:, 0])
  _close('mae.patches', out['patches'], tokens[:, 1:].reshape(out['patches'].shape))
  with pytest.raises(ValueError, match='no decoder'):
    mae.reconstruct(pixels, preprocess=False)


def test_zero_shot_classification_with_a_converted_clip(converted, tmp_path):
  """evaluation.run --dataset imagenet_folder: top-1 equals the torch model's on the same images,
  with OpenAI's class embeddings (templates normalised, averaged, normalised)."""
  from evaluation import run as eval_run

  directory, theirs = converted['openai_torchscript']
  clip = load_pretrained(directory)
  images = _images(4)
  names = ['dog', 'bicycle']
  from PIL import Image

  for i, image in enumerate(images):
    folder = tmp_path / 'val' / names[i % 2]
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / f'{i}.png')
  output = tmp_path / 'result.json'
  argv = ['--checkpoint', directory, '--dataset', 'imagenet_folder']
  argv += ['--data_dir', str(tmp_path / 'val'), '--output', str(output), '--templates', 'simple']
  assert eval_run.main(argv) == 0
  result = json.loads(output.read_text())
  order = sorted(range(len(images)), key=lambda i: (names[i % 2], f'{i}.png'))
  with torch.no_grad():
    pixels = clip.preprocess([images[i] for i in order])
    image_ref = _unit(theirs.encode_image(_nchw(pixels)))
    tokens = default_tokenizer()([f'a photo of a {n}.' for n in names], OPENAI['context_length'])
    text_ref = _unit(theirs.encode_text(torch.from_numpy(tokens.astype(np.int64))))
  predicted = np.argmax(image_ref @ text_ref.T, axis=1)
  targets = np.array([0 if names[i % 2] == 'bicycle' else 1 for i in order])
  assert result['top1'] == pytest.approx(100.0 * np.mean(predicted == targets))
  assert result['num_images'] == len(images)


def test_errors_name_the_problem(converted, tmp_path, capsys):
  from evaluation import run as eval_run

  # A CLIP state dict that declares no activation.
  hf = converted['hf_clip'][1]
  bare = {
    k: torch.from_numpy(np.ascontiguousarray(v))
    for k, v in ref.hf_clip_to_openai(hf.state_dict()).items()
  }
  torch.save(bare, tmp_path / 'bare.bin')
  assert (
    convert_main(['--source', str(tmp_path / 'bare.bin'), '--output', str(tmp_path / 'o')]) == 2
  )
  assert '--quick_gelu' in capsys.readouterr().err
  assert (
    convert_main(
      ['--source', str(tmp_path / 'bare.bin'), '--output', str(tmp_path / 'o'), '--gelu']
    )
    == 0
  )
  assert store.load_config(str(tmp_path / 'o')).text.activation == 'gelu'
  # Asking for another kind than the file holds.
  argv = ['--source', converted['hf_clip'][0].replace('out_hf_clip', 'hf_vit')]
  assert convert_main(argv + ['--output', str(tmp_path / 'k'), '--kind', 'clip']) == 2
  assert 'clip' in capsys.readouterr().err
  # Unknown override keys list the valid ones.
  argv = ['--source', str(tmp_path / 'bare.bin'), '--output', str(tmp_path / 's'), '--gelu']
  assert convert_main(argv + ['--set', 'vision.heads=2']) == 2
  assert 'num_heads' in capsys.readouterr().err
  # Towers are not exported, and do not segment.
  with pytest.raises(ExportError, match='GroupViT models only'):
    export(converted['dino_teacher'][0], 'hf', str(tmp_path / 'e'))
  argv = ['--checkpoint', converted['dino_teacher'][0], '--dataset', 'synthetic']
  assert eval_run.main(argv + ['--output', str(tmp_path / 'r.json')]) != 0
  assert 'text tower' in capsys.readouterr().err
  argv = ['--checkpoint', converted['hf_clip'][0], '--dataset', 'voc', '--data_dir', str(tmp_path)]
  assert eval_run.main(argv + ['--output', str(tmp_path / 'r.json')]) != 0
  assert 'zero-shot classification' in capsys.readouterr().err


def test_bfloat16_compute(converted):
  directory = converted['hf_clip'][0]
  f32, bf16 = load_pretrained(directory), load_pretrained(directory, dtype='bfloat16')
  assert bf16.config.vision.dtype == 'bfloat16'
  images = _images()
  a, b = f32.encode_image(images), bf16.encode_image(images)
  assert b.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(b, axis=-1), 1.0, atol=1e-5)
  assert 0 < np.max(np.abs(a - b)) < 5e-2  # bf16 matmuls: a few 1e-3 on unit vectors


def test_clip_with_its_own_vocabulary_encodes_token_ids(tmp_path):
  """A CLIP whose vocabulary is not CLIP's BPE refuses strings (ids past its table would be
  clamped silently on the accelerator) and encodes token ids exactly."""
  model = cf.tiny_openai_clip(seed=3)
  cf.save_openai_torchscript(model, tmp_path / 'tiny.pt')
  assert convert_main(['--source', str(tmp_path / 'tiny.pt'), '--output', str(tmp_path / 'm')]) == 0
  clip = load_pretrained(str(tmp_path / 'm'))
  with pytest.raises(ValueError, match='50-token vocabulary'):
    clip.encode_text('a dog')
  tokens = np.random.default_rng(0).integers(0, 50, (3, cf.CLIP_DIMS['context_length']))
  with torch.no_grad():
    expected = _unit(model.float().encode_text(torch.from_numpy(tokens)))
  _close('tiny.encode_tokens', clip.encode_tokens(tokens), expected)
  with pytest.raises(ValueError, match=r'\[0, 50\)'):
    clip.encode_tokens(tokens + 50)
