"""ZeroSeg end to end on the built-in data: the teacher cache tool, a few steps of the one trainer
on images alone joined with the cache (checkpoint, resume, evaluation hook, export), the exported
model through `evaluation.run`, and the trainer's refusal of a cache of another teacher."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from groupvit_jax.checkpoints import store
from tests.conftest import load_script
from tests.test_zeroseg import TEACHER

NUM_IMAGES = 32


def _teacher(tmp_path, seed=0) -> str:
  cfg = dataclasses.replace(TEACHER, vision=dataclasses.replace(TEACHER.vision, image_size=64))
  path = str(tmp_path / f'clip{seed}')
  store.save_model(path, cfg, store.init_model(cfg, jax.random.key(seed)))
  return path


def _config(teacher_dir, cache_dir):
  config = load_script('configs/zeroseg_tiny.py').get_config()
  config.zeroseg.teacher = 'cache'
  config.zeroseg.teacher_dir = teacher_dir
  config.data.teacher_cache = cache_dir
  config.data.synthetic.num_train_examples = NUM_IMAGES
  config.total_steps = 4
  config.checkpoint_every_steps = 2
  config.async_checkpoints = False
  config.eval.every_steps = 4
  config.eval.datasets = ('synthetic',)
  config.eval.max_images = 4
  config.eval.num_visualize = 2
  config.eval.threshold = 0.5
  return config


@pytest.mark.slow
def test_cache_train_resume_evaluate_and_export(tmp_path):
  from evaluation import run as eval_run
  from groupvit_jax import load_pretrained, main
  from input_pipeline import prepare_teacher

  teacher = _teacher(tmp_path)
  cache = str(tmp_path / 'cache')
  config = _config(teacher, cache)
  synth = config.data.synthetic.to_dict()
  summary = prepare_teacher.prepare(
    teacher, ['synthetic'], cache, image_size=64, batch_size=8, chunk_size=16,
    num_samples=NUM_IMAGES, synthetic=synth, seed=int(config.seed), log=lambda _: None,
  )  # fmt: skip
  assert summary is not None
  workdir = str(tmp_path / 'run')
  final = main.train_and_evaluate(config, workdir)
  assert np.isfinite(final['loss']) and final['data/skipped/missing_teacher'] == 0
  assert final['multiscale_loss'] > 0 and final['matching_loss'] > 0 and final['mae_loss'] > 0
  result = json.loads((tmp_path / 'run' / 'eval_synthetic.json').read_text())
  assert 0.0 <= result['mIoU'] <= 100.0 and result['oracle'] is not None
  assert (tmp_path / 'run' / 'eval_synthetic.png').exists()
  model = load_pretrained(str(tmp_path / 'run' / 'model'))
  assert model.kind == 'zeroseg' and model.config.num_segments == 4
  # Resume: two more steps continue from step 4 with the same cache.
  config.total_steps = 6
  config.eval.every_steps = 0
  main.train_and_evaluate(config, workdir)
  lines = [json.loads(x) for x in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  assert max(x['step'] for x in lines) == 6
  # The exported model through the evaluation command.
  out = tmp_path / 'eval.json'
  eval_run.main([
    '--checkpoint', str(tmp_path / 'run' / 'model'), '--dataset', 'synthetic',
    '--data_dir', workdir, '--max_images', '4', '--output', str(out),
  ])  # fmt: skip
  assert 0.0 <= json.loads(out.read_text())['mIoU'] <= 100.0
  # A cache computed by another teacher is refused before anything is compiled.
  config.zeroseg.teacher_dir = _teacher(tmp_path, seed=1)
  with pytest.raises(main.TrainingError, match='another teacher'):
    main.train_and_evaluate(config, str(tmp_path / 'run2'))
