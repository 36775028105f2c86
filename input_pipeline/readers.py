"""In-graph readers: webdataset tar shards and TFRecord files parsed from their bytes by TF ops.

Everything here runs inside the tf.data graph (no ``py_function``), so the readers parallelise
freely and are deterministic.  A shard is read whole with ``tf.io.read_file`` and its structure is
parsed by a ``tf.while_loop`` over tar headers (or TFRecord length prefixes); the members of all
samples are then sliced out at once with ``tf.strings.substr``.  Shards are processed in *groups*
of ``config.data.shards_per_group`` files: a group is loaded at once and all its samples are
emitted in a random (stateless, seeded) permutation, which is what shuffles the data (see
``input_pipeline/pipeline.py`` for why there is no ``Dataset.shuffle`` buffer).

Memory: a group's sample bytes stay in memory while it is emitted (the raw shard bytes only while
it is being sliced, so briefly twice that); with ``group_prefetch`` further groups loading in the
background, peak memory per file source is about
``(2 + group_prefetch) * shards_per_group * shard_size``.

Tar support: ustar/POSIX and GNU headers, the ustar name prefix, PAX ``path=`` records (``x``
headers) and GNU long names (``L`` headers); other member types (directories, links, global PAX
headers) are skipped.  Members are grouped into samples webdataset-style: consecutive members
with the same key (path up to the first ``.`` of the file name) form one sample, the text after
that dot (lower-cased) is the extension.  Sizes in GNU base-256 encoding (members > 8 GiB) are not
supported.  TFRecord CRCs are not verified (TF has no in-graph crc32c op); damaged lengths are
detected, damaged payloads surface as ``corrupt_record`` when parsed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import tensorflow as tf

from input_pipeline import skips

__all__ = [
  'STATUS_OK',
  'STATUS_TRUNCATED',
  'STATUS_CORRUPT',
  'parse_tar',
  'tar_samples',
  'tfrecord_records',
  'group_stream',
  'slice_rows',
  'map_with_errors',
  'try_call',
]

STATUS_OK = 0
STATUS_TRUNCATED = 1
STATUS_CORRUPT = 2
_RUNNING = -1
_BLOCK = 512
_INT64_MAX = 2**62  # "infinite" upper bound of tf.data ranges
# All graph code here uses explicit tf.cond/tf.while_loop; AutoGraph conversion is pure
# overhead (it made building the pipeline ~5x slower), so dataset functions skip it.
no_autograph = tf.autograph.experimental.do_not_convert

# Column structure of a shard table (one row per emitted element).
TABLE_KEYS = ('key', 'a_off', 'a_len', 'b_off', 'b_len', 'reason')


def _u8(s: tf.Tensor) -> tf.Tensor:
  """Bytes of a scalar string as int64 [n]."""
  return tf.cast(tf.io.decode_raw(s, tf.uint8), tf.int64)


def _octal(b: tf.Tensor) -> tf.Tensor:
  """Value of a tar octal field given its bytes (int64 [n]); 0 when it holds no digit.

  Leading spaces/NULs are skipped and the first run of octal digits is read.
  """
  n = tf.size(b, out_type=tf.int64)
  idx = tf.range(n, dtype=tf.int64)
  is_digit = (b >= 48) & (b <= 55)
  first = tf.argmax(tf.cast(is_digit, tf.int32), output_type=tf.int64)
  after = idx >= first
  run = (
    tf.cast(tf.math.cumprod(tf.cast(tf.where(after, is_digit, True), tf.int64)), tf.bool) & after
  )
  k = tf.reduce_sum(tf.cast(run, tf.int64))
  exp = tf.maximum(first + k - 1 - idx, 0)
  return tf.reduce_sum(tf.where(run, tf.bitwise.left_shift(b - 48, 3 * exp), tf.zeros_like(b)))


def _cstr(s: tf.Tensor, b: tf.Tensor, start: int, maxlen: int) -> tf.Tensor:
  """NUL-terminated string field ``s[start:start+maxlen]`` (``b`` = bytes of ``s``)."""
  field = b[start : start + maxlen]
  is_nul = tf.equal(field, 0)
  n = tf.where(
    tf.reduce_any(is_nul), tf.argmax(tf.cast(is_nul, tf.int32), output_type=tf.int64), maxlen
  )
  return tf.strings.substr(s, start, tf.cast(n, tf.int32))


_POW8_11 = [8**k for k in range(10, -1, -1)]
_POW8_6 = [8**k for k in range(5, -1, -1)]
_KIND_FILE, _KIND_META, _KIND_OTHER, _KIND_CUT = 0, 1, 2, 3


def _fast_octal(b: tf.Tensor, start: int, digits: int, powers) -> tuple[tf.Tensor, tf.Tensor]:
  """Value of ``digits`` octal digits at ``b[start:]`` (the layout Python's tarfile and GNU tar
  write) and whether that layout is really there (digits followed by NUL or space)."""
  d = b[start : start + digits] - 48
  ok = tf.reduce_all((d >= 0) & (d <= 7)) & ((b[start + digits] == 0) | (b[start + digits] == 32))
  return tf.reduce_sum(tf.cast(d, tf.int64) * tf.constant(powers, tf.int64)), ok


_NEEDS_GENERAL = 3


def _octal_rows(b: tf.Tensor) -> tf.Tensor:
  """``_octal`` for each row of int64 [M, w] field bytes -> int64 [M]."""
  w = tf.shape(b, out_type=tf.int64)[1]
  idx = tf.range(w, dtype=tf.int64)[None, :]
  is_digit = (b >= 48) & (b <= 55)
  first = tf.argmax(tf.cast(is_digit, tf.int32), axis=1, output_type=tf.int64)[:, None]
  after = idx >= first
  run = (
    tf.cast(tf.math.cumprod(tf.cast(tf.where(after, is_digit, True), tf.int64), axis=1), tf.bool)
    & after
  )
  k = tf.reduce_sum(tf.cast(run, tf.int64), axis=1, keepdims=True)
  exp = tf.maximum(first + k - 1 - idx, 0)
  return tf.reduce_sum(
    tf.where(run, tf.bitwise.left_shift(b - 48, 3 * exp), tf.zeros_like(b)), axis=1
  )


def _parse_tar_fast(contents: tf.Tensor) -> dict[str, tf.Tensor]:
  """``parse_tar`` for archives whose size fields are 11 octal digits + NUL/space (what Python's
  tarfile, webdataset and GNU tar write).  The loop only reads each header's size field and
  checks for the end block; checksums, types and names are handled vectorised afterwards.
  Returns status ``_NEEDS_GENERAL`` if it meets another size layout."""
  length = tf.cast(tf.strings.length(contents), tf.int64)
  zero_block = tf.constant(b'\x00' * _BLOCK)
  pad = tf.constant(b'\x00' * 12)
  powers = tf.constant(_POW8_11, tf.int64)

  def body(pos, status, ta_pos, ta_size, n):
    short = length - pos < _BLOCK
    is_zero = tf.equal(tf.strings.substr(contents, pos, _BLOCK), zero_block)
    field = tf.strings.join([tf.strings.substr(contents, tf.minimum(pos + 124, length), 12), pad])
    b = tf.cast(tf.io.decode_raw(tf.strings.substr(field, 0, 12), tf.uint8), tf.int64)
    d = b[:11] - 48
    ok = tf.reduce_all((d >= 0) & (d <= 7)) & ((b[11] == 0) | (b[11] == 32))
    size = tf.reduce_sum(d * powers)
    cut = pos + _BLOCK + size > length
    status = tf.where(
      short,
      STATUS_TRUNCATED,
      tf.where(
        is_zero, STATUS_OK, tf.where(~ok, _NEEDS_GENERAL, tf.where(cut, STATUS_TRUNCATED, _RUNNING))
      ),
    )
    record = ~short & ~is_zero & ok
    ta_pos = ta_pos.write(n, tf.where(record, pos, -1))
    ta_size = ta_size.write(n, size)
    return pos + _BLOCK + (size + _BLOCK - 1) // _BLOCK * _BLOCK, status, ta_pos, ta_size, n + 1

  init = (
    tf.constant(0, tf.int64),
    tf.constant(_RUNNING),
    tf.TensorArray(tf.int64, size=0, dynamic_size=True, element_shape=[]),
    tf.TensorArray(tf.int64, size=0, dynamic_size=True, element_shape=[]),
    tf.constant(0),
  )
  _, status, ta_pos, ta_size, _ = tf.while_loop(
    lambda pos, status, *_: tf.equal(status, _RUNNING), body, init
  )
  hpos, size = ta_pos.stack(), ta_size.stack()
  valid = hpos >= 0
  hpos, size = tf.boolean_mask(hpos, valid), tf.boolean_mask(size, valid)
  # Checksums of all headers at once; everything from the first bad header on is dropped.
  hdr = tf.strings.substr(contents, hpos, tf.fill(tf.shape(hpos), tf.constant(_BLOCK, tf.int64)))
  b = tf.reshape(tf.cast(tf.io.decode_raw(hdr, tf.uint8), tf.int64), [-1, _BLOCK])
  chk_field = b[:, 148:156]
  stored = _octal_rows(chk_field)
  unsigned = tf.reduce_sum(b, axis=1) - tf.reduce_sum(chk_field, axis=1) + 256
  sb, sf = tf.where(b > 127, b - 256, b), tf.where(chk_field > 127, chk_field - 256, chk_field)
  signed = tf.reduce_sum(sb, axis=1) - tf.reduce_sum(sf, axis=1) + 256
  bad = ~(tf.equal(stored, unsigned) | tf.equal(stored, signed))
  any_bad = tf.reduce_any(bad)
  keep = tf.argmax(
    tf.cast(tf.concat([bad, [True]], 0), tf.int32), output_type=tf.int32
  )  # first bad, or M
  status = tf.where(any_bad & ~tf.equal(status, _NEEDS_GENERAL), STATUS_CORRUPT, status)
  hpos, size, b = hpos[:keep], size[:keep], b[:keep]
  typeflag = b[:, 156]
  regular = tf.equal(typeflag, 48) | tf.equal(typeflag, 0) | tf.equal(typeflag, 55)
  meta = tf.equal(typeflag, 120) | tf.equal(typeflag, 76)
  kind = tf.where(regular, _KIND_FILE, tf.where(meta, _KIND_META, _KIND_OTHER))
  kind = tf.where(hpos + _BLOCK + size > length, _KIND_CUT, kind)
  return _headers_to_members(contents, hpos, size, kind, status)


def parse_tar(contents: tf.Tensor) -> dict[str, tf.Tensor]:
  """Lists the regular-file members of a tar archive held in a scalar string.

  A fast loop that only reads size fields handles the common layout; other archives are
  re-parsed by a general loop.  Names (ustar prefix, PAX ``path`` records, GNU long names) are
  extracted for all headers at once after the loop.

  Args:
    contents: tf.string scalar, the whole tar file.

  Returns:
    dict with ``name`` string [M], ``offset`` int64 [M] (start of the member data in
    ``contents``), ``size`` int64 [M], ``status`` int32 scalar (``STATUS_OK`` when the
    end-of-archive block was reached, ``STATUS_TRUNCATED`` when the archive stops early -- inside
    a header or member, or without end blocks -- and ``STATUS_CORRUPT`` on a header with a bad
    checksum) and ``cut_name`` string scalar (name of the member cut off by truncation, ``""`` if
    unknown).  Members before the point of failure are listed.
  """
  fast = _parse_tar_fast(contents)
  return tf.cond(
    tf.equal(fast['status'], _NEEDS_GENERAL), lambda: _parse_tar_general(contents), lambda: fast
  )


def _parse_tar_general(contents: tf.Tensor) -> dict[str, tf.Tensor]:
  """``parse_tar`` for any header layout (checksum and size fields parsed in the loop).

  Same argument and result as ``parse_tar``, which calls it when the fast loop meets a size field
  it does not read.
  """
  length = tf.cast(tf.strings.length(contents), tf.int64)
  pad = tf.constant(b'\x00' * _BLOCK)

  def slow_octal(b, start, width):
    return _octal(tf.cast(b[start : start + width], tf.int64))

  def body(pos, status, ta_pos, ta_size, ta_kind, n):
    short = length - pos < _BLOCK
    hdr = tf.strings.substr(
      tf.strings.join([tf.strings.substr(contents, pos, _BLOCK), pad]), 0, _BLOCK
    )
    b = tf.cast(tf.io.decode_raw(hdr, tf.uint8), tf.int32)
    is_zero = tf.equal(tf.reduce_max(b), 0)
    size, size_ok = _fast_octal(b, 124, 11, _POW8_11)
    size = tf.cond(size_ok, lambda: size, lambda: slow_octal(b, 124, 12))
    chk, chk_fast = _fast_octal(b, 148, 6, _POW8_6)
    chk = tf.cond(chk_fast, lambda: chk, lambda: slow_octal(b, 148, 8))
    field = b[148:156]
    unsigned = tf.cast(tf.reduce_sum(b) - tf.reduce_sum(field) + 256, tf.int64)
    signed = tf.cast(
      tf.reduce_sum(tf.where(b > 127, b - 256, b))
      - tf.reduce_sum(tf.where(field > 127, field - 256, field))
      + 256,
      tf.int64,
    )
    chk_ok = tf.equal(chk, unsigned) | tf.equal(chk, signed)
    typeflag = b[156]
    cut = pos + _BLOCK + size > length
    status = tf.where(
      short,
      STATUS_TRUNCATED,
      tf.where(
        is_zero,
        STATUS_OK,
        tf.where(~chk_ok, STATUS_CORRUPT, tf.where(cut, STATUS_TRUNCATED, _RUNNING)),
      ),
    )
    regular = tf.equal(typeflag, 48) | tf.equal(typeflag, 0) | tf.equal(typeflag, 55)
    meta = tf.equal(typeflag, 120) | tf.equal(typeflag, 76)  # PAX 'x', GNU long name 'L'
    kind = tf.where(regular, _KIND_FILE, tf.where(meta, _KIND_META, _KIND_OTHER))
    kind = tf.where(~short & chk_ok & ~is_zero & cut, _KIND_CUT, kind)
    record = tf.equal(status, _RUNNING) | tf.equal(kind, _KIND_CUT)
    ta_pos = ta_pos.write(n, tf.where(record, pos, -1))
    ta_size = ta_size.write(n, size)
    ta_kind = ta_kind.write(n, kind)
    next_pos = pos + _BLOCK + (size + _BLOCK - 1) // _BLOCK * _BLOCK
    return next_pos, status, ta_pos, ta_size, ta_kind, n + 1

  init = (
    tf.constant(0, tf.int64),
    tf.constant(_RUNNING),
    tf.TensorArray(tf.int64, size=0, dynamic_size=True, element_shape=[]),
    tf.TensorArray(tf.int64, size=0, dynamic_size=True, element_shape=[]),
    tf.TensorArray(tf.int32, size=0, dynamic_size=True, element_shape=[]),
    tf.constant(0),
  )
  out = tf.while_loop(lambda pos, status, *_: tf.equal(status, _RUNNING), body, init)
  _, status, ta_pos, ta_size, ta_kind, _ = out
  hpos, size, kind = ta_pos.stack(), ta_size.stack(), ta_kind.stack()
  valid = hpos >= 0
  hpos, size, kind = (tf.boolean_mask(x, valid) for x in (hpos, size, kind))

  return _headers_to_members(contents, hpos, size, kind, status)


def _headers_to_members(
  contents: tf.Tensor, hpos: tf.Tensor, size: tf.Tensor, kind: tf.Tensor, status: tf.Tensor
) -> dict[str, tf.Tensor]:
  """Member names (ustar prefix, PAX ``path``, GNU long name) of recorded headers, vectorised."""

  def cstr(x):
    return tf.strings.regex_replace(x, '(?s)\x00.*$', '')

  def field(offset, width):  # substr needs pos and len of the same shape
    return tf.strings.substr(
      contents, hpos + offset, tf.fill(tf.shape(hpos), tf.constant(width, tf.int64))
    )

  name = cstr(field(0, 100))
  posix = tf.equal(field(257, 6), b'ustar\x00')
  prefix = tf.where(posix, cstr(field(345, 155)), '')
  name = tf.where(tf.equal(prefix, ''), name, tf.strings.join([prefix, '/', name]))
  # A PAX 'x' / GNU 'L' header names the header right after it.
  typeflag = field(156, 1)
  data = tf.strings.substr(
    contents, hpos + _BLOCK, tf.where(tf.equal(kind, _KIND_META), tf.minimum(size, 1 << 20), 0)
  )
  pax_has = tf.strings.regex_full_match(data, r'(?s)(.*\n)?[0-9]+ path=[^\n]*\n.*')
  pax_path = tf.strings.regex_replace(data, r'(?s)^(?:.*\n)?[0-9]+ path=([^\n]*)\n.*$', r'\1')
  meta_name = tf.where(tf.equal(typeflag, 'x'), tf.where(pax_has, pax_path, ''), cstr(data))
  meta_name = tf.where(tf.equal(kind, _KIND_META), meta_name, '')
  prev_meta = tf.concat([tf.constant(['']), meta_name[:-1]], 0)
  name = tf.where(tf.equal(prev_meta, ''), name, prev_meta)
  is_file = tf.equal(kind, _KIND_FILE)
  is_cut = tf.equal(kind, _KIND_CUT)
  cut_name = tf.strings.reduce_join(tf.boolean_mask(name, is_cut))
  return {
    'name': tf.boolean_mask(name, is_file),
    'offset': tf.boolean_mask(hpos + _BLOCK, is_file),
    'size': tf.boolean_mask(size, is_file),
    'status': status,
    'cut_name': cut_name,
  }


def _member_key_ext(names: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Webdataset key (path up to the first '.' of the file name) and lower-cased extension."""
  has_dot = tf.strings.regex_full_match(names, r'(?s)(?:.*/)?[^/.]+\..*')
  key = tf.where(
    has_dot, tf.strings.regex_replace(names, r'(?s)^((?:.*/)?[^/.]+)\..*$', r'\1'), names
  )
  ext = tf.where(
    has_dot, tf.strings.lower(tf.strings.regex_replace(names, r'(?s)^(?:.*/)?[^/.]+\.', '')), ''
  )
  return key, ext


