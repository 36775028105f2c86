"""Tiny shard writers for tests, examples and benchmarks (PIL + tarfile + TFRecord; no network).

``write_webdataset(path, samples)`` writes an img2dataset-style tar (``KEY.jpg`` + ``KEY.txt``
+ ``KEY.json``), ``write_tfrecord(path, samples)`` an img2dataset-style TFRecord file (features
``key``, ``jpg``, ``txt``).  A sample is a dict with ``key`` and any of ``image`` (bytes, stored
under ``image_ext``), ``caption`` (str or bytes) and ``json``; absent fields are not written, so
broken samples are easy to make.  ``image_bytes`` renders a small gradient image in any PIL format.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image

__all__ = ['image_bytes', 'write_webdataset', 'write_tfrecord', 'tfrecord_example']


def image_bytes(
  seed: int = 0, size: tuple[int, int] = (48, 64), fmt: str = 'JPEG', quality: int = 90
) -> bytes:
  """A smooth random RGB image (height, width) = ``size`` encoded with PIL in ``fmt``."""

  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
  img = Image.fromarray(small).resize((size[1], size[0]), Image.BILINEAR)
  buf = io.BytesIO()
  kwargs = {'quality': quality} if fmt.upper() in ('JPEG', 'WEBP') else {}
  img.save(buf, fmt, **kwargs)
  return buf.getvalue()


def _as_bytes(x) -> bytes:
  return x.encode('utf-8') if isinstance(x, str) else bytes(x)


def write_webdataset(
  path: str, samples: Iterable[dict], tar_format: int = tarfile.PAX_FORMAT
) -> str:
  """Writes samples as a webdataset tar: ``KEY.<image_ext>``, ``KEY.txt``, ``KEY.json``.

  Each sample: ``key`` (required), optional ``image`` (bytes), ``image_ext`` (default ``jpg``),
  ``caption`` (str/bytes), ``json`` (dict), ``extra`` (dict ext -> bytes).
  """
  with tarfile.open(path, 'w', format=tar_format) as tar:
    for s in samples:
      members = []
      if 'image' in s:
        members.append((f'{s["key"]}.{s.get("image_ext", "jpg")}', _as_bytes(s['image'])))
      if 'caption' in s:
        members.append((f'{s["key"]}.txt', _as_bytes(s['caption'])))
      if 'json' in s:
        members.append((f'{s["key"]}.json', json.dumps(s['json']).encode()))
      for ext, data in s.get('extra', {}).items():
        members.append((f'{s["key"]}.{ext}', _as_bytes(data)))
      for name, data in members:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o444
        tar.addfile(info, io.BytesIO(data))
  return path


def tfrecord_example(sample: dict, image_key: str = 'jpg', caption_key: str = 'txt') -> bytes:
  """Serialised ``tf.train.Example`` with ``key``, ``jpg`` and ``txt`` (absent if missing)."""
  import tensorflow as tf

  feats = {'key': tf.train.Feature(bytes_list=tf.train.BytesList(value=[_as_bytes(sample['key'])]))}
  if 'image' in sample:
    feats[image_key] = tf.train.Feature(
      bytes_list=tf.train.BytesList(value=[_as_bytes(sample['image'])])
    )
  if 'caption' in sample:
    feats[caption_key] = tf.train.Feature(
      bytes_list=tf.train.BytesList(value=[_as_bytes(sample['caption'])])
    )
  return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def write_tfrecord(path: str, samples: Sequence[dict | bytes]) -> str:
  """Writes an img2dataset-style TFRecord file; a ``bytes`` item is written as a raw record."""
  import tensorflow as tf

  with tf.io.TFRecordWriter(path) as w:
    for s in samples:
      w.write(s if isinstance(s, bytes) else tfrecord_example(s))
  return path
