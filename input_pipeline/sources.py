"""Training-data source specifications: parsing, brace expansion, file listing, process split.

A source is one string of ``config.data.train``::

    webdataset:/data/cc3m/{00000..00331}.tar        img2dataset webdataset tar shards
    webdataset:/data/cc12m/*.tar@0.7                 ... with a mixing weight of 0.7
    tfrecord:/data/yfcc/*.tfrecord                   img2dataset TFRecord shards
    tfds:coco_captions:train                         a TFDS dataset prepared in
                                                     config.data.tfds_data_dir
    folder:/data/imagenet/train                      every image file under the directory
                                                     (recursively; images only, no captions)
    synthetic                                        built-in shapes
                                                     (input_pipeline.synthetic_shapes)

Syntax: ``KIND:SPEC[@WEIGHT]``.  ``WEIGHT`` is a non-negative float (default 1.0); weights are
normalised over all sources, so ``a@3`` + ``b@1`` draws 75% of the samples from ``a``.  Only a
trailing ``@`` followed by a number is taken as a weight, so paths that contain ``@`` elsewhere
still work.  File patterns accept brace expansion (``{000..099}`` zero-padded ranges and
``{a,b,c}`` lists, nested) and shell globs (``*``, ``?``, ``[...]``; any filesystem that
``tf.io.gfile`` supports, e.g. ``gs://``).  For ``tfds`` the text between the first and the
second ``:`` is the dataset name (``name`` or ``name/config``), the rest is the split, which may
use TFDS slicing (``train[:50%]``).  For ``folder`` the spec is a directory: its files whose
lower-cased extension is in ``config.data.image_extensions`` are listed recursively and sorted by
their path relative to the directory (``list_folder``); the key of such a sample is that relative
path without its extension (``folder_key``).

This module imports TensorFlow lazily (only ``tf.io.gfile`` for listing files).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence

__all__ = [
  'SOURCE_KINDS',
  'SourceSpec',
  'parse_source',
  'brace_expand',
  'list_files',
  'split_for_process',
  'list_folder',
  'folder_key',
  'normalized',
]

SOURCE_KINDS = ('webdataset', 'tfrecord', 'tfds', 'folder', 'synthetic')
_WEIGHT_RE = re.compile(r'^(?P<body>.*)@(?P<w>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)$')
_GLOB_CHARS = re.compile(r'[*?\[]')
_RANGE_RE = re.compile(r'^(-?\d+)\.\.(-?\d+)$')


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  """One parsed source string.

  Attributes:
    kind: one of ``SOURCE_KINDS``.
    pattern: file pattern (webdataset/tfrecord), ``"NAME:SPLIT"`` (tfds), a directory (folder)
      or ``""`` (synthetic).
    weight: un-normalised mixing weight (>= 0).
    text: the original string (used in checkpoint fingerprints).
  """

  kind: str
  pattern: str
  weight: float
  text: str

  @property
  def tfds_name(self) -> str:
    return self.pattern.split(':', 1)[0]

  @property
  def tfds_split(self) -> str:
    return self.pattern.split(':', 1)[1]


def parse_source(text: str) -> SourceSpec:
  """Parses ``KIND:SPEC[@WEIGHT]`` (see the module docstring); raises ``ValueError`` if
  malformed."""
  if not isinstance(text, str) or not text.strip():
    raise ValueError(f'Empty data source {text!r}.')
  raw = text.strip()
  weight = 1.0
  m = _WEIGHT_RE.match(raw)
  if m:
    raw, weight = m.group('body'), float(m.group('w'))
  if raw == 'synthetic':
    return SourceSpec('synthetic', '', weight, text)
  kind, sep, pattern = raw.partition(':')
  if not sep or kind not in SOURCE_KINDS:
    raise ValueError(
      f'Data source {text!r} must look like KIND:SPEC[@WEIGHT] with KIND one of '
      f"{SOURCE_KINDS} (or be 'synthetic')."
    )
  if kind == 'synthetic':
    if pattern:
      raise ValueError(f"'synthetic' takes no argument, got {text!r}.")
  elif not pattern:
    raise ValueError(f'Data source {text!r} has an empty pattern.')
  if kind == 'tfds' and (':' not in pattern or not all(pattern.split(':', 1))):
    raise ValueError(
      f'TFDS source {text!r} must be tfds:NAME:SPLIT, e.g. tfds:coco_captions:train.'
    )
  if weight < 0:
    raise ValueError(f'Negative mixing weight in {text!r}.')
  return SourceSpec(kind, pattern, weight, text)


def normalized(text: str) -> str:
  """A source string without its mixing weight (``KIND:SPEC`` or ``synthetic``): what identifies
  its data, e.g. in the teacher cache's ``meta.json``."""
  spec = parse_source(text)
  return 'synthetic' if spec.kind == 'synthetic' else f'{spec.kind}:{spec.pattern}'


def folder_key(relpath: str) -> str:
  """Key of a ``folder`` sample: its path relative to the directory, ``/``-separated, without the
  extension (``"n01440764/img_1.JPEG"`` -> ``"n01440764/img_1"``)."""
  relpath = relpath.replace(os.sep, '/')
  head, _, name = relpath.rpartition('/')
  stem = name.rsplit('.', 1)[0] if '.' in name else name
  return f'{head}/{stem}' if head else stem


