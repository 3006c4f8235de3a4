r"""The standard baselines of continual learning-unlearning as runner methods (ALGORITHM.md §10).

Unlearning baselines (their learn requests replay the store, as ``er`` does,
so every method sees the same data budget):

* ``ft``: fine-tune on the remaining store, :math:`\mathrm{CE}(D_R)`.
* ``ga``: gradient ascent on the forget data, :math:`-\mathrm{CE}(D_U)`, with a
  global-norm clip and an evaluation-mode forward (as in the reference).
* ``neggrad_plus``: :math:`\alpha\,\mathrm{CE}(D_R) - (1 - \alpha)\,\mathrm{CE}(D_U)`
  (Kurmanji et al. 2023).
* ``rl``: random labels, :math:`\mathrm{CE}(D_U, \tilde y) + \mathrm{CE}(D_R)`, each
  :math:`\tilde y_i \ne y_i` drawn uniformly once per request from the seed.
* ``salun``: ``rl`` with every update multiplied by a weight-saliency mask that
  keeps the global top fraction of :math:`|\nabla_\theta \mathrm{CE}(D_U)|`
  (Fan et al. 2024); not UG-CLU's balanced mask.
* ``scrub``: the model at the request start is a teacher kept for the request
  only; max steps on :math:`D_U` maximise
  :math:`T^2 \mathrm{KL}(p^T_{teacher} \| p^T_{student})` (first part of the
  request), min steps on the store minimise
  :math:`\alpha\, T^2 \mathrm{KL} + \gamma\, \mathrm{CE}` (Kurmanji et al. 2023).

Continual-learning baselines (they have no unlearning mechanism of their own:
their unlearn requests fine-tune on the remaining store, exactly as ``ft``; so
``er`` and ``ft`` run the same algorithm and differ only in their seeds):

* ``naive``: sequential fine-tuning, :math:`\mathrm{CE}(D_L)`.
* ``er``: experience replay, :math:`\mathrm{CE}(D_L) + \mathrm{CE}(\text{store batch})`.
* ``der_pp``: DER++ (Buzzega et al. 2020, eq. 6):
  :math:`\mathrm{CE}(D_L) + \alpha\,\mathrm{MSE}(f(x'), z') + \beta\,\mathrm{CE}(x'', y'')`
  with two independent store batches and :math:`z'` the logits recorded when
  the sample was learned (at the end of its learn request, for all of
  :math:`D_L`; the store keeps a reservoir sample of it). Recorded logits of
  unlearned samples are zeroed before the unlearn request's first step.
* ``lwf``: Learning without Forgetting (Li & Hoiem 2017) in a single head:
  :math:`\mathrm{CE}(D_L) + \lambda\, \mathrm{KL}(p^T_{old} \| p^T)` on the new
  data, the old model being the one at the request start and both softmaxes
  running over the old classes only (as LwF is run class-incrementally, e.g.
  in mammoth). The old classes are those the store holds (only their presence
  is read); with an empty store nothing is distilled.
* ``ewc``: online EWC (Schwarz et al. 2018):
  :math:`\mathrm{CE}(D_L) + \frac{\lambda}{2} \sum_i F_i (\theta_i - \theta^*_i)^2`;
  after a learn request :math:`F \leftarrow \gamma F + F(D_L)`,
  :math:`\theta^* \leftarrow \theta`; after an unlearn request :math:`F` is
  recomputed on the store and :math:`\theta^*` reset. :math:`F` is the
  empirical per-sample Fisher diagonal (:func:`ugclu_jax.fisher_diagonal` over
  single-sample batches).

CLU pairs ``"X+Y"`` run X's learn rule with Y's unlearn rule (e.g.
``er+salun``, ``ewc+scrub``); the pair's state is X's, and X's bookkeeping
(DER++'s purge, EWC's refresh) still runs on unlearn requests.

Every request starts a fresh SGD optimizer (:func:`ugclu_jax.build_optimizer`)
with a cosine learning rate over the request. Each phase's step is one
function jitted once, with the train state donated; per-request numbers travel
as traced arguments (:class:`~ugclu_jax.RequestHParams`), so requests of the
same batch size never recompile. An empty store (a learn request before
anything is stored) drops the store terms, which traces that phase once more.
"""

import math
import numbers
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ugclu_jax import objectives
from ugclu_jax.data import batch_indices
from ugclu_jax.methods.base import (Context, Method, MethodState, finish, make_fisher_fn,
                                    run_iterations, stacked_batches)
