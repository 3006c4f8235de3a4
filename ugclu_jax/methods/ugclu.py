"""UG-CLU as a runner method (docs/method.md §7), with its ablations as options.

A thin adapter over the library: the saliency mask (:mod:`ugclu_jax.saliency`),
the steps (:func:`ugclu_jax.make_steps`) and the request's schedule
(:func:`ugclu_jax.run_request`); what it adds is the runner's: batch draws
through ``DataAccess`` with their seed tags, finiteness checks and progress
(:func:`~ugclu_jax.methods.base.monitor`), and the cost.
"""

import functools

from ugclu_jax.methods.base import (Method, MethodState, finish, make_fisher_fn, monitor,
                                    stacked_batches)
from ugclu_jax.metrics import Cost
from ugclu_jax.optim import build_optimizer
from ugclu_jax.request import run_request
from ugclu_jax.saliency import balanced_saliency_mask
from ugclu_jax.steps import RequestHParams, init_train_state, make_steps


def ugclu(apply_fn, *, name: str = "ugclu", mode: str = "fast_slow",
          learn_lr: float = 0.05, unlearn_lr: float = 0.01, momentum: float = 0.9,
          weight_decay: float = 5e-4, forget_freq: int = 5, learn_freq: int = 1,
          a_unlearn: float = 25.0, a_learn: float = 1.0, a_remain: float = 1.0,
          clip: float = 7.0, temperature: float = 0.5, learn_temperature: float = 0.0,
          mask: bool = True, mask_threshold: float = 1.0, learn_mask: bool = False,
          learn_mask_threshold: float = 1.0, fisher_batches: int = 8, beta: float = 0.0,
          order: int = 1, damping: float = 0.0, curvature: str = "hessian",
          slow_step_size: float = 1.0, sync_period: int = 0,
          learn_clip: float | None = 1.0,
          max_forget_loss: float | None = None) -> Method:
  """Builds the UG-CLU method.

  Each request: a balanced saliency mask from Fisher diagonals of the target
  and the store (unlearn requests; optional for learn), a fresh optimizer, then
  ``N`` iterations of the chosen compensation mode (see
  :mod:`ugclu_jax.steps`); finally the fast and slow weights are synced.
  ``beta = 0`` uses the request's learning rate (the value at which the
  explicit and the fast-slow compensation agree). ``sync_period = 0`` syncs
  after every fast-slow cycle (one target step and its remain steps).
  ``learn_clip`` clips every gradient of a learn request (target and remain
  steps) to that global norm, the learn rule every method shares; ``clip``
  clips the unlearn target direction. ``max_forget_loss`` bounds the ascent
  (:func:`ugclu_jax.unlearn_loss`; the runner passes ``ascent_bound * log C``).
  """
  if forget_freq < 1 or learn_freq < 1:
    raise ValueError("forget_freq and learn_freq must be >= 1")
  if fisher_batches < 1:
    raise ValueError(f"fisher_batches must be >= 1, got {fisher_batches}")
  clip_norm = clip if clip > 0 else None

  def optimizer(lr, freq):
    period = sync_period or (freq + 1 if mode == "fast_slow" else 1)
    return build_optimizer(learning_rate=lr, momentum=momentum, weight_decay=weight_decay,
                           sync_period=period, slow_step_size=slow_step_size)

  phases = {}
  for kind, lr, freq, temp in (("learn", learn_lr, learn_freq, learn_temperature),
                               ("unlearn", unlearn_lr, forget_freq, temperature)):
    tx = optimizer(lr, freq)
    phases[kind] = (tx, make_steps(
        apply_fn, tx, kind=kind, mode=mode,
        clip_norm=clip_norm if kind == "unlearn" else learn_clip, temperature=temp,
        curvature=curvature, order=order,
        remain_clip_norm=learn_clip if kind == "learn" else None,
        max_forget_loss=max_forget_loss))
  fisher = make_fisher_fn(apply_fn)

  def request_cost(counts):
    """One step and one gradient per target or remain step; a fused step takes two
    gradients and, in ``hvp`` mode, ``order`` HVPs."""
    return Cost(0.0, counts.target + counts.remain + counts.fused,
                counts.target + counts.remain + 2 * counts.fused,
                counts.fused * order if mode == "hvp" else 0)

  def saliency(state, ctx, threshold):
    access, b = ctx.access, ctx.batch_size
    target = stacked_batches(lambda s: access.target_batch(b, s, (*ctx.seed, 1)),
                             fisher_batches, ctx.mesh)
    remain = stacked_batches(lambda s: access.remain_batch(b, s, (*ctx.seed, 2)),
                             fisher_batches, ctx.mesh)
    f_t = fisher(state.params, state.model_state, target)
    f_r = fisher(state.params, state.model_state, remain)
    return balanced_saliency_mask(f_t, f_r, threshold=threshold)

  def run(kind, state, ctx):
    tx, steps = phases[kind]
    access, b, n = ctx.access, ctx.batch_size, ctx.num_iterations
    has_remain = access.remain_indices.size > 0
    use_mask = has_remain and (mask if kind == "unlearn" else learn_mask)
    threshold = mask_threshold if kind == "unlearn" else learn_mask_threshold
    m = saliency(state, ctx, threshold) if use_mask else None
    lr = unlearn_lr if kind == "unlearn" else learn_lr
    freq = forget_freq if kind == "unlearn" else learn_freq
    a_t = a_unlearn if kind == "unlearn" else a_learn
    hp = RequestHParams.create(learning_rate=lr, a_target=a_t, a_remain=a_remain,
                               beta=beta or lr, damping=damping, num_iterations=n)
    target = lambda j: ctx.put(access.target_batch(b, j, (*ctx.seed, 3)))
    remain = lambda k: ctx.put(access.remain_batch(b, k, (*ctx.seed, 4)))
    on_iteration = monitor(ctx=ctx, name=name)
    ts, counts = run_request(steps, init_train_state(state.params, state.model_state, tx),
                             mode=mode, num_iterations=n, forget_freq=freq,
                             target_batch=target, remain_batch=remain, mask=m, hp=hp,
                             has_remain=has_remain,
                             on_step=lambda k, ts, metrics: on_iteration(k, metrics))
    params, model_state = finish(ts, ctx=ctx, name=name, slow_step_size=slow_step_size)
    cost = request_cost(counts)
    if use_mask:
      cost = cost.add(Cost(0.0, 0, 2 * fisher_batches, 0))
    return MethodState(params, model_state, state.extra), cost

  return Method(name=name, init=lambda params, model_state: MethodState(params, model_state),
                learn=functools.partial(run, "learn"), unlearn=functools.partial(run, "unlearn"))
