"""Remaining-Hessian compensation: Hessian- and Gauss-Newton-vector products (docs/method.md §5).

Everything works on parameter pytrees: nothing is raveled and no Hessian is
ever formed.
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from ugclu_jax.types import Params, Updates


def hvp(loss_fn: Callable[[Params], jax.Array], params: Params, v: Updates) -> Updates:
  r"""Hessian-vector product :math:`H v = \nabla^2 L(\theta)\, v`, forward-over-reverse.

  .. math::
     H v = \frac{\partial}{\partial \epsilon} \nabla L(\theta + \epsilon v) \Big|_{\epsilon=0}
         = \texttt{jax.jvp}(\nabla L, (\theta,), (v,))[1]

  Costs about 1.6-2.4 gradients (docs/data.md §9), against ~13 for reverse-over-reverse.

  Args:
    loss_fn: scalar loss of the parameters (batch closed over).
    params: point :math:`\theta`.
    v: direction with the structure of ``params``.

  Returns:
    :math:`H v`, with the structure of ``params``.
  """
  _check_direction(params, v)
  return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


def _check_direction(params: Params, v: Updates) -> None:
  if jax.tree.structure(params) != jax.tree.structure(v):
    raise ValueError("the direction v must have the tree structure of params")
  for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(v)):
    if jnp.shape(p) != jnp.shape(t):
      raise ValueError(
        f"the direction v has a leaf of shape {jnp.shape(t)} where params has {jnp.shape(p)}"
      )


def ggn_vp(
  logits_fn: Callable[[Params], jax.Array],
  params: Params,
  v: Updates,
  *,
  weights: Optional[jax.Array] = None,
) -> Updates:
  r"""Gauss-Newton (Fisher) vector product for softmax cross-entropy.

  .. math::
     G v = \sum_i w_i\, J_i^\top \big(\mathrm{diag}(p_i) - p_i p_i^\top\big) J_i v,

  with :math:`J_i` the Jacobian of example i's logits and :math:`p_i` its
  softmax. Positive semi-definite; equals the Hessian of the mean
  cross-entropy minus the term with the logits' second derivatives.

  Args:
    logits_fn: ``logits_fn(params) -> [B, C]`` (batch closed over).
    params: point :math:`\theta`.
    v: direction.
    weights: optional ``[B]`` per-example weights; default ``1/B`` (the
      curvature of the mean loss). Use ``mask / mask.sum()`` for padded batches.
  """
  _check_direction(params, v)
  logits, jv = jax.jvp(logits_fn, (params,), (v,))
  if logits.ndim != 2:
    raise ValueError(f"logits_fn must return [batch, classes], got {logits.shape}")
  if weights is None:
    weights = jnp.full(logits.shape[:1], 1.0 / logits.shape[0], logits.dtype)
  p = jax.nn.softmax(logits)
  h_jv = p * jv - p * jnp.sum(p * jv, axis=-1, keepdims=True)
  h_jv = h_jv * weights[:, None].astype(h_jv.dtype)
  _, vjp_fn = jax.vjp(logits_fn, params)
  return vjp_fn(h_jv)[0]


def compensate(
  direction: Updates,
  hvp_fn: Callable[[Updates], Updates],
  *,
  beta: float | jax.Array,
  order: int = 1,
  damping: float | jax.Array = 0.0,
) -> Updates:
  r"""Remaining-Hessian compensation of a target direction.

  ``order = 1`` (first order, the explicit form of the fast-slow step):

  .. math:: \tilde d = d - \beta (H_R + \delta I) d

  ``order = J > 1`` (truncated, damped Neumann series):

  .. math::
     \tilde d = \beta \sum_{j=0}^{J} \big(I - \beta (H_R + \delta I)\big)^j d
     \;\longrightarrow\; (H_R + \delta I)^{-1} d \quad (J \to \infty),

  which converges when :math:`\beta(\lambda_{max} + \delta) < 1` and
  :math:`\lambda_{min} + \delta > 0`. The loop is a ``lax.fori_loop``: one
  HVP per term, constant compile time in ``J``.

  Args:
    direction: :math:`d`, a pytree.
    hvp_fn: ``v -> H_R v`` (e.g. ``functools.partial(hvp, loss_R, params)``).
    beta: :math:`\beta`.
    order: 1 for the first-order form, ``J >= 2`` for the series.
    damping: :math:`\delta \ge 0`.

  Returns:
    :math:`\tilde d`, with the structure and dtypes of ``direction``.
  """
  if not isinstance(order, int) or order < 1:
    raise ValueError(f"order must be an integer >= 1, got {order!r}")

  def damped(v):
    return optax.tree.add_scale(hvp_fn(v), damping, v)

  def cast_like(tree):
    return jax.tree.map(lambda t, d: t.astype(d.dtype), tree, direction)

  if order == 1:
    return cast_like(optax.tree.add_scale(direction, -beta, damped(direction)))

  def body(_, carry):
    term, acc = carry
    term = cast_like(optax.tree.add_scale(term, -beta, damped(term)))
    return term, cast_like(optax.tree.add(acc, term))

  _, acc = jax.lax.fori_loop(0, order, body, (direction, direction))
  return cast_like(optax.tree.scale(beta, acc))
