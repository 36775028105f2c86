"""The torch-free reader of torch.save archives returns what torch.load returns."""

import numpy as np
import pytest

from groupvit_jax.checkpoints.torch_pickle import TorchArchiveError, load_torch_archive

torch = pytest.importorskip('torch')


def test_tensors_of_every_layout_and_dtype(tmp_path):
  base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
  obj = {
    'model': {
      'transposed': base.t(),  # non-contiguous
      'sliced': base[1:3, ::2],  # offset + strides
      'param': torch.nn.Parameter(torch.randn(3)),
      'half': torch.randn(5).half(),
      'bf16': torch.randn(5).bfloat16(),
      'long': torch.tensor([1, -2, 3]),
      'bool': torch.tensor([True, False]),
      'scalar': torch.tensor(2.5),
      'shared_a': base,
      'shared_b': base.view(-1),
    },
    'epoch': 7,
    'names': ['a', 'b'],
  }
  path = tmp_path / 'x.pth'
  torch.save(obj, path)
  ours = load_torch_archive(path)
  ref = torch.load(path, weights_only=False)
  assert ours['epoch'] == 7 and ours['names'] == ['a', 'b']
  for key, value in ref['model'].items():
    expected = (
      value.detach().float().numpy() if value.dtype == torch.bfloat16 else value.detach().numpy()
    )
    got = ours['model'][key]
    got = got.astype(np.float32) if key == 'bf16' else got
    assert got.shape == expected.shape, key
    np.testing.assert_array_equal(got, expected, err_msg=key)


def test_omegaconf_config_inside_checkpoint(tmp_path):
  omegaconf = pytest.importorskip('omegaconf')
  cfg = omegaconf.OmegaConf.create({'model': {'img_encoder': {'num_heads': [6, 6, 6]}}})
  torch.save({'model': {'w': torch.ones(2)}, 'config': cfg}, tmp_path / 'c.pth')
  loaded = load_torch_archive(tmp_path / 'c.pth')
  assert list(loaded['config'].model.img_encoder.num_heads) == [6, 6, 6]


def test_not_an_archive_is_a_clear_error(tmp_path):
  path = tmp_path / 'bad.pth'
  path.write_bytes(b'not a zip')
  with pytest.raises(TorchArchiveError, match='not a torch zip archive'):
    load_torch_archive(path)
