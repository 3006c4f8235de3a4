"""Data parallelism over the local devices (docs/design.md §11).

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

The runner uses the mesh when ``train.devices`` is not 1. A mesh spans this
process's devices; a multi-host run (``jax.distributed.initialize``) would also
need per-process data loading, which the runner does not do.
"""

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def data_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D mesh named ``"data"`` over the first ``num_devices`` local devices.

  Args:
    num_devices: how many devices; 0 takes all of them.

  Raises:
    ValueError: if there are fewer local devices than asked for.
  """
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


def shard_batch(batch: Any, mesh: Optional[Mesh], *, batch_axis: int = 0) -> Any:
  """Host arrays as device arrays split over ``mesh`` along ``batch_axis``.

  Without a mesh (``None``) the arrays go to the default device unchanged.

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
  return jax.device_put(batch, batch_sharding(mesh, batch_axis))


def replicate(tree: Any, mesh: Optional[Mesh]) -> Any:
  """Every leaf replicated on all devices of ``mesh`` (unchanged without a mesh)."""
  if mesh is None:
    return tree
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
