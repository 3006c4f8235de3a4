"""Tests for the remaining store, restricted data access, and batching."""

import jax
import numpy as np
import pytest

from ugclu_jax.data import batching
from ugclu_jax.data import store as store_lib
from ugclu_jax.types import Batch

NUM_CLASSES = 6
PER_CLASS = 30
# Class c at indices 30c .. 30c + 29.
Y_TRAIN = np.repeat(np.arange(NUM_CLASSES), PER_CLASS).astype(np.int32)
X_TRAIN = np.arange(len(Y_TRAIN) * 4, dtype=np.int64).reshape(-1, 2, 2, 1)
X_TRAIN = (X_TRAIN % 256).astype(np.uint8)


def _of_classes(*classes):
  return np.flatnonzero(np.isin(Y_TRAIN, classes))


def _add(store, classes, seed=0):
  return store_lib.store_add(store, _of_classes(*classes), Y_TRAIN, np.random.default_rng(seed))


def _check_invariants(store):
  valid = store.indices >= 0
  stored = store.indices[valid]
  assert np.all(np.diff(stored) > 0)  # Sorted and distinct.
  np.testing.assert_array_equal(store.labels[valid], Y_TRAIN[stored])
  assert np.all(store.labels[~valid] == -1)
  if not store.full_access:
    assert store.indices.shape == (int(store.capacity),)
    assert np.all(~valid[valid.sum() :])  # Empty slots come last.
  assert store.indices.dtype == np.int64 and store.labels.dtype == np.int32


# ---------------------------------------------------------------------------
# Reservoir.


def test_store_init():
  store = store_lib.store_init(8, NUM_CLASSES)
  assert store.indices.shape == (8,) and np.all(store.indices == -1)
  assert not store.full_access and store.num_classes == NUM_CLASSES
  assert store_lib.store_indices(store).size == 0
  full = store_lib.store_init(None, NUM_CLASSES)
  assert full.full_access and full.indices.shape == (0,)
  for bad in (0, -3, 2.5):
    with pytest.raises(ValueError, match="capacity"):
      store_lib.store_init(bad, NUM_CLASSES)


def test_store_is_a_pytree_of_numpy_arrays():
  store = _add(store_lib.store_init(8, NUM_CLASSES), [0, 1])
  leaves = jax.tree.leaves(store)
  assert len(leaves) == 4
  assert all(isinstance(leaf, np.ndarray) for leaf in leaves)


def test_capacity_and_balance_as_classes_arrive():
  store = store_lib.store_init(10, NUM_CLASSES)
  store = _add(store, [0, 1], seed=1)
  np.testing.assert_array_equal(store_lib.store_class_counts(store), [5, 5, 0, 0, 0, 0])
  store = _add(store, [2, 3], seed=2)
  # Level 2 for 4 classes leaves 2 slots; they go to the classes holding more
  # (0 and 1), so the old classes shrink from 5 to 3 and the new get 2.
  np.testing.assert_array_equal(store_lib.store_class_counts(store), [3, 3, 2, 2, 0, 0])
  store = _add(store, [4, 5], seed=3)
  np.testing.assert_array_equal(store_lib.store_class_counts(store), [2, 2, 2, 2, 1, 1])
  _check_invariants(store)
  np.testing.assert_array_equal(store.seen, [PER_CLASS] * NUM_CLASSES)


@pytest.mark.parametrize("capacity", [7, 23, 60, 180, 500])
def test_balance_within_one(capacity):
  store = store_lib.store_init(capacity, NUM_CLASSES)
  for seed, classes in enumerate([[0, 1], [2], [3, 4, 5]]):
    store = _add(store, classes, seed=seed)
    _check_invariants(store)
  counts = store_lib.store_class_counts(store)
  assert counts.sum() == min(capacity, len(Y_TRAIN))
  assert counts.max() - counts.min() <= 1


