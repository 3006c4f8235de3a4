"""Tests of ugclu_jax.report: summary, Markdown, plots, seed aggregation, render."""

import copy
import json
import math
import os
import pathlib
import sys

import numpy as np
import pytest

from ugclu_jax import report as rp

_STREAM = ["L:t0", "L:t1", "U:t0", "L:t2"]
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _req(
  index,
  token,
  seconds,
  *,
  fa=None,
  ra=None,
  ta=None,
  mia=None,
  gap=None,
  js=None,
  avg=None,
  fgt=None,
  bwt=None,
  relapse=None,
  steps=None,
  acc=(),
):
  return {
    "index": index,
    "request": token,
    "seconds": seconds,
    "compile_seconds": 0.25,
    "metrics": {
      "forget_acc": fa,
      "remain_acc": ra,
      "test_acc": ta,
      "mia_efficacy": mia,
      "avg_gap": gap,
      "js_div": js,
      "kl_div": None,
      "avg_acc": avg,
      "forgetting": fgt,
      "bwt": bwt,
      "relapse": relapse,
      "steps": steps,
      "grad_evals": None if steps is None else 2 * steps,
      "hvp_evals": None,
    },
    "acc_per_task": list(acc),
  }


def _report(seed=0):
  """Three methods, four requests (two of them unlearn), several nulls."""
  return {
    "config": {
      "name": "demo",
      "seed": seed,
      "mia_variant": "entropy_logreg",
      "data": {"name": "digits"},
      "some_future_key": [1, 2],
    },
    "stream": list(_STREAM),
    "methods": {
      "ft": {
        "requests": [
          _req(
            0,
            "L:t0",
            2.0,
            ra=0.9,
            ta=0.88,
            avg=0.88,
            fgt=0.0,
            bwt=0.0,
            steps=10,
            acc=[0.88, None, None],
          ),
          _req(
            1,
            "L:t1",
            2.0,
            ra=0.85,
            ta=0.8,
            avg=0.8,
            fgt=0.1,
            bwt=-0.1,
            steps=10,
            acc=[0.78, 0.82, None],
          ),
          _req(
            2,
            "U:t0",
            1.0,
            fa=0.5,
            ra=0.8,
            ta=0.75,
            mia=0.2,
            gap=0.3,
            js=0.2,
            avg=0.75,
            fgt=0.1,
            bwt=-0.1,
            steps=5,
            acc=[None, 0.75, None],
          ),
          _req(
            3,
            "L:t2",
            2.0,
            fa=0.4,
            ra=0.8,
            ta=0.7,
            mia=0.3,
            gap=None,
            js=0.1,
            avg=0.7,
            fgt=0.2,
            bwt=-0.2,
            relapse=0.1,
            steps=10,
            acc=[None, 0.65, 0.75],
          ),
        ]
      },
      "retrain": {
        "requests": [
          _req(
            0,
            "L:t0",
            3.0,
            ra=0.9,
            ta=0.9,
            avg=0.9,
            fgt=0.0,
            bwt=0.0,
            steps=20,
            acc=[0.9, None, None],
          ),
          _req(
            1,
            "L:t1",
            3.0,
            ra=0.9,
            ta=0.85,
            avg=0.85,
            fgt=0.0,
            bwt=0.0,
            steps=20,
            acc=[0.85, 0.85, None],
          ),
          _req(
            2,
            "U:t0",
            3.0,
            fa=0.0,
            ra=0.9,
            ta=0.85,
            mia=0.9,
            gap=0.0,
            js=0.0,
            avg=0.85,
            fgt=0.0,
            bwt=0.0,
            steps=20,
            acc=[None, 0.85, None],
          ),
          _req(
            3,
            "L:t2",
            3.0,
            fa=0.0,
            ra=0.9,
            ta=0.8,
            mia=0.9,
            gap=0.0,
            js=0.0,
            avg=0.8,
            fgt=0.0,
            bwt=0.0,
            relapse=0.0,
            steps=20,
            acc=[None, 0.8, 0.8],
          ),
        ]
      },
      "ugclu": {
        "requests": [
          _req(
            0,
            "L:t0",
            1.0,
            ra=0.9,
            ta=0.9,
            avg=0.9,
            fgt=0.0,
            bwt=0.0,
            steps=8,
            acc=[0.9, None, None],
          ),
          _req(
            1,
            "L:t1",
            1.5,
            ra=0.88,
            ta=0.84,
            avg=0.84,
            fgt=0.02,
            bwt=-0.02,
            steps=8,
            acc=[0.84, 0.84, None],
          ),
          _req(
            2,
            "U:t0",
            0.5,
            fa=0.05,
            ra=0.88,
            ta=0.83,
            mia=0.8,
            gap=0.04,
            js=0.02,
            avg=0.83,
            fgt=0.02,
            bwt=-0.02,
            steps=4,
            acc=[None, 0.83, None],
          ),
          _req(
            3,
            "L:t2",
            1.25,
            fa=0.05,
            ra=0.87,
            ta=0.8,
            mia=0.85,
            gap=0.02,
            js=0.01,
            avg=0.79,
            fgt=0.04,
            bwt=-0.04,
            relapse=None,
            steps=8,
            acc=[None, 0.8, 0.78],
          ),
        ]
      },
    },
  }


