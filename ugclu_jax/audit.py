"""Audits a workdir for traces of forgotten data: ``python -m ugclu_jax audit WORKDIR``.

The forgotten samples are re-derived, never read from the workdir: the run's
``config.json`` names the dataset, the stream and the seed, and replaying the
stream (:func:`~ugclu_jax.data.replay_stream`, the run's own draws) gives every
unlearn request's samples and the learned-sample mask after each request. A
sample counts as forgotten at a checkpoint when an earlier unlearn request took
it and no later learn request brought it back. Then every kept artefact is
checked:

* every checkpoint verifies (its content hash, :mod:`~ugclu_jax.checkpointing`),
  and none is left half-written;
* no checkpoint is older than the last unlearn request it follows (those hold
  the forgotten samples in their store and models trained on them);
* in each checkpoint: the store holds no forgotten sample, the learned mask
  is the replayed one, per-sample method state (DER++'s recorded logits) has
  no row for a forgotten sample, and the metadata holds no list of forgotten
  indices nor a per-sample record of them (``forget_sets``, ``forget_correct``);
* ``run.log``, ``report.json`` and the other text files list no forgotten index.

Pixels are never written by a run (checkpoints hold indices into the dataset),
so indices are what the audit looks for.
"""

import json
import pathlib
import re
from typing import Any, Iterator

import numpy as np

# Keys that name per-sample records of forget sets (the metadata of older versions).
_FORBIDDEN_KEYS = ("forget_set", "forget_correct", "forget_indices", "forgotten")
# Three or more comma-separated integers that are not a class list (``U:c1,5,7``).
_INT_RUN = re.compile(r"(?<![\w.,:])(\d+(?:\s*,\s*\d+){2,})(?![\w.])")
_TEXT_SUFFIXES = (".json", ".log", ".md", ".txt", ".tmp", ".csv")
FINDINGS_EXIT = 5


class Findings(Exception):
  """The audit found traces of forgotten data (exit code :data:`FINDINGS_EXIT`)."""

  exit_code = FINDINGS_EXIT


def _int_lists(obj: Any, path: str = "") -> Iterator[tuple[str, list]]:
  """``(path, list)`` for every list of ints in a JSON value (the config excluded)."""
  if isinstance(obj, dict):
    for k, v in obj.items():
      if k != "config":  # The resolved config: compared with config.json instead.
        yield from _int_lists(v, f"{path}.{k}" if path else str(k))
  elif isinstance(obj, list):
    if obj and all(isinstance(v, int) and not isinstance(v, bool) for v in obj):
      yield path, obj
    else:
      for i, v in enumerate(obj):
        yield from _int_lists(v, f"{path}[{i}]")


def _keys(obj: Any, path: str = "") -> Iterator[str]:
  if isinstance(obj, dict):
    for k, v in obj.items():
      here = f"{path}.{k}" if path else str(k)
      yield here
      yield from _keys(v, here)
  elif isinstance(obj, list):
    for i, v in enumerate(obj):
      yield from _keys(v, f"{path}[{i}]")


def scan_json(obj: Any, forgotten: np.ndarray, where: str) -> list[str]:
  """Findings in a JSON value: per-sample forget keys, and int lists with forgotten indices."""
  out, bad_keys = [], []
  for key in _keys(obj):
    last = key.rsplit(".", 1)[-1].lower()
    if any(bad in last for bad in _FORBIDDEN_KEYS):
      out.append(f"{where}: holds {key} (a per-sample record of forgotten data)")
      bad_keys.append(key)
  for path, values in _int_lists(obj):
    if any(path.startswith(key) for key in bad_keys):
      continue
    hits = int(np.isin(np.asarray(values, np.int64), forgotten).sum())
    if hits and len(values) >= 2:
      out.append(f"{where}: {path} lists {hits} forgotten sample index(es)")
  return out


