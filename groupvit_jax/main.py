"""The trainer: one loop for every recipe.

    python -m groupvit_jax.main --config=configs/tiny.py --workdir=/tmp/run [--config.key=value]

Multi-host: pass --coordinator_address=HOST:PORT --num_processes=N --process_id=I (or rely on the
platform's JAX environment, e.g. TPU pods / SLURM, where jax.distributed.initialize() needs no
arguments and --distributed=auto is the default when such an environment is detected).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

import input_pipeline
from evaluation import hooks
from groupvit_jax import (
  checkpointing,
  clip_train,
  config_lib,
  metric_writers,
  optim,
  scg_train,
  workdir_lock,
  xla_cpu,
  zeroseg_train,
)
from groupvit_jax import sharding as sharding_lib
from groupvit_jax import train_step as train_lib
from groupvit_jax.checkpoints import store
from groupvit_jax.models.groupvit import GroupViT
from input_pipeline.config import default_data_config


# --- recipes' defaults -------------------------------------------------------------------------
def base_config() -> ml_collections.ConfigDict:
  """Every trainer setting with its default; recipes start from this and override.

  The core's sections (`config_lib.trainer_defaults`), the data pipeline's (`config.data`) and the
  periodic evaluation's (`config.eval`). Overrides on the command line (--config.key=value) of keys
  not listed here are errors.
  """
  config = config_lib.trainer_defaults()
  config.data = default_data_config()
  config.eval = hooks.default_eval_config()
  return config


# CC3M + CC12M + YFCC14M as released (28.66M pairs).
RELEASED_NUM_PAIRS = 2_891_445 + 11_156_203 + 14_615_499
RELEASED_SHARDS = (
  'webdataset:local_data/gcc3m_shards/gcc-train-{000000..000436}.tar',
  'webdataset:local_data/gcc12m_shards/gcc-conceptual-12m-{000000..001943}.tar',
  'webdataset:local_data/yfcc14m_shards/yfcc14m-{000000..001888}.tar',
)


def released_recipe(**model_overrides) -> ml_collections.ConfigDict:
  """The released training recipe (reference section 6) around a model with overrides:
  global batch 4096, 30 epochs with 2 of warmup, AdamW lr 1.6e-3 * batch / 4096 from 4e-6 to
  4e-5, weight decay 0.05, clip 5.0, bfloat16 compute (the release trains with apex O1)."""
  config = base_config()
  config.model = config_lib.model_config(dtype='bfloat16', **model_overrides)
  config.data.train = RELEASED_SHARDS
  config.global_batch_size = 4096
  steps_per_epoch = RELEASED_NUM_PAIRS // config.global_batch_size
  config.total_steps = 30 * steps_per_epoch
  config.optimizer.warmup_steps = 2 * steps_per_epoch
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2000
  return config


METHODS = ('groupvit', 'clip', 'scg', 'zeroseg')


class TrainingError(RuntimeError):
  """A run that must stop: non-finite values, bad configuration, broken data."""


# --- set-up ------------------------------------------------------------------------------------
def initialize_distributed(
  coordinator: str | None, num_processes: int | None, process_id: int | None
) -> None:
  """jax.distributed from explicit flags, or from the platform's environment when present."""
  if coordinator or (num_processes and num_processes > 1):
    # Cross-process collectives for the CPU backend (no effect on GPU/TPU backends). Must not
    # query the backend here: that would initialise it before jax.distributed.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(
      coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )
  elif any(
    k in os.environ
    for k in (
      'JAX_COORDINATOR_ADDRESS',
      'SLURM_JOB_ID',
      'TPU_WORKER_HOSTNAMES',
      'MEGASCALE_COORDINATOR_ADDRESS',
    )
  ):
    jax.distributed.initialize()


