"""The experiment runner: plays a request stream against methods and the oracle.

``run_experiment(cfg, workdir)`` is one flat loop in commented sections; fork
it for a new study rather than growing flags (big_vision style). Everything is
validated before anything is written; every request ends with a checkpoint
and a partial ``report.json``, so ``resume=True`` continues an interrupted run
to the same report.
"""

import dataclasses
import json
import math
import os
import pathlib
import time
from typing import Callable

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from ugclu_jax import config as C
from ugclu_jax import data as D
from ugclu_jax import evaluation as E
from ugclu_jax import metrics as M
from ugclu_jax import methods as MT
from ugclu_jax import mia
from ugclu_jax import parallel as PL
from ugclu_jax.checkpointing import Checkpointer, read_meta
from ugclu_jax.models import as_functional, get_model

MODELS = ("mlp", "cnn", "resnet18")
MODES = ("fast_slow", "hvp", "none")
CURVATURES = ("hessian", "ggn")


class RunError(ValueError):
  """The run cannot start or continue (bad settings, workdir conflicts)."""


# ----------------------------------------------------------------------------
# Validation (before any work)
# ----------------------------------------------------------------------------

def _validate(cfg: C.ExperimentConfig) -> None:
  def positive(value, key):
    if not value > 0:
      raise RunError(f"{key} must be positive, got {value}")

  positive(cfg.data.batch_size, "data.batch_size")
  positive(cfg.data.eval_batch_size, "data.eval_batch_size")
  positive(cfg.data.max_eval, "data.max_eval")
  positive(cfg.data.classes_per_task, "data.classes_per_task")
  positive(cfg.train.learn_epochs, "train.learn_epochs")
  positive(cfg.train.learning_rate, "train.learning_rate")
  positive(cfg.train.unlearn_iterations, "train.unlearn_iterations")
  positive(cfg.ugclu.unlearn_lr, "ugclu.unlearn_lr")
  positive(cfg.ugclu.forget_freq, "ugclu.forget_freq")
  positive(cfg.ugclu.learn_freq, "ugclu.learn_freq")
  positive(cfg.ugclu.fisher_batches, "ugclu.fisher_batches")
  positive(cfg.ugclu.order, "ugclu.order")
  if cfg.data.max_train_per_class is not None and cfg.data.max_train_per_class < 1:
    raise RunError(f"data.max_train_per_class must be >= 1 or none, got "
                   f"{cfg.data.max_train_per_class}")
  if cfg.data.store_size is not None and cfg.data.store_size < 1:
    raise RunError(f"data.store_size must be >= 1 or none, got {cfg.data.store_size}")
  if cfg.train.model not in MODELS:
    raise RunError(f"train.model={cfg.train.model!r} is unknown; valid: {', '.join(MODELS)}")
  if cfg.ugclu.mode not in MODES:
    raise RunError(f"ugclu.mode={cfg.ugclu.mode!r} is unknown; valid: {', '.join(MODES)}")
  if cfg.ugclu.curvature not in CURVATURES:
    raise RunError(f"ugclu.curvature={cfg.ugclu.curvature!r} is unknown; valid: "
                   f"{', '.join(CURVATURES)}")
  if not 0 <= cfg.ugclu.slow_step_size <= 1:
    raise RunError(f"ugclu.slow_step_size must be in [0, 1], got {cfg.ugclu.slow_step_size}")
  if cfg.mia_variant not in mia.MIA_VARIANTS:
    raise RunError(f"mia_variant={cfg.mia_variant!r} is unknown; valid: "
                   f"{', '.join(mia.MIA_VARIANTS)}")
  if not cfg.methods:
    raise RunError("methods is empty; name at least one method")
  for name in cfg.methods:
    try:
      MT.check_method_name(name)
    except ValueError as e:
      raise RunError(str(e)) from None
  try:
    MT.check_hyperparameters(**dataclasses.asdict(cfg.baselines))
  except ValueError as e:
    raise RunError(f"baselines.{e}") from None
  if len(set(cfg.methods)) != len(cfg.methods):
    raise RunError(f"methods lists a method twice: {','.join(cfg.methods)}")
  devices, available = cfg.train.devices, jax.local_device_count()
  if not 0 <= devices <= available:
    raise RunError(f"train.devices={devices}: this machine has {available} local device(s); "
                   f"use 1 to {available}, or 0 for all")
  n = _num_devices(cfg)
  for key in ("batch_size", "eval_batch_size"):
    if getattr(cfg.data, key) % n:
      raise RunError(f"data.{key}={getattr(cfg.data, key)} does not split over "
                     f"train.devices={n}; use a multiple of {n}")


