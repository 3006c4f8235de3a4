"""Tests for the NNX models and their pure-function interface."""

import functools

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
import numpy as np
import optax
import pytest
from flax import nnx

from ugclu_jax.models import ApplyFn
from ugclu_jax.models import MLP
from ugclu_jax.models import ResNet18
from ugclu_jax.models import SmallCNN
from ugclu_jax.models import as_functional
from ugclu_jax.models import count_params
from ugclu_jax.models import get_model

# Parameter count of the CIFAR ResNet-18 with 10 classes (the figure PyTorch
# reports for the same architecture).
_RESNET18_CIFAR10_PARAMS = 11_173_962

# On this CPU, XLA's LLVM optimisation passes dominate the test time (a random
# initialiser compiles ~10x faster without them, ResNet-18's HVP ~3x). The tests
# check semantics, not generated-code speed, so they compile unoptimised.
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _init(make):
  """Builds ``make(rngs)`` with its initialisers run as one unoptimised jit."""
  abstract = nnx.eval_shape(lambda: make(nnx.Rngs(0)))
  graphdef = nnx.graphdef(abstract)
  state = _jit(lambda: nnx.state(make(nnx.Rngs(0))))()
  return nnx.merge(graphdef, state)


def _xent(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _vdot(a, b):
  """Tree inner product, accumulated on the host in float64."""
  return sum(
    np.vdot(np.asarray(x, np.float64), np.asarray(y, np.float64))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def _all_finite(tree):
  return all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(tree))


def _random_like(tree, rng):
  return jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape, dtype=a.dtype)), tree)


@pytest.fixture(scope="module")
def resnet():
  model = _init(
    lambda rngs: get_model("resnet18", num_classes=10, input_shape=(32, 32, 3), rngs=rngs)
  )
  apply_fn, params, stats = as_functional(model)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)
  return apply_fn, params, stats, x


@pytest.fixture(scope="module")
def resnet_hvp(resnet):
  """Forward-over-reverse through ResNet-18 in train mode, along u and along v."""
  apply_fn, params, stats, x = resnet
  y = jnp.array([3, 7])

  def loss(params):
    logits, new_stats = apply_fn(params, stats, x, train=True)
    return _xent(logits, y), new_stats

  @_jit
  def hvp_with_aux(params, v):
    return jax.jvp(jax.grad(loss, has_aux=True), (params,), (v,))

  rng = np.random.default_rng(2)
  u, v = _random_like(params, rng), _random_like(params, rng)
  return u, v, hvp_with_aux(params, u), hvp_with_aux(params, v)


@pytest.fixture(scope="module")
def cnn():
  model = _init(lambda rngs: get_model("cnn", num_classes=10, input_shape=(28, 28, 1), rngs=rngs))
  return model, *as_functional(model)


# ---------------------------------------------------------------- shapes, counts


def test_mlp_output_shape_and_default_float32():
  model = _init(lambda rngs: get_model("mlp", num_classes=10, input_shape=(8, 8, 1), rngs=rngs))
  apply_fn, params, state = as_functional(model)
  logits, new_state = _jit(apply_fn, static_argnames="train")(
    params, state, jnp.ones((3, 8, 8, 1)), train=True
  )
  assert logits.shape == (3, 10) and logits.dtype == jnp.float32
  assert state == {} and new_state == {}
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  assert [params["hidden"][i]["kernel"].shape for i in (0, 1)] == [(64, 256), (256, 256)]
  assert params["head"]["kernel"].shape == (256, 10)


def test_cnn_output_shape_28x28_and_8x8(cnn):
  _, apply_fn, params, state = cnn
  logits, _ = _jit(apply_fn, static_argnames="train")(
    params, state, jnp.ones((2, 28, 28, 1)), train=False
  )
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert state == {}
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  small = nnx.eval_shape(
    lambda: get_model("cnn", num_classes=3, input_shape=(8, 8, 2), rngs=nnx.Rngs(1))
  )
  apply_small, params_small, state_small = as_functional(small)
  out = jax.eval_shape(
    lambda p: apply_small(p, state_small, jnp.ones((4, 8, 8, 2)), train=True)[0], params_small
  )
  assert out.shape == (4, 3)
  assert params_small["dense"]["kernel"].shape == (2 * 2 * 64, 128)


