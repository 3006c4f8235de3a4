"""UG-CLU as a runner method (docs/method.md §7), with its ablations as options.

A thin adapter over the library: the saliency mask (:mod:`ugclu_jax.saliency`),
the steps (:func:`ugclu_jax.make_steps`) and the request's schedule
(:func:`ugclu_jax.run_request`); what it adds is the runner's: batch draws
through ``DataAccess`` from named seed streams, finiteness checks and progress
(:func:`~ugclu_jax.methods.base.monitor`), and the cost. Its hyperparameters are
:class:`~ugclu_jax.methods.ugclu_config.UGCLUConfig`; the seed streams are named
in :mod:`ugclu_jax.seeds` (scope ``ugclu``).
"""

import functools
from typing import Optional

import jax
import numpy as np

from ugclu_jax import hparams as H
from ugclu_jax.data import seed_int
from ugclu_jax.methods.base import (
  Method,
  MethodState,
  check_settings,
  finish,
  make_fisher_fn,
  max_forget_loss,
  monitor,
  stacked_batches,
)
from ugclu_jax.methods.ugclu_config import MASK_KINDS, UGCLUConfig
from ugclu_jax.metrics import Cost
from ugclu_jax.optim import build_optimizer
from ugclu_jax.request import run_request
from ugclu_jax.saliency import balanced_saliency_mask, random_mask_like
from ugclu_jax.seeds import seed_for
from ugclu_jax.steps import RequestHParams, init_train_state, make_steps


