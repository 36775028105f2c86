"""Input pipeline throughput: this project's tf.data pipeline vs the reference (PyTorch-style)
design.

Measures, on real JPEG webdataset shards (default: ``../shared/data/webdataset_coco/00000.tar``,
80 COCO image-caption pairs, exposed as ``--copies`` shards so the pipeline sees a multi-shard
source):

* ``pipeline/ours``            -- the whole training pipeline (tar parsing, decode +
  RandomResizedCrop, flip, RandAugment rand-m9-mstd0.5-inc1, normalise, random erasing, words from
  the noun cache, K=3 prompts, CLIP tokenisation), batches of ``--batch``;
* ``pipeline/ours_online``     -- the same with online spaCy tagging (no cache, no LRU);
* ``pipeline/reference``       -- GroupViT's design in one Python process: ``tarfile`` reading
  grouped webdataset-style, PIL decode, PIL equivalents of torchvision ``RandomResizedCrop`` / flip
  and of timm's RandAugment / ``RandomErasing`` (numpy), ImageNet normalisation, the reference CLIP
  tokenizer (``openai-clip``'s ``simple_tokenizer.py``) and online POS tagging of each caption;
* ``tokenize/*``  captions/s of our tokenizer vs the reference tokenizer (warm caches);
* ``nouns/*``     captions/s of noun tagging online (spaCy, batched / per caption) vs from the
  cache;
* ``text/host_stage_cached`` samples/s of our whole host-side text stage (cache lookup + prompts +
  tokenising 1 + K texts), the part of the pipeline that runs in Python.

"Per core" = items / CPU-seconds of this process (user + sys over all its threads), so numbers do
not depend on how many cores are free; ``--threads`` sizes the tf.data thread pool.  The reference
is single-process, i.e. its per-core figure is what each DataLoader worker would achieve.

``--max-side 512`` first rewrites the shard with every image downscaled to at most 512 px on its
longer side and re-encoded as JPEG quality 95 (what img2dataset's ``--resize_mode keep_ratio_largest
--image_size 512`` writes, and the size GroupViT's training shards keep); both pipelines then read
that shard.

Usage: ``python benchmarks/input_pipeline.py [--seconds 20] [--batch 64] [--threads 2] [--max-side
  512] [--json]``
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from references import clip_tokenizer  # noqa: E402

DEFAULT_SHARD = os.path.join(REPO, '..', 'shared', 'data', 'webdataset_coco', '00000.tar')
DEFAULT_CAPTIONS = os.path.join(
  REPO, '..', 'shared', 'data', 'captions', 'cc3m_validation_first1000.txt'
)
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)

ROWS: list[dict] = []


def emit(name: str, value: float, unit: str, args, **extra) -> None:
  row = {'name': name, 'value': round(float(value), 2), 'unit': unit, **extra}
  ROWS.append(row)
  if args.json:
    print(json.dumps(row), flush=True)
  else:
    more = ' '.join(f'{k}={v}' for k, v in extra.items())
    print(f'{name:32s} {value:10.1f} {unit:18s} {more}', flush=True)


class Timer:
  """Wall and process-CPU time of a block."""

  def __enter__(self):
    self.w, self.c = time.perf_counter(), time.process_time()
    return self

  def __exit__(self, *exc):
    self.wall = time.perf_counter() - self.w
    self.cpu = time.process_time() - self.c


# ============================================================================ reference design


def load_reference_tokenizer():
  """openai-clip's SimpleTokenizer instance (see references/clip_tokenizer.py)."""
  cls = clip_tokenizer.simple_tokenizer_class()
  if cls is None:
    raise ImportError('openai-clip (dev extra) is not installed')
  return cls()


def ref_tokenize(tok, texts, context_length=77):
  """GroupViT's ``Tokenize``: [SOT] + encode + [EOT], zero-padded / truncated (EOT kept last)."""
  return clip_tokenizer.reference_tokenize(tok, texts, context_length)


