"""Balanced weight-saliency mask from diagonal Fisher ratios (docs/method.md §4)."""

from typing import Any, Callable

import jax
import jax.numpy as jnp

from ugclu_jax.types import Params


def fisher_diagonal(
  loss_fn: Callable[[Params, Any], jax.Array], params: Params, batches: Any
) -> Params:
  r"""Diagonal empirical Fisher: mean over batches of the squared batch-mean gradient.

  .. math::
     F[p] = \frac{1}{n_b} \sum_{b=1}^{n_b}
            \Big( \frac{\partial}{\partial\theta_p} L(\theta; b) \Big)^2

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``, the batch-mean loss (in
      evaluation mode: no batch-norm statistics are touched).
    params: the parameters.
    batches: a pytree of batches stacked on a leading axis of size ``n_b``
      (e.g. a ``Batch`` whose fields are ``[n_b, B, ...]``). The batches are
      visited with ``lax.scan``, so compile time does not grow with ``n_b``.

  Returns:
    A pytree like ``params`` with the Fisher diagonal (float32 accumulation for
    low-precision parameters).
  """
  leaves = jax.tree.leaves(batches)
  if not leaves:
    raise ValueError("fisher_diagonal needs at least one batch")
  n = leaves[0].shape[0]
  if n == 0:
    raise ValueError("fisher_diagonal needs at least one batch (leading axis is 0)")
  grad_fn = jax.grad(loss_fn)

  def body(acc, batch):
    g = grad_fn(params, batch)
    return jax.tree.map(lambda a, gi: a + jnp.square(gi.astype(a.dtype)), acc, g), None

  acc0 = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.promote_types(p.dtype, jnp.float32)), params)
  acc, _ = jax.lax.scan(body, acc0, batches)
  return jax.tree.map(lambda a: a / n, acc)


def balanced_saliency_mask(
  fisher_target: Params, fisher_remain: Params, *, threshold: float = 1.0, eps: float = 1e-15
) -> Params:
  r"""Balanced saliency mask: keep the weights more salient for the target than the remain set.

  .. math::
     M[p] = \mathbb{1}\Big[ \frac{F_{target}[p] + \epsilon}{F_R[p] + \epsilon} \ge \gamma \Big]

  Element-wise over all parameters, no top-k: the sparsity follows from
  :math:`\gamma` (see :func:`mask_density`).

  Args:
    fisher_target: Fisher diagonal on the target (forget or new) data.
    fisher_remain: Fisher diagonal on the remaining store.
    threshold: :math:`\gamma`.
    eps: :math:`\epsilon`.

  Returns:
    A pytree of float32 0/1 arrays with the structure of the inputs.
  """
  if jax.tree.structure(fisher_target) != jax.tree.structure(fisher_remain):
    raise ValueError("fisher_target and fisher_remain must have the same tree structure")
  return jax.tree.map(
    lambda ft, fr: ((ft + eps) / (fr + eps) >= threshold).astype(jnp.float32),
    fisher_target,
    fisher_remain,
  )


def random_mask_like(mask: Params, key: jax.Array) -> Params:
  """A random 0/1 mask with, in every leaf, as many ones as ``mask`` has.

  The ablation of the saliency mask at the same density, leaf by leaf: each leaf's
  ones go to uniformly random positions (a random ranking drawn from ``key``).

  Args:
    mask: a 0/1 pytree (e.g. :func:`balanced_saliency_mask`).
    key: a ``jax.random`` key.

  Returns:
    A float32 0/1 pytree with ``mask``'s structure and per-leaf counts of ones.
  """
  leaves, treedef = jax.tree.flatten(mask)
  keys = jax.random.split(key, max(1, len(leaves)))
  out = []
  for leaf, k in zip(leaves, keys):
    ones = jnp.sum(leaf != 0)
    ranks = jnp.argsort(jnp.argsort(jax.random.uniform(k, (leaf.size,))))
    out.append((ranks < ones).astype(jnp.float32).reshape(leaf.shape))
  return jax.tree.unflatten(treedef, out)


def mask_density(mask: Params) -> jax.Array:
  """Fraction of ones in a 0/1 mask pytree (1 − sparsity)."""
  leaves = jax.tree.leaves(mask)
  total = sum(leaf.size for leaf in leaves)
  return sum(jnp.sum(leaf.astype(jnp.float32)) for leaf in leaves) / total


def apply_mask(tree: Params, mask: Params | None) -> Params:
  """Element-wise ``mask ⊙ tree`` (identity when ``mask`` is None); keeps dtypes."""
  if mask is None:
    return tree
  return jax.tree.map(lambda t, m: t * m.astype(t.dtype), tree, mask)


def top_fraction_mask(scores: Params, fraction: float) -> Params:
  r"""A 0/1 mask keeping the global top ``fraction`` of ``scores`` over all leaves.

  Exactly :math:`k = \lfloor \text{fraction} \cdot n \rfloor` entries are 1
  (``n`` entries in all), those with the largest scores; ties go to the
  earlier entry in leaf order. This is SalUn's hard mask when the scores are
  :math:`|\nabla_\theta L_U|`.

  Args:
    scores: a pytree of arrays.
    fraction: in ``[0, 1]``.

  Returns:
    A float32 pytree of 0/1 with the structure and shapes of ``scores``.
  """
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"fraction must be in [0, 1], got {fraction}")
  leaves, treedef = jax.tree.flatten(scores)
  flat = jnp.concatenate([jnp.ravel(leaf).astype(jnp.float32) for leaf in leaves])
  k = int(flat.size * fraction)
  order = jnp.argsort(-flat, stable=True)
  keep = jnp.zeros(flat.shape, jnp.float32).at[order[:k]].set(1.0)
  out, start = [], 0
  for leaf in leaves:
    out.append(keep[start : start + leaf.size].reshape(leaf.shape))
    start += leaf.size
  return jax.tree.unflatten(treedef, out)
