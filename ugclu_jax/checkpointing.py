"""Checkpoints after every request, through one small module over Orbax, verified by a hash.

A checkpoint holds an array pytree (every method's parameters and state, the
remaining store, the learned-sample mask) and JSON metadata (the request
cursor, the partial report, the resolved config). Arrays are saved as a flat
``{"00000": leaf, ...}`` dict and restored into the tree structure of a
template, so empty containers (models without batch norm) need no special care.

Checkpoints cannot lie. Orbax writes a step atomically (to a temporary folder,
then renamed); after that, ``integrity.json`` is written into the step folder,
last: the SHA-256 of the arrays (key, dtype, shape and bytes, in key order) and
of the canonical JSON metadata (:func:`content_hash`). A step is *good* when its
hash is present and matches what is restored. Restoring walks the steps newest
first, reports each damaged one in one line (a missing hash, a mismatch, or any
error while restoring: a truncated or deleted array file, a missing manifest,
missing or truncated metadata) and returns the newest good one. A run killed
at any moment keeps a good checkpoint: the one being written has no hash yet.
"""

import contextlib
import gc
import hashlib
import io
import json
import logging
import os
import pathlib
import shutil
import sys
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from ugclu_jax import parallel as PL

INTEGRITY = "integrity.json"
# Loggers that print tracebacks of a failed restore (tensorstore errors surface
# through Orbax's threads and asyncio's "exception was never retrieved").
_NOISY_LOGGERS = ("absl", "asyncio", "orbax", "jax._src.distributed")


class CheckpointError(ValueError):
  """No intact checkpoint can be restored (one line)."""

  exit_code = 4  # An I/O or environment error (ugclu_jax.errors.ENVIRONMENT).


class DamagedError(Exception):
  """One step fails verification (the message is one line).

  ``incomplete``: the step has no hash yet (a run stopped while writing it).
  """

  def __init__(self, message: str, *, incomplete: bool = False):
    super().__init__(message)
    self.incomplete = incomplete


def _flat(tree: Any) -> dict:
  return {f"{i:05d}": np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(tree))}


def _canonical(meta: Any) -> bytes:
  return json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def content_hash(flat: dict, meta: Any) -> str:
  """SHA-256 over arrays (key, dtype, shape, bytes; in key order) and canonical JSON ``meta``."""
  h = hashlib.sha256()
  for key in sorted(flat):
    a = np.ascontiguousarray(np.asarray(flat[key]))
    h.update(json.dumps([key, a.dtype.str, list(a.shape)]).encode())
    h.update(a.tobytes())
  h.update(b"meta")
  h.update(_canonical(meta))
  return h.hexdigest()


def _one_line(error: BaseException, limit: int = 160) -> str:
  text = " ".join(str(error).split()) or type(error).__name__
  if not isinstance(error, DamagedError):
    text = f"{type(error).__name__}: {text}"
  return text if len(text) <= limit else text[: limit - 3] + "..."


_previous_unraisablehook = None


def _unraisablehook(unraisable):
  # Tensorstore completes the reads of a failed restore after Orbax closed its
  # event loop; each then reports "Event loop is closed" as unraisable.
  exc = unraisable.exc_value
  if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
    return
  _previous_unraisablehook(unraisable)


def _filter_unraisable() -> None:
  global _previous_unraisablehook
  if _previous_unraisablehook is None:
    _previous_unraisablehook = sys.unraisablehook
    sys.unraisablehook = _unraisablehook


@contextlib.contextmanager
def _quiet(collect: bool = False):
  """Silences the log records and stray tracebacks of a failing restore (``collect`` it)."""
  _filter_unraisable()
  loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
  levels = [lg.level for lg in loggers]
  for lg in loggers:
    lg.setLevel(logging.CRITICAL + 1)
  try:
    yield
  finally:
    if collect:
      gc.collect()  # Futures that died with an exception log it when collected: now.
    for lg, level in zip(loggers, levels):
      lg.setLevel(level)


