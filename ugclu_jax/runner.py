"""The experiment runner: plays a request stream against methods and the oracle.

``run_experiment(cfg, workdir)`` is one flat loop in commented sections; fork
it for a new study rather than growing flags (big_vision style). Per request:
the data, then per method train and evaluate (a typed
:class:`~ugclu_jax.evaluation.RequestRecord`), a second pass that compares the
records with the oracle's, and the commit. The report is computed from the
records (:func:`~ugclu_jax.evaluation.report_entries`), never read back.
Everything is validated before anything is written; every request ends with a
checkpoint (the records in its metadata) and a partial ``report.json``, so
``resume=True`` continues an interrupted run to the same report, from the
newest checkpoint that verifies (its content hash).
No trace of forgotten data is kept: once an unlearn request's checkpoint is
verified, the older ones are deleted, and past forget sets (for relapse) are
re-derived from the dataset, the stream and the seed (:func:`forget_eval_sets`).
"""

import contextlib
import dataclasses
import errno
import fcntl
import io
import json
import math
import os
import pathlib
import shutil
import time
from typing import Callable

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from ugclu_jax import config as C
from ugclu_jax import data as D
from ugclu_jax import errors
from ugclu_jax import evaluation as E
from ugclu_jax import metrics as M
from ugclu_jax import methods as MT
from ugclu_jax import mia
from ugclu_jax import parallel as PL
from ugclu_jax.host import CompileClock
from ugclu_jax.checkpointing import (
  CheckpointError,
  Checkpointer,
  DamagedError,
  PrimaryCheckpointer,
  read_meta,
)
from ugclu_jax.models import MODELS, as_functional, get_model
from ugclu_jax.provenance import provenance, utc_now
from ugclu_jax.seeds import seed_for
from ugclu_jax.methods.ugclu_config import MASK_KINDS
from ugclu_jax.steps import CURVATURES, MODES


ON_NONFINITE = ("stop", "drop")
"""The values of ``on_nonfinite`` (:class:`~ugclu_jax.config.ExperimentConfig`)."""


class RunError(ValueError):
  """The run cannot start or continue (bad settings, workdir conflicts)."""


class WorkdirBusy(RunError):
  """Another run holds the workdir (its lock)."""

  exit_code = errors.ENVIRONMENT


class SeedFailed(Exception):
  """A seed's run failed in its own process (:func:`run_experiment` with ``jobs > 1``);
  the message and the exit code are that run's."""

  def __init__(self, seed: int, line: str, exit_code: int):
    super().__init__(f"seed {seed}: {line}")
    self.seed, self.exit_code = seed, exit_code


# ----------------------------------------------------------------------------
# Validation (before any work)
# ----------------------------------------------------------------------------


def _validate(cfg: C.ExperimentConfig) -> None:
  """The checks a config cannot make itself: registered names and this machine's devices.

  Types, finiteness, signs and ranges are checked when a config is built
  (:mod:`ugclu_jax.config`).
  """
  if cfg.train.model not in MODELS:
    raise RunError(f"train.model={cfg.train.model!r} is unknown; valid: {', '.join(MODELS)}")
  if cfg.ugclu.mode not in MODES:
    raise RunError(f"ugclu.mode={cfg.ugclu.mode!r} is unknown; valid: {', '.join(MODES)}")
  if cfg.ugclu.mask_kind not in MASK_KINDS:
    raise RunError(
      f"ugclu.mask_kind={cfg.ugclu.mask_kind!r} is unknown; valid: {', '.join(MASK_KINDS)}"
    )
  if cfg.ugclu.curvature not in CURVATURES:
    raise RunError(
      f"ugclu.curvature={cfg.ugclu.curvature!r} is unknown; valid: {', '.join(CURVATURES)}"
    )
  if cfg.data.test_on_validation and not cfg.data.validation_per_class:
    raise RunError(
      "data.test_on_validation=true holds validation_per_class samples per class out "
      "as the test set: set data.validation_per_class too"
    )
  if cfg.train.oracle_max_epochs is not None and not cfg.data.validation_per_class:
    raise RunError(
      f"train.oracle_max_epochs={cfg.train.oracle_max_epochs} stops the oracle early on "
      "validation samples: set data.validation_per_class too"
    )
  if cfg.mia_variant not in mia.MIA_VARIANTS:
    raise RunError(
      f"mia_variant={cfg.mia_variant!r} is unknown; valid: {', '.join(mia.MIA_VARIANTS)}"
    )
  if cfg.on_nonfinite not in ON_NONFINITE:
    raise RunError(
      f"on_nonfinite={cfg.on_nonfinite!r} is unknown; valid: {', '.join(ON_NONFINITE)}"
    )
  for name in cfg.methods:
    try:
      MT.check_method_name(name)
    except ValueError as e:
      raise RunError(str(e)) from None
  devices, available = cfg.train.devices, jax.local_device_count()
  if not 0 <= devices <= available:
    raise RunError(
      f"train.devices={devices}: this machine has {available} local device(s); "
      f"use 1 to {available}, or 0 for all"
    )
  n = _num_devices(cfg)
  over = f"train.devices={n}"
  if jax.process_count() > 1:
    over = f"the {n} devices of {jax.process_count()} processes"
  for key in ("batch_size", "eval_batch_size"):
    if getattr(cfg.data, key) % n:
      raise RunError(
        f"data.{key}={getattr(cfg.data, key)} does not split over {over}; use a multiple of {n}"
      )


