"""run_request: the exact schedule of a request, and UG-CLU's runner method on top of it."""

import importlib.util
import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

import ugclu_jax as ug
from ugclu_jax import data as D
from ugclu_jax import methods as MT
from ugclu_jax.methods.base import make_fisher_fn, stacked_batches
from ugclu_jax.methods.ugclu import ugclu
from ugclu_jax.metrics import Cost
from ugclu_jax.seeds import seed_for
from ugclu_jax.models import MLP, as_functional


class _Recorder:
  """Fake steps and batch callables that log every call, in order."""

  def __init__(self):
    self.log = []

  def target_batch(self, j):
    self.log.append(("draw T", j))
    return f"T{j}"

  def remain_batch(self, k):
    self.log.append(("draw R", k))
    return f"R{k}"

  def steps(self):
    def target(state, batch, mask, hp, advance):
      self.log.append(("target", batch, mask, advance))
      return state + advance, {"target_loss": 1.0}

    def remain(state, batch, hp):
      self.log.append(("remain", batch))
      return state + 1, {"remain_loss": 2.0}

    def fused(state, target_batch, remain_batch, mask, hp):
      self.log.append(("fused", target_batch, remain_batch, mask))
      return state + 1, {"target_loss": 1.0, "remain_loss": 2.0}

    return ug.Steps(target=target, remain=remain, fused=fused)


def _run(mode, *, n=11, f=5, has_remain=True):
  rec, seen = _Recorder(), []
  state, counts = ug.run_request(
    rec.steps(),
    0,
    mode=mode,
    num_iterations=n,
    forget_freq=f,
    target_batch=rec.target_batch,
    remain_batch=rec.remain_batch,
    mask="M",
    hp=None,
    has_remain=has_remain,
    on_step=lambda k, s, m: seen.append((k, s, sorted(m))),
  )
  return state, counts, rec.log, seen


