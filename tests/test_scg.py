"""SCG: k-means against a float64 NumPy reference, region embeddings against Hugging Face CLIP
modules with an independently built attention mask."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip('torch')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from groupvit_jax import scg_inference  # noqa: E402
from groupvit_jax.checkpoints import towers  # noqa: E402
from groupvit_jax.models import kmeans, scg  # noqa: E402
from groupvit_jax.models.vit import ViTConfig  # noqa: E402
from references import towers as ref  # noqa: E402
from tests.test_towers import HF_CLIP_ARCHS, _clip_variables, _nchw, _pixels  # noqa: E402


def _clustered(rng, n_images=3, n=64, c=16, k=5):
  """Features with k well-separated directions plus noise: [B, N, C]."""
  out = []
  for _ in range(n_images):
    centres = rng.normal(size=(k, c))
    ids = rng.integers(0, k, n)
    out.append(centres[ids] + 0.3 * rng.normal(size=(n, c)))
  return np.stack(out).astype(np.float32)


def test_kmeans_matches_float64_reference():
  rng = np.random.default_rng(0)
  feats = _clustered(rng)
  m = 6
  cent, ids = jax.jit(kmeans.kmeans, static_argnums=(1, 2))(jnp.asarray(feats), m, 10)
  for b in range(feats.shape[0]):
    ref_c, ref_ids = kmeans.kmeans_reference(feats[b], m, 10)
    np.testing.assert_array_equal(np.asarray(ids[b]), ref_ids)
    np.testing.assert_allclose(np.asarray(cent[b]), ref_c, atol=1e-5)
  # Deterministic: the same input gives the same clusters.
  cent2, ids2 = kmeans.kmeans(jnp.asarray(feats), m, 10)
  np.testing.assert_array_equal(np.asarray(ids2), np.asarray(ids))


def test_kmeans_empty_cluster_keeps_its_centre_and_padding_is_ignored():
  # Two distinct points repeated: with 3 clusters one centre starts on a duplicate and empties.
  x = np.array([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 5, np.float32)[None]
  cent, ids = kmeans.kmeans(jnp.asarray(x), 3, 5)
  assert np.all(np.isfinite(np.asarray(cent)))
  np.testing.assert_allclose(np.linalg.norm(np.asarray(cent[0]), axis=-1), 1.0, atol=1e-6)
  assert set(np.asarray(ids[0]).tolist()) <= {0, 1, 2}
  assert len(set(np.asarray(ids[0, :5]).tolist())) == 1
  # A padding row far from everything is never picked as a centre.
  pad = np.concatenate([x, np.array([[[-1.0, -1.0]]], np.float32)], axis=1)
  valid = np.ones(pad.shape[:2], bool)
  valid[0, -1] = False
  cent_p, _ = kmeans.kmeans(jnp.asarray(pad), 2, 5, jnp.asarray(valid))
  assert np.all(np.asarray(cent_p) @ np.array([-1.0, -1.0]) / np.sqrt(2) < 0.99)


def test_upsampled_scores_equal_assigning_upsampled_features():
  rng = np.random.default_rng(1)
  feats = rng.normal(size=(2, 5, 7, 8)).astype(np.float32)
  cent = rng.normal(size=(4, 8)).astype(np.float32)
  unit = feats / np.linalg.norm(feats, axis=-1, keepdims=True)
  cu = cent / np.linalg.norm(cent, axis=-1, keepdims=True)
  from groupvit_jax.ops.resize import resize_matrix

  rh, rw = resize_matrix(5, 23, 'bilinear'), resize_matrix(7, 31, 'bilinear')
  up = np.einsum('oh,bhwc->bowc', rh, unit)
  up = np.einsum('pw,bowc->bopc', rw, up)
  expected = np.argmax(up @ cu.T, axis=-1)
  got = kmeans.upsample_assign(
    kmeans.scores(jnp.asarray(feats), jnp.asarray(cent)), jnp.asarray(rh), jnp.asarray(rw)
  )
  np.testing.assert_array_equal(np.asarray(got), expected)


def test_dataset_centroids_assign_every_image_to_shared_types():
  rng = np.random.default_rng(2)
  base = rng.normal(size=(3, 8))
  pooled = np.concatenate([base[i] + 0.05 * rng.normal(size=(40, 8)) for i in range(3)])
  cent = kmeans.fit_centroids(pooled, 3, 10)
  assert cent.shape == (3, 8)
  # Two images holding the same kinds of patches get the same ids for them.
  img_a = np.stack([base[0], base[1], base[2]])[None].astype(np.float32)
  img_b = np.stack([base[2], base[0], base[1]])[None].astype(np.float32)
  ids_a = np.asarray(kmeans.assign(jnp.asarray(img_a), jnp.asarray(cent)))[0]
  ids_b = np.asarray(kmeans.assign(jnp.asarray(img_b), jnp.asarray(cent)))[0]
  assert len(set(ids_a.tolist())) == 3
  np.testing.assert_array_equal(ids_b, ids_a[[2, 0, 1]])


# --- recognition -----------------------------------------------------------------------------
def _torch_mask(region_ids: np.ndarray, m: int, masking: str) -> np.ndarray:
  """The documented mask, written out token by token: additive float [B, 1, T, T]."""
  b, n = region_ids.shape
  t = 1 + n + m
  allow = np.zeros((b, t, t), bool)
  for i in range(b):
    for q in range(t):
      for k in range(t):
        if k >= 1 + n:  # nobody attends to a region token
          continue
        if q == 0 or k == 0:  # the class token sees all non-region tokens; everyone sees it
          allow[i, q, k] = True
        elif q <= n:  # patch -> patch
          same = region_ids[i, q - 1] == region_ids[i, k - 1]
          allow[i, q, k] = masking == 'context' or same
        else:  # region -> patch of its region
          allow[i, q, k] = region_ids[i, k - 1] == q - 1 - n
  return np.where(allow, 0.0, -1e9).astype(np.float32)[:, None]


def _hf_region_embeddings(hf, pixels, region_ids, m, masking, region_tokens=None):
  vm = hf.vision_model
  with torch.no_grad():
    emb = vm.embeddings(_nchw(pixels), interpolate_pos_encoding=True)
    reg = emb[:, :1].expand(-1, m, -1) if region_tokens is None else region_tokens
    x = vm.pre_layrnorm(torch.cat([emb, reg], dim=1))
    mask = torch.from_numpy(_torch_mask(region_ids, m, masking))
    for layer in vm.encoder.layers:
      x = layer(x, mask)
      x = x[0] if isinstance(x, tuple) else x
    out = hf.visual_projection(vm.post_layernorm(x[:, -m:]))
  return out.numpy()


@pytest.mark.parametrize('masking', ['context', 'tokens'])
def test_region_embeddings_match_hf_clip_with_the_documented_mask(masking):
  spec = HF_CLIP_ARCHS[sorted(HF_CLIP_ARCHS)[0]]
  hf = ref.random_hf_clip(seed=3, **spec)
  sd = ref.hf_clip_to_openai(hf.state_dict())
  cfg = towers.clip_config_from_shapes(
    sd,
    num_heads=spec['vision']['num_attention_heads'],
    text_num_heads=spec['text']['num_attention_heads'],
    activation=spec['vision'].get('hidden_act', 'quick_gelu'),
  )
  _, variables = _clip_variables(cfg, sd)
  size, patch = spec['vision']['image_size'], spec['vision']['patch_size']
  hw = (size + patch, size + 2 * patch)  # another grid: the position embedding interpolates
  pixels = _pixels(hw)
  n = (hw[0] // patch) * (hw[1] // patch)
  m = 5
  rng = np.random.default_rng(0)
  region_ids = rng.integers(0, m - 1, (len(pixels), n)).astype(np.int32)  # region m-1 is empty
  expected = _hf_region_embeddings(hf, pixels, region_ids, m, masking)
  tokens = scg.initial_region_tokens(variables['params'], m)
  mask = scg.region_attention_mask(jnp.asarray(region_ids), m, masking)
  model = scg.CLIP(scg.clip_for_any_grid(cfg))
  got = jax.jit(lambda v, x, t, mk: model.apply(v, x, t, mk, method=scg.CLIP.region_embeddings))(
    variables, jnp.asarray(pixels), tokens, mask
  )
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4, rtol=0)
  # Learned tokens (not the class token) go in before ln_pre, as the class token does.
  learned = rng.normal(size=(m, cfg.vision.width)).astype(np.float32) * 0.1
  expected = _hf_region_embeddings(
    hf, pixels, region_ids, m, masking, torch.from_numpy(learned)[None].expand(len(pixels), -1, -1)
  )
  got = jax.jit(lambda v, x, t, mk: model.apply(v, x, t, mk, method=scg.CLIP.region_embeddings))(
    variables, jnp.asarray(pixels), jnp.asarray(learned), mask
  )
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4, rtol=0)


def test_config_round_trip_and_errors():
  cfg = scg.SCGConfig(grouper=ViTConfig(width=32, depth=2, num_heads=2, image_size=32))
  again = scg.SCGConfig.from_dict(cfg.to_dict())
  assert again == cfg
  with pytest.raises(ValueError, match='masking'):
    scg.SCGConfig.from_dict({**cfg.to_dict(), 'masking': 'boxes'})
  with pytest.raises(ValueError, match='unknown key'):
    scg.SCGConfig.from_dict({**cfg.to_dict(), 'regions': 3})
  with pytest.raises(ValueError, match='grouper_layer'):
    scg.SCGConfig.from_dict({**cfg.to_dict(), 'grouper_layer': 5})


def _unit(rows):
  rows = np.asarray(rows, np.float32)
  return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def test_image_filter_keeps_the_top_classes_and_every_background_word():
  # Classes: 3 foreground, then 2 background words; the image is closest to class 2, then 0.
  classes = _unit(np.eye(5))
  image = jnp.asarray([[0.5, 0.0, 1.0, 0.9, 0.9]], jnp.float32)
  mask = jnp.ones(5, bool)
  keep = scg_inference.image_filter(image, jnp.asarray(classes), mask, 1, num_fg=3)
  np.testing.assert_array_equal(np.asarray(keep)[0, 0], [False, False, True, True, True])
  keep = scg_inference.image_filter(image, jnp.asarray(classes), mask, 2, num_fg=3)
  np.testing.assert_array_equal(np.asarray(keep)[0, 0], [True, False, True, True, True])


def test_noun_naming_claims_by_margin_over_the_background_words():
  """The background region (0) is closer to the shape than the object's region (1) is, and the
  object's region prefers a background word: the paper's naming leaves no region with the shape;
  noun naming gives it to the region with the best margin over its background words."""
  classes = jnp.asarray(_unit(np.eye(4)))  # 2 foreground classes, then 2 background words
  regions = jnp.asarray(
    [[[0.6, 0.0, 0.8, 0.0], [0.55, 0.581, 0.0, 0.6], [0.0, 0.0, 0.0, 1.0]]], jnp.float32
  )
  present = jnp.asarray([[True, True, False]])  # region 2 is padding
  mask = jnp.asarray([[[True, False, True, True]]])  # the image's top-1 class is class 0
  args = (regions, present, classes, mask, jnp.log(100.0), jnp.asarray(0.5))
  region = scg_inference.region_class_table(*args, True, 2, naming='region')
  noun = scg_inference.region_class_table(*args, True, 2, naming='noun')
  # Channels: background, class 0, class 1.
  np.testing.assert_array_equal(np.asarray(region)[0, :2], [[1, 0, 0], [1, 0, 0]])
  np.testing.assert_array_equal(np.asarray(noun)[0, :2], [[1, 0, 0], [0, 1, 0]])
  # Without background words every allowed class claims by cosine and a region takes the best
  # class that claimed it: region 0 is claimed by classes 0 and 2 (takes 2), region 1 by 3.
  plain = scg_inference.region_class_table(*args, False, None, naming='noun')
  assert np.asarray(plain)[0, :2].argmax(-1).tolist() == [2, 3]


def test_noun_naming_needs_the_image_filter():
  cfg = scg.SCGConfig(grouper=ViTConfig(width=32, depth=2, num_heads=2, image_size=32))
  with pytest.raises(ValueError, match="naming='noun' needs image_top_k"):
    scg.SCGConfig.from_dict({**cfg.to_dict(), 'naming': 'noun'})
  with pytest.raises(ValueError, match='naming must be one of'):
    scg.SCGConfig.from_dict({**cfg.to_dict(), 'naming': 'nouns'})
  assert scg.SCGConfig.from_dict({**cfg.to_dict(), 'naming': 'noun', 'image_top_k': 1}).naming
