"""Converts a released GroupViT, CLIP, DINO or MAE checkpoint into a groupvit_jax model directory.

    python -m groupvit_jax.convert --source group_vit_gcc_yfcc_30e.pth --output DIR
    python -m groupvit_jax.convert --source ViT-B-16.pt --output DIR        # OpenAI CLIP
    python -m groupvit_jax.convert --source dino_vits16.pth --output DIR    # DINO backbone
    python -m groupvit_jax.convert --source mae_pretrain_vit_base_full.pth --output DIR

SRC is any of (no PyTorch needed to read them):
- GroupViT: an NVlabs `.pth`, a Hugging Face `GroupViTModel` directory, or a bare state dict;
- CLIP: an OpenAI TorchScript `.pt` or state dict, an open_clip `.bin` / `.safetensors` / hub
  directory / training checkpoint (`{'state_dict': ...}`, `module.` prefixes), a Hugging Face
  `CLIPModel` directory;
- DINO / timm ViT: a DINO hub backbone `.pth`, a DINO training checkpoint (`teacher` by default,
  `--dino_branch student`), a Hugging Face `ViTModel` directory;
- MAE: an MAE `.pth` (`{'model': ...}`; encoder only, or `_full` with the decoder), a Hugging
  Face `ViTMAEForPreTraining` directory.

The model kind and architecture come from the file (config.json, the NVlabs embedded config,
open_clip's config or params.txt, OpenAI's buffers), else from tensor shapes; `--set key=value`
overrides what shapes cannot tell (e.g. `--set image.num_heads=8` for a GroupViT, `--set
vision.num_heads=8` for a CLIP, `--set num_heads=6` for a ViT, `--set encoder.num_heads=12` for an
MAE). A CLIP state dict that declares no activation needs `--quick_gelu` or `--gelu`. Every
missing, unused or misshapen tensor is an error that lists them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

import jax

from groupvit_jax.checkpoints import keymaps, sources, store, tower_sources, towers
from groupvit_jax.models.config import ConfigError

KINDS = ('auto', 'groupvit', 'clip', 'vit', 'mae')


def _apply_overrides(cfg: store.ModelConfig, overrides: list[str]) -> store.ModelConfig:
  d = cfg.to_dict()
  for item in overrides:
    if '=' not in item:
      raise ValueError(f'--set expects key=value, got {item!r}')
    key, value = item.split('=', 1)
    node, parts = d, key.split('.')
    for p in parts[:-1]:
      if p not in node or not isinstance(node[p], dict):
        raise ValueError(f'--set {key}: unknown config section {p!r}')
      node = node[p]
    if parts[-1] not in node:
      raise ValueError(f'--set {key}: unknown key; valid: {sorted(node)}')
    if value.lower() in ('true', 'false'):  # Python spelling too: a string 'False' is truthy
      value = value.lower()
    node[parts[-1]] = json.loads(value) if value[:1] in '[{0123456789-tfn' else value
  return type(cfg).from_dict(d)


def _load_groupvit(source: str) -> tuple[store.ModelConfig, Any, dict[str, Any]]:
  loaded = sources.load_source(source)
  abstract_of = lambda cfg: keymaps.nvlabs_to_variables(
    loaded.state_dict, store.abstract_variables(cfg)
  )
  return loaded.config, abstract_of, {'kind': loaded.kind, 'config_origin': loaded.config_origin}


def _load_tower(
  source: str, family: str | None, quick_gelu: bool | None, dino_branch: str
) -> tuple[store.ModelConfig, Any, dict[str, Any]]:
  src = tower_sources.load_tower_source(
    source, family=family, quick_gelu=quick_gelu, dino_branch=dino_branch
  )
  if src.family == 'clip' and 'activation' not in src.declared:
    raise ConfigError(
      f'{source}: the file does not say whether this CLIP uses QuickGELU or GELU; pass '
      '--quick_gelu (OpenAI weights, open_clip "-quickgelu" models) or --gelu (most LAION '
      'open_clip models)'
    )
  notes = list(src.notes)
  cfg = towers.config_from_source(src.family, src.state_dict, src.declared, src.kind, notes)
  for note in notes:
    logging.info('%s: %s', source, note)
  to_variables = lambda cfg: towers.TO_VARIABLES[src.family](
    src.state_dict, store.abstract_variables(cfg)
  )
  info = {'kind': src.kind, 'family': src.family, 'declared': src.declared, 'notes': notes}
  return cfg, to_variables, info


def convert(
  source: str,
  output: str,
  overrides: list[str] = (),
  overwrite: bool = False,
  *,
  kind: str = 'auto',
  quick_gelu: bool | None = None,
  dino_branch: str = 'teacher',
) -> store.ModelConfig:
  """Converts `source` into the model directory `output`; returns the model config.

  Args:
    source: a checkpoint file or directory (see the module docstring).
    output: the model directory to write (`groupvit_jax.load_pretrained` reads it).
    overrides: 'key=value' strings applied to the inferred config.
    kind: 'auto' (from the file), or 'groupvit', 'clip', 'vit' (DINO / timm) or 'mae' to insist;
      'vit' on an MAE file reads its encoder only.
    quick_gelu: a CLIP's activation where the file declares none (True: QuickGELU).
    dino_branch: 'teacher' or 'student' of a DINO training checkpoint.

  Raises:
    ValueError (ConfigError, CheckpointMismatchError, TowerSourceError) naming what does not fit;
    FileNotFoundError; FileExistsError when `output` holds a model and not `overwrite`.
  """
  if kind not in KINDS:
    raise ValueError(f'kind must be one of {KINDS}, got {kind!r}')
  if kind == 'groupvit':
    cfg, to_variables, info = _load_groupvit(source)
  else:
    try:
      cfg, to_variables, info = _load_tower(
        source, None if kind == 'auto' else kind, quick_gelu, dino_branch
      )
    except tower_sources.NotATowerError:
      if kind != 'auto':
        raise
      cfg, to_variables, info = _load_groupvit(source)  # read again: GroupViT has its own reader
  cfg = _apply_overrides(cfg, list(overrides)) if overrides else cfg
  variables = jax.tree.map(jax.numpy.asarray, to_variables(cfg))
  info.update(
    source=source,
    model_kind=store.kind_of(cfg),
    overrides=list(overrides),
    converted_at=time.strftime('%Y-%m-%dT%H:%M:%S'),
  )
  store.save_model(output, cfg, variables, info, overwrite=overwrite)
  return cfg


def describe(cfg: store.ModelConfig) -> str:
  """One line on a converted model: kind, parameter count, sizes."""
  n = sum(x.size for x in jax.tree.leaves(store.abstract_variables(cfg)['params']))
  kind = store.kind_of(cfg)
  if kind == 'groupvit':
    return (
      f'GroupViT, {n:,} parameters; image {cfg.image.depths} stages '
      f'{cfg.image.num_group_tokens} group tokens, text {cfg.text.num_layers} layers'
    )
  if kind == 'clip':
    v, t = cfg.vision, cfg.text
    return (
      f'CLIP, {n:,} parameters; image ViT {v.width}x{v.depth} /{v.patch_size} at {v.image_size} '
      f'px ({v.activation}), text {t.width}x{t.num_layers}, embedding {cfg.embed_dim}'
    )
  vit = cfg.encoder if kind == 'mae' else cfg
  head = f'ViT {vit.width}x{vit.depth} /{vit.patch_size} at {vit.image_size} px'
  if kind == 'mae':
    decoder = (
      f'decoder {cfg.decoder_width}x{cfg.decoder_depth}' if cfg.decoder_depth else 'no decoder'
    )
    return f'MAE, {n:,} parameters; encoder {head}, {decoder}'
  return f'DINO/timm ViT, {n:,} parameters; {head}'


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--source', required=True, help='checkpoint file or directory')
  parser.add_argument('--output', required=True, help='model directory to write')
  parser.add_argument(
    '--kind', default='auto', choices=KINDS, help='model kind (default: from the file)'
  )
  parser.add_argument(
    '--set',
    action='append',
    default=[],
    metavar='KEY=VALUE',
    help='override an inferred config value, e.g. image.num_heads=8',
  )
  act = parser.add_mutually_exclusive_group()
  act.add_argument('--quick_gelu', dest='quick_gelu', action='store_const', const=True)
  act.add_argument('--gelu', dest='quick_gelu', action='store_const', const=False)
  parser.add_argument('--dino_branch', default='teacher', choices=('teacher', 'student'))
  parser.add_argument('--overwrite', action='store_true')
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format='%(message)s')
  try:
    cfg = convert(
      args.source,
      args.output,
      args.set,
      args.overwrite,
      kind=args.kind,
      quick_gelu=args.quick_gelu,
      dino_branch=args.dino_branch,
    )
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'wrote {args.output}: {describe(cfg)}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
