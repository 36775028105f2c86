"""Shared pytest fixtures: locations of optional real sample data."""

import importlib.util
import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / 'shared' / 'data'

# Tests run on the CPU with 8 fake devices (set before anything imports jax), so sharded code
# runs in-process next to single-device code; single-device tests simply use device 0.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
  ).strip()


@pytest.fixture
def shared_data():
  """Path of ../shared/data (real sample files); skips the test where it is absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip('../shared/data is not present')
  return SHARED_DATA


def load_script(relpath: str):
  """Imports a repository file that is not in a package (a benchmark script) as a module."""
  path = REPO / relpath
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