def test_small_class_keeps_all_and_others_share_the_rest():
  y = np.repeat(np.arange(3, dtype=np.int32), [2, 50, 50])
  store = store_lib.store_add(
    store_lib.store_init(21, 3), np.arange(102), y, np.random.default_rng(0)
  )
  np.testing.assert_array_equal(store_lib.store_class_counts(store), [2, 10, 9])


def test_stored_samples_come_from_the_offered_ones():
  store = _add(store_lib.store_init(9, NUM_CLASSES), [1, 4])
  assert set(store_lib.store_indices(store)) <= set(_of_classes(1, 4))


def test_reservoir_is_deterministic_by_seed():
  def run(seed):
    rng = np.random.default_rng(seed)
    store = store_lib.store_init(10, NUM_CLASSES)
    for classes in ([0, 1], [2, 3], [4, 5]):
      store = store_lib.store_add(store, _of_classes(*classes), Y_TRAIN, rng)
    return store

  first, again, other = run(5), run(5), run(6)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(first.indices, other.indices)


def test_reservoir_is_uniform_over_arrival_chunks():
  # One class of 100 samples offered as two chunks of 50 into 10 slots: a
  # uniform sample keeps 5 from each chunk on average (hypergeometric, sd 1.5,
  # so the mean of 300 runs has sd 0.09).
  y = np.zeros(100, np.int32)
  from_first = []
  for seed in range(300):
    rng = np.random.default_rng(seed)
    store = store_lib.store_init(10, 1)
    store = store_lib.store_add(store, np.arange(50), y, rng)
    store = store_lib.store_add(store, np.arange(50, 100), y, rng)
    from_first.append(np.sum(store_lib.store_indices(store) < 50))
  assert abs(np.mean(from_first) - 5.0) < 0.4
  assert 0 < min(from_first) and max(from_first) < 10


def test_adding_stored_indices_again_does_not_duplicate():
  store = store_lib.store_init(None, NUM_CLASSES)
  store = _add(store, [0])
  store = _add(store, [0, 1])
  np.testing.assert_array_equal(store_lib.store_indices(store), _of_classes(0, 1))
  np.testing.assert_array_equal(store.seen[:2], [PER_CLASS, PER_CLASS])


def test_store_add_rejects_bad_input():
  store = store_lib.store_init(4, NUM_CLASSES)
  with pytest.raises(ValueError, match="lie in"):
    store_lib.store_add(store, [len(Y_TRAIN)], Y_TRAIN, np.random.default_rng(0))
  with pytest.raises(ValueError, match="1-D integer"):
    store_lib.store_add(store, [[1, 2]], Y_TRAIN, np.random.default_rng(0))
  with pytest.raises(ValueError, match="labels"):
    store_lib.store_add(store_lib.store_init(4, 2), [0, 100], Y_TRAIN, np.random.default_rng(0))


# ---------------------------------------------------------------------------
# Purge.


@pytest.mark.parametrize("capacity", [12, None])
def test_purge_removes_all_forgotten_and_nothing_else(capacity):
  store = store_lib.store_init(capacity, NUM_CLASSES)
  store = _add(store, [0, 1, 2, 3])
  before = store_lib.store_indices(store)
  rng = np.random.default_rng(3)
  forget = np.sort(rng.choice(_of_classes(0, 1, 2, 3), 50, replace=False))
  purged = store_lib.store_purge(store, forget, y_train=Y_TRAIN)
  after = store_lib.store_indices(purged)
  assert not set(after) & set(forget)
  np.testing.assert_array_equal(after, np.setdiff1d(before, forget))
  _check_invariants(purged)
  # Per class, seen drops by the forgotten samples of that class.
  np.testing.assert_array_equal(
    purged.seen[:4], PER_CLASS - np.bincount(Y_TRAIN[forget], minlength=4)
  )
  # Without labels, seen is kept.
  np.testing.assert_array_equal(store_lib.store_purge(store, forget).seen, store.seen)
  np.testing.assert_array_equal(
    store_lib.store_indices(store_lib.store_purge(store, forget)), after
  )


