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
  "argv",
  [
    ["--models", "vgg"],
    ["--models", ""],
    ["--batch", "0"],
    ["--repeats", "0"],
    ["--request-iterations", "vgg=3"],
    ["--request-iterations", "mlp=0"],
    ["--request-iterations", "many"],
    ["--request-repeats", "0"],
    ["--request-samples", "0"],
    ["--request-data", "fashion_mnist"],  # 28x28 images, --quick models take 8x8
    ["--request", "on", "--torch", "off"],
    ["--request", "only", "--readme", "README.md"],
  ],
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


# The whole request (--request), at a tiny size: PyTorch needed.
_REQUEST_KEYS = {"request_mask_pass", "request_iterations", "request"}


@pytest.fixture(scope="module")
def request_run(bench, tmp_path_factory):
  pytest.importorskip("torch")
  out = tmp_path_factory.mktemp("bench") / "request.json"
  argv = ["--quick", "--models", "mlp,cnn", "--request", "only", "--out", str(out)]
  bench.main([*argv, "--request-iterations", "mlp=7,cnn=3", "--request-repeats", "2"])
  return json.loads(out.read_text())


def test_the_request_is_timed_by_phase_on_every_side(request_run):
  for model, sides in (("mlp", {"jax", "torch"}), ("cnn", {"jax", "torch", "torch_channels_last"})):
    req = request_run["models"][model]["request"]
    assert "times" not in request_run["models"][model]  # --request only: no phases
    assert set(req["times"]) == sides
    # --quick: 6 synthetic images per class, batch 8; class 3 forgotten.
    assert (req["num_target"], req["num_remain"], req["batch"]) == (6, 54, 8)
    assert req["fisher_batches"] == {"target": 1, "remain": 7}
    assert req["num_iterations"] == {"mlp": 7, "cnn": 3}[model] and req["repeats"] == 2
    for side, t in req["times"].items():
      assert t["first_request_s"] > 0
      whole = t["request"]["repeats_ms"]
      parts = zip(t["mask_pass"]["repeats_ms"], t["iterations"]["repeats_ms"])
      assert len(whole) == 2 and whole == pytest.approx([a + b for a, b in parts])
      assert req["ms_per_iteration"][side] == pytest.approx(
        t["iterations"]["median_ms"] / req["num_iterations"]
      )
    suffixes = [""] if model == "mlp" else ["", "_channels_last"]
    assert set(req["torch_ratios"]) == {k + s for k in _REQUEST_KEYS for s in suffixes}
    for key, r in req["torch_ratios"].items():
      assert all(math.isfinite(v) and v > 0 for v in r.values()), (key, r)
    ours, theirs = req["times"]["jax"]["request"], req["times"]["torch"]["request"]
    assert req["torch_ratios"]["request"]["median"] == pytest.approx(
      ours["median_ms"] / theirs["median_ms"]
    )
    assert set(req["mask_agreement"]) == sides - {"jax"}
    assert all(a >= 0.999 for a in req["mask_agreement"].values()), req["mask_agreement"]
  assert set(request_run["request_ratio_meanings"]) == _REQUEST_KEYS


def test_the_readme_block_holds_the_request_rows(bench, request_run, tmp_path):
  readme = tmp_path / "README.md"
  readme.write_text(f"{bench.README_START}\n{bench.README_END}\n")
  bench.write_readme_block(str(readme), request_run, "python benchmarks/bench.py --request on")
  text = readme.read_text()
  req = request_run["models"]["cnn"]["request"]
  r, t = req["torch_ratios"]["request_channels_last"], req["times"]
  assert (
    f"| cnn | `request_channels_last` | {r['median']:.2f} | {r['of_min']:.2f} | "
    f"{t['jax']['request']['median_ms']:.1f} | "
    f"{t['torch_channels_last']['request']['median_ms']:.1f} |"
  ) in text
  assert (
    "| mlp | `request_mask_pass` |" in text
    and "N = 7 for the mlp (median of 2 requests per side)" in text
  )


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_both_sides_compute_the_same_request(bench, model):
  """From the same initial weights and batches, ugclu_jax's request and PyTorch's agree:
  Fisher diagonals, masks, and the weights after 11 iterations (three fused steps)."""
  torch = pytest.importorskip("torch")
  import jax
  import numpy as np

  ref = bench._torch_ref()
  data = bench.request_data("synthetic", (8, 8, 1), 12, seed=0)
  options = bench.QUICK_COMPILER_OPTIONS[model]
  sides = bench.request_sides(model, data, batch_size=8, num_iterations=11, seed=0, options=options)
  ours = sides.pop("jax")
  assert set(sides) == ({"torch"} if model == "mlp" else {"torch", "torch_channels_last"})
  f_ours = jax.device_get(ours.fishers())
  mask = jax.device_get(bench.ug.balanced_saliency_mask(*f_ours))
  density = np.mean(np.concatenate([m.ravel() for m in jax.tree.leaves(mask)]))
  assert 0.05 < density < 0.95  # the mask matters
  params = jax.device_get(ours.iterations(mask))
  init = jax.device_get(ours.params)
  moved = max(float(np.max(np.abs(a - b))) for a, b in zip(*map(jax.tree.leaves, (params, init))))
  assert moved > 1e-3
  for name, side in sides.items():
    as_jax = lambda tensors, side=side: ref.to_jax(model, side.named(tensors), side.model)
    for f_a, f_b in zip(f_ours, side.fishers()):
      for a, b in zip(jax.tree.leaves(f_a), jax.tree.leaves(as_jax(f_b))):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6 * float(np.max(a)), err_msg=name)
    theirs = jax.tree.leaves(as_jax(side.mask_pass()))
    same = sum(int(np.sum(a == b)) for a, b in zip(jax.tree.leaves(mask), theirs))
    assert same >= 0.999 * sum(m.size for m in theirs), name
    # The first target direction is far above the clip (7): the clip is exercised too.
    rows = side.target_index[0]
    logits = side.model(side.target[0][rows])
    g = torch.autograd.grad(ref.unlearn_loss(logits, side.target[1][rows], 0.5), side.params)
    tmask = [torch.tensor(v) for v in ref.from_jax(model, side.model, mask).values()]
    norm = torch.sqrt(sum(torch.sum((25.0 * a * m) ** 2) for a, m in zip(g, tmask)))
    assert float(norm) > 2 * bench.REQUEST_HPARAMS["clip_norm"], name
    # The iterations from the same mask (a ratio within rounding of the threshold may flip
    # one entry of a side's own mask).
    side.load(side.initial)
    final = jax.tree.leaves(as_jax(side.iterations(tmask)))
    for a, b in zip(jax.tree.leaves(params), final):
      np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=name)