from ugclu_jax.metrics import Cost
from ugclu_jax.optim import build_optimizer
from ugclu_jax.steps import RequestHParams, init_train_state, make_gradient_step
from ugclu_jax.types import Batch, Params

UNLEARNING_BASELINES = ("ft", "ga", "neggrad_plus", "rl", "salun", "scrub")
CL_BASELINES = ("naive", "er", "der_pp", "lwf", "ewc")
BASELINE_NAMES = UNLEARNING_BASELINES + CL_BASELINES
# The learn rule and the unlearn rule of each baseline.
_LEARN_RULE = {**{n: "er" for n in UNLEARNING_BASELINES}, **{n: n for n in CL_BASELINES}}
_UNLEARN_RULE = {**{n: n for n in UNLEARNING_BASELINES}, **{n: "ft" for n in CL_BASELINES}}


# ----------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------

def split_method_name(name: str) -> tuple[str, str]:
  """``(learn part, unlearn part)`` of a baseline or a CLU pair ``"X+Y"``.

  Raises:
    ValueError: ``name`` is neither a baseline nor a pair of two baselines.
  """
  if not isinstance(name, str):
    raise ValueError(f"method name must be a string, got {name!r}")
  parts = name.split("+")
  if len(parts) == 1:
    if name not in BASELINE_NAMES:
      raise ValueError(f"unknown baseline {name!r}; valid: {', '.join(BASELINE_NAMES)}")
    return name, name
  if len(parts) != 2:
    raise ValueError(f"method pair {name!r} must have exactly two parts, learn+unlearn")
  for part in parts:
    if part not in BASELINE_NAMES:
      raise ValueError(f"method pair {name!r}: {part!r} is not a baseline; valid parts: "
                       f"{', '.join(BASELINE_NAMES)}")
  return parts[0], parts[1]


# ----------------------------------------------------------------------------
# Pure pieces (public)
# ----------------------------------------------------------------------------

def distillation_loss(*, logits: jax.Array, teacher_logits: jax.Array, temperature: float,
                      mask: Optional[jax.Array] = None,
                      classes: Optional[jax.Array] = None) -> jax.Array:
  r"""Knowledge distillation :math:`\mathrm{KL}(p^T_{teacher} \| p^T_{student})`.

  .. math::
     p^T = \mathrm{softmax}(z / T), \qquad
     L = \frac{1}{|B|} \sum_{i \in B} \sum_c p^T_{t,ic} (\log p^T_{t,ic} - \log p^T_{s,ic})

  With ``classes`` the softmax of both runs over those classes only (LwF's
  distillation of the old classes in a single head). No gradient flows into
  the teacher. Multiply by :math:`T^2` for Hinton et al.'s gradient scale.

  Args:
    logits: student logits ``[B, C]``.
    teacher_logits: teacher logits ``[B, C]``.
    temperature: :math:`T > 0`.
    mask: optional ``[B]`` example mask.
    classes: optional ``[C]`` 0/1 mask of the classes distilled (at least one).

  Returns:
    The masked batch mean.
  """
  teacher = jax.lax.stop_gradient(teacher_logits) / temperature
  student = logits / temperature
  if classes is not None:
    keep = classes[None, :] > 0
    teacher = jnp.where(keep, teacher, -1e9)
    student = jnp.where(keep, student, -1e9)
  return objectives.kl_to_reference(logits=student, reference_probs=jax.nn.softmax(teacher),
                                    mask=mask)


def ewc_penalty(params: Params, anchor: Params, fisher: Params) -> jax.Array:
  r"""The EWC quadratic :math:`\frac12 \sum_i F_i (\theta_i - \theta^*_i)^2`.

  Its gradient is :math:`F \odot (\theta - \theta^*)`; it is zero at the anchor.

  Args:
    params: :math:`\theta`.
    anchor: :math:`\theta^*`, same structure.
    fisher: Fisher diagonal :math:`F`, same structure.

  Returns:
    A scalar (float32 or wider).
  """
  terms = jax.tree.map(lambda p, a, f: jnp.sum(f * jnp.square(p - a)), params, anchor, fisher)
  return 0.5 * sum(jax.tree.leaves(terms), jnp.zeros((), jnp.float32))


def top_fraction_mask(scores: Params, fraction: float) -> Params:
  r"""A 0/1 mask keeping the global top ``fraction`` of ``scores`` over all leaves.

  Exactly :math:`k = \lfloor \text{fraction} \cdot n \rfloor` entries are 1
  (``n`` entries in all), those with the largest scores; ties go to the
  earlier entry in leaf order. This is SalUn's hard mask when the scores are
  :math:`|\nabla_\theta L_U|`.

  Args:
    scores: a pytree of arrays.
    fraction: in ``[0, 1]``.

  Returns:
    A float32 pytree of 0/1 with the structure and shapes of ``scores``.
  """
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"fraction must be in [0, 1], got {fraction}")
  leaves, treedef = jax.tree.flatten(scores)
  flat = jnp.concatenate([jnp.ravel(leaf).astype(jnp.float32) for leaf in leaves])
  k = int(flat.size * fraction)
  order = jnp.argsort(-flat, stable=True)
  keep = jnp.zeros(flat.shape, jnp.float32).at[order[:k]].set(1.0)
  out, start = [], 0
  for leaf in leaves:
    out.append(keep[start:start + leaf.size].reshape(leaf.shape))
    start += leaf.size
  return jax.tree.unflatten(treedef, out)


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


# ----------------------------------------------------------------------------
# Shared machinery: one jitted step per phase, one host loop
# ----------------------------------------------------------------------------

class _Draw:
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


def _forward(apply_fn, params, model_state, batch: Batch, train: bool = True):
  return apply_fn(params, model_state, batch.x, train=train)


def _ce(logits, batch: Batch):
  return objectives.cross_entropy(logits=logits, labels=batch.y, mask=batch.mask)


def _teacher_logits(apply_fn, teacher, batch: Batch):
  logits, _ = apply_fn(teacher["params"], teacher["model_state"], batch.x, train=False)
  return jax.lax.stop_gradient(logits)


def _has_remain(ctx: Context) -> bool:
  return ctx.access.remain_indices.size > 0


# ----------------------------------------------------------------------------
# Learn rules (the continual-learning side), with their extra state
# ----------------------------------------------------------------------------

class _Learner(NamedTuple):
  """A learn rule and the bookkeeping of its extra state.

  Attributes:
    init: ``(params, model_state) -> extra`` (structure fixed for the run).
    learn: ``(state, ctx) -> (state, Cost)``.
    purge: ``(extra, ctx) -> extra``: drops what the extra state holds of the
      request's forget data, before an unlearn request's first step.
    refresh: ``(state, ctx) -> (extra, Cost)``: after an unlearn request.
  """
  init: Callable
  learn: Callable
  purge: Callable
  refresh: Callable


def _no_purge(extra, ctx):
  del ctx
  return extra


def _no_refresh(state, ctx):
  del ctx
  return state.extra, Cost()


def _make_learner(rule: str, apply_fn, tx, *, name: str, learn_lr: float, num_train: int,
                  num_classes: int, der_alpha: float, der_beta: float, lwf_lambda: float,
                  lwf_temperature: float, ewc_lambda: float, ewc_gamma: float,
                  ewc_fisher_samples: int, clip_norm: Optional[float]) -> _Learner:
  """The learn rule ``rule`` (one of ``CL_BASELINES``)."""

  def loss_fn(params, model_state, batches, aux):
    new = batches["target"]
    logits, model_state = _forward(apply_fn, params, model_state, new)
    loss = _ce(logits, new)
    metrics = {"learn_loss": loss}
    if rule == "er" and "remain" in batches:
      r_logits, model_state = _forward(apply_fn, params, model_state, batches["remain"])
      metrics["replay_loss"] = _ce(r_logits, batches["remain"])
      loss = loss + metrics["replay_loss"]
    if rule == "der_pp" and "remain" in batches:
      b1, b2 = batches["remain"], batches["remain2"]
      z1, model_state = _forward(apply_fn, params, model_state, b1)
      recorded = aux["logits"][aux["indices"]]
      mse = jnp.mean(jnp.square(z1 - recorded), axis=-1)
      metrics["logit_mse"] = jnp.sum(mse * b1.mask) / jnp.maximum(jnp.sum(b1.mask), 1)
      z2, model_state = _forward(apply_fn, params, model_state, b2)
      metrics["replay_loss"] = _ce(z2, b2)
      loss = loss + der_alpha * metrics["logit_mse"] + der_beta * metrics["replay_loss"]
    if rule == "lwf" and "teacher" in aux:
      metrics["distill_loss"] = distillation_loss(
          logits=logits, teacher_logits=_teacher_logits(apply_fn, aux["teacher"], new),
          temperature=lwf_temperature, mask=new.mask, classes=aux["old_classes"])
      loss = loss + lwf_lambda * metrics["distill_loss"]
    if rule == "ewc":
      metrics["ewc_penalty"] = ewc_penalty(params, aux["anchor"], aux["fisher"])
      loss = loss + ewc_lambda * metrics["ewc_penalty"]
    return loss, (model_state, metrics)

  step = make_gradient_step(loss_fn, tx, clip_norm=clip_norm)

  def learn(state: MethodState, ctx: Context):
    draw, has_remain = _Draw(ctx), _has_remain(ctx)
    hp = RequestHParams.create(learning_rate=learn_lr, a_target=1.0,
                               num_iterations=ctx.num_iterations)
    aux = {}
    if rule == "lwf" and has_remain:
      # The old model's outputs on the classes it learned and keeps (those in the store).
      old = np.zeros(num_classes, np.float32)
      old[ctx.access.labels(ctx.access.remain_indices)] = 1.0
      aux["teacher"] = {"params": state.params, "model_state": state.model_state}
      aux["old_classes"] = jnp.asarray(old)
    if rule == "ewc":
      aux = {"fisher": state.extra["fisher"], "anchor": state.extra["anchor"]}
    if rule == "der_pp":
      aux = {"logits": state.extra["logits"]}

    def body(ts, k):
      batches = {"target": ctx.put(draw.target(k, 1))}
      if has_remain and rule == "er":
        batches["remain"] = ctx.put(draw.remain(k, 2))
      if has_remain and rule == "der_pp":
        b1, idx = draw.remain_with_indices(k, 2)
        batches["remain"], batches["remain2"] = ctx.put(b1), ctx.put(draw.remain(k, 3))
        step_aux = {**aux, "indices": jnp.asarray(idx, jnp.int32)}
      else:
        step_aux = aux
      ts, metrics = step(ts, batches, step_aux, hp, None, 1)
      return ts, metrics, Cost(0.0, 1, len(batches), 0)

    ts = init_train_state(state.params, state.model_state, tx)
    hint = (f"lower ewc_lambda ({ewc_lambda:g}) or the learning rate: SGD on the penalty "
            f"diverges once ewc_lambda * max(F) * learning rate exceeds 2 (1 + momentum)"
            if rule == "ewc" else None)
    ts, cost = run_iterations(ts, body, ctx=ctx, name=name, hint=hint)
    params, model_state = finish(ts, ctx=ctx, name=name)
    extra, extra_grads = state.extra, 0
    if rule == "der_pp":
      extra = {"logits": _record(params, model_state, extra["logits"], ctx)}
    if rule == "ewc":
      extra, extra_grads = _ewc_update(params, model_state, extra, ctx, target=True)
    return MethodState(params, model_state, extra), cost.add(Cost(0.0, 0, extra_grads, 0))

  # --- DER++: recorded logits ------------------------------------------------------
  record_batch = jax.jit(
      lambda buf, params, model_state, x, idx: buf.at[idx].set(
          apply_fn(params, model_state, x, train=False)[0].astype(buf.dtype), mode="drop"),
      donate_argnums=0)
  zero_rows = jax.jit(lambda buf, rows: jnp.where(rows[:, None], jnp.zeros((), buf.dtype), buf))

  def _record(params, model_state, buf, ctx):
    """Logits of every ``D_L`` sample at the end of the request, in fixed-size chunks."""
    buf = jnp.copy(buf)  # The input state keeps its buffer; the copy is donated.
    b, target = ctx.batch_size, ctx.access.target_indices
    for start in range(0, target.size, b):
      chunk = target[start:start + b]
      batch = ctx.access.batch(chunk)
      pad = b - chunk.size
      x = np.concatenate([batch.x, np.zeros((pad,) + batch.x.shape[1:], batch.x.dtype)])
      idx = np.concatenate([chunk, np.full(pad, num_train, np.int64)]).astype(np.int32)
      buf = record_batch(buf, params, model_state, jnp.asarray(x), jnp.asarray(idx))
    return buf

  def der_purge(extra, ctx):
    rows = np.zeros(num_train, bool)
    rows[ctx.access.target_indices] = True
    return {"logits": zero_rows(extra["logits"], jnp.asarray(rows))}

  # --- EWC: Fisher and anchor --------------------------------------------------------
  fisher_fn = make_fisher_fn(apply_fn)

  def _ewc_update(params, model_state, extra, ctx, *, target: bool):
    """``F <- gamma F + F(D_L)`` after a learn request; ``F <- F(store)`` after an unlearn."""
    access = ctx.access
    indices = access.target_indices if target else access.remain_indices
    if indices.size == 0:
      fisher = jax.tree.map(jnp.zeros_like, extra["fisher"])
      return {"fisher": fisher, "anchor": params}, 0
    idx = batch_indices(indices, ewc_fisher_samples, 0, (*ctx.seed, 9))
    singles = access.batch(idx)
    batches = Batch(*(jnp.asarray(a.reshape((a.shape[0], 1) + a.shape[1:])) for a in singles))
    new = fisher_fn(params, model_state, batches)
    if target:
      new = jax.tree.map(lambda f, n: ewc_gamma * f + n, extra["fisher"], new)
    return {"fisher": new, "anchor": params}, ewc_fisher_samples

  def ewc_refresh(state, ctx):
    extra, grads = _ewc_update(state.params, state.model_state, state.extra, ctx, target=False)
    return extra, Cost(0.0, 0, grads, 0)

  def init(params, model_state):
    del model_state
    if rule == "der_pp":
      return {"logits": jnp.zeros((num_train, num_classes), jnp.float32)}
    if rule == "ewc":
      return {"fisher": jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params),
              "anchor": params}
    return ()

  purge = der_purge if rule == "der_pp" else _no_purge
  refresh = ewc_refresh if rule == "ewc" else _no_refresh
  return _Learner(init=init, learn=learn, purge=purge, refresh=refresh)


