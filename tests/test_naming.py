"""evaluation/naming.py: average precision, and image- and group-level naming read from segmentation
labels."""

import jax
import numpy as np
import pytest

from evaluation import inspect_groups, naming, pooled
from evaluation.datasets import Sample
from groupvit_jax import prompts
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


@pytest.mark.slow
def test_image_naming_scores_the_pooled_embedding_against_label_presence():
  cfg = GroupViTConfig.from_dict(
    model_config(
      image=dict(
        image_size=32,
        patch_size=8,
        width=32,
        num_heads=2,
        depths=(1, 1),
        num_group_tokens=(4, 0),
        num_output_groups=(4,),
        drop_path_rate=0.0,
      ),
      text=dict(width=32, num_layers=1, num_heads=2, context_length=16),
      projection_dim=16,
      projection_hidden_dim=32,
    )
  )
  model = Pretrained(cfg, init_variables(GroupViT(cfg), jax.random.PRNGKey(0)))
  rng = np.random.default_rng(0)
  names = ('background', 'cat', 'dog', 'bird')
  samples = []
  for i in range(5):
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    label = np.zeros((32, 32), np.uint8)
    label[:16, :20] = 1 + i % 3  # large enough to be the majority of some groups
    label[-4:, -4:] = 255  # ignored pixels name no class
    if i == 0:
      label[20:, :4] = 2
    samples.append(Sample(f's{i}', image, label))
  words = ('brick wall', 'sky')
  # 3 calls, the last padded
  result = naming.image_naming(model, samples, names, batch_size=2, background_words=words)
  _check_group_naming(model, samples, names, result['groups'], words)
  targets = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0]], np.float32)
  # The same scores through the public inference API (images already at the model's size, so
  # naming's whole-image resize is the identity), with the prompt naming uses.
  scores = (
    model.encode_pixels(normalize(np.stack([s.image for s in samples])))
    @ model.encode_text([f'a photo of a {n}.' for n in names[1:]]).T
  )
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


def _check_group_naming(model, samples, names, groups, words):
  """Group-level naming through other public paths: the pixel groups of `inspect_groups` and the
  group similarities of `pooled`, majority classes counted by hand."""
  class_embed = prompts.class_embeddings(
    model.config, model.variables, model.tokenize, list(names[1:]) + list(words), 'simple'
  )
  pixels = normalize(np.stack([s.image for s in samples]))
  sims = np.asarray(
    pooled.group_similarities(model.variables, pixels, class_embed, config=model.config)['groups']
  )
  sims, background_score = sims[..., : len(names) - 1], sims[..., len(names) - 1 :].max(-1)
  ids = [
    per_stage[-1] for per_stage in inspect_groups.stage_group_ids(model, [s.image for s in samples])
  ]
  scores, targets, background, leaks, pairs, won = [], [], 0, 0, 0, 0
  bg_pairs, bg_won = 0, 0
  for i, sample in enumerate(samples):
    present = {int(c) - 1 for c in np.unique(sample.label) if 1 <= c <= 3}
    majority = {}
    for g in range(sims.shape[1]):
      labels = sample.label[(ids[i] == g) & (sample.label != 255)].astype(int)
      if labels.size:
        majority[g] = int(np.argmax(np.bincount(labels, minlength=4)))
    for g, c in majority.items():
      targets.append(np.eye(4, dtype=np.float32)[c][1:])
      scores.append(sims[i, g])
      if c == 0:
        background += 1
        leaks += int(np.argmax(sims[i, g])) in present
        for h, d in majority.items():
          if d != 0:
            bg_pairs += 1
            bg_won += float(background_score[i, g] > background_score[i, h])
        continue
      for h, d in majority.items():
        if d != c:
          pairs += 1
          won += float(sims[i, g, c - 1] > sims[i, h, c - 1])
  assert 0 < leaks < background < len(scores)  # all three kinds of group occur in these samples
  assert groups['num_groups'] == len(scores) and groups['num_background_groups'] == background
  assert groups['background_leak'] == pytest.approx(100 * leaks / background)
  assert pairs > 0 and groups['num_pairs'] == pairs
  assert groups['within_image_auc'] == pytest.approx(100 * won / pairs)
  assert bg_pairs > 0 and groups['num_background_pairs'] == bg_pairs
  assert groups['background_word_auc'] == pytest.approx(100 * bg_won / bg_pairs)
  expected = naming.mean_average_precision(np.stack(scores), np.stack(targets))
  assert not np.isnan(expected) and groups['mAP'] == pytest.approx(100 * expected, abs=1e-4)


def test_group_items_rank_each_group_by_its_own_embedding():
  """Groups that all carry their image's object name name every image but not their own pixels."""
  ids = np.array([0, 0, 1, 1])  # four pixels: two in group 0, two in group 1 (group 2 is empty)
  classes = np.array([0, 0, -1, -1])  # group 0 on the object, group 1 on the background
  present = [np.array([1.0, 0.0]), np.array([0.0, 1.0])]

  def score(sims_a, sims_b, background_a=None, background_b=None):
    items = naming._GroupItems(2)
    items.add(ids, classes, np.array(sims_a), present[0], background_a)
    items.add(
      ids,
      1 - 2 * (classes < 0),
      np.array(sims_b),
      present[1],  # class 1 instead of 0
      background_b,
    )
    return items.result(['circle', 'square'])

  # The background groups outscore the object groups on the image's class: AP 1/2 per class.
  global_ = score([[0.9, 0.1], [0.95, 0.1], [0.0, 0.0]], [[0.1, 0.9], [0.1, 0.95], [0.0, 0.0]])
  assert global_['mAP'] == pytest.approx(50.0) and global_['chance_mAP'] == pytest.approx(25.0)
  assert global_['num_groups'] == 4 and global_['num_background_groups'] == 2
  assert global_['background_leak'] == pytest.approx(100.0)
  assert global_['num_pairs'] == 2 and global_['within_image_auc'] == 0.0
  same = score([[0.9, 0.1], [0.9, 0.1], [0.0, 0.0]], [[0.1, 0.9], [0.1, 0.9], [0.0, 0.0]])
  assert same['within_image_auc'] == 50.0  # identical group embeddings: ties count half
  # Background groups that name nothing in their image: perfect ranking, no leak.
  local = score([[0.9, 0.1], [0.1, 0.3], [0.0, 0.0]], [[0.1, 0.9], [0.3, 0.1], [0.0, 0.0]])
  assert local['mAP'] == pytest.approx(100.0) and local['background_leak'] == 0.0
  assert local['within_image_auc'] == 100.0
  assert np.isnan(local['background_word_auc']) and local['num_background_pairs'] == 0
  # The background words on the background group of the first image, on the object's group of the
  # second (swapped); the empty group 2 takes part in no pair.
  placed = score(
    [[0.9, 0.1], [0.1, 0.3], [0.0, 0.0]],
    [[0.1, 0.9], [0.3, 0.1], [0.0, 0.0]],
    [0.2, 0.8, 1.0],
    [0.7, 0.4, 1.0],
  )
  assert placed['num_background_pairs'] == 2 and placed['background_word_auc'] == 50.0
  nothing = naming._GroupItems(2).result(['circle', 'square'])  # every pixel ignored
  assert np.isnan(nothing['mAP']) and np.isnan(nothing['background_leak'])
  assert np.isnan(nothing['within_image_auc']) and nothing['num_pairs'] == 0
