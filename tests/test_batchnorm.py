"""Batch-norm statistics: updated by training forwards only, never by the HVP or evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import ugclu_jax as ug
from ugclu_jax import evaluation
from ugclu_jax.models import as_functional


class _BNNet(nnx.Module):
  def __init__(self, *, rngs):
    self.dense = nnx.Linear(16, 12, rngs=rngs)
    self.bn = nnx.BatchNorm(12, momentum=0.9, rngs=rngs)
    self.head = nnx.Linear(12, 4, rngs=rngs)

  def __call__(self, x, *, train=False):
    h = self.bn(self.dense(x.reshape(x.shape[0], -1)), use_running_average=not train)
    return self.head(nnx.relu(h))


def _batch(seed):
  kx, ky = jax.random.split(jax.random.key(seed))
  return ug.Batch(
    jax.random.normal(kx, (8, 4, 4, 1)) + seed, jax.random.randint(ky, (8,), 0, 4), jnp.ones(8)
  )


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_hvp_mode_updates_bn_like_none_mode():
  apply_fn, params, mstate = as_functional(_BNNet(rngs=nnx.Rngs(0)))
  hp = ug.RequestHParams.create(learning_rate=0.1, a_target=1.0, beta=0.5, num_iterations=4)
  tx = ug.build_optimizer(learning_rate=0.1)
  out = {}
  for mode in ("none", "hvp"):
    steps = ug.make_steps(apply_fn, tx, kind="unlearn", mode=mode)
    state = ug.init_train_state(params, mstate, tx)
    state, _ = steps.fused(state, _batch(1), _batch(2), None, hp)
    out[mode] = state.model_state
  # Both modes run the same two training forwards (target, then remain); the
  # HVP's own forward passes leave the statistics alone.
  for a, b in zip(_leaves(out["none"]), _leaves(out["hvp"])):
    np.testing.assert_array_equal(a, b)
  # And the training forwards did update them.
  assert any(not np.array_equal(a, b) for a, b in zip(_leaves(mstate), _leaves(out["hvp"])))


def test_evaluation_never_updates_bn():
  apply_fn, params, mstate = as_functional(_BNNet(rngs=nnx.Rngs(0)))
  before = _leaves(mstate)
  fn = evaluation.make_output_fn(apply_fn)
  x = np.random.default_rng(0).integers(0, 255, (30, 4, 4, 1)).astype(np.uint8)
  y = np.arange(30) % 4
  out = evaluation.outputs(fn, params, mstate, x, y, np.arange(30), 16, 4)
  assert out.correct.shape == (30,) and out.probs.shape == (30, 4)
  for a, b in zip(before, _leaves(mstate)):
    np.testing.assert_array_equal(a, b)
  # Padding does not change the outputs of real examples (eval mode is per-example).
  small = evaluation.outputs(fn, params, mstate, x, y, np.arange(30), 7, 4)
  np.testing.assert_allclose(small.probs, out.probs, rtol=1e-5, atol=1e-6)