# ----------------------------------------------------------------------------
# Unlearn rules: (state, ctx) -> (params, model_state, Cost)
# ----------------------------------------------------------------------------

def _make_unlearner(rule: str, apply_fn, *, name: str, momentum: float, weight_decay: float,
                    num_classes: int, ft_lr: float, ga_lr: float, ga_clip: float,
                    neggrad_lr: float, neggrad_alpha: float, rl_lr: float, salun_lr: float,
                    salun_fraction: float, salun_mask_batches: int, scrub_lr: float,
                    scrub_temperature: float, scrub_alpha: float, scrub_gamma: float,
                    scrub_max_fraction: float, ascent_bound: float,
                    clip_norm: Optional[float]) -> Callable:
  """The unlearn rule ``rule`` (one of ``UNLEARNING_BASELINES``)."""
  max_forget_loss = ascent_bound * math.log(num_classes) if ascent_bound > 0 else None
  lr = {"ft": ft_lr, "ga": ga_lr, "neggrad_plus": neggrad_lr, "rl": rl_lr,
        "salun": salun_lr, "scrub": scrub_lr}[rule]
  tx = build_optimizer(learning_rate=lr, momentum=momentum, weight_decay=weight_decay)

  def loss_fn(params, model_state, batches, aux):
    loss, metrics = jnp.zeros((), jnp.float32), {}
    if "target" in batches:
      forget = batches["target"]
      # GA takes its forward in evaluation mode, as the reference does.
      logits, model_state = _forward(apply_fn, params, model_state, forget, train=rule != "ga")
      if rule in ("rl", "salun"):
        metrics["random_label_loss"] = _ce(logits, forget)  # labels already replaced
        loss = loss + metrics["random_label_loss"]
      else:
        metrics["forget_loss"] = _ce(logits, forget)
        # Bounded ascent (uniform weights): samples past ascent_bound * log(C) are
        # no longer pushed; unbounded (ascent_bound = 0) it is -CE(D_U).
        loss = loss + (1.0 - neggrad_alpha if rule == "neggrad_plus" else 1.0) * (
            objectives.unlearn_loss(logits=logits, labels=forget.y, mask=forget.mask,
                                    temperature=0.0, max_loss=max_forget_loss))
    if "remain" in batches:
      logits, model_state = _forward(apply_fn, params, model_state, batches["remain"])
      metrics["remain_loss"] = _ce(logits, batches["remain"])
      loss = loss + (neggrad_alpha if rule == "neggrad_plus" else 1.0) * metrics["remain_loss"]
    return loss, (model_state, metrics)

  def scrub_kl(logits, batch, teacher):
    """:math:`T^2 \\mathrm{KL}(p^T_{teacher} \\| p^T_{student})` on ``batch``."""
    return scrub_temperature ** 2 * distillation_loss(
        logits=logits, teacher_logits=_teacher_logits(apply_fn, teacher, batch),
        temperature=scrub_temperature, mask=batch.mask)

  def scrub_max_loss(params, model_state, batches, aux):
    forget = batches["target"]
    logits, model_state = _forward(apply_fn, params, model_state, forget)
    kl = scrub_kl(logits, forget, aux)
    return -kl, (model_state, {"forget_kl": kl})

  def scrub_min_loss(params, model_state, batches, aux):
    remain = batches["remain"]
    logits, model_state = _forward(apply_fn, params, model_state, remain)
    kl = scrub_kl(logits, remain, aux)
    ce = _ce(logits, remain)
    return scrub_alpha * kl + scrub_gamma * ce, (model_state, {"remain_kl": kl, "remain_loss": ce})

  if rule == "scrub":
    # Both under the shared clip: unclipped max steps drove the CNN to non-finite
    # values within 50 iterations of a class-unlearning request (measured).
    max_step = make_gradient_step(scrub_max_loss, tx, clip_norm=clip_norm)
    min_step = make_gradient_step(scrub_min_loss, tx, clip_norm=clip_norm)
  else:
    # Every rule under the shared clip, GA under its own: FT's unclipped steps (lr 0.05,
    # momentum 0.9) left the CNN to die at the next learn request (measured).
    step = make_gradient_step(loss_fn, tx, clip_norm=ga_clip if rule == "ga" else clip_norm)

  @jax.jit
  def saliency_fn(params, model_state, batches):
    """SalUn's mask: top fraction of |sum over batches of grad CE(D_U)|, eval mode."""
    def body(acc, batch):
      g = jax.grad(lambda p: _ce(_forward(apply_fn, p, model_state, batch, train=False)[0],
                                 batch))(params)
      return jax.tree.map(jnp.add, acc, g), None
    acc0 = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    acc, _ = jax.lax.scan(body, acc0, batches)
    return top_fraction_mask(jax.tree.map(jnp.abs, acc), salun_fraction)

  def unlearn(state: MethodState, ctx: Context):
    draw, has_remain, access = _Draw(ctx), _has_remain(ctx), ctx.access
    n = ctx.num_iterations
    hp = RequestHParams.create(learning_rate=lr, a_target=1.0, num_iterations=n)
    ts = init_train_state(state.params, state.model_state, tx)
    uses_target = rule != "ft"
    uses_remain = rule != "ga" and has_remain
    if not uses_target and not uses_remain:
      return state.params, state.model_state, Cost()  # FT with an empty store: nothing to do.
    extra_grads, mask = 0, None
    if rule in ("rl", "salun"):
      # One random label per forget sample for the whole request.
      targets = access.target_indices
      fake = random_labels(access.labels(targets), num_classes, (*ctx.seed, 5))
    if rule == "salun":
      batches = stacked_batches(lambda s: draw.target(s, 6), salun_mask_batches, ctx.mesh)
      mask = saliency_fn(state.params, state.model_state, batches)
      extra_grads = salun_mask_batches

    def forget_batch(k):
      if rule in ("rl", "salun"):
        idx = batch_indices(targets, ctx.batch_size, k, (*ctx.seed, 1))
        batch = access.batch(idx)
        return ctx.put(batch._replace(y=fake[np.searchsorted(targets, idx)]))
      return ctx.put(draw.target(k, 1))

    if rule == "scrub":
      teacher = {"params": state.params, "model_state": state.model_state}
      n_max = math.ceil(scrub_max_fraction * n)

      def body(ts, k):
        metrics, count = {}, 0
        if k < n_max:  # A max step does not end the iteration when a min step follows.
          ts, metrics = max_step(ts, {"target": forget_batch(k)}, teacher, hp, None,
                                 0 if has_remain else 1)
          count += 1
        if has_remain:
          ts, m = min_step(ts, {"remain": ctx.put(draw.remain(k, 2))}, teacher, hp, None, 1)
          metrics, count = {**metrics, **m}, count + 1
        return ts, metrics, Cost(0.0, count, count, 0)

      ts, cost = run_iterations(ts, body, ctx=ctx, name=name,
                                num_iterations=n if has_remain else n_max)
    else:
      def body(ts, k):
        batches = {}
        if uses_target:
          batches["target"] = forget_batch(k)
        if uses_remain:
          batches["remain"] = ctx.put(draw.remain(k, 2))
        ts, metrics = step(ts, batches, (), hp, mask, 1)
        return ts, metrics, Cost(0.0, 1, len(batches), 0)

      ts, cost = run_iterations(ts, body, ctx=ctx, name=name)
    params, model_state = finish(ts, ctx=ctx, name=name)
    return params, model_state, cost.add(Cost(0.0, 0, extra_grads, 0))

  return unlearn


