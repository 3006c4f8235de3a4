r"""The baselines' unlearn rules (docs/method.md §10), one factory each.

A factory takes the run's :class:`~ugclu_jax.methods.rules.Setup` and its own
hyperparameters as keyword-only parameters (fields of
:class:`~ugclu_jax.methods.baselines_config.BaselinesConfig`, where their
defaults and ranges are) and returns an :data:`~ugclu_jax.methods.rules.Unlearner`,
``(state, ctx) -> (params, model_state, Cost)``. Every unlearn request starts
a fresh SGD at the rule's learning rate with a cosine over the request, and
draws forget batches of :math:`D_U` (seed stream ``target_batches``) and store
batches of :math:`D_R` (``remain_batches``; :mod:`ugclu_jax.seeds`); an empty
store drops the store terms. Every step is under
the shared global-norm clip ``setup.clip_norm`` (GA under its own): FT's
unclipped steps (lr 0.05, momentum 0.9) left the CNN to die at the next learn
request, and unclipped SCRUB max steps drove it to non-finite values within 50
iterations of a class-unlearning request (measured).
"""

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ugclu_jax import objectives
from ugclu_jax.data import batch_indices
from ugclu_jax.methods.base import (
  Context,
  MethodState,
  finish,
  max_forget_loss,
  run_iterations,
  stacked_batches,
)
from ugclu_jax.methods.rules import (
  Draw,
  Setup,
  Unlearner,
  batch_ce,
  forward,
  has_remain,
  run_steps,
  teacher_logits,
)
from ugclu_jax.metrics import Cost
from ugclu_jax.saliency import top_fraction_mask
from ugclu_jax.steps import RequestHParams, init_train_state, make_gradient_step
from ugclu_jax.types import Batch


def random_labels(labels: np.ndarray, num_classes: int, seed) -> np.ndarray:
  """Labels drawn uniformly among the classes other than each true label.

  Args:
    labels: ``[n]`` integer labels in ``[0, num_classes)``.
    num_classes: ``C >= 2``.
    seed: a non-negative int or sequence of ints for ``np.random.default_rng``.

  Returns:
    ``int32 [n]``, never equal to ``labels``, a function of the seed.
  """
  if num_classes < 2:
    raise ValueError(f"random labels need num_classes >= 2, got {num_classes}")
  labels = np.asarray(labels, np.int64)
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes})")
  offset = np.random.default_rng(seed).integers(1, num_classes, labels.shape)
  return ((labels + offset) % num_classes).astype(np.int32)


def _ascent_loss(logits, batch: Batch, max_loss: Optional[float]):
  r"""Bounded ascent with uniform weights: :math:`-\mathrm{CE}(D_U)` over the samples still
  below ``max_loss`` (:func:`ugclu_jax.unlearn_loss`); unbounded when ``max_loss`` is None."""
  return objectives.unlearn_loss(
    logits=logits, labels=batch.y, mask=batch.mask, temperature=0.0, max_loss=max_loss
  )


def ft(setup: Setup, *, ft_lr: float) -> Unlearner:
  r"""Fine-tuning on the remaining store: :math:`\mathrm{CE}(D_R)`.

  Also the unlearn rule of the continual-learning baselines. With an empty
  store there is nothing to do.

  Args:
    setup: the run's settings.
    ft_lr: the learning rate.
  """
  tx = setup.optimizer(ft_lr)

  def loss_fn(params, model_state, batches, aux):
    del aux
    remain = batches["remain"]
    logits, model_state = forward(setup.apply_fn, params, model_state, remain)
    loss = batch_ce(logits, remain)
    return loss, (model_state, {"remain_loss": loss})

  step = make_gradient_step(loss_fn, tx, clip_norm=setup.clip_norm)

  def unlearn(state: MethodState, ctx: Context):
    if not has_remain(ctx):
      return state.params, state.model_state, Cost()
    draw = Draw(ctx)
    return run_steps(
      state,
      ctx,
      step=step,
      tx=tx,
      learning_rate=ft_lr,
      name=setup.name,
      batches=lambda k: ({"remain": ctx.put(draw.remain(k))}, ()),
    )

  return unlearn


