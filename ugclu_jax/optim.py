"""The one place where optimizer settings become an optax transformation."""

import optax

from ugclu_jax.fast_slow import fast_slow


def _sgd(learning_rate, momentum, weight_decay, nesterov=False):
  # PyTorch-style SGD: weight decay is added to the gradient before momentum.
  return optax.chain(
    optax.add_decayed_weights(weight_decay),
    optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
  )


def sgd(
  *, learning_rate: float, momentum: float = 0.9, weight_decay: float = 5e-4, nesterov: bool = False
) -> optax.GradientTransformationExtraArgs:
  """SGD with momentum and coupled weight decay, hyperparameters in the state.

  ``learning_rate``, ``momentum`` and ``weight_decay`` are injected with
  ``optax.inject_hyperparams``, so a step can rewrite them (e.g. a cosine
  schedule over a request of any length, ``optax.tree.set(state,
  learning_rate=...)``) without recompiling.
  """
  return optax.inject_hyperparams(_sgd, static_args=("nesterov",))(
    learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
  )


def build_optimizer(
  *,
  learning_rate: float,
  momentum: float = 0.9,
  weight_decay: float = 5e-4,
  nesterov: bool = False,
  sync_period: int = 1,
  slow_step_size: float = 1.0,
  reset_state: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """UG-CLU's optimizer: :func:`fast_slow` over injected-hyperparameter SGD.

  With the defaults (``sync_period=1, slow_step_size=1``) this is exactly the
  inner SGD; the fast-slow compensation itself comes from the alternation of
  target and remain steps (docs/method.md §6), and ``slow_step_size < 1``
  enables the slow/fast interpolation of the reference.

  Parameters are ``FastSlowParams(fast, slow)``; ``update`` takes the
  keyword-only ``saliency_mask``.
  """
  return fast_slow(
    sgd(
      learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
    ),
    sync_period=sync_period,
    slow_step_size=slow_step_size,
    reset_state=reset_state,
  )
