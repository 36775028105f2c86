"""SCG zero-training path: images/s at VOC sizes through the released protocol, and the stage-1
window function per masking strategy (the paper's Table 3 timing column).

    .venv/bin/python benchmarks/scg_speed.py                       # ViT-B/16 CLIP + ViT-S/16 DINO
    .venv/bin/python benchmarks/scg_speed.py --images 4 --masking context tokens pixels --json
    .venv/bin/python benchmarks/scg_speed.py --tiny                # toy towers (the test)

Random weights of the real architectures (OpenAI ViT-B/16 CLIP, DINO ViT-S/16: speed does not
depend on the values), random uint8 images of VOC's typical sizes (500x375 and 375x500, resized
by the protocol to short side 448: two or three 448x448 windows each), 27 regions, 20 k-means
iterations. Rows:

* `window`: one jitted stage-1 call (grouping, k-means, recognition, class table) on
  `--window_batch` windows, median of `--rounds` after a warm-up; ms per window.
* `protocol`: `evaluation.evaluator.evaluate_segmentation` over `--images` images with the VOC
  classes and the vocabulary background rule, after a warm-up pass on one image (compiles);
  images/s.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from evaluation import class_names as cn  # noqa: E402
from evaluation.datasets import Sample  # noqa: E402
from evaluation.evaluator import evaluate_segmentation  # noqa: E402
from groupvit_jax import segmenter  # noqa: E402
from groupvit_jax.checkpoints import store  # noqa: E402
from groupvit_jax.models.clip import CLIPConfig, clip_vision_config  # noqa: E402
from groupvit_jax.models.config import TextEncoderConfig  # noqa: E402
from groupvit_jax.models.scg import SCGConfig  # noqa: E402
from groupvit_jax.models.vit import ViTConfig  # noqa: E402
from groupvit_jax.pretrained_scg import PretrainedSCG  # noqa: E402


def towers(tiny: bool) -> tuple[CLIPConfig, ViTConfig]:
  if tiny:
    clip = CLIPConfig(
      vision=clip_vision_config(image_size=32, patch_size=16, width=32, depth=2, num_heads=2),
      text=TextEncoderConfig(width=32, num_heads=2, num_layers=1),
      embed_dim=24,
    )
    return clip, ViTConfig(image_size=32, patch_size=16, width=32, depth=2, num_heads=2)
  return CLIPConfig(), ViTConfig()  # OpenAI ViT-B/16, DINO ViT-S/16


def build(tiny: bool, masking: str, dtype: str) -> PretrainedSCG:
  clip, dino = towers(tiny)
  cfg = SCGConfig(clip=clip, grouper=dino, masking=masking)
  cfg = store.with_dtype(cfg, dtype)
  return PretrainedSCG(cfg, store.init_model(cfg, jax.random.key(0)))


def time_window(model: PretrainedSCG, batch: int, rounds: int, crop: int) -> float:
  """Median ms per window of the stage-1 function."""
  seg = segmenter.ZeroShotSegmenter(
    model.config,
    model.variables,
    np.eye(21, model.config.clip.embed_dim, dtype=np.float32),
    protocol=segmenter.Protocol(window_batch=batch, crop_size=crop, stride=crop // 2),
    devices=jax.local_devices()[:1],
  )
  rng = np.random.default_rng(0)
  image = rng.integers(0, 255, (crop, crop, 3), dtype=np.uint8)
  img = seg.plan(0, image)
  template = img.views[0].windows[0]
  key = template.key

  def once():
    wins = [copy.copy(template) for _ in range(batch)]
    for w in wins:
      w.pixels = image[: key[0], : key[1]]
    jax.block_until_ready(seg._run_windows(key, wins))

  once()
  times = []
  for _ in range(rounds):
    t0 = time.perf_counter()
    once()
    times.append(time.perf_counter() - t0)
  return 1e3 * float(np.median(times)) / batch


def time_protocol(model: PretrainedSCG, n: int, sizes) -> dict:
  rng = np.random.default_rng(1)
  samples = []
  for i in range(n):
    h, w = sizes[i % len(sizes)]
    samples.append(
      Sample(f'img{i}', rng.integers(0, 255, (h, w, 3), np.uint8), np.zeros((h, w), np.uint8))
    )
  words = list(cn.background_vocabulary('voc'))
  kw = dict(threshold=None, boundary=False, background_words=words, batch_windows=2)
  spec = cn.get_spec('voc')
  evaluate_segmentation(model, samples[:1], spec, **kw)  # compiles
  result = evaluate_segmentation(model, samples, spec, **kw)
  return {'images_per_s': result['timing']['images_per_second'], 'images': n}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--tiny', action='store_true', help='toy towers (seconds)')
  p.add_argument('--masking', nargs='+', default=['context', 'tokens', 'pixels'])
  p.add_argument('--images', type=int, default=4, help='images for the protocol row (0: skip)')
  p.add_argument('--window_batch', type=int, default=2)
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--dtype', default='float32')
  p.add_argument('--json', action='store_true')
  args = p.parse_args(argv)
  command = 'python benchmarks/scg_speed.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
  crop = 64 if args.tiny else 448
  sizes = [(96, 128), (128, 96)] if args.tiny else [(375, 500), (500, 375)]
  rows = []
  for masking in args.masking:
    model = build(args.tiny, masking, args.dtype)
    ms = time_window(model, args.window_batch, args.rounds, crop)
    rows.append({'row': 'window', 'masking': masking, 'ms_per_window': ms})
    if args.images and masking == 'context':
      rows.append(
        {'row': 'protocol', 'masking': masking, **time_protocol(model, args.images, sizes)}
      )
  meta = {'command': command, 'backend': jax.default_backend(), 'jax': jax.__version__}
  meta['cpus'] = os.cpu_count()
  for row in rows:
    row.update(meta)
    if args.json:
      print(json.dumps(row))
  print(f'\n{command}\n')
  print('| row | masking | ms / window | images/s |')
  print('|---|---|---|---|')
  for r in rows:
    ms = f'{r["ms_per_window"]:.1f}' if 'ms_per_window' in r else ''
    ips = f'{r["images_per_s"]:.3f}' if 'images_per_s' in r else ''
    print(f'| {r["row"]} | {r["masking"]} | {ms} | {ips} |')


if __name__ == '__main__':
  main()
