"""One-command accelerator check: GroupViT-S train step (JAX, PyTorch) and zero-shot windows/s.

Usage (from the repository root):

    python benchmarks/device_check.py --wheels tmp/wheels         # on the GPU machine, <= 8 min
    .venv/bin/python benchmarks/device_check.py --dry-run          # same code path, CPU, tiny sizes

Prints one JSON line per row on stdout as rows finish, then a markdown table. Every group of rows
runs in its own subprocess with a deadline (``--budget`` seconds in all, default 460): a group that
overruns is killed, its unfinished rows are printed as ``killed at deadline`` and the next group
starts, so the check always ends in time and shows what finished. Groups, in order:

1. ``jax bfloat16``: the bf16 matmul peak (best of ``[n, n] @ [n, n]``, n = 8192), then the training
   step at each ``--batch`` (default 256 512 1024).
2. ``jax float32``: the step at each ``--f32-batch`` (default 256 512).
3. ``torch``: Hugging Face ``GroupViTModel`` with the multi-label loss added as
   ``benchmarks/train_step.py`` adds it, ``clip_grad_norm_``, ``torch.optim.AdamW``, under
   ``torch.autocast(bfloat16)``, eager at each ``--batch``, then ``torch.compile`` at
   ``--compile-batch`` (default 256).
4. ``seg ours``: ``groupvit_jax.segmenter.ZeroShotSegmenter`` (448 windows, stride 224, VOC classes,
   threshold 0.95) on synthetic 500x375 images, windows batched ``--window-batch`` per call.
5. ``seg reference``: ``references.segmentation.ReleasedSegmentation`` (the release's protocol,
   eager PyTorch, one window at a time), on the same device, with the same random weights; the
   label maps of 4 and 5 are compared (pixel agreement).

The JAX step is ``groupvit_jax.train_step.make_train_step`` built as ``groupvit_jax/main.py``
builds it (the released GroupViT-S, ``GroupViTConfig()``, both losses with K = 3 prompts, global-
norm clipping, AdamW), on one device, compiled ahead of time. Before running, its
``memory_analysis()`` is checked against the device's ``bytes_limit``: a batch that does not fit is
recompiled with ``model.remat=True`` (each block rematerialised), and marked so.

Columns (JSON keys): ``images_per_s`` (batch x steps / wall time), ``step_ms``, ``mfu`` = XLA's
``cost_analysis`` FLOPs of the JAX step x steps/s / the measured bf16 matmul peak (torch rows use
the same FLOP count), ``peak_mib`` (JAX: ``device.memory_stats()['peak_bytes_in_use']``, the
process's high-water mark, rows run in increasing batch; torch: ``torch.cuda.max_memory_allocated``
reset per row), ``compile_s`` (JAX: ``.lower().compile()``; torch.compile: first step minus an eager
step), ``windows_per_s``.

Needs only the core's dependencies: jax, flax, optax, orbax, numpy, ml_collections, ftfy (+
wcwidth), pillow, regex, safetensors, plus torch and transformers for the torch rows. Missing pure
packages are taken from the wheels of ``--wheels DIR`` (extracted into DIR/_site and put on the
path: no pip, no network); see benchmarks/device_check.md.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NEEDED = ('ml_collections', 'ftfy', 'wcwidth', 'PIL', 'regex', 'safetensors', 'yaml', 'absl')
# Tiny sizes of --dry-run: a released-structure GroupViT small enough for CPU (HF can build it).
TINY_MODEL = dict(
  image=dict(
    image_size=64,
    patch_size=16,
    width=64,
    num_heads=2,
    depths=(1, 1, 1),
    num_group_tokens=(8, 4, 0),
    num_output_groups=(8, 4),
  ),
  text=dict(width=32, num_layers=1, num_heads=2),
  projection_dim=32,
  projection_hidden_dim=64,
)


def log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Wheels: missing pure packages from a local directory, without pip
# --------------------------------------------------------------------------------------------------


def use_wheels(directory: str | None) -> list[str]:
  """Puts the wheels of `directory` on sys.path (and PYTHONPATH, for the workers) when one of the
  NEEDED modules is missing. Returns the modules still missing afterwards."""

  def missing():
    out = []
    for name in NEEDED:
      try:
        importlib.import_module(name)
      except ImportError:
        out.append(name)
    return out

  gone = missing()
  if gone and directory and os.path.isdir(directory):
    site = os.path.join(os.path.abspath(directory), '_site')
    os.makedirs(site, exist_ok=True)
    for wheel in sorted(pathlib.Path(directory).glob('*.whl')):
      with zipfile.ZipFile(wheel) as z:
        z.extractall(site)  # a wheel is a zip of its site-packages tree
    sys.path.insert(0, site)
    os.environ['PYTHONPATH'] = os.pathsep.join(
      [site] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]
    )
    importlib.invalidate_caches()
    gone = missing()
  return gone


def _bench_train_step():
  """benchmarks/train_step.py as a module (its HF model builder, batch and torch step)."""
  spec = importlib.util.spec_from_file_location(
    'bench_train_step', REPO_ROOT / 'benchmarks' / 'train_step.py'
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def trainer_config(spec: dict, dtype: str, batch: int, remat: bool = False):
  """The core's trainer settings (config_lib.trainer_defaults, no data/eval sections) for a row."""
  from groupvit_jax import config_lib

  config = config_lib.trainer_defaults()
  overrides = TINY_MODEL if spec['tiny'] else {}
  config.model = config_lib.model_config(dtype=dtype, remat=remat, **overrides)
  config.global_batch_size = batch
  config.grad_accum_steps = 1
  config.loss.formulation = 'global'
  config.mesh = (('data', 1), ('fsdp', 1))
  return config


