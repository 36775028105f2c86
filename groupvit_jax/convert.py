"""Converts a released GroupViT checkpoint into a groupvit_jax model directory.

    python -m groupvit_jax.convert --source group_vit_gcc_yfcc_30e.pth --output DIR
    python -m groupvit_jax.convert --source hf_groupvit_dir/ --output DIR

SRC is an NVlabs `.pth`, a Hugging Face `GroupViTModel` directory, or a bare state dict. The
architecture comes from the HF config.json or the NVlabs embedded config, else from tensor shapes;
`--set key=value` overrides what shapes cannot tell (e.g. `--set image.num_heads=8`). Every
missing, unused or misshapen tensor is an error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax

from groupvit_jax.checkpoints import keymaps, sources, store
from groupvit_jax.models.config import GroupViTConfig


def _apply_overrides(cfg: GroupViTConfig, overrides: list[str]) -> GroupViTConfig:
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
  return GroupViTConfig.from_dict(d)


def convert(
  source: str, output: str, overrides: list[str] = (), overwrite: bool = False
) -> GroupViTConfig:
  """Converts `source` into `output`; returns the model config. Raises on any mismatch."""
  loaded = sources.load_source(source)
  cfg = _apply_overrides(loaded.config, list(overrides)) if overrides else loaded.config
  abstract = store.abstract_variables(cfg)
  variables = keymaps.nvlabs_to_variables(loaded.state_dict, abstract)
  variables = jax.tree.map(jax.numpy.asarray, variables)
  info = {
    'source': source,
    'kind': loaded.kind,
    'config_origin': loaded.config_origin,
    'overrides': list(overrides),
    'converted_at': time.strftime('%Y-%m-%dT%H:%M:%S'),
  }
  store.save_model(output, cfg, variables, info, overwrite=overwrite)
  return cfg


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--source', required=True, help='.pth / .bin / .safetensors file or HF dir')
  parser.add_argument('--output', required=True, help='model directory to write')
  parser.add_argument(
    '--set',
    action='append',
    default=[],
    metavar='KEY=VALUE',
    help='override an inferred config value, e.g. image.num_heads=8',
  )
  parser.add_argument('--overwrite', action='store_true')
  args = parser.parse_args(argv)
  try:
    cfg = convert(args.source, args.output, args.set, args.overwrite)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  n = sum(x.size for x in jax.tree.leaves(store.abstract_variables(cfg)['params']))
  print(
    f'wrote {args.output}: {n:,} parameters; image {cfg.image.depths} stages '
    f'{cfg.image.num_group_tokens} group tokens, text {cfg.text.num_layers} layers'
  )
  return 0


if __name__ == '__main__':
  sys.exit(main())
