"""Zero-shot segmentation throughput: groupvit_jax.segmenter vs the release's protocol in eager
PyTorch.

Usage (from the repository root):

    .venv/bin/python benchmarks/eval.py                 # human-readable table
    .venv/bin/python benchmarks/eval.py --json          # one JSON object per line

Model: the released GroupViT-S architecture (transformers' default ``GroupViTConfig``) with random
weights, converted to ours. Images: the JPEGs of ``../shared/data/voc_sample/VOC2012`` when present
(VOC sizes, about 500x375), else synthetic 500x375 / 375x500 / 500x333 images. Vocabulary: the 20
VOC classes, threshold 0.95, slide mode (448 windows, stride 224), exactly the VOC benchmark
protocol.

* ``ours``: ``ZeroShotSegmenter.run`` over the images (host resize in a background thread, windows
  batched across images, stage-2 assembly and argmax on the device), wall time until every label map
  is on the host. Compilation happens in a warm-up pass and is excluded.
* ``reference``: ``references/segmentation.ReleasedSegmentation`` on the same HF model:
  ``encode_decode`` per window, eager, batch 1, as the release runs under mmseg.

The two are measured alternately (``--rounds`` rounds of ours then reference) in this one process,
with torch's intra-op threads set to the number of usable cores (XLA:CPU uses them all); pin the
process with ``taskset -c 0`` for a one-core measurement. Reported: images/s (median over rounds)
and pixel agreement of the two label maps.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import shlex
import statistics
import sys
import tempfile
import time

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
VOC_SAMPLE = REPO_ROOT / '..' / 'shared' / 'data' / 'voc_sample' / 'VOC2012' / 'JPEGImages'


def load_images(n: int) -> tuple[list[np.ndarray], str]:
  from PIL import Image

  if VOC_SAMPLE.is_dir():
    paths = sorted(VOC_SAMPLE.glob('*.jpg'))[:n]
    if paths:
      return [
        np.asarray(Image.open(p).convert('RGB')) for p in paths
      ], f'voc_sample ({len(paths)} JPEGs)'
  from references.segmentation import synthetic_images

  sizes = [(375, 500), (500, 375), (333, 500)]
  return synthetic_images([sizes[i % 3] for i in range(n)]), 'synthetic'


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--images', type=int, default=6)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--batch_windows', type=int, default=4)
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args(argv)
  print(
    '# '
    + shlex.join(
      [os.path.relpath(sys.executable, REPO_ROOT), 'benchmarks/eval.py']
      + (argv if argv is not None else sys.argv[1:])
    ),
    flush=True,
  )

  import jax
  import torch

  from evaluation import class_names as cn
  from groupvit_jax import load_pretrained, prompts, segmenter
  from groupvit_jax.convert import convert
  from references import hf_groupvit
  from references.segmentation import ReleasedSegmentation, hf_class_embeddings

  threads = (
    len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
  )
  torch.set_num_threads(threads)
  images, source = load_images(args.images)
  with tempfile.TemporaryDirectory() as tmp:
    hf = hf_groupvit.random_hf_model(seed=0)  # released GroupViT-S architecture
    hf.save_pretrained(os.path.join(tmp, 'hf'))
    convert(os.path.join(tmp, 'hf'), os.path.join(tmp, 'ours'))
    ours = load_pretrained(os.path.join(tmp, 'ours'))
  spec = cn.get_spec('voc')
  names = list(spec.prompt_names[1:])
  ce = prompts.class_embeddings(ours.config, ours.variables, ours.tokenize, names)
  ce_ref = hf_class_embeddings(hf, ours.tokenize(prompts.build_prompts(names)), len(names))
  reference = ReleasedSegmentation(hf, ce_ref, spec.background_threshold)
  protocol = segmenter.Protocol(window_batch=args.batch_windows)

  def run_ours():
    seg = segmenter.ZeroShotSegmenter(
      ours.config, ours.variables, ce, spec.background_threshold, protocol
    )
    out = {r.key: r.pred for r in seg.run([(i, im, None) for i, im in enumerate(images)])}
    return [out[i] for i in range(len(images))]

  def run_ref():
    return [reference.predict(im) for im in images]

  t0 = time.perf_counter()
  c0 = segmenter.compile_stats()
  preds = run_ours()  # warm-up: compiles
  warm_s = time.perf_counter() - t0
  compile_s = segmenter.compile_stats()['compile_seconds'] - c0['compile_seconds']
  times = {'ours': [], 'reference': []}
  ref_preds = None
  for _ in range(args.rounds):
    t = time.perf_counter()
    preds = run_ours()
    times['ours'].append(time.perf_counter() - t)
    t = time.perf_counter()
    ref_preds = run_ref()
    times['reference'].append(time.perf_counter() - t)
  agree = float(np.mean([np.mean(a == b) for a, b in zip(preds, ref_preds)]))
  windows = sum(
    len(segmenter.window_starts(h, 448, 224)) * len(segmenter.window_starts(w, 448, 224))
    for h, w in (segmenter.rescale_size(*im.shape[:2]) for im in images)
  )
  rows = []
  for impl in ('reference', 'ours'):
    med = statistics.median(times[impl])
    rows.append(
      {
        'impl': impl,
        'images': len(images),
        'windows': windows,
        'source': source,
        'images_per_s': len(images) / med,
        's_per_image': med / len(images),
        'rounds_s': [round(x, 3) for x in times[impl]],
      }
    )
  speedup = rows[0]['s_per_image'] / rows[1]['s_per_image']
  rows[1]['speedup_vs_reference'] = speedup
  meta = {
    'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
    'machine': f'{platform.machine()}, {os.cpu_count()} CPU cores ({threads} usable)',
    'python': platform.python_version(),
    'jax': jax.__version__,
    'backend': jax.default_backend(),
    'torch': torch.__version__,
    'torch_threads': torch.get_num_threads(),
    'batch_windows': args.batch_windows,
    'warmup_s': warm_s,
    'compile_s': compile_s,
    'pixel_agreement': agree,
  }
  if args.json:
    print(json.dumps({'meta': meta}))
    for r in rows:
      print(json.dumps(r))
  else:
    print(
      f'images: {source}, {len(images)} images, {windows} windows; {meta["machine"]}; '
      f'jax {meta["jax"]} ({meta["backend"]}), torch {meta["torch"]} ({meta["torch_threads"]} '
      'threads)'
    )
    print(
      f'warm-up (compile) {warm_s:.1f} s, of which compiling {compile_s:.1f} s; '
      f'pixel agreement ours vs reference {100 * agree:.3f} %'
    )
    print(f'{"impl":<10} {"images/s":>9} {"s/image":>8}  rounds (s)')
    for r in rows:
      extra = f'  {speedup:.2f}x' if r['impl'] == 'ours' else ''
      print(
        f'{r["impl"]:<10} {r["images_per_s"]:>9.3f} {r["s_per_image"]:>8.2f}  '
        f'{r["rounds_s"]}{extra}'
      )
  return 0


if __name__ == '__main__':
  sys.exit(main())
