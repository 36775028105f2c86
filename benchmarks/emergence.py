"""The built-in benchmark in one command: GroupViT, SCG and ZeroSeg on the synthetic scenes, with
their CLIP teachers, the papers' ablations and a transfer table, over seeds (issue #6).

Every run is one subprocess of the one trainer, ``python -m groupvit_jax.main
--config=configs/RECIPE[:ARGS] --workdir=ROOT/<variant>_seed<S> --config.seed=S [--config.k=v ...]``
(log in ROOT/logs/<run>.log, wall time in seconds in ROOT/logs/<run>.time). The script reads each
run's final ``WORKDIR/eval_synthetic.json`` and prints markdown tables: mean +- sample standard
deviation over seeds and every seed's value.

Shared teachers. Per seed it first trains the two CLIPs the other methods build on, with that seed:
``clip_bg`` (configs/synthetic_clip.py:background_only=0.1,steps=1500, what configs/synthetic_scg.py
would train as its recogniser and grouper) into ROOT/clip_bg_seed<S>, and ``clip``
(configs/synthetic_clip.py, ZeroSeg's teacher) into ROOT/clip_seed<S>, and passes them on
(``--config.scg.clip_dir`` and ``--config.scg.grouper_dir``, ``--config.zeroseg.teacher_dir``), so
all SCG rows of a seed share one CLIP and all ZeroSeg rows one teacher. A teacher is trained only
when a selected variant needs it or its own row is selected.

Tables (``--tables``; each selects its variants, ``--variants`` narrows further):

* ``methods``: across methods: GroupViT (released losses, and the best-group loss), a plain ViT
  (pixel-wise and k-means), SCG (paper's naming without adaptation, with adaptation, and the
  README's main job), ZeroSeg, and the CLIP teachers (image-level naming only). Columns: mIoU under
  the recipe's primary background rule, the threshold-rule mIoU, oracle mIoU, image-level naming
  mAP, and the mean wall minutes per run, alone and with the run's teacher (the issue asks for each
  method's command within 45 minutes on 2 cores, teacher included).
* ``groupvit``: GroupViT's Table 1 (hard vs soft assignment, with and without the multi-label loss)
  and Table 3 (1 vs 2 grouping stages), with the within-image naming AUC.
* ``zeroseg_views``, ``zeroseg_losses``: ZeroSeg's Table 3 (grids 1, 12, 123, 1234) and Table 4
  (multi-scale term only, matching term only, both).
* ``scg_masking``, ``scg_direction``: SCG's Table 3 (context / token / pixel masking without
  adaptation, with the paper's naming and with image top-1 naming) and Table 5 (the adaptation
  loss's direction).
* ``transfer``: every finished non-teacher run of the selection re-scored on val streams and scene
  levels it was neither trained nor tuned on: val stream 2 of its own (default) level, and val
  stream 1 of the ``easy`` and ``hard`` levels (input_pipeline/scene_levels.py; the knobs in which
  a level differs from ``default``, with the run's model and settings unchanged: e.g. SCG keeps
  its two regions and GroupViT its 0.95 threshold on the 1-3-object hard scenes). A run that did
  not train (SCG without adaptation, total_steps 0) is the same recipe run again with the same
  teachers and ``--config.eval.synthetic_seed=2`` or ``--config.data.synthetic.KEY=VALUE``
  overrides, into ROOT/<variant>_seed<S>_on_<stream> (no model export); a trained run (GroupViT,
  ViT, ZeroSeg, SCG with adaptation) is re-scored by ``python -m evaluation.run --checkpoint
  WORKDIR/model --dataset synthetic --data_dir WORKDIR`` (the trainer's evaluation hook, with the
  run's own eval settings from WORKDIR/config.json, and ``--synthetic_seed 2`` or ``--synthetic
  KEY=VALUE``), whose JSON goes to ROOT/<variant>_seed<S>_on_<stream>/eval_synthetic.json.

A run counts as finished when its ``eval_synthetic.json`` is at the recipe's ``total_steps`` (0 for
SCG without adaptation; evaluation.run output: when it exists) and, for a teacher, WORKDIR/model
exists; finished runs are reused, so an interrupted sweep continues where it stopped, and a failed
run is reported and skipped with what depends on it. ``--set key=value`` is passed to every run,
teachers and transfer reruns included, as ``--config.key=value`` (note: ``--set total_steps=N``
also gives SCG's eval-only rows N adaptation steps). ``--dry-run`` prints the commands still to
run, in order, with their count and an estimate of the wall time on 2 cores; ``--report-only``
only tabulates.

Commands::

    # everything: 24 runs + 66 transfer evaluations per seed
    python benchmarks/emergence.py --root runs/emergence --dry-run
    python benchmarks/emergence.py --root runs/emergence
    # the across-methods table only, three seeds
    python benchmarks/emergence.py --root runs/emergence --tables methods --seeds 0 1 2
    # SCG's tables on shorter teachers (the --set reaches the CLIPs too: 600 steps)
    python benchmarks/emergence.py --root runs/em_scg --tables scg_masking --set total_steps=600
    python benchmarks/emergence.py --root runs/emergence --report-only
"""

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from typing import Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = 'configs'  # recipe specs are relative to it; commands run in REPO