def _event_row(reason: int | tf.Tensor) -> dict[str, tf.Tensor]:
  return {
    'key': tf.constant(['']),
    'a_off': tf.constant([0], tf.int64),
    'a_len': tf.constant([-1], tf.int64),
    'b_off': tf.constant([0], tf.int64),
    'b_len': tf.constant([-1], tf.int64),
    'reason': tf.reshape(tf.cast(reason, tf.int32), [1]),
  }


def _concat_rows(a: dict, b: dict) -> dict:
  return {k: tf.concat([a[k], b[k]], 0) for k in TABLE_KEYS}


def empty_table() -> dict[str, tf.Tensor]:
  return {
    'key': tf.zeros([0], tf.string),
    'a_off': tf.zeros([0], tf.int64),
    'a_len': tf.zeros([0], tf.int64),
    'b_off': tf.zeros([0], tf.int64),
    'b_len': tf.zeros([0], tf.int64),
    'reason': tf.zeros([0], tf.int32),
  }


def _shard_event(length: tf.Tensor, status: tf.Tensor, num_rows: tf.Tensor) -> tf.Tensor:
  """Reason code of the shard-level event row (0 = no event)."""
  return tf.where(
    tf.equal(length, 0) | (tf.equal(status, STATUS_OK) & tf.equal(num_rows, 0)),
    skips.code('empty_shard'),
    tf.where(
      tf.equal(status, STATUS_TRUNCATED),
      skips.code('truncated_shard'),
      tf.where(tf.equal(status, STATUS_CORRUPT), skips.code('corrupt_shard'), 0),
    ),
  )


