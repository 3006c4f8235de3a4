r"""The baselines' learn rules (the continual-learning side, docs/method.md §10), one factory each.

A factory takes the run's :class:`~ugclu_jax.methods.rules.Setup` and its own
hyperparameters as keyword-only parameters (fields of
:class:`~ugclu_jax.methods.baselines_config.BaselinesConfig`, where their
defaults and ranges are) and returns a :class:`~ugclu_jax.methods.rules.Learner`:
the learn request, plus the rule's extra state (its init, its purge before an
unlearn request, its refresh after one). Every learn request starts a fresh
SGD at ``setup.learn_lr`` and takes one
:func:`~ugclu_jax.steps.make_gradient_step` step per iteration on a batch of
the request's new data :math:`D_L` (seed stream ``target_batches``) and, where
the rule replays, batches of the store (``remain_batches``, and DER++'s
``replay_batches``; :mod:`ugclu_jax.seeds`). An empty store (a learn request
before anything is stored) drops the store terms.
"""

import jax
import jax.numpy as jnp
import numpy as np

from ugclu_jax import objectives
from ugclu_jax.data import batch_indices
from ugclu_jax.methods.base import Context, MethodState, make_fisher_fn
from ugclu_jax.methods.rules import (
  Draw,
  Learner,
  Setup,
  batch_ce,
  forward,
  has_remain,
  run_steps,
  teacher_logits,
)
from ugclu_jax.metrics import Cost
from ugclu_jax.seeds import seed_for
from ugclu_jax.steps import make_gradient_step
from ugclu_jax.types import Batch


def _learn_term(apply_fn, params, model_state, batches):
  """``(logits, CE(D_L), model_state)`` on the new-data batch, every rule's first term."""
  new = batches["target"]
  logits, model_state = forward(apply_fn, params, model_state, new)
  return logits, batch_ce(logits, new), model_state


def _learn(setup: Setup, state: MethodState, ctx: Context, step, tx, batches, hint=None):
  """A learn request of single steps at ``setup.learn_lr`` (:func:`run_steps`)."""
  return run_steps(
    state,
    ctx,
    step=step,
    tx=tx,
    learning_rate=setup.learn_lr,
    batches=batches,
    name=setup.name,
    hint=hint,
  )


def naive(setup: Setup) -> Learner:
  r"""Sequential fine-tuning: :math:`\mathrm{CE}(D_L)`."""
  tx = setup.optimizer(setup.learn_lr)

  def loss_fn(params, model_state, batches, aux):
    del aux
    _, loss, model_state = _learn_term(setup.apply_fn, params, model_state, batches)
    return loss, (model_state, {"learn_loss": loss})

  step = make_gradient_step(loss_fn, tx, clip_norm=setup.clip_norm)

  def learn(state: MethodState, ctx: Context):
    draw = Draw(ctx)
    params, model_state, cost = _learn(
      setup, state, ctx, step, tx, lambda k: ({"target": ctx.put(draw.target(k))}, {})
    )
    return MethodState(params, model_state, state.extra), cost

  return Learner(learn=learn)


def er(setup: Setup) -> Learner:
  r"""Experience replay: :math:`\mathrm{CE}(D_L) + \mathrm{CE}(\text{store batch})`."""
  tx = setup.optimizer(setup.learn_lr)

  def loss_fn(params, model_state, batches, aux):
    del aux
    _, loss, model_state = _learn_term(setup.apply_fn, params, model_state, batches)
    metrics = {"learn_loss": loss}
    if "remain" in batches:
      logits, model_state = forward(setup.apply_fn, params, model_state, batches["remain"])
      metrics["replay_loss"] = batch_ce(logits, batches["remain"])
      loss = loss + metrics["replay_loss"]
    return loss, (model_state, metrics)

  step = make_gradient_step(loss_fn, tx, clip_norm=setup.clip_norm)

  def learn(state: MethodState, ctx: Context):
    draw = Draw(ctx)
    batches = lambda k: (draw.target_and_remain(k), {})
    params, model_state, cost = _learn(setup, state, ctx, step, tx, batches)
    return MethodState(params, model_state, state.extra), cost

  return Learner(learn=learn)


def der_pp(setup: Setup, *, der_alpha: float, der_beta: float) -> Learner:
  r"""DER++ (Buzzega et al. 2020, eq. 6).

  .. math::
     \mathrm{CE}(D_L) + \alpha\,\mathrm{MSE}(f(x'), z') + \beta\,\mathrm{CE}(x'', y'')

  with two independent store batches and :math:`z'` the logits recorded when
  the sample was learned (at the end of its learn request, for all of
  :math:`D_L`; the store keeps a reservoir sample of it). Recorded logits of
  unlearned samples are zeroed before the unlearn request's first step. The
  extra state is ``{"logits": float32 [num_train, num_classes]}``.

  Args:
    setup: the run's settings.
    der_alpha: :math:`\alpha`, the logit-MSE weight.
    der_beta: :math:`\beta`, the replay cross-entropy weight.
  """
  apply_fn, num_train = setup.apply_fn, setup.num_train
  tx = setup.optimizer(setup.learn_lr)

  def loss_fn(params, model_state, batches, aux):
    _, loss, model_state = _learn_term(apply_fn, params, model_state, batches)
    metrics = {"learn_loss": loss}
    if "remain" in batches:
      b1, b2 = batches["remain"], batches["remain2"]
      z1, model_state = forward(apply_fn, params, model_state, b1)
      recorded = aux["logits"][aux["indices"]]
      mse = jnp.mean(jnp.square(z1 - recorded), axis=-1)
      metrics["logit_mse"] = jnp.sum(mse * b1.mask) / jnp.maximum(jnp.sum(b1.mask), 1)
      z2, model_state = forward(apply_fn, params, model_state, b2)
      metrics["replay_loss"] = batch_ce(z2, b2)
      loss = loss + der_alpha * metrics["logit_mse"] + der_beta * metrics["replay_loss"]
    return loss, (model_state, metrics)

  step = make_gradient_step(loss_fn, tx, clip_norm=setup.clip_norm)
  record_batch = jax.jit(
    lambda buf, params, model_state, x, idx: buf.at[idx].set(
      apply_fn(params, model_state, x, train=False)[0].astype(buf.dtype), mode="drop"
    ),
    donate_argnums=0,
  )
  zero_rows = jax.jit(lambda buf, rows: jnp.where(rows[:, None], jnp.zeros((), buf.dtype), buf))

  def record(params, model_state, buf, ctx: Context):
    """Logits of every ``D_L`` sample at the end of the request, in fixed-size chunks."""
    buf = jnp.copy(buf)  # The input state keeps its buffer; the copy is donated.
    b, target = ctx.batch_size, ctx.access.target_indices
    for start in range(0, target.size, b):
      chunk = target[start : start + b]
      batch = ctx.access.batch(chunk)
      pad = b - chunk.size
      x = np.concatenate([batch.x, np.zeros((pad,) + batch.x.shape[1:], batch.x.dtype)])
      idx = np.concatenate([chunk, np.full(pad, num_train, np.int64)]).astype(np.int32)
      buf = record_batch(buf, params, model_state, jnp.asarray(x), jnp.asarray(idx))
    return buf

  def init(params, model_state):
    del params, model_state
    return {"logits": jnp.zeros((num_train, setup.num_classes), jnp.float32)}

  def learn(state: MethodState, ctx: Context):
    draw, replay = Draw(ctx), has_remain(ctx)
    aux = {"logits": state.extra["logits"]}

    def batches(k):
      out = {"target": ctx.put(draw.target(k))}
      if not replay:
        return out, aux
      b1, idx = draw.remain_with_indices(k)
      out["remain"], out["remain2"] = ctx.put(b1), ctx.put(draw.remain(k, "replay_batches"))
      return out, {**aux, "indices": jnp.asarray(idx, jnp.int32)}

    params, model_state, cost = _learn(setup, state, ctx, step, tx, batches)
    extra = {"logits": record(params, model_state, state.extra["logits"], ctx)}
    return MethodState(params, model_state, extra), cost

  def purge(extra, ctx: Context):
    rows = np.zeros(num_train, bool)
    rows[ctx.access.target_indices] = True
    return {"logits": zero_rows(extra["logits"], jnp.asarray(rows))}

  return Learner(learn=learn, init=init, purge=purge)


def lwf(setup: Setup, *, lwf_lambda: float, lwf_temperature: float) -> Learner:
  r"""Learning without Forgetting (Li & Hoiem 2017) in a single head.

  .. math::
     \mathrm{CE}(D_L) + \lambda\, \mathrm{KL}(p^T_{old} \| p^T)

  on the new data, the old model being the one at the request start and both
  softmaxes running over the old classes only (as LwF is run
  class-incrementally, e.g. in mammoth). The old classes are those the store
  holds (only their presence is read); with an empty store nothing is
  distilled.

  Args:
    setup: the run's settings.
    lwf_lambda: :math:`\lambda`, the distillation weight.
    lwf_temperature: :math:`T`, the distillation temperature.
  """
  apply_fn = setup.apply_fn
  tx = setup.optimizer(setup.learn_lr)

  def loss_fn(params, model_state, batches, aux):
    logits, loss, model_state = _learn_term(apply_fn, params, model_state, batches)
    metrics = {"learn_loss": loss}
    if "teacher" in aux:
      new = batches["target"]
      metrics["distill_loss"] = objectives.distillation_loss(
        logits=logits,
        teacher_logits=teacher_logits(apply_fn, aux["teacher"], new),
        temperature=lwf_temperature,
        mask=new.mask,
        classes=aux["old_classes"],
      )
      loss = loss + lwf_lambda * metrics["distill_loss"]
    return loss, (model_state, metrics)

  step = make_gradient_step(loss_fn, tx, clip_norm=setup.clip_norm)

  def learn(state: MethodState, ctx: Context):
    draw, aux = Draw(ctx), {}
    if has_remain(ctx):
      # The old model's outputs on the classes it learned and keeps (those in the store).
      old = np.zeros(setup.num_classes, np.float32)
      old[ctx.access.labels(ctx.access.remain_indices)] = 1.0
      aux = {
        "teacher": {"params": state.params, "model_state": state.model_state},
        "old_classes": jnp.asarray(old),
      }
    params, model_state, cost = _learn(
      setup, state, ctx, step, tx, lambda k: ({"target": ctx.put(draw.target(k))}, aux)
    )
    return MethodState(params, model_state, state.extra), cost

  return Learner(learn=learn)


def ewc(setup: Setup, *, ewc_lambda: float, ewc_gamma: float, ewc_fisher_samples: int) -> Learner:
  r"""Online EWC (Schwarz et al. 2018).

  .. math::
     \mathrm{CE}(D_L) + \frac{\lambda}{2} \sum_i F_i (\theta_i - \theta^*_i)^2

  After a learn request :math:`F \leftarrow \gamma F + F(D_L)`,
  :math:`\theta^* \leftarrow \theta`; after an unlearn request :math:`F` is
  recomputed on the store and :math:`\theta^*` reset. :math:`F` is the
  empirical per-sample Fisher diagonal (:func:`ugclu_jax.fisher_diagonal` over
  single-sample batches, seed stream ``ewc_fisher``). The extra state is ``{"fisher",
  "anchor"}``, parameter-shaped.

  Args:
    setup: the run's settings.
    ewc_lambda: :math:`\lambda`, the penalty weight.
    ewc_gamma: :math:`\gamma`, the online Fisher decay, in [0, 1].
    ewc_fisher_samples: single-sample gradients per Fisher estimate.
  """
  tx = setup.optimizer(setup.learn_lr)
  fisher_fn = make_fisher_fn(setup.apply_fn)

  def loss_fn(params, model_state, batches, aux):
    _, loss, model_state = _learn_term(setup.apply_fn, params, model_state, batches)
    metrics = {"learn_loss": loss}
    metrics["ewc_penalty"] = objectives.ewc_penalty(params, aux["anchor"], aux["fisher"])
    loss = loss + ewc_lambda * metrics["ewc_penalty"]
    return loss, (model_state, metrics)

  step = make_gradient_step(loss_fn, tx, clip_norm=setup.clip_norm)
  hint = (
    f"lower ewc_lambda ({ewc_lambda:g}) or the learning rate: SGD on the penalty "
    f"diverges once ewc_lambda * max(F) * learning rate exceeds 2 (1 + momentum)"
  )

  def update(params, model_state, extra, ctx: Context, *, target: bool):
    """``F <- gamma F + F(D_L)`` after a learn request; ``F <- F(store)`` after an unlearn."""
    access = ctx.access
    indices = access.target_indices if target else access.remain_indices
    if indices.size == 0:
      fisher = jax.tree.map(jnp.zeros_like, extra["fisher"])
      return {"fisher": fisher, "anchor": params}, 0
    idx = batch_indices(indices, ewc_fisher_samples, 0, seed_for(ctx.seed, "baseline.ewc_fisher"))
    singles = access.batch(idx)
    batches = Batch(*(jnp.asarray(a.reshape((a.shape[0], 1) + a.shape[1:])) for a in singles))
    new = fisher_fn(params, model_state, batches)
    if target:
      new = jax.tree.map(lambda f, n: ewc_gamma * f + n, extra["fisher"], new)
    return {"fisher": new, "anchor": params}, ewc_fisher_samples

  def init(params, model_state):
    del model_state
    return {
      "fisher": jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params),
      "anchor": params,
    }

  def learn(state: MethodState, ctx: Context):
    draw, aux = Draw(ctx), {"fisher": state.extra["fisher"], "anchor": state.extra["anchor"]}
    params, model_state, cost = _learn(
      setup, state, ctx, step, tx, lambda k: ({"target": ctx.put(draw.target(k))}, aux), hint=hint
    )
    extra, grads = update(params, model_state, state.extra, ctx, target=True)
    return MethodState(params, model_state, extra), cost.add(Cost(0.0, 0, grads, 0))

  def refresh(state: MethodState, ctx: Context):
    extra, grads = update(state.params, state.model_state, state.extra, ctx, target=False)
    return extra, Cost(0.0, 0, grads, 0)

  return Learner(learn=learn, init=init, refresh=refresh)


# The learn rules by name (their keyword-only parameters: rules.rule_hparams).
LEARN_RULES = {"naive": naive, "er": er, "der_pp": der_pp, "lwf": lwf, "ewc": ewc}
