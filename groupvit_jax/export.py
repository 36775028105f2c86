"""Exports a groupvit_jax model directory (converted or trained) to the released formats.

    python -m groupvit_jax.export --model DIR --format hf --output hf_dir/
    python -m groupvit_jax.export --model DIR --format nvlabs --output model.pth

`hf` writes a Hugging Face `GroupViTModel` directory (config.json + model.safetensors) that
`GroupViTModel.from_pretrained` loads with no missing or unexpected keys. `nvlabs` writes the
release's `.pth` ({'model': state_dict, 'config': {'model': ...}}) without needing PyTorch; it
loads with `torch.load(path, weights_only=True)`.

Exporting and converting back (`groupvit_jax.convert`) gives the same config and bitwise the same
variables. A config value that the format cannot carry is an error naming it; training-only values
(drop path, Gumbel noise, BatchNorm momentum, temperature initialisation and cap, the multi-label
temperature) may be dropped with `--allow-lossy`. How the model is run (dtype, remat,
bn_axis_name) is not part of either format and is not exported.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import os
import sys
from typing import Any

import numpy as np

from groupvit_jax.checkpoints import infer, keymaps, store
from groupvit_jax.checkpoints.torch_write import save_torch_archive
from groupvit_jax.models.config import ConfigError, GroupViTConfig

FORMATS = ('hf', 'nvlabs')
# How to run the model, not what it computes: neither format has a place for them.
RUNTIME_FIELDS = frozenset({'dtype', 'remat', 'bn_axis_name'})
# Values that only change training; `allow_lossy` may drop them.
TRAINING_FIELDS = frozenset(
  {
    'image.drop_path_rate',
    'image.gumbel',
    'image.gumbel_tau',
    'bn_momentum',
    'logit_scale_init',
    'logit_scale_max',
    'multi_label',
  }
)
HF_CONFIG = 'config.json'
HF_WEIGHTS = 'model.safetensors'
# Weight files a stale HF directory may hold that the loaders would prefer or mix in.
_HF_STALE = ('model.safetensors.index.json', 'pytorch_model.bin', 'pytorch_model.bin.index.json')


class ExportError(ValueError):
  """The model holds something the target format cannot express."""


@dataclasses.dataclass
class Exported:
  path: str  # the HF directory or the .pth file written
  config: GroupViTConfig  # what converting `path` back gives
  dropped: list[str]  # training-only fields not carried (only with allow_lossy)
  num_tensors: int


def _flat(cfg: GroupViTConfig) -> dict[str, Any]:
  out = {}
  for k, v in cfg.to_dict().items():
    if isinstance(v, dict):
      out.update({f'{k}.{kk}': vv for kk, vv in v.items()})
    else:
      out[k] = v
  out['image.num_output_groups'] = tuple(
    cfg.image.num_output_groups[: cfg.image.num_grouping_stages]
  )  # entries past the grouping stages are never read
  return out


def _moot(cfg: GroupViTConfig) -> set[str]:
  """Fields with no effect on this architecture (a converted model holds the inferred value)."""
  im, moot = cfg.image, set()
  if im.num_grouping_stages == 0:
    moot |= {
      f'image.{f}'
      for f in (
        'assign_mlp_ratio',
        'pre_assign_attention',
        'pre_assign_mlp_ratio',
        'hard_assignment',
        'gumbel',
        'gumbel_tau',
        'assign_eps',
      )
    }
  if im.num_grouping_stages < 2:
    moot.add('image.group_projector')
  if not im.pre_assign_attention:
    moot.add('image.pre_assign_mlp_ratio')
  if not im.gumbel:
    moot.add('image.gumbel_tau')
  if cfg.projection_layers < 2:
    moot |= {'projection_hidden_dim', 'bn_momentum', 'bn_eps'}
  if cfg.projection_layers == 0:
    moot.add('projection_dim')
  return moot


def _reimport(fmt: str, sd: dict[str, np.ndarray], declared: dict[str, Any]) -> GroupViTConfig:
  """The config `sources.load_source` infers from the NVlabs-named `sd` and declared config."""
  cfg = infer.config_from_shapes(sd)
  if fmt == 'hf':
    return infer.apply_hf_config(cfg, declared)
  return infer.apply_nvlabs_config(cfg, declared['model'])


def _check_round_trip(
  fmt: str, cfg: GroupViTConfig, back: GroupViTConfig, allow_lossy: bool
) -> list[str]:
  """Raises ExportError naming every field that would not come back; returns the training-only
  fields dropped under `allow_lossy`."""
  ours, theirs, moot = _flat(cfg), _flat(back), _moot(cfg)
  diff = sorted(
    k for k in ours if k not in RUNTIME_FIELDS and k not in moot and ours[k] != theirs[k]
  )
  lost = [f'{k}={ours[k]!r} (would load as {theirs[k]!r})' for k in diff]
  if any(k not in TRAINING_FIELDS for k in diff):
    raise ExportError(f'the {fmt} format cannot express ' + '; '.join(lost))
  if diff and not allow_lossy:
    raise ExportError(
      f'the {fmt} format cannot hold these training-only values: ' + '; '.join(lost) + '; pass '
      'allow_lossy=True (--allow-lossy) to export without them'
    )
  return diff


def _prepare_output(output: str, fmt: str, overwrite: bool) -> None:
  if fmt == 'nvlabs':
    if os.path.isdir(output):
      raise ExportError(f'--output {output} is a directory; the nvlabs format writes a .pth file')
    if os.path.exists(output) and not overwrite:
      raise FileExistsError(f'{output} exists; pass overwrite=True (--overwrite) to replace it')
    return
  if os.path.exists(output) and not os.path.isdir(output):
    raise ExportError(f'--output {output} is a file; the hf format writes a directory')
  if os.path.isdir(output) and os.listdir(output) and not overwrite:
    raise FileExistsError(
      f'{output} exists and is not empty; pass overwrite=True (--overwrite) to replace it'
    )


def _write_hf(output: str, config: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
  from safetensors.numpy import save_file

  os.makedirs(output, exist_ok=True)
  index = os.path.join(output, _HF_STALE[0])
  stale = list(_HF_STALE)
  if os.path.exists(index):  # its shards too
    with open(index) as f:
      stale += sorted(set(json.load(f).get('weight_map', {}).values()))
  for name in stale:
    path = os.path.join(output, name)
    if os.path.isfile(path) and name != HF_WEIGHTS:
      os.remove(path)
  tmp = os.path.join(output, HF_WEIGHTS + '.tmp')
  # As save_pretrained writes it: older transformers reject files without format='pt'.
  save_file(tensors, tmp, metadata={'format': 'pt'})
  os.replace(tmp, os.path.join(output, HF_WEIGHTS))
  tmp = os.path.join(output, HF_CONFIG + '.tmp')
  with open(tmp, 'w') as f:
    json.dump(config, f, indent=2, sort_keys=True)
    f.write('\n')
  os.replace(tmp, os.path.join(output, HF_CONFIG))


def export(
  model_dir: str, fmt: str, output: str, overwrite: bool = False, allow_lossy: bool = False
) -> Exported:
  """Writes the model in `model_dir` (store layout) to `output` in format `fmt` ('hf' or
  'nvlabs'). Raises ExportError (a ValueError) for what the format cannot express,
  FileNotFoundError for a missing model, FileExistsError for an existing output.

  Tensors keep float32 and the release layouts, e.g. a Dense kernel [in, out] is written as
  [out, in]; the fused image q/k/v [C, 3C] becomes three HF projections [C, C].
  """
  if fmt not in FORMATS:
    raise ExportError(f'unknown format {fmt!r}; expected one of {", ".join(FORMATS)}')
  if not os.path.isdir(model_dir):
    raise FileNotFoundError(f'model directory {model_dir} does not exist')
  kind = store.kind_of(store.load_config(model_dir))
  if kind != 'groupvit':
    raise ExportError(
      f'{model_dir} holds a {kind} model; export writes GroupViT models only (a converted '
      'CLIP, DINO or MAE came from files PyTorch users already have)'
    )
  output = os.path.abspath(output)
  _prepare_output(output, fmt, overwrite)
  cfg, variables = store.load_model(model_dir)
  sd = keymaps.variables_to_nvlabs(variables, conv1d_projectors=fmt == 'nvlabs')
  if fmt == 'hf':
    try:
      declared = infer.hf_config_dict(cfg)
    except ConfigError as e:
      raise ExportError(str(e)) from e
    # A GroupViTModel has no multi-label temperature: the round-trip check names what is lost.
    sd.pop('multi_label_logit_scale', None)
  else:
    declared = {'model': infer.nvlabs_config_dict(cfg)}
  back = _reimport(fmt, sd, declared)
  dropped = _check_round_trip(fmt, cfg, back, allow_lossy)
  if dropped:
    logging.warning('Not exported (training-only, no place in the %s format): %s', fmt, dropped)
  if fmt == 'hf':
    tensors = keymaps.nvlabs_to_hf(sd)
    again = keymaps.hf_to_nvlabs(tensors)
    if again.keys() != sd.keys() or any(not np.array_equal(again[k], sd[k]) for k in sd):
      raise AssertionError('keymaps.nvlabs_to_hf is not the inverse of hf_to_nvlabs')
    _write_hf(output, declared, tensors)
  else:
    tensors = sd
    tmp = output + '.tmp'
    os.makedirs(os.path.dirname(output), exist_ok=True)
    save_torch_archive({'model': collections.OrderedDict(sd), 'config': declared}, tmp)
    os.replace(tmp, output)
  return Exported(output, back, dropped, len(tensors))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--model', required=True, help='model directory (convert.py / trainer)')
  parser.add_argument('--format', required=True, help='hf or nvlabs')
  parser.add_argument('--output', required=True, help='HF directory (hf) or .pth file (nvlabs)')
  parser.add_argument('--overwrite', action='store_true')
  parser.add_argument(
    '--allow-lossy',
    action='store_true',
    help='drop training-only values the format cannot hold (e.g. the multi-label temperature)',
  )
  args = parser.parse_args(argv)
  try:
    out = export(args.model, args.format, args.output, args.overwrite, args.allow_lossy)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(
    f'wrote {out.path} ({args.format}): {out.num_tensors} tensors'
    + (f'; dropped {", ".join(out.dropped)}' if out.dropped else '')
  )
  return 0


if __name__ == '__main__':
  sys.exit(main())