def test_input_shape_errors():
  with pytest.raises(ValueError, match="at least 4x4"):
    SmallCNN(10, input_size=(3, 28), rngs=nnx.Rngs(0))
  mlp = nnx.eval_shape(lambda: MLP(12, 2, hidden=(), rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="12 features"):
    mlp(jnp.ones((2, 2, 2, 2)))
  resnet = nnx.eval_shape(lambda: ResNet18(10, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
    resnet(jnp.ones((2, 8, 8, 1)))
  with pytest.raises(ValueError, match="hidden widths"):
    MLP(12, 2, hidden=(4, 0), rngs=nnx.Rngs(0))


def test_count_params_hand_computed(cnn):
  mlp = nnx.eval_shape(lambda: MLP(4, 3, hidden=(5,), rngs=nnx.Rngs(0)))
  assert count_params(as_functional(mlp)[1]) == (4 * 5 + 5) + (5 * 3 + 3)
  _, _, params, _ = cnn
  expected = (
    (9 * 1 * 32 + 32)  # conv1
    + (9 * 32 * 64 + 64)  # conv2
    + (7 * 7 * 64 * 128 + 128)  # dense on the 7x7x64 map
    + (128 * 10 + 10)  # head
  )
  assert count_params(params) == expected


def test_resnet18_param_count_and_output_shape(resnet):
  apply_fn, params, stats, x = resnet
  assert count_params(params) == _RESNET18_CIFAR10_PARAMS
  # Running mean and variance of the 4800 batch-norm channels.
  assert count_params(stats) == 2 * 4800
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  assert params["conv1"]["kernel"].shape == (3, 3, 3, 64) and "bias" not in params["conv1"]
  assert params["layer2"][0]["shortcut"]["conv"]["kernel"].shape == (1, 1, 64, 128)
  assert "shortcut" not in params["layer2"][1]
  assert "shortcut" not in params["layer1"][0]
  abstract = nnx.eval_shape(lambda: ResNet18(10, rngs=nnx.Rngs(0)))
  assert count_params(nnx.state(abstract, nnx.Param)) == _RESNET18_CIFAR10_PARAMS
  out = jax.eval_shape(lambda p, s: apply_fn(p, s, x, train=True), params, stats)
  assert out[0].shape == (2, 10)
  assert jax.tree.structure(out[1]) == jax.tree.structure(stats)


# ----------------------------------------------------------------- batch norm


def test_resnet18_train_mode_updates_batch_stats(resnet, resnet_hvp):
  apply_fn, params, stats, x = resnet
  _, _, ((grads, new_stats), _), _ = resnet_hvp
  del apply_fn, grads
  assert jax.tree.structure(new_stats) == jax.tree.structure(stats)
  changed = jax.tree.map(
    lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), new_stats, stats
  )
  assert all(jax.tree.leaves(changed))
  # Stem batch norm: running = 0.9 running + 0.1 batch (biased variance).
  stem = np.asarray(
    _jit(
      functools.partial(
        jax.lax.conv_general_dilated,
        window_strides=(1, 1),
        padding=((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
      )
    )(x, params["conv1"]["kernel"]),
    np.float64,
  )
  np.testing.assert_allclose(
    new_stats["bn1"]["mean"],
    0.9 * stats["bn1"]["mean"] + 0.1 * stem.mean(axis=(0, 1, 2)),
    rtol=1e-4,
    atol=1e-6,
  )
  np.testing.assert_allclose(
    new_stats["bn1"]["var"],
    0.9 * stats["bn1"]["var"] + 0.1 * stem.var(axis=(0, 1, 2)),
    rtol=1e-4,
    atol=1e-6,
  )


def test_resnet18_eval_mode_uses_running_stats(resnet):
  apply_fn, params, stats, x = resnet
  # Running statistics away from their (0, 1) initial values.
  rng = np.random.default_rng(3)
  stats = {
    **stats,
    "bn1": {
      "mean": jnp.asarray(0.1 * rng.standard_normal(64), jnp.float32),
      "var": jnp.asarray(rng.uniform(0.5, 1.5, 64), jnp.float32),
    },
  }
  evaluate = _jit(functools.partial(apply_fn, train=False))
  logits, same_stats = evaluate(params, stats, x)
  assert logits.shape == (2, 10) and _all_finite(logits)
  assert float(jnp.abs(logits).min()) > 0
  jax.tree.map(np.testing.assert_array_equal, same_stats, stats)
  # Per-example and deterministic: changing example 1 leaves example 0 as is.
  logits2, _ = evaluate(params, stats, x.at[1].multiply(-3.0))
  np.testing.assert_array_equal(logits2[0], logits[0])
  assert not np.allclose(logits2[1], logits[1])
  np.testing.assert_array_equal(evaluate(params, stats, x)[0], logits)
  # With other running statistics the same input gives other logits.
  shifted = jax.tree.map(lambda a: jnp.asarray(np.asarray(a) * 1.5 + 0.1, a.dtype), stats)
  assert not np.allclose(evaluate(params, shifted, x)[0], logits)
  assert evaluate._cache_size() == 1


class _DenseBN(nnx.Module):
  def __init__(self, *, rngs):
    self.dense = nnx.Linear(3, 4, rngs=rngs)
    self.bn = nnx.BatchNorm(4, momentum=0.9, rngs=rngs)

  def __call__(self, x, *, train=False):
    return self.bn(self.dense(x), use_running_average=not train)


def test_eval_returns_the_given_state_and_train_leaves_it_untouched():
  model = _DenseBN(rngs=nnx.Rngs(0))
  apply_fn, params, state = as_functional(model)
  x = jnp.arange(6.0).reshape(2, 3)
  eval_logits, same = apply_fn(params, state, x, train=False)
  assert same is state
  train_logits, updated = apply_fn(params, state, x, train=True)
  assert not np.allclose(updated["bn"]["mean"], 0.0)
  # Train mode normalises with batch statistics: every column has mean 0.
  np.testing.assert_allclose(train_logits.mean(axis=0), 0.0, atol=1e-5)
  assert not np.allclose(eval_logits, train_logits)
  with pytest.raises(ValueError, match="train must be a Python bool"):
    apply_fn(params, state, x, train=jnp.array(True))
  # Neither the state pytree nor the original module was mutated.
  np.testing.assert_array_equal(state["bn"]["mean"], np.zeros(4))
  np.testing.assert_array_equal(model.bn.mean.get_value(), np.zeros(4))


# ------------------------------------------------------------------- autodiff


def test_cnn_grad_and_hvp_match_finite_differences(x64):
  del x64
  model = _init(
    lambda rngs: get_model(
      "cnn", num_classes=3, input_shape=(8, 8, 1), rngs=rngs, param_dtype=jnp.float64
    )
  )
  apply_fn, params, state = as_functional(model)
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((4, 8, 8, 1)))
  y = jnp.array([0, 1, 2, 1])

  def loss(params):
    return _xent(apply_fn(params, state, x, train=True)[0], y)

  grad_fn = jax.grad(loss)
  idx, eps = (1, 2, 0, 5), 1e-6
  e = jax.tree.map(jnp.zeros_like, params)  # the coordinate conv1.kernel[idx]
  e["conv1"]["kernel"] = e["conv1"]["kernel"].at[idx].set(1.0)
  v = _random_like(params, rng)

  @_jit
  def probe(t):
    """Loss at params + t e; gradient and HVP along v at params + t v."""
    shift = lambda d: jax.tree.map(lambda p, di: p + t * di, params, d)
    return loss(shift(e)), jax.jvp(grad_fn, (shift(v),), (v,))

  _, (grads, hv) = probe(0.0)
  assert grads["conv1"]["kernel"].dtype == hv["conv1"]["kernel"].dtype == jnp.float64
  (loss_plus, (g_plus, _)), (loss_minus, (g_minus, _)) = probe(eps), probe(-eps)

  # One coordinate direction: d loss / d conv1.kernel[1, 2, 0, 5].
  fd = (loss_plus - loss_minus) / (2 * eps)
  assert abs(float(fd)) > 1e-4  # not a vacuous comparison
  np.testing.assert_allclose(grads["conv1"]["kernel"][idx], fd, rtol=1e-6)

  # Forward-over-reverse HVP against central differences of the gradient.
  fd_hv = jax.tree.map(lambda a, b: (a - b) / (2 * eps), g_plus, g_minus)
  for a, b in zip(jax.tree.leaves(hv), jax.tree.leaves(fd_hv)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_resnet18_forward_over_reverse_in_train_mode(resnet, resnet_hvp):
  _, params, stats, _ = resnet
  u, v, ((grads, new_stats), (hu, _)), ((_, new_stats_v), (hv, _)) = resnet_hvp
  assert jax.tree.structure(hv) == jax.tree.structure(params)
  assert jax.tree.structure(grads) == jax.tree.structure(params)
  assert _all_finite((grads, hu, hv))
  # The caller's state is not touched: it still holds the initial statistics
  # (mean 0, var 1), and both calls return the same updated statistics as aux.
  for path, leaf in jax.tree_util.tree_leaves_with_path(stats):
    np.testing.assert_array_equal(leaf, np.full(leaf.shape, path[-1].key == "var"))
  jax.tree.map(np.testing.assert_array_equal, new_stats, new_stats_v)
  # The Hessian is symmetric: <u, H v> == <v, H u> up to float32 rounding.
  uhv, vhu = _vdot(u, hv), _vdot(v, hu)
  assert abs(uhv) > 1e-3
  np.testing.assert_allclose(uhv, vhu, rtol=1e-3)


# ------------------------------------------------------- jit, hashing, registry


def test_apply_fn_is_hashable_and_never_retraces(cnn):
  model, apply_fn, params, state = cnn
  apply_again, _, _ = as_functional(model)
  assert isinstance(apply_fn, ApplyFn)
  assert apply_again == apply_fn and hash(apply_again) == hash(apply_fn)

  traces = []

  def step(apply_fn, params, state, x):
    traces.append(None)
    return apply_fn(params, state, x, train=True)

  step = _jit(step, static_argnums=0)
  x = jnp.zeros((2, 28, 28, 1))
  first, _ = step(apply_fn, params, state, x)
  second, _ = step(apply_again, params, state, x + 1.0)
  assert len(traces) == 1
  assert not np.allclose(first, second)

  jitted = _jit(apply_fn, static_argnames="train")
  jitted(params, state, x, train=False)
  jitted(params, state, x + 2.0, train=False)
  assert jitted._cache_size() == 1


def test_get_model_unknown_name():
  with pytest.raises(ValueError, match="valid names: cnn, mlp, resnet18") as err:
    get_model("vgg", num_classes=10, input_shape=(32, 32, 3), rngs=nnx.Rngs(0))
  assert "\n" not in str(err.value) and "'vgg'" in str(err.value)


def test_get_model_bad_arguments():
  with pytest.raises(ValueError, match="input_shape"):
    get_model("mlp", num_classes=10, input_shape=(28, 28), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="num_classes"):
    get_model("mlp", num_classes=0, input_shape=(28, 28, 1), rngs=nnx.Rngs(0))


def test_mlp_float64_under_x64(x64):
  del x64
  model = _init(lambda rngs: MLP(4, 3, hidden=(5,), param_dtype=jnp.float64, rngs=rngs))
  apply_fn, params, state = as_functional(model)
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float64)}
  x = jnp.asarray(np.random.default_rng(4).standard_normal((3, 2, 2, 1)))
  y = jnp.array([0, 1, 2])

  def loss(params):
    return _xent(apply_fn(params, state, x, train=False)[0], y)

  logits, _ = apply_fn(params, state, x, train=False)
  assert logits.dtype == jnp.float64

  @_jit
  def dense_hessian_and_hvp(params, v):
    flat, unravel = ravel_pytree(params)
    dense = jax.hessian(lambda f: loss(unravel(f)))(flat)
    hv = jax.jvp(jax.grad(loss), (params,), (v,))[1]
    return dense @ ravel_pytree(v)[0], ravel_pytree(hv)[0]

  # Forward-over-reverse against the dense Hessian, at float64 precision.
  v = _random_like(params, np.random.default_rng(5))
  expected, hv = dense_hessian_and_hvp(params, v)
  assert hv.dtype == jnp.float64
  np.testing.assert_allclose(hv, expected, rtol=1e-10, atol=1e-12)
  # get_model passes the dtype through as well.
  abstract = nnx.eval_shape(
    lambda: get_model(
      "mlp", num_classes=2, input_shape=(2, 2, 1), rngs=nnx.Rngs(0), param_dtype=jnp.float64
    )
  )
  assert {p.dtype for p in jax.tree.leaves(nnx.state(abstract, nnx.Param))} == {
    jnp.dtype(jnp.float64)
  }


def test_cnn_pool_matches_nnx_max_pool():
  from ugclu_jax.models.cnn import _max_pool_2x2

  for shape in [(2, 28, 28, 3), (2, 7, 7, 4), (1, 9, 6, 2)]:
    x = jax.random.normal(jax.random.key(0), shape)
    expected = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))
    np.testing.assert_array_equal(_max_pool_2x2(x), expected)
