"""Per-request evaluation of a model against the sets of ALGORITHM.md §9.

Model outputs are computed by one jitted function on fixed-shape, padded,
masked batches; the metrics themselves are the pure functions of
:mod:`ugclu_jax.metrics` and :mod:`ugclu_jax.mia`.
"""

from typing import NamedTuple, Optional

import jax
import numpy as np

from ugclu_jax import metrics as M
from ugclu_jax import mia
from ugclu_jax.data import eval_batches
from ugclu_jax.parallel import shard_batch


class Outputs(NamedTuple):
  """Per-example outputs of a model on a set (padding dropped)."""
  correct: np.ndarray      # [n] float 0/1
  probs: np.ndarray        # [n, C]
  features: mia.MIAFeatures


def make_output_fn(apply_fn):
  """Jitted ``(params, model_state, batch) -> (correct, probs, MIAFeatures)``, eval mode."""

  @jax.jit
  def fn(params, model_state, batch):
    logits, _ = apply_fn(params, model_state, batch.x, train=False)
    return (M.correct(logits, batch.y), jax.nn.softmax(logits),
            mia.mia_features(logits=logits, labels=batch.y, mask=batch.mask))

  return fn


def outputs(output_fn, params, model_state, x, y, indices, batch_size: int,
            num_classes: int, mesh=None) -> Outputs:
  """Outputs of the model on ``x[indices]`` (any size, padded batches).

  With a ``mesh``, each batch is split over its devices.
  """
  indices = np.asarray(indices, np.int64)
  if indices.size == 0:
    empty = np.zeros((0,), np.float32)
    return Outputs(empty, np.zeros((0, num_classes), np.float32),
                   mia.MIAFeatures(empty, empty, empty))
  corrects, probs, feats = [], [], []
  for batch in eval_batches(x, y, indices, batch_size):
    c, p, f = output_fn(params, model_state, shard_batch(batch, mesh))
    real = np.asarray(batch.mask) > 0
    corrects.append(np.asarray(c)[real])
    probs.append(np.asarray(p)[real])
    feats.append(jax.tree.map(lambda a: np.asarray(a)[real], f))
  return Outputs(np.concatenate(corrects), np.concatenate(probs),
                 jax.tree.map(lambda *a: np.concatenate(a), *feats))


def subsample(indices: np.ndarray, max_size: int, seed) -> np.ndarray:
  """A seeded, sorted subsample of at most ``max_size`` indices (all when smaller)."""
  indices = np.asarray(indices, np.int64)
  if indices.size <= max_size:
    return indices
  return np.sort(np.random.default_rng(seed).choice(indices, max_size, replace=False))


def request_metrics(*, forget: Optional[Outputs], remain: Outputs, test: Outputs,
                    mia_variant: str, seed: int) -> dict:
  """FA, RA, TA and MIA efficacy of one model after one request (None where undefined)."""
  out = {
      "forget_acc": M.forget_acc(forget.correct) if forget is not None else None,
      "remain_acc": M.remain_acc(remain.correct),
      "test_acc": M.test_acc(test.correct),
      "mia_efficacy": None,
  }
  if forget is not None and forget.correct.size:
    out["mia_efficacy"] = mia.mia_efficacy(
        remain_features=remain.features, test_features=test.features,
        forget_features=forget.features, variant=mia_variant, seed=seed)
  return out


def oracle_metrics(metrics: dict, oracle: Optional[dict], forget: Optional[Outputs],
                   oracle_forget: Optional[Outputs]) -> dict:
  """``avg_gap``, ``js_div`` and ``kl_div`` against the oracle (None without one)."""
  if oracle is None or forget is None or oracle_forget is None:
    return {"avg_gap": None, "js_div": None, "kl_div": None}
  return {"avg_gap": M.avg_gap(metrics, oracle),
          "js_div": M.js_div(oracle_forget.probs, forget.probs),
          "kl_div": M.kl_div(oracle_forget.probs, forget.probs)}


def task_accuracies(test: Outputs, test_labels: np.ndarray, tasks, learned_classes) -> list:
  """Test accuracy per task over its still-learned classes (None where none is learned)."""
  row = []
  learned = set(int(c) for c in learned_classes)
  for task in tasks:
    classes = [c for c in task if c in learned]
    sel = np.isin(test_labels, classes) if classes else np.zeros_like(test_labels, bool)
    row.append(M.accuracy(test.correct[sel]) if sel.any() else None)
  return row