def ugclu(
  apply_fn,
  hparams: UGCLUConfig = UGCLUConfig(),
  *,
  num_classes: int,
  learn_lr: float,
  momentum: float,
  weight_decay: float,
  learn_clip: Optional[float],
  name: str = "ugclu",
  **overrides,
) -> Method:
  """Builds the UG-CLU method.

  Each request: a balanced saliency mask from Fisher diagonals of the target
  and the store (unlearn requests; optional for learn), a fresh optimizer, then
  ``N`` iterations of the chosen compensation mode (see
  :mod:`ugclu_jax.steps`); finally the fast and slow weights are synced.
  ``beta = 0`` uses the request's learning rate (the value at which the
  explicit and the fast-slow compensation agree). ``sync_period = 0`` syncs
  after every fast-slow cycle (one target step and its remain steps).

  Args:
    apply_fn: ``apply_fn(params, model_state, x, *, train) -> (logits, state)``.
    hparams: UG-CLU's hyperparameters, with their defaults and ranges.
    num_classes: number of classes (the ascent bound is ``ascent_bound * log C``,
      :func:`ugclu_jax.unlearn_loss`).
    learn_lr: learning rate of learn requests.
    momentum: SGD momentum of every request.
    weight_decay: coupled weight decay of every request.
    learn_clip: global-norm clip of every gradient of a learn request (target
      and remain steps), the learn rule every method shares; None: off.
      ``hparams.clip`` clips both parts of an unlearn request: the target
      direction and the remain gradient.
    name: the method's name (progress and error messages).
    **overrides: fields of ``hparams`` to replace, e.g. ``mode="hvp"``.

  Raises:
    ValueError: a hyperparameter or setting out of range, or an unknown one.
  """
  hp = H.replace(hparams, overrides)
  if hp.mask_kind not in MASK_KINDS:
    raise ValueError(f"ugclu.mask_kind={hp.mask_kind!r} is unknown; valid: {', '.join(MASK_KINDS)}")
  check_settings(
    num_classes=num_classes, learn_lr=learn_lr, momentum=momentum, weight_decay=weight_decay
  )
  mode, order = hp.mode, hp.order
  clip_norm = hp.clip if hp.clip > 0 else None

  def optimizer(lr, freq):
    period = hp.sync_period or (freq + 1 if mode == "fast_slow" else 1)
    return build_optimizer(
      learning_rate=lr,
      momentum=momentum,
      weight_decay=weight_decay,
      sync_period=period,
      slow_step_size=hp.slow_step_size,
    )

  phases = {}
  for kind, lr, freq, temp in (
    ("learn", learn_lr, hp.learn_freq, hp.learn_temperature),
    ("unlearn", hp.unlearn_lr, hp.forget_freq, hp.temperature),
  ):
    tx = optimizer(lr, freq)
    phases[kind] = (
      tx,
      make_steps(
        apply_fn,
        tx,
        kind=kind,
        mode=mode,
        clip_norm=clip_norm if kind == "unlearn" else learn_clip,
        temperature=temp,
        curvature=hp.curvature,
        order=order,
        remain_clip_norm=clip_norm if kind == "unlearn" else learn_clip,
        max_forget_loss=max_forget_loss(hp.ascent_bound, num_classes),
        mask_as_norm=hp.mask_kind == "norm",
      ),
    )
  fisher = make_fisher_fn(apply_fn)

  def request_cost(counts):
    """One step and one gradient per target or remain step; a fused step takes two
    gradients and, in ``hvp`` mode, ``order`` HVPs."""
    return Cost(
      0.0,
      counts.target + counts.remain + counts.fused,
      counts.target + counts.remain + 2 * counts.fused,
      counts.fused * order if mode == "hvp" else 0,
    )

  def saliency(state, ctx, threshold):
    access, b = ctx.access, ctx.batch_size
    target_seed = seed_for(ctx.seed, "ugclu.fisher_target")
    remain_seed = seed_for(ctx.seed, "ugclu.fisher_remain")
    target = stacked_batches(
      lambda s: access.target_batch(b, s, target_seed), hp.fisher_batches, ctx.mesh
    )
    remain = stacked_batches(
      lambda s: access.remain_batch(b, s, remain_seed), hp.fisher_batches, ctx.mesh
    )
    f_t = fisher(state.params, state.model_state, target)
    f_r = fisher(state.params, state.model_state, remain)
    mask = balanced_saliency_mask(f_t, f_r, threshold=threshold)
    if hp.mask_kind == "random":
      key = jax.random.key(seed_int(seed_for(ctx.seed, "ugclu.random_mask")))
      mask = random_mask_like(mask, key)
    return mask

  def run(kind, state, ctx):
    tx, steps = phases[kind]
    access, b, n = ctx.access, ctx.batch_size, ctx.num_iterations
    has_remain = access.remain_indices.size > 0
    unlearn = kind == "unlearn"
    use_mask = has_remain and (hp.mask if unlearn else hp.learn_mask)
    threshold = hp.mask_threshold if unlearn else hp.learn_mask_threshold
    m = saliency(state, ctx, threshold) if use_mask else None
    lr = hp.unlearn_lr if unlearn else learn_lr
    freq = hp.forget_freq if unlearn else hp.learn_freq
    a_t = hp.a_unlearn if unlearn else hp.a_learn
    request_hp = RequestHParams.create(
      learning_rate=lr,
      a_target=a_t,
      a_remain=hp.a_remain,
      beta=(hp.beta if unlearn else hp.learn_beta or hp.beta) or lr,
      damping=hp.damping,
      num_iterations=n,
    )
    target_seed = seed_for(ctx.seed, "ugclu.target_batches")
    remain_seed = seed_for(ctx.seed, "ugclu.remain_batches")
    target = lambda j: ctx.put(access.target_batch(b, j, target_seed))
    remain = lambda k: ctx.put(access.remain_batch(b, k, remain_seed))
    on_iteration = monitor(ctx=ctx, name=name)
    compensation = []  # Device scalars, read once at the end.

    def on_step(k, ts, metrics):
      if "compensation" in metrics:
        compensation.append(metrics["compensation"])
      on_iteration(k, metrics)

    ts, counts = run_request(
      steps,
      init_train_state(state.params, state.model_state, tx),
      mode=mode,
      num_iterations=n,
      forget_freq=freq,
      target_batch=target,
      remain_batch=remain,
      mask=m,
      hp=request_hp,
      has_remain=has_remain,
      on_step=on_step,
    )
    if compensation:
      ctx.record("compensation", float(np.mean(jax.device_get(compensation))))
    params, model_state = finish(ts, ctx=ctx, name=name, slow_step_size=hp.slow_step_size)
    cost = request_cost(counts)
    if use_mask:
      cost = cost.add(Cost(0.0, 0, 2 * hp.fisher_batches, 0))
    return MethodState(params, model_state, state.extra), cost

  return Method(
    name=name,
    init=lambda params, model_state: MethodState(params, model_state),
    learn=functools.partial(run, "learn"),
    unlearn=functools.partial(run, "unlearn"),
  )
