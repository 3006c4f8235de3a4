"""Reports of a request stream: summary, Markdown tables, plots and seed aggregation.

Everything here is a pure function of the ``report.json`` dictionary of a run
(docs/design.md §6): per method, a list of requests with their
``seconds``, their ``metrics`` (the canonical names of docs/method.md §9 plus the
cost counters ``steps``, ``grad_evals``, ``hvp_evals``) and the test accuracy
of every task (``acc_per_task``, ``None`` where a task is not learned).

* :func:`summary` reduces each method to a handful of numbers;
* :func:`collapses` lists the requests after which a model collapsed;
* :func:`markdown` renders ``report.md``;
* :func:`plot` draws the accuracy-matrix heat maps, the per-request metric
  curves and the gap / time bars as PNG files;
* :func:`aggregate` folds the reports of several seeds into one report of the
  same structure, where every number is the mean over seeds and a parallel
  ``*_std`` field holds the standard deviation;
* :func:`render` loads ``report.json`` files and writes ``report.md`` and the
  plots (the ``python -m ugclu_jax report`` command).

:func:`markdown` and :func:`plot` accept single and aggregated reports alike;
for an aggregated report the tables show ``mean ± std`` and the plots draw error
bars and bands. Plots are drawn on :class:`matplotlib.figure.Figure` objects
directly, so nothing here selects a backend or touches ``pyplot``'s state.
"""

from collections.abc import Mapping, Sequence
import copy
import json
import math
import os
import re
from typing import Any

import numpy as np

# The oracle's and its twin's names (a light import: no JAX).
from ugclu_jax.evaluation import COST_METRICS
from ugclu_jax.methods import ORACLE, ORACLE_TWIN

UNLEARN_PREFIX = "U:"
"""Stream tokens starting with this prefix are unlearn requests."""

SUMMARY_KEYS = (
  "avg_gap",
  "avg_acc",
  "forgetting",
  "bwt",
  "relapse",
  "seconds",
  "compile_seconds",
  "steps",
  "grad_evals",
  "hvp_evals",
  "unlearn_seconds",
  "unlearn_grad_evals",
  "oracle_time_share",
  "oracle_grad_share",
  "compensation",
)
"""The keys of each method's :func:`summary` entry, in table order."""

DIVERGED_KEYS = (
  "avg_gap",
  "avg_acc",
  "forgetting",
  "bwt",
  "relapse",
  "oracle_time_share",
  "oracle_grad_share",
  "compensation",
)
"""The summary keys that a diverged method leaves undefined: on every seed of an
aggregate where it diverged on one (a mean over the seeds where it survived would
flatter it)."""

_FRACTION_METRICS = frozenset(
  {
    "forget_acc",
    "remain_acc",
    "test_acc",
    "mia_efficacy",
    "avg_gap",
    "avg_acc",
    "forgetting",
    "bwt",
    "relapse",
  }
)
# A request's wall-clock fields: training time without compilation, and compilation.
TIMING_KEYS = ("seconds", "compile_seconds")
# The summary's keys that come from them.
_SUMMARY_TIMING_KEYS = (*TIMING_KEYS, "unlearn_seconds", "oracle_time_share")
_REQUEST_COLUMNS = (
  ("FA", "forget_acc"),
  ("RA", "remain_acc"),
  ("TA", "test_acc"),
  ("MIA", "mia_efficacy"),
  ("gap", "avg_gap"),
  ("JS", "js_div"),
)
_SUMMARY_HEADERS = (
  ("gap (unlearn mean)", "avg_gap"),
  ("avg acc (final)", "avg_acc"),
  ("forgetting (final)", "forgetting"),
  ("BWT (final)", "bwt"),
  ("relapse (mean)", "relapse"),
  ("time (s)", "seconds"),
  ("compile (s)", "compile_seconds"),
  ("steps", "steps"),
  ("grad evals", "grad_evals"),
  ("HVP evals", "hvp_evals"),
  ("unlearn time / oracle's", "oracle_time_share"),
  ("unlearn grads / oracle's", "oracle_grad_share"),
)
_PANELS = (
  ("forget_acc", "forget acc (FA)"),
  ("remain_acc", "remain acc (RA)"),
  ("test_acc", "test acc (TA)"),
  ("mia_efficacy", "MIA efficacy"),
)
_DASH = "—"


# ---------------------------------------------------------------------------
# Validation and access helpers.
# ---------------------------------------------------------------------------


def _num(x: Any) -> float | None:
  """``x`` as a finite float, or ``None`` (null, NaN, inf, bool, non-numbers)."""
  if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
    return None
  x = float(x)
  return x if math.isfinite(x) else None


def _check_report(report: Any, where: str) -> None:
  """Raises a one-line ValueError unless ``report`` has the report.json structure."""
  if not isinstance(report, Mapping):
    raise ValueError(f"{where}: a report must be a dict, got {type(report).__name__}")
  stream = report.get("stream")
  if not isinstance(stream, (list, tuple)) or not all(isinstance(t, str) for t in stream):
    raise ValueError(f"{where}: report 'stream' must be a list of request tokens")
  methods = report.get("methods")
  if not isinstance(methods, Mapping) or not methods:
    raise ValueError(f"{where}: report 'methods' must be a non-empty dict")
  config = report.get("config", {})
  if config is not None and not isinstance(config, Mapping):
    raise ValueError(f"{where}: report 'config' must be a dict")
  for name, entry in methods.items():
    if not isinstance(name, str):
      raise ValueError(f"{where}: method names must be strings, got {name!r}")
    requests = entry.get("requests") if isinstance(entry, Mapping) else None
    if not isinstance(requests, (list, tuple)):
      raise ValueError(f"{where}: method {name!r} has no 'requests' list")
    for i, req in enumerate(requests):
      if not isinstance(req, Mapping):
        raise ValueError(f"{where}: method {name!r} request {i} must be a dict")
      if not isinstance(req.get("metrics", {}), Mapping):
        raise ValueError(f"{where}: method {name!r} request {i} 'metrics' must be a dict")
      if not isinstance(req.get("acc_per_task", []), (list, tuple)):
        raise ValueError(f"{where}: method {name!r} request {i} 'acc_per_task' must be a list")
      index = req.get("index", i)
      if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"{where}: method {name!r} request {i} has a bad index {index!r}")


def _is_aggregated(report: Mapping[str, Any]) -> bool:
  return isinstance(report.get("seeds"), list)


def _config(report: Mapping[str, Any]) -> Mapping[str, Any]:
  config = report.get("config")
  return config if isinstance(config, Mapping) else {}