def validate(config: ml_collections.ConfigDict) -> None:
  """Start-time checks that name the problem (before anything is compiled or read)."""
  n_dev, n_proc = jax.device_count(), jax.process_count()
  g, accum = int(config.global_batch_size), int(config.grad_accum_steps)
  if g <= 0 or accum <= 0:
    raise TrainingError('global_batch_size and grad_accum_steps must be positive')
  if g % accum:
    raise TrainingError(f'global_batch_size {g} is not divisible by grad_accum_steps {accum}')
  if (g // accum) % n_dev:
    raise TrainingError(
      f'the micro-batch {g // accum} (global_batch_size {g} / grad_accum_steps '
      f'{accum}) is not divisible by the {n_dev} devices'
    )
  if g % n_proc:
    raise TrainingError(f'global_batch_size {g} is not divisible by {n_proc} processes')
  if config.total_steps < 0 or (config.total_steps == 0 and config.method != 'scg'):
    raise TrainingError(
      'total_steps must be positive (0 only for config.method=scg: evaluate the towers untrained)'
    )
  if config.loss.formulation not in ('global', 'shard_map'):
    raise TrainingError(
      f"loss.formulation must be 'global' or 'shard_map', got {config.loss.formulation!r}"
    )
  if config.method not in METHODS:
    raise TrainingError(f'config.method must be one of {METHODS}, got {config.method!r}')
  if config.method == 'zeroseg':
    if accum != 1:
      raise TrainingError('config.method=zeroseg trains without gradient accumulation')
    if not config.zeroseg.teacher_dir:
      raise TrainingError('config.method=zeroseg needs config.zeroseg.teacher_dir (a CLIP)')
    return  # the student's checks need the teacher: ZeroSegTask.validate, when the run starts
  if config.method == 'clip':
    if accum != 1:
      raise TrainingError('config.method=clip trains without gradient accumulation')
    return  # CLIPTask.validate, when the run starts
  if config.method == 'scg':
    if accum != 1:
      raise TrainingError('config.method=scg trains without gradient accumulation')
    for name in ('clip_dir', 'grouper_dir'):
      if not config.scg[name]:
        raise TrainingError(f'config.method=scg needs config.scg.{name} (a converted model)')
    return  # the towers' checks need them loaded: SCGTask.validate, when the run starts
  model_cfg = config_lib.build_model_config(config)  # raises on unknown/inconsistent keys
  try:
    train_lib.multi_label_by_best_group(config, model_cfg.multi_label)
  except ValueError as e:
    raise TrainingError(str(e)) from None
  if config.data.image_size != model_cfg.image.image_size:
    raise TrainingError(
      f'data.image_size {config.data.image_size} != model.image.image_size '
      f'{model_cfg.image.image_size}'
    )
  if config.data.text.context_length != model_cfg.text.context_length:
    raise TrainingError(
      f'data.text.context_length {config.data.text.context_length} != '
      f'model.text.context_length {model_cfg.text.context_length}'
    )


def _first_nonfinite(history: list[tuple[int, dict[str, Any]]]) -> tuple[int, list[str]] | None:
  for step, metrics in history:
    bad = sorted(k for k, v in metrics.items() if not np.all(np.isfinite(v)))
    if bad:
      return step, bad
  return None


def _batch_for_step(local: dict[str, np.ndarray], mesh, keys: tuple[str, ...]):
  missing = [k for k in keys if k not in local]
  if missing:
    raise TrainingError(f'the data pipeline yields {sorted(local)}; the step needs {missing}')
  return sharding_lib.global_batch({k: local[k] for k in keys}, mesh)


def _abstract_batch(config, model_cfg, mesh):
  g, s = int(config.global_batch_size), model_cfg.image.image_size
  sh = sharding_lib.batch_sharding(mesh)
  length = model_cfg.text.context_length
  batch = {
    'image': jax.ShapeDtypeStruct((g, s, s, 3), jnp.float32, sharding=sh),
    'text': jax.ShapeDtypeStruct((g, length), jnp.int32, sharding=sh),
  }
  if model_cfg.multi_label:
    k = int(config.data.text.num_prompts)
    batch['prompts'] = jax.ShapeDtypeStruct((g, k, length), jnp.int32, sharding=sh)
  return batch


class _GroupViTTask:
  """The GroupViT method for the loop (`groupvit_jax.scg_train.SCGTask` is SCG's)."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.model_config = config_lib.build_model_config(config)
    self.model = GroupViT(self.model_config)
    multi = self.model_config.multi_label
    self.batch_keys = ('image', 'text', 'prompts') if multi else ('image', 'text')

  def abstract_state(self, optimizer):
    return train_lib.abstract_state(self.model, optimizer)

  def create_state(self, optimizer, rng, shardings):
    return train_lib.create_state(self.model, optimizer, rng, shardings)

  def make_train_step(self, optimizer, schedule, config, mesh, shardings):
    return train_lib.make_train_step(self.model, optimizer, schedule, config, mesh, shardings)

  def abstract_batch(self, config, mesh):
    return _abstract_batch(config, self.model_config, mesh)

  def export(self, directory: str, state) -> None:
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    store.save_model(directory, self.model_config, variables, overwrite=True)


def _task(config: ml_collections.ConfigDict):
  """The method's training task: GroupViT's, a plain CLIP's, SCG's or ZeroSeg's (their towers
  are read here)."""
  if config.method == 'groupvit':
    return _GroupViTTask(config)
  task_cls = {
    'clip': clip_train.CLIPTask,
    'scg': scg_train.SCGTask,
    'zeroseg': zeroseg_train.ZeroSegTask,
  }[config.method]
  try:
    task = task_cls(config)
    task.validate(config)
  except (ValueError, FileNotFoundError) as e:
    raise TrainingError(f'config.{config.method}: {e}') from None
  if config.method == 'zeroseg' and config.zeroseg.teacher == 'cache':
    _check_teacher_cache(config, task.teacher_variables)
  return task


def _check_teacher_cache(config: ml_collections.ConfigDict, teacher_variables) -> None:
  """The cache's views must come from config.zeroseg.teacher_dir's CLIP (the pipeline checks
  the data side when it opens the cache)."""
  from input_pipeline import prepare_teacher, teacher_cache

  try:
    cache = teacher_cache.TeacherCache(config.data.teacher_cache)
  except (FileNotFoundError, ValueError) as e:
    raise TrainingError(f'config.data.teacher_cache: {e}') from None
  mine = prepare_teacher.teacher_fingerprint(config.zeroseg.teacher_dir, teacher_variables)
  if cache.meta['teacher'] != mine:
    raise TrainingError(
      f'config.data.teacher_cache {config.data.teacher_cache} holds views of another teacher than '
      f'config.zeroseg.teacher_dir {config.zeroseg.teacher_dir}: rebuild it with '
      'python -m input_pipeline.prepare_teacher'
    )


class _StopSignal:
  """SIGTERM -> finish the current step, save, exit cleanly."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


