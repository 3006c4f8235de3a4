"""The collapse detector (``evaluation.collapse_reason``) and its place in report.md."""

import copy
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ugclu_jax import config as C
from ugclu_jax import data as D
from ugclu_jax import evaluation as E
from ugclu_jax import report as R
from ugclu_jax import runner
from ugclu_jax.models import MLP, as_functional


def _reason(pred, labels, k, **kw):
  return E.collapse_reason(np.asarray(pred), np.asarray(labels), num_learned_classes=k, **kw)


# ---------------------------------------------------------------------------
# Hand-computed cases.
# ---------------------------------------------------------------------------


def test_constant_predictor_on_a_balanced_set_is_flagged_for_both_reasons():
  labels = np.repeat([0, 1, 2, 3], 5)
  reason = _reason(np.full(20, 3), labels, 4)
  assert reason == (
    "predicts class 3 for 100% of the remaining test set (25% of its labels); "
    "remaining test accuracy 25.0% is at chance level (1/4 = 25.0%)"
  )


def test_perfect_model_is_not_flagged():
  labels = np.repeat([0, 1, 2, 3], 5)
  assert _reason(labels, labels, 4) is None


def test_majority_threshold_boundary():
  # 10 samples, 5 of class 0 and 5 of class 1; the top predicted class takes 8 or 9.
  labels = np.repeat([0, 1], 5)
  eight = np.array([0] * 5 + [0, 0, 0, 1, 1])  # p = 0.8: not above 0.8
  nine = np.array([0] * 5 + [0, 0, 0, 0, 1])  # p = 0.9 > max(0.8, 0.5 + 0.1)
  assert _reason(eight, labels, 2, chance_margin=0.0) is None
  assert _reason(nine, labels, 2, chance_margin=0.0).startswith(
    "predicts class 0 for 90% of the remaining test set (50% of its labels)"
  )


def test_mostly_one_class_set_compares_with_the_label_share():
  # 9 of 10 labels are class 2: a good model predicts class 2 for 90 % and is not
  # flagged; predicting it for all 10 is within the 0.1 margin too (p = q + 0.1).
  labels = np.array([2] * 9 + [5])
  assert _reason(labels, labels, 2) is None
  assert _reason(np.full(10, 2), labels, 2) is None
  # With 8 of 10 labels of class 2, predicting it everywhere is flagged (1.0 > 0.9).
  labels = np.array([2] * 8 + [5, 5])
  assert _reason(np.full(10, 2), labels, 2).startswith("predicts class 2 for 100%")


def test_chance_threshold_boundary():
  # K = 4: chance 25 %; with chance_margin 0.05 accuracy <= 30 % is flagged.
  labels = np.repeat([0, 1, 2, 3], 5)
  pred = np.roll(labels, 5)  # every prediction wrong, spread evenly
  at = pred.copy()
  at[:6] = labels[:6]  # 6/20 = 30 % right
  above = pred.copy()
  above[:7] = labels[:7]  # 7/20 = 35 % right
  assert _reason(at, labels, 4) == (
    "remaining test accuracy 30.0% is at chance level (1/4 = 25.0%)"
  )
  assert _reason(above, labels, 4) is None
  assert _reason(at, labels, 4, chance_margin=0.0) is None


def test_class_incremental_forgetting_is_not_collapse():
  # Ten classes, only the last two-class task right, its two classes predicted for
  # everything: 20 % accuracy (chance 10 %), the top class takes about half.
  labels = np.repeat(np.arange(10), 10)
  pred = np.where(labels >= 8, labels, 8 + labels % 2)
  assert _reason(pred, labels, 10) is None


def test_single_class_and_empty_sets_are_never_flagged():
  assert _reason(np.full(7, 4), np.full(7, 4), 1) is None
  assert _reason(np.full(7, 2), np.full(7, 4), 1) is None
  assert _reason(np.zeros(0, int), np.zeros(0, int), 5) is None


def test_bad_arguments_are_one_line_errors():
  with pytest.raises(ValueError, match="3 predictions for 2 labels"):
    _reason([0, 1, 2], [0, 1], 2)
  with pytest.raises(ValueError, match="0 < majority < 1"):
    _reason([0, 1], [0, 1], 2, majority=1.0)


# ---------------------------------------------------------------------------
# A planted constant model and a trained one, on scikit-learn digits.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_models():
  ds = D.load_dataset("digits")
  model = MLP(in_features=64, num_classes=10, hidden=(64,), rngs=nnx.Rngs(0))
  apply_fn, params, mstate = as_functional(model)
  x = jnp.asarray(D.to_float(ds.x_train))
  y = jnp.asarray(ds.y_train)

  def loss(p):
    logits, _ = apply_fn(p, mstate, x, train=False)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

  @jax.jit
  def train(p):
    def step(p, _):
      g = jax.grad(loss)(p)
      return jax.tree.map(lambda a, b: a - 0.5 * b, p, g), None

    return jax.lax.scan(step, p, None, length=300)[0]

  return ds, apply_fn, mstate, train(params)


def _head_bias_path(params):
  leaves = jax.tree_util.tree_leaves_with_path(params)
  biases = [(path, leaf) for path, leaf in leaves if leaf.ndim == 1 and leaf.shape[0] == 10]
  assert len(biases) == 1, [jax.tree_util.keystr(p) for p, _ in biases]
  return biases[0][0]


def _predictions(ds, apply_fn, params, mstate, classes):
  output_fn = E.make_output_fn(apply_fn)
  idx = np.flatnonzero(np.isin(ds.y_test, classes))
  out = E.outputs(output_fn, params, mstate, ds.x_test, ds.y_test, idx, 128, 10)
  return np.argmax(out.probs, -1), ds.y_test[idx]


def test_detector_fires_on_a_planted_constant_model(digits_models):
  ds, apply_fn, mstate, trained = digits_models
  # The planted collapse: the head's bias for class 3 dominates every logit.
  path = _head_bias_path(trained)
  bias = np.zeros(10, np.float32)
  bias[3] = 1e3
  constant = jax.tree_util.tree_map_with_path(
    lambda p, a: jnp.asarray(bias) if p == path else a, trained
  )
  pred, labels = _predictions(ds, apply_fn, constant, mstate, [0, 1, 2, 3])
  assert (pred == 3).all()
  reason = E.collapse_reason(pred, labels, num_learned_classes=4)
  assert reason is not None and reason.startswith("predicts class 3 for 100%")
  assert "at chance level" in reason


def test_detector_is_quiet_on_a_trained_model(digits_models):
  ds, apply_fn, mstate, trained = digits_models
  for classes in ([0, 1], [0, 1, 2, 3], list(range(10))):
    pred, labels = _predictions(ds, apply_fn, trained, mstate, classes)
    assert (pred == labels).mean() > 0.9
    assert E.collapse_reason(pred, labels, num_learned_classes=len(classes)) is None


# ---------------------------------------------------------------------------
# report.md and the seed aggregate.
# ---------------------------------------------------------------------------


def _report(seed, collapsed):
  def req(i, token, reason):
    return {
      "index": i,
      "request": token,
      "seconds": 1.0,
      "metrics": {
        "forget_acc": None,
        "remain_acc": 0.9,
        "test_acc": 0.9,
        "mia_efficacy": None,
        "avg_gap": None,
      },
      "acc_per_task": [0.9],
      "collapsed": reason,
    }

  return {
    "config": {"name": "t", "seed": seed},
    "stream": ["L:t0", "U:c1"],
    "methods": {
      "ugclu": {"requests": [req(0, "L:t0", None), req(1, "U:c1", None)]},
      "naive": {"requests": [req(0, "L:t0", None), req(1, "U:c1", collapsed)]},
      "retrain": {"requests": [req(0, "L:t0", None), req(1, "U:c1", None)]},
    },
  }


def test_markdown_lists_collapsed_models():
  rep = _report(0, "predicts class 0 for 97% of the remaining test set (50% of its labels)")
  assert R.collapses(rep) == [
    {
      "method": "naive",
      "index": 1,
      "request": "U:c1",
      "seed": 0,
      "reason": rep["methods"]["naive"]["requests"][1]["collapsed"],
    }
  ]
  md = R.markdown(rep)
  assert "## Collapsed models" in md
  assert "| naive | 1 `U:c1` | 0 | predicts class 0 for 97%" in md
  quiet = _report(0, None)
  assert R.collapses(quiet) == []
  assert "No model collapsed after any request" in R.markdown(quiet)
  # Reports written before the detector have no section.
  old = copy.deepcopy(quiet)
  for entry in old["methods"].values():
    for q in entry["requests"]:
      del q["collapsed"]
  assert "Collapsed" not in R.markdown(old)


def test_aggregate_keeps_each_seeds_collapse():
  agg = R.aggregate([_report(0, None), _report(1, "chance")])
  assert agg["methods"]["naive"]["requests"][1]["collapsed_per_seed"] == [None, "chance"]
  assert R.collapses(agg) == [
    {"method": "naive", "index": 1, "request": "U:c1", "seed": 1, "reason": "chance"}
  ]
  assert "| naive | 1 `U:c1` | 1 | chance |" in R.markdown(agg)


# ---------------------------------------------------------------------------
# The runner: report.json, report.md and the terminal.
# ---------------------------------------------------------------------------


def test_runner_flags_a_constant_model_and_goes_on(tmp_path):
  # Plain fine-tuning on one class alone makes a constant predictor of it.
  cfg = C.apply_overrides(
    C.load_config("smoke"),
    ["stream=L:t0 L:c5", "methods=naive", "train.learn_epochs=8", "data.max_eval=500"],
  )
  lines = []
  runner.run_experiment(cfg, tmp_path, progress=False, echo=lines.append)
  report = json.loads((tmp_path / "report.json").read_text())
  reqs = report["methods"]["naive"]["requests"]
  assert [q["request"] for q in reqs] == ["L:t0", "L:c5"]
  assert reqs[0]["collapsed"] is None
  reason = reqs[1]["collapsed"]
  assert reason.startswith("predicts class 5 for 100% of the remaining test set")
  assert f"warning: [1] L:c5 naive collapsed: {reason}" in lines
  assert f"warning: [1] L:c5 naive collapsed: {reason}" in (tmp_path / "run.log").read_text()
  assert "## Collapsed models" in (tmp_path / "report.md").read_text()
  assert (
    "| naive | 1 `L:c5` | 0 | predicts class 5 for 100%" in (tmp_path / "report.md").read_text()
  )


def test_small_learn_requests_get_the_minimum_budget(tmp_path):
  # One class of ~145 digits is 3 iterations at 1 epoch of batch 64: the minimum
  # raises a learn request, and the oracle's retraining, to 25.
  cfg = C.apply_overrides(
    C.load_config("smoke"),
    [
      "stream=L:c0,1 L:c2 U:r0.2",
      "methods=ft",
      "train.learn_epochs=1",
      "train.min_learn_iterations=25",
      "train.unlearn_iterations=7",
      "data.max_eval=200",
    ],
  )
  runner.run_experiment(cfg, tmp_path, progress=False, render=False, echo=lambda s: None)
  report = json.loads((tmp_path / "report.json").read_text())
  steps = lambda m: [q["metrics"]["steps"] for q in report["methods"][m]["requests"]]
  assert steps("ft") == [25, 25, 7]
  # The oracle retrains on D_R ∪ D_L (about 400 digits: 7 iterations at 1 epoch).
  assert steps("retrain")[2] == 25