def scan_text(text: str, forgotten: np.ndarray, where: str) -> list[str]:
  """Findings in free text: runs of three or more integers that include forgotten indices."""
  hits = 0
  for match in _INT_RUN.finditer(text):
    values = np.asarray([int(v) for v in re.split(r"\s*,\s*", match.group(1))], np.int64)
    hits += int(np.isin(values, forgotten).sum())
  return [f"{where}: lists {hits} forgotten sample index(es)"] if hits else []


class _Run:
  """What the run's config.json re-derives: requests, forget sets, learned masks."""

  def __init__(self, workdir: pathlib.Path):
    from ugclu_jax import config as C
    from ugclu_jax import data as D
    from ugclu_jax import runner

    self.config = json.loads((workdir / "config.json").read_text())
    cfg, self.ds, _, self.requests, self.method_names = runner.prepare(C.from_dict(self.config))
    self.cfg = cfg
    y = self.ds.y_train
    replay = list(D.replay_stream(self.requests, y_train=y, seed=cfg.seed))
    self.learned_after = [learned for _, learned in replay]
    self.unlearned = {
      r: idx for r, (idx, _) in enumerate(replay) if self.requests[r].kind == "unlearn"
    }

  def learned_at(self, step: int) -> np.ndarray:
    """The learned mask at checkpoint ``step`` (after requests ``0..step-1``)."""
    if step == 0:
      return np.zeros(self.ds.y_train.shape, bool)
    return self.learned_after[step - 1]

  def forgotten_at(self, step: int) -> np.ndarray:
    """Samples unlearned before checkpoint ``step`` and not learned again since."""
    taken = [idx for r, idx in self.unlearned.items() if r < step]
    if not taken:
      return np.zeros(0, np.int64)
    union = np.unique(np.concatenate(taken))
    return union[~self.learned_at(step)[union]]


def _check_content(run: _Run, step: int, tree, meta, where: str) -> list[str]:
  """Findings in one checkpoint's arrays (``tree``, or None) and metadata (or None)."""
  from ugclu_jax import data as D

  findings = []
  step = min(step, len(run.requests))
  forgotten = run.forgotten_at(step)
  num_train = run.ds.y_train.size
  if tree is not None:
    stored = D.store_indices(D.Store(*tree["store"]))
    if n := int(np.isin(stored, forgotten).sum()):
      findings.append(f"{where}: the store holds {n} forgotten sample(s)")
    if not np.array_equal(np.asarray(tree["learned"], bool), run.learned_at(step)):
      findings.append(f"{where}: the learned mask differs from the stream's replay")
    for name, state in tree["methods"].items():
      for leaf in _leaves(state[2]):  # The per-method extra state.
        a = np.asarray(leaf)
        if a.ndim >= 1 and a.shape[0] == num_train and forgotten.size:
          rows = a[forgotten].reshape(forgotten.size, -1)
          if n := int(np.any(rows != 0, axis=1).sum()):
            findings.append(f"{where}: {name}'s state keeps rows of {n} forgotten sample(s)")
  if meta is not None:
    findings += scan_json(meta, forgotten, f"{where} metadata")
    if isinstance(meta, dict) and meta.get("config") != run.config:
      findings.append(f"{where} metadata: its config differs from config.json")
  return findings


def _check_checkpoints(run: _Run, workdir: pathlib.Path) -> tuple[list[str], int, list[int]]:
  """Findings in ``checkpoints/``, the newest good step (0 if none) and every step."""
  from ugclu_jax import runner
  from ugclu_jax.checkpointing import Checkpointer, DamagedError

  findings, good = [], []
  ckpt_dir = workdir / "checkpoints"
  if not ckpt_dir.is_dir():
    return findings, 0, []
  _, _, states, store, learned = runner._initial(run.cfg, run.ds, run.method_names)
  template = runner._state_tree(states, store, learned)
  with Checkpointer(ckpt_dir) as ckpt:
    for path in ckpt.leftovers():
      findings.append(f"checkpoints/{path.name}: an unfinished checkpoint write")
    steps = ckpt.steps()
    for step in steps:
      where = f"checkpoint {step}"
      try:
        tree, meta = ckpt.restore(step, template)
      except DamagedError as e:
        findings.append(f"{where}: fails verification ({e})")
        # A damaged checkpoint may still hold forgotten data: read what can be read.
        tree, meta = ckpt.read_unverified(step, template)
      else:
        if meta.get("cursor") != step or step > len(run.requests):
          findings.append(f"{where}: its cursor ({meta.get('cursor')}) is not its step")
        else:
          good.append(step)
      findings += _check_content(run, step, tree, meta, where)
  return findings, max(good, default=0), steps


