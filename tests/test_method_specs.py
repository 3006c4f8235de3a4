"""Methods with hyperparameter overrides (``NAME@key=value@...``), the measured size of
the explicit compensation, and tuning runs that never read the test set."""

import numpy as np
import pytest

from ugclu_jax import checkpointing
from ugclu_jax import config as C
from ugclu_jax import data as D
from ugclu_jax import methods as MT
from ugclu_jax import report as R
from ugclu_jax import runner


def test_a_spec_splits_into_its_base_and_typed_overrides():
  assert MT.split_method_spec("ugclu") == ("ugclu", {})
  assert MT.split_method_spec("ugclu_hvp@beta=0.1@forget_freq=1@mask=false") == (
    "ugclu_hvp",
    {"beta": 0.1, "forget_freq": 1, "mask": False},
  )
  base, overrides = MT.split_method_spec("er+ga@ga_lr=1e-3")
  assert (base, overrides) == ("er+ga", {"ga_lr": 0.001})
  assert isinstance(MT.split_method_spec("ugclu@forget_freq=3")[1]["forget_freq"], int)
  assert MT.is_method_name("lwf@lwf_lambda=3") and "ft@ft_lr=0.1" in MT.METHOD_NAMES


@pytest.mark.parametrize(
  "name, message",
  [
    ("ugclu@betta=0.1", "unknown ugclu hyperparameter 'betta'"),
    ("ft@beta=0.1", "unknown baselines hyperparameter 'beta'"),
    ("ugclu@beta", "'beta' must be key=value"),
    ("ugclu@beta=", "'beta=' must be key=value"),
    ("ugclu@beta=0.1@beta=0.2", "'beta' is given twice"),
    ("ugclu@forget_freq=1.5", "forget_freq='1.5' is not a valid int"),
    ("ugclu@slow_step_size=2", "slow_step_size"),
    ("retrain@ft_lr=0.1", "the oracle 'retrain' takes no overrides"),
    ("nope@ft_lr=0.1", "unknown method 'nope'"),
  ],
)
def test_a_bad_spec_is_one_line_naming_the_bad_part(name, message):
  with pytest.raises(ValueError) as e:
    MT.check_method_name(name)
  text = str(e.value)
  assert message in text and "\n" not in text
  assert not MT.is_method_name(name)


def test_a_bad_spec_in_a_config_stops_before_any_work(tmp_path):
  cfg = C.apply_overrides(C.load_config("smoke"), ["methods=ugclu,ft@ft_lr=-1"])
  with pytest.raises(ValueError, match="ft_lr"):
    runner.run_experiment(cfg, tmp_path / "run", progress=False, render=False, echo=print)
  assert not (tmp_path / "run").exists()


def test_checkpoints_keep_methods_named_by_specs(tmp_path):
  name = "ugclu_hvp@beta=0.05@forget_freq=1"
  tree = {"methods": {name: (np.arange(3.0),), "ft": (np.ones(2),)}}
  with checkpointing.Checkpointer(tmp_path / "ckpt") as ckpt:
    ckpt.save(1, tree, {"cursor": 1})
    restored, meta = ckpt.restore(1, tree)
  assert meta["cursor"] == 1
  np.testing.assert_array_equal(restored["methods"][name][0], np.arange(3.0))


@pytest.fixture(scope="module")
def spec_run(tmp_path_factory):
  learn_lr = C.load_config("smoke").train.learning_rate
  cfg = C.apply_overrides(
    C.load_config("smoke"),
    [
      "stream=L:t0 L:t1 U:c1 U:r0.1",
      "train.learn_epochs=1",
      "train.unlearn_iterations=20",
      "data.max_eval=300",
      "methods=ugclu_hvp,ugclu_hvp@beta=0.1,ugclu,ugclu@clip=0,ugclu_normmask@clip=0,ugclu_nomask@clip=0,ft,ft@ft_lr=0.05,"
      f"ft@ft_lr=0.005,ugclu_hvp@beta=0.1@learn_beta={learn_lr}",
    ],
  )
  assert cfg.baselines.ft_lr == 0.05 and cfg.ugclu.beta == 0.0
  workdir = tmp_path_factory.mktemp("specs") / "run"
  return runner.run_experiment(cfg, workdir, progress=False, render=False, echo=lambda s: None)


def _metrics(report, name, key):
  return [r["metrics"][key] for r in report["methods"][name]["requests"]]


def test_a_spec_with_the_default_value_is_the_plain_method(spec_run):
  # The overrides reach the method, and the batches do not depend on the name.
  for key in ("forget_acc", "remain_acc", "test_acc", "avg_gap"):
    assert _metrics(spec_run, "ft@ft_lr=0.05", key) == _metrics(spec_run, "ft", key)
  assert _metrics(spec_run, "ft@ft_lr=0.005", "forget_acc") != _metrics(
    spec_run, "ft", "forget_acc"
  )


