"""benchmarks/emergence.py: finished runs of each kind are found and unfinished ones ignored, the
tables hold mean, spread and every seed's value, the plan trains the shared teachers before what
uses them, every variant is a recipe argument that builds, and the transfer reruns carry the right
overrides (no training here; the sweep itself is a benchmark)."""

import json
import os

import pytest

from tests.conftest import load_script


@pytest.fixture(scope='module')
def em():
  return load_script('benchmarks/emergence.py')


def _write(root, name, result, model=False, minutes=None):
  d = root / name
  d.mkdir(parents=True)
  (d / 'eval_synthetic.json').write_text(json.dumps(result))
  if model:
    (d / 'model').mkdir()
  if minutes is not None:
    (root / 'logs').mkdir(exist_ok=True)
    (root / 'logs' / f'{name}.time').write_text(f'{minutes * 60}\n')


def _groupvit(v, step=1500):
  return {
    'step': step,
    'mIoU': v,
    'oracle': {'mIoU': v + 10},
    'background_rule': 'threshold',
    'naming': {'mAP': v + 30, 'groups': {'within_image_auc': v + 20}},
  }


def _scg(v, step=0):
  # The shape of a real SCG result (tmp/g_E_tokens_region/eval_synthetic.json), trimmed.
  return {
    'step': step,
    'mIoU': v,
    'pixel_accuracy': 90.0,
    'oracle': {'mIoU': v + 15},
    'background_rule': 'vocabulary',
    'other_background_rules': {'threshold': {'step': step, 'mIoU': v - 5, 'oracle': None}},
    'naming': {'mAP': 86.0, 'chance_mAP': 12.5, 'groups': None},
  }


