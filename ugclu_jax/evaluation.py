"""Per-request evaluation of a model against the sets of ALGORITHM.md §9.

Model outputs are computed by one jitted function on fixed-shape, padded,
masked batches; the metrics themselves are the pure functions of
:mod:`ugclu_jax.metrics` and :mod:`ugclu_jax.mia`.
"""

from typing import NamedTuple, Optional

import jax
import numpy as np

from ugclu_jax import metrics as M
from ugclu_jax import mia
from ugclu_jax.data import eval_batches
from ugclu_jax.parallel import shard_batch


class Outputs(NamedTuple):
  """Per-example outputs of a model on a set (padding dropped)."""
  correct: np.ndarray      # [n] float 0/1
  probs: np.ndarray        # [n, C]
  features: mia.MIAFeatures


def make_output_fn(apply_fn):
  """Jitted ``(params, model_state, batch) -> (correct, probs, MIAFeatures)``, eval mode."""

  @jax.jit
  def fn(params, model_state, batch):
    logits, _ = apply_fn(params, model_state, batch.x, train=False)
    return (M.correct(logits, batch.y), jax.nn.softmax(logits),
            mia.mia_features(logits=logits, labels=batch.y, mask=batch.mask))

  return fn


def outputs(output_fn, params, model_state, x, y, indices, batch_size: int,
            num_classes: int, mesh=None) -> Outputs:
  """Outputs of the model on ``x[indices]`` (any size, padded batches).

  With a ``mesh``, each batch is split over its devices.
  """
  indices = np.asarray(indices, np.int64)
  if indices.size == 0:
    empty = np.zeros((0,), np.float32)
    return Outputs(empty, np.zeros((0, num_classes), np.float32),
                   mia.MIAFeatures(empty, empty, empty))
  corrects, probs, feats = [], [], []
  for batch in eval_batches(x, y, indices, batch_size):
    c, p, f = output_fn(params, model_state, shard_batch(batch, mesh))
    real = np.asarray(batch.mask) > 0
    corrects.append(np.asarray(c)[real])
    probs.append(np.asarray(p)[real])
    feats.append(jax.tree.map(lambda a: np.asarray(a)[real], f))
  return Outputs(np.concatenate(corrects), np.concatenate(probs),
                 jax.tree.map(lambda *a: np.concatenate(a), *feats))


def subsample(indices: np.ndarray, max_size: int, seed) -> np.ndarray:
  """A seeded, sorted subsample of at most ``max_size`` indices (all when smaller)."""
  indices = np.asarray(indices, np.int64)
  if indices.size <= max_size:
    return indices
  return np.sort(np.random.default_rng(seed).choice(indices, max_size, replace=False))


def request_metrics(*, forget: Optional[Outputs], remain: Outputs, test: Outputs,
                    mia_variant: str, seed: int) -> dict:
  """FA, RA, TA and MIA efficacy of one model after one request (None where undefined)."""
  out = {
      "forget_acc": M.forget_acc(forget.correct) if forget is not None else None,
      "remain_acc": M.remain_acc(remain.correct),
      "test_acc": M.test_acc(test.correct),
      "mia_efficacy": None,
  }
  if forget is not None and forget.correct.size:
    out["mia_efficacy"] = mia.mia_efficacy(
        remain_features=remain.features, test_features=test.features,
        forget_features=forget.features, variant=mia_variant, seed=seed)
  return out


def oracle_metrics(metrics: dict, oracle: Optional[dict], forget: Optional[Outputs],
                   oracle_forget: Optional[Outputs]) -> dict:
  """``avg_gap``, ``js_div`` and ``kl_div`` against the oracle (None without one)."""
  if oracle is None or forget is None or oracle_forget is None:
    return {"avg_gap": None, "js_div": None, "kl_div": None}
  return {"avg_gap": M.avg_gap(metrics, oracle),
          "js_div": M.js_div(oracle_forget.probs, forget.probs),
          "kl_div": M.kl_div(oracle_forget.probs, forget.probs)}


def task_accuracies(test: Outputs, test_labels: np.ndarray, tasks, learned_classes) -> list:
  """Test accuracy per task over its still-learned classes (None where none is learned)."""
  row = []
  learned = set(int(c) for c in learned_classes)
  for task in tasks:
    classes = [c for c in task if c in learned]
    sel = np.isin(test_labels, classes) if classes else np.zeros_like(test_labels, bool)
    row.append(M.accuracy(test.correct[sel]) if sel.any() else None)
  return row


COLLAPSE_MAJORITY = 0.8
"""Default share of one predicted class above which a model counts as collapsed."""
COLLAPSE_MAJORITY_MARGIN = 0.1
"""Default margin over that class's share of the labels (a mostly-one-class set)."""
COLLAPSE_CHANCE_MARGIN = 0.05
"""Default margin over chance (1/K) of the accuracy, in absolute terms."""
_EPS = 1e-9


def collapse_reason(predictions, labels, *, num_learned_classes: int,
                    majority: float = COLLAPSE_MAJORITY,
                    majority_margin: float = COLLAPSE_MAJORITY_MARGIN,
                    chance_margin: float = COLLAPSE_CHANCE_MARGIN) -> Optional[str]:
  r"""Why a model looks collapsed on the remaining test set, or ``None`` if it does not.

  The remaining test set holds the test samples of the ``K`` classes learned and
  not (wholly) unlearned. With ``c`` the most predicted class (ties: the lowest
  id), ``p`` its share of the predictions and ``q`` its share of the labels, and
  ``a`` the accuracy, the model is flagged when

  * one class takes most predictions: ``p > max(majority, q + majority_margin)``
    (a good model on a set that is mostly class ``c`` predicts ``p ≈ q``), or
  * the accuracy is at chance: ``a <= 1/K + chance_margin``.

  Forgetting alone is not collapse: a class-incremental learner that keeps
  only its last ``C``-class task right scores ``C/K`` and spreads its
  predictions over ``C`` classes, which passes both tests for ``C >= 2`` while
  ``C/K - 1/K > chance_margin``; fine-tuning on a single class does make a
  constant predictor, and is flagged. Nothing is flagged for an empty set or
  ``K <= 1`` (one class: predicting it everywhere is right). Comparisons allow
  a rounding error of 1e-9.

  Args:
    predictions: ``[n]`` predicted classes (e.g. ``argmax`` of ``Outputs.probs``).
    labels: ``[n]`` true classes.
    num_learned_classes: ``K``, the number of classes of the remaining set.
    majority: the share of one predicted class that is always too much (< 1).
    majority_margin: how far ``p`` may exceed ``q``.
    chance_margin: in ``[0, 1)``; 0 flags only accuracy at or below ``1/K``.

  Returns:
    A one-line reason (both, joined by ``"; "``, when both hold), or ``None``.
  """
  predictions = np.asarray(predictions).reshape(-1)
  labels = np.asarray(labels).reshape(-1)
  if predictions.shape != labels.shape:
    raise ValueError(f"collapse_reason: {predictions.size} predictions for {labels.size} labels")
  if not 0 < majority < 1 or majority_margin < 0 or not 0 <= chance_margin < 1:
    raise ValueError(f"collapse_reason: need 0 < majority < 1, majority_margin >= 0 and "
                     f"0 <= chance_margin < 1, got {majority}, {majority_margin}, "
                     f"{chance_margin}")
  n = labels.size
  if n == 0 or num_learned_classes <= 1:
    return None
  reasons = []
  classes, counts = np.unique(predictions, return_counts=True)
  top = int(classes[np.argmax(counts)])
  p = counts.max() / n
  q = np.mean(labels == top)
  if p > max(majority, q + majority_margin) + _EPS:
    reasons.append(f"predicts class {top} for {100 * p:.0f}% of the remaining test set "
                   f"({100 * q:.0f}% of its labels)")
  chance = 1.0 / num_learned_classes
  acc = np.mean(predictions == labels)
  if acc <= chance + chance_margin + _EPS:
    reasons.append(f"remaining test accuracy {100 * acc:.1f}% is at chance level "
                   f"(1/{num_learned_classes} = {100 * chance:.1f}%)")
  return "; ".join(reasons) or None
