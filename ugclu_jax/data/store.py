"""The remaining store: what a learner may read of the data it learned before.

Two modes (docs/method.md §1, §7):

* **reservoir** (``capacity`` an int): a class-balanced reservoir of training
  indices of fixed capacity;
* **full access** (``capacity=None``): every sample learned and not unlearned,
  the upper bound.

The store is a :class:`Store` record of numpy arrays (checkpointable as is);
all functions are pure and return a new record.

Class-balanced reservoir rule (``store_add``). Per class ``c`` let ``m_c`` be
the number of stored samples, ``k_c`` the number of new samples offered,
``n_c`` the samples offered before (``seen``, reduced by purges) and
``a_c = m_c + k_c`` the samples available now.

1. Targets: water-filling of the capacity ``K`` over the available counts.
   ``t_c = min(a_c, s)`` with ``s`` the largest level such that
   ``sum_c min(a_c, s) <= K``; the ``r = K - sum_c t_c`` slots left go one
   each to classes with ``a_c > s``, preferring classes that hold more now
   (then lower class id). Hence classes with enough samples differ by at most
   one, classes with fewer keep all of theirs, and when a new class arrives
   the others shrink to make room.
2. Selection per class (classes ascending, one ``rng`` for all): draw
   ``X ~ Hypergeometric(k_c new, n_c old, t_c draws)``, clipped to
   ``[max(0, t_c - m_c), min(k_c, t_c)]``, then keep ``t_c - X`` stored samples
   and ``X`` new samples, both uniformly without replacement. Since the stored
   samples are a uniform subset of the old ones, the result is a uniform
   ``t_c``-subset of all ``n_c + k_c`` samples of the class: the batch form of
   reservoir sampling. (The clip only acts when a class's target grows beyond
   what it stored, e.g. after a purge freed room; then all stored samples are
   kept.)

``store_purge`` removes forgotten indices at once; their slots stay empty until
the next ``store_add`` reallocates them.
"""

from typing import Iterator, NamedTuple, Optional

import numpy as np

from ugclu_jax.data import batching
from ugclu_jax.types import Batch

FULL_ACCESS = -1


class Store(NamedTuple):
  """The remaining store.

  Attributes:
    indices: ``int64``: stored training-set indices, ascending, then ``-1``
      for empty slots. Reservoir mode: shape ``[capacity]``; full access:
      shape ``[number stored]`` (no empty slots).
    labels: ``int32``, same shape: the label of each slot, ``-1`` when empty.
    seen: ``int64 [num_classes]``: per class, samples offered by
      ``store_add`` minus those purged (with labels); drives the reservoir.
    capacity: ``int64`` scalar, the number of slots, or ``-1`` for full access.
  """

  indices: np.ndarray
  labels: np.ndarray
  seen: np.ndarray
  capacity: np.ndarray

  @property
  def full_access(self) -> bool:
    return int(self.capacity) == FULL_ACCESS

  @property
  def num_classes(self) -> int:
    return int(self.seen.shape[0])


def store_init(capacity: Optional[int], num_classes: int) -> Store:
  """An empty store.

  Args:
    capacity: number of slots (``>= 1``), or ``None`` for full access.
    num_classes: number of classes of the dataset.

  Returns:
    The empty store.
  """
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}")
  if capacity is None:
    size, cap = 0, FULL_ACCESS
  else:
    if int(capacity) != capacity or capacity < 1:
      raise ValueError(
        f"store capacity must be a positive int or None (full access), got {capacity!r}"
      )
    size = cap = int(capacity)
  return Store(
    indices=np.full(size, -1, np.int64),
    labels=np.full(size, -1, np.int32),
    seen=np.zeros(num_classes, np.int64),
    capacity=np.asarray(cap, np.int64),
  )


def store_indices(store: Store) -> np.ndarray:
  """The stored training indices, ascending (``int64``)."""
  return store.indices[store.indices >= 0].copy()


def store_class_counts(store: Store) -> np.ndarray:
  """``int64 [num_classes]``: stored samples per class."""
  labels = store.labels[store.labels >= 0]
  return np.bincount(labels, minlength=store.num_classes).astype(np.int64)


