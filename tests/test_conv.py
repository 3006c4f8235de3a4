"""The CPU convolution (kernel gradient as a patch GEMM) against lax.conv_general_dilated."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import export, lax

from ugclu_jax.models import as_functional, get_model
from ugclu_jax.models.conv import conv_general_dilated

NHWC = ("NHWC", "HWIO", "NHWC")


def _pair(kernel_hw, padding, seed=0):
  kx, kk = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(kx, (3, 7, 6, 4))
  k = jax.random.normal(kk, (*kernel_hw, 4, 5))

  def ours(x, k):
    return conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=NHWC)

  def ref(x, k):
    return lax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=NHWC)

  return x, k, ours, ref


CASES = [((3, 3), "SAME"), ((1, 1), [(0, 0), (0, 0)]), ((5, 3), [(2, 2), (0, 1)])]


@pytest.mark.parametrize("kernel_hw,padding", CASES)
def test_values_gradients_and_hvp_match_lax(kernel_hw, padding):
  # float32: the two formulations sum the same products in different orders.
  x, k, ours, ref = _pair(kernel_hw, padding)
  np.testing.assert_allclose(jax.jit(ours)(x, k), jax.jit(ref)(x, k), rtol=1e-5, atol=1e-5)

  def loss(conv):
    return lambda x, k: jnp.sum(jnp.tanh(conv(x, k)) ** 2)

  g_ours = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(x, k)
  g_ref = jax.jit(jax.grad(loss(ref), argnums=(0, 1)))(x, k)
  for a, b in zip(g_ours, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)

  # Forward-over-reverse (the hvp mode's ugclu_jax.hvp), in both inputs.
  vx, vk = jnp.cos(x), jnp.sin(k)

  @jax.jit
  def hvps(x, k, vx, vk):
    return [
      jax.jvp(jax.grad(loss(conv), argnums=(0, 1)), (x, k), (vx, vk))[1] for conv in (ours, ref)
    ]

  for a, b in zip(*hvps(x, k, vx, vk)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_other_convolutions_are_lax_itself():
  x = jnp.ones((2, 8, 8, 3))
  k = jnp.ones((3, 3, 3, 4))
  for args, kw in [
    (((2, 2), [(1, 1), (1, 1)]), {}),  # strided
    (((1, 1), [(1, 1), (1, 1)]), {"lhs_dilation": (2, 2)}),  # transposed
    (((1, 1), [(2, 2), (2, 2)]), {"rhs_dilation": (2, 2)}),
  ]:
    out = conv_general_dilated(x, k, *args, dimension_numbers=NHWC, **kw)
    ref = lax.conv_general_dilated(x, k, *args, dimension_numbers=NHWC, **kw)
    np.testing.assert_array_equal(out, ref)


def _counts(platform):
  x = jnp.ones((2, 8, 8, 3))
  k = jnp.ones((3, 3, 3, 4))

  def f(x, k):
    y = conv_general_dilated(x, k, (1, 1), [(1, 1), (1, 1)], dimension_numbers=NHWC)
    return jnp.sum(y**2)

  text = export.export(jax.jit(jax.grad(f, argnums=(0, 1))), platforms=[platform])(x, k)
  text = text.mlir_module()
  return text.count("stablehlo.convolution"), text.count("stablehlo.dot_general")


def test_the_formulation_is_chosen_per_backend_when_lowering():
  # CPU: forward and input-gradient convolutions, the kernel gradient a GEMM.
  assert _counts("cpu") == (2, 1)
  # Elsewhere lax's own three convolutions (forward, input and kernel gradients).
  assert _counts("cuda") == (3, 0)
  assert _counts("tpu") == (3, 0)


def test_small_cnn_takes_its_kernel_gradients_as_gemms_on_cpu():
  apply_fn, params, state = as_functional(
    get_model("cnn", num_classes=10, input_shape=(8, 8, 1), rngs=nnx.Rngs(0))
  )
  x = jnp.ones((4, 8, 8, 1))

  def loss(p):
    return jnp.sum(apply_fn(p, state, x, train=True)[0] ** 2)

  text = jax.jit(jax.grad(loss)).lower(params).as_text()
  # Two forward convolutions and conv2's input gradient; no kernel-gradient convolution.
  assert text.count("stablehlo.convolution") == 3