def _seeded(seed, ugclu_gap):
  rep = _report(seed)
  rep["methods"]["ugclu"]["requests"][2]["metrics"]["avg_gap"] = ugclu_gap
  rep["methods"]["ugclu"]["requests"][2]["seconds"] = 0.5 + seed
  return rep


def _write(dirname, report):
  os.makedirs(dirname, exist_ok=True)
  with open(os.path.join(dirname, "report.json"), "w", encoding="utf-8") as f:
    json.dump(report, f)
  return str(dirname)


def _assert_png(path):
  assert os.path.getsize(path) > 100
  with open(path, "rb") as f:
    assert f.read(8) == _PNG_MAGIC


def test_summary_hand_values():
  s = rp.summary(_report())
  assert list(s) == ["ugclu", "ft", "retrain"]
  assert all(tuple(v) == rp.SUMMARY_KEYS for v in s.values())
  # ugclu: gap over the unlearn request only (the L:t2 gap of 0.02 is excluded).
  assert s["ugclu"]["avg_gap"] == pytest.approx(0.04)
  assert s["ugclu"]["avg_acc"] == pytest.approx(0.79)
  assert s["ugclu"]["forgetting"] == pytest.approx(0.04)
  assert s["ugclu"]["bwt"] == pytest.approx(-0.04)
  assert s["ugclu"]["relapse"] is None
  assert s["ugclu"]["seconds"] == pytest.approx(4.25)
  n_requests = len(_report()["methods"]["ugclu"]["requests"])
  assert s["ugclu"]["compile_seconds"] == pytest.approx(0.25 * n_requests)
  assert s["ugclu"]["steps"] == 28 and s["ugclu"]["grad_evals"] == 56
  assert s["ugclu"]["hvp_evals"] is None
  # ft: relapse defined on one request only; final values from the last request.
  assert s["ft"]["avg_gap"] == pytest.approx(0.3)
  assert s["ft"]["relapse"] == pytest.approx(0.1)
  assert s["ft"]["avg_acc"] == pytest.approx(0.7)
  assert s["retrain"]["avg_gap"] == 0.0


def test_without_timings_drops_only_the_timings():
  report = _report()
  before = copy.deepcopy(report)
  stripped = rp.without_timings(report)
  assert report == before  # the input is untouched
  for name, entry in stripped["methods"].items():
    for got, want in zip(entry["requests"], report["methods"][name]["requests"]):
      assert "seconds" not in got and "compile_seconds" not in got
      assert got == {k: v for k, v in want.items() if k not in rp.TIMING_KEYS}
  changed = copy.deepcopy(report)
  changed["methods"]["ugclu"]["requests"][0]["seconds"] += 1.0
  changed["methods"]["ugclu"]["requests"][1]["compile_seconds"] += 3.0
  assert rp.without_timings(changed) == stripped
  changed["methods"]["ugclu"]["requests"][0]["metrics"]["remain_acc"] = 0.0
  assert rp.without_timings(changed) != stripped


