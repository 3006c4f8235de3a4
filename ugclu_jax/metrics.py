"""Metrics of continual learning-unlearning (docs/method.md §9), one canonical name each.

Three layers:

* per-example outputs in ``jnp`` (:func:`correct`, :func:`softmax_entropy`,
  :func:`confidence`), jittable on fixed-shape batches;
* mask-aware functional accumulators (:class:`Average`, :class:`Accuracy`) in the
  style of ``clu.metrics``: ``empty`` / ``from_model_output`` / ``merge`` /
  ``compute``, all jittable, so padded evaluation batches never change shapes;
* host-side scalar metrics on numpy inputs that return a Python ``float``, or
  ``None`` where the metric is undefined (empty set, no earlier task, ...):
  :func:`accuracy` and its named forms :func:`forget_acc`, :func:`remain_acc`,
  :func:`test_acc`, :func:`unlearn_acc`; the gap to the oracle :func:`avg_gap`;
  the output divergences :func:`kl_div`, :func:`js_div`; the continual-learning
  metrics on the accuracy matrix (:func:`accuracy_matrix`, :func:`avg_acc`,
  :func:`forgetting`, :func:`bwt`); :func:`relapse`; and the :class:`Cost` record.

Membership inference (``mia_efficacy``) lives in :mod:`ugclu_jax.mia`.
"""

from collections.abc import Iterable, Mapping, Sequence
import math
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

_UNLEARN_KEYS = ("forget_acc", "remain_acc", "test_acc", "mia_efficacy")


# ---------------------------------------------------------------------------
# Per-example outputs (jnp, jittable).
# ---------------------------------------------------------------------------


def _check_logits_labels(logits: jax.Array, labels: jax.Array, name: str) -> None:
  if logits.ndim != 2:
    raise ValueError(f"{name}: logits must be [B, C], got shape {logits.shape}")
  if labels.shape != logits.shape[:1]:
    raise ValueError(f"{name}: labels must be [B]={logits.shape[:1]}, got shape {labels.shape}")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"{name}: labels must be integers, got dtype {labels.dtype}")


def _log_probs(logits: jax.Array) -> jax.Array:
  """``log_softmax`` in at least float32."""
  return jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  r"""Per-example top-1 correctness.

  .. math:: c_i = \mathbb{1}[\arg\max_k f_k(x_i) = y_i]

  Ties in the arg max go to the lowest class index (``jnp.argmax``).

  Args:
    logits: ``[B, C]`` logits (or probabilities: only the arg max matters).
    labels: ``[B]`` integer labels.

  Returns:
    ``[B]`` float32 array of 0/1.
  """
  _check_logits_labels(logits, labels, "correct")
  return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


def softmax_entropy(logits: jax.Array) -> jax.Array:
  r"""Per-example entropy of the predictive distribution, in nats.

  .. math:: H_i = -\sum_k p_{ik} \log p_{ik}, \qquad p_i = \mathrm{softmax}(f(x_i))

  Computed from ``log_softmax``, with :math:`0 \log 0 = 0` (so ``-inf`` logits
  are safe). A uniform distribution over :math:`C` classes gives :math:`\log C`.

  Args:
    logits: ``[B, C]`` logits.

  Returns:
    ``[B]`` entropies, in at least float32.
  """
  if logits.ndim != 2:
    raise ValueError(f"softmax_entropy: logits must be [B, C], got shape {logits.shape}")
  logp = _log_probs(logits)
  p = jnp.exp(logp)
  return -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)


def confidence(logits: jax.Array, labels: jax.Array) -> jax.Array:
  r"""Per-example probability of the true label.

  .. math:: \mathrm{conf}_i = p_\theta(y_i \mid x_i) = \mathrm{softmax}(f(x_i))_{y_i}

  Args:
    logits: ``[B, C]`` logits.
    labels: ``[B]`` integer labels.

  Returns:
    ``[B]`` probabilities in ``[0, 1]``, in at least float32.
  """
  _check_logits_labels(logits, labels, "confidence")
  logp = _log_probs(logits)
  return jnp.exp(jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0])


# ---------------------------------------------------------------------------
# Functional accumulators (clu.metrics style, jittable).
# ---------------------------------------------------------------------------