@dataclasses.dataclass(frozen=True)
class Variant:
  recipe: str  # 'FILE[:ARGS]' under configs/
  label: str

  @property
  def file(self) -> str:
    return self.recipe.partition(':')[0]


TEACHERS = {
  'clip_bg': Variant(
    'synthetic_clip.py:background_only=0.1,steps=1500',
    "CLIP, a tenth of the scenes background-only, 1,500 steps (SCG's recogniser and grouper)",
  ),
  'clip': Variant('synthetic_clip.py', "CLIP, 1,000 steps (ZeroSeg's teacher)"),
}
# The recipes whose `config.prerequisites` the shared teachers stand in for.
TEACHER_OF = {'synthetic_scg.py': 'clip_bg', 'synthetic_zeroseg.py': 'clip'}

VARIANTS = {
  # Across methods.
  'groupvit': Variant('synthetic_groupvit.py', 'GroupViT (released losses)'),
  'groupvit_best': Variant(
    'synthetic_groupvit.py:group_max=True', 'GroupViT, best-group multi-label loss (not released)'
  ),
  'vit': Variant('synthetic_groupvit.py:arch=vit', 'ViT (same loss and budget)'),
  'scg': Variant('synthetic_scg.py', "SCG (the paper's naming, context masking, no adaptation)"),
  'scg_adapt': Variant(
    'synthetic_scg.py:adapt=True', 'SCG with region adaptation (noun-to-region, 300 steps)'
  ),
  'scg_main': Variant(
    'synthetic_scg.py:image_top_k=1,naming=noun,grouper_layer=-2',
    "SCG, the README's main job (configs/synthetic.py: image top-1 class claims a region, "
    'k-means on block -2)',
  ),
  'zeroseg': Variant('synthetic_zeroseg.py', 'ZeroSeg (grids 1-4, both loss terms)'),
  # GroupViT, Tables 1 and 3.
  'groupvit_soft': Variant('synthetic_groupvit.py:assignment=soft', 'GroupViT, soft assignment'),
  'groupvit_no_ml': Variant(
    'synthetic_groupvit.py:multi_label=False', 'GroupViT, no multi-label loss'
  ),
  'groupvit_soft_no_ml': Variant(
    'synthetic_groupvit.py:assignment=soft,multi_label=False',
    'GroupViT, soft assignment, no multi-label loss',
  ),
  'groupvit_1stage': Variant('synthetic_groupvit.py:stages=1', 'GroupViT, 1 stage (4 groups)'),
  # ZeroSeg, Tables 3 and 4.
  'zeroseg_g1': Variant('synthetic_zeroseg.py:grids=1', 'ZeroSeg, 1x1 view only'),
  'zeroseg_g12': Variant('synthetic_zeroseg.py:grids=12', 'ZeroSeg, grids 1-2'),
  'zeroseg_g123': Variant('synthetic_zeroseg.py:grids=123', 'ZeroSeg, grids 1-3'),
  'zeroseg_no_matching': Variant(
    'synthetic_zeroseg.py:matching=False', 'ZeroSeg, multi-scale term only'
  ),
  'zeroseg_no_multiscale': Variant(
    'synthetic_zeroseg.py:multiscale=False', 'ZeroSeg, matching term only'
  ),
  # SCG, Tables 3 and 5.
  'scg_tokens': Variant('synthetic_scg.py:masking=tokens', 'SCG, token masking'),
  'scg_pixels': Variant('synthetic_scg.py:masking=pixels', 'SCG, pixel masking'),
  'scg_top1': Variant('synthetic_scg.py:image_top_k=1', 'SCG, image top-1 naming'),
  'scg_top1_tokens': Variant(
    'synthetic_scg.py:image_top_k=1,masking=tokens', 'SCG, image top-1 naming, token masking'
  ),
  'scg_top1_noun': Variant(
    'synthetic_scg.py:image_top_k=1,naming=noun', 'SCG, image top-1 class claims a region'
  ),
  'scg_top1_pixels': Variant(
    'synthetic_scg.py:image_top_k=1,masking=pixels', 'SCG, image top-1 naming, pixel masking'
  ),
  'scg_adapt_r2n': Variant(
    'synthetic_scg.py:adapt=True,direction=region_to_noun', 'SCG adapted region-to-noun'
  ),
  'scg_adapt_both': Variant('synthetic_scg.py:adapt=True,direction=both', 'SCG adapted both ways'),
}
ALL = {**TEACHERS, **VARIANTS}

