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

Run ``python benchmarks/bench.py --help`` for the options; ``make bench`` runs
the defaults (mlp and cnn, batch 128) and writes ``runs/bench.json``.
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


def _torch_cases(model_name: str, batches) -> list[_Case]:
  """The PyTorch reference's cases (benchmarks/torch_ref.py), all threads of this machine."""
  import torch

  import torch_ref

  torch.set_num_threads(os.cpu_count() or 1)
  refs = torch_ref.cases(model_name, batches, learning_rate=LEARNING_RATE)
  return [_Case(name, run, (0.0,), units) for name, (run, units) in refs.items()]


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
    rows = [(key, num, den) for key, num, den, _ in RATIOS]
    rows.insert(
      next(i for i, r in enumerate(rows) if r[2] == "sgd_step"),
      ("sgd_step", "sgd_step", "sgd_step"),
    )
    lines += [
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
  lines.append(
    "ratio: median wall time / that of the unit; of min: fastest repeat / fastest "
    "repeat of the unit; of cpu: median process CPU time / that of the unit:"
  )
  lines += [f"  {key}: {meaning}" for key, _, _, meaning in RATIOS]
  lines.append(f"  {COMPILE_RATIO[0]}: {COMPILE_RATIO[1]}")
  return "\n".join(lines)


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
  return args


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
  for i, model_name in enumerate(args.models):
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
  results["wall_s"] = time.perf_counter() - start
  results["environment"]["load_average_end"] = _load_average()
  print(_format_table(results))
  print(f"total {results['wall_s']:.1f} s; wrote {args.out}")
  out_dir = os.path.dirname(args.out)
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=2)
  if args.readme and with_torch:
    write_readme_block(args.readme, results, " ".join(["python benchmarks/bench.py", *argv_used]))
  return results


if __name__ == "__main__":
  HOST_MEMORY_KEPT = keep_freed_host_memory()
  main()
