"""Losses of the unified objective (docs/method.md §2-§3), on logits, keyword-only.

All losses accept an optional ``mask`` (``[B]``, 1 for real examples, 0 for
padding) and a ``reduction`` of ``"mean"`` (masked mean), ``"sum"`` or
``"none"`` (per-example values, shape ``[B]``).
"""

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from ugclu_jax.types import Params

_REDUCTIONS = ("mean", "sum", "none")


def _reduce(values: jax.Array, mask: Optional[jax.Array], reduction: str) -> jax.Array:
  if reduction not in _REDUCTIONS:
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
  if mask is None:
    mask = jnp.ones(values.shape, values.dtype)
  mask = mask.astype(values.dtype)
  values = values * mask
  if reduction == "none":
    return values
  if reduction == "sum":
    return jnp.sum(values)
  return jnp.sum(values) / jnp.maximum(jnp.sum(mask), 1)


def _check_logits_labels(logits: jax.Array, labels: jax.Array) -> None:
  if logits.ndim != 2:
    raise ValueError(f"logits must have shape [batch, classes], got {logits.shape}")
  if labels.shape != logits.shape[:1]:
    raise ValueError(
      f"labels must have shape {logits.shape[:1]} to match logits {logits.shape}, "
      f"got {labels.shape}"
    )
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels must be integers, got dtype {labels.dtype}")


def cross_entropy(
  *, logits: jax.Array, labels: jax.Array, mask: Optional[jax.Array] = None, reduction: str = "mean"
) -> jax.Array:
  r"""Softmax cross-entropy :math:`\ell_i = -\log p_\theta(y_i \mid x_i)`.

  Args:
    logits: ``[B, C]``.
    labels: integer ``[B]``.
    mask: optional ``[B]`` example mask.
    reduction: ``"mean"``, ``"sum"`` or ``"none"``.

  Returns:
    The reduced loss, or ``[B]`` per-example losses.
  """
  _check_logits_labels(logits, labels)
  losses = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
  return _reduce(losses, mask, reduction)


def kl_to_reference(
  *,
  logits: jax.Array,
  reference_probs: jax.Array,
  mask: Optional[jax.Array] = None,
  reduction: str = "mean",
) -> jax.Array:
  r"""Per-example :math:`\mathrm{KL}(p_{ref} \,\|\, p_\theta)`, the unified objective's term.

  .. math::
     \mathrm{KL}(p_{ref} \| p_\theta) = \sum_c p_{ref,c} (\log p_{ref,c} - \log p_{\theta,c})

  With a one-hot reference (the oracle fits :math:`D_R \cup D_L`) this is the
  cross-entropy on the true labels, which is how the learn and preserve terms
  reduce to :func:`cross_entropy` (docs/method.md §2).

  Args:
    logits: model logits ``[B, C]``.
    reference_probs: reference distribution ``[B, C]`` (rows sum to 1).
    mask: optional ``[B]`` example mask.
    reduction: ``"mean"``, ``"sum"`` or ``"none"``.
  """
  if logits.shape != reference_probs.shape:
    raise ValueError(
      f"reference_probs shape {reference_probs.shape} must equal logits shape {logits.shape}"
    )
  log_q = jax.nn.log_softmax(logits)
  losses = jnp.sum(
    jax.scipy.special.xlogy(reference_probs, reference_probs) - reference_probs * log_q, axis=-1
  )
  return _reduce(losses, mask, reduction)


def adaptive_weights(
  per_example_loss: jax.Array, *, temperature: float, mask: Optional[jax.Array] = None
) -> jax.Array:
  r"""Adaptive per-sample weights (docs/method.md §3), under ``stop_gradient``.

  .. math::
     c_i = \frac{1}{\ell_i^{\lambda} + 10^{-12}}, \qquad
     w_i = \frac{c_i}{\sum_j c_j}

  Samples the model still fits (small loss) get the largest weight; samples
  already forgotten fade out. ``temperature = 0`` gives uniform weights. A
  negative temperature gives :math:`w_i \propto \ell_i^{|\lambda|}` (the learn
  side's symmetric option). Padded examples (``mask = 0``) get weight 0.

  Args:
    per_example_loss: ``[B]`` non-negative losses.
    temperature: :math:`\lambda`.
    mask: optional ``[B]`` example mask.

  Returns:
    ``[B]`` weights summing to 1 over the real examples; no gradient flows.
  """
  if per_example_loss.ndim != 1:
    raise ValueError(f"per_example_loss must be [batch], got {per_example_loss.shape}")
  loss = jax.lax.stop_gradient(per_example_loss)
  loss = jnp.maximum(loss, 0.0)
  c = 1.0 / (jnp.power(loss, temperature) + 1e-12)
  if mask is not None:
    c = c * mask.astype(c.dtype)
  return c / jnp.sum(c)