def _pack(store: Store, indices: np.ndarray, labels: np.ndarray, seen: np.ndarray) -> Store:
  order = np.argsort(indices, kind="stable")
  indices, labels = indices[order].astype(np.int64), labels[order]
  if not store.full_access:
    pad = int(store.capacity) - indices.size
    indices = np.concatenate([indices, np.full(pad, -1, np.int64)])
    labels = np.concatenate([labels, np.full(pad, -1, np.int32)])
  return Store(indices, labels.astype(np.int32), seen.astype(np.int64), store.capacity.copy())


def _water_fill(capacity: int, available: np.ndarray, held: np.ndarray) -> np.ndarray:
  """Class targets of the reservoir (rule 1 of the module docstring)."""
  if available.sum() <= capacity:
    return available.copy()
  level_lo, level_hi = 0, int(available.max())
  while level_lo < level_hi:  # largest s with sum(min(a, s)) <= capacity
    mid = (level_lo + level_hi + 1) // 2
    if np.minimum(available, mid).sum() <= capacity:
      level_lo = mid
    else:
      level_hi = mid - 1
  targets = np.minimum(available, level_lo)
  left = capacity - int(targets.sum())
  candidates = np.flatnonzero(available > level_lo)
  # More held first, then lower class id.
  order = candidates[np.lexsort((candidates, -held[candidates]))]
  targets[order[:left]] += 1
  return targets


def store_add(store: Store, indices, y_train: np.ndarray, rng: np.random.Generator) -> Store:
  """Offers newly learned samples to the store.

  Full access stores them all. The reservoir follows the class-balanced rule
  of the module docstring. Indices already stored, and repeats, are ignored.
  Offer each sample once while it stays learned: when a task is learned again
  after a partial unlearning, offer only the samples that were not learned
  (``d_l[~learned_mask[d_l]]``), so that ``seen`` counts each learned sample
  once.

  Args:
    store: the current store.
    indices: training indices of the learned data ``D_L``.
    y_train: ``[N]`` training labels.
    rng: randomness of the reservoir (unused with full access).

  Returns:
    The new store.
  """
  y_train = np.asarray(y_train)
  new = np.unique(batching.as_indices(indices))
  if new.size and (new[0] < 0 or new[-1] >= y_train.size):
    raise ValueError(f"indices must lie in [0, {y_train.size})")
  new = new[~np.isin(new, store.indices)]
  new_labels = y_train[new].astype(np.int64)
  if new_labels.size and (new_labels.min() < 0 or new_labels.max() >= store.num_classes):
    raise ValueError(f"labels must lie in [0, {store.num_classes})")
  offered = np.bincount(new_labels, minlength=store.num_classes)
  seen = store.seen + offered

  valid = store.indices >= 0
  old_idx, old_lab = store.indices[valid], store.labels[valid].astype(np.int64)
  if store.full_access:
    return _pack(store, np.concatenate([old_idx, new]), np.concatenate([old_lab, new_labels]), seen)

  held = np.bincount(old_lab, minlength=store.num_classes)
  targets = _water_fill(int(store.capacity), held + offered, held)
  keep_idx, keep_lab = [], []
  for c in range(store.num_classes):
    if targets[c] == 0:
      continue
    old_c, new_c = old_idx[old_lab == c], new[new_labels == c]
    m, k, t = old_c.size, new_c.size, int(targets[c])
    n_old = max(int(store.seen[c]), m)
    if k == 0:
      x = 0
    elif n_old == 0:
      x = t  # Nothing older exists: t <= k.
    else:
      x = int(rng.hypergeometric(k, n_old, t))
    x = min(max(x, t - m, 0), k, t)
    keep_idx += [rng.choice(old_c, t - x, replace=False), rng.choice(new_c, x, replace=False)]
    keep_lab.append(np.full(t, c, np.int64))
  if not keep_idx:
    return _pack(store, old_idx[:0], old_lab[:0], seen)
  return _pack(store, np.concatenate(keep_idx), np.concatenate(keep_lab), seen)


