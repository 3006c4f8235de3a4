"""Data parallelism on four CPU devices (run by tests/test_parallel.py).

Collected only in a process started with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``; the file name keeps it
out of the main run, whose process has one device.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from ugclu_jax import Batch, RequestHParams, build_optimizer, init_train_state, make_steps
from ugclu_jax import config as C
from ugclu_jax import data as D
from ugclu_jax import parallel as PL
from ugclu_jax import runner
from ugclu_jax.models import MLP, as_functional

B = 32


@pytest.fixture(scope="module", autouse=True)
def four_devices():
  assert jax.local_device_count() == 4, "run with --xla_force_host_platform_device_count=4"


def test_mesh_and_batch_sharding():
  mesh = PL.data_mesh(4)
  assert PL.num_shards(mesh) == 4 and PL.num_shards(None) == 1
  assert PL.num_shards(PL.data_mesh()) == 4
  with pytest.raises(ValueError, match="num_devices=5: this process has 4 local"):
    PL.data_mesh(5)
  batch = Batch(np.zeros((8, 3), np.float32), np.arange(8), np.ones(8, np.float32))
  sharded = PL.shard_batch(batch, mesh)
  for leaf in sharded:
    assert leaf.sharding.spec == PartitionSpec("data")
    assert [s.data.shape[0] for s in leaf.addressable_shards] == [2, 2, 2, 2]
  np.testing.assert_array_equal(np.asarray(sharded.y), np.arange(8))
  stacked = PL.shard_batch(np.zeros((3, 8, 2)), mesh, batch_axis=1)
  assert stacked.sharding.spec == PartitionSpec(None, "data")
  with pytest.raises(ValueError, match="a batch of 6 does not split over 4 devices"):
    PL.shard_batch(Batch(np.zeros((6, 3)), np.zeros(6), np.ones(6)), mesh)
  params = PL.replicate({"w": jnp.ones((3, 2))}, mesh)
  assert params["w"].sharding.is_fully_replicated and len(params["w"].devices()) == 4


def _digits_batches(n, seed):
  ds = D.load_dataset("digits")
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    idx = rng.choice(ds.y_train.size, B, replace=False)
    mask = np.ones(B, np.float32)
    mask[-3:] = 0.0  # padding rows: the masked mean must ignore them on every device
    out.append(Batch(D.to_float(ds.x_train[idx]), ds.y_train[idx].astype(np.int32), mask))
  return out


@pytest.mark.parametrize("mode", ["fast_slow", "hvp"])
def test_sharded_steps_match_one_device(mode):
  """Three UG-CLU unlearn iterations: the same parameters on 1 and 4 devices."""
  model = MLP(in_features=64, num_classes=10, hidden=(64,), rngs=nnx.Rngs(0))
  apply_fn, params, model_state = as_functional(model)
  tx = build_optimizer(
    learning_rate=0.05, momentum=0.9, weight_decay=5e-4, sync_period=2 if mode == "fast_slow" else 1
  )
  steps = make_steps(apply_fn, tx, kind="unlearn", mode=mode, clip_norm=7.0, temperature=0.5)
  hp = RequestHParams.create(learning_rate=0.05, a_target=5.0, num_iterations=3)
  mask = jax.tree.map(
    lambda p: (jnp.arange(p.size).reshape(p.shape) % 3 > 0).astype(p.dtype), params
  )
  targets, remains = _digits_batches(3, 1), _digits_batches(3, 2)

  def play(mesh):
    ts = init_train_state(*PL.replicate((params, model_state), mesh), tx)
    m = PL.replicate(mask, mesh)
    for t, r in zip(targets, remains):
      t, r = PL.shard_batch(t, mesh), PL.shard_batch(r, mesh)
      if mode == "fast_slow":
        ts, _ = steps.target(ts, t, m, hp, 0)
        ts, _ = steps.remain(ts, r, hp)
      else:
        ts, _ = steps.fused(ts, t, r, m, hp)
    return ts

  one, four = play(None), play(PL.data_mesh(4))
  for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params)):
    assert b.sharding.is_fully_replicated and len(b.devices()) == 4
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
  # The four-device program really splits the batch: it all-reduces partial sums.
  mesh = PL.data_mesh(4)
  ts = init_train_state(*PL.replicate((params, model_state), mesh), tx)
  r = PL.shard_batch(remains[0], mesh)
  hlo = steps.remain.lower(ts, r, hp).compile().as_text()
  assert "all-reduce" in hlo


def _smoke(stream, devices):
  cfg = C.load_config("smoke")
  return dataclasses.replace(
    cfg,
    stream=stream,
    methods=("ugclu",),
    train=dataclasses.replace(cfg.train, learn_epochs=1, unlearn_iterations=20, devices=devices),
  )


class _Interrupt(Exception):
  pass


def test_runner_on_four_devices_resumes_and_matches_one(tmp_path):
  """Killed after request 0's checkpoint, resumed on four devices: the one-device report."""
  stream = "L:t0 U:c1 L:t1"
  one = runner.run_experiment(
    _smoke(stream, 1), tmp_path / "one", progress=False, echo=lambda s: None
  )

  def echo(line):
    if line.startswith("[1]"):
      raise _Interrupt

  with pytest.raises(_Interrupt):
    runner.run_experiment(_smoke(stream, 4), tmp_path / "four", progress=False, echo=echo)
  log = []
  four = runner.run_experiment(
    _smoke(stream, 4), tmp_path / "four", resume=True, progress=False, echo=log.append
  )
  assert log[0].startswith(f"resuming {tmp_path / 'four'} at request 1 of 3")
  assert [q["request"] for q in four["methods"]["ugclu"]["requests"]] == stream.split()
  for name in one["methods"]:
    for a, b in zip(
      one["methods"][name]["requests"], four["methods"][name]["requests"], strict=True
    ):
      for key in ("forget_acc", "remain_acc", "test_acc"):
        if a["metrics"][key] is not None:
          assert abs(a["metrics"][key] - b["metrics"][key]) < 0.03, (name, a["request"], key)
  assert four["methods"]["retrain"]["requests"][1]["metrics"]["forget_acc"] < 0.05
  assert four["methods"]["ugclu"]["requests"][1]["metrics"]["forget_acc"] < 0.3


@pytest.mark.parametrize(
  "devices, batch, match",
  [
    (8, 32, r"train.devices=8: this machine has 4 local device\(s\)"),
    (3, 32, r"data.batch_size=32 does not split over train.devices=3"),
    (0, 30, r"data.batch_size=30 does not split over train.devices=4"),
  ],
)
def test_bad_device_counts_are_refused_before_any_work(tmp_path, devices, batch, match):
  cfg = _smoke("L:t0", devices)
  cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=batch))
  with pytest.raises(runner.RunError, match=match):
    runner.run_experiment(cfg, tmp_path / "bad", progress=False, echo=lambda s: None)
  assert not (tmp_path / "bad").exists()
