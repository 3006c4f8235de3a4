"""The runner end to end through the CLI on scikit-learn digits."""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import ugclu_jax
from ugclu_jax import cli
from ugclu_jax import data as D
from ugclu_jax import report as R
from ugclu_jax import runner

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The smoke config (every request kind) with a smaller budget.
FAST = ["--set", "train.learn_epochs=2", "--set", "train.unlearn_iterations=40"]
STREAM = "L:t0 L:t1 L:t2 U:c1,5 L:t3 U:r0.1 L:t4 U:t3"


def _cli(workdir, *extra, resume=False):
  cmd = [
    sys.executable,
    "-m",
    "ugclu_jax",
    "run",
    "--config",
    "smoke",
    "--workdir",
    str(workdir),
    "--no-progress",
    *FAST,
    *extra,
  ]
  if resume:
    cmd.append("--resume")
  return cmd


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("smoke") / "run"
  proc = subprocess.run(_cli(workdir), capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def test_end_to_end_report(smoke_run):
  report = json.loads((smoke_run / "report.json").read_text())
  assert report["stream"] == STREAM.split()
  assert set(report["methods"]) == {"ugclu", "retrain"}
  for entry in report["methods"].values():
    assert [q["request"] for q in entry["requests"]] == STREAM.split()
    for q in entry["requests"]:
      assert len(q["acc_per_task"]) == 5
      for key in (
        "forget_acc",
        "remain_acc",
        "test_acc",
        "mia_efficacy",
        "avg_gap",
        "js_div",
        "kl_div",
        "avg_acc",
        "forgetting",
        "bwt",
        "relapse",
        "steps",
      ):
        assert key in q["metrics"]
      unlearn = q["request"].startswith("U:")
      assert (q["metrics"]["forget_acc"] is None) == (not unlearn)
      assert (q["metrics"]["mia_efficacy"] is None) == (not unlearn)
  ug = report["methods"]["ugclu"]["requests"]
  oracle = report["methods"]["retrain"]["requests"]
  # Training time and compilation time apart: the first request compiles the learn steps.
  for q in ug + oracle:
    assert q["seconds"] >= 0.0 and q["compile_seconds"] >= 0.0
  assert ug[0]["compile_seconds"] > 0.0
  # After U:c1,5 the oracle never saw classes 1 and 5: its forget accuracy is ~0.
  assert oracle[3]["metrics"]["forget_acc"] < 0.05
  # UG-CLU's forget accuracy dropped sharply from its accuracy on those samples
  # before the request (~1.0, they were training data), while the remaining accuracy holds.
  assert ug[2]["metrics"]["remain_acc"] > 0.85
  assert ug[3]["metrics"]["forget_acc"] < 0.3
  assert ug[3]["metrics"]["remain_acc"] > 0.85
  assert ug[3]["metrics"]["avg_gap"] is not None
  # Task 3 (classes 6, 7) is unlearned last: no accuracy for it in the final row.
  assert ug[7]["acc_per_task"][3] is None and oracle[7]["acc_per_task"][3] is None
  for name in (
    "report.md",
    "config.json",
    "run.log",
    "metrics_per_request.png",
    "acc_matrix_ugclu.png",
    "acc_matrix_retrain.png",
    "gap_time.png",
    "gap_cost.png",
  ):
    assert (smoke_run / name).is_file(), name
  md = (smoke_run / "report.md").read_text()
  assert "ugclu" in md and "retrain" in md


def test_store_holds_no_forgotten_sample(smoke_run):
  state = runner.load_state(smoke_run)
  ds = D.load_dataset("digits")
  stored = D.store_indices(state["store"])
  assert stored.size > 0
  assert state["learned"][stored].all()
  # U:t3 was last: no sample of task 3's classes (6, 7) remains in the store.
  assert not np.isin(ds.y_train[stored], [6, 7]).any()
  assert not np.isin(ds.y_train[stored], [1, 5]).any()


def test_report_records_its_provenance(smoke_run):
  report = json.loads((smoke_run / "report.json").read_text())
  prov = report["provenance"]
  assert prov["versions"]["jax"] == jax.__version__
  assert prov["versions"]["ugclu_jax"] == ugclu_jax.__version__
  assert prov["devices"]["platform"] == jax.devices()[0].platform
  assert prov["devices"]["count"] == jax.device_count()
  head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT)
  if head.returncode == 0:  # The tests run from a git checkout.
    assert prov["source"]["commit"] == head.stdout.strip()
  assert prov["resumed_at"] is None and "earlier" not in prov
  stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
  assert stamp.match(prov["started"]) and stamp.match(prov["finished"])
  assert prov["started"] <= prov["finished"]
  text = (smoke_run / "report.md").read_text()
  assert f"- run: ugclu_jax {ugclu_jax.__version__}" in text and f"jax {jax.__version__}" in text


