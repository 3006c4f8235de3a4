"""Tests for ugclu_jax.data.streams: parsing, validation, resolution."""

import numpy as np
import pytest

from ugclu_jax.data import streams
from ugclu_jax.data.streams import Request
from ugclu_jax.data.streams import StreamError

NUM_CLASSES = 10
TASKS = streams.make_tasks(NUM_CLASSES, 2)  # (0,1) (2,3) (4,5) (6,7) (8,9)
# 20 training samples per class, class c at indices 20c .. 20c + 19.
Y_TRAIN = np.repeat(np.arange(NUM_CLASSES), 20).astype(np.int32)


def _parse(text, tasks=TASKS):
  return streams.parse_stream(text, tasks=tasks, num_classes=NUM_CLASSES)


def _of_classes(*classes):
  return np.flatnonzero(np.isin(Y_TRAIN, classes))


# ---------------------------------------------------------------------------
# Tasks.


def test_make_tasks():
  assert streams.make_tasks(6, 2) == ((0, 1), (2, 3), (4, 5))
  assert streams.make_tasks(6, 3, class_order=[5, 0, 3, 1, 2, 4]) == ((5, 0, 3), (1, 2, 4))
  assert streams.make_tasks(10, 2, class_order=[9, 8]) == ((9, 8),)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(num_classes=6, classes_per_task=4), "multiple"),
    (dict(num_classes=6, classes_per_task=0), "classes_per_task"),
    (dict(num_classes=6, classes_per_task=2, class_order=[0, 0]), "repeats"),
    (dict(num_classes=6, classes_per_task=1, class_order=[6]), "outside"),
    (dict(num_classes=6, classes_per_task=1, class_order=[]), "multiple"),
  ],
)
def test_make_tasks_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    streams.make_tasks(**kwargs)


# ---------------------------------------------------------------------------
# Parsing valid streams.


def test_every_valid_token_form():
  requests = _parse("L:t0 L:c2,3 U:t0 U:c3,2 L:t2 U:r0.1 U:r0.5@t2 L:t1")
  assert requests == (
    Request("L:t0", "learn", "task", 0, (0, 1), None),
    Request("L:c2,3", "learn", "classes", None, (2, 3), None),
    Request("U:t0", "unlearn", "task", 0, (0, 1), None),
    Request("U:c3,2", "unlearn", "classes", None, (2, 3), None),
    Request("L:t2", "learn", "task", 2, (4, 5), None),
    Request("U:r0.1", "unlearn", "random", None, tuple(range(10)), 0.1),
    Request("U:r0.5@t2", "unlearn", "random", 2, (4, 5), 0.5),
    Request("L:t1", "learn", "task", 1, (2, 3), None),
  )
  assert streams.stream_tokens(requests) == [
    "L:t0",
    "L:c2,3",
    "U:t0",
    "U:c3,2",
    "L:t2",
    "U:r0.1",
    "U:r0.5@t2",
    "L:t1",
  ]


def test_list_and_text_agree():
  text = "L:t0  L:t1\nU:c1,3"
  assert _parse(text) == _parse(["L:t0", " L:t1 ", "U:c1,3"])


def test_task_classes_follow_class_order():
  tasks = streams.make_tasks(NUM_CLASSES, 2, class_order=[7, 3, 0, 9])
  requests = _parse("L:t0 L:t1 U:r1@t1", tasks=tasks)
  assert requests[0].classes == (3, 7)
  assert requests[2].classes == (0, 9)


def test_fraction_forms():
  requests = _parse("L:t0 U:r.25 U:r1e-1 U:r1")
  assert [r.fraction for r in requests[1:]] == [0.25, 0.1, 1.0]


def test_relearning_and_partial_overlap_are_allowed():
  _parse("L:t0 U:t0 L:t0 U:t0")  # Learning an unlearned task again.
  _parse("L:t0 L:t1 U:r0.1 U:t1")  # U:t1 unlearns what remains of task 1.
  _parse("L:t0 U:c1,2")  # Class 2 was never learned, class 1 was.
  _parse("L:t0 L:t1 U:c1,3 U:t0 U:r0.5@t1 U:r0.5@t1 U:r0.5")
  _parse("L:c0,5 U:t2")  # Task 2 is partly learned through class 5.


# ---------------------------------------------------------------------------
# Invalid streams: one-line StreamError naming the token and its position.