def list_folder(directory: str, extensions: Sequence[str]) -> list[str]:
  """Relative paths (``/``-separated, sorted) of the image files under ``directory``, recursively.

  A file counts when its lower-cased extension is in ``extensions``.  Raises
  ``FileNotFoundError`` if the directory does not exist or holds no such file, and
  ``ValueError`` if two files share a key (``folder_key``: same path up to the extension).
  """
  from tensorflow.io import gfile  # lazy: keeps this module importable without TF

  if not gfile.isdir(directory):
    raise FileNotFoundError(f'Data folder {directory!r} does not exist or is not a directory.')
  exts = {e.lower().lstrip('.') for e in extensions}
  root = directory.rstrip('/')
  out = []
  for dirpath, _, names in gfile.walk(root):
    rel_dir = dirpath[len(root) :].strip('/')
    for n in names:
      if '.' in n and n.rsplit('.', 1)[1].lower() in exts:
        out.append(f'{rel_dir}/{n}' if rel_dir else n)
  out.sort()
  if not out:
    raise FileNotFoundError(
      f'Data folder {directory!r} holds no file with extension in {sorted(exts)}.'
    )
  keys: dict[str, str] = {}
  for r in out:
    k = folder_key(r)
    if k in keys:
      raise ValueError(f'Data folder {directory!r}: {keys[k]!r} and {r!r} share the key {k!r}.')
    keys[k] = r
  return out


def _find_brace(s: str) -> tuple[int, int] | None:
  """Returns (start, end) of the first top-level ``{...}`` group, or None."""
  depth, start = 0, -1
  for i, ch in enumerate(s):
    if ch == '{':
      if depth == 0:
        start = i
      depth += 1
    elif ch == '}' and depth > 0:
      depth -= 1
      if depth == 0:
        return start, i
  return None


def _split_top_commas(s: str) -> list[str]:
  parts, depth, cur = [], 0, []
  for ch in s:
    if ch == '{':
      depth += 1
    elif ch == '}':
      depth -= 1
    if ch == ',' and depth == 0:
      parts.append(''.join(cur))
      cur = []
    else:
      cur.append(ch)
  parts.append(''.join(cur))
  return parts


def brace_expand(pattern: str) -> list[str]:
  """Expands ``{a,b}`` alternatives and ``{000..012}`` numeric ranges (zero padding kept).

  Returns the list of expanded strings in order, e.g.
  ``brace_expand("s{0..2}.tar") == ["s0.tar", "s1.tar", "s2.tar"]``.
  """
  span = _find_brace(pattern)
  if span is None:
    return [pattern]
  a, b = span
  head, body, tail = pattern[:a], pattern[a + 1 : b], pattern[b + 1 :]
  m = _RANGE_RE.match(body)
  if m:
    lo_s, hi_s = m.groups()
    lo, hi = int(lo_s), int(hi_s)
    width = max(len(lo_s), len(hi_s)) if (lo_s.startswith('0') or hi_s.startswith('0')) else 0
    step = 1 if hi >= lo else -1
    options = [str(v).zfill(width) for v in range(lo, hi + step, step)]
  elif ',' in body:
    options = _split_top_commas(body)
  else:  # a literal "{x}" (no comma, not a range): keep it.
    return [head + '{' + e for e in brace_expand(body + '}' + tail)]
  out = []
  for opt in options:
    out.extend(brace_expand(head + opt + tail))
  return out


def list_files(pattern: str) -> list[str]:
  """All files matched by a (brace + glob) pattern, in a deterministic order.

  Brace alternatives keep their order; each glob's matches are sorted.  Raises
  ``FileNotFoundError`` naming the culprit if a literal path does not exist or a glob
  matches nothing.
  """
  from tensorflow.io import gfile  # lazy: keeps this module importable without TF

  expanded = brace_expand(pattern)
  files: list[str] = []
  literal_by_dir: dict[str, set[str] | None] = {}
  for p in expanded:
    if _GLOB_CHARS.search(p):
      matches = sorted(gfile.glob(p))
      if not matches:
        raise FileNotFoundError(f'Data pattern {p!r} (from {pattern!r}) matches no file.')
      files.extend(matches)
      continue
    d = os.path.dirname(p) or '.'
    if d not in literal_by_dir:
      try:
        literal_by_dir[d] = set(gfile.listdir(d))
      except Exception:  # noqa: BLE001 - missing dir or no listing permission
        literal_by_dir[d] = None
    listing = literal_by_dir[d]
    exists = (os.path.basename(p) in listing) if listing is not None else gfile.exists(p)
    if not exists:
      raise FileNotFoundError(f'Data file {p!r} (from pattern {pattern!r}) does not exist.')
    if gfile.isdir(p):
      raise FileNotFoundError(
        f'Data path {p!r} is a directory; give a file pattern (e.g. {p}/*.tar).'
      )
    files.append(p)
  # Drop duplicates (overlapping patterns) but keep the first occurrence's position.
  seen: set[str] = set()
  return [f for f in files if not (f in seen or seen.add(f))]


def split_for_process(
  files: Sequence[str], process_index: int, process_count: int, what: str
) -> list[str]:
  """Disjoint round-robin split of ``files`` (``files[process_index::process_count]``).

  Raises ``ValueError`` when there are fewer files than processes (some process would get none).
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count}).')
  if len(files) < process_count:
    raise ValueError(
      f'Source {what!r} has {len(files)} file(s) but there are {process_count} processes; '
      'every process needs at least one file (re-shard the data into more files).'
    )
  return list(files[process_index::process_count])