# --- the run -----------------------------------------------------------------------------------
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint), after the models it builds
  on (`config.prerequisites`). Returns final metrics."""
  workdir = os.path.abspath(workdir)
  resolve_prerequisites(config, workdir)
  validate(config)
  os.makedirs(workdir, exist_ok=True)
  lock = _hold_workdir(workdir)
  try:
    return _train(config, workdir)
  finally:
    if lock is not None:
      lock.release()


def load_recipe(spec: str) -> ml_collections.ConfigDict:
  """`get_config(ARG)` of a recipe 'PATH[:ARG]': PATH as given, else under the repository's
  configs/ directory."""
  import importlib.util

  path, _, arg = spec.partition(':')
  if not os.path.exists(path):
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), path)
  if not os.path.exists(path):
    raise TrainingError(f'prerequisite recipe {spec!r}: {path} does not exist')
  module_spec = importlib.util.spec_from_file_location('prerequisite_recipe', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def resolve_prerequisites(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Fills each empty key of `config.prerequisites` ((KEY, RECIPE, SUBDIR) triples, e.g.
  ('scg.clip_dir', 'configs/synthetic_clip.py', 'clip')) with WORKDIR/SUBDIR/model, training
  RECIPE there first with this run's seed unless that model exists (a finished run is reused, an
  unfinished one resumed). A key given on the command line is used as is."""
  for key, recipe, subdir in config.get('prerequisites', ()):
    *parents, name = key.split('.')
    target = config
    for part in parents:
      target = target[part]
    if name not in target:
      raise TrainingError(f'prerequisite key {key!r} is not a config key')
    if target[name]:
      continue
    sub_workdir = os.path.join(workdir, subdir)
    model_dir = os.path.join(sub_workdir, 'model')
    if not os.path.exists(os.path.join(model_dir, store.CONFIG_FILE)):
      sub = load_recipe(recipe)
      sub.seed = int(config.seed)
      metric_writers.log(f'{key}: training {recipe} in {sub_workdir} first')
      train_and_evaluate(sub, sub_workdir)
    else:
      metric_writers.log(f'{key}: reusing {model_dir}')
    target[name] = model_dir


