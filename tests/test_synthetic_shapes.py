"""Tests of input_pipeline.synthetic_shapes and evaluation.synthetic."""

import dataclasses
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from evaluation import metrics as M
from evaluation import synthetic as es
from input_pipeline import synthetic_shapes as ss

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ss.SyntheticConfig()

# Every category word (singular and plural), longest first so that "plus sign" wins over "plus".
_WORD_TO_CAT = {w: i + 1 for i, c in enumerate(ss.CATEGORIES) for w in c.words}
_ALTERNATIVES = '|'.join(re.escape(w) for w in sorted(_WORD_TO_CAT, key=len, reverse=True))
_CAT_RE = re.compile(r'(?<![\w-])(' + _ALTERNATIVES + r')(?![\w-])')


def _mentioned_categories(caption):
  """Category ids named in a caption (any case, any synonym, singular or plural)."""
  return {_WORD_TO_CAT[m] for m in _CAT_RE.findall(caption.lower())}


def _fingerprint(config, seed, indices, split='train'):
  out = []
  for i in indices:
    ex = ss.generate(config, seed, i, split)
    out.append((ex['image'].tobytes(), ex['mask'].tobytes(), ex['caption']))
  return out


# ------------------------------------------------------------------------------------------- config


def test_config_from_dict_rejects_unknown_keys_and_round_trips():
  with pytest.raises(
    ValueError, match=r"unknown SyntheticConfig key\(s\): 'image_sise'.*valid keys"
  ):
    ss.SyntheticConfig.from_dict({'image_sise': 64})
  cfg = ss.SyntheticConfig.from_dict(
    {
      'image_size': 96,
      'size_range': [0.1, 0.2],
      'background_types': ['flat', 'stripes'],
      'caption_styles': {'sentence': 1.0, 'tags': 0.5},
      'num_categories': 12,
    }
  )
  assert cfg.image_size == 96 and cfg.size_range == (0.1, 0.2)
  assert cfg.background_types == ('flat', 'stripes')
  assert cfg.caption_styles == (('sentence', 1.0), ('tags', 0.5))
  assert ss.SyntheticConfig.from_dict(cfg.to_dict()) == cfg
  assert ss.SyntheticConfig.from_dict(None) == DEFAULT
  hash(cfg)  # frozen and hashable


@pytest.mark.parametrize(
  'bad',
  [
    {'num_categories': 7},
    {'num_categories': 13},
    {'min_objects': 3, 'max_objects': 2},
    {'size_range': (0.3, 0.2)},
    {'size_range': (0.1,)},
    {'max_occlusion': 1.0},
    {'background_types': ('plaid',)},
    {'caption_styles': {'poem': 1.0}},
    {'case_styles': {'lower': 0.0}},
    {'p_omit_object_in_caption': 1.5},
    {'image_size': 8},
    {'object_polarity': 'darker'},
    {'rotation': 'False'},
    {'max_objects': 3.0},
  ],
)
def test_config_rejects_invalid_values(bad):
  with pytest.raises(ValueError):
    ss.SyntheticConfig(**bad)


def test_categories_are_at_least_eight_shapes_with_distinct_names():
  assert len(ss.CATEGORIES) >= 8
  assert ss.category_names() == [c.name for c in ss.CATEGORIES[:8]]
  names = ss.category_names(ss.SyntheticConfig(num_categories=len(ss.CATEGORIES)))
  assert len(names) == len(set(names)) == len(ss.CATEGORIES)
  words = [w for c in ss.CATEGORIES for w in c.words]
  assert len(words) == len(set(words)), 'a synonym is shared by two categories'
  # Every category of a 12-class config is drawn.
  cfg = ss.SyntheticConfig(num_categories=len(ss.CATEGORIES))
  seen = set()
  for i in range(150):
    seen.update(ss.generate(cfg, 0, i)['categories'])
  assert seen == set(range(1, len(ss.CATEGORIES) + 1))


# -------------------------------------------------------------------------------------- determinism


