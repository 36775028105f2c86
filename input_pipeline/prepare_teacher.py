"""Embed every training image's teacher views once with a frozen CLIP: the ZeroSeg teacher cache.

Usage::

    python -m input_pipeline.prepare_teacher --teacher /models/clip_vitb16 \\
        --source tfds:imagenet2012:train --tfds_data_dir /data/tfds --output /data/teacher_in1k \\
        [--image_size 224] [--batch_size 64] [--chunk_size 1024] \\
        [--process_id I --num_processes P]

then set ``config.data.teacher_cache = "/data/teacher_in1k"`` (with ``config.data.captions =
False`` and ``config.data.crop = 'center'``).  ``--source`` takes the strings of
``config.data.train`` (weights are ignored; repeat it for several sources, in the order of
``config.data.train``).  The sources are read sequentially with the pipeline's own readers and
decoded by the pipeline's own centre-crop function (``pipeline._decode_chunk_fn(...,
'center')``), so the crops are the training pipeline's bit for bit; the 30 views of each crop
(``groupvit_jax.teacher_views``, grids 1-4) are embedded by a jitted
``teacher_views.teacher_embeddings`` in fixed-shape batches (the last one of a chunk padded) and
stored as float16.  See ``input_pipeline/teacher_cache.py`` for the layout.

Chunk ``i`` (``--chunk_size`` consecutive samples) belongs to process ``i % num_processes``.
Every process walks the whole sample order (shard files are read to learn their sample count,
but only its own chunks are decoded and embedded; folder and synthetic sources are not read for
other processes' chunks).  Committed chunks are skipped, so an interrupted run is resumed by
running the same command again and the result is byte-identical to an uninterrupted run.
Undecodable samples are counted skips (stored per chunk and summarised at the end).  A restart
with other arguments (teacher, sources, image size, chunk or batch size, reader settings) is an
error naming the difference.

Synthetic data: ``--source synthetic`` embeds the ids ``0 .. N-1`` with ``N = --num_samples``
(or ``--synthetic num_train_examples=N``); ``--synthetic KEY=VALUE`` sets generator knobs and
``--seed`` the data seed, which must equal the training run's ``config.data.synthetic`` and
``config.data.seed``.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from input_pipeline import skips, sources, teacher_cache

__all__ = ['teacher_fingerprint', 'prepare', 'main']

_SHARD_REASONS = {skips.code(r) for r in ('truncated_shard', 'corrupt_shard', 'empty_shard')}


def teacher_fingerprint(model_dir: str, variables: Mapping) -> dict[str, str]:
  """``{'config_sha256', 'params_sha256'}``: sha256 of ``model_config.json``'s text and of every
  parameter array (paths in sorted order, each with its dtype, shape and bytes)."""
  import jax

  from groupvit_jax.checkpoints import store

  with open(os.path.join(model_dir, store.CONFIG_FILE), 'rb') as f:
    config_sha = hashlib.sha256(f.read()).hexdigest()
  h = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
  for path, leaf in sorted(leaves, key=lambda pl: jax.tree_util.keystr(pl[0])):
    arr = np.ascontiguousarray(np.asarray(leaf))
    h.update(f'{jax.tree_util.keystr(path)}|{arr.dtype.str}|{arr.shape}\n'.encode())
    h.update(arr.tobytes())
  return {'config_sha256': config_sha, 'params_sha256': h.hexdigest()}


# A sample as the tool sees it: (key, reason code, zero-argument callable returning its bytes),
# or an event (None, reason code, None) for a shard-level skip.
_Item = tuple


def _data_config(image_size, image_extensions, tfrecord_image_key, tfds_image_key, tfds_data_dir):
  from input_pipeline.config import default_data_config

  cfg = default_data_config()
  cfg.image_size = int(image_size)
  cfg.captions = False
  cfg.crop = 'center'
  cfg.image_extensions = tuple(image_extensions)
  cfg.tfrecord_image_key = tfrecord_image_key
  cfg.tfds_image_key = tfds_image_key
  cfg.tfds_data_dir = tfds_data_dir
  return cfg


def _file_items(src, cfg) -> Iterator[_Item]:
  """Samples of a webdataset / tfrecord / tfds source in file order, samples in file order."""
  import tensorflow as tf

  from input_pipeline import pipeline

  kind = src.spec.kind
  if kind == 'webdataset':
    table_fn = pipeline._tar_table_fn(tuple(cfg.image_extensions), str(cfg.caption_extension))
  else:
    table_fn = pipeline._tfrecord_table_fn()
    parser = (
      pipeline.tfds_parser(src.tfds_features, cfg, tf.constant([0, 0], tf.int64))
      if kind == 'tfds'
      else pipeline.tfrecord_parser(cfg)
    )
    parse = tf.function(parser, autograph=False)
  for f, path in enumerate(src.files):
    contents = tf.io.read_file(path)
    if kind == 'webdataset':
      table = table_fn(contents)
    else:
      skip = tf.constant(src.skips[f] if src.skips else 0, tf.int64)
      take = tf.constant(src.takes[f] if src.takes else -1, tf.int64)
      table = table_fn(contents, skip, take)
    data = contents.numpy()
    table = {k: v.numpy() for k, v in table.items()}
    for key, off, ln, reason in zip(table['key'], table['a_off'], table['a_len'], table['reason']):
      reason = int(reason)
      if reason in _SHARD_REASONS:
        yield None, reason, None
        continue
      if reason == skips.code('missing_caption'):
        reason = 0
      k = teacher_cache.cache_key(kind, path, key.decode('utf-8', 'replace'))
      payload = data[int(off) : int(off) + max(int(ln), 0)]
      if kind == 'webdataset':
        yield k, reason, (lambda p=payload: p)
        continue
      if reason:
        yield k, reason, (lambda: b'')
        continue
      try:
        image, _, _, r = parse(tf.constant(payload), tf.constant(key))
        image, r = image.numpy(), int(r)
      except tf.errors.OpError:
        image, r = b'', skips.code('corrupt_record')
      yield k, r, (lambda p=image: p)


def _folder_items(src) -> Iterator[_Item]:
  def read(path):
    with open(path, 'rb') as f:
      return f.read()

  for rel in src.names:
    path = f'{src.root.rstrip("/")}/{rel}'
    yield sources.folder_key(rel), 0, (lambda p=path: read(p))


def _synthetic_items(config, seed: int, n: int) -> Iterator[_Item]:
  import tensorflow as tf

  from input_pipeline import synthetic_shapes

  def render(i):
    # As the pipeline: the rendered image goes through PNG and the same decoder.
    img = synthetic_shapes.generate(config, seed, i, 'train')['image']
    return tf.io.encode_png(img, compression=1).numpy()

  for i in range(n):
    yield str(i), 0, (lambda i=i: render(i))


class _Embedder:
  """Decodes + centre-crops a chunk's samples and embeds their views in fixed-shape batches."""

  def __init__(self, clip_cfg, params, image_size: int, batch_size: int):
    import jax

    from groupvit_jax import teacher_views
    from input_pipeline import pipeline

    self.params = params
    self.cfg = clip_cfg
    self.size = int(image_size)
    self.batch_size = int(batch_size)
    self.decode = pipeline._decode_chunk_fn(self.size, (0.08, 1.0), (0.75, 4.0 / 3.0), 'center')
    self.check = pipeline._check_sample
    self.fn = jax.jit(teacher_views.teacher_embeddings, static_argnums=(0, 3))
    self.grids = teacher_views.ALL_GRIDS

  def crops(self, data: list[bytes], reasons: list[int]) -> tuple[np.ndarray, list[int]]:
    """uint8 [n, S, S, 3] (zeros where skipped) and the final reason codes [n]."""
    import tensorflow as tf

    from input_pipeline.pipeline import _DECODE_CHUNK

    n = len(data)
    out = np.zeros((n, self.size, self.size, 3), np.uint8)
    final = list(reasons)
    if not n:
      return out, final
    _, r = self.check(tf.constant(data, tf.string), tf.constant(''), tf.constant(reasons), False)
    final = [int(x) for x in r.numpy()]
    for j in range(0, n, _DECODE_CHUNK):
      sl = slice(j, min(n, j + _DECODE_CHUNK))
      todo = np.equal(final[sl], 0)
      m = len(todo)
      seeds = tf.zeros([m, 2], tf.int32)
      imgs, ok = self.decode(tf.constant(data[sl], tf.string), seeds, tf.constant(todo))
      out[sl] = imgs.numpy()
      for t, (want, good) in enumerate(zip(todo, ok.numpy())):
        if want and not good:
          final[j + t] = skips.code('corrupt_image')
    return out, final

  def embed(self, crops: np.ndarray) -> np.ndarray:
    """uint8 [n, S, S, 3] -> float16 [n, 30, E]; the last batch is zero-padded to batch_size."""
    b = self.batch_size
    outs = []
    for j in range(0, len(crops), b):
      x = crops[j : j + b].astype(np.float32)
      k = len(x)
      if k < b:
        x = np.concatenate([x, np.zeros((b - k,) + x.shape[1:], np.float32)])
      e = np.asarray(self.fn(self.cfg, self.params, x, self.grids))[:k]
      outs.append(e.astype(np.float16))
    if not outs:
      return np.zeros((0, sum(n * n for n in self.grids), self.cfg.embed_dim), np.float16)
    return np.concatenate(outs)