def test_report_tabulates_finished_runs(em, tmp_path, capsys):
  for seed, v in enumerate([60.0, 62.0, 64.0]):
    _write(tmp_path, f'groupvit_seed{seed}', _groupvit(v), minutes=20.0 + seed)
  _write(tmp_path, 'groupvit_soft_seed0', _groupvit(99.0, step=10))  # stopped early
  _write(
    tmp_path,
    'vit_seed0',
    {
      'pixel': {'step': 1500, 'mIoU': 20.0, 'oracle': None},
      'kmeans': {'step': 1500, 'mIoU': 25.0, 'oracle': {'mIoU': 30.0}},
      'naming': {'mAP': 70.0, 'groups': None},
    },
  )
  for seed, v in enumerate([50.0, 52.0]):
    _write(tmp_path, f'scg_seed{seed}', _scg(v), minutes=1.0)
  _write(tmp_path, 'scg_adapt_seed0', _scg(77.0, step=100))  # adaptation not finished
  _write(
    tmp_path,
    'zeroseg_seed0',
    {
      'step': 1500,
      'mIoU': 40.0,
      'oracle': {'mIoU': 55.0},
      'background_rule': 'threshold',
      'other_background_rules': {'vocabulary': {'step': 1500, 'mIoU': 35.0}},
      'naming': {'mAP': 80.0},
    },
  )
  clip = {'step': 1500, 'naming': {'mAP': 86.8, 'chance_mAP': 12.5, 'groups': None}}
  _write(tmp_path, 'clip_bg_seed0', clip, model=True, minutes=15.0)
  _write(tmp_path, 'clip_bg_seed1', clip, model=True, minutes=17.0)
  # A teacher without its model directory has not finished (the export comes last).
  _write(tmp_path, 'clip_seed0', dict(clip, step=1000))
  # Transfer: an SCG rerun (trainer JSON, step 0) and an evaluation.run output (no step).
  _write(tmp_path, 'scg_seed0_on_hard', _scg(30.0))
  _write(tmp_path, 'scg_seed1_on_hard', _scg(34.0))
  gv = _groupvit(45.0)
  del gv['step']
  _write(tmp_path, 'groupvit_seed0_on_stream2', gv)
  em.main(['--root', str(tmp_path), '--seeds', '0', '1', '2', '--report-only'])
  out = capsys.readouterr().out
  assert f'runs under {tmp_path}, seeds 0 1 2' in out
  lines = out.splitlines()

  def row(start, table=0):
    # The across-methods table comes first, the transfer table last.
    return [line for line in lines if line.startswith(start)][table]

  gv_cells = '62.0 ± 2.0 (60.0, 62.0, 64.0)'
  assert row('| GroupViT (released losses) |') == (
    f'| GroupViT (released losses) | threshold | {gv_cells} | {gv_cells} | '
    '72.0 ± 2.0 (70.0, 72.0, 74.0) | 92.0 ± 2.0 (90.0, 92.0, 94.0) | 21.0 | 21.0 |'
  )
  scg = row("| SCG (the paper's naming")
  # Primary (vocabulary) rule, threshold rule from other_background_rules, oracle, naming, time
  # alone and with the seed's shared CLIP (mean 16.0).
  assert scg.endswith(
    '| vocabulary | 51.0 ± 1.4 (50.0, 52.0) | 46.0 ± 1.4 (45.0, 47.0) | '
    '66.0 ± 1.4 (65.0, 67.0) | 86.0 ± 0.0 (86.0, 86.0) | 1.0 | 17.0 |'
  )
  assert row('| SCG with region adaptation').split(' | ')[2:4] == ['-', '-']
  assert row('| ViT (same loss and budget), pixel-wise |').startswith(
    '| ViT (same loss and budget), pixel-wise | threshold | 20.0 (20.0) | 20.0 (20.0) | - | '
    '70.0 (70.0) |'
  )
  assert '| ViT (same loss and budget), k-means on its tokens | threshold | 25.0 (25.0) | ' in out
  assert row('| ZeroSeg (grids 1-4').startswith(
    '| ZeroSeg (grids 1-4, both loss terms) | threshold | 40.0 (40.0) | 40.0 (40.0) | '
    '55.0 (55.0) | 80.0 (80.0) |'
  )
  assert row('| CLIP, a tenth').endswith('| - | - | - | - | 86.8 ± 0.0 (86.8, 86.8) | 16.0 | - |')
  assert row("| CLIP, 1,000 steps (ZeroSeg's teacher) |").split(' | ')[5] == '-'
  # GroupViT Table 1, as before: mIoU, oracle, within-image AUC; the early soft run is ignored.
  assert (
    f'| hard | with | {gv_cells} | 72.0 ± 2.0 (70.0, 72.0, 74.0) | '
    '82.0 ± 2.0 (80.0, 82.0, 84.0) |' in out
  )
  assert '| soft | with | - | - | - |' in out
  assert '99.0' not in out and '77.0' not in out
  # ZeroSeg tables: threshold rule primary, the vocabulary rule beside it.
  assert '| 1x1 .. 4x4 | 40.0 (40.0) | 35.0 (35.0) | 55.0 (55.0) |' in out
  assert '| yes | yes | 40.0 (40.0) | 35.0 (35.0) | 55.0 (55.0) |' in out
  # SCG tables.
  assert '| all classes | context | 51.0 ± 1.4 (50.0, 52.0) | 46.0 ± 1.4 (45.0, 47.0) |' in out
  assert '| none | 51.0 ± 1.4 (50.0, 52.0) |' in out
  assert '| noun to region | - | - | - |' in out
  # Transfer table: reported, val stream 2, easy, hard.
  assert row("| SCG (the paper's naming, context masking, no adaptation) |", -1).endswith(
    '| 51.0 ± 1.4 (50.0, 52.0) | - | - | 32.0 ± 2.8 (30.0, 34.0) |'
  )
  transfer = row('| GroupViT (released losses) |', -1)
  assert transfer.endswith(f'| {gv_cells} | 45.0 (45.0) | - | - |')