def _hold_workdir(workdir: str) -> workdir_lock.WorkdirLock | None:
  """Process 0 takes WORKDIR/lock.json; every process learns the outcome (a collective)."""
  lock, refusal = None, None
  if jax.process_index() == 0:
    lock = workdir_lock.WorkdirLock(workdir, log=metric_writers.log)
    try:
      lock.acquire()
    except workdir_lock.WorkdirBusyError as e:
      lock, refusal = None, str(e)
  refusal = checkpointing.gather_json(refusal)[0]
  if refusal is not None:
    raise workdir_lock.WorkdirBusyError(refusal)
  return lock


def _train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  log = metric_writers.log

  # Mesh.
  mesh = sharding_lib.make_mesh(config.mesh)
  log(f'{jax.process_count()} process(es), {jax.device_count()} device(s), mesh {dict(mesh.shape)}')

  # Model and optimizer.
  task = _task(config)
  model_cfg = task.model_config
  effective_batch = int(config.global_batch_size)
  optimizer, schedule = optim.make_optimizer(
    config.optimizer, effective_batch, int(config.total_steps)
  )

  # Sharded state: created from abstract shapes, or restored.
  abstract = task.abstract_state(optimizer)
  shardings = train_lib.state_shardings(abstract, mesh, config.partition_rules)
  abstract = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )
  ckpt = checkpointing.Checkpointer(
    workdir, int(config.keep_checkpoints), bool(config.async_checkpoints), log=log
  )
  rng = jax.random.key(int(config.seed))
  init_rng, train_rng = jax.random.split(rng)
  # A checkpoint written with other settings is another run's: resuming it would be silent loss.
  settings = {'model': config.model.to_dict(), 'optimizer': config.optimizer.to_dict()}
  if config.method != 'groupvit':
    section = config[config.method].to_dict()
    settings = {'method': config.method, config.method: section, **settings}
  try:
    restored = ckpt.restore_latest(abstract, settings)
  except BaseException:
    _close_quietly(ckpt)
    raise
  data_state = None
  if restored is not None:
    start, state, data_state, train_rng = (
      restored.step,
      restored.state,
      restored.data_state,
      restored.rng,
    )
    log(f'resumed from step {start}')
  else:
    start = 0
    state = task.create_state(optimizer, init_rng, shardings)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  n_params = sum(x.size for x in jax.tree.leaves(abstract.params))
  log(f'model: {n_params:,} parameters')
  if int(config.total_steps) == 0:
    _close_quietly(ckpt)
    return _evaluate_untrained(config, task, state, workdir)

  # Data.
  # input_pipeline exports lazily: tensorflow is imported here, when a run starts, not with main.
  data = input_pipeline.create_train_dataset(
    config.data,
    global_batch_size=int(config.global_batch_size),
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    seed=int(config.seed),
  )
  if data_state is not None:
    data.set_state(data_state)

  # Step, compiled once before the loop.
  step_fn = task.make_train_step(optimizer, schedule, config, mesh, shardings)
  t0 = time.time()
  cpu_options = xla_cpu.compiler_options(model_cfg)
  compiled = step_fn.lower(
    abstract,
    task.abstract_batch(config, mesh),
    jax.ShapeDtypeStruct(train_rng.shape, train_rng.dtype),
  ).compile(compiler_options=cpu_options)
  compile_s = time.time() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
  flops = float(cost.get('flops', float('nan'))) if cost else float('nan')
  memory = compiled.memory_analysis()
  mem_txt = ''
  if memory is not None:
    mem_txt = (
      f', memory: args {memory.argument_size_in_bytes / 2**20:.1f} MiB, temp '
      f'{memory.temp_size_in_bytes / 2**20:.1f} MiB, out '
      f'{memory.output_size_in_bytes / 2**20:.1f} MiB'
    )
  log(
    f'train step compiled in {compile_s:.1f}s; {flops / 1e9:.2f} GFLOPs/step{mem_txt}'
    + (f'; compiler options {cpu_options}' if cpu_options else '')
  )

  writer = metric_writers.MetricsWriter(workdir, resume_step=start)
  if start == 0:
    writer.write(0, {'compile_s': compile_s, 'step_gflops': flops / 1e9})
  evaluators = _make_evaluators(config, model_cfg, workdir)
  progress = metric_writers.Progress(int(config.total_steps), start, int(config.global_batch_size))
  stop = _StopSignal()
  history: list[tuple[int, dict[str, Any]]] = []
  step = start
  final: dict[str, Any] = {}
  in_flight = None  # the metrics of the step dispatched last
  try:
    while step < config.total_steps:
      batch = _batch_for_step(next(data), mesh, task.batch_keys)
      state, metrics = compiled(state, batch, train_rng)
      # Keep the host at most one step ahead of the devices. Unbounded, it queues every step up to
      # the next log step and then waits there inside one C call, where a SIGTERM cannot be acted
      # on: a preempted run then saved only after up to `log_every_steps` more steps
      # (benchmarks/stop_latency.py: 20-43 s to exit, now about 5 s). One step of look-ahead
      # still hides the dispatch.
      if in_flight is not None:
        jax.block_until_ready(in_flight)
      in_flight = metrics
      step += 1
      history.append((step, metrics))
      preempted = stop.requested or (
        jax.process_count() > 1 and ckpt.manager.reached_preemption(step)
      )
      if step % config.log_every_steps == 0 or step == config.total_steps or preempted:
        history = jax.device_get(history)
        bad = _first_nonfinite(history)
        if bad is not None:
          raise TrainingError(f'non-finite values at step {bad[0]}: {", ".join(bad[1])}')
        scalars = {k: float(v) for k, v in history[-1][1].items()}
        timing = progress.tick(step)
        scalars.update(images_per_s=timing['images_per_s'], steps_per_s=timing['steps_per_s'])
        for k, v in data.skip_counts().items():
          scalars[k] = v
        writer.write(step, scalars)
        log(metric_writers.Progress.line(step, int(config.total_steps), scalars, timing))
        final = scalars
        history = []
      if (
        evaluators
        and config.eval.every_steps
        and (step % config.eval.every_steps == 0 or step == config.total_steps)
      ):
        results = _run_evaluators(evaluators, state, step)
        writer.write(step, results)
        log(
          f'eval at step {step}: '
          + ', '.join(f'{k} {v:.2f}' for k, v in results.items() if isinstance(v, float))
        )
        final.update(results)
      if step % config.checkpoint_every_steps == 0 or step == config.total_steps or preempted:
        ckpt.save(step, state, data.get_state(), train_rng, settings, force=preempted)
      if preempted:
        log(f'stop requested: saved step {step}, exiting')
        break
  except BaseException:
    # The error in flight is the one to report; closing may fail in its wake (a save that
    # failed also fails the final wait) and must not replace it.
    stop.restore()
    _close_quietly(data, ckpt, writer)
    raise
  stop.restore()
  data.close()
  ckpt.close()  # raises CheckpointError if the last save did not complete
  writer.close()
  if step == config.total_steps and config.export_model:
    export = os.path.join(workdir, 'model')
    task.export(export, state)
    log(f'model written to {export} (load with groupvit_jax.load_pretrained)')
  return final