# ----------------------------------------------------------------------------
# Assembly
# ----------------------------------------------------------------------------

_POSITIVE = ("num_train", "learn_lr", "ft_lr", "ga_lr", "ga_clip", "neggrad_lr", "rl_lr",
             "salun_lr", "salun_mask_batches", "scrub_lr", "scrub_temperature",
             "lwf_temperature", "ewc_fisher_samples")
_NON_NEGATIVE = ("momentum", "weight_decay", "scrub_alpha", "scrub_gamma", "der_alpha",
                 "der_beta", "lwf_lambda", "ewc_lambda", "ascent_bound")
_UNIT = ("neggrad_alpha", "salun_fraction", "scrub_max_fraction", "ewc_gamma")
_INTEGER = ("num_train", "num_classes", "salun_mask_batches", "ewc_fisher_samples")


def check_hyperparameters(**values) -> None:
  """Raises a one-line ``ValueError`` for a baseline hyperparameter out of range.

  Accepts any subset of the keyword arguments of :func:`baseline` after
  ``name`` (e.g. ``**dataclasses.asdict(BaselinesConfig())``), so a runner can
  refuse bad values before any work.
  """
  for key, value in values.items():
    if key not in (*_POSITIVE, *_NON_NEGATIVE, *_UNIT, "num_classes"):
      raise ValueError(f"unknown baseline hyperparameter {key!r}")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
      raise ValueError(f"{key} must be a number, got {value!r}")
    if not math.isfinite(value):
      raise ValueError(f"{key} must be finite, got {value}")
    if key in _INTEGER and int(value) != value:
      raise ValueError(f"{key} must be an integer, got {value}")
    if key in _POSITIVE and not value > 0:
      raise ValueError(f"{key} must be positive, got {value}")
    if key in _NON_NEGATIVE and not value >= 0:
      raise ValueError(f"{key} must be >= 0, got {value}")
    if key in _UNIT and not 0 <= value <= 1:
      raise ValueError(f"{key} must be in [0, 1], got {value}")
    if key == "num_classes" and value < 2:
      raise ValueError(f"num_classes must be >= 2, got {value}")