# --------------------------------------------------------------------------------------------------
# Workers (one subprocess per group); each prints JSON lines: {'start': name} then the row
# --------------------------------------------------------------------------------------------------


def emit(row: dict) -> None:
  print(json.dumps(row), flush=True)


def matmul_peak(dtype: str, n: int) -> float:
  """Best TFLOP/s of a jitted [n, n] @ [n, n] in `dtype` on device 0 (default precision)."""
  import jax

  key = jax.random.key(0)
  a = jax.random.normal(key, (n, n), dtype)
  b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), dtype)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  best = math.inf
  for _ in range(10):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n**3 / best / 1e12


def worker_jax(spec: dict) -> None:
  """Training-step rows of one dtype: compile, check memory, run, time."""
  import jax

  from groupvit_jax import config_lib, optim, xla_cpu
  from groupvit_jax import sharding as sharding_lib
  from groupvit_jax import train_step as train_lib
  from groupvit_jax.models.groupvit import GroupViT

  bench = _bench_train_step()
  dtype = spec['dtype']
  device = jax.devices()[0]
  stats = device.memory_stats() or {}
  limit = stats.get('bytes_limit')
  peak = spec.get('peak_tflops')
  if spec.get('measure_peak'):
    emit({'start': 'matmul peak'})
    t = time.perf_counter()
    peak = matmul_peak('bfloat16', spec['peak_size'])
    f32 = matmul_peak('float32', spec['peak_size'])
    emit(
      dict(
        row='matmul peak',
        impl='jax',
        peak_tflops=peak,
        float32_default_precision_tflops=f32,
        n=spec['peak_size'],
        seconds=time.perf_counter() - t,
        device=str(device),
      )
    )
  mesh = sharding_lib.make_mesh((('data', 1), ('fsdp', 1)), [device])
  state = None
  for batch_size in spec['batches']:
    name = f'jax {dtype} train step, batch {batch_size}'
    emit({'start': name})
    t_row = time.perf_counter()
    row = dict(row=name, impl='jax', dtype=dtype, batch=batch_size)
    try:
      for remat in (False, True):
        config = trainer_config(spec, dtype, batch_size, remat)
        model_cfg = config_lib.build_model_config(config)
        model = GroupViT(model_cfg)
        optimizer, schedule = optim.make_optimizer(config.optimizer, batch_size, 1000)
        abstract = train_lib.abstract_state(model, optimizer)
        shardings = train_lib.state_shardings(abstract, mesh, config.partition_rules)
        abstract = jax.tree.map(
          lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
        )
        host = bench.host_batch(
          batch_size, model_cfg.image.image_size, model_cfg.text.context_length, 3, True, 0
        )
        batch = sharding_lib.global_batch(host, mesh)
        rng = jax.random.key(1)
        step = train_lib.make_train_step(model, optimizer, schedule, config, mesh, shardings)
        t = time.perf_counter()
        compiled = step.lower(abstract, batch, rng).compile(
          compiler_options=xla_cpu.compiler_options(model_cfg)
        )
        row['compile_s'] = time.perf_counter() - t + row.get('compile_s', 0.0)
        mem = compiled.memory_analysis()
        need = None
        if mem is not None:
          need = (
            mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            - mem.alias_size_in_bytes
            + mem.temp_size_in_bytes
          )
          row['compiled_mib'] = need / 2**20
        row['remat'] = remat
        if limit is None or need is None or need <= 0.97 * limit or remat:
          break
        log(f'[{name}] needs {need / 2**30:.1f} GiB of {limit / 2**30:.1f}: recompiling with remat')
      if limit is not None and need is not None and need > limit:
        row['error'] = f'does not fit: needs {need / 2**30:.1f} GiB of {limit / 2**30:.1f} GiB'
        emit(row)
        continue
      cost = compiled.cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
      flops = float(cost.get('flops', math.nan))
      if state is None:
        state = train_lib.create_state(model, optimizer, jax.random.key(0), shardings)
      state, metrics = compiled(state, batch, rng)  # warm-up
      jax.block_until_ready(metrics)
      steps, t = 0, time.perf_counter()
      while steps < spec['min_steps'] or (
        time.perf_counter() - t < spec['seconds'] and steps < spec['max_steps']
      ):
        state, metrics = compiled(state, batch, rng)
        steps += 1
      jax.block_until_ready((state, metrics))
      elapsed = time.perf_counter() - t
      stats = device.memory_stats() or {}
      row.update(
        steps=steps,
        step_ms=1000 * elapsed / steps,
        images_per_s=batch_size * steps / elapsed,
        step_tflop=flops / 1e12,
        mfu=flops * steps / elapsed / (peak * 1e12) if peak else None,
        peak_mib=stats['peak_bytes_in_use'] / 2**20 if 'peak_bytes_in_use' in stats else None,
        loss=float(metrics['loss']),
      )
    except Exception as e:  # noqa: BLE001 - an out-of-memory row must not end the check
      row['error'] = f'{type(e).__name__}: {str(e)[:300]}'
      state = None  # a failed call may have consumed the donated state
    row['seconds'] = time.perf_counter() - t_row
    emit(row)


