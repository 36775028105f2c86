"""Tests for groupvit_jax.tokenizer against OpenAI CLIP's reference tokenizer.

The reference is ``clip/simple_tokenizer.py`` from the ``openai-clip`` package. It is
loaded straight from its file, because importing the ``clip`` package runs
``clip/__init__.py``, which needs torch/torchvision.
"""

from __future__ import annotations

import ast
import html
import pathlib
import random
import string
import unicodedata

import ftfy
import numpy as np
import pytest

from groupvit_jax import tokenizer as tok_mod
from groupvit_jax.tokenizer import (
  CONTEXT_LENGTH,
  EOT_TOKEN,
  SOT_TOKEN,
  VOCAB_SIZE,
  ClipTokenizer,
  default_tokenizer,
)
from references import clip_tokenizer

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CC3M_CAPTIONS = REPO_ROOT / '..' / 'shared' / 'data' / 'captions' / 'cc3m_validation_first1000.txt'


# ----------------------------------------------------------------------------- reference


@pytest.fixture(scope='module')
def ref():
  """The reference ``SimpleTokenizer`` instance (skips when openai-clip is absent)."""
  pytest.importorskip('regex')  # the reference's own dependencies
  pytest.importorskip('ftfy')
  cls = clip_tokenizer.simple_tokenizer_class()
  if cls is None:
    pytest.skip('openai-clip is not installed')
  return cls()


@pytest.fixture(scope='module')
def ours():
  return ClipTokenizer()


reference_tokenize = clip_tokenizer.reference_tokenize


# ----------------------------------------------------------------------------- captions

_WORDS = """
a an the of in on at with by for to from and or but is are was were be been being
photo picture image illustration painting drawing portrait view close up background
man woman person people child boy girl baby dog cat horse bird fish cow sheep tiger
red green blue yellow white black orange pink purple brown grey golden silver
big small large tiny old young new beautiful happy sad cute funny modern vintage
tree flower forest mountain river lake ocean beach sky cloud sun moon star snow rain
house building city street road car bus train bicycle boat airplane bridge tower
sitting standing walking running playing holding looking wearing eating riding
table chair bed sofa kitchen room window door wall floor garden park field farm
christmas wedding birthday party festival concert game match team player football
vector stock royalty free isolated seamless pattern texture abstract design logo
I'm you're he's she'd we've they'll it's don't can't won't isn't let's o'clock
""".split()