def _append_event(table: dict, event: tf.Tensor) -> dict:
  return tf.cond(
    event > 0,
    lambda: _concat_rows(table, _event_row(event)),
    lambda: dict(table),
  )


def tar_samples(
  contents: tf.Tensor, image_exts: Sequence[str], caption_ext: str
) -> dict[str, tf.Tensor]:
  """Parses a webdataset tar held in a scalar string into a sample table.

  Args:
    contents: tf.string scalar, the whole shard.
    image_exts: extensions that count as the sample's image (first one found is used).
    caption_ext: extension of the caption member.

  Returns:
    table dict (``TABLE_KEYS``), one row per sample plus at most one shard-event row:
    ``key`` string [S], ``a_off``/``a_len`` int64 [S] image member (len -1 if missing),
    ``b_off``/``b_len`` int64 [S] caption member (len -1 if missing), ``reason`` int32 [S]
    (``missing_image``/``missing_caption`` or a shard-level reason; 0 otherwise).
    On truncation the last sample is dropped when it may be incomplete.
  """
  length = tf.cast(tf.strings.length(contents), tf.int64)
  tar = parse_tar(contents)
  names, offs, sizes = tar['name'], tar['offset'], tar['size']
  key, ext = _member_key_ext(names)
  m = tf.size(names, out_type=tf.int64)
  idx = tf.range(m, dtype=tf.int64)
  changed = tf.concat([tf.ones([tf.minimum(m, 1)], tf.bool), tf.not_equal(key[1:], key[:-1])], 0)
  seg = tf.cumsum(tf.cast(changed, tf.int64)) - 1
  num = tf.reduce_sum(tf.cast(changed, tf.int64))
  big = tf.constant(2**62, tf.int64)
  is_img = tf.reduce_any(tf.equal(ext[:, None], tf.constant(list(image_exts))[None, :]), axis=1)
  is_txt = tf.equal(ext, caption_ext)
  first = tf.math.unsorted_segment_min(idx, seg, num)
  img_i = tf.math.unsorted_segment_min(tf.where(is_img, idx, big), seg, num)
  txt_i = tf.math.unsorted_segment_min(tf.where(is_txt, idx, big), seg, num)
  has_img = img_i < big
  has_txt = txt_i < big
  img_c = tf.minimum(img_i, tf.maximum(m - 1, 0))
  txt_c = tf.minimum(txt_i, tf.maximum(m - 1, 0))
  table = {
    'key': tf.gather(key, first),
    'a_off': tf.where(has_img, tf.gather(offs, img_c), 0),
    'a_len': tf.where(has_img, tf.gather(sizes, img_c), -1),
    'b_off': tf.where(has_txt, tf.gather(offs, txt_c), 0),
    'b_len': tf.where(has_txt, tf.gather(sizes, txt_c), -1),
    'reason': tf.where(
      ~has_img,
      skips.code('missing_image'),
      tf.where(~has_txt, skips.code('missing_caption'), skips.OK),
    ),
  }
  # On truncation drop the last sample unless the cut member demonstrably starts a new sample.
  status = tar['status']
  cut_key, _ = _member_key_ext(tf.reshape(tar['cut_name'], [1]))
  last_key = tf.cond(num > 0, lambda: table['key'][-1], lambda: tf.constant(''))
  drop_last = (
    tf.equal(status, STATUS_TRUNCATED)
    & (num > 0)
    & (tf.equal(tar['cut_name'], '') | tf.equal(cut_key[0], last_key))
  )
  keep_n = num - tf.cast(drop_last, tf.int64)
  table = {k: v[:keep_n] for k, v in table.items()}
  event = _shard_event(length, status, num)
  return _append_event(table, event)