def worker_torch(spec: dict) -> None:
  """HF GroupViTModel rows: eager bf16 autocast at each batch, then torch.compile."""
  import contextlib

  import torch

  from groupvit_jax import config_lib

  bench = _bench_train_step()
  dev = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  cuda = dev.type == 'cuda'
  if cuda:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

  def side(batch_size):
    config = trainer_config(spec, 'bfloat16', batch_size)
    model_cfg = config_lib.build_model_config(config)
    host = bench.host_batch(
      batch_size, model_cfg.image.image_size, model_cfg.text.context_length, 3, True, 0
    )
    s = bench.TorchSide(config, model_cfg, host, 'bfloat16', 0)
    s.model.to(dev)  # keeps the Parameter objects the optimizer holds
    s.ml_scale.data = s.ml_scale.data.to(dev)
    s.pixels, s.ids, s.prompts = (x.to(dev) for x in (s.pixels, s.ids, s.prompts))
    s.autocast = torch.autocast(dev.type, dtype=torch.bfloat16)
    return s

  def timed(s, steps):
    with torch.device(dev) if cuda else contextlib.nullcontext():
      elapsed = s.run(steps)  # ends with float(loss): synchronises
    return elapsed

  rows = [(b, False) for b in spec['batches']] + [(spec['compile_batch'], True)]
  for batch_size, compiled in rows:
    name = f'torch bf16 {"torch.compile" if compiled else "eager"} train step, batch {batch_size}'
    emit({'start': name})
    t_row = time.perf_counter()
    row = dict(
      row=name, impl='torch.compile' if compiled else 'torch eager', dtype='bfloat16',
      batch=batch_size,
    )  # fmt: skip
    s = None
    try:
      s = side(batch_size)
      if cuda:
        torch.cuda.reset_peak_memory_stats()
      eager_s = timed(s, 1)  # eager warm-up step (allocates AdamW state)
      if compiled:
        s._multi_label_loss = torch.compile(s._multi_label_loss, backend=spec['compile_backend'])
        first = timed(s, 1)
        row['compile_s'] = max(first - eager_s, 0.0)
        row['compile_backend'] = spec['compile_backend']
      steps, elapsed = 0, 0.0
      while steps < spec['min_steps'] or (elapsed < spec['seconds'] and steps < spec['max_steps']):
        elapsed += timed(s, 1)
        steps += 1
      row.update(
        steps=steps,
        step_ms=1000 * elapsed / steps,
        images_per_s=batch_size * steps / elapsed,
        peak_mib=torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        params=s.params,
        loss=s.loss,
      )
    except Exception as e:  # noqa: BLE001 - an out-of-memory row must not end the check
      row['error'] = f'{type(e).__name__}: {str(e)[:300]}'
    del s
    if cuda:
      torch.cuda.empty_cache()
    row['seconds'] = time.perf_counter() - t_row
    emit(row)