def _load_data(cfg: C.ExperimentConfig, log: Callable[[str], None]):
  """Loads ``data.name``; only missing files fall back to ``data.fallback`` (corrupt ones fail)."""
  try:
    ds = D.load_dataset(cfg.data.name, data_dir=cfg.data.dir, seed=cfg.seed)
  except D.DatasetMissingError as e:
    if not cfg.data.fallback:
      raise
    log(f"dataset {cfg.data.name!r} is unavailable ({e}); falling back to {cfg.data.fallback!r}")
    cfg = dataclasses.replace(
      cfg, data=dataclasses.replace(cfg.data, name=cfg.data.fallback, dir=None, fallback=None)
    )
    ds = D.load_dataset(cfg.data.name, seed=cfg.seed)
  if cfg.data.validation_per_class:
    try:
      if cfg.data.test_on_validation:
        ds = D.split_validation(ds, cfg.data.validation_per_class, cfg.seed, as_test=True)
      ds = D.split_validation(ds, cfg.data.validation_per_class, cfg.seed)
    except ValueError as e:
      raise C.ConfigError(f"data.{e} (dataset {ds.name!r})") from None
  if cfg.data.max_train_per_class is not None:
    ds = D.limit_train_per_class(ds, cfg.data.max_train_per_class, cfg.seed)
  return ds, cfg


def prepare(cfg: C.ExperimentConfig, log: Callable[[str], None] = lambda s: None):
  """Validates a config and loads its data: ``(cfg, dataset, tasks, requests, methods)``.

  ``methods`` are the config's, in its order, and the oracle first when the
  stream unlearns and the config does not list it. The order changes no
  result (the oracle comparison is a second pass over each request's records).
  Raises a one-line error (``RunError``, ``ConfigError``, ``StreamError`` or the
  dataset's ``ValueError``) for anything wrong; writes nothing.
  """
  _validate(cfg)
  ds, cfg = _load_data(cfg, log)
  try:
    tasks = D.make_tasks(ds.num_classes, cfg.data.classes_per_task, cfg.data.class_order)
  except ValueError as e:  # Names class_order or classes_per_task.
    raise C.ConfigError(f"data.{e} (dataset {ds.name!r} has {ds.num_classes} classes)") from None
  requests = D.parse_stream(cfg.stream, tasks=tasks, num_classes=ds.num_classes)
  # Replays the stream on the dataset: no request may select nothing, and none
  # may leave nothing learned for the oracle and the remain set.
  D.check_stream_data(requests, y_train=ds.y_train, seed=cfg.seed)
  methods = list(cfg.methods)
  if any(r.kind == "unlearn" for r in requests) and MT.ORACLE not in methods:
    methods.insert(0, MT.ORACLE)  # The implicit oracle is listed (and run) first.
  return cfg, ds, tasks, requests, methods


# ----------------------------------------------------------------------------
# Methods from the config (the config -> kwargs boundary)
# ----------------------------------------------------------------------------


def _build_method(
  name,
  cfg: C.ExperimentConfig,
  apply_fn,
  params0,
  model_state0,
  *,
  num_train: int,
  num_classes: int,
):
  t = cfg.train
  clip = t.clip_norm or None
  if name in MT.ORACLES:
    return MT.retrain(
      apply_fn,
      init_params=params0,
      init_model_state=model_state0,
      learning_rate=t.learning_rate,
      momentum=t.momentum,
      weight_decay=t.weight_decay,
      patience=None if t.oracle_max_epochs is None else t.oracle_patience,
      eval_batch_size=cfg.data.eval_batch_size,
      name=name,
    )
  base, overrides = MT.split_method_spec(name)
  if base in MT.UGCLU_VARIANTS:
    return MT.ugclu(
      apply_fn,
      cfg.ugclu,
      name=name,
      num_classes=num_classes,
      learn_lr=t.learning_rate,
      momentum=t.momentum,
      weight_decay=t.weight_decay,
      learn_clip=clip,
      **{**MT.UGCLU_VARIANTS[base], **overrides},
    )
  # A baseline or a CLU pair "X+Y" of baselines.
  return MT.baseline(
    apply_fn,
    base,
    cfg.baselines,
    num_train=num_train,
    num_classes=num_classes,
    learn_lr=t.learning_rate,
    momentum=t.momentum,
    weight_decay=t.weight_decay,
    clip_norm=clip,
    **overrides,
  )


# ----------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------


def _write_json(path: pathlib.Path, obj) -> None:
  if not PL.is_primary():  # Process 0 owns the workdir.
    return
  tmp = path.with_suffix(path.suffix + ".tmp")
  text = json.dumps(obj, indent=1, allow_nan=False) + "\n"
  try:
    with errors.writing(path):
      tmp.write_text(text)
      os.replace(tmp, path)
  except OSError:
    tmp.unlink(missing_ok=True)
    raise


def _iterations(epochs: float, n: int, batch_size: int, minimum: int = 1) -> int:
  return max(1, minimum, math.ceil(epochs * n / batch_size))


def _state_tree(states, store, learned):
  return {
    "methods": {k: tuple(v) for k, v in states.items()},
    "store": tuple(store),
    "learned": learned,
  }


def _num_devices(cfg) -> int:
  """How many devices ``train.devices`` asks for (0: all local devices), in all processes."""
  return (cfg.train.devices or jax.local_device_count()) * jax.process_count()