def test_the_norm_mask_ablation_is_neither_the_masked_nor_the_unmasked_method(spec_run):
  # Without the clip (which makes every step as long whenever both directions exceed it),
  # the masked, the rescaled unmasked and the unmasked direction all differ.
  names = ("ugclu@clip=0", "ugclu_normmask@clip=0", "ugclu_nomask@clip=0")
  ra = [_metrics(spec_run, m, "remain_acc") + _metrics(spec_run, m, "forget_acc") for m in names]
  assert ra[0] != ra[1] and ra[1] != ra[2] and ra[0] != ra[2]


def test_the_explicit_compensation_is_measured_in_hvp_mode_only(spec_run):
  lr = spec_run["config"]["ugclu"]["unlearn_lr"]
  default = _metrics(spec_run, "ugclu_hvp", "compensation")
  strong = _metrics(spec_run, "ugclu_hvp@beta=0.1", "compensation")
  for c in (default, strong):
    assert c[2] is not None and c[3] is not None and np.all(np.isfinite(c[2:]))
  # beta ||H_R d|| / ||d||: ten times the default beta (the request's lr), about ten
  # times the size, on a different trajectory.
  assert 0.1 / lr == pytest.approx(10.0)
  for a, b in zip(default[2:], strong[2:]):
    assert 3 < b / a < 30
  assert all(c is None for c in _metrics(spec_run, "ugclu", "compensation"))
  assert all(c is None for c in _metrics(spec_run, "ft", "compensation"))
  summary = R.summary(spec_run)
  assert summary["ugclu_hvp"]["compensation"] == pytest.approx(np.mean(default[2:]))
  assert summary["ugclu"]["compensation"] is None


def test_learn_beta_sets_the_learn_requests_beta_alone(spec_run):
  # At the learn rate on learn requests (beta = 0's value there), the learn requests are
  # the default's; the unlearn requests take beta = 0.1.
  learn_lr = spec_run["config"]["train"]["learning_rate"]
  split = f"ugclu_hvp@beta=0.1@learn_beta={learn_lr}"
  for key in ("remain_acc", "test_acc", "compensation"):
    assert _metrics(spec_run, split, key)[:2] == _metrics(spec_run, "ugclu_hvp", key)[:2]
  assert _metrics(spec_run, split, "compensation")[1] is not None
  for a, b in zip(
    _metrics(spec_run, "ugclu_hvp", "compensation")[2:],
    _metrics(spec_run, split, "compensation")[2:],
  ):
    assert 3 < b / a < 30


def test_a_tuning_run_holds_its_test_set_out_of_the_training_data():
  ds = D.load_dataset("digits", seed=3)
  tuned = D.split_validation(
    D.split_validation(ds, 10, 3, as_test=True), 10, 3
  )  # As the runner does.
  assert np.all(np.bincount(tuned.y_test) == 10) and np.all(np.bincount(tuned.y_val) == 10)
  rows = lambda x: {bytes(r) for r in x.reshape(len(x), -1)}
  train, test, val = rows(tuned.x_train), rows(tuned.x_test), rows(tuned.x_val)
  assert not (train & test) and not (train & val) and not (test & val)
  assert test <= rows(ds.x_train) and not test & rows(ds.x_test)
  assert len(train) + len(test) + len(val) == len(rows(ds.x_train))


def test_test_on_validation_needs_a_validation_split(tmp_path):
  cfg = C.apply_overrides(
    C.load_config("smoke"), ["data.test_on_validation=true", "data.validation_per_class=0"]
  )
  with pytest.raises(ValueError, match="set data.validation_per_class too"):
    runner.run_experiment(cfg, tmp_path / "run", progress=False, render=False, echo=print)
  assert not (tmp_path / "run").exists()


def test_a_tuning_run_reads_no_test_image(tmp_path):
  cfg = C.apply_overrides(
    C.load_config("smoke"),
    ["data.validation_per_class=15", "data.test_on_validation=true", "data.max_train_per_class=60"],
  )
  _, ds, *_ = runner.prepare(cfg)
  full = D.load_dataset(cfg.data.name, seed=cfg.seed)
  assert np.all(np.bincount(ds.y_test) == 15) and np.all(np.bincount(ds.y_val) == 15)
  rows = lambda x: {bytes(r) for r in x.reshape(len(x), -1)}
  assert rows(ds.x_test) <= rows(full.x_train) and not rows(ds.x_test) & rows(full.x_test)
  assert not rows(ds.x_test) & rows(ds.x_train)
  report = runner.run_experiment(
    C.apply_overrides(
      cfg,
      ["stream=L:t0 U:r0.2", "methods=ft", "train.learn_epochs=1", "train.unlearn_iterations=5"],
    ),
    tmp_path / "run",
    progress=False,
    render=False,
    echo=lambda s: None,
  )
  assert report["config"]["data"]["test_on_validation"] is True
  assert report["methods"]["ft"]["requests"][1]["metrics"]["test_acc"] is not None