@pytest.mark.parametrize(
  "text, bad, position, match",
  [
    ("X:t0", "X:t0", 0, "unknown kind 'X'"),
    ("L:t0 l:t1", "l:t1", 1, "unknown kind"),
    ("Lt0", "Lt0", 0, "malformed"),
    ("L:t0 L:t", "L:t", 1, "malformed"),
    ("L:tx", "L:tx", 0, "malformed"),
    ("L:x1", "L:x1", 0, "malformed"),
    ("L:t0 U:c1@t0", "U:c1@t0", 1, "malformed"),
    ("L:t0 U:r0.1@t", "U:r0.1@t", 1, "malformed"),
    ("L:t0 U:r0.1@x0", "U:r0.1@x0", 1, "malformed"),
    ("L:c1,,2", "L:c1,,2", 0, "malformed class list"),
    ("L:c1,a", "L:c1,a", 0, "malformed class list"),
    ("L:t0 U:rx", "U:rx", 1, "malformed fraction"),
    ("L:t0 U:r", "U:r", 1, "malformed fraction"),
    ("L:t5", "L:t5", 0, "unknown task 5"),
    ("L:t0 U:r0.1@t7", "U:r0.1@t7", 1, "unknown task 7"),
    ("L:c3,10", "L:c3,10", 0, "unknown class 10"),
    ("L:c", "L:c", 0, "empty class list"),
    ("L:t0 U:c", "U:c", 1, "empty class list"),
    ("L:c2,2", "L:c2,2", 0, "repeats"),
    ("L:t0 U:r0", "U:r0", 1, r"outside \(0, 1\]"),
    ("L:t0 U:r0.0", "U:r0.0", 1, r"outside \(0, 1\]"),
    ("L:t0 U:r1.5", "U:r1.5", 1, r"outside \(0, 1\]"),
    ("L:t0 U:r-0.1", "U:r-0.1", 1, r"outside \(0, 1\]"),
    ("L:r0.1", "L:r0.1", 0, "only for unlearning"),
    ("U:t0", "U:t0", 0, "task 0 is currently learned"),  # Never learned.
    ("L:t0 U:t1", "U:t1", 1, "never learned"),
    ("L:t0 U:t0 U:t0", "U:t0", 2, "already unlearned"),
    ("L:t0 U:c2,3", "U:c2,3", 1, "none of classes 2,3"),
    ("L:t0 U:c0,1 U:c1", "U:c1", 2, "currently learned"),
    ("U:r0.1", "U:r0.1", 0, "nothing is currently learned"),
    ("L:t0 U:r1 U:r0.1", "U:r0.1", 2, "nothing is currently learned"),
    ("L:t0 U:r0.1@t1", "U:r0.1@t1", 1, "task 1 is currently learned"),
    ("L:t0 L:t1 U:t1 U:r0.5@t1", "U:r0.5@t1", 3, "currently learned"),
    ("L:t0 U:r1@t0 U:t0", "U:t0", 2, "currently learned"),
  ],
)
def test_invalid_streams(text, bad, position, match):
  with pytest.raises(StreamError, match=match) as error:
    _parse(text)
  message = str(error.value)
  assert f"'{bad}'" in message
  assert f"position {position}" in message
  assert "\n" not in message


@pytest.mark.parametrize("stream", ["", "   ", []])
def test_empty_stream(stream):
  with pytest.raises(StreamError, match="empty request stream"):
    _parse(stream)


def test_stream_error_is_value_error():
  assert issubclass(StreamError, ValueError)


def test_validation_happens_before_anything():
  # The bad token is last: parse_stream still fails as a whole.
  with pytest.raises(StreamError, match="'U:t4'"):
    _parse("L:t0 L:t1 L:t2 U:t1 U:t4")


# ---------------------------------------------------------------------------
# Resolution to indices.


def _run(text, seed=0):
  """Plays a stream; returns (indices per request, final learned mask)."""
  rng = np.random.default_rng(seed)
  mask = np.zeros(len(Y_TRAIN), bool)
  out = []
  for request in _parse(text):
    indices = streams.resolve_request(request, y_train=Y_TRAIN, learned_mask=mask, rng=rng)
    out.append(indices)
    mask = streams.apply_request(mask, request, indices)
  return out, mask