def _evaluate_untrained(config, task, state, workdir: str) -> dict[str, Any]:
  """total_steps=0 (SCG without region adaptation, the paper's "no fine-tuning" row): the model
  as built from its towers, evaluated and exported as a trained one would be."""
  evaluators = _make_evaluators(config, task.model_config, workdir)
  final = _run_evaluators(evaluators, state, 0) if evaluators else {}
  if evaluators:
    metric_writers.MetricsWriter(workdir, resume_step=0).write(0, final)
    metric_writers.log(
      'eval at step 0: '
      + ', '.join(f'{k} {v:.2f}' for k, v in final.items() if isinstance(v, float))
    )
  if config.export_model:
    export = os.path.join(workdir, 'model')
    task.export(export, state)
    metric_writers.log(f'model written to {export} (load with groupvit_jax.load_pretrained)')
  return final


def _close_quietly(*resources) -> None:
  # The host thread runs Python (numpy_function) inside tf.data: stop it before the interpreter
  # tears down, or exit can crash in a half-finalised runtime.
  for resource in resources:
    try:
      resource.close()
    except Exception as e:  # noqa: BLE001 -- secondary to the error being raised
      metric_writers.log(f'while stopping: {type(resource).__name__}.close failed: {e}')


# --- evaluation hooks --------------------------------------------------------------------------
def _make_evaluators(config, model_cfg, workdir):
  """Periodic evaluation hooks from `config.eval` (empty when config.eval.every_steps == 0)."""
  if not config.eval.every_steps:
    return []
  return hooks.build_evaluators(
    config.eval,
    model_cfg,
    workdir,
    data_config=config.data,
    is_main_process=jax.process_index() == 0,
  )


