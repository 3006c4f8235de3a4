r"""Jitted learn- and unlearn-request steps for the three compensation modes (docs/method.md §5-§7).

A request of ``N`` iterations alternates, at iteration ``k``:

* ``fast_slow`` (default): if ``k % f == 0`` a **target** step
  :math:`\theta_f = \theta - \eta\, d` with
  :math:`d = \mathrm{clip}_c(M \odot \nabla J_T)`, then always a **remain** step
  :math:`\theta \leftarrow \theta_f - \eta\, a_R \nabla L_R(\theta_f)`. To first
  order this applies :math:`(I - \eta a_R H_R) d`: the remaining-Hessian
  compensation, implicitly (§6).
* ``hvp``: if ``k % f == 0`` one **fused** step with
  :math:`\tilde d = d - \beta H_R d` (or the Neumann series) plus
  :math:`a_R \nabla L_R`, the HVP by forward-over-reverse; otherwise a remain step.
* ``none``: if ``k % f == 0`` one **fused** joint step
  :math:`d + a_R \nabla L_R` (the Euclidean ablation); otherwise a remain step.

The target objective is :math:`J_U = -a_U(k) \sum_i w_i \ell_i` for unlearn
requests, with :math:`a_U(k) = a_{U0} (1 + \cos(\pi k / N)) / 2`, and
:math:`J_L = a_L \sum_i w_i \ell_i` for learn requests. The learning rate
follows the same cosine over the request. All per-request numbers travel in
:class:`RequestHParams` as traced scalars, so one compiled program serves every
request of the same shapes; the state is donated.

The equations are public functions that the jitted steps call:
:func:`target_direction` (§5, :math:`d = \mathrm{clip}_c(M \odot g)`) and
:func:`compensated_update` (§5, :math:`\tilde d + \mathrm{clip}(a_R \nabla L_R)`).
Every one-loss step (UG-CLU's target and remain steps, the baselines' steps of
:func:`make_gradient_step`) runs through one skeleton: cosine learning rate,
``value_and_grad`` at the fast weights, direction (clip), ``tx.update``, apply.
:func:`ugclu_jax.run_request` plays one request's schedule with these steps.
"""

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from ugclu_jax import objectives
from ugclu_jax.fast_slow import FastSlowParams
from ugclu_jax.grads import ApplyFn, batch_loss, clip_by_global_norm, joint_direction
from ugclu_jax.hvp import compensate, ggn_vp, hvp
from ugclu_jax.saliency import apply_mask
from ugclu_jax.types import Batch, ModelState, Params

MODES = ("fast_slow", "hvp", "none")
KINDS = ("learn", "unlearn")
CURVATURES = ("hessian", "ggn")


class TrainState(NamedTuple):
  """Everything a step reads and writes.

  Attributes:
    params: ``FastSlowParams(fast, slow)``; gradients are taken at ``fast``.
    opt_state: state of the optimizer (see :func:`ugclu_jax.optim.build_optimizer`).
    model_state: batch-norm statistics (an empty pytree for models without).
    iteration: int32 iteration ``k`` within the current request.
  """

  params: FastSlowParams
  opt_state: Any
  model_state: ModelState
  iteration: jax.Array


class RequestHParams(NamedTuple):
  """Per-request scalars, traced (changing them does not recompile).

  Attributes:
    learning_rate: base learning rate :math:`\\eta_0` (cosine-decayed over the request
      when the steps are built with ``lr_schedule="cosine"``).
    a_target: :math:`a_{U0}` (unlearn) or :math:`a_L` (learn).
    a_remain: :math:`a_R`.
    beta: :math:`\\beta` of the explicit compensation (``hvp`` mode).
    damping: :math:`\\delta` of the explicit compensation.
    num_iterations: ``N``, the request's length, for the cosine schedules.
  """

  learning_rate: jax.Array
  a_target: jax.Array
  a_remain: jax.Array
  beta: jax.Array
  damping: jax.Array
  num_iterations: jax.Array

  @classmethod
  def create(
    cls,
    *,
    learning_rate: float,
    a_target: float,
    num_iterations: int,
    a_remain: float = 1.0,
    beta: float = 0.01,
    damping: float = 0.0,
  ) -> "RequestHParams":
    if num_iterations < 1:
      raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
    f32 = lambda v: jnp.asarray(v, jnp.float32)
    return cls(
      f32(learning_rate),
      f32(a_target),
      f32(a_remain),
      f32(beta),
      f32(damping),
      jnp.asarray(num_iterations, jnp.int32),
    )


