"""ugclu_jax: UG-CLU, unified gradient-based continual learning-unlearning, in JAX.

The public API: pure, jittable functions on parameter pytrees.
"""

from ugclu_jax.fast_slow import FastSlowParams, FastSlowState, fast_slow, sync
from ugclu_jax.grads import CLUGrads, CLULosses, clu_gradients, combine
from ugclu_jax.hvp import compensate, ggn_vp, hvp
from ugclu_jax.objectives import (adaptive_weights, cross_entropy, kl_to_reference,
                                  learn_loss, preserve_loss, unlearn_loss)
from ugclu_jax.optim import build_optimizer
from ugclu_jax.saliency import apply_mask, balanced_saliency_mask, fisher_diagonal, mask_density
from ugclu_jax.steps import RequestHParams, Steps, TrainState, init_train_state, make_steps
from ugclu_jax.types import Batch

__version__ = "0.1.0"

__all__ = (
    "Batch",
    "CLUGrads",
    "CLULosses",
    "FastSlowParams",
    "FastSlowState",
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
    "cross_entropy",
    "fast_slow",
    "fisher_diagonal",
    "ggn_vp",
    "hvp",
    "init_train_state",
    "kl_to_reference",
    "learn_loss",
    "make_steps",
    "mask_density",
    "preserve_loss",
    "sync",
    "unlearn_loss",
)
