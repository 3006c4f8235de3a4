"""Fast-slow weights with saliency masking, as an optax transformation.

UG-CLU takes a (masked) target step and then remain steps at the point the
target step reached; the alternation applies the remaining-Hessian
compensation implicitly (docs/method.md §6). This module packages the fast/slow
bookkeeping in the style of :func:`optax.lookahead`: one ``FastSlowParams``
pair holds both parameter trees, and a single ``update`` returns updates for
both, so ``optax.apply_updates`` moves them together.
"""

import numbers
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from ugclu_jax.saliency import apply_mask
from ugclu_jax.types import Params, Updates


class FastSlowParams(NamedTuple):
  """A pair of fast and slow parameter trees for :func:`fast_slow`.

  Gradients are always taken with respect to ``fast``; ``slow`` holds the
  synchronised weights and is the one to evaluate or export.

  Attributes:
    fast: Fast parameters (compute gradients here).
    slow: Slow parameters (evaluate these).
  """

  fast: Params
  slow: Params

  @classmethod
  def init_synced(cls, params: Params) -> "FastSlowParams":
    """Returns a synchronised pair, ``fast = slow = params``."""
    return cls(fast=params, slow=params)


class FastSlowState(NamedTuple):
  """State of the transformation returned by :func:`fast_slow`.

  Attributes:
    fast_state: State of the inner optimizer, which steps the fast weights.
    steps_since_sync: int32 scalar, number of fast steps taken since the last
      synchronisation, in ``[0, sync_period)``.
  """

  fast_state: optax.OptState
  steps_since_sync: jax.Array


def _check_slow_step_size(slow_step_size: Any) -> None:
  if isinstance(slow_step_size, numbers.Real) and not (0.0 <= slow_step_size <= 1.0):
    raise ValueError(f"slow_step_size must be in [0, 1], got {slow_step_size!r}.")


def _check_fast_slow_params(params: Any, where: str) -> None:
  if not isinstance(params, FastSlowParams):
    raise ValueError(
      f"{where} expects params of type FastSlowParams(fast, slow), got "
      f"{type(params).__name__}; wrap them with "
      "FastSlowParams.init_synced(params)."
    )


def _checked_saliency_mask(updates: Updates, saliency_mask: Any) -> Any:
  """``saliency_mask`` as arrays, checked against the structure and shapes of ``updates``."""
  updates_def = jax.tree.structure(updates)
  mask_def = jax.tree.structure(saliency_mask)
  if mask_def != updates_def:
    raise ValueError(
      "saliency_mask must have the structure of the fast params, got "
      f"{mask_def} for updates {updates_def}."
    )
  paths_updates, _ = jax.tree_util.tree_flatten_with_path(updates)
  for (path, u), m in zip(paths_updates, jax.tree.leaves(saliency_mask)):
    if jnp.shape(m) != jnp.shape(u):
      raise ValueError(
        f"saliency_mask{jax.tree_util.keystr(path)} has shape "
        f"{jnp.shape(m)}, expected {jnp.shape(u)}."
      )
  return jax.tree.map(jnp.asarray, saliency_mask)