def ref_samples(paths) -> Iterator[dict]:
  """webdataset-style: stream tar members, group consecutive members by key."""
  for path in paths:
    with tarfile.open(path, 'r|') as tar:
      cur, sample = None, {}
      for m in tar:
        if not m.isfile():
          continue
        base = os.path.basename(m.name)
        key, _, ext = base.partition('.')
        key = os.path.join(os.path.dirname(m.name), key)
        if key != cur and sample:
          yield sample
          sample = {}
        cur = key
        sample['__key__'] = key
        sample[ext.lower()] = tar.extractfile(m).read()
      if sample:
        yield sample


def write_resized_shard(src: str, dst: str, max_side: int) -> int:
  """Copies webdataset shard ``src`` to ``dst`` with every image larger than ``max_side`` on its
  longer side downscaled (area filter, aspect kept) and re-encoded as JPEG quality 95; other
  members are copied unchanged. Returns the number of images rewritten."""
  from PIL import Image

  rewritten = 0
  with tarfile.open(src, 'r') as tin, tarfile.open(dst, 'w') as tout:
    for m in tin.getmembers():
      data = tin.extractfile(m).read() if m.isfile() else None
      if data is not None and m.name.lower().endswith(('.jpg', '.jpeg', '.png', '.webp')):
        img = Image.open(io.BytesIO(data)).convert('RGB')
        if max(img.size) > max_side:
          f = max_side / max(img.size)
          img = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.BOX)
          buf = io.BytesIO()
          img.save(buf, format='JPEG', quality=95)
          data = buf.getvalue()
          rewritten += 1
      info = tarfile.TarInfo(m.name)
      info.size = len(data) if data is not None else 0
      info.mtime = m.mtime
      tout.addfile(info, io.BytesIO(data) if data is not None else None)
  return rewritten


class RefRandAugment:
  """timm ``rand-m9-mstd0.5-inc1`` with PIL (ops as in timm's auto_augment.py)."""

  NAMES = (
    'AutoContrast',
    'Equalize',
    'Invert',
    'Rotate',
    'PosterizeIncreasing',
    'SolarizeIncreasing',
    'SolarizeAdd',
    'ColorIncreasing',
    'ContrastIncreasing',
    'BrightnessIncreasing',
    'SharpnessIncreasing',
    'ShearX',
    'ShearY',
    'TranslateXRel',
    'TranslateYRel',
  )

  def __init__(self, magnitude=9, mstd=0.5, layers=2, fill=(124, 116, 104)):
    from PIL import Image

    self.m, self.mstd, self.layers, self.fill = magnitude, mstd, layers, fill
    self.kw = dict(resample=Image.BILINEAR, fillcolor=fill)

  def op(self, img, name, level):
    from PIL import Image, ImageEnhance, ImageOps

    neg = -1.0 if random.random() > 0.5 else 1.0
    f = level / 10.0
    if name == 'AutoContrast':
      return ImageOps.autocontrast(img)
    if name == 'Equalize':
      return ImageOps.equalize(img)
    if name == 'Invert':
      return ImageOps.invert(img)
    if name == 'Rotate':
      return img.rotate(f * 30.0 * neg, **self.kw)
    if name == 'PosterizeIncreasing':
      bits = 4 - int(f * 4)
      mask = ~(2 ** (8 - bits) - 1) & 0xFF  # Pillow >= 10 rejects bits=0 in ImageOps.posterize
      return img.point([i & mask for i in range(256)] * 3)
    if name == 'SolarizeIncreasing':
      return ImageOps.solarize(img, 256 - int(f * 256))
    if name == 'SolarizeAdd':
      add = int(f * 110)
      return img.point([min(255, i + add) if i < 128 else i for i in range(256)] * 3)
    factor = max(0.1, 1.0 + f * 0.9 * neg)
    if name == 'ColorIncreasing':
      return ImageEnhance.Color(img).enhance(factor)
    if name == 'ContrastIncreasing':
      return ImageEnhance.Contrast(img).enhance(factor)
    if name == 'BrightnessIncreasing':
      return ImageEnhance.Brightness(img).enhance(factor)
    if name == 'SharpnessIncreasing':
      return ImageEnhance.Sharpness(img).enhance(factor)
    if name == 'ShearX':
      return img.transform(img.size, Image.AFFINE, (1, f * 0.3 * neg, 0, 0, 1, 0), **self.kw)
    if name == 'ShearY':
      return img.transform(img.size, Image.AFFINE, (1, 0, 0, f * 0.3 * neg, 1, 0), **self.kw)
    if name == 'TranslateXRel':
      return img.transform(
        img.size, Image.AFFINE, (1, 0, f * 0.45 * neg * img.size[0], 0, 1, 0), **self.kw
      )
    if name == 'TranslateYRel':
      return img.transform(
        img.size, Image.AFFINE, (1, 0, 0, 0, 1, f * 0.45 * neg * img.size[1]), **self.kw
      )
    raise ValueError(name)

  def __call__(self, img):
    for name in np.random.choice(self.NAMES, self.layers, replace=True):
      if random.random() > 0.5:
        continue
      level = min(10.0, max(0.0, random.gauss(self.m, self.mstd)))
      img = self.op(img, name, level)
    return img