def test_summary_gap_mean_over_several_unlearn_requests():
  rep = _report()
  rep["stream"] = ["L:t0", "U:r0.5", "U:t0", "L:t2"]
  reqs = rep["methods"]["ugclu"]["requests"]
  reqs[1]["request"], reqs[1]["metrics"]["avg_gap"] = "U:r0.5", 0.1
  reqs[2]["metrics"]["avg_gap"] = 0.3
  assert rp.summary(rep)["ugclu"]["avg_gap"] == pytest.approx(0.2)
  reqs[2]["metrics"]["avg_gap"] = None  # undefined ones do not count
  assert rp.summary(rep)["ugclu"]["avg_gap"] == pytest.approx(0.1)


def test_summary_without_unlearn_requests_is_none():
  rep = _report()
  for entry in rep["methods"].values():
    for req in entry["requests"]:
      req["request"] = req["request"].replace("U:", "L:")
  assert rp.summary(rep)["ugclu"]["avg_gap"] is None


def test_bad_report_is_a_one_line_value_error():
  with pytest.raises(ValueError, match="methods") as e:
    rp.summary({"stream": ["L:t0"], "methods": {}})
  assert "\n" not in str(e.value)
  rep = _report()
  rep["methods"]["ft"]["requests"][0]["metrics"] = [1, 2]
  with pytest.raises(ValueError, match="'ft' request 0"):
    rp.markdown(rep)


def test_markdown_content_and_determinism():
  rep = _report()
  md = rp.markdown(rep)
  assert md == rp.markdown(copy.deepcopy(rep))
  assert "L:t0 L:t1 U:t0 L:t2" in md.splitlines()[0] and "seed 0" in md.splitlines()[0]
  assert "entropy_logreg" in md
  for name in ("ugclu", "ft", "retrain (oracle)"):
    assert f"| {name} |" in md
  for i, token in enumerate(_STREAM):
    assert f"### Request {i}: `{token}`" in md
    assert f"| {i} `{token}` |" in md  # accuracy-matrix rows
  summary_rows = [l for l in md.split("## Requests")[0].splitlines() if l.startswith("| ")][1:]
  assert summary_rows[0].startswith("| ugclu |")
  assert summary_rows[-1].startswith("| retrain (oracle) |")
  # ugclu's U:t0 row: FA, RA, TA, MIA, gap in percent, JS as a number, time; learn rows dash.
  assert "| ugclu | 5.0% | 88.0% | 83.0% | 80.0% | 4.0% | 0.0200 | 0.50 |" in md
  assert "| ugclu | — | 90.0% | 90.0% | — | — | — | 1.00 |" in md
  assert "| 2 `U:t0` | — | 83.0% | — |" in md
  assert "±" not in md and "None" not in md and "nan" not in md.lower()


def test_plot_writes_pngs(tmp_path):
  preloaded = "matplotlib.pyplot" in sys.modules
  paths = rp.plot(_report(), str(tmp_path / "plots"))
  names = sorted(os.path.basename(p) for p in paths)
  assert names == sorted(
    [
      "acc_matrix_ugclu.png",
      "acc_matrix_ft.png",
      "acc_matrix_retrain.png",
      "acc_diff_ugclu.png",
      "acc_diff_ft.png",
      "metrics_per_request.png",
      "gap_time.png",
      "gap_cost.png",
    ]
  )
  for p in paths:
    _assert_png(p)
  if not preloaded:  # the figures are drawn without pyplot
    assert "matplotlib.pyplot" not in sys.modules


def test_unlearning_cost_against_the_oracle_by_hand():
  # The one unlearn request U:t0: ugclu 0.5 s and 8 gradients, ft 1.0 s and 10, the
  # oracle's retraining 3.0 s and 40; learn requests do not count.
  s = rp.summary(_report())
  assert s["ugclu"]["unlearn_seconds"] == 0.5 and s["ugclu"]["unlearn_grad_evals"] == 8
  assert s["ugclu"]["oracle_time_share"] == pytest.approx(0.5 / 3.0)
  assert s["ugclu"]["oracle_grad_share"] == pytest.approx(8 / 40)
  assert s["ft"]["oracle_time_share"] == pytest.approx(1.0 / 3.0)
  assert s["retrain"]["oracle_time_share"] == 1.0
  no_oracle = _report()
  del no_oracle["methods"]["retrain"]
  assert rp.summary(no_oracle)["ugclu"]["oracle_time_share"] is None
  md = rp.markdown(_report())
  assert "unlearn time / oracle's" in md