_UNICODE_BITS = [
  # accents (precomposed and decomposed), other Latin
  'café',
  'naïve',
  'Ångström',
  'Über',
  'señor',
  'façade',
  'crème brûlée',
  'e\u0301',
  'a\u0308',
  'Z\u0324\u0354\u0367\u0311\u0313',
  'ß',
  'ẞ',
  'İstanbul',
  'ı',
  'ſ',
  'ǅ',
  '\u212a',
  'Œuvre',
  'ø',
  'Æsir',
  'þ',
  'ð',
  'ł',
  'ő',
  'ğ',
  # other scripts
  '東京',
  '北京烤鸭',
  'カタカナ',
  'ひらがな',
  '한국어',
  'Σίσυφος',
  'Привет',
  'नमस्ते',
  'สวัสดี',
  'ქართული',
  'Ἀθῆναι',
  'ꙮ',
  # right-to-left
  'שלום',
  'مرحبا',
  '\u200f',
  '\u200e',
  '\u202e',
  'עברית123',
  # emoji and symbols
  '😀',
  '👍🏽',
  '👨\u200d👩\u200d👧',
  '🇺🇸',
  '❤️',
  '☃',
  '♥',
  '©',
  '®',
  '™',
  '€',
  '£',
  '¥',
  '°',
  '±',
  '×',
  '÷',
  '∑',
  '√',
  '∞',
  '→',
  '★',
  '𝒥',
  '𝕏',
  '🂡',
  # zero-width / invisible / odd spaces and line separators
  '\u200b',
  '\u200c',
  '\u200d',
  '\u2060',
  '\ufeff',
  '\u00ad',
  '\u034f',
  '\xa0',
  '\u2009',
  '\u3000',
  '\u2028',
  '\u2029',
  '\u180e',
  # mojibake
  'cafÃ©',
  'Ã¢â‚¬â„¢',
  'â€œquotedâ€\x9d',
  'ÃƒÂ©',
  'Ã©tÃ©',
  'ï»¿',
  'Â£',
  'â€”',
  'Ã¼ber',
  'wasnâ€™t',
  # curly quotes and typographic punctuation
  '“hi”',
  '‘tis',
  'it’s',
  '’s',
  '«guillemets»',
  '„low“',
  '–',
  '—',
  '…',
  '‹›',
  '′″',
  # ligatures and width forms
  'ﬁ',
  'ﬂ',
  'ﬀ',
  'ﬃ',
  'ﬄ',
  'ﬅ',
  'ﬆ',
  'Ĳ',
  'ＡＢＣ',
  'ｈｅｌｌｏ',
  '１２３',
  '！',
  '？',
  'ｶﾀｶﾅ',
  'ﾊﾝｶｸ',
  'Ｈｅｌｌｏ　Ｗｏｒｌｄ',
  # control characters (C0, C1, DEL, terminal escapes)
  '\x00',
  '\x07',
  '\x08',
  '\x0b',
  '\x0c',
  '\x1b[31m',
  '\x1b[0m',
  '\x1c',
  '\x1f',
  '\x7f',
  '\x80',
  '\x85',
  '\x9c',
  '\x9d',
  '\r',
  '\r\n',
  # HTML entities
  '&amp;',
  '&lt;b&gt;',
  '&#39;',
  '&amp;amp;',
  '&amp;amp;amp;',
  '&quot;',
  '&nbsp;',
  '&#x27;',
  '&eacute;',
  '&EACUTE;',
  '&NTILDE;',
  '&copy',
  '&amp',
  '&#128512;',
  '&;',
  '&',
  '&#',
  '&#x;',
  '&lt;script&gt;',
  '<b>',
  '</i>',
  '&notit;',
  '&notin;',
  'a&b',
  'R&D',
  '&hellip;',
  # numbers
  '3.14',
  '1,000,000',
  '2nd',
  '42',
  '²',
  '½',
  'Ⅻ',
  '٣',
  '१२',
  '①',
  '0x1F',
  # punctuation runs
  '!!!',
  '?!?',
  '...',
  '---',
  '((',
  ')))',
  "''",
  '"',
  "'s",
  "'ll",
  "'RE",
  "'T",
  '#',
  '@@',
  '~*~',
  ':-)',
  '<3',
  '$$$',
  '%',
  '^_^',
  '|',
  '\\',
  '/',
  '[]',
  '{}',
  # CLIP's special token strings
  '<|endoftext|>',
  '<|startoftext|>',
  '<|ENDOFTEXT|>',
  'x<|endoftext|>y',
  '<<|startoftext|>',
  # lone surrogates (ftfy replaces them)
  '\ud800',
  '\udfff',
  '\ud83d\ude00',
  # private use and unassigned
  '\ue000',
  '\U000f0000',
  '\u0378',
]

_SEPARATORS = [' '] * 12 + [
  '  ',
  '   ',
  '\t',
  '\n',
  '\r\n',
  ' \n ',
  '\u3000',
  '\xa0',
  '\x0b',
  '\x0c',
  '\x1c',
]

_CODEPOINT_RANGES = [
  (0x00, 0x7F),
  (0x80, 0xFF),
  (0x100, 0x24F),
  (0x300, 0x36F),
  (0x370, 0x3FF),
  (0x400, 0x4FF),
  (0x590, 0x6FF),
  (0x900, 0x97F),
  (0xE00, 0xE7F),
  (0x2000, 0x206F),
  (0x2100, 0x22FF),
  (0x3000, 0x30FF),
  (0x4E00, 0x4FFF),
  (0xAC00, 0xAD00),
  (0xD800, 0xDFFF),
  (0xFB00, 0xFB4F),
  (0xFE00, 0xFE6F),
  (0xFF00, 0xFFEF),
  (0xFFF0, 0xFFFF),
  (0x1D400, 0x1D7FF),
  (0x1F300, 0x1FAFF),
  (0xE0000, 0xE007F),
]


def _sentence(rng: random.Random, n_words: int) -> str:
  words = [rng.choice(_WORDS) for _ in range(n_words)]
  return ' '.join(words)


def _casing(rng: random.Random, text: str) -> str:
  mode = rng.randrange(4)
  if mode == 0:
    return text
  if mode == 1:
    return text.upper()
  if mode == 2:
    return text.title()
  return ''.join(c.upper() if rng.random() < 0.3 else c for c in text)


