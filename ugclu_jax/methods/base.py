"""The method plug-in interface of the runner.

A method is an ``init`` plus a ``learn`` and an ``unlearn`` function over an
explicit :class:`MethodState`. It sees training data only through the
request's :class:`~ugclu_jax.data.DataAccess` (the remaining store and the
current request's samples; enforced), and returns its new state and its cost.
"""

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ugclu_jax import objectives
from ugclu_jax.data import DataAccess, Request
from ugclu_jax.hparams import COUNT, NON_NEGATIVE, POSITIVE, at_least, check_value
from ugclu_jax.methods import ORACLE_TWIN
from ugclu_jax.metrics import Cost
from ugclu_jax.parallel import shard_batch
from ugclu_jax.request import finish_request
from ugclu_jax.saliency import fisher_diagonal
from ugclu_jax.types import Batch, ModelState, Params

CHECK_EVERY = 50  # iterations between host-side finiteness checks


class NonFiniteError(RuntimeError):
  """A loss or the parameters became NaN or infinite during a request."""


class MethodState(NamedTuple):
  """A method's state between requests (checkpointed).

  Attributes:
    params: parameters used for evaluation.
    model_state: batch-norm statistics.
    extra: method-specific pytree of arrays with a structure fixed at ``init``
      (e.g. an EWC Fisher, a teacher); ``()`` when unused.
  """

  params: Params
  model_state: ModelState
  extra: Any = ()


@dataclasses.dataclass(frozen=True)
class Context:
  r"""What a method may use for one request.

  Attributes:
    access: the only way to read training data.
    request: the parsed request.
    index: the request's position in the stream.
    num_iterations: the budget: iterations of this request.
    batch_size: training batch size.
    seed: seed sequence for this request and method (batches, random labels).
    progress: called with the number of iterations just finished.
    mesh: a ``jax.sharding.Mesh`` to split batches over (data parallelism,
      :mod:`ugclu_jax.parallel`), or ``None`` for the default device.
    validation: held-out ``(x, y)`` of the trained classes, for early stopping
      (the oracle's; ``data.validation_per_class``), or ``None``.
    record: ``record(key, value)`` keeps a measurement of the request for its
      report entry; the runner keeps ``"compensation"`` (UG-CLU's ``hvp`` mode:
      the mean :math:`\lVert d - \tilde d \rVert / \lVert d \rVert` of its fused steps).
  """

  access: DataAccess
  request: Request
  index: int
  num_iterations: int
  batch_size: int
  seed: tuple[int, ...]
  progress: Callable[[int], None] = lambda n: None
  mesh: Any = None
  validation: Any = None
  record: Callable[[str, float], None] = lambda key, value: None

  def put(self, batch: Batch) -> Batch:
    """A host batch on the device(s), split along its batch axis over ``mesh`` if any."""
    return shard_batch(Batch(*batch), self.mesh)


class Method(NamedTuple):
  """A continual learning-unlearning method.

  Attributes:
    name: its registry name.
    init: ``(params, model_state) -> MethodState``.
    learn: ``(state, ctx) -> (state, Cost)`` for learn requests.
    unlearn: ``(state, ctx) -> (state, Cost)`` for unlearn requests.
  """

  name: str
  init: Callable[[Params, ModelState], MethodState]
  learn: Callable[[MethodState, Context], tuple[MethodState, Cost]]
  unlearn: Callable[[MethodState, Context], tuple[MethodState, Cost]]


def method_seed(seed: int, index: int, name: str) -> tuple[int, ...]:
  """The seed sequence of a method's draws at a request: ``(run seed, request, 0)``.

  The same for every method, so that all of them, and every ablation, draw the same
  batches (paired results; :mod:`ugclu_jax.seeds` gives each role one tag). The
  oracle's twin alone (:data:`~ugclu_jax.methods.ORACLE_TWIN`) ends in 1: its own
  batches, for an independent retrain.
  """
  return (int(seed), int(index), int(name == ORACLE_TWIN))


# The run's settings a method factory takes besides its hyperparameters: type and rule.
_SETTINGS = {
  "num_train": (int, COUNT),
  "num_classes": (int, at_least(2)),
  "learn_lr": (float, POSITIVE),
  "momentum": (float, NON_NEGATIVE),
  "weight_decay": (float, NON_NEGATIVE),
}


def check_settings(**values) -> None:
  """Raises a one-line ``ValueError`` (``key=value must ...``) for a run setting a method
  factory takes (``num_train``, ``num_classes``, ``learn_lr``, ``momentum``, ``weight_decay``)
  that is out of range; the config checks them as ``train.*``."""
  for key, value in values.items():
    check_value(key, value, *_SETTINGS[key])


