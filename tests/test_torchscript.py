"""The torch-free TorchScript reader returns what torch.jit.load(path).state_dict() returns."""

import numpy as np
import pytest

from groupvit_jax.checkpoints.torch_pickle import TorchArchiveError, load_torch_archive
from groupvit_jax.checkpoints.torchscript import (
  is_torchscript_archive,
  load_torchscript_state_dict,
)

torch = pytest.importorskip('torch')


class _Block(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.ln = torch.nn.LayerNorm(4)
    self.mha = torch.nn.MultiheadAttention(4, 2)  # in_proj_weight + unset q/k/v_proj_weight
    self.seq = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 4))
    self.register_buffer('persistent', torch.arange(3.0))
    self.register_buffer('scratch', torch.ones(2).half(), persistent=False)
    self.attn_mask = torch.full((3, 3), float('-inf')).triu(1)  # a plain attribute, not state
    self.scale = 2  # a plain int attribute

  def forward(self, x):
    y = self.ln(x)
    y = self.mha(y, y, y, need_weights=False, attn_mask=self.attn_mask)[0]
    y = self.seq(y) * self.scale
    return y + self.persistent.sum() + self.scratch.float().sum()


def _assert_same_as_torch(path):
  ours = load_torchscript_state_dict(path)
  ref = torch.jit.load(str(path)).state_dict()
  assert list(ours) == list(ref)
  for key, value in ref.items():
    assert ours[key].dtype == value.numpy().dtype, key
    np.testing.assert_array_equal(ours[key], value.numpy(), err_msg=key)
  return ours


@pytest.mark.parametrize('how', ['trace', 'script'])
def test_small_module(tmp_path, how):
  module = _Block().eval()
  x = torch.randn(3, 1, 4)
  compiled = torch.jit.trace(module, x) if how == 'trace' else torch.jit.script(module)
  path = tmp_path / f'{how}.pt'
  torch.jit.save(compiled, str(path))
  assert is_torchscript_archive(path)
  ours = _assert_same_as_torch(path)
  assert 'attn_mask' not in ours and 'training' not in ours and 'scale' not in ours
  assert 'mha.in_proj_weight' in ours and 'mha.q_proj_weight' not in ours


def test_openai_clip_fp16_trace(tmp_path):
  from references import checkpoint_files

  model = checkpoint_files.tiny_openai_clip()
  path = tmp_path / 'ViT-tiny.pt'
  checkpoint_files.save_openai_torchscript(model, path)
  ours = _assert_same_as_torch(path)
  assert ours['visual.conv1.weight'].dtype == np.float16  # convert_weights ran
  assert ours['visual.class_embedding'].dtype == np.float32  # which it leaves alone
  assert int(ours['input_resolution']) == 16
  expected = {k for k in model.state_dict()}
  assert set(ours) == expected


def test_plain_archive_and_torchscript_are_told_apart(tmp_path):
  plain = tmp_path / 'plain.pt'
  torch.save({'w': torch.ones(2)}, plain)
  assert not is_torchscript_archive(plain)
  with pytest.raises(TorchArchiveError, match='no TorchScript code/'):
    load_torchscript_state_dict(plain)
  scripted = tmp_path / 'scripted.pt'
  torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(scripted))
  with pytest.raises(TorchArchiveError, match='TorchScript archive'):
    load_torch_archive(scripted)
