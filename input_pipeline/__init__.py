"""GroupViT training input pipeline (tf.data on the host, numpy batches out).

Public API (imported lazily, so ``import input_pipeline.config`` / ``.nouns`` / ``.prompts``, and
the recipes that read the data defaults, do not pull in TensorFlow)::

    from input_pipeline import create_train_dataset, default_data_config
    cfg = default_data_config()
    cfg.train = ("webdataset:/data/cc3m/{00000..00331}.tar@0.3", "webdataset:/data/cc12m/*.tar@0.7")
    it = create_train_dataset(cfg, global_batch_size=4096, process_index=jax.process_index(),
                              process_count=jax.process_count(), seed=0)
    batch = next(it)       # {'image': f32 [B,224,224,3], 'text': i32 [B,77], 'prompts': i32
    [B,3,77]} state = it.get_state() # JSON-serialisable; it.set_state(state) resumes exactly
    it.skip_counts()       # {'data/skipped/corrupt_image': 2, ...}

See ``input_pipeline/pipeline.py`` for the design and ``input_pipeline/config.py`` for the knobs.
"""

from __future__ import annotations

import importlib

__all__ = [
  'create_train_dataset',
  'TrainIterator',
  'default_data_config',
  'SyntheticConfig',
  'REASONS',
]

_LAZY = {
  'create_train_dataset': ('input_pipeline.pipeline', 'create_train_dataset'),
  'TrainIterator': ('input_pipeline.pipeline', 'TrainIterator'),
  'default_data_config': ('input_pipeline.config', 'default_data_config'),
  'SyntheticConfig': ('input_pipeline.synthetic_shapes', 'SyntheticConfig'),
  'REASONS': ('input_pipeline.skips', 'REASONS'),
}


def __getattr__(name):
  if name in _LAZY:
    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
  raise AttributeError(f"module 'input_pipeline' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_LAZY))
