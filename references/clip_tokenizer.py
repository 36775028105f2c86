"""openai-clip's Python tokenizer as a reference (dev extra), shared by the tokenizer tests and the
tokenizer / input-pipeline benchmarks.

``clip/simple_tokenizer.py`` is loaded straight from its file: importing the ``clip`` package runs
``clip/__init__``, which needs torch and torchvision.
"""

from __future__ import annotations

import importlib.util
import pathlib
from typing import Sequence

import numpy as np


def simple_tokenizer_class():
  """openai-clip's ``SimpleTokenizer`` class, or None when openai-clip is not installed."""
  spec = importlib.util.find_spec('clip')
  if spec is None or not spec.submodule_search_locations:
    return None
  for location in spec.submodule_search_locations:
    path = pathlib.Path(location) / 'simple_tokenizer.py'
    if path.is_file():
      file_spec = importlib.util.spec_from_file_location('_clip_simple_tokenizer_ref', path)
      module = importlib.util.module_from_spec(file_spec)
      file_spec.loader.exec_module(module)
      return module.SimpleTokenizer
  return None


def pad_like_clip(
  id_lists: Sequence[Sequence[int]], context_length: int, sot: int, eot: int, dtype=np.int64
) -> np.ndarray:
  """``clip.tokenize(..., truncate=True)``'s padding loop in NumPy: [SOT] + ids + [EOT], zero
  padded, truncated with EOT kept last. Returns [len(id_lists), context_length]."""
  result = np.zeros((len(id_lists), context_length), dtype=dtype)
  for row, ids in enumerate(id_lists):
    tokens = [sot, *ids, eot]
    if len(tokens) > context_length:
      tokens = tokens[:context_length]
      tokens[-1] = eot
    result[row, : len(tokens)] = tokens
  return result


def reference_tokenize(
  tokenizer, texts: str | Sequence[str], context_length: int = 77
) -> np.ndarray:
  """``clip.tokenize(texts, context_length, truncate=True)`` with a ``SimpleTokenizer`` instance."""
  texts = [texts] if isinstance(texts, str) else list(texts)
  return pad_like_clip(
    [tokenizer.encode(t) for t in texts],
    context_length,
    tokenizer.encoder['<|startoftext|>'],
    tokenizer.encoder['<|endoftext|>'],
  )
