"""Data parallelism over local devices or several processes' devices (docs/design.md §11).

One mesh axis, ``"data"``: batches are split along their batch axis and
parameters, optimizer and model state are replicated. The jitted steps need no
change. Given inputs with these shardings, XLA's SPMD partitioner runs each
device's share of the batch and all-reduces the sums inside every masked mean
:math:`\\sum_i m_i \\ell_i / \\sum_i m_i`. The loss, and so the gradient, is
therefore the same quantity on any number of devices, up to float rounding.

    mesh = data_mesh(4)
    params = replicate(params, mesh)
    batch = shard_batch(host_batch, mesh)       # [B, ...] split in 4 along B
    state, metrics = step(state, batch, ...)    # the same jitted step

Several processes (hosts, or local processes on one machine) run the same program
after :func:`initialize_distributed`: :func:`data_mesh` then spans every process's
devices, each process computes the same host batches and puts only its own
contiguous share of the batch axis on its devices (:func:`shard_batch`), and
:func:`to_host` brings a result back to host memory in every process;
:func:`from_primary` and :func:`broadcast_bytes` hand what process 0 alone read
(a checkpoint) to the others. The runner uses the mesh when ``train.devices`` is
not 1, or when it runs in several processes (``python -m ugclu_jax run --distributed``).
"""

import json
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ugclu_jax import errors

DATA_AXIS = "data"


def initialize_distributed(
  coordinator: Optional[str] = None,
  num_processes: Optional[int] = None,
  process_id: Optional[int] = None,
) -> None:
  """Joins this process to a multi-process JAX run (``jax.distributed.initialize``).

  Call it once, before any other JAX call. Without arguments JAX detects the
  cluster (SLURM, Open MPI, Cloud TPU, ...); on one machine give all three, the
  same ``coordinator`` (``host:port`` of process 0) and ``num_processes`` in every
  process and each its own ``process_id``. CPU collectives go through gloo
  (unless JAX is set to MPI); GPU and TPU use their own.

  Raises:
    ValueError: ``process_id`` without ``num_processes``, or either out of range.
  """
  if process_id is not None and num_processes is None:
    raise ValueError(f"process_id={process_id} needs num_processes")
  if num_processes is not None and num_processes < 1:
    raise ValueError(f"num_processes={num_processes} must be at least 1")
  if process_id is not None and not 0 <= process_id < num_processes:
    raise ValueError(
      f"process_id={process_id} is out of range for num_processes={num_processes}: "
      f"use 0 to {num_processes - 1}"
    )
  if jax.config.jax_cpu_collectives_implementation != "mpi":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator, num_processes, process_id)


def is_primary() -> bool:
  """Whether this is process 0 (always, in a single-process run)."""
  return jax.process_index() == 0


def data_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D mesh named ``"data"`` over the first ``num_devices`` local devices.

  In a multi-process run it takes the first ``num_devices`` local devices of every
  process, grouped by process: each process holds a contiguous block of every batch.

  Args:
    num_devices: how many devices (of each process); 0 takes all of them.

  Raises:
    ValueError: if there are fewer local devices than asked for.
  """
  if jax.process_count() > 1:
    by_process = {}
    for d in sorted(jax.devices(), key=lambda d: (d.process_index, d.id)):
      by_process.setdefault(d.process_index, []).append(d)
    fewest = min(len(v) for v in by_process.values())
    n = num_devices or jax.local_device_count()
    if not 1 <= n <= fewest:
      raise ValueError(
        f"num_devices={num_devices}: a process of this run has {fewest} local device(s)"
      )
    return Mesh(np.asarray([d for v in by_process.values() for d in v[:n]]), (DATA_AXIS,))
  devices = jax.local_devices()
  n = len(devices) if num_devices == 0 else num_devices
  if not 1 <= n <= len(devices):
    raise ValueError(
      f"num_devices={num_devices}: this process has {len(devices)} local "
      f"device(s) ({devices[0].platform})"
    )
  return Mesh(np.asarray(devices[:n]), (DATA_AXIS,))


def num_shards(mesh: Optional[Mesh]) -> int:
  """How many ways a batch is split (1 without a mesh)."""
  return 1 if mesh is None else mesh.shape[DATA_AXIS]


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
  """Split along ``batch_axis`` over the ``"data"`` axis, replicated along the others."""
  return NamedSharding(mesh, PartitionSpec(*([None] * batch_axis), DATA_AXIS))


def _spans_processes(mesh: Mesh) -> bool:
  return any(d.process_index != jax.process_index() for d in mesh.devices.flat)


def process_rows(size: int, mesh: Mesh, batch_axis: int = 0) -> slice:
  """This process's contiguous share of a batch axis of ``size`` split over ``mesh``."""
  shape = (1,) * batch_axis + (size,)
  rows = sorted(
    index[batch_axis].indices(size)[:2]
    for index in batch_sharding(mesh, batch_axis).addressable_devices_indices_map(shape).values()
  )
  for (_, stop), (start, _) in zip(rows, rows[1:]):
    if start != stop:
      raise ValueError(f"this process's devices hold no contiguous block of the mesh: {rows}")
  return slice(rows[0][0], rows[-1][1])


