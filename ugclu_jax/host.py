"""Host memory for XLA's CPU backend: keep freed buffers in the process.

Each execution of a compiled XLA:CPU program allocates its temporaries as one
block (57-95 MB for a small-CNN training step at batch 128) and frees it on
return. glibc hands blocks that large back to the kernel (``mmap``/``munmap``,
or a trim of the heap), so the next call faults every page in again and the
kernel zeroes it: 15,000-24,000 page faults per step, a third to a half of the
step's time on a 2-core machine. PyTorch's caching allocator never returns its
blocks, which is most of the gap between the two on a CNN.

:func:`keep_freed_host_memory` sets glibc's ``mallopt`` so that such blocks
come from one heap and stay there: the page faults fall to under 100 per step.
It changes process-wide state, so the library never calls it on import; the
command line (``python -m ugclu_jax``), ``benchmarks/bench.py`` and
``experiments/stress.py`` call it once at start-up (``UGCLU_SYSTEM_MALLOC=1``
turns it off). The cost: the process keeps its peak host memory until it exits.
"""

import ctypes
import ctypes.util
import importlib.util
import os
import pathlib
import platform

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_LARGEST = 2**31 - 1

OFF_ENV = "UGCLU_SYSTEM_MALLOC"


def keep_freed_host_memory() -> bool:
  """Tells glibc to serve large blocks from one heap and never return them to the OS.

  ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` at their maximum (no ``mmap``
  per block, no trimming), ``M_ARENA_MAX`` 1 (XLA's worker threads share the
  main heap, whose size is not capped as a thread arena's 64 MB is). Call it
  before JAX starts its threads (before the first computation).

  Returns:
    True when applied; False on a C library other than glibc, or when the
    environment sets ``UGCLU_SYSTEM_MALLOC=1``.
  """
  if os.environ.get(OFF_ENV, "") not in ("", "0"):
    return False
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  ok = libc.mallopt(_M_MMAP_THRESHOLD, _LARGEST) == 1
  ok &= libc.mallopt(_M_TRIM_THRESHOLD, _LARGEST) == 1
  ok &= libc.mallopt(_M_ARENA_MAX, 1) == 1
  return bool(ok)


# JAX's monitoring events for the work of turning a traced function into an executable:
# lowering, and XLA compilation or loading the executable from the persistent cache
# (both reported as the backend compile duration). Left out, because a sum would count
# them twice: tracing (a jit traced inside another reports its own trace duration, which
# the outer one's already includes) and the cache's retrieval time (reported inside the
# backend compile duration of the same call).
COMPILE_EVENTS = frozenset(
  {
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
  }
)


class CompileClock:
  """Seconds JAX spends compiling while the clock runs (a context manager).

  Sums the durations of :data:`COMPILE_EVENTS` that ``jax.monitoring`` reports
  between ``__enter__`` and ``__exit__``, from any thread::

    with CompileClock() as clock:
      train()
    run_seconds = wall_seconds - clock.seconds
  """

  def __init__(self):
    self.seconds = 0.0
    self._listening = False

  def _listen(self, event: str, duration: float, **kwargs) -> None:
    del kwargs
    if event in COMPILE_EVENTS:
      self.seconds += float(duration)

  def __enter__(self) -> "CompileClock":
    import jax.monitoring  # here: the module stays importable without JAX

    jax.monitoring.register_event_duration_secs_listener(self._listen)
    self._listening = True
    return self

  def __exit__(self, *exc) -> None:
    import jax.monitoring

    if self._listening:
      jax.monitoring.unregister_event_duration_listener(self._listen)
      self._listening = False


CACHE_DIR = os.path.join("~", ".cache", "ugclu_jax", "xla")
CACHE_MAX_BYTES = 2 * 2**30


def use_compilation_cache(directory: str = CACHE_DIR, max_bytes: int = CACHE_MAX_BYTES) -> str:
  """Turns on JAX's persistent compilation cache, unless the environment chose one.

  Compiled steps are then shared by every later run on this machine. Where neither
  ``JAX_COMPILATION_CACHE_DIR`` nor ``jax.config`` names a directory, the cache
  goes to ``directory`` (``~`` expanded) and, unless a size limit is set, JAX
  deletes its least recently used entries beyond ``max_bytes`` (JAX needs the
  ``filelock`` package for that; without it the cache is not capped). A directory
  the environment chose keeps JAX's own settings.

  JAX's size cap reads an access-time file beside every entry; entries written
  without the cap (by an earlier version) get one, dated by their modification
  time, so that they can be evicted instead of failing every write.

  Returns:
    The cache directory in use.
  """
  import jax

  if jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir
  path = pathlib.Path(os.path.expanduser(directory))
  jax.config.update("jax_compilation_cache_dir", str(path))
  if jax.config.jax_compilation_cache_max_size == -1 and importlib.util.find_spec("filelock"):
    _give_entries_access_times(path)
    jax.config.update("jax_compilation_cache_max_size", int(max_bytes))
  return str(path)


def _give_entries_access_times(path: pathlib.Path) -> None:
  """Writes ``<key>-atime`` (JAX's LRU format: int64 ns, little-endian) where it is missing."""
  if not path.is_dir():
    return
  for entry in path.glob("*-cache"):
    atime = entry.with_name(entry.name.removesuffix("-cache") + "-atime")
    if not atime.exists():
      try:
        atime.write_bytes(entry.stat().st_mtime_ns.to_bytes(8, "little"))
      except OSError:  # removed meanwhile, or a read-only cache: JAX will say so itself
        pass
