"""XLA:CPU compiler options for this library's training and evaluation programs, chosen per model.

XLA:CPU hands matmuls, elementwise chains and reductions to YNNPACK fusions by default. For
GroupViT-S-sized towers (width 384, 196-848 tokens) XLA's own kernels are faster: without the
fusions (`xla_cpu_experimental_ynn_fusion_type` empty) the training step at batch 16 runs about 6 %
faster and the 448-window evaluation forward about 11 % faster (its batched attention matmuls and
softmax are the difference). For narrow towers the fusions win: the synthetic recipe's width-128
step is about 8 % slower without them. So the option is set per compiled program, by the image
tower's width (measurements and commands in benchmarks/README.md, "XLA:CPU compiler options").

Never over the user's choice: when `XLA_FLAGS` names the flag, or `GROUPVIT_JAX_KEEP_XLA_FLAGS=1`,
programs compile with XLA's settings. Other backends get no options.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Optional

import jax

YNN_FLAG = 'xla_cpu_experimental_ynn_fusion_type'
OPT_OUT_ENV = 'GROUPVIT_JAX_KEEP_XLA_FLAGS'
# Image towers at least this wide compile without YNNPACK fusions (GroupViT-S: 384 faster without
# them; the synthetic recipe: 128 faster with them; nothing measured in between).
MIN_WIDTH_WITHOUT_YNNPACK = 256


def user_controls_flags(environ: Optional[dict] = None) -> bool:
  """True when the user opted out, or set the YNNPACK flag in XLA_FLAGS themselves."""
  environ = os.environ if environ is None else environ
  if environ.get(OPT_OUT_ENV, '').strip() not in ('', '0'):
    return True
  return any(
    tok.lstrip('-').split('=', 1)[0] == YNN_FLAG for tok in environ.get('XLA_FLAGS', '').split()
  )


def compiler_options(
  model_config: Any, backend: Optional[str] = None, environ: Optional[dict] = None
) -> Optional[dict[str, str]]:
  """Options for programs running `model_config` (a GroupViTConfig), or None for XLA's defaults.

  Args:
    model_config: a GroupViTConfig (`.image.width`), an SCGConfig (its CLIP's width) or a
      ZeroSegConfig (its encoder's).
    backend: the platform compiled for (default: jax.default_backend()).
    environ: the environment to read the user's flags from (default os.environ).
  """
  backend = backend or jax.default_backend()
  if backend != 'cpu' or user_controls_flags(environ):
    return None
  if _image_width(model_config) < MIN_WIDTH_WITHOUT_YNNPACK:
    return None
  return {YNN_FLAG: ''}


def _image_width(config: Any) -> int:
  """The width of the image tower a program runs: GroupViT's `image`, SCG's CLIP, ZeroSeg's
  student encoder, or a CLIP's `vision`."""
  if hasattr(config, 'image'):
    return int(config.image.width)
  if hasattr(config, 'mae'):
    return int(config.encoder.width)
  if hasattr(config, 'vision'):
    return int(config.vision.width)
  return int(config.clip.vision.width)


@functools.lru_cache(maxsize=None)
def _jit_with(fun: Callable, options: tuple, jit_kwargs: tuple) -> Callable:
  return jax.jit(fun, compiler_options=dict(options) or None, **dict(jit_kwargs))


def jit_for(model_config: Any, fun: Callable, **jit_kwargs) -> Callable:
  """`jax.jit(fun, **jit_kwargs)` compiled with compiler_options(model_config); cached, so every
  caller with the same options shares one jitted function (and its compilation cache)."""
  options = tuple(sorted((compiler_options(model_config) or {}).items()))
  frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in jit_kwargs.items()))
  return _jit_with(fun, options, frozen)
