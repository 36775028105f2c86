"""The training input pipeline: sources -> mix -> decode/crop -> count skips -> augment -> batch,
then captions -> words -> prompts -> token ids on the host.

Design (why it looks like this):

* **Everything random is stateless.**  Shard order, sample order, source choice, augmentation and
  prompt choice are pure functions of ``(seed, process_index, position)``.  Hence batches do not
  depend on thread timing, and a position in the stream fully determines what comes next.
* **Resumable by position, not by tf.data checkpoint.**  ``tf.data`` iterator checkpoints store
  the contents of shuffle/prefetch/parallel-map buffers (hundreds of MB of images), do not
  support ``py_function``/``numpy_function`` stages, and the compact "symbolic" variant hangs
  with parallel interleave/map in TF 2.21 (and rejects ``ignore_errors``).  Instead each element
  carries its source position ``(t, o)`` (group ``t`` of that source's shard stream, offset ``o``
  in the group's permutation) and a global index; the scan that counts skipped samples also keeps
  the last position of every source.  The state after a batch is therefore a few integers:
  ``get_state()`` returns them as JSON and ``set_state()`` rebuilds the pipeline starting right
  after them (loading the current shard group again and skipping into it).
* **Shuffling without a shuffle buffer.**  A ``Dataset.shuffle`` buffer would be state that has to
  be saved.  Instead shards are loaded in groups of ``shards_per_group`` and all samples of a group
  are emitted in a random permutation (files are re-permuted each epoch), and sources are mixed
  by a stateless per-index categorical draw (``choose_from_datasets`` with a selector computed
  from the index -- the resumable equivalent of ``sample_from_datasets``).
* **Bad data flows as data.**  Each element carries a skip-reason code (set by the readers and by
  cheap checks: caption UTF-8/emptiness, image magic bytes); decode failures are caught per
  element by small nested ``ignore_errors`` pipelines run on chunks of 16 samples (errors of
  file reading upstream are *not* swallowed); a sequential ``scan`` after the parallel decode
  counts reasons exactly and in stream order, and only then are bad elements filtered out.  The
  counts attached to a batch are exactly those of all samples up to its last sample.
* **Per-sample cost.**  JPEGs are decoded only inside the crop window, shards are parsed by a
  lean in-graph loop, group members are sliced vectorised, the augmentation ops avoid slow TF
  kernels (see ``augment.py``) and batches reach numpy without a copy.
* **Image-only data and the teacher cache (ZeroSeg).**  With ``config.data.captions = False``
  captions are neither read nor checked and no text is produced.  With ``config.data.teacher_cache``
  a ``tf.lookup.StaticHashTable`` maps each sample's cache key to a row of the cache inside the
  graph, before decoding; a sample without a row gets the skip reason ``missing_teacher`` (so it is
  counted by the scan like any bad sample and batches stay full), and the row rides along to the
  host, where ``_host_batch`` gathers the embeddings from the memory-mapped chunks.
* **Text on the host.**  spaCy and the CLIP BPE tokenizer are Python; they run on the host after
  tf.data (in a background thread when ``host_prefetch > 0``), so the tf.data graph stays free of
  ``py_function``.  Prompt randomness is keyed by the sample's global index, so it is resumable too.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import queue
import random
import threading
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from groupvit_jax.prompts import TEMPLATE_SETS
from groupvit_jax.tokenizer import default_tokenizer
from input_pipeline import (
  augment,
  nouns,
  prompts,
  readers,
  skips,
  sources,
  synthetic_shapes,
  teacher_cache,
)

__all__ = [
  'STATE_FORMAT',
  'CROPS',
  'TrainIterator',
  'create_train_dataset',
  'tfrecord_parser',
  'tfds_parser',
]

STATE_FORMAT = 'groupvit_jax.input_pipeline/1'
_INF = 2**62


# Traced graph functions are cached per process and shared by every pipeline built with the same
# settings: building a pipeline (e.g. after set_state, or in tests) then skips re-tracing them.
_SEED_SPEC = tf.TensorSpec([2], tf.int32)  # what stateless_fold_in returns
_STR_SPEC = tf.TensorSpec([], tf.string)


_DECODE_CHUNK = 16
CROPS = ('random_resized', 'center')


@functools.lru_cache(maxsize=16)
def _decode_chunk_fn(size: int, scale: tuple, ratio: tuple, crop: str = 'random_resized'):
  """Decodes + crops (RandomResizedCrop, or the centre crop) a chunk of samples, containing
  decode errors.

  (data string [n], seed int32 [n, 2], todo bool [n]) -> (uint8 [n, size, size, 3], ok bool [n]):
  images whose ``todo`` is set are decoded; ``ok`` is False where decoding raised.  The errors are
  contained by one nested tf.data pipeline (``ignore_errors``) per chunk rather than per sample
  (``readers.try_call``), which amortises its set-up cost over ``_DECODE_CHUNK`` images.  The
  teacher cache tool calls the same function with ``crop='center'``, so its crops are the
  pipeline's bit for bit.
  """
  if crop not in CROPS:
    raise ValueError(f'crop must be one of {CROPS}, got {crop!r}')

  def crop_fn(d, s):
    if crop == 'center':
      return augment.decode_and_center_crop(d, size)
    return augment.decode_and_random_crop(d, s, size, scale, ratio)

  @tf.function(
    input_signature=[
      tf.TensorSpec([None], tf.string),
      tf.TensorSpec([None, 2], tf.int32),
      tf.TensorSpec([None], tf.bool),
    ],
    autograph=False,
  )
  def fn(data, seeds, todo):
    n = tf.shape(data, out_type=tf.int64)[0]
    pos = tf.range(n)
    inner = tf.data.Dataset.from_tensor_slices((pos, data, seeds, todo))
    inner = inner.filter(readers.no_autograph(lambda p, d, s, t: t))
    inner = inner.map(readers.no_autograph(lambda p, d, s, t: (p, crop_fn(d, s))))
    inner = inner.ignore_errors().batch(_DECODE_CHUNK)
    empty = (tf.zeros([0], tf.int64), tf.zeros([0, size, size, 3], tf.uint8))
    inner = inner.concatenate(tf.data.Dataset.from_tensors(empty))
    ok_pos, images = inner.take(1).get_single_element()
    idx = ok_pos[:, None]
    images = tf.scatter_nd(idx, images, tf.stack([n, size, size, 3]))
    ok = tf.scatter_nd(idx, tf.ones_like(ok_pos, tf.bool), tf.reshape(n, [1]))
    return images, ok

  return fn


@functools.lru_cache(maxsize=16)
def _augment_fn(cfg_json: str):
  cfg = _Attrs.from_json(cfg_json)

  @tf.function(
    input_signature=[tf.TensorSpec([cfg.image_size, cfg.image_size, 3], tf.uint8), _SEED_SPEC],
    autograph=False,
  )
  def fn(img, seed):
    return augment.augment_image(img, seed, cfg)

  return fn


@functools.lru_cache(maxsize=16)
def _tar_table_fn(exts: tuple, cap_ext: str):
  @tf.function(input_signature=[_STR_SPEC], autograph=False)
  def fn(contents):
    return readers.tar_samples(contents, exts, cap_ext)

  return fn


@functools.lru_cache(maxsize=1)
def _tfrecord_table_fn():
  spec = tf.TensorSpec([], tf.int64)

  @tf.function(input_signature=[_STR_SPEC, spec, spec], autograph=False)
  def fn(contents, skip, take):
    return readers.tfrecord_table(contents, skip, take)

  return fn


class _Attrs(dict):
  """Attribute-access dict (a hashable-by-JSON snapshot of the augmentation settings)."""

  __getattr__ = dict.__getitem__

  @classmethod
  def from_json(cls, text: str) -> '_Attrs':
    return json.loads(text, object_hook=cls)


def _augment_key(cfg) -> str:
  re_cfg = cfg.random_erasing
  return json.dumps(
    {
      'image_size': int(cfg.image_size),
      'hflip_prob': float(cfg.hflip_prob),
      'randaugment': cfg.randaugment or '',
      'mean': list(cfg.mean),
      'std': list(cfg.std),
      'random_erasing': {
        k: re_cfg[k] for k in ('prob', 'mode', 'min_area', 'max_area', 'min_aspect', 'count')
      },
    },
    sort_keys=True,
  )


def _folder_table(contents: tf.Tensor, _skip=None, _take=None) -> dict[str, tf.Tensor]:
  """Row table (``readers.TABLE_KEYS``) of one image file of a ``folder`` source: one row, the
  whole file as the image (key filled in later from the path)."""
  n = tf.reshape(tf.strings.length(contents, unit='BYTE'), [1])
  return {
    'key': tf.constant(['']),
    'a_off': tf.zeros([1], tf.int64),
    'a_len': tf.cast(n, tf.int64),
    'b_off': tf.zeros([1], tf.int64),
    'b_len': -tf.ones([1], tf.int64),
    'reason': tf.zeros([1], tf.int32),
  }


def _shard_basename(shard: tf.Tensor) -> tf.Tensor:
  return tf.strings.regex_replace(shard, r'^.*/', '')


def _check_sample(
  image: tf.Tensor, caption: tf.Tensor, reason: tf.Tensor, captions: bool = True
) -> tuple[tf.Tensor, tf.Tensor]:
  """Cheap pre-decode checks, elementwise on tensors of any shape.

  Returns the caption stripped of surrounding ASCII whitespace and the reason code (the given one
  if already bad, else ``invalid_utf8`` / ``empty_caption`` / ``not_an_image`` / 0).  With
  ``captions=False`` only the image is checked and ``missing_caption`` is cleared.
  """
  if not captions:
    reason = tf.cast(reason, tf.int32)
    reason = tf.where(tf.equal(reason, skips.code('missing_caption')), 0, reason)
    bad = tf.equal(reason, 0) & tf.equal(augment.image_format(image), 0)
    return tf.zeros_like(image), tf.where(bad, skips.code('not_an_image'), reason)
  valid_utf8 = tf.equal(
    tf.strings.unicode_transcode(
      caption, 'UTF-8', 'UTF-8', errors='replace', replacement_char=0xFFFD
    ),
    caption,
  )
  caption = tf.strings.strip(caption)
  reason = tf.cast(reason, tf.int32)
  for bad, code in (
    (~valid_utf8, 'invalid_utf8'),
    (tf.equal(caption, ''), 'empty_caption'),
    (tf.equal(augment.image_format(image), 0), 'not_an_image'),
  ):
    reason = tf.where(tf.equal(reason, 0) & bad, skips.code(code), reason)
  return caption, reason


def tfrecord_parser(cfg):
  """Parser of an img2dataset TFRecord record: ``(record, key) -> (image, caption, key_suffix,
  reason)`` (scalars; reason ``missing_image`` / ``missing_caption`` / 0).  With
  ``cfg.captions`` False the caption feature is not read (caption ``""``)."""
  ik, ck = cfg.tfrecord_image_key, cfg.tfrecord_caption_key
  with_captions = bool(cfg.get('captions', True))
  spec = {ik: tf.io.VarLenFeature(tf.string)}
  if with_captions:
    spec[ck] = tf.io.VarLenFeature(tf.string)

  def parse(rec, _key):
    ex = tf.io.parse_single_example(rec, spec)
    img = ex[ik].values
    has_img = tf.size(img) > 0
    image = tf.cond(has_img, lambda: img[0], lambda: tf.constant(''))
    if not with_captions:
      reason = tf.where(~has_img, skips.code('missing_image'), 0)
      return image, tf.constant(''), tf.constant(''), tf.cast(reason, tf.int32)
    cap = ex[ck].values
    has_cap = tf.size(cap) > 0
    reason = tf.where(
      ~has_img, skips.code('missing_image'), tf.where(~has_cap, skips.code('missing_caption'), 0)
    )
    caption = tf.cond(has_cap, lambda: cap[0], lambda: tf.constant(''))
    return image, caption, tf.constant(''), tf.cast(reason, tf.int32)

  return parse


def tfds_parser(features, cfg, seed):
  """Parser of a TFDS record (``features`` = ``builder.info.features``): ``(record, key) ->
  (image bytes, caption, key_suffix, reason)``.  A sequence-valued caption feature gets one
  caption picked by a stateless draw keyed by ``(seed, key)`` and the suffix ``#j``.  With
  ``cfg.captions`` False ``tfds_caption_key`` is ignored (may be None) and not read.
  """
  import tensorflow_datasets as tfds

  ik, ck = cfg.tfds_image_key, cfg.tfds_caption_key
  with_captions = bool(cfg.get('captions', True))
  if '/' in ik:
    raise ValueError('tfds_image_key must be a top-level feature.')
  if with_captions and not ck:
    raise ValueError('tfds_caption_key is needed when config.data.captions is True.')
  decoders = {ik: tfds.decode.SkipDecoding()}

  def get(ex, path):
    for part in path.split('/'):
      ex = ex[part]
    return ex

  def parse(rec, key):
    ex = features.deserialize_example(rec, decoders=decoders)
    img = get(ex, ik)
    has_img = tf.strings.length(img) > 0
    if not with_captions:
      reason = tf.where(~has_img, skips.code('missing_image'), 0)
      return tf.reshape(img, []), tf.constant(''), tf.constant(''), tf.cast(reason, tf.int32)
    cap = get(ex, ck)
    suffix = tf.constant('')
    if cap.shape.rank == 1:
      n = tf.size(cap)
      j = tf.random.stateless_uniform(
        [],
        tf.random.experimental.stateless_fold_in(seed, tf.strings.to_hash_bucket_fast(key, 2**31)),
        0,
        tf.maximum(n, 1),
        tf.int32,
      )
      has_cap = n > 0
      caption = tf.cond(has_cap, lambda: cap[tf.minimum(j, n - 1)], lambda: tf.constant(''))
      suffix = tf.strings.join(['#', tf.strings.as_string(j)])
    else:
      has_cap = tf.constant(True)
      caption = tf.reshape(cap, [])
    reason = tf.where(
      ~has_img, skips.code('missing_image'), tf.where(~has_cap, skips.code('missing_caption'), 0)
    )
    return tf.reshape(img, []), caption, suffix, tf.cast(reason, tf.int32)

  return parse


def _to_numpy(batch: dict) -> dict:
  """Eager tensors -> numpy without copying (``Tensor.numpy()`` copies: ~10 ms per 38 MB batch).

  ``_numpy()`` returns a view that keeps the tensor alive; tf.data never reuses output buffers.
  """
  out = {}
  for k, v in batch.items():
    view = getattr(v, '_numpy', None)
    out[k] = view() if view is not None else v.numpy()
  return out


def _seed_pair(*ints: int) -> list[int]:
  """A deterministic int64 [2] seed from Python ints (independent streams per tuple)."""
  h = 1469598103934665603
  for x in ints:
    h = ((h ^ (int(x) & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
  return [int(h & 0x7FFFFFFF), int((h >> 32) & 0x7FFFFFFF)]


class _Source:
  """A parsed source with its process-local shard list (built at construction: errors early)."""

  def __init__(
    self, index: int, spec: sources.SourceSpec, cfg, process_index: int, process_count: int
  ):
    self.index = index
    self.spec = spec
    self.files: list[str] = []
    self.skips: list[int] | None = None
    self.takes: list[int] | None = None
    self.tfds_features = None
    # File names as the teacher cache records them (basenames; relative paths for a folder).
    self.names: list[str] | None = None
    self.root = ''
    if spec.kind in ('webdataset', 'tfrecord'):
      all_files = sources.list_files(spec.pattern)
      self.num_files_total = len(all_files)
      self.names = [os.path.basename(f) for f in all_files]
      self.files = sources.split_for_process(all_files, process_index, process_count, spec.text)
    elif spec.kind == 'folder':
      self.root = spec.pattern.rstrip('/') or '/'
      self.names = sources.list_folder(spec.pattern, tuple(cfg.image_extensions))
      self.num_files_total = len(self.names)
      all_files = [f'{self.root.rstrip("/")}/{r}' for r in self.names]
      self.files = sources.split_for_process(all_files, process_index, process_count, spec.text)
    elif spec.kind == 'tfds':
      self._init_tfds(cfg, process_index, process_count)
    else:
      self.num_files_total = 0

  def _init_tfds(self, cfg, process_index, process_count):
    import tensorflow_datasets as tfds

    name, split = self.spec.tfds_name, self.spec.tfds_split
    try:
      builder = tfds.builder(name, data_dir=cfg.tfds_data_dir)
    except Exception as e:  # noqa: BLE001 - unknown dataset name etc.
      raise FileNotFoundError(
        f'TFDS dataset {name!r} cannot be loaded from {cfg.tfds_data_dir!r}: {e}'
      ) from e
    if not tf.io.gfile.exists(str(builder.data_path)) or not builder.info.splits:
      raise FileNotFoundError(
        f'TFDS dataset {name!r} is not prepared in {cfg.tfds_data_dir!r} '
        f'(expected files under {builder.data_path}); run `tfds build {name}` first.'
      )
    fmt = str(getattr(builder.info, 'file_format', 'tfrecord'))
    if 'tfrecord' not in fmt.lower():
      raise ValueError(f'TFDS dataset {name!r} is stored as {fmt}; only tfrecord is supported.')
    subsplit = tfds.even_splits(split, n=process_count, drop_remainder=False)[process_index]
    instructions = builder.info.splits[subsplit].file_instructions
    instructions = [fi for fi in instructions if fi.take != 0]
    if not instructions:
      raise ValueError(
        f'TFDS split {split!r} of {name!r} gives no example to process {process_index}.'
      )
    self.files = [str(fi.filename) for fi in instructions]
    self.skips = [int(fi.skip) for fi in instructions]
    self.takes = [int(fi.take) if fi.take is not None else -1 for fi in instructions]
    self.num_files_total = len(self.files)
    self.tfds_features = builder.info.features


class TrainIterator:
  """Iterator over per-host training batches (see ``create_train_dataset``).

  Yields dicts of numpy arrays:
    ``image``   float32 [B, S, S, 3] -- augmented, ImageNet-normalised;
    ``text``    int32 [B, L]         -- CLIP token ids of the caption (L = context_length);
    ``prompts`` int32 [B, K, L]      -- token ids of the K noun prompts;
    ``teacher`` float32 [B, V, E]    -- with ``teacher_cache``: the cached unit embeddings of
                                        the ``teacher_grids`` views (V = sum n * n).
  ``text`` and ``prompts`` only with ``captions`` (the default).  With ``debug_metadata`` also
  ``meta/key``, ``meta/shard``, ``meta/caption`` (with captions; object [B]) and ``meta/index``
  int64 [B] (global stream index of each sample on this process).

  Methods: ``get_state()`` / ``set_state(state)`` (JSON-serialisable position; a restored
  iterator yields exactly the batches an uninterrupted one would), ``skip_counts()``
  (``{"data/skipped/<reason>": n}`` for all samples up to the last yielded batch), ``close()``.
  """

  def __init__(
    self,
    data_config,
    *,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    seed: int | None = None,
  ):
    if global_batch_size % process_count:
      raise ValueError(
        f'global_batch_size {global_batch_size} not divisible by process_count {process_count}.'
      )
    self.cfg = data_config
    self.local_batch_size = global_batch_size // process_count
    self.process_index = int(process_index)
    self.process_count = int(process_count)
    self.seed = int(data_config.seed if seed is None else seed)
    train = data_config.train
    if isinstance(train, str):
      train = [train]
    if not train:
      raise ValueError('config.data.train lists no source.')
    specs = [sources.parse_source(s) for s in train]
    if sum(s.weight for s in specs) <= 0:
      raise ValueError('All mixing weights are zero.')
    self.sources = [
      _Source(i, s, data_config, self.process_index, self.process_count)
      for i, s in enumerate(specs)
    ]
    self._has_synthetic = any(s.kind == 'synthetic' for s in specs)
    self._has_folder = any(s.kind == 'folder' for s in specs)
    # Parsed even without a synthetic source, so that a misspelt knob fails at start.
    self.synthetic_config = synthetic_shapes.SyntheticConfig.from_dict(data_config.get('synthetic'))
    self.crop = data_config.get('crop', 'random_resized')
    if self.crop not in CROPS:
      raise ValueError(f'config.data.crop must be one of {CROPS}, got {self.crop!r}.')
    self.captions = bool(data_config.get('captions', True))
    if self.captions and self._has_folder:
      raise ValueError('folder: sources have no captions; set config.data.captions = False.')
    self.teacher = None
    self.teacher_view_idx = None
    self._teacher_table = None
    if data_config.get('teacher_cache'):
      self._open_teacher(data_config, train)
    tcfg = data_config.text
    self.num_prompts = int(tcfg.num_prompts)
    self.context_length = int(tcfg.context_length)
    self.tags = prompts.word_tags(tcfg.word_set, tcfg.get('word_tags'))
    if tcfg.templates not in TEMPLATE_SETS:
      raise ValueError(f'text.templates must be one of {sorted(TEMPLATE_SETS)}.')
    self.templates = TEMPLATE_SETS[tcfg.templates]
    self.cache = (
      nouns.NounCache(tcfg.noun_cache_dir, self.tags)
      if tcfg.get('noun_cache_dir') and self.captions
      else None
    )
    self._tagger = None
    self._tag_lru: collections.OrderedDict[str, list[tuple[str, str]]] = collections.OrderedDict()

    self.tokenizer = default_tokenizer() if self.captions else None
    self.stats = collections.Counter()  # words_from_cache / words_online / words_lru
    self._state = self._initial_state()
    self._thread = None
    self._queue = None
    self._stop = threading.Event()
    self._tf_iter = None

  def _open_teacher(self, data_config, train) -> None:
    from groupvit_jax import teacher_views

    grids = teacher_views.check_grids(data_config.get('teacher_grids', teacher_views.ALL_GRIDS))
    cache = teacher_cache.TeacherCache(data_config.teacher_cache)
    files = {sources.normalized(s.spec.text): s.names for s in self.sources if s.names is not None}
    synthetic = None
    if self._has_synthetic:
      synthetic = {'config': self.synthetic_config.to_dict(), 'seed': self.seed}
    cache.check(
      train,
      int(data_config.image_size),
      grids,
      files=files,
      synthetic=synthetic,
      allow_incomplete=bool(data_config.get('teacher_allow_incomplete', False)),
    )
    self.teacher = cache
    self.teacher_view_idx = teacher_views.view_indices(grids, cache.meta['grids'])
    keys = tf.constant(cache.keys, tf.string, shape=[len(cache.keys)])
    self._teacher_table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(keys, tf.range(len(cache.keys), dtype=tf.int64)),
      default_value=-1,
    )

  # ------------------------------------------------------------------------------ state

  def _fingerprint(self) -> dict:
    synthetic = None
    if self._has_synthetic:
      synthetic = self.synthetic_config.to_dict()
      for knob in ('num_train_examples', 'p_background_only'):
        if not synthetic[knob]:
          # States written before the knob existed stay valid for the (unchanged) stream.
          del synthetic[knob]
    fp = {
      'sources': [s.spec.text for s in self.sources],
      'num_files': [s.num_files_total for s in self.sources],
      'seed': self.seed,
      'process_index': self.process_index,
      'process_count': self.process_count,
      'shards_per_group': int(self.cfg.shards_per_group),
      'synthetic': synthetic,
    }
    if self._has_folder:
      fp['folder_files_per_group'] = self._folder_group()
    # JSON round trip: tuples become lists, as in a restored state.
    return json.loads(json.dumps(fp))

  def _folder_group(self) -> int:
    return int(self.cfg.get('folder_files_per_group', 64))

  def _initial_state(self) -> dict:
    return {
      'format': STATE_FORMAT,
      'fingerprint': self._fingerprint(),
      'next_index': 0,
      'positions': [[0, -1] for _ in self.sources],
      'skip_counts': [0] * skips.NUM_CODES,
      'consecutive_skips': 0,
      'batches': 0,
    }

  def get_state(self) -> dict:
    """JSON-serialisable position after the last batch returned by ``next()``."""
    return json.loads(json.dumps(self._state))

  def set_state(self, state: dict | str) -> None:
    """Continues from a ``get_state()`` result (dict or its JSON string).

    Raises ``ValueError`` if the state was produced with different sources, seed, process
    layout or ``shards_per_group`` (positions would mean something else).
    """
    if isinstance(state, (str, bytes)):
      state = json.loads(state)
    if state.get('format') != STATE_FORMAT:
      raise ValueError(f'Not an input pipeline state (format {state.get("format")!r}).')
    mine = self._fingerprint()
    if state['fingerprint'] != mine:
      raise ValueError(
        f'Input pipeline state does not match this configuration:\n'
        f'  state:  {state["fingerprint"]}\n  config: {mine}'
      )
    self._shutdown()
    state = json.loads(json.dumps(state))
    # Reasons are only ever appended: older states have fewer counts, the new ones are zero.
    counts = list(state['skip_counts'])
    state['skip_counts'] = counts + [0] * (skips.NUM_CODES - len(counts))
    self._state = state

  def skip_counts(self) -> dict[str, int]:
    """``{"data/skipped/<reason>": n}`` over every sample up to the last returned batch."""
    return skips.counts_to_dict(self._state['skip_counts'])

  # ------------------------------------------------------------------------------ tf.data graph

  def _source_dataset(self, src: _Source, start: tuple[int, int]) -> tf.data.Dataset:
    cfg = self.cfg
    seed = tf.constant(_seed_pair(self.seed, 1, self.process_index, src.index), tf.int64)
    kind = src.spec.kind
    index = tf.constant(src.index, tf.int32)
    caps = self.captions
    with_ckey = self._teacher_table is not None
    if kind == 'synthetic':
      first = int(start[1]) + 1
      n_train = int(self.synthetic_config.num_train_examples)
      if n_train:

        def example_id(k):
          return self.global_id(k) % n_train

      else:
        example_id = self.global_id
      # Local element k is global element global_id(k): the process's block of each global
      # batch, so any process layout assembles the same global batches in the same order.
      ids = tf.data.Dataset.range(first, _INF).map(readers.no_autograph(example_id))
      ds = synthetic_shapes.tf_examples_by_id(
        self.synthetic_config, _seed_pair(self.seed, 2, src.index)[0], ids
      )

      def to_raw(k, ex):
        image = tf.io.encode_png(ex['image'], compression=1)
        caption, reason = _check_sample(image, ex['caption'], tf.constant(0, tf.int32), caps)
        el = {
          'image': image,
          'caption': caption,
          'key': tf.strings.as_string(example_id(k)),
          'shard': tf.constant('synthetic'),
          'reason': reason,
          'pos': tf.stack([tf.constant(0, tf.int64), k]),
          'src': index,
        }
        if with_ckey:
          el['ckey'] = el['key']
        return el

      return ds.enumerate(first).map(
        readers.no_autograph(to_raw), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
      )

    group = int(cfg.shards_per_group)
    if kind in ('webdataset', 'folder'):
      if kind == 'webdataset':
        tar_fn = _tar_table_fn(tuple(cfg.image_extensions), str(cfg.caption_extension))

        def table_fn(contents, _skip, _take):
          return tar_fn(contents)

      else:
        table_fn = _folder_table
        group = self._folder_group()

      def emit_fn(rows, slice_fn):
        image = slice_fn(rows['a_off'], rows['a_len'])
        caption, reason = _check_sample(
          image, slice_fn(rows['b_off'], rows['b_len']), rows['reason'], caps
        )
        return {
          'image': image,
          'caption': caption,
          'key': rows['key'],
          'reason': reason,
          'src': tf.fill(tf.shape(reason), index),
        }

      if kind == 'folder':
        skip = len((src.root.rstrip('/') + '/').encode('utf-8'))

        def element_fn(el):
          rel = tf.strings.substr(el['shard'], skip, tf.strings.length(el['shard']) - skip)
          el = dict(el)
          el['key'] = tf.strings.regex_replace(rel, r'\.[^./]*$', '')
          if with_ckey:
            el['ckey'] = el['key']
          return el

      elif with_ckey:

        def element_fn(el):
          el = dict(el)
          el['ckey'] = tf.strings.join([_shard_basename(el['shard']), '/', el['key']])
          return el

      else:
        element_fn = None

    else:  # tfrecord / tfds: records parsed per element
      table_fn = _tfrecord_table_fn()

      parse = self._tfds_parser(src, seed) if kind == 'tfds' else self._tfrecord_parser()

      def emit_fn(rows, slice_fn):
        return {
          'record': slice_fn(rows['a_off'], rows['a_len']),
          'key': rows['key'],
          'reason': rows['reason'],
          'src': tf.fill(tf.shape(rows['reason']), index),
        }

      element_fn = None

      def finish(el, parsed, ok):
        image, caption, key_suffix, reason = parsed
        reason = tf.where(
          el['reason'] > 0, el['reason'], tf.where(ok, reason, skips.code('corrupt_record'))
        )
        caption, reason = _check_sample(image, caption, reason, caps)
        out = {
          'image': image,
          'caption': caption,
          'key': tf.strings.join([el['key'], key_suffix]),
          'shard': el['shard'],
          'reason': reason,
          'pos': el['pos'],
          'src': el['src'],
        }
        if with_ckey:
          # The record index alone: a caption's '#j' suffix does not change the image.
          out['ckey'] = tf.strings.join([_shard_basename(el['shard']), '/', el['key']])
        return out

    ds = readers.group_stream(
      src.files,
      table_fn=table_fn,
      emit_fn=emit_fn,
      shards_per_group=group,
      seed=seed,
      start=(int(start[0]), int(start[1])),
      element_fn=element_fn,
      skips_per_file=src.skips,
      takes_per_file=src.takes,
      group_parallelism=max(1, int(cfg.group_prefetch)),
    )
    if kind in ('tfrecord', 'tfds'):
      # Records are parsed per element; a corrupt one becomes `corrupt_record`.
      fallback = (tf.constant(''), tf.constant(''), tf.constant(''), tf.constant(0, tf.int32))
      ds = readers.map_with_errors(ds, lambda el: parse(el['record'], el['key']), fallback)
      ds = ds.map(
        readers.no_autograph(finish), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
      )
    return ds

  def _tfrecord_parser(self):
    return tfrecord_parser(self.cfg)

  def _tfds_parser(self, src: _Source, seed):
    return tfds_parser(src.tfds_features, self.cfg, seed)

  def _build_tf_dataset(self, state: dict) -> tf.data.Dataset:
    cfg = self.cfg
    par = tf.data.AUTOTUNE if int(cfg.num_parallel_calls) < 0 else int(cfg.num_parallel_calls)
    start_index = int(state['next_index'])
    datasets = [self._source_dataset(s, tuple(state['positions'][s.index])) for s in self.sources]
    if len(datasets) == 1:
      mixed = datasets[0]
    else:
      w = np.array([s.spec.weight for s in self.sources], np.float64)
      logits = tf.constant(np.log(np.maximum(w / w.sum(), 1e-30))[None, :], tf.float32)
      mseed = tf.constant(_seed_pair(self.seed, 3, self.process_index), tf.int64)
      selector = tf.data.Dataset.range(start_index, _INF).map(
        readers.no_autograph(
          lambda i: tf.random.stateless_categorical(
            logits, 1, tf.random.experimental.stateless_fold_in(mseed, i), dtype=tf.int64
          )[0, 0]
        )
      )
      mixed = tf.data.Dataset.choose_from_datasets(datasets, selector)

    size = int(cfg.image_size)
    decode_chunk = _decode_chunk_fn(size, tuple(cfg.crop_scale), tuple(cfg.crop_ratio), self.crop)
    table = self._teacher_table
    augment_fn = _augment_fn(_augment_key(cfg))

    seed_key = _seed_pair(self.seed, 4)[0]

    def sample_seeds(index):
      """Per-sample int32 [n, 2] seeds (distinct Philox streams per global element id, so
      that for the synthetic source any process layout draws identical augmentations)."""
      index = self.global_id(index)
      hi = tf.cast(tf.bitwise.right_shift(index, 31), tf.int32)
      lo = tf.cast(tf.bitwise.bitwise_and(index, 0x7FFFFFFF), tf.int32)
      return tf.stack([tf.bitwise.bitwise_xor(hi, seed_key), lo], axis=-1)

    def decode(index, chunk):
      reason = chunk['reason']
      out = dict(chunk)
      if table is not None:
        # Before decoding (no work for samples without teacher) and before the counting scan.
        row = table.lookup(out.pop('ckey'))
        reason = tf.where(tf.equal(reason, 0) & (row < 0), skips.code('missing_teacher'), reason)
        out['row'] = row
      todo = tf.equal(reason, 0)
      images, ok = decode_chunk(chunk['image'], sample_seeds(index), todo)
      out['index'] = index
      out['image'] = images
      out['reason'] = tf.where(todo & ~ok, skips.code('corrupt_image'), reason)
      return out

    n_src = len(self.sources)
    max_bad = int(cfg.max_consecutive_skips)

    def count(carry, el):
      positions, counts, bad = carry
      positions = tf.tensor_scatter_nd_update(positions, [[el['src']]], [el['pos']])
      is_bad = el['reason'] > 0
      counts = counts + tf.cast(
        tf.one_hot(el['reason'], skips.NUM_CODES, dtype=tf.int32), tf.int64
      ) * tf.cast(is_bad, tf.int64)
      bad = tf.where(is_bad, bad + 1, 0)
      with tf.control_dependencies(
        [
          tf.debugging.assert_less(
            bad,
            tf.constant(max_bad, tf.int64),
            message=f'{max_bad} consecutive bad samples: check config.data.train',
          )
        ]
      ):
        bad = tf.identity(bad)
      out = dict(el)
      out.update(positions=positions, counts=counts, bad=bad)
      return (positions, counts, bad), out

    init = (
      tf.constant(state['positions'], tf.int64, shape=[n_src, 2]),
      tf.constant(state['skip_counts'], tf.int64, shape=[skips.NUM_CODES]),
      tf.constant(state.get('consecutive_skips', 0), tf.int64),
    )

    def aug(el):
      seed_i = tf.random.experimental.stateless_fold_in(sample_seeds(el['index']), 1)
      image = augment_fn(el['image'], tf.cast(seed_i, tf.int32))
      out = {
        'image': image,
        'caption': el['caption'],
        'key': el['key'],
        'shard': el['shard'],
        'index': el['index'],
        'positions': el['positions'],
        'counts': el['counts'],
        'bad': el['bad'],
      }
      if table is not None:
        out['row'] = el['row']
      return out

    def last_state(b):
      b = dict(b)
      for k in ('positions', 'counts', 'bad'):
        b[k] = b[k][-1]
      return b

    nc = readers.no_autograph
    # Chunks of consecutive samples are decoded in parallel, then split again (order kept).
    ds = mixed.enumerate(start_index).batch(_DECODE_CHUNK)
    ds = ds.map(nc(decode), num_parallel_calls=par, deterministic=True)
    ds = ds.unbatch()
    ds = ds.scan(init, nc(count))
    ds = ds.filter(nc(lambda el: tf.equal(el['reason'], 0)))
    ds = ds.map(nc(aug), num_parallel_calls=par, deterministic=True)
    ds = ds.batch(
      self.local_batch_size, drop_remainder=True, num_parallel_calls=par, deterministic=True
    )
    ds = ds.map(nc(last_state))
    ds = ds.prefetch(tf.data.AUTOTUNE if int(cfg.tf_prefetch) < 0 else int(cfg.tf_prefetch))
    opts = tf.data.Options()
    opts.deterministic = True
    opts.threading.max_intra_op_parallelism = 1
    if int(cfg.threadpool_size) > 0:
      opts.threading.private_threadpool_size = int(cfg.threadpool_size)
    return ds.with_options(opts)

  # ------------------------------------------------------------------------------ host-side text

  def _tagger_instance(self) -> nouns.SpacyTagger:
    if self._tagger is None:
      self._tagger = nouns.SpacyTagger(self.cfg.text.spacy_model)
    return self._tagger

  def words_for(
    self, captions: Sequence[str], shards: Sequence[str], keys: Sequence[str]
  ) -> list[list[str]]:
    """Candidate words per caption: noun cache, else in-memory LRU, else spaCy (batched)."""
    out: list[list[str] | None] = [None] * len(captions)
    if self.cache is not None:
      for i, (c, s, k) in enumerate(zip(captions, shards, keys)):
        out[i] = self.cache.lookup(s, k, c)
      self.stats['words_from_cache'] += sum(w is not None for w in out)
    missing = [i for i, w in enumerate(out) if w is None]
    if not missing:
      return out  # type: ignore[return-value]
    if not self.cfg.text.online_tagging:
      for i in missing:
        out[i] = []
      return out  # type: ignore[return-value]
    todo = []
    for i in missing:
      hit = self._tag_lru.get(captions[i])
      if hit is not None:
        self._tag_lru.move_to_end(captions[i])
        out[i] = nouns.filter_words(hit, self.tags)
        self.stats['words_lru'] += 1
      else:
        todo.append(i)
    if todo:
      uniq = list(dict.fromkeys(captions[i] for i in todo))
      tagged = dict(zip(uniq, self._tagger_instance().tag(uniq)))
      self.stats['words_online'] += len(uniq)
      for cap, pairs in tagged.items():
        self._tag_lru[cap] = pairs
      while len(self._tag_lru) > int(self.cfg.text.tag_cache_size):
        self._tag_lru.popitem(last=False)
      for i in todo:
        out[i] = nouns.filter_words(tagged[captions[i]], self.tags)
    return out  # type: ignore[return-value]

  def global_id(self, index):
    """Stream position ``index`` of this process -> an id unique across processes: this
    process's block ``[p * B, (p + 1) * B)`` of global batch ``index // B`` (B = local batch).
    Works on Python ints and int64 tensors."""
    b = self.local_batch_size
    return (index // b) * (b * self.process_count) + self.process_index * b + index % b

  def _prompt_rng(self, index: int) -> random.Random:
    # keyed by the global element id (see sample_seeds): independent of the process layout
    return random.Random(self.seed * 1_000_003 * (1 << 48) + self.global_id(int(index)))

  def _host_batch(self, b: dict) -> tuple[dict, dict]:
    keys = [k.decode('utf-8', 'replace') for k in b['key'].tolist()]
    shards = [s.decode('utf-8', 'replace') for s in b['shard'].tolist()]
    index = b['index']
    out = {'image': b['image']}
    if self.captions:
      captions = [c.decode('utf-8') for c in b['caption'].tolist()]
      words = self.words_for(captions, shards, keys)
      k = self.num_prompts
      texts = list(captions)
      for cap, w, i in zip(captions, words, index.tolist()):
        texts.extend(prompts.build_prompts(cap, w, k, self._prompt_rng(i), self.templates))
      ids = self.tokenizer(texts, context_length=self.context_length)
      n = len(captions)
      out['text'] = ids[:n]
      out['prompts'] = ids[n:].reshape(n, k, self.context_length)
    if self.teacher is not None:
      out['teacher'] = self.teacher.gather(b['row'], self.teacher_view_idx)
    if self.cfg.debug_metadata:
      out['meta/key'] = np.array(keys, dtype=object)
      out['meta/shard'] = np.array(shards, dtype=object)
      if self.captions:
        out['meta/caption'] = np.array(captions, dtype=object)
      out['meta/index'] = index
    prev = self._state
    state = {
      'format': STATE_FORMAT,
      'fingerprint': prev['fingerprint'],
      'next_index': int(index[-1]) + 1,
      'positions': b['positions'].tolist(),
      'skip_counts': b['counts'].tolist(),
      'consecutive_skips': int(b['bad']),
      'batches': None,  # filled in by __next__
    }
    return out, state

  # ------------------------------------------------------------------------------ iteration

  def _ensure_started(self):
    if self._tf_iter is not None:
      return
    self._stop = threading.Event()
    ds = self._build_tf_dataset(self._state)
    self._tf_iter = iter(ds)
    if int(self.cfg.host_prefetch) > 0:
      self._queue = queue.Queue(maxsize=int(self.cfg.host_prefetch))
      self._thread = threading.Thread(
        target=self._produce,
        args=(self._tf_iter, self._queue, self._stop),
        daemon=True,
        name='input_pipeline',
      )
      self._thread.start()

  def _produce(self, tf_iter, q: queue.Queue, stop: threading.Event):
    try:
      while not stop.is_set():
        item = self._host_batch(_to_numpy(next(tf_iter)))
        while not stop.is_set():
          try:
            q.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
    except BaseException as e:  # noqa: BLE001 - forwarded to the consumer
      while not stop.is_set():
        try:
          q.put(e, timeout=0.1)
          break
        except queue.Full:
          continue

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    self._ensure_started()
    if self._queue is None:
      item = self._host_batch(_to_numpy(next(self._tf_iter)))
    else:
      item = self._queue.get()
      if isinstance(item, BaseException):
        raise item
    out, state = item
    state['batches'] = int(self._state['batches']) + 1
    self._state = state
    return out

  def _shutdown(self):
    self._stop.set()
    if self._thread is not None:
      while self._thread.is_alive():
        try:  # unblock a producer waiting on a full queue
          self._queue.get_nowait()
        except queue.Empty:
          pass
        self._thread.join(timeout=0.1)
    self._thread = None
    self._queue = None
    self._tf_iter = None

  def close(self) -> None:
    """Stops the background thread (the iterator can be restarted by ``next()``)."""
    self._shutdown()

  def __del__(self):
    try:
      self._stop.set()
    except Exception:  # noqa: BLE001
      pass


def create_train_dataset(
  data_config,
  *,
  global_batch_size: int,
  process_index: int = 0,
  process_count: int = 1,
  seed: int | None = None,
) -> TrainIterator:
  """Builds the per-host training iterator.

  Args:
    data_config: ``config.data`` (see ``input_pipeline.config.default_data_config``).
    global_batch_size: batch size summed over processes (must divide by ``process_count``).
    process_index, process_count: this host's index and the number of hosts
      (``jax.process_index()``, ``jax.process_count()``).  File sources are split by file
      (disjoint, round-robin; a folder's image files likewise), TFDS by example index, synthetic
      by element index.
    seed: overrides ``data_config.seed``.

  Returns:
    ``TrainIterator`` yielding ``{'image': float32 [B, S, S, 3], 'text': int32 [B, L],
    'prompts': int32 [B, K, L]}`` (``{'image'}`` with ``captions=False``; plus ``'teacher'``
    float32 [B, V, E] with ``teacher_cache``) with ``B = global_batch_size // process_count``;
    it also has ``get_state()``, ``set_state()``, ``skip_counts()`` and ``close()``.

  Raises:
    FileNotFoundError: a path does not exist, a pattern matches nothing, or a TFDS dataset is
      not prepared.
    ValueError: malformed sources, fewer files than processes, bad sizes, an unknown ``crop``,
      a teacher cache that does not match the data.
  """
  return TrainIterator(
    data_config,
    global_batch_size=global_batch_size,
    process_index=process_index,
    process_count=process_count,
    seed=seed,
  )
