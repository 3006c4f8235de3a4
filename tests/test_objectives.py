"""Losses and adaptive weights against hand-computed values."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

import ugclu_jax as ug

LOGITS = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5], [-1.0, 3.0, 0.0]])
LABELS = jnp.array([0, 2, 1])


def _hand_ce():
  z = np.asarray(LOGITS, np.float64)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return -logp[np.arange(3), np.asarray(LABELS)]


class ObjectivesTest(chex.TestCase, parameterized.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_cross_entropy_reductions(self):
    ce = _hand_ce()
    mask = jnp.array([1.0, 0.0, 1.0])
    f = self.variant(
      lambda r, m: ug.cross_entropy(logits=LOGITS, labels=LABELS, mask=m, reduction=r),
      static_argnums=0,
    )
    np.testing.assert_allclose(f("none", None), ce, rtol=1e-6)
    np.testing.assert_allclose(f("sum", None), ce.sum(), rtol=1e-6)
    np.testing.assert_allclose(f("mean", mask), (ce[0] + ce[2]) / 2, rtol=1e-6)
    np.testing.assert_allclose(f("none", mask), ce * np.array([1, 0, 1]), rtol=1e-6)

  def test_kl_to_one_hot_reference_is_cross_entropy(self):
    onehot = jax.nn.one_hot(LABELS, 3)
    np.testing.assert_allclose(
      ug.kl_to_reference(logits=LOGITS, reference_probs=onehot, reduction="none"),
      _hand_ce(),
      rtol=1e-6,
    )

  def test_kl_to_itself_is_zero_and_hand_value(self):
    p = jax.nn.softmax(LOGITS)
    np.testing.assert_allclose(
      ug.kl_to_reference(logits=LOGITS, reference_probs=p, reduction="none"), 0, atol=1e-6
    )
    ref = jnp.array([[0.5, 0.5, 0.0]])
    logits = jnp.log(jnp.array([[0.25, 0.25, 0.5]]))
    # KL = 0.5 log(0.5/0.25) * 2 = log 2
    np.testing.assert_allclose(
      ug.kl_to_reference(logits=logits, reference_probs=ref), np.log(2.0), rtol=1e-6
    )

  def test_bad_inputs(self):
    with self.assertRaisesRegex(ValueError, "reduction"):
      ug.cross_entropy(logits=LOGITS, labels=LABELS, reduction="avg")
    with self.assertRaisesRegex(ValueError, "labels must have shape"):
      ug.cross_entropy(logits=LOGITS, labels=LABELS[:2])
    with self.assertRaisesRegex(ValueError, "integers"):
      ug.cross_entropy(logits=LOGITS, labels=LABELS.astype(jnp.float32))
    with self.assertRaisesRegex(ValueError, r"\[batch, classes\]"):
      ug.cross_entropy(logits=LOGITS[0], labels=LABELS)

  @chex.variants(with_jit=True, without_jit=True)
  def test_adaptive_weights_hand_values(self):
    # c = 1/sqrt(l): l = [1, 4] -> c = [1, 0.5] -> w = [2/3, 1/3].
    w = self.variant(lambda l: ug.adaptive_weights(l, temperature=0.5))(jnp.array([1.0, 4.0]))
    np.testing.assert_allclose(w, [2 / 3, 1 / 3], rtol=1e-6)

  @parameterized.parameters(0.0, 0.5, 1.0, 2.0, -0.5)
  def test_adaptive_weights_sum_to_one(self, temperature):
    losses = jax.random.uniform(jax.random.key(1), (17,), minval=0.01, maxval=5.0)
    w = ug.adaptive_weights(losses, temperature=temperature)
    np.testing.assert_allclose(jnp.sum(w), 1.0, rtol=1e-5)
    self.assertTrue(bool(jnp.all(w >= 0)))

  def test_adaptive_weights_uniform_at_zero_temperature(self):
    losses = jnp.array([0.0, 0.1, 3.0, 100.0])
    np.testing.assert_allclose(ug.adaptive_weights(losses, temperature=0.0), 0.25, rtol=1e-6)

  def test_adaptive_weights_fall_with_loss(self):
    losses = jnp.linspace(0.01, 10.0, 20)
    w = ug.adaptive_weights(losses, temperature=0.5)
    self.assertTrue(bool(jnp.all(jnp.diff(w) < 0)))
    # The learn-side option (negative temperature) rises with the loss.
    self.assertTrue(bool(jnp.all(jnp.diff(ug.adaptive_weights(losses, temperature=-0.5)) > 0)))

  def test_adaptive_weights_zero_loss_dominates(self):
    w = ug.adaptive_weights(jnp.array([0.0, 1.0]), temperature=0.5)
    np.testing.assert_allclose(w, [1.0, 0.0], atol=1e-9)
    self.assertTrue(bool(jnp.all(jnp.isfinite(w))))

  def test_adaptive_weights_pass_no_gradient(self):
    g = jax.grad(lambda l: jnp.sum(ug.adaptive_weights(l, temperature=0.5) * 3.0))(
      jnp.array([0.5, 1.0, 2.0])
    )
    np.testing.assert_array_equal(g, 0.0)

  def test_adaptive_weights_mask(self):
    w = ug.adaptive_weights(
      jnp.array([1.0, 4.0, 0.01]), temperature=0.5, mask=jnp.array([1.0, 1.0, 0.0])
    )
    np.testing.assert_allclose(w, [2 / 3, 1 / 3, 0.0], rtol=1e-6)

  def test_unlearn_loss_is_weighted_ascent(self):
    ce = _hand_ce()
    c = 1 / np.sqrt(ce)
    w = c / c.sum()
    value = ug.unlearn_loss(logits=LOGITS, labels=LABELS, temperature=0.5)
    np.testing.assert_allclose(value, -(w * ce).sum(), rtol=1e-6)
    # Its gradient is -sum_i w_i grad l_i with w held fixed.
    g = jax.grad(lambda z: ug.unlearn_loss(logits=z, labels=LABELS, temperature=0.5))(LOGITS)
    g_ce = jax.jacrev(lambda z: ug.cross_entropy(logits=z, labels=LABELS, reduction="none"))(LOGITS)
    np.testing.assert_allclose(
      g, -jnp.einsum("i,ijk->jk", jnp.asarray(w, jnp.float32), g_ce), rtol=1e-5, atol=1e-7
    )

  def test_bounded_ascent_stops_pushing_forgotten_samples(self):
    ce = _hand_ce()
    bound = float(np.median(ce))
    below = ce < bound
    self.assertTrue(below.any() and (~below).any())
    c = 1 / np.sqrt(ce) * below
    w = c / c.sum()  # Normalised over the samples still pushed.
    value = ug.unlearn_loss(logits=LOGITS, labels=LABELS, temperature=0.5, max_loss=bound)
    np.testing.assert_allclose(value, -(w * ce).sum(), rtol=1e-6)
    g = jax.grad(
      lambda z: ug.unlearn_loss(logits=z, labels=LABELS, temperature=0.5, max_loss=bound)
    )(LOGITS)
    np.testing.assert_array_equal(np.asarray(g)[~below], 0.0)
    self.assertTrue(np.all(np.abs(np.asarray(g)[below]).sum(-1) > 0))
    # Every sample past the bound: no push at all.
    g = jax.grad(lambda z: ug.unlearn_loss(logits=z, labels=LABELS, max_loss=0.0))(LOGITS)
    np.testing.assert_array_equal(g, 0.0)
    # A sample past log C is misclassified: p_y < 1/C leaves another class above it.
    z = jnp.array([[0.0, 2.0, 0.5], [3.0, 0.0, 0.0]])
    lo = ug.cross_entropy(logits=z, labels=jnp.array([0, 0]), reduction="none")
    self.assertGreater(float(lo[0]), np.log(3))
    self.assertNotEqual(int(jnp.argmax(z[0])), 0)

  def test_learn_and_preserve_default_to_mean_ce(self):
    ce = _hand_ce()
    np.testing.assert_allclose(ug.learn_loss(logits=LOGITS, labels=LABELS), ce.mean(), rtol=1e-6)
    np.testing.assert_allclose(ug.preserve_loss(logits=LOGITS, labels=LABELS), ce.mean(), rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_distillation_loss_hand_values(self):
    s = jnp.array([[1.0, 0.0, -1.0], [0.0, 0.0, 3.0]])
    t = jnp.array([[0.0, 2.0, 0.0], [1.0, -1.0, 0.0]])

    def kl(student, teacher, temperature):
      p = np.exp(np.asarray(teacher, np.float64) / temperature)
      q = np.exp(np.asarray(student, np.float64) / temperature)
      p, q = p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)
      return np.sum(p * np.log(p / q), -1)

    f = self.variant(
      lambda s, t, m, c: ug.distillation_loss(
        logits=s, teacher_logits=t, temperature=2.0, mask=m, classes=c
      )
    )
    per_row = kl(s, t, 2.0)
    np.testing.assert_allclose(f(s, t, None, None), per_row.mean(), rtol=1e-5)
    # Row 0 alone by hand: p = softmax([0, 1, 0]), q = softmax([0.5, 0, -0.5]).
    p = np.exp([0.0, 1.0, 0.0]) / np.exp([0.0, 1.0, 0.0]).sum()
    q = np.exp([0.5, 0.0, -0.5]) / np.exp([0.5, 0.0, -0.5]).sum()
    np.testing.assert_allclose(
      f(s, t, jnp.array([1.0, 0.0]), None), np.sum(p * np.log(p / q)), rtol=1e-5
    )
    # Restricted to classes 0 and 2: both softmaxes over those two only.
    classes = jnp.array([1.0, 0.0, 1.0])
    np.testing.assert_allclose(
      f(s, t, None, classes), kl(s[:, [0, 2]], t[:, [0, 2]], 2.0).mean(), rtol=1e-5
    )
    p2, q2 = np.array([0.5, 0.5]), np.exp([0.5, -0.5]) / np.exp([0.5, -0.5]).sum()
    np.testing.assert_allclose(
      f(s, t, jnp.array([1.0, 0.0]), classes), np.sum(p2 * np.log(p2 / q2)), rtol=1e-5
    )

  def test_distillation_loss_zero_at_teacher_and_no_teacher_gradient(self):
    s = jnp.array([[1.0, 0.0, -1.0]])
    t = jnp.array([[0.0, 2.0, 0.0]])
    # Zero when the student is the teacher (float32 rounding of the two log-softmaxes).
    self.assertLess(
      abs(float(ug.distillation_loss(logits=t, teacher_logits=t, temperature=4.0))), 1e-6
    )
    g = jax.grad(lambda z: ug.distillation_loss(logits=s, teacher_logits=z, temperature=2.0))(t)
    np.testing.assert_array_equal(g, 0.0)
    # The student's gradient is (q - p) / (T |B|).
    g = jax.grad(lambda z: ug.distillation_loss(logits=z, teacher_logits=t, temperature=2.0))(s)
    p, q = jax.nn.softmax(t / 2.0), jax.nn.softmax(s / 2.0)
    np.testing.assert_allclose(g, (q - p) / 2.0, rtol=1e-5, atol=1e-7)

  @chex.variants(with_jit=True, without_jit=True)
  def test_ewc_penalty_hand_check(self):
    params = {"w": jnp.array([1.0, 2.0, -1.0]), "b": jnp.array([[0.5]])}
    anchor = {"w": jnp.array([0.0, 2.0, 1.0]), "b": jnp.array([[1.5]])}
    fisher = {"w": jnp.array([2.0, 3.0, 0.5]), "b": jnp.array([[4.0]])}
    penalty = self.variant(ug.ewc_penalty)
    # 1/2 (2 * 1 + 3 * 0 + 0.5 * 4 + 4 * 1) = 4.
    np.testing.assert_allclose(penalty(params, anchor, fisher), 4.0, rtol=1e-6)
    self.assertEqual(float(penalty(anchor, anchor, fisher)), 0.0)
    self.assertEqual(penalty(params, anchor, fisher).dtype, jnp.float32)
    grad = jax.grad(ug.ewc_penalty)(params, anchor, fisher)
    np.testing.assert_allclose(grad["w"], [2.0, 0.0, -1.0], rtol=1e-6)  # F (theta - theta*)
    np.testing.assert_allclose(grad["b"], [[-4.0]], rtol=1e-6)
    zero = jax.grad(ug.ewc_penalty)(anchor, anchor, fisher)
    self.assertTrue(all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(zero)))
    # A zero Fisher: no penalty however far from the anchor.
    self.assertEqual(
      float(ug.ewc_penalty(params, anchor, jax.tree.map(jnp.zeros_like, fisher))), 0.0
    )