def max_forget_loss(ascent_bound: float, num_classes: int) -> float | None:
  """:math:`\\ell_{max}` = ``ascent_bound * log(C)`` of the bounded ascent (None: unbounded,
  for ``ascent_bound = 0``); see :func:`ugclu_jax.unlearn_loss`."""
  return ascent_bound * math.log(num_classes) if ascent_bound > 0 else None


def stacked_batches(draw: Callable[[int], Batch], n: int, mesh=None) -> Batch:
  """``n`` batches from ``draw(step)`` stacked on a leading axis (for ``lax.scan``).

  With a ``mesh``, each batch (axis 1) is split over its devices.
  """
  batches = [draw(s) for s in range(n)]
  return shard_batch(Batch(*(np.stack(parts) for parts in zip(*batches))), mesh, batch_axis=1)


def make_fisher_fn(apply_fn):
  """Jitted ``(params, model_state, stacked_batches) -> Fisher diagonal`` in eval mode.

  :math:`F = \\frac1K \\sum_k (\\nabla_\\theta \\mathrm{CE}(b_k))^2` over the ``K``
  stacked batches (:func:`ugclu_jax.fisher_diagonal`).
  """

  def loss(params, model_state, batch):
    logits, _ = apply_fn(params, model_state, batch.x, train=False)
    return objectives.cross_entropy(logits=logits, labels=batch.y, mask=batch.mask)

  @jax.jit
  def fisher(params, model_state, batches):
    return fisher_diagonal(lambda p, b: loss(p, model_state, b), params, batches)

  return fisher


def check_finite(
  metrics: dict, *, method: str, ctx: Context, iteration: int, hint: str | None = None
) -> None:
  """Raises :class:`NonFiniteError` if any logged value is NaN or infinite.

  ``hint`` is the advice the message ends with (default: lower the learning
  rate or the unlearning coefficient).
  """
  hint = hint or "lower the learning rate or the unlearning coefficient"
  values = jax.device_get(metrics)
  for key, value in values.items():
    if not np.all(np.isfinite(value)):
      raise NonFiniteError(
        f"method {method!r}, request {ctx.request.token!r} (#{ctx.index}): {key} became "
        f"non-finite near iteration {iteration}; {hint}"
      )


def check_params_finite(params: Params, *, method: str, ctx: Context) -> None:
  finite = jax.tree.reduce(
    lambda a, b: a & b, jax.tree.map(lambda p: jnp.all(jnp.isfinite(p)), params)
  )
  if not bool(finite):
    raise NonFiniteError(
      f"method {method!r}, request {ctx.request.token!r} (#{ctx.index}): "
      f"parameters became non-finite"
    )


def monitor(
  *, ctx: Context, name: str, num_iterations: int | None = None, hint: str | None = None
) -> Callable[[int, dict], None]:
  """``on_iteration(k, metrics)``: the runner's per-iteration bookkeeping.

  Checks the logged values every ``CHECK_EVERY`` iterations and at the last
  (one host sync each; nothing to check when ``metrics`` is empty), then
  reports one finished iteration to ``ctx.progress``. ``num_iterations``
  defaults to the request's budget; ``hint`` replaces the error message's
  default advice.
  """
  n = ctx.num_iterations if num_iterations is None else num_iterations

  def on_iteration(k: int, metrics: dict) -> None:
    if metrics and ((k + 1) % CHECK_EVERY == 0 or k == n - 1):
      check_finite(metrics, method=name, ctx=ctx, iteration=k, hint=hint)
    ctx.progress(1)

  return on_iteration


def run_iterations(
  ts,
  body: Callable,
  *,
  ctx: Context,
  name: str,
  num_iterations: int | None = None,
  hint: str | None = None,
):
  """Runs ``body(ts, k) -> (ts, metrics, Cost)`` for ``k`` in ``range(num_iterations)``.

  Each iteration ends with the :func:`monitor` checks and progress report;
  returns ``(ts, total Cost)``. ``num_iterations`` defaults to the request's
  budget; ``hint`` replaces the error message's default advice.
  """
  n = ctx.num_iterations if num_iterations is None else num_iterations
  on_iteration = monitor(ctx=ctx, name=name, num_iterations=n, hint=hint)
  total = Cost()
  for k in range(n):
    ts, metrics, cost = body(ts, k)
    total = total.add(cost)
    on_iteration(k, metrics)
  return ts, total


def finish(ts, *, ctx: Context, name: str, slow_step_size: float = 1.0):
  """Final fast/slow sync of a request (:func:`ugclu_jax.finish_request`);
  ``(params, model_state)``, checked finite."""
  params, model_state = finish_request(ts, slow_step_size)
  check_params_finite(params, method=name, ctx=ctx)
  return params, model_state
