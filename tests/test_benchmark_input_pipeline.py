"""benchmarks/input_pipeline.py --max-side: the shard rewrite that models img2dataset's resizing."""

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from tests.conftest import load_script

pytestmark = pytest.mark.slow  # subprocess runs of the trainer or a benchmark script


def _module():
  return load_script('benchmarks/input_pipeline.py')


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _encode(size, fmt):
  buf = io.BytesIO()
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), np.uint8)).save(buf, format=fmt)
  return buf.getvalue()


def test_resized_shard_downscales_only_large_images_and_keeps_everything_else(tmp_path):
  bench = _module()
  big, small = _encode((700, 300), 'JPEG'), _encode((100, 80), 'PNG')
  src, dst = tmp_path / 'in.tar', tmp_path / 'out.tar'
  with tarfile.open(src, 'w') as tar:
    _add(tar, 'a/000.jpg', big)
    _add(tar, 'a/000.txt', b'a caption')
    _add(tar, 'a/001.png', small)
    _add(tar, 'a/001.txt', b'')
  assert bench.write_resized_shard(str(src), str(dst), 512) == 1
  with tarfile.open(dst) as tar:
    names = tar.getnames()
    members = {n: tar.extractfile(n).read() for n in names}
  assert names == ['a/000.jpg', 'a/000.txt', 'a/001.png', 'a/001.txt']
  assert Image.open(io.BytesIO(members['a/000.jpg'])).size == (512, 219)
  assert Image.open(io.BytesIO(members['a/000.jpg'])).format == 'JPEG'
  assert members['a/001.png'] == small
  assert members['a/000.txt'] == b'a caption' and members['a/001.txt'] == b''
