"""Per-request evaluation of a model against the sets of docs/method.md §9.

Model outputs are computed by one jitted function on fixed-shape, padded,
masked batches; the metrics themselves are the pure functions of
:mod:`ugclu_jax.metrics` and :mod:`ugclu_jax.mia`.

The runner keeps a typed history, one :class:`RequestRecord` per method and
request, in three steps: :func:`evaluate` (a model on the request's
:class:`EvalSets`), :func:`compare_to_oracle` (a second pass over the request's
records, in any order) and :func:`report_entries` (the ``report.json`` requests
of one method, the continual-learning metrics and relapse computed from its
records by :mod:`ugclu_jax.metrics`).
"""

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, Optional

import jax
import numpy as np

from ugclu_jax import metrics as M
from ugclu_jax import mia
from ugclu_jax.data import eval_batches
from ugclu_jax.parallel import shard_batch, to_host


class Outputs(NamedTuple):
  """Per-example outputs of a model on a set (padding dropped)."""

  correct: np.ndarray  # [n] float 0/1
  probs: np.ndarray  # [n, C]
  features: mia.MIAFeatures


def make_output_fn(apply_fn):
  """Jitted ``(params, model_state, batch) -> (correct, probs, MIAFeatures)``, eval mode."""

  @jax.jit
  def fn(params, model_state, batch):
    logits, _ = apply_fn(params, model_state, batch.x, train=False)
    return (
      M.correct(logits, batch.y),
      jax.nn.softmax(logits),
      mia.mia_features(logits=logits, labels=batch.y, mask=batch.mask),
    )

  return fn


def outputs(
  output_fn, params, model_state, x, y, indices, batch_size: int, num_classes: int, mesh=None
) -> Outputs:
  """Outputs of the model on ``x[indices]`` (any size, padded batches).

  With a ``mesh``, each batch is split over its devices; the outputs are gathered
  (:func:`~ugclu_jax.parallel.to_host`), so every process of a multi-process run
  gets them all.
  """
  indices = np.asarray(indices, np.int64)
  if indices.size == 0:
    empty = np.zeros((0,), np.float32)
    return Outputs(
      empty, np.zeros((0, num_classes), np.float32), mia.MIAFeatures(empty, empty, empty)
    )
  corrects, probs, feats = [], [], []
  for batch in eval_batches(x, y, indices, batch_size):
    c, p, f = to_host(output_fn(params, model_state, shard_batch(batch, mesh)))
    real = np.asarray(batch.mask) > 0
    corrects.append(c[real])
    probs.append(p[real])
    feats.append(jax.tree.map(lambda a: a[real], f))
  return Outputs(
    np.concatenate(corrects),
    np.concatenate(probs),
    jax.tree.map(lambda *a: np.concatenate(a), *feats),
  )


def subsample(indices: np.ndarray, max_size: int, seed) -> np.ndarray:
  """A seeded, sorted subsample of at most ``max_size`` indices (all when smaller)."""
  indices = np.asarray(indices, np.int64)
  if indices.size <= max_size:
    return indices
  return np.sort(np.random.default_rng(seed).choice(indices, max_size, replace=False))


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


def collapse_reason(
  predictions,
  labels,
  *,
  num_learned_classes: int,
  majority: float = COLLAPSE_MAJORITY,
  majority_margin: float = COLLAPSE_MAJORITY_MARGIN,
  chance_margin: float = COLLAPSE_CHANCE_MARGIN,
) -> Optional[str]:
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
    raise ValueError(
      f"collapse_reason: need 0 < majority < 1, majority_margin >= 0 and "
      f"0 <= chance_margin < 1, got {majority}, {majority_margin}, "
      f"{chance_margin}"
    )
  n = labels.size
  if n == 0 or num_learned_classes <= 1:
    return None
  reasons = []
  classes, counts = np.unique(predictions, return_counts=True)
  top = int(classes[np.argmax(counts)])
  p = counts.max() / n
  q = np.mean(labels == top)
  if p > max(majority, q + majority_margin) + _EPS:
    reasons.append(
      f"predicts class {top} for {100 * p:.0f}% of the remaining test set "
      f"({100 * q:.0f}% of its labels)"
    )
  chance = 1.0 / num_learned_classes
  acc = np.mean(predictions == labels)
  if acc <= chance + chance_margin + _EPS:
    reasons.append(
      f"remaining test accuracy {100 * acc:.1f}% is at chance level "
      f"(1/{num_learned_classes} = {100 * chance:.1f}%)"
    )
  return "; ".join(reasons) or None


# ---------------------------------------------------------------------------
# Typed records: evaluate -> compare to the oracle -> report entries.
# ---------------------------------------------------------------------------