def test_purged_capacity_is_reused():
  store = _add(store_lib.store_init(12, NUM_CLASSES), [0, 1, 2])
  store = store_lib.store_purge(store, _of_classes(1), y_train=Y_TRAIN)
  np.testing.assert_array_equal(store_lib.store_class_counts(store), [4, 0, 4, 0, 0, 0])
  assert store.indices.shape == (12,)
  assert np.sum(store.indices == -1) == 4
  store = _add(store, [3], seed=1)
  # Classes 0 and 2 cannot grow (their other samples are gone from the
  # store), so the freed slots go to the new class.
  np.testing.assert_array_equal(store_lib.store_class_counts(store), [4, 0, 4, 4, 0, 0])


def test_full_access_mode():
  store = store_lib.store_init(None, NUM_CLASSES)
  store = _add(store, [0, 1])
  store = _add(store, [4])
  np.testing.assert_array_equal(store_lib.store_indices(store), _of_classes(0, 1, 4))
  assert not np.any(store.indices == -1)
  store = store_lib.store_purge(store, _of_classes(1), y_train=Y_TRAIN)
  np.testing.assert_array_equal(store_lib.store_indices(store), _of_classes(0, 4))
  _check_invariants(store)


# ---------------------------------------------------------------------------
# Restricted access.


def test_accessible_indices():
  store = _add(store_lib.store_init(None, NUM_CLASSES), [0])
  np.testing.assert_array_equal(
    store_lib.accessible_indices(store, _of_classes(2)), _of_classes(0, 2)
  )


def test_data_access_serves_only_store_and_request():
  store = _add(store_lib.store_init(6, NUM_CLASSES), [0, 1])
  request = _of_classes(2)
  access = store_lib.DataAccess(X_TRAIN, Y_TRAIN, store, request)
  np.testing.assert_array_equal(access.target_indices, request)
  np.testing.assert_array_equal(access.remain_indices, store_lib.store_indices(store))
  allowed = np.union1d(request, store_lib.store_indices(store))
  batch = access.batch(allowed[:5])
  assert batch.x.dtype == np.float32 and batch.x.shape == (5, 2, 2, 1)
  np.testing.assert_array_equal(batch.y, Y_TRAIN[allowed[:5]])
  # A class-0 sample that the reservoir did not keep is not readable.
  outside = np.setdiff1d(_of_classes(0), store_lib.store_indices(store))[0]
  for read in (
    lambda: access.batch([allowed[0], outside]),
    lambda: access.labels([outside]),
    lambda: list(access.eval_batches([outside], 4)),
  ):
    with pytest.raises(store_lib.AccessError, match=str(outside)):
      read()
  with pytest.raises(ValueError):
    access.batch([_of_classes(5)[0]])
  with pytest.raises(AttributeError):
    access.extra = 1  # pytype: disable=not-writable
  with pytest.raises(ValueError):
    access.target_indices[0] = outside


def test_data_access_training_batches():
  store = _add(store_lib.store_init(5, NUM_CLASSES), [0, 1])
  access = store_lib.DataAccess(X_TRAIN, Y_TRAIN, store, _of_classes(3))
  remain = access.remain_batch(8, step=3, seed=0)  # More than stored: cycles.
  target = access.target_batch(8, step=0, seed=0)
  assert remain.x.shape == (8, 2, 2, 1) and target.y.shape == (8,)
  assert set(remain.y) <= {0, 1} and set(target.y) == {3}
  assert remain.mask.sum() == 8


def test_unlearn_access_after_purge():
  # For an unlearn request the store is purged first: D_U is readable only as
  # the target, and forgotten samples leave the remain batches.
  store = _add(store_lib.store_init(None, NUM_CLASSES), [0, 1])
  forget = _of_classes(1)
  store = store_lib.store_purge(store, forget, y_train=Y_TRAIN)
  access = store_lib.DataAccess(X_TRAIN, Y_TRAIN, store, forget)
  for step in range(10):
    assert set(access.remain_batch(16, step, 0).y) == {0}
  np.testing.assert_array_equal(access.target_indices, forget)


