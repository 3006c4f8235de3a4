"""Seeded kill -9 trials: interrupted runs resume to the same report.json as an uninterrupted one.

    python scripts/kill_trials.py --trials 20 --seed 0 --config smoke

Runs the config once without interruption (the reference, timing when its
requests run: from the run's first log line to its last request's line), then,
per trial, in a fresh workdir: starts the run, sends SIGKILL at a seeded random
moment, resumes with ``--resume`` and may kill again (one to ``--max-kills``
kills per trial), then lets the last resume finish and compares its
report.json, without timings, with the reference. With probability
``--focus`` a kill falls in the request phase, where checkpoints are written:
at a moment drawn uniformly over the reference's request phase, counted from
the run's first log line (so slow start-ups do not shift it); otherwise at a
moment drawn uniformly over the reference's whole wall time from the process
start (start-up and rendering included). Prints one row per trial (each kill's
moment in seconds, ``+`` when counted from the first log line, and the newest
checkpoint on disk after it) and exits 1 on any mismatch or failed resume.
"""

import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ugclu_jax.report import without_timings  # noqa: E402


def _command(args, workdir, resume):
  cmd = [
    sys.executable,
    "-m",
    "ugclu_jax",
    "run",
    "--config",
    args.config,
    "--workdir",
    str(workdir),
    "--no-progress",
  ]
  for item in args.set:
    cmd += ["--set", item]
  return cmd + (["--resume"] if resume else [])


def _report(workdir):
  return without_timings(json.loads((workdir / "report.json").read_text()))


def _steps(workdir):
  path = workdir / "checkpoints"
  return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit()) if path.is_dir() else []


def _run_to_end(args, workdir, resume):
  proc = subprocess.run(
    _command(args, workdir, resume), cwd=ROOT, capture_output=True, text=True, timeout=args.timeout
  )
  return proc.returncode, proc.stderr.strip().splitlines()[-1:] or [""]


def _reference(args, workdir):
  """Runs the reference; returns ``(rc, last stderr line, wall s, (first, last) request s)``."""
  t0 = time.perf_counter()
  with tempfile.TemporaryFile("w+") as stderr:
    proc = subprocess.Popen(
      _command(args, workdir, resume=False),
      cwd=ROOT,
      text=True,
      stdout=subprocess.PIPE,
      stderr=stderr,
    )
    first = last = None
    for line in proc.stdout:
      now = time.perf_counter() - t0
      first = now if first is None else first
      if line.startswith("["):  # "[r] token method ...": a request's method finished.
        last = now
    rc = proc.wait()
    stderr.seek(0)
    err = stderr.read().strip().splitlines()[-1:] or [""]
  seconds = time.perf_counter() - t0
  return rc, err, seconds, (first or 0.0, last or seconds)


def trial(args, index, workdir, seconds, window):
  """One trial: kill at seeded moments, resume, finish. Returns its table row (a dict)."""
  rng = np.random.default_rng([args.seed, index])
  kills = int(rng.integers(1, args.max_kills + 1))
  moments, steps_at_kill = [], []
  for k in range(kills):
    focused = rng.random() < args.focus
    delay = float(rng.uniform(0.0, window[1] - window[0] if focused else seconds))
    proc = subprocess.Popen(
      _command(args, workdir, resume=k > 0),
      cwd=ROOT,
      text=True,
      stdout=subprocess.PIPE,
      stderr=subprocess.DEVNULL,
    )
    started = threading.Event()

    def drain(proc=proc, started=started):
      for _ in proc.stdout:
        started.set()
      started.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    if focused:
      started.wait(timeout=args.timeout)
    try:
      proc.wait(timeout=delay)
      label = f"{'+' * focused}{delay:.1f}(done)"  # It finished first: nothing to kill.
    except subprocess.TimeoutExpired:
      os.kill(proc.pid, signal.SIGKILL)
      proc.wait()
      label = f"{'+' * focused}{delay:.1f}"
    reader.join()
    moments.append(label)
    steps_at_kill.append(_steps(workdir)[-1] if _steps(workdir) else 0)
  rc, last = _run_to_end(args, workdir, resume=True)
  log = (workdir / "run.log").read_text() if (workdir / "run.log").exists() else ""
  skipped = sum("skipping it" in line for line in log.splitlines())
  same = rc == 0 and (workdir / "report.json").is_file() and _report(workdir) == args.expected
  if rc == 0 and not same and _report(workdir)["config"] != args.expected["config"]:
    last = ["the resolved config differs from the reference's: did the code change meanwhile?"]
  return {
    "trial": index,
    "kills": kills,
    "at_s": " ".join(moments),
    "step_at_kill": " ".join(map(str, steps_at_kill)),
    "skipped_ckpts": skipped,
    "resume_rc": rc,
    "same_report": same,
    "error": "" if same else last[0],
  }


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--trials", type=int, default=20)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--config", default="smoke")
  p.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="config overrides, as for `python -m ugclu_jax run`",
  )
  p.add_argument("--max-kills", type=int, default=2, help="kills per trial: 1 to this")
  p.add_argument(
    "--focus", type=float, default=0.8, help="probability that a kill falls in the request phase"
  )
  p.add_argument("--root", default=None, help="folder for the workdirs (default: a temp dir)")
  p.add_argument("--timeout", type=float, default=900, help="seconds for one finishing run")
  args = p.parse_args(argv)
  if args.trials < 1 or args.max_kills < 1 or not 0 <= args.focus <= 1:
    p.error("--trials and --max-kills must be >= 1, --focus in [0, 1]")
  root = pathlib.Path(args.root or tempfile.mkdtemp(prefix="kill_trials_"))
  root.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()

  rc, last, seconds, window = _reference(args, root / "reference")
  if rc != 0:
    print(f"error: the reference run failed (exit {rc}): {last[0]}", file=sys.stderr)
    return 1
  args.expected = _report(root / "reference")
  print(
    f"reference: {seconds:.1f}s in {root / 'reference'}, requests from {window[0]:.1f}s "
    f"to {window[1]:.1f}s; a kill falls {window[1] - window[0]:.1f}s or less after the "
    f"first log line (p={args.focus:g}), else in [0, {seconds:.1f}]s",
    flush=True,
  )

  rows = []
  header = ("trial", "kills", "at_s", "step_at_kill", "skipped_ckpts", "resume_rc", "same_report")
  print("  ".join(f"{h:>14}" for h in header))
  for i in range(args.trials):
    row = trial(args, i, root / f"trial_{i:03d}", seconds, window)
    rows.append(row)
    print(
      "  ".join(f"{str(row[h]):>14}" for h in header)
      + (f"  {row['error']}" if row["error"] else ""),
      flush=True,
    )
  bad = [r for r in rows if not r["same_report"]]
  kills = sum(r["kills"] for r in rows)
  print(
    f"{len(rows) - len(bad)}/{len(rows)} trials resumed to the reference report.json "
    f"(without timings); {kills} kills; {time.perf_counter() - start:.0f}s in all"
  )
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
