"""Gradients of the image-text loss equal PyTorch autograd through Hugging Face's GroupViT.

The forward pass is compared with the reference in test_convert_parity.py; this checks the backward
pass, which the trainer relies on and which no forward test can see: the straight-through hard
assignment, the assignment normalisation, the BatchNorm projection heads, the clamped temperature
and our custom-VJP pieces (`layers.cotangent_barrier`) must all give autograd's gradients.

Both models run in evaluation mode (hard assignment without Gumbel noise, BatchNorm with running
statistics, no stochastic depth), so the loss is deterministic. Tolerance: float32 on both sides
with different summation orders; gradients of norm ~1e2 differ by ~2e-5 at most, so 1e-4 x the
largest reference entry (plus 1e-3 relative) leaves margin while a dropped or doubled term (a
missing straight-through path, a wrong transpose) moves entries by O(1) of that scale.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')

from groupvit_jax import load_pretrained  # noqa: E402
from groupvit_jax.checkpoints import keymaps, store  # noqa: E402
from groupvit_jax.convert import convert  # noqa: E402
from groupvit_jax.losses import contrastive_losses  # noqa: E402
from references import hf_groupvit  # noqa: E402

B, L = 4, 16


def _inputs(rng):
  images = rng.standard_normal((B, 64, 64, 3)).astype(np.float32)
  tokens = np.zeros((B, L), np.int64)
  tokens[:, 0] = 49406
  lengths = [3, 7, 11, 15]
  for i, n in enumerate(lengths):
    tokens[i, 1:n] = rng.integers(1, 49000, n - 1)
    tokens[i, n] = 49407  # end of text: the largest id, where both towers read the caption
  return images, tokens


def _hf_grads(hf, images, tokens):
  hf.zero_grad()
  out = hf(
    input_ids=torch.from_numpy(tokens),
    pixel_values=torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
    return_loss=True,
  )
  out.loss.backward()
  state = hf.state_dict()
  grads = {
    name: (p.grad if p.grad is not None else torch.zeros_like(p)).detach()
    for name, p in hf.named_parameters()
  }
  # Buffers (BatchNorm statistics) have no gradient; the key mapping wants a complete state dict.
  grads.update({k: v for k, v in state.items() if k not in grads})
  return float(out.loss.detach()), grads


@pytest.mark.slow
@pytest.mark.parametrize('hard', [True, False], ids=['hard', 'soft'])
def test_image_text_loss_gradients_match_hugging_face(tmp_path, hard):
  hf = hf_groupvit.random_hf_model(
    seed=3,
    vision=dict(
      hidden_size=96,
      intermediate_size=192,
      num_attention_heads=3,
      depths=[2, 2, 1],
      num_group_tokens=[16, 4, 0],
      num_output_groups=[16, 4, 4],
      image_size=64,
      patch_size=8,
    ),
    text=dict(
      hidden_size=64,
      intermediate_size=128,
      num_attention_heads=1,
      num_hidden_layers=2,
      max_position_embeddings=L,
    ),
    projection_dim=48,
    projection_intermediate_dim=96,
  )
  if not hard:  # HF hard-codes hard assignment; the NVlabs release has the switch
    for stage in hf.vision_model.encoder.stages:
      if stage.downsample is not None:
        assign = stage.downsample.assign
        assign.get_attn = lambda attn, gumbel=True, hard=True, _f=assign.get_attn: _f(
          attn, gumbel, False
        )
  hf.save_pretrained(tmp_path / 'hf')
  convert(
    str(tmp_path / 'hf'),
    str(tmp_path / 'converted'),
    overrides=[] if hard else ['image.hard_assignment=False'],
  )
  ours = load_pretrained(str(tmp_path / 'converted'))
  assert ours.config.image.hard_assignment == hard

  images, tokens = _inputs(np.random.default_rng(0))
  ref_loss, ref_grads = _hf_grads(hf, images, tokens)
  ref = keymaps.nvlabs_to_variables(
    {k: v.numpy() for k, v in hf_groupvit.hf_state_to_nvlabs(ref_grads).items()},
    store.abstract_variables(ours.config),
  )['params']

  def loss_fn(params):
    out = ours.model.apply(
      {**ours.variables, 'params': params},
      jnp.asarray(images),
      jnp.asarray(tokens, jnp.int32),
      train=False,
    )
    return contrastive_losses(out['image_embed'], out['text_embed'], out['logit_scale'])['loss']

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(ours.variables['params'])
  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
  ref_flat = dict(jax.tree_util.tree_flatten_with_path(ref)[0])
  ours_flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  compared = 0
  for path, g in ours_flat:
    name = jax.tree_util.keystr(path)
    if 'multi_label_logit_scale' in name:  # not in the HF model; unused by this loss
      assert float(jnp.abs(g).max()) == 0.0
      continue
    r = np.asarray(ref_flat[path])
    np.testing.assert_allclose(
      np.asarray(g), r, rtol=1e-3, atol=1e-4 * max(1.0, np.abs(r).max()), err_msg=name
    )
    compared += 1
  assert compared > 100  # every weight of both towers and both heads
  # the gradient reaches the first layer and the first grouping stage's tokens
  assert float(jnp.abs(grads['img_encoder']['patch_embed']['kernel']).max()) > 0
  assert float(jnp.abs(grads['img_encoder']['layers_0']['group_token']).max()) > 0
