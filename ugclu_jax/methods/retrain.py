"""The oracle: retraining from scratch on ``D_R ∪ D_L`` (docs/method.md §1)."""

from ugclu_jax.methods.base import Context, Method, MethodState, finish, run_iterations
from ugclu_jax.metrics import Cost
from ugclu_jax.optim import build_optimizer
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


def retrain(
  apply_fn,
  *,
  init_params,
  init_model_state,
  learning_rate: float,
  momentum: float,
  weight_decay: float,
  clip_norm: float | None = None,
  name: str = "retrain",
) -> Method:
  """The retrained oracle.

  On every request it trains a fresh copy of the initial model on the
  request's target set, which the runner sets to all of ``D_R ∪ D_L`` (the
  oracle alone is given full access), for the budget the runner passes.
  Unclipped by default (``clip_norm``): trained from scratch on every class at
  once, it meets none of the new-class transients that ``train.clip_norm``
  bounds for the continual methods, and a clip would only slow it down.
  """
  tx = build_optimizer(learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay)
  steps = make_steps(apply_fn, tx, kind="learn", clip_norm=clip_norm, temperature=0.0)

  def run(state, ctx):
    del state
    params, model_state, cost = sgd_train(
      steps, tx, init_params, init_model_state, ctx, learning_rate=learning_rate, name=name
    )
    return MethodState(params, model_state), cost

  return Method(name=name, init=lambda p, s: MethodState(p, s), learn=run, unlearn=run)
