r"""Speed of UG-CLU's building blocks, as ratios measured side by side in one run.

For each model the harness compiles every benchmarked function ahead of time
(``jax.jit(...).lower(...).compile()``, timed), runs it once as a warm-up, picks
a number of calls ``n`` per repeat so that one repeat lasts about
``--min-time`` seconds, and then times ``--repeats`` repeats of ``n`` calls,
each call ended by ``jax.block_until_ready``. The repeats of all functions of a
model are interleaved (round-robin, rotating the order), so slow drifts of the
machine hit numerator and denominator alike. The time of a function is the
median over repeats of the mean time per call; a ratio is a quotient of two
such medians. Two further estimates help on a busy machine: ``ratios_of_min``
divides the fastest repeats (noise from other processes only adds time) and
``ratios_cpu`` the median process CPU times (all threads of this process).

Measured, on the mean softmax cross-entropy of one batch (train-mode forward):

* ``grad``: :math:`\nabla L` by ``jax.grad`` (the baseline of the first group);
* ``hvp_fwd_over_rev``: :math:`H v` by :func:`ugclu_jax.hvp` (``jax.jvp`` of ``jax.grad``);
* ``hvp_rev_over_rev``: :math:`H v = \nabla_\theta \langle \nabla L(\theta), v \rangle`;
* ``ggn_vp``: :math:`G v` by :func:`ugclu_jax.ggn_vp`;
* ``fisher_batch``: :func:`ugclu_jax.fisher_diagonal` over 8 stacked batches
  (one ``lax.scan``), per batch;
* ``sgd_step``: one jitted ``optax.sgd`` (momentum 0.9) training step (the
  baseline of the second group);
* ``remain_step``: one remain (preserve) step of :func:`ugclu_jax.make_steps`,
  a gradient and the fast-slow-wrapped SGD update;
* ``fast_slow_iteration``: one unlearn iteration of the default mode, a target
  step then a remain step (``mode="fast_slow"``);
* ``hvp_fused_step`` / ``none_fused_step``: one fused unlearn step of the
  ``hvp`` (explicit compensation) and ``none`` (no compensation) modes;
* the compile time of the ``hvp`` fused step and of the remain step.

With PyTorch, ``--request`` also times one whole unlearn request against the same
request written in PyTorch (``torch_ref.UnlearnRequest``), from the same initial
weights and on the same batches: class 3 of the Fashion-MNIST training set
forgotten at batch 128, first the mask pass (the Fisher diagonals of the 6,000
class-3 images and of the 54,000 others, one pass each, and the balanced saliency
mask), then ``N`` iterations of the ``none`` mode (a fused step every 5, remain
steps otherwise; SGD, lr 0.01 cosine over the request, momentum 0.9). The
ugclu_jax side (:class:`JaxRequest`) uses the public API only, its data on the
device. After a warm-up request per side, requests are timed interleaved; the
mask pass, the iterations and the whole request are reported apart (medians).

Run ``python benchmarks/bench.py --help`` for the options; ``make bench`` runs
the defaults (mlp and cnn, batch 128, the MLP's request) and writes
``runs/bench.json``.
"""

import argparse
from collections.abc import Callable, Sequence
import functools
import importlib.metadata
import importlib.util
import re
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import ugclu_jax as ug
from ugclu_jax.host import keep_freed_host_memory
from ugclu_jax.models import as_functional, count_params, get_model

NUM_CLASSES = 10
INPUT_SHAPES = {"mlp": (28, 28, 1), "cnn": (28, 28, 1), "resnet18": (32, 32, 3)}
QUICK_INPUT_SHAPES = {"mlp": (8, 8, 1), "cnn": (8, 8, 1), "resnet18": (8, 8, 3)}
LEARNING_RATE = 0.01
HOST_MEMORY_KEPT = False  # set at start-up by __main__ (a library caller leaves malloc alone)
MATMUL_N = 2048  # the square matmul that measures the machine's practical peak
FISHER_BATCHES = 8  # batches of one fisher_diagonal call (a lax.scan over them)
# --quick checks the harness, not speed: on CPU, the small models' unoptimised XLA
# code without the fusion emitters compiles about 3x faster. (ResNet-18's compiles
# no faster and runs 20-30x slower, so it keeps the default options.)
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
QUICK_COMPILER_OPTIONS = {"mlp": _FAST_COMPILE, "cnn": _FAST_COMPILE}

# (ratio key, numerator, denominator, meaning). Every key is a quotient of two
# median times measured in the same run.
RATIOS = (
  ("grad", "grad", "grad", "baseline: one jax.grad of the mean cross-entropy (1.0 by definition)"),
  (
    "hvp_fwd_over_rev",
    "hvp_fwd_over_rev",
    "grad",
    "Hessian-vector product by ugclu_jax.hvp (jax.jvp of jax.grad), in gradients",
  ),
  (
    "hvp_rev_over_rev",
    "hvp_rev_over_rev",
    "grad",
    "Hessian-vector product by jax.grad of <jax.grad(L), v>, in gradients",
  ),
  ("ggn_vp", "ggn_vp", "grad", "Gauss-Newton vector product by ugclu_jax.ggn_vp, in gradients"),
  (
    "fisher_batch",
    "fisher_batch",
    "grad",
    f"one batch of ugclu_jax.fisher_diagonal (a lax.scan over {FISHER_BATCHES}), in gradients",
  ),
  (
    "remain_step",
    "remain_step",
    "sgd_step",
    "one remain step (a gradient + the fast_slow-wrapped SGD update), in plain SGD steps",
  ),
  (
    "fast_slow_iteration",
    "fast_slow_iteration",
    "sgd_step",
    "one fast_slow unlearn iteration (target step + remain step), in plain SGD steps",
  ),
  (
    "hvp_fused_step",
    "hvp_fused_step",
    "sgd_step",
    "one hvp-mode fused unlearn step (target grad + remain grad + HVP), in plain SGD steps",
  ),
  (
    "none_fused_step",
    "none_fused_step",
    "sgd_step",
    "one none-mode fused unlearn step (target grad + remain grad), in plain SGD steps",
  ),
)
# ugclu_jax against the PyTorch reference (benchmarks/torch_ref.py), same model, batch and
# data: below 1 means ugclu_jax is faster.
TORCH_MODELS = ("mlp", "cnn")  # the models benchmarks/torch_ref.py mirrors
TORCH_RATIOS = (
  ("sgd_step", "sgd_step", "torch_sgd_step", "SGD step (momentum 0.9) / PyTorch's, NCHW"),
  (
    "sgd_step_channels_last",
    "sgd_step",
    "torch_sgd_step_channels_last",
    "SGD step / PyTorch's in channels-last layout (CNN only)",
  ),
  ("grad", "grad", "torch_grad", "gradient / PyTorch's autograd.grad, NCHW"),
  (
    "grad_channels_last",
    "grad",
    "torch_grad_channels_last",
    "gradient / PyTorch's, channels-last (CNN only)",
  ),
  (
    "fisher_batch",
    "fisher_batch",
    "torch_fisher_batch",
    "one batch of the Fisher-diagonal pass / PyTorch's loop of autograd.grad + addcmul_",
  ),
  (
    "fisher_batch_channels_last",
    "fisher_batch",
    "torch_fisher_batch_channels_last",
    "the same, PyTorch channels-last (CNN only)",
  ),
)
COMPILE_RATIO = (
  "compile_hvp_fused_over_remain",
  "compile time of the hvp fused step / compile time of the remain step (informative)",
)

