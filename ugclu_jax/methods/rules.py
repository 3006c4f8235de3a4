"""What the baselines' learn and unlearn rules share (:mod:`.learn_rules`, :mod:`.unlearn_rules`).

A rule is a factory ``rule(setup, **hyperparameters)``: ``setup`` holds the
run's settings (:class:`Setup`), the keywords are the rule's own
hyperparameters. Each rule module keeps a registry, name -> :class:`Rule`,
that pairs the factory with the kind (range) of each keyword it takes; the
baseline builder passes every rule exactly its own keywords and validates
them by their kinds.
"""

import math
import numbers
from typing import Callable, NamedTuple, Optional

import jax
import numpy as np

from ugclu_jax import objectives
from ugclu_jax.data import batch_indices
from ugclu_jax.methods.base import Context, MethodState, finish, run_iterations
from ugclu_jax.metrics import Cost
from ugclu_jax.optim import build_optimizer
from ugclu_jax.steps import RequestHParams, init_train_state
from ugclu_jax.types import Batch, ModelState, Params

# ----------------------------------------------------------------------------
# Rules, their settings and their registries
# ----------------------------------------------------------------------------

# Kinds of hyperparameter values (every value is a finite real number).
POSITIVE = "positive"          # > 0
NON_NEGATIVE = "non_negative"  # >= 0
UNIT = "unit"                  # in [0, 1]
COUNT = "count"                # an integer > 0
CLASSES = "classes"            # an integer >= 2

_RANGES = {
    POSITIVE: (lambda v: v > 0, "must be positive"),
    NON_NEGATIVE: (lambda v: v >= 0, "must be >= 0"),
    UNIT: (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    COUNT: (lambda v: v > 0, "must be positive"),
    CLASSES: (lambda v: v >= 2, "must be >= 2"),
}


def check_value(key: str, value, kind: str) -> None:
  """Raises a one-line ``ValueError`` unless ``value`` is a valid ``kind`` (e.g. ``POSITIVE``)."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ValueError(f"{key} must be a number, got {value!r}")
  if not math.isfinite(value):
    raise ValueError(f"{key} must be finite, got {value}")
  if kind in (COUNT, CLASSES) and int(value) != value:
    raise ValueError(f"{key} must be an integer, got {value}")
  valid, message = _RANGES[kind]
  if not valid(value):
    raise ValueError(f"{key} {message}, got {value}")


class Rule(NamedTuple):
  """A registry entry.

  Attributes:
    build: ``build(setup, **hparams)`` -> :class:`Learner` (learn rules) or
      :data:`Unlearner` (unlearn rules).
    hparams: name -> kind of each keyword ``build`` takes (the rule's own
      hyperparameters, keywords of the baseline builder).
  """
  build: Callable
  hparams: dict[str, str]


class Setup(NamedTuple):
  """The run's settings every rule is built with (no rule's own hyperparameter).

  Attributes:
    apply_fn: ``apply_fn(params, model_state, x, *, train) -> (logits, state)``.
    name: the method's name (progress and error messages).
    num_train: training-set size.
    num_classes: number of classes.
    learn_lr: learning rate of learn requests (every learn rule).
    momentum: SGD momentum of every request.
    weight_decay: coupled weight decay of every request.
    clip_norm: global-norm clip of every gradient step (None: off).
  """
  apply_fn: Callable
  name: str
  num_train: int
  num_classes: int
  learn_lr: float
  momentum: float
  weight_decay: float
  clip_norm: Optional[float]

  def optimizer(self, learning_rate: float):
    """A fresh request's SGD (:func:`ugclu_jax.build_optimizer`) at ``learning_rate``."""
    return build_optimizer(learning_rate=learning_rate, momentum=self.momentum,
                           weight_decay=self.weight_decay)


def no_extra(params: Params, model_state: ModelState):
  """The extra state of a learn rule without one: ``()``."""
  del params, model_state
  return ()


def no_purge(extra, ctx: Context):
  """The purge of a learn rule whose extra state holds no sample: ``extra`` unchanged."""
  del ctx
  return extra


