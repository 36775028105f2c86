"""CLIP byte-level BPE tokenizer (pure Python + NumPy).

Produces token ids identical to OpenAI CLIP's reference tokenizer
(``clip/simple_tokenizer.py`` together with ``clip.tokenize(..., truncate=True)``):

1. text cleaning: ``ftfy.fix_text``, ``html.unescape`` applied twice, ``strip``,
   collapse every run of (Unicode) whitespace to one space, ``strip``, lower-case;
2. pre-tokenisation with CLIP's regular expression (special tokens, English
   contractions, runs of letters, single digits, runs of other symbols);
3. each pre-token's UTF-8 bytes are mapped to printable unicode characters
   (GPT-2 byte-to-unicode table), the last character gets the ``</w>``
   end-of-word marker, and BPE merges are applied in rank order;
4. ``[SOT] + ids + [EOT]``, zero-padded (or truncated with EOT forced last) to
   the context length.

Speed comes from two things the reference does not do:

* a *fast path*: for text that is printable ASCII (U+0020..U+007E) in which
  every ``&`` is followed by a space, ``ftfy.fix_text`` and ``html.unescape``
  are provably the identity, so they are skipped (see ``_is_plain``);
* a *word cache*: the cleaned text is split on single spaces and every word is
  mapped to its tuple of BPE ids through a dict (CLIP's regex never matches a
  space, so tokenising word by word gives exactly the same pre-tokens as
  tokenising the whole text).

This module deliberately imports neither TensorFlow nor JAX.
"""

from __future__ import annotations

import gzip
import html
import importlib.resources
import itertools
import threading
from collections.abc import Iterable, Sequence

import ftfy
import numpy as np
import regex

__all__ = [
  'SOT_TOKEN',
  'EOT_TOKEN',
  'CONTEXT_LENGTH',
  'VOCAB_SIZE',
  'ClipTokenizer',
  'default_tokenizer',
]

SOT_TOKEN = 49406
EOT_TOKEN = 49407
CONTEXT_LENGTH = 77
VOCAB_SIZE = 49408

_SOT_STR = '<|startoftext|>'
_EOT_STR = '<|endoftext|>'
_EOW = '</w>'
# CLIP uses the first 49152 - 256 - 2 merge lines (after the version header line).
_NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2
_VOCAB_RESOURCE = ('assets', 'bpe_simple_vocab_16e6.txt.gz')
# Batches with at least this many rows are padded with one vectorised scatter;
# smaller ones row by row (NumPy call overhead dominates for a handful of rows).
_VECTORISE_MIN_ROWS = 32

# Pre-tokenisation pattern of CLIP (needs the third-party `regex` module for \p{..}).
_TOKEN_RE = regex.compile(
  r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
  regex.IGNORECASE,
)
# Whitespace collapsing must use the `regex` module's notion of \s (it differs from
# str.isspace on a few code points, e.g. U+001C..U+001F).
_WHITESPACE_RE = regex.compile(r'\s+')


def _byte_to_unicode() -> tuple[list[str], list[str]]:
  """GPT-2/CLIP reversible byte -> printable unicode character table.

  Bytes that are printable Latin-1 characters (0x21..0x7E, 0xA1..0xAC, 0xAE..0xFF)
  map to themselves; the remaining 68 bytes (controls, space, 0x7F..0xA0, 0xAD) map,
  in increasing byte order, to U+0100, U+0101, ...

  Returns:
    ``(by_byte, vocab_order)``: ``by_byte[b]`` is the character of byte ``b``;
    ``vocab_order`` lists the 256 characters in CLIP's vocabulary order (the
    self-mapped bytes first, then U+0100...).
  """
  keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
  keep_set = set(keep)
  others = [b for b in range(256) if b not in keep_set]
  by_byte = [''] * 256
  for b in keep:
    by_byte[b] = chr(b)
  for n, b in enumerate(others):
    by_byte[b] = chr(256 + n)
  vocab_order = [by_byte[b] for b in keep + others]
  return by_byte, vocab_order


