"""The baselines (docs/method.md §10) on scikit-learn digits: contracts, compilation, unlearning.

Every baseline starts from the same MLP, trained on classes 0-7, with a
class-balanced store of 200 of those samples, and plays the stream
``U:c3 U:c5 L:c8 L:c9 U:c8`` through its ``Method`` with a hand-built
``Context`` (the runner's request protocol: purge before an unlearn request,
store the learned samples after a learn request).
"""

import dataclasses
import json
import math
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ugclu_jax import config as C
from ugclu_jax import data as D
from ugclu_jax import methods as MT
from ugclu_jax import runner
from ugclu_jax.methods import baselines as BL
from ugclu_jax.methods import learn_rules as LR
from ugclu_jax.methods import unlearn_rules as UR
from ugclu_jax.methods.rules import rule_hparams
from ugclu_jax.metrics import Cost
from ugclu_jax.models import MLP, as_functional

ROOT = pathlib.Path(__file__).resolve().parent.parent
B = 32
STORE = 200
# (token, class, iterations); the pretrained model knows classes 0-7.
STREAM = (("U:c3", 3, 60), ("U:c5", 5, 60), ("L:c8", 8, 20), ("L:c9", 9, 20), ("U:c8", 8, 20))
PAIRS = ("er+ga", "ewc+scrub")
NAMES = BL.BASELINE_NAMES + PAIRS
# The run's settings every baseline takes: the config's train.* defaults.
_T = C.TrainConfig()
TRAIN = {
  "learn_lr": _T.learning_rate,
  "momentum": _T.momentum,
  "weight_decay": _T.weight_decay,
  "clip_norm": _T.clip_norm,
}


class _CompileCounter:
  """Counts jit traces and XLA compilations (any cache miss) inside the block."""

  def __enter__(self):
    self.count = 0
    jax.monitoring.register_event_duration_secs_listener(self._listen)
    return self

  def _listen(self, event, duration, **kwargs):
    del duration, kwargs
    if event.startswith("/jax/core/compile/"):
      self.count += 1

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_duration_listener(self._listen)


@pytest.fixture(scope="module")
def setup():
  """Digits, an MLP trained on classes 0-7 (train accuracy > 0.97) and its store."""
  ds = D.load_dataset("digits")
  x, y = ds.x_train, ds.y_train
  model = MLP(in_features=64, num_classes=10, hidden=(128,), rngs=nnx.Rngs(0))
  apply_fn, params, model_state = as_functional(model)
  x_all = jnp.asarray(D.to_float(x))

  @jax.jit
  def predict(p, s):
    return jnp.argmax(apply_fn(p, s, x_all, train=False)[0], -1)

  tokens = "L:c0,1,2,3,4,5,6,7 " + " ".join(t for t, _, _ in STREAM)
  requests = D.parse_stream(tokens, tasks=D.make_tasks(10, 2, None), num_classes=10)
  old = np.flatnonzero(y < 8)
  store = D.store_init(STORE, 10)
  naive = MT.baseline(apply_fn, "naive", num_train=y.size, num_classes=10, **TRAIN)
  ctx = MT.Context(D.DataAccess(x, y, store, old), requests[0], 0, 300, B, (0, 0, 0))
  state, _ = naive.learn(naive.init(params, model_state), ctx)
  store = D.store_add(store, old, y, np.random.default_rng(0))
  pred = np.asarray(predict(state.params, state.model_state))
  assert (pred[old] == y[old]).mean() > 0.97
  return {
    "x": x,
    "y": y,
    "apply_fn": apply_fn,
    "state": state,
    "store": store,
    "requests": requests[1:],
    "predict": predict,
  }


def _accuracy(setup, state, classes) -> float:
  pred = np.asarray(setup["predict"](state.params, state.model_state))
  where = np.isin(setup["y"], classes)
  return float((pred[where] == setup["y"][where]).mean())


