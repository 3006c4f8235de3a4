"""Fixed-shape host-side batches.

Training batches are computed statelessly: the infinite sample stream of an
index set is the concatenation of epoch permutations, epoch ``e`` being
``np.random.default_rng([*seed, e]).permutation(indices)``, and step ``s``
takes positions ``[s * B, (s + 1) * B)`` of that stream. A batch may straddle
two epochs, so every batch is full (``[B, ...]``) even when ``B`` does not
divide the set, or exceeds it; within every epoch each index appears exactly
once. Nothing needs to be carried between steps or checkpointed: the
``(seed, step)`` pair determines the batch.

Evaluation batches walk the indices in order and pad the last batch with
zeros and ``mask = 0``.
"""

from typing import Iterator, Sequence, Union

import numpy as np

from ugclu_jax.data.datasets import to_float
from ugclu_jax.types import Batch

Seed = Union[int, Sequence[int]]


def _entropy(seed: Seed) -> list[int]:
  entropy = [int(seed)] if np.ndim(seed) == 0 else [int(s) for s in seed]
  if any(s < 0 for s in entropy):
    raise ValueError(f"seed must be non-negative, got {seed}")
  return entropy


def seed_int(seed: Seed) -> int:
  """One 32-bit integer drawn from a seed sequence (``np.random.SeedSequence``), for the
  APIs that take a single int: ``jax.random.key``, ``nnx.Rngs``."""
  return int(np.random.SeedSequence(_entropy(seed)).generate_state(1)[0])


def as_indices(indices) -> np.ndarray:
  """``indices`` as a 1-D int64 array (one-line error for anything else)."""
  indices = np.asarray(indices)
  if indices.ndim != 1 or not (indices.size == 0 or np.issubdtype(indices.dtype, np.integer)):
    raise ValueError(f"indices must be a 1-D integer array, got {indices.dtype} {indices.shape}")
  return indices.astype(np.int64)


def epoch_permutation(indices, epoch: int, seed: Seed) -> np.ndarray:
  """The order in which epoch ``epoch`` visits ``indices``."""
  rng = np.random.default_rng(_entropy(seed) + [int(epoch)])
  return rng.permutation(as_indices(indices))


def batch_indices(indices, batch_size: int, step: int, seed: Seed) -> np.ndarray:
  """The ``step``-th training batch of ``indices``, without any state.

  Args:
    indices: ``[n]`` sample indices, ``n >= 1`` (their order matters: pass them
      sorted for results independent of how the set was built).
    batch_size: ``B >= 1``.
    step: batch number, ``>= 0``.
    seed: a non-negative int or sequence of ints.

  Returns:
    ``int64 [B]``: entries ``p % n`` of epoch permutation ``p // n`` for the
    stream positions ``p = step * B + arange(B)``.
  """
  indices = as_indices(indices)
  if indices.size == 0:
    raise ValueError("cannot draw batches from an empty index set")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if step < 0:
    raise ValueError(f"step must be >= 0, got {step}")
  n = indices.size
  positions = int(step) * int(batch_size) + np.arange(batch_size, dtype=np.int64)
  epochs, offsets = np.divmod(positions, n)
  out = np.empty(batch_size, dtype=np.int64)
  for epoch in np.unique(epochs):
    where = epochs == epoch
    out[where] = epoch_permutation(indices, int(epoch), seed)[offsets[where]]
  return out


def make_batch(x: np.ndarray, y: np.ndarray, indices) -> Batch:
  """Gathers a full batch: ``x`` as float32 in ``[0, 1]``, ``mask`` all ones."""
  indices = as_indices(indices)
  return Batch(
    x=to_float(x[indices]),
    y=np.asarray(y[indices], dtype=np.int32),
    mask=np.ones(indices.size, dtype=np.float32),
  )


def sample_batch(
  x: np.ndarray,
  y: np.ndarray,
  indices,
  *,
  batch_size: int,
  step: int,
  seed: Seed,
) -> Batch:
  """The ``step``-th training batch (see :func:`batch_indices`), gathered."""
  return make_batch(x, y, batch_indices(indices, batch_size, step, seed))


def num_eval_batches(num_examples: int, batch_size: int) -> int:
  """``ceil(num_examples / batch_size)``."""
  return -(-int(num_examples) // int(batch_size))


def eval_batches(x: np.ndarray, y: np.ndarray, indices, batch_size: int) -> Iterator[Batch]:
  """Yields ``indices`` in order as batches of exactly ``batch_size``.

  The last batch is padded with zero images, label 0 and ``mask = 0``. An empty
  index set yields nothing.

  Args:
    x: images (uint8 or float).
    y: integer labels.
    indices: ``[n]`` indices into ``x`` and ``y``.
    batch_size: ``B >= 1``.

  Yields:
    ``Batch`` with ``x float32 [B, ...]``, ``y int32 [B]``, ``mask float32
    [B]``.
  """
  indices = as_indices(indices)
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  for start in range(0, indices.size, batch_size):
    chunk = indices[start : start + batch_size]
    batch = make_batch(x, y, chunk)
    pad = batch_size - chunk.size
    if pad:
      batch = Batch(
        x=np.concatenate([batch.x, np.zeros((pad,) + batch.x.shape[1:], np.float32)]),
        y=np.concatenate([batch.y, np.zeros(pad, np.int32)]),
        mask=np.concatenate([batch.mask, np.zeros(pad, np.float32)]),
      )
    yield batch
