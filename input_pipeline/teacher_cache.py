"""The teacher cache: frozen-CLIP embeddings of every training image's teacher views (ZeroSeg).

Written once by ``python -m input_pipeline.prepare_teacher`` and joined to the images by the
training pipeline (``config.data.teacher_cache``).  numpy only (TensorFlow and JAX are imported
lazily where needed), so the cache can be inspected anywhere.

Layout of a cache directory::

    meta.json            what the cache is of (written first; see ``build_meta``): format, the
                         sources (weights dropped) with their file counts, a sha256 of their file
                         names (and the names themselves when there are at most 10,000), the crop
                         rule and image_size, the stored grids (always ALL_GRIDS: 30 views),
                         embed_dim, dtype float16, chunk_size, batch_size, the teacher's
                         fingerprint (sha256 of its model_config.json text and of its parameter
                         bytes) and, with a synthetic source, the generator's knobs and seed.
    chunk-000000.npy     float16 [n, 30, E]: unit embeddings of the chunk's decodable samples
    chunk-000000.json    {"chunk", "keys" [n] (row order of the .npy), "num_samples" (slots of
                         the chunk, skipped ones included), "skipped" {reason: count}}
    ...
    done.json            {"num_samples", "num_chunks"}: written when a tool run finished its
                         pass (every process writes the same), so a reader can tell missing
                         chunks from the end of the data.

Chunks are deterministic: all samples of the sources in a fixed sequential order (sources in
order, files in list order, samples in file order; for synthetic ids 0..N-1) are cut into chunks
of ``chunk_size`` slots; chunk ``i`` is written by process ``i % num_processes``, the ``.npy``
first and the ``.json`` last (each to a temporary name, then renamed), so a chunk exists exactly
when its ``.json`` does and a killed run leaves no half chunk.

Keys are the strings the training pipeline assigns to a sample (``cache_key``): webdataset,
tfrecord and tfds ``"<shard basename>/<key in the shard>"`` (tar member key / record index), so
moving the data directory keeps the cache valid; folder the path relative to the directory
without extension; synthetic the example id.  Keys must be unique over the whole cache (two
sources with the same shard basenames cannot share one cache).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
  'FORMAT',
  'STORED_GRIDS',
  'CROP_RULE',
  'TeacherCache',
  'cache_key',
  'chunk_name',
  'files_digest',
  'source_entry',
  'build_meta',
  'meta_differences',
  'atomic_write',
  'write_chunk',
  'committed_chunks',
]

FORMAT = 'groupvit_jax.teacher_cache/1'
META_FILE = 'meta.json'
DONE_FILE = 'done.json'
STORED_GRIDS = (1, 2, 3, 4)  # == groupvit_jax.teacher_views.ALL_GRIDS (checked by the tool)
CROP_RULE = (
  'center: centred square of side min(H, W) (offset (long - short) // 2), resized to '
  'image_size x image_size bilinear with antialias, rounded to uint8 '
  '(input_pipeline.augment.decode_and_center_crop)'
)
_MAX_LISTED_FILES = 10_000


def chunk_name(i: int) -> str:
  """File stem of chunk ``i`` (``chunk-000042``)."""
  return f'chunk-{int(i):06d}'


def cache_key(kind: str, shard: str, key: str) -> str:
  """The cache key of a sample of a source ``kind`` read from ``shard`` with in-shard ``key``."""
  if kind in ('folder', 'synthetic'):
    return key
  return f'{os.path.basename(shard)}/{key}'


def files_digest(names: Sequence[str]) -> str:
  """sha256 (hex) of a list of file names (order matters)."""
  return hashlib.sha256('\n'.join(names).encode('utf-8')).hexdigest()


def source_entry(source: str, names: Sequence[str] | None, num_samples: int | None = None) -> dict:
  """The ``meta.json`` record of one source: its normalised string and file names (basenames,
  or relative paths for a folder; None for sources without files)."""
  entry = {'source': source}
  if names is not None:
    entry['num_files'] = len(names)
    entry['files_sha256'] = files_digest(names)
    entry['files'] = list(names) if len(names) <= _MAX_LISTED_FILES else None
  if num_samples is not None:
    entry['num_samples'] = int(num_samples)
  return entry


def build_meta(
  *,
  sources: Sequence[dict],
  image_size: int,
  embed_dim: int,
  teacher: Mapping[str, str],
  chunk_size: int,
  batch_size: int,
  reader: Mapping,
  synthetic: Mapping | None = None,
) -> dict:
  """The ``meta.json`` dict (JSON-normalised: lists, not tuples).

  Args:
    sources: ``source_entry`` records, in the order of the tool's ``--source`` flags.
    image_size: side of the centre crop the views are cut from.
    embed_dim: E.
    teacher: ``{'config_sha256', 'params_sha256'}`` (see ``prepare_teacher.teacher_fingerprint``).
    chunk_size / batch_size: the tool's chunking and teacher batch (batch shapes can change the
      last bits of XLA results, so a resumed run must use the same).
    reader: reader settings that decide what a sample is (image extensions, feature keys).
    synthetic: ``{'config': SyntheticConfig dict, 'seed': data seed}`` with a synthetic source.
  """
  meta = {
    'format': FORMAT,
    'sources': list(sources),
    'image_size': int(image_size),
    'crop': CROP_RULE,
    'grids': list(STORED_GRIDS),
    'num_views': sum(n * n for n in STORED_GRIDS),
    'embed_dim': int(embed_dim),
    'dtype': 'float16',
    'chunk_size': int(chunk_size),
    'batch_size': int(batch_size),
    'teacher': dict(teacher),
    'reader': dict(reader),
    'synthetic': dict(synthetic) if synthetic is not None else None,
  }
  return json.loads(json.dumps(meta))


def meta_differences(old: Mapping, new: Mapping) -> list[str]:
  """Human-readable ``key: old != new`` lines for the top-level fields that differ."""
  out = []
  for k in sorted(set(old) | set(new)):
    if old.get(k) != new.get(k):
      a, b = json.dumps(old.get(k))[:300], json.dumps(new.get(k))[:300]
      out.append(f'{k}: {a} != {b}')
  return out


def atomic_write(path: str, data: bytes) -> None:
  """Writes ``data`` to a temporary name next to ``path``, then renames it (atomic on POSIX)."""
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'wb') as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_chunk(
  directory: str,
  index: int,
  embeddings: np.ndarray,
  keys: Sequence[str],
  num_samples: int,
  skipped: Mapping[str, int],
) -> None:
  """Commits chunk ``index``: float16 [n, V, E] ``embeddings`` for ``keys`` [n]; the ``.json``
  (the commit marker) is renamed into place last."""
  emb = np.ascontiguousarray(embeddings, np.float16)
  if emb.ndim != 3 or emb.shape[0] != len(keys):
    raise ValueError(f'chunk {index}: embeddings {emb.shape} for {len(keys)} keys')
  import io

  buf = io.BytesIO()
  np.save(buf, emb, allow_pickle=False)
  stem = os.path.join(directory, chunk_name(index))
  atomic_write(stem + '.npy', buf.getvalue())
  record = {
    'chunk': int(index),
    'keys': list(keys),
    'num_samples': int(num_samples),
    'skipped': {k: int(v) for k, v in sorted(skipped.items()) if v},
  }
  atomic_write(stem + '.json', json.dumps(record, sort_keys=True).encode('utf-8'))


def committed_chunks(directory: str) -> list[int]:
  """Sorted indices of the chunks whose commit marker (``.json``) and ``.npy`` exist."""
  out = []
  for name in os.listdir(directory):
    if name.startswith('chunk-') and name.endswith('.json') and '.tmp-' not in name:
      stem = name[: -len('.json')]
      if os.path.exists(os.path.join(directory, stem + '.npy')):
        out.append(int(stem[len('chunk-') :]))
  return sorted(out)


class TeacherCache:
  """Read side of a cache directory (memory-mapped chunks, key -> row index).

  Attributes:
    meta: the ``meta.json`` dict.
    keys: list [N] of all keys, in global row order (chunks in index order, rows in chunk order).
    num_chunks: chunks expected (from ``done.json``; None while no tool run has finished).
    missing_chunks: indices below ``num_chunks`` that are not committed (all unknown ones when
      ``num_chunks`` is None are simply absent).
    complete: ``done.json`` exists and no chunk is missing.
  """

  def __init__(self, directory: str):
    self.directory = directory
    path = os.path.join(directory, META_FILE)
    if not os.path.exists(path):
      raise FileNotFoundError(
        f'{path} not found: {directory!r} is not a teacher cache '
        '(write one with python -m input_pipeline.prepare_teacher)'
      )
    with open(path) as f:
      self.meta = json.load(f)
    if self.meta.get('format') != FORMAT:
      raise ValueError(f'{path}: format {self.meta.get("format")!r}, expected {FORMAT!r}')
    done_path = os.path.join(directory, DONE_FILE)
    self.done = None
    if os.path.exists(done_path):
      with open(done_path) as f:
        self.done = json.load(f)
    self.num_chunks = None if self.done is None else int(self.done['num_chunks'])
    self.chunks = committed_chunks(directory)
    self.keys: list[str] = []
    self._arrays: list[np.ndarray] = []
    self._skipped: dict[str, int] = {}
    self._num_samples = 0
    starts = []
    v, e = int(self.meta['num_views']), int(self.meta['embed_dim'])
    for i in self.chunks:
      stem = os.path.join(directory, chunk_name(i))
      with open(stem + '.json') as f:
        rec = json.load(f)
      n = len(rec['keys'])
      arr = np.load(stem + '.npy', mmap_mode='r') if n else np.zeros((0, v, e), np.float16)
      if arr.shape != (n, v, e) or arr.dtype != np.float16:
        raise ValueError(f'{stem}.npy: {arr.dtype} {arr.shape}, expected float16 {(n, v, e)}')
      starts.append(len(self.keys))
      self.keys.extend(rec['keys'])
      self._arrays.append(arr)
      self._num_samples += int(rec['num_samples'])
      for r, c in rec['skipped'].items():
        self._skipped[r] = self._skipped.get(r, 0) + int(c)
    self._starts = np.asarray(starts + [len(self.keys)], np.int64)
    self.index = {k: j for j, k in enumerate(self.keys)}
    if len(self.index) != len(self.keys):
      seen, dup = set(), []
      for k in self.keys:
        if k in seen:
          dup.append(k)
        seen.add(k)
      raise ValueError(
        f'teacher cache {directory!r}: {len(dup)} duplicate key(s), e.g. {dup[:3]}; keys must be '
        'unique (sources with equal shard basenames need separate caches)'
      )
    have = set(self.chunks)
    self.missing_chunks = (
      [] if self.num_chunks is None else [i for i in range(self.num_chunks) if i not in have]
    )
    self.complete = self.num_chunks is not None and not self.missing_chunks

  def __len__(self) -> int:
    return len(self.keys)

  @property
  def stats(self) -> dict:
    """Counts: chunks committed / expected / missing, rows, sample slots, skipped by reason."""
    return {
      'chunks': len(self.chunks),
      'expected_chunks': self.num_chunks,
      'missing_chunks': len(self.missing_chunks),
      'complete': self.complete,
      'rows': len(self.keys),
      'samples': self._num_samples,
      'skipped': dict(sorted(self._skipped.items())),
    }

  def lookup(self, keys: Sequence[str]) -> np.ndarray:
    """int64 [B] global row of each key, -1 where the key is not in the cache."""
    get = self.index.get
    return np.fromiter((get(k, -1) for k in keys), np.int64, count=len(keys))

  def gather(self, rows: np.ndarray, view_idx: np.ndarray | None = None) -> np.ndarray:
    """Embeddings of global ``rows`` [B] (all >= 0): float32 [B, V, E], views ``view_idx`` [V]
    (indices into the 30 stored views, e.g. ``teacher_views.view_indices(grids)``; None = all).
    """
    rows = np.asarray(rows, np.int64).reshape(-1)
    if rows.size and (rows.min() < 0 or rows.max() >= len(self.keys)):
      raise IndexError(f'teacher rows out of range [0, {len(self.keys)}): {rows}')
    vidx = np.arange(int(self.meta['num_views'])) if view_idx is None else np.asarray(view_idx)
    out = np.empty((rows.size, vidx.size, int(self.meta['embed_dim'])), np.float32)
    chunk = np.searchsorted(self._starts, rows, side='right') - 1
    for c in np.unique(chunk):
      sel = np.nonzero(chunk == c)[0]
      local = rows[sel] - self._starts[c]
      order = np.argsort(local, kind='stable')  # sorted reads of the memory map
      vals = self._arrays[c][local[order]][:, vidx]
      out[sel[order]] = vals.astype(np.float32)
    return out

  def check(
    self,
    source_strings: Sequence[str],
    image_size: int,
    grids: Sequence[int],
    teacher_fingerprint: Mapping[str, str] | None = None,
    *,
    files: Mapping[str, Sequence[str]] | None = None,
    synthetic: Mapping | None = None,
    allow_incomplete: bool = False,
  ) -> None:
    """Raises ValueError naming every way the cache does not fit the given data.

    Args:
      source_strings: ``config.data.train`` (weights are ignored; the list must equal the cache's,
        order included, since synthetic images depend on the source's position).
      image_size: the crop size.
      grids: the grids to be read (must be among the stored ones).
      teacher_fingerprint: compared with the stored one when given.
      files: normalised source string -> file names (basenames / relative paths), compared with
        the stored count and digest.
      synthetic: ``{'config', 'seed'}`` of the synthetic source, if any (compared when given).
      allow_incomplete: accept missing chunks / an unfinished tool run.
    """
    from input_pipeline import sources as sources_lib

    m = self.meta
    diffs = []
    want = [sources_lib.normalized(s) for s in source_strings]
    have = [s['source'] for s in m['sources']]
    if want != have:
      diffs.append(f'sources: cache has {have}, data has {want}')
    if int(image_size) != int(m['image_size']):
      diffs.append(f'image_size: cache has {m["image_size"]}, data has {image_size}')
    bad_grids = sorted(set(int(g) for g in grids) - set(m['grids']))
    if bad_grids:
      diffs.append(f'grids: {bad_grids} not among the stored grids {m["grids"]}')
    if teacher_fingerprint is not None and dict(teacher_fingerprint) != m['teacher']:
      diffs.append(f'teacher: cache has {m["teacher"]}, expected {dict(teacher_fingerprint)}')
    entries = {s['source']: s for s in m['sources']}
    for src, names in (files or {}).items():
      e = entries.get(src)
      if e is None or 'num_files' not in e:
        continue
      names = list(names)
      if len(names) != e['num_files'] or files_digest(names) != e['files_sha256']:
        detail = f'{e["num_files"]} file(s) in the cache, {len(names)} now'
        if e.get('files') is not None:
          extra = sorted(set(names) - set(e['files']))[:3]
          gone = sorted(set(e['files']) - set(names))[:3]
          detail += f'; new: {extra}, gone: {gone}'
        diffs.append(f'files of {src}: {detail}')
    if synthetic is not None and 'synthetic' in have:
      stored = m.get('synthetic')
      given = json.loads(json.dumps(dict(synthetic)))
      if stored != given:
        d = meta_differences(stored.get('config', {}) if stored else {}, given.get('config', {}))
        if stored and stored.get('seed') != given.get('seed'):
          d.append(f'seed: {stored.get("seed")} != {given.get("seed")}')
        diffs.append(f'synthetic (cache != data): {d}')
    if not allow_incomplete and not self.complete:
      if self.num_chunks is None:
        diffs.append('incomplete: no tool run has finished (done.json missing)')
      else:
        diffs.append(
          f'incomplete: {len(self.missing_chunks)} of {self.num_chunks} chunks missing, '
          f'e.g. {self.missing_chunks[:5]}'
        )
    if diffs:
      raise ValueError(f'teacher cache {self.directory!r} does not match: ' + '; '.join(diffs))
