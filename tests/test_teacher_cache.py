"""ZeroSeg's data side: centre crop, image-only sources (webdataset, folder, synthetic), the
teacher cache tool (skips, resume, multi-process) and the join in the training pipeline."""

import filecmp
import io
import json
import os
import tarfile

import jax
import numpy as np
import pytest
import tensorflow as tf

from groupvit_jax import teacher_views
from groupvit_jax.checkpoints import store
from groupvit_jax.models.clip import CLIPConfig, clip_vision_config
from groupvit_jax.models.config import TextEncoderConfig
from input_pipeline import (
  augment,
  create_train_dataset,
  default_data_config,
  prepare_teacher,
  skips,
  sources,
  teacher_cache,
)
from input_pipeline.pipeline import _decode_chunk_fn
from input_pipeline.testing import image_bytes, write_tfrecord, write_webdataset

SMALL = 32


def _tiny_clip() -> CLIPConfig:
  return CLIPConfig(
    vision=clip_vision_config(image_size=32, patch_size=16, width=32, depth=1, num_heads=2),
    text=TextEncoderConfig(width=32, num_heads=2, num_layers=1, context_length=16),
    embed_dim=16,
  )


@pytest.fixture(scope='module')
def clip_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp('teacher') / 'clip')
  store.save_model(d, _tiny_clip(), store.init_model(_tiny_clip(), jax.random.key(0)))
  return d


