"""Shared type aliases and the batch record used across ugclu_jax."""

from typing import Any, NamedTuple

import jax

Params = Any  # A pytree of arrays.
Updates = Any  # A pytree with the structure of Params.
ModelState = Any  # Non-trainable model variables (batch-norm statistics); may be empty.
PRNGKey = jax.Array


class Batch(NamedTuple):
  """A fixed-shape batch.

  Attributes:
    x: inputs, ``[B, ...]`` (images are NHWC).
    y: integer labels, ``[B]``.
    mask: float ``[B]``, 1 for real examples and 0 for padding. Training batches
      are full (all ones); evaluation batches are padded to a fixed size.
  """

  x: jax.Array
  y: jax.Array
  mask: jax.Array