def _leaves(tree) -> list:
  import jax

  return jax.tree.leaves(tree)


def audit(workdir) -> list[str]:
  """Checks a workdir for traces of forgotten data; returns one line per finding (none: clean).

  Raises:
    ValueError: the workdir holds no run (no readable config.json), or its
      config no longer loads (one line).
  """
  return run_audit(workdir)[0]


def run_audit(workdir) -> tuple[list[str], str]:
  """:func:`audit`'s findings and a one-line summary of what was checked.

  Raises:
    ValueError: the workdir holds no run (no readable config.json), or its
      config no longer loads (one line).
  """
  workdir = pathlib.Path(workdir)
  if not (workdir / "config.json").is_file():
    raise ValueError(f"{workdir} holds no run (no config.json)")
  try:
    config = json.loads((workdir / "config.json").read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{workdir / 'config.json'}: cannot be read ({e})") from None
  if isinstance(config, dict) and isinstance(config.get("seeds"), int) and config["seeds"] > 1:
    return _audit_seeds(workdir, config)
  try:
    run = _Run(workdir)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{workdir / 'config.json'}: cannot be read ({e})") from None
  from ugclu_jax import runner

  findings, cursor, steps = _check_checkpoints(run, workdir)
  report_path = workdir / "report.json"
  if report_path.is_file():
    try:
      report = json.loads(report_path.read_text())
      cursor = max(cursor, max((len(m["requests"]) for m in report["methods"].values()), default=0))
    except (ValueError, KeyError, TypeError, AttributeError):
      findings.append("report.json: unreadable")
  # The requests committed: by the newest good checkpoint, or report.json (written after it).
  cursor = min(cursor, len(run.requests))
  last = runner.last_unlearn_step(run.requests, cursor)
  for step in steps:
    if last is not None and step < last:
      findings.append(
        f"checkpoint {step}: older than unlearn request [{last - 1}] "
        f"{run.requests[last - 1].token}, whose samples it still holds"
      )
  forgotten = run.forgotten_at(cursor)
  for path in sorted(workdir.iterdir()):
    if not path.is_file() or not path.name.endswith(_TEXT_SUFFIXES):
      continue
    try:
      text = path.read_text()
    except (OSError, UnicodeDecodeError):
      continue
    if path.name.endswith(".json"):
      try:
        findings += scan_json(json.loads(text), forgotten, path.name)
        continue
      except ValueError:
        pass
    findings += scan_text(text, forgotten, path.name)
  done = [r for r in run.unlearned if r < cursor]
  summary = (
    f"{workdir}: {len(steps)} checkpoint(s), {len(done)} unlearn request(s) done, "
    f"{forgotten.size} sample(s) forgotten now"
  )
  return findings, summary


def _audit_seeds(workdir: pathlib.Path, config: dict) -> tuple[list[str], str]:
  """A run of several seeds: each seed's run (``seed_<s>/``) audited on its own."""
  from ugclu_jax.runner import SEED_DIR

  first = config.get("seed", 0)
  subs = [workdir / SEED_DIR.format(first + k) for k in range(config["seeds"])]
  findings, summaries = [], []
  for sub in subs:
    if not (sub / "config.json").is_file():
      summaries.append(f"{sub.name}: not started")
      continue
    found, summary = run_audit(sub)
    findings += [f"{sub.name}/{line}" for line in found]
    summaries.append(summary)
  return findings, "; ".join(summaries)
