"""Training-step throughput: groupvit_jax's jitted train step vs Hugging Face GroupViTModel in
PyTorch.

Usage (from the repository root):

    .venv/bin/python benchmarks/train_step.py --model groupvit_s --batch 16 --dtype float32 --rounds
    3 --json .venv/bin/python benchmarks/train_step.py --model groupvit_s --batch 8 16 32 64 --dtype
    float32 bfloat16 .venv/bin/python benchmarks/train_step.py --model tiny --batch 8 --dtype
    float32 --rounds 3 --threads 1

One row per (model, dtype, batch). A row times one full training step on each side, on the same
random batch, with the same architecture and the same thread count:

* ``jax``: ``groupvit_jax.train_step.make_train_step`` (forward, image-text contrastive loss, plus
  the multi-label loss with ``--multi-label``, backward, global-norm clipping and AdamW with the
  released weight-decay mask), built exactly as ``groupvit_jax/main.py`` builds it, on a one-device
  mesh (``jax.devices()[:1]``, so it also runs under the tests' 8 fake CPU devices). It is compiled
  ahead of time with ``.lower(...).compile()``; ``compile_s`` is that compilation and
  ``step_gflops`` the FLOPs XLA's ``cost_analysis()`` counts for the whole step (every op, not only
  the matmuls).
* ``torch``: ``transformers.GroupViTModel`` with the same architecture (random weights; parameter
  counts are printed and checked) in train mode: ``model(input_ids, pixel_values,
  return_loss=True).loss``,
  ``backward``, ``clip_grad_norm_`` (the released recipe clips at 5, as the JAX step does),
  ``torch.optim.AdamW.step`` (same hyper-parameters and decay mask), ``zero_grad``. bfloat16 runs
  under
  ``torch.autocast('cpu', dtype=torch.bfloat16)``; on the JAX side it is the model config's
  ``dtype='bfloat16'`` (bf16 matmuls, float32 parameters, norms and softmaxes on both sides).
  Hugging Face has no multi-label loss: with ``--multi-label`` this script adds it on the torch side
  with the formula of ``groupvit_jax/losses.py`` (captions and prompts through one text-tower call,
  as ours does, and a separate ``multi_label_logit_scale`` parameter), so both sides still do the
  same work. Without ``--multi-label`` (the default, like for like with ``return_loss=True``) the
  JAX model is built with ``multi_label=False``.

Each side lives in its own process (``multiprocessing`` spawn), so neither framework's thread pool
or allocator state slows the other (in one process, JAX steps right after torch steps were measured
10-25 % slower). Both do one untimed warm-up step, then ``--rounds`` rounds alternate (jax round,
torch round, jax round, ...), each round ``--steps-per-round`` steps; the reported images/s are the
medians over rounds, ``ratio`` = jax / torch of those medians. Other load on the machine moves
single rounds; alternating spreads it over both sides.

Models: ``groupvit_s`` is the released GroupViT-S (``groupvit_jax.models.config.GroupViTConfig()``:
224 px, patch 16, width 384, depths (6, 3, 3), group tokens (64, 8, 0)); ``tiny`` and ``synthetic``
are the models of ``configs/tiny.py`` and ``configs/synthetic_groupvit.py`` (the built-in GroupViT).
The JAX step is compiled as the trainer compiles it, with ``groupvit_jax.xla_cpu.compiler_options``
for the model; each row records those options and the ``XLA_FLAGS`` of its JAX process. The released
config has stochastic depth 0.1, which Hugging Face's model lacks (no parameters, a per-sample mask
multiply per block: negligible in time).

``--threads N`` (default: every CPU this process may run on): ``torch.set_num_threads(N)``, and for
JAX, whose XLA:CPU backend sizes its own intra-op thread pool from the CPUs the process may run on
when the backend starts (there is no run-time knob), each side's process is restricted
(``sched_setaffinity``) to the first N of its allowed CPUs before JAX starts. So both sides get N
threads on the same N cores; use
``taskset -c LIST`` to choose which cores.

Columns (JSON keys): ``jax_images_per_s`` / ``torch_images_per_s`` (median over rounds), ``ratio``,
``mfu`` = step_gflops * jax steps/s / ``matmul_peak_gflops`` (``torch_mfu`` likewise with the same
FLOP count), where the peak is the best of a few jitted JAX ``--peak-size`` square matmuls of the
row's dtype on this machine and thread count; ``compile_s``; ``step_gflops``; ``peak_rss_mib`` /
``torch_peak_rss_mib`` =
``getrusage(RUSAGE_SELF).ru_maxrss`` of each side's own process, so per configuration and per
framework;
``jax_params`` / ``torch_params``; per-round values and the final losses as a sanity check.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import pathlib
import platform
import resource
import shlex
import statistics
import sys
import time

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

MODELS = ('groupvit_s', 'tiny', 'synthetic')
DTYPES = ('float32', 'bfloat16')


def log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument(
    '--model',
    action='append',
    default=None,
    help=f'one of {MODELS}; repeatable or a comma list (default groupvit_s)',
  )
  p.add_argument('--batch', type=int, nargs='+', default=[8, 16, 32, 64])
  p.add_argument('--dtype', nargs='+', choices=DTYPES, default=list(DTYPES))
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--steps-per-round', type=int, default=3)
  p.add_argument(
    '--threads',
    type=int,
    default=None,
    help="torch threads and CPUs the process (hence XLA's pool) may use; default all allowed",
  )
  p.add_argument(
    '--multi-label', action='store_true', help='add the multi-label loss on both sides'
  )
  p.add_argument('--no-torch', action='store_true', help='JAX only (torch is not imported)')
  p.add_argument('--json', action='store_true', help='one JSON object per row on stdout')
  p.add_argument(
    '--peak-size', type=int, default=2048, help='side of the square matmul for the peak'
  )
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args(argv)
  models = [
    m.strip() for item in (args.model or ['groupvit_s']) for m in item.split(',') if m.strip()
  ]
  bad = [m for m in models if m not in MODELS]
  if bad:
    p.error(f'unknown --model {bad}; choose from {MODELS}')
  args.model = models
  if min(args.batch) < 2:
    p.error('--batch must be >= 2 (train-mode BatchNorm and the contrastive loss need 2 rows)')
  if args.rounds < 1 or args.steps_per_round < 1:
    p.error('--rounds and --steps-per-round must be >= 1')
  return args


def allowed_cpus() -> list[int]:
  if hasattr(os, 'sched_getaffinity'):
    return sorted(os.sched_getaffinity(0))
  return list(range(os.cpu_count() or 1))


def check_threads(threads: int) -> list[int]:
  """The CPUs this process may use; exits when `threads` asks for more."""
  cpus = allowed_cpus()
  if threads > len(cpus):
    raise SystemExit(f'--threads {threads} > the {len(cpus)} CPUs this process may use')
  return cpus


def restrict_threads(threads: int) -> None:
  """Limits this process to `threads` of its CPUs, before XLA:CPU sizes its thread pool from
  them."""
  cpus = check_threads(threads)
  if threads == len(cpus):
    return
  if not hasattr(os, 'sched_setaffinity'):
    log(f'warning: cannot restrict CPUs on {platform.system()}; XLA uses {len(cpus)} threads')
    return
  if 'jax' in sys.modules:
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
      log('warning: the JAX backend already started; its thread pool keeps its size')
  os.sched_setaffinity(0, cpus[:threads])


# --- configs
# ---------------------------------------------------------------------------------------
def recipe(model_name: str, batch: int, dtype: str, multi_label: bool):
  """The trainer's ConfigDict for one row: the model, batch, dtype, one device, one micro-batch."""
  from groupvit_jax import config_lib
  from groupvit_jax.main import base_config

  if model_name == 'groupvit_s':
    config = base_config()
    config.model = config_lib.model_config()  # GroupViTConfig() defaults: the release
  else:
    import importlib.util

    recipe = {'synthetic': 'synthetic_groupvit'}.get(model_name, model_name)
    spec = importlib.util.spec_from_file_location(
      model_name, REPO_ROOT / 'configs' / f'{recipe}.py'
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
  config.model.dtype = dtype
  config.model.multi_label = multi_label
  config.global_batch_size = batch
  config.grad_accum_steps = 1
  config.loss.formulation = 'global'
  config.mesh = (('data', 1), ('fsdp', 1))
  return config


def hf_model(cfg, seed: int):
  """A random-weight transformers.GroupViTModel with the architecture of our GroupViTConfig
  `cfg`."""
  from references import hf_groupvit

  im, tx = cfg.image, cfg.text
  # What Hugging Face's model cannot express would make the comparison unfair: refuse it.
  unsupported = {
    'projection_layers != 2': cfg.projection_layers != 2,
    'pre_assign_mlp_ratio != mlp_ratio': im.pre_assign_mlp_ratio != im.mlp_ratio,
    'no pre-assignment attention': not im.pre_assign_attention,
    'no group projector': not im.group_projector and im.num_grouping_stages > 1,
    'soft assignment': not (im.hard_assignment and im.gumbel),
  }
  bad = [k for k, v in unsupported.items() if v]
  if bad:
    raise SystemExit(f'Hugging Face GroupViT cannot build this model: {", ".join(bad)}')
  # HF reads num_output_groups once per stage (the last stage's entry is unused); ours lists
  # grouping stages only.
  groups = list(im.num_output_groups) + [im.num_output_groups[-1]] * (
    len(im.depths) - len(im.num_output_groups)
  )
  vision = dict(
    hidden_size=im.width,
    intermediate_size=int(im.width * im.mlp_ratio),
    depths=list(im.depths),
    num_hidden_layers=sum(im.depths),
    num_group_tokens=list(im.num_group_tokens),
    num_output_groups=groups,
    num_attention_heads=im.num_heads,
    image_size=im.image_size,
    patch_size=im.patch_size,
    num_channels=im.in_channels,
    layer_norm_eps=im.layer_norm_eps,
    assign_eps=im.assign_eps,
    assign_mlp_ratio=list(im.assign_mlp_ratio),
  )
  text = dict(
    vocab_size=tx.vocab_size,
    hidden_size=tx.width,
    intermediate_size=int(tx.width * tx.mlp_ratio),
    num_hidden_layers=tx.num_layers,
    num_attention_heads=tx.num_heads,
    max_position_embeddings=tx.context_length,
    layer_norm_eps=tx.layer_norm_eps,
  )
  return hf_groupvit.random_hf_model(
    seed=seed,
    vision=vision,
    text=text,
    projection_dim=cfg.projection_dim,
    projection_intermediate_dim=cfg.projection_hidden_dim,
    logit_scale_init_value=cfg.logit_scale_init,
  ).train()


# --- data
# ------------------------------------------------------------------------------------------
def host_batch(
  batch: int, image_size: int, context_length: int, num_prompts: int, multi_label: bool, seed: int
) -> dict[str, np.ndarray]:
  """Random training batch: 'image' [B, S, S, 3] float32 ~ N(0, 1) (normalised pixels), 'text'
  [B, L] int32 and, with multi_label, 'prompts' [B, K, L] int32.

  Token rows are SOT, 3-30 random word ids, EOT, zero padding; word ids stay below SOT so EOT is the
  largest id, which is where both text towers pool (argmax of the ids / first EOT).
  """
  from groupvit_jax.tokenizer import EOT_TOKEN, SOT_TOKEN

  rng = np.random.default_rng(seed)

  def tokens(shape):
    n = rng.integers(3, 31, size=shape)[..., None]
    pos = np.arange(context_length)
    words = rng.integers(1, SOT_TOKEN, size=shape + (context_length,))
    ids = np.where((pos >= 1) & (pos <= n), words, 0)
    ids = np.where(pos == 0, SOT_TOKEN, ids)
    return np.where(pos == n + 1, EOT_TOKEN, ids).astype(np.int32)

  out = {
    'image': rng.standard_normal((batch, image_size, image_size, 3), dtype=np.float32),
    'text': tokens((batch,)),
  }
  if multi_label:
    out['prompts'] = tokens((batch, num_prompts))
  return out


# --- measurements
# ----------------------------------------------------------------------------------
def matmul_peak_gflops(dtype: str, n: int, budget_s: float = 2.0, min_reps: int = 3) -> float:
  """Best-of-several GFLOP/s of a jitted [n, n] @ [n, n] JAX matmul in `dtype` on device 0."""
  import jax
  import jax.numpy as jnp

  rng = np.random.default_rng(0)
  device = jax.devices()[0]
  a, b = (jax.device_put(jnp.asarray(rng.standard_normal((n, n)), dtype), device) for _ in range(2))
  f = jax.jit(jnp.matmul)
  f(a, b).block_until_ready()
  best, reps, start = math.inf, 0, time.perf_counter()
  while reps < min_reps or (time.perf_counter() - start < budget_s and reps < 10):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
    reps += 1
  return 2 * n**3 / best / 1e9


def peak_rss_mib() -> float:
  kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return kib / 1024 if sys.platform != 'darwin' else kib / 2**20  # macOS reports bytes


class JaxSide:
  """The library's train step, set up as groupvit_jax/main.py does, on one device."""

  def __init__(self, config, batch: dict[str, np.ndarray], seed: int):
    import jax

    from groupvit_jax import config_lib, optim
    from groupvit_jax import sharding as sharding_lib
    from groupvit_jax import train_step as train_lib
    from groupvit_jax.models.groupvit import GroupViT

    self._jax = jax
    # One device even when XLA_FLAGS fakes several (as the tests do): a single-device benchmark.
    mesh = sharding_lib.make_mesh(config.mesh, jax.devices()[:1])
    model_cfg = config_lib.build_model_config(config)
    model = GroupViT(model_cfg)
    optimizer, schedule = optim.make_optimizer(
      config.optimizer, int(config.global_batch_size), int(config.total_steps)
    )
    abstract = train_lib.abstract_state(model, optimizer)
    shardings = train_lib.state_shardings(abstract, mesh, config.partition_rules)
    abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    self.state = train_lib.create_state(model, optimizer, jax.random.key(seed), shardings)
    self.params = sum(x.size for x in jax.tree.leaves(abstract.params))
    keys = ('image', 'text', 'prompts') if model_cfg.multi_label else ('image', 'text')
    self.batch = sharding_lib.global_batch({k: batch[k] for k in keys}, mesh)
    self.rng = jax.random.key(seed + 1)
    step = train_lib.make_train_step(model, optimizer, schedule, config, mesh, shardings)
    t0 = time.perf_counter()
    from groupvit_jax import xla_cpu

    self.compiler_options = xla_cpu.compiler_options(model_cfg)  # as groupvit_jax/main.py compiles
    self.compiled = step.lower(abstract, self.batch, self.rng).compile(
      compiler_options=self.compiler_options
    )
    self.compile_s = time.perf_counter() - t0
    cost = self.compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    self.flops = float((cost or {}).get('flops', math.nan))
    self.loss = math.nan

  def run(self, steps: int) -> float:
    """Runs `steps` steps; returns the wall seconds until the last one finished."""
    t = time.perf_counter()
    for _ in range(steps):
      self.state, metrics = self.compiled(self.state, self.batch, self.rng)
    self._jax.block_until_ready((self.state, metrics))
    elapsed = time.perf_counter() - t
    self.loss = float(metrics['loss'])
    return elapsed


class TorchSide:
  """HF GroupViTModel in train mode + clipping + AdamW, with our optimizer hyper-parameters."""

  def __init__(self, config, model_cfg, batch: dict[str, np.ndarray], dtype: str, seed: int):
    import torch

    from groupvit_jax import optim

    self._torch = torch
    torch.manual_seed(seed)
    self.model = hf_model(model_cfg, seed)
    self.multi_label = 'prompts' in batch
    named = list(self.model.named_parameters())
    if self.multi_label:
      # HF has no multi-label temperature; ours is a separate scalar initialised like logit_scale.
      self.ml_scale = torch.nn.Parameter(torch.tensor(float(model_cfg.logit_scale_init)))
      named.append(('multi_label_logit_scale', self.ml_scale))
    self.params = sum(p.numel() for _, p in named)
    self.logit_scale_max = model_cfg.logit_scale_max
    opt = config.optimizer
    lr = optim.scaled_lrs(opt, int(config.global_batch_size))[0]
    # The decay mask of groupvit_jax.optim.weight_decay_mask: not on 1-D tensors nor biases.
    decay = [p for n, p in named if not (p.ndim == 1 or n.endswith('bias'))]
    no_decay = [p for n, p in named if p.ndim == 1 or n.endswith('bias')]
    self.optimizer = torch.optim.AdamW(
      [
        {'params': decay, 'weight_decay': opt.weight_decay},
        {'params': no_decay, 'weight_decay': 0.0},
      ],
      lr=lr,
      betas=(opt.b1, opt.b2),
      eps=opt.eps,
    )
    self.all_params = [p for _, p in named]
    self.clip = float(opt.clip_grad_norm or 0.0)
    self.pixels = torch.from_numpy(np.ascontiguousarray(batch['image'].transpose(0, 3, 1, 2)))
    self.ids = torch.from_numpy(batch['text'].astype(np.int64))
    self.prompts = torch.from_numpy(batch['prompts'].astype(np.int64)) if self.multi_label else None
    self.autocast = (
      torch.autocast('cpu', dtype=torch.bfloat16)
      if dtype == 'bfloat16'
      else contextlib.nullcontext()
    )
    self.loss = math.nan

  def _multi_label_loss(self):
    """Image-text + multi-label losses as groupvit_jax/losses.py.contrastive_losses, in float32."""
    torch, f = self._torch, self._torch.nn.functional
    m = self.model
    b, k, length = self.prompts.shape
    img = m.visual_projection(m.vision_model(pixel_values=self.pixels).pooler_output)
    # Captions and prompts in one text-tower call, as ours: BatchNorm statistics over both.
    all_ids = torch.cat([self.ids[:, None], self.prompts], 1).reshape(b * (k + 1), length)
    txt = m.text_projection(m.text_model(input_ids=all_ids).pooler_output).reshape(b, k + 1, -1)
    img = f.normalize(img.float(), dim=-1)
    txt = f.normalize(txt.float(), dim=-1)
    cap, prm = txt[:, 0], txt[:, 1:]
    scale = m.logit_scale.exp().clamp(max=self.logit_scale_max)
    ml_scale = self.ml_scale.exp().clamp(max=self.logit_scale_max)
    logits = scale * img @ cap.T
    target = torch.arange(b)
    image_text = 0.5 * (f.cross_entropy(logits, target) + f.cross_entropy(logits.T, target))
    own = ml_scale * torch.einsum('nd,nkd->nk', img, prm)  # [B, K]
    logits_img = ml_scale * img @ prm.reshape(b * k, -1).T  # [B, B*K]
    loss_img = torch.logsumexp(logits_img, -1) - own.sum(-1) / k
    logits_prompt = ml_scale * torch.einsum('nkd,md->nkm', prm, img)  # [B, K, B]
    loss_prompt = torch.logsumexp(logits_prompt, -1) - own
    return image_text + 0.5 * (loss_img.mean() + loss_prompt.mean())

  def run(self, steps: int) -> float:
    torch = self._torch
    t = time.perf_counter()
    for _ in range(steps):
      with self.autocast:
        if self.multi_label:
          loss = self._multi_label_loss()
        else:
          loss = self.model(input_ids=self.ids, pixel_values=self.pixels, return_loss=True).loss
      loss.backward()
      if self.clip:
        torch.nn.utils.clip_grad_norm_(self.all_params, self.clip)
      self.optimizer.step()
      self.optimizer.zero_grad(set_to_none=True)
    elapsed = time.perf_counter() - t
    self.loss = float(loss.detach())
    return elapsed


def _side_worker(
  conn, side: str, model_name: str, batch_size: int, dtype: str, args, peak_gflops: float | None
) -> None:
  """Child process holding one side: builds it, then runs `steps` on each ('run', steps) message.

  The JAX side measures the matmul peak of `dtype` when `peak_gflops` is None (the first row of a
  dtype); later rows reuse that value, so every row of a dtype shares one MFU denominator.

  Each framework gets its own process so that neither runs in the other's leftovers: measured here,
  a JAX step in the same process right after torch steps ran 10-25 % slower than before them
  (torch's OpenMP pool and allocator state), which would bias every alternating comparison.
  """
  restrict_threads(args.threads)  # before JAX's backend / torch's pool starts in this process
  from groupvit_jax import config_lib

  config = recipe(model_name, batch_size, dtype, args.multi_label)
  model_cfg = config_lib.build_model_config(config)
  batch = host_batch(
    batch_size,
    model_cfg.image.image_size,
    model_cfg.text.context_length,
    int(config.data.text.num_prompts),
    args.multi_label,
    args.seed,
  )
  if side == 'jax':
    runner = JaxSide(config, batch, args.seed)
    import jax

    info = {
      'params': runner.params,
      'compile_s': runner.compile_s,
      'flops': runner.flops,
      'matmul_peak_gflops': peak_gflops or matmul_peak_gflops(dtype, args.peak_size),
      'backend': jax.default_backend(),
      'device': str(jax.devices()[0]),
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'compiler_options': runner.compiler_options,
    }
  else:
    import torch

    torch.set_num_threads(args.threads)
    runner = TorchSide(config, model_cfg, batch, dtype, args.seed)
    info = {'params': runner.params}
  runner.run(1)  # warm-up: allocates buffers (and AdamW state / autograd buffers on the torch side)
  conn.send(info)
  while True:
    message = conn.recv()
    if message is None:
      conn.send({'loss': runner.loss, 'peak_rss_mib': peak_rss_mib()})
      return
    conn.send(runner.run(message))


class _Worker:
  """Parent-side handle of a `_side_worker` process."""

  def __init__(self, side: str, *worker_args):
    import multiprocessing

    ctx = multiprocessing.get_context('spawn')
    self._conn, child = ctx.Pipe()
    self._proc = ctx.Process(target=_side_worker, args=(child, side) + worker_args, daemon=True)
    self._proc.start()
    child.close()
    self.info = self._recv(side)
    self.side = side

  def _recv(self, what: str):
    try:
      return self._conn.recv()
    except EOFError:
      self._proc.join()
      raise SystemExit(
        f'the {what} worker died (exit code {self._proc.exitcode}); see its log above'
      )

  def run(self, steps: int) -> float:
    self._conn.send(steps)
    return self._recv(self.side)

  def close(self) -> dict:
    self._conn.send(None)
    out = self._recv(self.side)
    self._proc.join()
    return out


def bench_row(model_name: str, batch_size: int, dtype: str, args, peaks: dict[str, float]) -> dict:
  """Starts one process per side for one configuration and times alternating rounds. Returns the
  row.

  `peaks` maps dtype -> measured matmul peak; the first row of a dtype measures and records it.
  """
  tag = f'{model_name} batch {batch_size} {dtype}'
  log(f'[{tag}] building and compiling the JAX step ...')
  jax_side = _Worker('jax', model_name, batch_size, dtype, args, peaks.get(dtype))
  flops = jax_side.info['flops']
  peak = peaks.setdefault(dtype, jax_side.info['matmul_peak_gflops'])
  log(
    f'[{tag}] compiled in {jax_side.info["compile_s"]:.1f} s, {flops / 1e9:.2f} GFLOP/step, '
    f'JAX parameters {jax_side.info["params"]:,}; matmul peak {peak:.1f} GFLOP/s'
  )
  torch_side = None
  if not args.no_torch:
    torch_side = _Worker('torch', model_name, batch_size, dtype, args, None)
    log(f'[{tag}] torch parameters {torch_side.info["params"]:,}')
    # Same architecture => same trainable parameters. Exact today (HF's position_ids and BatchNorm
    # statistics are buffers, ours are 'batch_stats'; the one scalar HF lacks, the multi-label
    # temperature, the torch side adds itself); the tolerance of 1 leaves room for a scalar
    # temperature being counted on one side only by some future version, not for a missing layer.
    if abs(jax_side.info['params'] - torch_side.info['params']) > 1:
      raise SystemExit(
        f'architectures differ: JAX {jax_side.info["params"]:,} vs torch '
        f'{torch_side.info["params"]:,} parameters'
      )
  times = {'jax': [], 'torch': []}
  for r in range(args.rounds):
    times['jax'].append(jax_side.run(args.steps_per_round))
    if torch_side is not None:
      times['torch'].append(torch_side.run(args.steps_per_round))
    log(
      f'[{tag}] round {r + 1}/{args.rounds}: '
      + ', '.join(
        f'{k} {batch_size * args.steps_per_round / v[-1]:.2f} images/s'
        for k, v in times.items()
        if v
      )
    )
  jax_end = jax_side.close()
  torch_end = torch_side.close() if torch_side is not None else {'loss': None, 'peak_rss_mib': None}
  ips = {k: [batch_size * args.steps_per_round / t for t in v] for k, v in times.items()}
  jax_ips = statistics.median(ips['jax'])
  torch_ips = statistics.median(ips['torch']) if ips['torch'] else None
  mfu = lambda images_per_s: flops * images_per_s / batch_size / (peak * 1e9)
  return {
    'model': model_name,
    'batch': batch_size,
    'dtype': dtype,
    'multi_label': bool(args.multi_label),
    'jax_images_per_s': jax_ips,
    'torch_images_per_s': torch_ips,
    'ratio': jax_ips / torch_ips if torch_ips else None,
    'mfu': mfu(jax_ips),
    'torch_mfu': mfu(torch_ips) if torch_ips else None,
    'compile_s': jax_side.info['compile_s'],
    'step_gflops': flops / 1e9,
    'peak_rss_mib': jax_end['peak_rss_mib'],
    'torch_peak_rss_mib': torch_end['peak_rss_mib'],
    'matmul_peak_gflops': peak,
    'jax_params': jax_side.info['params'],
    'torch_params': torch_side.info['params'] if torch_side else None,
    'jax_rounds_images_per_s': [round(x, 3) for x in ips['jax']],
    'torch_rounds_images_per_s': [round(x, 3) for x in ips['torch']],
    'jax_loss': jax_end['loss'],
    'torch_loss': torch_end['loss'],
    'rounds': args.rounds,
    'steps_per_round': args.steps_per_round,
    'threads': args.threads,
    'backend': jax_side.info['backend'],
    'device': jax_side.info['device'],
    'xla_flags': jax_side.info['xla_flags'],
    'compiler_options': jax_side.info['compiler_options'],
  }


HEADER = (
  '| model | batch | dtype | multi-label | JAX images/s | torch images/s | JAX / torch | MFU JAX | '
  'MFU torch | compile s | GFLOP/step | peak RSS MiB JAX | peak RSS MiB torch '
  '| matmul peak GFLOP/s |\n'
  '|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|'
)


def markdown_row(r: dict) -> str:
  fmt = lambda v, spec, scale=1, unit='': '--' if v is None else format(v * scale, spec) + unit
  return (
    f'| {r["model"]} | {r["batch"]} | {r["dtype"]} | {"yes" if r["multi_label"] else "no"} | '
    f'{r["jax_images_per_s"]:.2f} | {fmt(r["torch_images_per_s"], ".2f")} | '
    f'{fmt(r["ratio"], ".2f", 1, "x")} | '
    f'{100 * r["mfu"]:.1f}% | {fmt(r["torch_mfu"], ".1f", 100, "%")} | '
    f'{r["compile_s"]:.1f} | {r["step_gflops"]:.2f} | {r["peak_rss_mib"]:.0f} | '
    f'{fmt(r["torch_peak_rss_mib"], ".0f")} | '
    f'{r["matmul_peak_gflops"]:.1f} |'
  )


def main(argv=None) -> int:
  args = parse_args(argv)
  command = shlex.join(
    [os.path.relpath(sys.executable, REPO_ROOT), 'benchmarks/train_step.py']
    + (list(argv) if argv is not None else sys.argv[1:])
  )
  args.threads = args.threads or len(allowed_cpus())
  check_threads(args.threads)  # fail here, before any worker starts
  from importlib.metadata import version

  meta = {
    'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
    'machine': f'{platform.machine()}, {os.cpu_count()} CPU cores, {args.threads} used',
    'jax': version('jax'),
    'jaxlib': version('jaxlib'),
  }
  if not args.no_torch:
    meta.update(
      torch=version('torch'), transformers=version('transformers'), torch_threads=args.threads
    )
  if not args.json:
    print(f'command: `{command}`')
    print(
      f'{meta["date"]}; {meta["machine"]}; jax {meta["jax"]}'
      + (
        f', torch {meta["torch"]} ({meta["torch_threads"]} threads), '
        f'transformers {meta["transformers"]}'
        if not args.no_torch
        else ''
      )
      + f'; {args.rounds} rounds x {args.steps_per_round} steps, median'
    )
    print()
    print(HEADER, flush=True)
  peaks: dict[str, float] = {}
  for model_name in args.model:
    for dtype in args.dtype:
      for batch_size in args.batch:
        row = bench_row(model_name, batch_size, dtype, args, peaks)
        if args.json:
          print(json.dumps(dict(row, **meta, command=command)), flush=True)
        else:
          print(markdown_row(row), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
