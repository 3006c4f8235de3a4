"""Tests for ugclu_jax.metrics: every metric against hand-computed values and its edge cases."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ugclu_jax import evaluation as E
from ugclu_jax import metrics

NAN = float("nan")

# Three examples, three classes. Row 1 is uniform (a tie: argmax picks class 0).
LOGITS = jnp.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
LABELS = jnp.array([0, 1, 1])


# --- Per-example outputs ------------------------------------------------------------------------


def test_correct_hand_values():
  np.testing.assert_array_equal(metrics.correct(LOGITS, LABELS), [1.0, 0.0, 1.0])
  assert metrics.correct(LOGITS, LABELS).dtype == jnp.float32


def test_softmax_entropy_uniform_is_log_c_and_peaked_is_small():
  h = metrics.softmax_entropy(LOGITS)
  np.testing.assert_allclose(h[1], math.log(3), rtol=1e-6)
  # Row 0: p = e^(2, 1, 0) / Z, H = log Z - sum p * logits.
  z = math.exp(2) + math.exp(1) + 1
  expected = math.log(z) - (2 * math.exp(2) + math.exp(1)) / z
  np.testing.assert_allclose(h[0], expected, rtol=1e-6)
  # -inf logits are masked-out classes: 0 log 0 = 0, no NaN.
  np.testing.assert_allclose(metrics.softmax_entropy(jnp.array([[0.0, -jnp.inf]])), [0.0])


def test_confidence_hand_values():
  conf = metrics.confidence(LOGITS, LABELS)
  z = math.exp(2) + math.exp(1) + 1
  np.testing.assert_allclose(
    conf, [math.exp(2) / z, 1 / 3, math.exp(5) / (math.exp(5) + 2)], rtol=1e-6
  )


def test_per_example_outputs_reject_bad_shapes():
  with pytest.raises(ValueError, match="logits must be"):
    metrics.correct(LOGITS[0], LABELS)
  with pytest.raises(ValueError, match="labels must be"):
    metrics.confidence(LOGITS, LABELS[:2])
  with pytest.raises(ValueError, match="integers"):
    metrics.confidence(LOGITS, LABELS.astype(jnp.float32))


# --- Accumulators ------------------------------------------------------------------------------


def _padded(logits, labels, size):
  """Pads a batch to `size` rows with rows that would be counted correct if unmasked."""
  pad = size - logits.shape[0]
  logits = jnp.concatenate([logits, jnp.tile(jnp.eye(3)[:1] * 9.0, (pad, 1))])
  labels = jnp.concatenate([labels, jnp.zeros((pad,), labels.dtype)])
  mask = jnp.concatenate([jnp.ones((size - pad,)), jnp.zeros((pad,))])
  return logits, labels, mask


def test_accuracy_accumulator_under_jit_with_padding():
  traces = []

  @jax.jit
  def step(acc, logits, labels, mask):
    traces.append(None)
    return acc.merge(metrics.Accuracy.from_model_output(logits=logits, labels=labels, mask=mask))

  acc = metrics.Accuracy.empty()
  # Batch 1: the three rows above (2 correct), padded to 4. Batch 2: two rows, 1 correct.
  acc = step(acc, *_padded(LOGITS, LABELS, 4))
  acc = step(acc, *_padded(jnp.array([[0.0, 1.0, 0.0], [3.0, 0.0, 0.0]]), jnp.array([1, 2]), 4))
  assert len(traces) == 1  # Same shapes: compiled once.
  assert isinstance(acc, metrics.Accuracy)
  np.testing.assert_allclose(acc.count, 5.0)
  np.testing.assert_allclose(acc.compute(), 3 / 5, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(lambda a: a.compute())(acc), 3 / 5, rtol=1e-6)


def test_accumulator_empty_and_all_padding_compute_nan():
  assert np.isnan(metrics.Accuracy.empty().compute())
  acc = metrics.Accuracy.from_model_output(logits=LOGITS, labels=LABELS, mask=jnp.zeros(3))
  assert np.isnan(acc.compute())
  # The empty accumulator is the identity of merge.
  full = metrics.Accuracy.from_model_output(logits=LOGITS, labels=LABELS)
  np.testing.assert_allclose(metrics.Accuracy.empty().merge(full).compute(), 2 / 3, rtol=1e-6)


def test_average_accumulator_and_merge_type_check():
  avg = metrics.Average.from_model_output(
    values=jnp.array([1.0, 2.0, 9.0]), mask=jnp.array([1.0, 1.0, 0.0])
  )
  np.testing.assert_allclose(avg.compute(), 1.5)
  with pytest.raises(ValueError, match="cannot merge"):
    avg.merge(metrics.Accuracy.empty())
  with pytest.raises(ValueError, match="mask must be"):
    metrics.Accuracy.from_model_output(logits=LOGITS, labels=LABELS, mask=jnp.ones(2))


# --- Host-side accuracies and the gap to the oracle --------------------------------------------


def test_accuracy_with_mask_and_named_forms():
  c = np.array([1, 0, 1, 1, 0])
  m = np.array([1, 1, 1, 0, 0])
  assert metrics.accuracy(c) == pytest.approx(3 / 5)
  assert metrics.accuracy(c, m) == pytest.approx(2 / 3)
  assert metrics.accuracy(np.array([True, False])) == pytest.approx(0.5)
  for fn in (metrics.forget_acc, metrics.remain_acc, metrics.test_acc):
    assert fn(c, m) == pytest.approx(2 / 3)
  assert metrics.unlearn_acc(c, m) == pytest.approx(1 / 3)
  assert isinstance(metrics.accuracy(c), float)


def test_accuracy_undefined_and_bad_input():
  assert metrics.accuracy(np.zeros((0,))) is None
  assert metrics.accuracy(np.array([1, 0]), np.array([0, 0])) is None
  assert metrics.unlearn_acc(np.zeros((0,))) is None
  with pytest.raises(ValueError, match="0/1"):
    metrics.accuracy(np.array([0.3, 1.0]))
  with pytest.raises(ValueError, match="shape"):
    metrics.accuracy(np.array([1, 0]), np.array([1, 1, 1]))


def test_avg_gap_skips_undefined_keys():
  model = {"forget_acc": 0.5, "remain_acc": 0.9, "test_acc": 0.8, "mia_efficacy": None}
  oracle = {"forget_acc": 0.4, "remain_acc": 1.0, "test_acc": 0.85, "mia_efficacy": 0.6}
  # |0.5-0.4|, |0.9-1.0|, |0.8-0.85|; MIA undefined for the model.
  assert metrics.avg_gap(model, oracle) == pytest.approx((0.1 + 0.1 + 0.05) / 3)
  model["mia_efficacy"] = 0.2
  assert metrics.avg_gap(model, oracle) == pytest.approx((0.1 + 0.1 + 0.05 + 0.4) / 4)
  assert metrics.avg_gap(model, oracle, keys=("test_acc",)) == pytest.approx(0.05)
  assert metrics.avg_gap({"forget_acc": None, "test_acc": NAN}, oracle) is None
  assert metrics.avg_gap({}, {}) is None


# --- Divergences -------------------------------------------------------------------------------


def test_kl_div_hand_values_and_direction():
  p = np.array([[0.5, 0.5], [1.0, 0.0]])
  q = np.array([[0.25, 0.75], [0.5, 0.5]])
  # Row 0: 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75); row 1: 1 ln(1/0.5) (the 0 term drops out).
  row0 = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
  assert metrics.kl_div(p, q) == pytest.approx((row0 + math.log(2)) / 2, rel=1e-12)
  # KL(p_oracle || q_model), not the reverse. Reversed, the first argument puts mass where the
  # second has none, and the floor eps = 1e-12 stands in for that zero.
  rev0 = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
  rev1 = 0.5 * math.log(0.5) + 0.5 * math.log(0.5 / 1e-12)
  assert metrics.kl_div(q, p) == pytest.approx((rev0 + rev1) / 2, rel=1e-12)
  assert metrics.kl_div(p, p) == pytest.approx(0.0, abs=1e-12)


def test_js_div_hand_values():
  p = np.array([[1.0, 0.0]])
  q = np.array([[0.5, 0.5]])
  # m = (0.75, 0.25); KL(p||m) = ln(4/3); KL(q||m) = 0.5 ln(2/3) + 0.5 ln 2.
  expected = 0.5 * math.log(4 / 3) + 0.5 * (0.5 * math.log(2 / 3) + 0.5 * math.log(2))
  assert metrics.js_div(p, q) == pytest.approx(expected, rel=1e-12)
  assert metrics.js_div(q, p) == pytest.approx(expected, rel=1e-12)  # Symmetric.
  assert metrics.js_div(p, np.array([[0.0, 1.0]])) == pytest.approx(math.log(2))  # Maximum.
  probs = np.asarray(jax.nn.softmax(LOGITS), np.float64)
  assert metrics.js_div(probs, probs) == pytest.approx(0.0, abs=1e-12)


def test_divergences_undefined_and_bad_input():
  empty = np.zeros((0, 3))
  assert metrics.js_div(empty, empty) is None
  assert metrics.kl_div(empty, empty) is None
  with pytest.raises(ValueError, match="probabilities"):
    metrics.js_div(np.asarray(LOGITS), np.asarray(LOGITS))  # Logits, not probabilities.
  with pytest.raises(ValueError, match="differs"):
    metrics.kl_div(np.full((2, 2), 0.5), np.full((3, 2), 0.5))


# --- Continual learning ------------------------------------------------------------------------

# Stream L:t0 L:t1 L:t2 U:t1 L:t1 (task 1 learned again). None where a task is not learned.
ROWS = [
  [0.90],
  [0.92, 0.80],
  [0.60, 0.75, 0.95],
  [0.62, None, 0.93],
  [0.60, 0.85, 0.90],
]


def test_accuracy_matrix_pads_ragged_rows_with_nan():
  a = metrics.accuracy_matrix(ROWS)
  assert a.shape == (5, 3)
  np.testing.assert_array_equal(np.isnan(a[0]), [False, True, True])
  assert np.isnan(a[3, 1])
  assert a[4, 1] == 0.85


def test_avg_acc_over_kept_tasks():
  assert metrics.avg_acc(ROWS[2]) == pytest.approx((0.60 + 0.75 + 0.95) / 3)
  assert metrics.avg_acc(ROWS[3]) == pytest.approx((0.62 + 0.93) / 2)  # Task 1 unlearned.
  assert metrics.avg_acc(ROWS[2], learned_tasks=[0, 2]) == pytest.approx((0.60 + 0.95) / 2)
  assert metrics.avg_acc([None, None]) is None
  with pytest.raises(ValueError, match="task 1"):
    metrics.avg_acc(ROWS[3], learned_tasks=[0, 1])


def test_forgetting_and_bwt_gem_definitions_on_3x3():
  # The first three rows form the 3x3 matrix
  #        t0    t1    t2
  #   r0  0.90   -     -
  #   r1  0.92  0.80   -
  #   r2  0.60  0.75  0.95
  # After r2 (task 2 just learned, so tasks 0 and 1 count):
  #   forgetting: t0: max(0.90, 0.92) - 0.60 = 0.32; t1: 0.80 - 0.75 = 0.05; mean 0.185.
  #   bwt:        t0: 0.60 - 0.90 = -0.30;           t1: 0.75 - 0.80 = -0.05; mean -0.175.
  # After r1: forgetting t0: 0.90 - 0.92 = -0.02 (the task improved); bwt +0.02.
  # After r0: only the task just learned -> undefined.
  a = metrics.accuracy_matrix(ROWS[:3])
  assert metrics.forgetting(a, 2) == pytest.approx(0.185)
  assert metrics.bwt(a, 2) == pytest.approx(-0.175)
  assert metrics.forgetting(a, 1) == pytest.approx(-0.02)
  assert metrics.bwt(a, 1) == pytest.approx(0.02)
  assert metrics.forgetting(a, 0) is None
  assert metrics.bwt(a, 0) is None
  # Restricting the kept tasks.
  assert metrics.forgetting(a, 2, kept=[1, 2]) == pytest.approx(0.05)
  assert metrics.bwt(a, 2, kept=[2]) is None


def test_forgetting_and_bwt_after_unlearning_and_relearning():
  a = metrics.accuracy_matrix(ROWS)
  # r3 (U:t1): kept 0 and 2, both learned earlier.
  #   forgetting: t0: 0.92 - 0.62 = 0.30; t2: 0.95 - 0.93 = 0.02 -> 0.16.
  #   bwt: t0: 0.62 - 0.90 = -0.28; t2: 0.93 - 0.95 = -0.02 -> -0.15.
  assert metrics.forgetting(a, 3) == pytest.approx(0.16)
  assert metrics.bwt(a, 3) == pytest.approx(-0.15)
  # r4 (L:t1 again): task 1 starts a new learned span at r4 and is excluded; its
  # accuracy before unlearning (0.80 at r1) must not count.
  #   forgetting: t0: 0.92 - 0.60 = 0.32; t2: 0.95 - 0.90 = 0.05 -> 0.185.
  #   bwt: t0: 0.60 - 0.90 = -0.30; t2: 0.90 - 0.95 = -0.05 -> -0.175.
  assert metrics.forgetting(ROWS, 4) == pytest.approx(0.185)  # Rows accepted as well.
  assert metrics.bwt(a, 4) == pytest.approx(-0.175)


def test_cl_metrics_bad_input():
  a = metrics.accuracy_matrix(ROWS)
  with pytest.raises(ValueError, match="request index 5"):
    metrics.forgetting(a, 5)
  with pytest.raises(ValueError, match="task 1"):
    metrics.bwt(a, 3, kept=[0, 1])
  with pytest.raises(ValueError, match="task 7"):
    metrics.forgetting(a, 2, kept=[7])


# --- Relapse and cost --------------------------------------------------------------------------


def test_relapse():
  # FA on U: 0.10 right after unlearning, 0.05, then 0.30 after a later learn request.
  assert metrics.relapse([0.10, 0.05, 0.30]) == pytest.approx(0.20)
  assert metrics.relapse([0.40, 0.25]) == pytest.approx(-0.15)  # Forgotten further.
  assert metrics.relapse([0.10]) is None  # The unlearning request itself.
  with pytest.raises(ValueError, match="finite"):
    metrics.relapse([0.1, None])
  # Mean over earlier-unlearned sets; a set unlearned at the current request does not count.
  assert metrics.mean_relapse([[0.1, 0.3], [0.2, 0.1], [0.5]]) == pytest.approx(0.05)
  assert metrics.mean_relapse([[0.5]]) is None
  assert metrics.mean_relapse([]) is None


def test_cost_record():
  c = metrics.Cost(seconds=1.5, steps=10, grad_evals=20, hvp_evals=5, compile_seconds=0.25)
  total = c.add(metrics.Cost(seconds=0.5, steps=2, grad_evals=2, compile_seconds=1.0))
  assert total == metrics.Cost(
    seconds=2.0, steps=12, grad_evals=22, hvp_evals=5, compile_seconds=1.25
  )
  assert metrics.Cost()._asdict() == {
    "seconds": 0.0,
    "steps": 0,
    "grad_evals": 0,
    "hvp_evals": 0,
    "compile_seconds": 0.0,
  }


# --- Metrics of a hand-built typed history (evaluation.report_entries) -------------------------


def _record(index, token, row, *, fa=None, unlearned=None, gap=E.OracleGap(), steps=0):
  return E.RequestRecord(
    index=index,
    request=token,
    cost=metrics.Cost(0.12345, steps, 2 * steps, 0),
    forget_acc=fa,
    remain_acc=0.9,
    test_acc=0.8,
    mia_efficacy=None if fa is None else 0.5,
    acc_per_task=tuple(row),
    unlearned_acc=unlearned or {},
    collapsed=None,
    gap=gap,
  )


# Tasks t0, t1, t2. r2 unlearns part of t0 (FA 0.10), r4 some random samples (FA 0.50);
# unlearned_acc holds FA now on each earlier unlearned set, as the runner measures it.
HISTORY = [
  _record(0, "L:t0", [0.90, None, None], steps=5),
  _record(1, "L:t1", [0.92, 0.80, None]),
  _record(2, "U:c1", [0.60, 0.75, None], fa=0.10, gap=E.OracleGap(0.05, 0.01, 0.02)),
  _record(3, "L:t2", [0.62, 0.70, 0.95], unlearned={2: 0.25}),
  _record(4, "U:r0.1", [0.55, 0.72, 0.90], fa=0.50, unlearned={2: 0.30}),
  _record(5, "L:t2", [0.50, 0.70, 0.88], unlearned={2: 0.40, 4: 0.45}),
]


def test_report_entries_from_a_hand_built_history():
  #        t0    t1    t2
  #   r0  0.90   -     -
  #   r1  0.92  0.80   -
  #   r2  0.60  0.75   -
  #   r3  0.62  0.70  0.95
  #   r4  0.55  0.72  0.90
  #   r5  0.50  0.70  0.88
  entries = E.report_entries(HISTORY)
  got = lambda key: [q["metrics"][key] for q in entries]
  approx = lambda values: [None if v is None else pytest.approx(v) for v in values]
  np.testing.assert_array_equal(
    np.isnan(metrics.accuracy_matrix([q["acc_per_task"] for q in entries])),
    np.isnan(metrics.accuracy_matrix([q.acc_per_task for q in HISTORY])),
  )
  assert got("avg_acc") == approx([0.90, 0.86, 0.675, 2.27 / 3, 2.17 / 3, 2.08 / 3])
  # Forgetting: max over the earlier rows of the span minus now, over tasks learned before r.
  #   r1: t0 0.90 - 0.92;  r2: t0 0.92 - 0.60, t1 0.80 - 0.75;  r3: 0.30, 0.10;
  #   r4: 0.37, 0.08, 0.05;  r5: 0.42, 0.10, 0.07.
  assert got("forgetting") == approx([None, -0.02, 0.185, 0.20, 0.50 / 3, 0.59 / 3])
  # BWT: now minus right after learning.
  assert got("bwt") == approx([None, 0.02, -0.175, -0.19, -0.16, -0.19])
  # Relapse: FA now minus FA right after unlearning, averaged over the earlier sets:
  #   r3: 0.25 - 0.10;  r4: 0.30 - 0.10 (r4's own set does not count yet);
  #   r5: mean(0.40 - 0.10, 0.45 - 0.50).
  assert got("relapse") == approx([None, None, None, 0.15, 0.20, 0.125])
  assert entries[2]["metrics"]["avg_gap"] == 0.05 and entries[2]["metrics"]["kl_div"] == 0.02
  assert entries[0]["metrics"]["avg_gap"] is None
  assert entries[0] == {
    "index": 0,
    "request": "L:t0",
    "seconds": 0.123,
    "compile_seconds": 0.0,
    "acc_per_task": [0.90, None, None],
    "collapsed": None,
    "metrics": {
      "forget_acc": None,
      "remain_acc": 0.9,
      "test_acc": 0.8,
      "mia_efficacy": None,
      "avg_gap": None,
      "js_div": None,
      "kl_div": None,
      "avg_acc": 0.90,
      "forgetting": None,
      "bwt": None,
      "relapse": None,
      "steps": 5,
      "grad_evals": 10,
      "hvp_evals": 0,
      "compensation": None,
    },
  }
  # A measured compensation (UG-CLU's hvp mode) reaches its entry and the JSON round trip.
  q = HISTORY[0]._replace(compensation=0.25)
  assert E.report_entries([q])[0]["metrics"]["compensation"] == 0.25
  assert E.record_from_json(json.loads(json.dumps(E.record_to_json(q)))) == q


def test_records_round_trip_through_json_without_per_sample_outputs():
  for q in HISTORY:
    assert E.record_from_json(json.loads(json.dumps(E.record_to_json(q)))) == q
  with pytest.raises(ValueError, match="per-sample"):
    E.record_to_json(HISTORY[2]._replace(forget_probs=np.full((3, 2), 0.5)))


def test_oracle_comparison_is_a_second_pass_in_any_order():
  probs = np.array([[0.5, 0.5], [1.0, 0.0]])
  oracle = HISTORY[2]._replace(
    forget_acc=0.0,
    remain_acc=0.95,
    test_acc=0.85,
    mia_efficacy=0.6,
    forget_probs=probs,
    gap=E.OracleGap(),
  )
  model = HISTORY[2]._replace(forget_acc=0.2, forget_probs=probs[::-1], gap=E.OracleGap())
  first = E.compare_to_oracle({"m": model, "retrain": oracle}, "retrain")
  second = E.compare_to_oracle({"retrain": oracle, "m": model}, "retrain")
  assert first == second
  assert all(q.forget_probs is None for q in first.values())
  # mean(|0.2 - 0|, |0.9 - 0.95|, |0.8 - 0.85|, |0.5 - 0.6|) = 0.1.
  assert first["m"].gap.avg_gap == pytest.approx(0.1)
  assert first["m"].gap.kl_div == pytest.approx(metrics.kl_div(probs, probs[::-1]))
  assert first["retrain"].gap == (0.0, 0.0, 0.0)
  # Without the oracle, or on a learn request, there is nothing to compare.
  assert E.compare_to_oracle({"m": model}, "retrain")["m"].gap == E.OracleGap()
  learn = HISTORY[1]
  assert E.compare_to_oracle({"m": learn, "retrain": learn}, "retrain")["m"].gap == E.OracleGap()