class EvalSets(NamedTuple):
  r"""What every model is evaluated on after one request (the same for all methods).

  Attributes:
    index: the request's position in the stream.
    request: its token (``"U:c1,5"``).
    forget: its evaluated forget samples (training indices); None for a learn request.
    remain: evaluated samples of :math:`D_R \cup D_L` (training indices).
    test: test indices of the classes learned after the request.
    test_labels: ``y_test[test]``.
    learned_classes: the classes learned after the request.
    unlearned: ``{j: training indices}`` per earlier unlearn request ``j``: its
      evaluated forget samples not learned again since (only the nonempty ones).
  """

  index: int
  request: str
  forget: Optional[np.ndarray]
  remain: np.ndarray
  test: np.ndarray
  test_labels: np.ndarray
  learned_classes: np.ndarray
  unlearned: Mapping[int, np.ndarray]


class OracleGap(NamedTuple):
  """A model against the oracle on one request (None without an oracle or a forget set)."""

  avg_gap: Optional[float] = None
  js_div: Optional[float] = None
  kl_div: Optional[float] = None


class RequestRecord(NamedTuple):
  r"""One model after one request: the raw numbers its report.json entry is computed from.

  Kept (in checkpoint metadata, :func:`record_to_json`) once :func:`compare_to_oracle`
  has dropped ``forget_probs``: then it holds no per-sample output.

  Attributes:
    index: the request's position in the stream.
    request: its token.
    cost: the request's :class:`~ugclu_jax.metrics.Cost` (``seconds``: its training's wall time).
    forget_acc, remain_acc, test_acc: FA, RA, TA (None where the set is undefined).
    mia_efficacy: MIA efficacy on the forget set (None for a learn request).
    acc_per_task: the row :math:`a[r, \cdot]` of the accuracy matrix (None where no
      class of a task is learned).
    unlearned_acc: ``{j: FA_r(U_j)}``: the forget accuracy now on each earlier
      unlearned set (``EvalSets.unlearned``), for :func:`~ugclu_jax.metrics.relapse`.
    collapsed: :func:`collapse_reason`'s line, or None.
    compensation: the mean relative size of UG-CLU's explicit compensation over the
      request's fused steps, :math:`\lVert d - \tilde d \rVert / \lVert d \rVert`
      (``hvp`` mode; None otherwise).
    forget_probs: ``[n, C]`` probabilities on the forget set, for the divergences
      to the oracle; None for a learn request and once compared.
    gap: the comparison with the oracle (:func:`compare_to_oracle`).
    diverged: why the method's training became non-finite, at this request or
      an earlier one (the run's ``on_nonfinite="drop"``); its metrics are then
      all None. None for a model that trained.
  """

  index: int
  request: str
  cost: M.Cost
  forget_acc: Optional[float]
  remain_acc: Optional[float]
  test_acc: Optional[float]
  mia_efficacy: Optional[float]
  acc_per_task: tuple
  unlearned_acc: Mapping[int, float]
  collapsed: Optional[str]
  forget_probs: Optional[np.ndarray] = None
  gap: OracleGap = OracleGap()
  compensation: Optional[float] = None
  diverged: Optional[str] = None


def diverged_record(sets: EvalSets, cost: M.Cost, reason: str, num_tasks: int) -> RequestRecord:
  """The record of a method dropped from the run (``reason``: why it diverged): no
  model to evaluate, so every metric is None and no task counts as learned."""
  return RequestRecord(
    index=sets.index,
    request=sets.request,
    cost=cost,
    forget_acc=None,
    remain_acc=None,
    test_acc=None,
    mia_efficacy=None,
    acc_per_task=(None,) * num_tasks,
    unlearned_acc={},
    collapsed=None,
    diverged=reason,
  )


def evaluate(
  model_outputs: Callable[..., Outputs],
  sets: EvalSets,
  cost: M.Cost,
  *,
  tasks,
  mia_variant: str,
  seed: int,
  compensation: Optional[float] = None,
) -> RequestRecord:
  """The record of one model after one request (its gap to the oracle still unset).

  Args:
    model_outputs: ``(indices, test=False) -> Outputs`` of the model on training
      samples, or on test samples with ``test=True``.
    sets: the request's evaluation sets.
    cost: what the request's training cost.
    tasks: the class lists of the tasks (columns of the accuracy matrix).
    mia_variant: the membership-inference attack (:mod:`ugclu_jax.mia`).
    seed: the run's seed (the attack's).
    compensation: the method's measured compensation size (:class:`RequestRecord`).
  """
  forget = model_outputs(sets.forget) if sets.forget is not None else None
  remain = model_outputs(sets.remain)
  test = model_outputs(sets.test, test=True)
  mia_efficacy = None
  if forget is not None and forget.correct.size:
    mia_efficacy = mia.mia_efficacy(
      remain_features=remain.features,
      test_features=test.features,
      forget_features=forget.features,
      variant=mia_variant,
      seed=seed,
    )
  # A constant or chance-level model is flagged, and the run goes on.
  collapsed = collapse_reason(
    np.argmax(test.probs, -1), sets.test_labels, num_learned_classes=sets.learned_classes.size
  )
  return RequestRecord(
    index=sets.index,
    request=sets.request,
    cost=cost,
    forget_acc=M.forget_acc(forget.correct) if forget is not None else None,
    remain_acc=M.remain_acc(remain.correct),
    test_acc=M.test_acc(test.correct),
    mia_efficacy=mia_efficacy,
    acc_per_task=tuple(task_accuracies(test, sets.test_labels, tasks, sets.learned_classes)),
    unlearned_acc={
      j: M.forget_acc(model_outputs(idx).correct) for j, idx in sorted(sets.unlearned.items())
    },
    collapsed=collapsed,
    forget_probs=forget.probs if forget is not None else None,
    compensation=compensation,
  )


def oracle_gap(record: RequestRecord, oracle: Optional[RequestRecord]) -> OracleGap:
  """``avg_gap``, ``js_div`` and ``kl_div`` of a record against the oracle's, same request."""
  if oracle is None or record.forget_probs is None or oracle.forget_probs is None:
    return OracleGap()
  return OracleGap(
    avg_gap=M.avg_gap(record._asdict(), oracle._asdict()),
    js_div=M.js_div(oracle.forget_probs, record.forget_probs),
    kl_div=M.kl_div(oracle.forget_probs, record.forget_probs),
  )


def compare_to_oracle(
  records: Mapping[str, RequestRecord], oracle: str
) -> dict[str, RequestRecord]:
  """The second pass over one request's records: each one's gap to the record of ``oracle``.

  The order of the records does not matter. The returned records hold no
  per-sample output (``forget_probs`` is dropped).
  """
  ref = records.get(oracle)
  return {
    name: q._replace(gap=oracle_gap(q, ref), forget_probs=None) for name, q in records.items()
  }


# A request's cost counters: what a dropped (diverged) method still reports.
COST_METRICS = ("steps", "grad_evals", "hvp_evals")


def report_entries(records: Sequence[RequestRecord]) -> list[dict]:
  r"""One method's ``report.json`` requests, computed from its records alone.

  With :math:`a` the accuracy matrix of the records' ``acc_per_task`` rows
  (:func:`~ugclu_jax.metrics.accuracy_matrix`), request :math:`r` reports
  ``avg_acc`` :math:`= \mathrm{ACC}_r`, ``forgetting`` :math:`= F_r` and ``bwt``
  :math:`= \mathrm{BWT}_r`, and ``relapse`` :math:`=` :func:`~ugclu_jax.metrics.mean_relapse`
  of the histories :math:`[\mathrm{FA}_{r_U}(U), \mathrm{FA}_r(U)]` of the earlier
  unlearned sets (the first from the unlearning request's record). A diverged
  record (:func:`diverged_record`) reports its cost counters and ``diverged``, and
  None for every other metric.

  Args:
    records: the method's records, one per request in stream order from the first.
  """
  matrix = M.accuracy_matrix([q.acc_per_task for q in records])
  forget_acc = {q.index: q.forget_acc for q in records}
  entries = []
  for r, q in enumerate(records):
    metrics = {
      "forget_acc": q.forget_acc,
      "remain_acc": q.remain_acc,
      "test_acc": q.test_acc,
      "mia_efficacy": q.mia_efficacy,
      **q.gap._asdict(),
      "avg_acc": M.avg_acc(q.acc_per_task),
      "forgetting": M.forgetting(matrix, r),
      "bwt": M.bwt(matrix, r),
      "relapse": M.mean_relapse([[forget_acc[j], fa] for j, fa in sorted(q.unlearned_acc.items())]),
      "steps": q.cost.steps,
      "grad_evals": q.cost.grad_evals,
      "hvp_evals": q.cost.hvp_evals,
      "compensation": q.compensation,
    }
    if q.diverged is not None:  # No model: its costs, no quality.
      metrics = {k: (v if k in COST_METRICS else None) for k, v in metrics.items()}
    entries.append(
      {
        "index": q.index,
        "request": q.request,
        "seconds": round(q.cost.seconds, 3),
        "compile_seconds": round(q.cost.compile_seconds, 3),
        "metrics": metrics,
        "acc_per_task": list(q.acc_per_task),
        "collapsed": q.collapsed,
        **({"diverged": q.diverged} if q.diverged is not None else {}),
      }
    )
  return entries


def record_to_json(record: RequestRecord) -> dict:
  """A compared record as JSON (numbers and strings only; no per-sample output)."""
  if record.forget_probs is not None:
    raise ValueError(
      "record_to_json: the record still holds per-sample forget outputs "
      "(compare_to_oracle drops them)"
    )
  out = record._replace(
    cost=record.cost._asdict(),
    acc_per_task=list(record.acc_per_task),
    unlearned_acc={str(j): v for j, v in record.unlearned_acc.items()},
    gap=record.gap._asdict(),
  )._asdict()
  del out["forget_probs"]
  return out


def record_from_json(obj: Mapping) -> RequestRecord:
  """The inverse of :func:`record_to_json`."""
  obj = dict(obj)
  return RequestRecord(
    **{
      **obj,
      "cost": M.Cost(**obj["cost"]),
      "acc_per_task": tuple(obj["acc_per_task"]),
      "unlearned_acc": {int(j): v for j, v in obj["unlearned_acc"].items()},
      "gap": OracleGap(**obj["gap"]),
    }
  )
