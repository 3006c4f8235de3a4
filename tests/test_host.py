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
