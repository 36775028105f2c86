"""End-to-end tests of the training input pipeline on tiny generated shards.

Covers: bad data skipped and counted exactly (webdataset + TFRecord, sample- and shard-level
reasons), all good samples delivered, determinism for a seed, disjoint files across processes,
exact resume from get_state/set_state, missing-path errors, batch layout.
"""

import json
import os

import numpy as np
import pytest

from input_pipeline import create_train_dataset, default_data_config, skips
from input_pipeline.testing import image_bytes, write_tfrecord, write_webdataset

SMALL = 32  # output resolution used by most tests (speed)


def _cfg(train, **kw):
  cfg = default_data_config()
  cfg.train = tuple(train)
  cfg.image_size = kw.pop('image_size', SMALL)
  cfg.debug_metadata = True
  cfg.host_prefetch = kw.pop('host_prefetch', 0)
  cfg.text.online_tagging = kw.pop('online_tagging', False)  # spaCy is tested in test_input_text
  for k, v in kw.items():
    setattr(cfg, k, v)
  return cfg


def _good(key, seed=0, fmt='JPEG', ext='jpg', caption=None):
  return {
    'key': key,
    'image': image_bytes(seed, fmt=fmt),
    'image_ext': ext,
    'caption': caption or f'a photo of thing {key}',
  }


def _expected(**counts):
  out = {f'data/skipped/{r}': 0 for r in skips.REASONS}
  out.update({f'data/skipped/{r}': n for r, n in counts.items()})
  return out


def _keys(batch):
  return sorted(
    f'{os.path.basename(s)}/{k}' for s, k in zip(batch['meta/shard'], batch['meta/key'])
  )


def _check_multiple(counts, per_epoch, batch_no):
  """counts == m * per_epoch for one m in {batch_no - 1, batch_no} (see the tests' docstrings)."""
  got = np.array([counts[f'data/skipped/{r}'] for r in skips.REASONS])
  exp = np.array([per_epoch[f'data/skipped/{r}'] for r in skips.REASONS])
  assert any(np.array_equal(got, m * exp) for m in (batch_no - 1, batch_no)), (
    batch_no,
    counts,
    per_epoch,
  )