def test_generate_is_deterministic_and_has_documented_types():
  ex = ss.generate(DEFAULT, 3, 11)
  assert ex['image'].shape == (64, 64, 3) and ex['image'].dtype == np.uint8
  assert ex['mask'].shape == (64, 64) and ex['mask'].dtype == np.uint8
  assert isinstance(ex['caption'], str) and ex['caption']
  assert all(1 <= c <= DEFAULT.num_categories for c in ex['categories'])
  assert _fingerprint(DEFAULT, 3, range(20)) == _fingerprint(DEFAULT, 3, range(20))
  # Independent of the order of generation.
  assert _fingerprint(DEFAULT, 3, [7]) == _fingerprint(DEFAULT, 3, range(8))[7:]


def test_generate_is_deterministic_across_processes():
  code = (
    'import hashlib, sys; from input_pipeline import synthetic_shapes as ss\n'
    'h = hashlib.sha256()\n'
    'for i in range(10):\n'
    "    e = ss.generate(None, 5, i, 'val'); h.update(e['image'].tobytes());"
    " h.update(e['mask'].tobytes()); h.update(e['caption'].encode())\n"
    'print(h.hexdigest())'
  )
  env = dict(os.environ, PYTHONHASHSEED='12345')
  out = subprocess.run(
    [sys.executable, '-c', code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True
  ).stdout.strip()
  import hashlib

  h = hashlib.sha256()
  for i in range(10):
    e = ss.generate(None, 5, i, 'val')
    h.update(e['image'].tobytes())
    h.update(e['mask'].tobytes())
    h.update(e['caption'].encode())
  assert out == h.hexdigest()


def test_seeds_splits_and_indices_give_different_examples():
  a = _fingerprint(DEFAULT, 0, range(10))
  b = _fingerprint(DEFAULT, 1, range(10))
  v = _fingerprint(DEFAULT, 0, range(10), 'val')
  for x, y, z in zip(a, b, v):
    assert x[0] != y[0] and x[0] != z[0] and y[0] != z[0]
  assert len({x[0] for x in a}) == 10
  with pytest.raises(ValueError):
    ss.generate(DEFAULT, 0, 0, 'test')
  with pytest.raises(ValueError):
    ss.generate(DEFAULT, -1, 0)


def test_caption_knobs_do_not_change_images():
  quiet = dataclasses.replace(DEFAULT, p_distractor_words=0.0, caption_styles=(('tags', 1.0),))
  for i in range(5):
    a, b = ss.generate(DEFAULT, 2, i), ss.generate(quiet, 2, i)
    assert np.array_equal(a['image'], b['image']) and np.array_equal(a['mask'], b['mask'])


def test_scenes_without_objects_name_their_background():
  # Objects too small for min_visible_pixels are dropped; a scene left without any is captioned
  # by its background alone.
  tiny = dataclasses.replace(DEFAULT, size_range=(0.12, 0.15), min_visible_pixels=400)
  for i in range(5):
    ex, scene = ss.generate(tiny, 3, i), ss.render_scene(tiny, 3, i)
    assert ex['categories'] == [] and ex['mentioned'] == [] and not ex['mask'].any()
    words = ss._BACKGROUND_WORDS[scene.background]
    assert any(w in ex['caption'].lower() for w in words), (ex['caption'], scene.background)
    assert not _mentioned_categories(ex['caption'])


# ------------------------------------------------------------------------------------------- images


def test_colour_is_independent_of_category():
  from scipy.stats import chi2_contingency

  k, num_colours = DEFAULT.num_categories, len(ss.PALETTE)
  table = np.zeros((k, num_colours), np.int64)
  colour_index = {p[0]: i for i, p in enumerate(ss.PALETTE)}
  rgb_sum = np.zeros((k, 3))
  n_objects = 0
  i = 0
  while n_objects < 2400:
    scene = ss.render_scene(DEFAULT, 7, i)
    for o in scene.objects:
      table[o.category - 1, colour_index[o.colour]] += 1
      rgb_sum[o.category - 1] += o.rgb
      n_objects += 1
    i += 1
  assert table.sum(axis=1).min() > 200  # every category is well represented
  p_value = chi2_contingency(table)[1]
  assert p_value > 1e-3, f'colour depends on category (chi-square p={p_value:.2e})\n{table}'
  # Each category comes in (almost) every colour, and its mean colour is close to the global mean.
  assert ((table > 0).sum(axis=1) >= num_colours - 1).all()
  mean_rgb = rgb_sum / table.sum(axis=1, keepdims=True)
  assert np.abs(mean_rgb - mean_rgb.mean(axis=0)).max() < 20, mean_rgb


def test_backgrounds_use_every_texture_type():
  kinds = {ss.render_scene(DEFAULT, 0, i).background for i in range(120)}
  assert kinds == set(ss.BACKGROUND_TYPES)


def _cover_stack(scene):
  """Per-pixel paint layer on top (from the objects' full masks), -1 where no object covers it."""
  size = scene.image.shape[0]
  top = np.full((size, size), -1, np.int64)
  for o in scene.objects:
    y0, x0, h, w = o.box
    region = top[y0 : y0 + h, x0 : x0 + w]
    region[o.full_mask] = o.layer
  return top


def test_masks_follow_visibility_and_occlusion_order():
  occluded_pixels = 0
  for i in range(150):
    scene = ss.render_scene(DEFAULT, 4, i, 'val')
    top = _cover_stack(scene)
    # Each pixel is labelled with the highest object covering at least half of it.
    np.testing.assert_array_equal(scene.instance_mask.astype(np.int64), top + 1)
    lut = np.array([0] + [o.category for o in scene.objects])
    np.testing.assert_array_equal(scene.mask, lut[scene.instance_mask])
    for o in scene.objects:
      full_area = int(o.full_mask.sum())
      visible = int((scene.instance_mask == o.layer + 1).sum())
      assert visible == o.visible_pixels >= DEFAULT.min_visible_pixels
      assert visible >= (1 - DEFAULT.max_occlusion) * full_area - 1e-9
      occluded_pixels += full_area - visible
  assert occluded_pixels > 0, 'partial overlap never happens with the default config'


def test_no_overlap_when_max_occlusion_is_zero():
  cfg = dataclasses.replace(DEFAULT, max_occlusion=0.0, min_objects=4, max_objects=4)
  for i in range(40):
    scene = ss.render_scene(cfg, 0, i)
    for o in scene.objects:
      assert o.visible_pixels == int(o.full_mask.sum())


def _interior(mask):
  """Pixels whose 4-neighbours are all in the mask."""
  m = np.pad(mask, 1)
  return m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]


