"""ugclu_jax: UG-CLU, unified gradient-based continual learning-unlearning, in JAX.

The public API: pure, jittable functions on parameter pytrees.
"""

import importlib
import importlib.util

from ugclu_jax import _lazy

# Public names load their module on first use (PEP 562), so that importing the
# package, and `python -m ugclu_jax --help`, does not import JAX.
_EXPORTS = {
  "fast_slow": ("FastSlowParams", "FastSlowState", "fast_slow", "sync"),
  "grads": ("CLUGrads", "CLULosses", "clu_gradients", "combine", "joint_direction"),
  "hvp": ("compensate", "ggn_vp", "hvp"),
  "objectives": (
    "adaptive_weights",
    "cross_entropy",
    "distillation_loss",
    "ewc_penalty",
    "kl_to_reference",
    "learn_loss",
    "preserve_loss",
    "unlearn_loss",
  ),
  "optim": ("build_optimizer",),
  "saliency": (
    "apply_mask",
    "balanced_saliency_mask",
    "fisher_diagonal",
    "mask_density",
    "random_mask_like",
    "top_fraction_mask",
  ),
  "request": (
    "RequestCounts",
    "finish_request",
    "run_request",
    "run_request_on_device",
    "run_seeds_on_device",
  ),
  "steps": (
    "RequestHParams",
    "Steps",
    "TrainState",
    "compensated_update",
    "init_train_state",
    "make_steps",
    "target_direction",
  ),
  "types": ("Batch",),
}

__version__ = "0.1.0"

__all__ = (
  "Batch",
  "CLUGrads",
  "CLULosses",
  "FastSlowParams",
  "FastSlowState",
  "RequestCounts",
  "RequestHParams",
  "Steps",
  "TrainState",
  "adaptive_weights",
  "apply_mask",
  "balanced_saliency_mask",
  "build_optimizer",
  "clu_gradients",
  "combine",
  "compensate",
  "compensated_update",
  "cross_entropy",
  "distillation_loss",
  "ewc_penalty",
  "fast_slow",
  "finish_request",
  "fisher_diagonal",
  "ggn_vp",
  "hvp",
  "init_train_state",
  "joint_direction",
  "kl_to_reference",
  "learn_loss",
  "make_steps",
  "mask_density",
  "preserve_loss",
  "random_mask_like",
  "run_request",
  "run_request_on_device",
  "run_seeds_on_device",
  "sync",
  "target_direction",
  "top_fraction_mask",
  "unlearn_loss",
)


def _submodule(name):
  if importlib.util.find_spec(f"ugclu_jax.{name}") is None:
    raise AttributeError(f"module 'ugclu_jax' has no attribute {name!r}")
  return importlib.import_module(f"ugclu_jax.{name}")  # A submodule, e.g. ugclu_jax.steps.


_lazy.install(__name__, _EXPORTS, _submodule)
