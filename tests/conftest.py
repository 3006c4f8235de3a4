"""Test configuration: strict promotion rules and small helpers."""

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
  return jax.random.key(0)


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield
