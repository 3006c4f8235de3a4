"""Request streams: parsing, whole-stream validation and resolution to indices.

A stream is a sequence of tokens (whitespace-separated in text):

========== ==================================================================
token      meaning
========== ==================================================================
L:tK       learn task K
L:c3,7     learn classes 3 and 7
U:tK       unlearn task K (task-aware)
U:c3,7     unlearn classes 3 and 7 (task-agnostic, may span tasks)
U:r0.1     unlearn a random 10 % of the samples learned and not yet unlearned
U:r0.1@tK  the same, restricted to the samples of task K
========== ==================================================================

Tasks come from a class order cut into consecutive groups of
``classes_per_task`` classes (:func:`make_tasks`). :func:`parse_stream` checks
the whole stream before anything runs, by replaying it on the set of learned
classes; :func:`resolve_request` turns one request into training-sample
indices given the current learned samples, and :func:`apply_request` updates
that set. :func:`check_stream_data` replays the stream on a dataset's labels
(:func:`replay_stream`, the run's own draws) and refuses, before any work, a
request that selects nothing or an unlearn request that leaves nothing
learned (``L:t0 U:t0``). Tokens are ASCII: other scripts' digits are refused.
"""

import math
import re
from typing import Iterator, NamedTuple, Optional, Sequence, Union

import numpy as np

from ugclu_jax.seeds import seed_for

LEARN = "learn"
UNLEARN = "unlearn"
TASK = "task"
CLASSES = "classes"
RANDOM = "random"

_TOKEN = re.compile(
  r"^(?P<kind>[^:]*):"
  r"(?:t(?P<task>\d+)"
  r"|c(?P<classes>[^@]*)"
  r"|r(?P<fraction>[^@]*)(?:@t(?P<rtask>\d+))?)$",
  re.ASCII,
)
# re.ASCII: \d would also match other scripts' digits, which int() and float() accept.
_INT = re.compile(r"^\d+$", re.ASCII)
_FLOAT = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$", re.ASCII)
_KINDS = {"L": LEARN, "U": UNLEARN}


class StreamError(ValueError):
  """A request stream or one of its tokens is invalid (one-line message)."""


class Request(NamedTuple):
  """One parsed request.

  Attributes:
    token: the token as written, e.g. ``"U:r0.1@t2"``.
    kind: ``"learn"`` or ``"unlearn"``.
    scope: ``"task"``, ``"classes"`` or ``"random"``.
    task: the task id for ``task`` scope and ``@tK`` random requests, else
      ``None``.
    classes: the classes concerned, ascending: the task's classes (``task``
      scope and ``@tK``), the listed classes (``classes`` scope), or all
      ``range(num_classes)`` (unrestricted ``random``).
    fraction: the share of learned samples drawn by ``random`` requests, in
      ``(0, 1]``; ``None`` for other scopes.
  """

  token: str
  kind: str
  scope: str
  task: Optional[int]
  classes: tuple[int, ...]
  fraction: Optional[float]


def make_tasks(
  num_classes: int,
  classes_per_task: int,
  class_order: Optional[Sequence[int]] = None,
) -> tuple[tuple[int, ...], ...]:
  """Cuts a class order into consecutive tasks.

  Task ``k`` holds ``class_order[k * C:(k + 1) * C]`` with
  ``C = classes_per_task``.

  Args:
    num_classes: number of classes of the dataset.
    classes_per_task: classes per task, ``>= 1``.
    class_order: distinct class ids in ``[0, num_classes)``; default
      ``range(num_classes)``. Its length must be a multiple of
      ``classes_per_task``; it may leave classes out.

  Returns:
    A tuple of tasks, each a tuple of class ids in class-order order.
  """
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}")
  if classes_per_task < 1:
    raise ValueError(f"classes_per_task must be >= 1, got {classes_per_task}")
  order = tuple(range(num_classes)) if class_order is None else tuple(int(c) for c in class_order)
  bad = [c for c in order if not 0 <= c < num_classes]
  if bad:
    raise ValueError(f"class_order has class {bad[0]} outside [0, {num_classes})")
  if len(set(order)) != len(order):
    raise ValueError("class_order repeats a class")
  if not order or len(order) % classes_per_task:
    raise ValueError(
      f"class_order has {len(order)} classes, not a positive "
      f"multiple of classes_per_task={classes_per_task}"
    )
  return tuple(order[i : i + classes_per_task] for i in range(0, len(order), classes_per_task))


def _error(token: str, position: int, message: str) -> StreamError:
  return StreamError(f"request {token!r} (position {position}): {message}")


def _parse_token(token, position, tasks, num_classes) -> Request:
  """Parses one token; raises StreamError naming it."""
  if not token.isascii():
    bad = next(c for c in token if not c.isascii())
    raise _error(token, position, f"non-ASCII character {bad!r}; use ASCII letters and digits 0-9")
  match = _TOKEN.match(token)
  if match is None:
    raise _error(token, position, "malformed; expected L:tK, L:cA,B, U:tK, U:cA,B, U:rF or U:rF@tK")
  kind = _KINDS.get(match["kind"])
  if kind is None:
    raise _error(
      token, position, f"unknown kind {match['kind']!r}; expected L (learn) or U (unlearn)"
    )

  def task_classes(text):
    task = int(text)
    if task >= len(tasks):
      raise _error(token, position, f"unknown task {task}; tasks are 0..{len(tasks) - 1}")
    return task, tuple(sorted(tasks[task]))

  if match["task"] is not None:
    task, classes = task_classes(match["task"])
    return Request(token, kind, TASK, task, classes, None)

  if match["classes"] is not None:
    text = match["classes"]
    if not text:
      raise _error(token, position, "empty class list")
    items = text.split(",")
    if not all(_INT.match(item) for item in items):
      raise _error(token, position, "malformed class list; expected class ids such as c3,7")
    classes = [int(item) for item in items]
    for c in classes:
      if c >= num_classes:
        raise _error(token, position, f"unknown class {c}; classes are 0..{num_classes - 1}")
    if len(set(classes)) != len(classes):
      raise _error(token, position, "class list repeats a class")
    return Request(token, kind, CLASSES, None, tuple(sorted(classes)), None)

  if kind == LEARN:
    raise _error(token, position, "random-sample requests (r) exist only for unlearning (U:r)")
  text = match["fraction"]
  if not _FLOAT.match(text):
    raise _error(token, position, f"malformed fraction {text!r}; expected e.g. U:r0.1")
  fraction = float(text)
  if not (math.isfinite(fraction) and 0.0 < fraction <= 1.0):
    raise _error(token, position, f"fraction {text} is outside (0, 1]")
  if match["rtask"] is not None:
    task, classes = task_classes(match["rtask"])
  else:
    task, classes = None, tuple(range(num_classes))
  return Request(token, kind, RANDOM, task, classes, fraction)


def parse_stream(
  stream: Union[str, Sequence[str]],
  *,
  tasks: Sequence[Sequence[int]],
  num_classes: int,
) -> tuple[Request, ...]:
  """Parses and validates a whole request stream before anything runs.

  Validation replays the stream on a per-class state, "nothing learned",
  "fully learned" or "partly learned" (after a random unlearning of a fraction
  below 1). It fails on the first token that is malformed, has an unknown kind,
  names an unknown task or class, has an empty or repeated class list or a
  fraction outside ``(0, 1]``, or unlearns a scope in which nothing is
  currently learned (never learned, or already unlearned). Partial overlap is
  accepted (``U:c3,7`` with only class 3 learned unlearns class 3), and so is
  learning a task again after unlearning it.

  Args:
    stream: whitespace-separated tokens, or a sequence of tokens.
    tasks: the tasks, e.g. from :func:`make_tasks`.
    num_classes: number of classes of the dataset.

  Returns:
    The parsed requests, in order.

  Raises:
    StreamError: a one-line message naming the offending token and its
      position (0-based).
  """
  if isinstance(stream, str):
    tokens = stream.split()
  else:
    tokens = [str(token).strip() for token in stream]
  if not tokens:
    raise StreamError("empty request stream")
  if any(not token for token in tokens):
    position = tokens.index("")
    raise StreamError(f"empty request at position {position}")

  # 0: nothing learned, 1: partly learned, 2: fully learned.
  state = np.zeros(num_classes, dtype=np.int8)
  requests = []
  for position, token in enumerate(tokens):
    request = _parse_token(token, position, tasks, num_classes)
    scope = list(request.classes)
    if request.kind == LEARN:
      state[scope] = 2
    else:
      if not state[scope].any():
        if request.scope == CLASSES:
          what = "none of classes " + ",".join(map(str, request.classes))
        elif request.task is not None:
          what = f"nothing of task {request.task}"
        else:
          what = "nothing"
        raise _error(
          token, position, f"{what} is currently learned (never learned, or already unlearned)"
        )
      if request.scope == RANDOM and request.fraction < 1.0:
        state[scope] = np.minimum(state[scope], 1)
      else:
        state[scope] = 0
    requests.append(request)
  return tuple(requests)


def _round_half_up(x: float) -> int:
  return int(math.floor(x + 0.5))


def resolve_request(
  request: Request,
  *,
  y_train: np.ndarray,
  learned_mask: np.ndarray,
  rng: np.random.Generator,
) -> np.ndarray:
  """Returns the training-sample indices a request acts on.

  * learn: every training sample of the request's classes (samples of those
    classes unlearned earlier are learned again), i.e. ``D_L``;
  * unlearn by task or classes: the currently learned samples of those
    classes, i.e. ``D_U``;
  * unlearn random: ``k = max(1, floor(f * n + 1/2))`` samples drawn without
    replacement by ``rng.choice`` from the ``n`` currently learned samples
    (of the task's classes for ``@tK``).

  Args:
    request: a request from :func:`parse_stream`.
    y_train: ``[N]`` training labels.
    learned_mask: ``bool [N]``, the samples learned and not yet unlearned.
    rng: source of the random draw (only ``random`` requests use it).

  Returns:
    Sorted, distinct ``int64`` indices into the training set (non-empty).

  Raises:
    StreamError: the request selects no sample (for example a class absent
      from the training set, or everything of it already unlearned).
  """
  y_train = np.asarray(y_train)
  learned_mask = np.asarray(learned_mask)
  if learned_mask.dtype != np.bool_ or learned_mask.shape != y_train.shape:
    raise ValueError(
      f"learned_mask must be bool of shape {y_train.shape}, got "
      f"{learned_mask.dtype} {learned_mask.shape}"
    )
  in_scope = np.isin(y_train, np.asarray(request.classes, dtype=y_train.dtype))
  if request.kind == LEARN:
    indices = np.flatnonzero(in_scope)
  else:
    indices = np.flatnonzero(in_scope & learned_mask)
  if not indices.size:
    raise StreamError(f"request {request.token!r}: selects no training sample")
  if request.scope == RANDOM:
    k = max(1, _round_half_up(request.fraction * indices.size))
    indices = np.sort(rng.choice(indices, size=k, replace=False))
  return indices.astype(np.int64)


def apply_request(learned_mask: np.ndarray, request: Request, indices: np.ndarray) -> np.ndarray:
  """Returns the learned-sample mask after a request (the input is unchanged).

  Args:
    learned_mask: ``bool [N]`` before the request.
    request: the request.
    indices: what :func:`resolve_request` returned for it.

  Returns:
    A new ``bool [N]`` mask with ``indices`` set (learn) or cleared (unlearn).
  """
  mask = np.array(learned_mask, dtype=bool, copy=True)
  mask[np.asarray(indices, dtype=np.int64)] = request.kind == LEARN
  return mask


def request_rng(seed: int, position: int) -> np.random.Generator:
  """The generator of request ``position``'s random draw (``U:r``) in a run seeded ``seed``."""
  return np.random.default_rng(seed_for((seed, position), "request.random_unlearn"))


def replay_stream(
  requests: Sequence[Request], *, y_train: np.ndarray, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Resolves a stream request by request, as a run seeded ``seed`` does.

  Yields, for each request in order, ``(indices, learned_after)``: what
  :func:`resolve_request` returns (with :func:`request_rng`) and the
  learned-sample mask after :func:`apply_request`. Host-side and cheap: the
  draws of a whole run are known before any training.

  Raises:
    StreamError: a request selects no training sample.
  """
  y_train = np.asarray(y_train)
  learned = np.zeros(y_train.shape, bool)
  for position, request in enumerate(requests):
    try:
      indices = resolve_request(
        request, y_train=y_train, learned_mask=learned, rng=request_rng(seed, position)
      )
    except StreamError:
      raise _error(
        request.token,
        position,
        "selects no training sample of this dataset "
        "(its classes have none, or none is learned now)",
      ) from None
    learned = apply_request(learned, request, indices)
    yield indices, learned


def check_stream_data(requests: Sequence[Request], *, y_train: np.ndarray, seed: int) -> None:
  """Checks a parsed stream against the training labels before any work.

  Replays the stream (:func:`replay_stream`) and refuses a request that
  selects no sample (e.g. ``U:c3`` when a previous ``U:r`` already took every
  sample of class 3) or an unlearn request after which nothing is learned
  (``L:t0 U:t0``; a ``U:r`` that rounds up to every learned sample): the
  oracle retrains on the remaining data ``D_R``, and methods draw their
  remain batches from it, so it must not be empty.

  Raises:
    StreamError: a one-line message naming the token and its position.
  """
  for position, (indices, learned) in enumerate(
    replay_stream(requests, y_train=y_train, seed=seed)
  ):
    request = requests[position]
    if request.kind == UNLEARN and not learned.any():
      raise _error(
        request.token,
        position,
        f"unlearns all {indices.size} learned samples, so nothing remains for the "
        "oracle to retrain on; learn more first, or unlearn less",
      )


def stream_tokens(requests: Sequence[Request]) -> list[str]:
  """The tokens of parsed requests, e.g. for a report."""
  return [request.token for request in requests]


# Learning is mostly by task, as in class-incremental streams.
_KIND_WEIGHTS = {"L:t": 2.0, "L:c": 1.0, "U:t": 1.0, "U:c": 1.0, "U:r": 1.0, "U:r@t": 1.0}


def random_stream(
  rng: np.random.Generator,
  *,
  tasks: Sequence[Sequence[int]],
  num_classes: int,
  length: int,
  fractions: Sequence[float] = (0.05, 0.1, 0.2),
  unlearn_prob: float = 0.45,
  motif_prob: float = 0.4,
  min_classes: int = 2,
  min_kept: float = 0.3,
  single_class_learn: bool = False,
) -> str:
  """Draws a valid request stream of ``length`` tokens from the grammar.

  The stream starts with a learn request. At each step it unlearns with
  probability ``unlearn_prob`` (when an unlearn request is possible) and picks a
  request kind among those possible (learn: ``L:t`` twice as often as
  ``L:c``; unlearn: ``U:t``, ``U:c``, ``U:r``, ``U:r@t`` alike), then a request
  of that kind uniformly.
  With probability ``motif_prob`` it picks instead one of the requests that
  make streams hard: another random unlearning right after one, ``U:t`` or
  ``U:c`` of classes partly unlearned by an earlier ``U:r`` (partial
  overlaps), and learning again a class or task wholly unlearned before.
  Class lists hold two classes, possibly of two tasks (an unlearned class may
  sit beside a learned one); ``U:c`` lists may also hold one class, and so may
  ``L:c`` lists with ``single_class_learn``: off by default, since a learn
  request of one class makes any learner without replay (e.g. plain
  fine-tuning) a constant predictor, which is what the collapse detector
  flags.

  Every unlearn request leaves at least ``min_classes`` classes learned, and a
  random-sample request never takes any class below ``min_kept`` of its
  samples in expectation, so on data with a few tens of samples per class the
  remaining set is never empty. The result passes :func:`parse_stream`.

  Args:
    rng: the source of every draw (one stream per generator state).
    tasks: the tasks, e.g. from :func:`make_tasks`.
    num_classes: number of classes of the dataset.
    length: number of requests, ``>= 1``.
    fractions: the fractions ``U:r`` requests draw from, each in ``(0, 1)``.
    unlearn_prob: the probability of an unlearn request at each step.
    motif_prob: the probability of picking a hard request when one is possible.
    min_classes: classes that stay learned after any unlearn request, ``>= 1``.
    min_kept: the least expected share of a class's samples left by ``U:r``.
    single_class_learn: whether ``L:c`` may name a single class.

  Returns:
    The stream as whitespace-separated tokens.
  """
  if not isinstance(rng, np.random.Generator):
    raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
  if length < 1:
    raise ValueError(f"length must be >= 1, got {length}")
  if not fractions or not all(0.0 < f < 1.0 for f in fractions):
    raise ValueError(f"fractions must be non-empty, each in (0, 1), got {tuple(fractions)}")
  if not (0 <= unlearn_prob <= 1 and 0 <= motif_prob <= 1 and 0 <= min_kept < 1):
    raise ValueError(
      f"need unlearn_prob, motif_prob in [0, 1] and min_kept in [0, 1), got "
      f"{unlearn_prob}, {motif_prob}, {min_kept}"
    )
  tasks = [tuple(int(c) for c in t) for t in tasks]
  classes = sorted({c for t in tasks for c in t})
  if not classes or any(not 0 <= c < num_classes for c in classes):
    raise ValueError(f"tasks must hold classes in [0, {num_classes}), got {tasks}")
  if not 1 <= min_classes < len(classes):
    raise ValueError(
      f"min_classes must be in [1, {len(classes) - 1}] for {len(classes)} "
      f"classes, got {min_classes}"
    )

  kept = np.zeros(num_classes)  # expected share of each class's samples still learned
  ever = np.zeros(num_classes, bool)  # learned at some point
  tokens, prev_random = [], False

  def cls(cs):
    return "c" + ",".join(map(str, sorted(cs)))

  def candidates():
    """{kind: [(token, new kept, is a motif)]} of the valid next requests."""
    out = {k: [] for k in ("L:t", "L:c", "U:t", "U:c", "U:r", "U:r@t")}
    learned = [c for c in classes if kept[c] > 0]
    partial = (kept > 0) & (kept < 1)
    gone = ever & (kept == 0)
    for i, t in enumerate(tasks):
      if (kept[list(t)] < 1).any():
        after = kept.copy()
        after[list(t)] = 1
        out["L:t"].append((f"L:t{i}", after, bool(gone[list(t)].any())))
    for c in classes:
      for d in [None] * single_class_learn + [d for d in classes if d > c]:
        cs = [c] if d is None else [c, d]
        if (kept[cs] < 1).any():
          after = kept.copy()
          after[cs] = 1
          out["L:c"].append((f"L:{cls(cs)}", after, bool(gone[cs].any())))
    for i, t in enumerate(tasks):
      if (kept[list(t)] > 0).any():
        after = kept.copy()
        after[list(t)] = 0
        out["U:t"].append((f"U:t{i}", after, bool(partial[list(t)].any())))
    for c in classes:
      for d in [None] + [d for d in classes if d > c]:
        cs = [c] if d is None else [c, d]
        if (kept[cs] > 0).any():
          after = kept.copy()
          after[cs] = 0
          out["U:c"].append((f"U:{cls(cs)}", after, bool(partial[cs].any())))
    for f in fractions:
      scopes = [(None, learned)] + [(i, [c for c in t if kept[c] > 0]) for i, t in enumerate(tasks)]
      for i, scope in scopes:
        if scope and all(kept[c] * (1 - f) >= min_kept for c in scope):
          after = kept.copy()
          after[scope] = kept[scope] * (1 - f)
          if i is None:
            out["U:r"].append((f"U:r{f:g}", after, prev_random))
          else:
            out["U:r@t"].append((f"U:r{f:g}@t{i}", after, prev_random))
    for kind in ("U:t", "U:c", "U:r", "U:r@t"):
      out[kind] = [x for x in out[kind] if (x[1] > 0).sum() >= min_classes]
    return {k: v for k, v in out.items() if v}

  for _ in range(length):
    options = candidates()
    learn = [k for k in options if k.startswith("L:")]
    unlearn = [k for k in options if k.startswith("U:")]
    kinds = unlearn if unlearn and (not learn or rng.random() < unlearn_prob) else learn
    motifs = {k: [x for x in options[k] if x[2]] for k in kinds}
    motifs = [v for v in motifs.values() if v]
    if motifs and rng.random() < motif_prob:
      motif = motifs[rng.integers(len(motifs))]
      token, after, _ = motif[rng.integers(len(motif))]
    else:
      weights = np.asarray([_KIND_WEIGHTS[k] for k in kinds], float)
      kind = kinds[rng.choice(len(kinds), p=weights / weights.sum())]
      token, after, _ = options[kind][rng.integers(len(options[kind]))]
    tokens.append(token)
    ever |= after > 0
    kept = after
    prev_random = token.startswith("U:r")
  stream = " ".join(tokens)
  parse_stream(stream, tasks=tasks, num_classes=num_classes)
  return stream
