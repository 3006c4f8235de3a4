"""A multilayer perceptron on flattened NHWC inputs."""

from collections.abc import Sequence
import math

import jax
import jax.numpy as jnp
from flax import nnx


class MLP(nnx.Module):
  """Fully connected classifier: flatten, ``[Linear, ReLU] * len(hidden)``, Linear.

  The input ``[B, H, W, C]`` (or any ``[B, ...]``) is flattened to
  ``[B, H * W * C]``, which must equal ``in_features``. With ``hidden=()`` the
  model is multinomial logistic regression.

  Parameters are laid out as ``{"hidden": {0: {"kernel", "bias"}, ...},
  "head": {"kernel", "bias"}}``.
  """

  def __init__(
    self,
    in_features: int,
    num_classes: int,
    *,
    hidden: Sequence[int] = (256, 256),
    dtype: jnp.dtype | None = None,
    param_dtype: jnp.dtype = jnp.float32,
    rngs: nnx.Rngs,
  ):
    """Builds the layers.

    Args:
      in_features: number of input features after flattening (``H * W * C``).
      num_classes: number of output logits.
      hidden: widths of the hidden layers, in order; may be empty.
      dtype: computation dtype; ``None`` infers it from inputs and parameters.
      param_dtype: dtype of the parameters (float32 by default; float64 needs
        ``jax.enable_x64``).
      rngs: random streams for initialisation (``params`` stream).
    """
    hidden = tuple(hidden)
    if in_features < 1:
      raise ValueError(f"MLP: in_features must be >= 1, got {in_features}.")
    if num_classes < 1:
      raise ValueError(f"MLP: num_classes must be >= 1, got {num_classes}.")
    if any(h < 1 for h in hidden):
      raise ValueError(f"MLP: hidden widths must all be >= 1, got {hidden}.")
    self.in_features = in_features
    widths = (in_features, *hidden)
    self.hidden = nnx.List(
      [
        nnx.Linear(a, b, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        for a, b in zip(widths[:-1], widths[1:])
      ]
    )
    self.head = nnx.Linear(widths[-1], num_classes, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Returns logits ``[B, num_classes]`` for inputs ``[B, ...]``.

    Args:
      x: inputs, ``[B, H, W, C]`` or any shape whose trailing dimensions
        multiply to ``in_features``.
      train: unused (the model has no batch statistics or dropout); accepted
        for a uniform model interface.
    """
    del train
    if x.ndim < 2 or math.prod(x.shape[1:]) != self.in_features:
      raise ValueError(
        f"MLP: expected inputs [B, ...] with {self.in_features} features per"
        f" example, got shape {x.shape}."
      )
    x = x.reshape((x.shape[0], -1))
    for layer in self.hidden:
      x = nnx.relu(layer(x))
    return self.head(x)