def test_dry_run_trains_teachers_first_and_passes_them(em, tmp_path, capsys):
  root = str(tmp_path)
  plan = em.build_plan(root, [0, 1], em.selection(None, None), [], transfer=True)
  order = [run.name for run in plan]
  assert len(plan) == 2 * (2 + len(em.VARIANTS) * (1 + len(em.STREAMS)))
  for seed in (0, 1):
    runs = {run.name: run for run in plan if run.seed == seed}
    clip_bg, clip = f'clip_bg_seed{seed}', f'clip_seed{seed}'
    for name, run in runs.items():
      if run.kind == 'teacher':
        continue
      teacher = em.teacher_of(run.variant)
      assert bool(teacher) == run.variant.startswith(('scg', 'zeroseg'))
      if teacher:
        assert order.index(f'{teacher}_seed{seed}') < order.index(name)
      if run.kind == 'transfer':
        assert order.index(f'{run.variant}_seed{seed}') < order.index(name)
    model_bg = os.path.join(root, clip_bg, 'model')
    for name in ('scg', 'scg_adapt', 'scg_main', 'scg_pixels'):
      cmd = runs[f'{name}_seed{seed}'].cmd
      assert f'--config.scg.clip_dir={model_bg}' in cmd
      assert f'--config.scg.grouper_dir={model_bg}' in cmd
      assert f'--config.seed={seed}' in cmd
    cmd = runs[f'zeroseg_g12_seed{seed}'].cmd
    assert f'--config.zeroseg.teacher_dir={os.path.join(root, clip, "model")}' in cmd
    assert '--config=configs/synthetic_zeroseg.py:grids=12' in cmd
    assert not any('teacher_dir' in a or 'clip_dir' in a for a in runs[f'vit_seed{seed}'].cmd)
    assert runs[f'scg_seed{seed}'].steps == 0 and runs[f'scg_adapt_seed{seed}'].steps == 300
    assert runs[clip_bg].steps == 1500 and runs[clip].steps == 1000
  # The SCG tables alone need only SCG's CLIP; --set reaches every run; a finished teacher is
  # not listed again; nothing is created.
  _write(tmp_path, 'clip_bg_seed0', {'step': 1500, 'naming': {'mAP': 80.0}}, model=True)
  argv = ['--root', root, '--seeds', '0', '1', '--tables', 'scg_direction', '--dry-run']
  em.main(argv + ['--set', 'data.synthetic.max_objects=1'])
  out = capsys.readouterr().out.splitlines()
  cmds = [line for line in out if not line.startswith('[emergence]')]
  assert len(cmds) == 1 + 4 * 2  # clip_bg_seed1 and the 4 SCG variants per seed
  teacher = f'--workdir={os.path.join(root, "clip_bg_seed1")}'
  assert [teacher in c for c in cmds] == [False] * 4 + [True] + [False] * 4
  assert not any('clip_seed' in c for c in cmds)
  assert all(c.endswith('--config.data.synthetic.max_objects=1') for c in cmds)
  assert out[-1].startswith('[emergence] 9 runs (1 teachers, 8 variants, 0 transfer')
  assert os.listdir(tmp_path) == ['clip_bg_seed0']


def test_every_variant_is_a_recipe_argument_that_builds(em):
  """Each recipe spec's get_config runs (a renamed argument fails here), and the specs mean what
  their labels say."""
  from groupvit_jax.main import load_recipe

  configs = {name: em.recipe_config(v.recipe) for name, v in em.ALL.items()}
  for name in em.VARIANTS:
    assert any(name in t for t in em.TABLES.values()), name
  # The shared teachers are what the recipes would train themselves.
  for method, teacher in (('scg', 'clip_bg'), ('zeroseg', 'clip')):
    prerequisites = configs[method].prerequisites
    assert prerequisites and all(p[1] == prerequisites[0][1] for p in prerequisites)
    assert load_recipe(prerequisites[0][1]).to_dict() == configs[teacher].to_dict()
  # scg_main is the README's main job.
  assert configs['scg_main'].to_dict() == load_recipe('configs/synthetic.py').to_dict()
  for name, config in configs.items():
    if name.startswith('groupvit'):
      assert config.model.multi_label == ('no_ml' not in name)
      assert config.model.image.hard_assignment == ('soft' not in name)
      assert len(config.model.image.num_output_groups) == (1 if name.endswith('1stage') else 2)
      assert (config.loss.multi_label_pooling == 'max') == (name == 'groupvit_best')
  assert configs['vit'].model.image.num_output_groups == ()
  zs = {n: c.zeroseg for n, c in configs.items() if n.startswith('zeroseg')}
  assert [tuple(zs[n].grids) for n in ('zeroseg_g1', 'zeroseg_g12', 'zeroseg_g123', 'zeroseg')] == [
    (1,),
    (1, 2),
    (1, 2, 3),
    (1, 2, 3, 4),
  ]
  assert zs['zeroseg_no_matching'].weights.matching == 0.0
  assert zs['zeroseg_no_matching'].weights.multiscale == 1.0
  assert zs['zeroseg_no_multiscale'].weights.multiscale == 0.0
  scg = {n: c for n, c in configs.items() if n.startswith('scg')}
  for name, config in scg.items():
    assert config.total_steps == (300 if 'adapt' in name else 0)
    expected_masking = 'tokens' if name in ('scg_tokens', 'scg_top1_tokens') else 'context'
    expected_masking = 'pixels' if name.endswith('pixels') else expected_masking
    assert config.scg.masking == expected_masking, name
    top1 = name in ('scg_main', 'scg_top1', 'scg_top1_pixels', 'scg_top1_tokens', 'scg_top1_noun')
    assert config.scg.image_top_k == (1 if top1 else 0)
    assert config.scg.naming == ('noun' if name in ('scg_main', 'scg_top1_noun') else 'region')
  directions = {n: scg[n].scg.direction for n in ('scg_adapt', 'scg_adapt_r2n', 'scg_adapt_both')}
  assert directions == {
    'scg_adapt': 'noun_to_region',
    'scg_adapt_r2n': 'region_to_noun',
    'scg_adapt_both': 'both',
  }
  assert configs['clip_bg'].data.synthetic.p_background_only == 0.1
  assert configs['clip_bg'].total_steps == 1500 and configs['clip'].total_steps == 1000