def _hf_and_ours(spec: dict, directory: str):
  """(HF GroupViTModel, our Pretrained converted from it): random weights, seed 0."""
  from references import hf_groupvit, segmentation

  if spec['tiny']:
    hf, ours, _ = segmentation.tiny_models(directory)
    return hf, ours
  from groupvit_jax import load_pretrained
  from groupvit_jax.convert import convert

  hf = hf_groupvit.random_hf_model(seed=0)  # the released GroupViT-S architecture
  hf.save_pretrained(os.path.join(directory, 'hf'))
  convert(os.path.join(directory, 'hf'), os.path.join(directory, 'ours'))
  return hf, load_pretrained(os.path.join(directory, 'ours'))


def _seg_images(spec: dict):
  from references.segmentation import synthetic_images

  sizes = [(375, 500), (500, 375), (333, 500)]
  return synthetic_images([sizes[i % 3] for i in range(spec['images'])])


def _windows(images) -> int:
  from groupvit_jax import segmenter

  return sum(
    len(segmenter.window_starts(h, 448, 224)) * len(segmenter.window_starts(w, 448, 224))
    for h, w in (segmenter.rescale_size(*im.shape[:2]) for im in images)
  )


def worker_seg_ours(spec: dict) -> None:
  import jax

  from evaluation import class_names as cn
  from groupvit_jax import prompts, segmenter

  name = f'seg ours, window batch {spec["window_batch"]}'
  emit({'start': name})
  t_row = time.perf_counter()
  row = dict(row=name, impl='jax', dtype='float32')
  try:
    with tempfile.TemporaryDirectory() as tmp:
      _, ours = _hf_and_ours(spec, tmp)
    voc = cn.get_spec('voc')
    names = list(voc.prompt_names[1:])
    ce = prompts.class_embeddings(ours.config, ours.variables, ours.tokenize, names)
    images = _seg_images(spec)
    protocol = segmenter.Protocol(window_batch=spec['window_batch'])

    def run():
      seg = segmenter.ZeroShotSegmenter(
        ours.config, ours.variables, ce, voc.background_threshold, protocol
      )
      out = {r.key: r.pred for r in seg.run([(i, im, None) for i, im in enumerate(images)])}
      return [out[i] for i in range(len(images))]

    c0, t = segmenter.compile_stats()['compile_seconds'], time.perf_counter()
    run()  # warm-up: compiles
    row['compile_s'] = segmenter.compile_stats()['compile_seconds'] - c0
    row['warmup_s'] = time.perf_counter() - t
    times, preds = [], None
    for _ in range(spec['seg_rounds']):
      t = time.perf_counter()
      preds = run()
      times.append(time.perf_counter() - t)
    best = min(times)
    windows = _windows(images)
    np.save(os.path.join(spec['workdir'], 'seg_ours.npy'), np.stack([p[:333, :333] for p in preds]))
    row.update(
      images=len(images),
      windows=windows,
      windows_per_s=windows / best,
      images_per_s=len(images) / best,
      rounds_s=[round(x, 4) for x in times],
      device=str(jax.devices()[0]),
    )
  except Exception as e:  # noqa: BLE001
    row['error'] = f'{type(e).__name__}: {str(e)[:300]}'
  row['seconds'] = time.perf_counter() - t_row
  emit(row)


