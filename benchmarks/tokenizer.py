"""Throughput of groupvit_jax.tokenizer.ClipTokenizer vs OpenAI CLIP's Python tokenizer.

Usage (from the repository root):

    .venv/bin/python benchmarks/tokenizer.py            # human-readable table
    .venv/bin/python benchmarks/tokenizer.py --json     # one JSON object per line

Captions: ``../shared/data/captions/cc3m_validation_first1000.txt`` (relative to the
repository root) when present, else deterministic generated captions (``--captions``
overrides). Everything runs in this one thread.

Rows (captions/s, best of ``--repeats``):
  * ``encode``: ids only, one call per caption (``SimpleTokenizer.encode`` for the
    reference);
  * ``tokenize``: the padded int32 ``[N, 77]`` batch (for the reference:
    ``encode`` plus the padding/truncation loop of ``clip.tokenize(truncate=True)``,
    written with NumPy because torch is not needed here);
  * ``tokenize_1``: ours only, one ``__call__`` per caption (``[1, 77]`` each).
``cold``: a fresh tokenizer instance (empty BPE/word caches) makes one pass;
``warm``: the same instance after a warm-up pass over the same captions.
"""

from __future__ import annotations

import os

for _var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
  os.environ.setdefault(_var, '1')

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from groupvit_jax.tokenizer import (  # noqa: E402
  CONTEXT_LENGTH,
  EOT_TOKEN,
  SOT_TOKEN,
  ClipTokenizer,
)
from references import clip_tokenizer  # noqa: E402

DEFAULT_CAPTIONS = (
  REPO_ROOT / '..' / 'shared' / 'data' / 'captions' / 'cc3m_validation_first1000.txt'
)


def load_reference():
  """CLIP's SimpleTokenizer class, or None without openai-clip (see
  references/clip_tokenizer.py)."""
  return clip_tokenizer.simple_tokenizer_class()


def generated_captions(count: int, seed: int = 0) -> list[str]:
  """Deterministic CC3M-like captions with a little unicode/HTML mixed in."""
  rng = random.Random(seed)
  words = (
    'a the of in on with and photo picture man woman dog cat tree city street car house '
    'beautiful old young red blue green white black sitting standing walking holding '
    'vector illustration background isolated beach sky water mountain people child '
    "person 's , . - : ! ? 2 10 1990"
  ).split()
  extras = ['café', '“quoted”', '&amp;', '東京', '😀', 'naïve', '£ 5', 'ﬁne', 'Ã©']
  captions = []
  for _ in range(count):
    n = rng.randint(4, 20)
    parts = [rng.choice(words) for _ in range(n)]
    if rng.random() < 0.05:
      parts.insert(rng.randrange(len(parts) + 1), rng.choice(extras))
    captions.append(' '.join(parts))
  return captions


def pad_like_clip(id_lists, context_length=CONTEXT_LENGTH):
  """clip.tokenize(truncate=True)'s per-row padding loop, with NumPy instead of torch."""
  return clip_tokenizer.pad_like_clip(
    id_lists, context_length, SOT_TOKEN, EOT_TOKEN, dtype=np.int32
  )


def _workloads(impl: str, tokenizer):
  if impl == 'ours':
    return {
      'encode': lambda caps: [tokenizer.encode(c) for c in caps],
      'tokenize': lambda caps: tokenizer(caps),
      'tokenize_1': lambda caps: [tokenizer(c) for c in caps],
    }
  return {
    'encode': lambda caps: [tokenizer.encode(c) for c in caps],
    'tokenize': lambda caps: pad_like_clip([tokenizer.encode(c) for c in caps]),
  }


def measure(make_tokenizer, impl, captions, repeats, min_warm_s):
  """Yields (mode, cache, captions/s) rows."""
  modes = list(_workloads(impl, None).keys())
  for mode in modes:
    # Cold: fresh instance (construction not timed), one pass.
    best = float('inf')
    for _ in range(repeats):
      fn = _workloads(impl, make_tokenizer())[mode]
      start = time.perf_counter()
      fn(captions)
      best = min(best, time.perf_counter() - start)
    yield mode, 'cold', len(captions) / best
    # Warm: one instance, warm-up pass, then passes of >= min_warm_s each.
    fn = _workloads(impl, make_tokenizer())[mode]
    fn(captions)
    start = time.perf_counter()
    fn(captions)
    one_pass = max(time.perf_counter() - start, 1e-9)
    passes = max(1, int(min_warm_s / one_pass))
    best = float('inf')
    for _ in range(repeats):
      start = time.perf_counter()
      for _ in range(passes):
        fn(captions)
      best = min(best, (time.perf_counter() - start) / passes)
    yield mode, 'warm', len(captions) / best


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
    '--captions',
    type=pathlib.Path,
    default=None,
    help='text file, one caption per line (default: the CC3M sample if present)',
  )
  parser.add_argument(
    '--generated',
    type=int,
    default=None,
    metavar='N',
    help='use N generated captions instead of a caption file '
    '(default: 1000 generated captions only when no file is found)',
  )
  parser.add_argument('--repeats', type=int, default=3, help='timed repetitions (best is kept)')
  parser.add_argument(
    '--min-warm-s', type=float, default=0.3, help='minimum duration of one timed warm repetition'
  )
  parser.add_argument('--json', action='store_true', help='one JSON object per output line')
  args = parser.parse_args(argv)

  command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
  path = args.captions if args.captions is not None else DEFAULT_CAPTIONS
  if args.generated is None and path.is_file():
    captions = [line for line in path.read_text(encoding='utf-8').split('\n') if line]
    source = path.name
  else:
    if args.captions is not None and args.generated is None:
      parser.error(f'{path} does not exist')
    count = 1000 if args.generated is None else args.generated
    captions = generated_captions(count)
    source = f'generated({count})'

  header = {
    'command': command,
    'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
    'captions': source,
    'num_captions': len(captions),
    'python': platform.python_version(),
    'machine': platform.machine(),
    'cpu_count': os.cpu_count(),
  }
  if args.json:
    print(json.dumps(header), flush=True)
  else:
    print(f'$ {command}')
    print('# ' + ', '.join(f'{k}={v}' for k, v in header.items() if k != 'command'))
    print(
      f'{"impl":<10} {"mode":<11} {"cache":<5} {"captions/s":>12} {"us/caption":>11} {"vs ref":>7}'
    )

  reference_cls = load_reference()
  impls = [('ours', ClipTokenizer)]
  if reference_cls is not None:
    impls.insert(0, ('reference', reference_cls))
  elif not args.json:
    print('# openai-clip not installed: reference rows skipped')

  ref_rates = {}
  for impl, factory in impls:
    for mode, cache, rate in measure(factory, impl, captions, args.repeats, args.min_warm_s):
      if impl == 'reference':
        ref_rates[(mode, cache)] = rate
      base = ref_rates.get(('tokenize' if mode == 'tokenize_1' else mode, cache))
      speedup = rate / base if base else None
      row = {
        'impl': impl,
        'mode': mode,
        'cache': cache,
        'captions_per_s': round(rate, 1),
        'us_per_caption': round(1e6 / rate, 3),
        'speedup_vs_reference': None if speedup is None else round(speedup, 2),
      }
      if args.json:
        print(json.dumps(row), flush=True)
      else:
        sp = '' if speedup is None else f'{speedup:6.1f}x'
        print(
          f'{impl:<10} {mode:<11} {cache:<5} {rate:12,.0f} {1e6 / rate:11.2f} {sp:>7}', flush=True
        )
  return 0


if __name__ == '__main__':
  sys.exit(main())