def test_resolve_learn_and_unlearn_by_task_and_class():
  (l0, l1, uc, ut), mask = _run("L:t0 L:t1 U:c1,2,7 U:t0")
  np.testing.assert_array_equal(l0, _of_classes(0, 1))
  np.testing.assert_array_equal(l1, _of_classes(2, 3))
  np.testing.assert_array_equal(uc, _of_classes(1, 2))  # 7 never learned.
  np.testing.assert_array_equal(ut, _of_classes(0))  # What remains of task 0.
  np.testing.assert_array_equal(mask, np.isin(Y_TRAIN, [3]))
  assert l0.dtype == np.int64


def test_relearn_returns_the_whole_task_again():
  (_, _, u, l), mask = _run("L:t0 L:t1 U:r0.5@t0 L:t0")
  assert len(u) == 20
  np.testing.assert_array_equal(l, _of_classes(0, 1))
  np.testing.assert_array_equal(mask, np.isin(Y_TRAIN, [0, 1, 2, 3]))


@pytest.mark.parametrize(
  "fraction, learned, expected",
  [
    (0.1, 40, 4),
    (0.125, 20, 3),  # 2.5 rounds half up.
    (0.01, 40, 1),  # At least one sample.
    (1.0, 40, 40),
    (0.5, 1, 1),
  ],
)
def test_random_fraction_counts(fraction, learned, expected):
  rng = np.random.default_rng(0)
  mask = np.zeros(len(Y_TRAIN), bool)
  mask[_of_classes(4, 5)[:learned]] = True
  request = _parse(f"L:c4,5 U:r{fraction}")[1]
  indices = streams.resolve_request(request, y_train=Y_TRAIN, learned_mask=mask, rng=rng)
  assert len(indices) == expected
  assert len(np.unique(indices)) == expected and np.all(np.diff(indices) > 0)
  assert mask[indices].all()  # Only learned, not yet unlearned samples.


def test_random_restricted_to_task():
  (_, _, _, u), mask = _run("L:t0 L:t1 L:t2 U:r0.5@t1")
  assert len(u) == 20
  assert set(Y_TRAIN[u]) <= {2, 3}
  assert mask.sum() == 100


def test_random_draws_only_what_is_still_learned():
  (_, _, u1, u2, u3), mask = _run("L:t0 L:t1 U:c0 U:r0.5 U:r1", seed=4)
  assert len(u2) == 30  # Half of the 60 samples of classes 1, 2, 3.
  assert not set(u2) & set(u1)
  assert len(u3) == 30 and not set(u3) & set(u2)
  assert not mask.any()


def test_resolution_is_deterministic_by_seed():
  text = "L:t0 L:t1 L:t2 U:r0.3 U:r0.5@t1"
  first, _ = _run(text, seed=7)
  again, _ = _run(text, seed=7)
  other, _ = _run(text, seed=8)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(first[3], other[3])


def test_resolve_errors():
  mask = np.zeros(len(Y_TRAIN), bool)
  rng = np.random.default_rng(0)
  learn_9 = _parse("L:c9")[0]
  y_without_9 = np.where(Y_TRAIN == 9, 0, Y_TRAIN)
  with pytest.raises(StreamError, match="'L:c9'.*no training sample"):
    streams.resolve_request(learn_9, y_train=y_without_9, learned_mask=mask, rng=rng)
  unlearn_0 = _parse("L:t0 U:t0")[1]
  with pytest.raises(StreamError, match="'U:t0'"):
    streams.resolve_request(unlearn_0, y_train=Y_TRAIN, learned_mask=mask, rng=rng)
  with pytest.raises(ValueError, match="learned_mask"):
    streams.resolve_request(learn_9, y_train=Y_TRAIN, learned_mask=mask[:-1], rng=rng)
  with pytest.raises(ValueError, match="learned_mask"):
    streams.resolve_request(learn_9, y_train=Y_TRAIN, learned_mask=mask.astype(np.int32), rng=rng)


def test_apply_request_is_pure():
  mask = np.zeros(len(Y_TRAIN), bool)
  learn, unlearn = _parse("L:t0 U:c1")
  after = streams.apply_request(mask, learn, _of_classes(0, 1))
  assert not mask.any()
  assert after.sum() == 40
  final = streams.apply_request(after, unlearn, _of_classes(1))
  assert after.sum() == 40
  np.testing.assert_array_equal(final, Y_TRAIN == 0)