def worker_seg_reference(spec: dict) -> None:
  import contextlib

  import torch

  from evaluation import class_names as cn
  from references import segmentation as ref

  dev = torch.device('cuda' if torch.cuda.is_available() else 'cpu')

  class OnDevice(ref.ReleasedSegmentation):
    """The release's protocol with the model and the window tensors on `dev` (mmseg on a GPU);
    host resizing (the OpenCV port) stays on the CPU, as in mmseg's data pipeline."""

    def inference(self, image, ratio, flip):
      h, w = image.shape[:2]
      scale = (int(self.img_scale[0] * ratio), int(self.img_scale[1] * ratio))
      canvas = ref.cv2_resize_linear(image, *ref.imrescale_size(h, w, scale))
      if flip:
        canvas = np.ascontiguousarray(canvas[:, ::-1])
      img = ref.imnormalize(canvas).to(dev)
      F = torch.nn.functional
      with torch.device(dev) if dev.type == 'cuda' else contextlib.nullcontext():
        logits = self.slide_inference(img) if self.mode == 'slide' else self.encode_decode(img)
        out = F.softmax(F.interpolate(logits, size=(h, w), mode='bilinear'), dim=1)
      return out.flip(dims=(3,)) if flip else out

    def predict(self, image):
      total = sum(self.inference(image, r, f) for r in self.ratios for f in (False,))
      return total.argmax(dim=1)[0].cpu().numpy()

  name = 'seg reference (release protocol, eager PyTorch, 1 window per call)'
  emit({'start': name})
  t_row = time.perf_counter()
  row = dict(row=name, impl='torch eager', dtype='float32')
  try:
    with tempfile.TemporaryDirectory() as tmp:
      hf, ours = _hf_and_ours(spec, tmp)
    voc = cn.get_spec('voc')
    names = list(voc.prompt_names[1:])
    from groupvit_jax import prompts

    ce = ref.hf_class_embeddings(hf, ours.tokenize(prompts.build_prompts(names)), len(names))
    hf.to(dev)
    seg = OnDevice(hf, ce.to(dev), voc.background_threshold)
    images = _seg_images(spec)
    seg.predict(images[0])  # warm-up
    times, preds = [], None
    for _ in range(spec['seg_rounds']):
      t = time.perf_counter()
      preds = [seg.predict(im) for im in images]
      times.append(time.perf_counter() - t)
    best = min(times)
    windows = _windows(images)
    row.update(
      images=len(images),
      windows=windows,
      windows_per_s=windows / best,
      images_per_s=len(images) / best,
      rounds_s=[round(x, 4) for x in times],
      device=str(dev),
    )
    path = os.path.join(spec['workdir'], 'seg_ours.npy')
    if os.path.exists(path):
      theirs = np.stack([p[:333, :333] for p in preds])
      row['pixel_agreement'] = float(np.mean(np.load(path) == theirs))
  except Exception as e:  # noqa: BLE001
    row['error'] = f'{type(e).__name__}: {str(e)[:300]}'
  row['seconds'] = time.perf_counter() - t_row
  emit(row)


def _scg_towers(tiny: bool):
  from groupvit_jax.models.clip import CLIPConfig, clip_vision_config
  from groupvit_jax.models.config import TextEncoderConfig
  from groupvit_jax.models.vit import ViTConfig

  if tiny:
    clip = CLIPConfig(
      vision=clip_vision_config(image_size=32, patch_size=16, width=32, depth=2, num_heads=2),
      text=TextEncoderConfig(width=32, num_heads=2, num_layers=1),
      embed_dim=24,
    )
    return clip, ViTConfig(image_size=32, patch_size=16, width=32, depth=2, num_heads=2)
  return CLIPConfig(), ViTConfig()  # OpenAI ViT-B/16 CLIP, DINO ViT-S/16


