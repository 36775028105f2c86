"""Exporting model directories to the Hugging Face and NVlabs formats.

Round trips (export, then `groupvit_jax.convert`) must give the same config and bitwise the same
variables. Hugging Face exports must load in `transformers.GroupViTModel` with no missing or
unexpected keys and give our L2-normalised float32 embeddings within 1e-4 (see
test_convert_parity.py for why 1e-4); NVlabs exports must load with `torch.load(weights_only=True)`.
"""

import dataclasses
import json
import os
import zipfile

import jax
import numpy as np
import pytest

from groupvit_jax import load_pretrained
from groupvit_jax.checkpoints import infer, keymaps, store
from groupvit_jax.checkpoints.torch_pickle import load_torch_archive
from groupvit_jax.checkpoints.torch_write import save_torch_archive
from groupvit_jax.convert import convert
from groupvit_jax.export import ExportError, export, main
from groupvit_jax.models.config import (
  ConfigError,
  GroupViTConfig,
  ImageEncoderConfig,
  TextEncoderConfig,
)
from tests.conftest import SHARED_DATA

ATOL = 1e-4
CAPTIONS = ['a dog runs on the beach', 'Two people riding bikes & a red bus', '', 'café 東京 🚲']

torch = pytest.importorskip('torch')


def _random_model_dir(path, cfg: GroupViTConfig, seed: int):
  """A model directory as the trainer writes them, with random variables (filled in from the
  abstract shapes: running the model's init would compile it, which takes seconds)."""
  rng = np.random.default_rng(seed)

  def fill(keypath, leaf):
    name = keypath[-1].key
    if name == 'var':
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    x = rng.normal(0, 0.1 if name == 'mean' else 0.02, leaf.shape)
    if name == 'scale':
      x += 1.0
    elif 'logit_scale' in name:
      x += 2.5
    return jax.numpy.asarray(x.astype(np.float32))

  variables = jax.tree_util.tree_map_with_path(fill, store.abstract_variables(cfg))
  store.save_model(str(path), cfg, variables)
  return str(path)


# Two-stage-grouping model converted from a random Hugging Face model (as `convert` makes them).
def _converted_from_hf(tmp):
  from references import hf_groupvit

  hf = hf_groupvit.random_hf_model(
    seed=0,
    vision=dict(
      hidden_size=64,
      intermediate_size=256,
      num_attention_heads=2,
      num_hidden_layers=3,
      depths=[1, 1, 1],
      num_group_tokens=[8, 4, 0],
      num_output_groups=[8, 2, 2],
      image_size=32,
      patch_size=8,
    ),
    text=dict(hidden_size=64, intermediate_size=256, num_attention_heads=1, num_hidden_layers=1),
    projection_dim=16,
    projection_intermediate_dim=32,
  )
  hf.save_pretrained(tmp / 'hf_source')
  convert(str(tmp / 'hf_source'), str(tmp / 'a'))
  return str(tmp / 'a'), hf


# Other widths, depths, heads, group tokens and text context, initialised here.
def _config_b():
  return GroupViTConfig(
    image=ImageEncoderConfig(
      image_size=64,
      patch_size=16,
      width=96,
      num_heads=3,
      depths=(2, 1, 1),
      num_group_tokens=(6, 3, 0),
      num_output_groups=(6, 2),
    ),
    text=TextEncoderConfig(context_length=32, width=128, num_layers=2, num_heads=2, mlp_ratio=2.0),
    projection_dim=24,
    projection_hidden_dim=48,
    multi_label=False,
  )


# One stage without grouping (a plain ViT); fields of the grouping blocks hold the values that
# conversion infers for a model without them.
def _config_c():
  return GroupViTConfig(
    image=ImageEncoderConfig(
      image_size=32,
      patch_size=8,
      width=64,
      num_heads=1,
      depths=(2,),
      num_group_tokens=(0,),
      num_output_groups=(),
      pre_assign_attention=False,
      group_projector=False,
    ),
    text=TextEncoderConfig(width=64, num_layers=1, num_heads=1),
    projection_dim=16,
    projection_hidden_dim=32,
    multi_label=False,
  )