def _mixed_caption(rng: random.Random, n_words: int) -> str:
  parts = []
  for _ in range(n_words):
    r = rng.random()
    if r < 0.55:
      piece = rng.choice(_WORDS)
    elif r < 0.9:
      piece = rng.choice(_UNICODE_BITS)
    else:
      piece = rng.choice(_WORDS) + rng.choice(_UNICODE_BITS) + rng.choice(_WORDS)
    parts.append(piece)
    parts.append(rng.choice(_SEPARATORS) if rng.random() < 0.85 else '')
  return _casing(rng, ''.join(parts))


def _random_ascii(rng: random.Random) -> str:
  alphabet = string.ascii_letters + string.digits + string.punctuation + ' ' * 8 + '&' * 3 + "'" * 3
  if rng.random() < 0.2:
    alphabet += '\t\n\r\x0b\x0c\x00\x1b\x7f'
  return ''.join(rng.choice(alphabet) for _ in range(rng.randrange(0, 60)))


def _random_codepoints(rng: random.Random) -> str:
  chars = []
  for _ in range(rng.randrange(1, 40)):
    lo, hi = rng.choice(_CODEPOINT_RANGES)
    chars.append(chr(rng.randint(lo, hi)))
    if rng.random() < 0.3:
      chars.append(' ')
  return ''.join(chars)


def _mojibake(rng: random.Random, text: str) -> str:
  for _ in range(rng.randint(1, 2)):
    codec = rng.choice(['latin-1', 'cp1252', 'cp437', 'macroman'])
    text = text.encode('utf-8', errors='surrogatepass').decode(codec, errors='replace')
  return text


def generated_captions(count: int = 20_000, seed: int = 20240611) -> list[str]:
  """Deterministic stress captions: plain, unicode-heavy, HTML, mojibake, long, empty."""
  rng = random.Random(seed)
  captions = [
    '',
    ' ',
    '   ',
    '\t',
    '\n',
    '\r\n',
    ' \t\n ',
    '\u3000',
    '\xa0\xa0',
    '\u200b',
    '\ufeff',
    '\x0b',
    '\x00',
    '&nbsp;',
    '&amp;',
    '.',
    "'",
    "''s",
    "'s",
    'a',
    'A',
    '1',
    'a b',
    'a  b',
  ]
  kinds = [
    'plain',
    'plain',
    'cased',
    'mixed',
    'mixed',
    'mixed',
    'ascii',
    'ascii',
    'codepoints',
    'html',
    'mojibake',
    'nfd',
    'long',
    'empty',
  ]
  while len(captions) < count:
    kind = rng.choice(kinds)
    if kind == 'plain':
      text = _sentence(rng, rng.randint(1, 25)) + rng.choice(['', ' .', ' !', ' ?', '.'])
    elif kind == 'cased':
      text = _casing(rng, _sentence(rng, rng.randint(1, 25)))
    elif kind == 'mixed':
      text = _mixed_caption(rng, rng.randint(1, 30))
    elif kind == 'ascii':
      text = _random_ascii(rng)
    elif kind == 'codepoints':
      text = _random_codepoints(rng)
    elif kind == 'html':
      text = _mixed_caption(rng, rng.randint(1, 15))
      for _ in range(rng.randint(1, 3)):
        text = html.escape(text, quote=rng.random() < 0.5)
    elif kind == 'mojibake':
      text = _mojibake(rng, _mixed_caption(rng, rng.randint(1, 12)))
    elif kind == 'nfd':
      form = rng.choice(['NFD', 'NFKD', 'NFC', 'NFKC'])
      text = unicodedata.normalize(form, _mixed_caption(rng, rng.randint(1, 15)))
    elif kind == 'long':
      if rng.random() < 0.5:
        text = _sentence(rng, rng.randint(70, 250))
      else:
        text = _mixed_caption(rng, rng.randint(60, 150))
    else:
      text = ''.join(
        rng.choice(_SEPARATORS + ['\u200b', '\u3000', '']) for _ in range(rng.randint(0, 6))
      )
    captions.append(text)
  return captions


@pytest.fixture(scope='module')
def stress_captions():
  return generated_captions()


def _read_cc3m() -> list[str]:
  if not CC3M_CAPTIONS.is_file():
    pytest.skip(f'{CC3M_CAPTIONS} not present')
  text = CC3M_CAPTIONS.read_text(encoding='utf-8')
  return [line for line in text.split('\n') if line]  # one caption per line


# ----------------------------------------------------------------------------- comparisons


