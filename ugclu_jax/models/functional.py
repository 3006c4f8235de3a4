"""Pure-function view of the NNX models, a model registry and a parameter count.

The training code never calls an ``nnx.Module`` directly. ``as_functional``
splits a model once into a static graph definition and two pytrees, and the
returned ``apply_fn`` merges them back inside every call, so ``jax.jit``,
``jax.grad`` and ``jax.jvp`` only ever see pytrees of arrays::

  model = get_model("cnn", num_classes=10, input_shape=(28, 28, 1),
                    rngs=nnx.Rngs(0))
  apply_fn, params, model_state = as_functional(model)

  def loss_fn(params, model_state, batch):
    logits, new_state = apply_fn(params, model_state, batch.x, train=True)
    return loss(logits=logits, labels=batch.y), new_state

  grads, new_state = jax.grad(loss_fn, has_aux=True)(params, model_state, batch)

``params`` and ``model_state`` are plain nested dicts of arrays
(``nnx.to_pure_dict``): keys are attribute names, and integer indices for the
blocks held in ``nnx.List`` containers. Plain dicts work unchanged with
``jax.tree.*``, ``optax.tree.*``, ``jax.grad``/``jax.jvp`` and Orbax
``StandardSave``/``StandardRestore`` (restore into a target built from
``jax.eval_shape`` or from the arrays' shapes). To write trained values back into
a module (for export or inspection) use
``nnx.merge(apply_fn.graphdef, params, model_state)``.
"""

from collections.abc import Callable, Mapping
import dataclasses
import math
import types
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ugclu_jax.models.cnn import SmallCNN
from ugclu_jax.models.mlp import MLP
from ugclu_jax.models.resnet import ResNet18
from ugclu_jax.types import ModelState, Params


@dataclasses.dataclass(frozen=True)
class ApplyFn:
  """Pure forward function of one model architecture.

  ``apply_fn(params, model_state, x, *, train) -> (logits, new_model_state)``.

  The call rebuilds the module from ``graphdef`` and the given pytrees with
  ``nnx.merge(..., copy=True)``, so nothing outside the call is read or mutated:
  the function is pure, jittable (``train`` is a Python bool, static) and
  differentiable with respect to ``params`` by ``jax.grad``, ``jax.jvp`` and
  their compositions (forward-over-reverse ``jax.jvp(jax.grad(...))``), batch
  norm in train mode included.

  Instances are immutable and hash and compare by ``graphdef``: two
  ``as_functional`` calls on the same model (or on two models of the same
  architecture and dtypes) give equal ``ApplyFn``s, so passing one as a static
  argument, or closing over it in a jitted step, never causes a retrace.

  Attributes:
    graphdef: the static ``nnx.GraphDef`` from ``nnx.split``.
  """

  graphdef: nnx.GraphDef
  # Hashing a GraphDef walks the whole graph (about a millisecond for
  # ResNet-18); jit hashes static arguments on every call, so hash once.
  _hash: int = dataclasses.field(init=False, repr=False, compare=False)

  def __post_init__(self):
    object.__setattr__(self, "_hash", hash(self.graphdef))

  def __hash__(self) -> int:
    return self._hash

  def __call__(
    self,
    params: Params,
    model_state: ModelState,
    x: jax.Array,
    *,
    train: bool,
  ) -> tuple[jax.Array, ModelState]:
    """Computes logits and the updated non-parameter state.

    Args:
      params: the ``nnx.Param`` pytree returned by ``as_functional``.
      model_state: every other variable (batch-norm running statistics); an
        empty dict for models without batch norm.
      x: inputs, ``[B, H, W, C]``.
      train: batch norm uses batch statistics and updates its running averages
        (True), or uses the running averages (False).

    Returns:
      ``(logits, new_model_state)``: logits ``[B, num_classes]``; in eval mode
      ``new_model_state`` is ``model_state`` itself, in train mode a pytree of the
      same structure holding the updated running averages.
    """
    if not isinstance(train, (bool, np.bool_)):
      raise ValueError(
        f"apply_fn: train must be a Python bool (static under jit), got {type(train).__name__}."
      )
    model = nnx.merge(self.graphdef, params, model_state, copy=True)
    logits = model(x, train=train)
    if not train:
      return logits, model_state
    _, _, new_state = nnx.split(model, nnx.Param, ...)
    return logits, nnx.to_pure_dict(new_state)