_DESCRIPTIONS = {
  "grad": "gradient (jax.grad)",
  "hvp_fwd_over_rev": "HVP forward-over-reverse",
  "hvp_rev_over_rev": "HVP reverse-over-reverse",
  "ggn_vp": "GGN-vector product",
  "fisher_batch": "Fisher diagonal, per scanned batch",
  "sgd_step": "plain SGD step (optax.sgd)",
  "remain_step": "remain step (make_steps)",
  "fast_slow_iteration": "fast_slow iteration (target+remain)",
  "hvp_fused_step": "hvp-mode fused step",
  "none_fused_step": "none-mode fused step",
}


class _Case(NamedTuple):
  """One benchmarked unit of work.

  Attributes:
    name: key of the case in the results.
    run: performs one unit of work and returns its outputs (to block on).
    compile_s: wall seconds spent tracing, lowering and compiling each of its
      programs, in call order.
    units: units of work one call performs (its time is divided by them).
  """

  name: str
  run: Callable[[], Any]
  compile_s: tuple[float, ...]
  units: int = 1


def _aot_compile(
  jitted: Callable, *args, options: Optional[dict[str, Any]] = None
) -> tuple[Any, float]:
  """Traces, lowers and compiles ``jitted`` for ``args``; returns it and the seconds taken.

  ``options`` are XLA compiler options (e.g. ``{"xla_backend_optimization_level": 0}``).
  """
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile(options)
  return compiled, time.perf_counter() - start


def _stateless_case(
  name: str, fn: Callable, *args, options: Optional[dict[str, Any]] = None
) -> _Case:
  """A case that calls the compiled ``fn(*args)`` with the same arguments every time."""
  compiled, seconds = _aot_compile(jax.jit(fn), *args, options=options)
  return _Case(name, lambda: compiled(*args), (seconds,))


def _compile_steps(
  programs: Sequence[tuple[Callable, tuple]],
  state: Any,
  *,
  options: Optional[dict[str, Any]] = None,
) -> tuple[list[tuple[Any, tuple]], tuple[float, ...]]:
  """Compiles steps ``step(state, *extra_args) -> (state, metrics)`` for ``state``.

  Args:
    programs: ``(jitted_step, extra_args)`` pairs.
    state: an example state (not consumed).
    options: XLA compiler options.

  Returns:
    The ``(compiled_step, extra_args)`` pairs and one compile time per step.
  """
  compiled_steps, seconds = [], []
  for step, extra in programs:
    compiled, s = _aot_compile(step, state, *extra, options=options)
    compiled_steps.append((compiled, extra))
    seconds.append(s)
  return compiled_steps, tuple(seconds)


def _threaded_case(
  name: str, compiled_steps: Sequence[tuple[Any, tuple]], state: Any, compile_s: tuple[float, ...]
) -> _Case:
  """A case that threads a (donated) state through compiled steps in turn.

  Args:
    name: key of the case.
    compiled_steps: ``(compiled_step, extra_args)`` pairs from :func:`_compile_steps`.
    state: the initial state, owned by the case from now on.
    compile_s: the steps' compile times.

  Returns:
    The case.
  """
  cell = [state]

  def run():
    for compiled, extra in compiled_steps:
      cell[0], _ = compiled(cell[0], *extra)
    return cell[0]

  return _Case(name, run, compile_s)


def _seconds_per_call(run: Callable[[], Any], n: int) -> tuple[float, float]:
  """Mean wall and process-CPU seconds of ``n`` calls of ``run``, each blocked on.

  The CPU time sums over all threads of this process (XLA's included), so it
  counts the work done rather than the time other processes kept the cores.
  """
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(n):
    jax.block_until_ready(run())
  return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n


def _random_batch(
  rng: np.random.Generator, batch_size: int, input_shape: tuple[int, ...]
) -> ug.Batch:
  x = rng.standard_normal((batch_size, *input_shape), dtype=np.float32)
  y = rng.integers(0, NUM_CLASSES, size=(batch_size,), dtype=np.int32)
  mask = np.ones((batch_size,), np.float32)
  return ug.Batch(*jax.device_put((x, y, mask)))


def _random_like(rng: np.random.Generator, tree: Any, p: Optional[float] = None) -> Any:
  """Standard-normal leaves shaped like ``tree``, or Bernoulli(p) 0/1 leaves when ``p`` is set.

  Drawn with NumPy: no small XLA program is compiled per leaf shape.
  """

  def draw(x):
    if p is None:
      values = rng.standard_normal(x.shape, dtype=np.float32)
    else:
      values = rng.random(x.shape, dtype=np.float32) < p
    return jax.device_put(values.astype(x.dtype))

  return jax.tree.map(draw, tree)


def _copy(tree: Any) -> Any:
  """A copy of a tree of arrays with fresh device buffers (through the host: nothing compiles)."""
  return jax.tree.map(lambda x: jax.device_put(np.array(x)), tree)


def _init_model(
  model_name: str, input_shape: tuple[int, ...], seed: int, options: Optional[dict[str, Any]]
) -> nnx.Module:
  """Initialises a model under one compiled program (eager initialisers compile one per layer)."""
  build = functools.partial(get_model, model_name, num_classes=NUM_CLASSES, input_shape=input_shape)
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: build(rngs=nnx.Rngs(seed))))
  state = jax.jit(lambda: nnx.state(build(rngs=nnx.Rngs(seed))), compiler_options=options)()
  return nnx.merge(graphdef, state)


