"""The command line: one run per workdir, one-line errors, exit codes, signals, --help, configs."""

import errno
import fcntl
import hashlib
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ugclu_jax import cli
from ugclu_jax import config as C
from ugclu_jax import errors
from ugclu_jax import report as R
from ugclu_jax import runner

ROOT = pathlib.Path(__file__).resolve().parent.parent
# A small smoke run: three requests, both methods (UG-CLU and the oracle).
TINY = [
  "--set",
  "stream=L:t0 L:t1 U:t0",
  "--set",
  "train.learn_epochs=1",
  "--set",
  "train.unlearn_iterations=10",
  "--no-progress",
]


def _run_args(workdir, *extra):
  return ["run", "--config", "smoke", "--workdir", str(workdir), *TINY, *extra]


def _main(capsys, *argv):
  code = cli.main(list(argv))
  captured = capsys.readouterr()
  return code, captured.out, captured.err.strip()


def _one_line(err):
  assert len(err.splitlines()) == 1 and "Traceback" not in err, err


def _snapshot(folder: pathlib.Path) -> dict:
  """Every file under ``folder`` and a hash of its bytes."""
  return {
    str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
    for p in sorted(folder.rglob("*"))
    if p.is_file()
  }


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished tiny run; its workdir held a stale lock file (a killed run's) at the start."""
  workdir = tmp_path_factory.mktemp("cli") / "run"
  workdir.mkdir()
  (workdir / runner.LOCK_FILE).write_text("999999\n")
  assert cli.main(_run_args(workdir)) == 0
  return workdir


# --- --help, examples, exit codes -----------------------------------------------------------

PROBE = """
import runpy, sys
sys.argv = ["python -m ugclu_jax", *sys.argv[1:]]
try:
  runpy.run_module("ugclu_jax", run_name="__main__", alter_sys=True)
except SystemExit as e:
  print("EXIT", e.code, "JAX", "jax" in sys.modules)
"""


@pytest.mark.parametrize(
  "argv", [["--help"], ["run", "--help"], ["report", "--help"], ["audit", "--help"]]
)
def test_help_returns_without_importing_jax(argv):
  proc = subprocess.run(
    [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, cwd=ROOT, timeout=60
  )
  assert proc.stdout.strip().endswith("EXIT 0 JAX False"), proc.stdout + proc.stderr
  assert "exit codes:" in proc.stdout and "130" in proc.stdout and "143" in proc.stdout


def test_run_help_examples_are_valid_streams():
  run_parser = cli._parser()._subparsers._group_actions[0].choices["run"]
  streams = re.findall(r'stream="([^"]+)"', run_parser.format_help())
  assert len(streams) >= 2, streams
  base = C.load_config("smoke")
  for stream in streams:
    runner.prepare(C.apply_overrides(base, [f"stream={stream}"]))
  # The former example unlearns everything it learned: refused before any work.
  with pytest.raises(ValueError, match="U:t0"):
    runner.prepare(C.apply_overrides(base, ["stream=L:t0 U:t0"]))


def test_exit_codes_are_documented_in_the_readme():
  readme = (ROOT / "README.md").read_text()
  section = readme[readme.index("## Guarantees") :]
  for code in (0, 1, 2, 3, 4, 130, 143):
    assert re.search(rf"^\| {code} \|", section, re.M), code


def test_library_names_load_on_first_use():
  code = """
import sys, ugclu_jax
assert "jax" not in sys.modules
import ugclu_jax.methods  # imports the hvp and fast_slow modules
assert ugclu_jax.hvp.__name__ == "hvp" and callable(ugclu_jax.hvp), ugclu_jax.hvp
assert ugclu_jax.fast_slow.__name__ == "fast_slow" and callable(ugclu_jax.fast_slow)
missing = [n for n in ugclu_jax.__all__ if not hasattr(ugclu_jax, n)]
assert not missing, missing
assert not hasattr(ugclu_jax, "no_such_name")
print("ok")
"""
  proc = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=300,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert proc.stdout.strip() == "ok", proc.stderr[-3000:]


# --- Configs ship inside the package ----------------------------------------------------------


def test_configs_are_found_after_a_non_editable_install(tmp_path):
  """Only what setuptools packages (pyproject's package discovery) is copied, outside the tree."""
  import setuptools

  tomllib = pytest.importorskip("tomllib")
  find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"][
    "find"
  ]
  site = tmp_path / "site"
  packages = setuptools.find_packages(str(ROOT), include=find["include"])
  assert "ugclu_jax.configs" in packages
  for package in packages:
    source = ROOT.joinpath(*package.split("."))
    target = site.joinpath(*package.split("."))
    target.mkdir(parents=True)
    for file in source.glob("*.py"):
      shutil.copy(file, target)
  code = (
    "import ugclu_jax; from ugclu_jax import config as C; "
    "print(ugclu_jax.__file__); print(C.load_config('smoke').name, "
    "C.load_config('default').name, C.available_configs())"
  )
  # -S: no site-packages, so no editable install of the source tree either.
  proc = subprocess.run(
    [sys.executable, "-S", "-c", code],
    capture_output=True,
    text=True,
    cwd=tmp_path,
    timeout=60,
    env={"PYTHONPATH": str(site)},
  )
  assert proc.returncode == 0, proc.stderr
  where, names = proc.stdout.splitlines()
  assert where.startswith(str(site))
  assert names == "smoke default ['default', 'smoke']"
  # experiments/configs still names them (and a path to a file there still loads).
  assert C.load_config(str(ROOT / "experiments" / "configs" / "smoke.py")) == C.load_config("smoke")


# --- One run per workdir ----------------------------------------------------------------------


def test_stale_lock_file_does_not_block(finished):
  assert (finished / "report.json").is_file()
  # The lock file stays; it names no process once the run has ended.
  assert (finished / runner.LOCK_FILE).read_text() == ""


def test_busy_workdir_is_refused_and_nothing_written(tmp_path, capsys):
  workdir = tmp_path / "busy"
  workdir.mkdir()
  with open(workdir / runner.LOCK_FILE, "a+") as held:  # what a live run holds
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    held.write("4242\n")
    held.flush()
    before = _snapshot(workdir)
    code, _, err = _main(capsys, *_run_args(workdir))
  assert code == errors.ENVIRONMENT
  _one_line(err)
  assert str(workdir) in err and "in use by another run (pid 4242)" in err
  assert _snapshot(workdir) == before


def test_finished_report_is_never_overwritten_unless_asked(finished, tmp_path, capsys):
  workdir = tmp_path / "run"
  shutil.copytree(finished, workdir)
  shutil.rmtree(workdir / "checkpoints")
  (workdir / "acc_matrix_old_method.png").write_bytes(b"stale plot")
  before = _snapshot(workdir)
  code, _, err = _main(capsys, *_run_args(workdir))
  assert code == errors.USAGE and "--overwrite" in err and str(workdir) in err
  _one_line(err)
  code, _, err = _main(capsys, *_run_args(workdir, "--resume"))
  assert code == errors.USAGE and "no checkpoint" in err and "--overwrite" in err
  _one_line(err)
  assert _snapshot(workdir) == before
  with pytest.raises(SystemExit) as exit_:
    cli.main(_run_args(workdir, "--resume", "--overwrite"))
  assert exit_.value.code == errors.USAGE
  capsys.readouterr()
  # --overwrite clears the previous run (stale plot, log) and runs again.
  code, _, err = _main(capsys, *_run_args(workdir, "--overwrite"))
  assert code == 0, err
  assert not (workdir / "acc_matrix_old_method.png").exists()
  assert (workdir / "run.log").read_text().count("run smoke:") == 1
  got = json.loads((workdir / "report.json").read_text())
  expected = json.loads((finished / "report.json").read_text())
  assert R.without_timings(got) == R.without_timings(expected)


def test_resume_of_a_finished_run_only_rerenders(finished, tmp_path, capsys):
  workdir = tmp_path / "run"
  shutil.copytree(finished, workdir)
  (workdir / "report.md").unlink()
  code, out, err = _main(capsys, *_run_args(workdir, "--resume"))
  assert code == 0, err
  assert "resuming" in out and "at request 3 of 3" in out and "[0]" not in out
  assert (workdir / "report.md").read_text() == (finished / "report.md").read_text()


def test_no_render_writes_the_report_alone_and_report_renders_it_later(finished, tmp_path, capsys):
  workdir = tmp_path / "run"
  shutil.copytree(finished, workdir)
  for path in [workdir / "report.md", *workdir.glob("*.png")]:
    path.unlink()
  code, out, err = _main(capsys, *_run_args(workdir, "--resume", "--no-render"))
  assert code == 0, err
  assert (workdir / "report.json").is_file() and not (workdir / "report.md").exists()
  assert not list(workdir.glob("*.png"))
  code, out, err = _main(capsys, "report", str(workdir))
  assert code == 0, err
  assert (workdir / "report.md").read_text() == (finished / "report.md").read_text()


# --- One-line errors, exit codes, run.log -----------------------------------------------------


def test_os_errors_name_the_path_and_the_cause(finished, tmp_path, capsys):
  # The workdir is a file.
  file = tmp_path / "a_file"
  file.write_text("keep me")
  code, _, err = _main(capsys, *_run_args(file))
  assert code == errors.ENVIRONMENT and f"{file}: not a folder" in err
  _one_line(err)
  assert file.read_text() == "keep me"
  # A folder that cannot be written.
  if os.geteuid() == 0:  # root writes anywhere but in sysfs
    readonly = pathlib.Path("/sys/ugclu_jax_test/run")
  else:
    (tmp_path / "ro").mkdir(mode=0o500)
    readonly = tmp_path / "ro" / "run"
  code, _, err = _main(capsys, *_run_args(readonly))
  assert code == errors.ENVIRONMENT and str(readonly.parent) in err
  assert "not permitted" in err or "Permission denied" in err, err
  _one_line(err)
  # report --out names a file.
  code, _, err = _main(capsys, "report", str(finished), "--out", str(file))
  assert code == errors.ENVIRONMENT and f"{file}: not a folder" in err
  _one_line(err)
  assert file.read_text() == "keep me"


def test_full_disk_is_one_line_and_reaches_run_log(tmp_path, capsys, monkeypatch):
  write_text = pathlib.Path.write_text

  def full_disk(self, *args, **kwargs):
    if self.name == "report.json.tmp":
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return write_text(self, *args, **kwargs)

  monkeypatch.setattr(pathlib.Path, "write_text", full_disk)
  workdir = tmp_path / "full"
  code, _, err = _main(capsys, *_run_args(workdir))
  assert code == errors.ENVIRONMENT
  _one_line(err)
  assert f"{workdir / 'report.json'}: No space left on device" in err
  assert (workdir / "run.log").read_text().splitlines()[-1].endswith(err)
  assert not list(workdir.glob("*.tmp"))


# EWC's penalty at 1e7, unclipped: the loss is non-finite on the second learn request.
DIVERGING = [
  "--set",
  "methods=ewc",
  "--set",
  "stream=L:t0 L:t1",
  "--set",
  "baselines.ewc_lambda=1e7",
  "--set",
  "train.clip_norm=0",
]


def test_divergence_exits_3_and_reaches_run_log(tmp_path, capsys):
  workdir = tmp_path / "diverged"
  code, _, err = _main(capsys, *_run_args(workdir), *DIVERGING)
  assert code == errors.TRAINING, err
  _one_line(err)
  assert err.startswith("error:") and "ewc_lambda" in err
  assert (workdir / "run.log").read_text().splitlines()[-1].endswith(err)


def test_divergence_in_a_seeds_process_exits_3_naming_the_seed(tmp_path, capsys):
  """A seed run in a process of its own (``--jobs 2``) fails as a run alone does: one line
  naming the seed, exit code 3, the last line of its run.log and of the workdir's."""
  workdir = tmp_path / "diverged"
  code, _, err = _main(capsys, *_run_args(workdir, "--jobs", "2", "--set", "seeds=2"), *DIVERGING)
  assert code == errors.TRAINING, err
  _one_line(err)
  seed = re.match(r"error: seed ([01]): ", err)
  assert seed and "ewc_lambda" in err, err
  assert (workdir / "run.log").read_text().splitlines()[-1].endswith(err)
  alone = (workdir / f"seed_{seed[1]}" / "run.log").read_text().splitlines()[-1]
  assert alone.endswith(err.replace(f"seed {seed[1]}: ", "")), alone
  assert not (workdir / "report.json").exists()


@pytest.mark.parametrize("jobs", ["0", "-1"])
def test_jobs_below_one_is_refused_before_any_work(jobs, tmp_path, capsys):
  code, _, err = _main(capsys, *_run_args(tmp_path / "w", "--jobs", jobs))
  assert code == errors.USAGE and f"--jobs {jobs}: must be at least 1" in err, err
  _one_line(err)
  assert not (tmp_path / "w").exists()


def test_jobs_with_distributed_is_refused_before_any_work(tmp_path, capsys):
  code, _, err = _main(capsys, *_run_args(tmp_path / "w", "--jobs", "2", "--distributed"))
  assert code == errors.USAGE and "--jobs" in err and "--distributed" in err, err
  _one_line(err)
  assert not (tmp_path / "w").exists()


def test_config_errors_are_one_line(tmp_path, capsys):
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config():\n  return {}['missing']\n")
  code, _, err = _main(capsys, "run", "--config", str(broken), "--workdir", str(tmp_path / "w"))
  assert code == errors.USAGE and "get_config() failed: KeyError" in err, err
  _one_line(err)
  code, _, err = _main(
    capsys,
    "run",
    "--config",
    "smoke",
    "--workdir",
    str(tmp_path / "w"),
    "--set",
    "seed=99999999999999999999999",
  )
  assert code == errors.USAGE and "seed" in err, err
  _one_line(err)
  assert not (tmp_path / "w").exists()


def test_unexpected_errors_are_one_line_with_a_debug_hint(tmp_path, capsys, monkeypatch):
  def boom(*args, **kwargs):
    raise RuntimeError("boom\nsecond line")

  monkeypatch.setattr(runner, "run_experiment", boom)
  code, _, err = _main(capsys, *_run_args(tmp_path / "w"))
  assert code == errors.INTERNAL
  _one_line(err)
  assert "RuntimeError: boom" in err and "UGCLU_DEBUG=1" in err
  monkeypatch.setenv("UGCLU_DEBUG", "1")
  code, _, err = _main(capsys, *_run_args(tmp_path / "w"))
  assert code == errors.INTERNAL and "Traceback" in err
  assert err.splitlines()[-1].startswith("error: RuntimeError: boom")


# --- Signals ----------------------------------------------------------------------------------


def _start(workdir, *extra):
  cmd = [sys.executable, "-m", "ugclu_jax", *_run_args(workdir, *extra)]
  return subprocess.Popen(
    cmd,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    cwd=ROOT,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )


def _wait_for(proc, pattern):
  deadline = time.time() + 300
  for line in proc.stdout:
    if re.match(pattern, line):
      return
    assert time.time() < deadline
  pytest.fail(f"no line {pattern!r}: {proc.stderr.read()[-3000:]}")


def test_signals_wait_for_the_commit_to_end():
  previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
  errors.install_signal_handlers()
  try:
    with pytest.raises(errors.Interrupted) as raised:
      with errors.hold_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        committed = True  # reached: the signal waits for the block to end
    assert committed and raised.value.exit_code == 143
    with pytest.raises(errors.Interrupted) as raised:
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(1)
    assert raised.value.exit_code == 130
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_with_a_resume_command(signum, finished, tmp_path, capsys):
  workdir = tmp_path / "run"
  proc = _start(workdir)
  _wait_for(proc, r"run smoke:")  # the run holds the workdir
  if signum == signal.SIGINT:
    # A second run while the first holds the workdir is refused, and deletes nothing.
    for flags in ([], ["--resume"], ["--overwrite"]):
      code, _, err = _main(capsys, *_run_args(workdir, *flags))
      assert code == errors.ENVIRONMENT and f"{workdir} is in use" in err, (flags, err)
      assert f"pid {proc.pid}" in err
      _one_line(err)
    assert (workdir / "config.json").is_file()
  else:
    _wait_for(proc, r"\[0\] L:t0 +retrain")  # UG-CLU is in the middle of request 0
  os.kill(proc.pid, signum)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 128 + signum, err
  err = err.strip()
  _one_line(err)
  name = signal.Signals(signum).name
  assert err.startswith(f"interrupted by {name}; continue with: ")
  command = shlex.split(err.split("continue with: ", 1)[1])
  assert command[-1] == "--resume" and command[1:3] == ["-m", "ugclu_jax"]
  assert name in (workdir / "run.log").read_text().splitlines()[-1]
  resumed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  got = json.loads((workdir / "report.json").read_text())
  expected = json.loads((finished / "report.json").read_text())
  assert R.without_timings(got) == R.without_timings(expected)


def test_sigterm_stops_the_seeds_processes_with_a_resume_command_that_keeps_jobs(tmp_path):
  """``--jobs 2``: SIGTERM to the command ends the seeds' processes too, and the command
  it prints to continue keeps ``--jobs`` (the resumed seeds' reports equal those of a run
  alone: test_signal_stops_with_a_resume_command, tests/test_runner.py)."""
  workdir = tmp_path / "jobs"
  proc = _start(workdir, "--set", "seeds=2", "--jobs", "2")
  _wait_for(proc, r"\[seed 1\] \[0\] L:t0 +retrain")  # Both seeds' processes run.
  pids = [int(p) for p in re.findall(r"\(process (\d+)\)", (workdir / "run.log").read_text())]
  assert len(pids) == 2
  os.kill(proc.pid, signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 143, err
  err = err.strip()
  _one_line(err)
  assert err.startswith("interrupted by SIGTERM; continue with: ")
  for pid in pids:
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)  # Ended (and reaped) before the command returned.
  command = shlex.split(err.split("continue with: ", 1)[1])
  assert command[-3:] == ["--jobs", "2", "--resume"]
  assert "SIGTERM" in (workdir / "run.log").read_text().splitlines()[-1]
