"""Tests for the fast-slow optax transformation (ugclu_jax/fast_slow.py)."""

import math
from typing import Any, NamedTuple

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ugclu_jax.fast_slow import FastSlowParams
from ugclu_jax.fast_slow import FastSlowState
from ugclu_jax.fast_slow import fast_slow
from ugclu_jax.fast_slow import sync

# Exact-arithmetic tree identities in float32.
_RTOL = 1e-6
_ATOL = 1e-6


def _initial_params(dtype=jnp.float32) -> dict[str, jax.Array]:
  rng = np.random.default_rng(0)
  return {
    "w": jnp.asarray(rng.normal(size=(3, 2)), dtype),
    "b": jnp.asarray(rng.normal(size=(2,)), dtype),
  }


def _targets(num_steps: int) -> list[dict[str, jax.Array]]:
  """A different quadratic centre per step, so gradients vary along the run."""
  rng = np.random.default_rng(1)
  return [
    {
      "w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
      "b": jnp.asarray(rng.normal(size=(2,)), jnp.float32),
    }
    for _ in range(num_steps)
  ]


def _loss(params, target):
  return sum(
    jnp.sum(0.5 * (p - t.astype(p.dtype)) ** 2 + 0.1 * jnp.sin(p))
    for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(target))
  )


_grad = jax.jit(jax.grad(_loss))


def _partial_mask(dtype=jnp.float32) -> dict[str, jax.Array]:
  return {
    "w": jnp.asarray([[1, 0], [0, 1], [1, 1]], dtype),
    "b": jnp.asarray([0, 1], dtype),
  }


def _run(update_fn, state, params, num_steps, *, masks=None):
  """Runs ``num_steps`` steps; ``masks[i]`` (or None) is passed to step i."""
  targets = _targets(num_steps)
  history = []
  for i, target in enumerate(targets):
    grads = _grad(getattr(params, "fast", params), target)
    kwargs = {}
    if masks is not None and masks[i] is not None:
      kwargs["saliency_mask"] = masks[i]
    updates, state = update_fn(grads, state, params, **kwargs)
    params = optax.apply_updates(params, updates)
    history.append(params)
  return params, state, history


def _to_lookahead(params: FastSlowParams) -> optax.LookaheadParams:
  return optax.LookaheadParams(fast=params.fast, slow=params.slow)


def _assert_trees_close(actual, desired, rtol=_RTOL, atol=_ATOL):
  chex.assert_trees_all_equal_structs(actual, desired)
  jax.tree.map(
    lambda a, d: np.testing.assert_allclose(
      np.asarray(a, np.float32), np.asarray(d, np.float32), rtol=rtol, atol=atol
    ),
    actual,
    desired,
  )


class _CountingState(NamedTuple):
  """State of the hand-written inner optimizer used in the analytic test."""

  aggregate: Any  # Sum of all gradients seen; drives the update.
  count: jax.Array  # int32 step counter.
  is_reset: jax.Array  # True only in the init state.


def _counting_optimizer(step_size: float) -> optax.GradientTransformation:
  """Inner optimizer with state: ``u_t = step_size * sum_{j <= t} g_j``."""

  def init_fn(params):
    return _CountingState(
      aggregate=jax.tree.map(jnp.zeros_like, params),
      count=jnp.zeros([], jnp.int32),
      is_reset=jnp.asarray(True),
    )

  def update_fn(updates, state, params):
    # The inner optimizer must be called with the fast params.
    chex.assert_trees_all_equal_shapes(updates, params)
    aggregate = jax.tree.map(jnp.add, state.aggregate, updates)
    new_updates = jax.tree.map(lambda a: step_size * a, aggregate)
    return new_updates, _CountingState(aggregate, state.count + 1, jnp.asarray(False))

  return optax.GradientTransformation(init_fn, update_fn)


