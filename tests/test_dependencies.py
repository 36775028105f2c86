"""The package's layers and extras.

Layers (lower never imports higher): groupvit_jax (the core) < input_pipeline, evaluation <
references (PyTorch test references) < benchmarks < tests. groupvit_jax/main.py (the trainer
entry point) is the one core module allowed to meet data and evaluation.

Extras: the core (models, checkpoints, convert, load_pretrained, tokenizer, segment, losses, train
step) installs and runs without the `train` and `dev` extras: no tensorflow, spaCy, clu or torch.
The trainer (`groupvit_jax.main`) imports the data pipeline and evaluation, but loads tensorflow
and clu only when a run starts, so the recipes in configs/ load without the extras too.

Both are checked statically (every import statement, function-local ones included) and by importing
in a fresh interpreter where the forbidden packages cannot be imported.
"""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

UPPER = ('evaluation', 'input_pipeline', 'references', 'benchmarks', 'tests', 'configs')
# Directory -> top-level packages that nothing under it may import.
FORBIDDEN = {
  'groupvit_jax': set(UPPER),
  'input_pipeline': {'references', 'benchmarks', 'tests'},
  'evaluation': {'references', 'benchmarks', 'tests'},
  'configs': {'references', 'benchmarks', 'tests'},
  'references': {'benchmarks', 'tests'},
  'benchmarks': {'tests'},
}
# The trainer: the only core module that may import the data pipeline and evaluation.
LAYER_EXEMPT = {'groupvit_jax/main.py'}
TRAIN_ONLY = ('groupvit_jax.main',)
# Distributions of the `train` and `dev` extras, as import names.
EXTRAS = (
  'tensorflow',
  'tensorflow_text',
  'tensorflow_datasets',
  'spacy',
  'en_core_web_sm',
  'clu',
  'tensorboard',
  'pycocotools',
  'torch',
  'torchvision',
  'transformers',
  'clip',
)
# What the core's users import (must exist and import with only the core installed).
CORE_API = (
  'groupvit_jax',
  'groupvit_jax.convert',
  'groupvit_jax.pretrained',
  'groupvit_jax.losses',
  'groupvit_jax.train_step',
  'groupvit_jax.tokenizer',
  'groupvit_jax.prompts',
  'groupvit_jax.segmenter',
)