def _mesh(cfg):
  """The data-parallel mesh of ``train.devices`` of each process (``None`` for one device)."""
  n = _num_devices(cfg)
  return PL.data_mesh(n // jax.process_count()) if n > 1 else None


def _initial(cfg, ds, method_names, mesh=None):
  """The model, the methods and the state before the first request."""
  model = get_model(
    cfg.train.model,
    num_classes=ds.num_classes,
    input_shape=ds.x_train.shape[1:],
    rngs=nnx.Rngs(cfg.seed),
  )
  apply_fn, params0, model_state0 = as_functional(model)
  initial = {n: (params0, model_state0) for n in method_names}
  if MT.ORACLE_TWIN in method_names:  # Its own initial weights (and, by its name, batches).
    twin_seed = D.seed_int(seed_for(cfg.seed, "run.twin_init"))
    twin = get_model(
      cfg.train.model,
      num_classes=ds.num_classes,
      input_shape=ds.x_train.shape[1:],
      rngs=nnx.Rngs(twin_seed),
    )
    initial[MT.ORACLE_TWIN] = as_functional(twin)[1:]
  initial = PL.replicate(initial, mesh)
  methods = {
    n: _build_method(
      n, cfg, apply_fn, *initial[n], num_train=ds.y_train.size, num_classes=ds.num_classes
    )
    for n in method_names
  }
  params0, model_state0 = PL.replicate((params0, model_state0), mesh)
  states = {n: m.init(params0, model_state0) for n, m in methods.items()}
  store = D.store_init(cfg.data.store_size, ds.num_classes)
  learned = np.zeros(ds.y_train.shape, bool)
  return apply_fn, methods, states, store, learned


def _placeholder(state: MT.MethodState, mesh) -> MT.MethodState:
  """A dropped method's state for the checkpoint, which keeps one tree for every
  method: its buffers that the diverged step consumed (donated) become zeros."""

  def leaf(a):
    if isinstance(a, jax.Array) and a.is_deleted():
      return PL.replicate(np.zeros(a.shape, a.dtype), mesh)
    return a

  return MT.MethodState(*jax.tree.map(leaf, tuple(state)))


def load_state(workdir, log: Callable[[str], None] = lambda s: None) -> dict:
  """The newest good checkpoint of a run: ``{"methods", "store", "learned", "meta"}``.

  ``methods`` maps each method to its :class:`~ugclu_jax.methods.MethodState`;
  ``store`` is the remaining store; ``learned`` the learned-sample mask. Newer
  checkpoints that fail verification are reported to ``log``, one line each.
  """
  workdir = pathlib.Path(workdir)
  if read_meta(workdir / "checkpoints", log) is None:
    raise RunError(f"{workdir} holds no checkpoint")
  cfg = C.from_dict(json.loads((workdir / "config.json").read_text()))
  cfg, ds, _, _, method_names = prepare(cfg)
  _, _, states, store, learned = _initial(cfg, ds, method_names)
  with Checkpointer(workdir / "checkpoints") as ckpt:
    _, tree, meta = ckpt.restore_latest_good(_state_tree(states, store, learned))
  return {
    "methods": {n: MT.MethodState(*v) for n, v in tree["methods"].items()},
    "store": D.Store(*tree["store"]),
    "learned": tree["learned"].astype(bool),
    "meta": meta,
  }


def forget_eval_sets(requests, y_train: np.ndarray, seed: int, max_eval: int) -> dict:
  """``{r: indices}``: the evaluated forget samples of each unlearn request ``r``.

  Re-derived from the dataset's labels, the stream and the seed (the run's own
  draws, :func:`~ugclu_jax.data.replay_stream`), so no artefact needs to keep them.
  """
  return {
    r: E.subsample(idx, max_eval, seed_for((seed, r), "request.eval_forget"))
    for r, (idx, _) in enumerate(D.replay_stream(requests, y_train=y_train, seed=seed))
    if requests[r].kind == "unlearn"
  }


def last_unlearn_step(requests, cursor: int):
  """The checkpoint step of the last unlearn request before ``cursor``, or None."""
  steps = [r + 1 for r in range(cursor) if requests[r].kind == "unlearn"]
  return steps[-1] if steps else None


def _delete_before_unlearn(ckpt: PrimaryCheckpointer, requests, cursor: int, log) -> None:
  """After an unlearn request commits, verifies its checkpoint, then deletes the older ones.

  They hold the forgotten samples in their store and models trained on them.
  """
  step, steps = last_unlearn_step(requests, cursor), ckpt.steps()
  if step is None or not any(s < step for s in steps):
    return
  try:
    ckpt.verify(steps[0])  # The newest: the request's own or a later one.
  except DamagedError as e:
    raise CheckpointError(
      f"checkpoint {steps[0]} in {ckpt.directory} fails verification right "
      f"after it was written ({e})"
    ) from None
  gone = ckpt.delete_older(step)
  log(
    f"deleted {len(gone)} checkpoint(s) from before unlearn request [{step - 1}] "
    f"{requests[step - 1].token}"
  )


def _eval_sets(
  r, req, forget_evals, now_learned, learned_idx, test_pool, ds, max_eval, seed
) -> E.EvalSets:
  """The evaluation sets after request ``r`` (shared by all methods)."""
  learned_classes = np.unique(ds.y_train[now_learned])
  test = test_pool[np.isin(ds.y_test[test_pool], learned_classes)]
  # For relapse: each earlier unlearned set, less its samples learned again since.
  unlearned = {j: s[~now_learned[s]] for j, s in forget_evals.items() if j < r}
  remain = E.subsample(learned_idx, max_eval, seed_for((seed, r), "request.eval_remain"))
  return E.EvalSets(
    index=r,
    request=req.token,
    forget=forget_evals.get(r),
    remain=remain,
    test=test,
    test_labels=ds.y_test[test],
    learned_classes=learned_classes,
    unlearned={j: s for j, s in unlearned.items() if s.size},
  )


def _report(header: dict, history: dict) -> dict:
  """``report.json``: the run's header and each method's requests, from its records."""
  return {
    **header,
    "methods": {n: {"requests": E.report_entries(records)} for n, records in history.items()},
  }


def _provenance(workdir: pathlib.Path, started: str, resumed_at, num_requests: int) -> dict:
  """The report's provenance (:mod:`ugclu_jax.provenance`). A resumed run keeps the
  record of the invocation before it under ``earlier``; a finished run that is only
  re-rendered keeps its record as it was."""
  earlier = None
  if resumed_at is not None:
    try:
      earlier = json.loads((workdir / "report.json").read_text()).get("provenance")
    except (OSError, ValueError, AttributeError):
      earlier = None
  if earlier is not None and resumed_at == num_requests and earlier.get("finished"):
    return earlier
  record = provenance(started=started, resumed_at=resumed_at)
  if earlier is not None:
    record["earlier"] = earlier
  return record


def _history_to_meta(history: dict) -> dict:
  """The typed history as checkpoint metadata: numbers per request, no per-sample output."""
  return {n: [E.record_to_json(q) for q in records] for n, records in history.items()}


def _history_from_meta(meta: dict, method_names, where) -> dict:
  """The typed history a checkpoint holds (:func:`_history_to_meta`)."""
  history = meta.get("history")
  if (
    not isinstance(history, dict)
    or set(history) != set(method_names)
    or any(not isinstance(v, list) for v in history.values())
  ):
    raise RunError(
      f"checkpoint {where} holds no request history of this version; pass "
      f"--overwrite to run again from the start"
    )
  return {n: [E.record_from_json(q) for q in history[n]] for n in method_names}


def _same_config(stored: dict, cfg: C.ExperimentConfig) -> bool:
  """Whether a stored config is ``cfg`` (fields added since it was written take their
  defaults)."""
  try:
    return C.to_dict(C.from_dict(stored)) == C.to_dict(cfg)
  except C.ConfigError:
    return False


def run_experiment(
  cfg: C.ExperimentConfig,
  workdir,
  *,
  resume: bool = False,
  overwrite: bool = False,
  progress: bool = True,
  render: bool = True,
  echo: Callable[[str], None] = print,
  jobs: int = 1,
) -> dict:
  """Runs (or resumes) an experiment in ``workdir`` and returns the report dict.

  Writes ``config.json``, ``run.log``, ``report.json`` (after every request),
  ``report.md`` and PNG plots (at the end, unless ``render=False``) and Orbax
  checkpoints under ``checkpoints/`` (after every request).

  One run per workdir: the run holds an exclusive lock on ``run.lock`` until it
  returns, and a second run is refused (:class:`WorkdirBusy`). A workdir that
  already holds a run is refused too, unless ``resume`` (continue it from its
  checkpoint; a finished run is only re-rendered) or ``overwrite`` (delete its
  outputs first). Once the run holds the workdir, a failure is also written to
  run.log.

  With ``cfg.seeds > 1`` it runs the stream once per seed (:func:`_run_seeds`), up
  to ``jobs`` seeds at a time, each in its own process.
  """
  workdir = pathlib.Path(workdir)
  if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
    raise RunError(f"jobs must be an integer >= 1, got {jobs!r}")
  if jobs > 1 and jax.distributed.is_initialized():
    raise RunError("jobs > 1 runs seeds in processes of their own: not in a multi-process run")
  if cfg.seeds > 1:
    return _run_seeds(
      cfg,
      workdir,
      resume=resume,
      overwrite=overwrite,
      progress=progress,
      render=render,
      echo=echo,
      jobs=jobs,
    )
  messages = []
  cfg, ds, tasks, requests, method_names = prepare(cfg, messages.append)
  if (workdir / LOCK_FILE).is_file():  # Busy? Checked first, and without writing.
    _lock(workdir / LOCK_FILE).close()
  _check_workdir(workdir, resume=resume, overwrite=overwrite)
  with _hold_workdir(workdir, resume=resume, overwrite=overwrite) as log_file:
    return _run(
      cfg,
      workdir,
      log_file,
      messages,
      ds,
      tasks,
      requests,
      method_names,
      resume=resume,
      progress=progress,
      render=render,
      echo=echo,
    )


def _run(
  cfg,
  workdir,
  log_file,
  messages,
  ds,
  tasks,
  requests,
  method_names,
  *,
  resume,
  progress,
  render,
  echo,
) -> dict:
  """:func:`run_experiment` once the run holds ``workdir``.

  In a multi-process run every process runs it; process 0 alone reads and writes
  ``workdir`` and prints, and hands what it reads to the others.
  """
  started = utc_now()
  ckpt_dir = workdir / "checkpoints"
  skipped = []  # One line per damaged or incomplete checkpoint, logged below.

  def checked_meta():
    meta = read_meta(ckpt_dir, skipped.append)
    if meta is not None and not resume:
      raise RunError(
        f"{workdir} already holds a run; pass --resume to continue it, --overwrite "
        f"to replace it, or use another --workdir"
      )
    if meta is not None and not _same_config(meta["config"], cfg):
      raise RunError(f"--resume: the config differs from the one of the run in {workdir}")
    if meta is None and (workdir / "report.json").exists():
      raise RunError(_NO_CHECKPOINT.format(workdir=workdir))
    return meta

  meta = PL.from_primary(checked_meta)
  if not PL.is_primary():
    echo, progress = (lambda s: None), False

  # --- Setup -------------------------------------------------------------------------
  def log(line: str) -> None:
    with errors.writing(workdir / "run.log"):
      _log_line(log_file, line)
    echo(line)
    errors.check_signals()  # A safe point (after each method of each request).

  def log_new(line: str) -> None:  # Each checkpoint once ("checkpoint N ...").
    if not any(line.split(" in ")[0] == seen.split(" in ")[0] for seen in skipped):
      skipped.append(line)
      log(line)

  for line in messages + skipped:
    log(line)
  _write_json(workdir / "config.json", C.to_dict(cfg))
  x, y = ds.x_train, ds.y_train
  num_classes, seed, b = ds.num_classes, cfg.seed, cfg.data.batch_size
  mesh = _mesh(cfg)
  apply_fn, methods, states, store, learned = _initial(cfg, ds, method_names, mesh)
  header = {"config": C.to_dict(cfg), "dataset": ds.name, "stream": D.stream_tokens(requests)}
  # The typed history: one record per method and request, in stream order.
  history = {n: [] for n in method_names}
  # Every unlearn request's evaluated forget samples, re-derived from the
  # dataset, the stream and the seed (never stored).
  forget_evals = forget_eval_sets(requests, y, seed, cfg.data.max_eval)
  start = 0
  output_fn = E.make_output_fn(apply_fn)
  # One class-balanced test subsample for the whole run (max_eval / classes per
  # class): at every request the test set is its learned classes, so the
  # accuracy matrix compares the same samples across requests.
  test_pool = D.per_class_subsample(
    ds.y_test, max(1, cfg.data.max_eval // num_classes), seed_for(seed, "run.test_pool")
  )

  def model_outputs(state):
    def outputs(indices, test=False):
      xs, ys = (ds.x_test, ds.y_test) if test else (x, y)
      return E.outputs(
        output_fn,
        state.params,
        state.model_state,
        xs,
        ys,
        indices,
        cfg.data.eval_batch_size,
        num_classes,
        mesh,
      )

    return outputs

  with PrimaryCheckpointer(ckpt_dir) as ckpt:
    step = None
    if meta is not None:
      step, tree, meta = ckpt.restore_latest_good(_state_tree(states, store, learned), log_new)
      states = {
        n: MT.MethodState(*PL.replicate(tuple(v), mesh)) for n, v in tree["methods"].items()
      }
      store, learned = D.Store(*tree["store"]), tree["learned"].astype(bool)
      history = _history_from_meta(meta, method_names, ckpt.step_dir(step))
      start = meta["cursor"]
      log(f"resuming {workdir} at request {start} of {len(requests)}")
    else:
      log(
        f"run {cfg.name}: dataset {ds.name}, model {cfg.train.model}, methods "
        f"{', '.join(method_names)}, stream {' '.join(header['stream'])}"
      )
    header["provenance"] = _provenance(
      workdir, started, start if meta is not None else None, len(requests)
    )
    report = _report(header, history)
    # Newer damaged or incomplete steps and unfinished writes go; so do steps
    # from before an unlearn request (left if the run stopped before deleting them).
    ckpt.clean_after(step)
    _delete_before_unlearn(ckpt, requests, start, log)

    for r in range(start, len(requests)):
      # --- The request's data ---------------------------------------------------------
      req = requests[r]
      idx = D.resolve_request(req, y_train=y, learned_mask=learned, rng=D.request_rng(seed, r))
      now_learned = D.apply_request(learned, req, idx)
      if req.kind == "unlearn":
        store = D.store_purge(store, idx, y_train=y)
      access = D.DataAccess(x, y, store, idx)
      learned_idx = np.flatnonzero(now_learned)
      # The oracle alone reads all of D_R ∪ D_L (as its target set).
      oracle_access = D.DataAccess(x, y, D.store_init(None, num_classes), learned_idx)
      if req.kind == "learn":
        n_iter = _iterations(cfg.train.learn_epochs, idx.size, b, cfg.train.min_learn_iterations)
      else:
        n_iter = cfg.train.unlearn_iterations
      n_oracle = _iterations(
        cfg.train.oracle_max_epochs or cfg.train.learn_epochs,
        learned_idx.size,
        b,
        cfg.train.min_learn_iterations,
      )
      validation = None  # The oracle's early stopping: validation samples of its classes.
      if ds.y_val is not None:
        keep = np.isin(ds.y_val, y[learned_idx])
        validation = (ds.x_val[keep], ds.y_val[keep])

      # --- Evaluation sets (shared by all methods) ------------------------------------
      sets = _eval_sets(
        r, req, forget_evals, now_learned, learned_idx, test_pool, ds, cfg.data.max_eval, seed
      )

      records = {}
      for name in method_names:
        method = methods[name]
        is_oracle = name in MT.ORACLES
        dropped = history[name][-1].diverged if history[name] else None
        if dropped is not None:  # It diverged earlier (on_nonfinite="drop"): no training.
          records[name] = E.diverged_record(sets, M.Cost(), dropped, len(tasks))
          continue
        ctx = MT.Context(
          access=oracle_access if is_oracle else access,
          request=req,
          index=r,
          num_iterations=n_oracle if is_oracle else n_iter,
          batch_size=b,
          seed=MT.method_seed(seed, r, name),
          mesh=mesh,
          validation=validation if is_oracle else None,
        )
        # --- Train -----------------------------------------------------------------
        with tqdm(
          total=ctx.num_iterations,
          desc=f"[{r}] {req.token} {name}",
          leave=False,
          disable=None if progress else True,
        ) as bar:
          measured = {}
          ctx = dataclasses.replace(ctx, progress=bar.update, record=measured.__setitem__)
          t0 = time.perf_counter()
          run = method.learn if req.kind == "learn" else method.unlearn
          try:
            with CompileClock() as clock:
              states[name], cost = run(states[name], ctx)
          except MT.NonFiniteError as exc:
            if cfg.on_nonfinite == "stop" or is_oracle:
              raise
            seconds = time.perf_counter() - t0
            states[name] = _placeholder(states[name], mesh)
            records[name] = E.diverged_record(sets, M.Cost(seconds), str(exc), len(tasks))
            log(f"warning: [{r}] {req.token} {name} diverged and is dropped: {exc}")
            continue
          seconds = time.perf_counter() - t0 - clock.seconds

        # --- Evaluate ----------------------------------------------------------------
        q = records[name] = E.evaluate(
          model_outputs(states[name]),
          sets,
          M.Cost(seconds, cost.steps, cost.grad_evals, cost.hvp_evals, clock.seconds),
          tasks=tasks,
          mia_variant=cfg.mia_variant,
          seed=seed,
          compensation=measured.get("compensation"),
        )
        log(
          f"[{r}] {req.token:<10} {name:<14} {seconds:7.1f}s (+{clock.seconds:.1f}s compile)  "
          + "  ".join(
            f"{k}={getattr(q, k):.3f}"
            for k in ("forget_acc", "remain_acc", "test_acc", "mia_efficacy")
            if getattr(q, k) is not None
          )
        )
        if q.collapsed is not None:
          log(f"warning: [{r}] {req.token} {name} collapsed: {q.collapsed}")

      # --- Compare with the oracle: a second pass, in any order of the methods -----------
      records = E.compare_to_oracle(records, MT.ORACLE)
      gaps = [f"{n}={q.gap.avg_gap:.3f}" for n, q in records.items() if q.gap.avg_gap is not None]
      if gaps:
        log(f"[{r}] {req.token:<10} avg_gap  " + "  ".join(gaps))

      # --- Commit the request ------------------------------------------------------------
      for name, q in records.items():
        history[name].append(q)
      report = _report(header, history)
      if req.kind == "learn":
        new = idx[~learned[idx]]
        rng = np.random.default_rng(seed_for((seed, r), "request.store_reservoir"))
        store = D.store_add(store, new, y, rng)
      learned = now_learned
      with errors.hold_signals():  # SIGINT and SIGTERM wait until the commit is on disk.
        ckpt.save(
          r + 1,
          _state_tree(states, store, learned),
          {"cursor": r + 1, "history": _history_to_meta(history), "config": C.to_dict(cfg)},
        )
        _write_json(workdir / "report.json", report)
        _delete_before_unlearn(ckpt, requests, r + 1, log)

  if report["provenance"]["finished"] is None:
    report["provenance"]["finished"] = utc_now()
  _write_json(workdir / "report.json", report)
  if render:
    _render(report, workdir, log)
  log(f"done: {workdir / 'report.json'}")
  return report


SEED_DIR = "seed_{}"  # A seed's run inside the workdir of a run of several seeds.


def _run_seeds(cfg, workdir, *, resume, overwrite, progress, render, echo, jobs=1) -> dict:
  """``cfg.seeds`` runs of the stream, seeds ``cfg.seed``, ``cfg.seed + 1``, ...

  Each seed is a whole run (:func:`run_experiment` with ``seeds=1``) in
  ``workdir/seed_<s>/``, with its own report, plots, log and checkpoints; they run
  one after another, or ``jobs`` at a time in processes of their own
  (:func:`_seeds_in_processes`: the same reports), and ``--resume`` continues each
  where it stopped. The
  workdir's ``report.json`` is their :func:`ugclu_jax.report.aggregate` (mean, std,
  95 % intervals, paired differences with ``ugclu``), rendered as ``report.md``
  and plots; ``config.json`` is ``cfg``. The workdir is locked for the whole run.
  """
  from ugclu_jax import report as R  # matplotlib is imported only when rendering

  seeds = [cfg.seed + k for k in range(cfg.seeds)]
  runs = [dataclasses.replace(cfg, seed=s, seeds=1) for s in seeds]
  if not PL.is_primary():  # Process 0 alone prints.
    echo = lambda s: None
  prepare(runs[0])  # Every check before any work (the seeds change no check).
  if (workdir / LOCK_FILE).is_file():  # Busy? Checked first, and without writing.
    _lock(workdir / LOCK_FILE).close()
  _check_workdir(workdir, resume=resume, overwrite=overwrite, seeds=True)
  with _hold_workdir(workdir, resume=resume, overwrite=overwrite, seeds=True) as log_file:

    def log(line: str) -> None:
      with errors.writing(workdir / "run.log"):
        _log_line(log_file, line)
      echo(line)

    stored = workdir / "config.json"
    if resume and stored.is_file() and not _same_config(json.loads(stored.read_text()), cfg):
      raise RunError(f"--resume: the config differs from the one of the run in {workdir}")
    _write_json(stored, C.to_dict(cfg))
    started = utc_now()
    subs = [workdir / SEED_DIR.format(s) for s in seeds]
    if jobs > 1:
      reports = _seeds_in_processes(
        runs, subs, resume=resume, render=render, jobs=jobs, log=log, echo=echo
      )
    else:
      reports = []
      for k, (run_cfg, sub) in enumerate(zip(runs, subs)):
        log(f"seed {run_cfg.seed} ({k + 1} of {len(seeds)}): {sub}")
        reports.append(
          run_experiment(run_cfg, sub, resume=resume, progress=progress, render=render, echo=echo)
        )
    report = R.aggregate(reports)
    report["runs"] = [SEED_DIR.format(s) for s in seeds]
    report["provenance"] = {"started": started, "finished": utc_now()}
    _write_json(workdir / "report.json", report)
    if render:
      _render(report, workdir, log)
    log(f"done: {workdir / 'report.json'} (seeds {', '.join(map(str, seeds))})")
  return report


def _seeds_in_processes(runs, subs, *, resume, render, jobs, log, echo) -> list[dict]:
  """The seeds' runs ``runs`` in workdirs ``subs``, up to ``jobs`` at a time, each in a
  process of its own (``spawn``: a fresh interpreter, :func:`_seed_process`); their
  reports in the order of ``runs``.

  A seed's run depends on its config alone, so its report is the one a run in this
  process would give. Each run writes its own run.log; its lines also reach ``echo``,
  prefixed with the seed (``log`` takes this process's own: which seed runs where).
  The first failure stops the others (SIGTERM: each ends as an interrupted run does,
  at a request's boundary, ready for ``--resume``) and is raised as
  :class:`SeedFailed`, with the failed run's message and exit code. An interrupt of
  this process (SIGINT, SIGTERM) stops them the same way before it propagates.
  """
  import multiprocessing
  from multiprocessing.connection import wait

  ctx = multiprocessing.get_context("spawn")
  # This process's persistent compilation cache and its size cap (use_compilation_cache).
  cache = (jax.config.jax_compilation_cache_dir, jax.config.jax_compilation_cache_max_size)
  queue = list(enumerate(zip(runs, subs)))
  live = {}  # receiving end -> (process, seed)
  failure = None
  try:
    while live or (queue and failure is None):
      while queue and failure is None and len(live) < jobs:  # Start seeds.
        k, (run_cfg, sub) = queue.pop(0)
        receiver, sender = ctx.Pipe(duplex=False)
        proc = ctx.Process(
          target=_seed_process,
          args=(run_cfg, str(sub), resume, render, cache, sender),
          name=f"ugclu_jax seed {run_cfg.seed}",
        )
        proc.start()
        sender.close()  # The child holds the only sending end: EOF when it ends.
        live[receiver] = (proc, run_cfg.seed)
        log(f"seed {run_cfg.seed} ({k + 1} of {len(runs)}): {sub} (process {proc.pid})")
      for receiver in wait(list(live)):
        proc, seed = live[receiver]
        try:
          kind, *payload = receiver.recv()
        except EOFError:  # The process ended.
          _reap(live, receiver)
          if proc.exitcode != 0 and failure is None:
            line = f"its process ended with exit code {proc.exitcode}"
            failure = SeedFailed(seed, line, errors.INTERNAL)
            _stop(live)
          continue
        if kind == "line":
          echo(f"[seed {seed}] {payload[0]}")
        elif kind == "error" and failure is None:
          failure = SeedFailed(seed, *payload)
          _stop(live)
  except BaseException:
    _stop(live)
    while live:  # Until every process has ended; what they still send is dropped.
      for receiver in wait(list(live), timeout=1.0):
        try:
          receiver.recv()
        except EOFError:
          _reap(live, receiver)
    raise
  if failure is not None:
    raise failure
  from ugclu_jax import report as R

  return [R.load(sub) for sub in subs]


def _reap(live, receiver) -> None:
  """Forgets a seed's process whose sending end closed (it ended) and joins it."""
  proc, _ = live.pop(receiver)
  receiver.close()
  proc.join()


def _stop(live) -> None:
  """SIGTERM to the seeds' processes that still run (their runs end as interrupted)."""
  for proc, _ in live.values():
    if proc.exitcode is None:
      proc.terminate()


def _seed_process(cfg, workdir: str, resume: bool, render: bool, cache, conn) -> None:
  """One seed's run in a process of its own (:func:`_seeds_in_processes`): set up as the
  command line sets up its process (``cache``: the parent's compilation-cache directory
  and size cap), log lines and the outcome sent through ``conn``."""
  from ugclu_jax.host import keep_freed_host_memory

  keep_freed_host_memory()
  # Several processes may share one accelerator: each allocates what it uses.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  errors.install_signal_handlers()
  directory, max_size = cache
  if directory:
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_compilation_cache_max_size", max_size)
  try:
    run_experiment(
      cfg,
      workdir,
      resume=resume,
      progress=False,
      render=render,
      echo=lambda line: conn.send(("line", line)),
    )
  except (Exception, KeyboardInterrupt) as e:
    conn.send(("error", errors.message(e), errors.exit_code(e)))
    raise SystemExit(errors.exit_code(e)) from None
  finally:
    conn.close()


# ----------------------------------------------------------------------------
# The workdir: one run at a time, finished runs kept unless asked
# ----------------------------------------------------------------------------

LOCK_FILE = "run.lock"
# What a run writes into its workdir, besides run.lock and the plots (*.png).
RUN_OUTPUTS = ("report.json", "report.md", "config.json", "run.log", "checkpoints")
_NO_CHECKPOINT = (
  "{workdir} holds report.json but no checkpoint to continue from; pass "
  "--overwrite to replace the run, or use another --workdir"
)


def _run_outputs(workdir: pathlib.Path) -> list[pathlib.Path]:
  """The outputs of a previous run found in ``workdir`` (temporary files included)."""
  if not workdir.is_dir():
    return []
  found = [workdir / n for n in RUN_OUTPUTS if (workdir / n).exists()]
  found += sorted(p for p in workdir.glob(SEED_DIR.format("*")) if p.is_dir())
  return found + sorted(workdir.glob("*.png")) + sorted(workdir.glob("*.json.tmp"))


def _lock(path: pathlib.Path):
  """``path`` opened and locked (``flock``, exclusive); :class:`WorkdirBusy` if held.

  Outside process 0 of a multi-process run, nothing (a stand-in to close).
  """
  if not PL.is_primary():
    return io.StringIO()
  with errors.writing(path):
    lock = open(path, "a+")
  try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    lock.seek(0)
    pid = lock.read().strip()
    lock.close()
    raise WorkdirBusy(
      f"{path.parent} is in use by another run"
      + (f" (pid {pid})" if pid else "")
      + "; wait for it to end, or use another --workdir"
    ) from None
  return lock


def _check_workdir(
  workdir: pathlib.Path, *, resume: bool, overwrite: bool, seeds: bool = False
) -> None:
  """Refuses, without writing anything, a workdir that is a file or holds an unnamed run
  (``seeds``: the workdir of several seeds' runs, whose checkpoints are theirs).
  Only process 0 of a multi-process run checks (it owns the workdir)."""
  if not PL.is_primary():
    return
  if workdir.exists() and not workdir.is_dir():
    raise NotADirectoryError(errno.ENOTDIR, "not a folder (--workdir names a file)", str(workdir))
  found = _run_outputs(workdir)
  if found and not (resume or overwrite):
    raise RunError(
      f"{workdir} already holds a run ({found[0].name}); pass --resume to continue "
      f"it, --overwrite to replace it, or use another --workdir"
    )
  if seeds:
    return
  if resume and (workdir / "report.json").exists() and not (workdir / "checkpoints").is_dir():
    raise RunError(_NO_CHECKPOINT.format(workdir=workdir))


def _log_line(log_file, line: str) -> None:
  log_file.write(time.strftime("%Y-%m-%d %H:%M:%S ") + line + "\n")
  log_file.flush()


@contextlib.contextmanager
def _hold_workdir(workdir: pathlib.Path, *, resume: bool, overwrite: bool, seeds: bool = False):
  """Creates and locks ``workdir`` for the run and yields its open run.log.

  The lock is ``flock`` on ``run.lock``: it dies with the process, so a lock
  file left by a killed run blocks nothing. A failure inside the block is
  written to run.log in one line. Outside process 0 of a multi-process run it
  touches nothing and yields a stand-in for run.log.
  """
  if not PL.is_primary():
    yield io.StringIO()
    return
  workdir.mkdir(parents=True, exist_ok=True)
  lock_path = workdir / LOCK_FILE
  lock = _lock(lock_path)
  try:
    with errors.writing(lock_path):
      lock.truncate(0)
      lock.write(f"{os.getpid()}\n")
      lock.flush()
    # Again, holding the lock.
    _check_workdir(workdir, resume=resume, overwrite=overwrite, seeds=seeds)
    if overwrite:
      for path in _run_outputs(workdir):
        if path.is_dir():
          shutil.rmtree(path)
        else:
          path.unlink()
    with errors.writing(workdir / "run.log"):
      log_file = open(workdir / "run.log", "a")
    with log_file:
      try:
        yield log_file
      except BaseException as e:
        line = errors.message(e)
        if isinstance(e, KeyboardInterrupt):
          line += "; the same command with --resume continues the run"
        else:
          line = "error: " + line
        with contextlib.suppress(OSError):  # A full disk must not hide the first error.
          _log_line(log_file, line)
        raise
  finally:
    with contextlib.suppress(OSError):
      lock.truncate(0)  # The pid names a live run only.
    lock.close()  # Releases the lock.


def _render(report: dict, workdir: pathlib.Path, log) -> None:
  if not PL.is_primary():  # Process 0 owns the workdir.
    return
  from ugclu_jax import report as R  # matplotlib is imported only when rendering

  with errors.writing(workdir / "report.md"):
    (workdir / "report.md").write_text(R.markdown(report))
  paths = R.plot(report, workdir)
  log(f"wrote report.md and {len(paths)} plots")
