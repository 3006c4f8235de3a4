"""Fisher diagonal, the balanced saliency mask and SalUn's top-fraction mask."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

import ugclu_jax as ug


def _linear_loss(params, batch):
  x, y = batch
  pred = x @ params["w"] + params["b"]
  return jnp.mean((pred - y) ** 2)


class SaliencyTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_fisher_diagonal_matches_hand_computation(self):
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(3, 4, 2)).astype(np.float32)  # 3 batches of 4 examples
    ys = rng.normal(size=(3, 4)).astype(np.float32)
    params = {"w": jnp.array([0.5, -1.0]), "b": jnp.array(0.25)}
    fisher = self.variant(lambda p, b: ug.fisher_diagonal(_linear_loss, p, b))(
      params, (jnp.asarray(xs), jnp.asarray(ys))
    )
    # d/dw mean((xw + b - y)^2) = 2 mean(r x), d/db = 2 mean(r); squared, averaged over batches.
    w, b = np.array([0.5, -1.0]), 0.25
    gw, gb = [], []
    for x, y in zip(xs, ys):
      r = x @ w + b - y
      gw.append((2 * (r[:, None] * x).mean(0)) ** 2)
      gb.append((2 * r.mean()) ** 2)
    np.testing.assert_allclose(fisher["w"], np.mean(gw, 0), rtol=1e-5)
    np.testing.assert_allclose(fisher["b"], np.mean(gb), rtol=1e-5)

  def test_fisher_needs_batches(self):
    with self.assertRaisesRegex(ValueError, "at least one batch"):
      ug.fisher_diagonal(
        _linear_loss,
        {"w": jnp.ones(2), "b": jnp.zeros(())},
        (jnp.zeros((0, 4, 2)), jnp.zeros((0, 4))),
      )

  @chex.variants(with_jit=True, without_jit=True)
  def test_mask_thresholds(self):
    ft = {"a": jnp.array([2.0, 1.0, 0.5, 0.0, 3.0])}
    fr = {"a": jnp.array([1.0, 1.0, 1.0, 0.0, 1.0])}
    f = self.variant(lambda t, r, g: ug.balanced_saliency_mask(t, r, threshold=g))
    # ratio (ft+eps)/(fr+eps) = [2, 1, 0.5, 1 (0/0 guarded by eps), 3]; >= is inclusive.
    np.testing.assert_array_equal(f(ft, fr, 1.0)["a"], [1, 1, 0, 1, 1])
    np.testing.assert_array_equal(f(ft, fr, 2.0)["a"], [1, 0, 0, 0, 1])
    np.testing.assert_array_equal(f(ft, fr, 0.0)["a"], [1, 1, 1, 1, 1])
    np.testing.assert_array_equal(f(ft, fr, 10.0)["a"], [0, 0, 0, 0, 0])
    self.assertEqual(f(ft, fr, 1.0)["a"].dtype, jnp.float32)

  def test_mask_zero_remain_fisher_is_salient(self):
    m = ug.balanced_saliency_mask({"a": jnp.array([1e-6])}, {"a": jnp.array([0.0])})
    np.testing.assert_array_equal(m["a"], [1.0])

  def test_mask_structure_mismatch(self):
    with self.assertRaisesRegex(ValueError, "same tree structure"):
      ug.balanced_saliency_mask({"a": jnp.ones(2)}, {"b": jnp.ones(2)})

  def test_density_and_apply(self):
    mask = {"a": jnp.array([1.0, 0.0, 1.0, 1.0]), "b": jnp.zeros((2, 2))}
    np.testing.assert_allclose(ug.mask_density(mask), 3 / 8)
    tree = {"a": jnp.arange(4.0, dtype=jnp.bfloat16), "b": jnp.ones((2, 2), jnp.bfloat16)}
    out = ug.apply_mask(tree, mask)
    chex.assert_trees_all_equal_dtypes(out, tree)
    np.testing.assert_array_equal(np.asarray(out["a"], np.float32), [0, 0, 2, 3])
    np.testing.assert_array_equal(np.asarray(out["b"], np.float32), 0)
    self.assertIs(ug.apply_mask(tree, None), tree)

  @chex.variants(with_jit=True, without_jit=True)
  def test_top_fraction_mask_keeps_exactly_the_top_fraction(self):
    rng = np.random.default_rng(0)
    scores = {
      "a": jnp.asarray(rng.permutation(60).reshape(6, 10), jnp.float32),
      "b": jnp.asarray(60 + rng.permutation(37), jnp.float32),
    }
    n = 97
    top = self.variant(ug.top_fraction_mask, static_argnums=1)
    for fraction in (0.0, 0.2, 0.5, 1.0):
      mask = top(scores, fraction)
      chex.assert_trees_all_equal_shapes(mask, scores)
      kept = np.concatenate([np.ravel(mask["a"]), np.ravel(mask["b"])])
      values = np.concatenate([np.ravel(scores["a"]), np.ravel(scores["b"])])
      k = int(n * fraction)
      self.assertTrue(set(np.unique(kept)) <= {0.0, 1.0})
      self.assertEqual(kept.sum(), k)
      # The kept entries are the k largest: values 97 - k .. 96.
      np.testing.assert_array_equal(np.sort(values[kept == 1]), np.arange(n - k, n))

  def test_top_fraction_mask_edges(self):
    scores = {"a": jnp.array([[3.0, -1.0], [0.0, 2.0]]), "b": jnp.array([5], jnp.int32)}
    none, every = ug.top_fraction_mask(scores, 0.0), ug.top_fraction_mask(scores, 1.0)
    for leaf in jax.tree.leaves(none):
      np.testing.assert_array_equal(leaf, 0.0)
    for leaf in jax.tree.leaves(every):
      np.testing.assert_array_equal(leaf, 1.0)
    self.assertTrue(all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(every)))
    # k = floor(fraction * n): 0.39 of 5 keeps one entry (the 5 of leaf "b").
    np.testing.assert_array_equal(ug.top_fraction_mask(scores, 0.39)["b"], [1.0])
    for bad in (-0.1, 1.5):
      with self.assertRaisesRegex(ValueError, r"fraction must be in \[0, 1\]"):
        ug.top_fraction_mask(scores, bad)

  def test_top_fraction_mask_ties_go_to_the_earlier_entry(self):
    np.testing.assert_array_equal(
      ug.top_fraction_mask({"a": jnp.ones((10,))}, 0.3)["a"], [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    )
    # Across leaves, in leaf order ("a" before "b"); larger scores first.
    tied = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([2.0, 2.0, 1.0])}
    mask = ug.top_fraction_mask(tied, 0.4)
    np.testing.assert_array_equal(mask["a"], [0, 1])
    np.testing.assert_array_equal(mask["b"], [1, 0, 0])
    mask = ug.top_fraction_mask(tied, 0.8)
    np.testing.assert_array_equal(mask["a"], [1, 1])
    np.testing.assert_array_equal(mask["b"], [1, 1, 0])


def test_random_mask_like_keeps_each_leafs_count_at_random_positions():
  rng = np.random.default_rng(0)
  mask = {
    "a": jnp.asarray(rng.random((30, 20)) < 0.3, jnp.float32),
    "b": jnp.zeros((7,), jnp.float32),
    "c": jnp.ones((3, 3), jnp.float32),
  }
  out = jax.jit(ug.random_mask_like)(mask, jax.random.key(1))
  for name in mask:
    assert out[name].shape == mask[name].shape and out[name].dtype == jnp.float32
    assert set(np.unique(out[name])) <= {0.0, 1.0}
    assert float(out[name].sum()) == float(mask[name].sum())
  assert not np.array_equal(out["a"], mask["a"])  # Other positions, same count (181 of 600).
  np.testing.assert_array_equal(ug.random_mask_like(mask, jax.random.key(1))["a"], out["a"])
  assert not np.array_equal(ug.random_mask_like(mask, jax.random.key(2))["a"], out["a"])
