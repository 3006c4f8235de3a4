"""experiments/run_all.py: the driver runs and writes its tables (smoke scale)."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

from ugclu_jax import report as R

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _driver():
  spec = importlib.util.spec_from_file_location("run_all", ROOT / "experiments" / "run_all.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_every_experiment_is_a_valid_config():
  from ugclu_jax import config as C

  driver = _driver()
  args = driver._args(["--include", "cpu,gpu", "--out", "/nonexistent"])
  assert len(args.names) == 16 and "cifar10_resnet18_mixed" in args.names
  reported = set()
  for name in args.names:
    curve = "budgets" in driver.experiments()[name]
    cmd = driver.command(name, args, driver.budgets(name, args)[-1] if curve else None)
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    cfg = C.apply_overrides(C.load_config(cmd[cmd.index("--config") + 1]), sets)
    assert cfg.data.validation_per_class > 0 and cfg.train.oracle_max_epochs is not None
    assert cfg.data.max_train_per_class is None  # The full training set.
    if name.startswith("tune_"):
      # Its own seeds and stream, and held-out samples in place of the test set.
      assert (cfg.seed, cfg.seeds) == (1, 2) and cfg.data.test_on_validation
      assert len(cfg.methods) == 4 * 10 + 2 and "ugclu@unlearn_lr=0.05" in cfg.methods
      tuning = (cfg.seed, cfg.stream)
    elif curve:  # The gap curve: one run per budget.
      assert (cfg.seed, cfg.seeds) == (1000, 2) and not cfg.data.test_on_validation
      assert cfg.train.unlearn_iterations == driver.budgets(name, args)[-1]
    else:
      assert cfg.seeds == 5 and "retrain_twin" in cfg.methods and not cfg.data.test_on_validation
      reported |= {(cfg.seed + k, cfg.stream) for k in range(cfg.seeds)}
  assert not any(s in {1, 2} or stream == tuning[1] for s, stream in reported)
  assert "--jobs" not in cmd  # One seed after another unless asked.
  with pytest.raises(SystemExit):
    driver._args(["--only", "nope"])
  with pytest.raises(SystemExit):
    driver._args(["--jobs", "0"])
  args = driver._args(["--jobs", "3", "--out", "/nonexistent"])
  cmd = driver.command("fmnist_mlp_task", args)
  assert cmd[cmd.index("--jobs") + 1] == "3"


def test_the_beta_sweep_differs_in_the_unlearn_requests_beta_alone():
  from ugclu_jax import config as C
  from ugclu_jax import methods as MT

  driver = _driver()
  args = driver._args(["--only", "fmnist_mlp_beta_sweep", "--out", "/nonexistent"])
  cmd = driver.command("fmnist_mlp_beta_sweep", args)
  cfg = C.apply_overrides(
    C.load_config("full"), [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
  )
  assert cfg.on_nonfinite == "drop" and cfg.stream == driver.CURVE_STREAM
  specs = [MT.split_method_spec(m) for m in cfg.methods if m.startswith("ugclu")]
  assert {base for base, _ in specs} == {"ugclu_hvp"} and len(specs) == len(driver.BETA_SWEEP)
  # learn_beta is the learn rate, beta = 0's value on learn requests (ugclu_hvp's).
  assert {o["learn_beta"] for _, o in specs} == {cfg.train.learning_rate}
  assert sorted(o["beta"] for _, o in specs) == sorted(map(float, driver.BETA_SWEEP))


def test_a_diverged_method_is_a_table_row_that_says_so():
  driver = _driver()
  row = {"avg_gap": None, "avg_acc": None, "forgetting": None, "relapse": None}
  row |= {"oracle_time_share": None, "oracle_grad_share": None, "compensation": None}
  method = "ugclu_hvp@forget_freq=1@beta=0.2@learn_beta=0.02"
  report = {
    "config": {},
    "stream": ["L:t0", "U:t0"],
    "seeds": [1000, 1001, 1002],
    "methods": {method: {"requests": []}, "retrain": {"requests": []}},
    "summary": {method: row, "retrain": {**row, "avg_gap": 0.0}},
    "paired": {"reference": method, "methods": {}},
    "diverged": {method: [1001, 1002]},
  }
  text = "\n".join(driver.table("fmnist_mlp_beta_sweep", report, []))
  assert f"| {method} | diverged on 2 of 3 seeds | — |" in text
  assert "| retrain (oracle) | 0.0 | — |" in text


def test_the_driver_runs_and_writes_its_tables(tmp_path):
  driver = _driver()
  readme = tmp_path / "README.md"
  readme.write_text(f"# Experiments\n\nbefore\n\n{driver.BEGIN}\nold\n{driver.END}\n\nafter\n")
  argv = [
    "--out",
    str(tmp_path / "runs"),
    "--readme",
    str(readme),
    "--results",
    str(tmp_path / "results"),
    "--scale",
    "smoke",
    "--seeds",
    "2",
    "--first-seed",
    "0",
    "--only",
    "fmnist_mlp_task,fmnist_mlp_gap_curve",
    "--budgets",
    "5,10",
    "--no-render",
    "--methods",
    "ugclu,ft,retrain_twin",
    "--set",
    "stream=L:t0 L:t1 U:t0",  # Shorter than the scenario's stream: the driver is tested.
  ]
  assert driver.main(argv) == 0
  text = readme.read_text()
  assert text.startswith("# Experiments\n\nbefore\n\n") and text.endswith("\n\nafter\n")
  assert "old" not in text and text.count(driver.BEGIN) == 1
  report = json.loads((tmp_path / "runs" / "fmnist_mlp_task" / "report.json").read_text())
  assert report["seeds"] == [0, 1]
  for label in ("| ugclu |", "| retrain_twin (noise floor) |", "| retrain (oracle) |"):
    assert label in text
  gap = report["summary"]["retrain_twin"]["avg_gap"]
  d = report["paired"]["methods"]["retrain_twin"]["avg_gap"]
  assert f"| retrain_twin (noise floor) | {100 * gap:.1f} ± " in text
  assert f"| {100 * d['mean']:+.1f} [{100 * d['ci95'][0]:+.1f}, " in text
  history = json.loads((tmp_path / "runs" / "fmnist_mlp_task" / "run_all.json").read_text())
  assert len(history) == 1 and history[0]["returncode"] == 0
  assert "1 invocation(s)" in text
  # The answers are the report's numbers.
  ugclu = report["summary"]["ugclu"]
  ft = report["summary"]["ft"]["avg_gap"]
  rank = 1 + (ft < ugclu["avg_gap"])
  assert f"- **Gap.** ugclu: {100 * ugclu['avg_gap']:.1f} %, rank {rank} of 2" in text
  # The overview: one row per scenario, before the experiments' sections.
  row = f"| `fmnist_mlp_task` | {100 * ugclu['avg_gap']:.1f} ± "
  assert row in text and text.index(row) < text.index("### `fmnist_mlp_task`")
  assert f" | {rank} of 2 | ft {100 * ft:.1f} | " in text
  assert f"twin lands {100 * gap:.1f} % from the oracle; ugclu is " in text
  assert f"take {ugclu['oracle_time_share']:.2f} of the oracle's retraining time" in text
  if rank == 1:
    assert "- **Where ugclu is farthest from the oracle** (no other method has a lower gap)" in text
  else:
    assert "- **Where ugclu loses most to ft** (the lowest gap of the other methods)" in text
  points, task, index, token = driver._deficit(report, "ugclu")
  assert f"ugclu {points:+.1f} points on t{task} after [{index}] `{token}`" in text
  diff = R.accuracy_difference(report, "ugclu")
  assert points == pytest.approx(100 * np.nanmin(diff)) and token == report["stream"][index]
  # The curve: one run per budget, the gap of each in its table and figure.
  curve = tmp_path / "runs" / "fmnist_mlp_gap_curve"
  for n in (5, 10):
    run = json.loads((curve / f"iters_{n}" / "report.json").read_text())
    assert run["config"]["train"]["unlearn_iterations"] == n and run["seeds"] == [1000, 1001]
    assert run["stream"] == ["L:t0", "L:t1", "U:t0"]  # The --set stream above.
  gaps = [
    json.loads((curve / f"iters_{n}" / "report.json").read_text())["summary"]["ugclu"]["avg_gap"]
    for n in (5, 10)
  ]
  assert "| method | 5 it. | 10 it. |" in text
  assert f"| ugclu | {100 * gaps[0]:.1f} ± " in text
  assert (tmp_path / "figures" / "fmnist_mlp_gap_curve.png").is_file()
  # A scenario's figures: gap against cost, metrics per request, UG-CLU against the oracle.
  for png in ("gap_cost", "metrics_per_request", "acc_diff_ugclu"):
    assert f"![{png}](figures/fmnist_mlp_task/{png}.png)" in text
    assert (tmp_path / "figures" / "fmnist_mlp_task" / f"{png}.png").is_file()
  # The tables alone, again from the runs on disk: the same block; and from the copies
  # made to be committed, which hold no checkpoint.
  assert driver.main([*argv, "--tables-only"]) == 0
  assert readme.read_text() == text
  results = tmp_path / "results"
  assert (results / "fmnist_mlp_task" / "seed_1" / "report.json").is_file()
  assert not list(results.glob("**/checkpoints"))
  assert driver.main([*argv, "--tables-only", "--out", str(results)]) == 0
  assert readme.read_text() == text


def test_the_tuning_chooses_and_the_scenarios_take_the_choice(tmp_path):
  driver = _driver()
  readme = tmp_path / "README.md"
  out = ["--out", str(tmp_path / "runs"), "--readme", str(readme), "--scale", "smoke"]
  out += ["--results", "none"]
  argv = [*out, "--only", "tune_mlp", "--methods", "ugclu", "--set", "stream=L:t0 L:t1 U:t0"]
  assert driver.main(argv) == 0
  report = json.loads((tmp_path / "runs" / "tune_mlp" / "report.json").read_text())
  assert report["seeds"] == [1, 2] and report["config"]["data"]["test_on_validation"] is True
  choice = driver.select(report)
  assert list(choice) == ["ugclu"]
  entry = choice["ugclu"]
  gaps = {spec: gap for spec, (gap, _) in entry["scores"].items()}
  assert len(gaps) == 4 and gaps[entry["spec"]] == min(gaps.values())
  for spec, gap in gaps.items():
    assert gap == report["summary"][spec]["avg_gap"]
  value = driver.candidates()[entry["spec"]][1]["unlearn_lr"]
  assert entry["sets"] == [f"ugclu.unlearn_lr={value}"]
  # A scenario of the same model runs with the choice, and its table says so.
  cmd = driver.command("fmnist_mlp_task", driver._args([*out, "--only", "fmnist_mlp_task"]))
  assert f"ugclu.unlearn_lr={value}" in cmd
  assert f"ugclu.unlearn_lr={value}" not in driver.command(
    "fmnist_cnn_task", driver._args([*out, "--only", "fmnist_cnn_task"])
  )
  text = readme.read_text()
  assert "### `tune_mlp`" in text and f"**unlearn_lr={value}: " in text
