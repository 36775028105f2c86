"""Supervised shape probe: how fast can a recipe's image tower learn WHICH shapes are in a picture?

Zero-shot segmentation on the synthetic data needs the image tower to tell the 8 shapes apart
(colour never reveals the category). This probe removes the text side and the contrastive loss: the
recipe's image encoder (``configs/synthetic_groupvit.py`` by default, any variant) plus one linear
layer on its pooled output is trained with direct multi-label targets (sigmoid cross-entropy over
"category k is in the image"), with the recipe's optimizer, schedule and batch size, on a fixed pool
of rendered training images; a held-out pool of val-stream images measures progress. If the tower
cannot learn this with labels in a given number of steps, it cannot learn it from captions in that
number of steps either (docs/emergence.md, section 2).

Prints the command, then one line per evaluation (``--json``: one JSON object per line) with the
val cross-entropy, the "predict the prior" cross-entropy it has to beat, and the val mean average
precision over the categories (chance = the prior, about 0.25 with 1-3 of 8 shapes per image).

Examples::

    python benchmarks/shape_probe.py --steps 600                              # the recipe's tower
    python benchmarks/shape_probe.py --steps 600 --set model.image.patch_size=4  # finer patches
    python benchmarks/shape_probe.py --steps 600 --model cnn                  # a 4-layer CNN
    python benchmarks/shape_probe.py --config configs/synthetic_groupvit.py:arch=vit --set
    data.synthetic.rotation=False python benchmarks/shape_probe.py --model cnn --input silhouette
    # colour removed

``--input`` says what the model sees: ``pixels`` (the recipe's normalisation, as in training),
``per_image`` (each image standardised by its own per-channel mean and std) or ``silhouette`` (the
per-pixel colour distance from the image's median colour, a colour-free picture of where objects
are; for measuring how much of the difficulty is colour invariance).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)


def load_recipe(spec: str, overrides: list[str]):
  """``path[:arg]`` -> the recipe's ConfigDict with ``KEY=VALUE`` overrides applied."""
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location(
    'recipe', os.path.join(REPO, path) if not os.path.isabs(path) else path
  )
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  from groupvit_jax.config_lib import parse_override

  for item in overrides:
    try:
      key, value = parse_override(item, '--set')
    except ValueError as e:
      raise SystemExit(str(e)) from None
    *parents, leaf = key.split('.')
    node = config
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise SystemExit(f'unknown config key {key!r}')
    node[leaf] = value
  return config


def render_pool(synth_cfg, seed: int, split: str, count: int, mean, std):
  """``count`` examples of the (seed, split) stream -> (images float32 [count, S, S, 3]
  normalised, targets float32 [count, K] with 1 where the category is in the image)."""
  import numpy as np

  from input_pipeline.synthetic_shapes import generate

  s, k = synth_cfg.image_size, synth_cfg.num_categories
  images = np.zeros((count, s, s, 3), np.float32)
  targets = np.zeros((count, k), np.float32)
  mean = np.asarray(mean, np.float32) * 255.0
  std = np.asarray(std, np.float32) * 255.0
  for i in range(count):
    ex = generate(synth_cfg, seed, i, split)
    images[i] = (ex['image'].astype(np.float32) - mean) / std
    targets[i, np.asarray(ex['categories']) - 1] = 1.0
  return images, targets


INPUTS = ('pixels', 'per_image', 'silhouette')


def transform_inputs(images, kind: str):
  """images float32 [N, S, S, 3] normalised by the recipe -> what the model sees (same shape).

  'pixels': unchanged. 'per_image': per image and channel, zero mean and unit std. 'silhouette':
  L1 colour distance of each pixel from the image's median colour (mostly the background),
  repeated over 3 channels and standardised over the whole pool.
  """
  import numpy as np

  if kind == 'pixels':
    return images
  if kind == 'per_image':
    mean = images.mean(axis=(1, 2), keepdims=True)
    return (images - mean) / (images.std(axis=(1, 2), keepdims=True) + 1e-3)
  if kind == 'silhouette':
    median = np.median(images.reshape(len(images), -1, 3), axis=1)[:, None, None, :]
    dist = np.abs(images - median).sum(-1, keepdims=True)
    dist = (dist - dist.mean()) / (dist.std() + 1e-6)
    return np.repeat(dist, 3, axis=-1).astype(np.float32)
  raise ValueError(f'unknown input {kind!r}; valid: {INPUTS}')


def prior_cross_entropy(targets) -> float:
  """Mean sigmoid cross-entropy of predicting each category's frequency: the bar to beat."""
  import numpy as np

  p = np.clip(targets.mean(0), 1e-6, 1 - 1e-6)
  return float(np.mean(-(targets * np.log(p) + (1 - targets) * np.log(1 - p))))


