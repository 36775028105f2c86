"""Tests of source parsing, brace expansion, the in-graph tar/TFRecord readers and TFDS sources."""

import io
import os
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import readers, skips, sources
from input_pipeline.testing import image_bytes, write_tfrecord, write_webdataset


def test_brace_expand():
  assert sources.brace_expand('a{00..03}.tar') == ['a00.tar', 'a01.tar', 'a02.tar', 'a03.tar']
  assert sources.brace_expand('{x,y}/{1..2}') == ['x/1', 'x/2', 'y/1', 'y/2']
  assert sources.brace_expand('s{a,b{0..1}}c') == ['sac', 'sb0c', 'sb1c']
  assert sources.brace_expand('plain.tar') == ['plain.tar']
  assert sources.brace_expand('gcc-{000000..000002}.tar')[-1] == 'gcc-000002.tar'
  assert sources.brace_expand('lit{x}.tar') == ['lit{x}.tar']


def test_parse_source():
  s = sources.parse_source('webdataset:/d/{0..9}.tar@0.25')
  assert (s.kind, s.pattern, s.weight) == ('webdataset', '/d/{0..9}.tar', 0.25)
  assert sources.parse_source('tfrecord:/d/x@y.tfrecord').pattern == '/d/x@y.tfrecord'
  t = sources.parse_source('tfds:coco_captions/2017:train[:10%]@2')
  assert (t.tfds_name, t.tfds_split, t.weight) == ('coco_captions/2017', 'train[:10%]', 2.0)
  assert sources.parse_source('synthetic@1e-1').weight == pytest.approx(0.1)
  for bad in ['', 'foo:/x', 'webdataset:', 'tfds:name', 'synthetic:1']:
    with pytest.raises(ValueError):
      sources.parse_source(bad)


def test_list_files_and_split(tmp_path):
  for i in range(5):
    (tmp_path / f'{i:03d}.tar').write_bytes(b'')
  files = sources.list_files(f'{tmp_path}/{{000..004}}.tar')
  assert [os.path.basename(f) for f in files] == [f'{i:03d}.tar' for i in range(5)]
  assert sources.list_files(f'{tmp_path}/*.tar') == files
  parts = [sources.split_for_process(files, p, 2, 'x') for p in range(2)]
  assert sorted(parts[0] + parts[1]) == files and not set(parts[0]) & set(parts[1])
  with pytest.raises(ValueError):
    sources.split_for_process(files, 0, 6, 'x')
  with pytest.raises(FileNotFoundError, match='005'):
    sources.list_files(f'{tmp_path}/{{000..005}}.tar')


def _members(data: bytes):
  out = tf.function(readers.parse_tar, autograph=False)(tf.constant(data))
  names = [n.decode() for n in out['name'].numpy()]
  blobs = [data[o : o + s] for o, s in zip(out['offset'].numpy(), out['size'].numpy())]
  return names, blobs, int(out['status'])


@pytest.mark.parametrize('fmt', [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_parse_tar_formats_match_tarfile(fmt):
  buf = io.BytesIO()
  long_dir = 'd' * 120 + '/sub'  # needs the ustar prefix / GNU long name / PAX path
  entries = [
    ('a.txt', b'hello'),
    (f'{long_dir}/k1.jpg', b'\xff' * 700),
    (f'{long_dir}/k1.txt', b''),
    ('x/' + 'n' * 95 + '.json', b'{}'),
    ('ü-ñ.txt', 'unicode ✓'.encode()),
  ]
  if fmt == tarfile.USTAR_FORMAT:
    entries = [e for e in entries if e[0].isascii()]
  with tarfile.open(fileobj=buf, mode='w', format=fmt) as t:
    d = tarfile.TarInfo('somedir')
    d.type = tarfile.DIRTYPE
    t.addfile(d)
    for name, data in entries:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      t.addfile(info, io.BytesIO(data))
  names, blobs, status = _members(buf.getvalue())
  assert status == readers.STATUS_OK
  assert names == [n for n, _ in entries] and blobs == [b for _, b in entries]


def test_parse_tar_damage():
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode='w') as t:
    for i in range(3):
      info = tarfile.TarInfo(f'm{i}.bin')
      info.size = 1000
      t.addfile(info, io.BytesIO(bytes([i]) * 1000))
  raw = buf.getvalue()
  names, _, status = _members(raw[: 512 + 1024 + 512 + 100])  # inside m1's data
  assert names == ['m0.bin'] and status == readers.STATUS_TRUNCATED
  names, _, status = _members(raw[: 512 + 1024 + 200])  # inside m1's header
  assert names == ['m0.bin'] and status == readers.STATUS_TRUNCATED
  bad = bytearray(raw)
  bad[1536 + 10] ^= 0xFF  # corrupt m1's header (checksum mismatch)
  names, _, status = _members(bytes(bad))
  assert names == ['m0.bin'] and status == readers.STATUS_CORRUPT
  assert _members(b'')[2] == readers.STATUS_TRUNCATED


def test_parse_tar_unusual_size_layout_uses_general_parser():
  """Space-padded size fields (other tar writers) take the general (slower) parsing loop."""
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode='w', format=tarfile.USTAR_FORMAT) as t:
    for i, data in enumerate([b'a' * 1000, b'bb']):
      info = tarfile.TarInfo(f'k{i}.txt')
      info.size = len(data)
      t.addfile(info, io.BytesIO(data))
  raw = bytearray(buf.getvalue())
  raw[124:136] = b'       1750 '  # 1000 in octal, space padded (no leading zeros)
  raw[148:156] = b' ' * 8
  raw[148:156] = b'%06o\x00 ' % sum(raw[:512])
  names, blobs, status = _members(bytes(raw))
  assert (
    status == readers.STATUS_OK and names == ['k0.txt', 'k1.txt'] and blobs == [b'a' * 1000, b'bb']
  )
  fast = tf.function(readers._parse_tar_fast, autograph=False)(tf.constant(bytes(raw)))
  assert int(fast['status']) == readers._NEEDS_GENERAL