def tfrecord_records(contents: tf.Tensor) -> dict[str, tf.Tensor]:
  """Splits a TFRecord file held in a scalar string into its records.

  Args:
    contents: tf.string scalar, the whole file.

  Returns:
    dict with ``offset`` int64 [R] and ``length`` int64 [R] of each record's payload, and
    ``status`` int32 (``STATUS_OK`` at a clean end of file, ``STATUS_TRUNCATED`` if the file ends
    inside a record, ``STATUS_CORRUPT`` for a negative length).
  """
  size = tf.cast(tf.strings.length(contents), tf.int64)

  def body(pos, status, ta_off, ta_len, n):
    def read():
      ln = tf.io.decode_raw(tf.strings.substr(contents, pos, 8), tf.int64, little_endian=True)[0]
      end = pos + 12 + ln + 4
      st = tf.where(ln < 0, STATUS_CORRUPT, tf.where(end > size, STATUS_TRUNCATED, _RUNNING))
      st = tf.where(tf.equal(st, _RUNNING) & tf.equal(end, size), STATUS_OK, st)
      return end, st, pos + 12, ln

    def short():
      return pos, tf.constant(STATUS_TRUNCATED), pos, tf.constant(-1, tf.int64)

    end, st, off, ln = tf.cond(size - pos < 12, short, read)
    ok = tf.equal(st, _RUNNING) | tf.equal(st, STATUS_OK)
    ta_off = ta_off.write(n, off)
    ta_len = ta_len.write(n, tf.where(ok, ln, -1))
    return end, st, ta_off, ta_len, n + 1

  init = (
    tf.constant(0, tf.int64),
    tf.where(tf.equal(size, 0), STATUS_OK, _RUNNING),
    tf.TensorArray(tf.int64, size=0, dynamic_size=True, element_shape=[]),
    tf.TensorArray(tf.int64, size=0, dynamic_size=True, element_shape=[]),
    tf.constant(0),
  )
  _, status, ta_off, ta_len, _ = tf.while_loop(lambda p, s, *_: tf.equal(s, _RUNNING), body, init)
  lens = ta_len.stack()
  keep = lens >= 0
  return {
    'offset': tf.boolean_mask(ta_off.stack(), keep),
    'length': tf.boolean_mask(lens, keep),
    'status': status,
  }


