"""The oracle's validation split, early stopping and twin, on scikit-learn digits."""

import importlib

import jax
import numpy as np
import pytest
from flax import nnx

from ugclu_jax import config as C
from ugclu_jax import data as D
from ugclu_jax import methods as MT
from ugclu_jax import runner

from ugclu_jax.models import MLP, as_functional
from ugclu_jax.optim import build_optimizer
from ugclu_jax.steps import make_steps

RT = importlib.import_module("ugclu_jax.methods.retrain")  # The module, not its function.


def test_split_validation_holds_samples_out_of_training():
  ds = D.load_dataset("digits", seed=0)
  out = D.split_validation(ds, 10, seed=3)
  assert np.bincount(out.y_val).tolist() == [10] * 10
  assert out.y_train.size == ds.y_train.size - 100
  # Together, exactly the old training split (images with their labels).
  rows = lambda x, y: sorted(a.tobytes() + bytes([c]) for a, c in zip(x, y))  # noqa: E731
  both = rows(np.concatenate([out.x_train, out.x_val]), np.concatenate([out.y_train, out.y_val]))
  assert both == rows(ds.x_train, ds.y_train)
  # A seeded draw: the same seed, the same split; another seed, another.
  again = D.split_validation(ds, 10, seed=3)
  assert np.array_equal(again.x_val, out.x_val)
  assert not np.array_equal(D.split_validation(ds, 10, seed=4).x_val, out.x_val)
  with pytest.raises(ValueError, match="leaves no training sample of class"):
    D.split_validation(ds, int(np.bincount(ds.y_train).min()), seed=0)


def _ctx(num_iterations, validation):
  ds = D.load_dataset("digits", seed=0)
  x, y = ds.x_train, ds.y_train
  idx = np.flatnonzero(y < 4)
  store = D.store_init(None, ds.num_classes)
  request = D.parse_stream("L:c0,1,2,3", tasks=[[0, 1, 2, 3]], num_classes=10)[0]
  access = D.DataAccess(x, y, store, idx)
  return MT.Context(
    access, request, 0, num_iterations, 32, MT.method_seed(0, 0, "retrain"), validation=validation
  )


def test_early_stopping_keeps_the_best_epoch_and_counts_what_ran():
  apply_fn, params, model_state = as_functional(MLP(64, 10, hidden=(16,), rngs=nnx.Rngs(0)))
  tx = build_optimizer(learning_rate=0.05, momentum=0.9)
  steps = make_steps(apply_fn, tx, kind="learn", temperature=0.0)
  ctx = _ctx(200, validation=(np.zeros((5, 8, 8, 1), np.uint8), np.zeros(5, np.int32)))
  epoch = int(np.ceil(ctx.access.target_indices.size / 32))
  scores, seen = iter([0.5, 0.7, 0.6, 0.65, 0.9]), []

  # Epoch 2 is the best until patience runs out at 4.
  def accuracy(p, ms, data, mesh, default_batch):
    seen.append(jax.tree.map(np.array, p))
    return next(scores)

  params_out, _, cost, epochs, best, acc = RT.early_stopped_train(
    steps, tx, params, model_state, ctx, learning_rate=0.05, patience=2, accuracy=accuracy, name="t"
  )
  assert (epochs, best, acc) == (4, 2, 0.7)
  assert cost.steps == cost.grad_evals == 4 * epoch < 200
  for a, b in zip(jax.tree.leaves(params_out), jax.tree.leaves(seen[1])):
    np.testing.assert_array_equal(np.asarray(a), b)
  assert not np.array_equal(jax.tree.leaves(seen[1])[0], jax.tree.leaves(seen[3])[0])
  with pytest.raises(ValueError, match="validation_per_class"):
    RT.early_stopped_train(
      steps,
      tx,
      params,
      model_state,
      _ctx(10, None),
      learning_rate=0.05,
      patience=2,
      accuracy=accuracy,
      name="t",
    )


def test_the_runner_stops_the_oracle_early_and_runs_its_twin(tmp_path):
  base = C.apply_overrides(
    C.load_config("smoke"),
    [
      "stream=L:t0 L:t1 U:c1",
      "methods=ugclu,retrain_twin",
      "train.learn_epochs=1",
      "train.unlearn_iterations=10",
      "data.validation_per_class=20",
    ],
  )
  with pytest.raises(runner.RunError, match="set data.validation_per_class"):
    runner.prepare(
      C.apply_overrides(base, ["train.oracle_max_epochs=5", "data.validation_per_class=0"])
    )
  with pytest.raises(C.ConfigError, match="data.validation_per_class=500 leaves no training"):
    runner.prepare(C.apply_overrides(base, ["data.validation_per_class=500"]))
  cfg = C.apply_overrides(base, ["train.oracle_max_epochs=40", "train.oracle_patience=2"])
  report = runner.run_experiment(cfg, tmp_path / "run", progress=False, render=False, echo=print)
  oracle = report["methods"]["retrain"]["requests"]
  twin = report["methods"]["retrain_twin"]["requests"]
  ds = runner.prepare(cfg)[1]
  per_class = np.bincount(ds.y_train)
  for q, classes in zip(oracle, ([0, 1], [0, 1, 2, 3], [0, 2, 3])):
    n = int(per_class[classes].sum())
    budget = int(np.ceil(40 * n / cfg.data.batch_size))
    assert 0 < q["metrics"]["steps"] < budget  # Stopped early.
    assert q["metrics"]["steps"] % int(np.ceil(n / cfg.data.batch_size)) == 0  # Whole epochs.
    assert q["metrics"]["remain_acc"] > 0.9
  # The twin is another oracle: its own weights and batches, its gap the noise floor.
  assert [q["metrics"]["steps"] for q in twin] != [q["metrics"]["steps"] for q in oracle]
  assert 0.0 <= twin[2]["metrics"]["avg_gap"] < 0.2
  assert twin[2]["metrics"]["forget_acc"] == 0.0