def _method_order(report: Mapping[str, Any]) -> list[str]:
  """``ugclu`` first, the others in report order, the oracle last."""
  names = list(report["methods"])
  head = [n for n in names if n == "ugclu"]
  tail = [n for n in names if n == ORACLE]
  return head + [n for n in names if n not in ("ugclu", ORACLE)] + tail


def _requests(entry: Mapping[str, Any]) -> list[Mapping[str, Any]]:
  """The requests of a method entry, sorted by index."""
  reqs = list(entry["requests"])
  return [r for _, r in sorted(((r.get("index", i), i), r) for i, r in enumerate(reqs))]


def _by_index(entry: Mapping[str, Any]) -> dict[int, Mapping[str, Any]]:
  return {r.get("index", i): r for i, r in enumerate(entry["requests"])}


def _metric(req: Mapping[str, Any], key: str) -> float | None:
  """A metric of a request (cost counters may also sit at the request's top level)."""
  metrics = req.get("metrics", {})
  return _num(metrics[key] if key in metrics else req.get(key))


def _std_metric(req: Mapping[str, Any], key: str) -> float | None:
  if key == "seconds":
    return _num(req.get("seconds_std"))
  std = req.get("metrics_std")
  return _num(std.get(key)) if isinstance(std, Mapping) else None


def _value(req: Mapping[str, Any], key: str) -> float | None:
  return _num(req.get("seconds")) if key == "seconds" else _metric(req, key)


def _mean(values: Sequence[float | None]) -> float | None:
  defined = [v for v in values if v is not None]
  return sum(defined) / len(defined) if defined else None


def _total(values: Sequence[float | None]) -> float | None:
  defined = [v for v in values if v is not None]
  return float(sum(defined)) if defined else None


def _mean_std(values: Sequence[Any]) -> tuple[float | None, float | None]:
  """Mean and sample standard deviation (ddof=1) over the defined values.

  Args:
    values: numbers or ``None``.

  Returns:
    ``(mean, std)``; ``(None, None)`` where nothing is defined and a std of 0.0
    where one value is.
  """
  defined = [v for v in (_num(x) for x in values) if v is not None]
  if not defined:
    return None, None
  arr = np.asarray(defined, dtype=np.float64)
  std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
  return float(arr.mean()), std


def ci95_half_width(values: Sequence[float]) -> float | None:
  r"""Half width of the 95 % Student-t interval of the mean of ``values``:
  :math:`t_{0.975,\,n-1}\, s / \sqrt n` (``None`` for fewer than two values)."""
  arr = np.asarray(values, dtype=np.float64)
  if arr.size < 2:
    return None
  from scipy import stats  # scikit-learn's dependency; imported where it is needed

  return float(stats.t.ppf(0.975, arr.size - 1) * arr.std(ddof=1) / np.sqrt(arr.size))


def paired_difference(reference: Sequence[Any], other: Sequence[Any]) -> dict[str, Any] | None:
  r"""The paired comparison of two methods' values over the same seeds.

  :math:`\Delta_s = r_s - o_s` over the seeds where both are defined: ``n``,
  ``mean``, ``ci95`` (the 95 % Student-t interval ``[lo, hi]`` of the mean, ``None``
  for ``n < 2``), ``reference_lower`` (how many :math:`\Delta_s < 0`) and
  ``wilcoxon_p`` (two-sided signed-rank p-value; 1.0 when every
  :math:`\Delta_s = 0`, ``None`` for ``n < 2``). ``None`` when no seed defines both.
  """
  pairs = [(_num(r), _num(o)) for r, o in zip(reference, other)]
  d = np.asarray([r - o for r, o in pairs if r is not None and o is not None], np.float64)
  if d.size == 0:
    return None
  mean, half = float(d.mean()), ci95_half_width(d)
  p = None
  if d.size >= 2:
    from scipy import stats

    p = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
  return {
    "n": int(d.size),
    "mean": mean,
    "ci95": None if half is None else [mean - half, mean + half],
    "reference_lower": int(np.sum(d < 0)),
    "wilcoxon_p": p,
  }


PAIRED_KEYS = ("avg_gap", "avg_acc", "forgetting", "relapse")
"""The summary values that :func:`aggregate` compares pairwise across methods."""


def _find_config(config: Mapping[str, Any], want: str) -> Any:
  """The first value in ``config`` (depth first) whose key contains ``want``."""
  for key, value in config.items():
    if want in str(key).lower() and isinstance(value, (str, int, float)):
      return value
  for value in config.values():
    if isinstance(value, Mapping):
      found = _find_config(value, want)
      if found is not None:
        return found
  return None


def _n_tasks(report: Mapping[str, Any]) -> int:
  return max(
    (len(r.get("acc_per_task", [])) for e in report["methods"].values() for r in e["requests"]),
    default=0,
  )


# ---------------------------------------------------------------------------
# Summary.
# ---------------------------------------------------------------------------


def _unlearn_costs(entry: Mapping[str, Any] | None) -> dict[int, tuple]:
  """``{request index: (seconds, grad_evals)}`` of an entry's unlearn requests."""
  if entry is None:
    return {}
  return {
    r.get("index", i): (_num(r.get("seconds")), _metric(r, "grad_evals"))
    for i, r in enumerate(_requests(entry))
    if str(r.get("request", "")).startswith(UNLEARN_PREFIX)
  }


def _share(mine: Sequence[float | None], oracle: Sequence[float | None]) -> float | None:
  """``sum(mine) / sum(oracle)`` over the requests where both are defined."""
  pairs = [(a, b) for a, b in zip(mine, oracle) if a is not None and b is not None]
  total = sum(b for _, b in pairs)
  return sum(a for a, _ in pairs) / total if pairs and total > 0 else None


def _diverged(entry: Mapping[str, Any]) -> bool:
  return any(r.get("diverged") for r in _requests(entry))


def _summarize_method(
  entry: Mapping[str, Any], oracle: Mapping[str, Any] | None = None
) -> dict[str, float | None]:
  reqs = _requests(entry)
  last = reqs[-1] if reqs else {}
  unlearn = [r for r in reqs if str(r.get("request", "")).startswith(UNLEARN_PREFIX)]
  out = {
    "avg_gap": _mean([_metric(r, "avg_gap") for r in unlearn]),
    "avg_acc": _metric(last, "avg_acc"),
    "forgetting": _metric(last, "forgetting"),
    "bwt": _metric(last, "bwt"),
    "relapse": _mean([_metric(r, "relapse") for r in reqs]),
    "seconds": _total([_num(r.get("seconds")) for r in reqs]),
    "compile_seconds": _total([_num(r.get("compile_seconds")) for r in reqs]),
    "compensation": _mean([_metric(r, "compensation") for r in unlearn]),
  }
  for key in COST_METRICS:
    out[key] = _total([_metric(r, key) for r in reqs])
  mine, theirs = _unlearn_costs(entry), _unlearn_costs(oracle)
  out["unlearn_seconds"] = _total([c[0] for c in mine.values()])
  out["unlearn_grad_evals"] = _total([c[1] for c in mine.values()])
  both = sorted(set(mine) & set(theirs))
  for j, key in enumerate(("oracle_time_share", "oracle_grad_share")):
    out[key] = _share([mine[i][j] for i in both], [theirs[i][j] for i in both])
  if _diverged(entry):  # A dropped method has no result.
    out.update(dict.fromkeys(DIVERGED_KEYS))
  return {k: out[k] for k in SUMMARY_KEYS}