def test_same_seed_same_report(smoke_run, tmp_path):
  proc = subprocess.run(
    _cli(tmp_path / "again"), capture_output=True, text=True, cwd=ROOT, timeout=600
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  first = json.loads((smoke_run / "report.json").read_text())
  second = json.loads((tmp_path / "again" / "report.json").read_text())
  assert R.without_timings(first) == R.without_timings(second)


def test_sigkill_mid_request_then_resume(smoke_run, tmp_path):
  workdir = tmp_path / "killed"
  proc = subprocess.Popen(
    _cli(workdir), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT
  )
  # The oracle runs first in each request: once it has finished request 3, UG-CLU is
  # in the middle of that unlearn request (a few tenths of a second of training; with
  # the compiled steps in the persistent cache it may finish and commit before the
  # kill lands, which leaves request 4 to be resumed).
  deadline = time.time() + 300
  for line in proc.stdout:
    if line.startswith("[3] U:c1,5") and "retrain" in line:
      break
    assert time.time() < deadline
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  partial = json.loads((workdir / "report.json").read_text())
  committed = len(partial["methods"]["ugclu"]["requests"])
  assert committed in (3, 4)
  resumed = subprocess.run(
    _cli(workdir, resume=True), capture_output=True, text=True, cwd=ROOT, timeout=600
  )
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resuming" in resumed.stdout
  expected = json.loads((smoke_run / "report.json").read_text())
  got = json.loads((workdir / "report.json").read_text())
  assert R.without_timings(got) == R.without_timings(expected)
  # The resumed run says where it resumed, and keeps the killed invocation's record.
  assert got["provenance"]["resumed_at"] == committed
  assert got["provenance"]["earlier"]["resumed_at"] is None
  assert got["provenance"]["earlier"]["finished"] is None
  # Resuming a finished run only re-renders it: its record stays.
  again = subprocess.run(
    _cli(workdir, resume=True), capture_output=True, text=True, cwd=ROOT, timeout=600
  )
  assert again.returncode == 0, again.stderr[-3000:]
  assert json.loads((workdir / "report.json").read_text())["provenance"] == got["provenance"]


def _short_config():
  """The smoke config on a four-request stream, at a few iterations per request."""
  from ugclu_jax import config as C

  return C.apply_overrides(
    C.load_config("smoke"),
    [
      "stream=L:t0 L:t1 U:c1 L:t2",
      "train.learn_epochs=1",
      "train.unlearn_iterations=10",
      "data.max_eval=300",
    ],
  )


def test_the_order_of_the_methods_changes_no_result(tmp_path):
  from ugclu_jax import config as C

  base = _short_config()
  reports = []
  for order in ("ugclu,ft,retrain", "ft,retrain,ugclu"):  # The oracle never first.
    cfg = C.apply_overrides(base, [f"methods={order}"])
    report = runner.run_experiment(
      cfg, tmp_path / order, progress=False, render=False, echo=lambda s: None
    )
    assert list(report["methods"]) == order.split(",")
    assert report == json.loads((tmp_path / order / "report.json").read_text())
    reports.append(R.without_timings(report))
  assert reports[0]["config"]["methods"] != reports[1]["config"]["methods"]
  assert reports[0]["methods"] == reports[1]["methods"]
  ft = reports[0]["methods"]["ft"]["requests"]
  assert ft[2]["metrics"]["avg_gap"] is not None and ft[3]["metrics"]["relapse"] is not None


def test_a_diverging_method_is_dropped_and_the_others_run_on(tmp_path):
  """on_nonfinite=drop: the diverged method reports where and why and no metrics from
  then on, the others' results are those of a run without it, a resume keeps it
  dropped; on_nonfinite=stop (the default) stops the run."""
  from ugclu_jax import config as C
  from ugclu_jax import methods as MT

  bad = "ugclu_hvp@beta=1e30"  # Its first fused step (L:t1, with a store) overflows.
  base = _short_config()
  quiet = dict(progress=False, render=False, echo=lambda s: None)
  cfg = C.apply_overrides(base, [f"methods=ft,{bad},retrain", "on_nonfinite=drop"])
  report = runner.run_experiment(cfg, tmp_path / "drop", **quiet)
  alone = runner.run_experiment(
    C.apply_overrides(base, ["methods=ft,retrain"]), tmp_path / "alone", **quiet
  )
  for name in ("ft", "retrain"):
    assert R.without_timings(report)["methods"][name] == R.without_timings(alone)["methods"][name]
  reqs = report["methods"][bad]["requests"]
  assert "diverged" not in reqs[0] and reqs[0]["metrics"]["test_acc"] > 0.5
  reasons = {r["diverged"] for r in reqs[1:]}
  assert len(reasons) == 1 and re.match(rf"method '{re.escape(bad)}', request 'L:t1'", *reasons)
  for r in reqs[1:]:
    defined = {k for k, v in r["metrics"].items() if v is not None}
    assert defined == {"steps", "grad_evals", "hvp_evals"}
    assert r["acc_per_task"] == [None] * len(r["acc_per_task"])
  assert all(R.summary(report)[bad][k] is None for k in R.DIVERGED_KEYS)
  assert R.summary(report)["ft"]["avg_gap"] is not None
  assert [(d["method"], d["index"]) for d in R.divergences(report)] == [
    (bad, 1),
    (bad, 2),
    (bad, 3),
  ]
  assert "## Diverged methods" in R.markdown(report)

  # Resumed after the unlearn request (the last checkpoint gone): still dropped, same report.
  shutil.rmtree(tmp_path / "drop" / "checkpoints" / "4")
  resumed = runner.run_experiment(cfg, tmp_path / "drop", resume=True, **quiet)
  assert R.without_timings(resumed) == R.without_timings(report)

  with pytest.raises(MT.NonFiniteError, match=re.escape(bad)):
    runner.run_experiment(C.apply_overrides(cfg, ["on_nonfinite=stop"]), tmp_path / "stop", **quiet)


def test_a_checkpoint_without_typed_history_is_refused():
  with pytest.raises(runner.RunError, match="--overwrite"):
    runner._history_from_meta({"history": {"forget_acc": {}}}, ["retrain", "ugclu"], "7")


@pytest.mark.parametrize(
  "stream, message",
  [
    ("L:t0 X:t1", "'X:t1'"),
    ("L:t0 L:t9", "'L:t9'"),
    ("L:t0 U:c12", "'U:c12'"),
    ("L:t0 U:t1", "'U:t1'"),
    ("L:t0 U:t0 U:t0", "'U:t0'"),
    ("L:t0 U:r1.5", "'U:r1.5'"),
    ("L:t0 U:r0", "'U:r0'"),
    ("", "empty"),
  ],
)
def test_malformed_streams_are_refused(stream, message, tmp_path, capsys):
  workdir = tmp_path / "run"
  start = time.time()
  code = cli.main(
    ["run", "--config", "smoke", "--workdir", str(workdir), "--set", f"stream={stream}"]
  )
  err = capsys.readouterr().err.strip()
  assert code == 2
  assert time.time() - start < 10
  assert len(err.splitlines()) == 1 and message in err, err
  assert not workdir.exists()


def test_bad_input_is_one_line_and_writes_nothing(smoke_run, tmp_path, capsys):
  cases = [
    (["--config", "nosuch"], "unknown config"),
    (["--config", "smoke", "--set", "methods=ugclu,magic"], "unknown method 'magic'"),
    (["--config", "smoke", "--set", "data.name=nosuch"], "nosuch"),
    (["--config", "smoke", "--set", "data.batch_size=0"], "data.batch_size"),
    (["--config", "smoke", "--set", "train.model=vit"], "train.model"),
    (["--config", "smoke", "--set", "nokey=1"], "unknown config key nokey"),
  ]
  for args, message in cases:
    code = cli.main(["run", "--workdir", str(tmp_path / "x"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, (args, err)
    assert not (tmp_path / "x").exists()
  # A finished run is never overwritten by a new run in the same workdir.
  before = (smoke_run / "report.json").read_bytes()
  code = cli.main(["run", "--config", "smoke", "--workdir", str(smoke_run)])
  assert code == 2 and "--resume" in capsys.readouterr().err
  assert (smoke_run / "report.json").read_bytes() == before


def test_cli_subprocess_error_has_no_traceback(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "ugclu_jax",
      "run",
      "--config",
      "smoke",
      "--workdir",
      str(tmp_path / "w"),
      "--set",
      "stream=L:t0 U:t3",
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=120,
  )
  assert proc.returncode == 2
  assert "Traceback" not in proc.stderr
  assert proc.stderr.strip().startswith("error:") and "'U:t3'" in proc.stderr


def test_report_command_renders_and_aggregates(smoke_run, tmp_path):
  out = tmp_path / "agg"
  assert (
    cli.main(["report", str(smoke_run), str(smoke_run / "report.json"), "--out", str(out)]) == 2
  )  # one seed twice is refused, in one line
  assert cli.main(["report", str(smoke_run), "--out", str(out)]) == 0
  assert (out / "report.md").is_file() and (out / "metrics_per_request.png").is_file()


def test_three_seeds_aggregate(tmp_path):
  """``seeds=3``: one run per seed in seed_<s>/, each the single-seed run, and their
  aggregate as the workdir's report; the ``report`` command aggregates the same."""
  from ugclu_jax import config as C
  from ugclu_jax import report as R

  base = C.apply_overrides(
    C.load_config("smoke"),
    ["stream=L:t0 L:t1 U:c1", "train.learn_epochs=1", "train.unlearn_iterations=10"],
  )
  multi = tmp_path / "multi"
  cfg = C.apply_overrides(base, ["seeds=3"])
  report = runner.run_experiment(cfg, multi, progress=False, echo=lambda s: None)
  assert report["seeds"] == [0, 1, 2] and report["runs"] == ["seed_0", "seed_1", "seed_2"]
  assert json.loads((multi / "report.json").read_text()) == report
  assert json.loads((multi / "config.json").read_text()) == C.to_dict(cfg)
  dirs = [str(multi / f"seed_{s}") for s in (0, 1, 2)]
  # Seed 1 of the three is the run of seed 1 alone.
  alone = runner.run_experiment(
    C.apply_overrides(base, ["seed=1"]), tmp_path / "s1", progress=False, echo=lambda s: None
  )
  assert R.without_timings(alone) == R.without_timings(R.load(dirs[1]))
  out = tmp_path / "agg"
  assert cli.main(["report", *dirs, "--out", str(out)]) == 0
  agg = json.loads((out / "report_aggregated.json").read_text())
  assert R.without_timings(agg) == R.without_timings(
    {k: v for k, v in report.items() if k != "runs"}
  )
  assert agg["seeds"] == [0, 1, 2]
  # Two seeds at a time, each in a process of its own: the same reports, and each seed's
  # lines reach echo.
  lines = []
  par = runner.run_experiment(
    cfg, tmp_path / "par", progress=False, render=False, echo=lines.append, jobs=2
  )
  assert R.without_timings(par) == R.without_timings(report)
  for s, d in zip((0, 1, 2), dirs):
    assert R.without_timings(R.load(tmp_path / "par" / f"seed_{s}")) == R.without_timings(R.load(d))
    assert any(line.startswith(f"[seed {s}] done: ") for line in lines), lines
  fa = [R.load(d)["methods"]["ugclu"]["requests"][2]["metrics"]["forget_acc"] for d in dirs]
  got = agg["methods"]["ugclu"]["requests"][2]
  np.testing.assert_allclose(got["metrics"]["forget_acc"], np.mean(fa), rtol=1e-9)
  np.testing.assert_allclose(
    got["metrics_std"]["forget_acc"], np.std(fa, ddof=1), rtol=1e-6, atol=1e-12
  )
  md = (multi / "report.md").read_text()
  assert "±" in md and "## Paired with ugclu" in md and "retrain" in md
  assert (multi / "metrics_per_request.png").is_file()
  # Re-rendering one run reproduces its report.md.
  single = tmp_path / "single"
  assert cli.main(["report", dirs[0], "--out", str(single)]) == 0
  assert (single / "report.md").read_text() == (pathlib.Path(dirs[0]) / "report.md").read_text()
  assert R.load(dirs[0])["stream"] == ["L:t0", "L:t1", "U:c1"]
  # The audit checks every seed's run.
  assert cli.main(["audit", str(multi)]) == 0
  # The workdir holds a run: refused without --resume; --resume of the finished seeds only
  # re-renders them; another config is refused.
  with pytest.raises(runner.RunError, match="already holds a run"):
    runner.run_experiment(cfg, multi, progress=False, echo=lambda s: None)
  again = runner.run_experiment(cfg, multi, resume=True, progress=False, echo=lambda s: None)
  assert R.without_timings(again) == R.without_timings(report)
  with pytest.raises(runner.RunError, match="config differs"):
    runner.run_experiment(
      C.apply_overrides(cfg, ["seeds=2"]), multi, resume=True, progress=False, echo=print
    )


def _same(old, new, path=""):
  """Differences between two report trees: floats within 1e-6, timings ignored."""
  if isinstance(old, dict) and isinstance(new, dict):
    keys = (set(old) | set(new)) - {"seconds", "compile_seconds"}
    return [d for k in sorted(keys) for d in _same(old.get(k), new.get(k), f"{path}/{k}")]
  if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
    return [d for i, (a, b) in enumerate(zip(old, new)) for d in _same(a, b, f"{path}[{i}]")]
  if isinstance(old, float) or isinstance(new, float):
    if isinstance(old, (int, float)) and isinstance(new, (int, float)) and abs(old - new) <= 1e-6:
      return []
  elif old == new:
    return []
  return [f"{path}: {old!r} != {new!r}"]


def test_the_smoke_report_is_the_pinned_one(smoke_run):
  # tests/data/smoke_report.json: this smoke run when every method came to draw the same
  # batches (methods.method_seed). A change to it must be deliberate: regenerate the file
  # and say why in the commit. Any changed prediction moves an accuracy by at least 1/2000;
  # floats are compared within 1e-6.
  pinned = json.loads((ROOT / "tests" / "data" / "smoke_report.json").read_text())
  report = json.loads((smoke_run / "report.json").read_text())
  now = {"stream": report["stream"], "methods": report["methods"]}
  assert _same(pinned, now) == []


def test_nothing_compiles_after_the_first_request_of_each_kind(tmp_path):
  """Over a stream, training and evaluation compile only in the first learn request
  without and with a store and in the first unlearn request: every later request,
  whatever its data sizes, reuses their programs."""
  from ugclu_jax import config as C
  from ugclu_jax.host import CompileClock

  cfg = C.apply_overrides(
    C.load_config("smoke"),
    [
      "stream=L:t0 L:t1 L:t2 U:c1 L:t3 U:r0.2 U:t2",
      "methods=ugclu,ft",
      "train.learn_epochs=1",
      "train.unlearn_iterations=10",
    ],
  )
  compiled = {}  # request index -> compile seconds so far, at its last log line
  with CompileClock() as clock:

    def echo(line):
      found = re.match(r"\[(\d+)\]", line)
      if found:
        compiled[int(found.group(1))] = clock.seconds

    runner.run_experiment(cfg, tmp_path / "run", progress=False, render=False, echo=echo)
  assert compiled[3] > compiled[2] > 0.0  # The first unlearn request compiled its steps.
  assert compiled[6] == compiled[3], compiled  # Requests 4, 5, 6 compiled nothing.