def tfrecord_table(contents: tf.Tensor, skip: tf.Tensor, take: tf.Tensor) -> dict[str, tf.Tensor]:
  """Record table of a TFRecord file (``TABLE_KEYS``), restricted to records [skip, skip+take).

  ``take < 0`` means "to the end".  The key of a record is its index in the file (as a string).
  ``a_off/a_len`` locate the record payload, ``b_*`` are unused (-1).
  """
  length = tf.cast(tf.strings.length(contents), tf.int64)
  rec = tfrecord_records(contents)
  r = tf.size(rec['offset'], out_type=tf.int64)
  lo = tf.minimum(skip, r)
  hi = tf.where(take < 0, r, tf.minimum(r, skip + take))
  idx = tf.range(lo, hi, dtype=tf.int64)
  n = hi - lo
  table = {
    'key': tf.strings.as_string(idx),
    'a_off': rec['offset'][lo:hi],
    'a_len': rec['length'][lo:hi],
    'b_off': tf.zeros([n], tf.int64),
    'b_len': -tf.ones([n], tf.int64),
    'reason': tf.zeros([n], tf.int32),
  }
  event = _shard_event(length, rec['status'], r)
  return _append_event(table, event)


def try_call(fn: Callable, fallback, *args):
  """Runs ``fn(*args)`` inside the graph and returns ``(result, True)``, or ``(fallback, False)``
  if any op in ``fn`` raises (e.g. ``tf.io.decode_image`` on corrupt bytes).

  Implemented with a one-element nested ``tf.data`` pipeline + ``ignore_errors()`` evaluated by
  ``get_single_element``, so the error is contained to this call (the outer pipeline keeps
  going and the failure becomes a countable flag).  ``fallback`` must have the structure and
  static shapes of ``fn``'s result.
  """
  ds = tf.data.Dataset.from_tensors(args).map(no_autograph(lambda *a: (fn(*a), tf.constant(True))))
  ds = ds.ignore_errors().concatenate(tf.data.Dataset.from_tensors((fallback, tf.constant(False))))
  return ds.take(1).get_single_element()