TABLES = {
  'methods': (
    'groupvit', 'groupvit_best', 'vit', 'scg', 'scg_adapt', 'scg_main', 'zeroseg', 'clip_bg',
    'clip',
  ),
  'groupvit': (
    'groupvit', 'groupvit_soft', 'groupvit_no_ml', 'groupvit_soft_no_ml', 'groupvit_1stage',
  ),
  'zeroseg_views': ('zeroseg_g1', 'zeroseg_g12', 'zeroseg_g123', 'zeroseg'),
  'zeroseg_losses': ('zeroseg_no_matching', 'zeroseg_no_multiscale', 'zeroseg'),
  'scg_masking': (
    'scg', 'scg_tokens', 'scg_pixels', 'scg_top1', 'scg_top1_tokens', 'scg_top1_pixels',
    'scg_top1_noun', 'scg_main',
  ),
  'scg_direction': ('scg', 'scg_adapt', 'scg_adapt_r2n', 'scg_adapt_both'),
  # Its rows are the other selected tables' non-teacher variants (all of them when alone).
  'transfer': (),
}  # fmt: skip

# stream -> (column title, val stream seed or None for the recipe's, scene level of the knobs)
STREAMS = {
  'stream2': ('val stream 2', 2, 'default'),
  'easy': ('easy level', None, 'easy'),
  'hard': ('hard level', None, 'hard'),
}

# Wall minutes on 2 CPU cores, per run, for --dry-run's estimate: recipe file -> minutes at `steps`.
# SCG: about a minute of evaluation and export, plus its adaptation steps. ZeroSeg: not measured.
_MINUTES = {
  'synthetic_groupvit.py': lambda steps: 21.0 * steps / 1500,
  'synthetic_clip.py': lambda steps: 10.0 * steps / 1000,
  'synthetic_scg.py': lambda steps: 1.0 + 4.0 * steps / 300,
}
_TRANSFER_MINUTES = 1.0  # one evaluation of 200 val images, as SCG's eval-only runs


# --- recipes ------------------------------------------------------------------------------------
_MODULES: dict[str, object] = {}