def _is_plain(text: str) -> bool:
  """True when the reference cleaning (ftfy + 2x html.unescape) is the identity.

  Holds for printable ASCII (U+0020..U+007E) where every '&' is followed by a space
  (and then the only whitespace is ' ', so ``str.split()`` equals the reference's
  ``\\s+`` collapsing plus strip, and ``str.lower`` is plain ASCII lower-casing):
  * ftfy's encoding fixes, C1/ligature/width/quote/surrogate fixes and NFC only act
    on non-ASCII text; terminal-escape removal needs ESC and control-character
    removal / line-break fixing need control characters, none of which are printable;
  * ftfy's own entity decoding needs ``&`` followed by ``#`` or an alphanumeric, and
    ``html.unescape`` never rewrites an ``&`` that is followed by a space (its
    reference pattern needs '#' or a character other than TAB/LF/FF/space/'<'/'&'/';').
  Note that tab/CR/LF/VT are *not* admitted: ftfy deletes VT (so "a\\x0bb" -> "ab",
  not "a b") and rewrites CR, so those go through the exact slow path.
  """
  return (
    text.isascii()
    and text.isprintable()
    and ('&' not in text or text.count('&') == text.count('& '))
  )


def _reference_clean(text: str) -> str:
  """The exact cleaning of the reference: ftfy, 2x unescape, strip, whitespace, lower."""
  text = ftfy.fix_text(text)
  text = html.unescape(html.unescape(text)).strip()
  return _WHITESPACE_RE.sub(' ', text).strip().lower()