def test_mask_pixels_show_the_object_colour():
  flat = dataclasses.replace(DEFAULT, object_shading=0.0, pixel_noise=0.0)
  for i in range(60):
    scene = ss.render_scene(flat, 9, i)
    img = scene.image.astype(np.float64)
    for o in scene.objects:
      inner = _interior(scene.instance_mask == o.layer + 1)
      if not inner.any():
        continue
      err = np.abs(img[inner] - o.rgb).max(axis=1)
      assert np.median(err) <= 1.0 and np.mean(err <= 1.0) > 0.9, (i, o.layer)
  # With the default shading and noise the visible pixels stay close to the object's colour and
  # farther from it outside the object.
  for i in range(60):
    scene = ss.render_scene(DEFAULT, 9, i)
    img = scene.image.astype(np.float64)
    for o in scene.objects:
      vis = scene.instance_mask == o.layer + 1
      inside = np.abs(img[_interior(vis)] - o.rgb).mean()
      assert inside < 25, (i, o.layer, inside)


def test_object_colour_contrasts_with_the_background():
  dists = []
  for i in range(100):
    scene = ss.render_scene(DEFAULT, 1, i)
    bg = scene.instance_mask == 0
    bg_mean = scene.image[bg].astype(np.float64).mean(axis=0)
    for o in scene.objects:
      dists.append(np.linalg.norm(o.rgb - bg_mean))
  assert np.median(dists) > DEFAULT.min_contrast