def _assert_same_as_reference(ref, ours, captions):
  expected_ids = [ref.encode(c) for c in captions]
  mismatches = [
    (c, e, o) for c, e, o in zip(captions, expected_ids, map(ours.encode, captions)) if e != o
  ]
  assert not mismatches, f'{len(mismatches)} encode mismatches, first: {mismatches[:3]!r}'

  expected = clip_tokenizer.pad_like_clip(expected_ids, CONTEXT_LENGTH, SOT_TOKEN, EOT_TOKEN)
  got = ours(captions)
  assert got.shape == (len(captions), CONTEXT_LENGTH)
  bad_rows = np.flatnonzero((got != expected).any(axis=1))
  assert bad_rows.size == 0, f'padded mismatch on {[captions[i] for i in bad_rows[:3]]!r}'


def test_cc3m_captions_match_reference(ref, ours):
  captions = _read_cc3m()
  assert len(captions) == 1000
  _assert_same_as_reference(ref, ours, captions)


def test_generated_captions_match_reference(ref, ours, stress_captions):
  assert len(stress_captions) >= 20_000
  _assert_same_as_reference(ref, ours, stress_captions)
  # The generator really covers long captions (truncation) and the ftfy slow path.
  lengths = np.array([len(ours.encode(c)) for c in stress_captions[::7]])
  assert (lengths > CONTEXT_LENGTH).sum() > 50
  assert sum(not tok_mod._is_plain(c) for c in stress_captions) > len(stress_captions) // 3


def test_small_caches_give_same_ids(ref, stress_captions):
  captions = stress_captions[:1500]
  expected = reference_tokenize(ref, captions)
  for cache_size in (0, 7):
    tok = ClipTokenizer(cache_size=cache_size)
    np.testing.assert_array_equal(tok(captions), expected)
    np.testing.assert_array_equal(tok(captions), expected)  # again, with evictions
    assert len(tok._word_cache) <= cache_size and len(tok._token_cache) <= cache_size


def test_decode_matches_reference(ref, ours, stress_captions):
  for caption in stress_captions[:4000]:
    ids = ours.encode(caption)
    assert ours.decode(ids) == ref.decode(ids)
  padded = ours(stress_captions[:5])
  for row in padded:
    assert ours.decode(row) == ref.decode(row.tolist())


# ----------------------------------------------------------------------------- fast path


def test_fast_path_is_exact_no_op():
  """The no-ftfy fast path is only taken where ftfy + 2x html.unescape change nothing."""
  rng = random.Random(7)
  alphabet = string.ascii_letters + string.digits + string.punctuation + '    ' + '&&&& '
  checked = 0
  for _ in range(20_000):
    text = ''.join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
    if rng.random() < 0.3:
      text = text.replace('&', '& ')
    if tok_mod._is_plain(text):
      checked += 1
      assert ftfy.fix_text(text) == text
      assert html.unescape(html.unescape(text)) == text
  assert checked > 5_000
  # Characters that ftfy changes (or may change) must not take the fast path.
  for text in [
    'a\x0bb',
    'a\rb',
    'a\tb',
    'a\nb',
    'x\x00',
    '\x1b[31mred',
    '&amp;',
    'a&b',
    'a &',
    'café',
    '\xa0',
    '&#39;',
    'fish&chips',
  ]:
    assert not tok_mod._is_plain(text), repr(text)
  assert ftfy.fix_text('a\x0bb') == 'ab'  # VT is deleted, not turned into a space
  assert tok_mod._is_plain('sand & sea : paradise')


# ----------------------------------------------------------------------------- unit tests


def test_constants_and_vocab(ours):
  assert (SOT_TOKEN, EOT_TOKEN, CONTEXT_LENGTH, VOCAB_SIZE) == (49406, 49407, 77, 49408)
  assert ours.vocab_size == VOCAB_SIZE
  assert ours.encode('<|startoftext|> <|endoftext|>') == [SOT_TOKEN, EOT_TOKEN]


def test_empty_and_whitespace_strings(ours):
  for text in ['', ' ', '\t\n  ', '\u3000']:
    assert ours.encode(text) == []
    row = ours(text)
    assert row.shape == (1, CONTEXT_LENGTH)
    assert row[0, :2].tolist() == [SOT_TOKEN, EOT_TOKEN]
    assert not row[0, 2:].any()