def test_aggregate_mean_std_by_hand():
  gaps = [0.04, 0.06, 0.11]
  agg = rp.aggregate([_seeded(s, g) for s, g in zip((0, 1, 2), gaps)])
  assert agg["seeds"] == [0, 1, 2]
  assert agg["stream"] == _STREAM and "seed" not in agg["config"]
  req = agg["methods"]["ugclu"]["requests"][2]
  mean = sum(gaps) / 3
  std = math.sqrt(sum((g - mean) ** 2 for g in gaps) / 2)
  assert req["metrics"]["avg_gap"] == pytest.approx(mean)
  assert req["metrics_std"]["avg_gap"] == pytest.approx(std)
  assert req["seconds"] == pytest.approx(1.5) and req["seconds_std"] == pytest.approx(1.0)
  assert req["metrics"]["forget_acc"] == pytest.approx(0.05)
  assert req["metrics_std"]["forget_acc"] == pytest.approx(0.0)
  assert req["metrics"]["kl_div"] is None and req["metrics_std"]["kl_div"] is None
  assert req["acc_per_task"] == [None, pytest.approx(0.83), None]
  assert req["acc_per_task_std"] == [None, pytest.approx(0.0), None]
  # The summary is the mean and std over the seeds' summaries.
  assert rp.summary(agg)["ugclu"]["avg_gap"] == pytest.approx(mean)
  assert agg["summary_std"]["ugclu"]["avg_gap"] == pytest.approx(std)
  assert agg["summary_std"]["ugclu"]["seconds"] == pytest.approx(1.0)
  # It is plain JSON.
  assert json.loads(json.dumps(agg)) == agg


def test_aggregate_intervals_and_paired_differences_by_hand():
  gaps = [0.04, 0.06, 0.11]  # ugclu's gap per seed; ft's is 0.30 on every seed.
  agg = rp.aggregate([_seeded(s, g) for s, g in zip((0, 1, 2), gaps)])
  mean = sum(gaps) / 3
  std = math.sqrt(sum((g - mean) ** 2 for g in gaps) / 2)
  t_975_2 = 4.302652729911275  # Student t, 2 degrees of freedom, 0.975 quantile
  assert agg["summary_ci95"]["ugclu"]["avg_gap"] == pytest.approx(t_975_2 * std / math.sqrt(3))
  assert agg["summary_ci95"]["ft"]["avg_gap"] == pytest.approx(0.0)
  paired = agg["paired"]
  assert paired["reference"] == "ugclu" and set(paired["methods"]) == {"ft", "retrain"}
  d = paired["methods"]["ft"]["avg_gap"]  # 0.04 - 0.30, 0.06 - 0.30, 0.11 - 0.30
  assert d["n"] == 3 and d["mean"] == pytest.approx(mean - 0.3)
  half = t_975_2 * std / math.sqrt(3)
  assert d["ci95"] == [pytest.approx(mean - 0.3 - half), pytest.approx(mean - 0.3 + half)]
  assert d["reference_lower"] == 3
  assert d["wilcoxon_p"] == pytest.approx(0.25)  # exact: all 3 of 3 signs agree, 2 / 2**3
  md = rp.markdown(agg)
  assert "## Paired with ugclu" in md
  assert f"| ft | avg_gap | 3 | {100 * (mean - 0.3):+.1f} |" in md
  # One seed: no interval, no test.
  one = rp.paired_difference([0.1], [0.2])
  assert one["ci95"] is None and one["wilcoxon_p"] is None
  assert rp.paired_difference([None, 0.1], [0.2, None]) is None
  assert rp.paired_difference([0.1, 0.2], [0.1, 0.2])["wilcoxon_p"] == 1.0