# ---------------------------------------------------------------------------
# Batching.


@pytest.mark.parametrize("n, batch_size", [(10, 3), (10, 10), (4, 9), (1, 5)])
def test_batch_indices_shape_and_epoch_coverage(n, batch_size):
  indices = np.arange(100, 100 + n)
  steps = 3 * n  # 3 * batch_size epochs' worth of positions.
  stream = np.concatenate(
    [batching.batch_indices(indices, batch_size, step, seed=1) for step in range(steps)]
  )
  assert stream.dtype == np.int64 and stream.shape == (steps * batch_size,)
  for epoch in range(steps * batch_size // n):
    np.testing.assert_array_equal(np.sort(stream[epoch * n : (epoch + 1) * n]), indices)
    np.testing.assert_array_equal(
      stream[epoch * n : (epoch + 1) * n], batching.epoch_permutation(indices, epoch, seed=1)
    )


def test_batch_indices_deterministic_and_seeded():
  indices = np.arange(50)
  a = batching.batch_indices(indices, 16, step=7, seed=3)
  np.testing.assert_array_equal(a, batching.batch_indices(indices, 16, 7, 3))
  assert not np.array_equal(a, batching.batch_indices(indices, 16, 7, 4))
  assert not np.array_equal(a, batching.batch_indices(indices, 16, 8, 3))
  np.testing.assert_array_equal(
    batching.batch_indices(indices, 16, 2, (3, 1)), batching.batch_indices(indices, 16, 2, [3, 1])
  )


def test_batch_indices_errors():
  with pytest.raises(ValueError, match="empty"):
    batching.batch_indices(np.array([], np.int64), 4, 0, 0)
  with pytest.raises(ValueError, match="batch_size"):
    batching.batch_indices(np.arange(3), 0, 0, 0)
  with pytest.raises(ValueError, match="step"):
    batching.batch_indices(np.arange(3), 2, -1, 0)
  with pytest.raises(ValueError, match="seed"):
    batching.batch_indices(np.arange(3), 2, 0, -1)


def test_sample_batch():
  batch = batching.sample_batch(X_TRAIN, Y_TRAIN, np.arange(7), batch_size=16, step=2, seed=0)
  assert isinstance(batch, Batch)
  assert batch.x.shape == (16, 2, 2, 1) and batch.x.dtype == np.float32
  assert batch.y.dtype == np.int32 and batch.mask.dtype == np.float32
  assert np.all(batch.mask == 1.0)
  assert 0.0 <= batch.x.min() and batch.x.max() <= 1.0
  idx = batching.batch_indices(np.arange(7), 16, 2, 0)
  np.testing.assert_allclose(batch.x, X_TRAIN[idx] / 255.0, rtol=1e-6)


def test_eval_batches_padding():
  indices = np.array([5, 3, 8, 0, 2, 9, 1])
  y_is_index = np.arange(len(Y_TRAIN), dtype=np.int32)
  batches = list(batching.eval_batches(X_TRAIN, y_is_index, indices, 3))
  assert len(batches) == batching.num_eval_batches(7, 3) == 3
  for batch in batches:
    assert batch.x.shape == (3, 2, 2, 1) and batch.y.shape == (3,)
    assert batch.x.dtype == np.float32 and batch.y.dtype == np.int32
  np.testing.assert_array_equal(batches[-1].mask, [1.0, 0.0, 0.0])
  np.testing.assert_array_equal(batches[-1].x[1:], 0.0)
  np.testing.assert_array_equal(batches[-1].y[1:], 0)
  real = np.concatenate([b.y[b.mask > 0] for b in batches])
  np.testing.assert_array_equal(real, indices)  # In order, each once.
  assert sum(b.mask.sum() for b in batches) == 7
  assert not list(batching.eval_batches(X_TRAIN, Y_TRAIN, [], 4))
  full = list(batching.eval_batches(X_TRAIN, Y_TRAIN, np.arange(6), 3))
  assert all(np.all(b.mask == 1.0) for b in full)
