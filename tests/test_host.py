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
for _ in range(2):
  f(x).block_until_ready()
print(kept, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 2)
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
import sys, warnings, jax, jax.numpy as jnp
from ugclu_jax.host import use_compilation_cache
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
directory = use_compilation_cache(sys.argv[1])
with warnings.catch_warnings():
  warnings.simplefilter("error")  # a failed cache write is a warning in JAX
  jax.jit(lambda x: jnp.cos(x) * float(sys.argv[2]))(jnp.ones(3)).block_until_ready()
print(directory, jax.config.jax_compilation_cache_max_size)
"""


def _cache(tmp_path, constant=2.0, **env):
  base = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
  out = subprocess.run(
    [sys.executable, "-c", _CACHE_PROBE, str(tmp_path / "default"), str(constant)],
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
  # A directory the environment chose keeps JAX's own (uncapped) default.
  assert _cache(tmp_path, JAX_COMPILATION_CACHE_DIR=mine) == (mine, -1)


def test_entries_written_without_the_cap_do_not_break_capped_writes(tmp_path):
  cache = tmp_path / "default"
  cache.mkdir()
  # An entry of an uncapped cache (an earlier version): no "-atime" file beside it.
  (cache / "jit_old-0123-cache").write_bytes(b"x" * 100)
  assert _cache(tmp_path, constant=3.0) == (str(cache), host.CACHE_MAX_BYTES)
  assert (cache / "jit_old-0123-atime").is_file()
  written = [p.name for p in cache.glob("*-cache") if not p.name.startswith("jit_old")]
  assert written, "the new program was not cached"


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


def test_compile_clock_counts_a_cache_hit_once():
  # On a persistent-cache hit JAX reports the retrieval and, around it, the backend
  # compile duration (which includes it): the clock counts the outer one only, so the
  # training time (wall minus compilation) cannot turn negative.
  import jax.monitoring

  with host.CompileClock() as clock:
    jax.monitoring.record_event_duration_secs(
      "/jax/compilation_cache/cache_retrieval_time_sec", 0.5
    )
    jax.monitoring.record_event_duration_secs("/jax/core/compile/backend_compile_duration", 0.6)
    jax.monitoring.record_event_duration_secs("/jax/core/compile/jaxpr_trace_duration", 0.2)
  assert clock.seconds == pytest.approx(0.6)