class ClipTokenizer:
  """CLIP's byte-level BPE tokenizer with per-word caching.

  Args:
    vocab_path: path of a gzip'ed CLIP BPE merges file; ``None`` uses the copy
      shipped as package data (``groupvit_jax/assets/bpe_simple_vocab_16e6.txt.gz``).
    cache_size: maximum number of entries in each of the two caches (cleaned word ->
      ids, and pre-token -> ids). When a cache is full its oldest half is dropped.
      ``0`` disables caching.

  Thread safety: instances may be shared between threads (cache updates are plain
  dict operations under the GIL; eviction is serialised by a lock).
  """

  def __init__(self, vocab_path: str | None = None, cache_size: int = 1_000_000):
    if vocab_path is None:
      resource = importlib.resources.files('groupvit_jax')
      for part in _VOCAB_RESOURCE:
        resource = resource / part
      with resource.open('rb') as f:
        raw = f.read()
    else:
      with open(vocab_path, 'rb') as f:
        raw = f.read()
    lines = gzip.decompress(raw).decode('utf-8').split('\n')
    merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]

    byte_chars, base_vocab = _byte_to_unicode()
    vocab = base_vocab + [c + _EOW for c in base_vocab]
    vocab.extend(''.join(m) for m in merges)
    vocab.extend([_SOT_STR, _EOT_STR])
    # dict() keeps the last index for a repeated string, like the reference.
    self._encoder: dict[str, int] = {s: i for i, s in enumerate(vocab)}
    self._ranks: dict[tuple[str, ...], int] = {m: i for i, m in enumerate(merges)}
    self._no_merge = len(merges) + 1  # rank sentinel larger than every real rank
    if self._encoder[_SOT_STR] != SOT_TOKEN or self._encoder[_EOT_STR] != EOT_TOKEN:
      raise ValueError(f'Unexpected vocabulary in {vocab_path or "package data"}')
    self.vocab_size = len(vocab)

    # Byte-level encoding table: str.translate over latin-1 decoded UTF-8 bytes.
    self._byte_table = {b: c for b, c in enumerate(byte_chars)}
    byte_decoder = {c: b for b, c in enumerate(byte_chars)}
    # Raw bytes of every id (including the literal b"</w>"), for decode().
    self._id_bytes: list[bytes] = [bytes(byte_decoder[c] for c in s) for s in vocab]

    self._cache_size = int(cache_size)
    self._evict_lock = threading.Lock()
    self._word_cache: dict[str, tuple[int, ...]] = {}
    self._token_cache: dict[str, tuple[int, ...]] = {}
    self._specials = {_SOT_STR: (SOT_TOKEN,), _EOT_STR: (EOT_TOKEN,)}

  # ------------------------------------------------------------------ internals

  def _evict(self, cache: dict) -> None:
    """Drops the oldest half of ``cache`` (dicts iterate in insertion order)."""
    with self._evict_lock:
      if len(cache) < self._cache_size:
        return
      stale = list(itertools.islice(cache, max(1, len(cache) // 2)))
      for key in stale:
        cache.pop(key, None)

  def _bpe(self, token: str) -> tuple[int, ...]:
    """BPE ids of one pre-token (a regex match of the cleaned text)."""
    special = self._specials.get(token)
    if special is not None:
      return special
    chars = token.encode('utf-8').decode('latin-1').translate(self._byte_table)
    word = list(chars[:-1])
    word.append(chars[-1] + _EOW)
    if len(word) > 1:
      word = self._merge(word)
    encoder = self._encoder
    return tuple(encoder[w] for w in word)

  def _merge(self, word: list[str]) -> list[str]:
    """Applies BPE merges to a list of >= 2 symbols, exactly like CLIP's loop.

    Each step takes the adjacent pair of lowest merge rank and merges all of its
    non-overlapping occurrences from left to right. ``pair_ranks[i]`` caches the rank
    of ``(word[i], word[i + 1])`` so that a merge only re-ranks its two neighbours
    and the scans (``min``/``index``) run in C.
    """
    get = self._ranks.get
    no_merge = self._no_merge
    pair_ranks = [get((a, b), no_merge) for a, b in zip(word, word[1:])]
    while True:
      best = min(pair_ranks)
      if best == no_merge:
        return word
      i = pair_ranks.index(best)
      merged = word[i] + word[i + 1]
      while True:
        # Merge word[i], word[i + 1]; the re-ranked neighbour pairs contain
        # `merged`, so they can never equal the pair being merged.
        word[i : i + 2] = (merged,)
        del pair_ranks[i]
        if i > 0:
          pair_ranks[i - 1] = get((word[i - 1], merged), no_merge)
        if i < len(pair_ranks):
          pair_ranks[i] = get((merged, word[i + 1]), no_merge)
        else:
          break
        try:
          i = pair_ranks.index(best, i + 1)
        except ValueError:
          break
      if not pair_ranks:
        return word

  def _encode_word(self, word: str) -> tuple[int, ...]:
    """Ids of one space-free word of cleaned text (uncached computation)."""
    cache = self._token_cache
    use_cache = self._cache_size > 0
    out: list[int] = []
    for token in _TOKEN_RE.findall(word):
      ids = cache.get(token)
      if ids is None:
        ids = self._bpe(token)
        if use_cache:
          if len(cache) >= self._cache_size:
            self._evict(cache)
          cache[token] = ids
      out.extend(ids)
    return tuple(out)

  def _encode_words(self, words: Iterable[str]) -> list[int]:
    cache = self._word_cache
    out: list[int] = []
    for word in words:
      ids = cache.get(word)
      if ids is None:
        ids = self._encode_word(word)
        if self._cache_size > 0:
          if len(cache) >= self._cache_size:
            self._evict(cache)
          cache[word] = ids
      out.extend(ids)
    return out

  # ------------------------------------------------------------------ public API

  def encode(self, text: str) -> list[int]:
    """Tokenises one caption.

    Args:
      text: raw caption (any unicode); ``bytes`` (e.g. from a ``tf.string``
        tensor) are decoded as UTF-8 first.

    Returns:
      BPE ids as a Python list of length ``T`` (no SOT/EOT, no padding, no
      truncation), identical to CLIP's ``SimpleTokenizer.encode``.
    """
    if not isinstance(text, str):
      text = text.decode('utf-8')
    if _is_plain(text):
      # Identity cleaning; for ASCII, str.split() == regex \s+ collapse + strip.
      return self._encode_words(text.lower().split())
    cleaned = _reference_clean(text)
    if not cleaned:
      return []
    return self._encode_words(cleaned.split(' '))

  def decode(self, ids) -> str:
    """Inverse of ``encode`` (as CLIP's ``SimpleTokenizer.decode``).

    Args:
      ids: iterable of ints (list, tuple or 1-D integer array of shape ``[T]``).
        Every id is decoded, including SOT/EOT and padding zeros (id 0 is "!").

    Returns:
      The text; every end-of-word marker becomes a space, so the result of
      decoding ``encode(s)`` is the cleaned ``s`` with one trailing space and
      without spaces between punctuation and letters.
    """
    if isinstance(ids, np.ndarray):
      ids = ids.reshape(-1).tolist()
    id_bytes = self._id_bytes
    data = b''.join([id_bytes[i] for i in ids])
    return data.decode('utf-8', errors='replace').replace(_EOW, ' ')

  def __call__(
    self, texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH
  ) -> np.ndarray:
    """Tokenises and pads a batch like ``clip.tokenize(texts, context_length, truncate=True)``.

    Args:
      texts: one caption, or a sequence of ``N`` captions (``str``, or UTF-8
        ``bytes`` such as the items of a NumPy/TF string array).
      context_length: ``L`` >= 1, the length of every output row.

    Returns:
      ``np.int32`` array of shape ``[N, L]`` (``N = 1`` for a single string):
      ``[SOT] + ids + [EOT]`` followed by zeros; a row that would be longer than
      ``L`` is cut to ``L`` tokens and its last token is set to EOT.
    """
    if isinstance(texts, (str, bytes)):
      texts = (texts,)
    context_length = int(context_length)
    if context_length < 1:
      raise ValueError(f'context_length must be >= 1, got {context_length}')
    n = len(texts)
    out = np.zeros((n, context_length), dtype=np.int32)
    if n == 0:
      return out
    if context_length == 1:  # [SOT, EOT][:1] with the last token forced to EOT.
      out[:, 0] = EOT_TOKEN
      return out
    max_ids = context_length - 2
    encode = self.encode
    rows = [encode(t) for t in texts]
    if n < _VECTORISE_MIN_ROWS:
      # A few rows: direct slice assignment is cheaper than the index arithmetic.
      for i, row in enumerate(rows):
        k = len(row)
        if k > max_ids:
          row = row[:max_ids]
          k = max_ids
        out[i, 0] = SOT_TOKEN
        out[i, 1 : k + 1] = row
        out[i, k + 1] = EOT_TOKEN
      return out
    rows = [r if len(r) <= max_ids else r[:max_ids] for r in rows]
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=n)
    total = int(lengths.sum())
    flat_out = out.reshape(-1)  # view
    row_starts = np.arange(n, dtype=np.int64) * context_length
    flat_out[row_starts] = SOT_TOKEN
    if total:
      values = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=total)
      # Destination of the k-th id overall: row start + 1 + (k - first k of its row).
      first = np.cumsum(lengths) - lengths
      dest = np.arange(total, dtype=np.int64) + np.repeat(row_starts + 1 - first, lengths)
      flat_out[dest] = values
    flat_out[row_starts + 1 + lengths] = EOT_TOKEN
    return out


_DEFAULT: ClipTokenizer | None = None
_DEFAULT_LOCK = threading.Lock()


def default_tokenizer() -> ClipTokenizer:
  """The process-wide shared ``ClipTokenizer`` (vocabulary from package data), built once."""
  global _DEFAULT
  if _DEFAULT is None:
    with _DEFAULT_LOCK:
      if _DEFAULT is None:
        _DEFAULT = ClipTokenizer()
  return _DEFAULT