def prepare(
  teacher: str,
  source_list: Sequence[str],
  output: str,
  *,
  image_size: int = 224,
  batch_size: int = 64,
  chunk_size: int = 1024,
  process_id: int = 0,
  num_processes: int = 1,
  tfds_data_dir: str | None = None,
  num_samples: int | None = None,
  synthetic: Mapping | None = None,
  seed: int = 0,
  image_extensions: Sequence[str] = ('jpg', 'jpeg', 'png', 'webp'),
  tfrecord_image_key: str = 'jpg',
  tfds_image_key: str = 'image',
  max_chunks: int | None = None,
  log: Callable[[str], None] = print,
) -> dict:
  """Writes this process's chunks of the teacher cache of ``source_list`` into ``output``.

  Args:
    teacher: a CLIP model directory (``groupvit_jax.checkpoints.store``).
    source_list: source strings as in ``config.data.train`` (same order).
    output: the cache directory (created).
    image_size: centre-crop side S (``config.data.image_size``).
    batch_size: images per teacher call (B x 30 views).
    chunk_size: sample slots per chunk.
    process_id, num_processes: this process writes chunks ``i`` with ``i % P == process_id``.
    tfds_data_dir: as ``config.data.tfds_data_dir``.
    num_samples: ids of a synthetic source (default: ``synthetic['num_train_examples']``).
    synthetic: ``config.data.synthetic`` knobs; seed: ``config.data.seed``.
    image_extensions, tfrecord_image_key, tfds_image_key: as in ``config.data``.
    max_chunks: stop after committing this many chunks (time-limited jobs; no ``done.json``).
    log: progress printer.

  Returns:
    summary dict: ``chunks_written``, ``chunks_present``, ``num_chunks`` (None if stopped
    early), ``images``, ``seconds``, ``images_per_s``, ``skipped`` {reason: n} (this run).
  """
  import tensorflow as tf

  from groupvit_jax import teacher_views
  from groupvit_jax.checkpoints import store
  from input_pipeline import pipeline, synthetic_shapes

  tf.config.set_visible_devices([], 'GPU')  # the accelerator is JAX's
  if not 0 <= process_id < num_processes:
    raise ValueError(f'process_id {process_id} not in [0, {num_processes})')
  if chunk_size < 1 or batch_size < 1:
    raise ValueError('chunk_size and batch_size must be >= 1')
  if tuple(teacher_views.ALL_GRIDS) != teacher_cache.STORED_GRIDS:
    raise AssertionError('teacher_cache.STORED_GRIDS must equal teacher_views.ALL_GRIDS')
  clip_cfg, variables = store.load_model(teacher)
  if store.kind_of(clip_cfg) != 'clip':
    raise ValueError(f'{teacher} is a {store.kind_of(clip_cfg)} model, not a CLIP')
  fingerprint = teacher_fingerprint(teacher, variables)
  cfg = _data_config(
    image_size, image_extensions, tfrecord_image_key, tfds_image_key, tfds_data_dir
  )

  syn_cfg = synthetic_shapes.SyntheticConfig.from_dict(dict(synthetic or {}))
  specs = [sources.parse_source(s) for s in source_list]
  entries, streams, syn_meta = [], [], None
  for i, spec in enumerate(specs):
    norm = sources.normalized(spec.text)
    if spec.kind == 'synthetic':
      n = int(num_samples or syn_cfg.num_train_examples)
      if n <= 0:
        raise ValueError('a synthetic source needs --num_samples N (or num_train_examples=N)')
      if syn_cfg.num_train_examples not in (0, n):
        raise ValueError(
          f'--num_samples {n} != synthetic num_train_examples {syn_cfg.num_train_examples}'
        )
      syn_cfg = synthetic_shapes.SyntheticConfig.from_dict(
        {**syn_cfg.to_dict(), 'num_train_examples': n}
      )
      syn_meta = {'config': syn_cfg.to_dict(), 'seed': int(seed)}
      entries.append(teacher_cache.source_entry(norm, None, n))
      render_seed = pipeline._seed_pair(int(seed), 2, i)[0]  # the pipeline's synthetic seed
      streams.append(lambda c=syn_cfg, s=render_seed, n=n: _synthetic_items(c, s, n))
      continue
    src = pipeline._Source(i, spec, cfg, 0, 1)
    if spec.kind == 'tfds':
      names = [os.path.basename(f) for f in src.files]
    else:
      names = src.names
    entries.append(teacher_cache.source_entry(norm, names))
    if spec.kind == 'folder':
      streams.append(lambda s=src: _folder_items(s))
    else:
      streams.append(lambda s=src: _file_items(s, cfg))

  meta = teacher_cache.build_meta(
    sources=entries,
    image_size=image_size,
    embed_dim=clip_cfg.embed_dim,
    teacher=fingerprint,
    chunk_size=chunk_size,
    batch_size=batch_size,
    reader={
      'image_extensions': [e.lower() for e in image_extensions],
      'tfrecord_image_key': tfrecord_image_key,
      'tfds_image_key': tfds_image_key,
    },
    synthetic=syn_meta,
  )
  os.makedirs(output, exist_ok=True)
  meta_path = os.path.join(output, teacher_cache.META_FILE)
  if not os.path.exists(meta_path):
    # Every process writes the same bytes (atomically), so none has to wait for process 0.
    teacher_cache.atomic_write(meta_path, json.dumps(meta, indent=1, sort_keys=True).encode())
  with open(meta_path) as f:
    old = json.load(f)
  diffs = teacher_cache.meta_differences(old, meta)
  if diffs:
    raise ValueError(
      f'{output} holds a teacher cache made with other arguments:\n  ' + '\n  '.join(diffs)
    )

  done = set(teacher_cache.committed_chunks(output))
  embedder = _Embedder(clip_cfg, variables['params'], image_size, batch_size)
  totals = collections.Counter()
  stats = {'chunks_written': 0, 'chunks_present': 0, 'images': 0}
  t0 = time.time()

  def mine(c: int) -> bool:
    return c % num_processes == process_id and c not in done

  def flush(c: int, items: list, events: collections.Counter) -> None:
    data = [get() if r == 0 else b'' for _, r, get in items]
    crops, final = embedder.crops(data, [r for _, r, _ in items])
    good = [j for j, r in enumerate(final) if r == 0]
    emb = embedder.embed(crops[good])
    skipped = collections.Counter(events)
    for r in final:
      if r:
        skipped[skips.REASONS[r - 1]] += 1
    teacher_cache.write_chunk(
      output, c, emb, [items[j][0] for j in good], len(items), dict(skipped)
    )
    totals.update(skipped)
    stats['chunks_written'] += 1
    stats['images'] += len(good)
    dt = max(time.time() - t0, 1e-9)
    log(
      f'chunk {c}: {len(good)} embedded, {sum(skipped.values())} skipped '
      f'({stats["images"] / dt:.1f} images/s this run)'
    )

  slot = 0
  open_chunk, items, events = 0, [], collections.Counter()
  stopped = False
  for stream in streams:
    for key, reason, get in stream():
      if key is None:  # a shard-level event belongs to the chunk of the last sample
        if mine(open_chunk):
          events[skips.REASONS[reason - 1]] += 1
        continue
      c = slot // chunk_size
      if c != open_chunk:
        if mine(open_chunk):
          flush(open_chunk, items, events)
          if max_chunks is not None and stats['chunks_written'] >= max_chunks:
            stopped = True
            break
        open_chunk, items, events = c, [], collections.Counter()
      if mine(c):
        items.append((key, reason, get))
      slot += 1
    if stopped:
      break
  num_chunks = None
  if not stopped:
    if mine(open_chunk):
      flush(open_chunk, items, events)
    num_chunks = max(1, -(-slot // chunk_size))
    record = {'num_samples': slot, 'num_chunks': num_chunks}
    teacher_cache.atomic_write(
      os.path.join(output, teacher_cache.DONE_FILE), json.dumps(record).encode()
    )
  stats['chunks_present'] = len(teacher_cache.committed_chunks(output))
  dt = time.time() - t0
  summary = {
    **stats,
    'num_chunks': num_chunks,
    'seconds': round(dt, 3),
    'images_per_s': round(stats['images'] / max(dt, 1e-9), 2),
    'skipped': dict(sorted(totals.items())),
  }
  log(
    f'done: {stats["chunks_written"]} chunk(s) written by process {process_id}/{num_processes}, '
    f'{stats["chunks_present"]} present of {num_chunks if num_chunks else "?"}; '
    f'{stats["images"]} images in {dt:.1f} s ({summary["images_per_s"]} images/s); '
    f'skipped: {summary["skipped"] or "none"}' + (' (stopped at --max_chunks)' if stopped else '')
  )
  return summary


def _parse_knob(text: str) -> tuple[str, object]:
  key, sep, value = text.partition('=')
  if not sep:
    raise argparse.ArgumentTypeError(f'--synthetic takes KEY=VALUE, got {text!r}')
  try:
    return key, json.loads(value)
  except json.JSONDecodeError:
    return key, value


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(
    description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument('--teacher', required=True, help='CLIP model directory')
  p.add_argument('--source', action='append', required=True, help='as in config.data.train')
  p.add_argument('--output', required=True, help='cache directory (config.data.teacher_cache)')
  p.add_argument('--image_size', type=int, default=224)
  p.add_argument('--batch_size', type=int, default=64)
  p.add_argument('--chunk_size', type=int, default=1024)
  p.add_argument('--process_id', type=int, default=0)
  p.add_argument('--num_processes', type=int, default=1)
  p.add_argument('--tfds_data_dir', default=None)
  p.add_argument('--tfds_image_key', default='image')
  p.add_argument('--tfrecord_image_key', default='jpg')
  p.add_argument('--image_extensions', default='jpg,jpeg,png,webp', help='comma-separated')
  p.add_argument('--num_samples', type=int, default=None, help='ids of a synthetic source')
  p.add_argument('--synthetic', type=_parse_knob, action='append', default=[], help='KEY=VALUE')
  p.add_argument('--seed', type=int, default=0, help='config.data.seed (synthetic images)')
  p.add_argument('--max_chunks', type=int, default=None, help='stop after this many chunks')
  args = p.parse_args(argv)
  print('command:', ' '.join(sys.argv if argv is None else ['prepare_teacher', *argv]), flush=True)
  prepare(
    args.teacher,
    args.source,
    args.output,
    image_size=args.image_size,
    batch_size=args.batch_size,
    chunk_size=args.chunk_size,
    process_id=args.process_id,
    num_processes=args.num_processes,
    tfds_data_dir=args.tfds_data_dir,
    num_samples=args.num_samples,
    synthetic=dict(args.synthetic),
    seed=args.seed,
    image_extensions=tuple(e for e in args.image_extensions.split(',') if e),
    tfrecord_image_key=args.tfrecord_image_key,
    tfds_image_key=args.tfds_image_key,
    max_chunks=args.max_chunks,
    log=lambda m: print(m, flush=True),
  )
  return 0


if __name__ == '__main__':
  sys.exit(main())
