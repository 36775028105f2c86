"""The paper's ablation tables in miniature on the built-in synthetic data (issue #6).

Trains every variant of ``configs/synthetic.py`` for several seeds with the one trainer
(``python -m groupvit_jax.main``, one subprocess per run), reads each run's final
``WORKDIR/eval_synthetic.json`` and prints markdown tables of zero-shot mIoU on the synthetic val
split (mean +- sample standard deviation over seeds, and every seed's value):

* Table 1: hard vs soft assignment, with and without the multi-label loss;
* Table 3: 1 vs 2 grouping stages;
* Table 4: GroupViT vs a plain ViT with the same loss and budget, segmented by pixel-wise
  classification and by k-means on its tokens.

Finished runs are reused (a run counts as finished when its ``eval_synthetic.json`` is at the final
step), so an interrupted sweep continues where it stopped. Extra ``--set key=value`` arguments are
passed to every run as ``--config.key=value`` (e.g. a shorter budget or other generator knobs);
``--base ARGS`` adds arguments of ``configs/synthetic.py`` to every variant (e.g. ``--base
group_max=True,scenes=easy`` runs the ablations on the easy scenes with the best-group loss: hard
is ``:group_max=True,scenes=easy``, soft ``:group_max=True,scenes=easy,assignment=soft``, ...;
variants that do not combine with the base, such as no multi-label loss under ``group_max=True``,
are left out of the default list). Use one ``--root`` per base.

Commands::

    # the full sweep (6 variants x 3 seeds, about 25 CPU-minutes per run on 2 cores)
    python benchmarks/emergence.py --root runs/emergence --seeds 0 1 2
    # one table only, a shorter budget, untuned generator difficulty
    python benchmarks/emergence.py --root runs/em_short --variants hard soft --seeds 0 1 2 \\
        --set total_steps=600 --set data.synthetic.max_objects=4
    # the paper's ablations under the best-group loss on the easy scenes (not in the release)
    python benchmarks/emergence.py --root runs/em_easy --base group_max=True,scenes=easy
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (configs/synthetic.py argument, row label)
VARIANTS = {
  'hard': ('', 'GroupViT, hard assignment, multi-label loss'),
  'soft': ('assignment=soft', 'GroupViT, soft assignment, multi-label loss'),
  'hard_no_ml': ('multi_label=False', 'GroupViT, hard assignment, no multi-label loss'),
  'soft_no_ml': (
    'assignment=soft,multi_label=False',
    'GroupViT, soft assignment, no multi-label loss',
  ),
  '1stage': ('stages=1', 'GroupViT, 1 stage (4 groups)'),
  'vit': ('arch=vit', 'ViT (same loss and budget)'),
}
PAPER_VARIANTS = tuple(VARIANTS)
SYNTHETIC = os.path.join(REPO, 'configs', 'synthetic.py')


def run_dir(root: str, name: str, seed: int) -> str:
  return os.path.join(root, f'{name}_seed{seed}')


def final_result(workdir: str, total_steps: Optional[int]) -> Optional[dict]:
  """The run's ``eval_synthetic.json`` if it is at ``total_steps`` (``None`` = any step)."""
  path = os.path.join(workdir, 'eval_synthetic.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    result = json.load(f)
  # GroupViT runs write one dict; the ViT writes {'pixel': ..., 'kmeans': ...}.
  step = result.get('step', result.get('pixel', {}).get('step'))
  if total_steps is not None and step != total_steps:
    return None
  return result


def scores(result: dict) -> dict[str, float]:
  """``{'groups': mIoU, 'groups_oracle': .., 'auc': ..}`` for GroupViT runs, ``{'pixel': ..,
  'kmeans': .., 'kmeans_oracle': ..}`` for the ViT (oracle and within-image AUC entries only
  where the run computed them)."""
  if 'mIoU' in result:
    out = {'groups': float(result['mIoU'])}
    if result.get('oracle'):
      out['groups_oracle'] = float(result['oracle']['mIoU'])
    auc = (result.get('naming') or {}).get('groups', {}).get('within_image_auc')
    if auc is not None and not math.isnan(auc):
      out['auc'] = float(auc)
    return out
  out = {m: float(result[m]['mIoU']) for m in ('pixel', 'kmeans') if m in result}
  if result.get('kmeans', {}).get('oracle'):
    out['kmeans_oracle'] = float(result['kmeans']['oracle']['mIoU'])
  return out


def variant_arg(name: str, base: str = '') -> str:
  """The ``configs/synthetic.py`` argument of variant ``name`` on top of the arguments ``base``."""
  return ','.join(filter(None, (base, VARIANTS[name][0])))


def config_arg(name: str, base: str = '') -> str:
  """The ``--config`` value of variant ``name`` on top of the arguments ``base``."""
  arg = variant_arg(name, base)
  return SYNTHETIC + (f':{arg}' if arg else '')


def _synthetic_module():
  sys.path.insert(0, REPO)
  import importlib.util

  spec = importlib.util.spec_from_file_location('synthetic_cfg', SYNTHETIC)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def train(
  name: str, seed: int, root: str, overrides: list[str], log_dir: str, base: str = ''
) -> None:
  config = config_arg(name, base)
  cmd = [
    sys.executable,
    '-m',
    'groupvit_jax.main',
    f'--config={config}',
    f'--workdir={run_dir(root, name, seed)}',
    f'--config.seed={seed}',
  ]
  cmd += [f'--config.{kv}' for kv in overrides]
  log_path = os.path.join(log_dir, f'{name}_seed{seed}.log')
  print(f'[emergence] {" ".join(cmd)}  (log: {log_path})', flush=True)
  t0 = time.time()
  with open(log_path, 'w') as log:
    subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
  print(f'[emergence] {name} seed {seed}: {time.time() - t0:.0f} s', flush=True)


def _fmt(values: list[float]) -> str:
  if not values:
    return '-'
  mean = statistics.fmean(values)
  spread = statistics.stdev(values) if len(values) > 1 else float('nan')
  each = ', '.join(f'{v:.1f}' for v in values)
  return f'{mean:.1f} ± {spread:.1f} ({each})' if not math.isnan(spread) else f'{mean:.1f} ({each})'


def tables(results: dict[str, dict[int, dict[str, float]]]) -> str:
  """Markdown tables from ``{variant: {seed: scores}}``.

  Every GroupViT row has the within-image AUC beside mIoU: groups that follow the objects
  (oracle) but carry the names on the wrong groups show as an AUC below 50.
  """

  def col(name, key='groups'):
    return _fmt([s[key] for _, s in sorted(results.get(name, {}).items()) if key in s])

  def groupvit(name):
    return f'{col(name)} | {col(name, "groups_oracle")} | {col(name, "auc")} |'

  head = 'mIoU | oracle mIoU | within-image AUC |'
  lines = [
    'Table 1 (assignment, multi-label loss): zero-shot mIoU on the synthetic val split '
    '(oracle mIoU: every group relabelled with its best ground-truth class; within-image '
    "AUC: 50 = groups carry only the image's names, 100 = each group names its own "
    'pixels, 0 = the names sit on the other groups)',
    '',
    f'| assignment | multi-label loss | {head}',
    '|---|---|---|---|---|',
    f'| hard | with | {groupvit("hard")}',
    f'| soft | with | {groupvit("soft")}',
    f'| hard | without | {groupvit("hard_no_ml")}',
    f'| soft | without | {groupvit("soft_no_ml")}',
    '',
    'Table 3 (grouping stages)',
    '',
    f'| stages | {head}',
    '|---|---|---|---|',
    f'| 1 | {groupvit("1stage")}',
    f'| 2 | {groupvit("hard")}',
    '',
    'Table 4 (GroupViT vs ViT)',
    '',
    '| model | segmentation | mIoU | oracle mIoU |',
    '|---|---|---|---|',
    f'| ViT | pixel-wise | {col("vit", "pixel")} | - |',
    f'| ViT | k-means | {col("vit", "kmeans")} | {col("vit", "kmeans_oracle")} |',
    f'| GroupViT | groups | {col("hard")} | {col("hard", "groups_oracle")} |',
  ]
  return '\n'.join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--root', default='runs/emergence', help='one workdir per run under this')
  parser.add_argument(
    '--variants',
    nargs='+',
    default=None,
    choices=list(VARIANTS),
    help="default: the paper's ablations (those that combine with --base)",
  )
  parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
  parser.add_argument(
    '--base',
    default='',
    metavar='ARGS',
    help='configs/synthetic.py arguments added to every variant, '
    'comma-separated (e.g. group_max=True,scenes=easy)',
  )
  parser.add_argument(
    '--set',
    action='append',
    default=[],
    metavar='KEY=VALUE',
    help='config override for every run (repeatable)',
  )
  parser.add_argument('--report-only', action='store_true', help='only tabulate finished runs')
  args = parser.parse_args(argv)
  module = _synthetic_module()
  # Every variant's config is built before any training, so a bad combination fails at once.
  variants = []
  for name in args.variants or PAPER_VARIANTS:
    try:
      module.get_config(variant_arg(name, args.base) or None)
    except ValueError as e:
      if args.variants:
        parser.error(f'variant {name} with --base {args.base!r}: {e}')
      print(f'[emergence] {name} left out: it does not combine with {args.base!r} ({e})')
      continue
    variants.append(name)
  root = os.path.abspath(args.root)
  log_dir = os.path.join(root, 'logs')
  os.makedirs(log_dir, exist_ok=True)
  total = None
  for kv in args.set:
    if kv.startswith('total_steps='):
      total = int(kv.split('=', 1)[1])
  if total is None:
    total = int(module.get_config(args.base or None).total_steps)
  results: dict[str, dict[int, dict[str, float]]] = {}
  for name in variants:
    for seed in args.seeds:
      result = final_result(run_dir(root, name, seed), total)
      if result is None and not args.report_only:
        train(name, seed, root, args.set, log_dir, args.base)
        result = final_result(run_dir(root, name, seed), total)
      if result is not None:
        results.setdefault(name, {})[seed] = scores(result)
  print(
    '\ncommand: python benchmarks/emergence.py '
    f'{" ".join(argv if argv is not None else sys.argv[1:])}'
  )
  print(
    f'runs under {root}, {total} steps each'
    + (f', every variant with the arguments {args.base!r}' if args.base else '')
    + '\n'
  )
  print(tables(results))


if __name__ == '__main__':
  main()