def _shards(root, n_shards=2, per_shard=3, bad=True):
  """Image-only webdataset shards; shard 0 also holds a corrupt JPEG and an HTML page."""
  os.makedirs(root, exist_ok=True)
  for s in range(n_shards):
    samples = [
      {'key': f's{s}_{i}', 'image': image_bytes(10 * s + i, size=(40 + 8 * i, 56))}
      for i in range(per_shard)
    ]
    if bad and s == 0:
      jpeg = image_bytes(99)
      samples.insert(1, {'key': 'cut', 'image': jpeg[: len(jpeg) // 2]})
      samples.append({'key': 'html', 'image': b'<html>404</html>'})
    write_webdataset(os.path.join(root, f'{s:05d}.tar'), samples)
  return f'webdataset:{root}/{{00000..{n_shards - 1:05d}}}.tar'


def _cfg(train, **kw):
  cfg = default_data_config()
  cfg.train = tuple(train)
  cfg.image_size = SMALL
  cfg.captions = False
  cfg.crop = 'center'
  cfg.hflip_prob = 0.0
  cfg.randaugment = ''
  cfg.random_erasing.prob = 0.0
  cfg.debug_metadata = True
  cfg.host_prefetch = 0
  for k, v in kw.items():
    setattr(cfg, k, v)
  return cfg


def _prepare(clip, src, out, **kw):
  kw.setdefault('image_size', SMALL)
  kw.setdefault('batch_size', 2)
  kw.setdefault('chunk_size', 3)
  return prepare_teacher.prepare(clip, [src] if isinstance(src, str) else src, out, **kw)


def _cache_files(d):
  return sorted(n for n in os.listdir(d) if '.tmp-' not in n)


def test_center_crop_shape_and_rule():
  data = image_bytes(3, size=(40, 64), fmt='PNG')
  out = augment.decode_and_center_crop(tf.constant(data), 24)
  assert out.shape == (24, 24, 3) and out.dtype == tf.uint8
  full = tf.io.decode_image(data, channels=3)
  want = tf.image.resize(full[:, 12:52], [24, 24], 'bilinear', antialias=True)
  want = tf.cast(tf.clip_by_value(tf.round(want), 0, 255), tf.uint8)
  np.testing.assert_array_equal(out.numpy(), want.numpy())
  jpeg = augment.decode_and_center_crop(tf.constant(image_bytes(3, size=(64, 40))), 24)
  assert jpeg.shape == (24, 24, 3)


def test_crop_config_validated(tmp_path):
  cfg = _cfg(['synthetic'], crop='middle')
  with pytest.raises(ValueError, match='crop'):
    create_train_dataset(cfg, global_batch_size=2)


def test_image_only_webdataset_and_folder(tmp_path):
  src = _shards(str(tmp_path / 'wds'), bad=False)
  it = create_train_dataset(_cfg([src]), global_batch_size=6)
  b = next(it)
  assert set(b) == {'image', 'meta/key', 'meta/shard', 'meta/index'}
  assert b['image'].shape == (6, SMALL, SMALL, 3) and b['image'].dtype == np.float32
  assert sorted(b['meta/key']) == sorted(f's{s}_{i}' for s in range(2) for i in range(3))
  assert not any(it.skip_counts().values())  # no caption member is not a skip

  root = tmp_path / 'imgs'
  (root / 'a' / 'b').mkdir(parents=True)
  (root / 'a' / 'x.jpg').write_bytes(image_bytes(1))
  (root / 'a' / 'b' / 'y.PNG').write_bytes(image_bytes(2, fmt='PNG'))
  (root / 'z.jpeg').write_bytes(image_bytes(3))
  (root / 'notes.txt').write_text('not an image file')
  assert sources.list_folder(str(root), ('jpg', 'jpeg', 'png')) == [
    'a/b/y.PNG',
    'a/x.jpg',
    'z.jpeg',
  ]
  with pytest.raises(ValueError, match='captions'):
    create_train_dataset(_cfg([f'folder:{root}'], captions=True), global_batch_size=3)
  it = create_train_dataset(_cfg([f'folder:{root}']), global_batch_size=3)
  b = next(it)
  assert set(b) == {'image', 'meta/key', 'meta/shard', 'meta/index'}
  assert sorted(b['meta/key']) == ['a/b/y', 'a/x', 'z']
  state = it.get_state()
  nxt = next(it)
  it2 = create_train_dataset(_cfg([f'folder:{root}']), global_batch_size=3)
  it2.set_state(state)
  b2 = next(it2)
  np.testing.assert_array_equal(nxt['image'], b2['image'])
  assert list(nxt['meta/key']) == list(b2['meta/key'])
  with pytest.raises(FileNotFoundError):
    create_train_dataset(_cfg([f'folder:{tmp_path}/empty_nothing']), global_batch_size=3)


def test_finite_synthetic_cycles():
  cfg = _cfg(['synthetic'])
  cfg.synthetic.image_size = 32
  cfg.synthetic.num_train_examples = 3
  it = create_train_dataset(cfg, global_batch_size=4)
  b1, b2 = next(it), next(it)
  assert set(b1) == {'image', 'meta/key', 'meta/shard', 'meta/index'}
  keys = list(b1['meta/key']) + list(b2['meta/key'])
  assert keys == ['0', '1', '2', '0', '1', '2', '0', '1']
  # centre crop, no augmentation: a revisited id gives the same pixels
  np.testing.assert_array_equal(b1['image'][0], b1['image'][3])
  assert it.get_state()['fingerprint']['synthetic']['num_train_examples'] == 3
  infinite = create_train_dataset(_cfg(['synthetic']), global_batch_size=2)
  assert 'num_train_examples' not in infinite.get_state()['fingerprint']['synthetic']


def test_tool_skips_resume_and_processes(tmp_path, clip_dir):
  src = _shards(str(tmp_path / 'wds'))  # 8 samples: 6 good, 1 corrupt, 1 not an image
  full = str(tmp_path / 'full')
  s = _prepare(clip_dir, src, full, log=lambda m: None)
  assert s['num_chunks'] == 3 and s['chunks_written'] == 3 and s['images'] == 6
  assert s['skipped'] == {'corrupt_image': 1, 'not_an_image': 1}
  cache = teacher_cache.TeacherCache(full)
  assert cache.complete and len(cache) == 6 and cache.stats['samples'] == 8
  assert cache.stats['skipped'] == {'corrupt_image': 1, 'not_an_image': 1}
  assert '00000.tar/s0_0' in cache.index and '00000.tar/cut' not in cache.index
  meta = cache.meta
  assert meta['grids'] == [1, 2, 3, 4] and meta['embed_dim'] == 16 and meta['dtype'] == 'float16'
  assert meta['sources'][0]['files'] == ['00000.tar', '00001.tar']

  # killed after the first commit (plus a stray temporary file), then restarted
  resumed = str(tmp_path / 'resumed')
  s1 = _prepare(clip_dir, src, resumed, max_chunks=1, log=lambda m: None)
  assert s1['chunks_written'] == 1 and s1['num_chunks'] is None
  assert not teacher_cache.TeacherCache(resumed).complete
  with open(os.path.join(resumed, 'chunk-000001.npy.tmp-12345'), 'wb') as f:
    f.write(b'half a chunk')
  s2 = _prepare(clip_dir, src, resumed, log=lambda m: None)
  assert s2['chunks_written'] == 2
  names = _cache_files(full)
  assert names == _cache_files(resumed)
  for n in names:
    assert filecmp.cmp(os.path.join(full, n), os.path.join(resumed, n), shallow=False), n

  # two processes, one after the other
  two = str(tmp_path / 'two')
  for p in (1, 0):
    _prepare(clip_dir, src, two, process_id=p, num_processes=2, log=lambda m: None)
  assert _cache_files(two) == names
  for n in names:
    assert filecmp.cmp(os.path.join(full, n), os.path.join(two, n), shallow=False), n

  # a restart with other arguments names the difference
  with pytest.raises(ValueError, match='image_size'):
    _prepare(clip_dir, src, full, image_size=48, log=lambda m: None)


def test_cache_check_errors(tmp_path, clip_dir):
  _shards(str(tmp_path / 'wds'), bad=False)
  src = f'webdataset:{tmp_path}/wds/*.tar'
  out = str(tmp_path / 'cache')
  _prepare(clip_dir, src, out, chunk_size=4, log=lambda m: None)
  other = _shards(str(tmp_path / 'other'), n_shards=3, bad=False)
  with pytest.raises(ValueError, match='sources'):
    create_train_dataset(_cfg([other], teacher_cache=out), global_batch_size=2)
  with pytest.raises(ValueError, match='image_size'):
    create_train_dataset(_cfg([src], teacher_cache=out, image_size=48), global_batch_size=2)
  # a new shard under the same pattern: the file list differs
  extra = str(tmp_path / 'wds' / '00002.tar')
  write_webdataset(extra, [{'key': 'n', 'image': image_bytes(5)}])
  with pytest.raises(ValueError, match=r'files of .*new: \[.00002.tar.\]'):
    create_train_dataset(_cfg([src], teacher_cache=out), global_batch_size=2)
  os.remove(extra)
  fp = prepare_teacher.teacher_fingerprint(clip_dir, store.load_model(clip_dir)[1])
  cache = teacher_cache.TeacherCache(out)
  cache.check([src], SMALL, (1, 2), fp)
  with pytest.raises(ValueError, match='teacher'):
    cache.check([src], SMALL, (1, 2), {**fp, 'params_sha256': '0'})
  os.remove(os.path.join(out, 'chunk-000001.json'))
  with pytest.raises(ValueError, match='incomplete'):
    create_train_dataset(_cfg([src], teacher_cache=out), global_batch_size=2)
  it = create_train_dataset(
    _cfg([src], teacher_cache=out, teacher_allow_incomplete=True), global_batch_size=2
  )
  assert it.teacher.stats['missing_chunks'] == 1


def test_join_missing_teacher_and_values(tmp_path, clip_dir):
  """A shard of samples without teacher (a corrupt JPEG the tool skipped, an HTML page, one good
  image removed from the cache) and a shard of 5 good ones, one shard per group: each batch of 5
  is the good shard, and after batch j the counts are (j - 1) or j times the per-epoch ones."""
  jpeg = image_bytes(99)
  write_webdataset(
    str(tmp_path / 'bad.tar'),
    [
      {'key': 'cut', 'image': jpeg[: len(jpeg) // 2]},
      {'key': 'html', 'image': b'<html>404</html>'},
      {'key': 'dropped', 'image': image_bytes(98)},
    ],
  )
  write_webdataset(
    str(tmp_path / 'good.tar'),
    [{'key': f'g{i}', 'image': image_bytes(i, size=(40 + 8 * i, 56))} for i in range(5)],
  )
  src = f'webdataset:{tmp_path}/{{bad,good}}.tar'
  out = str(tmp_path / 'cache')
  _prepare(clip_dir, src, out, log=lambda m: None)
  # drop one sample from the cache (rewrite its chunk without it)
  path = os.path.join(out, 'chunk-000000.json')
  with open(path) as f:
    rec = json.load(f)
  assert rec['keys'] == ['bad.tar/dropped'] and rec['skipped'] == {
    'corrupt_image': 1,
    'not_an_image': 1,
  }
  npy = np.load(os.path.join(out, 'chunk-000000.npy'))
  teacher_cache.write_chunk(out, 0, npy[:0], [], rec['num_samples'], rec['skipped'])
  cache = teacher_cache.TeacherCache(out)
  cfg = _cfg([src], teacher_cache=out, shards_per_group=1, teacher_grids=(1, 3))
  it = create_train_dataset(cfg, global_batch_size=5)
  for j in (1, 2, 3):
    b = next(it)
    assert b['teacher'].shape == (5, 10, 16) and b['teacher'].dtype == np.float32
    assert b['image'].shape == (5, SMALL, SMALL, 3)
    assert sorted(b['meta/key']) == [f'g{i}' for i in range(5)]
    counts = {k: v for k, v in it.skip_counts().items() if v}
    m = counts.get('data/skipped/not_an_image', 0)
    assert m in (j - 1, j)
    assert counts == (
      {'data/skipped/missing_teacher': 2 * m, 'data/skipped/not_an_image': m} if m else {}
    )
  keys = [f'{os.path.basename(s)}/{k}' for s, k in zip(b['meta/shard'], b['meta/key'])]

  # the teacher rows are the embeddings of the pipeline's own crops
  decode = _decode_chunk_fn(SMALL, (0.08, 1.0), (0.75, 4.0 / 3.0), 'center')
  shard_bytes = {}
  crops = []
  for shard, key in zip(b['meta/shard'], b['meta/key']):
    if shard not in shard_bytes:
      tab = {}
      with tarfile.open(shard) as t:
        for m in t.getmembers():
          tab[m.name.split('.')[0]] = t.extractfile(m).read()
      shard_bytes[shard] = tab
    img, ok = decode(
      tf.constant([shard_bytes[shard][key]]), tf.zeros([1, 2], tf.int32), tf.constant([True])
    )
    assert bool(ok.numpy()[0])
    crops.append(img.numpy()[0])
  crops = np.stack(crops).astype(np.float32)
  # image is normalised (no augmentation): undo it to compare with the crop exactly
  mean, std = np.array(cfg.mean) * 255, np.array(cfg.std) * 255
  np.testing.assert_allclose(b['image'] * std + mean, crops, atol=1e-3)
  clip_cfg, variables = store.load_model(clip_dir)
  want = np.asarray(
    teacher_views.teacher_embeddings(clip_cfg, variables['params'], crops, (1, 2, 3, 4))
  )
  idx = teacher_views.view_indices((1, 3))
  np.testing.assert_array_equal(idx, [0] + list(range(5, 14)))
  np.testing.assert_allclose(b['teacher'], want[:, idx], atol=2e-3)
  np.testing.assert_allclose(np.linalg.norm(b['teacher'], axis=-1), 1.0, atol=3e-3)
  rows = cache.lookup(keys + ['nope'])
  assert rows[-1] == -1 and (rows[:-1] >= 0).all()
  np.testing.assert_array_equal(cache.gather(rows[:-1], idx), b['teacher'])


def test_synthetic_cache_join(tmp_path, clip_dir):
  out = str(tmp_path / 'cache')
  _prepare(
    clip_dir,
    'synthetic',
    out,
    num_samples=5,
    synthetic={'image_size': 32},
    seed=7,
    chunk_size=4,
    log=lambda m: None,
  )
  cfg = _cfg(['synthetic'], teacher_cache=out, seed=7)
  cfg.synthetic.image_size = 32
  with pytest.raises(ValueError, match='synthetic'):
    create_train_dataset(cfg, global_batch_size=5)  # num_train_examples differs
  cfg.synthetic.num_train_examples = 5
  it = create_train_dataset(cfg, global_batch_size=5)
  b = next(it)
  assert list(b['meta/key']) == ['0', '1', '2', '3', '4']
  assert b['teacher'].shape == (5, 30, 16)
  mean, std = np.array(cfg.mean) * 255, np.array(cfg.std) * 255
  crops = np.round(b['image'] * std + mean).astype(np.float32)
  clip_cfg, variables = store.load_model(clip_dir)
  want = np.asarray(teacher_views.teacher_embeddings(clip_cfg, variables['params'], crops))
  np.testing.assert_allclose(b['teacher'], want, atol=2e-3)
  assert not any(it.skip_counts().values())
  cfg.seed = 8
  with pytest.raises(ValueError, match='seed'):
    create_train_dataset(cfg, global_batch_size=5)


def test_reasons_appended_last():
  assert skips.REASONS[-1] == 'missing_teacher'
  assert skips.code('empty_shard') == 10 and skips.code('missing_teacher') == 11


def test_image_only_tfrecord_and_tfds_with_cache(tmp_path, clip_dir):
  """TFRecords without a caption feature; a TFDS dataset without captions (``tfds_caption_key``
  None) through the tool and the join: keys are '<file basename>/<record index>'."""
  write_tfrecord(
    str(tmp_path / 'a.tfrecord'), [{'key': f'k{i}', 'image': image_bytes(i)} for i in range(3)]
  )
  it = create_train_dataset(_cfg([f'tfrecord:{tmp_path}/a.tfrecord']), global_batch_size=3)
  b = next(it)
  assert set(b) == {'image', 'meta/key', 'meta/shard', 'meta/index'}
  assert sorted(b['meta/key']) == ['0', '1', '2'] and not any(it.skip_counts().values())

  tfds = pytest.importorskip('tensorflow_datasets')
  from PIL import Image

  feats = tfds.features.FeaturesDict(
    {
      'image': tfds.features.Image(shape=(None, None, 3)),
      'label': tfds.features.ClassLabel(num_classes=3),
    }
  )
  examples = [
    (i, {'image': np.asarray(Image.open(io.BytesIO(image_bytes(i)))), 'label': i % 3})
    for i in range(4)
  ]
  data_dir = str(tmp_path / 'tfds')
  tfds.dataset_builders.store_as_tfds_dataset(
    name='tiny_images_test',
    version='1.0.0',
    features=feats,
    split_datasets={'train': examples},
    data_dir=data_dir,
  )
  src = 'tfds:tiny_images_test:train'
  out = str(tmp_path / 'cache')
  s = _prepare(clip_dir, src, out, tfds_data_dir=data_dir, log=lambda m: None)
  assert s['images'] == 4 and not s['skipped']
  cache = teacher_cache.TeacherCache(out)
  assert all(k.split('/')[1] in {'0', '1', '2', '3'} for k in cache.keys)
  cfg = _cfg([src], tfds_data_dir=data_dir, tfds_caption_key=None, teacher_cache=out)
  it = create_train_dataset(cfg, global_batch_size=4)
  b = next(it)
  assert b['teacher'].shape == (4, 30, 16) and 'text' not in b
  assert not any(it.skip_counts().values())
  keys = [f'{os.path.basename(s)}/{k}' for s, k in zip(b['meta/shard'], b['meta/key'])]
  np.testing.assert_array_equal(cache.gather(cache.lookup(keys)), b['teacher'])