def learn_loss(
  *,
  logits: jax.Array,
  labels: jax.Array,
  mask: Optional[jax.Array] = None,
  temperature: float = 0.0,
  reduction: str = "sum",
) -> jax.Array:
  r"""Learn term :math:`L_L^w = \sum_i w_i \ell_i` on new data (descent).

  With the default ``temperature = 0`` the weights are uniform and the sum is
  the masked mean cross-entropy. ``temperature = -\lambda`` weights hard
  samples up (:math:`w_i \propto \ell_i^\lambda`).
  """
  losses = cross_entropy(logits=logits, labels=labels, reduction="none")
  w = adaptive_weights(losses, temperature=temperature, mask=mask)
  return _reduce(w * losses, None, reduction)


def preserve_loss(
  *, logits: jax.Array, labels: jax.Array, mask: Optional[jax.Array] = None, reduction: str = "mean"
) -> jax.Array:
  r"""Preserve term :math:`L_R`: cross-entropy on remaining data, true labels (no teacher)."""
  return cross_entropy(logits=logits, labels=labels, mask=mask, reduction=reduction)


def unlearn_loss(
  *,
  logits: jax.Array,
  labels: jax.Array,
  mask: Optional[jax.Array] = None,
  temperature: float = 0.5,
  max_loss: Optional[float] = None,
  reduction: str = "sum",
) -> jax.Array:
  r"""Unlearn term: adaptively weighted, bounded gradient *ascent* on the forget data.

  Returns the quantity to **minimise**,

  .. math::
     -L_U^w = -\sum_i w_i\, [\ell_i < \ell_{max}]\, \ell_i, \qquad
     w = \mathrm{adaptive\_weights}(\ell, \lambda),

  so that descending it ascends the weighted forget loss. ``max_loss``
  (:math:`\ell_{max}`, None: unbounded) bounds the ascent: a sample whose loss
  already exceeds it is forgotten and is no longer pushed (weight 0; the
  weights are normalised over the samples still pushed, so those keep the full
  push), and once all are past it the push stops instead of growing the logits
  without limit. With :math:`\ell_{max} = \log C` every sample that
  stops is misclassified (:math:`p_y < 1/C` leaves some other class above it).
  With ``reduction="none"`` the per-example values are returned.
  """
  losses = cross_entropy(logits=logits, labels=labels, reduction="none")
  if max_loss is None:
    w = adaptive_weights(losses, temperature=temperature, mask=mask)
  else:
    keep = (jax.lax.stop_gradient(losses) < max_loss).astype(losses.dtype)
    if mask is not None:
      keep = keep * mask.astype(keep.dtype)
    pushed = jnp.any(keep > 0)
    # All forgotten: no push (the mask of ones only avoids 0 / 0).
    w = adaptive_weights(
      losses, temperature=temperature, mask=jnp.where(pushed, keep, jnp.ones_like(keep))
    )
    w = jnp.where(pushed, w, 0.0)
  return _reduce(-w * losses, None, reduction)


def distillation_loss(
  *,
  logits: jax.Array,
  teacher_logits: jax.Array,
  temperature: float,
  mask: Optional[jax.Array] = None,
  classes: Optional[jax.Array] = None,
) -> jax.Array:
  r"""Knowledge distillation :math:`\mathrm{KL}(p^T_{teacher} \| p^T_{student})`.

  .. math::
     p^T = \mathrm{softmax}(z / T), \qquad
     L = \frac{1}{|B|} \sum_{i \in B} \sum_c p^T_{t,ic} (\log p^T_{t,ic} - \log p^T_{s,ic})

  With ``classes`` the softmax of both runs over those classes only (LwF's
  distillation of the old classes in a single head). No gradient flows into
  the teacher. Multiply by :math:`T^2` for Hinton et al.'s gradient scale.

  Args:
    logits: student logits ``[B, C]``.
    teacher_logits: teacher logits ``[B, C]``.
    temperature: :math:`T > 0`.
    mask: optional ``[B]`` example mask.
    classes: optional ``[C]`` 0/1 mask of the classes distilled (at least one).

  Returns:
    The masked batch mean.
  """
  teacher = jax.lax.stop_gradient(teacher_logits) / temperature
  student = logits / temperature
  if classes is not None:
    keep = classes[None, :] > 0
    teacher = jnp.where(keep, teacher, -1e9)
    student = jnp.where(keep, student, -1e9)
  return kl_to_reference(logits=student, reference_probs=jax.nn.softmax(teacher), mask=mask)


def ewc_penalty(params: Params, anchor: Params, fisher: Params) -> jax.Array:
  r"""The EWC quadratic :math:`\frac12 \sum_i F_i (\theta_i - \theta^*_i)^2`.

  Its gradient is :math:`F \odot (\theta - \theta^*)`; it is zero at the anchor.

  Args:
    params: :math:`\theta`.
    anchor: :math:`\theta^*`, same structure.
    fisher: Fisher diagonal :math:`F`, same structure.

  Returns:
    A scalar (float32 or wider).
  """
  terms = jax.tree.map(lambda p, a, f: jnp.sum(f * jnp.square(p - a)), params, anchor, fisher)
  return 0.5 * sum(jax.tree.leaves(terms), jnp.zeros((), jnp.float32))
