"""Typed model configuration: frozen dataclasses built from (and written back to) plain dicts.

Model hyper-parameters live here, not in Flax module attributes scattered across files, so that a
checkpoint directory can store exactly one `model_config.json` and rebuild the same model.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import numpy as np


class ConfigError(ValueError):
  """A model configuration that names an unknown key or has inconsistent values."""


@dataclasses.dataclass(frozen=True)
class ImageEncoderConfig:
  """GroupViT image tower. Defaults are the released GroupViT-S (gcc_yfcc)."""

  image_size: int = 224
  patch_size: int = 16
  in_channels: int = 3
  width: int = 384
  num_heads: int = 6
  mlp_ratio: float = 4.0
  depths: tuple[int, ...] = (6, 3, 3)
  num_group_tokens: tuple[int, ...] = (64, 8, 0)
  num_output_groups: tuple[int, ...] = (64, 8)
  drop_path_rate: float = 0.1
  # Hard (Gumbel straight-through) assignment during training as released; False gives the paper's
  # soft-assignment ablation (Table 1).
  hard_assignment: bool = True
  gumbel: bool = True
  gumbel_tau: float = 1.0
  assign_eps: float = 1.0
  # Token-mixing MLP widths of the grouping block, as ratios of `width`: (tokens, channels).
  assign_mlp_ratio: tuple[float, float] = (0.5, 4.0)
  # The cross-attention before assignment is in the released weights but not in the paper.
  pre_assign_attention: bool = True
  # Its MLP width ratio: 4 in the NVlabs code; Hugging Face uses `mlp_ratio` (equal when 4).
  pre_assign_mlp_ratio: float = 4.0
  # Stage-1 group tokens = own tokens + projection of the previous stage's group tokens.
  group_projector: bool = True
  layer_norm_eps: float = 1e-5

  def validate(self) -> None:
    stages = len(self.depths)
    if len(self.num_group_tokens) != stages:
      raise ConfigError(
        f'num_group_tokens {self.num_group_tokens} needs one entry per stage (depths {self.depths})'
      )
    if self.num_group_tokens[-1] != 0:
      raise ConfigError('the last stage has no group tokens (num_group_tokens[-1] must be 0)')
    grouping = [n for n in self.num_group_tokens if n > 0]
    if list(self.num_group_tokens[: len(grouping)]) != grouping:
      raise ConfigError(f'group tokens must come in leading stages only: {self.num_group_tokens}')
    if len(self.num_output_groups) < len(grouping):
      raise ConfigError(
        f'num_output_groups {self.num_output_groups} needs an entry for each of '
        f'the {len(grouping)} grouping stages'
      )
    if self.width % self.num_heads:
      raise ConfigError(f'width {self.width} is not divisible by num_heads {self.num_heads}')
    if self.image_size % self.patch_size:
      raise ConfigError(
        f'image_size {self.image_size} is not a multiple of patch_size {self.patch_size}'
      )

  @property
  def num_grouping_stages(self) -> int:
    return sum(1 for n in self.num_group_tokens if n > 0)

  @property
  def grid_size(self) -> int:
    return self.image_size // self.patch_size


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
  """CLIP text transformer. Defaults are the released GroupViT text tower."""

  vocab_size: int = 49408
  context_length: int = 77
  width: int = 256
  num_layers: int = 12
  num_heads: int = 4
  mlp_ratio: float = 4.0
  layer_norm_eps: float = 1e-5
  activation: str = 'quick_gelu'  # 'gelu' for open_clip models trained without QuickGELU

  def validate(self) -> None:
    if self.width % self.num_heads:
      raise ConfigError(f'text width {self.width} is not divisible by num_heads {self.num_heads}')
    if self.activation not in ('quick_gelu', 'gelu'):
      raise ConfigError(f"text activation must be 'quick_gelu' or 'gelu', got {self.activation!r}")


class JsonConfig:
  """to_dict / to_json of the frozen model-config dataclasses (the model directory's format)."""

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)


@dataclasses.dataclass(frozen=True)
class GroupViTConfig(JsonConfig):
  """The whole GroupViT: both towers, projection heads and temperatures."""

  image: ImageEncoderConfig = dataclasses.field(default_factory=ImageEncoderConfig)
  text: TextEncoderConfig = dataclasses.field(default_factory=TextEncoderConfig)
  projection_dim: int = 256
  projection_hidden_dim: int = 4096
  # Number of Dense layers of each projection head (released: 2, i.e. Dense-BN-ReLU-Dense).
  projection_layers: int = 2
  bn_momentum: float = 0.1  # PyTorch convention: new = (1 - m) * old + m * batch
  bn_eps: float = 1e-5
  logit_scale_init: float = 2.659260036932778  # log(1 / 0.07)
  logit_scale_max: float = 100.0
  multi_label: bool = True  # creates `multi_label_logit_scale`
  # Compute dtype for matmuls ('float32' or 'bfloat16'); params, norms, softmaxes stay float32.
  dtype: str = 'float32'
  remat: bool = False
  # Axis name for synchronised BatchNorm statistics under shard_map/pmap. Under jit on global
  # arrays the statistics are already over the global batch and this stays None.
  bn_axis_name: str | None = None

  def validate(self) -> None:
    self.image.validate()
    self.text.validate()
    if self.dtype not in ('float32', 'bfloat16'):
      raise ConfigError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
    if self.projection_layers < 0:
      raise ConfigError('projection_layers must be >= 0')

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'GroupViTConfig':
    """Builds a config from a (possibly partial) nested mapping; unknown keys are an error."""
    d = dict(_to_plain(d))
    image = _build(ImageEncoderConfig, d.pop('image', {}), 'model.image')
    text = _build(TextEncoderConfig, d.pop('text', {}), 'model.text')
    cfg = _build(cls, d, 'model', image=image, text=text)
    cfg.validate()
    return cfg


def _to_plain(x: Any) -> Any:
  if hasattr(x, 'to_dict'):  # ml_collections.ConfigDict
    x = x.to_dict()
  if isinstance(x, Mapping):
    return {k: _to_plain(v) for k, v in x.items()}
  return x


def _check_type(value: Any, field: dataclasses.Field, where: str) -> Any:
  """`value` for `field`, typed like the field's default (ints accepted where floats go)."""
  default = field.default
  if default is dataclasses.MISSING or default is None or value is None:
    return value
  name = f'{where}.{field.name}'
  if isinstance(default, bool):
    ok = isinstance(value, (bool, np.bool_))
  elif isinstance(default, int):
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
  elif isinstance(default, float):
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    value = float(value) if ok else value
  else:
    ok = isinstance(value, type(default))
  if not ok:
    raise ConfigError(
      f'{name} must be {type(default).__name__} (like its default {default!r}); '
      f'got {value!r} of type {type(value).__name__}'
    )
  return value


def _build(cls, d: Mapping[str, Any], where: str, **extra):
  names = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - set(names))
  if unknown:
    raise ConfigError(f'unknown key(s) {unknown} in {where}; valid keys: {sorted(names)}')
  kwargs = {}
  for k, v in d.items():
    if isinstance(v, list):
      v = tuple(v)
    kwargs[k] = _check_type(v, names[k], where)
  kwargs.update(extra)
  return cls(**kwargs)
