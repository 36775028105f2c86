"""Reasons for which training samples are skipped, and their integer codes.

The pipeline keeps bad samples flowing through the tf.data graph with a reason code (instead of
raising), counts them with an exact, order-preserving scan and only then filters them out.  The
counts are exposed by :meth:`input_pipeline.TrainIterator.skip_counts` as
``{"data/skipped/<reason>": n}``.

Reasons (what one count means):

* ``missing_image``   -- a webdataset sample (tar members sharing a key) without an image member
  (extensions ``config.data.image_extensions``), or a TFRecord/TFDS example without image bytes.
* ``missing_caption`` -- a sample without a caption member/feature (``.txt`` / ``txt``).
* ``empty_caption``   -- the caption is empty or only whitespace.
* ``invalid_utf8``    -- the caption bytes are not valid UTF-8.
* ``not_an_image``    -- the image bytes are not JPEG, PNG, GIF, BMP or WebP (by magic number),
  e.g. an HTML error page saved as ``.jpg``.
* ``corrupt_image``   -- the bytes look like an image but fail to decode (truncated or damaged).
* ``corrupt_record``  -- a TFRecord/TFDS record whose payload is not a parsable
  ``tf.train.Example``.
* ``truncated_shard`` -- one per truncated shard read: a tar whose last member is cut off or which
  lacks its end-of-archive blocks, or a TFRecord file cut inside a record.  The samples before the
  cut are used; the sample being cut is dropped (it is part of this single count).
* ``corrupt_shard``   -- one per shard read whose structure is invalid (bad tar header checksum,
  impossible TFRecord length); samples before the damage are used.
* ``empty_shard``     -- one per shard read that is zero bytes long or contains no sample.
* ``missing_teacher`` -- with ``config.data.teacher_cache`` set: a sample whose key is not in the
  teacher cache (written by ``python -m input_pipeline.prepare_teacher``), e.g. a shard added
  after the cache was built or a sample the cache tool could not decode.

Shard-level reasons are counted each time the shard is read (i.e. once per epoch).
"""

from __future__ import annotations

__all__ = ['REASONS', 'OK', 'code', 'counts_to_dict']

OK = 0
REASONS = (
  'missing_image',
  'missing_caption',
  'empty_caption',
  'invalid_utf8',
  'not_an_image',
  'corrupt_image',
  'corrupt_record',
  'truncated_shard',
  'corrupt_shard',
  'empty_shard',
  'missing_teacher',  # appended last: the codes above keep their values
)
# Code i (1-based) <-> REASONS[i - 1]; 0 means "good sample".
_CODES = {name: i + 1 for i, name in enumerate(REASONS)}
NUM_CODES = len(REASONS) + 1


def code(reason: str) -> int:
  """Integer code of a reason name (``0`` is reserved for good samples)."""
  return _CODES[reason]


def counts_to_dict(counts) -> dict[str, int]:
  """Converts a length-``NUM_CODES`` count vector (index = code) to ``{"data/skipped/<r>": n}``."""
  return {f'data/skipped/{name}': int(counts[i + 1]) for i, name in enumerate(REASONS)}