def _mask_or_ones(mask: jax.Array | None, batch: int, name: str) -> jax.Array:
  if mask is None:
    return jnp.ones((batch,), jnp.float32)
  if mask.shape != (batch,):
    raise ValueError(f"{name}: mask must be [B]=({batch},), got shape {mask.shape}")
  return mask.astype(jnp.float32)


@flax.struct.dataclass
class Average:
  r"""Mask-aware running mean: :math:`\sum_i m_i v_i / \sum_i m_i`.

  An immutable pytree; every method is jittable. Padding rows (mask 0) add
  nothing to either sum, so padded fixed-shape batches give the exact mean.

  Attributes:
    total: float32 scalar, :math:`\sum_i m_i v_i`.
    count: float32 scalar, :math:`\sum_i m_i`.
  """

  total: jax.Array
  count: jax.Array

  @classmethod
  def empty(cls) -> "Average":
    """The identity of :meth:`merge` (no examples)."""
    return cls(total=jnp.zeros((), jnp.float32), count=jnp.zeros((), jnp.float32))

  @classmethod
  def from_model_output(cls, *, values: jax.Array, mask: jax.Array | None = None) -> "Average":
    """Accumulator of ``[B]`` per-example ``values`` under a ``[B]`` 0/1 ``mask`` (default ones)."""
    if values.ndim != 1:
      raise ValueError(f"{cls.__name__}: values must be [B], got shape {values.shape}")
    m = _mask_or_ones(mask, values.shape[0], cls.__name__)
    return cls(total=jnp.sum(m * values.astype(jnp.float32)), count=jnp.sum(m))

  def merge(self, other: "Average") -> "Average":
    """Sum of two accumulators of the same type."""
    if type(other) is not type(self):
      raise ValueError(f"cannot merge {type(self).__name__} with {type(other).__name__}")
    return type(self)(total=self.total + other.total, count=self.count + other.count)

  def compute(self) -> jax.Array:
    """The mean ``total / count``; NaN when no example was seen (``count == 0``)."""
    nonempty = self.count > 0
    return jnp.where(nonempty, self.total / jnp.where(nonempty, self.count, 1.0), jnp.nan)


@flax.struct.dataclass
class Accuracy(Average):
  r"""Mask-aware top-1 accuracy accumulator.

  .. math:: \mathrm{acc} = \frac{\sum_i m_i \, \mathbb{1}[\arg\max_k f_k(x_i) = y_i]}{\sum_i m_i}

  Example (padded batches under ``jit``)::

    step = jax.jit(lambda acc, logits, labels, mask: acc.merge(
        Accuracy.from_model_output(logits=logits, labels=labels, mask=mask)))
    acc = Accuracy.empty()
    for batch in batches:
      acc = step(acc, apply(params, batch.x), batch.y, batch.mask)
    value = float(acc.compute())
  """

  @classmethod
  def from_model_output(
    cls, *, logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None
  ) -> "Accuracy":
    """Accumulator of one batch: ``logits [B, C]``, ``labels [B]``, ``mask [B]`` (1 real, 0 pad)."""
    return super().from_model_output(values=correct(logits, labels), mask=mask)


# ---------------------------------------------------------------------------
# Host-side accuracies.
# ---------------------------------------------------------------------------


def _as_01_vector(x: Any, what: str) -> np.ndarray:
  a = np.asarray(x, dtype=np.float64)
  if a.ndim != 1:
    raise ValueError(f"{what} must be 1-D, got shape {a.shape}")
  if not np.all((a == 0) | (a == 1)):
    raise ValueError(f"{what} must hold only 0/1 (or booleans)")
  return a


def accuracy(correct: Any, mask: Any = None) -> float | None:
  r"""Top-1 accuracy of per-example correctness, on the rows where ``mask`` is 1.

  .. math:: \mathrm{acc} = \frac{\sum_i m_i c_i}{\sum_i m_i}

  Args:
    correct: ``[N]`` 0/1 or booleans (e.g. collected :func:`correct` outputs).
    mask: optional ``[N]`` 0/1; default all ones.

  Returns:
    The accuracy in ``[0, 1]``, or ``None`` when no row is selected (empty set).
  """
  c = _as_01_vector(correct, "accuracy: correct")
  m = np.ones_like(c) if mask is None else _as_01_vector(mask, "accuracy: mask")
  if m.shape != c.shape:
    raise ValueError(f"accuracy: mask shape {m.shape} differs from correct shape {c.shape}")
  n = m.sum()
  return None if n == 0 else float((m * c).sum() / n)