def ga(setup: Setup, *, ga_lr: float, ga_clip: float, ascent_bound: float) -> Unlearner:
  r"""Gradient ascent on the forget data: :math:`-\mathrm{CE}(D_U)`.

  With its own global-norm clip and an evaluation-mode forward, as in the
  reference, and the bounded ascent of UG-CLU.

  Args:
    setup: the run's settings.
    ga_lr: the learning rate.
    ga_clip: the global-norm gradient clip (in place of ``setup.clip_norm``).
    ascent_bound: the ascent stops on a forget sample whose loss exceeds
      ``ascent_bound * log(num_classes)`` (0: unbounded, as published).
  """
  tx = setup.optimizer(ga_lr)
  max_loss = max_forget_loss(ascent_bound, setup.num_classes)

  def loss_fn(params, model_state, batches, aux):
    del aux
    forget = batches["target"]
    logits, model_state = forward(setup.apply_fn, params, model_state, forget, train=False)
    metrics = {"forget_loss": batch_ce(logits, forget)}
    return _ascent_loss(logits, forget, max_loss), (model_state, metrics)

  step = make_gradient_step(loss_fn, tx, clip_norm=ga_clip)

  def unlearn(state: MethodState, ctx: Context):
    draw = Draw(ctx)
    return run_steps(
      state,
      ctx,
      step=step,
      tx=tx,
      learning_rate=ga_lr,
      name=setup.name,
      batches=lambda k: ({"target": ctx.put(draw.target(k))}, ()),
    )

  return unlearn


def neggrad_plus(
  setup: Setup, *, neggrad_lr: float, neggrad_alpha: float, ascent_bound: float
) -> Unlearner:
  r"""NegGrad+ (Kurmanji et al. 2023): descent on the store, ascent on the forget data.

  .. math::
     \alpha\,\mathrm{CE}(D_R) - (1 - \alpha)\,\mathrm{CE}(D_U)

  The ascent term is bounded as GA's.

  Args:
    setup: the run's settings.
    neggrad_lr: the learning rate.
    neggrad_alpha: :math:`\alpha`, in [0, 1].
    ascent_bound: as GA's.
  """
  tx = setup.optimizer(neggrad_lr)
  max_loss = max_forget_loss(ascent_bound, setup.num_classes)

  def loss_fn(params, model_state, batches, aux):
    del aux
    forget = batches["target"]
    logits, model_state = forward(setup.apply_fn, params, model_state, forget)
    metrics = {"forget_loss": batch_ce(logits, forget)}
    loss = (1.0 - neggrad_alpha) * _ascent_loss(logits, forget, max_loss)
    if "remain" in batches:
      logits, model_state = forward(setup.apply_fn, params, model_state, batches["remain"])
      metrics["remain_loss"] = batch_ce(logits, batches["remain"])
      loss = loss + neggrad_alpha * metrics["remain_loss"]
    return loss, (model_state, metrics)

  step = make_gradient_step(loss_fn, tx, clip_norm=setup.clip_norm)

  def unlearn(state: MethodState, ctx: Context):
    draw = Draw(ctx)
    batches = lambda k: (draw.target_and_remain(k), ())
    return run_steps(
      state, ctx, step=step, tx=tx, learning_rate=neggrad_lr, name=setup.name, batches=batches
    )

  return unlearn


