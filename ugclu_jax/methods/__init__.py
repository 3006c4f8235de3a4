"""Runner methods: UG-CLU, its ablations, the oracle and the standard baselines.

The hyperparameter classes (:class:`UGCLUConfig`, :class:`BaselinesConfig`) and
the names below import no JAX, so that the experiment config can hold them;
the methods themselves load their modules on first use (PEP 562).
"""

import typing

from ugclu_jax import _lazy
from ugclu_jax import hparams as H
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
  "ugclu_normmask": {"mask_kind": "norm"},
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


SPEC_SEPARATOR = "@"
"""Separates a method's name from its hyperparameter overrides (:func:`split_method_spec`)."""


def split_method_spec(name) -> tuple[str, dict]:
  """``BASE@key=value@...``: a method with some of its hyperparameters overridden.

  ``"ugclu_hvp@beta=0.1@forget_freq=1"`` gives ``("ugclu_hvp", {"beta": 0.1,
  "forget_freq": 1})``. The keys are fields of the base's hyperparameters,
  :class:`UGCLUConfig` for UG-CLU and its variants (applied after the variant's
  own override) and :class:`BaselinesConfig` for a baseline or a pair; the oracles
  take none. Values are typed and range-checked like ``--set`` values. A name
  without ``@`` gives ``(name, {})``. Every spec is its own method in a run: its
  own state, report entry and paired batches (:func:`method_seed` ignores names).

  Raises:
    ValueError: a one-line message naming the bad part.
  """
  if not isinstance(name, str):
    raise ValueError(f"method name must be a string, got {name!r}")
  base, *items = name.split(SPEC_SEPARATOR)
  if not items:
    return name, {}
  if base in ORACLES:
    raise ValueError(f"method {name!r}: the oracle {base!r} takes no overrides")
  check_method_name(base)
  cls = UGCLUConfig if base in UGCLU_VARIANTS else BaselinesConfig
  types = typing.get_type_hints(cls)
  from ugclu_jax.config import _coerce_value  # The --set parser; config imports this module.

  overrides = {}
  for item in items:
    key, eq, value = item.partition("=")
    if not eq or not key or not value:
      raise ValueError(f"method {name!r}: {item!r} must be key=value")
    if key not in types:
      raise ValueError(
        f"method {name!r}: unknown {cls.KEY} hyperparameter {key!r}; valid: {', '.join(types)}"
      )
    if key in overrides:
      raise ValueError(f"method {name!r}: {key!r} is given twice")
    overrides[key] = _coerce_value(value, types[key], f"{name}: {key}")
  H.replace(cls(), {**UGCLU_VARIANTS.get(base, {}), **overrides})  # Ranges.
  return base, overrides


def is_method_name(name) -> bool:
  """Whether ``name`` is a registered method, a CLU pair ``"X+Y"`` of two baselines, or
  either with hyperparameter overrides (:func:`split_method_spec`)."""
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
  if isinstance(name, str) and SPEC_SEPARATOR in name:
    split_method_spec(name)  # Checks the base and the overrides.
    return
  if isinstance(name, str) and "+" in name:
    baselines.split_method_name(name)  # Names the invalid part.
    return
  raise ValueError(
    f"unknown method {name!r}; valid: {', '.join(_method_names())}, or a pair "
    f"X+Y of two baselines (X's learn with Y's unlearn), either with overrides "
    f"NAME@key=value@..."
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
  "SPEC_SEPARATOR",
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
  "split_method_spec",
  "ugclu",
)

_lazy.install(__name__, _EXPORTS, _computed)
