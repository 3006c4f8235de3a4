r"""Stress test: N random request streams x S seeds, every method, one table.

Draws ``--streams`` valid streams from the grammar (:func:`ugclu_jax.data.random_stream`;
stream ``i`` comes from ``numpy.random.default_rng([--stream-seed, i])``, the same for
every seed), runs each (stream, seed) with ``runner.run_experiment`` in its own workdir
``OUT/s<i>_seed<s>``, and writes a Markdown table: for each method, the share of runs in
which any request collapsed (:func:`ugclu_jax.evaluation.collapse_reason`), the mean and
the worst gap to the oracle (``avg_gap`` over the unlearn requests of a run, then the
mean and the maximum over runs; also the worst single request), and the worst remaining
accuracy after any request. Finished runs are skipped and interrupted ones resumed, so
the same command continues a stopped stress run.

    python experiments/stress.py --out runs/stress --streams 20 --seeds 3
    make stress STRESS_ARGS="--streams 2 --seeds 1 --max-train-per-class 50"

The base config is ``--config`` (default: ``default``, Split Fashion-MNIST with the
CNN) with ``--set key=value`` overrides; ``--methods``, ``--max-train-per-class``,
``--learn-epochs`` and ``--unlearn-iterations`` are shortcuts for common ones.

``--merge OTHER`` adds the methods of another stress run over the same streams, seeds and
data (e.g. more baselines, run apart to share the cores) to each run of the table, so
they are compared and paired on the same runs; the oracle of both must agree.
"""

import argparse
import json
import pathlib
import shlex
import sys
import time

import numpy as np

from ugclu_jax import config as C
from ugclu_jax import data as D
from ugclu_jax import methods as MT
from ugclu_jax import report as R
from ugclu_jax import runner
from ugclu_jax.host import keep_freed_host_memory, use_compilation_cache

ORACLE = R.ORACLE


def _args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default="runs/stress", help="folder of the runs (default %(default)s)")
  p.add_argument("--table", default=None, help="Markdown table to write (default: OUT/stress.md)")
  p.add_argument("--config", default="default", help="base config (default %(default)s)")
  p.add_argument("--streams", type=int, default=20, help="number of streams (default %(default)s)")
  p.add_argument(
    "--seeds", type=int, default=3, help="seeds F..F+S-1 of every stream (default %(default)s)"
  )
  p.add_argument(
    "--first-seed",
    type=int,
    default=10,
    help="F, the first seed; the defaults were chosen on seeds 0-1 and "
    "100-103, so the stress seeds start above them (default %(default)s)",
  )
  p.add_argument("--length", type=int, default=8, help="requests per stream (default %(default)s)")
  p.add_argument(
    "--stream-seed",
    type=int,
    default=0,
    help="draws another batch of streams (default %(default)s)",
  )
  p.add_argument("--methods", default=None, help="comma-separated methods (default: the config's)")
  p.add_argument(
    "--max-train-per-class",
    type=int,
    default=None,
    help="data.max_train_per_class (default: the config's)",
  )
  p.add_argument(
    "--learn-epochs", type=float, default=None, help="train.learn_epochs (default: the config's)"
  )
  p.add_argument(
    "--unlearn-iterations",
    type=int,
    default=None,
    help="train.unlearn_iterations (default: the config's)",
  )
  p.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="any other config override (repeatable)",
  )
  p.add_argument(
    "--merge",
    action="append",
    default=[],
    metavar="OTHER",
    help="the --out of another stress run of the same streams, seeds and data: the "
    "methods of its finished runs join this table (repeatable)",
  )
  p.add_argument(
    "--plots",
    action="store_true",
    help="also render each run's report.md and plots (the table reads only "
    "report.json; rendering costs seconds per run)",
  )
  args = p.parse_args(argv)
  for key in ("streams", "seeds", "length"):
    if getattr(args, key) < 1:
      p.error(f"--{key} must be >= 1, got {getattr(args, key)}")
  return args


def _overrides(args) -> list:
  out = list(args.set)
  if args.methods is not None:
    out.append(f"methods={args.methods}")
  if args.max_train_per_class is not None:
    out.append(f"data.max_train_per_class={args.max_train_per_class}")
  if args.learn_epochs is not None:
    out.append(f"train.learn_epochs={args.learn_epochs}")
  if args.unlearn_iterations is not None:
    out.append(f"train.unlearn_iterations={args.unlearn_iterations}")
  return out