def recipe_config(recipe: str):
  """`get_config(ARGS)` of a recipe spec 'FILE[:ARGS]' under configs/ (a bad ARG raises)."""
  file, _, arg = recipe.partition(':')
  if file not in _MODULES:
    if REPO not in sys.path:
      sys.path.insert(0, REPO)  # the recipes import groupvit_jax and input_pipeline
    path = os.path.join(REPO, CONFIGS, file)
    spec = importlib.util.spec_from_file_location(f'emergence_{file[:-3]}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _MODULES[file] = module
  return _MODULES[file].get_config(arg or None)


def level_knobs(level: str) -> dict:
  """The generator knobs in which scene level `level` differs from `default`."""
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  from input_pipeline.scene_levels import LEVELS

  default = LEVELS['default']
  return {k: v for k, v in LEVELS[level].items() if default.get(k) != v}


def _flag_value(value) -> str:
  # Both ml_collections' flags and evaluation.run's --synthetic parse a bare word as a string.
  return repr(value) if isinstance(value, (tuple, list)) else str(value)


def _total_steps(overrides: list[str]) -> Optional[int]:
  for kv in overrides:
    key, _, value = kv.partition('=')
    if key.strip() == 'total_steps':
      return int(value)
  return None


# --- the plan -----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Run:
  """One subprocess: a training run (teacher or variant) or a transfer evaluation."""

  name: str  # its directory under ROOT and its log's name
  variant: str
  seed: int
  kind: str  # 'teacher', 'variant' or 'transfer'
  cmd: tuple[str, ...]
  workdir: str
  steps: Optional[int]  # the step its eval JSON must be at; None: evaluation.run output (no step)
  minutes: Optional[float]  # estimated wall minutes on 2 cores; None: unknown
  needs: tuple[str, ...] = ()  # runs that must have finished first
  stream: str = ''  # transfer runs: a STREAMS key

  @property
  def result_path(self) -> str:
    return os.path.join(self.workdir, 'eval_synthetic.json')


def run_dir(root: str, name: str, seed: int) -> str:
  return os.path.join(root, f'{name}_seed{seed}')


def _trainer_cmd(recipe: str, workdir: str, seed: int, extra: list[str]) -> tuple[str, ...]:
  return (
    sys.executable,
    '-m',
    'groupvit_jax.main',
    f'--config={CONFIGS}/{recipe}',
    f'--workdir={workdir}',
    f'--config.seed={seed}',
    *extra,
  )


def teacher_of(name: str) -> Optional[str]:
  return None if name in TEACHERS else TEACHER_OF.get(ALL[name].file)


def _teacher_flags(config, teacher: Optional[str], root: str, seed: int) -> list[str]:
  """`--config.KEY=ROOT/<teacher>_seed<S>/model` for every prerequisite key of the recipe."""
  keys = [key for key, _, _ in config.get('prerequisites', ())]
  if keys and teacher is None:
    raise ValueError(f'the recipe needs {keys} but no shared teacher is known for it')
  model = os.path.join(run_dir(root, teacher, seed), 'model') if teacher else ''
  return [f'--config.{key}={model}' for key in keys]


def build_plan(
  root: str, seeds: list[int], names: list[str], overrides: list[str], transfer: bool
) -> list[Run]:
  """The runs of `names` (teachers and variants) for every seed, in the order they run: per seed
  the teachers, then the variants, then (with `transfer`) the transfer evaluations."""
  total = _total_steps(overrides)
  sets = [f'--config.{kv}' for kv in overrides]
  configs = {name: recipe_config(ALL[name].recipe) for name in ALL if name in names}
  teachers = [t for t in TEACHERS if t in names or any(teacher_of(n) == t for n in names)]
  for t in teachers:
    configs.setdefault(t, recipe_config(TEACHERS[t].recipe))
  variants = [n for n in VARIANTS if n in names]
  plan = []
  for seed in seeds:
    runs = {}
    for name in teachers + variants:
      config, teacher = configs[name], teacher_of(name)
      steps = int(config.total_steps) if total is None else total
      workdir = run_dir(root, name, seed)
      flags = _teacher_flags(config, teacher, root, seed)
      estimate = _MINUTES.get(ALL[name].file)
      runs[name] = Run(
        name=os.path.basename(workdir),
        variant=name,
        seed=seed,
        kind='teacher' if name in TEACHERS else 'variant',
        cmd=_trainer_cmd(ALL[name].recipe, workdir, seed, flags + sets),
        workdir=workdir,
        steps=steps,
        minutes=estimate(steps) if estimate else None,
        needs=(f'{teacher}_seed{seed}',) if teacher else (),
      )
      plan.append(runs[name])
    if transfer:
      for name in variants:
        for stream in STREAMS:
          plan.append(transfer_run(runs[name], configs[name], stream, root, overrides))
  return plan


def transfer_run(source: Run, config, stream: str, root: str, overrides: list[str]) -> Run:
  """Run `source` re-scored on `stream` (module docstring, the transfer table)."""
  _, val_seed, level = STREAMS[stream]
  knobs = level_knobs(level)
  workdir = os.path.join(root, f'{source.name}_on_{stream}')
  if source.steps == 0:
    # Nothing was trained: the recipe again, evaluating on the other stream.
    teacher = teacher_of(source.variant)
    extra = _teacher_flags(config, teacher, root, source.seed)
    extra += [f'--config.{kv}' for kv in overrides]
    if val_seed is not None:
      extra.append(f'--config.eval.synthetic_seed={val_seed}')
    extra += [f'--config.data.synthetic.{k}={_flag_value(v)}' for k, v in knobs.items()]
    extra.append('--config.export_model=False')  # the source run's model is the model
    cmd = _trainer_cmd(ALL[source.variant].recipe, workdir, source.seed, extra)
    steps = 0
  else:
    cmd = (
      sys.executable,
      '-m',
      'evaluation.run',
      '--checkpoint',
      os.path.join(source.workdir, 'model'),
      '--dataset',
      'synthetic',
      '--data_dir',
      source.workdir,
      '--output',
      os.path.join(workdir, 'eval_synthetic.json'),
    )
    if val_seed is not None:
      cmd += ('--synthetic_seed', str(val_seed))
    for k, v in knobs.items():
      cmd += ('--synthetic', f'{k}={_flag_value(v)}')
    steps = None
  return Run(
    name=os.path.basename(workdir),
    variant=source.variant,
    seed=source.seed,
    kind='transfer',
    cmd=cmd,
    workdir=workdir,
    steps=steps,
    minutes=_TRANSFER_MINUTES,
    needs=(source.name, *source.needs),
    stream=stream,
  )


def final_result(run: Run) -> Optional[dict]:
  """The run's eval JSON if the run has finished (module docstring), else None."""
  if not os.path.exists(run.result_path):
    return None
  with open(run.result_path) as f:
    result = json.load(f)
  if run.steps is not None:
    # The ViT baseline writes {'pixel': ..., 'kmeans': ..., 'naming': ...}, each with its step.
    step = result.get('step', (result.get('pixel') or {}).get('step'))
    if step != run.steps:
      return None
  if run.kind == 'teacher' and not os.path.isdir(os.path.join(run.workdir, 'model')):
    return None
  return result


def execute(run: Run, log_dir: str) -> bool:
  """Runs `run` (log and wall time under `log_dir`); True when it finished."""
  log_path = os.path.join(log_dir, f'{run.name}.log')
  print(f'[emergence] {shlex.join(run.cmd)}  (log: {log_path})', flush=True)
  if run.steps is None:  # evaluation.run writes its file but not its folder
    os.makedirs(run.workdir, exist_ok=True)
  t0 = time.time()
  with open(log_path, 'w') as log:
    rc = subprocess.run(run.cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
  seconds = time.time() - t0
  done = rc == 0 and final_result(run) is not None
  if done:
    with open(os.path.join(log_dir, f'{run.name}.time'), 'w') as f:
      f.write(f'{seconds:.1f}\n')
  print(
    f'[emergence] {run.name}: {seconds:.0f} s' + ('' if done else f', FAILED (rc {rc})'),
    flush=True,
  )
  return done


# --- scores and tables --------------------------------------------------------------------------
def _num(value) -> Optional[float]:
  if value is None:
    return None
  value = float(value)
  return None if math.isnan(value) or math.isinf(value) else value


def _segmentation(part: dict, prefix: str = '') -> dict[str, float]:
  """`mIoU` (primary rule), one entry per background rule, `oracle` (where computed)."""
  out = {}
  miou = _num(part.get('mIoU'))
  if miou is None:
    return out
  out[prefix + 'mIoU'] = miou
  out[prefix + part.get('background_rule', 'threshold')] = miou
  for rule, other in (part.get('other_background_rules') or {}).items():
    if _num(other.get('mIoU')) is not None:
      out[prefix + rule] = _num(other['mIoU'])
  if part.get('oracle') and _num(part['oracle'].get('mIoU')) is not None:
    out[prefix + 'oracle'] = _num(part['oracle']['mIoU'])
  return out


def scores(result: dict) -> dict[str, float]:
  """One run's eval JSON -> {'mIoU', 'threshold', 'vocabulary', 'oracle', 'naming', 'auc'} (those
  present); the ViT's segmentations are prefixed 'pixel/' and 'kmeans/'."""
  out = {}
  if 'pixel' in result or 'kmeans' in result:
    for method in ('pixel', 'kmeans'):
      out.update(_segmentation(result.get(method) or {}, f'{method}/'))
  else:
    out.update(_segmentation(result))
  naming = result.get('naming') or {}
  if _num(naming.get('mAP')) is not None:
    out['naming'] = _num(naming['mAP'])
  auc = _num((naming.get('groups') or {}).get('within_image_auc'))
  if auc is not None:
    out['auc'] = auc
  return out


def _fmt(values: list[float]) -> str:
  if not values:
    return '-'
  mean = statistics.fmean(values)
  each = ', '.join(f'{v:.1f}' for v in values)
  if len(values) == 1:
    return f'{mean:.1f} ({each})'
  return f'{mean:.1f} ± {statistics.stdev(values):.1f} ({each})'


@dataclasses.dataclass
class Report:
  """What the tables read: {variant: {seed: scores}}, {variant: {stream: {seed: scores}}}, wall
  minutes per variant, and each variant's primary background rule."""

  results: dict = dataclasses.field(default_factory=dict)
  transfer: dict = dataclasses.field(default_factory=dict)
  minutes: dict = dataclasses.field(default_factory=dict)
  rules: dict = dataclasses.field(default_factory=dict)

  def cell(self, name: str, key: str, stream: str = '') -> str:
    by_seed = self.transfer.get(name, {}).get(stream, {}) if stream else self.results.get(name, {})
    return _fmt([s[key] for _, s in sorted(by_seed.items()) if key in s])

  def row(self, first: list[str], name: str, keys: list[str], last: tuple = ()) -> str:
    return '| ' + ' | '.join([*first, *(self.cell(name, k) for k in keys), *last]) + ' |'

  def mean_minutes(self, name: Optional[str]) -> Optional[float]:
    values = self.minutes.get(name) or []
    return statistics.fmean(values) if values else None


def collect(plan: list[Run], log_dir: str) -> Report:
  """The finished runs of `plan` as a Report."""
  report = Report()
  for run in plan:
    result = final_result(run)
    if result is None:
      continue
    if run.kind == 'transfer':
      report.transfer.setdefault(run.variant, {}).setdefault(run.stream, {})[run.seed] = scores(
        result
      )
      continue
    report.results.setdefault(run.variant, {})[run.seed] = scores(result)
    time_path = os.path.join(log_dir, f'{run.name}.time')
    if os.path.exists(time_path):
      with open(time_path) as f:
        report.minutes.setdefault(run.variant, []).append(float(f.read().strip()) / 60)
  return report


def _primary_rule(config) -> str:
  if config.get('method', 'groupvit') == 'clip':
    return '-'
  return tuple(config.eval.get('background_rules', ('threshold',)))[0]


def _methods_table(rep: Report, names: set[str]) -> list[str]:
  rows = [
    ('groupvit', ''),
    ('groupvit_best', ''),
    ('vit', 'pixel/'),
    ('vit', 'kmeans/'),
    ('scg', ''),
    ('scg_adapt', ''),
    ('scg_main', ''),
    ('zeroseg', ''),
    ('clip_bg', ''),
    ('clip', ''),
  ]
  lines = [
    'Across methods: zero-shot mIoU on the synthetic val split (val stream 1) under the '
    "recipe's primary background rule, the threshold rule's mIoU, oracle mIoU (every group or "
    'region relabelled with its best ground-truth class) and image-level naming mAP; minutes: mean '
    'wall minutes per run on this machine, and with the teacher the run builds on (trained once '
    'per seed and shared by the SCG or ZeroSeg rows)',
    '',
    '| method | rule | mIoU | threshold-rule mIoU | oracle mIoU | naming mAP | minutes | '
    'minutes with teacher |',
    '|---|---|---|---|---|---|---|---|',
  ]
  for name, prefix in rows:
    if name not in names:
      continue
    label = ALL[name].label
    if prefix:
      label += ', pixel-wise' if prefix == 'pixel/' else ', k-means on its tokens'
    own = rep.mean_minutes(name)
    teacher = teacher_of(name)
    with_teacher = own
    if teacher is not None:
      tm = rep.mean_minutes(teacher)
      with_teacher = own + tm if own is not None and tm is not None else None
    keys = [prefix + 'mIoU', prefix + 'threshold', prefix + 'oracle', 'naming']
    minutes = [f'{m:.1f}' if m is not None else '-' for m in (own, with_teacher)]
    if name in TEACHERS:
      minutes[1] = '-'
    lines.append(rep.row([label, rep.rules.get(name, '-')], name, keys, tuple(minutes)))
  return lines


def _groupvit_tables(rep: Report) -> list[str]:
  keys = ['mIoU', 'oracle', 'auc']
  head = 'mIoU | oracle mIoU | within-image AUC |'
  return [
    'GroupViT Table 1 (assignment, multi-label loss): zero-shot mIoU (threshold rule), oracle '
    "mIoU, within-image AUC (50 = groups carry only the image's names, 100 = each group names "
    'its own pixels, 0 = the names sit on the other groups)',
    '',
    f'| assignment | multi-label loss | {head}',
    '|---|---|---|---|---|',
    rep.row(['hard', 'with'], 'groupvit', keys),
    rep.row(['soft', 'with'], 'groupvit_soft', keys),
    rep.row(['hard', 'without'], 'groupvit_no_ml', keys),
    rep.row(['soft', 'without'], 'groupvit_soft_no_ml', keys),
    '',
    'GroupViT Table 3 (grouping stages)',
    '',
    f'| stages | {head}',
    '|---|---|---|---|',
    rep.row(['1'], 'groupvit_1stage', keys),
    rep.row(['2'], 'groupvit', keys),
  ]


def _zeroseg_tables(rep: Report, which: set[str]) -> list[str]:
  keys = ['mIoU', 'vocabulary', 'oracle']
  head = 'mIoU (threshold rule) | vocabulary-rule mIoU | oracle mIoU |'
  lines = []
  if 'zeroseg_views' in which:
    lines += [
      'ZeroSeg Table 3 (views distilled from the teacher)',
      '',
      f'| grids | {head}',
      '|---|---|---|---|',
      rep.row(['1x1'], 'zeroseg_g1', keys),
      rep.row(['1x1, 2x2'], 'zeroseg_g12', keys),
      rep.row(['1x1 .. 3x3'], 'zeroseg_g123', keys),
      rep.row(['1x1 .. 4x4'], 'zeroseg', keys),
      '',
    ]
  if 'zeroseg_losses' in which:
    lines += [
      'ZeroSeg Table 4 (loss terms)',
      '',
      f'| multi-scale | matching | {head}',
      '|---|---|---|---|---|',
      rep.row(['yes', 'no'], 'zeroseg_no_matching', keys),
      rep.row(['no', 'yes'], 'zeroseg_no_multiscale', keys),
      rep.row(['yes', 'yes'], 'zeroseg', keys),
      '',
    ]
  return lines[:-1]


def _scg_tables(rep: Report, which: set[str]) -> list[str]:
  keys = ['mIoU', 'threshold', 'oracle']
  head = 'mIoU (vocabulary rule) | threshold-rule mIoU | oracle mIoU |'
  lines = []
  if 'scg_masking' in which:
    lines += [
      "SCG Table 3 (masking), no adaptation; naming among all classes (the paper's) or among the "
      'foreground class the whole image ranks first (image_top_k=1), by region or by the class '
      "claiming its best region (naming=noun; with k-means on block -2: the README's main job)",
      '',
      f'| naming | masking | {head}',
      '|---|---|---|---|---|',
      rep.row(['all classes', 'context'], 'scg', keys),
      rep.row(['all classes', 'tokens'], 'scg_tokens', keys),
      rep.row(['all classes', 'pixels'], 'scg_pixels', keys),
      rep.row(['image top-1', 'context'], 'scg_top1', keys),
      rep.row(['image top-1', 'tokens'], 'scg_top1_tokens', keys),
      rep.row(['image top-1', 'pixels'], 'scg_top1_pixels', keys),
      rep.row(['image top-1, claimed', 'context'], 'scg_top1_noun', keys),
      rep.row(['image top-1, claimed, block -2 (main job)', 'context'], 'scg_main', keys),
      '',
    ]
  if 'scg_direction' in which:
    lines += [
      'SCG Table 5 (region adaptation loss, 300 steps, context masking)',
      '',
      f'| adaptation | {head}',
      '|---|---|---|---|',
      rep.row(['none'], 'scg', keys),
      rep.row(['noun to region'], 'scg_adapt', keys),
      rep.row(['region to noun'], 'scg_adapt_r2n', keys),
      rep.row(['both'], 'scg_adapt_both', keys),
      '',
    ]
  return lines[:-1]


def _transfer_table(rep: Report, names: list[str]) -> list[str]:
  titles = [title for title, _, _ in STREAMS.values()]
  lines = [
    "Transfer: each run's mIoU (its primary rule) on its own val stream 1 and on streams and "
    'levels it was neither trained nor tuned on (val stream 2 of the default level; val stream 1 '
    'of the easy and hard levels), model and settings unchanged',
    '',
    '| run | val stream 1 (reported) | ' + ' | '.join(titles) + ' |',
    '|---|---|' + '---|' * len(titles),
  ]
  for name in names:
    prefixes = ('pixel/', 'kmeans/') if name == 'vit' else ('',)
    for prefix in prefixes:
      label = ALL[name].label + {'': '', 'pixel/': ', pixel-wise', 'kmeans/': ', k-means'}[prefix]
      cells = [rep.cell(name, prefix + 'mIoU')]
      cells += [rep.cell(name, prefix + 'mIoU', stream) for stream in STREAMS]
      lines.append('| ' + ' | '.join([label] + cells) + ' |')
  return lines


def tables(rep: Report, which: list[str], names: list[str]) -> str:
  """The markdown tables `which` (TABLES keys) over the selected variants `names`."""
  present = set(names)
  blocks = []
  if 'methods' in which:
    blocks.append(_methods_table(rep, present))
  if 'groupvit' in which:
    blocks.append(_groupvit_tables(rep))
  if {'zeroseg_views', 'zeroseg_losses'} & set(which):
    blocks.append(_zeroseg_tables(rep, set(which)))
  if {'scg_masking', 'scg_direction'} & set(which):
    blocks.append(_scg_tables(rep, set(which)))
  if 'transfer' in which:
    blocks.append(_transfer_table(rep, [n for n in VARIANTS if n in present]))
  return '\n\n'.join('\n'.join(b) for b in blocks)


# --- command line -------------------------------------------------------------------------------
def selection(table_names: Optional[list[str]], variants: Optional[list[str]]) -> list[str]:
  """The variants (and teacher rows) of `table_names` (default: all), narrowed to `variants`."""
  chosen = table_names or list(TABLES)
  names = {n for t in chosen for n in TABLES[t]}
  if not names:  # the transfer table alone: every method
    names = set(ALL)
  if variants:
    names &= set(variants)
  return [n for n in ALL if n in names]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--root', default='runs/emergence', help='one workdir per run under this')
  parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2, 3, 4])
  parser.add_argument(
    '--tables', nargs='+', choices=list(TABLES), default=None, help='default: all of them'
  )
  parser.add_argument(
    '--variants',
    nargs='+',
    choices=list(ALL),
    default=None,
    help="only these of the tables' variants (teachers are added where needed)",
  )
  parser.add_argument(
    '--set',
    action='append',
    default=[],
    metavar='KEY=VALUE',
    help='config override for every run, teachers included (repeatable)',
  )
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument('--report-only', action='store_true', help='only tabulate finished runs')
  mode.add_argument(
    '--dry-run', action='store_true', help='print the commands still to run, train nothing'
  )
  args = parser.parse_args(argv)
  for kv in args.set:
    if '=' not in kv:
      parser.error(f'--set expects KEY=VALUE, got {kv!r}')
  which = args.tables or list(TABLES)
  names = selection(args.tables, args.variants)
  if not names:
    parser.error('the --variants given are in none of the --tables given')
  root = os.path.abspath(args.root)
  log_dir = os.path.join(root, 'logs')
  # Every config is built here, before any training: a bad recipe argument fails at once.
  plan = build_plan(root, args.seeds, names, args.set, transfer='transfer' in which)
  done = {run.name for run in plan if final_result(run) is not None}
  todo = [run for run in plan if run.name not in done]

  if args.dry_run:
    print(f'[emergence] {len(todo)} of {len(plan)} runs to go under {root}, in order:')
    for run in todo:
      print(shlex.join(run.cmd))
    known = [r.minutes for r in todo if r.minutes is not None]
    unknown = sorted({ALL[r.variant].file for r in todo if r.minutes is None})
    n_unknown = sum(r.minutes is None for r in todo)
    by_kind = {k: sum(r.kind == k for r in todo) for k in ('teacher', 'variant', 'transfer')}
    print(
      f'[emergence] {len(todo)} runs ({by_kind["teacher"]} teachers, {by_kind["variant"]} '
      f'variants, {by_kind["transfer"]} transfer evaluations): about {sum(known) / 60:.1f} h on '
      '2 cores'
      + (f' plus {n_unknown} runs of unmeasured length ({", ".join(unknown)})' if unknown else '')
    )
    return

  failed: set[str] = set()
  if not args.report_only:
    os.makedirs(log_dir, exist_ok=True)
    for run in todo:
      missing = [n for n in run.needs if n not in done]
      if missing:
        print(f'[emergence] {run.name} skipped: {", ".join(missing)} did not finish', flush=True)
        failed.add(run.name)
        continue
      if execute(run, log_dir):
        done.add(run.name)
      else:
        failed.add(run.name)

  report = collect(plan, log_dir)
  for name in names:
    report.rules[name] = _primary_rule(recipe_config(ALL[name].recipe))
  print(
    '\ncommand: python benchmarks/emergence.py '
    f'{" ".join(argv if argv is not None else sys.argv[1:])}'
  )
  total = _total_steps(args.set)
  print(
    f'runs under {root}, seeds {" ".join(map(str, args.seeds))}, '
    f'{len(done)} of {len(plan)} runs finished'
    + (f', total_steps={total} in every run' if total is not None else '')
    + (f'; failed or skipped: {", ".join(sorted(failed))}' if failed else '')
    + '\n'
  )
  print(tables(report, which, names))


if __name__ == '__main__':
  main()