def test_a_method_diverged_on_one_seed_has_no_mean_and_no_paired_difference():
  # ft diverged at its last request on seed 1: its mean over seeds 0 and 2 would flatter it.
  reports = [_seeded(s, g) for s, g in zip((0, 1, 2), (0.04, 0.06, 0.11))]
  last = reports[1]["methods"]["ft"]["requests"][-1]
  last["diverged"] = "method 'ft', request 'L:t2' (#3): loss became non-finite"
  assert all(rp.summary(reports[1])["ft"][k] is None for k in rp.DIVERGED_KEYS)
  assert rp.summary(reports[1])["ft"]["seconds"] is not None
  agg = rp.aggregate(reports)
  assert agg["diverged"] == {"ft": [1]}
  s = rp.summary(agg)
  assert all(s["ft"][k] is None for k in rp.DIVERGED_KEYS)
  assert s["ugclu"]["avg_gap"] == pytest.approx(0.07) and s["ft"]["seconds"] is not None
  assert set(agg["paired"]["methods"]["ft"].values()) == {None}
  assert agg["paired"]["methods"]["retrain"]["avg_gap"] is not None
  req = agg["methods"]["ft"]["requests"][-1]
  assert req["diverged_per_seed"] == [None, last["diverged"], None]
  assert [(d["method"], d["seed"]) for d in rp.divergences(agg)] == [("ft", 1)]
  assert "| ft | 3 `L:t2` | 1 | method 'ft'" in rp.markdown(agg)
  assert "Diverged" not in rp.markdown(rp.aggregate([_seeded(0, 0.1), _seeded(1, 0.2)]))


def test_aggregate_markdown_and_plot(tmp_path):
  agg = rp.aggregate([_seeded(s, g) for s, g in zip((0, 1, 2), (0.04, 0.06, 0.11))])
  md = rp.markdown(agg)
  assert md == rp.markdown(copy.deepcopy(agg))
  assert "seeds 0, 1, 2" in md.splitlines()[0]
  # Gap: mean 7.0 %, std 3.6 %; time: mean 1.50 s, std 1.00 s.
  assert "| 7.0 ± 3.6% |" in md and "| 1.50 ± 1.00 |" in md
  assert "| — |" in md
  paths = rp.plot(agg, str(tmp_path))
  assert len(paths) == 8  # gap_cost.png too: the oracle is there
  for p in paths:
    _assert_png(p)
  # Heat maps of one method only; the summary figures as before.
  some = rp.plot(agg, str(tmp_path / "some"), methods=["ugclu"])
  names = [pathlib.Path(p).name for p in some]
  assert names == [
    "acc_matrix_ugclu.png",
    "acc_diff_ugclu.png",
    "metrics_per_request.png",
    "gap_time.png",
    "gap_cost.png",
  ]
  with pytest.raises(ValueError, match="method 'nope' is not in the report"):
    rp.plot(agg, str(tmp_path / "none"), methods=["nope"])


def test_aggregate_rejects_mismatches():
  a, b = _report(0), _report(1)
  b["stream"] = ["L:t0", "L:t1", "U:t1", "L:t2"]
  with pytest.raises(ValueError, match="stream") as e:
    rp.aggregate([a, b])
  assert "\n" not in str(e.value) and "U:t1" in str(e.value)
  c = _report(2)
  c["methods"]["rl"] = c["methods"].pop("ft")
  with pytest.raises(ValueError, match=r"missing \['ft'\], extra \['rl'\]"):
    rp.aggregate([a, c])
  with pytest.raises(ValueError, match="repeated seed"):
    rp.aggregate([a, _report(0)])
  with pytest.raises(ValueError, match="no reports"):
    rp.aggregate([])
  with pytest.raises(ValueError, match="already an aggregate"):
    rp.aggregate([rp.aggregate([a, _report(1)]), _report(2)])


def test_render_one_dir(tmp_path):
  run = _write(tmp_path / "run", _report())
  md_path = rp.render([run])
  assert md_path == os.path.join(run, "report.md")
  with open(md_path, encoding="utf-8") as f:
    assert f.read() == rp.markdown(_report())
  for name in ("acc_matrix_ugclu.png", "metrics_per_request.png", "gap_time.png"):
    _assert_png(os.path.join(run, name))