def ref_rrc_params(w, h, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """torchvision ``RandomResizedCrop.get_params``."""
  area = h * w
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * random.uniform(*scale)
    ar = math.exp(random.uniform(*log_ratio))
    cw, ch = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
    if 0 < cw <= w and 0 < ch <= h:
      return random.randint(0, h - ch), random.randint(0, w - cw), ch, cw
  in_ratio = w / h
  if in_ratio < min(ratio):
    cw, ch = w, int(round(w / min(ratio)))
  elif in_ratio > max(ratio):
    ch, cw = h, int(round(h * max(ratio)))
  else:
    cw, ch = w, h
  return (h - ch) // 2, (w - cw) // 2, ch, cw


def ref_erase(x, prob=0.25, min_area=0.02, max_area=1 / 3, min_aspect=0.3):
  """timm ``RandomErasing(mode='pixel')`` on a normalised HWC float image."""
  if random.random() > prob:
    return x
  h, w, c = x.shape
  log_r = (math.log(min_aspect), math.log(1 / min_aspect))
  for _ in range(10):
    target = random.uniform(min_area, max_area) * h * w
    ar = math.exp(random.uniform(*log_r))
    eh, ew = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
    if ew < w and eh < h:
      top, left = random.randint(0, h - eh), random.randint(0, w - ew)
      x[top : top + eh, left : left + ew] = np.random.standard_normal((eh, ew, c)).astype(
        np.float32
      )
      break
  return x


class ReferencePipeline:
  """GroupViT's per-sample transform chain, run in one process."""

  def __init__(self, paths, tagger, tokenizer, templates, tags, k=3, size=224):
    self.paths, self.tagger, self.tok = paths, tagger, tokenizer
    self.templates, self.tags, self.k, self.size = templates, tags, k, size
    self.ra = RefRandAugment()

  def image(self, data):
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert('RGB')
    top, left, ch, cw = ref_rrc_params(*img.size)
    img = img.resize((self.size, self.size), Image.BILINEAR, box=(left, top, left + cw, top + ch))
    if random.random() < 0.5:
      img = img.transpose(Image.FLIP_LEFT_RIGHT)
    img = self.ra(img)
    x = (np.asarray(img, np.float32) / 255.0 - MEAN) / STD
    return ref_erase(x)

  def text(self, caption):
    words = [t.text for t in self.tagger(caption) if t.tag_ in self.tags]
    prompts = []
    if words:
      picks = np.random.choice(len(words), min(self.k, len(words)), replace=False)
      prompts = [random.choice(self.templates).format(words[i]) for i in picks]
    prompts += [caption] * (self.k - len(prompts))
    return ref_tokenize(self.tok, [caption] + prompts)

  def __iter__(self):
    while True:
      for s in ref_samples(self.paths):
        data = s.get('jpg') or s.get('jpeg') or s.get('png') or s.get('webp')
        cap = s.get('txt')
        if data is None or not cap:
          continue
        try:
          img = self.image(data)
        except Exception:  # noqa: BLE001 - the reference skips undecodable samples too
          continue
        yield img, self.text(cap.decode('utf-8').strip())


# ============================================================================ measurements


def bench_ours(args, shard_dir, cache_dir, name, round_no=0, online=False):
  from input_pipeline import create_train_dataset, default_data_config

  cfg = default_data_config()
  cfg.train = (f'webdataset:{shard_dir}/*.tar',)
  cfg.threadpool_size = args.threads
  cfg.host_prefetch = 2
  if online:
    cfg.text.tag_cache_size = 0
  else:
    cfg.text.noun_cache_dir = cache_dir
  it = create_train_dataset(
    cfg, global_batch_size=args.batch, process_index=0, process_count=1, seed=0
  )
  for _ in range(args.warmup_batches):
    next(it)
  n = 0
  with Timer() as t:
    deadline = time.perf_counter() + args.seconds
    while time.perf_counter() < deadline:
      next(it)
      n += args.batch
  it.close()
  emit(
    f'pipeline/{name}',
    n / t.cpu,
    'images/s/core',
    args,
    round=round_no,
    wall_images_per_s=round(n / t.wall, 1),
    cpu_utilisation=round(t.cpu / t.wall, 2),
    threads=args.threads,
    stats=dict(it.stats),
  )
  return n / t.cpu


def bench_reference(args, paths, tagger_nlp, ref_tok, templates, tags, round_no=0):
  pipe = iter(ReferencePipeline(paths, tagger_nlp, ref_tok, templates, tags))
  for _ in range(args.warmup_batches * 8):
    next(pipe)
  n = 0
  with Timer() as t:
    deadline = time.perf_counter() + args.seconds
    while time.perf_counter() < deadline:
      batch = [next(pipe) for _ in range(8)]
      np.stack([b[0] for b in batch])
      n += len(batch)
  emit(
    'pipeline/reference',
    n / t.cpu,
    'images/s/core',
    args,
    round=round_no,
    wall_images_per_s=round(n / t.wall, 1),
    cpu_utilisation=round(t.cpu / t.wall, 2),
  )
  return n / t.cpu


def rate(fn, items, seconds):
  """items/s of fn() processing ``items`` items per call, over at least ``seconds`` (CPU time)."""
  fn()
  n = 0
  with Timer() as t:
    while time.process_time() - t.c < seconds:
      fn()
      n += items
  return n / t.cpu


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--shard', default=DEFAULT_SHARD)
  p.add_argument('--captions', default=DEFAULT_CAPTIONS)
  p.add_argument('--copies', type=int, default=4, help='expose the shard as this many shard files')
  p.add_argument('--seconds', type=float, default=20.0)
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--threads', type=int, default=2, help='tf.data private threadpool size')
  p.add_argument('--warmup-batches', type=int, default=3)
  p.add_argument('--rounds', type=int, default=3, help='interleaved measurement rounds')
  p.add_argument(
    '--skip', default='', help='comma-separated sections to skip: ours,online,reference,text'
  )
  p.add_argument(
    '--max-side',
    type=int,
    default=0,
    help="downscale the shard's images to at most this many px first (0 = as they are)",
  )
  p.add_argument('--json', action='store_true', help='one JSON row per measurement')
  args = p.parse_args(argv)
  print('command:', ' '.join([os.path.basename(sys.executable), *sys.argv]), flush=True)
  skip = set(filter(None, args.skip.split(',')))
  if not os.path.exists(args.shard):
    sys.exit(f'shard {args.shard} not found (see --shard)')

  from groupvit_jax.prompts import IMAGENET_TEMPLATES
  from groupvit_jax.tokenizer import default_tokenizer
  from input_pipeline import nouns, prepare_nouns, prompts

  tmp = tempfile.mkdtemp(prefix='bench_input_')
  try:
    shard_dir = os.path.join(tmp, 'shards')
    os.makedirs(shard_dir)
    source = os.path.abspath(args.shard)
    if args.max_side > 0:
      source = os.path.join(tmp, 'resized.tar')
      n = write_resized_shard(args.shard, source, args.max_side)
      print(f'rewrote {n} images to at most {args.max_side} px', flush=True)
    for i in range(args.copies):
      os.symlink(source, os.path.join(shard_dir, f'{i:05d}.tar'))
    cache_dir = os.path.join(tmp, 'cache')
    prepare_nouns.prepare(
      [f'webdataset:{shard_dir}/*.tar'], cache_dir, workers=0, log=lambda m: None
    )
    paths = sorted(os.path.join(shard_dir, f) for f in os.listdir(shard_dir))
    tags = prompts.word_tags('reference')
    tagger = nouns.SpacyTagger()
    ref_tok = load_reference_tokenizer()
    # Interleaved rounds (other load on the machine changes per-core speed over time); the
    # reported figure is the median over rounds, and the ratio is computed round by round.
    results: dict[str, list[float]] = {}
    for r in range(args.rounds):
      if 'ours' not in skip:
        results.setdefault('ours', []).append(bench_ours(args, shard_dir, cache_dir, 'ours', r))
      if 'online' not in skip:
        results.setdefault('ours_online', []).append(
          bench_ours(args, shard_dir, cache_dir, 'ours_online', r, online=True)
        )
      if 'reference' not in skip:
        results.setdefault('reference', []).append(
          bench_reference(args, paths, tagger.nlp, ref_tok, IMAGENET_TEMPLATES, tags, r)
        )
    for name, vals in results.items():
      emit(
        f'pipeline/{name}/median', float(np.median(vals)), 'images/s/core', args, rounds=len(vals)
      )
    if 'reference' in results:
      for name in ('ours', 'ours_online'):
        if name in results:
          ratios = [a / b for a, b in zip(results[name], results['reference'])]
          emit(
            f'speedup/{name}_vs_reference',
            float(np.median(ratios)),
            'x (median of rounds)',
            args,
            per_round=[round(x, 2) for x in ratios],
          )
    if 'text' in skip:
      return
    if os.path.exists(args.captions):
      caps = [c.strip() for c in open(args.captions, encoding='utf-8') if c.strip()]
    else:
      caps = [s['txt'].decode().strip() for s in ref_samples([args.shard])]
    tok = default_tokenizer()
    sec = max(2.0, args.seconds / 4)
    emit('tokenize/ours', rate(lambda: tok(caps), len(caps), sec), 'captions/s/core', args)
    emit(
      'tokenize/reference',
      rate(lambda: ref_tokenize(ref_tok, caps), len(caps), sec),
      'captions/s/core',
      args,
    )
    emit(
      'nouns/online_spacy_batched',
      rate(lambda: tagger.tag(caps), len(caps), sec),
      'captions/s/core',
      args,
    )
    emit(
      'nouns/online_spacy_per_caption',
      rate(lambda: [tagger.nlp(c) for c in caps[:200]], 200, sec),
      'captions/s/core',
      args,
    )
    # Cache lookups: the COCO shard's cache (keys known), repeated.
    shard = paths[0]
    cache = nouns.NounCache(cache_dir, tags)
    pairs = prepare_nouns.extract_captions('webdataset', shard)
    emit(
      'nouns/from_cache',
      rate(lambda: [cache.lookup(shard, k, c) for k, c in pairs], len(pairs), sec),
      'captions/s/core',
      args,
    )

    def host_stage():
      words = [cache.lookup(shard, k, c) for k, c in pairs]
      texts = [c for _, c in pairs]
      for i, ((_, c), w) in enumerate(zip(pairs, words)):
        texts.extend(prompts.build_prompts(c, w, 3, random.Random(i)))
      tok(texts)

    emit('text/host_stage_cached', rate(host_stage, len(pairs), sec), 'samples/s/core', args)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
  main()
