"""Tests for ugclu_jax.mia: features, and the attack on an overfit model (scikit-learn digits)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn import datasets

from ugclu_jax import mia

_BATCH = 256


def _mlp_apply(params, x):
  hidden = jax.nn.relu(x @ params["w1"] + params["b1"][None, :])
  return hidden @ params["w2"] + params["b2"][None, :]


def _padded_batches(x, y):
  """Fixed-shape batches of _BATCH rows, the last one padded (mask 0)."""
  for i in range(0, x.shape[0], _BATCH):
    xb, yb = x[i : i + _BATCH], y[i : i + _BATCH]
    pad = _BATCH - xb.shape[0]
    mask = np.concatenate([np.ones(xb.shape[0]), np.zeros(pad)]).astype(np.float32)
    yield np.pad(xb, ((0, pad), (0, 0))), np.pad(yb, (0, pad)), mask


@pytest.fixture(scope="module")
def digits_features():
  """An MLP overfit on half of a digits training split, and the features of members / unseen data.

  The digits are shuffled; the first 600 are the members (the model trains on them to 100 %
  train accuracy), the remaining 1197 are never seen.
  """
  data = datasets.load_digits()
  perm = np.random.default_rng(0).permutation(data.target.shape[0])
  x = (data.data[perm] / 16.0).astype(np.float32)
  y = data.target[perm].astype(np.int32)
  n_members = 600
  x_mem, y_mem = x[:n_members], y[:n_members]

  k1, k2 = jax.random.split(jax.random.key(0))
  params = {
    "w1": jax.random.normal(k1, (64, 256)) / 8,
    "b1": jnp.zeros(256),
    "w2": jax.random.normal(k2, (256, 10)) / 16,
    "b2": jnp.zeros(10),
  }
  opt = optax.adam(1e-2)

  def loss(p):
    logits = _mlp_apply(p, x_mem)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y_mem).mean()

  @jax.jit
  def train(p):
    def body(carry, _):
      p, s = carry
      u, s = opt.update(jax.grad(loss)(p), s, p)
      return (optax.apply_updates(p, u), s), None

    (p, _), _ = jax.lax.scan(body, (p, opt.init(p)), None, length=300)
    return p

  params = train(params)
  train_acc = float(jnp.mean(jnp.argmax(_mlp_apply(params, x_mem), -1) == y_mem))
  assert train_acc == 1.0  # The premise of the test: the model has memorised its members.

  feats = jax.jit(
    lambda xb, yb, mb: mia.mia_features(logits=_mlp_apply(params, xb), labels=yb, mask=mb)
  )
  members = mia.collect_features(feats(*b) for b in _padded_batches(x_mem, y_mem))
  unseen = mia.collect_features(feats(*b) for b in _padded_batches(x[n_members:], y[n_members:]))
  assert members.entropy.shape == (600,) and unseen.entropy.shape == (1197,)
  return members, unseen


def _take(f, sl):
  return mia.MIAFeatures(*(a[sl] for a in f))


def test_mia_features_hand_values_and_padding():
  logits = jnp.array([[0.0, 0.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
  labels = jnp.array([2, 0, 1])
  mask = jnp.array([1.0, 1.0, 0.0])
  f = jax.jit(lambda l, y, m: mia.mia_features(logits=l, labels=y, mask=m))(logits, labels, mask)
  np.testing.assert_allclose(f.entropy[0], math.log(4), rtol=1e-6)  # Uniform: log C.
  np.testing.assert_allclose(f.confidence[:2], [0.25, math.exp(5) / (math.exp(5) + 3)], rtol=1e-6)
  z = math.exp(5) + 3  # Row 1: H = log Z - 5 p_0.
  np.testing.assert_allclose(f.entropy[1], math.log(z) - 5 * math.exp(5) / z, rtol=1e-5)
  np.testing.assert_array_equal([f.entropy[2], f.confidence[2], f.mask[2]], [0.0, 0.0, 0.0])
  got = mia.collect_features([f, f])
  assert got.entropy.shape == (4,)
  np.testing.assert_array_equal(got.mask, np.ones(4))
  np.testing.assert_allclose(got.confidence[2], 0.25, rtol=1e-6)
  assert mia.collect_features([]).entropy.shape == (0,)
  with pytest.raises(ValueError, match="mask must be"):
    mia.mia_features(logits=logits, labels=labels, mask=jnp.ones(2))


@pytest.mark.parametrize("variant", mia.MIA_VARIANTS)
def test_separable_features_give_exact_shares(variant):
  # Members sit at one feature value, non-members at another: the attack is exact.
  member_value, non_member_value = (0.0, 1.0) if variant == "entropy_logreg" else (1.0, 0.2)
  rem = np.full(50, member_value)
  tst = np.full(40, non_member_value)
  forget = np.array([member_value] * 3 + [non_member_value])
  got = mia.mia_efficacy(
    remain_features=rem, test_features=tst, forget_features=forget, variant=variant
  )
  assert got == pytest.approx(0.25)
  # [N, 1] columns and MIAFeatures are accepted alike.
  feats = lambda v: mia.MIAFeatures(entropy=v, confidence=v, mask=np.ones_like(v))
  assert mia.mia_efficacy(
    remain_features=feats(rem),
    test_features=tst[:, None],
    forget_features=feats(forget),
    variant=variant,
  ) == pytest.approx(0.25)


@pytest.mark.parametrize("variant,margin", [("entropy_logreg", 0.08), ("confidence_svc", 0.03)])
def test_unseen_data_is_judged_non_member_more_than_training_data(digits_features, variant, margin):
  members, unseen = digits_features
  # The attack is fitted on 300 members vs 300 unseen samples; it is then applied to the other
  # 300 members and to the other 897 unseen samples. Test accuracy on digits stays high (about
  # 96 %), so most unseen samples look like members to an entropy or confidence attack; only
  # the uncertain ones are flagged, hence small but systematic margins (measured about 0.15 for
  # entropy and 0.07 for confidence, with members at 0.00-0.04).
  common = dict(
    remain_features=_take(members, slice(0, 300)),
    test_features=_take(unseen, slice(0, 300)),
    variant=variant,
    seed=0,
  )
  on_unseen = mia.mia_efficacy(forget_features=_take(unseen, slice(300, None)), **common)
  on_members = mia.mia_efficacy(forget_features=_take(members, slice(300, None)), **common)
  assert 0.0 <= on_members < on_unseen <= 1.0
  assert on_unseen - on_members >= margin, (on_unseen, on_members)


@pytest.mark.parametrize("variant", mia.MIA_VARIANTS)
def test_deterministic_for_a_seed(digits_features, variant):
  members, unseen = digits_features
  kwargs = dict(
    remain_features=members,
    test_features=_take(unseen, slice(0, 600)),
    forget_features=_take(unseen, slice(600, None)),
    variant=variant,
    max_samples=40,
  )
  first = mia.mia_efficacy(seed=3, **kwargs)
  assert mia.mia_efficacy(seed=3, **kwargs) == first
  # With a 40-per-class subsample the seed picks different fitting sets.
  assert len({mia.mia_efficacy(seed=s, **kwargs) for s in range(6)}) > 1


def test_undefined_and_bad_input():
  x = np.linspace(0.0, 1.0, 10)
  assert mia.mia_efficacy(remain_features=x, test_features=x, forget_features=np.zeros(0)) is None
  empty = mia.MIAFeatures(entropy=x, confidence=x, mask=np.zeros(10))  # All padding.
  assert mia.mia_efficacy(remain_features=x, test_features=x, forget_features=empty) is None
  assert mia.mia_efficacy(remain_features=np.zeros(0), test_features=x, forget_features=x) is None
  with pytest.raises(ValueError, match="unknown variant 'svm'") as err:
    mia.mia_efficacy(remain_features=x, test_features=x, forget_features=x, variant="svm")
  assert "\n" not in str(err.value)
  with pytest.raises(ValueError, match="max_samples"):
    mia.mia_efficacy(remain_features=x, test_features=x, forget_features=x, max_samples=0)
  with pytest.raises(ValueError, match="non-finite"):
    mia.mia_efficacy(remain_features=x, test_features=np.array([np.nan]), forget_features=x)
  with pytest.raises(ValueError, match="1-D"):
    mia.mia_efficacy(remain_features=np.ones((3, 2)), test_features=x, forget_features=x)