def test_tar_samples_grouping(tmp_path):
  jpg = image_bytes(0)
  write_webdataset(
    str(tmp_path / 's.tar'),
    [
      {'key': 'dir/a', 'image': jpg, 'caption': 'cap a', 'json': {'k': 1}},
      {'key': 'b', 'image': jpg, 'image_ext': 'PNG', 'caption': 'cap b'},  # extension case-folded
      {'key': 'c', 'caption': 'no image'},
      {'key': 'd', 'image': jpg},
      {'key': 'e.x', 'image': jpg, 'caption': 'key up to the first dot'},
    ],
  )
  data = (tmp_path / 's.tar').read_bytes()
  t = tf.function(lambda c: readers.tar_samples(c, ('jpg', 'png'), 'txt'), autograph=False)(
    tf.constant(data)
  )
  keys = [k.decode() for k in t['key'].numpy()]
  assert keys == ['dir/a', 'b', 'c', 'd', 'e']
  # "e.x.jpg" / "e.x.txt" have extensions "x.jpg" / "x.txt" (webdataset rule): neither matches.
  assert list(t['reason'].numpy()) == [
    0,
    0,
    skips.code('missing_image'),
    skips.code('missing_caption'),
    skips.code('missing_image'),
  ]
  o, n = t['b_off'].numpy()[0], t['b_len'].numpy()[0]
  assert data[o : o + n] == b'cap a'
  o, n = t['a_off'].numpy()[1], t['a_len'].numpy()[1]
  assert data[o : o + n] == jpg


def test_tfrecord_framing(tmp_path):
  recs = [b'', b'x' * 10, os.urandom(3000)]
  write_tfrecord(str(tmp_path / 'r.tfrecord'), recs)
  data = (tmp_path / 'r.tfrecord').read_bytes()
  f = tf.function(readers.tfrecord_records, autograph=False)
  out = f(tf.constant(data))
  got = [data[o : o + n] for o, n in zip(out['offset'].numpy(), out['length'].numpy())]
  assert got == recs and int(out['status']) == readers.STATUS_OK
  assert got == list(tf.data.TFRecordDataset(str(tmp_path / 'r.tfrecord')).as_numpy_iterator())
  out = f(tf.constant(data[:-5]))
  assert (
    out['length'].numpy().tolist() == [0, 10] and int(out['status']) == readers.STATUS_TRUNCATED
  )
  t = tf.function(readers.tfrecord_table, autograph=False)(
    tf.constant(data), tf.constant(1, tf.int64), tf.constant(1, tf.int64)
  )
  assert [k.decode() for k in t['key'].numpy()] == ['1'] and t['a_len'].numpy().tolist() == [10]


def test_try_call_contains_errors():
  f = tf.function(
    lambda b: readers.try_call(
      lambda x: tf.io.decode_image(x, channels=3, expand_animations=False)[:1, :1, :],
      tf.zeros([1, 1, 3], tf.uint8),
      b,
    ),
    autograph=False,
  )
  img, ok = f(tf.constant(image_bytes(0, fmt='PNG')))
  assert bool(ok) and img.shape == (1, 1, 3)
  img, ok = f(tf.constant(b'garbage'))
  assert not bool(ok) and int(tf.reduce_sum(tf.cast(img, tf.int32))) == 0


def test_tfds_source(tmp_path):
  """A TFDS dataset (sequence-valued captions) prepared locally, split over two processes."""
  tfds = pytest.importorskip('tensorflow_datasets')
  from PIL import Image

  from input_pipeline import create_train_dataset, default_data_config

  feats = tfds.features.FeaturesDict(
    {
      'image': tfds.features.Image(shape=(None, None, 3)),
      'captions': tfds.features.Sequence({'text': tfds.features.Text()}),
    }
  )
  examples = [
    (
      i,
      {
        'image': np.asarray(Image.open(io.BytesIO(image_bytes(i)))),
        'captions': {'text': [f'photo number {i} of a dog', f'picture {i} with a cat']},
      },
    )
    for i in range(8)
  ]
  examples.append(
    (8, {'image': np.asarray(Image.open(io.BytesIO(image_bytes(8)))), 'captions': {'text': []}})
  )
  tfds.dataset_builders.store_as_tfds_dataset(
    name='tiny_captions_test',
    version='1.0.0',
    features=feats,
    split_datasets={'train': examples},
    data_dir=str(tmp_path),
  )
  cfg = default_data_config()
  cfg.train = ('tfds:tiny_captions_test:train',)
  cfg.tfds_data_dir = str(tmp_path)
  cfg.image_size = 32
  cfg.randaugment = ''
  cfg.host_prefetch = 0
  cfg.debug_metadata = True
  cfg.text.online_tagging = False
  import re

  seen = []
  for p in range(2):
    it = create_train_dataset(cfg, global_batch_size=8, process_index=p, process_count=2, seed=0)
    got = set()
    for _ in range(3):
      b = next(it)
      assert b['image'].shape == (4, 32, 32, 3)
      assert all(c.startswith(('photo number', 'picture')) for c in b['meta/caption'])
      assert all('#' in k for k in b['meta/key'])  # record index + caption index
      got |= {int(re.search(r'\d+', c).group()) for c in b['meta/caption']}
    seen.append(got)
  # Split by example index: disjoint, and together every example that has a caption.
  assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(8))
