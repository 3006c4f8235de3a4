"""The oracle: retraining from scratch on ``D_R ∪ D_L`` (docs/method.md §1)."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from ugclu_jax import evaluation as E
from ugclu_jax.methods.base import (
  Context,
  Method,
  MethodState,
  check_params_finite,
  finish,
  monitor,
  run_iterations,
)
from ugclu_jax.metrics import Cost
from ugclu_jax.optim import build_optimizer
from ugclu_jax.request import finish_request
from ugclu_jax.seeds import seed_for
from ugclu_jax.steps import RequestHParams, init_train_state, make_steps


def sgd_train(steps, tx, params, model_state, ctx: Context, *, learning_rate: float, name: str):
  """``ctx.num_iterations`` plain SGD steps on the request's target samples (seed stream
  ``oracle.target_batches``).

  Cross-entropy with a cosine learning rate over the request (the learn
  budget rule shared by every method). Returns ``(params, model_state, Cost)``.
  """
  hp = RequestHParams.create(
    learning_rate=learning_rate, a_target=1.0, num_iterations=ctx.num_iterations
  )
  seed = seed_for(ctx.seed, "oracle.target_batches")

  def body(ts, k):
    batch = ctx.put(ctx.access.target_batch(ctx.batch_size, k, seed))
    ts, metrics = steps.target(ts, batch, None, hp, 1)
    return ts, metrics, Cost(0.0, 1, 1, 0)

  ts, cost = run_iterations(init_train_state(params, model_state, tx), body, ctx=ctx, name=name)
  params, model_state = finish(ts, ctx=ctx, name=name)
  return params, model_state, cost


def make_accuracy_fn(apply_fn, batch_size: int | None = None):
  """``accuracy(params, model_state, (x, y), mesh, default_batch) -> float``:
  evaluation-mode accuracy through :func:`ugclu_jax.evaluation.outputs` (padded
  batches of ``batch_size``, None: ``default_batch``; split over ``mesh`` if any)."""
  output_fn = E.make_output_fn(apply_fn)

  def accuracy(params, model_state, data, mesh, default_batch: int) -> float:
    x, y = data
    out = E.outputs(
      output_fn,
      params,
      model_state,
      x,
      y,
      np.arange(y.size),
      batch_size or default_batch,
      num_classes=0,  # Only an empty set reads it; early_stopped_train refuses one.
      mesh=mesh,
    )
    return float(np.mean(out.correct))

  return accuracy


def early_stopped_train(
  steps, tx, params, model_state, ctx: Context, *, learning_rate, patience, accuracy, name
):
  r"""Trains like :func:`sgd_train` for at most ``ctx.num_iterations`` iterations, with
  early stopping on ``ctx.validation``.

  After every epoch (:math:`\lceil |D| / B \rceil` iterations) it measures the
  accuracy of the synced weights on the validation samples; it stops after
  ``patience`` epochs without a better one and returns the best epoch's weights.
  The cosine spans the whole budget, so a run that never stops is
  :func:`sgd_train`'s. The cost counts every iteration run.

  Returns:
    ``(params, model_state, Cost, epochs run, best epoch, best accuracy)``.
  """
  if ctx.validation is None or np.size(ctx.validation[1]) == 0:
    raise ValueError(
      f"method {name!r}: early stopping needs validation samples of the trained classes "
      "(data.validation_per_class)"
    )
  n = ctx.num_iterations
  epoch = max(1, math.ceil(ctx.access.target_indices.size / ctx.batch_size))
  hp = RequestHParams.create(learning_rate=learning_rate, a_target=1.0, num_iterations=n)
  seed = seed_for(ctx.seed, "oracle.target_batches")
  on_iteration = monitor(ctx=ctx, name=name)
  ts = init_train_state(params, model_state, tx)
  best, best_acc, best_epoch, since, k, epochs = None, -1.0, 0, 0, 0, 0
  while k < n and since < patience:
    for j in range(k, min(n, k + epoch)):
      batch = ctx.put(ctx.access.target_batch(ctx.batch_size, j, seed))
      ts, metrics = steps.target(ts, batch, None, hp, 1)
      on_iteration(j, metrics)
    k, epochs = min(n, k + epoch), epochs + 1
    synced = finish_request(ts)
    acc = accuracy(*synced, ctx.validation, ctx.mesh, ctx.batch_size)
    if acc > best_acc:
      best = jax.tree.map(jnp.copy, synced)  # ts's buffers go to the next step
      best_acc, best_epoch, since = acc, epochs, 0
    else:
      since += 1
  ctx.progress(n - k)  # Stopped early: the rest of the budget is not run.
  params, model_state = best
  check_params_finite(params, method=name, ctx=ctx)
  return params, model_state, Cost(0.0, k, k, 0), epochs, best_epoch, best_acc


def retrain(
  apply_fn,
  *,
  init_params,
  init_model_state,
  learning_rate: float,
  momentum: float,
  weight_decay: float,
  clip_norm: float | None = None,
  patience: int | None = None,
  eval_batch_size: int | None = None,
  name: str = "retrain",
) -> Method:
  """The retrained oracle.

  On every request it trains a fresh copy of the initial model on the
  request's target set, which the runner sets to all of ``D_R ∪ D_L`` (the
  oracle alone is given full access), for the budget the runner passes.
  Unclipped by default (``clip_norm``): trained from scratch on every class at
  once, it meets none of the new-class transients that ``train.clip_norm``
  bounds for the continual methods, and a clip would only slow it down.

  With ``patience`` it stops early on the request's validation samples
  (:func:`early_stopped_train`, ``eval_batch_size`` per evaluation batch; None: the
  training batch size) and the budget is its most; without, it trains the whole
  budget (:func:`sgd_train`).
  """
  tx = build_optimizer(learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay)
  steps = make_steps(apply_fn, tx, kind="learn", clip_norm=clip_norm, temperature=0.0)
  accuracy = make_accuracy_fn(apply_fn, eval_batch_size)

  def run(state, ctx):
    del state
    common = dict(learning_rate=learning_rate, name=name)
    if patience is None:
      params, model_state, cost = sgd_train(steps, tx, init_params, init_model_state, ctx, **common)
    else:
      params, model_state, cost, *_ = early_stopped_train(
        steps,
        tx,
        init_params,
        init_model_state,
        ctx,
        patience=patience,
        accuracy=accuracy,
        **common,
      )
    return MethodState(params, model_state), cost

  return Method(name=name, init=lambda p, s: MethodState(p, s), learn=run, unlearn=run)
