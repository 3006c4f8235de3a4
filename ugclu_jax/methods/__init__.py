"""Runner methods: UG-CLU, its ablations, the oracle and the standard baselines."""

from ugclu_jax.methods.base import (Context, Method, MethodState, NonFiniteError, method_seed)
from ugclu_jax.methods.baselines import (BASELINE_NAMES, CL_BASELINES, UNLEARNING_BASELINES,
                                         baseline, check_hyperparameters, split_method_name)
from ugclu_jax.methods.retrain import retrain
from ugclu_jax.methods.ugclu import ugclu

# UG-CLU's ablations (docs/method.md §11): overrides of the ugclu options.
UGCLU_VARIANTS = {
    "ugclu": {},
    "ugclu_none": {"mode": "none"},
    "ugclu_hvp": {"mode": "hvp"},
    "ugclu_nomask": {"mask": False},
    "ugclu_noadapt": {"temperature": 0.0},
}
ORACLE = "retrain"


def is_method_name(name) -> bool:
  """Whether ``name`` is a registered method or a CLU pair ``"X+Y"`` of two baselines."""
  try:
    check_method_name(name)
  except ValueError:
    return False
  return True


def check_method_name(name) -> None:
  """Raises a one-line ``ValueError`` naming what is wrong unless ``name`` is valid."""
  if isinstance(name, str) and name in _SINGLE_NAMES:
    return
  if isinstance(name, str) and "+" in name:
    split_method_name(name)  # Names the invalid part.
    return
  raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHOD_NAMES)}, or a pair "
                   f"X+Y of two baselines (X's learn with Y's unlearn)")


class _MethodNames(tuple):
  """The registered single names; membership also accepts CLU pairs ``"X+Y"``."""

  def __contains__(self, name) -> bool:
    return is_method_name(name)


_SINGLE_NAMES = frozenset((*UGCLU_VARIANTS, ORACLE, *BASELINE_NAMES))
METHOD_NAMES = _MethodNames(sorted(_SINGLE_NAMES))

__all__ = ("BASELINE_NAMES", "CL_BASELINES", "Context", "Method", "MethodState",
           "NonFiniteError", "METHOD_NAMES", "ORACLE", "UGCLU_VARIANTS",
           "UNLEARNING_BASELINES", "baseline", "check_hyperparameters", "check_method_name",
           "is_method_name", "method_seed", "retrain", "split_method_name", "ugclu")