def map_with_errors(
  ds: tf.data.Dataset,
  fn: Callable,
  fallback,
  chunk: int = 16,
  num_parallel_calls: int = tf.data.AUTOTUNE,
) -> tf.data.Dataset:
  """Maps ``fn`` over ``ds`` with errors contained per element: yields ``(el, fn(el) or fallback,
  ok)``.

  Like ``try_call`` but one nested ``ignore_errors`` pipeline serves a chunk of ``chunk``
  consecutive elements, which amortises its set-up cost (order is preserved).  ``fallback`` has
  the structure of ``fn``'s result (one element, static shapes).
  """
  fallback = tf.nest.map_structure(tf.convert_to_tensor, fallback)

  def run(els):
    n = tf.shape(tf.nest.flatten(els)[0])[0]
    pos = tf.range(n)
    inner = tf.data.Dataset.from_tensor_slices((pos, els))
    inner = inner.map(no_autograph(lambda p, e: (p, fn(e)))).ignore_errors().batch(chunk)
    empty = (
      tf.zeros([0], tf.int32),
      tf.nest.map_structure(
        lambda f: tf.zeros(tf.concat([[0], tf.shape(f)], 0), f.dtype), fallback
      ),
    )
    ok_pos, vals = (
      inner.concatenate(tf.data.Dataset.from_tensors(empty)).take(1).get_single_element()
    )
    ok = tf.scatter_nd(ok_pos[:, None], tf.ones_like(ok_pos, tf.bool), [n])
    bad_pos = tf.cast(tf.where(~ok)[:, 0], tf.int32)
    n_bad = tf.size(bad_pos)
    out = tf.nest.map_structure(
      lambda v, f: tf.dynamic_stitch(
        [ok_pos, bad_pos],
        [v, tf.tile(f[None], tf.concat([[n_bad], tf.ones([tf.rank(f)], tf.int32)], 0))],
      ),
      vals,
      fallback,
    )
    return els, out, ok

  ds = ds.batch(chunk).map(
    no_autograph(run), num_parallel_calls=num_parallel_calls, deterministic=True
  )
  return ds.unbatch()