def forget_acc(correct: Any, mask: Any = None) -> float | None:
  r"""FA: top-1 accuracy on the forget set :math:`D_U` (its training samples).

  .. math:: \mathrm{FA} = \frac{1}{|D_U|} \sum_{(x, y) \in D_U} \mathbb{1}[\hat y(x) = y]

  Judged by closeness to the oracle's FA, not by FA → 0 (see :func:`avg_gap`).
  Same arguments and ``None`` rule as :func:`accuracy`.
  """
  return accuracy(correct, mask)


def unlearn_acc(correct: Any, mask: Any = None) -> float | None:
  r"""UA: :math:`1 - \mathrm{FA}` on the forget set :math:`D_U`; ``None`` when FA is."""
  fa = accuracy(correct, mask)
  return None if fa is None else 1.0 - fa


def remain_acc(correct: Any, mask: Any = None) -> float | None:
  r"""RA: top-1 accuracy on the remaining training data :math:`D_R \cup D_L`.

  .. math:: \mathrm{RA} = \frac{1}{|D_R \cup D_L|} \sum_{(x, y) \in D_R \cup D_L}
            \mathbb{1}[\hat y(x) = y]

  Same arguments and ``None`` rule as :func:`accuracy`.
  """
  return accuracy(correct, mask)


def test_acc(correct: Any, mask: Any = None) -> float | None:
  r"""TA: top-1 accuracy on the test samples of the classes still learned.

  .. math:: \mathrm{TA} = \frac{1}{|T_K|} \sum_{(x, y) \in T_K} \mathbb{1}[\hat y(x) = y],
            \quad T_K = \{(x, y) \in D_{test} : y \text{ currently learned}\}

  Same arguments and ``None`` rule as :func:`accuracy`.
  """
  return accuracy(correct, mask)


test_acc.__test__ = False  # A metric, not a pytest test, when imported into a test module.


def _defined(v: Any) -> bool:
  return v is not None and math.isfinite(float(v))


def avg_gap(
  metrics: Mapping[str, Any], oracle: Mapping[str, Any], keys: Sequence[str] = _UNLEARN_KEYS
) -> float | None:
  r"""Average gap to the oracle (retrain) model.

  .. math:: \mathrm{AvgGap} = \frac{1}{|K'|} \sum_{k \in K'} |m_k - m^*_k|

  where :math:`K'` holds the ``keys`` whose value is defined (present, not
  ``None``, finite) in both ``metrics`` and ``oracle``. With the default keys this
  is mean(|FA − FA*|, |RA − RA*|, |TA − TA*|, |MIA − MIA*|).

  Args:
    metrics: the method's metrics by name.
    oracle: the oracle's metrics by name.
    keys: the metric names to compare.

  Returns:
    The mean absolute gap, or ``None`` when no key is defined in both.
  """
  if isinstance(keys, str):
    raise ValueError("avg_gap: keys must be a sequence of metric names, not a string")
  gaps = [
    abs(float(metrics[k]) - float(oracle[k]))
    for k in keys
    if _defined(metrics.get(k)) and _defined(oracle.get(k))
  ]
  return float(np.mean(gaps)) if gaps else None


# ---------------------------------------------------------------------------
# Divergences between oracle and model outputs.
# ---------------------------------------------------------------------------


def _as_probs(x: Any, what: str) -> np.ndarray:
  a = np.asarray(x, dtype=np.float64)
  if a.ndim != 2:
    raise ValueError(f"{what} must be probabilities [N, C], got shape {a.shape}")
  if a.size and (
    not np.all(np.isfinite(a)) or np.any(a < 0) or not np.allclose(a.sum(axis=1), 1.0, atol=1e-3)
  ):
    raise ValueError(f"{what} must be finite, non-negative rows summing to 1 (probabilities)")
  return a


def _kl_rows(p: np.ndarray, q: np.ndarray, eps: float) -> np.ndarray:
  # Terms with p = 0 contribute 0; q is floored at eps so that log q stays finite.
  safe_p = np.where(p > 0, p, 1.0)
  safe_q = np.where(p > 0, np.maximum(q, eps), 1.0)
  terms = np.where(p > 0, p * (np.log(safe_p) - np.log(safe_q)), 0.0)
  return terms.sum(axis=1)


