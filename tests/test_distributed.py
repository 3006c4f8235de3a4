"""Several processes (``jax.distributed``): two local CPU processes against one.

Each process has one CPU device; gloo carries the collectives. Every launch has
a timeout, so a process that waits for a lost peer fails the test instead of
blocking it.
"""

import contextlib
import importlib.util
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from ugclu_jax import cli
from ugclu_jax import config as C
from ugclu_jax import errors
from ugclu_jax import runner

ROOT = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT = 240  # Seconds for one launch of two processes.
# The smallest run with every step kind: learn, learn, unlearn (UG-CLU and the oracle).
TINY = [
  "--set",
  "stream=L:t0 L:t1 U:t0",
  "--set",
  "train.learn_epochs=1",
  "--set",
  "train.unlearn_iterations=10",
  "--no-progress",
  "--no-render",
]


def _free_port() -> int:
  with contextlib.closing(socket.socket()) as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(argv, folder: pathlib.Path, n: int = 2) -> list:
  """Starts ``argv(port, i)`` for ``i < n``; waits for all (``TIMEOUT``); ``[(rc, out, err)]``."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONUNBUFFERED="1")
  port, procs, logs = _free_port(), [], []
  folder.mkdir(parents=True, exist_ok=True)
  try:
    for i in range(n):
      out, err = open(folder / f"out{i}.txt", "w"), open(folder / f"err{i}.txt", "w")
      logs += [out, err]
      procs.append(subprocess.Popen(argv(port, i), stdout=out, stderr=err, cwd=ROOT, env=env))
    for p in procs:
      p.wait(timeout=TIMEOUT)
  except subprocess.TimeoutExpired:
    pytest.fail(f"{n} processes still running after {TIMEOUT} s: {folder}")
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
    for f in logs:
      f.close()
  return [
    (p.returncode, (folder / f"out{i}.txt").read_text(), (folder / f"err{i}.txt").read_text())
    for i, p in enumerate(procs)
  ]


def _assert_ok(results):
  for i, (rc, _, err) in enumerate(results):
    assert rc == 0, f"process {i} exited {rc}: {err[-3000:]}"


def test_library_steps_on_two_processes_match_one(tmp_path):
  """Sharded batches (also stacked ones), a UG-CLU request and gathered evaluation
  outputs: every process gets the one-process numbers."""
  worker = str(ROOT / "tests" / "distributed_worker.py")
  spec = importlib.util.spec_from_file_location("distributed_worker", worker)
  distributed_worker = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(distributed_worker)
  results = _launch(
    lambda port, i: [sys.executable, worker, str(port), "2", str(i), str(tmp_path / f"{i}.npz")],
    tmp_path,
  )
  _assert_ok(results)
  assert (tmp_path / "0.npz.ckpt" / "1").is_dir() and not (tmp_path / "1.npz.ckpt").exists()
  one = distributed_worker.play(None)
  for i in range(2):
    with np.load(tmp_path / f"{i}.npz") as got:
      assert got["rows"].tolist() == [16 * i, 16 * i + 16]  # Each process put its half.
      assert int(got["mesh_devices"]) == 2 and int(got["gathered"]) == sum(range(32))
      assert got["refusals"].tolist() == [
        "data.batch_size=31 does not split over the 2 devices of 2 processes; use a multiple of 2",
        "num_devices=2: a process of this run has 1 local device(s)",
      ]
      assert int(got["restored_step"]) == 1 and json.loads(str(got["restored_meta"])) == {
        "cursor": 1
      }
      np.testing.assert_array_equal(got["restored_split"], np.arange(32, dtype=np.float32))
      np.testing.assert_array_equal(got["restored_replicated"], np.ones((2, 3), np.float32))
      np.testing.assert_array_equal(got["restored_mask"], np.arange(5) % 2 == 0)
      assert got["restored_int64"].dtype == np.int64 and got["restored_int64"][0] == 2**40
      assert set(one) <= set(got.files)
      for key, value in one.items():
        np.testing.assert_allclose(got[key], value, rtol=2e-5, atol=2e-6, err_msg=key)


def _cli(workdir, port, i, *extra):
  return [
    sys.executable,
    "-m",
    "ugclu_jax",
    "run",
    "--config",
    "smoke",
    "--workdir",
    str(workdir),
    *TINY,
    "--distributed",
    "--coordinator",
    f"localhost:{port}",
    "--num-processes",
    "2",
    "--process-id",
    str(i),
    *extra,
  ]


def _assert_same_metrics(got: dict, expected: dict):
  """Every request's metrics and per-task accuracies, floats within 1e-3."""
  assert got["stream"] == expected["stream"] and set(got["methods"]) == set(expected["methods"])
  for name, entry in expected["methods"].items():
    for a, b in zip(entry["requests"], got["methods"][name]["requests"], strict=True):
      for key in ("metrics", "acc_per_task", "collapsed"):
        assert _close(b[key], a[key]), (name, a["request"], key, b[key], a[key])