def _select_tree(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
  """Leafwise ``pred ? on_true : on_false`` keeping the dtypes of on_false."""
  return jax.tree.map(
    lambda t, f: jnp.where(pred, t, f).astype(jnp.result_type(f)),
    on_true,
    on_false,
  )


def _fast_slow_updates(
  updates: Updates,
  sync_next: jax.Array,
  params: FastSlowParams,
  slow_step_size: float,
) -> FastSlowParams:
  """Returns the updates of both trees for one fast step (and maybe a sync).

  Args:
    updates: Updates of the inner optimizer for the fast weights.
    sync_next: Traced boolean scalar, whether this step ends a sync period.
    params: Current fast and slow parameters.
    slow_step_size: The slow step size alpha.

  Returns:
    ``FastSlowParams(fast_updates, slow_updates)``, to be added to ``params``.
  """
  # The nested-loop form (docs/method.md §6; Zhang et al 2019, Alg. 1) is
  #   for each period:  f <- f + u_j,  j = 1..sync_period  (fast steps)
  #                     s <- s + alpha (f - s);  f <- s.
  # As one additive update per fast step there are two kinds of step.
  #
  # Ordinary step (sync_next = 0):
  #   fast_updates = u,   slow_updates = 0.
  #
  # Last step of a period (sync_next = 1), the fast step then the sync:
  #   f_end  = f + u
  #   s_new  = s + alpha (f_end - s)
  #   f_new  = s_new
  # With D = f + u - s (the fast lead over the slow at the end of the period):
  #   slow_updates = s_new - s = alpha D
  #   fast_updates = f_new - f = s + alpha D - f = u - (1 - alpha) D.
  #
  # Both cases in one branch-free formula, with sync_next in {0, 1}:
  #   slow_updates = (alpha sync_next) D
  #   fast_updates = u - ((1 - alpha) sync_next) D.
  # The two scalar coefficients are formed in float32 and cast to each leaf's
  # dtype so that bfloat16 trees are not promoted.
  coeff_slow = jnp.where(sync_next, slow_step_size, 0.0)
  coeff_fast = jnp.where(sync_next, 1.0 - slow_step_size, 0.0)
  lead = jax.tree.map(lambda f, u, s: f + u - s, params.fast, updates, params.slow)
  slow_updates = jax.tree.map(lambda d: coeff_slow.astype(jnp.result_type(d)) * d, lead)
  fast_updates = jax.tree.map(
    lambda u, d: u - coeff_fast.astype(jnp.result_type(d)) * d,
    updates,
    lead,
  )
  return FastSlowParams(fast=fast_updates, slow=slow_updates)


def fast_slow(
  inner: optax.GradientTransformation,
  *,
  sync_period: int,
  slow_step_size: float = 1.0,
  reset_state: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Fast-slow weights with an optional data-dependent saliency mask.

  The inner optimizer steps the fast weights. Every ``sync_period`` fast steps
  the slow weights move toward the fast ones and the fast weights restart from
  the new slow weights:

  .. math::

    \theta_s \leftarrow \theta_s + \alpha (\theta_f - \theta_s), \qquad
    \theta_f \leftarrow \theta_s,

  with :math:`\alpha` = ``slow_step_size``. When ``saliency_mask`` is given to
  ``update``, the incoming updates are multiplied by it *before* the inner
  optimizer runs, so momentum and weight decay inside ``inner`` still act on
  masked coordinates.

  Why UG-CLU uses it (docs/method.md §6): a masked target step
  :math:`\theta_f = \theta - \eta d` followed by a remain step *at*
  :math:`\theta_f` gives

  .. math::

    \theta_f - \eta \nabla L_R(\theta_f) \approx
    \theta - \eta [(I - \eta H_R) d + \nabla L_R(\theta)],

  i.e. the target direction is compensated by :math:`(I - \eta H_R)` with the
  current remaining Hessian, without forming a Hessian-vector product. With
  ``K`` remain steps per target step the factor is
  :math:`(I - \eta H_R)^K`. The caller passes ``saliency_mask`` on target
  steps only; remain steps are never masked.

  With ``sync_period=1`` and ``slow_step_size=1`` this is exactly ``inner``;
  without a mask (or with an all-ones mask) it is :func:`optax.lookahead`.

  Args:
    inner: The optimizer that steps the fast weights (put weight decay,
      clipping and schedules here). An ``optax.inject_hyperparams`` optimizer
      keeps its hyperparameters in the state, so they can be changed without
      recompiling.
    sync_period: Number of fast steps between synchronisations, ``>= 1``.
    slow_step_size: Step size ``alpha`` of the slow weights, in ``[0, 1]``.
    reset_state: If True, the inner state is reset to ``inner.init`` at every
      synchronisation (as in :func:`optax.lookahead`). This also resets step
      counters inside ``inner``, including those that drive schedules, and any
      hyperparameter overwritten in an ``inject_hyperparams`` state.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. ``init`` takes a
    :class:`FastSlowParams`. ``update(updates, state, params, *,
    saliency_mask=None, **extra_args)`` takes updates computed at
    ``params.fast`` (a tree with the structure of ``params.fast``), the
    current ``FastSlowParams`` and an optional mask (a tree of ``{0, 1}``
    arrays of any float or bool dtype, same structure and shapes as the
    updates), and returns ``FastSlowParams(fast_updates, slow_updates)``.
    Other extra args go to ``inner``.

  Raises:
    ValueError: If ``sync_period < 1`` or ``slow_step_size`` is outside
      ``[0, 1]``.

  Warning:
    The returned updates must be applied unchanged: chaining anything after
    this transformation (clip, scale, mask) desynchronises the fast and slow
    trees. Everything belongs inside ``inner``.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from ugclu_jax.fast_slow import FastSlowParams, fast_slow
    >>> tx = fast_slow(optax.sgd(0.1, momentum=0.9), sync_period=2,
    ...                slow_step_size=0.5)
    >>> params = FastSlowParams.init_synced({'w': jnp.ones((3,))})
    >>> state = tx.init(params)
    >>> loss = lambda p: jnp.sum(p['w'] ** 2)
    >>> mask = {'w': jnp.array([1.0, 0.0, 1.0])}
    >>> # Target step: masked.
    >>> grads = jax.grad(loss)(params.fast)
    >>> updates, state = tx.update(grads, state, params, saliency_mask=mask)
    >>> params = optax.apply_updates(params, updates)
    >>> # Remain step at the fast point; ends the period, so it syncs.
    >>> grads = jax.grad(loss)(params.fast)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> params.slow['w']  # 1 + 0.5 * (fast_end - 1)
    Array([0.73, 0.9 , 0.73], dtype=float32)

  References:
    Huang et al, `A Unified Gradient-based Framework for Task-agnostic
    Continual Learning-Unlearning <https://arxiv.org/abs/2505.15178>`_, 2025

    Zhang et al, `Lookahead Optimizer: k steps forward, 1 step back
    <https://arxiv.org/abs/1907.08610>`_, 2019
  """
  if (
    isinstance(sync_period, bool)
    or not isinstance(sync_period, numbers.Integral)
    or sync_period < 1
  ):
    raise ValueError(f"sync_period must be an integer >= 1, got {sync_period!r}.")
  if not isinstance(slow_step_size, numbers.Real):
    raise ValueError(f"slow_step_size must be a float in [0, 1], got {slow_step_size!r}.")
  _check_slow_step_size(slow_step_size)
  sync_period = int(sync_period)
  slow_step_size = float(slow_step_size)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params: FastSlowParams) -> FastSlowState:
    _check_fast_slow_params(params, "fast_slow.init")
    return FastSlowState(
      fast_state=inner.init(params.fast),
      steps_since_sync=jnp.zeros([], jnp.int32),
    )

  def update_fn(
    updates: Updates,
    state: FastSlowState,
    params: Optional[FastSlowParams] = None,
    *,
    saliency_mask: Optional[Any] = None,
    **extra_args: Any,
  ) -> tuple[FastSlowParams, FastSlowState]:
    _check_fast_slow_params(params, "fast_slow.update")
    if saliency_mask is not None:
      saliency_mask = _checked_saliency_mask(updates, saliency_mask)
    updates = apply_mask(updates, saliency_mask)  # M ⊙ updates; None: unchanged.
    updates, fast_state = inner.update(updates, state.fast_state, params.fast, **extra_args)
    sync_next = state.steps_since_sync == sync_period - 1
    new_updates = _fast_slow_updates(updates, sync_next, params, slow_step_size)
    if reset_state:
      # Branch-free reset: pick the init state on sync steps, keep the updated
      # state otherwise (jnp.where, so non-finite values cannot leak through a
      # 0 * x blend and every leaf keeps its dtype).
      fast_state = _select_tree(sync_next, inner.init(params.fast), fast_state)
    steps_since_sync = (state.steps_since_sync + 1) % sync_period
    return new_updates, FastSlowState(
      fast_state=fast_state,
      steps_since_sync=steps_since_sync.astype(jnp.int32),
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sync(params: FastSlowParams, slow_step_size: float = 1.0) -> FastSlowParams:
  r"""Forces a synchronisation of the slow weights toward the fast ones.

  .. math::

    \theta_s \leftarrow \theta_s + \alpha (\theta_f - \theta_s), \qquad
    \theta_f \leftarrow \theta_s,

  computed as :math:`(1 - \alpha) \theta_s + \alpha \theta_f`, which is exact
  at :math:`\alpha \in \{0, 1\}`. Used at the end of a request, when the last
  period may be incomplete. The optimizer state is not touched; start the next
  request from a fresh ``init``.

  Args:
    params: The current fast and slow parameters.
    slow_step_size: Step size ``alpha`` toward the fast weights, in ``[0, 1]``.

  Returns:
    A synchronised ``FastSlowParams`` (``fast == slow``), with the dtypes of
    ``params.slow``.

  Raises:
    ValueError: If ``params`` is not a ``FastSlowParams`` or
      ``slow_step_size`` is outside ``[0, 1]``.
  """
  _check_fast_slow_params(params, "sync")
  _check_slow_step_size(slow_step_size)

  def lerp(f, s):
    dtype = jnp.result_type(s)
    alpha = jnp.asarray(slow_step_size, jnp.float32).astype(dtype)
    one_minus = jnp.asarray(1.0 - slow_step_size, jnp.float32).astype(dtype)
    return (one_minus * s + alpha * f.astype(dtype)).astype(dtype)

  new_slow = jax.tree.map(lerp, params.fast, params.slow)
  return FastSlowParams(fast=new_slow, slow=new_slow)