def test_bad_samples_webdataset_counted_exactly(tmp_path):
  """A shard of only bad samples + a shard of only good ones, one shard per group.

  Each batch holds exactly the good shard's samples (one epoch), so after batch j every bad
  sample has been seen j - 1 or j times (the bad shard comes after or before the good one in
  epoch j): the counts must be exactly j or j+1 times the per-epoch counts, for all reasons at
  once, and the batch must be exactly the set of good samples.
  """
  jpeg = image_bytes(1)
  bad = [
    {'key': 'truncjpeg', 'image': jpeg[: len(jpeg) // 2], 'caption': 'cut jpeg'},
    {'key': 'garbledjpeg', 'image': jpeg[:4] + b'\x00' * 200, 'caption': 'garbled header'},
    {
      'key': 'badpng',
      'image': image_bytes(2, fmt='PNG')[:60],
      'image_ext': 'png',
      'caption': 'cut png',
    },
    {'key': 'html', 'image': b'<html><body>404 not found</body></html>', 'caption': 'not an image'},
    {'key': 'empty', 'image': jpeg, 'caption': ''},
    {'key': 'blank', 'image': jpeg, 'caption': ' \n\t '},
    {'key': 'latin1', 'image': jpeg, 'caption': b'caf\xe9 \xff\xfe'},
    {'key': 'nocap', 'image': jpeg},
    {'key': 'noimg', 'caption': 'caption without image', 'json': {'x': 1}},
  ]
  good = [
    _good(f'g{i}', seed=i, fmt=f, ext=e)
    for i, (f, e) in enumerate(
      [
        ('JPEG', 'jpg'),
        ('PNG', 'png'),
        ('JPEG', 'jpeg'),
        ('WEBP', 'webp'),
        ('JPEG', 'jpg'),
        ('PNG', 'png'),
      ]
    )
  ]
  write_webdataset(str(tmp_path / 'bad.tar'), bad)
  write_webdataset(str(tmp_path / 'good.tar'), good)
  per_epoch = _expected(
    corrupt_image=3,
    not_an_image=1,
    empty_caption=2,
    invalid_utf8=1,
    missing_caption=1,
    missing_image=1,
  )
  cfg = _cfg([f'webdataset:{tmp_path}/{{bad,good}}.tar'], shards_per_group=1)
  it = create_train_dataset(
    cfg, global_batch_size=len(good), process_index=0, process_count=1, seed=3
  )
  want = sorted(f'good.tar/g{i}' for i in range(len(good)))
  yielded = 0
  for j in range(1, 5):
    b = next(it)
    yielded += len(good)
    assert _keys(b) == want
    _check_multiple(it.skip_counts(), per_epoch, j)
    # Exact accounting: every stream index up to the last one is a yielded or a skipped sample.
    assert sum(it.skip_counts().values()) == it.get_state()['next_index'] - yielded
  assert b['image'].shape == (len(good), SMALL, SMALL, 3) and b['image'].dtype == np.float32
  assert b['text'].shape == (len(good), 77) and b['prompts'].shape == (len(good), 3, 77)


def test_bad_shards_counted_exactly(tmp_path):
  """Truncated tar, zero-length shard and a non-tar file next to a good shard (1 shard/group)."""
  samples = [_good(f't{i}', seed=10 + i) for i in range(4)]
  write_webdataset(str(tmp_path / 'trunc.tar'), samples)
  raw = (tmp_path / 'trunc.tar').read_bytes()
  # Cut inside the image of the 3rd sample (members: jpg, txt per sample): t0 and t1 survive.
  import tarfile

  with tarfile.open(tmp_path / 'trunc.tar') as tf_:
    m = [x for x in tf_.getmembers() if x.name == 't2.jpg'][0]
  (tmp_path / 'trunc.tar').write_bytes(raw[: m.offset_data + 10])
  (tmp_path / 'zero.tar').write_bytes(b'')
  (tmp_path / 'junk.tar').write_bytes(b'this is not a tar file\n' * 100)
  good = [_good(f'g{i}', seed=i) for i in range(3)]
  write_webdataset(str(tmp_path / 'good.tar'), good)
  cfg = _cfg([f'webdataset:{tmp_path}/*.tar'], shards_per_group=1)
  it = create_train_dataset(cfg, global_batch_size=5, process_index=0, process_count=1, seed=0)
  want = sorted(['trunc.tar/t0', 'trunc.tar/t1'] + [f'good.tar/g{i}' for i in range(3)])
  # 5 good samples per epoch in two shards: over 4 batches (= 4 epochs) every good sample
  # appears exactly 4 times and the shard events are counted 3 or 4 times.
  seen = []
  for _ in range(4):
    seen += _keys(next(it))
  assert sorted(set(seen)) == want and all(seen.count(k) == 4 for k in want)
  counts = it.skip_counts()
  for r in ('truncated_shard', 'empty_shard', 'corrupt_shard'):
    assert counts[f'data/skipped/{r}'] in (3, 4), counts
  assert sum(counts.values()) == it.get_state()['next_index'] - 20


def test_bad_records_tfrecord_counted_exactly(tmp_path):
  jpeg = image_bytes(5)
  bad = [
    {'key': 'nocap', 'image': jpeg},
    {'key': 'noimg', 'caption': 'no image here'},
    {'key': 'cut', 'image': jpeg[:100], 'caption': 'truncated image'},
    {'key': 'empty', 'image': jpeg, 'caption': ''},
    b'\x08\x96\x01 definitely not an Example proto',
  ]
  good = [_good(f'r{i}', seed=20 + i) for i in range(4)]
  write_tfrecord(str(tmp_path / 'a-bad.tfrecord'), bad)
  write_tfrecord(str(tmp_path / 'b-good.tfrecord'), good)
  write_tfrecord(str(tmp_path / 'c-trunc.tfrecord'), [_good('x0', 30), _good('x1', 31)])
  raw = (tmp_path / 'c-trunc.tfrecord').read_bytes()
  (tmp_path / 'c-trunc.tfrecord').write_bytes(raw[:-30])  # cuts the 2nd record
  per_epoch = _expected(
    missing_caption=1,
    missing_image=1,
    corrupt_image=1,
    empty_caption=1,
    corrupt_record=1,
    truncated_shard=1,
  )
  cfg = _cfg([f'tfrecord:{tmp_path}/*.tfrecord'], shards_per_group=3)  # one group per epoch
  it = create_train_dataset(cfg, global_batch_size=5, process_index=0, process_count=1, seed=1)
  want = sorted([f'b-good.tfrecord/{i}' for i in range(4)] + ['c-trunc.tfrecord/0'])
  for j in range(1, 4):
    b = next(it)
    # TFRecord keys are record indices within the file.
    assert _keys(b) == want
    counts = it.skip_counts()
    for r, n in per_epoch.items():
      assert counts[r] in ((j - 1) * n, j * n) if n else counts[r] == 0, (r, counts)
    assert sum(counts.values()) == it.get_state()['next_index'] - 5 * j


def _wds_dir(tmp_path, n_shards=4, per_shard=6):
  for s in range(n_shards):
    write_webdataset(
      str(tmp_path / f'{s:05d}.tar'),
      [_good(f's{s}k{i}', seed=100 * s + i) for i in range(per_shard)],
    )
  return f'webdataset:{tmp_path}/{{00000..{n_shards - 1:05d}}}.tar'


@pytest.mark.slow
def test_determinism_and_seed(tmp_path):
  src = _wds_dir(tmp_path)
  cfg = _cfg([src, 'synthetic@0.5'], shards_per_group=2)

  def first(seed, n=2):
    it = create_train_dataset(cfg, global_batch_size=8, process_index=0, process_count=1, seed=seed)
    return [next(it) for _ in range(n)]

  a, b, c = first(0), first(0), first(1)
  for x, y in zip(a, b):
    for k in ('image', 'text', 'prompts'):
      np.testing.assert_array_equal(x[k], y[k])
    assert list(x['meta/key']) == list(y['meta/key'])
  assert not np.array_equal(a[0]['image'], c[0]['image'])


def test_processes_read_disjoint_files(tmp_path):
  src = _wds_dir(tmp_path, n_shards=4, per_shard=3)
  cfg = _cfg([src], shards_per_group=2)
  shards = []
  for p in range(2):
    it = create_train_dataset(cfg, global_batch_size=8, process_index=p, process_count=2, seed=0)
    got = set()
    for _ in range(3):
      got |= set(next(it)['meta/shard'])
    shards.append({os.path.basename(s) for s in got})
  assert shards[0] and shards[1] and not shards[0] & shards[1]
  assert shards[0] | shards[1] == {f'{i:05d}.tar' for i in range(4)}
  with pytest.raises(ValueError, match='at least one file'):
    create_train_dataset(cfg, global_batch_size=10, process_index=0, process_count=5)


@pytest.mark.slow
def test_resume_yields_next_unseen_batches(tmp_path):
  src = _wds_dir(tmp_path, n_shards=3, per_shard=5)
  # A bad sample so that skip counts must be restored too.
  write_webdataset(
    str(tmp_path / 'zz.tar'), [{'key': 'bad', 'image': b'nope', 'caption': 'x'}, _good('zz1')]
  )
  cfg = _cfg(
    [src, f'webdataset:{tmp_path}/zz.tar@0.3', 'synthetic@0.3'], shards_per_group=2, host_prefetch=2
  )
  it = create_train_dataset(cfg, global_batch_size=6, process_index=0, process_count=1, seed=7)
  for _ in range(3):
    next(it)
  state = json.dumps(it.get_state())
  counts = it.skip_counts()
  expected = [next(it) for _ in range(4)]
  it.close()

  it2 = create_train_dataset(cfg, global_batch_size=6, process_index=0, process_count=1, seed=7)
  it2.set_state(state)
  assert it2.skip_counts() == counts
  for want in expected:
    got = next(it2)
    for k in ('image', 'text', 'prompts', 'meta/index'):
      np.testing.assert_array_equal(got[k], want[k])
  assert it2.get_state() == it.get_state()
  assert it2.skip_counts() == it.skip_counts()
  it2.close()

  other = _cfg([src], shards_per_group=2)
  it3 = create_train_dataset(other, global_batch_size=6, process_index=0, process_count=1, seed=7)
  with pytest.raises(ValueError, match='does not match'):
    it3.set_state(state)


def test_missing_paths_raise_at_construction(tmp_path):
  _wds_dir(tmp_path, n_shards=2, per_shard=1)
  cases = [
    (f'webdataset:{tmp_path}/nope.tar', 'does not exist'),
    (f'webdataset:{tmp_path}/*.tgz', 'matches no file'),
    (f'webdataset:{tmp_path}/{{00000..00002}}.tar', '00002.tar'),
    (f'tfrecord:{tmp_path}/missing_dir/*.tfrecord', 'matches no file'),
    (f'webdataset:{tmp_path}', 'directory'),
  ]
  for src, msg in cases:
    with pytest.raises(FileNotFoundError, match=msg):
      create_train_dataset(_cfg([src]), global_batch_size=2)
  with pytest.raises(FileNotFoundError, match='not prepared|cannot be loaded'):
    cfg = _cfg(['tfds:coco_captions:train'])
    cfg.tfds_data_dir = str(tmp_path / 'no_tfds')
    create_train_dataset(cfg, global_batch_size=2)
  for bad in ['http:/x', 'webdataset:', 'tfds:onlyname', 'synthetic:3']:
    with pytest.raises(ValueError):
      create_train_dataset(_cfg([bad]), global_batch_size=2)


@pytest.mark.slow
def test_default_resolution_and_normalisation():
  cfg = _cfg(['synthetic'], image_size=224, online_tagging=True)
  it = create_train_dataset(cfg, global_batch_size=4, process_index=0, process_count=1, seed=0)
  b = next(it)
  assert b['image'].shape == (4, 224, 224, 3) and b['image'].dtype == np.float32
  assert b['text'].dtype == np.int32 and b['prompts'].dtype == np.int32
  assert -3.0 < float(b['image'].mean()) < 3.0 and float(b['image'].std()) > 0.1
  # Synthetic captions always contain nouns, so prompt 0 is a template, not the caption.
  assert all(not np.array_equal(b['prompts'][i, 0], b['text'][i]) for i in range(4))
  assert set(it.skip_counts()) == {f'data/skipped/{r}' for r in skips.REASONS}