def _random_label_descent(
  setup: Setup, learning_rate: float, saliency: Optional[Callable] = None
) -> Unlearner:
  r"""RL's request: :math:`\mathrm{CE}(D_U, \tilde y) + \mathrm{CE}(D_R)`, optionally masked.

  One random label :math:`\tilde y_i \ne y_i` per forget sample, drawn
  uniformly once per request (seed stream ``random_labels``). ``saliency(state, ctx) -> (mask,
  gradient evaluations)`` gives a 0/1 mask multiplying every update.
  """
  tx = setup.optimizer(learning_rate)

  def loss_fn(params, model_state, batches, aux):
    del aux
    forget = batches["target"]  # Its labels are already the random ones.
    logits, model_state = forward(setup.apply_fn, params, model_state, forget)
    metrics = {"random_label_loss": batch_ce(logits, forget)}
    loss = metrics["random_label_loss"]
    if "remain" in batches:
      logits, model_state = forward(setup.apply_fn, params, model_state, batches["remain"])
      metrics["remain_loss"] = batch_ce(logits, batches["remain"])
      loss = loss + metrics["remain_loss"]
    return loss, (model_state, metrics)

  step = make_gradient_step(loss_fn, tx, clip_norm=setup.clip_norm)

  def unlearn(state: MethodState, ctx: Context):
    draw, remain, access = Draw(ctx), has_remain(ctx), ctx.access
    targets = access.target_indices
    fake = random_labels(access.labels(targets), setup.num_classes, draw.seed("random_labels"))
    mask, mask_grads = saliency(state, ctx) if saliency is not None else (None, 0)

    def batches(k):
      idx = batch_indices(targets, ctx.batch_size, k, draw.seed("target_batches"))
      forget = access.batch(idx)
      out = {"target": ctx.put(forget._replace(y=fake[np.searchsorted(targets, idx)]))}
      if remain:
        out["remain"] = ctx.put(draw.remain(k))
      return out, ()

    params, model_state, cost = run_steps(
      state,
      ctx,
      step=step,
      tx=tx,
      learning_rate=learning_rate,
      name=setup.name,
      batches=batches,
      mask=mask,
    )
    return params, model_state, cost.add(Cost(0.0, 0, mask_grads, 0))

  return unlearn


def rl(setup: Setup, *, rl_lr: float) -> Unlearner:
  r"""Random labels: :math:`\mathrm{CE}(D_U, \tilde y) + \mathrm{CE}(D_R)`.

  Each :math:`\tilde y_i \ne y_i` is drawn uniformly once per request from the
  seed (:func:`random_labels`).

  Args:
    setup: the run's settings.
    rl_lr: the learning rate.
  """
  return _random_label_descent(setup, rl_lr)


def salun(
  setup: Setup, *, salun_lr: float, salun_fraction: float, salun_mask_batches: int
) -> Unlearner:
  r"""SalUn (Fan et al. 2024): RL with every update masked by weight saliency.

  The mask keeps the global top ``salun_fraction`` of
  :math:`|\nabla_\theta \mathrm{CE}(D_U)|` (:func:`ugclu_jax.top_fraction_mask`),
  the gradient summed over ``salun_mask_batches`` forget batches (seed stream ``salun_mask``)
  in evaluation mode at the request start; not UG-CLU's balanced mask.

  Args:
    setup: the run's settings.
    salun_lr: the learning rate.
    salun_fraction: share of the weights in the mask, in [0, 1].
    salun_mask_batches: forget batches summed for the saliency.
  """
  apply_fn = setup.apply_fn

  @jax.jit
  def saliency_fn(params, model_state, batches):
    def body(acc, batch):
      g = jax.grad(
        lambda p: batch_ce(forward(apply_fn, p, model_state, batch, train=False)[0], batch)
      )(params)
      return jax.tree.map(jnp.add, acc, g), None

    acc0 = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    acc, _ = jax.lax.scan(body, acc0, batches)
    return top_fraction_mask(jax.tree.map(jnp.abs, acc), salun_fraction)

  def saliency(state: MethodState, ctx: Context):
    draw = Draw(ctx)
    batches = stacked_batches(lambda s: draw.target(s, "salun_mask"), salun_mask_batches, ctx.mesh)
    return saliency_fn(state.params, state.model_state, batches), salun_mask_batches

  return _random_label_descent(setup, salun_lr, saliency)