def test_render_three_dirs(tmp_path):
  runs = [_write(tmp_path / f"s{s}", _seeded(s, g)) for s, g in zip((0, 1, 2), (0.04, 0.06, 0.11))]
  with pytest.raises(ValueError, match="out_dir"):
    rp.render(runs)
  out = str(tmp_path / "agg")
  md_path = rp.render([os.path.join(runs[0], "report.json")] + runs[1:], out)
  assert md_path == os.path.join(out, "report.md")
  with open(md_path, encoding="utf-8") as f:
    assert "7.0 ± 3.6%" in f.read()
  with open(os.path.join(out, "report_aggregated.json"), encoding="utf-8") as f:
    assert json.load(f)["seeds"] == [0, 1, 2]
  for name in ("acc_matrix_retrain.png", "metrics_per_request.png", "gap_time.png"):
    _assert_png(os.path.join(out, name))


def test_render_missing_or_invalid_report(tmp_path):
  missing = str(tmp_path / "nothing_here")
  with pytest.raises(ValueError, match="no report.json at .*nothing_here") as e:
    rp.render([missing])
  assert "\n" not in str(e.value)
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "report.json").write_text("{not json")
  with pytest.raises(ValueError, match="cannot read .*bad") as e:
    rp.render([str(bad)])
  assert "\n" not in str(e.value)
  (bad / "report.json").write_text(json.dumps({"stream": ["L:t0"]}))
  with pytest.raises(ValueError, match="bad.*methods"):
    rp.render([str(bad)])
  assert not (bad / "report.md").exists()


def _png_size(path):
  """(width, height) in pixels, from the PNG's IHDR chunk."""
  with open(path, "rb") as f:
    head = f.read(24)
  return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_series_breaks_where_a_metric_is_undefined():
  # ft's forget accuracy: undefined at the two first requests, then 0.5 and 0.4.
  xs, ys, _ = rp._series(_report(), "ft", "forget_acc")
  assert list(xs) == [0, 1, 2, 3]
  assert math.isnan(ys[0]) and math.isnan(ys[1]) and list(ys[2:]) == [0.5, 0.4]


def test_accuracy_difference_by_hand():
  report = _report()
  mean, std = rp.accuracy_matrix(report, "ft")
  assert mean.shape == (4, 3) and np.isnan(std).all()
  assert mean[1, 0] == pytest.approx(0.78) and math.isnan(mean[0, 1])
  oracle = rp.accuracy_matrix(report, "retrain")[0]
  diff = rp.accuracy_difference(report, "ft")
  both = ~(np.isnan(mean) | np.isnan(oracle))
  np.testing.assert_allclose(diff[both], (mean - oracle)[both])
  assert np.isnan(diff[~both]).all()
  del report["methods"]["retrain"]
  assert rp.accuracy_difference(report, "ft") is None


def test_accuracy_colours_separate_85_from_100():
  import matplotlib
  from matplotlib import colors as mcolors

  cmap = matplotlib.colormaps["viridis"]
  norm = mcolors.BoundaryNorm(rp.ACC_LEVELS, cmap.N)
  assert cmap(norm(86.0)) != cmap(norm(99.0))
  assert cmap(norm(86.0)) != cmap(norm(91.0)) != cmap(norm(96.0))


def test_long_streams_make_bounded_figures(tmp_path):
  report = _report()
  n = 300
  report["stream"] = [("U:t0" if i % 7 == 3 else "L:t0") for i in range(n)]
  for entry in report["methods"].values():
    last = entry["requests"][-1]
    entry["requests"] = [
      {**copy.deepcopy(last), "index": i, "request": report["stream"][i]} for i in range(n)
    ]
  paths = rp.plot(report, str(tmp_path))
  limit = (rp.MAX_INCHES + 1) * 100  # dpi 100, plus the padding and outside labels
  for p in paths:
    width, height = _png_size(p)
    assert width <= limit + 400 and height <= limit, (p, width, height)
