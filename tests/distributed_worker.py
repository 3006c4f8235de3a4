"""One process of tests/test_distributed.py's library-level check (not collected by pytest).

    python tests/distributed_worker.py PORT NUM_PROCESSES PROCESS_ID OUT.npz

Joins a run of NUM_PROCESSES local processes, plays :func:`play` on the mesh of
all their devices and saves what it returns, as this process sees it, to OUT.npz.
"""

import dataclasses
import json
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import ugclu_jax as ug
from ugclu_jax import config as C
from ugclu_jax import data as D
from ugclu_jax import evaluation as E
from ugclu_jax import parallel as PL
from ugclu_jax import runner
from ugclu_jax.checkpointing import PrimaryCheckpointer
from ugclu_jax.methods.base import make_fisher_fn, stacked_batches
from ugclu_jax.models import MLP, as_functional

B = 32  # Batch size: a multiple of every device count tested.


def _batches(ds, n, seed):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    idx = rng.choice(ds.y_train.size, B, replace=False)
    mask = np.ones(B, np.float32)
    mask[-3:] = 0.0  # Padding rows: the masked means must ignore them in every process.
    out.append(ug.Batch(D.to_float(ds.x_train[idx]), ds.y_train[idx].astype(np.int32), mask))
  return out


def play(mesh) -> dict:
  """A saliency mask from stacked batches, a 6-iteration UG-CLU unlearn request
  (:func:`ugclu_jax.run_request`) and the evaluation outputs, batches split over
  ``mesh`` (``None``: one device); host arrays."""
  ds = D.load_dataset("digits")
  model = MLP(in_features=64, num_classes=10, hidden=(32,), rngs=nnx.Rngs(0))
  apply_fn, params, model_state = as_functional(model)
  params, model_state = PL.replicate((params, model_state), mesh)
  fisher = make_fisher_fn(apply_fn)
  targets, remains = _batches(ds, 4, 1), _batches(ds, 6, 2)
  f_t = fisher(params, model_state, stacked_batches(lambda s: targets[s], 4, mesh))
  f_r = fisher(params, model_state, stacked_batches(lambda s: remains[s], 4, mesh))
  mask = ug.balanced_saliency_mask(f_t, f_r)
  tx = ug.build_optimizer(learning_rate=0.05, momentum=0.9, weight_decay=5e-4, sync_period=2)
  steps = ug.make_steps(apply_fn, tx, kind="unlearn", mode="fast_slow", temperature=0.5)
  hp = ug.RequestHParams.create(learning_rate=0.05, a_target=5.0, num_iterations=6)
  state, _ = ug.run_request(
    steps,
    ug.init_train_state(params, model_state, tx),
    mode="fast_slow",
    num_iterations=6,
    forget_freq=2,
    target_batch=lambda j: PL.shard_batch(targets[j], mesh),
    remain_batch=lambda k: PL.shard_batch(remains[k], mesh),
    mask=mask,
    hp=hp,
  )
  params, model_state = ug.finish_request(state)
  out = E.outputs(
    E.make_output_fn(apply_fn),
    params,
    model_state,
    ds.x_test,
    ds.y_test,
    np.arange(100),
    B,
    10,
    mesh,
  )
  tree = {"params": params, "fisher": f_t, "mask": mask, "probs": out.probs, "loss": out.features}
  leaves = jax.tree.leaves_with_path(PL.to_host(tree))
  return {re.sub(r"\W+", "_", jax.tree_util.keystr(k)).strip("_"): v for k, v in leaves}


def refusals() -> list:
  """The one-line errors of settings a run of several processes cannot take."""
  cfg = C.load_config("smoke")
  bad = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=31))
  lines = []
  for fn in (lambda: runner.prepare(bad), lambda: PL.data_mesh(2)):
    try:
      fn()
    except ValueError as e:
      lines.append(str(e))
  return lines


def main(port, num_processes, process_id, out):
  PL.initialize_distributed(f"localhost:{port}", int(num_processes), int(process_id))
  mesh = PL.data_mesh()
  rows = PL.process_rows(B, mesh)
  batch = PL.shard_batch(np.arange(3 * B).reshape(3, B), mesh, batch_axis=1)
  (shard,) = batch.addressable_shards  # One device per process: this process's rows only.
  np.testing.assert_array_equal(np.asarray(shard.data), np.arange(3 * B).reshape(3, B)[:, rows])
  result = play(mesh)
  result["rows"] = np.asarray([rows.start, rows.stop])
  result["mesh_devices"] = np.asarray(PL.num_shards(mesh))
  result["refusals"] = np.asarray(refusals())
  result["gathered"] = PL.to_host(jnp.sum(PL.shard_batch(np.arange(B), mesh)))
  # A checkpoint: gathered by all, written by process 0 alone, restored by all.
  tree = {
    "split": PL.shard_batch(np.arange(B, dtype=np.float32), mesh),
    "replicated": PL.replicate(np.ones((2, 3), np.float32), mesh),
    "mask": np.arange(5) % 2 == 0,
    "int64": np.arange(3, dtype=np.int64) + 2**40,
  }
  with PrimaryCheckpointer(out + ".ckpt") as ckpt:
    ckpt.save(1, tree, {"cursor": 1})
    step, restored, meta = ckpt.restore_latest_good(jax.tree.map(np.zeros_like, PL.to_host(tree)))
  result["restored_step"] = np.asarray(step)
  result["restored_meta"] = np.asarray(json.dumps(meta))
  result.update({f"restored_{k}": v for k, v in restored.items()})
  np.savez(out, **result)


if __name__ == "__main__":
  main(*sys.argv[1:])
