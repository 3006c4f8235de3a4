"""A small convolutional network for 28x28 grey-scale images."""

import jax
import jax.numpy as jnp
from flax import nnx

from ugclu_jax.models.conv import conv_general_dilated

# Two 2x2 max-pools with floor division: the input must be at least 4x4.
_MIN_SIZE = 4


def _max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pool, stride 2, floor division (as ``nnx.max_pool`` with VALID padding).

  Written as a reshape and a max: the same values, and a gradient several
  times cheaper on CPU than XLA's select-and-scatter.
  """
  b, h, w, c = x.shape
  x = x[:, : h // 2 * 2, : w // 2 * 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class SmallCNN(nnx.Module):
  """Conv32-ReLU-MaxPool, Conv64-ReLU-MaxPool, Dense128-ReLU, Dense(num_classes).

  Convolutions are 3x3 with ``SAME`` padding (on CPU their kernel gradient is a
  patch GEMM, :mod:`ugclu_jax.models.conv`); the 2x2 max-pools (stride 2) halve
  the spatial size with floor division, so a 28x28 input reaches the dense
  layers as 7x7x64 and an 8x8 input (scikit-learn digits) as 2x2x64. The spatial
  size is fixed at construction (``input_size``, minimum 4x4) because it sets
  the width of the first dense layer. No batch norm, no dropout.

  Parameters are laid out as ``{"conv1", "conv2", "dense", "head"}``, each with
  ``kernel`` and ``bias``.
  """

  def __init__(
    self,
    num_classes: int,
    *,
    in_channels: int = 1,
    input_size: tuple[int, int] = (28, 28),
    dtype: jnp.dtype | None = None,
    param_dtype: jnp.dtype = jnp.float32,
    rngs: nnx.Rngs,
  ):
    """Builds the layers.

    Args:
      num_classes: number of output logits.
      in_channels: channels of the NHWC input.
      input_size: ``(H, W)`` of the input, each at least 4.
      dtype: computation dtype; ``None`` infers it from inputs and parameters.
      param_dtype: dtype of the parameters (float32 by default).
      rngs: random streams for initialisation (``params`` stream).
    """
    height, width = input_size
    if num_classes < 1:
      raise ValueError(f"SmallCNN: num_classes must be >= 1, got {num_classes}.")
    if in_channels < 1:
      raise ValueError(f"SmallCNN: in_channels must be >= 1, got {in_channels}.")
    if height < _MIN_SIZE or width < _MIN_SIZE:
      raise ValueError(
        f"SmallCNN: input_size must be at least {_MIN_SIZE}x{_MIN_SIZE}, got {height}x{width}."
      )
    self.input_shape = (height, width, in_channels)
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    conv = dict(kernel_size=(3, 3), padding="SAME", conv_general_dilated=conv_general_dilated, **kw)
    self.conv1 = nnx.Conv(in_channels, 32, **conv)
    self.conv2 = nnx.Conv(32, 64, **conv)
    flat = (height // 4) * (width // 4) * 64
    self.dense = nnx.Linear(flat, 128, **kw)
    self.head = nnx.Linear(128, num_classes, **kw)

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Returns logits ``[B, num_classes]`` for NHWC inputs ``[B, H, W, C]``.

    Args:
      x: inputs whose trailing shape equals ``(*input_size, in_channels)``.
      train: unused (no batch statistics or dropout); accepted for a uniform
        model interface.
    """
    del train
    if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
      raise ValueError(
        f"SmallCNN: expected inputs [B, {', '.join(map(str, self.input_shape))}],"
        f" got shape {x.shape}."
      )
    x = _max_pool_2x2(nnx.relu(self.conv1(x)))
    x = _max_pool_2x2(nnx.relu(self.conv2(x)))
    x = x.reshape((x.shape[0], -1))
    x = nnx.relu(self.dense(x))
    return self.head(x)
