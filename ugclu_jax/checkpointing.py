"""Checkpoints after every request, through one small module over Orbax.

A checkpoint holds an array pytree (every method's parameters and state, the
remaining store, the learned-sample mask) and JSON metadata (the request
cursor, the partial report, the resolved config). Arrays are saved as a flat
``{"000": leaf, ...}`` dict and restored into the tree structure of a template,
so empty containers (models without batch norm) need no special care.
Saves are atomic (Orbax writes to a temporary folder and renames it): a run
killed while saving keeps its previous checkpoint.
"""

import pathlib
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp


def _flat(tree: Any) -> dict:
  return {f"{i:05d}": np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(tree))}


class Checkpointer:
  """Saves and restores ``(arrays, meta)`` pairs under ``directory``, keyed by step.

  Use as a context manager (saves are asynchronous; leaving the block waits).
  """

  def __init__(self, directory: str | pathlib.Path, *, max_to_keep: int = 2):
    self._manager = ocp.CheckpointManager(
        pathlib.Path(directory).resolve(),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, arrays: Any, meta: dict) -> None:
    """Saves and waits until the checkpoint is complete on disk."""
    self._manager.save(step, args=ocp.args.Composite(
        arrays=ocp.args.StandardSave(_flat(arrays)), meta=ocp.args.JsonSave(meta)))
    self._manager.wait_until_finished()

  def restore(self, step: int, template: Any) -> tuple[Any, dict]:
    """Restores step ``step`` into the structure, shapes and dtypes of ``template``."""
    flat = _flat(template)
    abstract = {k: np.zeros(v.shape, v.dtype) for k, v in flat.items()}
    out = self._manager.restore(step, args=ocp.args.Composite(
        arrays=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    leaves = [out.arrays[k] for k in sorted(flat)]
    return jax.tree.unflatten(jax.tree.structure(template), leaves), out.meta


def read_meta(directory: str | pathlib.Path) -> Optional[dict]:
  """The metadata of the latest checkpoint under ``directory``, or None if there is none."""
  path = pathlib.Path(directory)
  if not path.is_dir():
    return None
  with Checkpointer(path) as ckpt:
    step = ckpt.latest_step()
    if step is None:
      return None
    return ckpt._manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore())).meta