def no_refresh(state: MethodState, ctx: Context):
  """The refresh of a learn rule without one: the extra state unchanged, at no cost."""
  del ctx
  return state.extra, Cost()


class Learner(NamedTuple):
  """A learn rule and the bookkeeping of its extra state.

  Attributes:
    learn: ``(state, ctx) -> (state, Cost)``.
    init: ``(params, model_state) -> extra`` (structure fixed for the run).
    purge: ``(extra, ctx) -> extra``: drops what the extra state holds of the
      request's forget data, before an unlearn request's first step.
    refresh: ``(state, ctx) -> (extra, Cost)``: after an unlearn request.
  """
  learn: Callable
  init: Callable = no_extra
  purge: Callable = no_purge
  refresh: Callable = no_refresh


# An unlearn rule: (state, ctx) -> (params, model_state, Cost).
Unlearner = Callable[[MethodState, Context], tuple[Params, ModelState, Cost]]


# ----------------------------------------------------------------------------
# Pieces of the rules
# ----------------------------------------------------------------------------

class Draw:
  """Host-side batch draws of one request, each stream with its own seed tag."""

  def __init__(self, ctx: Context):
    self.ctx = ctx

  def target(self, k: int, tag: int) -> Batch:
    return self.ctx.access.target_batch(self.ctx.batch_size, k, (*self.ctx.seed, tag))

  def remain(self, k: int, tag: int) -> Batch:
    return self.ctx.access.remain_batch(self.ctx.batch_size, k, (*self.ctx.seed, tag))

  def remain_with_indices(self, k: int, tag: int) -> tuple[Batch, np.ndarray]:
    access = self.ctx.access
    idx = batch_indices(access.remain_indices, self.ctx.batch_size, k, (*self.ctx.seed, tag))
    return access.batch(idx), idx


def has_remain(ctx: Context) -> bool:
  """Whether the store holds anything (an empty store drops the store terms)."""
  return ctx.access.remain_indices.size > 0


def forward(apply_fn, params, model_state, batch: Batch, train: bool = True):
  return apply_fn(params, model_state, batch.x, train=train)


def batch_ce(logits, batch: Batch):
  """The masked mean cross-entropy on ``batch``'s labels."""
  return objectives.cross_entropy(logits=logits, labels=batch.y, mask=batch.mask)


def teacher_logits(apply_fn, teacher, batch: Batch):
  """Evaluation-mode logits of ``teacher`` (``{"params", "model_state"}``), no gradient."""
  logits, _ = apply_fn(teacher["params"], teacher["model_state"], batch.x, train=False)
  return jax.lax.stop_gradient(logits)


def run_steps(state: MethodState, ctx: Context, *, step: Callable, tx, learning_rate: float,
              batches: Callable, name: str, mask: Optional[Params] = None,
              hint: Optional[str] = None) -> tuple[Params, ModelState, Cost]:
  """A request of ``ctx.num_iterations`` steps of one jitted gradient step.

  Starts a fresh train state and optimizer at ``state``; iteration ``k`` draws
  ``batches(k) -> (dict of Batch, aux)`` and takes
  ``step(ts, batches, aux, hp, mask, 1)`` (:func:`ugclu_jax.steps.make_gradient_step`)
  at ``learning_rate`` under the request's cosine. One step and one gradient
  evaluation per batch are counted.

  Returns:
    ``(params, model_state, Cost)`` after the final sync, checked finite.
  """
  hp = RequestHParams.create(learning_rate=learning_rate, a_target=1.0,
                             num_iterations=ctx.num_iterations)

  def body(ts, k):
    step_batches, aux = batches(k)
    ts, metrics = step(ts, step_batches, aux, hp, mask, 1)
    return ts, metrics, Cost(0.0, 1, len(step_batches), 0)

  ts = init_train_state(state.params, state.model_state, tx)
  ts, cost = run_iterations(ts, body, ctx=ctx, name=name, hint=hint)
  params, model_state = finish(ts, ctx=ctx, name=name)
  return params, model_state, cost