def test_truncation_keeps_eot_last(ref, ours):
  text = ' '.join(f'word{i}' for i in range(200))
  assert len(ours.encode(text)) > CONTEXT_LENGTH
  out = ours(text)
  assert out.shape == (1, CONTEXT_LENGTH)
  assert out[0, 0] == SOT_TOKEN and out[0, -1] == EOT_TOKEN
  assert out[0, 1:-1].tolist() == ours.encode(text)[: CONTEXT_LENGTH - 2]
  assert (out[0] != 0).all()
  np.testing.assert_array_equal(out, reference_tokenize(ref, text))
  # Exactly at the limit: no truncation, EOT in the last slot, nothing lost.
  words = ['dog'] * (CONTEXT_LENGTH - 2)
  exact = ours(' '.join(words))
  assert exact[0, -1] == EOT_TOKEN and exact[0, 1:-1].tolist() == [1929] * (CONTEXT_LENGTH - 2)


@pytest.mark.parametrize('context_length', [1, 2, 3, 5, 16, 77, 100])
def test_other_context_lengths(ref, ours, context_length):
  texts = ['', 'a photo of a cat', 'a very long caption ' * 20, 'Ünïcödé ＦＵＬＬ &amp; “quotes”']
  texts = texts * 10  # 40 rows: exercises the vectorised padding too
  got = ours(texts, context_length=context_length)
  assert got.shape == (len(texts), context_length)
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, reference_tokenize(ref, texts, context_length))
  np.testing.assert_array_equal(ours(texts[:4], context_length=context_length), got[:4])


def test_invalid_context_length(ours):
  with pytest.raises(ValueError):
    ours('x', context_length=0)


def test_batch_equals_single_calls(ours, stress_captions):
  texts = stress_captions[:200]
  batch = ours(texts)
  singles = np.concatenate([ours(t) for t in texts])
  np.testing.assert_array_equal(batch, singles)
  np.testing.assert_array_equal(ours(tuple(texts[:3])), batch[:3])
  assert ours([]).shape == (0, CONTEXT_LENGTH)


def test_bytes_and_numpy_string_inputs(ours):
  texts = ['a photo of a dog', 'café &amp; 東京']
  expected = ours(texts)
  np.testing.assert_array_equal(ours([t.encode('utf-8') for t in texts]), expected)
  np.testing.assert_array_equal(ours(np.array(texts)), expected)
  np.testing.assert_array_equal(
    ours(np.array([t.encode('utf-8') for t in texts], dtype=object)), expected
  )
  np.testing.assert_array_equal(ours(texts[1].encode('utf-8')), expected[1:])


def test_dtype_and_shape(ours):
  out = ours(['a', 'b c'])
  assert out.dtype == np.int32
  assert out.shape == (2, CONTEXT_LENGTH)
  assert ours('a').shape == (1, CONTEXT_LENGTH)


def test_decode_round_trip_plain_text(ours):
  # Every end-of-word marker decodes to a space, so plain text comes back with a
  # trailing space (and digits, which CLIP splits one by one, come back spaced).
  cases = {
    'a photo of a cat': 'a photo of a cat ',
    'the quick brown fox jumps over the lazy dog': 'the quick brown fox jumps over the lazy dog ',
    'naïve café in 東京': 'naïve café in 東京 ',
    '123 apples': '1 2 3 apples ',
    'Mixed   CASE\ttext': 'mixed case text ',
  }
  for text, expected in cases.items():
    assert ours.decode(ours.encode(text)) == expected
  assert ours.decode(np.array(ours.encode('hello world'), dtype=np.int32)) == 'hello world '
  assert ours.decode([SOT_TOKEN, 1929, EOT_TOKEN]) == '<|startoftext|>dog <|endoftext|>'


def test_default_tokenizer_is_shared():
  assert default_tokenizer() is default_tokenizer()
  assert isinstance(default_tokenizer(), ClipTokenizer)


def test_explicit_vocab_path(tmp_path):
  import importlib.resources

  data = (
    importlib.resources.files('groupvit_jax') / 'assets' / 'bpe_simple_vocab_16e6.txt.gz'
  ).read_bytes()
  path = tmp_path / 'vocab.txt.gz'
  path.write_bytes(data)
  tok = ClipTokenizer(vocab_path=str(path))
  np.testing.assert_array_equal(tok('a photo of a dog'), default_tokenizer()('a photo of a dog'))


def test_module_does_not_import_tf_or_jax():
  tree = ast.parse(pathlib.Path(tok_mod.__file__).read_text(encoding='utf-8'))
  imported = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      imported.update(alias.name.split('.')[0] for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      imported.add(node.module.split('.')[0])
  assert not imported & {'tensorflow', 'jax', 'jaxlib', 'flax', 'torch'}