class Checkpointer:
  """Saves and restores verified ``(arrays, meta)`` pairs under ``directory``, keyed by step.

  Use as a context manager (leaving the block waits for pending writes). It is
  process-local: in a multi-process run the process that creates it reads and
  writes it alone, with no barrier with the others (see :class:`PrimaryCheckpointer`).
  """

  def __init__(self, directory: str | pathlib.Path, *, max_to_keep: int = 2):
    self.directory = pathlib.Path(directory).resolve()
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    if jax.process_count() > 1:  # Orbax's barriers and writes: this process only.
      self.directory.mkdir(parents=True, exist_ok=True)
      me = jax.process_index()
      options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=False,
        multiprocessing_options=ocp.options.MultiprocessingOptions(
          primary_host=me, active_processes={me}
        ),
      )
    with _quiet():  # A step without Orbax's metadata file logs warnings here.
      self._manager = ocp.CheckpointManager(self.directory, options=options)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def steps(self) -> list[int]:
    """Every step on disk, good or damaged, newest first."""
    with _quiet():
      self._manager.reload()
    return sorted(self._manager.all_steps(), reverse=True)

  def latest_step(self) -> Optional[int]:
    """The newest step on disk (it may be damaged; see :meth:`restore_latest_good`)."""
    steps = self.steps()
    return steps[0] if steps else None

  def step_dir(self, step: int) -> pathlib.Path:
    return self.directory / str(step)

  def save(self, step: int, arrays: Any, meta: dict) -> None:
    """Saves, waits until the checkpoint is on disk, then writes its hash (last)."""
    flat = _flat(arrays)
    meta = json.loads(_canonical(meta))
    saved = self._manager.save(
      step,
      args=ocp.args.Composite(arrays=ocp.args.StandardSave(flat), meta=ocp.args.JsonSave(meta)),
    )
    self._manager.wait_until_finished()
    if not saved:
      raise CheckpointError(
        f"checkpoint {step} was not written to {self.directory}: a step >= {step} already exists"
      )
    path = self.step_dir(step) / INTEGRITY
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
      json.dump({"sha256": content_hash(flat, meta)}, f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)

  def _expected_hash(self, step: int) -> str:
    path = self.step_dir(step) / INTEGRITY
    try:
      return json.loads(path.read_text())["sha256"]
    except FileNotFoundError:
      raise DamagedError(
        "no content hash: integrity.json is missing, the save did not finish", incomplete=True
      ) from None
    except (ValueError, KeyError, TypeError):
      raise DamagedError("unreadable content hash (integrity.json)") from None

  def _restore_verified(self, step: int, abstract: Optional[dict]) -> tuple[dict, dict]:
    expected = self._expected_hash(step)
    with _quiet(collect=True):
      try:
        out = self._manager.restore(
          step,
          args=ocp.args.Composite(
            arrays=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
          ),
        )
        flat = {k: np.asarray(v) for k, v in out.arrays.items()}
        meta = out.meta
      except Exception as e:  # tensorstore, asyncio, JSON, missing files: all damage.
        raise DamagedError(_one_line(e)) from None
    if not isinstance(meta, dict) or content_hash(flat, meta) != expected:
      raise DamagedError("content hash mismatch")
    return flat, meta

  def verify(self, step: int) -> dict:
    """Restores step ``step`` as saved and checks its hash; returns its metadata.

    Raises:
      DamagedError: the step is damaged (the message is one line).
    """
    return self._restore_verified(step, None)[1]

  def restore(self, step: int, template: Any) -> tuple[Any, dict]:
    """Restores step ``step`` into the structure, shapes and dtypes of ``template``.

    Raises:
      DamagedError: the step is damaged (the message is one line).
    """
    flat = _flat(template)
    abstract = {k: np.zeros(v.shape, v.dtype) for k, v in flat.items()}
    out, meta = self._restore_verified(step, abstract)
    if sorted(out) != sorted(flat):
      raise DamagedError("arrays do not match the expected structure")
    leaves = [out[k] for k in sorted(flat)]
    return jax.tree.unflatten(jax.tree.structure(template), leaves), meta

  def read_unverified(self, step: int, template: Any) -> tuple[Any, Any]:
    """``(tree or None, meta or None)``: what of a step can be read, unchecked (for audits).

    Never resume from it: use :meth:`restore` or :meth:`restore_latest_good`.
    """
    flat = _flat(template)
    abstract = {k: np.zeros(v.shape, v.dtype) for k, v in flat.items()}
    tree = meta = None
    with _quiet(collect=True):
      try:
        out = self._manager.restore(
          step, args=ocp.args.Composite(arrays=ocp.args.StandardRestore(abstract))
        )
        leaves = [np.asarray(out.arrays[k]) for k in sorted(flat)]
        tree = jax.tree.unflatten(jax.tree.structure(template), leaves)
      except Exception:  # Unreadable arrays: nothing to look at.
        pass
    try:
      meta = json.loads((self.step_dir(step) / "meta" / "metadata").read_text())
    except (OSError, ValueError):
      pass
    return tree, meta

  def _newest_good(
    self, attempt: Callable[[int], Any], log: Callable[[str], None]
  ) -> tuple[Optional[int], Any]:
    """The newest step that ``attempt`` verifies; ``(None, None)`` if every step is incomplete.

    Each step that fails is logged in one line, ``checkpoint {step} in {directory} is ...``.
    """
    steps, damaged = self.steps(), False
    for step in steps:
      try:
        return step, attempt(step)
      except DamagedError as e:
        damaged |= not e.incomplete
        what = "incomplete" if e.incomplete else "damaged"
        log(f"checkpoint {step} in {self.directory} is {what} ({e}); skipping it")
    if damaged:
      raise CheckpointError(
        f"no intact checkpoint in {self.directory} ({len(steps)} failed "
        f"verification, newest {steps[0]}); start the run again in a new "
        f"--workdir"
      )
    return None, None

  def restore_latest_good(
    self, template: Any, log: Callable[[str], None] = lambda s: None
  ) -> tuple[int, Any, dict]:
    """The newest good step: ``(step, tree, meta)``; newer steps are logged (one line each).

    Raises:
      CheckpointError: no step is good (one line).
    """
    step, out = self._newest_good(lambda s: self.restore(s, template), log)
    if step is None:
      raise CheckpointError(f"no complete checkpoint in {self.directory}")
    return step, *out

  def delete(self, step: int) -> None:
    """Deletes one step (good or damaged)."""
    shutil.rmtree(self.step_dir(step))
    with _quiet():
      self._manager.reload()

  def leftovers(self) -> list[pathlib.Path]:
    """Entries that are no step: unfinished Orbax writes (``*.orbax-checkpoint-tmp*``)."""
    return sorted(p for p in self.directory.iterdir() if not p.name.isdigit())

  def clean_after(self, step: Optional[int]) -> list[int]:
    """Deletes every step after ``step`` (all for None) and unfinished writes; before resuming."""
    for path in self.leftovers():
      shutil.rmtree(path) if path.is_dir() else path.unlink()
    gone = [s for s in self.steps() if step is None or s > step]
    for s in gone:
      self.delete(s)
    return gone

  def delete_older(self, step: int) -> list[int]:
    """Deletes every step before ``step`` (after an unlearn request commits at ``step``)."""
    gone = [s for s in self.steps() if s < step]
    for s in gone:
      self.delete(s)
    return gone