def test_lighter_polarity_puts_every_object_above_its_background():
  lighter = dataclasses.replace(DEFAULT, object_polarity='lighter')
  luma = np.array([0.299, 0.587, 0.114])
  gaps, categories = [], {}
  for i in range(100):
    scene = ss.render_scene(lighter, 4, i)
    img = scene.image.astype(np.float64) @ luma
    for o in scene.objects:
      vis = _interior(scene.instance_mask == o.layer + 1)
      y0, x0, h, w = o.box
      ring = np.zeros_like(vis)
      ring[max(y0 - 2, 0) : y0 + h + 2, max(x0 - 2, 0) : x0 + w + 2] = True
      ring &= scene.instance_mask == 0
      if vis.any() and ring.any():
        gaps.append(img[vis].mean() - img[ring].mean())
      categories.setdefault(o.colour, set()).add(o.category)
  assert min(gaps) > 5 and np.median(gaps) > 40
  # still no colour -> category shortcut: the light colours each cover many categories
  assert len(categories) >= 5 and all(len(c) >= 4 for c in categories.values())
  # the knob changes the pictures (with the default "any" the streams are as before the knob)
  assert (
    ss.render_scene(DEFAULT, 4, 0).image.tobytes() != ss.render_scene(lighter, 4, 0).image.tobytes()
  )


def test_image_size_knob():
  cfg = ss.SyntheticConfig(image_size=96)
  ex = ss.generate(cfg, 0, 0)
  assert ex['image'].shape == (96, 96, 3) and ex['mask'].shape == (96, 96)


def test_render_speed_is_reasonable():
  ss.generate(DEFAULT, 0, 0)
  start = time.perf_counter()
  n = 200
  for i in range(n):
    ss.generate(DEFAULT, 0, i)
  rate = n / (time.perf_counter() - start)
  assert rate > 100, f'{rate:.0f} images/s'  # ~1000/s on an idle core; lenient for shared CPUs


# ----------------------------------------------------------------------------------------- captions


def test_captions_name_exactly_the_mentioned_categories():
  cfg12 = ss.SyntheticConfig(num_categories=12, p_distractor_words=1.0, p_background_words=0.5)
  for cfg in (DEFAULT, cfg12):
    for i in range(400):
      ex = ss.generate(cfg, 0, i)
      expected = {c for c, m in zip(ex['categories'], ex['mentioned']) if m}
      assert expected, ex
      assert _mentioned_categories(ex['caption']) == expected, (
        ex['caption'],
        ex['categories'],
        ex['mentioned'],
      )


def test_objects_are_omitted_at_the_configured_rate():
  cfg = dataclasses.replace(DEFAULT, p_omit_object_in_caption=0.25, min_objects=3, max_objects=4)
  omitted = total = 0
  for i in range(800):
    ex = ss.generate(cfg, 0, i)
    omitted += ex['mentioned'].count(False)
    total += len(ex['mentioned'])
  assert abs(omitted / total - 0.25) < 0.03, omitted / total
  never = dataclasses.replace(DEFAULT, p_omit_object_in_caption=0.0)
  assert all(all(ss.generate(never, 0, i)['mentioned']) for i in range(100))


def test_distractors_synonyms_and_case_variety():
  captions = [ss.generate(DEFAULT, 0, i)['caption'] for i in range(600)]
  lower = [c.lower() for c in captions]
  assert any('#' in c for c in captions)
  assert any(any(d in c for d in ('photo', 'wallpaper', 'stock', 'art', 'clip')) for c in lower)
  assert any(c != c.lower() for c in captions) and any(c == c.lower() for c in captions)
  # Synonyms are used, but the canonical names dominate.
  canonical = set(ss.category_names(DEFAULT))
  hits = [m for c in lower for m in _CAT_RE.findall(c)]
  share = np.mean(
    [h in canonical or h.rstrip('s') in canonical or h[:-2] in canonical for h in hits]
  )
  assert 0.45 < share < 0.9, share
  assert len(set(captions)) > 590