def _build_cases(
  model_name: str,
  batch_size: int,
  input_shape: tuple[int, ...],
  seed: int,
  options: Optional[dict[str, Any]],
) -> tuple[list[_Case], int, list[tuple[np.ndarray, np.ndarray]]]:
  """Builds and compiles every case of one model.

  Returns:
    The cases, the parameter count, and the step's batch followed by the Fisher
    pass's batches as NumPy ``(x, y)`` pairs (for the PyTorch reference).
  """
  apply_fn, params, model_state = as_functional(_init_model(model_name, input_shape, seed, options))
  rng = np.random.default_rng(seed)
  target = _random_batch(rng, batch_size, input_shape)
  remain = _random_batch(rng, batch_size, input_shape)
  stacked = jax.tree.map(
    lambda *b: jnp.stack(b),
    *[_random_batch(rng, batch_size, input_shape) for _ in range(FISHER_BATCHES)],
  )
  v = _random_like(rng, params)
  saliency = _random_like(rng, params, p=0.5)

  def mean_ce(p, ms, batch):
    logits, _ = apply_fn(p, ms, batch.x, train=True)
    return ug.cross_entropy(logits=logits, labels=batch.y, mask=batch.mask)

  def grad_fn(p, ms, batch):
    return jax.grad(mean_ce)(p, ms, batch)

  def fisher(p, ms, batches):
    return ug.fisher_diagonal(lambda q, b: mean_ce(q, ms, b), p, batches)

  def hvp_fwd_rev(p, ms, batch, v):
    return ug.hvp(lambda q: mean_ce(q, ms, batch), p, v)

  def hvp_rev_rev(p, ms, batch, v):
    inner = lambda q: optax.tree.vdot(jax.grad(mean_ce)(q, ms, batch), v)
    return jax.grad(inner)(p)

  def ggn(p, ms, batch, v):
    logits_fn = lambda q: apply_fn(q, ms, batch.x, train=True)[0]
    weights = batch.mask / jnp.maximum(jnp.sum(batch.mask), 1.0)
    return ug.ggn_vp(logits_fn, p, v, weights=weights)

  sgd = optax.sgd(LEARNING_RATE, momentum=0.9)

  def sgd_step(state, batch):
    p, opt_state, ms = state

    def loss(q):
      logits, new_ms = apply_fn(q, ms, batch.x, train=True)
      return ug.cross_entropy(logits=logits, labels=batch.y, mask=batch.mask), new_ms

    (value, new_ms), grads = jax.value_and_grad(loss, has_aux=True)(p)
    updates, opt_state = sgd.update(grads, opt_state, p)
    return (optax.apply_updates(p, updates), opt_state, new_ms), value

  # A long request keeps the cosine factors near 1: every timed step does full work.
  hp = ug.RequestHParams.create(
    learning_rate=LEARNING_RATE, a_target=1.0, num_iterations=10**6, beta=0.01
  )
  tx = ug.build_optimizer(learning_rate=LEARNING_RATE)
  steps = {
    mode: ug.make_steps(apply_fn, tx, kind="unlearn", mode=mode)
    for mode in ("fast_slow", "hvp", "none")
  }

  def fresh_state():
    # Copies: the steps donate their state, and the caller's trees stay valid.
    return ug.init_train_state(_copy(params), _copy(model_state), tx)

  sgd_params = _copy(params)
  opts = {"options": options}
  fs, hvp_mode, none_mode = steps["fast_slow"], steps["hvp"], steps["none"]
  sgd_state = (
    sgd_params,
    jax.jit(sgd.init, compiler_options=options)(sgd_params),
    _copy(model_state),
  )
  sgd_prog = _compile_steps(
    [(jax.jit(sgd_step, donate_argnums=0), (remain,))], sgd_state, options=options
  )
  first = fresh_state()
  fs_prog = _compile_steps(
    [(fs.target, (target, saliency, hp)), (fs.remain, (remain, hp))], first, options=options
  )
  hvp_prog = _compile_steps(
    [(hvp_mode.fused, (target, remain, saliency, hp))], first, options=options
  )
  none_prog = _compile_steps(
    [(none_mode.fused, (target, remain, saliency, hp))], first, options=options
  )
  (_, remain_compiled), (_, remain_s) = fs_prog
  cases = [
    _stateless_case("grad", grad_fn, params, model_state, remain, **opts),
    _stateless_case("hvp_fwd_over_rev", hvp_fwd_rev, params, model_state, remain, v, **opts),
    _stateless_case("hvp_rev_over_rev", hvp_rev_rev, params, model_state, remain, v, **opts),
    _stateless_case("ggn_vp", ggn, params, model_state, remain, v, **opts),
    _stateless_case("fisher_batch", fisher, params, model_state, stacked, **opts)._replace(
      units=FISHER_BATCHES
    ),
    _threaded_case("sgd_step", sgd_prog[0], sgd_state, sgd_prog[1]),
    _threaded_case("fast_slow_iteration", fs_prog[0], first, fs_prog[1]),
    # The remain step alone reuses the fast_slow case's compiled remain step.
    _threaded_case("remain_step", [remain_compiled], fresh_state(), (remain_s,)),
    _threaded_case("hvp_fused_step", hvp_prog[0], fresh_state(), hvp_prog[1]),
    _threaded_case("none_fused_step", none_prog[0], fresh_state(), none_prog[1]),
  ]
  # The machine's practical peak: a large float32 matmul, timed with the other cases.
  a = jnp.asarray(rng.standard_normal((MATMUL_N, MATMUL_N), dtype=np.float32))
  cases.append(_stateless_case("matmul", jnp.matmul, a, a, **opts))
  sgd_flops = float(sgd_prog[0][0][0].cost_analysis().get("flops", 0.0))
  numpy_batches = [(np.asarray(remain.x), np.asarray(remain.y))] + [
    (np.asarray(x), np.asarray(y)) for x, y in zip(stacked.x, stacked.y)
  ]
  return cases, count_params(params), numpy_batches, sgd_flops