def test_transfer_runs_have_the_streams_overrides(em, tmp_path):
  from input_pipeline.scene_levels import LEVELS

  root = str(tmp_path)
  names = ['groupvit', 'scg', 'scg_adapt', 'zeroseg']
  plan = {r.name: r for r in em.build_plan(root, [3], names, [], transfer=True)}
  hard = {k: v for k, v in LEVELS['hard'].items() if LEVELS['default'][k] != v}
  assert em.level_knobs('easy') == {'background_strength': 0.0}
  assert em.level_knobs('hard') == hard and 'max_objects' in hard and 'rotation' in hard
  model_bg = os.path.join(root, 'clip_bg_seed3', 'model')

  # SCG without adaptation: the recipe again, with the same teachers and seed, eval-only.
  rerun = plan['scg_seed3_on_hard']
  cmd = rerun.cmd
  assert cmd[1:3] == ('-m', 'groupvit_jax.main') and '--config=configs/synthetic_scg.py' in cmd
  assert f'--workdir={os.path.join(root, "scg_seed3_on_hard")}' in cmd
  assert f'--config.scg.clip_dir={model_bg}' in cmd
  assert f'--config.scg.grouper_dir={model_bg}' in cmd
  assert '--config.seed=3' in cmd and '--config.export_model=False' in cmd
  for k, v in hard.items():
    assert f'--config.data.synthetic.{k}={v}' in cmd
  assert not any('synthetic_seed' in a for a in cmd)
  assert rerun.steps == 0 and rerun.needs == ('scg_seed3', 'clip_bg_seed3')
  stream2 = plan['scg_seed3_on_stream2'].cmd
  assert '--config.eval.synthetic_seed=2' in stream2
  assert not any(a.startswith('--config.data.synthetic.') for a in stream2)
  assert '--config.data.synthetic.background_strength=0.0' in plan['scg_seed3_on_easy'].cmd

  # Trained runs: evaluation.run on the model directory with the run's own settings.
  for name in ('groupvit', 'scg_adapt', 'zeroseg'):
    source = os.path.join(root, f'{name}_seed3')
    run = plan[f'{name}_seed3_on_hard']
    cmd = list(run.cmd)
    assert cmd[1:3] == ['-m', 'evaluation.run'] and run.steps is None
    assert cmd[cmd.index('--checkpoint') + 1] == os.path.join(source, 'model')
    assert cmd[cmd.index('--data_dir') + 1] == source
    assert cmd[cmd.index('--output') + 1] == os.path.join(
      root, f'{name}_seed3_on_hard', 'eval_synthetic.json'
    )
    knobs = [cmd[i + 1] for i, a in enumerate(cmd) if a == '--synthetic']
    assert knobs == [f'{k}={v}' for k, v in hard.items()]
    assert '--synthetic_seed' not in cmd
    stream2 = list(plan[f'{name}_seed3_on_stream2'].cmd)
    assert stream2[stream2.index('--synthetic_seed') + 1] == '2' and '--synthetic' not in stream2
