"""The on-disk layout of a converted / exported model: an orbax checkpoint plus its config.

DIR/model_config.json   GroupViTConfig.to_json()
DIR/variables/          orbax StandardCheckpointer tree {'params', 'batch_stats'}
DIR/source.json         where it came from (optional)
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from groupvit_jax.models.config import GroupViTConfig
from groupvit_jax.models.groupvit import GroupViT, init_variables

CONFIG_FILE = 'model_config.json'
VARIABLES_DIR = 'variables'
# Model options that were removed (docs/results.md, "Retired options"), with the value that is the
# released behaviour: model directories written before the removal still load when they hold that
# value; any other value names the option and the last commit that had it.
RETIRED_MODEL_KEYS = {('image', 'group_token_residual'): (True, 'ae3acf4')}


def save_model(
  directory: str,
  config: GroupViTConfig,
  variables: dict[str, Any],
  source_info: dict[str, Any] | None = None,
  overwrite: bool = False,
) -> str:
  """Writes `variables` ({'params', 'batch_stats'}) and `config` to `directory`."""
  directory = os.path.abspath(directory)
  target = os.path.join(directory, VARIABLES_DIR)
  if os.path.exists(target) and not overwrite:
    raise FileExistsError(f'{target} exists; pass overwrite=True (--overwrite) to replace it')
  os.makedirs(directory, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(target, variables, force=overwrite)
    ckptr.wait_until_finished()
  with open(os.path.join(directory, CONFIG_FILE), 'w') as f:
    f.write(config.to_json())
  if source_info is not None:
    with open(os.path.join(directory, 'source.json'), 'w') as f:
      json.dump(source_info, f, indent=2, sort_keys=True)
  return directory


def load_config(directory: str) -> GroupViTConfig:
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
      f'{path} not found: {directory} is not a model directory written by '
      'groupvit_jax.convert or the trainer'
    )
  with open(path) as f:
    return GroupViTConfig.from_dict(_without_retired_keys(json.load(f), path))


def _without_retired_keys(config: dict[str, Any], path: str) -> dict[str, Any]:
  """`config` (a model_config.json) without retired keys that hold the released behaviour."""
  for (section, key), (released, commit) in RETIRED_MODEL_KEYS.items():
    part = config.get(section, {})
    if key not in part:
      continue
    if part[key] != released:
      raise ValueError(
        f'{path}: model.{section}.{key}={part[key]!r} is a retired option (the '
        f'library now always uses {released!r}); load this model with the commit '
        f'that had it: git checkout {commit}'
      )
    del part[key]
  return config


def abstract_variables(config: GroupViTConfig) -> dict[str, Any]:
  """Shapes and dtypes of the model's variables, without allocating them."""
  model = GroupViT(config)
  return jax.eval_shape(lambda rng: init_variables(model, rng), jax.random.key(0))


def load_model(directory: str) -> tuple[GroupViTConfig, dict[str, Any]]:
  """Reads what `save_model` wrote; checks every shape against the config."""
  directory = os.path.abspath(directory)
  config = load_config(directory)
  abstract = abstract_variables(config)
  with ocp.StandardCheckpointer() as ckptr:
    variables = ckptr.restore(os.path.join(directory, VARIABLES_DIR), abstract)
  return config, variables