class FastSlowVariantsTest(chex.TestCase):
  """Core identities, each run jitted and eagerly."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(
    ("sgd_momentum", lambda: optax.sgd(0.1, momentum=0.9)),
    ("adam", lambda: optax.adam(0.05)),
  )
  def test_reduces_to_inner_with_period_one(self, make_inner):
    num_steps = 6
    tx = fast_slow(make_inner(), sync_period=1, slow_step_size=1.0)
    params = FastSlowParams.init_synced(_initial_params())
    fs_params, _, fs_history = _run(self.variant(tx.update), tx.init(params), params, num_steps)

    inner = make_inner()
    ref_params, _, ref_history = _run(inner.update, inner.init(params.fast), params.fast, num_steps)

    for fs, ref in zip(fs_history, ref_history):
      _assert_trees_close(fs.fast, ref)
      _assert_trees_close(fs.slow, ref)
    # The run moved: the identity is not between two constant trajectories.
    self.assertGreater(float(optax.tree.norm(optax.tree.sub(ref_params, params.fast))), 0.1)
    _assert_trees_close(fs_params.fast, ref_params)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(
    # (sync_period, slow_step_size, reset_state, mask)
    (1, 0.5, False, "ones"),
    (2, 1.0, False, "none"),
    (3, 0.5, True, "ones"),
    (3, 0.5, False, "none"),
    (4, 0.0, True, "none"),
    (5, 0.3, False, "ones"),
  )
  def test_matches_optax_lookahead(self, sync_period, slow_step_size, reset_state, mask):
    num_steps = 11  # Ends mid-period for periods 2..5.
    make_inner = lambda: optax.sgd(0.1, momentum=0.9)
    tx = fast_slow(
      make_inner(), sync_period=sync_period, slow_step_size=slow_step_size, reset_state=reset_state
    )
    ref = optax.lookahead(make_inner(), sync_period, slow_step_size, reset_state)
    params = FastSlowParams.init_synced(_initial_params())
    ones = jax.tree.map(jnp.ones_like, params.fast)
    masks = [ones] * num_steps if mask == "ones" else None

    _, fs_state, fs_history = _run(
      self.variant(tx.update), tx.init(params), params, num_steps, masks=masks
    )
    _, ref_state, ref_history = _run(
      ref.update, ref.init(_to_lookahead(params)), _to_lookahead(params), num_steps
    )

    for fs, la in zip(fs_history, ref_history):
      _assert_trees_close(fs.fast, la.fast)
      _assert_trees_close(fs.slow, la.slow)
    _assert_trees_close(fs_state.fast_state, ref_state.fast_state)
    self.assertEqual(int(fs_state.steps_since_sync), int(ref_state.steps_since_sync))

  @chex.variants(with_jit=True, without_jit=True)
  def test_zero_mask_with_plain_sgd_leaves_params_unchanged(self):
    tx = fast_slow(optax.sgd(0.1), sync_period=2, slow_step_size=0.5)
    params = FastSlowParams.init_synced(_initial_params())
    zeros = jax.tree.map(jnp.zeros_like, params.fast)
    final, _, _ = _run(self.variant(tx.update), tx.init(params), params, 5, masks=[zeros] * 5)
    chex.assert_trees_all_equal(final.fast, params.fast)
    chex.assert_trees_all_equal(final.slow, params.slow)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(jnp.float32, jnp.bool_)
  def test_partial_mask_freezes_exactly_the_masked_coordinates(self, mask_dtype):
    tx = fast_slow(optax.sgd(0.1, momentum=0.9), sync_period=3, slow_step_size=0.5)
    params = FastSlowParams.init_synced(_initial_params())
    mask = _partial_mask(mask_dtype)
    final, _, _ = _run(self.variant(tx.update), tx.init(params), params, 7, masks=[mask] * 7)
    for name in ("fast", "slow"):
      for key in ("w", "b"):
        keep = np.asarray(mask[key], bool)
        before = np.asarray(params.fast[key])
        after = np.asarray(getattr(final, name)[key])
        np.testing.assert_array_equal(after[~keep], before[~keep])
        self.assertTrue(np.all(np.abs(after[keep] - before[keep]) > 1e-3))

    # And the free coordinates follow lookahead fed with masked gradients.
    ref = optax.lookahead(optax.sgd(0.1, momentum=0.9), 3, 0.5)
    masked_grad_update = lambda g, s, p: ref.update(jax.tree.map(jnp.multiply, g, mask), s, p)
    ref_final, _, _ = _run(
      masked_grad_update, ref.init(_to_lookahead(params)), _to_lookahead(params), 7
    )
    _assert_trees_close(final.fast, ref_final.fast)
    _assert_trees_close(final.slow, ref_final.slow)


class AnalyticTrajectoryTest(parameterized.TestCase):
  """A hand-traced run with a stateful inner optimizer and a masked step."""

  @parameterized.named_parameters(
    # x is never masked; y is masked (g_y = 0) on the target steps 1 and 3.
    # Inner: A_t = A_{t-1} + g_t, u_t = -0.5 A_t. g = (2, -2).
    # No reset, sync_period 2, alpha 0.5:
    #   x: A = 2, 4 | 6, 8      x: 3 -> 2 -> 0, sync 3 + .5 (0 - 3) = 1.5
    #                              1.5 -> -1.5 -> -5.5,
    #                              sync 1.5 + .5 (-7) = -2
    #   y: A = 0, -2 | -2, -4   y: -3 -> -3 -> -2, sync -2.5
    #                              -2.5 -> -1.5 (state still acts when
    #                              masked) -> 0.5, sync -2.5 + .5 (3) = -1
    ("keep_state", False, (1.5, -2.5), (-2.0, -1.0)),
    # Reset at each sync, so after the first sync A starts from 0 again:
    #   x: 1.5 -> 0.5 -> -1.5, sync 1.5 + .5 (-3) = 0
    #   y: -2.5 -> -2.5 (A = 0) -> -1.5 (A = -2), sync -2.5 + .5 (1) = -2
    ("reset_state", True, (1.5, -2.5), (0.0, -2.0)),
  )
  def test_trajectory(self, reset_state, after_first_sync, final):
    inner = _counting_optimizer(-0.5)
    tx = fast_slow(inner, sync_period=2, slow_step_size=0.5, reset_state=reset_state)
    params = FastSlowParams.init_synced({"x": jnp.asarray(3.0), "y": jnp.asarray(-3.0)})
    grads = {"x": jnp.asarray(2.0), "y": jnp.asarray(-2.0)}
    target_mask = {"x": jnp.asarray(1.0), "y": jnp.asarray(0.0)}
    state = tx.init(params)
    step = tx.update

    fast_values = []
    for t in range(4):
      kwargs = {"saliency_mask": target_mask} if t % 2 == 0 else {}
      updates, state = step(grads, state, params, **kwargs)
      params = optax.apply_updates(params, updates)
      fast_values.append((float(params.fast["x"]), float(params.fast["y"])))
      if t == 1:
        np.testing.assert_allclose([params.slow["x"], params.slow["y"]], after_first_sync)
        chex.assert_trees_all_close(params.fast, params.slow)

    np.testing.assert_allclose(fast_values[0], (2.0, -3.0))
    np.testing.assert_allclose(fast_values[2], (0.5, -2.5) if reset_state else (-1.5, -1.5))
    np.testing.assert_allclose([params.slow["x"], params.slow["y"]], final)
    chex.assert_trees_all_close(params.fast, params.slow)
    self.assertEqual(int(state.steps_since_sync), 0)
    if reset_state:
      chex.assert_trees_all_equal(state.fast_state, inner.init(params.fast))
    else:
      chex.assert_trees_all_close(state.fast_state.aggregate, {"x": 8.0, "y": -4.0})
      self.assertEqual(int(state.fast_state.count), 4)
      self.assertFalse(bool(state.fast_state.is_reset))

  @parameterized.parameters(
    # (sync_period, slow_step_size, final slow x) with u = -g = -2 per step
    # from x = 3, two steps (the edge cases of optax's lookahead_test).
    (1, 0.5, 1.0),
    (1, 0.0, 3.0),
    (1, 1.0, -1.0),
    (2, 1.0, -1.0),
    (2, 0.5, 1.0),
    (3, 0.5, 3.0),
  )
  def test_edge_cases(self, sync_period, slow_step_size, final_slow):
    tx = fast_slow(optax.sgd(1.0), sync_period=sync_period, slow_step_size=slow_step_size)
    params = FastSlowParams.init_synced({"x": jnp.asarray(3.0)})
    state = tx.init(params)
    for _ in range(2):
      updates, state = tx.update({"x": jnp.asarray(2.0)}, state, params)
      params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(params.slow["x"], final_slow)


class CompositionTest(parameterized.TestCase):
  """fast_slow with optax.chain, inject_hyperparams and extra args."""

  def test_chain_as_inner_decays_masked_coordinates(self):
    lr, wd = 0.1, 0.5
    make_inner = lambda: optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr))
    tx = fast_slow(make_inner(), sync_period=3, slow_step_size=0.5)
    params = FastSlowParams.init_synced(_initial_params())
    mask = _partial_mask()
    state = tx.init(params)
    grads = _grad(params.fast, _targets(1)[0])
    updates, _ = jax.jit(tx.update)(grads, state, params, saliency_mask=mask)
    # Mask first, then the inner chain: weight decay still moves masked
    # coordinates, u = -lr (m g + wd p).
    expected = jax.tree.map(lambda g, m, p: -lr * (m * g + wd * p), grads, mask, params.fast)
    _assert_trees_close(updates.fast, expected)
    chex.assert_trees_all_equal(updates.slow, jax.tree.map(jnp.zeros_like, params.slow))

    # Over a run: lookahead with the same chain fed masked gradients.
    final, _, _ = _run(tx.update, tx.init(params), params, 8, masks=[mask] * 8)
    ref = optax.lookahead(make_inner(), 3, 0.5)
    ref_update = lambda g, s, p: ref.update(jax.tree.map(jnp.multiply, g, mask), s, p)
    ref_final, _, _ = _run(ref_update, ref.init(_to_lookahead(params)), _to_lookahead(params), 8)
    _assert_trees_close(final.fast, ref_final.fast)
    _assert_trees_close(final.slow, ref_final.slow)

  def test_inject_hyperparams_gives_the_same_updates(self):
    plain = fast_slow(optax.sgd(0.1, momentum=0.9), sync_period=3, slow_step_size=0.5)
    injected = fast_slow(
      optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9),
      sync_period=3,
      slow_step_size=0.5,
    )
    params = FastSlowParams.init_synced(_initial_params())
    masks = [_partial_mask() if t % 2 == 0 else None for t in range(7)]
    plain_final, _, plain_hist = _run(plain.update, plain.init(params), params, 7, masks=masks)
    inj_final, _, inj_hist = _run(injected.update, injected.init(params), params, 7, masks=masks)
    for a, b in zip(plain_hist, inj_hist):
      _assert_trees_close(a, b)
    _assert_trees_close(plain_final, inj_final)

  def test_injected_learning_rate_changes_without_recompiling(self):
    tx = fast_slow(
      optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9),
      sync_period=100,
      slow_step_size=0.5,
    )
    step = jax.jit(chex.assert_max_traces(tx.update, n=1))
    params = FastSlowParams.init_synced(_initial_params())
    state = tx.init(params)
    grads = _grad(params.fast, _targets(1)[0])
    _, state = step(grads, state, params)

    def updates_with_lr(lr):
      hyperparams = dict(state.fast_state.hyperparams, learning_rate=jnp.asarray(lr, jnp.float32))
      new_state = state._replace(fast_state=state.fast_state._replace(hyperparams=hyperparams))
      updates, _ = step(grads, new_state, params)
      return updates.fast

    base = updates_with_lr(0.1)
    doubled = updates_with_lr(0.2)
    zero = updates_with_lr(0.0)
    _assert_trees_close(doubled, jax.tree.map(lambda u: 2 * u, base))
    chex.assert_trees_all_equal(zero, jax.tree.map(jnp.zeros_like, base))
    self.assertGreater(float(optax.tree.norm(base)), 0.1)

  def test_extra_args_reach_the_inner_transformation(self):
    seen = []

    def update_fn(updates, state, params=None, *, scale, **extra_args):
      del params
      seen.append(sorted(extra_args))
      return jax.tree.map(lambda u: -scale * u, updates), state

    inner = optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)
    tx = fast_slow(inner, sync_period=2)
    params = FastSlowParams.init_synced({"x": jnp.asarray([1.0, 2.0])})
    grads = {"x": jnp.asarray([1.0, 1.0])}
    updates, _ = tx.update(
      grads,
      tx.init(params),
      params,
      scale=3.0,
      other=1,
      saliency_mask={"x": jnp.asarray([1.0, 0.0])},
    )
    np.testing.assert_allclose(updates.fast["x"], [-3.0, 0.0])
    self.assertEqual(seen, [["other"]])  # saliency_mask is consumed.

    # A plain GradientTransformation inner ignores extra args.
    tx_plain = fast_slow(optax.sgd(1.0), sync_period=2)
    updates, _ = tx_plain.update(grads, tx_plain.init(params), params, scale=3.0)
    np.testing.assert_allclose(updates.fast["x"], [-1.0, -1.0])

  def test_post_processing_desynchronises(self):
    # Why the docstring forbids chaining after fast_slow: a scale after it
    # leaves fast != slow after a sync; without it the pair is synchronised.
    make = lambda: fast_slow(optax.sgd(0.1), sync_period=2, slow_step_size=0.5)
    params = FastSlowParams.init_synced(_initial_params())
    good, _, _ = _run(make().update, make().init(params), params, 2)
    bad_tx = optax.chain(make(), optax.scale(0.5))
    bad, _, _ = _run(bad_tx.update, bad_tx.init(params), params, 2)
    _assert_trees_close(good.fast, good.slow)
    self.assertGreater(float(optax.tree.norm(optax.tree.sub(bad.fast, bad.slow))), 1e-2)

  def test_map_params_through_a_synced_init(self):
    tx = fast_slow(optax.sgd(0.1, momentum=0.9), sync_period=2)
    params = FastSlowParams.init_synced(_initial_params())
    state = tx.init(params)
    shapes = optax.tree.map_params(
      lambda p: tx.init(FastSlowParams.init_synced(p)), lambda v: v.shape, state
    )
    trace = shapes.fast_state[0].trace
    self.assertEqual(trace, {"w": (3, 2), "b": (2,)})


class DtypeAndCompilationTest(parameterized.TestCase):
  @parameterized.parameters((False, jnp.float32), (True, jnp.bool_))
  def test_bfloat16_stays_bfloat16(self, reset_state, mask_dtype):
    tx = fast_slow(
      optax.sgd(0.1, momentum=0.9), sync_period=2, slow_step_size=1 / 3, reset_state=reset_state
    )
    params = FastSlowParams.init_synced(_initial_params(jnp.bfloat16))
    # Strict promotion: any implicit float32 scalar promotion would raise.
    with jax.numpy_dtype_promotion("strict"):
      state = tx.init(params)
      final, state, history = _run(
        jax.jit(tx.update), state, params, 5, masks=[_partial_mask(mask_dtype)] * 5
      )
    for p in history + [sync(final, 0.5)]:
      for leaf in jax.tree.leaves(p):
        self.assertEqual(leaf.dtype, jnp.bfloat16)
    self.assertEqual(state.fast_state[0].trace["w"].dtype, jnp.bfloat16)
    self.assertEqual(state.steps_since_sync.dtype, jnp.int32)

  def test_no_recompile_on_second_call_or_new_mask_values(self):
    tx = fast_slow(
      optax.sgd(0.1, momentum=0.9), sync_period=2, slow_step_size=0.5, reset_state=True
    )
    step = jax.jit(chex.assert_max_traces(tx.update, n=1))
    params = FastSlowParams.init_synced(_initial_params())
    state = tx.init(params)
    masks = [
      _partial_mask(),
      jax.tree.map(jnp.ones_like, params.fast),
      jax.tree.map(jnp.zeros_like, params.fast),
    ]
    for t, mask in enumerate(masks):  # Crosses a sync step.
      grads = _grad(params.fast, _targets(t + 1)[t])
      updates, state = step(grads, state, params, saliency_mask=mask)
      params = optax.apply_updates(params, updates)
    self.assertEqual(int(state.steps_since_sync), 1)

  @parameterized.named_parameters(
    ("sgd_f32", lambda: optax.sgd(0.1, momentum=0.9), False, jnp.float32),
    ("adam_bf16_reset", lambda: optax.adam(0.1), True, jnp.bfloat16),
    (
      "inject_bf16_reset",
      lambda: optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9),
      True,
      jnp.bfloat16,
    ),
  )
  def test_state_structure_and_dtype_stable_under_cond(self, make_inner, reset_state, dtype):
    tx = fast_slow(make_inner(), sync_period=2, slow_step_size=0.5, reset_state=reset_state)
    target = {"w": jnp.ones((3, 2)), "b": jnp.ones((2,))}

    @jax.jit
    def step(params, state):
      grads = jax.grad(_loss)(params.fast, target)
      # A data-dependent predicate, so both branches are kept.
      pred = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
      updates, new_state = jax.lax.cond(
        pred,
        lambda: tx.update(grads, state, params, saliency_mask=_partial_mask(dtype)),
        lambda: (params, state),
      )
      params = optax.apply_updates(params, updates)
      state = jax.lax.cond(pred, lambda: state, lambda: new_state)
      return params, state

    params = FastSlowParams.init_synced(_initial_params(dtype))
    state = tx.init(params)
    for _ in range(3):
      params, state = step(params, state)
      for leaf in jax.tree.leaves(params):
        self.assertEqual(leaf.dtype, dtype)
      # Params-shaped inner state (momentum, Adam moments) keeps the dtype.
      for leaf in jax.tree.leaves(state.fast_state):
        if leaf.ndim > 0:
          self.assertEqual(leaf.dtype, dtype)
      self.assertEqual(state.steps_since_sync.dtype, jnp.int32)


class SyncTest(parameterized.TestCase):
  @parameterized.parameters(
    (0.5, [0.5, 2.0]), (1.0, [1.0, 3.0]), (0.0, [0.0, 1.0]), (0.25, [0.25, 1.5])
  )
  def test_values(self, slow_step_size, expected):
    params = FastSlowParams(
      fast={"a": jnp.asarray([1.0, 3.0])}, slow={"a": jnp.asarray([0.0, 1.0])}
    )
    synced = sync(params, slow_step_size)
    np.testing.assert_allclose(synced.slow["a"], expected)
    chex.assert_trees_all_equal(synced.fast, synced.slow)

  def test_default_is_exactly_the_fast_weights(self):
    fast = _initial_params()
    slow = jax.tree.map(lambda p: p * 3.7 + 0.1, fast)
    synced = sync(FastSlowParams(fast=fast, slow=slow))
    chex.assert_trees_all_equal(synced.slow, fast)
    chex.assert_trees_all_equal(synced.fast, fast)

  def test_completes_a_period_like_the_transformation(self):
    # sync_period steps of the transformation == the same fast steps with no
    # sync, then sync(params, alpha).
    alpha, period = 0.3, 4
    make_inner = lambda: optax.sgd(0.1, momentum=0.9)
    params = FastSlowParams.init_synced(_initial_params())
    tx = fast_slow(make_inner(), sync_period=period, slow_step_size=alpha)
    synced_by_tx, _, _ = _run(tx.update, tx.init(params), params, period)
    never = fast_slow(make_inner(), sync_period=10**6, slow_step_size=alpha)
    unsynced, _, _ = _run(never.update, never.init(params), params, period)
    chex.assert_trees_all_equal(unsynced.slow, params.slow)
    _assert_trees_close(sync(unsynced, alpha), synced_by_tx)

  def test_validation(self):
    params = FastSlowParams.init_synced({"a": jnp.ones(2)})
    with self.assertRaisesRegex(ValueError, "slow_step_size"):
      sync(params, 1.5)
    with self.assertRaisesRegex(ValueError, "FastSlowParams"):
      sync(optax.LookaheadParams.init_synced({"a": jnp.ones(2)}))


class ValidationTest(parameterized.TestCase):
  @parameterized.parameters(0, -1, 1.5, True, None)
  def test_bad_sync_period(self, sync_period):
    with self.assertRaisesRegex(ValueError, "sync_period"):
      fast_slow(optax.sgd(0.1), sync_period=sync_period)

  @parameterized.parameters(-0.1, 1.1, math.nan, None)
  def test_bad_slow_step_size(self, slow_step_size):
    with self.assertRaisesRegex(ValueError, "slow_step_size"):
      fast_slow(optax.sgd(0.1), sync_period=2, slow_step_size=slow_step_size)

  def test_accepts_the_interval_ends(self):
    for alpha in (0.0, 1.0, 0, 1):
      fast_slow(optax.sgd(0.1), sync_period=1, slow_step_size=alpha)

  def test_init_and_update_require_fast_slow_params(self):
    tx = fast_slow(optax.sgd(0.1), sync_period=2)
    plain = _initial_params()
    with self.assertRaisesRegex(ValueError, "FastSlowParams"):
      tx.init(plain)
    state = tx.init(FastSlowParams.init_synced(plain))
    self.assertIsInstance(state, FastSlowState)
    with self.assertRaisesRegex(ValueError, "FastSlowParams"):
      tx.update(plain, state)
    with self.assertRaisesRegex(ValueError, "FastSlowParams"):
      tx.update(plain, state, plain)

  def test_bad_saliency_mask(self):
    tx = fast_slow(optax.sgd(0.1), sync_period=2)
    params = FastSlowParams.init_synced(_initial_params())
    state = tx.init(params)
    with self.assertRaisesRegex(ValueError, "structure"):
      tx.update(params.fast, state, params, saliency_mask={"w": jnp.ones(2)})
    bad_shape = dict(_partial_mask(), b=jnp.ones((3,)))
    with self.assertRaisesRegex(ValueError, r"saliency_mask\['b'\]"):
      tx.update(params.fast, state, params, saliency_mask=bad_shape)


if __name__ == "__main__":
  absltest.main()