def _provenance_lines(record) -> list[str]:
  """report.md's line on where the report comes from (none without a record)."""
  if not isinstance(record, Mapping):
    return []
  versions, source, devices = (record.get(k) or {} for k in ("versions", "source", "devices"))
  code = f"ugclu_jax {versions.get('ugclu_jax')}"
  if source.get("commit"):
    code += f" at {source['commit'][:10]}" + (" with local changes" if source.get("dirty") else "")
  where = f"{devices.get('count')} {devices.get('kind')} device(s)"
  span = f"{record.get('started')} to {record.get('finished') or 'unfinished'}"
  resumed = record.get("resumed_at")
  if resumed is not None:
    span += f", resumed at request {resumed}"
  return [f"- run: {code}, jax {versions.get('jax')}, {where}; {span} (UTC)"]


def without_timings(report: Mapping[str, Any]) -> dict[str, Any]:
  """A deep copy of ``report`` without its wall-clock fields: ``seconds``,
  ``compile_seconds``, the ``provenance`` record (:mod:`ugclu_jax.provenance`) and,
  in an aggregate, the summaries' entries computed from them.

  Two runs with one seed, or a run and its resumed copy, give equal results.
  """
  out = copy.deepcopy(dict(report))
  out.pop("provenance", None)
  for entry in out["methods"].values():
    for request in entry["requests"]:
      for key in TIMING_KEYS:
        request.pop(key, None)
        request.pop(f"{key}_std", None)
  for section in ("summary", "summary_std", "summary_ci95"):  # (PAIRED_KEYS hold no timing.)
    for row in out.get(section, {}).values():
      for key in _SUMMARY_TIMING_KEYS:
        row.pop(key, None)
  return out