def _load_data(cfg: C.ExperimentConfig, log: Callable[[str], None]):
  try:
    ds = D.load_dataset(cfg.data.name, data_dir=cfg.data.dir, seed=cfg.seed)
  except ValueError as e:
    if not cfg.data.fallback:
      raise
    log(f"dataset {cfg.data.name!r} is unavailable ({e}); falling back to "
        f"{cfg.data.fallback!r}")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, name=cfg.data.fallback,
                                                            dir=None, fallback=None))
    ds = D.load_dataset(cfg.data.name, seed=cfg.seed)
  if cfg.data.max_train_per_class is not None:
    ds = D.limit_train_per_class(ds, cfg.data.max_train_per_class, cfg.seed)
  return ds, cfg


def prepare(cfg: C.ExperimentConfig, log: Callable[[str], None] = lambda s: None):
  """Validates a config and loads its data: ``(cfg, dataset, tasks, requests, methods)``.

  Raises a one-line error (``RunError``, ``ConfigError``, ``StreamError`` or the
  dataset's ``ValueError``) for anything wrong; writes nothing.
  """
  _validate(cfg)
  ds, cfg = _load_data(cfg, log)
  tasks = D.make_tasks(ds.num_classes, cfg.data.classes_per_task, cfg.data.class_order)
  requests = D.parse_stream(cfg.stream, tasks=tasks, num_classes=ds.num_classes)
  methods = list(cfg.methods)
  if any(r.kind == "unlearn" for r in requests) and MT.ORACLE not in methods:
    methods.append(MT.ORACLE)
  # The oracle runs first: every method's gap is measured against it.
  methods.sort(key=lambda m: m != MT.ORACLE)
  return cfg, ds, tasks, requests, methods


# ----------------------------------------------------------------------------
# Methods from the config (the config -> kwargs boundary)
# ----------------------------------------------------------------------------

def _build_method(name, cfg: C.ExperimentConfig, apply_fn, params0, model_state0, *,
                  num_train: int, num_classes: int):
  t = cfg.train
  if name == MT.ORACLE:
    return MT.retrain(apply_fn, init_params=params0, init_model_state=model_state0,
                      learning_rate=t.learning_rate, momentum=t.momentum,
                      weight_decay=t.weight_decay, name=name)
  if name in MT.UGCLU_VARIANTS:
    kwargs = dataclasses.asdict(cfg.ugclu)
    kwargs.update(MT.UGCLU_VARIANTS[name])
    return MT.ugclu(apply_fn, name=name, learn_lr=t.learning_rate, momentum=t.momentum,
                    weight_decay=t.weight_decay, **kwargs)
  # A baseline or a CLU pair "X+Y" of baselines.
  return MT.baseline(apply_fn, name, num_train=num_train, num_classes=num_classes,
                     learn_lr=t.learning_rate, momentum=t.momentum,
                     weight_decay=t.weight_decay, **dataclasses.asdict(cfg.baselines))


# ----------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------

def _write_json(path: pathlib.Path, obj) -> None:
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(obj, indent=1, allow_nan=False) + "\n")
  os.replace(tmp, path)


def _iterations(epochs: float, n: int, batch_size: int) -> int:
  return max(1, math.ceil(epochs * n / batch_size))


def _state_tree(states, store, learned):
  return {"methods": {k: tuple(v) for k, v in states.items()},
          "store": tuple(store), "learned": learned}


def _num_devices(cfg) -> int:
  """How many devices ``train.devices`` asks for (0: all local devices)."""
  return cfg.train.devices or jax.local_device_count()


def _mesh(cfg):
  """The data-parallel mesh of ``train.devices`` (``None`` for one device)."""
  n = _num_devices(cfg)
  return PL.data_mesh(n) if n > 1 else None


def _initial(cfg, ds, method_names, mesh=None):
  """The model, the methods and the state before the first request."""
  model = get_model(cfg.train.model, num_classes=ds.num_classes,
                    input_shape=ds.x_train.shape[1:], rngs=nnx.Rngs(cfg.seed))
  apply_fn, params0, model_state0 = as_functional(model)
  params0, model_state0 = PL.replicate((params0, model_state0), mesh)
  methods = {n: _build_method(n, cfg, apply_fn, params0, model_state0,
                             num_train=ds.y_train.size, num_classes=ds.num_classes)
             for n in method_names}
  states = {n: m.init(params0, model_state0) for n, m in methods.items()}
  store = D.store_init(cfg.data.store_size, ds.num_classes)
  learned = np.zeros(ds.y_train.shape, bool)
  return apply_fn, methods, states, store, learned


