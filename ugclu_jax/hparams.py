"""Frozen dataclasses of settings that check themselves on construction.

A field's type comes from its annotation (bool is not an int; a float must be
finite); its value rules sit beside it, declared with ``field(default, *rules)``.
A class that mixes in :class:`Checked` checks every field when it is built
(directly, by ``dataclasses.replace`` or by :func:`replace`) and names a bad one
by its dotted key, ``<KEY>.<field>``: ``ugclu.clip=-1.0 must be >= 0``, where
``KEY`` is the class's key in the experiment config (:mod:`ugclu_jax.config`).

Standard library only: the config imports this module, and must stay cheap to
import (no JAX).
"""

import dataclasses
import math
import reprlib
import types
import typing
from typing import Any, Callable, ClassVar, NamedTuple, Optional, Union


class ConfigError(ValueError):
  """A config name, file, override or value is invalid (one-line message)."""


class Rule(NamedTuple):
  """A value rule: ``ok(value)`` must hold; ``text`` says what, e.g. ``must be >= 1``."""

  ok: Callable[[Any], bool]
  text: str


def at_least(lo) -> Rule:
  return Rule(lambda v: v >= lo, f"must be >= {lo}")


def within(lo, hi, brackets: str = "[]") -> Rule:
  """``lo <= v <= hi``; a ``(`` or ``)`` in ``brackets`` makes that end open."""
  left, right = brackets
  return Rule(
    lambda v: (v > lo if left == "(" else v >= lo) and (v < hi if right == ")" else v <= hi),
    f"must be in {left}{lo}, {hi}{right}",
  )


POSITIVE = Rule(lambda v: v > 0, "must be > 0")
NON_NEGATIVE = at_least(0)
COUNT = at_least(1)
UNIT = within(0, 1)
FRACTION = within(0, 1, "(]")
NON_EMPTY = Rule(lambda v: len(v) > 0, "must not be empty")
DISTINCT = Rule(lambda v: len(set(v)) == len(v), "must not repeat an item")
NON_NEGATIVE_ITEMS = Rule(lambda v: all(i >= 0 for i in v), "must hold no negative item")


def field(default, *rules: Rule):
  """A dataclass field with its value rules (checked on construction, None exempt)."""
  return dataclasses.field(default=default, metadata={"rules": rules})


def unwrap_optional(tp):
  """``(T, True)`` for ``Optional[T]``, else ``(tp, False)``."""
  if typing.get_origin(tp) in (Union, types.UnionType):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(args) == 1:
      return args[0], True
  return tp, False


def type_problem(value, tp) -> Optional[str]:
  """What is wrong with ``value``'s type for annotation ``tp`` (None: nothing)."""
  base, optional = unwrap_optional(tp)
  if value is None:
    return None if optional else "must not be None"
  if dataclasses.is_dataclass(base):
    return None if isinstance(value, base) else f"must be a {base.__name__}"
  if base is bool:
    return None if isinstance(value, bool) else "must be a bool (true or false)"
  if base is int:
    return None if isinstance(value, int) and not isinstance(value, bool) else "must be an int"
  if base is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      return "must be a number"
    try:
      return None if math.isfinite(value) else "must be finite"
    except OverflowError:
      return "must be finite"
  if base is str:
    return None if isinstance(value, str) else "must be a str"
  if typing.get_origin(base) is tuple:
    (item,) = set(a for a in typing.get_args(base) if a is not Ellipsis)
    if isinstance(value, tuple) and all(type_problem(v, item) is None for v in value):
      return None
    return f"must be a tuple of {item.__name__}"
  return None


def check_value(key: str, value, tp, *rules: Rule) -> None:
  """Raises a one-line :class:`ConfigError` ``key=value <problem>`` unless ``value`` is a
  valid ``tp`` that keeps every rule (None keeps every rule)."""
  problem = type_problem(value, tp)
  if problem is None and value is not None:
    problem = next((r.text for r in rules if not r.ok(value)), None)
  if problem is not None:
    shown = type(value).__name__ if dataclasses.is_dataclass(value) else reprlib.repr(value)
    raise ConfigError(f"{key}={shown} {problem}")


class Checked:
  """Mixin: a dataclass that checks its fields on construction.

  ``KEY`` is the class's key in the experiment config (``""`` at the top), the
  prefix of its fields' names in error messages.
  """

  KEY: ClassVar[str] = ""

  def __post_init__(self):
    hints = typing.get_type_hints(type(self))
    prefix = f"{self.KEY}." if self.KEY else ""
    for f in dataclasses.fields(self):
      check_value(
        prefix + f.name, getattr(self, f.name), hints[f.name], *f.metadata.get("rules", ())
      )


def replace(obj, overrides: dict):
  """``obj`` with ``overrides`` (field -> value), checked; an unknown field is a one-line
  :class:`ConfigError` naming it and the valid ones."""
  names = [f.name for f in dataclasses.fields(obj)]
  unknown = sorted(set(overrides) - set(names))
  if unknown:
    raise ConfigError(
      f"unknown {obj.KEY or type(obj).__name__} hyperparameter {unknown[0]!r}; "
      f"valid: {', '.join(names)}"
    )
  return dataclasses.replace(obj, **overrides) if overrides else obj