def worker_scg(spec: dict) -> None:
  """SCG rows: the region-adaptation step (groupvit_jax/scg_train.py, bf16 towers) and the
  zero-training window function at 448 px (groupvit_jax/scg_inference.py), random weights."""
  import jax
  import ml_collections

  from groupvit_jax import config_lib, optim, scg_train, segmenter
  from groupvit_jax import sharding as sharding_lib
  from groupvit_jax.checkpoints import store
  from groupvit_jax.models.scg import SCGConfig

  clip_cfg, dino_cfg = _scg_towers(spec['tiny'])
  size = clip_cfg.vision.image_size
  with tempfile.TemporaryDirectory() as tmp:
    clip_dir, dino_dir = os.path.join(tmp, 'clip'), os.path.join(tmp, 'dino')
    store.save_model(clip_dir, clip_cfg, store.init_model(clip_cfg, jax.random.key(1)))
    store.save_model(dino_dir, dino_cfg, store.init_model(dino_cfg, jax.random.key(2)))
    for batch in spec['batches']:
      name = f'scg step bf16, batch {batch}'
      emit({'start': name})
      t_row = time.perf_counter()
      row = dict(row=name, impl='jax', dtype='bfloat16', batch=batch)
      try:
        config = config_lib.trainer_defaults()
        config.method = 'scg'
        config.model.dtype = 'bfloat16'
        config.scg.clip_dir, config.scg.grouper_dir = clip_dir, dino_dir
        config.global_batch_size = batch
        config.mesh = (('data', 1), ('fsdp', 1))
        config.data = ml_collections.ConfigDict(
          dict(image_size=size, text=dict(num_prompts=3, context_length=77))
        )
        task = scg_train.SCGTask(config)
        # One device, as the GroupViT rows (the tests' 8 fake CPU devices included).
        mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ('data', 'fsdp'))
        optimizer, schedule = optim.make_optimizer(config.optimizer, batch, 1000)
        abstract = task.abstract_state(optimizer)
        shardings = sharding_lib.tree_shardings(abstract, config.partition_rules, mesh)
        state = task.create_state(optimizer, None, shardings)
        step = task.make_train_step(optimizer, schedule, config, mesh, shardings)
        rng = np.random.default_rng(0)
        host = {
          'image': rng.normal(size=(batch, size, size, 3)).astype(np.float32),
          'text': rng.integers(1, 4000, (batch, 77)).astype(np.int32),
          'prompts': rng.integers(1, 4000, (batch, 3, 77)).astype(np.int32),
        }
        data = sharding_lib.global_batch(host, mesh)
        key = jax.random.key(0)
        t = time.perf_counter()
        compiled = step.lower(state, data, key).compile()
        row['compile_s'] = time.perf_counter() - t
        state, metrics = compiled(state, data, key)
        jax.block_until_ready(metrics)
        n, t = 0, time.perf_counter()
        while n < spec['min_steps'] or (
          n < spec['max_steps'] and time.perf_counter() - t < spec['seconds']
        ):
          state, metrics = compiled(state, data, key)
          jax.block_until_ready(metrics)
          n += 1
        dt = (time.perf_counter() - t) / n
        row.update(step_ms=1e3 * dt, images_per_s=batch / dt, loss=float(metrics['loss']))
        stats = jax.devices()[0].memory_stats() or {}
        if 'peak_bytes_in_use' in stats:
          row['peak_mib'] = stats['peak_bytes_in_use'] / 2**20
      except Exception as e:  # noqa: BLE001
        row['error'] = f'{type(e).__name__}: {str(e)[:300]}'
      row['seconds'] = time.perf_counter() - t_row
      emit(row)
    name = f'scg windows (zero training), window batch {spec["window_batch"]}'
    emit({'start': name})
    t_row = time.perf_counter()
    row = dict(row=name, impl='jax', dtype='float32')
    try:
      cfg = SCGConfig(clip=clip_cfg, grouper=dino_cfg)
      variables = store.init_model(cfg, jax.random.key(3))
      crop = 64 if spec['tiny'] else 448
      protocol = segmenter.Protocol(
        window_batch=spec['window_batch'],
        crop_size=crop,
        stride=crop // 2,
        short_side=crop,
        long_side=crop,
      )  # one window per crop x crop image
      ce = np.eye(20, clip_cfg.embed_dim, dtype=np.float32)
      images = [
        np.random.default_rng(i).integers(0, 255, (crop, crop, 3), np.uint8) for i in range(2)
      ]

      def run():
        seg = segmenter.ZeroShotSegmenter(cfg, variables, ce, None, protocol)
        items = [(i, images[i % 2], None) for i in range(spec['window_batch'])]
        list(seg.run(items, need_pred=False))

      t = time.perf_counter()
      run()
      row['compile_s'] = time.perf_counter() - t
      times = []
      for _ in range(2):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
      row.update(windows_per_s=spec['window_batch'] / min(times), device=str(jax.devices()[0]))
    except Exception as e:  # noqa: BLE001
      row['error'] = f'{type(e).__name__}: {str(e)[:300]}'
    row['seconds'] = time.perf_counter() - t_row
    emit(row)


WORKERS = {
  'scg': worker_scg,
  'jax': worker_jax,
  'torch': worker_torch,
  'seg_ours': worker_seg_ours,
  'seg_reference': worker_seg_reference,
}


# --------------------------------------------------------------------------------------------------
# Parent: groups with deadlines, table
# --------------------------------------------------------------------------------------------------