def _host(tree):
  return jax.tree.map(lambda a: np.array(a), tree)


def _play(setup, name, **kwargs):
  """Plays STREAM; returns per-request states, costs, compile counts and accuracies."""
  x, y = setup["x"], setup["y"]
  method = MT.baseline(
    setup["apply_fn"], name, num_train=y.size, num_classes=10, **{**TRAIN, **kwargs}
  )
  state = method.init(setup["state"].params, setup["state"].model_state)
  store = setup["store"]
  out = {
    "states": [],
    "costs": [],
    "compiles": [],
    "before": [],
    "after": [],
    "inputs": [],
    "input_copies": [],
  }
  for r, ((token, cls, n), request) in enumerate(zip(STREAM, setup["requests"])):
    assert request.token == token
    idx = np.flatnonzero(y == cls)
    if request.kind == "unlearn":
      store = D.store_purge(store, idx, y_train=y)
    ctx = MT.Context(D.DataAccess(x, y, store, idx), request, r, n, B, MT.method_seed(0, r, name))
    run = method.unlearn if request.kind == "unlearn" else method.learn
    out["before"].append(_accuracy(setup, state, [cls]))
    out["inputs"].append(state)
    out["input_copies"].append(_host(state))
    with _CompileCounter() as counter:
      state, cost = run(state, ctx)
      jax.block_until_ready(state)
    out["after"].append(_accuracy(setup, state, [cls]))
    out["states"].append(state)
    out["costs"].append(cost)
    out["compiles"].append(counter.count)
    if request.kind == "learn":
      store = D.store_add(store, idx, y, np.random.default_rng(r + 1))
  out["remain_after_u3"] = _accuracy(setup, out["states"][0], [0, 1, 2, 4, 5, 6, 7])
  return out


@pytest.fixture(scope="module")
def runs(setup):
  cache = {}

  def get(name):
    if name not in cache:
      cache[name] = _play(setup, name)
    return cache[name]

  return get


# --- Every baseline ------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_no_recompilation_between_requests(runs, name):
  compiles = runs(name)["compiles"]
  # The first request of each kind compiles (the counter works) ...
  assert compiles[0] > 0 and compiles[2] > 0, compiles
  # ... the second of each kind, with other index sets of the same batch size, does not.
  assert compiles[1] == 0 and compiles[3] == 0 and compiles[4] == 0, compiles


@pytest.mark.parametrize("name", NAMES)
def test_class_unlearning_lowers_forget_accuracy(runs, name):
  run = runs(name)
  before, after = run["before"][0], run["after"][0]
  assert before > 0.95
  if BL.split_method_name(name)[1] in BL.CL_BASELINES + ("ft", "scrub"):
    # Fine-tuning on the store only drifts away from the forgotten class (no
    # forget-set term): measured 0.99 -> 0.79; require a drop of 0.10 (about 14
    # of the class's 136 training images) to leave room for platform numerics.
    # SCRUB's max steps under the shared gradient clip (its nearest stable
    # setting on the CNN) forget slowly here: measured 0.99 -> 0.80.
    assert before - after > 0.10, (before, after)
  else:
    # Methods with a forget-set term: measured 0.00-0.14 after the request.
    assert after < 0.5, (before, after)
  # No collapse of the classes kept (measured 0.89-0.99).
  assert run["remain_after_u3"] > 0.8, run["remain_after_u3"]


@pytest.mark.parametrize("name", NAMES)
def test_inputs_untouched(runs, name):
  # A method never updates or donates the state it is given (SCRUB's and
  # LwF's teacher is that state).
  run = runs(name)
  for given, copy, new in zip(run["inputs"], run["input_copies"], run["states"]):
    for a, b in zip(jax.tree.leaves(given), jax.tree.leaves(copy)):
      assert not (isinstance(a, jax.Array) and a.is_deleted())
      np.testing.assert_array_equal(np.asarray(a), b)
    assert not all(
      np.array_equal(np.asarray(a), b)
      for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(copy.params))
    )


