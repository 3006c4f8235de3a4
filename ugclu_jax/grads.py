r"""The four gradient components of one UG-CLU update (docs/method.md §2).

.. math::
   g = a_L \nabla L_L + a_R \nabla L_R
       + a_U \big( \underbrace{-\nabla L_U^w}_{\text{unlearn}}
       + \underbrace{(M - 1) \odot (-\nabla L_U^w)}_{\text{saliency modulation}} \big)

The unlearn and modulation parts sum to the masked ascent direction
:math:`-M \odot \nabla L_U^w`. Each component is returned separately so users
can recombine them (:func:`combine`). :func:`joint_direction`, the sum of a
target direction and the scaled (optionally clipped) preserve gradient, is
the one place this sum is formed: :func:`combine` and the jitted steps'
compensated update (:func:`ugclu_jax.steps.compensated_update`) both call it.
"""

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from ugclu_jax import objectives
from ugclu_jax.types import Batch, ModelState, Params

# apply_fn(params, model_state, x, *, train) -> (logits, new_model_state)
ApplyFn = Callable[..., tuple[jax.Array, ModelState]]


class CLUGrads(NamedTuple):
  """The four components; each has the structure of the parameters.

  Attributes:
    learn: :math:`\\nabla L_L` (descent on new data).
    unlearn: :math:`-\\nabla L_U^w` (descent direction of the weighted ascent).
    preserve: :math:`\\nabla L_R` (descent on remaining data).
    saliency: :math:`(M - 1) \\odot (-\\nabla L_U^w)`, zero where ``M = 1``.
  """

  learn: Params
  unlearn: Params
  preserve: Params
  saliency: Params


class CLULosses(NamedTuple):
  """Scalar losses at the current parameters (for logging); 0 for absent batches."""

  learn: jax.Array
  unlearn: jax.Array
  preserve: jax.Array


def batch_loss(
  apply_fn: ApplyFn, loss: Callable[..., jax.Array], *, train: bool, **loss_kwargs
) -> Callable[[Params, ModelState, Batch], tuple[jax.Array, ModelState]]:
  """Turns a logits loss into ``(params, model_state, batch) -> (loss, new_model_state)``."""

  def fn(params, model_state, batch):
    logits, new_state = apply_fn(params, model_state, batch.x, train=train)
    return loss(logits=logits, labels=batch.y, mask=batch.mask, **loss_kwargs), new_state

  return fn


def clu_gradients(
  apply_fn: ApplyFn,
  params: Params,
  model_state: ModelState,
  *,
  learn: Optional[Batch] = None,
  unlearn: Optional[Batch] = None,
  remain: Optional[Batch] = None,
  saliency_mask: Optional[Params] = None,
  unlearn_temperature: float = 0.5,
  learn_temperature: float = 0.0,
  train: bool = True,
) -> tuple[CLUGrads, CLULosses, ModelState]:
  r"""Computes the learn, unlearn, preserve and saliency components with ``jax.grad``.

  Args:
    apply_fn: ``apply_fn(params, model_state, x, *, train) -> (logits, state)``.
    params: current parameters :math:`\theta`.
    model_state: non-trainable state (batch-norm statistics), threaded through
      the learn, unlearn and remain forward passes in that order.
    learn: batch of new data :math:`D_L`, or None (component is zero).
    unlearn: batch of forget data :math:`D_U`, or None.
    remain: batch of remaining data :math:`D_R`, or None.
    saliency_mask: 0/1 pytree :math:`M`; None means :math:`M = 1`.
    unlearn_temperature: :math:`\lambda` of the adaptive forget weights.
    learn_temperature: weights of the learn term (0: uniform).
    train: forward mode (batch-norm batch statistics when True).

  Returns:
    ``(CLUGrads, CLULosses, new_model_state)``.
  """
  zeros = optax.tree.zeros_like(params)
  zero = jnp.zeros((), jnp.float32)

  def component(batch, loss, state, **kw):
    if batch is None:
      return zeros, zero, state
    fn = batch_loss(apply_fn, loss, train=train, **kw)
    (value, state), g = jax.value_and_grad(fn, has_aux=True)(params, state, batch)
    return g, value, state

  g_l, l_l, model_state = component(
    learn, objectives.learn_loss, model_state, temperature=learn_temperature
  )
  g_u, l_u, model_state = component(
    unlearn, objectives.unlearn_loss, model_state, temperature=unlearn_temperature
  )
  g_r, l_r, model_state = component(remain, objectives.preserve_loss, model_state)
  if saliency_mask is None:
    g_s = zeros
  else:
    g_s = jax.tree.map(lambda g, m: (m.astype(g.dtype) - 1) * g, g_u, saliency_mask)
  # l_u is -L_U^w; report L_U^w itself.
  return CLUGrads(g_l, g_u, g_r, g_s), CLULosses(l_l, -l_u, l_r), model_state


def clip_by_global_norm(tree: Params, max_norm: Optional[float]) -> tuple[Params, jax.Array]:
  r"""Scales ``tree`` to global norm at most ``max_norm`` (None: unchanged); returns the norm.

  .. math:: \mathrm{clip}_c(g) = g \min(1, c / \max(\lVert g \rVert, 10^{-12}))
  """
  norm = optax.tree.norm(tree)
  if max_norm is None:
    return tree, norm
  scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-12))
  return jax.tree.map(lambda t: t * scale.astype(t.dtype), tree), norm


def joint_direction(
  target: Params,
  preserve: Params,
  *,
  a_remain: float | jax.Array = 1.0,
  clip_norm: Optional[float] = None,
) -> Params:
  r"""A target direction plus the scaled preserve gradient,
  :math:`d + \mathrm{clip}_c(a_R \nabla L_R)` (``clip_norm`` None: no clip).

  ``target`` is whatever the target part of the update is: the masked, clipped
  :math:`d` of a step, its compensation :math:`\tilde d`, or
  :math:`a_L g_L + a_U (g_U + g_S)` in :func:`combine`.
  """
  preserve, _ = clip_by_global_norm(optax.tree.scale(a_remain, preserve), clip_norm)
  return optax.tree.add(target, preserve)


def combine(
  grads: CLUGrads,
  *,
  a_learn: float | jax.Array = 1.0,
  a_remain: float | jax.Array = 1.0,
  a_unlearn: float | jax.Array = 1.0,
) -> Params:
  r"""The joint ("none" compensation) direction
  :math:`a_L g_L + a_R g_R + a_U (g_U + g_S)`, unclipped (:func:`joint_direction`)."""
  target = optax.tree.add_scale(
    optax.tree.scale(a_learn, grads.learn), a_unlearn, optax.tree.add(grads.unlearn, grads.saliency)
  )
  return joint_direction(target, grads.preserve, a_remain=a_remain)