def test_colour_words_match_the_objects():
  cfg = dataclasses.replace(
    DEFAULT,
    caption_styles=(('tags', 1.0),),
    p_colour_word=1.0,
    p_distractor_words=0.0,
    p_background_words=0.0,
    case_styles=(('lower', 1.0),),
  )
  colour_of_word = {w: p[0] for p in ss.PALETTE for w in p[1]}
  for i in range(200):
    ex = ss.generate(cfg, 0, i)
    tags = [t.lstrip('#') for t in ex['caption'].split(' ')]
    pairs = sorted(
      (colour_of_word[tags[j]], _WORD_TO_CAT[tags[j + 1]]) for j in range(0, len(tags), 2)
    )
    truth = sorted((c, k) for c, k, m in zip(ex['colours'], ex['categories'], ex['mentioned']) if m)
    assert pairs == truth, (ex['caption'], truth)


def test_counts_use_plural_nouns():
  cfg = dataclasses.replace(
    DEFAULT,
    caption_styles=(('count', 1.0),),
    min_objects=3,
    max_objects=4,
    num_categories=8,
    p_omit_object_in_caption=0.0,
  )
  plurals = {p: i + 1 for i, c in enumerate(ss.CATEGORIES) for _, p in c.synonyms}
  seen_plural = False
  for i in range(200):
    ex = ss.generate(cfg, 0, i)
    counts = {c: ex['categories'].count(c) for c in ex['categories']}
    found = _CAT_RE.findall(ex['caption'].lower())
    for word in found:
      cat = _WORD_TO_CAT[word]
      assert (word in plurals) == (counts[cat] > 1), (ex['caption'], counts)
      seen_plural |= word in plurals
  assert seen_plural


def test_position_words_are_true():
  cfg = dataclasses.replace(
    DEFAULT,
    min_objects=1,
    max_objects=1,
    caption_styles=(('sentence', 1.0),),
    p_position_word=1.0,
    p_distractor_words=0.0,
    p_background_words=0.0,
    case_styles=(('lower', 1.0),),
  )
  for i in range(100):
    scene = ss.render_scene(cfg, 0, i)
    caption = ss.generate(cfg, 0, i)['caption']
    x, y = scene.objects[0].center
    if 'left' in caption:
      assert x < cfg.image_size / 3
    if 'right' in caption:
      assert x > 2 * cfg.image_size / 3
    if 'top' in caption or 'upper' in caption:
      assert y < cfg.image_size / 3
    if 'bottom' in caption or 'lower' in caption:
      assert y > 2 * cfg.image_size / 3


def test_captions_fit_the_clip_context():
  from groupvit_jax.tokenizer import CONTEXT_LENGTH, default_tokenizer

  tok = default_tokenizer()
  cfg = dataclasses.replace(
    DEFAULT,
    min_objects=4,
    max_objects=4,
    p_distractor_words=1.0,
    p_background_words=1.0,
    p_position_word=1.0,
    p_size_word=1.0,
  )
  longest = max(len(tok.encode(ss.generate(cfg, 0, i)['caption'])) for i in range(300))
  assert longest + 2 <= CONTEXT_LENGTH, longest


# ------------------------------------------------------------------------------------------ tf.data