def draw_streams(n: int, *, tasks, num_classes: int, length: int, stream_seed: int = 0) -> list:
  """The ``n`` streams of a stress run: stream ``i`` from ``default_rng([stream_seed, i])``."""
  return [
    D.random_stream(
      np.random.default_rng([stream_seed, i]), tasks=tasks, num_classes=num_classes, length=length
    )
    for i in range(n)
  ]


def _finished(workdir: pathlib.Path, cfg, plots: bool = False) -> bool:
  """Whether ``workdir`` holds a finished run of ``cfg`` (rendered too, with ``plots``); a
  ValueError if of another config."""
  path = workdir / "report.json"
  if not path.is_file() or (plots and not (workdir / "report.md").is_file()):
    return False
  report = json.loads(path.read_text())
  if report.get("config") != C.to_dict(cfg):
    raise ValueError(f"{workdir} holds a run of another config; use another --out")
  length = len(report["stream"])
  return all(len(e["requests"]) == length for e in report["methods"].values())


def merge_reports(report: dict, other: dict, where: str = "") -> dict:
  """``report`` with the methods of ``other`` that it lacks: two runs of one stream, seed
  and data (their configs differ in ``methods`` at most), e.g. a stress run of more methods.

  Raises:
    ValueError: the runs differ in anything but their methods, or their oracles disagree
      (every metric within 1e-9).
  """
  strip = lambda r: {k: v for k, v in r["config"].items() if k != "methods"}
  if other["stream"] != report["stream"] or strip(other) != strip(report):
    raise ValueError(f"{where}: the runs to merge differ in more than their methods")
  mine, theirs = report["methods"], other["methods"]
  if any(len(e["requests"]) != len(other["stream"]) for e in theirs.values()):
    raise ValueError(f"{where}: that run is not finished")
  if ORACLE in mine and ORACLE in theirs:
    for a, b in zip(mine[ORACLE]["requests"], theirs[ORACLE]["requests"]):
      for key, value in a["metrics"].items():
        v = b["metrics"].get(key)
        if (value is None) != (v is None) or (value is not None and abs(value - v) > 1e-9):
          raise ValueError(f"{where}: the oracles disagree on [{a['index']}] {key}")
  methods = {**mine, **{m: e for m, e in theirs.items() if m not in mine}}
  return {**report, "methods": methods}


def _pct(x):
  return "—" if x is None else f"{100 * x:.1f}%"


def paired_lines(runs, reference: str = "ugclu") -> list:
  r"""Paired comparisons of run gaps: ``reference`` against every other method.

  For each other method (the oracle aside), the per-run difference
  :math:`\Delta = \mathrm{gap}_{ref} - \mathrm{gap}_{other}` over the runs where both have a
  gap (same stream, same seed, same data), its mean with a 95 % Student-t interval, how
  often the reference is lower, and the two-sided Wilcoxon signed-rank p-value. Runs
  count as independent, although the seeds of one stream share it.
  """
  gaps = {}
  for r in runs:
    for m, row in R.summary(r["report"]).items():
      if row["avg_gap"] is not None:
        gaps.setdefault(m, {})[(r["stream_id"], r["seed"])] = row["avg_gap"]
  lines = []
  for m in gaps:
    if m in (reference, ORACLE) or reference not in gaps:
      continue
    keys = sorted(set(gaps[reference]) & set(gaps[m]))
    d = R.paired_difference([gaps[reference][k] for k in keys], [gaps[m][k] for k in keys])
    if d is None or d["n"] < 2:
      continue
    lo, hi = d["ci95"]
    lines.append(
      f"| {m} | {d['n']} | {100 * d['mean']:+.1f} | [{100 * lo:+.1f}, "
      f"{100 * hi:+.1f}] | {d['reference_lower']}/{d['n']} | {d['wilcoxon_p']:.3g} |"
    )
  if not lines:
    return []
  return [
    f"## Paired with {reference}",
    "",
    f"Per-run gap of {reference} minus the other method's, in points (negative: "
    f"{reference} is closer to the oracle); 95 % t-interval; Wilcoxon signed-rank p. Runs "
    "count as independent, although the seeds of one stream share it.",
    "",
    "| method | runs | mean Δ | 95 % CI | reference lower | Wilcoxon p |",
    "|---|---:|---:|---:|---:|---:|",
    *lines,
    "",
  ]