def _torch_ref():
  """The module benchmarks/torch_ref.py (it imports PyTorch), loaded once from beside this file."""
  module = sys.modules.get("torch_ref")
  if module is None:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_ref.py")
    spec = importlib.util.spec_from_file_location("torch_ref", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["torch_ref"] = module
    spec.loader.exec_module(module)
  return module


def _torch_cases(model_name: str, batches) -> list[_Case]:
  """The PyTorch reference's cases (benchmarks/torch_ref.py), all threads of this machine."""
  import torch

  torch_ref = _torch_ref()
  torch.set_num_threads(os.cpu_count() or 1)
  refs = torch_ref.cases(model_name, batches, learning_rate=LEARNING_RATE)
  return [_Case(name, run, (0.0,), units) for name, (run, units) in refs.items()]


# ---------------------------------------------------------------------------
# The whole unlearn request (--request), against benchmarks/torch_ref.py's UnlearnRequest.

FORGET_CLASS = 3  # the request unlearns this class of the training set
REQUEST_ITERATIONS = {"mlp": 1500, "cnn": 300}  # N per model (--request-iterations)
# Timed requests per side (--request-repeats). A CNN request takes about 45 s per side on
# the 2-core CPU (the mask pass alone 469 gradients), an MLP request about 4 s.
REQUEST_REPEATS = {"mlp": 5, "cnn": 3}
# The models `--request auto` (make bench) times: the MLP's request adds about a minute;
# the CNN's (3 sides) about 9 minutes, so it runs only when asked (--request on).
REQUEST_AUTO_MODELS = ("mlp",)
# The reference unlearn request (docs/method.md §7), both sides: SGD (momentum, coupled
# weight decay), cosine over the request; a_U0 cosine-decayed, lambda, clip of the target
# direction, a_R, the mask's gamma. The keywords of torch_ref.UnlearnRequest.
REQUEST_HPARAMS = {
  "forget_freq": 5,
  "learning_rate": LEARNING_RATE,
  "momentum": 0.9,
  "weight_decay": 5e-4,
  "a_target": 25.0,
  "a_remain": 1.0,
  "temperature": 0.5,
  "clip_norm": 7.0,
  "threshold": 1.0,
}
REQUEST_PHASES = ("mask_pass", "iterations", "request")
REQUEST_RATIO_MEANINGS = {
  "request_mask_pass": "the mask pass (Fisher diagonals of D_U and D_R, one pass each, and the "
  "balanced mask) / PyTorch's",
  "request_iterations": "the request's N none-mode iterations (fused step every 5, remain "
  "steps otherwise) / PyTorch's SGD + LambdaLR loop",
  "request": "the whole unlearn request (mask pass + iterations) / PyTorch's",
}


class RequestData(NamedTuple):
  """The request's two sets, NHWC float32 images and int32 labels.

  Attributes:
    name: the data's source (``fashion_mnist`` or ``synthetic``).
    target: ``(x, y)`` of ``D_U``, the images of :data:`FORGET_CLASS`.
    remain: ``(x, y)`` of ``D_R``, the other images.
  """

  name: str
  target: tuple[np.ndarray, np.ndarray]
  remain: tuple[np.ndarray, np.ndarray]


def request_data(
  source: str, input_shape: tuple[int, ...], samples_per_class: Optional[int], seed: int
) -> RequestData:
  """Loads the training set (``fashion_mnist``, or ``synthetic`` images of ``input_shape``),
  keeps at most ``samples_per_class`` images of each class (None: all), splits off the
  forget class."""
  from ugclu_jax import data

  if source == "fashion_mnist":
    ds = data.load_dataset("fashion_mnist")
  else:
    per_class = samples_per_class or 600
    ds = data.synthetic_dataset(
      image_shape=tuple(input_shape), train_per_class=per_class, test_per_class=1, seed=seed
    )
  x, y = ds.x_train, ds.y_train.astype(np.int32)
  if tuple(x.shape[1:]) != tuple(input_shape):
    raise ValueError(f"{source} images are {x.shape[1:]}, the model takes {input_shape}")
  if samples_per_class:
    keep = data.per_class_subsample(y, samples_per_class, seed)
    x, y = x[keep], y[keep]
  x = data.to_float(x)
  forget = y == FORGET_CLASS
  return RequestData(source, (x[forget], y[forget]), (x[~forget], y[~forget]))


def request_indices(
  rng: np.random.Generator, n_target: int, n_remain: int, num_iterations: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
  """The batches' rows: ``[ceil(N / f), B]`` of ``D_U`` and ``[N, B]`` of ``D_R``, each a
  sequence of shuffled passes over its set (both sides use them)."""

  def rows(n, num_batches):
    need = num_batches * batch_size
    perms = [rng.permutation(n) for _ in range(math.ceil(need / n))]
    return np.concatenate(perms)[:need].reshape(num_batches, batch_size).astype(np.int32)

  f = REQUEST_HPARAMS["forget_freq"]
  return rows(n_target, math.ceil(num_iterations / f)), rows(n_remain, num_iterations)


def _padded_batches(x: np.ndarray, y: np.ndarray, batch_size: int) -> ug.Batch:
  """One pass over ``(x, y)`` in consecutive batches stacked ``[n_b, B, ...]``; the last is
  padded with rows of ``mask`` 0 (which ``ug.cross_entropy`` leaves out of the mean)."""
  n_b = math.ceil(len(x) / batch_size)
  pad = n_b * batch_size - len(x)
  mask = np.concatenate([np.ones(len(x), np.float32), np.zeros(pad, np.float32)])
  x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
  y = np.concatenate([y, np.zeros(pad, y.dtype)])
  stack = lambda a: a.reshape(n_b, batch_size, *a.shape[1:])  # noqa: E731
  return ug.Batch(stack(x), stack(y), stack(mask))


class JaxRequest:
  """The request through ugclu_jax's public API, data and index tables on the device.

  ``mask_pass()``: one jitted program, ``ug.fisher_diagonal`` over the padded batches
  of ``D_U`` and of ``D_R`` (eval-mode mean cross-entropy) and
  ``ug.balanced_saliency_mask``. ``iterations(mask)``: ``ug.run_request_on_device``
  with ``ug.make_steps(kind="unlearn", mode="none")`` from ``ug.init_train_state``,
  then ``ug.finish_request``; returns the parameters.
  """

  def __init__(
    self,
    apply_fn,
    params,
    model_state,
    data: RequestData,
    target_index: np.ndarray,
    remain_index: np.ndarray,
    *,
    batch_size: int,
    num_iterations: int,
    options: Optional[dict[str, Any]] = None,
  ):
    h = REQUEST_HPARAMS
    self.params, self.model_state, self.n = params, model_state, num_iterations
    self.tx = ug.build_optimizer(
      learning_rate=h["learning_rate"], momentum=h["momentum"], weight_decay=h["weight_decay"]
    )
    self.steps = ug.make_steps(
      apply_fn,
      self.tx,
      kind="unlearn",
      mode="none",
      clip_norm=h["clip_norm"],
      temperature=h["temperature"],
    )
    self.hp = ug.RequestHParams.create(
      learning_rate=h["learning_rate"],
      a_target=h["a_target"],
      a_remain=h["a_remain"],
      num_iterations=num_iterations,
    )
    put = lambda x, y: ug.Batch(*jax.device_put((x, y, np.ones(len(y), np.float32))))  # noqa: E731
    self.target, self.remain = put(*data.target), put(*data.remain)
    self.target_index, self.remain_index = jax.device_put((target_index, remain_index))
    self.fisher_batches = jax.device_put(
      tuple(_padded_batches(x, y, batch_size) for x, y in (data.target, data.remain))
    )

    def ce(p, ms, batch):
      logits, _ = apply_fn(p, ms, batch.x, train=False)
      return ug.cross_entropy(logits=logits, labels=batch.y, mask=batch.mask)

    def fishers(p, ms, target, remain):
      return tuple(ug.fisher_diagonal(lambda q, b: ce(q, ms, b), p, s) for s in (target, remain))

    def mask(p, ms, target, remain):
      return ug.balanced_saliency_mask(*fishers(p, ms, target, remain), threshold=h["threshold"])

    self._fishers = jax.jit(fishers, compiler_options=options)
    self._mask = jax.jit(mask, compiler_options=options)

  def fishers(self):
    """The Fisher diagonals of ``D_U`` and ``D_R`` at the initial weights."""
    return self._fishers(self.params, self.model_state, *self.fisher_batches)

  def mask_pass(self):
    """The saliency mask at the initial weights."""
    return self._mask(self.params, self.model_state, *self.fisher_batches)

  def iterations(self, mask):
    """The request's iterations from a fresh state; the synced parameters."""
    state, _ = ug.run_request_on_device(
      self.steps,
      ug.init_train_state(self.params, self.model_state, self.tx),
      mode="none",
      num_iterations=self.n,
      forget_freq=REQUEST_HPARAMS["forget_freq"],
      target_data=self.target,
      target_index=self.target_index,
      remain_data=self.remain,
      remain_index=self.remain_index,
      mask=mask,
      hp=self.hp,
    )
    return ug.finish_request(state)[0]


def request_sides(
  model_name: str,
  data: RequestData,
  *,
  batch_size: int,
  num_iterations: int,
  seed: int,
  options: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
  """The request's sides from one initialisation and one draw of batches:
  ``{"jax": JaxRequest, "torch": UnlearnRequest (NCHW)}``, and for the CNN
  ``"torch_channels_last"``; the PyTorch models start from the JAX initial weights."""
  import torch

  torch_ref = _torch_ref()
  input_shape = data.target[0].shape[1:]
  apply_fn, params, model_state = as_functional(_init_model(model_name, input_shape, seed, options))
  rng = np.random.default_rng(seed)
  t_idx, r_idx = request_indices(
    rng, len(data.target[1]), len(data.remain[1]), num_iterations, batch_size
  )
  sides = {
    "jax": JaxRequest(
      apply_fn,
      params,
      model_state,
      data,
      t_idx,
      r_idx,
      batch_size=batch_size,
      num_iterations=num_iterations,
      options=options,
    )
  }
  layouts = {"torch": torch.contiguous_format}
  if model_name == "cnn":
    layouts["torch_channels_last"] = torch.channels_last
  init = jax.tree.map(np.asarray, params)
  for name, layout in layouts.items():
    sides[name] = torch_ref.UnlearnRequest(
      model_name,
      input_shape,
      init,
      data.target,
      data.remain,
      t_idx,
      r_idx,
      batch_size=batch_size,
      num_iterations=num_iterations,
      layout=layout,
      **REQUEST_HPARAMS,
    )
  return sides


def request_ratio_keys(sides: Sequence[str]) -> list[tuple[str, str, str]]:
  """``(ratio key, phase, PyTorch side)`` of the request's ratios, for the sides that ran:
  ``request_mask_pass``, ``request_iterations``, ``request``, then ``..._channels_last``."""
  return [
    (("request" if phase == "request" else f"request_{phase}") + name[len("torch") :], phase, name)
    for name in sides
    if name.startswith("torch")
    for phase in REQUEST_PHASES
  ]


def _time_request(side) -> tuple[dict[str, tuple[float, float]], Any]:
  """One request of ``side``: ``{phase: (wall s, process CPU s)}``, each phase blocked on,
  and the mask it computed."""
  wall, cpu = [time.perf_counter()], [time.process_time()]
  mask = jax.block_until_ready(side.mask_pass())
  wall.append(time.perf_counter())
  cpu.append(time.process_time())
  jax.block_until_ready(side.iterations(mask))
  wall.append(time.perf_counter())
  cpu.append(time.process_time())
  bounds = {"mask_pass": (0, 1), "iterations": (1, 2), "request": (0, 2)}
  return {p: (wall[b] - wall[a], cpu[b] - cpu[a]) for p, (a, b) in bounds.items()}, mask


def _mask_agreement(model_name: str, sides: dict[str, Any], masks: dict[str, Any]) -> dict:
  """Per PyTorch side, the share of its mask's entries equal to the JAX mask's."""
  torch_ref = _torch_ref()
  ours = jax.tree.leaves(jax.device_get(masks["jax"]))
  out = {}
  for name, side in sides.items():
    if name != "jax":
      theirs = jax.tree.leaves(torch_ref.to_jax(model_name, side.named(masks[name]), side.model))
      same = sum(int(np.sum(a == b)) for a, b in zip(ours, theirs))
      out[name] = same / sum(a.size for a in ours)
  return out


def bench_request(
  model_name: str,
  data: RequestData,
  *,
  batch_size: int,
  num_iterations: int,
  repeats: int,
  seed: int,
  options: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
  """Times the whole unlearn request on each side, interleaved.

  A first request per side (compilation included) is a warm-up; then ``repeats``
  rounds, each timing one request per side (the sides' order rotating). Within a
  request the mask pass and the iterations are timed apart.

  Returns:
    A JSON-ready dict: the request's sizes and settings, ``times.<side>.<phase>``
    (``median_ms``, ``min_ms``, ``max_ms``, ``cpu_median_ms``, ``repeats_ms``),
    ``times.<side>.first_request_s``, ``ms_per_iteration`` and ``torch_ratios``
    (``request_mask_pass``, ``request_iterations``, ``request``, with ``_channels_last``
    for the CNN; ``median``, ``of_min``: ugclu_jax / PyTorch).
  """
  import torch

  torch.set_num_threads(os.cpu_count() or 1)
  sides = request_sides(
    model_name,
    data,
    batch_size=batch_size,
    num_iterations=num_iterations,
    seed=seed,
    options=options,
  )
  first, masks = {}, {}
  for name, side in sides.items():
    t, masks[name] = _time_request(side)
    first[name] = t["request"][0]
  runs = {name: [] for name in sides}
  names = list(sides)
  for r in range(repeats):
    for name in names[r % len(names) :] + names[: r % len(names)]:
      runs[name].append(_time_request(sides[name])[0])
  times = {}
  for name, rows in runs.items():
    times[name] = {"first_request_s": first[name]}
    for phase in REQUEST_PHASES:
      wall = [1e3 * row[phase][0] for row in rows]
      times[name][phase] = {
        "median_ms": statistics.median(wall),
        "min_ms": min(wall),
        "max_ms": max(wall),
        "cpu_median_ms": statistics.median(1e3 * row[phase][1] for row in rows),
        "repeats_ms": wall,
      }
  ratios = {}
  for key, phase, name in request_ratio_keys(names):
    ours, theirs = times["jax"][phase], times[name][phase]
    ratios[key] = {
      "median": ours["median_ms"] / theirs["median_ms"],
      "of_min": ours["min_ms"] / theirs["min_ms"],
    }
  n_t, n_r = len(data.target[1]), len(data.remain[1])
  return {
    "data": data.name,
    "forget_class": FORGET_CLASS,
    "num_target": n_t,
    "num_remain": n_r,
    "batch": batch_size,
    "num_iterations": num_iterations,
    "fisher_batches": {
      "target": math.ceil(n_t / batch_size),
      "remain": math.ceil(n_r / batch_size),
    },
    "hparams": dict(REQUEST_HPARAMS),
    "repeats": repeats,
    "mask_agreement": _mask_agreement(model_name, sides, masks),
    "times": times,
    "ms_per_iteration": {
      name: t["iterations"]["median_ms"] / num_iterations for name, t in times.items()
    },
    "torch_ratios": ratios,
  }


def _measure(
  cases: Sequence[_Case], *, repeats: int, min_time: float, max_calls: int
) -> dict[str, dict[str, Any]]:
  """Warms up, calibrates and times the cases, interleaved; returns per-case statistics."""
  calls = {}
  for case in cases:
    # Warm-up (first execution, buffer allocation); its time, an upper bound, calibrates n.
    one, _ = _seconds_per_call(case.run, 1)
    calls[case.name] = max(1, min(max_calls, math.ceil(min_time / max(one, 1e-9))))
  wall = {case.name: [] for case in cases}
  cpu = {case.name: [] for case in cases}
  for r in range(repeats):
    shift = r % len(cases)
    for case in list(cases[shift:]) + list(cases[:shift]):
      w, c = _seconds_per_call(case.run, calls[case.name])
      wall[case.name].append(w / case.units)
      cpu[case.name].append(c / case.units)
  return {
    name: {
      "median_ms": 1e3 * statistics.median(s),
      "min_ms": 1e3 * min(s),
      "max_ms": 1e3 * max(s),
      "cpu_median_ms": 1e3 * statistics.median(cpu[name]),
      "calls_per_repeat": calls[name],
      "repeats_ms": [1e3 * t for t in s],
      "repeats_cpu_ms": [1e3 * t for t in cpu[name]],
    }
    for name, s in wall.items()
  }


def bench_model(
  model_name: str,
  *,
  batch_size: int,
  input_shape: tuple[int, ...],
  repeats: int,
  min_time: float,
  max_calls: int,
  seed: int,
  compiler_options: Optional[dict[str, Any]] = None,
  with_torch: bool = False,
) -> dict[str, Any]:
  """Benchmarks one model.

  Args:
    model_name: a name known to :func:`ugclu_jax.models.get_model`.
    batch_size: examples per batch (target and remain batches alike).
    input_shape: ``(H, W, C)`` of one input.
    repeats: timed repeats per function (the median is reported).
    min_time: seconds one repeat of one function should last at least (sets
      the number of calls per repeat; 0 means one call).
    max_calls: upper bound on the calls per repeat.
    seed: seed of the model initialisation and the random data.
    compiler_options: XLA compiler options for every compilation (None: the
      defaults, which the timings and compile times are meant for).
    with_torch: also time the PyTorch reference (benchmarks/torch_ref.py),
      interleaved with the JAX cases, and return ``torch_ratios``.

  Returns:
    A JSON-ready dict: ``times`` (milliseconds per call, per function),
    ``ratios`` (every key of :data:`RATIOS` and the compile ratio),
    ``ratios_of_min``, ``ratios_cpu``, ``compile_s`` (seconds), the XLA
    ``compiler_options`` used and the model's size.
  """
  cases, num_params, batches, sgd_flops = _build_cases(
    model_name, batch_size, input_shape, seed, compiler_options
  )
  compile_s = {case.name: sum(case.compile_s) for case in cases}
  if with_torch:
    cases += _torch_cases(model_name, batches)
  compile_s["target_step"] = next(
    case.compile_s[0] for case in cases if case.name == "fast_slow_iteration"
  )
  times = _measure(cases, repeats=repeats, min_time=min_time, max_calls=max_calls)
  ratios = _quotients(times, RATIOS, "median_ms")
  # Noise from other processes only adds time: on a busy machine the quotient of
  # the fastest repeats is a useful second estimate.
  ratios_of_min = _quotients(times, RATIOS, "min_ms")
  ratios_cpu = _quotients(times, RATIOS, "cpu_median_ms")
  ratios[COMPILE_RATIO[0]] = compile_s["hvp_fused_step"] / compile_s["remain_step"]
  torch_median = _quotients(times, TORCH_RATIOS, "median_ms")
  torch_of_min = _quotients(times, TORCH_RATIOS, "min_ms")
  torch_ratios = {k: {"median": torch_median[k], "of_min": torch_of_min[k]} for k in torch_median}
  return {
    "torch_ratios": torch_ratios,
    "throughput": _throughput(times, batch_size, sgd_flops),
    "input_shape": list(input_shape),
    "num_params": num_params,
    "times": times,
    "ratios": ratios,
    "ratios_of_min": ratios_of_min,
    "ratios_cpu": ratios_cpu,
    "compile_s": compile_s,
    "compiler_options": dict(compiler_options or {}),
  }


def _quotients(times: dict[str, Any], table, stat: str) -> dict[str, float]:
  """``{key: times[num][stat] / times[den][stat]}`` for the rows of ``table`` whose cases ran."""
  return {
    key: times[num][stat] / times[den][stat]
    for key, num, den, _ in table
    if num in times and den in times
  }


def _throughput(times: dict[str, Any], batch_size: int, sgd_flops: float) -> dict[str, float]:
  """Images per second of the SGD step, and its FLOP rate as a share of the matmul's.

  The step's FLOPs are XLA's count for the compiled step (``cost_analysis``); the
  peak is the rate of a ``MATMUL_N``-square float32 matmul timed in the same run.
  """
  step_s = times["sgd_step"]["median_ms"] / 1e3
  matmul_gflops = 2 * MATMUL_N**3 / (times["matmul"]["median_ms"] / 1e3) / 1e9
  step_gflops = sgd_flops / step_s / 1e9
  return {
    "sgd_images_per_s": batch_size / step_s,
    "sgd_step_gflop": sgd_flops / 1e9,
    "sgd_gflops": step_gflops,
    "matmul_gflops": matmul_gflops,
    "sgd_share_of_matmul_peak": step_gflops / matmul_gflops,
  }


def _environment(batch_size: int) -> dict[str, Any]:
  def version(dist):
    try:
      return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
      return None

  return {
    "devices": [str(d) for d in jax.devices()],
    "backend": jax.default_backend(),
    "jax": jax.__version__,
    "jaxlib": version("jaxlib"),
    "flax": version("flax"),
    "optax": version("optax"),
    "python": platform.python_version(),
    "machine": platform.machine(),
    "cpu_count": os.cpu_count(),
    "batch": batch_size,
    "torch": version("torch"),
    "load_average_start": _load_average(),
    # ugclu_jax.host.keep_freed_host_memory applied at start-up (the command line's default).
    "host_memory_kept": HOST_MEMORY_KEPT,
  }


def _load_average() -> Optional[list[float]]:
  """The 1, 5 and 15 minute load averages (other processes slow every timing down)."""
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


README_START = "<!-- bench.py --readme: start -->"
README_END = "<!-- bench.py --readme: end -->"


def write_readme_block(path: str, results: dict[str, Any], command: str) -> None:
  """Replaces the text between :data:`README_START` and :data:`README_END` in ``path``
  with the PyTorch ratios of ``results``, the command and the machine's load."""
  env = results["environment"]
  lines = [
    README_START,
    f"`{command}` on {env['cpu_count']} CPU(s) (`{', '.join(env['devices'])}`), "
    f"jax {env['jax']}, PyTorch {env.get('torch')}, batch {env['batch']}, "
    f"{results['repeats']} repeats, interleaved; 1-minute load average "
    f"{env['load_average_start']} -> {env.get('load_average_end')} (other processes "
    f"included); freed host memory kept: {env.get('host_memory_kept')}; "
    f"wall {results['wall_s']:.0f} s.",
    "",
    "| model | ugclu_jax / PyTorch | median | of fastest repeats | ugclu_jax ms | PyTorch ms |",
    "|---|---|---:|---:|---:|---:|",
  ]
  for model_name, res in results["models"].items():
    for key, num, den, _ in TORCH_RATIOS:
      if key in res.get("torch_ratios", {}):
        r = res["torch_ratios"][key]
        lines.append(
          f"| {model_name} | `{key}` | {r['median']:.2f} | {r['of_min']:.2f} | "
          f"{res['times'][num]['median_ms']:.1f} | {res['times'][den]['median_ms']:.1f} |"
        )
    req = res.get("request")
    for key, phase, side in request_ratio_keys(list(req["times"]) if req else []):
      r, t = req["torch_ratios"][key], req["times"]
      lines.append(
        f"| {model_name} | `{key}` | {r['median']:.2f} | {r['of_min']:.2f} | "
        f"{t['jax'][phase]['median_ms']:.1f} | {t[side][phase]['median_ms']:.1f} |"
      )
  requests = {m: res["request"] for m, res in results["models"].items() if res.get("request")}
  if requests:
    req = next(iter(requests.values()))
    n = ", ".join(
      f"{r['num_iterations']} for the {m} (median of {r['repeats']} requests per side)"
      for m, r in requests.items()
    )
    agree = ", ".join(
      f"{m} " + " / ".join(f"{100 * a:.2f} %" for a in r["mask_agreement"].values())
      for m, r in requests.items()
    )
    lines += [
      "",
      f"`request*`: one whole unlearn request, class {req['forget_class']} of {req['data']} "
      f"({req['num_target']} forget, {req['num_remain']} remaining images), batch "
      f"{req['batch']}: the mask pass ({req['fisher_batches']['target']} + "
      f"{req['fisher_batches']['remain']} batches), then N `none`-mode iterations, N = {n}; "
      "the sides interleaved, after a warm-up request each. PyTorch's masks equal "
      f"ugclu_jax's on {agree} of the weights (NCHW / channels-last).",
    ]
  lines.append(README_END)
  text = open(path).read()
  pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
  if not pattern.search(text):
    raise ValueError(f"{path}: no {README_START} ... {README_END} block to replace")
  with open(path, "w") as f:
    f.write(pattern.sub(lambda _: "\n".join(lines), text, count=1))


def _format_table(results: dict[str, Any]) -> str:
  """The human-readable report: environment, one table per model, the meaning of each ratio."""
  env = results["environment"]
  lines = [
    f"devices: {', '.join(env['devices'])}  (backend {env['backend']}, {env['cpu_count']} CPUs)",
    f"jax {env['jax']}, jaxlib {env['jaxlib']}, flax {env['flax']}, "
    f"optax {env['optax']}; batch {env['batch']}, repeats {results['repeats']}; "
    f"load average {env['load_average_start']} -> {env.get('load_average_end')}; "
    f"freed host memory kept: {env.get('host_memory_kept')}",
    "",
  ]
  header = (
    f"{'quantity':<37} {'median ms':>10} {'min-max ms':>19} {'ratio':>7} "
    f"{'of min':>7} {'of cpu':>7}  unit"
  )
  for model_name, res in results["models"].items():
    if "times" in res:
      lines += _model_lines(model_name, res, env, header)
    if res.get("request"):
      lines += _request_lines(model_name, res["request"])
  if any("times" in res for res in results["models"].values()):
    lines.append(
      "ratio: median wall time / that of the unit; of min: fastest repeat / fastest "
      "repeat of the unit; of cpu: median process CPU time / that of the unit:"
    )
    lines += [f"  {key}: {meaning}" for key, _, _, meaning in RATIOS]
    lines.append(f"  {COMPILE_RATIO[0]}: {COMPILE_RATIO[1]}")
  if any(res.get("request") for res in results["models"].values()):
    lines += [f"  {key}: {meaning}" for key, meaning in REQUEST_RATIO_MEANINGS.items()]
  return "\n".join(lines)


def _request_lines(model_name: str, req: dict[str, Any]) -> list[str]:
  """The report's lines of one model's whole request."""
  lines = [
    f"{model_name}: whole unlearn request, class {req['forget_class']} of {req['data']} "
    f"({req['num_target']} forget, {req['num_remain']} remaining), batch {req['batch']}, "
    f"mask pass of {req['fisher_batches']['target']} + {req['fisher_batches']['remain']} "
    f"batches, N = {req['num_iterations']}; median of {req['repeats']} requests per side",
    f"{'side':<22} {'mask pass ms':>13} {'iterations ms':>14} {'request ms':>12} "
    f"{'ms/iteration':>13} {'first request s':>16}",
  ]
  for side, t in req["times"].items():
    lines.append(
      f"{side:<22} {t['mask_pass']['median_ms']:>13.1f} {t['iterations']['median_ms']:>14.1f} "
      f"{t['request']['median_ms']:>12.1f} {req['ms_per_iteration'][side]:>13.2f} "
      f"{t['first_request_s']:>16.2f}"
    )
  lines.append("ugclu_jax / PyTorch (below 1: faster):")
  for key, r in req["torch_ratios"].items():
    lines.append(f"  {key:<34} {r['median']:>6.2f}  (of min {r['of_min']:.2f})")
  agree = ", ".join(f"{side} {100 * a:.2f} %" for side, a in req["mask_agreement"].items())
  return lines + [f"mask entries equal to ugclu_jax's: {agree}", ""]


def _model_lines(model_name: str, res: dict[str, Any], env: dict[str, Any], header: str):
  """The report's lines of one model's phases."""
  rows = [(key, num, den) for key, num, den, _ in RATIOS]
  rows.insert(
    next(i for i, r in enumerate(rows) if r[2] == "sgd_step"),
    ("sgd_step", "sgd_step", "sgd_step"),
  )
  lines = [
    f"{model_name}: input {tuple(res['input_shape'])}, {res['num_params']:,} parameters",
    header,
    "-" * len(header),
  ]
  for key, num, den in rows:
    t = res["times"][num]
    ratio = res["ratios"].get(key, 1.0)
    of_min = res["ratios_of_min"].get(key, 1.0)
    of_cpu = res["ratios_cpu"].get(key, 1.0)
    spread = f"{t['min_ms']:.2f}-{t['max_ms']:.2f}"
    lines.append(
      f"{_DESCRIPTIONS[num]:<37} {t['median_ms']:>10.2f} {spread:>19} "
      f"{ratio:>7.2f} {of_min:>7.2f} {of_cpu:>7.2f}  {den}"
    )
  if res.get("torch_ratios"):
    lines.append(f"against PyTorch {env.get('torch')} (ugclu_jax / PyTorch; below 1: faster):")
    for key, r in res["torch_ratios"].items():
      lines.append(f"  {key:<28} {r['median']:>6.2f}  (of min {r['of_min']:.2f})")
  tp = res["throughput"]
  lines.append(
    f"SGD step: {tp['sgd_images_per_s']:.0f} images/s, {tp['sgd_gflops']:.1f} GFLOP/s "
    f"({tp['sgd_step_gflop']:.3f} GFLOP per step, XLA's count) = "
    f"{100 * tp['sgd_share_of_matmul_peak']:.0f} % of a {MATMUL_N}x{MATMUL_N} matmul's "
    f"{tp['matmul_gflops']:.0f} GFLOP/s"
  )
  c = res["compile_s"]
  lines += [
    f"compile: hvp fused step {c['hvp_fused_step']:.2f} s, remain step "
    f"{c['remain_step']:.2f} s, ratio {res['ratios'][COMPILE_RATIO[0]]:.2f}",
    "",
  ]
  return lines


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    description="UG-CLU speed ratios (HVP vs gradient, UG-CLU steps vs SGD), one run."
  )
  parser.add_argument(
    "--models",
    default="mlp,cnn",
    help="comma-separated models among mlp, cnn, resnet18 (default: mlp,cnn)",
  )
  parser.add_argument(
    "--batch", type=int, default=None, help="batch size (default 128; 8 with --quick)"
  )
  parser.add_argument(
    "--repeats",
    type=int,
    default=None,
    help="timed repeats per function, median reported (default 7; 2 with --quick)",
  )
  parser.add_argument(
    "--min-time",
    type=float,
    default=None,
    help="seconds per repeat per function (default 0.25; 0 with --quick)",
  )
  parser.add_argument(
    "--max-calls", type=int, default=1000, help="at most this many calls per repeat (default 1000)"
  )
  parser.add_argument("--seed", type=int, default=0, help="seed of models and data")
  parser.add_argument(
    "--out",
    default=os.path.join("runs", "bench.json"),
    help="JSON output path (default runs/bench.json)",
  )
  parser.add_argument(
    "--quick",
    action="store_true",
    help="tiny inputs and batch, few repeats, unoptimised XLA code: checks the harness, not speed",
  )
  parser.add_argument(
    "--torch",
    choices=("auto", "on", "off"),
    default="auto",
    help="time the PyTorch reference (benchmarks/torch_ref.py) of the mlp and cnn beside "
    "them; auto: when PyTorch is installed and not --quick (default auto)",
  )
  parser.add_argument(
    "--readme",
    default=None,
    help="also write the PyTorch ratios into this Markdown file, between its "
    f"'{README_START}' and '{README_END}' lines (make bench: benchmarks/README.md)",
  )
  parser.add_argument(
    "--request",
    choices=("auto", "on", "off", "only"),
    default="auto",
    help="also time one whole unlearn request (class 3 of Fashion-MNIST: the saliency mask "
    "pass, then N none-mode iterations) against the same request in PyTorch, for the mlp "
    "and cnn; auto: on when PyTorch is timed and Fashion-MNIST is installed, for the models "
    f"{', '.join(REQUEST_AUTO_MODELS)}; only: the request without the phases (default auto)",
  )
  parser.add_argument(
    "--request-iterations",
    default=None,
    help="the request's N per model, e.g. 'mlp=1500,cnn=300', or one number for every model "
    "(default: "
    + ",".join(f"{m}={n}" for m, n in REQUEST_ITERATIONS.items())
    + "; 5 with --quick; auto times only "
    + ", ".join(REQUEST_AUTO_MODELS)
    + ")",
  )
  parser.add_argument(
    "--request-repeats",
    type=int,
    default=None,
    help="timed requests per side, interleaved, median reported (default: "
    + ", ".join(f"{m} {r}" for m, r in REQUEST_REPEATS.items())
    + "; 1 with --quick)",
  )
  parser.add_argument(
    "--request-samples",
    type=int,
    default=None,
    help="at most this many training images of each class (default: all; 6 with --quick)",
  )
  parser.add_argument(
    "--request-data",
    choices=("fashion_mnist", "synthetic"),
    default=None,
    help="the request's training set (default fashion_mnist; with --quick synthetic images "
    "of the quick input size)",
  )
  args = parser.parse_args(argv)
  args.models = [m.strip() for m in args.models.split(",") if m.strip()]
  unknown = [m for m in args.models if m not in INPUT_SHAPES]
  if not args.models or unknown:
    parser.error(f"--models must name some of {', '.join(INPUT_SHAPES)}; got {unknown or 'none'}")
  if args.batch is None:
    args.batch = 8 if args.quick else 128
  if args.repeats is None:
    args.repeats = 2 if args.quick else 7
  if args.min_time is None:
    args.min_time = 0.0 if args.quick else 0.25
  if args.torch == "on" and importlib.util.find_spec("torch") is None:
    parser.error("--torch on: PyTorch is not installed (pip install -e .[bench])")
  if args.batch < 1 or args.repeats < 1 or args.max_calls < 1 or args.min_time < 0:
    parser.error("--batch, --repeats and --max-calls must be >= 1 and --min-time >= 0")
  _parse_request_args(parser, args)
  return args


def _parse_request_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """Checks the ``--request*`` options; sets ``args.request_models`` (``{model: N}``)."""
  if args.request_samples is None and args.quick:
    args.request_samples = 6
  if args.request_data is None:
    args.request_data = "synthetic" if args.quick else "fashion_mnist"
  spec = args.request_iterations
  if spec is None:
    spec = "5" if args.quick else ",".join(f"{m}={n}" for m, n in REQUEST_ITERATIONS.items())
  try:
    if "=" in spec:
      iterations = {m.strip(): int(n) for m, n in (item.split("=") for item in spec.split(","))}
    else:
      iterations = {m: int(spec) for m in TORCH_MODELS}
  except ValueError:
    parser.error(f"--request-iterations: expected 'mlp=1500,cnn=300' or a number, got {spec!r}")
  if set(iterations) - set(TORCH_MODELS) or min(iterations.values()) < 1:
    parser.error(f"--request-iterations: models among {TORCH_MODELS}, N >= 1; got {spec!r}")
  repeats = args.request_repeats
  if (repeats is not None and repeats < 1) or (
    args.request_samples is not None and args.request_samples < 1
  ):
    parser.error("--request-repeats and --request-samples must be >= 1")
  if args.request_data == "fashion_mnist" and args.quick:
    parser.error("--request-data fashion_mnist: its 28x28 images do not fit --quick's inputs")
  args.request_models = {}
  if args.request == "off":
    return
  if args.request == "auto":
    with_torch = args.torch == "on" or (
      args.torch == "auto" and not args.quick and importlib.util.find_spec("torch") is not None
    )
    if with_torch:
      wanted = [m for m in args.models if m in REQUEST_AUTO_MODELS]
      args.request_models = {m: iterations[m] for m in wanted if m in iterations}
    return
  if args.torch == "off" or importlib.util.find_spec("torch") is None:
    parser.error(
      f"--request {args.request} needs PyTorch (not --torch off; pip install -e .[bench])"
    )
  if args.request == "only" and args.readme:
    parser.error("--request only with --readme would drop the phases' ratios from the block")
  args.request_models = {m: iterations[m] for m in args.models if m in iterations}
  if not args.request_models:
    parser.error(f"--request {args.request}: none of --models has a request (mlp, cnn)")


def _request_models_with_data(args: argparse.Namespace) -> dict[str, int]:
  """``args.request_models``, emptied (with a note) when ``--request auto`` finds no
  Fashion-MNIST; ``--request on``/``only`` exit then instead."""
  if not args.request_models or args.request_data != "fashion_mnist":
    return args.request_models
  from ugclu_jax.data import DatasetMissingError, load_dataset

  try:
    load_dataset("fashion_mnist")
  except DatasetMissingError as e:
    if args.request != "auto":
      raise SystemExit(f"bench.py: --request {args.request}: {e}") from None
    print(f"[bench] no whole-request benchmark: {e}", file=sys.stderr)
    return {}
  return args.request_models


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
  """Runs the benchmark, prints the table and writes the JSON.

  Args:
    argv: command-line arguments (default: ``sys.argv[1:]``).

  Returns:
    The results written to ``--out``: ``environment``, ``repeats``, ``quick``,
    ``ratio_meanings`` and, per model, ``times``, ``ratios``, ``ratios_of_min``,
    ``ratios_cpu`` and ``compile_s``.
  """
  argv_used = list(sys.argv[1:] if argv is None else argv)
  args = _parse_args(argv)
  shapes = QUICK_INPUT_SHAPES if args.quick else INPUT_SHAPES
  fast_compile = args.quick and jax.default_backend() == "cpu"
  start = time.perf_counter()
  results = {
    "environment": _environment(args.batch),
    "repeats": args.repeats,
    "min_time_s": args.min_time,
    "quick": args.quick,
    "ratio_meanings": {key: meaning for key, _, _, meaning in RATIOS},
    "models": {},
  }
  results["ratio_meanings"][COMPILE_RATIO[0]] = COMPILE_RATIO[1]
  with_torch = args.torch == "on" or (
    args.torch == "auto" and not args.quick and importlib.util.find_spec("torch") is not None
  )
  if with_torch:
    results["torch_ratio_meanings"] = {key: meaning for key, _, _, meaning in TORCH_RATIOS}
  request_models = _request_models_with_data(args)
  if request_models:
    results["request_ratio_meanings"] = dict(REQUEST_RATIO_MEANINGS)
  data_cache = {}
  for i, model_name in enumerate(args.models):
    results["models"][model_name] = {}
    if args.request != "only":
      print(f"[bench] {model_name}: compiling and timing ...", file=sys.stderr, flush=True)
      results["models"][model_name] = bench_model(
        model_name,
        batch_size=args.batch,
        input_shape=shapes[model_name],
        repeats=args.repeats,
        min_time=args.min_time,
        max_calls=args.max_calls,
        seed=args.seed + i,
        compiler_options=QUICK_COMPILER_OPTIONS.get(model_name) if fast_compile else None,
        with_torch=with_torch and model_name in TORCH_MODELS,
      )
    if model_name in request_models:
      n = request_models[model_name]
      print(f"[bench] {model_name}: whole request, N = {n} ...", file=sys.stderr, flush=True)
      shape = shapes[model_name]
      if shape not in data_cache:
        data_cache[shape] = request_data(args.request_data, shape, args.request_samples, args.seed)
      results["models"][model_name]["request"] = bench_request(
        model_name,
        data_cache[shape],
        batch_size=args.batch,
        num_iterations=n,
        repeats=args.request_repeats or (1 if args.quick else REQUEST_REPEATS[model_name]),
        seed=args.seed + i,
        options=QUICK_COMPILER_OPTIONS.get(model_name) if fast_compile else None,
      )
  results["wall_s"] = time.perf_counter() - start
  results["environment"]["load_average_end"] = _load_average()
  print(_format_table(results))
  print(f"total {results['wall_s']:.1f} s; wrote {args.out}")
  out_dir = os.path.dirname(args.out)
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=2)
  if args.readme and (with_torch or request_models):
    write_readme_block(args.readme, results, " ".join(["python benchmarks/bench.py", *argv_used]))
  return results


if __name__ == "__main__":
  HOST_MEMORY_KEPT = keep_freed_host_memory()
  main()
