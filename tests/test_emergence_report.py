"""benchmarks/emergence.py: finished runs are found, unfinished ones ignored, and the tables hold
mean, spread and every seed's value (no training here; the sweep itself is a benchmark)."""

import json

import pytest

from tests.conftest import load_script


def _module():
  return load_script('benchmarks/emergence.py')


def test_report_tabulates_finished_runs(tmp_path, capsys):
  em = _module()
  values = {'hard': [60.0, 62.0, 64.0], 'soft': [40.0, 41.0, 45.0]}
  for name, vs in values.items():
    for seed, v in enumerate(vs):
      d = tmp_path / f'{name}_seed{seed}'
      d.mkdir()
      (d / 'eval_synthetic.json').write_text(
        json.dumps(
          {
            'step': 30,
            'mIoU': v,
            'oracle': {'mIoU': v + 10},
            'naming': {'groups': {'within_image_auc': v + 20}},
          }
        )
      )
  vit = tmp_path / 'vit_seed0'
  vit.mkdir()
  (vit / 'eval_synthetic.json').write_text(
    json.dumps(
      {
        'pixel': {'step': 30, 'mIoU': 20.0, 'oracle': None},
        'kmeans': {'step': 30, 'mIoU': 25.0, 'oracle': {'mIoU': 30.0}},
      }
    )
  )
  # A run that stopped early does not count.
  early = tmp_path / 'soft_no_ml_seed0'
  early.mkdir()
  (early / 'eval_synthetic.json').write_text(json.dumps({'step': 10, 'mIoU': 99.0}))
  em.main(['--root', str(tmp_path), '--set', 'total_steps=30', '--report-only'])
  out = capsys.readouterr().out
  assert (
    '| hard | with | 62.0 ± 2.0 (60.0, 62.0, 64.0) | 72.0 ± 2.0 (70.0, 72.0, 74.0) | '
    '82.0 ± 2.0 (80.0, 82.0, 84.0) |' in out
  )
  assert '| soft | with | 42.0 ± 2.6 (40.0, 41.0, 45.0) |' in out
  assert '| soft | without | - | - | - |' in out
  assert '| ViT | pixel-wise | 20.0 (20.0) | - |' in out
  assert '| ViT | k-means | 25.0 (25.0) | 30.0 (30.0) |' in out
  assert '99.0' not in out


def test_variants_are_the_recipes_arguments():
  """Each variant is its configs/synthetic.py argument, alone or after `--base`."""
  from tests.test_configs import load

  em = _module()
  assert em.config_arg('hard').endswith('synthetic.py')
  assert em.config_arg('soft_no_ml').endswith('synthetic.py:assignment=soft,multi_label=False')
  assert em.config_arg('vit', 'group_max=True,scenes=easy').endswith(
    'synthetic.py:group_max=True,scenes=easy,arch=vit'
  )
  for name in em.PAPER_VARIANTS:
    config = load('synthetic', em.variant_arg(name) or None)
    assert config.model.multi_label == ('no_ml' not in name)
    assert config.model.image.hard_assignment == ('soft' not in name)


def test_base_arguments_compose_with_every_variant_that_fits(tmp_path, capsys):
  """`--base group_max=True,scenes=easy` runs each ablation on top of the easy best-group
  recipe; the variants without the multi-label loss, which the best-group loss needs, are left
  out of the default list and rejected when asked for."""
  from tests.test_configs import load

  em = _module()
  base = 'group_max=True,scenes=easy'
  for name in ('hard', 'soft', '1stage', 'vit'):
    config = load('synthetic', em.variant_arg(name, base))
    assert config.loss.multi_label_pooling == 'max' and config.eval.threshold == 0.95
  em.main(['--root', str(tmp_path), '--base', base, '--report-only'])
  out = capsys.readouterr().out
  assert 'hard_no_ml left out' in out and 'soft_no_ml left out' in out
  assert 'soft left out' not in out and 'vit left out' not in out
  with pytest.raises(SystemExit):
    em.main(['--root', str(tmp_path), '--base', base, '--report-only', '--variants', 'hard_no_ml'])