def groups(args, workdir: str) -> list[tuple[str, dict, float]]:
  """(worker, spec, budget seconds) in the order they run."""
  base = dict(
    tiny=args.dry_run,
    min_steps=args.min_steps,
    max_steps=args.max_steps,
    seconds=args.seconds,
    workdir=workdir,
  )
  b = args.budget / 510  # the shares below sum to 510 s; the budget scales them
  out = [
    (
      'jax',
      dict(base, dtype='bfloat16', batches=args.batch, measure_peak=True, peak_size=args.peak_size),
      150 * b,
    ),
    ('jax', dict(base, dtype='float32', batches=args.f32_batch), 90 * b),
    (
      'torch',
      dict(
        base,
        batches=args.batch,
        compile_batch=args.compile_batch,
        compile_backend=args.compile_backend,
      ),
      120 * b,
    ),
    (
      'seg_ours',
      dict(base, images=args.images, window_batch=args.window_batch, seg_rounds=2),
      50 * b,
    ),
    ('seg_reference', dict(base, images=args.images, seg_rounds=2), 40 * b),
    ('scg', dict(base, batches=args.scg_batch, window_batch=args.window_batch), 60 * b),
  ]
  out = [g for g in out if g[0] != 'jax' or g[1]['batches']]
  return [g for g in out if g[0] not in args.skip and g[1].get('dtype') not in args.skip]


def run_group(worker: str, spec: dict, timeout: float) -> list[dict]:
  """Runs one worker subprocess; returns its rows (plus a row for the one a deadline killed)."""
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(
    [str(REPO_ROOT)] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p]
  )
  if worker in ('jax', 'seg_ours', 'scg'):
    env.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.92')
  cmd = [sys.executable, __file__, '--worker', worker, '--spec', json.dumps(spec)]
  rows, started = [], None
  with tempfile.TemporaryFile(mode='w+') as out:
    proc = subprocess.Popen(cmd, env=env, stdout=out, cwd=REPO_ROOT, text=True)
    try:
      proc.wait(timeout=max(timeout, 1.0))
      killed = False
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
      killed = True
    out.seek(0)
    for line in out:
      try:
        r = json.loads(line)
      except json.JSONDecodeError:
        continue
      if 'start' in r:
        started = r['start']
      else:
        started = None
        rows.append(r)
  if started is not None:
    why = f'killed at deadline ({timeout:.0f} s)' if killed else f'exit code {proc.returncode}'
    rows.append({'row': started, 'error': why})
  elif proc.returncode and not killed:
    rows.append({'row': f'{worker} worker', 'error': f'exit code {proc.returncode}'})
  return rows


def _fmt(v, spec: str, scale: float = 1.0, unit: str = '') -> str:
  return '--' if v is None else format(v * scale, spec) + unit


HEADER = (
  '| row | images/s | step ms | MFU (bf16 peak) | peak MiB | compile s | windows/s | note |\n'
  '|---|---:|---:|---:|---:|---:|---:|---|'
)