def summary(report: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
  r"""Reduces each method of a report to a few numbers.

  Per method:

  * ``avg_gap``: the mean of ``avg_gap`` over the unlearn requests (tokens
    ``U:...``) where it is defined;
  * ``avg_acc``, ``forgetting``, ``bwt``: their values after the last request;
  * ``relapse``: the mean over the requests where it is defined;
  * ``seconds`` (training, compilation excluded), ``compile_seconds``, ``steps``,
    ``grad_evals``, ``hvp_evals``: totals over requests;
  * ``unlearn_seconds``, ``unlearn_grad_evals``: totals over the unlearn requests;
    ``oracle_time_share``, ``oracle_grad_share``: those totals over the oracle's at
    the same requests (the cost of unlearning against retraining; ``None``
    without an oracle; 1 for the oracle);
  * ``compensation``: the mean over the unlearn requests of the measured relative
    size of the explicit compensation (``hvp`` mode; ``None`` otherwise).

  Each is ``None`` where undefined, and the :data:`DIVERGED_KEYS` of a method that
  diverged (``on_nonfinite="drop"``). For an aggregated report (:func:`aggregate`)
  the values are the means over seeds of the per-seed summaries.

  Args:
    report: a report.json dict, or an aggregated report.

  Returns:
    ``{method: {key: value}}`` with the keys of :data:`SUMMARY_KEYS`, methods in
    table order (``ugclu`` first, the oracle last).
  """
  _check_report(report, "summary")
  stored = report.get("summary") if _is_aggregated(report) else None
  out = {}
  for name in _method_order(report):
    if isinstance(stored, Mapping) and isinstance(stored.get(name), Mapping):
      out[name] = {k: _num(stored[name].get(k)) for k in SUMMARY_KEYS}
    else:
      out[name] = _summarize_method(report["methods"][name], report["methods"].get(ORACLE))
  return out


def _summary_std(report: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
  stored = report.get("summary_std")
  stored = stored if isinstance(stored, Mapping) else {}
  out = {}
  for name in _method_order(report):
    entry = stored.get(name)
    entry = entry if isinstance(entry, Mapping) else {}
    out[name] = {k: _num(entry.get(k)) for k in SUMMARY_KEYS}
  return out


# ---------------------------------------------------------------------------
# Aggregation over seeds.
# ---------------------------------------------------------------------------


def _check_same(reports: Sequence[Mapping[str, Any]]) -> None:
  """Raises a one-line ValueError where the reports' streams or methods differ."""
  first = reports[0]
  for i, rep in enumerate(reports[1:], start=1):
    if list(rep["stream"]) != list(first["stream"]):
      raise ValueError(
        f"aggregate: report {i} has stream {' '.join(rep['stream'])!r}, "
        f"report 0 has {' '.join(first['stream'])!r}"
      )
    missing = [m for m in first["methods"] if m not in rep["methods"]]
    extra = [m for m in rep["methods"] if m not in first["methods"]]
    if missing or extra:
      raise ValueError(
        f"aggregate: report {i} methods differ from report 0: missing {missing}, extra {extra}"
      )
    for name in first["methods"]:
      a = [r.get("request") for r in _requests(first["methods"][name])]
      b = [r.get("request") for r in _requests(rep["methods"][name])]
      if a != b:
        raise ValueError(
          f"aggregate: report {i} method {name!r} has requests {b}, report 0 has {a}"
        )


def _aggregate_request(reqs: Sequence[Mapping[str, Any]], index: int) -> dict[str, Any]:
  keys = []
  for r in reqs:
    keys += [k for k in r.get("metrics", {}) if k not in keys]
  metrics, metrics_std = {}, {}
  for k in keys:
    metrics[k], metrics_std[k] = _mean_std([r.get("metrics", {}).get(k) for r in reqs])
  seconds, seconds_std = _mean_std([r.get("seconds") for r in reqs])
  compile_s, compile_std = _mean_std([r.get("compile_seconds") for r in reqs])
  width = max(len(r.get("acc_per_task", [])) for r in reqs)
  acc, acc_std = [], []
  for t in range(width):
    m, s = _mean_std([(r.get("acc_per_task", []) + [None] * width)[t] for r in reqs])
    acc.append(m)
    acc_std.append(s)
  out = {
    "index": index,
    "request": reqs[0].get("request"),
    "seconds": seconds,
    "seconds_std": seconds_std,
    "compile_seconds": compile_s,
    "compile_seconds_std": compile_std,
    "metrics": metrics,
    "metrics_std": metrics_std,
    "acc_per_task": acc,
    "acc_per_task_std": acc_std,
  }
  for key in ("collapsed", "diverged"):
    if any(key in r for r in reqs):
      out[f"{key}_per_seed"] = [r.get(key) for r in reqs]
  return out


def aggregate(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  r"""Folds the reports of several seeds of one stream into a mean ± std report.

  The result has the report.json structure, with every number replaced by its
  mean over the seeds where it is defined, and a parallel standard deviation
  (sample, ``ddof=1``; 0.0 where one seed defines the value):

  * per request: ``seconds`` / ``seconds_std``, ``metrics`` / ``metrics_std``,
    ``acc_per_task`` / ``acc_per_task_std``, and ``collapsed_per_seed`` and
    ``diverged_per_seed`` (each seed's reason or ``None``) where the reports carry them;
  * ``summary`` / ``summary_std``: mean and std over seeds of each seed's
    :func:`summary`; ``summary_ci95``: the half width of the mean's 95 %
    Student-t interval (:func:`ci95_half_width`; ``None`` for one seed);
  * ``paired``: ``{"reference": "ugclu", "methods": {name: {key: ...}}}``, the
    :func:`paired_difference` of the reference (``ugclu``, else the first
    method) minus each other method over the seeds, for :data:`PAIRED_KEYS`;
  * ``diverged``: ``{name: [seeds]}``, the methods dropped as diverged on some seed
    (only where there are any); their :data:`DIVERGED_KEYS` summary values and paired
    differences are None;
  * ``seeds``: the seeds of the inputs (``config["seed"]``, ``None`` if absent);
  * ``config``: the first report's config without its ``seed``.

  Args:
    reports: report.json dicts of the same stream and methods.

  Returns:
    The aggregated report, accepted by :func:`summary`, :func:`markdown` and
    :func:`plot`.

  Raises:
    ValueError: no reports, an already aggregated report, a repeated seed, or
      reports whose streams, methods or request lists differ.
  """
  if not reports:
    raise ValueError("aggregate: no reports given")
  for i, rep in enumerate(reports):
    _check_report(rep, f"aggregate: report {i}")
    if _is_aggregated(rep):
      raise ValueError(f"aggregate: report {i} is already an aggregate of seeds {rep['seeds']}")
  _check_same(reports)
  seeds = [_config(rep).get("seed") for rep in reports]
  known = [s for s in seeds if s is not None]
  if len(set(map(repr, known))) != len(known):
    raise ValueError(f"aggregate: repeated seed in {seeds}; each report must have its own seed")

  first = reports[0]
  methods = {}
  for name in first["methods"]:
    per_seed = [_requests(rep["methods"][name]) for rep in reports]
    methods[name] = {
      "requests": [
        _aggregate_request([reqs[j] for reqs in per_seed], per_seed[0][j].get("index", j))
        for j in range(len(per_seed[0]))
      ]
    }

  summaries = [summary(rep) for rep in reports]
  diverged = {
    name: [s for s, rep in zip(seeds, reports) if _diverged(rep["methods"][name])]
    for name in _method_order(first)
  }
  diverged = {name: s for name, s in diverged.items() if s}
  summary_mean, summary_std, summary_ci = {}, {}, {}
  for name in _method_order(first):
    summary_mean[name], summary_std[name], summary_ci[name] = {}, {}, {}
    for k in SUMMARY_KEYS:
      values = [s[name][k] for s in summaries]
      if name in diverged and k in DIVERGED_KEYS:
        values = []
      summary_mean[name][k], summary_std[name][k] = _mean_std(values)
      summary_ci[name][k] = ci95_half_width([v for v in map(_num, values) if v is not None])
  reference = "ugclu" if "ugclu" in first["methods"] else _method_order(first)[0]
  paired = {
    name: {
      k: None
      if {name, reference} & set(diverged)
      else paired_difference([s[reference][k] for s in summaries], [s[name][k] for s in summaries])
      for k in PAIRED_KEYS
    }
    for name in _method_order(first)
    if name != reference
  }

  config = {k: copy.deepcopy(v) for k, v in _config(first).items() if k != "seed"}
  return {
    "config": config,
    "stream": list(first["stream"]),
    "seeds": seeds,
    "methods": methods,
    "summary": summary_mean,
    "summary_std": summary_std,
    "summary_ci95": summary_ci,
    "paired": {"reference": reference, "methods": paired},
    **({"diverged": diverged} if diverged else {}),
  }


# ---------------------------------------------------------------------------
# Markdown.
# ---------------------------------------------------------------------------


def _fmt_number(x: float, key: str) -> str:
  if key in _FRACTION_METRICS:
    return f"{100.0 * x:.1f}"
  if key in TIMING_KEYS:
    return f"{x:.2f}"
  if key in COST_METRICS:
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"
  return f"{x:.4f}"


def _fmt(mean: float | None, key: str, std: float | None = None, with_std: bool = False) -> str:
  """A table cell: percent with one decimal for fractions, ``—`` for ``None``."""
  if mean is None:
    return _DASH
  unit = "%" if key in _FRACTION_METRICS else ""
  if not with_std:
    return _fmt_number(mean, key) + unit
  std_text = _DASH if std is None else _fmt_number(std, key)
  return f"{_fmt_number(mean, key)} ± {std_text}{unit}"


def _cell_text(text: str) -> str:
  return text.replace("|", "\\|")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  lines = [
    "| " + " | ".join(_cell_text(h) for h in header) + " |",
    "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
  ]
  lines += ["| " + " | ".join(_cell_text(c) for c in row) + " |" for row in rows]
  return lines


def method_label(name: str) -> str:
  """A method's name in tables and plots: the oracle and its twin say what they are."""
  return {ORACLE: f"{name} (oracle)", ORACLE_TWIN: f"{name} (noise floor)"}.get(name, name)


def _seed_text(report: Mapping[str, Any]) -> str:
  if _is_aggregated(report):
    seeds = report["seeds"]
    names = ", ".join("?" if s is None else str(s) for s in seeds)
    return f"seeds {names} (mean ± std over {len(seeds)} runs)"
  seed = _config(report).get("seed")
  return f"seed {'?' if seed is None else seed}"


def collapses(report: Mapping[str, Any]) -> list[dict[str, Any]]:
  """The collapsed models of a report (single or aggregated), in table order.

  Args:
    report: a report.json dict (requests carry ``collapsed``: a reason or
      ``None``), or an aggregated report (``collapsed_per_seed``).

  Returns:
    ``[{"method", "index", "request", "seed", "reason"}]``, one entry per
    collapsed request (and seed); ``seed`` is the run's seed.
  """
  _check_report(report, "collapses")
  return _flagged(report, "collapsed")


def divergences(report: Mapping[str, Any]) -> list[dict[str, Any]]:
  """The requests at and after which a method had diverged and was dropped (the run's
  ``on_nonfinite="drop"``), as :func:`collapses` lists its entries.

  Args:
    report: a report.json dict (requests carry ``diverged`` where a method was
      dropped), or an aggregated report (``diverged_per_seed``).
  """
  _check_report(report, "divergences")
  return _flagged(report, "diverged")


def _flagged(report: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
  """Every request (and seed) whose ``key`` (``{key}_per_seed`` aggregated) is a reason."""
  agg = _is_aggregated(report)
  seeds = report["seeds"] if agg else [_config(report).get("seed")]
  out = []
  for name in _method_order(report):
    for req in _requests(report["methods"][name]):
      reasons = req.get(f"{key}_per_seed") if agg else [req.get(key)]
      if not isinstance(reasons, (list, tuple)):
        continue
      for seed, reason in zip(seeds, reasons):
        if isinstance(reason, str):
          out.append(
            {
              "method": name,
              "index": req.get("index"),
              "request": req.get("request"),
              "seed": seed,
              "reason": reason,
            }
          )
  return out


def _collapsed_lines(report: Mapping[str, Any], order: Sequence[str]) -> list[str]:
  """The "Collapsed models" section; empty for reports that predate the detector."""
  checked = any(
    "collapsed" in r or "collapsed_per_seed" in r
    for n in order
    for r in report["methods"][n]["requests"]
  )
  if not checked:
    return []
  lines = ["", "## Collapsed models", ""]
  found = collapses(report)
  if not found:
    return lines + [
      "No model collapsed after any request (one class predicted for most of "
      "the remaining test set, or accuracy at chance)."
    ]
  return lines + _flag_table(found)


def _flag_table(entries: Sequence[Mapping[str, Any]]) -> list[str]:
  """A table of :func:`collapses` or :func:`divergences` entries, one row each."""
  rows = [
    [
      method_label(e["method"]),
      f"{e['index']} `{e['request']}`",
      "?" if e["seed"] is None else str(e["seed"]),
      e["reason"],
    ]
    for e in entries
  ]
  return _table(["method", "request", "seed", "reason"], rows)


def _diverged_lines(report: Mapping[str, Any]) -> list[str]:
  """The "Diverged methods" section: the first dropped request of each method and seed."""
  first = {}
  for d in divergences(report):
    first.setdefault((d["method"], d["seed"]), d)
  if not first:
    return []
  return [
    "",
    "## Diverged methods",
    "",
    "Dropped from the run (`on_nonfinite=drop`) at this request; no metrics from then on, "
    "and no summary values over seeds.",
    "",
    *_flag_table(list(first.values())),
  ]


def _paired_lines(report: Mapping[str, Any]) -> list[str]:
  """report.md's 95 % intervals and paired comparisons (aggregated reports only)."""
  paired = report.get("paired")
  if not isinstance(paired, Mapping) or not isinstance(paired.get("methods"), Mapping):
    return []
  ref, ci = paired.get("reference"), report.get("summary_ci95") or {}
  means = summary(report)
  lines = [
    "",
    f"## Paired with {ref}",
    "",
    f"Per seed, {ref}'s value minus the method's, in points (gap: negative = {ref} closer "
    f"to the oracle); mean with its 95 % Student-t interval over {len(report['seeds'])} "
    "seeds (paired by seed: the same data, stream and initial model; batch draws are the "
    f"method's own); `lower` = seeds where {ref}'s value is lower; Wilcoxon signed-rank p. "
    "Above, each method's gap as mean ± 95 % half width.",
    "",
  ]
  rows = []
  for name in _method_order(report):
    half = (ci.get(name) or {}).get("avg_gap") if isinstance(ci, Mapping) else None
    gap = means[name]["avg_gap"]
    rows.append(
      [method_label(name), _DASH if gap is None else _fmt(gap, "avg_gap", _num(half), True)]
    )
  lines += _table(["method", "gap ± 95 % CI"], rows) + [""]
  rows = []
  for name, entry in paired["methods"].items():
    for key in PAIRED_KEYS:
      d = entry.get(key) if isinstance(entry, Mapping) else None
      if not isinstance(d, Mapping):
        continue
      interval = d.get("ci95")
      interval = _DASH if not interval else f"[{100 * interval[0]:+.1f}, {100 * interval[1]:+.1f}]"
      p = d.get("wilcoxon_p")
      rows.append(
        [
          method_label(name),
          key,
          str(d["n"]),
          f"{100 * d['mean']:+.1f}",
          interval,
          f"{d['reference_lower']}/{d['n']}",
          _DASH if p is None else f"{p:.3g}",
        ]
      )
  return lines + _table(["method", "value", "seeds", "mean Δ", "95 % CI", "lower", "p"], rows)


def markdown(report: Mapping[str, Any]) -> str:
  """Renders a report (single or aggregated) as Markdown: the content of report.md.

  A title with the stream and the seed(s); the summary table (methods as rows,
  ``ugclu`` first, the oracle last and marked); the collapsed models
  (:func:`collapses`; the section is left out for reports without the
  ``collapsed`` field); a table per request with FA,
  RA, TA, MIA, gap and JS in percent (JS as a number) and the time of every
  method beside the oracle; the accuracy matrix of every method (rows =
  requests, columns = tasks). ``None`` prints as ``—``; aggregated reports print
  ``mean ± std``. The output is a pure function of the report.

  Args:
    report: a report.json dict, or an aggregated report (:func:`aggregate`).

  Returns:
    The Markdown text, ending with a newline.
  """
  _check_report(report, "markdown")
  agg = _is_aggregated(report)
  config = _config(report)
  order = _method_order(report)
  stream = " ".join(report["stream"])
  title = config.get("name") if isinstance(config.get("name"), str) else "ugclu_jax"
  lines = [f"# {title}: `{stream}`, {_seed_text(report)}", ""]
  lines.append(f"- requests: {len(report['stream'])}")
  data = config.get("data")
  if isinstance(data, Mapping) and isinstance(data.get("name"), str):
    lines.append(f"- data: `{data['name']}`")
  mia = _find_config(config, "mia")
  if mia is not None:
    lines.append(f"- MIA variant: `{mia}`")
  lines.append(f"- methods: {', '.join(method_label(n) for n in order)}")
  lines += _provenance_lines(report.get("provenance"))
  lines += [
    "",
    "Accuracies, MIA, gap, forgetting, BWT and relapse in percent; gap = mean "
    "|Δ| to the oracle over FA, RA, TA and MIA; JS = Jensen-Shannon divergence to "
    "the oracle on the forget set; times in seconds; — = undefined.",
    "",
  ]

  lines += ["## Summary", ""]
  means, stds = summary(report), _summary_std(report)
  rows = [
    [method_label(n)] + [_fmt(means[n][k], k, stds[n][k], agg) for _, k in _SUMMARY_HEADERS]
    for n in order
  ]
  lines += _table(["method"] + [h for h, _ in _SUMMARY_HEADERS], rows)
  lines += _collapsed_lines(report, order)
  lines += _diverged_lines(report)
  lines += _paired_lines(report)

  lines += ["", "## Requests"]
  by_index = {n: _by_index(report["methods"][n]) for n in order}
  for i, token in enumerate(report["stream"]):
    lines += ["", f"### Request {i}: `{token}`", ""]
    rows = []
    for n in order:
      req = by_index[n].get(i)
      if req is None:
        continue
      cells = [_fmt(_metric(req, k), k, _std_metric(req, k), agg) for _, k in _REQUEST_COLUMNS]
      cells.append(_fmt(_num(req.get("seconds")), "seconds", _std_metric(req, "seconds"), agg))
      rows.append([method_label(n)] + cells)
    lines += _table(["method"] + [h for h, _ in _REQUEST_COLUMNS] + ["time (s)"], rows)

  lines += [
    "",
    "## Accuracy matrices",
    "",
    "Test accuracy of each task (columns) after each request (rows), in percent.",
  ]
  n_tasks = _n_tasks(report)
  for n in order:
    lines += ["", f"### {method_label(n)}", ""]
    rows = []
    for req in _requests(report["methods"][n]):
      acc = list(req.get("acc_per_task", []))
      std = req.get("acc_per_task_std", [])
      std = list(std) if isinstance(std, (list, tuple)) else []
      cells = [
        _fmt(
          _num(acc[t]) if t < len(acc) else None,
          "avg_acc",
          _num(std[t]) if t < len(std) else None,
          agg,
        )
        for t in range(n_tasks)
      ]
      rows.append([f"{req.get('index')} `{req.get('request', '?')}`"] + cells)
    lines += _table(["request"] + [f"t{t}" for t in range(n_tasks)], rows)
  return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Plots.
# ---------------------------------------------------------------------------


def _new_figure(width: float, height: float):
  """A figure detached from pyplot (no backend is selected or changed)."""
  from matplotlib import figure as mpl_figure  # pylint: disable=g-import-not-at-top

  return mpl_figure.Figure(figsize=(width, height), dpi=100)


def _save(fig: Any, path: str) -> None:
  # A tight bounding box keeps long labels and outside legends in the image,
  # at a fraction of the cost of a layout engine.
  fig.savefig(path, format="png", bbox_inches="tight", pad_inches=0.1)


def _file_stem(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


def _colors(order: Sequence[str]) -> dict[str, Any]:
  import matplotlib  # pylint: disable=g-import-not-at-top

  others = [n for n in order if n != ORACLE]
  cmap = matplotlib.colormaps["tab10" if len(others) <= 10 else "tab20"]
  out = {n: cmap(i % cmap.N) for i, n in enumerate(others)}
  out[ORACLE] = "black"
  return out


# Colour levels of the accuracy heat maps (percent): finer near the top, so that 85 %
# and 100 % fall in different colours.
ACC_LEVELS = (0, 20, 40, 60, 70, 80, 85, 90, 95, 100)
# Figures stop growing here (inches); beyond ANNOTATE_CELLS cells a heat map drops its
# numbers, and beyond TICK_LABELS requests only every k-th request is labelled.
MAX_INCHES = 24.0
ANNOTATE_CELLS = 400
TICK_LABELS = 40


def _capped(inches: float) -> float:
  return min(inches, MAX_INCHES)


def _every(n: int) -> int:
  """The label stride that keeps at most TICK_LABELS of ``n`` tick labels."""
  return max(1, -(-n // TICK_LABELS))


def accuracy_matrix(report: Mapping[str, Any], name: str) -> tuple[np.ndarray, np.ndarray]:
  """``(mean, std)``: method ``name``'s test accuracy per request (rows) and task (columns),
  NaN where undefined (``std`` NaN without seeds to aggregate)."""
  reqs = _requests(report["methods"][name])
  n_tasks = max(_n_tasks(report), 1)
  mean = np.full((max(len(reqs), 1), n_tasks), np.nan)
  std = np.full_like(mean, np.nan)
  for r, req in enumerate(reqs):
    acc = req.get("acc_per_task", [])
    acc_std = req.get("acc_per_task_std", [])
    acc_std = acc_std if isinstance(acc_std, (list, tuple)) else []
    for t in range(min(len(acc), n_tasks)):
      v = _num(acc[t])
      mean[r, t] = np.nan if v is None else v
      s = _num(acc_std[t]) if t < len(acc_std) else None
      std[r, t] = np.nan if s is None else s
  return mean, std


def accuracy_difference(report: Mapping[str, Any], name: str) -> np.ndarray | None:
  """Method ``name``'s accuracy matrix minus the oracle's (:func:`accuracy_matrix`),
  NaN where either is undefined; None without an oracle."""
  if ORACLE not in report["methods"]:
    return None
  mine, oracle = accuracy_matrix(report, name)[0], accuracy_matrix(report, ORACLE)[0]
  if mine.shape != oracle.shape:
    return None
  return mine - oracle


def _heat_map(fig, ax, values, std, *, cmap, norm, fmt, light) -> None:
  """Draws ``values`` (percent) with its colour bar; numbers in small grids only."""
  image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto")
  rows, cols = values.shape
  if rows * cols <= ANNOTATE_CELLS:
    for r in range(rows):
      for t in range(cols):
        if np.isnan(values[r, t]):
          continue
        text = fmt(values[r, t]) + ("" if np.isnan(std[r, t]) else f"±{std[r, t]:.1f}")
        color = "black" if light(values[r, t]) else "white"
        ax.text(t, r, text, ha="center", va="center", fontsize=8, color=color)
  fig.colorbar(image, ax=ax, fraction=0.05)


def _matrix_axes(report, name, ax, rows: int, cols: int) -> None:
  reqs = _requests(report["methods"][name])
  k = _every(rows)
  ax.set_xticks(range(cols), [f"t{t}" for t in range(cols)])
  ax.set_yticks(
    range(0, len(reqs), k), [f"{q.get('index')} {q.get('request', '?')}" for q in reqs[::k]]
  )
  ax.set_xlabel("task")
  ax.set_ylabel("request")


def _matrix_figure(rows: int, cols: int, agg: bool):
  return _new_figure(_capped(1.2 + 0.9 * cols * (1.3 if agg else 1.0)), _capped(1.2 + 0.45 * rows))


def _plot_acc_matrix(report: Mapping[str, Any], name: str, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  from matplotlib import colors as mcolors  # pylint: disable=g-import-not-at-top

  agg = _is_aggregated(report)
  mean, std = accuracy_matrix(report, name)
  fig = _matrix_figure(*mean.shape, agg)
  ax = fig.add_subplot()
  cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.8")
  norm = mcolors.BoundaryNorm(ACC_LEVELS, cmap.N)
  _heat_map(
    fig,
    ax,
    100.0 * mean,
    100.0 * std,
    cmap=cmap,
    norm=norm,
    fmt=lambda v: f"{v:.1f}",
    light=lambda v: v > 60,
  )
  _matrix_axes(report, name, ax, *mean.shape)
  ax.set_title(
    f"{method_label(name)}: test accuracy (%)" + (" mean±std" if agg else ""), fontsize=9
  )
  _save(fig, path)


def _plot_acc_difference(report: Mapping[str, Any], name: str, diff: np.ndarray, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  from matplotlib import colors as mcolors  # pylint: disable=g-import-not-at-top

  diff = 100.0 * diff
  fig = _matrix_figure(*diff.shape, False)
  ax = fig.add_subplot()
  cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="0.8")
  span = float(np.nanmax(np.abs(diff))) if np.isfinite(diff).any() else 0.0
  span = max(5.0, span)
  _heat_map(
    fig,
    ax,
    diff,
    np.full_like(diff, np.nan),
    cmap=cmap,
    norm=mcolors.Normalize(vmin=-span, vmax=span),
    fmt=lambda v: f"{v:+.1f}",
    light=lambda v: abs(v) < 0.6 * span,
  )
  _matrix_axes(report, name, ax, *diff.shape)
  ax.set_title(f"{method_label(name)} minus the oracle: test accuracy (points)", fontsize=9)
  _save(fig, path)


def _series(report: Mapping[str, Any], name: str, key: str) -> tuple[np.ndarray, ...]:
  """Request indices, means and stds of ``key`` for method ``name``: every request,
  NaN where ``key`` is undefined, so that a line breaks there instead of joining its
  neighbours."""
  xs, ys, ss = [], [], []
  for i, req in enumerate(_requests(report["methods"][name])):
    v = _metric(req, key)
    s = _std_metric(req, key)
    xs.append(req.get("index", i))
    ys.append(np.nan if v is None else v)
    ss.append(np.nan if s is None else s)
  return np.asarray(xs, float), np.asarray(ys, float), np.asarray(ss, float)


def _plot_metrics_per_request(report: Mapping[str, Any], path: str) -> None:
  agg = _is_aggregated(report)
  order = _method_order(report)
  colors = _colors(order)
  stream = list(report["stream"])
  fig = _new_figure(_capped(max(8.0, 0.6 * len(stream) + 6.0)), 6.5)
  axes = fig.subplots(2, 2, sharex=True).ravel()
  fig.subplots_adjust(hspace=0.2, wspace=0.25, top=0.9)
  for ax, (key, title) in zip(axes, _PANELS):
    for i, token in enumerate(stream):
      if token.startswith("U:"):
        ax.axvspan(i - 0.5, i + 0.5, color="0.9", linewidth=0, zorder=0)
    for name in order:
      xs, ys, ss = _series(report, name, key)
      if not np.isfinite(ys).any():
        continue
      oracle = name == ORACLE
      ax.plot(
        xs,
        100 * ys,
        color=colors[name],
        linestyle="--" if oracle else "-",
        marker="o" if len(stream) <= TICK_LABELS else None,
        markersize=3,
        linewidth=2.0 if oracle else 1.2,
        label=method_label(name),
        zorder=3 if oracle else 2,
      )
      if agg and np.isfinite(ss).any():
        s = np.nan_to_num(ss)
        ax.fill_between(
          xs, 100 * (ys - s), 100 * (ys + s), color=colors[name], alpha=0.15, linewidth=0
        )
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("%")
    ax.grid(alpha=0.3)
  k = _every(len(stream))
  for ax in axes[2:]:
    ax.set_xticks(
      range(0, len(stream), k), [f"{i}\n{stream[i]}" for i in range(0, len(stream), k)], fontsize=7
    )
    ax.set_xlabel("request (grey: unlearn)")
  handles, labels = axes[0].get_legend_handles_labels()
  for ax in axes[1:]:
    for h, lab in zip(*ax.get_legend_handles_labels()):
      if lab not in labels:
        handles.append(h)
        labels.append(lab)
  if handles:
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(0.99, 0.93), fontsize=8)
  fig.suptitle("metrics per request" + (" (mean ± std)" if agg else ""), fontsize=11)
  _save(fig, path)


def _plot_gap_time(report: Mapping[str, Any], path: str) -> None:
  agg = _is_aggregated(report)
  order = _method_order(report)
  colors = _colors(order)
  means, stds = summary(report), _summary_std(report)
  height = 1.5 + 0.35 * len(order)
  fig = _new_figure(10.0, height)
  axes = fig.subplots(1, 2, sharey=True)
  fig.subplots_adjust(wspace=0.08, top=1.0 - 0.6 / height)
  y = np.arange(len(order))
  panels = (
    ("avg_gap", "mean avg_gap over unlearn requests (%)", 100.0),
    ("seconds", "total time (s)", 1.0),
  )
  for ax, (key, title, scale) in zip(axes, panels):
    vals = np.asarray([np.nan if means[n][key] is None else scale * means[n][key] for n in order])
    err = None
    if agg:
      err = np.asarray([0.0 if stds[n][key] is None else scale * stds[n][key] for n in order])
    ax.barh(
      y,
      np.nan_to_num(vals),
      xerr=err,
      color=[colors[n] for n in order],
      capsize=3,
      error_kw={"ecolor": "0.5"},
    )
    for yi, v in zip(y, vals):
      if np.isnan(v):
        ax.text(0.0, yi, f" {_DASH}", va="center", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
  axes[0].set_yticks(y, [method_label(n) for n in order])
  axes[0].invert_yaxis()
  fig.suptitle("gap to the oracle and time" + (" (mean ± std)" if agg else ""), fontsize=11)
  _save(fig, path)


def _plot_gap_cost(report: Mapping[str, Any], path: str) -> None:
  """Each method's mean gap against its unlearn requests' time as a share of the
  oracle's retraining (log scale); error bars for aggregated reports."""
  agg = _is_aggregated(report)
  order = _method_order(report)
  colors = _colors(order)
  means, stds = summary(report), _summary_std(report)
  fig = _new_figure(7.0, 5.0)
  ax = fig.subplots()
  for n in order:
    gap, share = means[n]["avg_gap"], means[n]["oracle_time_share"]
    if gap is None or share is None or share <= 0 or n == ORACLE:
      continue
    xerr = yerr = None
    if agg:
      xerr = stds[n]["oracle_time_share"] or 0.0
      yerr = 100.0 * (stds[n]["avg_gap"] or 0.0)
    ax.errorbar(
      share, 100.0 * gap, xerr=xerr, yerr=yerr, fmt="o", color=colors[n], capsize=3, ecolor="0.6"
    )
    ax.annotate(
      method_label(n), (share, 100.0 * gap), fontsize=7, xytext=(4, 3), textcoords="offset points"
    )
  ax.set_xscale("log")
  ax.axvline(1.0, color="black", linestyle="--", linewidth=0.8)
  ax.set_xlabel("unlearn requests' time / the oracle's retraining (compile excluded)")
  ax.set_ylabel("mean avg_gap over unlearn requests (%)")
  ax.grid(alpha=0.3, which="both")
  fig.suptitle("gap to the oracle against cost" + (" (mean ± std)" if agg else ""), fontsize=11)
  _save(fig, path)


def plot(
  report: Mapping[str, Any], out_dir: str, methods: Sequence[str] | None = None
) -> list[str]:
  """Draws a report's figures as PNG files.

  Writes ``acc_matrix_<method>.png`` (a heat map of test accuracy per task and
  request, undefined cells grey, values annotated; colour levels :data:`ACC_LEVELS`,
  finer near 100 %), ``acc_diff_<method>.png`` for every method but the oracle when
  there is one (the method's matrix minus the oracle's, in points, on a diverging
  scale), ``metrics_per_request.png`` (FA, RA, TA and MIA against the request index,
  one line per method, the oracle dashed black, broken where a metric is undefined,
  unlearn requests shaded), ``gap_time.png`` (the mean ``avg_gap`` over unlearn
  requests and the total time per method) and, with an oracle, ``gap_cost.png``
  (the gap against the unlearn requests' time as a share of the oracle's).
  Aggregated reports get ``mean±std`` annotations, bands and error bars. Figures
  stop growing at :data:`MAX_INCHES`; long streams get fewer labels and heat maps
  without numbers.

  Args:
    report: a report.json dict, or an aggregated report (:func:`aggregate`).
    out_dir: the folder to write into (created if needed).
    methods: the methods whose heat maps are drawn (default: all of them); the
      summary figures show every method either way.

  Returns:
    The paths written: accuracy heat maps, then difference maps (methods in table
    order), then the two summary figures.
  """
  _check_report(report, "plot")
  order = _method_order(report)
  stems = [_file_stem(n) for n in order]
  if len(set(stems)) != len(stems):
    raise ValueError(f"plot: method names {order} collide as file names {stems}")
  unknown = [m for m in methods or () if m not in order]
  if unknown:
    raise ValueError(f"plot: method {unknown[0]!r} is not in the report ({', '.join(order)})")
  drawn = [(n, s) for n, s in zip(order, stems) if methods is None or n in methods]
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for name, stem in drawn:
    path = os.path.join(out_dir, f"acc_matrix_{stem}.png")
    _plot_acc_matrix(report, name, path)
    paths.append(path)
  for name, stem in drawn:
    diff = None if name == ORACLE else accuracy_difference(report, name)
    if diff is not None:
      path = os.path.join(out_dir, f"acc_diff_{stem}.png")
      _plot_acc_difference(report, name, diff, path)
      paths.append(path)
  path = os.path.join(out_dir, "metrics_per_request.png")
  _plot_metrics_per_request(report, path)
  paths.append(path)
  path = os.path.join(out_dir, "gap_time.png")
  _plot_gap_time(report, path)
  paths.append(path)
  if any(v["oracle_time_share"] is not None for v in summary(report).values()):
    path = os.path.join(out_dir, "gap_cost.png")
    _plot_gap_cost(report, path)
    paths.append(path)
  return paths


# ---------------------------------------------------------------------------
# Files.
# ---------------------------------------------------------------------------


def _report_path(path: str) -> str:
  return os.path.join(path, "report.json") if os.path.isdir(path) else path


def load(path: str) -> dict[str, Any]:
  """Loads and checks a report.json.

  Args:
    path: a run directory holding ``report.json``, or the file itself.

  Returns:
    The report dict.

  Raises:
    ValueError: the file is missing, is not JSON, or lacks the report structure.
  """
  file = _report_path(path)
  if not os.path.isfile(file):
    raise ValueError(f"report: no report.json at {file}")
  try:
    with open(file, encoding="utf-8") as f:
      report = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"report: cannot read {file}: {str(e).splitlines()[0]}") from None
  _check_report(report, f"report: {file}")
  return report


def render(report_paths_or_dirs: Sequence[str], out_dir: str | None = None) -> str:
  """Writes report.md and the plots of one run, or of several seeds aggregated.

  Args:
    report_paths_or_dirs: run directories (holding ``report.json``) or paths of
      report.json files; with more than one they are aggregated
      (:func:`aggregate`) and the aggregate is also written as
      ``report_aggregated.json``.
    out_dir: where to write; defaults to the folder of the single report and is
      required with several.

  Returns:
    The path of the written report.md.

  Raises:
    ValueError: no paths, no ``out_dir`` for several reports, a missing or
      invalid report.json, or reports that cannot be aggregated.
  """
  if isinstance(report_paths_or_dirs, (str, os.PathLike)):
    report_paths_or_dirs = [report_paths_or_dirs]
  paths = [os.fspath(p) for p in report_paths_or_dirs]
  if not paths:
    raise ValueError("render: no report paths given")
  if out_dir is None:
    if len(paths) > 1:
      raise ValueError(f"render: out_dir is required to aggregate {len(paths)} reports")
    out_dir = os.path.dirname(os.path.abspath(_report_path(paths[0])))
  reports = [load(p) for p in paths]
  report = aggregate(reports) if len(reports) > 1 else reports[0]
  os.makedirs(out_dir, exist_ok=True)
  if len(reports) > 1:
    with open(os.path.join(out_dir, "report_aggregated.json"), "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)
      f.write("\n")
  md_path = os.path.join(out_dir, "report.md")
  text = markdown(report)
  plot(report, out_dir)
  with open(md_path, "w", encoding="utf-8") as f:
    f.write(text)
  return md_path