# Per-request (steps, gradient evaluations), hand-counted from the rules: ER
# learn = 2 batches a step; SalUn adds 8 mask batches; SCRUB takes
# ceil(n / 3) max steps; EWC adds 256 single-sample gradients per Fisher.
_COSTS = {
  "ft": [(60, 60), (60, 60), (20, 40), (20, 40), (20, 20)],
  "ga": [(60, 60), (60, 60), (20, 40), (20, 40), (20, 20)],
  "neggrad_plus": [(60, 120), (60, 120), (20, 40), (20, 40), (20, 40)],
  "rl": [(60, 120), (60, 120), (20, 40), (20, 40), (20, 40)],
  "salun": [(60, 128), (60, 128), (20, 40), (20, 40), (20, 48)],
  "scrub": [(80, 80), (80, 80), (20, 40), (20, 40), (27, 27)],
  "naive": [(60, 60), (60, 60), (20, 20), (20, 20), (20, 20)],
  "der_pp": [(60, 60), (60, 60), (20, 60), (20, 60), (20, 20)],
  "ewc": [(60, 316), (60, 316), (20, 276), (20, 276), (20, 276)],
  "ewc+scrub": [(80, 336), (80, 336), (20, 276), (20, 276), (27, 283)],
}


@pytest.mark.parametrize("name", sorted(_COSTS))
def test_costs_are_counted(runs, name):
  costs = runs(name)["costs"]
  assert [(c.steps, c.grad_evals) for c in costs] == _COSTS[name]
  assert all(c.hvp_evals == 0 and c.seconds == 0.0 for c in costs)


# --- Method-specific contracts ----------------------------------------------------------------


def test_salun_updates_only_the_masked_fifth(setup):
  # Without weight decay, an update can move only the coordinates the mask keeps
  # (momentum carries masked updates only), so at most 20 % of the weights change.
  run = _play(setup, "salun", weight_decay=0.0)
  before, after = run["inputs"][0].params, run["states"][0].params
  changed = sum(
    int(np.sum(np.asarray(a) != np.asarray(b)))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after))
  )
  total = sum(a.size for a in jax.tree.leaves(before))
  assert 0.05 * total < changed <= math.floor(0.2 * total), (changed, total)
  assert run["after"][0] < 0.5


def test_random_labels_differ_from_true_and_follow_the_seed():
  labels = np.arange(5000) % 10
  a = BL.random_labels(labels, 10, (1, 2))
  assert a.dtype == np.int32 and a.shape == labels.shape
  assert np.all(a != labels)
  np.testing.assert_array_equal(a, BL.random_labels(labels, 10, (1, 2)))
  assert np.mean(a != BL.random_labels(labels, 10, (1, 3))) > 0.5
  # Uniform over the 9 other classes: every (true, fake) pair occurs.
  pairs = np.zeros((10, 10), int)
  np.add.at(pairs, (labels, a), 1)
  assert np.all(pairs[~np.eye(10, dtype=bool)] > 20)
  with pytest.raises(ValueError, match="num_classes"):
    BL.random_labels(labels[:3], 1, 0)


def test_der_pp_records_logits_and_zeroes_forgotten_ones(setup, runs):
  run = runs("der_pp")
  y = setup["y"]
  after_l9, after_u8 = run["states"][3], run["states"][4]
  c8, c9 = np.flatnonzero(y == 8), np.flatnonzero(y == 9)
  logits = np.asarray(after_l9.extra["logits"])
  assert logits.shape == (y.size, 10)
  # Recorded at the end of the learn request, for all of D_L.
  x9 = jnp.asarray(D.to_float(setup["x"][c9]))
  expected = setup["apply_fn"](after_l9.params, after_l9.model_state, x9, train=False)[0]
  np.testing.assert_allclose(logits[c9], np.asarray(expected), rtol=1e-5, atol=1e-5)
  assert np.all(np.abs(logits[c8]).sum(-1) > 0)
  # Unlearning class 8 zeroes exactly its rows.
  purged = np.asarray(after_u8.extra["logits"])
  np.testing.assert_array_equal(purged[c8], 0.0)
  others = np.setdiff1d(np.arange(y.size), c8)
  np.testing.assert_array_equal(purged[others], logits[others])


