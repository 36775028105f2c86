"""XLA:CPU compiler options per model: chosen by width, never over the user's flags, effective."""

import types

import jax
import jax.numpy as jnp
import pytest

from groupvit_jax import xla_cpu


def model(width):
  return types.SimpleNamespace(image=types.SimpleNamespace(width=width))


WIDE, NARROW = model(384), model(128)


def test_wide_towers_compile_without_ynnpack_fusions_on_cpu_only():
  assert xla_cpu.compiler_options(WIDE, 'cpu', {}) == {xla_cpu.YNN_FLAG: ''}
  assert xla_cpu.compiler_options(model(xla_cpu.MIN_WIDTH_WITHOUT_YNNPACK), 'cpu', {}) is not None
  assert xla_cpu.compiler_options(NARROW, 'cpu', {}) is None
  assert xla_cpu.compiler_options(WIDE, 'gpu', {}) is None
  assert xla_cpu.compiler_options(WIDE, 'tpu', {}) is None


@pytest.mark.parametrize(
  'environ',
  [
    {
      'XLA_FLAGS': '--xla_force_host_platform_device_count=8 '
      '--xla_cpu_experimental_ynn_fusion_type=dot'
    },
    {'XLA_FLAGS': 'xla_cpu_experimental_ynn_fusion_type='},
    {xla_cpu.OPT_OUT_ENV: '1'},
  ],
)
def test_the_users_choice_wins(environ):
  assert xla_cpu.user_controls_flags(environ)
  assert xla_cpu.compiler_options(WIDE, 'cpu', environ) is None


def test_unrelated_flags_and_explicit_zero_do_not_opt_out():
  environ = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8', xla_cpu.OPT_OUT_ENV: '0'}
  assert not xla_cpu.user_controls_flags(environ)
  assert xla_cpu.compiler_options(WIDE, 'cpu', environ) == {xla_cpu.YNN_FLAG: ''}


def attention_like(x, y):
  return jax.nn.softmax(x @ y, axis=-1)


def test_jit_for_shares_one_function_per_options():
  assert xla_cpu.jit_for(WIDE, attention_like) is xla_cpu.jit_for(model(512), attention_like)
  assert xla_cpu.jit_for(WIDE, attention_like) is not xla_cpu.jit_for(NARROW, attention_like)


def test_options_reach_the_compiled_program(monkeypatch):
  if jax.default_backend() != 'cpu':
    pytest.skip('the options concern XLA:CPU only')
  monkeypatch.delenv(xla_cpu.OPT_OUT_ENV, raising=False)
  if xla_cpu.user_controls_flags():
    pytest.skip('XLA_FLAGS of this run set the YNNPACK flag')
  a = jnp.ones((32, 32))
  hlo = lambda m: xla_cpu.jit_for(m, attention_like).lower(a, a).compile().as_text()
  # The control: XLA:CPU's default fuses the matmul and softmax reductions into YNNPACK (if a
  # jaxlib stops doing so, the width rule is moot and should be re-measured).
  assert '__ynn_fusion' in hlo(NARROW)
  assert '__ynn_fusion' not in hlo(WIDE)