def load_state(workdir) -> dict:
  """The latest checkpoint of a run: ``{"methods", "store", "learned", "meta"}``.

  ``methods`` maps each method to its :class:`~ugclu_jax.methods.MethodState`;
  ``store`` is the remaining store; ``learned`` the learned-sample mask.
  """
  workdir = pathlib.Path(workdir)
  if read_meta(workdir / "checkpoints") is None:
    raise RunError(f"{workdir} holds no checkpoint")
  cfg = C.from_dict(json.loads((workdir / "config.json").read_text()))
  cfg, ds, _, _, method_names = prepare(cfg)
  _, _, states, store, learned = _initial(cfg, ds, method_names)
  with Checkpointer(workdir / "checkpoints") as ckpt:
    tree, meta = ckpt.restore(ckpt.latest_step(), _state_tree(states, store, learned))
  return {"methods": {n: MT.MethodState(*v) for n, v in tree["methods"].items()},
          "store": D.Store(*tree["store"]), "learned": tree["learned"].astype(bool),
          "meta": meta}


def run_experiment(cfg: C.ExperimentConfig, workdir, *, resume: bool = False,
                   progress: bool = True, echo: Callable[[str], None] = print) -> dict:
  """Runs (or resumes) an experiment in ``workdir`` and returns the report dict.

  Writes ``config.json``, ``run.log``, ``report.json`` (after every request),
  ``report.md`` and PNG plots (at the end) and Orbax checkpoints under
  ``checkpoints/`` (after every request).
  """
  workdir = pathlib.Path(workdir)
  messages = []
  cfg, ds, tasks, requests, method_names = prepare(cfg, messages.append)
  ckpt_dir = workdir / "checkpoints"
  meta = read_meta(ckpt_dir)
  if meta is not None and not resume:
    raise RunError(f"{workdir} already holds a run; pass --resume to continue it, or use "
                   f"another --workdir")
  if meta is not None and meta["config"] != C.to_dict(cfg):
    raise RunError(f"--resume: the config differs from the one of the run in {workdir}")

  # --- Setup -------------------------------------------------------------------------
  workdir.mkdir(parents=True, exist_ok=True)
  log_file = open(workdir / "run.log", "a")

  def log(line: str) -> None:
    log_file.write(time.strftime("%Y-%m-%d %H:%M:%S ") + line + "\n")
    log_file.flush()
    echo(line)

  for line in messages:
    log(line)
  _write_json(workdir / "config.json", C.to_dict(cfg))
  x, y = ds.x_train, ds.y_train
  num_classes, seed, b = ds.num_classes, cfg.seed, cfg.data.batch_size
  mesh = _mesh(cfg)
  apply_fn, methods, states, store, learned = _initial(cfg, ds, method_names, mesh)
  report = {"config": C.to_dict(cfg), "dataset": ds.name, "stream": D.stream_tokens(requests),
            "methods": {n: {"requests": []} for n in method_names}}
  # For relapse: every unlearn request's evaluated forget samples, and each
  # method's per-sample correctness on them right after unlearning.
  history = {"forget_sets": {}, "forget_correct": {n: {} for n in method_names}}
  start = 0
  output_fn = E.make_output_fn(apply_fn)
  # One class-balanced test subsample for the whole run (max_eval / classes per
  # class): at every request the test set is its learned classes, so the
  # accuracy matrix compares the same samples across requests.
  test_pool = D.per_class_subsample(ds.y_test, max(1, cfg.data.max_eval // num_classes),
                                    [seed, 0x7E57])

  with Checkpointer(ckpt_dir) as ckpt:
    if meta is not None:
      tree, meta = ckpt.restore(ckpt.latest_step(), _state_tree(states, store, learned))
      states = {n: MT.MethodState(*PL.replicate(tuple(v), mesh))
                for n, v in tree["methods"].items()}
      store, learned = D.Store(*tree["store"]), tree["learned"].astype(bool)
      report, history, start = meta["report"], meta["history"], meta["cursor"]
      log(f"resuming {workdir} at request {start} of {len(requests)}")
    else:
      log(f"run {cfg.name}: dataset {ds.name}, model {cfg.train.model}, methods "
          f"{', '.join(method_names)}, stream {' '.join(report['stream'])}")

    for r in range(start, len(requests)):
      # --- The request's data ---------------------------------------------------------
      req = requests[r]
      idx = D.resolve_request(req, y_train=y, learned_mask=learned,
                              rng=np.random.default_rng([seed, r, 11]))
      now_learned = D.apply_request(learned, req, idx)
      if req.kind == "unlearn":
        store = D.store_purge(store, idx, y_train=y)
      access = D.DataAccess(x, y, store, idx)
      learned_idx = np.flatnonzero(now_learned)
      # The oracle alone reads all of D_R ∪ D_L (as its target set).
      oracle_access = D.DataAccess(x, y, D.store_init(None, num_classes), learned_idx)
      if req.kind == "learn":
        n_iter = _iterations(cfg.train.learn_epochs, idx.size, b)
      else:
        n_iter = cfg.train.unlearn_iterations
      n_oracle = _iterations(cfg.train.learn_epochs, learned_idx.size, b)

      # --- Evaluation sets (shared by all methods) ------------------------------------
      learned_classes = np.unique(y[now_learned])
      forget_eval = (E.subsample(idx, cfg.data.max_eval, [seed, r, 1])
                     if req.kind == "unlearn" else None)
      if forget_eval is not None:
        history["forget_sets"][str(r)] = forget_eval.tolist()
      remain_eval = E.subsample(learned_idx, cfg.data.max_eval, [seed, r, 2])
      test_eval = test_pool[np.isin(ds.y_test[test_pool], learned_classes)]
      test_labels = ds.y_test[test_eval]

      def evaluate(state, indices, xs, ys):
        return E.outputs(output_fn, state.params, state.model_state, xs, ys, indices,
                         cfg.data.eval_batch_size, num_classes, mesh)

      oracle_metrics = oracle_forget = None
      for name in method_names:
        method = methods[name]
        is_oracle = name == MT.ORACLE
        ctx = MT.Context(access=oracle_access if is_oracle else access, request=req, index=r,
                         num_iterations=n_oracle if is_oracle else n_iter, batch_size=b,
                         seed=MT.method_seed(seed, r, name), mesh=mesh)
        # --- Train -----------------------------------------------------------------
        with tqdm(total=ctx.num_iterations, desc=f"[{r}] {req.token} {name}", leave=False,
                  disable=None if progress else True) as bar:
          ctx = dataclasses.replace(ctx, progress=bar.update)
          t0 = time.perf_counter()
          run = method.learn if req.kind == "learn" else method.unlearn
          states[name], cost = run(states[name], ctx)
          seconds = time.perf_counter() - t0

        # --- Evaluate ----------------------------------------------------------------
        state = states[name]
        forget = evaluate(state, forget_eval, x, y) if forget_eval is not None else None
        remain = evaluate(state, remain_eval, x, y)
        test = evaluate(state, test_eval, ds.x_test, ds.y_test)
        metrics = E.request_metrics(forget=forget, remain=remain, test=test,
                                    mia_variant=cfg.mia_variant, seed=seed)
        if is_oracle:
          oracle_metrics, oracle_forget = metrics, forget
        metrics.update(E.oracle_metrics(metrics, oracle_metrics, forget, oracle_forget))
        row = E.task_accuracies(test, test_labels, tasks, learned_classes)
        rows = [q["acc_per_task"] for q in report["methods"][name]["requests"]] + [row]
        matrix = M.accuracy_matrix(rows)
        metrics["avg_acc"] = M.avg_acc(row)
        metrics["forgetting"] = M.forgetting(matrix, r)
        metrics["bwt"] = M.bwt(matrix, r)
        relapses = []
        for j, fset in history["forget_sets"].items():
          if int(j) >= r:
            continue
          fset = np.asarray(fset, np.int64)
          still = ~now_learned[fset]
          if still.any():
            now = evaluate(state, fset[still], x, y).correct.mean()
            then = np.asarray(history["forget_correct"][name][j], float)[still].mean()
            relapses.append(float(now - then))
        metrics["relapse"] = float(np.mean(relapses)) if relapses else None
        if forget is not None:
          history["forget_correct"][name][str(r)] = forget.correct.astype(int).tolist()
        metrics.update(steps=cost.steps, grad_evals=cost.grad_evals, hvp_evals=cost.hvp_evals)
        report["methods"][name]["requests"].append({
            "index": r, "request": req.token, "seconds": round(seconds, 3),
            "metrics": metrics, "acc_per_task": row})
        log(f"[{r}] {req.token:<10} {name:<14} {seconds:7.1f}s  " + "  ".join(
            f"{k}={v:.3f}" for k, v in metrics.items()
            if k in ("forget_acc", "remain_acc", "test_acc", "mia_efficacy", "avg_gap")
            and v is not None))

      # --- Commit the request ------------------------------------------------------------
      if req.kind == "learn":
        new = idx[~learned[idx]]
        store = D.store_add(store, new, y, np.random.default_rng([seed, r, 12]))
      learned = now_learned
      ckpt.save(r + 1, _state_tree(states, store, learned),
                {"cursor": r + 1, "report": report, "history": history,
                 "config": C.to_dict(cfg)})
      _write_json(workdir / "report.json", report)

  _write_json(workdir / "report.json", report)
  _render(report, workdir, log)
  log(f"done: {workdir / 'report.json'}")
  log_file.close()
  return report


def _render(report: dict, workdir: pathlib.Path, log) -> None:
  from ugclu_jax import report as R  # matplotlib is imported only when rendering
  (workdir / "report.md").write_text(R.markdown(report))
  paths = R.plot(report, workdir)
  log(f"wrote report.md and {len(paths)} plots")