def baseline(apply_fn, name: str, *, num_train: int, num_classes: int,
             learn_lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 5e-4,
             ft_lr: float = 0.05, ga_lr: float = 0.03, ga_clip: float = 0.1,
             neggrad_lr: float = 0.02, neggrad_alpha: float = 0.9, rl_lr: float = 0.003,
             salun_lr: float = 0.007, salun_fraction: float = 0.2,
             salun_mask_batches: int = 8, scrub_lr: float = 0.003,
             scrub_temperature: float = 4.0, scrub_alpha: float = 0.001,
             scrub_gamma: float = 0.99, scrub_max_fraction: float = 1 / 3,
             der_alpha: float = 0.2, der_beta: float = 0.5, lwf_lambda: float = 1.0,
             lwf_temperature: float = 2.0, ewc_lambda: float = 100.0, ewc_gamma: float = 1.0,
             ewc_fisher_samples: int = 256, ascent_bound: float = 3.0,
             clip_norm: Optional[float] = 1.0) -> Method:
  """Builds a baseline, or a CLU pair ``"X+Y"`` of two baselines.

  The rules are in the module docstring; the reference values of the
  hyperparameters, and which defaults were retuned for small data, are listed
  in :class:`ugclu_jax.config.BaselinesConfig`.

  Args:
    apply_fn: ``apply_fn(params, model_state, x, *, train) -> (logits, state)``.
    name: a name of ``BASELINE_NAMES`` or ``"X+Y"`` with X and Y in it.
    num_train: training-set size (DER++ records logits per training index).
    num_classes: number of classes.
    learn_lr: learning rate of learn requests (every learn rule).
    momentum: SGD momentum of every request.
    weight_decay: coupled weight decay of every request.
    ft_lr: FT's learning rate (and the continual-learning baselines' unlearn).
    ga_lr: GA's learning rate.
    ga_clip: GA's global-norm gradient clip.
    neggrad_lr: NegGrad+'s learning rate.
    neggrad_alpha: NegGrad+'s weight of the remaining cross-entropy, in [0, 1].
    ascent_bound: GA's and NegGrad+'s ascent stops on a forget sample whose loss
      exceeds ``ascent_bound * log(num_classes)`` (0: unbounded, as published).
    clip_norm: global-norm clip of every gradient step, learn and unlearn (GA
      keeps its own ``ga_clip``); None: off.
    rl_lr: RL's learning rate.
    salun_lr: SalUn's learning rate.
    salun_fraction: share of the weights in SalUn's mask, in [0, 1].
    salun_mask_batches: forget batches summed for SalUn's saliency.
    scrub_lr: SCRUB's learning rate.
    scrub_temperature: SCRUB's distillation temperature.
    scrub_alpha: weight of the KL term of SCRUB's min steps.
    scrub_gamma: weight of the cross-entropy of SCRUB's min steps.
    scrub_max_fraction: share of the first iterations with a SCRUB max step.
    der_alpha: DER++'s logit-MSE weight.
    der_beta: DER++'s replay cross-entropy weight.
    lwf_lambda: LwF's distillation weight.
    lwf_temperature: LwF's distillation temperature.
    ewc_lambda: EWC's penalty weight.
    ewc_gamma: online EWC's Fisher decay, in [0, 1].
    ewc_fisher_samples: single-sample gradients per EWC Fisher estimate.

  Returns:
    The :class:`Method`; its ``extra`` state is ``()`` except for DER++
    (``{"logits": float32 [num_train, num_classes]}``) and EWC
    (``{"fisher", "anchor"}``, parameter-shaped), and pairs with them as X.

  Raises:
    ValueError: an unknown name or part, or a hyperparameter out of range.
  """
  learn_part, unlearn_part = split_method_name(name)
  check_hyperparameters(
      num_train=num_train, num_classes=num_classes, learn_lr=learn_lr, momentum=momentum,
      weight_decay=weight_decay, ft_lr=ft_lr, ga_lr=ga_lr, ga_clip=ga_clip,
      neggrad_lr=neggrad_lr, neggrad_alpha=neggrad_alpha, rl_lr=rl_lr, salun_lr=salun_lr,
      salun_fraction=salun_fraction, salun_mask_batches=salun_mask_batches,
      scrub_lr=scrub_lr, scrub_temperature=scrub_temperature, scrub_alpha=scrub_alpha,
      scrub_gamma=scrub_gamma, scrub_max_fraction=scrub_max_fraction, der_alpha=der_alpha,
      der_beta=der_beta, lwf_lambda=lwf_lambda, lwf_temperature=lwf_temperature,
      ewc_lambda=ewc_lambda, ewc_gamma=ewc_gamma, ewc_fisher_samples=ewc_fisher_samples,
      ascent_bound=ascent_bound)

  tx = build_optimizer(learning_rate=learn_lr, momentum=momentum, weight_decay=weight_decay)
  learner = _make_learner(
      _LEARN_RULE[learn_part], apply_fn, tx, name=name, learn_lr=learn_lr,
      num_train=num_train, num_classes=num_classes, der_alpha=der_alpha, der_beta=der_beta,
      lwf_lambda=lwf_lambda, lwf_temperature=lwf_temperature, ewc_lambda=ewc_lambda,
      ewc_gamma=ewc_gamma, ewc_fisher_samples=ewc_fisher_samples, clip_norm=clip_norm)
  unlearner = _make_unlearner(
      _UNLEARN_RULE[unlearn_part], apply_fn, name=name, momentum=momentum,
      weight_decay=weight_decay, num_classes=num_classes, ft_lr=ft_lr, ga_lr=ga_lr,
      ga_clip=ga_clip, neggrad_lr=neggrad_lr, neggrad_alpha=neggrad_alpha, rl_lr=rl_lr,
      salun_lr=salun_lr, salun_fraction=salun_fraction,
      salun_mask_batches=salun_mask_batches, scrub_lr=scrub_lr,
      scrub_temperature=scrub_temperature, scrub_alpha=scrub_alpha, scrub_gamma=scrub_gamma,
      scrub_max_fraction=scrub_max_fraction, ascent_bound=ascent_bound, clip_norm=clip_norm)

  def init(params, model_state):
    return MethodState(params, model_state, learner.init(params, model_state))

  def unlearn(state: MethodState, ctx: Context):
    # Unlearned samples leave every stored artefact before the first step.
    extra = learner.purge(state.extra, ctx)
    params, model_state, cost = unlearner(MethodState(state.params, state.model_state, extra),
                                          ctx)
    new = MethodState(params, model_state, extra)
    extra, refresh_cost = learner.refresh(new, ctx)
    return new._replace(extra=extra), cost.add(refresh_cost)

  return Method(name=name, init=init, learn=learner.learn, unlearn=unlearn)