class Steps(NamedTuple):
  r"""The jitted step functions of one phase (one request kind, one mode).

  Attributes:
    target: ``(state, batch, mask, hp, advance=0) -> (state, metrics)``: the
      target step alone (fast-slow mode; every mode when no remaining data
      exist, then with ``advance=1`` so that it ends the iteration).
    remain: ``(state, batch, hp) -> (state, metrics)``: one preserve step; ends
      an iteration (increments ``k``).
    fused: ``(state, target_batch, remain_batch, mask, hp) -> (state, metrics)``:
      the ``hvp`` compensated or ``none`` joint step; ends an iteration. In
      ``hvp`` mode its metrics hold ``compensation``,
      :math:`\lVert d - \tilde d \rVert / \lVert d \rVert`.
  """

  target: Callable
  remain: Callable
  fused: Callable


def init_train_state(
  params: Params, model_state: ModelState, tx: optax.GradientTransformation
) -> TrainState:
  """A fresh state: synced fast/slow parameters, fresh optimizer state, ``k = 0``.

  The fast and slow trees and the model state are fresh copies, so donating
  the state never invalidates ``params`` or ``model_state`` and never donates
  one buffer twice. When ``params`` are replicated over several devices
  (:func:`ugclu_jax.parallel.replicate`), so is the whole state, the optimizer's
  scalars included: the steps then compile once, not again on their own outputs.
  """
  fs = FastSlowParams(jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, params))
  state = TrainState(fs, tx.init(fs), jax.tree.map(jnp.copy, model_state), jnp.zeros((), jnp.int32))
  shardings = {p.sharding for p in jax.tree.leaves(params) if isinstance(p, jax.Array)}
  if len(shardings) == 1:
    (sharding,) = shardings
    if sharding.is_fully_replicated and len(sharding.device_set) > 1:
      state = jax.device_put(state, sharding)
  return state


def cosine_factor(k: jax.Array, n: jax.Array) -> jax.Array:
  r""":math:`(1 + \cos(\pi \min(k, N) / N)) / 2`, from 1 at ``k = 0`` to 0 at ``k = N``."""
  k = jnp.minimum(k, n).astype(jnp.float32)
  return 0.5 * (1.0 + jnp.cos(jnp.pi * k / n.astype(jnp.float32)))


def _norm_ratio(a: Params, b: Params) -> jax.Array:
  r""":math:`\lVert a \rVert / \lVert b \rVert` (global norms), 0 where ``b`` is 0."""
  return optax.tree.norm(a) / jnp.maximum(optax.tree.norm(b), jnp.finfo(jnp.float32).tiny)


def target_direction(
  grad: Params, mask: Optional[Params], clip_norm: Optional[float], *, mask_as_norm: bool = False
) -> tuple[Params, jax.Array]:
  r"""The target direction of §5, :math:`d = \mathrm{clip}_c(M \odot g)`.

  Returns ``(d, norm)`` with ``norm`` :math:`\lVert M \odot g \rVert` before the
  clip. Masks once, then clips to global norm ``clip_norm``, so the clip measures
  only the salient coordinates. ``grad`` is the target gradient already
  scaled by :math:`a_T` (:math:`g = a_T \nabla J_T`); ``mask`` a 0/1 pytree
  :math:`M` (None: :math:`M = 1`); ``clip_norm`` None: no clip.

  ``mask_as_norm=True`` is the ablation "no mask at the masked step's size":
  :math:`d = \mathrm{clip}_c(g \, \lVert M \odot g \rVert / \lVert g \rVert)`,
  every coordinate moves and the step is as long as the masked one.
  """
  masked = apply_mask(grad, mask)
  if mask_as_norm and mask is not None:
    masked = optax.tree.scale(_norm_ratio(masked, grad), grad)
  return clip_by_global_norm(masked, clip_norm)