def scrub(
  setup: Setup,
  *,
  scrub_lr: float,
  scrub_temperature: float,
  scrub_alpha: float,
  scrub_gamma: float,
  scrub_max_fraction: float,
) -> Unlearner:
  r"""SCRUB (Kurmanji et al. 2023): max steps on :math:`D_U`, then min steps on the store.

  The model at the request start is a teacher kept for the request only. The
  first ``ceil(scrub_max_fraction * N)`` iterations take a max step on a forget
  batch, maximising :math:`T^2 \mathrm{KL}(p^T_{teacher} \| p^T_{student})`;
  every iteration (with a store) then takes a min step on a store batch,
  minimising :math:`\alpha\, T^2 \mathrm{KL} + \gamma\, \mathrm{CE}`.

  Args:
    setup: the run's settings.
    scrub_lr: the learning rate.
    scrub_temperature: :math:`T`, the distillation temperature.
    scrub_alpha: :math:`\alpha`, the KL weight of the min steps.
    scrub_gamma: :math:`\gamma`, the cross-entropy weight of the min steps.
    scrub_max_fraction: share of the first iterations with a max step, in [0, 1].
  """
  apply_fn, name = setup.apply_fn, setup.name
  tx = setup.optimizer(scrub_lr)

  def kl(logits, batch, teacher):
    """:math:`T^2 \\mathrm{KL}(p^T_{teacher} \\| p^T_{student})` on ``batch``."""
    return scrub_temperature**2 * objectives.distillation_loss(
      logits=logits,
      teacher_logits=teacher_logits(apply_fn, teacher, batch),
      temperature=scrub_temperature,
      mask=batch.mask,
    )

  def max_loss(params, model_state, batches, teacher):
    forget = batches["target"]
    logits, model_state = forward(apply_fn, params, model_state, forget)
    forget_kl = kl(logits, forget, teacher)
    return -forget_kl, (model_state, {"forget_kl": forget_kl})

  def min_loss(params, model_state, batches, teacher):
    remain = batches["remain"]
    logits, model_state = forward(apply_fn, params, model_state, remain)
    remain_kl = kl(logits, remain, teacher)
    ce = batch_ce(logits, remain)
    return (
      scrub_alpha * remain_kl + scrub_gamma * ce,
      (model_state, {"remain_kl": remain_kl, "remain_loss": ce}),
    )

  max_step = make_gradient_step(max_loss, tx, clip_norm=setup.clip_norm)
  min_step = make_gradient_step(min_loss, tx, clip_norm=setup.clip_norm)

  def unlearn(state: MethodState, ctx: Context):
    draw, remain, n = Draw(ctx), has_remain(ctx), ctx.num_iterations
    hp = RequestHParams.create(learning_rate=scrub_lr, a_target=1.0, num_iterations=n)
    teacher = {"params": state.params, "model_state": state.model_state}
    n_max = math.ceil(scrub_max_fraction * n)

    def body(ts, k):
      metrics, count = {}, 0
      if k < n_max:  # A max step does not end the iteration when a min step follows.
        ts, metrics = max_step(
          ts, {"target": ctx.put(draw.target(k))}, teacher, hp, None, 0 if remain else 1
        )
        count += 1
      if remain:
        ts, m = min_step(ts, {"remain": ctx.put(draw.remain(k))}, teacher, hp, None, 1)
        metrics, count = {**metrics, **m}, count + 1
      return ts, metrics, Cost(0.0, count, count, 0)

    ts = init_train_state(state.params, state.model_state, tx)
    ts, cost = run_iterations(ts, body, ctx=ctx, name=name, num_iterations=n if remain else n_max)
    params, model_state = finish(ts, ctx=ctx, name=name)
    return params, model_state, cost

  return unlearn


# The unlearn rules by name (their keyword-only parameters: rules.rule_hparams).
UNLEARN_RULES = {
  "ft": ft,
  "ga": ga,
  "neggrad_plus": neggrad_plus,
  "rl": rl,
  "salun": salun,
  "scrub": scrub,
}