def slice_rows(
  contents: Sequence[tf.Tensor], file_ids: tf.Tensor, offsets: tf.Tensor, lengths: tf.Tensor
) -> tf.Tensor:
  """Vectorised member extraction: ``contents[file_ids[i]][offsets[i]:offsets[i] + lengths[i]]``.

  Args:
    contents: list of C tf.string scalars (whole files).
    file_ids: int [N] index into ``contents``; offsets, lengths: int64 [N] (length < 0 -> "").

  Returns:
    tf.string [N].  Only the selected ranges are copied (never a whole file).
  """
  lengths = tf.maximum(lengths, 0)
  out = None
  for k, c in enumerate(contents):
    mine = tf.equal(file_ids, k)
    part = tf.strings.substr(c, tf.where(mine, offsets, 0), tf.where(mine, lengths, 0))
    out = part if out is None else tf.where(mine, part, out)
  return out


def group_stream(
  files: Sequence[str],
  *,
  table_fn: Callable[[tf.Tensor, tf.Tensor, tf.Tensor], dict],
  emit_fn: Callable[[dict, Callable], dict],
  shards_per_group: int,
  seed: tf.Tensor,
  start: tuple[int, int],
  element_fn: Callable[[dict], dict] | None = None,
  skips_per_file: Sequence[int] | None = None,
  takes_per_file: Sequence[int] | None = None,
  group_parallelism: int = 1,
) -> tf.data.Dataset:
  """Infinite, resumable stream of samples from a list of shard files.

  Epoch ``e`` visits the files in the permutation ``stateless_shuffle(range(F), (seed, e))``,
  cut into ``G = ceil(F / shards_per_group)`` consecutive groups.  Group ``t`` (flat index,
  ``t = e * G + g``) loads its files, parses them with ``table_fn(contents, skip, take)`` into
  row tables, permutes all rows of the group with a stateless shuffle keyed by ``(seed, t)`` and
  turns them into element vectors with ``emit_fn(rows, slice_fn)`` (vectorised over the rows;
  ``slice_fn(offsets, lengths)`` extracts each row's byte range from its file).  Every element
  gets ``pos = [t, o]`` (``o`` = index in the permuted group) and ``shard`` (the file path);
  ``element_fn``, if given, is then mapped over single elements.

  Args:
    files: the process's shard paths.
    table_fn: builds the row table of one file (see ``tar_samples``/``tfrecord_table``).
    emit_fn: rows + slicer -> dict of [N, ...] tensors (must not set ``pos``/``shard``).
    shards_per_group: files loaded and shuffled together.
    seed: int64 [2] stateless seed of this source.
    start: ``(t, o)`` of the last element already consumed; the stream starts right after it
      (``(0, -1)`` = from the beginning).
    element_fn: optional per-element post-processing (e.g. parsing a record).
    skips_per_file, takes_per_file: record ranges per file (TFDS file instructions).
    group_parallelism: groups loaded concurrently (ahead of consumption).

  Returns:
    tf.data.Dataset of element dicts.
  """
  num_files = len(files)
  c = min(shards_per_group, num_files)
  groups_per_epoch = math.ceil(num_files / c)
  files_t = tf.constant(list(files))
  skips_t = tf.constant(list(skips_per_file or [0] * num_files), tf.int64)
  takes_t = tf.constant(list(takes_per_file or [-1] * num_files), tf.int64)
  seed = tf.cast(seed, tf.int64)

  def load(t):
    epoch = t // groups_per_epoch
    g = t % groups_per_epoch
    perm = tf.random.experimental.stateless_shuffle(
      tf.range(num_files, dtype=tf.int64),
      seed=tf.random.experimental.stateless_fold_in(seed, epoch),
    )
    ids = perm[g * c : tf.minimum((g + 1) * c, num_files)]
    n_ids = tf.size(ids)
    contents, paths, tables = [], [], []
    for k in range(c):
      valid = k < n_ids
      fid = ids[tf.minimum(k, n_ids - 1)]
      path = tf.where(valid, tf.gather(files_t, fid), '')
      data = tf.cond(valid, lambda p=path: tf.io.read_file(p), lambda: tf.constant(''))
      table = tf.cond(
        valid,
        lambda d=data, f=fid: table_fn(d, tf.gather(skips_t, f), tf.gather(takes_t, f)),
        empty_table,
      )
      table['file'] = tf.fill(tf.shape(table['reason']), k)
      contents.append(data)
      paths.append(path)
      tables.append(table)
    rows = {key: tf.concat([tb[key] for tb in tables], 0) for key in tables[0]}
    n = tf.shape(rows['reason'], out_type=tf.int64)[0]
    order = tf.random.experimental.stateless_shuffle(
      tf.range(n), seed=tf.random.experimental.stateless_fold_in(seed + 7919, t)
    )
    rows = {key: tf.gather(v, order) for key, v in rows.items()}
    el = emit_fn(rows, lambda offs, lens: slice_rows(contents, rows['file'], offs, lens))
    el['shard'] = tf.gather(tf.stack(paths), rows['file'])
    el['pos'] = tf.stack([tf.fill([n], t), tf.range(n)], axis=1)
    return el

  t0, o0 = start
  ds = tf.data.Dataset.range(int(t0), _INT64_MAX)
  ds = ds.map(no_autograph(load), num_parallel_calls=group_parallelism, deterministic=True)
  ds = ds.flat_map(no_autograph(tf.data.Dataset.from_tensor_slices))
  if o0 + 1 > 0:
    ds = ds.skip(int(o0) + 1)
  if element_fn is not None:
    ds = ds.map(no_autograph(element_fn), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds
