"""Random streams on scikit-learn digits with every method: no collapse, oracle-like forgetting.

A ten-request stream from :func:`ugclu_jax.data.random_stream` (a seed chosen
so that it holds every request kind, repeated random-sample unlearning, a task
unlearned, re-learned and unlearned again) run through ``runner.run_experiment`` with the
smoke config (MLP) and every registered method; the oracle joins by itself.
``experiments/stress.py`` does the same on Fashion-MNIST with the CNN.
"""

import importlib.util
import json
import pathlib
import re

import numpy as np
import pytest

from ugclu_jax import config as C
from ugclu_jax import data as D
from ugclu_jax import methods as MT
from ugclu_jax import report as R
from ugclu_jax import runner

SEEDS = (8,)
LENGTH = 10
# The smoke config's budget (4 epochs per learn request, 60 iterations per unlearn request).
OVERRIDES = ["data.max_eval=500"]
# The oracle joins by itself; its twin is the oracle again (tests/test_oracle.py), not a
# continual method, and would only double the oracle's retraining here.
NAMES = tuple(n for n in MT.METHOD_NAMES if n not in MT.ORACLES)
UGCLU = tuple(MT.UGCLU_VARIANTS)
# After U:c and U:t the oracle has never seen the classes (its forget accuracy is
# about 0); a method must come within this of it after every such request.
FORGET_TOLERANCE = 0.15
# FT and the continual-learning baselines (whose unlearn requests are FT) unlearn
# only by fine-tuning on the remaining data, so a class unlike the remaining ones
# stays recognisable: after the last U:t1 of stream 8 (only class 2 of task 1 left)
# their forget accuracy stayed at 0.92-0.98 against the oracle's 0.0, with 60 and
# with 150 unlearn iterations. They are held to no forget bound here; the stress
# table reports their gaps.
FT_UNLEARNERS = ("ft",) + MT.CL_BASELINES
BASELINES = tuple(n for n in NAMES if n not in UGCLU and n not in FT_UNLEARNERS)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """``[(seed, stream, report.json as written, terminal lines)]`` of the runs."""
  tasks = D.make_tasks(10, 2)
  out = []
  # Plots are not under test here (and take seconds per run): report.json is.
  for seed in SEEDS:
    stream = D.random_stream(
      np.random.default_rng(seed), tasks=tasks, num_classes=10, length=LENGTH
    )
    cfg = C.apply_overrides(
      C.load_config("smoke"),
      OVERRIDES + [f"seed={seed}", f"stream={stream}", "methods=" + ",".join(NAMES)],
    )
    workdir = tmp_path_factory.mktemp(f"stress{seed}")
    lines = []
    runner.run_experiment(cfg, workdir, progress=False, render=False, echo=lines.append)
    report = json.loads((workdir / "report.json").read_text())
    out.append((seed, stream, report, lines))
  return out


def test_streams_cover_every_request_kind(runs):
  tokens = [t for _, stream, _, _ in runs for t in stream.split()]
  kinds = {re.sub(r"[\d.,]+", "", t) for t in tokens}
  assert kinds == {"L:t", "L:c", "U:t", "U:c", "U:r", "U:r@t"}, kinds


def test_every_request_record_carries_collapsed(runs):
  for seed, _, report, lines in runs:
    assert set(report["methods"]) == set(NAMES) | {MT.ORACLE}
    for name, entry in report["methods"].items():
      assert len(entry["requests"]) == LENGTH
      for q in entry["requests"]:
        assert "collapsed" in q, (seed, name, q["request"])
        reason = q["collapsed"]
        assert reason is None or isinstance(reason, str)
        # Every collapse is also a warning on the terminal.
        warning = f"warning: [{q['index']}] {q['request']} {name} collapsed: {reason}"
        assert (reason is None) or warning in lines, warning


# GA is pure gradient ascent with no remaining-data term, as published: on
# `U:r0.2@t1` of the stream, where task 1's two classes are all that is learned,
# ascending on a fifth of their samples flips the decision for the rest, and the
# model predicts one class for 100 % of the remaining test set (also after `U:r0.2`
# and the last `U:t1`). Its paper's setting forces it.
PAPER_COLLAPSES = ("ga",)
# Known misses of the forget check, measured on this stream and on the stream of
# seed 1 that ran beside it before (gap to the oracle's forget accuracy after U:t2
# and others): ugclu_hvp 0.49
# (0.97 before the learn clip and the ascent bound); GA 0.23-0.51; RL 0.45-0.47
# and SalUn 0.21-0.54 (their reference learning rates, 0.003 and 0.007, under the
# shared clip); SCRUB 0.26-0.86 (its max steps under the shared clip). The clip on
# the baselines' unlearn steps is their nearest stable setting on the CNN. Strict
# xfail: a fix shows up as a failure to remove the mark.
FORGET_MISSES = ("ugclu_hvp", "ga", "rl", "salun", "scrub")


def _known(names, misses, reason):
  return [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=reason)) if n in misses else n
    for n in names
  ]


@pytest.mark.parametrize(
  "name", _known(NAMES + (MT.ORACLE,), PAPER_COLLAPSES, "pure ascent, as published")
)
def test_no_request_collapses(runs, name):
  found = [
    f"seed {seed}, stream {stream!r}: [{c['index']}] {c['request']}: {c['reason']}"
    for seed, stream, report, _ in runs
    for c in R.collapses(report)
    if c["method"] == name
  ]
  assert not found, f"{name} collapsed:\n" + "\n".join(found)


def _forget_gaps(runs, name):
  """``(gap, where)``: |FA - oracle FA| after every U:c and U:t request."""
  gaps = []
  for seed, _, report, _ in runs:
    oracle = report["methods"][MT.ORACLE]["requests"]
    for q, o in zip(report["methods"][name]["requests"], oracle):
      if q["request"].startswith(("U:c", "U:t")):
        gap = abs(q["metrics"]["forget_acc"] - o["metrics"]["forget_acc"])
        gaps.append((gap, f"seed {seed} [{q['index']}] {q['request']}"))
  assert gaps
  return gaps


@pytest.mark.parametrize("name", _known(UGCLU, FORGET_MISSES, "measured miss"))
def test_ugclu_forgets_classes_and_tasks_like_the_oracle(runs, name):
  bad = [(round(g, 3), w) for g, w in _forget_gaps(runs, name) if g > FORGET_TOLERANCE]
  assert not bad, bad


@pytest.mark.parametrize("name", _known(BASELINES, FORGET_MISSES, "measured miss"))
def test_unlearning_baselines_forget_classes_and_tasks_like_the_oracle(runs, name):
  bad = [(round(g, 3), w) for g, w in _forget_gaps(runs, name) if g > FORGET_TOLERANCE]
  assert not bad, bad


# ---------------------------------------------------------------------------
# experiments/stress.py's table (hand-built reports; no training).
# ---------------------------------------------------------------------------


def _stress_module():
  spec = importlib.util.spec_from_file_location(
    "stress", pathlib.Path(__file__).resolve().parent.parent / "experiments" / "stress.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _run(stream_id, seed, gaps, remain, collapsed=None):
  """A report of ``L:t0 U:c0 U:c1``: ugclu's two unlearn gaps and remain accuracies."""

  def req(i, token, gap, ra, reason=None):
    return {
      "index": i,
      "request": token,
      "seconds": 1.0,
      "acc_per_task": [ra],
      "metrics": {"avg_gap": gap, "remain_acc": ra},
      "collapsed": reason,
    }

  tokens = ["L:t0", "U:c0", "U:c1"]
  ug = [
    req(0, "L:t0", None, 1.0),
    req(1, "U:c0", gaps[0], remain[0], collapsed),
    req(2, "U:c1", gaps[1], remain[1]),
  ]
  oracle = [req(i, t, None if i == 0 else 0.0, 1.0) for i, t in enumerate(tokens)]
  report = {
    "config": {"seed": seed, "data": {}, "train": {"model": "mlp"}},
    "dataset": "digits",
    "stream": tokens,
    "methods": {"ugclu": {"requests": ug}, "retrain": {"requests": oracle}},
  }
  return {
    "stream_id": stream_id,
    "seed": seed,
    "stream": " ".join(tokens),
    "report": report,
    "seconds": 10.0,
  }


def test_stress_table_by_hand():
  stress = _stress_module()
  runs = [
    _run(0, 0, (0.1, 0.3), (0.9, 0.8)),
    _run(0, 1, (0.0, 0.2), (0.95, 0.6), collapsed="chance"),
    _run(1, 0, (0.4, 0.4), (0.7, 0.9)),
  ]
  text = stress.stress_table(
    runs,
    command="python experiments/stress.py",
    wall_seconds=5.0,
    failed=[{"stream_id": 2, "seed": 0, "stream": "L:t0", "error": "diverged"}],
  )
  # Run gaps 0.2, 0.1, 0.4: mean 23.3 %, worst 40 %; worst request 40 %; worst RA 60 %.
  assert "| ugclu | 3 | 1/3 (33%) | 23.3% | 40.0% | 40.0% | 60.0% |" in text
  assert "| retrain (oracle) | 3 | 0/3 (0%) | 0.0% | 0.0% | 0.0% | 100.0% |" in text
  assert "worst RA 60.0% (s0 seed 1 [2] `U:c1`)" in text
  assert "- ugclu: s0 seed 1 [1] `U:c0`: chance" in text
  assert "- s2 seed 0: diverged" in text
  assert "the runs took 30 s in all" in text


def test_stress_streams_are_fixed_by_the_stream_seed():
  stress = _stress_module()
  tasks = D.make_tasks(10, 2)
  a = stress.draw_streams(3, tasks=tasks, num_classes=10, length=6)
  assert a == stress.draw_streams(3, tasks=tasks, num_classes=10, length=6)
  assert a != stress.draw_streams(3, tasks=tasks, num_classes=10, length=6, stream_seed=1)
  assert len(set(a)) == 3


def test_paired_lines_by_hand():
  stress = _stress_module()
  runs = [
    _run(0, 0, (0.1, 0.3), (0.9, 0.8)),
    _run(0, 1, (0.0, 0.2), (0.95, 0.6)),
    _run(1, 0, (0.4, 0.4), (0.7, 0.9)),
  ]
  # FT's run gaps 0.3, 0.3, 0.4 against UG-CLU's 0.2, 0.1, 0.4: Δ = -0.1, -0.2, 0.0,
  # mean -0.1, sd 0.1, t(0.975, 2) = 4.303: half-width 0.2484.
  for r, ft_gap in zip(runs, (0.3, 0.3, 0.4)):
    ft = json.loads(json.dumps(r["report"]["methods"]["ugclu"]))
    for q in ft["requests"][1:]:
      q["metrics"]["avg_gap"] = ft_gap
    r["report"]["methods"]["ft"] = ft
  lines = stress.paired_lines(runs)
  assert lines[0] == "## Paired with ugclu"
  assert lines[-2].startswith("| ft | 3 | -10.0 | [-34.8, +14.8] | 2/3 | ")
  assert stress.paired_lines(runs, reference="nobody") == []


def test_merge_reports_adds_methods_and_checks_the_oracle():
  stress = _stress_module()
  a = _run(0, 0, (0.1, 0.3), (0.9, 0.8))["report"]
  b = json.loads(json.dumps(a))
  b["config"]["methods"] = ["ft"]
  b["methods"]["ft"] = b["methods"].pop("ugclu")
  b["methods"]["ugclu"] = json.loads(json.dumps(b["methods"]["ft"]))
  b["methods"]["ugclu"]["requests"][1]["metrics"]["avg_gap"] = 0.99  # a's own entry wins
  merged = stress.merge_reports(a, b)
  assert list(merged["methods"]) == ["ugclu", "retrain", "ft"]
  assert merged["methods"]["ugclu"] == a["methods"]["ugclu"]
  assert "ft" not in a["methods"]  # a is not modified
  with pytest.raises(ValueError, match="not finished"):
    stress.merge_reports(a, {**b, "methods": {**b["methods"], "x": {"requests": []}}})
  other_seed = json.loads(json.dumps(b))
  other_seed["config"]["seed"] = 1
  with pytest.raises(ValueError, match="differ in more than their methods"):
    stress.merge_reports(a, other_seed)
  b["methods"]["retrain"]["requests"][1]["metrics"]["avg_gap"] = 0.01
  with pytest.raises(ValueError, match=r"oracles disagree on \[1\] avg_gap"):
    stress.merge_reports(a, b)