def markdown_row(r: dict) -> str:
  note = r.get('error') or ''
  if r.get('row') == 'matmul peak':
    note = (
      f'bf16 {r["peak_tflops"]:.3g} TFLOP/s, f32 (default precision) '
      f'{r["float32_default_precision_tflops"]:.3g} TFLOP/s, n = {r["n"]}'
    )
  if r.get('remat'):
    note = ('remat on; ' + note).strip('; ')
  if 'pixel_agreement' in r:
    note = (note + f'; pixel agreement {100 * r["pixel_agreement"]:.3f} %').strip('; ')
  return (
    f'| {r.get("row")} | {_fmt(r.get("images_per_s"), ".1f")} | {_fmt(r.get("step_ms"), ".1f")} '
    f'| {_fmt(r.get("mfu"), ".1f", 100, "%")} | {_fmt(r.get("peak_mib"), ".0f")} | '
    f'{_fmt(r.get("compile_s"), ".1f")} | {_fmt(r.get("windows_per_s"), ".1f")} | {note} |'
  )


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument('--dry-run', action='store_true', help='CPU, tiny model, batch 2, few steps')
  p.add_argument('--wheels', default=None, help='directory of wheels for missing pure packages')
  p.add_argument('--budget', type=float, default=None, help='seconds for all groups (460)')
  p.add_argument('--batch', type=int, nargs='+', default=None, help='bf16 batches (256 512 1024)')
  p.add_argument('--f32-batch', type=int, nargs='+', default=None, help='f32 batches (256 512)')
  p.add_argument('--compile-batch', type=int, default=None, help='torch.compile batch (256)')
  p.add_argument('--compile-backend', default=None, help="torch.compile backend ('inductor')")
  p.add_argument('--peak-size', type=int, default=None, help='matmul side for the peak (8192)')
  p.add_argument('--images', type=int, default=None, help='segmentation images (24)')
  p.add_argument('--window-batch', type=int, default=None, help='windows per call (16)')
  p.add_argument('--scg-batch', type=int, nargs='+', default=None, help='SCG step batches (256)')
  p.add_argument('--min-steps', type=int, default=None)
  p.add_argument('--max-steps', type=int, default=None)
  p.add_argument('--seconds', type=float, default=None, help='timing seconds per row (3)')
  p.add_argument(
    '--skip',
    nargs='+',
    default=[],
    help='groups to skip: jax torch seg_ours seg_reference scg float32',
  )
  p.add_argument('--worker', help=argparse.SUPPRESS)
  p.add_argument('--spec', help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  full = dict(
    budget=460.0,
    scg_batch=[256],
    batch=[256, 512, 1024],
    f32_batch=[256, 512],
    compile_batch=256,
    compile_backend='inductor',
    peak_size=8192,
    images=24,
    window_batch=16,
    min_steps=3,
    max_steps=20,
    seconds=3.0,
  )
  dry = dict(
    full,
    budget=280.0,
    batch=[2],
    scg_batch=[2],
    f32_batch=[],  # the float32 group is the bfloat16 group's code with another dtype string
    compile_batch=2,
    compile_backend='eager',  # dynamo's capture without inductor's C++ build on a CPU
    peak_size=256,
    images=1,
    window_batch=2,
    min_steps=1,
    max_steps=2,
    seconds=0.0,
  )
  for k, v in (dry if args.dry_run else full).items():
    if getattr(args, k) is None:
      setattr(args, k, v)
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.worker:
    WORKERS[args.worker](json.loads(args.spec))
    return 0
  t0 = time.perf_counter()
  command = shlex.join(
    ['python', 'benchmarks/device_check.py'] + list(sys.argv[1:] if argv is None else argv)
  )
  gone = use_wheels(args.wheels)
  if gone:
    log(f'warning: modules missing (rows needing them will fail): {gone}')
  if args.dry_run:
    os.environ['JAX_PLATFORMS'] = 'cpu'
    os.environ['CUDA_VISIBLE_DEVICES'] = ''
    # LLVM's optimisation level: the same HLO, cheaper machine code, about a third less compile.
    if 'xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
      flags = os.environ.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0'
      os.environ['XLA_FLAGS'] = flags.strip()
  from importlib.metadata import PackageNotFoundError, version

  def ver(name):
    try:
      return version(name)
    except PackageNotFoundError:
      return None

  meta = {
    'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
    'machine': f'{platform.machine()}, {os.cpu_count()} CPU cores',
    'python': platform.python_version(),
    'versions': {n: ver(n) for n in ('jax', 'jaxlib', 'flax', 'optax', 'torch', 'transformers')},
    'command': command,
    'dry_run': args.dry_run,
  }
  emit({'meta': meta, 'missing_modules': gone})
  rows = []
  deadline = t0 + args.budget
  carry, peak, flops_by_batch = 0.0, None, {}
  with tempfile.TemporaryDirectory() as workdir:
    for worker, spec, budget in groups(args, workdir):
      spec['workdir'] = workdir
      left = deadline - time.perf_counter()
      timeout = min(budget + carry, left)
      if timeout < 5:
        rows.append({'row': f'{worker} {spec.get("dtype", "")}'.strip(), 'error': 'no time left'})
        emit(rows[-1])
        continue
      t = time.perf_counter()
      log(f'[{worker} {spec.get("dtype", "")}] up to {timeout:.0f} s ...')
      if worker == 'jax' and peak is not None:
        spec['peak_tflops'] = peak
      for r in run_group(worker, spec, timeout):
        if r.get('row') == 'matmul peak':
          peak = r.get('peak_tflops')
        if r.get('impl', '').startswith('torch') and r.get('images_per_s') and peak:
          # Same work as the JAX bf16 step of this batch: its FLOP count.
          jax_row = flops_by_batch.get(r.get('batch'))
          if jax_row:
            r['mfu'] = jax_row * r['images_per_s'] / r['batch'] / peak
        if r.get('impl') == 'jax' and r.get('dtype') == 'bfloat16' and r.get('step_tflop'):
          flops_by_batch[r['batch']] = r['step_tflop']
        rows.append(r)
        emit(r)
      carry = max(0.0, timeout - (time.perf_counter() - t))
  print(f'\ncommand: `{command}`; {meta["date"]}; total {time.perf_counter() - t0:.0f} s\n')
  print(HEADER)
  for r in rows:
    print(markdown_row(r))
  return 0


if __name__ == '__main__':
  sys.exit(main())
