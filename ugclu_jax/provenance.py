"""Where a report comes from: versions, source commit, devices and wall-clock times.

``report.json`` carries one :func:`provenance` record under ``"provenance"``, written by
the invocation that wrote the file (a resumed run records where it resumed).
:func:`ugclu_jax.report.without_timings` drops it with the other wall-clock fields, so
two runs of one seed still compare equal.
"""

import datetime
import importlib.metadata
import pathlib
import platform
import subprocess
from typing import Any, Optional

import jax

PACKAGES = ("ugclu_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


def utc_now() -> str:
  """The current time, ISO 8601 in UTC to the second, e.g. ``2026-12-03T14:20:00Z``."""
  now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
  return now.isoformat().replace("+00:00", "Z")


def _version(name: str) -> Optional[str]:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def source_commit(path: Optional[pathlib.Path] = None) -> Optional[dict[str, Any]]:
  """``{"commit": sha, "dirty": bool}`` of the git work tree holding ``path`` (default:
  this package), ``dirty`` when tracked files differ from the commit; None outside git
  or without a ``git`` executable."""
  where = str(path or pathlib.Path(__file__).resolve().parent)

  def git(*args):
    return subprocess.run(
      ["git", "-C", where, *args], capture_output=True, text=True, timeout=10, check=True
    ).stdout.strip()

  try:
    commit = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
  except (OSError, subprocess.SubprocessError):
    return None
  return {"commit": commit, "dirty": dirty}


def provenance(*, started: str, resumed_at: Optional[int] = None) -> dict[str, Any]:
  """The provenance record of a run invocation; ``finished`` is None until it completes.

  Args:
    started: when this invocation started (:func:`utc_now`).
    resumed_at: the request it resumed at, or None for a run from the start.
  """
  devices = jax.devices()
  return {
    "versions": {"python": platform.python_version(), **{p: _version(p) for p in PACKAGES}},
    "source": source_commit(),
    "devices": {
      "platform": devices[0].platform,
      "kind": devices[0].device_kind,
      "count": len(devices),
      "processes": jax.process_count(),
    },
    "started": started,
    "finished": None,
    "resumed_at": resumed_at,
  }