def compensated_update(
  d: Params,
  remain_grad: Params,
  *,
  a_remain: float | jax.Array,
  hvp_fn: Optional[Callable[[Params], Params]] = None,
  beta: float | jax.Array = 0.0,
  order: int = 1,
  damping: float | jax.Array = 0.0,
  remain_clip_norm: Optional[float] = None,
) -> Params:
  r"""A fused step's direction, :math:`g = \tilde d + \mathrm{clip}_c(a_R \nabla L_R)` (§5).

  With ``hvp_fn`` (``v -> H_R v``, ``hvp`` mode),
  :math:`\tilde d = d - \beta (H_R + \delta I) d` for ``order = 1``, or the damped
  Neumann series for ``order > 1`` (:func:`ugclu_jax.compensate`); without
  (``none`` mode), :math:`\tilde d = d`, the Euclidean joint step. ``d`` is the
  (masked, clipped) :func:`target_direction`; the mask never touches the
  preserve gradient nor the curvature term. ``remain_clip_norm`` clips
  :math:`a_R \nabla L_R` (None: no clip). The sum is
  :func:`ugclu_jax.grads.joint_direction`, the one :func:`ugclu_jax.combine` uses.
  """
  if hvp_fn is not None:
    d = compensate(d, hvp_fn, beta=beta, order=order, damping=damping)
  return joint_direction(d, remain_grad, a_remain=a_remain, clip_norm=remain_clip_norm)


# loss_fn(params, model_state, batches, aux) -> (loss, (model_state, metrics)):
# ``batches`` a dict of Batch, ``aux`` a pytree of request constants (teacher,
# Fisher, recorded logits); neither is donated.
LossFn = Callable[[Params, ModelState, dict, Any], tuple[jax.Array, tuple[ModelState, dict]]]


def _schedule(ts: TrainState, hp: RequestHParams, cosine_lr: bool) -> tuple[jax.Array, Any]:
  r"""The cosine factor of iteration ``k`` and the optimizer state with :math:`\eta_k` set."""
  factor = cosine_factor(ts.iteration, hp.num_iterations)
  opt_state = ts.opt_state
  if cosine_lr:
    opt_state = optax.tree.set(opt_state, learning_rate=hp.learning_rate * factor)
  return factor, opt_state


def _apply(
  tx: optax.GradientTransformationExtraArgs,
  ts: TrainState,
  direction: Params,
  opt_state: Any,
  model_state: ModelState,
  mask: Optional[Params],
  advance,
) -> TrainState:
  """``tx.update`` of ``direction`` (``mask`` to the optimizer), applied to both weight trees."""
  updates, opt_state = tx.update(direction, opt_state, ts.params, saliency_mask=mask)
  params = optax.apply_updates(ts.params, updates)
  return TrainState(params, opt_state, model_state, ts.iteration + advance)


def _gradient_step(
  tx,
  ts: TrainState,
  hp: RequestHParams,
  loss_fn: Callable,
  args: tuple,
  direction: Callable,
  *,
  mask: Optional[Params],
  advance,
  cosine_lr: bool = True,
):
  """The one skeleton of a one-loss step: cosine lr, ``value_and_grad`` at ``.fast``,
  ``direction(g, factor) -> (d, metrics)`` (scale, mask, clip), ``tx.update``, apply.

  ``loss_fn(params, model_state, *args) -> (loss, (model_state, metrics))``.
  Returns ``(state, loss, loss_metrics, direction_metrics)``.
  """
  factor, opt_state = _schedule(ts, hp, cosine_lr)
  (loss, (model_state, metrics)), g = jax.value_and_grad(loss_fn, has_aux=True)(
    ts.params.fast, ts.model_state, *args
  )
  d, d_metrics = direction(g, factor)
  return _apply(tx, ts, d, opt_state, model_state, mask, advance), loss, metrics, d_metrics


