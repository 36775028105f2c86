"""Shared pytest fixtures: locations of optional real sample data."""

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / 'shared' / 'data'

# Tests run on the CPU; a couple of tests use 8 fake devices in subprocesses of their own.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')


@pytest.fixture
def shared_data():
  """Path of ../shared/data (real sample files); skips the test where it is absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip('../shared/data is not present')
  return SHARED_DATA
