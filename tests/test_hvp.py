"""HVP, GGN-vector product and compensation against dense references."""

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
from ugclu_jax.models import MLP, SmallCNN, as_functional


def _data(key, shape, n=6, classes=3, dtype=jnp.float32):
  kx, ky = jax.random.split(key)
  return (jax.random.normal(kx, (n, *shape), dtype), jax.random.randint(ky, (n,), 0, classes))


def _mlp_problem(dtype):
  model = MLP(
    in_features=6, num_classes=3, hidden=(5,), rngs=nnx.Rngs(0), param_dtype=dtype, dtype=dtype
  )
  apply_fn, params, state = as_functional(model)
  x, y = _data(jax.random.key(1), (3, 2, 1), dtype=dtype)

  def logits_fn(p):
    return apply_fn(p, state, x, train=True)[0]

  def loss_fn(p):
    return ug.cross_entropy(logits=logits_fn(p), labels=y)

  v = jax.tree.map(
    lambda p, k: jax.random.normal(k, p.shape, dtype), params, _keys_like(params, jax.random.key(2))
  )
  return loss_fn, logits_fn, params, v


def _keys_like(tree, key):
  leaves, treedef = jax.tree.flatten(tree)
  return jax.tree.unflatten(treedef, list(jax.random.split(key, len(leaves))))


def _rel_err(a, b):
  a, b = ravel_pytree(a)[0], ravel_pytree(b)[0]
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