def make_gradient_step(
  loss_fn: LossFn, tx: optax.GradientTransformationExtraArgs, *, clip_norm: Optional[float] = None
) -> Callable:
  r"""Jitted ``(state, batches, aux, hp, mask, advance) -> (state, metrics)``.

  One step on ``loss_fn`` at the fast weights,
  :math:`\theta \leftarrow \theta - \eta_k\, \mathrm{tx}(\mathrm{clip}_c(\nabla L))`,
  with :math:`\eta_k` ``hp.learning_rate`` times the cosine factor of the
  state's iteration over ``hp.num_iterations``; the gradient is clipped to
  global norm ``clip_norm`` (None: no clip), and ``mask`` (a 0/1 pytree, or
  None) multiplies the update inside the optimizer. ``advance`` (0 or 1) is
  added to the iteration counter. The state is donated. UG-CLU's target and
  remain steps (:func:`make_steps`) run through the same skeleton.
  """

  def clip(g, factor):
    del factor
    g, norm = clip_by_global_norm(g, clip_norm)
    return g, {"grad_norm": norm}

  def step(ts: TrainState, batches, aux, hp: RequestHParams, mask, advance):
    new, loss, metrics, d_metrics = _gradient_step(
      tx, ts, hp, loss_fn, (batches, aux), clip, mask=mask, advance=advance
    )
    return new, {**metrics, "loss": loss, **d_metrics}

  return jax.jit(step, donate_argnums=0)


def _without_metrics(fn: Callable) -> Callable:
  """``(params, model_state, batch) -> (loss, model_state)`` as a :data:`LossFn`-style
  ``(loss, (model_state, {}))``."""

  def loss(params, model_state, batch):
    value, model_state = fn(params, model_state, batch)
    return value, (model_state, {})

  return loss


