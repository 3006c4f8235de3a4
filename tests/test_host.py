"""keep_freed_host_memory: XLA:CPU's per-call buffers stop being faulted in anew."""

import os
import subprocess
import sys

import pytest

from ugclu_jax import host

# A program whose temporaries (one block of about 100 MB) are allocated and freed per call.
_PROBE = r"""
import resource, sys
from ugclu_jax.host import keep_freed_host_memory
kept = keep_freed_host_memory()
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.sum(jnp.sin(jnp.outer(x, x)) @ jnp.cos(jnp.outer(x, x))))
x = jnp.linspace(0.0, 1.0, 3000)
f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
  f(x).block_until_ready()
print(kept, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5)
"""


def _faults_per_call(off: bool):
  env = dict(os.environ, **{host.OFF_ENV: "1" if off else "0"})
  out = subprocess.run(
    [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True
  ).stdout.split()
  return out[0] == "True", int(out[1])


@pytest.mark.skipif(
  not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
  reason="glibc only",
)
def test_freed_blocks_stay_in_the_process():
  kept, faults = _faults_per_call(off=False)
  system, system_faults = _faults_per_call(off=True)
  assert kept and not system
  # 100 MB faulted in anew on every call (4 KiB pages) without, almost nothing with.
  assert system_faults > 10_000
  assert faults < system_faults / 10


_CACHE_PROBE = r"""
import sys, jax
from ugclu_jax.host import use_compilation_cache
print(use_compilation_cache(sys.argv[1]), jax.config.jax_compilation_cache_max_size)
"""


def _cache(tmp_path, **env):
  base = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
  out = subprocess.run(
    [sys.executable, "-c", _CACHE_PROBE, str(tmp_path / "default")],
    env={**base, **env},
    capture_output=True,
    text=True,
    check=True,
  )
  directory, cap = out.stdout.split()
  return directory, int(cap)


def test_the_compilation_cache_goes_where_the_environment_says_and_is_capped(tmp_path):
  assert _cache(tmp_path) == (str(tmp_path / "default"), host.CACHE_MAX_BYTES)
  mine = str(tmp_path / "mine")
  got = _cache(tmp_path, JAX_COMPILATION_CACHE_DIR=mine, JAX_COMPILATION_CACHE_MAX_SIZE="12345")
  assert got == (mine, 12345)


def test_compile_clock_counts_compilation_only():
  import jax
  import jax.numpy as jnp

  f = jax.jit(lambda x: jnp.tanh(x) * 3.0)
  x = jnp.ones(7)
  with host.CompileClock() as first:
    f(x).block_until_ready()
  with host.CompileClock() as again:
    f(x).block_until_ready()  # compiled already: nothing to count
  assert first.seconds > 0.0
  assert again.seconds == 0.0
