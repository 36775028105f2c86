"""The on-disk layout of a converted / exported model: an orbax checkpoint plus its config.

DIR/model_config.json   the model's config: GroupViTConfig.to_json() for a GroupViT; for a
                        pretrained tower {"model_kind": "clip" | "vit" | "mae", ...its config}
DIR/variables/          orbax StandardCheckpointer tree ({'params', 'batch_stats'} for GroupViT,
                        {'params'} for the towers)
DIR/source.json         where it came from (optional)

An SCG model directory ({"model_kind": "scg", ...}) holds all it needs in one tree:
{'clip': the CLIP's variables, 'grouper': the grouper's, 'params': {'region_tokens' [M, W],
'logit_scale' []}} and, with dataset-level centroids, 'centroids' [M, C]. A ZeroSeg model directory
({"model_kind": "zeroseg", ...}) holds {'params': the student's, 'teacher': the teacher CLIP's
variables} (the teacher's text tower names the segments).

A model_config.json without `model_kind` is a GroupViT: directories written before the towers
existed load unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from groupvit_jax.models.clip import CLIP, CLIPConfig
from groupvit_jax.models.config import GroupViTConfig
from groupvit_jax.models.groupvit import GroupViT, init_variables
from groupvit_jax.models.mae import MAE, MAEConfig
from groupvit_jax.models.scg import GROUPER_KINDS, SCGConfig, init_params
from groupvit_jax.models.vit import VisionTransformer, ViTConfig
from groupvit_jax.models.zeroseg import ZeroSegConfig
from groupvit_jax.models.zeroseg import init_params as init_student

CONFIG_FILE = 'model_config.json'
VARIABLES_DIR = 'variables'
# Model options that were removed (docs/results.md, "Retired options"), with the value that is the
# released behaviour: model directories written before the removal still load when they hold that
# value; any other value names the option and the last commit that had it.
RETIRED_MODEL_KEYS = {('image', 'group_token_residual'): (True, 'ae3acf4')}
# model_kind -> config class; 'vit' is a DINO / timm ViT.
CONFIG_CLASSES = {
  'groupvit': GroupViTConfig,
  'clip': CLIPConfig,
  'vit': ViTConfig,
  'mae': MAEConfig,
  'scg': SCGConfig,
  'zeroseg': ZeroSegConfig,
}
ModelConfig = GroupViTConfig | CLIPConfig | ViTConfig | MAEConfig | SCGConfig | ZeroSegConfig


def kind_of(config: ModelConfig) -> str:
  """'groupvit', 'clip', 'vit', 'mae', 'scg' or 'zeroseg' for a model config; TypeError for
  anything else."""
  for kind, cls in CONFIG_CLASSES.items():
    if type(config) is cls:
      return kind
  raise TypeError(f'not a model config: {type(config).__name__}')


def _config_json(config: ModelConfig) -> str:
  kind = kind_of(config)
  if kind == 'groupvit':
    return config.to_json()
  return json.dumps({'model_kind': kind, **config.to_dict()}, indent=2, sort_keys=True)


def save_model(
  directory: str,
  config: ModelConfig,
  variables: dict[str, Any],
  source_info: dict[str, Any] | None = None,
  overwrite: bool = False,
) -> str:
  """Writes `variables` and `config` (a GroupViT's or a tower's) to `directory`."""
  text = _config_json(config)
  directory = os.path.abspath(directory)
  target = os.path.join(directory, VARIABLES_DIR)
  if os.path.exists(target) and not overwrite:
    raise FileExistsError(f'{target} exists; pass overwrite=True (--overwrite) to replace it')
  os.makedirs(directory, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(target, variables, force=overwrite)
    ckptr.wait_until_finished()
  with open(os.path.join(directory, CONFIG_FILE), 'w') as f:
    f.write(text)
  if source_info is not None:
    with open(os.path.join(directory, 'source.json'), 'w') as f:
      json.dump(source_info, f, indent=2, sort_keys=True)
  return directory


def load_config(directory: str) -> ModelConfig:
  """The config of a model directory: a GroupViTConfig, CLIPConfig, ViTConfig or MAEConfig."""
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
      f'{path} not found: {directory} is not a model directory written by '
      'groupvit_jax.convert or the trainer'
    )
  with open(path) as f:
    config = json.load(f)
  kind = config.pop('model_kind', 'groupvit')
  if kind not in CONFIG_CLASSES:
    raise ValueError(f'{path}: unknown model_kind {kind!r}; known: {sorted(CONFIG_CLASSES)}')
  if kind == 'groupvit':
    return GroupViTConfig.from_dict(_without_retired_keys(config, path))
  return CONFIG_CLASSES[kind].from_dict(config)


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


def with_dtype(config: ModelConfig, dtype: str) -> ModelConfig:
  """`config` with the compute dtype ('float32' | 'bfloat16') of its towers replaced."""
  if dtype not in ('float32', 'bfloat16'):
    raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
  if isinstance(config, (GroupViTConfig, ViTConfig)):
    return dataclasses.replace(config, dtype=dtype)
  if isinstance(config, CLIPConfig):
    return dataclasses.replace(config, vision=dataclasses.replace(config.vision, dtype=dtype))
  if isinstance(config, SCGConfig):
    return dataclasses.replace(
      config, clip=with_dtype(config.clip, dtype), grouper=with_dtype(config.grouper, dtype)
    )
  if isinstance(config, ZeroSegConfig):
    mae = with_dtype(config.mae, dtype)
    return dataclasses.replace(config, teacher=with_dtype(config.teacher, dtype), mae=mae)
  return dataclasses.replace(config, encoder=dataclasses.replace(config.encoder, dtype=dtype))


def build_model(config: ModelConfig):
  """The Flax module of a model config: GroupViT, CLIP, VisionTransformer or MAE."""
  modules = {'groupvit': GroupViT, 'clip': CLIP, 'vit': VisionTransformer, 'mae': MAE}
  kind = kind_of(config)
  if kind not in modules:
    raise TypeError(f'a {kind} model is not one Flax module (see groupvit_jax.models.{kind})')
  return modules[kind](config)


def _example_inputs(config: ModelConfig) -> tuple[Any, ...]:
  """Inputs that make `init` create every variable of a tower (batch 1, training size)."""
  if isinstance(config, CLIPConfig):
    s = config.vision.image_size
    text = jnp.zeros((1, config.text.context_length), jnp.int32)
    return jnp.zeros((1, s, s, config.vision.in_channels)), text
  vit = config.encoder if isinstance(config, MAEConfig) else config
  pixels = jnp.zeros((1, vit.image_size, vit.image_size, vit.in_channels))
  if isinstance(config, MAEConfig):
    return pixels, jnp.zeros((1, vit.grid_size**2))  # noise: the decoder needs a masked pass
  return (pixels,)


def init_model(config: ModelConfig, rng: jax.Array) -> dict[str, Any]:
  """Freshly initialised variables of any model kind."""
  if isinstance(config, SCGConfig):
    clip_rng, grouper_rng = jax.random.split(rng)
    variables = {
      'clip': init_model(config.clip, clip_rng),
      'grouper': init_model(config.grouper, grouper_rng),
    }
    variables['params'] = init_params(config, variables['clip']['params'])
    if config.centroids == 'dataset':
      c = config.grouper_vit.width
      variables['centroids'] = jnp.zeros((config.num_regions, c), jnp.float32)
    return variables
  if isinstance(config, ZeroSegConfig):
    student_rng, teacher_rng = jax.random.split(rng)
    return {
      'params': init_student(config, student_rng),
      'teacher': init_model(config.teacher, teacher_rng),
    }
  model = build_model(config)
  if isinstance(config, GroupViTConfig):
    return init_variables(model, rng)
  return model.init(rng, *_example_inputs(config))


def abstract_variables(config: ModelConfig) -> dict[str, Any]:
  """Shapes and dtypes of the model's variables, without allocating them."""
  return jax.eval_shape(lambda rng: init_model(config, rng), jax.random.key(0))