def test_tf_dataset_train_and_val():
  import tensorflow as tf

  cfg = ss.SyntheticConfig(num_val_examples=7)
  train = ss.as_tf_dataset(cfg, 3, 'train')
  assert set(train.element_spec) == {'image', 'caption'}  # no masks in train
  assert train.element_spec['image'].shape == (64, 64, 3)
  assert train.element_spec['image'].dtype == tf.uint8
  assert (
    train.element_spec['caption'].dtype == tf.string and train.element_spec['caption'].shape == ()
  )
  assert train.cardinality().numpy() == tf.data.INFINITE_CARDINALITY
  got = list(train.take(6).as_numpy_iterator())
  for i, e in enumerate(got):
    ex = ss.generate(cfg, 3, i, 'train')
    assert np.array_equal(e['image'], ex['image']) and e['caption'].decode() == ex['caption']
  # Resuming at an index continues the same stream.
  resumed = list(ss.as_tf_dataset(cfg, 3, 'train', start_index=4).take(2).as_numpy_iterator())
  assert [r['caption'] for r in resumed] == [g['caption'] for g in got[4:6]]

  val = ss.as_tf_dataset(cfg, 3, 'val')
  assert set(val.element_spec) == {'image', 'caption', 'mask'}
  assert val.element_spec['mask'].shape == (64, 64) and val.element_spec['mask'].dtype == tf.uint8
  items = list(val.batch(4).as_numpy_iterator())
  assert [b['image'].shape[0] for b in items] == [4, 3]
  ex = ss.generate(cfg, 3, 5, 'val')
  assert np.array_equal(items[1]['mask'][1], ex['mask'])
  assert not np.array_equal(items[0]['image'][0], got[0]['image'])  # disjoint streams
  assert ss.as_tf_dataset(cfg, 3, 'val', num_examples=3).cardinality().numpy() == 3
  with pytest.raises(ValueError):
    ss.as_tf_dataset(cfg, 3, 'train', num_examples=3)


# ------------------------------------------------------------------------------------- eval reader


def test_eval_reader_interface_and_perfect_score():
  cfg = ss.SyntheticConfig(num_categories=10)
  ds = es.SyntheticSegmentationDataset(cfg, seed=2, num_examples=12)
  assert len(ds) == 12 and len(ds.names) == 12 and len(set(ds.names)) == 12
  assert ds.class_names == ('background',) + tuple(ss.category_names(cfg))
  assert ds.ignore_index == 255 and ds.spec.num_classes == 11
  assert ds.spec.prompt_names == ds.class_names
  assert ds.spec.background_threshold == es.DEFAULT_BACKGROUND_THRESHOLD
  assert es.synthetic_spec(cfg, background_threshold=0.7).background_threshold == 0.7
  sample = ds[3]
  assert sample.name == ds.names[3]
  assert sample.image.shape == (64, 64, 3) and sample.label.shape == (64, 64)
  assert np.array_equal(sample.label, ss.generate(cfg, 2, 3, 'val')['mask'])
  assert ds[-1].name == ds.names[-1]
  with pytest.raises(IndexError):
    ds[12]
  c = ds.spec.num_classes
  conf = np.zeros((c, c), np.int64)
  conf_bg = np.zeros((c, c), np.int64)
  for s in ds:
    conf += M.confusion_matrix_np(s.label, s.label, c, ds.ignore_index)
    conf_bg += M.confusion_matrix_np(np.zeros_like(s.label), s.label, c, ds.ignore_index)
  assert M.segmentation_metrics(conf, ds.class_names)['mIoU'] == pytest.approx(100.0)
  assert M.segmentation_metrics(conf_bg, ds.class_names)['mIoU'] < 20
  assert len(ds.example(0)['caption']) > 0
  assert len(es.SyntheticSegmentationDataset()) == 500


def test_background_phrases_are_the_captions_words_for_each_background():
  """The evaluation scores background concepts with exactly the phrases captions use."""
  config = dataclasses.replace(
    DEFAULT, p_background_words=1.0, background_types=('stripes', 'flat')
  )

  def phrases_of(*kinds):
    return ss.background_phrases(dataclasses.replace(config, background_types=kinds))

  phrases = ss.background_phrases(config)
  assert set(phrases) == set(phrases_of('stripes')) | set(phrases_of('flat'))
  assert not set(phrases) & set(phrases_of('noise'))
  for i in range(12):
    scene = ss.render_scene(config, 0, i, 'val')
    caption = ss.generate(config, 0, i, 'val')['caption'].lower()
    assert any(p in caption for p in phrases_of(scene.background))
  data = es.SyntheticSegmentationDataset(config, num_examples=1)
  assert data.background_words == tuple(phrases)