def as_functional(model: nnx.Module) -> tuple[ApplyFn, Params, ModelState]:
  """Splits an NNX model into a pure apply function and two pytrees.

  Args:
    model: any module whose ``__call__(x, *, train)`` returns logits.

  Returns:
    ``(apply_fn, params, model_state)``. ``params`` holds the ``nnx.Param``
    variables and ``model_state`` everything else (``BatchStat``; ``{}`` for a
    model without batch norm), both as nested dicts of arrays. The arrays are
    the model's own buffers, not copies: once a jitted step donates them the
    original module must not be used.
  """
  if not isinstance(model, nnx.Module):
    raise ValueError(f"as_functional: expected an nnx.Module, got {type(model).__name__}.")
  graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
  return (
    ApplyFn(graphdef),
    nnx.to_pure_dict(params),
    nnx.to_pure_dict(model_state),
  )


def count_params(params: Params) -> int:
  """Number of scalar entries in a pytree of arrays (or of shape structs).

  Args:
    params: a pytree whose leaves have a ``shape`` (arrays, or
      ``jax.ShapeDtypeStruct`` from ``jax.eval_shape``/``nnx.eval_shape``).

  Returns:
    The total number of entries, as a Python int.
  """
  return sum(math.prod(jnp.shape(leaf)) for leaf in jax.tree.leaves(params))


def _build_mlp(*, num_classes, input_shape, **kw):
  return MLP(math.prod(input_shape), num_classes, **kw)


def _build_cnn(*, num_classes, input_shape, **kw):
  height, width, channels = input_shape
  return SmallCNN(num_classes, in_channels=channels, input_size=(height, width), **kw)


def _build_resnet18(*, num_classes, input_shape, **kw):
  return ResNet18(num_classes, in_channels=input_shape[-1], **kw)


_MODELS: Mapping[str, Callable[..., nnx.Module]] = types.MappingProxyType(
  {
    "mlp": _build_mlp,
    "cnn": _build_cnn,
    "resnet18": _build_resnet18,
  }
)
MODELS = tuple(_MODELS)  # The names get_model knows.


def get_model(
  name: str,
  *,
  num_classes: int,
  input_shape: tuple[int, int, int],
  rngs: nnx.Rngs,
  dtype: Any = None,
  param_dtype: Any = jnp.float32,
) -> nnx.Module:
  """Builds a model by name.

  ``"mlp"`` is ``MLP`` with its default hidden widths (256, 256), ``"cnn"`` is
  ``SmallCNN`` (inputs at least 4x4) and ``"resnet18"`` the CIFAR-form
  ``ResNet18``.

  Args:
    name: one of ``"mlp"``, ``"cnn"``, ``"resnet18"``.
    num_classes: number of output logits.
    input_shape: ``(H, W, C)`` of one input image.
    rngs: random streams for initialisation.
    dtype: computation dtype; ``None`` infers it from inputs and parameters.
    param_dtype: dtype of the parameters (float32 by default; float64 needs
      ``jax.enable_x64``).

  Returns:
    The initialised ``nnx.Module``; call ``as_functional`` on it for training.
  """
  if name not in _MODELS:
    raise ValueError(f"Unknown model {name!r}; valid names: {', '.join(sorted(_MODELS))}.")
  input_shape = tuple(input_shape)
  if len(input_shape) != 3 or not all(
    isinstance(d, (int, np.integer)) and d >= 1 for d in input_shape
  ):
    raise ValueError(
      f"get_model: input_shape must be (H, W, C) of positive ints, got {input_shape}."
    )
  if num_classes < 1:
    raise ValueError(f"get_model: num_classes must be >= 1, got {num_classes}.")
  return _MODELS[name](
    num_classes=num_classes,
    input_shape=tuple(int(d) for d in input_shape),
    dtype=dtype,
    param_dtype=param_dtype,
    rngs=rngs,
  )
