"""benchmarks/emergence.py: finished runs are found, unfinished ones ignored, and the tables hold
mean, spread and every seed's value (no training here; the sweep itself is a benchmark)."""

import json

from tests.conftest import load_script


def _module():
  return load_script('benchmarks/emergence.py')


def test_report_tabulates_finished_runs(tmp_path, capsys):
  em = _module()
  values = {'hard': [60.0, 62.0, 64.0], 'soft': [40.0, 41.0, 45.0], 'mosaic': [70.0]}
  for name, vs in values.items():
    for seed, v in enumerate(vs):
      d = tmp_path / f'{name}_seed{seed}'
      d.mkdir()
      (d / 'eval_synthetic.json').write_text(
          json.dumps({'step': 30, 'mIoU': v, 'oracle': {'mIoU': v + 10},
                      'naming': {'groups': {'within_image_auc': v + 20}}}))
  vit = tmp_path / 'vit_seed0'
  vit.mkdir()
  (vit / 'eval_synthetic.json').write_text(json.dumps(
      {'pixel': {'step': 30, 'mIoU': 20.0, 'oracle': None},
       'kmeans': {'step': 30, 'mIoU': 25.0, 'oracle': {'mIoU': 30.0}}}))
  # A run that stopped early does not count.
  early = tmp_path / 'soft_no_ml_seed0'
  early.mkdir()
  (early / 'eval_synthetic.json').write_text(json.dumps({'step': 10, 'mIoU': 99.0}))
  em.main(['--root', str(tmp_path), '--set', 'total_steps=30', '--report-only'])
  out = capsys.readouterr().out
  # The paper's variants by default: the mosaic table only when mosaic variants are asked for.
  assert 'mosaic' not in out
  em.main(['--root', str(tmp_path), '--set', 'total_steps=30', '--report-only', '--variants',
           'hard', 'mosaic'])
  mosaic_out = capsys.readouterr().out
  assert '| GroupViT | without mosaic | 62.0 ± 2.0 (60.0, 62.0, 64.0) | ' \
         '72.0 ± 2.0 (70.0, 72.0, 74.0) | 82.0 ± 2.0 (80.0, 82.0, 84.0) |' in mosaic_out
  assert '| GroupViT | + mosaic | 70.0 (70.0) | 80.0 (80.0) | 90.0 (90.0) |' in mosaic_out
  assert '| hard | with | 62.0 ± 2.0 (60.0, 62.0, 64.0) | 72.0 ± 2.0 (70.0, 72.0, 74.0) | ' \
         '82.0 ± 2.0 (80.0, 82.0, 84.0) |' in out
  assert '| soft | with | 42.0 ± 2.6 (40.0, 41.0, 45.0) |' in out
  assert '| soft | without | - | - | - |' in out
  assert '| ViT | pixel-wise | 20.0 (20.0) | - |' in out
  assert '| ViT | k-means | 25.0 (25.0) | 30.0 (30.0) |' in out
  assert '99.0' not in out


def test_base_options_compose_with_every_variant():
  """`--base easy_group_max` runs each ablation on top of the easy best-group recipe; every
  composed variant is a config that loads."""
  from tests.test_configs import load
  em = _module()
  assert em.config_arg('hard').endswith('synthetic.py')
  assert em.config_arg('soft_no_ml', 'easy_group_max').endswith(
      'synthetic.py:easy_group_max+soft_no_multi_label')
  for name in em.PAPER_VARIANTS:
    arg = em.config_arg(name, 'easy_group_max').split(':', 1)[1]
    config = load('synthetic', arg)
    assert config.loss.multi_label_pooling == 'max' and config.eval.threshold == 0.95