def build_classifier(config, kind: str):
  """A Flax module: images [B, S, S, 3] -> logits [B, K]."""
  import flax.linen as nn

  from groupvit_jax.config_lib import build_model_config
  from groupvit_jax.models.image_encoder import ImageEncoder

  num_classes = int(config.data.synthetic.num_categories)
  image_cfg = build_model_config(config).image

  class Classifier(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
      if kind == 'cnn':
        for features in (32, 64, 128, 128):
          x = nn.relu(nn.Conv(features, (3, 3), strides=(2, 2))(x))
        return nn.Dense(num_classes)(x.mean((1, 2)))
      # As in the trainer: Gumbel noise (and drop path, if configured) only while training.
      pooled = ImageEncoder(image_cfg)(x, deterministic=not train).pooled
      return nn.Dense(num_classes)(pooled)

  return Classifier()


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument(
    '--config', default='configs/synthetic_groupvit.py', help='recipe file[:variant]'
  )
  parser.add_argument(
    '--set',
    action='append',
    default=[],
    metavar='KEY=VALUE',
    help='config override (repeatable), e.g. data.synthetic.rotation=False',
  )
  parser.add_argument(
    '--model',
    choices=('tower', 'cnn'),
    default='tower',
    help="'tower': the recipe's image encoder; 'cnn': a 4-layer CNN",
  )
  parser.add_argument(
    '--input',
    choices=INPUTS,
    default='pixels',
    help='what the model sees (see the module docstring)',
  )
  parser.add_argument('--steps', type=int, default=600)
  parser.add_argument('--batch', type=int, default=0, help='0 = the recipe global_batch_size')
  parser.add_argument('--train-images', type=int, default=6400)
  parser.add_argument('--val-images', type=int, default=1024)
  parser.add_argument('--eval-every', type=int, default=100)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args(argv)
  print(
    'command:',
    ' '.join(['python', os.path.relpath(__file__, REPO), *(argv or sys.argv[1:])]),
    flush=True,
  )

  import jax
  import numpy as np
  import optax

  from groupvit_jax.optim import make_optimizer
  from input_pipeline.synthetic_shapes import SyntheticConfig

  config = load_recipe(args.config, args.set)
  synth = SyntheticConfig.from_dict(config.data.synthetic.to_dict())
  batch = args.batch or int(config.global_batch_size)
  t0 = time.perf_counter()
  x_train, y_train = render_pool(
    synth, args.seed, 'train', args.train_images, config.data.mean, config.data.std
  )
  x_val, y_val = render_pool(
    synth, args.seed, 'val', args.val_images, config.data.mean, config.data.std
  )
  render_s = time.perf_counter() - t0
  x_train, x_val = transform_inputs(x_train, args.input), transform_inputs(x_val, args.input)

  model = build_classifier(config, args.model)
  # Initialised in evaluation mode: only the parameter stream is drawn.
  params = jax.jit(model.init)({'params': jax.random.key(args.seed)}, x_train[:2])
  tx, _ = make_optimizer(config.optimizer, batch, args.steps)
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state, x, y, key):
    def loss_fn(p):
      gumbel_key, drop_key = jax.random.split(key)
      logits = model.apply(p, x, train=True, rngs={'gumbel': gumbel_key, 'droppath': drop_key})
      return optax.sigmoid_binary_cross_entropy(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  @jax.jit
  def predict(params, x):
    return model.apply(params, x)

  from evaluation.naming import mean_average_precision

  def evaluate(step: int, train_loss: float) -> dict:
    logits = np.concatenate(
      [np.asarray(predict(params, x_val[i : i + 256])) for i in range(0, len(x_val), 256)]
    )
    val_ce = float(np.asarray(optax.sigmoid_binary_cross_entropy(logits, y_val)).mean())
    row = dict(
      step=step,
      train_loss=round(train_loss, 4),
      val_cross_entropy=round(val_ce, 4),
      prior_cross_entropy=round(prior_cross_entropy(y_val), 4),
      val_mAP=round(mean_average_precision(logits, y_val), 4),
      prior_mAP=round(float(y_val.mean()), 4),
      seconds=round(time.perf_counter() - t_start, 1),
    )
    print(
      json.dumps(row) if args.json else ' '.join(f'{k}={v}' for k, v in row.items()), flush=True
    )
    return row

  order = np.random.default_rng(args.seed)
  rows, loss = [], float('nan')
  t_start = time.perf_counter()
  for step in range(1, args.steps + 1):
    idx = order.integers(0, len(x_train), batch)
    params, opt_state, loss = train_step(
      params, opt_state, x_train[idx], y_train[idx], jax.random.key(args.seed * 1_000_003 + step)
    )
    if step % args.eval_every == 0 or step == args.steps:
      rows.append(evaluate(step, float(loss)))
  print(f'rendered {args.train_images} + {args.val_images} images in {render_s:.1f} s', flush=True)
  return rows


if __name__ == '__main__':
  main()
