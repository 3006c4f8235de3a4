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

import functools
import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

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
  _check_schedule(mode, forget_freq, num_iterations)
  f = forget_freq
  for k in range(num_iterations):
    if not has_remain:
      state, metrics = steps.target(state, target_batch(k), mask, hp, 1)
    elif k % f == 0 and mode != "fast_slow":
      state, metrics = steps.fused(state, target_batch(k // f), remain_batch(k), mask, hp)
    else:
      metrics = {}
      if k % f == 0:
        state, metrics = steps.target(state, target_batch(k // f), mask, hp, 0)
      state, remain_metrics = steps.remain(state, remain_batch(k), hp)
      metrics = {**metrics, **remain_metrics}
    if on_step is not None:
      on_step(k, state, metrics)
  return state, _counts(mode, num_iterations, f, has_remain)


def _check_schedule(mode: str, forget_freq: int, num_iterations: int) -> None:
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  if forget_freq < 1:
    raise ValueError(f"forget_freq must be >= 1, got {forget_freq}")
  if num_iterations < 0:
    raise ValueError(f"num_iterations must be >= 0, got {num_iterations}")


def _counts(mode: str, n: int, f: int, has_remain: bool) -> RequestCounts:
  """The steps of the schedule: one target (or fused) step every ``f`` iterations."""
  if not has_remain:
    return RequestCounts(target=n)
  every = math.ceil(n / f)
  if mode == "fast_slow":
    return RequestCounts(target=every, remain=n)
  return RequestCounts(remain=n - every, fused=every)


def _take(data: Batch, rows: jax.Array) -> Batch:
  return jax.tree.map(lambda a: jnp.take(a, rows, axis=0), data)


def _scan(steps, mode, f, has_remain, state, ks, target_data, target_index, remain, mask, hp):
  """Iterations ``ks`` of a request as one ``lax.scan``; the state carries through."""

  def body(state, k):
    if not has_remain:
      return steps.target(state, _take(target_data, target_index[k]), mask, hp, 1)[0], None
    remain_data, remain_index = remain
    tb = _take(target_data, target_index[k // f])
    rb = _take(remain_data, remain_index[k])
    if mode == "fast_slow":
      state = jax.lax.cond(
        k % f == 0, lambda s: steps.target(s, tb, mask, hp, 0)[0], lambda s: s, state
      )
      return steps.remain(state, rb, hp)[0], None
    return jax.lax.cond(
      k % f == 0,
      lambda s: steps.fused(s, tb, rb, mask, hp)[0],
      lambda s: steps.remain(s, rb, hp)[0],
      state,
    ), None

  return jax.lax.scan(body, state, ks)[0]


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4), donate_argnums=5)
def _chunk(
  steps, mode, f, has_remain, seeds, state, ks, target_data, target_index, remain, mask, hp
):
  """:func:`_scan` compiled; with ``seeds``, vmapped over the leading seed axis of
  ``state``, the index tables and ``mask`` (the data and ``hp`` are shared)."""
  scan = functools.partial(_scan, steps, mode, f, has_remain)
  if not seeds:
    return scan(state, ks, target_data, target_index, remain, mask, hp)
  remain_axes = None if remain is None else (None, 0)
  mask_axes = None if mask is None else 0
  return jax.vmap(scan, in_axes=(0, None, None, 0, remain_axes, mask_axes, None))(
    state, ks, target_data, target_index, remain, mask, hp
  )


def run_request_on_device(
  steps: Steps,
  state: TrainState,
  *,
  mode: str,
  num_iterations: int,
  forget_freq: int,
  target_data: Batch,
  target_index,
  remain_data: Optional[Batch] = None,
  remain_index=None,
  mask: Optional[Params],
  hp: RequestHParams,
  chunk: int = 64,
) -> tuple[TrainState, RequestCounts]:
  """:func:`run_request`'s schedule as compiled chunks, with the batches gathered on device.

  The ``num_iterations`` iterations run as ``lax.scan`` programs of ``chunk``
  iterations each (and one shorter for the rest): no host round trip per step,
  and at most two compilations per request shape. Each batch is gathered from
  arrays already on the device, so

  ``run_request(..., target_batch=lambda j: take(target_data, target_index[j]),
  remain_batch=lambda k: take(remain_data, remain_index[k]))``

  gives the same state up to float rounding (the schedule is the same; XLA may
  fuse a chunk's arithmetic differently).

  Args:
    steps, state, mode, num_iterations, forget_freq, mask, hp: as :func:`run_request`.
    target_data: a :class:`Batch` of the request's target samples, ``[n_T, ...]``.
    target_index: int ``[ceil(N / f), B]``: the rows of ``target_data`` of the
      ``j``-th target (or fused) step; ``[N, B]`` without remaining data.
    remain_data: a :class:`Batch` of remaining samples ``[n_R, ...]``, or None when
      the request has no remaining data (target steps only, as ``has_remain=False``).
    remain_index: int ``[N, B]``: the rows of ``remain_data`` of iteration ``k``.
    chunk: iterations per compiled program.

  Returns:
    ``(state, RequestCounts)``, the fast and slow weights not synced yet.
  """
  return _on_device(
    steps,
    state,
    mode=mode,
    num_iterations=num_iterations,
    forget_freq=forget_freq,
    target_data=target_data,
    target_index=target_index,
    remain_data=remain_data,
    remain_index=remain_index,
    mask=mask,
    hp=hp,
    chunk=chunk,
    num_seeds=None,
  )


def run_seeds_on_device(
  steps: Steps,
  states: TrainState,
  *,
  mode: str,
  num_iterations: int,
  forget_freq: int,
  target_data: Batch,
  target_index,
  remain_data: Optional[Batch] = None,
  remain_index=None,
  masks: Optional[Params],
  hp: RequestHParams,
  chunk: int = 64,
) -> tuple[TrainState, RequestCounts]:
  """``S`` seeds of one request as one program: :func:`run_request_on_device` vmapped.

  Seed ``s`` runs from ``states[s]`` on its own batches ``target_index[s]``,
  ``remain_index[s]`` with its own mask ``masks[s]``; the data and ``hp`` are
  shared. Each seed's result equals its own :func:`run_request_on_device` up to
  float rounding, and the ``S`` runs are one program per chunk. Whether that costs
  less than ``S`` runs depends on the device: on a 2-core CPU it did not
  (``benchmarks/request_loop.py --seeds``, benchmarks/README.md).

  Build ``states`` by stacking fresh states along a new leading axis, e.g.
  ``jax.tree.map(lambda *a: jnp.stack(a), *[init_train_state(p, ms, tx) for p in ...])``.

  Args:
    steps, mode, num_iterations, forget_freq, target_data, remain_data, hp, chunk:
      as :func:`run_request_on_device`.
    states: :class:`TrainState` with a leading seed axis ``S`` on every leaf; donated.
    target_index: int ``[S, ceil(N / f), B]`` (``[S, N, B]`` without remaining data).
    remain_index: int ``[S, N, B]``, or None without remaining data.
    masks: the seeds' saliency masks, each leaf with a leading axis ``S``, or None.

  Returns:
    ``(states, RequestCounts)``: the seeds' states (leading axis ``S``, not synced
    yet; :func:`finish_request` works leafwise on them too) and one seed's counts.
  """
  num_seeds = {int(np.shape(leaf)[0]) for leaf in jax.tree.leaves(states) if np.ndim(leaf)}
  if len(num_seeds) != 1:
    raise ValueError(f"states need one leading seed axis on every leaf, got sizes {num_seeds}")
  return _on_device(
    steps,
    states,
    mode=mode,
    num_iterations=num_iterations,
    forget_freq=forget_freq,
    target_data=target_data,
    target_index=target_index,
    remain_data=remain_data,
    remain_index=remain_index,
    mask=masks,
    hp=hp,
    chunk=chunk,
    num_seeds=num_seeds.pop(),
  )


def _on_device(
  steps,
  state,
  *,
  mode,
  num_iterations,
  forget_freq,
  target_data,
  target_index,
  remain_data,
  remain_index,
  mask,
  hp,
  chunk,
  num_seeds: Optional[int],
):
  """The checks and chunk loop of both on-device loops (``num_seeds``: None, one run)."""
  _check_schedule(mode, forget_freq, num_iterations)
  if chunk < 1:
    raise ValueError(f"chunk must be >= 1, got {chunk}")
  has_remain = remain_data is not None
  n, f = int(num_iterations), int(forget_freq)
  lead = () if num_seeds is None else (num_seeds,)
  want = (*lead, n if not has_remain else math.ceil(n / f))
  if np.shape(target_index)[: len(want)] != want:
    raise ValueError(f"target_index needs shape {want} + (B,), got {np.shape(target_index)}")
  if has_remain and np.shape(remain_index)[: len(lead) + 1] != (*lead, n):
    raise ValueError(f"remain_index needs shape {(*lead, n)} + (B,), got {np.shape(remain_index)}")
  if num_seeds is not None and mask is not None:
    bad = {np.shape(m)[:1] for m in jax.tree.leaves(mask)} - {lead}
    if bad:
      raise ValueError(f"masks need a leading seed axis of {num_seeds}, got {sorted(bad)}")
  remain = (remain_data, jnp.asarray(remain_index)) if has_remain else None
  target_index = jnp.asarray(target_index)
  for start in range(0, n, chunk):
    ks = jnp.arange(start, min(start + chunk, n), dtype=jnp.int32)
    state = _chunk(
      steps,
      mode,
      f,
      has_remain,
      num_seeds is not None,
      state,
      ks,
      target_data,
      target_index,
      remain,
      mask,
      hp,
    )
  return state, _counts(mode, n, f, has_remain)


def finish_request(state: TrainState, slow_step_size: float = 1.0) -> tuple[Params, ModelState]:
  r"""The final fast/slow sync of a request: ``(params, model_state)`` to evaluate.

  :math:`\theta_s \leftarrow \theta_s + \alpha (\theta_f - \theta_s)` with
  :math:`\alpha` = ``slow_step_size`` (:func:`ugclu_jax.sync`); the last sync
  period may be incomplete.
  """
  return sync(state.params, slow_step_size).slow, state.model_state
