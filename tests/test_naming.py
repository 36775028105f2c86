"""evaluation/naming.py: average precision, and image-level naming read from segmentation labels."""

import jax
import numpy as np
import pytest

from evaluation import naming
from evaluation.datasets import Sample
from groupvit_jax.config_lib import model_config
from groupvit_jax.models.config import GroupViTConfig
from groupvit_jax.models.groupvit import GroupViT, init_variables
from groupvit_jax.preprocessing import normalize
from groupvit_jax.pretrained import Pretrained


def test_average_precision():
  targets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]], np.float32)
  ap = naming.average_precision(targets * 5.0, targets)
  assert ap[0] == 1.0 and ap[1] == 1.0 and np.isnan(ap[2])  # class 2 has no positive example
  # Class 0 ranked: hit, miss, hit -> AP (1 + 2/3) / 2; class 1 ranked first -> AP 1.
  scores = np.array([[3, 0, 0], [2, 9, 0], [1, 0, 0], [0, 0, 0]], np.float32)
  assert naming.mean_average_precision(scores, targets) == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)
  assert np.isnan(naming.mean_average_precision(scores, np.zeros_like(targets)))
  with pytest.raises(ValueError, match='must both be'):
    naming.average_precision(scores[:, :2], targets)


def test_image_naming_scores_the_pooled_embedding_against_label_presence():
  cfg = GroupViTConfig.from_dict(model_config(
      image=dict(image_size=32, patch_size=8, width=32, num_heads=2, depths=(1, 1),
                 num_group_tokens=(4, 0), num_output_groups=(4,), drop_path_rate=0.0),
      text=dict(width=32, num_layers=1, num_heads=2, context_length=16),
      projection_dim=16, projection_hidden_dim=32))
  model = Pretrained(cfg, init_variables(GroupViT(cfg), jax.random.PRNGKey(0)))
  rng = np.random.default_rng(0)
  names = ('background', 'cat', 'dog', 'bird')
  samples = []
  for i in range(5):
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    label = np.zeros((32, 32), np.uint8)
    label[:8, :8] = 1 + i % 3
    label[-4:, -4:] = 255  # ignored pixels name no class
    if i == 0:
      label[20:, :4] = 2
    samples.append(Sample(f's{i}', image, label))
  result = naming.image_naming(model, samples, names, batch_size=2)  # 3 calls, the last padded
  targets = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0]], np.float32)
  # The same scores through the public inference API (images already at the model's size, so
  # naming's whole-image resize is the identity), with the prompt naming uses.
  scores = model.encode_pixels(normalize(np.stack([s.image for s in samples]))) @ model.encode_text(
      [f'a photo of a {n}.' for n in names[1:]]).T
  ap = naming.average_precision(scores, targets)
  assert result['mAP'] == pytest.approx(100 * np.mean(ap), abs=1e-4)
  assert result['chance_mAP'] == pytest.approx(100 * targets.mean(0).mean())
  assert list(result['per_class_ap']) == ['cat', 'dog', 'bird']
  assert result['num_images'] == 5
  assert naming.image_naming(model, samples, names, max_images=2)['num_images'] == 2
  with pytest.raises(ValueError, match='no images'):
    naming.image_naming(model, [], names)
  empty = [Sample('bg', samples[0].image, np.zeros((32, 32), np.uint8))]
  result = naming.image_naming(model, empty, names)  # no class present anywhere: nothing to rank
  assert np.isnan(result['mAP']) and np.isnan(result['chance_mAP'])