def test_ewc_state_after_learn_and_unlearn(runs):
  run = runs("ewc")
  for state in run["states"]:
    # The anchor is reset to the parameters after every request.
    for a, p in zip(jax.tree.leaves(state.extra["anchor"]), jax.tree.leaves(state.params)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(p))
    leaves = jax.tree.leaves(state.extra["fisher"])
    assert all(float(f.min()) >= 0 for f in leaves) and sum(float(f.sum()) for f in leaves) > 0
  # Online accumulation on learn requests: F <- F + F(D_L) (gamma = 1) only grows.
  f_u5, f_l8 = run["states"][1].extra["fisher"], run["states"][2].extra["fisher"]
  assert all(
    np.all(np.asarray(b) >= np.asarray(a))
    for a, b in zip(jax.tree.leaves(f_u5), jax.tree.leaves(f_l8))
  )


def test_diverging_ewc_stops_with_a_message_naming_ewc_lambda(setup, runs):
  """Unclipped SGD on the penalty diverges when ewc_lambda * max(F) * lr is large: a clear stop."""
  x, y = setup["x"], setup["y"]
  state = runs("ewc")["states"][1]  # its Fisher comes from the learn requests' data
  method = MT.baseline(
    setup["apply_fn"],
    "ewc",
    num_train=y.size,
    num_classes=10,
    **{**TRAIN, "clip_norm": None},
    ewc_lambda=1e7,
  )
  idx = np.flatnonzero(y == 8)
  ctx = MT.Context(
    D.DataAccess(x, y, setup["store"], idx),
    setup["requests"][2],
    2,
    60,
    B,
    MT.method_seed(0, 2, "ewc"),
  )
  with pytest.raises(MT.NonFiniteError, match=r"'ewc'.*'L:c8'.*lower ewc_lambda \(1e\+07\)"):
    method.learn(state, ctx)


# --- Names, pairs, validation -----------------------------------------------------------------


def test_pairs_validate_and_take_the_learn_part_state(setup):
  assert "er+ga" in MT.METHOD_NAMES and MT.is_method_name("ewc+scrub")
  assert "er+foo" not in MT.METHOD_NAMES and not MT.is_method_name("er+ga+ft")
  assert BL.split_method_name("ewc+scrub") == ("ewc", "scrub")
  apply_fn, state = setup["apply_fn"], setup["state"]
  make = lambda name: MT.baseline(apply_fn, name, num_train=100, num_classes=10, **TRAIN)
  assert make("er+ga").init(state.params, state.model_state).extra == ()
  assert set(make("ewc+scrub").init(state.params, state.model_state).extra) == {"fisher", "anchor"}
  assert make("der_pp+salun").init(state.params, state.model_state).extra["logits"].shape == (
    100,
    10,
  )
  cfg = C.ExperimentConfig(methods=("er+ga", "ugclu", "der_pp"))
  runner._validate(cfg)