@pytest.fixture(scope='module')
def models(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('export_models')
  a, hf = _converted_from_hf(tmp)
  return {
    'a': a,
    'b': _random_model_dir(tmp / 'b', _config_b(), seed=1),
    'c': _random_model_dir(tmp / 'c', _config_c(), seed=2),
    'hf_source': hf,
  }


def _assert_same_model(dir_a, dir_b):
  cfg_a, vars_a = store.load_model(dir_a)
  cfg_b, vars_b = store.load_model(dir_b)
  assert cfg_a == cfg_b
  flat_a = jax.tree_util.tree_flatten_with_path(vars_a)[0]
  flat_b = jax.tree_util.tree_flatten_with_path(vars_b)[0]
  assert [k for k, _ in flat_a] == [k for k, _ in flat_b]
  for (path, x), (_, y) in zip(flat_a, flat_b):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape, path
    assert np.array_equal(x.view(np.uint32), y.view(np.uint32)), path  # bitwise


@pytest.mark.parametrize('name', ['a', 'b', 'c'])
@pytest.mark.parametrize('fmt', ['hf', 'nvlabs'])
def test_export_then_convert_is_identity(models, tmp_path, fmt, name):
  out = tmp_path / ('out.pth' if fmt == 'nvlabs' else 'out')
  result = export(models[name], fmt, str(out))
  assert result.dropped == [] and result.config == store.load_config(models[name])
  convert(str(out), str(tmp_path / 'back'))
  _assert_same_model(models[name], tmp_path / 'back')


def _images(n=3):
  from references import hf_groupvit

  real = hf_groupvit.real_images(SHARED_DATA if SHARED_DATA.is_dir() else None, n)
  return real or hf_groupvit.synthetic_images(n)


def _captions():
  path = SHARED_DATA / 'captions' / 'cc3m_validation_first1000.txt'
  return CAPTIONS + (path.read_text().splitlines()[:8] if path.exists() else [])


def _features(out):  # transformers versions differ: a tensor or an output with pooler_output
  return out if torch.is_tensor(out) else out.pooler_output


@pytest.mark.parametrize('name', ['a', 'b', 'c'])
def test_hf_export_loads_in_transformers_with_our_embeddings(models, tmp_path, name):
  from transformers import GroupViTModel

  export(models[name], 'hf', str(tmp_path / 'hf'))
  hf, info = GroupViTModel.from_pretrained(str(tmp_path / 'hf'), output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  assert not info['mismatched_keys'] and not info['error_msgs'], info
  hf = hf.eval().float()
  ours = load_pretrained(models[name])
  images, captions = _images(), _captions()
  pixels = ours.preprocess(images)
  with torch.no_grad():
    image_ref = _features(
      hf.get_image_features(pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()))
    )
    text_ref = _features(
      hf.get_text_features(input_ids=torch.from_numpy(ours.tokenize(captions).astype(np.int64)))
    )
  image_ref = torch.nn.functional.normalize(image_ref, dim=-1).numpy()
  text_ref = torch.nn.functional.normalize(text_ref, dim=-1).numpy()
  image_ours, text_ours = ours.encode_image(images), ours.encode_text(captions)
  np.testing.assert_allclose(image_ours, image_ref, atol=ATOL)
  np.testing.assert_allclose(text_ours, text_ref, atol=ATOL)
  print(
    f'{name}: max |ours - transformers| image {np.abs(image_ours - image_ref).max():.2e}, '
    f'text {np.abs(text_ours - text_ref).max():.2e}'
  )


def test_hf_export_equals_the_original_hf_model(models, tmp_path):
  from safetensors.numpy import load_file
  from transformers import GroupViTConfig as HFConfig

  export(models['a'], 'hf', str(tmp_path / 'hf'))
  # The config: as complete as transformers writes it, and read back to the same values.
  source = models['hf_source'].config.to_dict()
  exported = HFConfig.from_pretrained(str(tmp_path / 'hf')).to_dict()
  with open(tmp_path / 'hf' / 'config.json') as f:
    written = json.load(f)
  for d in (source, exported):
    d.pop('transformers_version', None)
    d.pop('logit_scale_init_value')  # a training initialisation; ours is log(1 / 0.07) unrounded
  assert exported == source
  # every key that save_pretrained writes
  with open(os.path.join(os.path.dirname(models['a']), 'hf_source', 'config.json')) as f:
    saved = json.load(f)
  assert set(written) | {'transformers_version'} == set(saved)
  for sub in ('text_config', 'vision_config'):
    assert set(written[sub]) == set(saved[sub]), sub
  written = load_file(str(tmp_path / 'hf' / 'model.safetensors'))
  original = {
    k: v.numpy() for k, v in models['hf_source'].state_dict().items() if 'position_ids' not in k
  }
  assert written.keys() == original.keys()
  for k, v in original.items():
    if not k.endswith('num_batches_tracked'):  # not tracked here: exported as 0
      assert written[k].dtype == v.dtype and np.array_equal(written[k], v), k


def test_nvlabs_pth_loads_with_torch_weights_only(models, tmp_path):
  from references import hf_groupvit

  path = tmp_path / 'model.pth'
  export(models['a'], 'nvlabs', str(path))
  ckpt = torch.load(path, weights_only=True)
  assert set(ckpt) == {'model', 'config'}
  cfg = store.load_config(models['a'])
  model_cfg = ckpt['config']['model']
  assert type(model_cfg) is dict and model_cfg['img_encoder']['num_heads'] == [2, 2, 2]
  assert model_cfg['img_encoder']['depths'] == list(cfg.image.depths)
  # The release's names and layouts, by the test helpers' independent mapping (Conv1d heads).
  reference = hf_groupvit.hf_state_to_nvlabs(models['hf_source'].state_dict())
  sd = ckpt['model']
  assert set(sd) == set(reference)
  for k, v in reference.items():
    if not k.endswith('num_batches_tracked'):  # not tracked here: exported as 0
      assert sd[k].dtype == v.dtype and torch.equal(sd[k], v), k
  # ... and the same tensors as our variables
  _, variables = store.load_model(models['a'])
  ours = keymaps.variables_to_nvlabs(variables)
  assert ours.keys() == sd.keys()
  for k, v in ours.items():
    assert np.array_equal(sd[k].numpy(), v) and sd[k].shape == v.shape, k


def test_torch_archive_writer(tmp_path):
  import collections

  import ml_dtypes

  sd = collections.OrderedDict(
    w=np.arange(12, dtype=np.float32).reshape(3, 4),
    t=np.transpose(np.arange(6, dtype=np.float32).reshape(2, 3)),  # non-contiguous
    n=np.array(7, np.int64),
    h=np.ones((2, 2), np.float16),
    b=np.full((3,), 1.5, ml_dtypes.bfloat16),
    e=np.zeros((0, 5), np.float32),
  )
  obj = {'model': sd, 'meta': {'x': [1, -2, 2**40, 0.25, True, None, 'é'], 'y': (1, 'a')}}
  path = tmp_path / 'x.pth'
  save_torch_archive(obj, path)
  for loaded in (torch.load(path, weights_only=True), torch.load(path, mmap=True)):
    assert type(loaded['model']) is collections.OrderedDict and list(loaded['model']) == list(sd)
    assert loaded['meta'] == obj['meta']
    for k, v in sd.items():
      assert loaded['model'][k].shape == v.shape
      assert np.array_equal(loaded['model'][k].float().numpy(), v.astype(np.float32)), k
  ours = load_torch_archive(path)
  for k, v in sd.items():
    assert ours['model'][k].dtype == v.dtype and np.array_equal(ours['model'][k], v), k
  with zipfile.ZipFile(path) as z, open(path, 'rb') as f:
    for info in z.infolist():  # storages start at 64-byte boundaries, as torch writes them
      f.seek(info.header_offset + 26)
      name_len, extra_len = np.frombuffer(f.read(4), '<u2')
      assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename
  with pytest.raises(TypeError, match='cannot save set'):
    save_torch_archive({'x': {1}}, tmp_path / 'bad.pth')


def test_inexpressible_values_are_errors_naming_them(tmp_path):
  # Text heads that are not width / 64 have no NVlabs spelling; the multi-label temperature has
  # no place in a GroupViTModel (training-only: dropped with allow_lossy).
  text = TextEncoderConfig(width=64, num_layers=1, num_heads=2)
  cfg = dataclasses.replace(_config_c(), text=text, multi_label=True)
  model = _random_model_dir(tmp_path / 'm', cfg, seed=3)
  with pytest.raises(ExportError, match=r'text\.num_heads=2 \(would load as 1\)'):
    export(model, 'nvlabs', str(tmp_path / 'x.pth'), allow_lossy=True)
  with pytest.raises(ExportError, match=r'training-only.*multi_label=True.*--allow-lossy'):
    export(model, 'hf', str(tmp_path / 'hf'))
  result = export(model, 'hf', str(tmp_path / 'hf2'), allow_lossy=True)
  assert result.dropped == ['multi_label']
  assert result.config == dataclasses.replace(cfg, multi_label=False)
  back = convert(str(tmp_path / 'hf2'), str(tmp_path / 'back'))
  assert back == result.config
  # Architectures no GroupViTModel can build are errors too.
  cfg3 = dataclasses.replace(_config_b(), projection_layers=3)
  model3 = _random_model_dir(tmp_path / 'm3', cfg3, seed=4)
  with pytest.raises(ExportError, match='projection_layers=3'):
    export(model3, 'hf', str(tmp_path / 'hf3'), allow_lossy=True)
  export(model3, 'nvlabs', str(tmp_path / 'm3.pth'))  # the release's heads have any depth
  convert(str(tmp_path / 'm3.pth'), str(tmp_path / 'back3'))
  _assert_same_model(model3, tmp_path / 'back3')


def test_cli_errors(models, tmp_path, capsys):
  def run(*args):
    code = main(list(args))
    err = capsys.readouterr().err.strip()
    return code, err

  code, err = run('--model', str(tmp_path / 'nope'), '--format', 'hf', '--output', str(tmp_path))
  assert code == 2 and err.startswith('error: ') and 'does not exist' in err
  assert len(err.splitlines()) == 1
  code, err = run('--model', models['c'], '--format', 'onnx', '--output', str(tmp_path / 'o'))
  assert code == 2 and err == "error: unknown format 'onnx'; expected one of hf, nvlabs"
  (tmp_path / 'taken').mkdir()
  (tmp_path / 'taken' / 'README').write_text('keep')
  (tmp_path / 'taken.pth').write_bytes(b'x')
  for fmt, out in (('hf', 'taken'), ('nvlabs', 'taken.pth')):
    code, err = run('--model', models['c'], '--format', fmt, '--output', str(tmp_path / out))
    assert code == 2 and err.startswith('error: ') and '--overwrite' in err, err
    code, _ = run(
      '--model', models['c'], '--format', fmt, '--output', str(tmp_path / out), '--overwrite'
    )
    assert code == 0
  assert (tmp_path / 'taken' / 'README').read_text() == 'keep'
  assert zipfile.is_zipfile(tmp_path / 'taken.pth')
  convert(str(tmp_path / 'taken'), str(tmp_path / 'back_hf'))
  convert(str(tmp_path / 'taken.pth'), str(tmp_path / 'back_nv'))


@pytest.mark.parametrize(
  'image, match',
  [
    (dict(pre_assign_attention=False), 'pre_assign_attention=False'),
    (dict(pre_assign_mlp_ratio=2.0), 'pre_assign_mlp_ratio=2.0 != image.mlp_ratio=4.0'),
    (dict(group_projector=False), 'group_projector=False'),
    (dict(num_output_groups=(4, 2)), r'num_output_groups\[0\]=4 != image.num_group_tokens\[0\]=6'),
  ],
)
def test_architectures_hf_cannot_build_are_config_errors(image, match):
  cfg = _config_b()
  cfg = dataclasses.replace(cfg, image=dataclasses.replace(cfg.image, **image))
  with pytest.raises(ConfigError, match=match):
    infer.hf_config_dict(cfg)
