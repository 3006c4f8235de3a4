"""Membership-inference attack efficacy (docs/method.md §9, ``mia_efficacy``).

Two stages, in the shape of ``clu.metrics.CollectingMetric``:

1. per-example attack features computed in ``jnp`` on fixed-shape padded batches
   (:func:`mia_features`, jittable, padding carried in the mask);
2. a host-side attack with scikit-learn (:func:`mia_efficacy`): fitted on
   remaining-train features (members) against test features (non-members), then
   applied to the forget set; the metric is the share of the forget set judged
   non-member.

Variants (report which one was used):

* ``"entropy_logreg"``: the softmax entropy, logistic regression; the attack of
  SFR-on (Huang et al., 2024).
* ``"confidence_svc"``: the probability of the true label, an RBF SVC with
  ``C=3, gamma="auto"``; the attack of SalUn (Fan et al., 2024).
"""

from collections.abc import Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from sklearn import linear_model
from sklearn import svm

from ugclu_jax import metrics

MIA_VARIANTS = ("entropy_logreg", "confidence_svc")
_VARIANT_FEATURE = (("entropy_logreg", "entropy"), ("confidence_svc", "confidence"))


class MIAFeatures(NamedTuple):
  """Per-example membership-inference features of one batch (or of a whole set).

  Attributes:
    entropy: ``[B]`` softmax entropy :math:`-\\sum_k p_k \\log p_k`, 0 on padding.
    confidence: ``[B]`` probability of the true label :math:`p_y`, 0 on padding.
    mask: ``[B]`` float, 1 for real examples and 0 for padding.
  """

  entropy: Any
  confidence: Any
  mask: Any


def mia_features(
  *, logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None
) -> MIAFeatures:
  r"""Per-example attack features of one batch; jittable, fixed shapes.

  .. math:: H_i = -\sum_k p_{ik} \log p_{ik}, \qquad \mathrm{conf}_i = p_{i, y_i},
            \qquad p_i = \mathrm{softmax}(f(x_i))

  Padding rows (``mask == 0``) are set to 0 and keep mask 0, so
  :func:`collect_features` drops them.

  Args:
    logits: ``[B, C]`` logits.
    labels: ``[B]`` integer labels.
    mask: ``[B]`` 0/1 mask; default all ones.

  Returns:
    :class:`MIAFeatures` of ``[B]`` arrays (float32 or wider).
  """
  if mask is not None and mask.shape != labels.shape:
    raise ValueError(f"mia_features: mask must be [B]={labels.shape}, got shape {mask.shape}")
  m = jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
  entropy = metrics.softmax_entropy(logits)
  conf = metrics.confidence(logits, labels)
  real = m > 0
  return MIAFeatures(
    entropy=jnp.where(real, entropy, 0.0), confidence=jnp.where(real, conf, 0.0), mask=m
  )


def collect_features(batches: Iterable[MIAFeatures]) -> MIAFeatures:
  """Concatenates per-batch features on the host and drops the padding rows.

  Args:
    batches: :class:`MIAFeatures` of device or numpy arrays, e.g. the outputs of a
      jitted :func:`mia_features` over padded evaluation batches.

  Returns:
    :class:`MIAFeatures` of 1-D float64 numpy arrays holding only the real rows
    (mask all ones); zero-length when there are none.
  """
  batches = [jax.device_get(b) for b in batches]
  if not batches:
    empty = np.zeros((0,), np.float64)
    return MIAFeatures(entropy=empty, confidence=empty, mask=empty)
  cat = {
    f: np.concatenate([np.asarray(getattr(b, f), np.float64).reshape(-1) for b in batches])
    for f in MIAFeatures._fields
  }
  n = {f: v.shape[0] for f, v in cat.items()}
  if len(set(n.values())) != 1:
    raise ValueError(f"collect_features: fields have different lengths {n}")
  keep = cat["mask"] > 0
  return MIAFeatures(**{f: v[keep] for f, v in cat.items()})