def _close(a, b, tol: float = 1e-3) -> bool:
  """JSON values equal, floats within ``tol``."""
  if isinstance(a, dict):
    return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
  if isinstance(a, list):
    return isinstance(b, list) and len(a) == len(b) and all(map(_close, a, b))
  if isinstance(a, float) or isinstance(b, float):
    return a is not None and b is not None and abs(a - b) <= tol
  return a == b


class _Stop(Exception):
  pass


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
  """The one-process run (stopped before its last request, then resumed), and a copy of
  its workdir from before that request."""
  folder = tmp_path_factory.mktemp("one")
  cfg = C.apply_overrides(C.load_config("smoke"), TINY[1:-2:2])

  def stop(line):
    if line.startswith("[2]"):
      raise _Stop

  with pytest.raises(_Stop):
    runner.run_experiment(cfg, folder / "run", progress=False, render=False, echo=stop)
  shutil.copytree(folder / "run", folder / "partial")
  runner.run_experiment(
    cfg, folder / "run", resume=True, progress=False, render=False, echo=lambda s: None
  )
  return folder / "run", folder / "partial"


def test_runner_on_two_processes_matches_one_and_process_0_writes(one_process, tmp_path):
  reference, _ = one_process
  # Each process is given its own --workdir: process 1 must not create its own.
  results = _launch(lambda port, i: _cli(tmp_path / f"w{i}", port, i), tmp_path / "logs")
  _assert_ok(results)
  expected = json.loads((reference / "report.json").read_text())
  _assert_same_metrics(json.loads((tmp_path / "w0" / "report.json").read_text()), expected)
  assert not (tmp_path / "w1").exists()
  assert sorted(p.name for p in (tmp_path / "w0").iterdir()) == sorted(
    p.name for p in reference.iterdir()
  )
  assert "done:" in results[0][1] and "done:" not in results[1][1]  # Process 0 alone prints.
  log = (tmp_path / "w0" / "run.log").read_text().splitlines()
  assert sum("[2] U:t0" in line and "ugclu " in line for line in log) == 1


def test_two_processes_resume_a_one_process_run(one_process, tmp_path):
  """Process 0 restores the checkpoint and hands it to process 1; the run ends as in one."""
  reference, partial = one_process
  workdirs = [partial, tmp_path / "w1"]
  results = _launch(lambda port, i: _cli(workdirs[i], port, i, "--resume"), tmp_path / "logs")
  _assert_ok(results)
  assert f"resuming {partial} at request 2 of 3" in results[0][1]
  expected = json.loads((reference / "report.json").read_text())
  _assert_same_metrics(json.loads((partial / "report.json").read_text()), expected)
  assert not (tmp_path / "w1").exists()


@pytest.mark.parametrize(
  "extra, message",
  [
    (["--process-id", "1"], "--process-id needs --distributed"),
    (["--distributed", "--process-id", "0"], "--process-id 0 needs --num-processes"),
    (
      ["--distributed", "--num-processes", "2", "--process-id", "2"],
      "--process-id 2 is out of range for --num-processes 2: use 0 to 1",
    ),
    (["--distributed", "--num-processes", "0"], "--num-processes 0: must be at least 1"),
    (["--distributed", "--coordinator", "localhost"], "expected HOST:PORT"),
  ],
)
def test_bad_distributed_options_are_one_line(tmp_path, capsys, extra, message):
  argv = ["run", "--config", "smoke", "--workdir", str(tmp_path / "w"), *extra]
  code = cli.main(argv)
  err = capsys.readouterr().err.strip()
  assert code == errors.USAGE and message in err, err
  assert len(err.splitlines()) == 1 and err.startswith("error:"), err
  assert not (tmp_path / "w").exists()