def shard_batch(batch: Any, mesh: Optional[Mesh], *, batch_axis: int = 0) -> Any:
  """Host arrays as device arrays split over ``mesh`` along ``batch_axis``.

  Without a mesh (``None``) the arrays go to the default device unchanged. When
  the mesh spans several processes, each passes the same host batch and puts only
  its own rows (:func:`process_rows`) on its devices
  (``jax.make_array_from_process_local_data``).

  Raises:
    ValueError: if a leaf's batch dimension does not divide evenly.
  """
  if mesh is None:
    return jax.tree.map(jnp.asarray, batch)
  n = num_shards(mesh)
  for leaf in jax.tree.leaves(batch):
    if np.shape(leaf)[batch_axis] % n:
      raise ValueError(
        f"a batch of {np.shape(leaf)[batch_axis]} does not split over {n} "
        f"devices; make the batch size a multiple of {n}"
      )
  sharding = batch_sharding(mesh, batch_axis)
  if not _spans_processes(mesh):
    return jax.device_put(batch, sharding)

  def put(leaf):
    leaf = np.asarray(leaf)
    mine = (slice(None),) * batch_axis + (process_rows(leaf.shape[batch_axis], mesh, batch_axis),)
    return jax.make_array_from_process_local_data(sharding, leaf[mine], leaf.shape)

  return jax.tree.map(put, batch)


def replicate(tree: Any, mesh: Optional[Mesh]) -> Any:
  """Every leaf replicated on all devices of ``mesh`` (unchanged without a mesh).

  In a multi-process run every process must pass the same values.
  """
  if mesh is None:
    return tree
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def to_host(tree: Any) -> Any:
  """Every leaf as a host NumPy array, the whole global array in every process.

  A leaf split over several processes is gathered
  (``multihost_utils.process_allgather``, a collective: every process must call
  this in the same order); anything else is ``np.asarray``.
  """

  def get(leaf):
    if isinstance(leaf, jax.Array) and not (leaf.is_fully_addressable or leaf.is_fully_replicated):
      from jax.experimental import multihost_utils

      return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
    return np.asarray(leaf)

  return jax.tree.map(get, tree)


def broadcast_bytes(data: Optional[bytes]) -> bytes:
  """Process 0's ``data`` in every process (the others pass anything; a collective).

  Returns ``data`` itself in a single-process run.
  """
  if jax.process_count() == 1:
    return data
  from jax.experimental import multihost_utils

  size = np.asarray([len(data) if is_primary() else 0], np.int32)
  size = int(multihost_utils.broadcast_one_to_all(size)[0])
  if size == 0:
    return b""
  buf = np.frombuffer(data, np.uint8) if is_primary() else np.zeros(size, np.uint8)
  return np.asarray(multihost_utils.broadcast_one_to_all(buf), np.uint8).tobytes()


class PrimaryError(RuntimeError):
  """Process 0 failed in :func:`from_primary`: its one-line message and its exit code."""

  def __init__(self, message: str, exit_code: int):
    super().__init__(message)
    self.exit_code = exit_code


def from_primary(fn: Callable[[], Any]) -> Any:
  """``fn()`` (a JSON value) run by process 0 alone, returned in every process.

  A collective. If ``fn`` raises, process 0 raises its error and the others a
  :class:`PrimaryError` with its message and exit code. ``fn()`` in a
  single-process run.
  """
  if jax.process_count() == 1:
    return fn()
  if not is_primary():
    out = json.loads(broadcast_bytes(None))
    if "error" in out:
      raise PrimaryError(f"process 0: {out['error']}", out["code"])
    return out["value"]
  try:
    value = fn()
  except BaseException as e:
    broadcast_bytes(json.dumps({"error": errors.message(e), "code": errors.exit_code(e)}).encode())
    raise
  broadcast_bytes(json.dumps({"value": value}).encode())
  return value
