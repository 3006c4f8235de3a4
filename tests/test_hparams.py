"""Hyperparameters are defined once, next to their methods, and check themselves; seed
streams have names."""

import dataclasses
import importlib
import inspect
import math
import re
import subprocess
import sys
import typing

import numpy as np
import pytest

from ugclu_jax import config as C
from ugclu_jax import hparams as H
from ugclu_jax import methods as MT
from ugclu_jax import seeds
from ugclu_jax.methods import baselines as BL

HPARAMS = (MT.UGCLUConfig, MT.BaselinesConfig)


def _ranged_fields(cls):
  """``(name, type, rules)`` of each field with value rules."""
  hints = typing.get_type_hints(cls)
  return [
    (f.name, H.unwrap_optional(hints[f.name])[0], f.metadata["rules"])
    for f in dataclasses.fields(cls)
    if f.metadata.get("rules")
  ]


def _refused(cls, name, value, problem):
  with pytest.raises(C.ConfigError) as e:
    cls(**{name: value})
  message = str(e.value)
  assert "\n" not in message
  assert re.fullmatch(rf"{cls.KEY}\.{name}=\S+ {problem}", message), message


@pytest.mark.parametrize("cls", HPARAMS, ids=lambda c: c.__name__)
def test_refuses_nan_inf_negative_and_out_of_range_in_one_line(cls):
  checked = set()
  for name, tp, rules in _ranged_fields(cls):
    if tp is float:
      for bad in (math.nan, math.inf, -math.inf):
        _refused(cls, name, bad, "must be finite")
    _refused(cls, name, tp(-1), r"must be (>=? \d+|in [\[(]0, 1[\])])")
    if any(r.text.startswith("must be in") for r in rules):
      _refused(cls, name, tp(2), r"must be in [\[(]0, 1[\])]")
    _refused(cls, name, True, r"must be (a number|an int)")
    checked.add(name)
  # Every number has a range, but learn_temperature (negative: hard samples up).
  hints = typing.get_type_hints(cls)
  numbers = {f.name for f in dataclasses.fields(cls) if hints[f.name] in (int, float)}
  assert numbers - checked == ({"learn_temperature"} if cls is MT.UGCLUConfig else set())


def test_the_config_holds_the_methods_classes_under_their_keys():
  ugclu_module = importlib.import_module("ugclu_jax.methods.ugclu")
  assert C.UGCLUConfig is MT.UGCLUConfig is ugclu_module.UGCLUConfig
  assert C.BaselinesConfig is MT.BaselinesConfig is BL.BaselinesConfig
  hints = typing.get_type_hints(C.ExperimentConfig)
  for f in dataclasses.fields(C.ExperimentConfig):
    if dataclasses.is_dataclass(hints[f.name]):
      assert hints[f.name].KEY == f.name
  # Inside a config and alone, a bad value is named by its dotted key.
  with pytest.raises(C.ConfigError, match=r"^ugclu\.clip=-1\.0 must be >= 0$"):
    C.apply_overrides(C.ExperimentConfig(), ["ugclu.clip=-1"])
  with pytest.raises(C.ConfigError, match=r"^ugclu\.clip=-1 must be >= 0$"):
    MT.UGCLUConfig(clip=-1)


def test_one_default_per_hyperparameter():
  """The factories take each hyperparameter from its dataclass and each run setting from the
  caller (the config's train.*): no default is written twice."""
  for factory, cls in ((MT.ugclu, MT.UGCLUConfig), (MT.baseline, MT.BaselinesConfig)):
    params = inspect.signature(factory).parameters
    assert not {f.name for f in dataclasses.fields(cls)} & set(params)  # **overrides
    assert params["hparams"].default == cls()
    assert {n for n, p in params.items() if p.default is not p.empty} <= {"hparams", "name"}
  params = inspect.signature(MT.retrain).parameters
  # Off by default: the clip, early stopping (patience) and its evaluation batch.
  assert {n for n, p in params.items() if p.default is not p.empty} == {
    "clip_norm",
    "name",
    "patience",
    "eval_batch_size",
  }
  assert params["patience"].default is None and params["eval_batch_size"].default is None


@pytest.fixture(scope="module")
def apply_fn():
  from flax import nnx

  from ugclu_jax.models import MLP, as_functional

  return as_functional(MLP(in_features=4, num_classes=3, hidden=(8,), rngs=nnx.Rngs(0)))[0]


