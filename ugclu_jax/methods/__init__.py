"""Runner methods: UG-CLU, its ablations, the oracle and the standard baselines.

The hyperparameter classes (:class:`UGCLUConfig`, :class:`BaselinesConfig`) and
the names below import no JAX, so that the experiment config can hold them;
the methods themselves load their modules on first use (PEP 562).
"""

from ugclu_jax import _lazy
from ugclu_jax.methods.baselines_config import BaselinesConfig, check_hyperparameters
from ugclu_jax.methods.ugclu_config import UGCLUConfig

# UG-CLU's ablations (docs/method.md §11): overrides of the ugclu options.
UGCLU_VARIANTS = {
  "ugclu": {},
  "ugclu_none": {"mode": "none"},
  "ugclu_hvp": {"mode": "hvp"},
  "ugclu_nomask": {"mask": False},
  "ugclu_noadapt": {"temperature": 0.0},
  "ugclu_randmask": {"mask_kind": "random"},
}
ORACLE = "retrain"
# The oracle retrained from other initial weights and batches: its gap to the
# oracle is the noise floor of every gap (docs/method.md §9).
ORACLE_TWIN = "retrain_twin"
ORACLES = (ORACLE, ORACLE_TWIN)

_EXPORTS = {
  "base": ("Context", "Method", "MethodState", "NonFiniteError", "max_forget_loss", "method_seed"),
  "baselines": (
    "BASELINE_NAMES",
    "CL_BASELINES",
    "UNLEARNING_BASELINES",
    "baseline",
    "split_method_name",
  ),
  "retrain": ("retrain",),
  "ugclu": ("ugclu",),
}


def is_method_name(name) -> bool:
  """Whether ``name`` is a registered method or a CLU pair ``"X+Y"`` of two baselines."""
  try:
    check_method_name(name)
  except ValueError:
    return False
  return True


def check_method_name(name) -> None:
  """Raises a one-line ``ValueError`` naming what is wrong unless ``name`` is valid."""
  from ugclu_jax.methods import baselines

  if isinstance(name, str) and name in _single_names():
    return
  if isinstance(name, str) and "+" in name:
    baselines.split_method_name(name)  # Names the invalid part.
    return
  raise ValueError(
    f"unknown method {name!r}; valid: {', '.join(_method_names())}, or a pair "
    f"X+Y of two baselines (X's learn with Y's unlearn)"
  )


class _MethodNames(tuple):
  """The registered single names; membership also accepts CLU pairs ``"X+Y"``."""

  def __contains__(self, name) -> bool:
    return is_method_name(name)


def _single_names() -> frozenset:
  from ugclu_jax.methods import baselines

  return frozenset((*UGCLU_VARIANTS, *ORACLES, *baselines.BASELINE_NAMES))


def _method_names() -> _MethodNames:
  return _MethodNames(sorted(_single_names()))


def _computed(name):
  if name == "METHOD_NAMES":
    return _method_names()
  raise AttributeError(f"module 'ugclu_jax.methods' has no attribute {name!r}")


__all__ = (
  "BASELINE_NAMES",
  "BaselinesConfig",
  "CL_BASELINES",
  "Context",
  "METHOD_NAMES",
  "Method",
  "MethodState",
  "NonFiniteError",
  "ORACLE",
  "ORACLES",
  "ORACLE_TWIN",
  "UGCLUConfig",
  "UGCLU_VARIANTS",
  "UNLEARNING_BASELINES",
  "baseline",
  "check_hyperparameters",
  "check_method_name",
  "is_method_name",
  "max_forget_loss",
  "method_seed",
  "retrain",
  "split_method_name",
  "ugclu",
)

_lazy.install(__name__, _EXPORTS, _computed)