@pytest.mark.parametrize(
  "name, match",
  [
    ("er+foo", "'foo' is not a baseline"),
    ("ugclu+ga", "'ugclu' is not a baseline"),
    ("er+ga+ft", "exactly two parts"),
    ("bogus", "unknown method 'bogus'"),
  ],
)
def test_invalid_names_are_one_line_errors(setup, name, match):
  with pytest.raises(ValueError, match=match) as e:
    MT.check_method_name(name)
  assert "\n" not in str(e.value)
  if name != "bogus":
    with pytest.raises(ValueError, match=match):
      MT.baseline(setup["apply_fn"], name, num_train=100, num_classes=10, **TRAIN)
  # The runner refuses the config with the same message, before any work.
  with pytest.raises(runner.RunError, match=match) as e:
    runner._validate(C.ExperimentConfig(methods=(name,)))
  assert "\n" not in str(e.value)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"ga_lr": 0.0}, r"^baselines\.ga_lr=0\.0 must be > 0$"),
    ({"salun_fraction": 1.5}, r"^baselines\.salun_fraction=1\.5 must be in \(0, 1\]$"),
    ({"ewc_lambda": -1.0}, r"^baselines\.ewc_lambda=-1\.0 must be >= 0$"),
    ({"ewc_lambda": math.nan}, r"^baselines\.ewc_lambda=nan must be finite$"),
    ({"gamma": 1.0}, r"^unknown baselines hyperparameter 'gamma'; valid: ft_lr, "),
    ({"num_classes": 1}, r"^num_classes=1 must be >= 2$"),
    ({"learn_lr": -0.1}, r"^learn_lr=-0\.1 must be > 0$"),
    ({"momentum": math.inf}, r"^momentum=inf must be finite$"),
  ],
)
def test_bad_hyperparameters(setup, kwargs, match):
  kwargs = {"num_train": 100, "num_classes": 10, **TRAIN, **kwargs}
  with pytest.raises(ValueError, match=match):
    MT.baseline(setup["apply_fn"], "ga", **kwargs)


def test_check_hyperparameters_accepts_the_config_and_names_the_bad_value():
  MT.check_hyperparameters(**C.to_dict(C.BaselinesConfig()))
  for kwargs, match in [
    ({"scrub_lr": -1.0}, r"baselines\.scrub_lr=-1\.0 must be > 0$"),
    ({"ewc_gamma": 2.0}, r"baselines\.ewc_gamma=2\.0 must be in \[0, 1\]"),
    ({"ewc_fisher_samples": 2.5}, "ewc_fisher_samples=2.5 must be an int"),
    ({"ga_lr": "fast"}, "ga_lr='fast' must be a number"),
    ({"gamma": 1.0}, "unknown baselines hyperparameter 'gamma'"),
  ]:
    with pytest.raises(ValueError, match=match) as e:
      MT.check_hyperparameters(**kwargs)
    assert "\n" not in str(e.value)


def test_one_default_per_hyperparameter():
  """BaselinesConfig holds each default; neither the builder nor a rule repeats one."""
  import inspect

  fields = {f.name for f in dataclasses.fields(C.BaselinesConfig)}
  for fn in (MT.baseline, *LR.LEARN_RULES.values(), *UR.UNLEARN_RULES.values()):
    for key, p in inspect.signature(fn).parameters.items():
      if key in fields or key in TRAIN:
        assert p.default is p.empty, (fn.__name__, key)
  assert C.BaselinesConfig is BL.BaselinesConfig  # The config holds the baselines' class.


def test_every_rule_hyperparameter_is_a_field_of_the_config():
  # A rule's own hyperparameters are its keyword-only parameters, each a field
  # of BaselinesConfig; every field is some rule's.
  import inspect

  fields = {f.name for f in dataclasses.fields(C.BaselinesConfig)}
  used = set()
  for rule in (*LR.LEARN_RULES.values(), *UR.UNLEARN_RULES.values()):
    params = inspect.signature(rule).parameters
    assert list(params)[0] == "setup"
    assert set(rule_hparams(rule)) <= fields, rule.__name__
    used |= set(rule_hparams(rule))
  assert used == fields