def _pack(head: dict, leaves: list) -> bytes:
  """``head`` (JSON) and arrays in one ``.npz`` byte string (:func:`_unpack`)."""
  buffer = io.BytesIO()
  np.savez(buffer, np.frombuffer(_canonical(head), np.uint8), *leaves)
  return buffer.getvalue()


def _unpack(data: bytes) -> tuple[dict, list]:
  with np.load(io.BytesIO(data)) as arrays:
    items = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
  return json.loads(items[0].tobytes()), items[1:]


class PrimaryCheckpointer:
  """The :class:`Checkpointer` of process 0, called alike by every process of a run.

  Process 0 alone reads and writes ``directory``: the others need no shared file
  system. :meth:`save` gathers the arrays in every process
  (:func:`~ugclu_jax.parallel.to_host`) and process 0 writes them;
  :meth:`restore_latest_good` hands what process 0 restores (or its error) to
  every process (:func:`~ugclu_jax.parallel.broadcast_bytes`). On the other
  processes, :meth:`steps` and the deletions find no step. Every process must
  call :meth:`save` and :meth:`restore_latest_good` in the same order.
  """

  def __init__(self, directory: str | pathlib.Path, *, max_to_keep: int = 2):
    self.directory = pathlib.Path(directory).resolve()
    self._local = Checkpointer(directory, max_to_keep=max_to_keep) if PL.is_primary() else None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def close(self) -> None:
    if self._local is not None:
      self._local.close()

  def step_dir(self, step: int) -> pathlib.Path:
    return self.directory / str(step)

  def steps(self) -> list[int]:
    return [] if self._local is None else self._local.steps()

  def verify(self, step: int) -> dict:
    return self._local.verify(step)

  def save(self, step: int, arrays: Any, meta: dict) -> None:
    arrays = PL.to_host(arrays)
    if self._local is not None:
      self._local.save(step, arrays, meta)

  def restore_latest_good(
    self, template: Any, log: Callable[[str], None] = lambda s: None
  ) -> tuple[int, Any, dict]:
    """:meth:`Checkpointer.restore_latest_good` of process 0, in every process."""
    template = PL.to_host(template)
    if jax.process_count() == 1:
      return self._local.restore_latest_good(template, log)
    if self._local is not None:
      try:
        step, tree, meta = self._local.restore_latest_good(template, log)
      except CheckpointError as e:
        PL.broadcast_bytes(_pack({"error": str(e)}, []))
        raise
      PL.broadcast_bytes(_pack({"step": step, "meta": meta}, jax.tree.leaves(tree)))
      return step, tree, meta
    head, leaves = _unpack(PL.broadcast_bytes(None))
    if "error" in head:
      raise CheckpointError(f"process 0: {head['error']}")
    return head["step"], jax.tree.unflatten(jax.tree.structure(template), leaves), head["meta"]

  def clean_after(self, step: Optional[int]) -> list[int]:
    return [] if self._local is None else self._local.clean_after(step)

  def delete_older(self, step: int) -> list[int]:
    return [] if self._local is None else self._local.delete_older(step)


def read_meta(
  directory: str | pathlib.Path, log: Callable[[str], None] = lambda s: None
) -> Optional[dict]:
  """The metadata of the newest good checkpoint under ``directory``; None if there is none.

  Every step is verified (arrays and metadata against its hash) before its
  metadata is trusted; newer steps that fail are logged in one line each. Steps
  that are only incomplete (killed before their hash was written) count as none.

  Raises:
    CheckpointError: a step is damaged and none is good (one line).
  """
  path = pathlib.Path(directory)
  if not path.is_dir():
    return None
  with Checkpointer(path) as ckpt:
    return ckpt._newest_good(ckpt.verify, log)[1]