def make_steps(
  apply_fn: ApplyFn,
  tx: optax.GradientTransformationExtraArgs,
  *,
  kind: str,
  mode: str = "fast_slow",
  clip_norm: Optional[float] = 7.0,
  temperature: float = 0.5,
  decay_target: Optional[bool] = None,
  lr_schedule: str = "cosine",
  curvature: str = "hessian",
  order: int = 1,
  train: bool = True,
  remain_clip_norm: Optional[float] = None,
  max_forget_loss: Optional[float] = None,
  mask_as_norm: bool = False,
) -> Steps:
  """Builds the jitted steps of one phase.

  Args:
    apply_fn: ``apply_fn(params, model_state, x, *, train) -> (logits, state)``.
    tx: optimizer over ``FastSlowParams`` taking a ``saliency_mask`` extra arg
      (:func:`ugclu_jax.optim.build_optimizer`). Its learning rate is rewritten
      each step when ``lr_schedule="cosine"`` (it must then be injected).
    kind: ``"learn"`` or ``"unlearn"``: the target objective.
    mode: ``"fast_slow"``, ``"hvp"`` or ``"none"``.
    clip_norm: global-norm clip of the masked target gradient (None: off).
    temperature: :math:`\\lambda` of the adaptive weights (unlearn); for learn
      the weights use ``temperature`` too, so pass 0 for uniform learn weights.
    decay_target: cosine-decay :math:`a_T` over the request (default: True for
      unlearn, False for learn).
    lr_schedule: ``"cosine"`` over the request or ``"constant"``.
    curvature: ``"hessian"`` or ``"ggn"`` (``hvp`` mode).
    order: compensation order (``hvp`` mode), see :func:`ugclu_jax.compensate`.
    train: forward mode for the gradient steps (batch-norm batch statistics).
    remain_clip_norm: global-norm clip of the (``a_R``-scaled) remain gradient,
      in remain and fused steps (None: off).
    max_forget_loss: bounded ascent (unlearn): forget samples whose loss
      exceeds it are no longer pushed (:func:`ugclu_jax.unlearn_loss`).
    mask_as_norm: the mask sets only the target direction's length, not its
      coordinates (:func:`target_direction`; the no-mask ablation at a matched
      step size).

  Returns:
    :class:`Steps`, each jitted once with the state donated.
  """
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  if curvature not in CURVATURES:
    raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
  if lr_schedule not in ("cosine", "constant"):
    raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
  if clip_norm is not None and clip_norm <= 0:
    raise ValueError(f"clip_norm must be positive or None, got {clip_norm}")
  if decay_target is None:
    decay_target = kind == "unlearn"
  if kind == "unlearn":
    target_loss = batch_loss(
      apply_fn,
      objectives.unlearn_loss,
      train=train,
      temperature=temperature,
      max_loss=max_forget_loss,
    )
  else:
    target_loss = batch_loss(apply_fn, objectives.learn_loss, train=train, temperature=temperature)
  target_loss = _without_metrics(target_loss)
  remain_loss = _without_metrics(batch_loss(apply_fn, objectives.preserve_loss, train=train))
  cosine_lr = lr_schedule == "cosine"

  def a_target(hp, factor):
    return hp.a_target * factor if decay_target else hp.a_target

  def check(batch, name):
    if not isinstance(batch, Batch):
      raise TypeError(f"{name} must be a ugclu_jax.Batch, got {type(batch).__name__}")
    if batch.y.shape != batch.x.shape[:1] or batch.mask.shape != batch.y.shape:
      raise ValueError(
        f"{name}: x {batch.x.shape}, y {batch.y.shape} and mask "
        f"{batch.mask.shape} disagree on the batch size"
      )

  def target_step(state, batch, mask, hp, advance=0):
    check(batch, "target batch")

    def direction(g, factor):
      a_t = a_target(hp, factor)
      d, norm = target_direction(
        optax.tree.scale(a_t, g), mask, clip_norm, mask_as_norm=mask_as_norm
      )
      return d, {"target_grad_norm": norm, "a_target": a_t}

    # The mask is applied once, here, before the clip (§5: the clip measures the
    # salient coordinates only). The optimizer gets none: fast_slow's saliency_mask
    # multiplies its incoming update, which d already is (M ⊙ d = d), so it would
    # change no value; momentum and weight decay move masked coordinates either way.
    new, loss, _, metrics = _gradient_step(
      tx,
      state,
      hp,
      target_loss,
      (batch,),
      direction,
      mask=None,
      advance=advance,
      cosine_lr=cosine_lr,
    )
    return new, {"target_loss": loss, **metrics}

  def remain_step(state, batch, hp):
    check(batch, "remain batch")

    def direction(g, factor):
      del factor
      g, norm = clip_by_global_norm(optax.tree.scale(hp.a_remain, g), remain_clip_norm)
      return g, {"remain_grad_norm": norm}

    new, loss, _, metrics = _gradient_step(
      tx, state, hp, remain_loss, (batch,), direction, mask=None, advance=1, cosine_lr=cosine_lr
    )
    return new, {"remain_loss": loss, **metrics}

  def fused_step(state, target_batch, remain_batch, mask, hp):
    check(target_batch, "target batch")
    check(remain_batch, "remain batch")
    factor, opt_state = _schedule(state, hp, cosine_lr)
    a_t = a_target(hp, factor)
    fast = state.params.fast
    (t_loss, (model_state, _)), g_t = jax.value_and_grad(target_loss, has_aux=True)(
      fast, state.model_state, target_batch
    )
    d, norm = target_direction(
      optax.tree.scale(a_t, g_t), mask, clip_norm, mask_as_norm=mask_as_norm
    )
    (r_loss, (model_state, _)), g_r = jax.value_and_grad(remain_loss, has_aux=True)(
      fast, model_state, remain_batch
    )
    metrics = {
      "target_loss": t_loss,
      "target_grad_norm": norm,
      "a_target": a_t,
      "remain_loss": r_loss,
    }
    hvp_fn = None
    if mode == "hvp":
      # The curvature uses the remain batch in the same mode as the remain
      # gradient, with the model state fixed: batch statistics are not updated.
      def scalar_loss(p):
        return remain_loss(p, state.model_state, remain_batch)[0]

      def logits_fn(p):
        return apply_fn(p, state.model_state, remain_batch.x, train=train)[0]

      if curvature == "hessian":
        hvp_fn = functools.partial(hvp, scalar_loss, fast)
      else:
        w = remain_batch.mask / jnp.maximum(jnp.sum(remain_batch.mask), 1)
        hvp_fn = lambda v: ggn_vp(logits_fn, fast, v, weights=w)
      # The compensation's relative size, ||d - d~|| / ||d|| (beta ||(H_R + dI) d|| / ||d||
      # at order 1): how far the step leaves the Euclidean joint step.
      compensated = compensate(d, hvp_fn, beta=hp.beta, order=order, damping=hp.damping)
      metrics["compensation"] = _norm_ratio(optax.tree.sub(d, compensated), d)
      d = compensated
    g = joint_direction(d, g_r, a_remain=hp.a_remain, clip_norm=remain_clip_norm)
    return _apply(tx, state, g, opt_state, model_state, None, 1), metrics

  jit = functools.partial(jax.jit, donate_argnums=0)
  return Steps(target=jit(target_step), remain=jit(remain_step), fused=jit(fused_step))