def test_fast_slow_schedule():
  state, counts, log, seen = _run("fast_slow")
  assert counts == ug.RequestCounts(target=3, remain=11, fused=0)
  assert state == 11  # Every iteration advances once: the remain step.
  expected = []
  for k in range(11):
    if k % 5 == 0:  # k = 0, 5, 10: target batches 0, 1, 2, masked, advance 0.
      expected += [("draw T", k // 5), ("target", f"T{k // 5}", "M", 0)]
    expected += [("draw R", k), ("remain", f"R{k}")]
  assert log == expected
  both, remain_only = ["remain_loss", "target_loss"], ["remain_loss"]
  assert seen == [(k, k + 1, both if k % 5 == 0 else remain_only) for k in range(11)]


@pytest.mark.parametrize("mode", ["hvp", "none"])
def test_fused_schedule(mode):
  state, counts, log, seen = _run(mode)
  assert counts == ug.RequestCounts(target=0, remain=8, fused=3)
  assert state == 11
  expected = []
  for k in range(11):
    if k % 5 == 0:  # The target batch is drawn before the remain batch.
      expected += [("draw T", k // 5), ("draw R", k), ("fused", f"T{k // 5}", f"R{k}", "M")]
    else:
      expected += [("draw R", k), ("remain", f"R{k}")]
  assert log == expected
  assert [k for k, _, _ in seen] == list(range(11))


@pytest.mark.parametrize("mode", ug.steps.MODES)
def test_without_remaining_data_every_iteration_is_a_target_step(mode):
  state, counts, log, _ = _run(mode, has_remain=False)
  assert counts == ug.RequestCounts(target=11, remain=0, fused=0)
  assert state == 11
  assert log == [e for k in range(11) for e in (("draw T", k), ("target", f"T{k}", "M", 1))]


def test_frequency_one_and_empty_request():
  _, counts, log, _ = _run("fast_slow", n=3, f=1)
  assert counts == ug.RequestCounts(target=3, remain=3, fused=0)
  assert [e[0] for e in log if not e[0].startswith("draw")] == ["target", "remain"] * 3
  state, counts, log, seen = _run("hvp", n=0)
  assert (state, counts, log, seen) == (0, ug.RequestCounts(), [], [])


def test_bad_arguments():
  with pytest.raises(ValueError, match="mode"):
    _run("newton")
  with pytest.raises(ValueError, match="forget_freq"):
    _run("fast_slow", f=0)


# ---------------------------------------------------------------------------
# UG-CLU's runner method is the library schedule: the same numbers, bit for bit,
# as the inline loop methods/ugclu.py ran before it called run_request.

B = 16
N_UNLEARN, N_LEARN = 11, 4
FISHER_BATCHES = 2


@pytest.fixture(scope="module")
def digits():
  ds = D.load_dataset("digits")
  x, y = ds.x_train, ds.y_train
  apply_fn, params, model_state = as_functional(
    MLP(in_features=64, num_classes=10, hidden=(16,), rngs=nnx.Rngs(0))
  )
  requests = D.parse_stream(
    "L:c0,1,2,3,4,5,6,7 U:c3", tasks=D.make_tasks(10, 2, None), num_classes=10
  )
  store = D.store_add(D.store_init(120, 10), np.flatnonzero(y < 8), y, np.random.default_rng(0))
  return dict(
    x=x,
    y=y,
    apply_fn=apply_fn,
    params=params,
    model_state=model_state,
    requests=requests,
    store=store,
  )


def _inline_request(
  apply_fn,
  kind,
  state,
  ctx,
  *,
  mode,
  lr,
  a_t,
  clip,
  remain_clip,
  temperature,
  freq,
  use_mask,
  random_mask=False,
):
  """methods/ugclu.py's request as it was (commit ca6497a), with the library's steps and
  the seed streams of :mod:`ugclu_jax.seeds`."""
  access, b, n = ctx.access, ctx.batch_size, ctx.num_iterations
  tx = ug.build_optimizer(
    learning_rate=lr,
    momentum=0.9,
    weight_decay=5e-4,
    sync_period=freq + 1 if mode == "fast_slow" else 1,
  )
  steps = ug.make_steps(
    apply_fn,
    tx,
    kind=kind,
    mode=mode,
    clip_norm=clip,
    temperature=temperature,
    remain_clip_norm=remain_clip,
  )
  has_remain = access.remain_indices.size > 0
  m = None
  if use_mask and has_remain:
    fisher = make_fisher_fn(apply_fn)
    f_t = fisher(
      state.params,
      state.model_state,
      stacked_batches(
        lambda s: access.target_batch(b, s, seed_for(ctx.seed, "ugclu.fisher_target")),
        FISHER_BATCHES,
      ),
    )
    f_r = fisher(
      state.params,
      state.model_state,
      stacked_batches(
        lambda s: access.remain_batch(b, s, seed_for(ctx.seed, "ugclu.fisher_remain")),
        FISHER_BATCHES,
      ),
    )
    m = ug.balanced_saliency_mask(f_t, f_r, threshold=1.0)
    if random_mask:  # The ablation: as many ones per parameter, at random positions.
      key = jax.random.key(D.seed_int(seed_for(ctx.seed, "ugclu.random_mask")))
      m = ug.random_mask_like(m, key)
  hp = ug.RequestHParams.create(
    learning_rate=lr, a_target=a_t, a_remain=1.0, beta=lr, damping=0.0, num_iterations=n
  )
  target = lambda k: ctx.put(access.target_batch(b, k, seed_for(ctx.seed, "ugclu.target_batches")))
  remain = lambda k: ctx.put(access.remain_batch(b, k, seed_for(ctx.seed, "ugclu.remain_batches")))
  ts, total = ug.init_train_state(state.params, state.model_state, tx), Cost()
  for k in range(n):
    if not has_remain:
      ts, _ = steps.target(ts, target(k), m, hp, 1)
      cost = Cost(0.0, 1, 1, 0)
    elif k % freq == 0 and mode != "fast_slow":
      ts, _ = steps.fused(ts, target(k // freq), remain(k), m, hp)
      cost = Cost(0.0, 1, 2, 1 if mode == "hvp" else 0)
    else:
      cost = Cost()
      if k % freq == 0:
        ts, _ = steps.target(ts, target(k // freq), m, hp, 0)
        cost = Cost(0.0, 1, 1, 0)
      ts, _ = steps.remain(ts, remain(k), hp)
      cost = cost.add(Cost(0.0, 1, 1, 0))
    total = total.add(cost)
  if m is not None:
    total = total.add(Cost(0.0, 0, 2 * FISHER_BATCHES, 0))
  return ug.sync(ts.params).slow, total


@pytest.mark.parametrize(
  "kind,mode,with_store,mask_kind",
  [
    ("unlearn", "fast_slow", True, "balanced"),
    ("unlearn", "hvp", True, "balanced"),
    ("learn", "none", False, "balanced"),
    ("unlearn", "fast_slow", True, "random"),
  ],
)
def test_ugclu_method_is_the_inline_schedule(digits, kind, mode, with_store, mask_kind):
  x, y = digits["x"], digits["y"]
  store = digits["store"] if with_store else D.store_init(120, 10)
  if kind == "unlearn":
    idx = np.flatnonzero(y == 3)
    store = D.store_purge(store, idx, y_train=y)
    request, n = digits["requests"][1], N_UNLEARN
  else:
    idx = np.flatnonzero(y < 8)
    request, n = digits["requests"][0], N_LEARN
  ctx = MT.Context(D.DataAccess(x, y, store, idx), request, 1, n, B, MT.method_seed(0, 1, "ugclu"))
  # The inline loop's settings: unbounded ascent (ascent_bound 0), momentum 0.9. An
  # unlearn clip of 0.2 binds on the remain gradients too (both take ugclu.clip).
  unlearn = kind == "unlearn"
  method = ugclu(
    digits["apply_fn"],
    mode=mode,
    fisher_batches=FISHER_BATCHES,
    ascent_bound=0.0,
    num_classes=10,
    learn_lr=0.05,
    momentum=0.9,
    weight_decay=5e-4,
    learn_clip=1.0,
    clip=0.2,
    mask_kind=mask_kind,
  )
  state = method.init(digits["params"], digits["model_state"])
  new, cost = (method.unlearn if unlearn else method.learn)(state, ctx)

  params, expected_cost = _inline_request(
    digits["apply_fn"],
    kind,
    state,
    ctx,
    mode=mode,
    lr=0.01 if unlearn else 0.05,
    a_t=25.0 if unlearn else 1.0,
    clip=0.2 if unlearn else 1.0,
    remain_clip=0.2 if unlearn else 1.0,
    temperature=0.5 if unlearn else 0.0,
    freq=5 if unlearn else 1,
    use_mask=unlearn,
    random_mask=mask_kind == "random",
  )
  assert cost == expected_cost
  jax.tree.map(np.testing.assert_array_equal, new.params, params)
  if unlearn:  # Fisher draws, 3 target (or fused) steps and 11 iterations.
    fused = mode != "fast_slow"
    assert cost == Cost(0.0, 11 if fused else 14, 14 + 2 * FISHER_BATCHES, 3 if fused else 0)


def test_finish_request_syncs_the_slow_weights():
  params = {"w": np.ones(3, np.float32)}
  fs = ug.FastSlowParams(fast={"w": np.full(3, 3.0, np.float32)}, slow=params)
  state = ug.TrainState(fs, (), {"stats": np.zeros(1)}, np.int32(0))
  out, model_state = ug.finish_request(state, slow_step_size=0.5)
  np.testing.assert_array_equal(out["w"], np.full(3, 2.0, np.float32))
  assert model_state is state.model_state


def _real_request(mode, *, n=12, f=5, b=8, with_remain=True, seed=0):
  """Fresh MLP, steps, data and index tables for one small request."""
  rng = np.random.default_rng(seed)
  apply_fn, params, model_state = as_functional(MLP(16, 4, hidden=(8,), rngs=nnx.Rngs(seed)))
  tx = ug.build_optimizer(learning_rate=0.05)
  steps = ug.make_steps(apply_fn, tx, kind="unlearn", mode=mode)
  hp = ug.RequestHParams.create(learning_rate=0.05, a_target=2.0, num_iterations=n, beta=0.1)

  def data(m):
    x = rng.standard_normal((m, 4, 4, 1)).astype(np.float32)
    return ug.Batch(x, rng.integers(0, 4, m).astype(np.int32), np.ones(m, np.float32))

  target, remain = data(20), data(30)
  n_target = n if not with_remain else -(-n // f)
  t_index = rng.integers(0, 20, (n_target, b)).astype(np.int32)
  r_index = rng.integers(0, 30, (n, b)).astype(np.int32)
  mask = jax.tree.map(lambda p: (rng.random(p.shape) < 0.5).astype(np.float32), params)
  fresh = lambda: ug.init_train_state(params, model_state, tx)  # noqa: E731
  return steps, fresh, hp, target, remain, t_index, r_index, mask


def _take(batch, rows):
  return ug.Batch(*(np.asarray(a)[rows] for a in batch))


@pytest.mark.parametrize(
  "mode,with_remain", [("fast_slow", True), ("hvp", True), ("none", True), ("fast_slow", False)]
)
def test_the_on_device_loop_is_the_step_by_step_loop(mode, with_remain):
  n, f = 12, 5
  steps, fresh, hp, target, remain, t_index, r_index, mask = _real_request(
    mode, n=n, f=f, with_remain=with_remain
  )
  one_by_one, counts = ug.run_request(
    steps,
    fresh(),
    mode=mode,
    num_iterations=n,
    forget_freq=f,
    target_batch=lambda j: _take(target, t_index[j]),
    remain_batch=lambda k: _take(remain, r_index[k]),
    mask=mask,
    hp=hp,
    has_remain=with_remain,
  )
  kwargs = dict(
    mode=mode,
    num_iterations=n,
    forget_freq=f,
    target_data=ug.Batch(*jax.device_put(tuple(target))),
    target_index=t_index,
    remain_data=ug.Batch(*jax.device_put(tuple(remain))) if with_remain else None,
    remain_index=r_index if with_remain else None,
    mask=mask,
    hp=hp,
    chunk=5,  # chunks of 5, 5 and 2 iterations
  )
  scanned, scanned_counts = ug.run_request_on_device(steps, fresh(), **kwargs)
  assert scanned_counts == counts
  assert int(scanned.iteration) == int(one_by_one.iteration) == n
  for a, b in zip(jax.tree.leaves(scanned), jax.tree.leaves(one_by_one)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
  # The same shapes again: nothing compiles.
  with ug.host.CompileClock() as clock:
    jax.block_until_ready(ug.run_request_on_device(steps, fresh(), **kwargs)[0])
  assert clock.seconds == 0.0


def test_the_on_device_loop_checks_its_index_tables():
  steps, fresh, hp, target, remain, t_index, r_index, mask = _real_request("fast_slow")
  common = dict(mode="fast_slow", num_iterations=12, forget_freq=5, mask=mask, hp=hp)
  with pytest.raises(ValueError, match=r"target_index needs shape \(3,\)"):
    ug.run_request_on_device(
      steps,
      fresh(),
      target_data=target,
      target_index=t_index[:2],
      remain_data=remain,
      remain_index=r_index,
      **common,
    )
  with pytest.raises(ValueError, match=r"remain_index needs shape \(12,\)"):
    ug.run_request_on_device(
      steps,
      fresh(),
      target_data=target,
      target_index=t_index,
      remain_data=remain,
      remain_index=r_index[:5],
      **common,
    )


def _stack(trees):
  return jax.tree.map(lambda *leaves: np.stack(leaves), *trees)


@pytest.mark.parametrize(
  "mode,with_remain,with_mask",
  [
    ("fast_slow", True, True),
    ("hvp", True, True),
    ("none", True, False),
    ("fast_slow", False, True),
  ],
)
def test_vmapped_seeds_give_each_seeds_own_result(mode, with_remain, with_mask):
  """Three seeds (own initial weights, batches and masks) in one program, each equal
  to its own single-seed on-device run."""
  n, f, num_seeds = 12, 5, 3
  runs = [_real_request(mode, n=n, f=f, with_remain=with_remain, seed=s) for s in range(num_seeds)]
  steps, _, hp, target, remain = runs[0][:5]  # The steps and data all seeds share.
  on_device = dict(
    target_data=ug.Batch(*jax.device_put(tuple(target))),
    remain_data=ug.Batch(*jax.device_put(tuple(remain))) if with_remain else None,
  )
  common = dict(mode=mode, num_iterations=n, forget_freq=f, hp=hp, chunk=5, **on_device)
  singles = [
    ug.run_request_on_device(
      steps,
      fresh(),
      target_index=t_index,
      remain_index=r_index if with_remain else None,
      mask=mask if with_mask else None,
      **common,
    )
    for _, fresh, _, _, _, t_index, r_index, mask in runs
  ]
  stacked, counts = ug.run_seeds_on_device(
    steps,
    _stack([run[1]() for run in runs]),
    target_index=np.stack([run[5] for run in runs]),
    remain_index=np.stack([run[6] for run in runs]) if with_remain else None,
    masks=_stack([run[7] for run in runs]) if with_mask else None,
    **common,
  )
  assert counts == singles[0][1]
  for s, (single, _) in enumerate(singles):
    for a, b in zip(jax.tree.leaves(stacked), jax.tree.leaves(single)):
      np.testing.assert_allclose(np.asarray(a)[s], np.asarray(b), rtol=2e-5, atol=2e-6)
  # The seeds differ (different initial weights and batches), so this compares something.
  first = jax.tree.leaves(stacked.params)[0]
  assert not np.allclose(first[0], first[1])
  # finish_request works leafwise on the stacked states.
  params, _ = ug.finish_request(stacked)
  single_params, _ = ug.finish_request(singles[1][0])
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(single_params)):
    np.testing.assert_allclose(np.asarray(a)[1], np.asarray(b), rtol=2e-5, atol=2e-6)


def test_vmapped_seeds_check_their_leading_axes():
  steps, fresh, hp, target, remain, t_index, r_index, mask = _real_request("fast_slow")
  common = dict(
    mode="fast_slow",
    num_iterations=12,
    forget_freq=5,
    hp=hp,
    target_data=target,
    remain_data=remain,
  )
  states = _stack([fresh(), fresh()])
  with pytest.raises(ValueError, match=r"target_index needs shape \(2, 3\)"):
    ug.run_seeds_on_device(
      steps,
      states,
      target_index=t_index,
      remain_index=np.stack([r_index] * 2),
      masks=None,
      **common,
    )
  with pytest.raises(ValueError, match="masks need a leading seed axis of 2"):
    ug.run_seeds_on_device(
      steps,
      states,
      target_index=np.stack([t_index] * 2),
      remain_index=np.stack([r_index] * 2),
      masks=_stack([mask] * 3),
      **common,
    )


def test_the_seeds_benchmark_reports_its_ratios():
  spec = importlib.util.spec_from_file_location(
    "request_loop", pathlib.Path(__file__).parents[1] / "benchmarks" / "request_loop.py"
  )
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  out = bench.main(
    ["--model", "mlp", "--iterations", "5", "--repeats", "1", "--batch", "8", "--seeds", "2"]
  )
  assert set(out) == {"run_request_on_device", "run_seeds_on_device S=2", "time(2)/time(1)"}
  assert out["time(2)/time(1)"] == out["run_seeds_on_device S=2"] / out["run_request_on_device"]