class HvpTest(chex.TestCase, parameterized.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_hvp_equals_dense_hessian_float64(self):
    with jax.enable_x64(True):
      loss_fn, _, params, v = _mlp_problem(jnp.float64)
      hv = self.variant(functools.partial(ug.hvp, loss_fn))(params, v)
      chex.assert_trees_all_equal_shapes_and_dtypes(hv, params)
      flat, unravel = ravel_pytree(params)
      dense = jax.hessian(lambda f: loss_fn(unravel(f)))(flat)
      expected = unravel(dense @ ravel_pytree(v)[0])
      self.assertLess(_rel_err(hv, expected), 1e-8)

  def test_hvp_matches_finite_differences_on_cnn(self):
    with jax.enable_x64(True):
      model = SmallCNN(
        num_classes=4,
        input_size=(8, 8),
        rngs=nnx.Rngs(0),
        param_dtype=jnp.float64,
        dtype=jnp.float64,
      )
      apply_fn, params, state = as_functional(model)
      x, y = _data(jax.random.key(3), (8, 8, 1), n=4, classes=4, dtype=jnp.float64)

      def loss_fn(p):
        return ug.cross_entropy(logits=apply_fn(p, state, x, train=True)[0], labels=y)

      v = jax.tree.map(
        lambda p, k: jax.random.normal(k, p.shape, p.dtype),
        params,
        _keys_like(params, jax.random.key(4)),
      )
      # A unit direction and a small step: the perturbation must not cross ReLU kinks.
      norm = optax.tree.norm(v)
      v = jax.tree.map(lambda t: t / norm, v)
      hv = jax.jit(functools.partial(ug.hvp, loss_fn))(params, v)
      eps = 1e-6
      g = jax.jit(jax.grad(loss_fn))
      fd = jax.tree.map(
        lambda a, b: (a - b) / (2 * eps),
        g(optax_add(params, v, eps)),
        g(optax_add(params, v, -eps)),
      )
      self.assertLess(_rel_err(hv, fd), 1e-5)

  def test_ggn_vp_equals_dense_jt_h_j(self):
    with jax.enable_x64(True):
      _, logits_fn, params, v = _mlp_problem(jnp.float64)
      gv = ug.ggn_vp(logits_fn, params, v)
      flat, unravel = ravel_pytree(params)
      jac = jax.jacrev(lambda f: logits_fn(unravel(f)))(flat)  # [B, C, P]
      p = jax.nn.softmax(logits_fn(params))
      h_out = jax.vmap(lambda q: jnp.diag(q) - jnp.outer(q, q))(p)  # [B, C, C]
      b = p.shape[0]
      dense = jnp.einsum("bcp,bcd,bdq->pq", jac, h_out, jac) / b
      expected = unravel(dense @ ravel_pytree(v)[0])
      self.assertLess(_rel_err(gv, expected), 1e-10)
      # Positive semi-definite: v^T G v >= 0.
      self.assertGreaterEqual(float(ravel_pytree(v)[0] @ ravel_pytree(gv)[0]), 0.0)

  def test_ggn_vp_weights(self):
    with jax.enable_x64(True):
      _, logits_fn, params, v = _mlp_problem(jnp.float64)
      w = jnp.array([1.0, 1.0, 0.0, 0.0, 0.0, 0.0]) / 2
      gv = ug.ggn_vp(logits_fn, params, v, weights=w)
      # Equal to the unweighted product over the first two examples alone.
      _, logits_fn2, _, _ = _mlp_problem(jnp.float64)
      first_two = lambda p: logits_fn2(p)[:2]
      self.assertLess(_rel_err(gv, ug.ggn_vp(first_two, params, v)), 1e-10)

  def test_direction_must_match_params(self):
    loss_fn, logits_fn, params, v = _mlp_problem(jnp.float32)
    leaves, treedef = jax.tree.flatten(v)
    with self.assertRaisesRegex(ValueError, "tree structure"):
      ug.hvp(loss_fn, params, {"other": leaves[0]})
    bad = jax.tree.unflatten(treedef, [leaves[0][..., :1]] + leaves[1:])
    with self.assertRaisesRegex(ValueError, "shape"):
      ug.hvp(loss_fn, params, bad)
    with self.assertRaisesRegex(ValueError, "shape"):
      ug.ggn_vp(logits_fn, params, bad)


def optax_add(tree, v, scale):
  return jax.tree.map(lambda a, b: a + scale * b, tree, v)


class CompensateTest(chex.TestCase, parameterized.TestCase):
  def _quadratic(self, n=6, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    eig = np.linspace(0.5, 4.0, n)
    a = (q * eig) @ q.T
    d = rng.normal(size=n)
    return jnp.asarray(a), {"x": jnp.asarray(d)}

  @chex.variants(with_jit=True, without_jit=True)
  def test_order_one_is_d_minus_beta_hd(self):
    with jax.enable_x64(True):
      a, d = self._quadratic()
      hvp_fn = lambda v: {"x": a @ v["x"]}
      out = self.variant(lambda d, beta: ug.compensate(d, hvp_fn, beta=beta))(d, 0.3)
      np.testing.assert_allclose(out["x"], d["x"] - 0.3 * a @ d["x"], rtol=1e-12)
      damped = ug.compensate(d, hvp_fn, beta=0.3, damping=0.1)
      np.testing.assert_allclose(
        damped["x"], d["x"] - 0.3 * (a @ d["x"] + 0.1 * d["x"]), rtol=1e-12
      )

  def test_order_one_through_real_hvp(self):
    with jax.enable_x64(True):
      loss_fn, _, params, v = _mlp_problem(jnp.float64)
      hvp_fn = functools.partial(ug.hvp, loss_fn, params)
      out = ug.compensate(v, hvp_fn, beta=0.05)
      expected = jax.tree.map(lambda d, h: d - 0.05 * h, v, hvp_fn(v))
      self.assertLess(_rel_err(out, expected), 1e-12)

  def test_neumann_converges_to_damped_inverse(self):
    with jax.enable_x64(True):
      a, d = self._quadratic()
      delta = 0.1
      hvp_fn = lambda v: {"x": a @ v["x"]}
      target = np.linalg.solve(np.asarray(a) + delta * np.eye(6), np.asarray(d["x"]))
      errors = []
      for order in (2, 10, 50, 400):
        out = jax.jit(lambda d: ug.compensate(d, hvp_fn, beta=0.2, order=order, damping=delta))(d)
        errors.append(np.linalg.norm(out["x"] - target) / np.linalg.norm(target))
      self.assertTrue(all(e1 > e2 for e1, e2 in zip(errors, errors[1:])), errors)
      self.assertLess(errors[-1], 1e-10)

  def test_neumann_two_terms_by_hand(self):
    with jax.enable_x64(True):
      a, d = self._quadratic()
      hvp_fn = lambda v: {"x": a @ v["x"]}
      b = 0.1
      m = np.eye(6) - b * np.asarray(a)
      dd = np.asarray(d["x"])
      expected = b * (dd + m @ dd + m @ m @ dd)
      np.testing.assert_allclose(
        ug.compensate(d, hvp_fn, beta=b, order=2)["x"], expected, rtol=1e-12
      )

  def test_keeps_dtype(self):
    d = {"x": jnp.ones(3, jnp.bfloat16)}
    out = ug.compensate(d, lambda v: jax.tree.map(lambda t: 2 * t, v), beta=0.1, order=3)
    self.assertEqual(out["x"].dtype, jnp.bfloat16)

  def test_bad_order(self):
    with self.assertRaisesRegex(ValueError, "order"):
      ug.compensate({"x": jnp.ones(2)}, lambda v: v, beta=0.1, order=0)
