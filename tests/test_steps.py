"""Request steps: the §5 equations, component sums, the fast-slow identity, schedules, no
recompilation."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import parameterized
from flax import nnx
from jax.flatten_util import ravel_pytree

import ugclu_jax as ug
from ugclu_jax.models import MLP, as_functional


def _problem(dtype=jnp.float32, n=8):
  model = MLP(
    in_features=16, num_classes=4, hidden=(12,), rngs=nnx.Rngs(0), param_dtype=dtype, dtype=dtype
  )
  apply_fn, params, state = as_functional(model)

  def batch(seed):
    kx, ky = jax.random.split(jax.random.key(seed))
    return ug.Batch(
      jax.random.normal(kx, (n, 4, 4, 1), dtype),
      jax.random.randint(ky, (n,), 0, 4),
      jnp.ones((n,), jnp.float32),
    )

  return apply_fn, params, state, batch


def _random_mask(params, seed=7):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(
    treedef,
    [jax.random.bernoulli(k, 0.6, p.shape).astype(jnp.float32) for k, p in zip(keys, leaves)],
  )


def _plain_sgd(lr):
  return ug.build_optimizer(learning_rate=lr, momentum=0.0, weight_decay=0.0)


def _flat(tree):
  return ravel_pytree(tree)[0]


def _tiny_loss(x, y):
  """Softmax regression on a fixed batch: ``params -> mean cross-entropy``."""

  def loss(params):
    return ug.cross_entropy(logits=x @ params["w"] + params["b"][None], labels=y)

  return loss


class EquationsTest(parameterized.TestCase):
  """The public functions of §5, by hand and against a dense Hessian."""

  def test_target_direction_masks_then_clips(self):
    g = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([12.0])}
    mask = {"a": jnp.array([1.0, 1.0]), "b": jnp.array([0.0])}
    d, norm = ug.target_direction(g, mask, 2.5)
    # M ⊙ g = ([3, 4], [0]) has norm 5: the clip halves it. (Clipping first would
    # measure 13 and leave ([15/26, 20/26], [0]).)
    self.assertEqual(float(norm), 5.0)
    chex.assert_trees_all_close(d, {"a": jnp.array([1.5, 2.0]), "b": jnp.array([0.0])})
    d, norm = ug.target_direction(g, mask, None)  # No clip: M ⊙ g.
    chex.assert_trees_all_close(d, {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.0])})
    d, norm = ug.target_direction(g, None, 6.5)  # No mask: the clip alone.
    self.assertEqual(float(norm), 13.0)
    chex.assert_trees_all_close(d, jax.tree.map(lambda t: t / 2, g))
    d, _ = ug.target_direction(g, mask, 100.0)  # Below the clip: unchanged.
    chex.assert_trees_all_close(d, {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.0])})

  def test_the_mask_as_a_norm_keeps_every_coordinate_at_the_masked_length(self):
    g = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([12.0])}
    mask = {"a": jnp.array([1.0, 1.0]), "b": jnp.array([0.0])}
    # ||M ⊙ g|| = 5, ||g|| = 13: g scaled by 5/13, then clipped like the masked one.
    d, norm = ug.target_direction(g, mask, None, mask_as_norm=True)
    self.assertAlmostEqual(float(norm), 5.0, places=5)
    chex.assert_trees_all_close(d, jax.tree.map(lambda t: t * 5 / 13, g), rtol=1e-6)
    d, _ = ug.target_direction(g, mask, 2.5, mask_as_norm=True)
    chex.assert_trees_all_close(d, jax.tree.map(lambda t: t * 2.5 / 13, g), rtol=1e-6)
    d, _ = ug.target_direction(g, None, None, mask_as_norm=True)  # No mask: g itself.
    chex.assert_trees_all_close(d, g)

  def test_joint_direction_scales_then_clips_the_preserve_part(self):
    d = {"a": jnp.array([1.0, 1.0])}
    g_r = {"a": jnp.array([3.0, 4.0])}
    # a_R g_R = [6, 8], norm 10, clipped to 5: [3, 4]; plus d.
    chex.assert_trees_all_close(
      ug.joint_direction(d, g_r, a_remain=2.0, clip_norm=5.0), {"a": jnp.array([4.0, 5.0])}
    )
    chex.assert_trees_all_close(
      ug.joint_direction(d, g_r, a_remain=2.0), {"a": jnp.array([7.0, 9.0])}
    )

  @parameterized.parameters((1, 0.0), (1, 0.3), (3, 0.2))
  def test_compensated_update_against_dense_hessian(self, order, damping):
    with jax.enable_x64(True):
      kx, ky, kp, kd = jax.random.split(jax.random.key(3), 4)
      x = jax.random.normal(kx, (8, 4), jnp.float64)
      y = jax.random.randint(ky, (8,), 0, 3)
      params = {
        "w": 0.5 * jax.random.normal(kp, (4, 3), jnp.float64),
        "b": jnp.zeros(3, jnp.float64),
      }
      flat, unravel = ravel_pytree(params)
      loss_r = _tiny_loss(x, y)
      h = jax.hessian(lambda v: loss_r(unravel(v)))(flat)
      d = unravel(jax.random.normal(kd, flat.shape, jnp.float64))
      g_r = jax.grad(loss_r)(params)
      a_r, beta = 0.7, 0.4
      clip = 0.5 * float(a_r * jnp.linalg.norm(_flat(g_r)))  # active
      out = ug.compensated_update(
        d,
        g_r,
        a_remain=a_r,
        hvp_fn=functools.partial(ug.hvp, loss_r, params),
        beta=beta,
        order=order,
        damping=damping,
        remain_clip_norm=clip,
      )
      a = h + damping * np.eye(flat.size)
      if order == 1:
        d_tilde = _flat(d) - beta * a @ _flat(d)
      else:  # β Σ_{j=0}^{J} (I - β A)^j d
        term, d_tilde = _flat(d), _flat(d)
        for _ in range(order):
          term = term - beta * a @ term
          d_tilde = d_tilde + term
        d_tilde = beta * d_tilde
      g_rem = a_r * _flat(g_r)
      expected = d_tilde + g_rem * clip / np.linalg.norm(g_rem)
      np.testing.assert_allclose(_flat(out), expected, rtol=1e-12, atol=1e-12)
      # Without an HVP ("none" mode): d + clip(a_R g_R).
      out = ug.compensated_update(d, g_r, a_remain=a_r, remain_clip_norm=clip)
      np.testing.assert_allclose(
        _flat(out), _flat(d) + g_rem * clip / np.linalg.norm(g_rem), rtol=1e-12, atol=1e-12
      )


class StepsTest(chex.TestCase, parameterized.TestCase):
  @parameterized.parameters("hvp", "none")
  def test_fused_step_is_target_direction_then_compensated_update(self, mode):
    apply_fn, params, mstate, batch = _problem()
    lr, a_t, a_r, beta, clip, remain_clip = 0.1, 3.0, 0.7, 0.2, 0.05, 0.02
    mask = _random_mask(params)
    tx = _plain_sgd(lr)
    steps = ug.make_steps(
      apply_fn,
      tx,
      kind="unlearn",
      mode=mode,
      clip_norm=clip,
      lr_schedule="constant",
      decay_target=False,
      remain_clip_norm=remain_clip,
    )
    hp = ug.RequestHParams.create(
      learning_rate=lr, a_target=a_t, a_remain=a_r, beta=beta, num_iterations=10
    )
    tb, rb = batch(1), batch(2)
    new, m = steps.fused(ug.init_train_state(params, mstate, tx), tb, rb, mask, hp)
    comps, _, _ = ug.clu_gradients(apply_fn, params, mstate, unlearn=tb, remain=rb)
    d, norm = ug.target_direction(optax.tree.scale(a_t, comps.unlearn), mask, clip)
    self.assertGreater(float(norm), clip)  # Both clips are active.
    self.assertGreater(a_r * float(optax.tree.norm(comps.preserve)), remain_clip)
    loss_r = lambda p: ug.cross_entropy(
      logits=apply_fn(p, mstate, rb.x, train=True)[0], labels=rb.y
    )
    hvp_fn = functools.partial(ug.hvp, loss_r, params) if mode == "hvp" else None
    g = ug.compensated_update(
      d, comps.preserve, a_remain=a_r, hvp_fn=hvp_fn, beta=beta, remain_clip_norm=remain_clip
    )
    expected = jax.tree.map(lambda p, gi: p - lr * gi, params, g)
    np.testing.assert_allclose(_flat(new.params.fast), _flat(expected), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(m["target_grad_norm"]), float(norm), rtol=1e-5)

  def test_remain_step_is_the_generic_gradient_step(self):
    # The remain step and make_gradient_step share one skeleton (cosine lr,
    # value_and_grad at the fast weights, clip, tx.update, apply): with a_R = 1
    # they are the same step.
    apply_fn, params, mstate, batch = _problem()
    tx = ug.build_optimizer(learning_rate=0.1)
    hp = ug.RequestHParams.create(learning_rate=0.1, a_target=1.0, num_iterations=4)
    steps = ug.make_steps(apply_fn, tx, kind="learn", remain_clip_norm=0.05)

    def loss_fn(p, model_state, batches, aux):
      del aux
      b = batches["remain"]
      logits, model_state = apply_fn(p, model_state, b.x, train=True)
      return ug.preserve_loss(logits=logits, labels=b.y, mask=b.mask), (model_state, {})

    generic = ug.steps.make_gradient_step(loss_fn, tx, clip_norm=0.05)
    a, b = (ug.init_train_state(params, mstate, tx) for _ in range(2))
    for k in range(3):  # Through the cosine and the momentum.
      a, ma = steps.remain(a, batch(k), hp)
      b, mb = generic(b, {"remain": batch(k)}, (), hp, None, 1)
      np.testing.assert_allclose(float(ma["remain_loss"]), float(mb["loss"]), rtol=1e-6)
      np.testing.assert_allclose(float(ma["remain_grad_norm"]), float(mb["grad_norm"]), rtol=1e-6)
    np.testing.assert_allclose(_flat(a.params.fast), _flat(b.params.fast), rtol=1e-6, atol=1e-7)
    self.assertEqual(int(a.iteration), int(b.iteration))

  @parameterized.parameters("learn", "unlearn")
  def test_none_mode_step_is_weighted_sum_of_components(self, kind):
    apply_fn, params, mstate, batch = _problem()
    lr, a_t, a_r = 0.1, 2.5, 0.7
    mask = _random_mask(params) if kind == "unlearn" else None
    steps = ug.make_steps(
      apply_fn,
      _plain_sgd(lr),
      kind=kind,
      mode="none",
      clip_norm=None,
      lr_schedule="constant",
      decay_target=False,
      temperature=0.5 if kind == "unlearn" else 0.0,
    )
    hp = ug.RequestHParams.create(learning_rate=lr, a_target=a_t, a_remain=a_r, num_iterations=10)
    tb, rb = batch(1), batch(2)
    state = ug.init_train_state(params, mstate, _plain_sgd(lr))
    new, _ = steps.fused(state, tb, rb, mask, hp)
    comps, _, _ = ug.clu_gradients(
      apply_fn, params, mstate, remain=rb, saliency_mask=mask, **{kind: tb}
    )
    if kind == "learn":
      g = ug.combine(comps, a_learn=a_t, a_remain=a_r, a_unlearn=0.0)
    else:
      g = ug.combine(comps, a_learn=0.0, a_remain=a_r, a_unlearn=a_t)
      # The saliency component is active: it differs from the unmasked sum.
      self.assertGreater(float(optax.tree.norm(comps.saliency)), 0.0)
    expected = jax.tree.map(lambda p, gi: p - lr * gi, params, g)
    np.testing.assert_allclose(_flat(new.params.fast), _flat(expected), rtol=1e-5, atol=1e-6)
    self.assertEqual(int(new.iteration), 1)

  def test_components_by_definition(self):
    apply_fn, params, mstate, batch = _problem()
    mask = _random_mask(params)
    comps, losses, _ = ug.clu_gradients(
      apply_fn,
      params,
      mstate,
      learn=batch(1),
      unlearn=batch(2),
      remain=batch(3),
      saliency_mask=mask,
      unlearn_temperature=0.0,
    )

    def ce_grad(b):
      return jax.grad(
        lambda p: ug.cross_entropy(logits=apply_fn(p, mstate, b.x, train=True)[0], labels=b.y)
      )(params)

    chex.assert_trees_all_close(comps.learn, ce_grad(batch(1)), rtol=1e-5)
    chex.assert_trees_all_close(comps.preserve, ce_grad(batch(3)), rtol=1e-5)
    # Temperature 0: the unlearn component is plain mean gradient ascent.
    chex.assert_trees_all_close(
      comps.unlearn, jax.tree.map(jnp.negative, ce_grad(batch(2))), rtol=1e-5
    )
    chex.assert_trees_all_close(
      optax.tree.add(comps.unlearn, comps.saliency), ug.apply_mask(comps.unlearn, mask), rtol=1e-6
    )
    self.assertGreater(float(losses.unlearn), 0.0)
    empty, _, _ = ug.clu_gradients(apply_fn, params, mstate)
    self.assertEqual(float(optax.tree.norm(empty)), 0.0)

  def test_fast_slow_cycle_equals_hvp_step_to_second_order(self):
    # theta_f = theta - eta d; theta+ = theta_f - eta grad L_R(theta_f)
    #   = theta - eta [(I - eta H_R) d + grad L_R(theta)] + O(eta^3),
    # so the per-eta directions of the two modes differ by O(eta^2).
    with jax.enable_x64(True):
      apply_fn, params, mstate, batch = _problem(jnp.float64)
      tb, rb = batch(1), batch(2)
      mask = _random_mask(params)

      def gap(eta):
        tx = _plain_sgd(eta)
        hp = ug.RequestHParams.create(
          learning_rate=eta, a_target=1.0, a_remain=1.0, beta=eta, num_iterations=10
        )
        common = dict(kind="unlearn", clip_norm=None, lr_schedule="constant", decay_target=False)
        fs = ug.make_steps(apply_fn, tx, mode="fast_slow", **common)
        ex = ug.make_steps(apply_fn, tx, mode="hvp", **common)
        s, _ = fs.target(ug.init_train_state(params, mstate, tx), tb, mask, hp)
        s, _ = fs.remain(s, rb, hp)
        e, _ = ex.fused(ug.init_train_state(params, mstate, tx), tb, rb, mask, hp)
        p0 = _flat(params)
        # hp.learning_rate is float32: divide by the rounded eta both modes used.
        eta32 = float(np.float32(eta))
        d_fs, d_ex = (_flat(s.params.fast) - p0) / eta32, (_flat(e.params.fast) - p0) / eta32
        return float(jnp.linalg.norm(d_fs - d_ex) / jnp.linalg.norm(d_ex))

      g1, g2 = gap(0.05), gap(0.005)
      self.assertLess(g1, 0.05)
      # Dividing eta by 10 divides the gap by about 100 (second order).
      self.assertGreater(g1 / g2, 60.0)
      self.assertLess(g1 / g2, 160.0)

  def test_hvp_mode_is_none_mode_minus_beta_hd(self):
    apply_fn, params, mstate, batch = _problem()
    tb, rb = batch(1), batch(2)
    lr, beta = 0.1, 0.3
    hp = ug.RequestHParams.create(learning_rate=lr, a_target=1.0, beta=beta, num_iterations=4)
    kw = dict(kind="unlearn", clip_norm=None, lr_schedule="constant", decay_target=False)
    tx = _plain_sgd(lr)
    none, _ = ug.make_steps(apply_fn, tx, mode="none", **kw).fused(
      ug.init_train_state(params, mstate, tx), tb, rb, None, hp
    )
    comp, _ = ug.make_steps(apply_fn, tx, mode="hvp", **kw).fused(
      ug.init_train_state(params, mstate, tx), tb, rb, None, hp
    )
    comps, _, _ = ug.clu_gradients(apply_fn, params, mstate, unlearn=tb)
    loss_r = lambda p: ug.cross_entropy(
      logits=apply_fn(p, mstate, rb.x, train=True)[0], labels=rb.y
    )
    hd = ug.hvp(loss_r, params, comps.unlearn)
    # comp - none = -lr * (-beta * H d) = lr * beta * H d
    np.testing.assert_allclose(
      _flat(comp.params.fast) - _flat(none.params.fast), lr * beta * _flat(hd), rtol=1e-3, atol=1e-6
    )
    ggn, _ = ug.make_steps(apply_fn, tx, mode="hvp", curvature="ggn", **kw).fused(
      ug.init_train_state(params, mstate, tx), tb, rb, None, hp
    )
    self.assertTrue(bool(jnp.all(jnp.isfinite(_flat(ggn.params.fast)))))

  def test_cosine_schedules(self):
    apply_fn, params, mstate, batch = _problem()
    tx = ug.build_optimizer(learning_rate=0.1, momentum=0.0, weight_decay=0.0)
    steps = ug.make_steps(apply_fn, tx, kind="unlearn", clip_norm=None)
    hp = ug.RequestHParams.create(learning_rate=0.1, a_target=25.0, num_iterations=4)
    state = ug.init_train_state(params, mstate, tx)
    seen = []
    for _ in range(4):
      state, m = steps.target(state, batch(1), None, hp)
      seen.append(
        (float(m["a_target"]), float(state.opt_state.fast_state.hyperparams["learning_rate"]))
      )
      state, _ = steps.remain(state, batch(2), hp)
    factors = [(1 + np.cos(np.pi * k / 4)) / 2 for k in range(4)]
    np.testing.assert_allclose([a for a, _ in seen], [25 * f for f in factors], rtol=1e-5)
    # The learning rate written by the target step follows the same cosine.
    np.testing.assert_allclose(
      [lr for _, lr in seen], [0.1 * f for f in factors], rtol=1e-5, atol=1e-8
    )
    learn = ug.make_steps(apply_fn, tx, kind="learn", clip_norm=None)
    _, m = learn.target(ug.init_train_state(params, mstate, tx), batch(1), None, hp)
    self.assertEqual(float(m["a_target"]), 25.0)  # learn: a_L is constant by default

  def test_zero_mask_freezes_target_step_and_clip(self):
    apply_fn, params, mstate, batch = _problem()
    tx = _plain_sgd(0.5)
    steps = ug.make_steps(apply_fn, tx, kind="unlearn", clip_norm=0.01, lr_schedule="constant")
    hp = ug.RequestHParams.create(learning_rate=0.5, a_target=1.0, num_iterations=4)
    zeros = jax.tree.map(jnp.zeros_like, params)
    s, _ = steps.target(ug.init_train_state(params, mstate, tx), batch(1), zeros, hp)
    np.testing.assert_array_equal(_flat(s.params.fast), _flat(params))
    s, m = steps.target(ug.init_train_state(params, mstate, tx), batch(1), None, hp)
    self.assertGreater(float(m["target_grad_norm"]), 0.01)
    moved = float(jnp.linalg.norm(_flat(s.params.fast) - _flat(params)))
    np.testing.assert_allclose(moved, 0.5 * 0.01, rtol=1e-3)

  @parameterized.parameters("fast_slow", "none")
  def test_remain_clip_bounds_the_remain_step(self, mode):
    apply_fn, params, mstate, batch = _problem()
    tx = _plain_sgd(0.5)
    hp = ug.RequestHParams.create(learning_rate=0.5, a_target=1.0, num_iterations=4)
    steps = ug.make_steps(
      apply_fn,
      tx,
      kind="learn",
      mode=mode,
      clip_norm=None,
      lr_schedule="constant",
      remain_clip_norm=0.01,
    )
    s, m = steps.remain(ug.init_train_state(params, mstate, tx), batch(2), hp)
    self.assertGreater(float(m["remain_grad_norm"]), 0.01)  # The norm before the clip.
    moved = float(jnp.linalg.norm(_flat(s.params.fast) - _flat(params)))
    np.testing.assert_allclose(moved, 0.5 * 0.01, rtol=1e-3)
    if mode == "none":  # The fused step clips the remain part, not the target part.
      zeros = jax.tree.map(jnp.zeros_like, params)
      s, _ = steps.fused(ug.init_train_state(params, mstate, tx), batch(1), batch(2), zeros, hp)
      moved = float(jnp.linalg.norm(_flat(s.params.fast) - _flat(params)))
      np.testing.assert_allclose(moved, 0.5 * 0.01, rtol=1e-3)

  def test_no_recompilation_across_steps_and_requests(self):
    apply_fn, params, mstate, batch = _problem()
    tx = ug.build_optimizer(learning_rate=0.1)
    mask = _random_mask(params)
    for mode in ug.steps.MODES:
      steps = ug.make_steps(apply_fn, tx, kind="unlearn", mode=mode)
      for request in range(2):  # a fresh optimizer state and new numbers per request
        hp = ug.RequestHParams.create(
          learning_rate=0.1 / (request + 1),
          a_target=25.0 + request,
          num_iterations=5 + request,
          beta=0.01 * (request + 1),
        )
        state = ug.init_train_state(params, mstate, tx)
        for k in range(3):
          state, _ = steps.target(state, batch(k), mask, hp)
          state, _ = steps.remain(state, batch(10 + k), hp)
          state, _ = steps.fused(state, batch(20 + k), batch(30 + k), mask, hp)
      for fn in steps:
        self.assertEqual(fn._cache_size(), 1, mode)

  def test_state_is_donated(self):
    apply_fn, params, mstate, batch = _problem()
    tx = ug.build_optimizer(learning_rate=0.1)
    steps = ug.make_steps(apply_fn, tx, kind="learn")
    hp = ug.RequestHParams.create(learning_rate=0.1, a_target=1.0, num_iterations=5)
    state = ug.init_train_state(params, mstate, tx)
    new, _ = steps.remain(state, batch(0), hp)
    if jax.default_backend() != "cpu" or jax.tree.leaves(state.params)[0].is_deleted():
      self.assertTrue(jax.tree.leaves(state.params)[0].is_deleted())
    self.assertFalse(jax.tree.leaves(new.params)[0].is_deleted())

  def test_bad_inputs(self):
    apply_fn, params, mstate, batch = _problem()
    tx = ug.build_optimizer(learning_rate=0.1)
    with self.assertRaisesRegex(ValueError, "kind"):
      ug.make_steps(apply_fn, tx, kind="forget")
    with self.assertRaisesRegex(ValueError, "mode"):
      ug.make_steps(apply_fn, tx, kind="learn", mode="newton")
    with self.assertRaisesRegex(ValueError, "num_iterations"):
      ug.RequestHParams.create(learning_rate=0.1, a_target=1.0, num_iterations=0)
    steps = ug.make_steps(apply_fn, tx, kind="learn")
    hp = ug.RequestHParams.create(learning_rate=0.1, a_target=1.0, num_iterations=5)
    b = batch(0)
    with self.assertRaisesRegex(ValueError, "disagree on the batch size"):
      steps.remain(ug.init_train_state(params, mstate, tx), b._replace(y=b.y[:3]), hp)