def store_purge(store: Store, forget_indices, *, y_train: Optional[np.ndarray] = None) -> Store:
  """Removes forgotten samples from the store.

  Their slots become free (used by the next ``store_add``). With ``y_train``,
  the per-class ``seen`` counts also drop by the forgotten samples, so the
  reservoir keeps sampling uniformly from what remains; without it they are
  kept (stored samples are still removed).

  Args:
    store: the current store.
    forget_indices: training indices of the data to forget ``D_U``.
    y_train: optional ``[N]`` training labels.

  Returns:
    The store without any of ``forget_indices``.
  """
  forget = np.unique(batching.as_indices(forget_indices))
  valid = store.indices >= 0
  idx, lab = store.indices[valid], store.labels[valid]
  keep = ~np.isin(idx, forget)
  seen = store.seen
  if y_train is not None:
    y_train = np.asarray(y_train)
    if forget.size and (forget[0] < 0 or forget[-1] >= y_train.size):
      raise ValueError(f"forget_indices must lie in [0, {y_train.size})")
    forgotten = np.bincount(y_train[forget].astype(np.int64), minlength=store.num_classes)[
      : store.num_classes
    ]
    held = np.bincount(lab[keep].astype(np.int64), minlength=store.num_classes)
    seen = np.maximum(seen - forgotten, held)
  return _pack(store, idx[keep], lab[keep], seen)


def accessible_indices(store: Store, request_indices) -> np.ndarray:
  """Every training index a method may read: the store plus the request."""
  request = batching.as_indices(request_indices)
  return np.union1d(store_indices(store), request).astype(np.int64)


class AccessError(ValueError):
  """A method asked for training data outside the store and the request."""


class DataAccess:
  """Read access to the training set, limited to the store and the request.

  A method receives one of these instead of the training arrays. Every read
  goes through :meth:`batch`, which raises :class:`AccessError` for any index
  outside ``accessible_indices(store, request_indices)``.

  For an unlearn request the store must already be purged of ``D_U``; the
  forget data are then readable only as the request's target.

  Attributes:
    target_indices: the request's samples (``D_L`` or ``D_U``), ascending.
    remain_indices: the store's samples, ascending.
  """

  __slots__ = ("_x", "_y", "_allowed", "target_indices", "remain_indices")

  def __init__(self, x_train: np.ndarray, y_train: np.ndarray, store: Store, request_indices):
    self._x = x_train
    self._y = y_train
    self.target_indices = np.unique(batching.as_indices(request_indices))
    self.remain_indices = store_indices(store)
    self._allowed = np.union1d(self.target_indices, self.remain_indices)
    for array in (self.target_indices, self.remain_indices, self._allowed):
      array.flags.writeable = False

  def _check(self, indices: np.ndarray) -> None:
    outside = indices[~np.isin(indices, self._allowed)]
    if outside.size:
      raise AccessError(
        f"training index {int(outside[0])} is neither in the "
        f"remaining store nor in the current request "
        f"({outside.size} such indices requested)"
      )

  def batch(self, indices) -> Batch:
    """The samples at ``indices`` (all must be accessible) as a full batch."""
    indices = batching.as_indices(indices)
    self._check(indices)
    return batching.make_batch(self._x, self._y, indices)

  def labels(self, indices) -> np.ndarray:
    """The labels at ``indices`` (all must be accessible)."""
    indices = batching.as_indices(indices)
    self._check(indices)
    return np.asarray(self._y[indices], np.int32)

  def target_batch(self, batch_size: int, step: int, seed) -> Batch:
    """Training batch ``step`` of the request's samples."""
    return self.batch(batching.batch_indices(self.target_indices, batch_size, step, seed))

  def remain_batch(self, batch_size: int, step: int, seed) -> Batch:
    """Training batch ``step`` of the store's samples."""
    return self.batch(batching.batch_indices(self.remain_indices, batch_size, step, seed))

  def eval_batches(self, indices, batch_size: int) -> Iterator[Batch]:
    """Padded evaluation batches over ``indices`` (all must be accessible)."""
    indices = batching.as_indices(indices)
    self._check(indices)
    return batching.eval_batches(self._x, self._y, indices, batch_size)
