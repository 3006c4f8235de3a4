r"""A convolution whose kernel gradient is a matrix product on CPU.

XLA's CPU backend runs the kernel gradient of a convolution
(:math:`\partial L / \partial K`, itself a convolution of the input with the
output gradient) through a slow emitter, and inside a ``while`` loop (``lax.scan``,
``fori_loop``) slower still: a scanned Fisher pass over the small CNN cost 13-29
gradients per batch. The same gradient written as a GEMM over image patches
(im2col),

.. math::
   \frac{\partial L}{\partial K_{(i,j,c),o}} = \sum_{b,h,w}
   P(x)_{(b,h,w),(i,j,c)}\, \frac{\partial L}{\partial y_{b,h,w,o}},
   \qquad P(x)_{(b,h,w),(i,j,c)} = x^{pad}_{b,h+i,w+j,c},

runs at the speed of the rest of the step, in a loop body or not.

:func:`conv_general_dilated` is a drop-in replacement for
``jax.lax.conv_general_dilated`` (``nnx.Conv(..., conv_general_dilated=...)``).
The backend is chosen when the program is lowered
(``jax.lax.platform_dependent``): on CPU a 2-D, stride-1, undilated, ungrouped
NHWC/HWIO convolution keeps XLA's forward convolution and takes the tangent in
the kernel as the patch GEMM above (a ``jax.custom_jvp`` rule, so reverse mode,
forward mode and forward-over-reverse Hessian-vector products all work); every
other backend, and every other convolution, is ``lax.conv_general_dilated``
unchanged. The values are the same up to float rounding.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")


def _is_nhwc(dimension_numbers, ndim: int) -> bool:
  if ndim != 4 or dimension_numbers is None:
    return False
  want = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), _NHWC)
  got = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), dimension_numbers)
  return got == want


def _ones(v) -> bool:
  return v is None or all(int(s) == 1 for s in v)


def _patches(x: jax.Array, kernel_hw: tuple[int, int], padding) -> jax.Array:
  """``[B, H', W', kh*kw*C]``: the padded input's windows, ordered as an HWIO kernel's rows."""
  kh, kw = kernel_hw
  xp = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  h = xp.shape[1] - kh + 1
  w = xp.shape[2] - kw + 1
  return jnp.concatenate(
    [xp[:, i : i + h, j : j + w, :] for i in range(kh) for j in range(kw)], axis=-1
  )


def _conv(x, kernel, padding, precision):
  return lax.conv_general_dilated(
    x, kernel, (1, 1), padding, dimension_numbers=_NHWC, precision=precision
  )


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv_gemm_grad(x, kernel, padding, precision):
  return _conv(x, kernel, padding, precision)


@_conv_gemm_grad.defjvp
def _conv_gemm_grad_jvp(padding, precision, primals, tangents):
  x, kernel = primals
  dx, dkernel = tangents
  out = _conv_gemm_grad(x, kernel, padding, precision)
  kh, kw, cin, cout = kernel.shape
  # Linear in dx: the kernel handed over as HWOI, so that the transpose w.r.t. dx
  # (the input gradient) is again a convolution with an HWIO kernel, XLA CPU's fast form.
  t_x = lax.conv_general_dilated(
    dx,
    jnp.swapaxes(kernel, 2, 3),
    (1, 1),
    padding,
    dimension_numbers=("NHWC", "HWOI", "NHWC"),
    precision=precision,
  )
  # Linear in dkernel: a GEMM with the input's patches; its transpose (the kernel
  # gradient) is the GEMM P(x)^T dy.
  cols = _patches(x, (kh, kw), padding).reshape(-1, kh * kw * cin)
  t_k = jnp.matmul(cols, dkernel.reshape(kh * kw * cin, cout), precision=precision)
  return out, t_x + t_k.reshape(out.shape)


def conv_general_dilated(
  lhs: jax.Array,
  rhs: jax.Array,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count: int = 1,
  batch_group_count: int = 1,
  precision: Any = None,
  preferred_element_type: Any = None,
  **kwargs,
) -> jax.Array:
  """``lax.conv_general_dilated``, with the kernel gradient as a patch GEMM on CPU.

  Takes and returns exactly what ``lax.conv_general_dilated`` does. The CPU
  formulation applies to 2-D stride-1 convolutions without dilation or groups,
  in NHWC/HWIO layout, with any padding (a lax padding string or explicit pairs);
  anything else, and any non-CPU backend, is ``lax.conv_general_dilated`` itself.
  """
  args = (lhs, rhs, window_strides, padding)
  options = dict(
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    dimension_numbers=dimension_numbers,
    feature_group_count=feature_group_count,
    batch_group_count=batch_group_count,
    precision=precision,
    preferred_element_type=preferred_element_type,
    **kwargs,
  )
  plain = functools.partial(lax.conv_general_dilated, **options)
  fast = (
    _is_nhwc(dimension_numbers, jnp.ndim(lhs))
    and _ones(window_strides)
    and _ones(lhs_dilation)
    and _ones(rhs_dilation)
    and feature_group_count == 1
    and batch_group_count == 1
    and preferred_element_type is None
    and all(v is None for v in kwargs.values())
  )
  if not fast:
    return plain(*args)
  if isinstance(padding, str):  # "SAME", "VALID", ...: lax's own explicit pairs
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
  pad = tuple((int(lo), int(hi)) for lo, hi in padding)

  def on_cpu(x, kernel):
    return _conv_gemm_grad(x, kernel, pad, precision)

  return lax.platform_dependent(
    lhs, rhs, cpu=on_cpu, default=lambda x, k: plain(x, k, window_strides, pad)
  )