def _feature_vector(x: Any, field: str, what: str) -> np.ndarray:
  if isinstance(x, MIAFeatures):
    x = getattr(collect_features([x]), field)
  a = np.asarray(x, dtype=np.float64)
  if a.ndim == 2 and a.shape[1] == 1:
    a = a[:, 0]
  if a.ndim != 1:
    raise ValueError(
      f"mia_efficacy: {what} must be MIAFeatures or a 1-D array of {field} "
      f"values, got shape {a.shape}"
    )
  if not np.all(np.isfinite(a)):
    raise ValueError(f"mia_efficacy: {what} hold non-finite values")
  return a


def mia_efficacy(
  *,
  remain_features: Any,
  test_features: Any,
  forget_features: Any,
  variant: str = "entropy_logreg",
  seed: int = 0,
  max_samples: int = 2500,
) -> float | None:
  r"""MIA efficacy: the share of the forget set that a membership attack judges non-member.

  The attack is fitted on remaining-train samples (members, label 1) against
  test samples (non-members, label 0), each subsampled without replacement to
  :math:`n = \min(|R|, |T|, \text{max\_samples})` with ``np.random.default_rng(seed)``
  so that the two classes are balanced. Applied to the forget set :math:`D_U`:

  .. math:: \mathrm{MIA} = \frac{1}{|D_U|} \sum_{x \in D_U} \mathbb{1}[\mathcal A(\phi(x)) = 0]

  Higher means :math:`D_U` looks more like unseen data. The oracle's value is the
  reference (``avg_gap``); ``1 - MIA`` is the member rate.

  Variants:

  * ``"entropy_logreg"`` (SFR-on): :math:`\phi` = softmax entropy,
    ``sklearn.linear_model.LogisticRegression()`` (lbfgs).
  * ``"confidence_svc"`` (SalUn): :math:`\phi` = probability of the true label,
    ``sklearn.svm.SVC(C=3, gamma="auto", kernel="rbf")``.

  Deterministic for a given ``seed``.

  Args:
    remain_features: features of remaining training samples (members):
      :class:`MIAFeatures` (the variant's field is used, padding dropped) or a 1-D
      array of the variant's feature.
    test_features: features of test samples (non-members), same forms.
    forget_features: features of the forget set, same forms.
    variant: ``"entropy_logreg"`` or ``"confidence_svc"``.
    seed: seed of the class-balancing subsample.
    max_samples: cap on the number of samples per class used to fit the attack.

  Returns:
    The share in ``[0, 1]``, or ``None`` when the forget set is empty or the
    attack cannot be fitted (no remaining or no test sample).
  """
  feature = dict(_VARIANT_FEATURE).get(variant)
  if feature is None:
    raise ValueError(f"mia_efficacy: unknown variant {variant!r}; expected one of {MIA_VARIANTS}")
  if (
    isinstance(max_samples, bool)
    or not isinstance(max_samples, (int, np.integer))
    or max_samples < 1
  ):
    raise ValueError(f"mia_efficacy: max_samples must be a positive integer, got {max_samples!r}")
  members = _feature_vector(remain_features, feature, "remain_features")
  non_members = _feature_vector(test_features, feature, "test_features")
  forget = _feature_vector(forget_features, feature, "forget_features")
  if forget.shape[0] == 0 or members.shape[0] == 0 or non_members.shape[0] == 0:
    return None

  rng = np.random.default_rng(seed)
  n = int(min(members.shape[0], non_members.shape[0], max_samples))
  members = members[rng.choice(members.shape[0], size=n, replace=False)]
  non_members = non_members[rng.choice(non_members.shape[0], size=n, replace=False)]
  x_fit = np.concatenate([members, non_members])[:, None]
  y_fit = np.concatenate([np.ones(n), np.zeros(n)])

  if variant == "entropy_logreg":
    attack = linear_model.LogisticRegression(solver="lbfgs")
  else:
    attack = svm.SVC(C=3, gamma="auto", kernel="rbf")
  attack.fit(x_fit, y_fit)
  return float(np.mean(attack.predict(forget[:, None]) == 0))
