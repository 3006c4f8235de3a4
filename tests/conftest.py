"""Test configuration: strict promotion rules and small helpers."""

import socket

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


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
  """One persistent XLA cache for the session, shared by the xdist workers and the CLI
  subprocesses (each program is compiled once per run of the suite)."""
  import os

  base = tmp_path_factory.getbasetemp()
  # Under xdist each worker's base is <run>/popen-gw<N>: the cache goes to <run>.
  root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
  path = str(root / "jax_cache")
  os.makedirs(path, exist_ok=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = path
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  yield


@pytest.fixture
def no_network(monkeypatch):
  """Makes any network connection fail at once instead of hanging."""

  def refuse(*args, **kwargs):
    raise OSError("network access is disabled in this test")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket.socket, "connect_ex", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  monkeypatch.setattr(socket, "getaddrinfo", refuse)