def load_scg_towers(
  clip_dir: str, grouper_dir: str, dtype: str | None = None, **overrides
) -> tuple[SCGConfig, dict[str, Any], dict[str, Any]]:
  """An SCGConfig around a CLIP directory and a grouper directory (a ViT, MAE or CLIP), with
  `overrides` of its other fields and an optional compute dtype; returns (config, the CLIP's
  variables, the grouper's variables)."""
  clip_cfg, clip_vars = load_model(clip_dir)
  grouper_cfg, grouper_vars = load_model(grouper_dir)
  if kind_of(clip_cfg) != 'clip':
    raise ValueError(f'{clip_dir} holds a {kind_of(clip_cfg)}, not a CLIP')
  kind = kind_of(grouper_cfg)
  if kind not in GROUPER_KINDS:
    raise ValueError(
      f'{grouper_dir} holds a {kind}: the grouper must be one of {sorted(GROUPER_KINDS)}'
    )
  cfg = SCGConfig(clip=clip_cfg, grouper_kind=kind, grouper=grouper_cfg, **overrides)
  if dtype is not None:
    cfg = with_dtype(cfg, dtype)
  cfg.validate()
  return cfg, clip_vars, grouper_vars


def load_model(directory: str) -> tuple[ModelConfig, dict[str, Any]]:
  """Reads what `save_model` wrote; checks every shape against the config."""
  directory = os.path.abspath(directory)
  config = load_config(directory)
  abstract = abstract_variables(config)
  with ocp.StandardCheckpointer() as ckptr:
    variables = ckptr.restore(os.path.join(directory, VARIABLES_DIR), abstract)
  return config, variables