def test_a_registered_rule_is_a_baseline(setup, monkeypatch):
  # One factory and one registry entry make a rule (the name tuples, derived
  # from the registries at import, are patched alongside).
  calls = []

  def keep(rule_setup, *, ft_lr):
    def unlearn(state, ctx):
      calls.append((rule_setup.name, ft_lr, ctx.index))
      return state.params, state.model_state, Cost()

    return unlearn

  monkeypatch.setitem(UR.UNLEARN_RULES, "keep", keep)
  monkeypatch.setattr(BL, "BASELINE_NAMES", (*BL.BASELINE_NAMES, "keep"))
  x, y = setup["x"], setup["y"]
  method = MT.baseline(
    setup["apply_fn"], "ewc+keep", num_train=y.size, num_classes=10, **TRAIN, ft_lr=0.5
  )
  state = method.init(setup["state"].params, setup["state"].model_state)
  forget = np.flatnonzero(y == 3)
  store = D.store_purge(setup["store"], forget, y_train=y)
  ctx = MT.Context(D.DataAccess(x, y, store, forget), setup["requests"][0], 7, 10, B, (0, 7, 1))
  new, cost = method.unlearn(state, ctx)
  assert calls == [("ewc+keep", 0.5, 7)]
  # The learn part's bookkeeping still runs: EWC's Fisher is recomputed on the store.
  assert cost == Cost(0.0, 0, 256, 0)
  assert sum(float(f.sum()) for f in jax.tree.leaves(new.extra["fisher"])) > 0


# --- Through the CLI --------------------------------------------------------------------------


def test_cli_runs_baselines_and_pairs(tmp_path):
  # Three pairs, each one baseline's learn rule with another's unlearn rule, with a small
  # budget, in one smoke run through the CLI (every single baseline runs in test_stress).
  methods = "er+ga,der_pp+scrub,ewc+salun"
  cmd = [
    sys.executable,
    "-m",
    "ugclu_jax",
    "run",
    "--config",
    "smoke",
    "--workdir",
    str(tmp_path / "run"),
    "--no-progress",
    "--set",
    f"methods={methods}",
    "--set",
    "stream=L:t0 L:t1 U:c1 L:t2 U:r0.1",
    "--set",
    "train.learn_epochs=1",
    "--set",
    "train.unlearn_iterations=20",
  ]
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((tmp_path / "run" / "report.json").read_text())
  assert set(report["methods"]) == {*methods.split(","), "retrain"}
  for name in methods.split(","):
    requests = report["methods"][name]["requests"]
    assert [q["request"] for q in requests] == ["L:t0", "L:t1", "U:c1", "L:t2", "U:r0.1"]
    assert requests[2]["metrics"]["forget_acc"] is not None
    assert all(q["metrics"]["steps"] > 0 for q in requests)
  md = (tmp_path / "run" / "report.md").read_text()
  assert all(name in md for name in methods.split(","))
  for name in methods.split(","):
    assert (tmp_path / "run" / f"acc_matrix_{name}.png").is_file(), name


def test_ascent_bound_keeps_the_logit_scale(setup):
  """Unbounded NegGrad+ ascent inflates the logits without limit; the bound stops it."""
  x, y = setup["x"], setup["y"]
  request = setup["requests"][0]
  forget = np.flatnonzero(y == 3)
  store = D.store_purge(setup["store"], forget, y_train=y)
  scale = {}
  for bound in (0.0, 1.0):
    method = MT.baseline(
      setup["apply_fn"],
      "neggrad_plus",
      num_train=y.size,
      num_classes=10,
      **TRAIN,
      neggrad_lr=0.05,
      neggrad_alpha=0.5,
      ascent_bound=bound,
    )
    state = method.init(setup["state"].params, setup["state"].model_state)
    ctx = MT.Context(D.DataAccess(x, y, store, forget), request, 0, 200, B, (0, 0, 1))
    state, _ = method.unlearn(state, ctx)
    logits, _ = setup["apply_fn"](
      state.params, state.model_state, jnp.asarray(D.to_float(x)), train=False
    )
    scale[bound] = float(jnp.max(jnp.abs(logits)))
    assert _accuracy(setup, state, [3]) < 0.05  # Both forget the class.
  assert scale[1.0] < 0.5 * scale[0.0], scale