def _imported_modules(rel: str, source: str) -> list[tuple[int, str]]:
  """(line, dotted module) for every import in `source` (the file `rel`, relative to the
  repository): statements at any depth, relative ones resolved, and importlib.import_module /
  __import__ calls with a literal name."""
  tree = ast.parse(source, filename=rel)
  package = '.'.join(pathlib.PurePosixPath(rel).parts[:-1])
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found += [(node.lineno, alias.name) for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package.split('.')[: len(package.split('.')) - node.level + 1]
        found.append((node.lineno, '.'.join(base + ([node.module] if node.module else []))))
      else:
        found.append((node.lineno, node.module))
    elif (
      isinstance(node, ast.Call)
      and node.args
      and isinstance(node.args[0], ast.Constant)
      and isinstance(node.args[0].value, str)
      and (
        (isinstance(node.func, ast.Attribute) and node.func.attr == 'import_module')
        or (isinstance(node.func, ast.Name) and node.func.id in ('import_module', '__import__'))
      )
    ):
      found.append((node.lineno, node.args[0].value))
  return found


@pytest.mark.parametrize('directory', sorted(FORBIDDEN))
def test_imports_point_down_the_layers(directory):
  violations = []
  for path in sorted((REPO / directory).rglob('*.py')):
    rel = path.relative_to(REPO).as_posix()
    if rel in LAYER_EXEMPT:
      continue
    for line, module in _imported_modules(rel, path.read_text()):
      if module.split('.')[0] in FORBIDDEN[directory]:
        violations.append(f'{rel}:{line} imports {module}')
  assert not violations, (
    f'{directory}/ may not import {sorted(FORBIDDEN[directory])}:\n' + '\n'.join(violations)
  )


def test_import_scan_sees_local_relative_and_dynamic_imports():
  source = textwrap.dedent("""
      import os
      from . import losses
      from ..ops import resize
      def f():
        from evaluation import metrics
        import importlib
        return importlib.import_module('benchmarks.eval'), __import__('tests')
  """)
  assert [m for _, m in _imported_modules('groupvit_jax/models/probe.py', source)] == [
    'os',
    'groupvit_jax.models',
    'groupvit_jax.ops',
    'evaluation',
    'importlib',
    'benchmarks.eval',
    'tests',
  ]


# A blocked package looks uninstalled: `import x` raises ModuleNotFoundError and
# importlib.util.find_spec('x') returns None (etils, under orbax, probes for tensorflow that way; a
# meta_path finder that raised would break the probe instead of answering it).
_BLOCKER = """
import sys
for _name in BLOCKED:
  sys.modules[_name] = None
"""


def _run_blocked(blocked, body: str, timeout: float = 600) -> str:
  """Runs `body` in a fresh interpreter (repository root on sys.path) where the `blocked` top-level
  packages cannot be imported; returns its stdout, failing on a non-zero exit."""
  script = f'BLOCKED = {tuple(blocked)!r}\n' + _BLOCKER + textwrap.dedent(body)
  env = dict(
    os.environ,
    PYTHONPATH=os.pathsep.join(
      [str(REPO)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]
    ),
  )
  result = subprocess.run(
    [sys.executable, '-c', script],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert result.returncode == 0, f'stdout:\n{result.stdout}\nstderr:\n{result.stderr}'
  return result.stdout


# Imports every module of groupvit_jax except `SKIP`; prints the failures, exits 1 if any.
_IMPORT_ALL = """
import importlib, pkgutil, traceback
import groupvit_jax
failed = []
names = sorted(m.name for m in pkgutil.walk_packages(groupvit_jax.__path__, 'groupvit_jax.'))
for name in ['groupvit_jax', *names]:
  if name in SKIP:
    continue
  try:
    importlib.import_module(name)
  except Exception:
    failed.append(name)
    print(f'--- {name}:', traceback.format_exc(limit=-3))
print('imported', len(names) + 1 - len(failed) - len(SKIP), 'modules; failed:', failed)
"""


def test_core_modules_import_without_the_upper_layers():
  out = _run_blocked(
    UPPER, f'SKIP = {set(TRAIN_ONLY)!r}\n' + _IMPORT_ALL + 'raise SystemExit(1 if failed else 0)\n'
  )
  assert 'failed: []' in out


def test_recipes_load_without_the_train_and_dev_extras():
  """Every recipe builds its config (and the trainer module imports) where only the core is
  installed, e.g. the accelerator image: tensorflow and clu load only when a run starts."""
  out = _run_blocked(
    EXTRAS,
    """
import importlib.util, pathlib, sys
import groupvit_jax.main
from groupvit_jax.config_lib import build_model_config
for path in sorted(pathlib.Path('configs').glob('*.py')):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  build_model_config(module.get_config())
loaded = sorted(n for n, m in sys.modules.items() if m is not None and n.split('.')[0] in EXTRAS)
assert not loaded, loaded
print('recipes ok')
""".replace('EXTRAS', repr(EXTRAS)),
  )
  assert 'recipes ok' in out


# The end-to-end run of the core alone. Also run by hand in a venv with only the core installed.
CORE_SCRIPT = """
import importlib, os, sys, tempfile

import numpy as np

for name in CORE_API:
  importlib.import_module(name)

import jax

import groupvit_jax
from groupvit_jax.checkpoints import store
from groupvit_jax.models import init_variables

cfg = groupvit_jax.GroupViTConfig(
    image=groupvit_jax.ImageEncoderConfig(
        image_size=64, patch_size=16, width=64, num_heads=2, depths=(1, 1, 1),
        num_group_tokens=(8, 4, 0), num_output_groups=(8, 4), drop_path_rate=0.0),
    text=groupvit_jax.TextEncoderConfig(width=32, num_layers=1, num_heads=2, context_length=16),
    projection_dim=32, projection_hidden_dim=64)
variables = jax.jit(lambda rng: init_variables(groupvit_jax.GroupViT(cfg), rng))(
    jax.random.key(0))
with tempfile.TemporaryDirectory() as tmp:
  directory = store.save_model(os.path.join(tmp, 'model'), cfg, variables)
  model = groupvit_jax.load_pretrained(directory)

text = model.encode_text(['a', 'b'])
assert text.shape == (2, 32), text.shape
np.testing.assert_allclose(np.linalg.norm(text, axis=-1), 1.0, rtol=1e-5)
image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
assert model.encode_image(image[None]).shape == (1, 32)
labels = model.segment(image, ['a', 'b'])
assert labels.shape == (40, 60), labels.shape
assert set(np.unique(labels)) <= {0, 1}, np.unique(labels)
labels = model.segment(image, ['a', 'b'], background_threshold=0.5, mode='whole')
assert labels.shape == (40, 60) and set(np.unique(labels)) <= {0, 1, 2}, np.unique(labels)
loaded = sorted(name for name, module in sys.modules.items()
                if module is not None and name.split('.')[0] in EXTRAS + UPPER)
assert not loaded, loaded
print('core end-to-end ok')
"""


@pytest.mark.slow
def test_core_runs_without_the_train_and_dev_extras():
  """Every core module imports, and a model directory loads, embeds text and segments an image,
  with the `train`/`dev` extras and the upper layers unimportable."""
  header = f'CORE_API = {CORE_API!r}\nEXTRAS = {EXTRAS!r}\nUPPER = {UPPER!r}\n'
  out = _run_blocked(
    EXTRAS + UPPER,
    header
    + f'SKIP = {set(TRAIN_ONLY)!r}\n'
    + _IMPORT_ALL
    + CORE_SCRIPT
    + 'raise SystemExit(1 if failed else 0)\n',
  )
  assert 'failed: []' in out and 'core end-to-end ok' in out
