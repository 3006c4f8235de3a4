"""The benchmark harness: a quick run writes every ratio, positive and finite (no timing checks)."""

import importlib.util
import json
import math
import os
import pathlib
import subprocess

import pytest

_BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"

# The ratios the README documents; a missing or renamed key is a broken harness.
_RATIO_KEYS = {
  "grad",
  "hvp_fwd_over_rev",
  "hvp_rev_over_rev",
  "ggn_vp",
  "fisher_batch",
  "remain_step",
  "fast_slow_iteration",
  "hvp_fused_step",
  "none_fused_step",
  "compile_hvp_fused_over_remain",
}
_TIMED = {
  "grad",
  "hvp_fwd_over_rev",
  "hvp_rev_over_rev",
  "ggn_vp",
  "fisher_batch",
  "sgd_step",
  "remain_step",
  "fast_slow_iteration",
  "hvp_fused_step",
  "none_fused_step",
  "matmul",
}


def _load_bench():
  spec = importlib.util.spec_from_file_location("ugclu_bench", _BENCH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def bench():
  return _load_bench()


@pytest.fixture(scope="module")
def quick_run(bench, tmp_path_factory):
  out = tmp_path_factory.mktemp("bench") / "nested" / "bench.json"
  returned = bench.main(["--quick", "--models", "mlp", "--out", str(out)])
  return returned, json.loads(out.read_text())


def test_json_has_every_ratio_positive_and_finite(quick_run):
  _, written = quick_run
  assert list(written["models"]) == ["mlp"]
  ratios = written["models"]["mlp"]["ratios"]
  assert set(ratios) == _RATIO_KEYS
  for key, value in ratios.items():
    assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)
  assert ratios["grad"] == 1.0
  for other in ("ratios_of_min", "ratios_cpu"):
    values = written["models"]["mlp"][other]
    assert set(values) == _RATIO_KEYS - {"compile_hvp_fused_over_remain"}, other
    assert all(math.isfinite(v) and v > 0 for v in values.values()), (other, values)
  assert set(written["ratio_meanings"]) == _RATIO_KEYS


def test_times_and_compile_times_are_consistent(quick_run):
  returned, written = quick_run
  res = written["models"]["mlp"]
  assert set(res["times"]) == _TIMED
  for name, t in res["times"].items():
    assert len(t["repeats_ms"]) == written["repeats"] == 2, name
    assert 0 < t["min_ms"] <= t["median_ms"] <= t["max_ms"], name
    assert len(t["repeats_cpu_ms"]) == 2 and t["cpu_median_ms"] > 0, name
    assert t["calls_per_repeat"] >= 1, name
  # Each ratio is the quotient of the medians it names.
  assert res["ratios"]["hvp_fwd_over_rev"] == pytest.approx(
    res["times"]["hvp_fwd_over_rev"]["median_ms"] / res["times"]["grad"]["median_ms"]
  )
  assert res["ratios"]["none_fused_step"] == pytest.approx(
    res["times"]["none_fused_step"]["median_ms"] / res["times"]["sgd_step"]["median_ms"]
  )
  compile_s = res["compile_s"]
  assert all(s > 0 and math.isfinite(s) for s in compile_s.values())
  # The remain step is compiled once, inside the fast_slow iteration.
  assert compile_s["fast_slow_iteration"] == pytest.approx(
    compile_s["target_step"] + compile_s["remain_step"]
  )
  assert res["ratios"]["compile_hvp_fused_over_remain"] == pytest.approx(
    compile_s["hvp_fused_step"] / compile_s["remain_step"]
  )
  assert res["num_params"] > 0
  assert isinstance(res["compiler_options"], dict)
  env = written["environment"]
  assert env["batch"] == 8 and env["devices"] and env["jax"]
  assert written["quick"] is True
  # The returned results are what was written.
  assert json.loads(json.dumps(returned)) == written


@pytest.mark.parametrize(
  "argv", [["--models", "vgg"], ["--models", ""], ["--batch", "0"], ["--repeats", "0"]]
)
def test_bad_arguments_exit_before_any_work(bench, argv, tmp_path):
  out = tmp_path / "bench.json"
  with pytest.raises(SystemExit):
    bench.main([*argv, "--quick", "--out", str(out)])
  assert not out.exists()


def test_a_case_of_several_units_is_timed_per_unit(monkeypatch):
  bench = _load_bench()
  monkeypatch.setattr(bench, "_seconds_per_call", lambda run, n: (0.8, 1.6))
  cases = [bench._Case("one", lambda: None, (0.0,)), bench._Case("eight", lambda: None, (0.0,), 8)]
  times = bench._measure(cases, repeats=2, min_time=0.0, max_calls=1)
  assert times["one"]["median_ms"] == pytest.approx(800.0)
  assert times["eight"]["median_ms"] == pytest.approx(100.0)
  assert times["eight"]["cpu_median_ms"] == pytest.approx(200.0)


def test_the_readme_block_is_replaced_and_nothing_else(tmp_path):
  bench = _load_bench()
  readme = tmp_path / "README.md"
  readme.write_text(f"# title\n\n{bench.README_START}\nold\n{bench.README_END}\n\ntail\n")
  results = {
    "environment": {
      "cpu_count": 2,
      "devices": ["cpu:0"],
      "jax": "0.10.2",
      "torch": "2.13.0+cpu",
      "batch": 128,
      "load_average_start": [1.0, 1.0, 1.0],
      "load_average_end": [1.5, 1.0, 1.0],
      "host_memory_kept": True,
    },
    "repeats": 3,
    "wall_s": 12.0,
    "models": {
      "cnn": {
        "times": {"sgd_step": {"median_ms": 50.0}, "torch_sgd_step": {"median_ms": 62.5}},
        "torch_ratios": {"sgd_step": {"median": 0.8, "of_min": 0.75}},
      }
    },
  }
  bench.write_readme_block(str(readme), results, "python benchmarks/bench.py --models cnn")
  text = readme.read_text()
  assert text.startswith("# title\n\n") and text.endswith("\n\ntail\n")
  assert "old" not in text
  assert "| cnn | `sgd_step` | 0.80 | 0.75 | 50.0 | 62.5 |" in text
  assert "`python benchmarks/bench.py --models cnn`" in text
  readme.write_text("no block here\n")
  with pytest.raises(ValueError, match="no <!-- bench.py --readme: start -->"):
    bench.write_readme_block(str(readme), results, "x")


def test_the_accelerator_script_parses():
  script = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.sh"
  proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  assert os.access(script, os.X_OK)


def test_throughput_is_reported_and_consistent(quick_run):
  _, written = quick_run
  res = written["models"]["mlp"]
  tp = res["throughput"]
  assert set(tp) == {
    "sgd_images_per_s",
    "sgd_step_gflop",
    "sgd_gflops",
    "matmul_gflops",
    "sgd_share_of_matmul_peak",
  }
  assert all(math.isfinite(v) and v > 0 for v in tp.values()), tp
  step_s = res["times"]["sgd_step"]["median_ms"] / 1e3
  assert tp["sgd_images_per_s"] == pytest.approx(written["environment"]["batch"] / step_s)
  assert tp["sgd_share_of_matmul_peak"] == pytest.approx(tp["sgd_gflops"] / tp["matmul_gflops"])
