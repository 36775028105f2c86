"""benchmarks/shape_probe.py: the metrics it reports, config overrides, and a short run end to
end."""

import math

import numpy as np
import pytest

from tests.conftest import load_script

pytestmark = pytest.mark.slow  # subprocess runs of the trainer or a benchmark script


def _module():
  return load_script('benchmarks/shape_probe.py')


def test_prior_cross_entropy():
  probe = _module()
  targets = np.array([[1, 0], [0, 1], [1, 0], [0, 0]], np.float32)
  # Class frequencies 0.5 and 0.25.
  expected = np.mean(
    [-(0.5 * math.log(0.5) + 0.5 * math.log(0.5)), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]
  )
  assert probe.prior_cross_entropy(targets) == pytest.approx(expected)


def test_input_transforms():
  probe = _module()
  rng = np.random.default_rng(0)
  images = rng.standard_normal((3, 8, 8, 3)).astype(np.float32) * 2 + 5
  assert probe.transform_inputs(images, 'pixels') is images
  std = probe.transform_inputs(images, 'per_image')
  np.testing.assert_allclose(std.mean(axis=(1, 2)), 0, atol=1e-5)
  np.testing.assert_allclose(std.std(axis=(1, 2)), 1, atol=1e-3)
  # A flat background with one square of another colour: the silhouette is the square, whatever
  # the two colours are, and it is the same in every channel.
  flat = np.zeros((2, 8, 8, 3), np.float32)
  flat[0] += [1, -1, 0.5]
  flat[0, 2:4, 2:4] = [-2, 3, 0]
  flat[1] += [-3, 0, 2]
  flat[1, 2:4, 2:4] = [0, 0, 0]
  sil = probe.transform_inputs(flat, 'silhouette')
  assert np.array_equal(sil[..., 0], sil[..., 2])
  for i in range(2):
    inside, outside = sil[i, 2:4, 2:4, 0], sil[i, 4:, 4:, 0]
    assert inside.min() > outside.max() and np.ptp(outside) == 0
  with pytest.raises(ValueError, match='unknown input'):
    probe.transform_inputs(flat, 'grey')


def test_overrides_reach_the_recipe_and_typos_are_errors():
  probe = _module()
  config = probe.load_recipe(
    'configs/synthetic_groupvit.py:arch=vit',
    ['model.image.patch_size=4', 'data.synthetic.rotation=False'],
  )
  assert config.model.image.patch_size == 4 and config.data.synthetic.rotation is False
  assert config.model.image.num_group_tokens == (0,)
  with pytest.raises(SystemExit, match='unknown config key'):
    probe.load_recipe('configs/synthetic_groupvit.py', ['model.image.patch_sise=4'])


@pytest.mark.parametrize('model', ['cnn', 'tower'])
def test_short_run_reports_every_evaluation(model, capsys):
  probe = _module()
  rows = probe.main(
    [
      '--config',
      'configs/synthetic_groupvit.py',
      '--model',
      model,
      '--steps',
      '2',
      '--batch',
      '4',
      '--train-images',
      '8',
      '--val-images',
      '8',
      '--eval-every',
      '1',
      '--set',
      'data.synthetic.image_size=32',
      '--set',
      'model.image.image_size=32',
    ]
  )
  assert [r['step'] for r in rows] == [1, 2]
  for r in rows:
    assert np.isfinite(r['val_cross_entropy']) and 0.0 <= r['val_mAP'] <= 1.0
  assert 'command: python benchmarks/shape_probe.py' in capsys.readouterr().out


def test_tower_trains_with_gumbel_noise_and_evaluates_without():
  """The probe must train the tower as the trainer does (noisy hard assignment), not noise-free."""
  import jax

  probe = _module()
  config = probe.load_recipe('configs/synthetic_groupvit.py', ['model.image.image_size=32'])
  model = probe.build_classifier(config, 'tower')
  x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
  params = model.init({'params': jax.random.key(0)}, x)

  def train_logits(seed):
    return np.asarray(
      model.apply(
        params,
        x,
        train=True,
        rngs={'gumbel': jax.random.key(seed), 'droppath': jax.random.key(seed)},
      )
    )

  assert not np.allclose(train_logits(1), train_logits(2))
  np.testing.assert_array_equal(train_logits(1), train_logits(1))
  # Evaluation is deterministic and needs no random streams.
  np.testing.assert_array_equal(
    np.asarray(model.apply(params, x)), np.asarray(model.apply(params, x))
  )