def _check_pair(p: Any, q: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
  p = _as_probs(p, f"{name}: p (oracle)")
  q = _as_probs(q, f"{name}: q (model)")
  if p.shape != q.shape:
    raise ValueError(f"{name}: p shape {p.shape} differs from q shape {q.shape}")
  return p, q


def kl_div(p: Any, q: Any, *, eps: float = 1e-12) -> float | None:
  r"""Mean KL divergence from the oracle's to the model's output distribution, in nats.

  .. math:: \mathrm{KL} = \frac{1}{N} \sum_{i=1}^N \mathrm{KL}(p_i \,\|\, q_i)
            = \frac{1}{N} \sum_i \sum_c p_{ic} \big(\log p_{ic} - \log q_{ic}\big)

  Direction: :math:`p` is the oracle (retrain), :math:`q` the evaluated model.
  Terms with :math:`p_{ic} = 0` are 0; :math:`q_{ic}` is floored at ``eps``.

  Args:
    p: ``[N, C]`` oracle probabilities (softmax outputs) on the evaluated set (D_U).
    q: ``[N, C]`` model probabilities on the same samples.
    eps: floor for :math:`q` inside the logarithm.

  Returns:
    The mean divergence, or ``None`` when ``N == 0``.
  """
  p, q = _check_pair(p, q, "kl_div")
  if p.shape[0] == 0:
    return None
  return float(np.mean(_kl_rows(p, q, eps)))


def js_div(p: Any, q: Any) -> float | None:
  r"""Mean Jensen-Shannon divergence between oracle and model output distributions, in nats.

  .. math:: \mathrm{JS} = \frac{1}{N} \sum_{i=1}^N \Big[\tfrac12 \mathrm{KL}(p_i \| m_i)
            + \tfrac12 \mathrm{KL}(q_i \| m_i)\Big], \qquad m_i = \tfrac12 (p_i + q_i)

  Symmetric, 0 for identical distributions, at most :math:`\log 2`.

  Args:
    p: ``[N, C]`` oracle probabilities (softmax outputs) on the evaluated set (D_U).
    q: ``[N, C]`` model probabilities on the same samples.

  Returns:
    The mean divergence, or ``None`` when ``N == 0``.
  """
  p, q = _check_pair(p, q, "js_div")
  if p.shape[0] == 0:
    return None
  m = 0.5 * (p + q)  # m > 0 wherever p > 0 or q > 0, so no floor is needed.
  return float(np.mean(0.5 * _kl_rows(p, m, 0.0) + 0.5 * _kl_rows(q, m, 0.0)))


# ---------------------------------------------------------------------------
# Continual learning: the accuracy matrix.
# ---------------------------------------------------------------------------


def accuracy_matrix(rows: Sequence[Sequence[float | None]]) -> np.ndarray:
  r"""Accuracy matrix :math:`a[r, t]` from per-request rows (``acc_per_task`` of report.json).

  :math:`a[r, t]` is the test accuracy of task :math:`t` after request :math:`r`,
  NaN where task :math:`t` is not currently learned. Rows may be ragged (tasks
  that appear later); short rows and ``None`` entries become NaN.

  Args:
    rows: one sequence per request, of floats or ``None``.

  Returns:
    ``[R, T]`` float64 array, ``T`` the longest row.
  """
  rows = [list(r) for r in rows]
  width = max((len(r) for r in rows), default=0)
  a = np.full((len(rows), width), np.nan)
  for i, r in enumerate(rows):
    a[i, : len(r)] = np.array([np.nan if v is None else v for v in r], dtype=np.float64)
  return a


def _as_matrix(matrix: Any, name: str) -> np.ndarray:
  a = (
    np.asarray(matrix, dtype=np.float64)
    if isinstance(matrix, np.ndarray)
    else accuracy_matrix(matrix)
  )
  if a.ndim != 2:
    raise ValueError(f"{name}: the accuracy matrix must be [R, T], got shape {a.shape}")
  return a


def _kept_tasks(row: np.ndarray, kept: Iterable[int] | None, name: str) -> list[int]:
  if kept is None:
    return [int(t) for t in np.flatnonzero(np.isfinite(row))]
  tasks = sorted({int(t) for t in kept})
  for t in tasks:
    if not 0 <= t < row.shape[0]:
      raise ValueError(f"{name}: task {t} is outside the {row.shape[0]} tasks of the accuracy row")
    if not np.isfinite(row[t]):
      raise ValueError(f"{name}: kept task {t} has no accuracy (None/NaN) in the row")
  return tasks


def _learned_at(a: np.ndarray, r: int, t: int) -> int:
  """First request of the current learned span of task t: the run of finite a[., t] ending at r."""
  s = r
  while s > 0 and np.isfinite(a[s - 1, t]):
    s -= 1
  return s


def _check_request(a: np.ndarray, r: int, name: str) -> None:
  if not 0 <= r < a.shape[0]:
    raise ValueError(f"{name}: request index {r} is outside the {a.shape[0]} rows of the matrix")


def avg_acc(
  acc_row: Sequence[float | None], learned_tasks: Iterable[int] | None = None
) -> float | None:
  r"""Average accuracy over the tasks currently learned (kept).

  .. math:: \mathrm{ACC}_r = \frac{1}{|K_r|} \sum_{t \in K_r} a[r, t]

  Args:
    acc_row: the row :math:`a[r, \cdot]` (floats, ``None``/NaN where not learned).
    learned_tasks: the kept tasks :math:`K_r`; default the tasks with a finite entry.

  Returns:
    The mean, or ``None`` when no task is learned.
  """
  row = np.array([np.nan if v is None else v for v in acc_row], dtype=np.float64)
  tasks = _kept_tasks(row, learned_tasks, "avg_acc")
  return float(np.mean(row[tasks])) if tasks else None


def forgetting(matrix: Any, r: int, kept: Iterable[int] | None = None) -> float | None:
  r"""Average forgetting after request ``r`` (Chaudhry et al., 2018; as used by GEM).

  For each kept task :math:`t` whose current learning request :math:`s_t` is
  earlier than :math:`r` (:math:`s_t < r`),

  .. math:: f_t^r = \max_{s_t \le r' < r} a[r', t] - a[r, t], \qquad
            F_r = \frac{1}{|K'_r|} \sum_{t \in K'_r} f_t^r,

  where :math:`s_t` is the first request of the run of learned (finite) entries
  of column :math:`t` that ends at :math:`r` (a task learned again after being
  unlearned starts a new run), and :math:`K'_r = \{t \in K_r : s_t < r\}`. When
  request :math:`r` learns the newest task this is Chaudhry's "all but the last
  task". Forgetting can be negative (the task improved).

  Args:
    matrix: the accuracy matrix (see :func:`accuracy_matrix`), NaN/``None`` where not learned.
    r: the request index.
    kept: the tasks currently learned :math:`K_r`; default the finite entries of row ``r``.

  Returns:
    :math:`F_r`, or ``None`` when no kept task was learned before ``r`` (e.g. at
    the first request, or when only the task just learned is kept).
  """
  a = _as_matrix(matrix, "forgetting")
  _check_request(a, r, "forgetting")
  vals = []
  for t in _kept_tasks(a[r], kept, "forgetting"):
    s = _learned_at(a, r, t)
    if s < r:
      vals.append(np.max(a[s:r, t]) - a[r, t])
  return float(np.mean(vals)) if vals else None


def bwt(matrix: Any, r: int, kept: Iterable[int] | None = None) -> float | None:
  r"""Backward transfer after request ``r`` (Lopez-Paz & Ranzato, 2017, GEM).

  .. math:: \mathrm{BWT}_r = \frac{1}{|K'_r|} \sum_{t \in K'_r} \big(a[r, t] - a[s_t, t]\big)

  over the same tasks as :func:`forgetting`: the kept tasks :math:`t` whose
  current learning request :math:`s_t` is earlier than :math:`r`, with
  :math:`a[s_t, t]` the accuracy right after learning :math:`t`. When request
  :math:`r` learns the newest task this is GEM's mean over all tasks but the
  last, :math:`\frac{1}{T-1}\sum_{i<T} (R_{T,i} - R_{i,i})`. Negative values mean
  the later requests hurt the earlier tasks.

  Args:
    matrix: the accuracy matrix (see :func:`accuracy_matrix`), NaN/``None`` where not learned.
    r: the request index.
    kept: the tasks currently learned :math:`K_r`; default the finite entries of row ``r``.

  Returns:
    :math:`\mathrm{BWT}_r`, or ``None`` when no kept task was learned before ``r``.
  """
  a = _as_matrix(matrix, "bwt")
  _check_request(a, r, "bwt")
  vals = []
  for t in _kept_tasks(a[r], kept, "bwt"):
    s = _learned_at(a, r, t)
    if s < r:
      vals.append(a[r, t] - a[s, t])
  return float(np.mean(vals)) if vals else None


# ---------------------------------------------------------------------------
# Relapse of unlearned data.
# ---------------------------------------------------------------------------


def _history(h: Sequence[float], name: str) -> np.ndarray:
  a = np.asarray([np.nan if v is None else v for v in h], dtype=np.float64)
  if a.ndim != 1:
    raise ValueError(f"{name}: an FA history must be a 1-D sequence of floats")
  if not np.all(np.isfinite(a)):
    raise ValueError(f"{name}: an FA history must hold only finite accuracies (no None/NaN)")
  return a


def relapse(fa_history: Sequence[float]) -> float | None:
  r"""Relapse of one unlearned set :math:`U`: the rise of its forget accuracy since unlearning.

  .. math:: \mathrm{relapse}_r(U) = \mathrm{FA}_r(U) - \mathrm{FA}_{r_U}(U)

  where :math:`r_U` is the request that unlearned :math:`U` and :math:`r > r_U`
  the current one (FA measured with the model after each request). Positive
  values mean the later (learn) requests brought the forgotten knowledge back.
  The runner measures :math:`\mathrm{FA}_r` on the samples of :math:`U` not
  learned again since :math:`r_U` (all of :math:`U` unless a later request
  learned some of it back), against :math:`\mathrm{FA}_{r_U}` on all of
  :math:`U`, both with :func:`forget_acc`: numbers it keeps (in its request
  records, :class:`~ugclu_jax.evaluation.RequestRecord`), where a per-sample
  record would keep a trace of the forgotten data. Stop tracking :math:`U` once
  it is all learned again. The reported value is :func:`mean_relapse`.

  Args:
    fa_history: ``[FA_{r_U}(U), ..., FA_r(U)]``, one value per request from the
      unlearning request to the current one.

  Returns:
    ``fa_history[-1] - fa_history[0]``, or ``None`` when there is no later
    request yet (fewer than two values).
  """
  h = _history(fa_history, "relapse")
  return float(h[-1] - h[0]) if h.shape[0] >= 2 else None


def mean_relapse(fa_histories: Sequence[Sequence[float]]) -> float | None:
  r"""Relapse at the current request, averaged over the earlier-unlearned sets.

  .. math:: \mathrm{relapse}_r = \frac{1}{|\mathcal U_r|} \sum_{U \in \mathcal U_r}
            \mathrm{relapse}_r(U)

  with :math:`\mathcal U_r` the sets unlearned at a request before :math:`r`
  (histories of at least two values, see :func:`relapse`).

  Args:
    fa_histories: one FA history per unlearned set, each ending at the current request.

  Returns:
    The mean relapse, or ``None`` when nothing was unlearned before the current request.
  """
  vals = [v for v in (relapse(h) for h in fa_histories) if v is not None]
  return float(np.mean(vals)) if vals else None


# ---------------------------------------------------------------------------
# Cost.
# ---------------------------------------------------------------------------


class Cost(NamedTuple):
  """Compute spent on one request.

  Attributes:
    seconds: wall-clock seconds (after ``block_until_ready``), compilation excluded.
    steps: optimizer steps.
    grad_evals: gradient evaluations (one per batch gradient).
    hvp_evals: Hessian-vector-product evaluations.
    compile_seconds: seconds spent lowering and compiling (or loading from the
      persistent compilation cache) during the request; tracing stays in ``seconds``.
  """

  seconds: float = 0.0
  steps: int = 0
  grad_evals: int = 0
  hvp_evals: int = 0
  compile_seconds: float = 0.0

  def add(self, other: "Cost") -> "Cost":
    """Field-wise sum (``+`` on a NamedTuple would concatenate)."""
    return Cost(*(a + b for a, b in zip(self, other)))
