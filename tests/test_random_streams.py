"""The random stream generator (``data.random_stream``): validity, coverage, determinism."""

import re

import numpy as np
import pytest

from ugclu_jax import data as D

TASKS = D.make_tasks(10, 2)
DRAWS = 50


def _draw(seed, length=8, **kw):
  return D.random_stream(
    np.random.default_rng(seed), tasks=TASKS, num_classes=10, length=length, **kw
  )


def _kind(request):
  short = {"task": "t", "classes": "c", "random": "r"}[request.scope]
  kind = ("L:" if request.kind == D.streams.LEARN else "U:") + short
  return kind + "@t" if request.scope == "random" and request.task is not None else kind


def _properties(stream) -> set:
  """What a stream covers, replayed on per-class states (0 none, 1 partly, 2 fully learned)."""
  requests = D.parse_stream(stream, tasks=TASKS, num_classes=10)
  state = np.zeros(10, int)
  gone = np.zeros(10, bool)  # learned once, then wholly unlearned
  by_random_task = set()  # tasks partly unlearned by U:r@t
  out, prev = set(), None
  for q in requests:
    out.add(_kind(q))
    cs = list(q.classes)
    if q.kind == D.streams.LEARN:
      if gone[cs].any() or (state[cs] == 1).any():
        out.add("learn after unlearn")
      if q.scope == "task" and gone[cs].all():
        out.add("relearn an unlearned task")
      state[cs], gone[cs] = 2, False
    elif q.scope == "random":
      if prev is not None and prev.kind == D.streams.UNLEARN and prev.scope == "random":
        out.add("U:r twice in a row")
      state[cs] = np.minimum(state[cs], 1)
      if q.task is not None:
        by_random_task.add(q.task)
    else:
      if q.scope == "classes" and (state[cs] == 1).any():
        out.add("U:c after U:r on its class")
      if q.scope == "task" and q.task in by_random_task and (state[cs] == 1).any():
        out.add("U:t after U:r@t")
      gone[cs] |= state[cs] > 0
      state[cs] = 0
    assert (state > 0).sum() >= 2, f"{stream!r}: fewer than two classes remain after {q.token}"
    prev = q
  return out


def test_draws_are_valid_and_cover_the_grammar():
  covered = {}
  for seed in range(DRAWS):
    stream = _draw(seed)
    assert len(stream.split()) == 8
    assert stream.startswith("L:")
    for prop in _properties(stream):
      covered[prop] = covered.get(prop, 0) + 1
  wanted = {
    "L:t",
    "L:c",
    "U:t",
    "U:c",
    "U:r",
    "U:r@t",
    "learn after unlearn",
    "relearn an unlearned task",
    "U:r twice in a row",
    "U:c after U:r on its class",
    "U:t after U:r@t",
  }
  assert wanted <= set(covered), sorted(wanted - set(covered))
  # Not by a single lucky draw: each property in at least two streams.
  assert min(covered[p] for p in wanted) >= 2, covered


def test_draws_pass_the_data_checks_of_a_run():
  ds = D.load_dataset("digits")
  for seed in range(20):
    requests = D.parse_stream(_draw(seed, length=12), tasks=TASKS, num_classes=10)
    D.check_stream_data(requests, y_train=ds.y_train, seed=seed)


def test_same_seed_same_stream_and_seeds_differ():
  assert _draw(7) == _draw(7)
  assert len({_draw(s) for s in range(10)}) == 10


def test_learn_class_lists_hold_two_classes_unless_asked():
  tokens = [t for s in range(DRAWS) for t in _draw(s).split() if t.startswith("L:c")]
  assert tokens and all(len(t[3:].split(",")) == 2 for t in tokens)
  tokens = [
    t
    for s in range(DRAWS)
    for t in _draw(s, single_class_learn=True).split()
    if t.startswith("L:c")
  ]
  assert any(len(t[3:].split(",")) == 1 for t in tokens)


def test_fractions_and_tasks_follow_the_arguments():
  tasks = D.make_tasks(6, 3, (5, 4, 3, 2, 1, 0))
  for seed in range(20):
    stream = D.random_stream(
      np.random.default_rng(seed), tasks=tasks, num_classes=6, length=6, fractions=(0.25,)
    )
    D.parse_stream(stream, tasks=tasks, num_classes=6)
    for fraction in re.findall(r"U:r([0-9.]+)", stream):
      assert fraction == "0.25"


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"length": 0}, "length must be >= 1"),
    ({"fractions": (0.0,)}, r"fractions must be .* in \(0, 1\)"),
    ({"fractions": (1.0,)}, r"fractions must be .* in \(0, 1\)"),
    ({"min_classes": 10}, "min_classes must be in"),
    ({"unlearn_prob": 2.0}, "unlearn_prob"),
  ],
)
def test_bad_arguments_are_one_line_errors(kwargs, match):
  args = {"tasks": TASKS, "num_classes": 10, "length": 5, **kwargs}
  with pytest.raises(ValueError, match=match):
    D.random_stream(np.random.default_rng(0), **args)


def test_rng_must_be_a_generator():
  with pytest.raises(ValueError, match="numpy.random.Generator"):
    D.random_stream(0, tasks=TASKS, num_classes=10, length=3)
