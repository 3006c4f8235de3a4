r"""One request's schedule, for your own model and data (docs/method.md §7).

With the jitted steps of :func:`ugclu_jax.make_steps`, a request of ``N``
iterations with target frequency ``f`` runs, at iteration ``k``:

* ``fast_slow``: a target step on ``target_batch(k // f)`` if ``k % f == 0``,
  then a remain step on ``remain_batch(k)``;
* ``hvp`` / ``none``: a fused step on ``target_batch(k // f)`` and
  ``remain_batch(k)`` if ``k % f == 0``, otherwise a remain step;
* any mode without remaining data (``has_remain=False``): a target step on
  ``target_batch(k)`` that ends the iteration.

Then :func:`finish_request` syncs the slow weights to the fast ones
(:func:`ugclu_jax.sync`) and returns the weights to evaluate. The runner's
UG-CLU (:mod:`ugclu_jax.methods.ugclu`) is this schedule with its own batch
draws, checks and cost accounting.

Example (a fast-slow unlearn request):

    steps = make_steps(apply_fn, tx, kind="unlearn", mode="fast_slow")
    hp = RequestHParams.create(learning_rate=0.01, a_target=25.0, num_iterations=n)
    state, counts = run_request(steps, init_train_state(params, model_state, tx),
                                mode="fast_slow", num_iterations=n, forget_freq=5,
                                target_batch=forget_batch, remain_batch=remain_batch,
                                mask=mask, hp=hp)
    params, model_state = finish_request(state)
"""

from typing import Callable, NamedTuple, Optional

from ugclu_jax.fast_slow import sync
from ugclu_jax.steps import MODES, RequestHParams, Steps, TrainState
from ugclu_jax.types import Batch, ModelState, Params


class RequestCounts(NamedTuple):
  """The steps one request ran.

  Attributes:
    target: target steps alone (one gradient each).
    remain: remain steps (one gradient each).
    fused: fused ``hvp`` / ``none`` steps (two gradients each, plus ``order``
      Hessian-vector products in ``hvp`` mode).
  """

  target: int = 0
  remain: int = 0
  fused: int = 0


def run_request(
  steps: Steps,
  state: TrainState,
  *,
  mode: str,
  num_iterations: int,
  forget_freq: int,
  target_batch: Callable[[int], Batch],
  remain_batch: Optional[Callable[[int], Batch]],
  mask: Optional[Params],
  hp: RequestHParams,
  has_remain: bool = True,
  on_step: Optional[Callable[[int, TrainState, dict], None]] = None,
) -> tuple[TrainState, RequestCounts]:
  """Runs the ``num_iterations`` iterations of one request (see the module docstring).

  Args:
    steps: the jitted steps of the request's kind and ``mode`` (:func:`make_steps`).
    state: a fresh :class:`TrainState` (:func:`ugclu_jax.init_train_state`); donated.
    mode: the ``mode`` the steps were built with: ``"fast_slow"``, ``"hvp"``, ``"none"``.
    num_iterations: ``N``; give ``hp`` the same ``num_iterations`` for the cosines.
    forget_freq: ``f``, one target (or fused) step every ``f`` iterations.
    target_batch: ``j -> Batch`` of target data for the ``j``-th target step
      (``j = k // f``; ``j = k`` when ``has_remain`` is False). Batches are drawn
      in schedule order, the target batch of a fused step first.
    remain_batch: ``k -> Batch`` of remaining data for iteration ``k`` (unused, may
      be None, when ``has_remain`` is False).
    mask: the saliency mask :math:`M` (0/1 pytree) or None; only target
      directions are masked.
    hp: the request's :class:`RequestHParams`.
    has_remain: False when there are no remaining data: target steps only.
    on_step: called after each iteration as ``on_step(k, state, metrics)``
      (progress, logging, finiteness checks); ``state`` is donated to the next step.

  Returns:
    ``(state, RequestCounts)``; the fast and slow weights are not synced yet
    (:func:`finish_request`).
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  if forget_freq < 1:
    raise ValueError(f"forget_freq must be >= 1, got {forget_freq}")
  if num_iterations < 0:
    raise ValueError(f"num_iterations must be >= 0, got {num_iterations}")
  f = forget_freq
  n_target = n_remain = n_fused = 0
  for k in range(num_iterations):
    if not has_remain:
      state, metrics = steps.target(state, target_batch(k), mask, hp, 1)
      n_target += 1
    elif k % f == 0 and mode != "fast_slow":
      state, metrics = steps.fused(state, target_batch(k // f), remain_batch(k), mask, hp)
      n_fused += 1
    else:
      metrics = {}
      if k % f == 0:
        state, metrics = steps.target(state, target_batch(k // f), mask, hp, 0)
        n_target += 1
      state, remain_metrics = steps.remain(state, remain_batch(k), hp)
      metrics = {**metrics, **remain_metrics}
      n_remain += 1
    if on_step is not None:
      on_step(k, state, metrics)
  return state, RequestCounts(n_target, n_remain, n_fused)


def finish_request(state: TrainState, slow_step_size: float = 1.0) -> tuple[Params, ModelState]:
  r"""The final fast/slow sync of a request: ``(params, model_state)`` to evaluate.

  :math:`\theta_s \leftarrow \theta_s + \alpha (\theta_f - \theta_s)` with
  :math:`\alpha` = ``slow_step_size`` (:func:`ugclu_jax.sync`); the last sync
  period may be incomplete.
  """
  return sync(state.params, slow_step_size).slow, state.model_state
