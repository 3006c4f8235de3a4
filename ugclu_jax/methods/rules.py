"""What the baselines' learn and unlearn rules share (:mod:`.learn_rules`, :mod:`.unlearn_rules`).

A rule is a factory ``rule(setup, *, <hyperparameters>)``: ``setup`` holds the
run's settings (:class:`Setup`), the keyword-only parameters are the rule's own
hyperparameters, each a field of
:class:`~ugclu_jax.methods.baselines_config.BaselinesConfig` (its one default,
range and doc line) and without a default here. Each rule module keeps a
registry, name -> factory; the baseline builder passes every rule exactly its
own keywords (:func:`rule_hparams`), from the checked dataclass.
"""

import inspect
from typing import Callable, NamedTuple, Optional

import jax
import numpy as np

from ugclu_jax import objectives
from ugclu_jax.data import batch_indices
from ugclu_jax.methods.base import Context, MethodState, finish, run_iterations
from ugclu_jax.metrics import Cost
from ugclu_jax.optim import build_optimizer
from ugclu_jax.seeds import seed_for
from ugclu_jax.steps import RequestHParams, init_train_state
from ugclu_jax.types import Batch, ModelState, Params

# ----------------------------------------------------------------------------
# Rules, their settings and their registries
# ----------------------------------------------------------------------------


def rule_hparams(rule: Callable) -> tuple[str, ...]:
  """The hyperparameters a rule factory takes: its keyword-only parameters, in order."""
  return tuple(
    name for name, p in inspect.signature(rule).parameters.items() if p.kind == p.KEYWORD_ONLY
  )


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
    return build_optimizer(
      learning_rate=learning_rate, momentum=self.momentum, weight_decay=self.weight_decay
    )


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
  """Host-side batch draws of one request, each from its named seed stream (scope
  ``baseline`` of :mod:`ugclu_jax.seeds`): by default ``target_batches`` and
  ``remain_batches``."""

  def __init__(self, ctx: Context):
    self.ctx = ctx

  def seed(self, stream: str) -> tuple[int, ...]:
    """The request's seed sequence of ``stream`` (e.g. ``"random_labels"``)."""
    return seed_for(self.ctx.seed, f"baseline.{stream}")

  def target(self, k: int, stream: str = "target_batches") -> Batch:
    return self.ctx.access.target_batch(self.ctx.batch_size, k, self.seed(stream))

  def remain(self, k: int, stream: str = "remain_batches") -> Batch:
    return self.ctx.access.remain_batch(self.ctx.batch_size, k, self.seed(stream))

  def target_and_remain(self, k: int) -> dict:
    """``{"target": ..., "remain": ...}`` on the request's devices; no ``remain`` while
    the store is empty."""
    out = {"target": self.ctx.put(self.target(k))}
    if has_remain(self.ctx):
      out["remain"] = self.ctx.put(self.remain(k))
    return out

  def remain_with_indices(self, k: int, stream: str = "remain_batches") -> tuple[Batch, np.ndarray]:
    access = self.ctx.access
    idx = batch_indices(access.remain_indices, self.ctx.batch_size, k, self.seed(stream))
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


def run_steps(
  state: MethodState,
  ctx: Context,
  *,
  step: Callable,
  tx,
  learning_rate: float,
  batches: Callable,
  name: str,
  mask: Optional[Params] = None,
  hint: Optional[str] = None,
) -> tuple[Params, ModelState, Cost]:
  """A request of ``ctx.num_iterations`` steps of one jitted gradient step.

  Starts a fresh train state and optimizer at ``state``; iteration ``k`` draws
  ``batches(k) -> (dict of Batch, aux)`` and takes
  ``step(ts, batches, aux, hp, mask, 1)`` (:func:`ugclu_jax.steps.make_gradient_step`)
  at ``learning_rate`` under the request's cosine. One step and one gradient
  evaluation per batch are counted.

  Returns:
    ``(params, model_state, Cost)`` after the final sync, checked finite.
  """
  hp = RequestHParams.create(
    learning_rate=learning_rate, a_target=1.0, num_iterations=ctx.num_iterations
  )

  def body(ts, k):
    step_batches, aux = batches(k)
    ts, metrics = step(ts, step_batches, aux, hp, mask, 1)
    return ts, metrics, Cost(0.0, 1, len(step_batches), 0)

  ts = init_train_state(state.params, state.model_state, tx)
  ts, cost = run_iterations(ts, body, ctx=ctx, name=name, hint=hint)
  params, model_state = finish(ts, ctx=ctx, name=name)
  return params, model_state, cost