SHARED = {"num_classes": 3, "learn_lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}


def test_ugclu_overrides_are_checked_by_the_dataclass(apply_fn):
  assert MT.ugclu(apply_fn, mode="hvp", learn_clip=1.0, **SHARED).name == "ugclu"
  with pytest.raises(C.ConfigError, match=r"^ugclu\.clip=-1 must be >= 0$"):
    MT.ugclu(apply_fn, clip=-1, learn_clip=1.0, **SHARED)
  with pytest.raises(C.ConfigError, match=r"^ugclu\.forget_freq=0 must be >= 1$"):
    MT.ugclu(apply_fn, MT.UGCLUConfig(), forget_freq=0, learn_clip=None, **SHARED)
  with pytest.raises(C.ConfigError, match=r"^unknown ugclu hyperparameter 'lr'; valid: mode, "):
    MT.ugclu(apply_fn, lr=0.1, learn_clip=None, **SHARED)
  with pytest.raises(ValueError, match=r"^num_classes=1 must be >= 2$"):
    MT.ugclu(apply_fn, learn_clip=None, **{**SHARED, "num_classes": 1})
  with pytest.raises(ValueError, match="mode must be one of"):
    MT.ugclu(apply_fn, mode="newton", learn_clip=None, **SHARED)


def test_baseline_overrides_are_checked_by_the_dataclass(apply_fn):
  hp = MT.BaselinesConfig(ewc_lambda=5.0)
  MT.baseline(apply_fn, "ewc", hp, num_train=10, clip_norm=None, ewc_gamma=0.5, **SHARED)
  with pytest.raises(C.ConfigError, match=r"^baselines\.ewc_gamma=1\.5 must be in \[0, 1\]$"):
    MT.baseline(apply_fn, "ewc", hp, num_train=10, clip_norm=None, ewc_gamma=1.5, **SHARED)


def test_config_import_stays_light():
  code = (
    "import sys, ugclu_jax.config; "
    "print(sorted(m for m in ('jax', 'flax', 'numpy', 'optax') if m in sys.modules))"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]", out


# --- Seed streams ------------------------------------------------------------------------------

# The integers each stream was seeded with before it had a name: every result stays the same.
TAGS = {
  "run.train_subsample": 0x5EED,
  "run.test_pool": 0x7E57,
  "run.validation": 0x7A11,
  "run.tuning_test": 0x7E5A,
  "run.twin_init": 0x7214,
  "request.eval_forget": 1,
  "request.eval_remain": 2,
  "request.random_unlearn": 11,
  "request.store_reservoir": 12,
  "ugclu.target_batches": 1,
  "ugclu.remain_batches": 2,
  "ugclu.fisher_target": 7,
  "ugclu.fisher_remain": 8,
  "ugclu.random_mask": 10,
  "baseline.target_batches": 1,
  "baseline.remain_batches": 2,
  "baseline.replay_batches": 3,
  "baseline.random_labels": 5,
  "baseline.salun_mask": 6,
  "baseline.ewc_fisher": 9,
  "oracle.target_batches": 1,
}


def test_seed_streams_are_distinct_named_integers():
  assert set(seeds.STREAMS) == set(seeds.BASES)
  for scope, streams in seeds.STREAMS.items():
    tags = list(streams.values())
    assert all(isinstance(t, int) and 0 <= t < 2**32 for t in tags), scope
    assert len(set(tags)) == len(tags), scope
  named = {f"{s}.{n}": t for s, streams in seeds.STREAMS.items() for n, t in streams.items()}
  assert named == TAGS
  # Every method draws from one base (methods.method_seed), so a tag shared by two method
  # scopes must name one role: the same batches (paired methods), never a clash.
  methods = ("ugclu", "baseline", "oracle")
  by_tag = {}
  for scope in methods:
    for name, tag in seeds.STREAMS[scope].items():
      by_tag.setdefault(tag, set()).add(name)
  assert all(len(names) == 1 for names in by_tag.values()), by_tag
  assert MT.method_seed(3, 1, "ugclu") == MT.method_seed(3, 1, "ft") == (3, 1, 0)
  assert MT.method_seed(3, 1, "retrain_twin") == (3, 1, 1)


def test_seed_for_appends_the_tag_to_the_base():
  assert seeds.seed_for(7, "run.test_pool") == (7, 0x7E57)
  assert seeds.seed_for(np.int64(7), "run.train_subsample") == (7, 0x5EED)
  assert seeds.seed_for((7, 3), "request.store_reservoir") == (7, 3, 12)
  base = MT.method_seed(7, 3, "ugclu")
  assert seeds.seed_for(base, "ugclu.fisher_remain") == (*base, 8)
  with pytest.raises(KeyError, match="unknown seed stream 'ugclu.fisher'"):
    seeds.seed_for(base, "ugclu.fisher")
  with pytest.raises(ValueError, match=r"takes a base \(run seed, request index\)"):
    seeds.seed_for(base, "request.eval_forget")