def _run_evaluators(evaluators, state, step) -> dict[str, float]:
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  results = {}
  for evaluator in evaluators:
    results.update(evaluator(variables, step))
  return results


def _define_flags() -> dict[str, Any]:
  """The command line. Defined only when this module runs as the program: recipe files import it
  (for `base_config`) while it runs, and a second definition of a flag is an error."""
  return dict(
    config=config_flags.DEFINE_config_file('config', None, 'recipe file', lock_config=True),
    workdir=flags.DEFINE_string('workdir', None, 'where checkpoints, metrics and the model go'),
    coordinator=flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0'),
    num_processes=flags.DEFINE_integer('num_processes', None, 'number of processes'),
    process_id=flags.DEFINE_integer('process_id', None, 'index of this process'),
  )


_FLAGS: dict[str, Any] = {}


def main(argv):
  del argv
  # orbax/absl log every file operation at INFO; the trainer prints its own progress lines.
  absl_logging.set_verbosity(absl_logging.WARNING)
  config, workdir = _FLAGS['config'].value, _FLAGS['workdir'].value
  if config is None or workdir is None:
    raise app.UsageError('--config and --workdir are required')
  initialize_distributed(
    _FLAGS['coordinator'].value, _FLAGS['num_processes'].value, _FLAGS['process_id'].value
  )
  try:
    train_and_evaluate(config, workdir)
  except (TrainingError, checkpointing.CheckpointError, workdir_lock.WorkdirBusyError) as e:
    # The last line of a failed run is its cause. Leaving through os._exit skips interpreter
    # teardown, where orbax's and tf.data's threads would otherwise print secondary tracebacks.
    sys.stdout.flush()
    sys.stderr = open(os.devnull, 'w')  # worker threads still printing write here, not mid-line
    print(f'error: {e}', file=sys.__stderr__, flush=True)
    os._exit(1)


if __name__ == '__main__':
  _FLAGS.update(_define_flags())
  app.run(main)