def stress_table(runs, *, command: str, wall_seconds: float, failed=(), merged=()) -> str:
  """The Markdown table of a stress run.

  Args:
    runs: ``[{"stream_id", "seed", "stream", "report", "seconds"}]``, one per
      finished run (``report``: its report.json dict; ``seconds``: how long it
      took, or None).
    failed: ``[{"stream_id", "seed", "stream", "error"}]``, the runs stopped by a
      diverging method (listed, and left out of the table).
    command: the command line, printed in the header.
    wall_seconds: the wall time of the command that wrote the table.
    merged: the ``--merge`` folders, named in the header.

  Returns:
    The Markdown text: header, per-method table, collapses, worst cases, streams.
  """
  methods = []
  for run in runs:
    methods += [m for m in R.summary(run["report"]) if m not in methods]
  rows, worst_lines = [], []
  for m in methods:
    mine = [r for r in runs if m in r["report"]["methods"]]
    collapsed = [r for r in mine if any(c["method"] == m for c in R.collapses(r["report"]))]
    run_gaps = [(R.summary(r["report"])[m]["avg_gap"], r, None) for r in mine]
    run_gaps = [x for x in run_gaps if x[0] is not None]
    request_gaps, remain = [], []
    for r in mine:
      for q in r["report"]["methods"][m]["requests"]:
        if q["request"].startswith("U:") and q["metrics"].get("avg_gap") is not None:
          request_gaps.append((q["metrics"]["avg_gap"], r, q))
        if q["metrics"].get("remain_acc") is not None:
          remain.append((q["metrics"]["remain_acc"], r, q))
    mean_gap = float(np.mean([x[0] for x in run_gaps])) if run_gaps else None
    worst_run = max(run_gaps, key=lambda x: x[0]) if run_gaps else None
    worst_req = max(request_gaps, key=lambda x: x[0]) if request_gaps else None
    worst_ra = min(remain, key=lambda x: x[0]) if remain else None
    label = f"{m} (oracle)" if m == ORACLE else m
    rows.append(
      f"| {label} | {len(mine)} | {len(collapsed)}/{len(mine)} "
      f"({100 * len(collapsed) / max(len(mine), 1):.0f}%) | {_pct(mean_gap)} | "
      f"{_pct(worst_run and worst_run[0])} | {_pct(worst_req and worst_req[0])} | "
      f"{_pct(worst_ra and worst_ra[0])} |"
    )

    def at(item):
      _, r, q = item
      where = f"s{r['stream_id']} seed {r['seed']}"
      return where + (f" [{q['index']}] `{q['request']}`" if q is not None else "")

    parts = []
    if worst_run:
      parts.append(f"worst run gap {_pct(worst_run[0])} ({at(worst_run)})")
    if worst_req:
      parts.append(f"worst request gap {_pct(worst_req[0])} ({at(worst_req)})")
    if worst_ra:
      parts.append(f"worst RA {_pct(worst_ra[0])} ({at(worst_ra)})")
    if parts:
      worst_lines.append(f"- {label}: " + "; ".join(parts))

  seconds = [r["seconds"] for r in runs if r.get("seconds") is not None]
  first = runs[0]["report"] if runs else {}
  data = first.get("config", {}).get("data", {})
  train = first.get("config", {}).get("train", {})
  every = [*runs, *failed]
  lines = [
    "# Stress test: random streams x seeds",
    "",
    f"- command: `{command}`",
    f"- runs: {len(runs)} finished, {len(failed)} failed ({len({r['stream_id'] for r in every})} "
    f"stream(s) x {len({r['seed'] for r in every})} seed(s)); dataset "
    f"`{first.get('dataset', '?')}`, model "
    f"`{train.get('model', '?')}`, {data.get('max_train_per_class')} training samples per "
    f"class at most, {train.get('learn_epochs')} epochs per learn request (at least "
    f"{train.get('min_learn_iterations', 0)} iterations), "
    f"{train.get('unlearn_iterations')} iterations per unlearn request",
    f"- wall time of this command: {wall_seconds:.0f} s; the runs took {sum(seconds):.0f} s "
    f"in all, each timed when it ran ({len(seconds)} of {len(runs)} timed; a resumed run "
    f"counts its last part)",
    *[
      f"- merged: the methods of `{m}`'s runs of the same streams and seeds (their times are "
      "not in the line above)"
      for m in merged
    ],
    "",
    "Collapsed: the share of runs with at least one request after which the model predicted "
    "one class for most of the remaining test set or scored chance accuracy on it. Gap: "
    "`avg_gap` to the oracle, the mean over a run's unlearn requests; mean and worst over "
    "runs, and the worst single unlearn request. Worst RA: the lowest remaining accuracy "
    "after any request of any run.",
    "",
    "| method | runs | collapsed | mean gap | worst run gap | worst request gap | worst RA |",
    "|---|---:|---:|---:|---:|---:|---:|",
    *rows,
    "",
    *paired_lines(runs),
    "## Worst cases",
    "",
    *worst_lines,
    "",
    "## Collapses",
    "",
  ]
  found = [(r, c) for r in runs for c in R.collapses(r["report"])]
  if not found:
    lines.append("None.")
  for r, c in found:
    lines.append(
      f"- {c['method']}: s{r['stream_id']} seed {r['seed']} [{c['index']}] "
      f"`{c['request']}`: {c['reason']}"
    )
  if failed:
    lines += ["", "## Failed runs (a method diverged; not in the table)", ""]
    lines += [f"- s{f['stream_id']} seed {f['seed']}: {f['error']}" for f in failed]
  lines += ["", "## Streams", ""]
  streams = {}
  for r in every:
    streams.setdefault(r["stream_id"], r["stream"])
  lines += [f"- s{i}: `{s}`" for i, s in sorted(streams.items())]
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  args = _args(sys.argv[1:] if argv is None else argv)
  start = time.perf_counter()
  # As `python -m ugclu_jax run`: every run reuses the compiled steps of the others.
  use_compilation_cache()
  command = " ".join(
    shlex.quote(a)
    for a in ["python", "experiments/stress.py", *(sys.argv[1:] if argv is None else argv)]
  )
  try:
    base = C.apply_overrides(C.load_config(args.config), _overrides(args))
    base, ds, tasks, _, _ = runner.prepare(base, print)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  streams = draw_streams(
    args.streams,
    tasks=tasks,
    num_classes=ds.num_classes,
    length=args.length,
    stream_seed=args.stream_seed,
  )
  out = pathlib.Path(args.out)
  runs, failed = [], []
  total = args.streams * args.seeds
  for i, stream in enumerate(streams):
    for seed in range(args.first_seed, args.first_seed + args.seeds):
      workdir = out / f"s{i:02d}_seed{seed}"
      timing = workdir / "stress_seconds.json"
      label = f"[{len(runs) + len(failed) + 1}/{total}] s{i} seed {seed}"
      cfg = C.apply_overrides(base, [f"seed={seed}", f"stream={stream}"])
      try:
        finished = _finished(workdir, cfg, args.plots)
        if finished:
          print(f"{label}: finished before, skipped")
        else:
          print(f"{label}: {stream}")
          t0 = time.perf_counter()
          runner.run_experiment(
            cfg,
            workdir,
            resume=True,
            progress=False,
            render=args.plots,
            echo=lambda s: print("  " + s) if s.startswith("warning:") else None,
          )
      except ValueError as e:
        print(f"error: {label}: {e}", file=sys.stderr)
        return 1
      except MT.NonFiniteError as e:  # A method diverged: the run stops there; the others go on.
        print(f"  failed: {e}")
        failed.append({"stream_id": i, "seed": seed, "stream": stream, "error": str(e)})
        continue
      if not finished:
        seconds = time.perf_counter() - t0
        timing.write_text(json.dumps({"seconds": round(seconds, 1)}) + "\n")
      report = json.loads((workdir / "report.json").read_text())
      for other in args.merge:
        path = pathlib.Path(other) / workdir.name / "report.json"
        if path.is_file():
          try:
            report = merge_reports(report, json.loads(path.read_text()), str(path))
          except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
      seconds = json.loads(timing.read_text())["seconds"] if timing.is_file() else None
      runs.append(
        {"stream_id": i, "seed": seed, "stream": stream, "report": report, "seconds": seconds}
      )
  table = pathlib.Path(args.table) if args.table else out / "stress.md"
  table.parent.mkdir(parents=True, exist_ok=True)
  table.write_text(
    stress_table(
      runs,
      command=command,
      failed=failed,
      merged=args.merge,
      wall_seconds=time.perf_counter() - start,
    )
  )
  print(f"wrote {table}")
  return 0


if __name__ == "__main__":
  keep_freed_host_memory()  # before JAX starts its threads, as python -m ugclu_jax does
  sys.exit(main())
