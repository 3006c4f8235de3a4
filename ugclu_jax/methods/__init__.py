"""Runner methods: UG-CLU, its ablations and the oracle."""

from ugclu_jax.methods.base import (Context, Method, MethodState, NonFiniteError, method_seed)
from ugclu_jax.methods.retrain import retrain
from ugclu_jax.methods.ugclu import ugclu

# UG-CLU's ablations (ALGORITHM.md §11): overrides of the ugclu options.
UGCLU_VARIANTS = {
    "ugclu": {},
    "ugclu_none": {"mode": "none"},
    "ugclu_hvp": {"mode": "hvp"},
    "ugclu_nomask": {"mask": False},
    "ugclu_noadapt": {"temperature": 0.0},
}
ORACLE = "retrain"
METHOD_NAMES = tuple(sorted((*UGCLU_VARIANTS, ORACLE)))

__all__ = ("Context", "Method", "MethodState", "NonFiniteError", "METHOD_NAMES", "ORACLE",
           "UGCLU_VARIANTS", "method_seed", "retrain", "ugclu")
