"""Validation before any work: config values, streams against the data, dataset files.

Each failure of issue 12's list has a test here: a one-line error that names the
bad key, token or file and, through the CLI, leaves no workdir behind.
"""

import dataclasses
import gzip
import math
import os
import re
import typing

import numpy as np
import pytest

from ugclu_jax import cli
from ugclu_jax import config as C
from ugclu_jax import data as D
from ugclu_jax import runner
from ugclu_jax.data import datasets
from ugclu_jax.data import streams

CLASSES = (C.DataConfig, C.TrainConfig, C.UGCLUConfig, C.BaselinesConfig, C.ExperimentConfig)
PREFIX = {
  C.DataConfig: "data.",
  C.TrainConfig: "train.",
  C.UGCLUConfig: "ugclu.",
  C.BaselinesConfig: "baselines.",
  C.ExperimentConfig: "",
}


def _run_cli(tmp_path, capsys, *sets, config="smoke"):
  """Runs ``run`` with overrides; returns (exit code, stderr, workdir)."""
  workdir = tmp_path / "run"
  args = ["run", "--config", str(config), "--workdir", str(workdir), "--no-progress"]
  for item in sets:
    args += ["--set", item]
  code = cli.main(args)
  return code, capsys.readouterr().err.strip(), workdir


def _assert_refused(code, err, workdir, *names):
  assert code != 0
  assert len(err.splitlines()) == 1, err
  for name in names:
    assert name in err, (name, err)
  assert "Traceback" not in err
  assert not workdir.exists(), "a refused run must write nothing"


# ---------------------------------------------------------------------------
# Config values: type, finiteness, sign, range (issue 12: "Values are not checked").


@pytest.mark.parametrize(
  "override, message",
  [
    ("ugclu.a_unlearn=-25", "ugclu.a_unlearn=-25.0 must be >= 0"),
    ("train.momentum=2", "train.momentum=2.0 must be in [0, 1)"),
    ("train.momentum=1", "train.momentum=1.0 must be in [0, 1)"),
    ("train.learning_rate=inf", "train.learning_rate=inf must be finite"),
    ("train.learning_rate=nan", "train.learning_rate=nan must be finite"),
    ("train.learning_rate=-0.1", "train.learning_rate=-0.1 must be > 0"),
    ("train.weight_decay=-1e-4", "train.weight_decay=-0.0001 must be >= 0"),
    ("ugclu.temperature=-0.5", "ugclu.temperature=-0.5 must be >= 0"),
    ("ugclu.clip=-1", "ugclu.clip=-1.0 must be >= 0"),
    ("ugclu.beta=-1", "ugclu.beta=-1.0 must be >= 0"),
    ("ugclu.damping=-inf", "ugclu.damping=-inf must be finite"),
    ("ugclu.slow_step_size=1.5", "ugclu.slow_step_size=1.5 must be in [0, 1]"),
    ("ugclu.sync_period=-1", "ugclu.sync_period=-1 must be >= 0"),
    ("baselines.salun_fraction=0", "baselines.salun_fraction=0.0 must be in (0, 1]"),
    ("baselines.ga_lr=inf", "baselines.ga_lr=inf must be finite"),
    ("data.batch_size=0", "data.batch_size=0 must be >= 1"),
    ("data.max_train_per_class=0", "data.max_train_per_class=0 must be >= 1"),
    ("data.class_order=1,1", "data.class_order=(1, 1) must not repeat an item"),
    ("methods=ugclu,ugclu", "methods=('ugclu', 'ugclu') must not repeat an item"),
    ("seed=4294967296", "seed=4294967296 must be in [0, 4294967295]"),
    ("seed=-1", "seed=-1 must be in [0, 4294967295]"),
    ("seed=٣", "seed='٣' is not a valid int"),
    ("train.learn_epochs=０.５", "train.learn_epochs='０.５' is not a valid float"),
  ],
)
def test_bad_values_are_refused_in_one_line_before_the_workdir(override, message, tmp_path, capsys):
  code, err, workdir = _run_cli(tmp_path, capsys, override)
  _assert_refused(code, err, workdir, message)


def test_values_the_docs_allow_are_accepted():
  cfg = C.apply_overrides(
    C.load_config("smoke"),
    [
      "ugclu.learn_temperature=-1",  # Negative: hard samples up, by design.
      "ugclu.clip=0",
      "ugclu.temperature=0",
      "train.momentum=0",
      "train.devices=0",
      "seed=4294967295",
      "data.store_size=none",
      "ugclu.slow_step_size=0",
    ],
  )
  assert cfg.ugclu.learn_temperature == -1.0 and cfg.seed == 2**32 - 1
  assert cfg.data.store_size is None


def _fields(cls):
  hints = typing.get_type_hints(cls)
  return [(f.name, hints[f.name]) for f in dataclasses.fields(cls)]


@pytest.mark.parametrize(
  "cls", [C.TrainConfig, C.UGCLUConfig, C.BaselinesConfig], ids=lambda c: c.__name__
)
def test_every_float_field_refuses_nan_and_inf(cls):
  checked = 0
  for name, tp in _fields(cls):
    if C._unwrap_optional(tp)[0] is not float:
      continue
    for bad in (math.nan, math.inf, -math.inf, 10**400):
      with pytest.raises(
        C.ConfigError,
        match=rf"^{re.escape(PREFIX[cls] + name)}=.* "
        r"must be finite$",
      ):
        cls(**{name: bad})
    checked += 1
  assert checked


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_field_checks_its_type(cls):
  """bool is not an int, a str is not a number, a list is not a tuple."""
  for name, tp in _fields(cls):
    base = C._unwrap_optional(tp)[0]
    if base is str:
      bad = 3
    elif base is bool:
      bad = 1
    elif typing.get_origin(base) is tuple:
      bad = ["a"] if typing.get_args(base)[0] is str else [1, 2]
    elif dataclasses.is_dataclass(base):
      bad = {"name": "digits"}
    else:  # int or float
      bad = True
    with pytest.raises(
      C.ConfigError,
      match=rf"^{re.escape(PREFIX[cls] + name)}=\S.* must be "
      r"(a|an) \w+",
    ):
      cls(**{name: bad})
  # A str is not a number either.
  for name, tp in _fields(cls):
    if C._unwrap_optional(tp)[0] in (int, float):
      with pytest.raises(C.ConfigError, match=re.escape(f"{PREFIX[cls]}{name}='1' must be")):
        cls(**{name: "1"})


def test_python_config_batch_size_str_is_one_line_naming_the_key(tmp_path, capsys):
  path = tmp_path / "typo.py"
  path.write_text(
    "from ugclu_jax.config import DataConfig, ExperimentConfig\n\n\n"
    "def get_config():\n"
    '  return ExperimentConfig(data=DataConfig(batch_size="32"))\n'
  )
  with pytest.raises(C.ConfigError, match=r"^data\.batch_size='32' must be an int$"):
    C.DataConfig(batch_size="32")
  code, err, workdir = _run_cli(tmp_path, capsys, config=path)
  _assert_refused(code, err, workdir, "data.batch_size='32' must be an int")


def test_shipped_configs_are_valid_and_round_trip():
  for name in C.available_configs():
    cfg = C.load_config(name)
    assert C.from_dict(C.to_dict(cfg)) == cfg
    runner._validate(cfg)
  with pytest.raises(C.ConfigError, match=r"^train\.momentum=-0\.5 must be in \[0, 1\)$"):
    C.from_dict({**C.to_dict(C.ExperimentConfig()), "train": {"momentum": -0.5}})


def test_runner_keeps_only_the_checks_a_config_cannot_make():
  with pytest.raises(runner.RunError, match=r"train.model='vit' is unknown"):
    runner._validate(C.ExperimentConfig(train=C.TrainConfig(model="vit")))
  with pytest.raises(runner.RunError, match=r"unknown method 'magic'"):
    runner._validate(C.ExperimentConfig(methods=("magic",)))
  with pytest.raises(runner.RunError, match=r"^ugclu.mask_kind='topk' is unknown; valid: balanced"):
    runner._validate(C.ExperimentConfig(ugclu=C.UGCLUConfig(mask_kind="topk")))
  with pytest.raises(runner.RunError, match=r"^on_nonfinite='skip' is unknown; valid: stop, drop$"):
    runner._validate(C.ExperimentConfig(on_nonfinite="skip"))


# ---------------------------------------------------------------------------
# Streams against the dataset ("A stream that unlearns everything learned
# passes validation") and ASCII digits.

Y = np.repeat(np.arange(6), 5).astype(np.int32)  # 6 classes, 5 samples each
TASKS = streams.make_tasks(6, 2)


def _check(text, y=Y, seed=0):
  requests = streams.parse_stream(text, tasks=TASKS, num_classes=6)
  streams.check_stream_data(requests, y_train=y, seed=seed)


@pytest.mark.parametrize(
  "text, token",
  [
    ("L:t0 U:t0", "'U:t0' (position 1)"),  # the old `run --help` example
    ("L:t0 U:c0,1", "'U:c0,1' (position 1)"),
    ("L:t0 U:r1", "'U:r1' (position 1)"),
    ("L:t0 U:r0.96", "'U:r0.96' (position 1)"),  # 9.6 of 10 samples rounds to all
    ("L:t0 L:t1 U:t1 U:c0,1", "'U:c0,1' (position 3)"),
    ("L:t0 L:t1 U:r0.5@t1 U:t0 U:t1", "'U:t1' (position 4)"),
  ],
)
def test_unlearning_everything_learned_is_refused(text, token):
  with pytest.raises(streams.StreamError, match=re.escape(token) + ".*nothing remains") as e:
    _check(text)
  assert "\n" not in str(e.value)


def test_a_request_that_selects_nothing_of_the_data_is_refused():
  # U:r0.9@t0 takes 9 of class 0 and 1's 10 samples: one of them is left. Whether
  # U:c0 then selects anything depends on the draw, which the check replays.
  requests = streams.parse_stream("L:t0 L:t1 U:r0.9@t0 U:c0", tasks=TASKS, num_classes=6)
  outcomes = set()
  for seed in range(20):
    *_, (drawn, _) = streams.replay_stream(requests[:3], y_train=Y, seed=seed)
    class0_left = 5 - np.isin(drawn, np.flatnonzero(Y == 0)).sum()
    outcomes.add(bool(class0_left))
    if class0_left:
      streams.check_stream_data(requests, y_train=Y, seed=seed)
    else:
      with pytest.raises(streams.StreamError, match=r"'U:c0' \(position 3\): selects no "):
        streams.check_stream_data(requests, y_train=Y, seed=seed)
  assert outcomes == {True, False}
  # A class without training samples cannot be learned.
  no_class_5 = Y[Y != 5]
  with pytest.raises(streams.StreamError, match=r"'L:c5' \(position 1\): selects no"):
    _check("L:t0 L:c5", y=no_class_5)


def test_streams_that_keep_something_learned_pass():
  _check("L:t0 L:t1 U:t0 L:t2 U:r0.5 U:c3")
  _check("L:t0 L:t0 U:r0.5")  # learning a learned task again has a full D_L
  _check("L:t0 U:r0.04")  # 0.4 of a sample still unlearns one


def test_the_runner_replays_the_same_draws():
  requests = streams.parse_stream("L:t0 L:t1 U:r0.3 U:r0.5@t1", tasks=TASKS, num_classes=6)
  learned = np.zeros(Y.shape, bool)
  for r, (idx, after) in enumerate(streams.replay_stream(requests, y_train=Y, seed=7)):
    expected = streams.resolve_request(
      requests[r], y_train=Y, learned_mask=learned, rng=np.random.default_rng([7, r, 11])
    )
    np.testing.assert_array_equal(idx, expected)
    learned = streams.apply_request(learned, requests[r], idx)
    np.testing.assert_array_equal(after, learned)


def test_unlearn_everything_through_the_cli(tmp_path, capsys):
  code, err, workdir = _run_cli(tmp_path, capsys, "stream=L:t0 U:t0")
  _assert_refused(code, err, workdir, "'U:t0'", "nothing remains")


@pytest.mark.parametrize("token", ["L:t٠", "U:r０.５", "L:c３", "L:c1,٣", "U:r0.5@t١"])
def test_non_ascii_digits_are_refused(token):
  with pytest.raises(streams.StreamError, match=re.escape(repr(token)) + ".*non-ASCII") as e:
    streams.parse_stream(f"L:t0 {token}", tasks=TASKS, num_classes=6)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("stream, token", [("L:t٠", "'L:t٠'"), ("L:t0 U:r０.５", "'U:r０.５'")])
def test_non_ascii_digits_through_the_cli(stream, token, tmp_path, capsys):
  code, err, workdir = _run_cli(tmp_path, capsys, f"stream={stream}")
  _assert_refused(code, err, workdir, token, "non-ASCII")


# ---------------------------------------------------------------------------
# Dataset files: labels against the class count, corrupt is not missing.


def _idx(array, code=0x08):
  header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
  return header + array.astype(datasets._IDX_DTYPES[code]).tobytes()


def _write_idx(folder, *, train_labels=None, test_labels=None, gz=True):
  rng = np.random.default_rng(0)
  train_labels = np.arange(40) % 10 if train_labels is None else train_labels
  test_labels = np.arange(20) % 10 if test_labels is None else test_labels
  files = {
    "train-images-idx3-ubyte": _idx(rng.integers(0, 256, (len(train_labels), 4, 4))),
    "train-labels-idx1-ubyte": _idx(np.asarray(train_labels)),
    "t10k-images-idx3-ubyte": _idx(rng.integers(0, 256, (len(test_labels), 4, 4))),
    "t10k-labels-idx1-ubyte": _idx(np.asarray(test_labels)),
  }
  os.makedirs(folder, exist_ok=True)
  for stem, data in files.items():
    if gz:
      with gzip.open(folder / f"{stem}.gz", "wb") as f:
        f.write(data)
    else:
      (folder / stem).write_bytes(data)
  return folder


@pytest.mark.parametrize(
  "where, stem", [("train", "train-labels-idx1-ubyte.gz"), ("test", "t10k-labels-idx1-ubyte.gz")]
)
def test_idx_label_255_is_an_error_naming_file_and_label(tmp_path, where, stem):
  labels = np.arange(40 if where == "train" else 20) % 10
  labels[7] = 255
  folder = _write_idx(tmp_path / "idx", **{f"{where}_labels": labels})
  with pytest.raises(ValueError, match=rf"{re.escape(stem)}: label 255") as e:
    D.load_dataset("idx", data_dir=str(folder))
  assert "\n" not in str(e.value)
  assert not isinstance(e.value, D.DatasetMissingError)
  # Without the stray label: 10 classes.
  ok = _write_idx(tmp_path / "ok")
  assert D.load_dataset("idx", data_dir=str(ok)).num_classes == 10


def test_idx_label_255_through_the_cli(tmp_path, capsys):
  labels = np.arange(40) % 10
  labels[3] = 255
  folder = _write_idx(tmp_path / "idx", train_labels=labels)
  code, err, workdir = _run_cli(tmp_path, capsys, "data.name=idx", f"data.dir={folder}")
  _assert_refused(code, err, workdir, "train-labels-idx1-ubyte.gz", "label 255")


def test_labels_beyond_a_fixed_class_count_are_refused(tmp_path):
  folder = _write_idx(tmp_path / "idx", test_labels=np.arange(20) % 11)
  with pytest.raises(
    ValueError,
    match=r"t10k-labels-idx1-ubyte\.gz: label 10 is outside "
    r"the 10 classes 0\.\.9",
  ):
    datasets.load_idx_dataset(str(folder), num_classes=10)


def _corrupt(folder, kind):
  """Damages train-images in ``folder`` (written by _write_idx) in one way."""
  gz = folder / "train-images-idx3-ubyte.gz"
  data = gzip.decompress(gz.read_bytes())
  if kind == "bad_gzip":
    gz.write_bytes(b"this is not gzip data at all")
  elif kind == "truncated_gzip":
    gz.write_bytes(gz.read_bytes()[:-12])
  elif kind == "bad_deflate":
    raw = bytearray(gz.read_bytes())
    raw[20:40] = b"\xff" * 20
    gz.write_bytes(bytes(raw))
  elif kind == "truncated_idx":
    gz.write_bytes(gzip.compress(data[:-5]))
  elif kind == "bad_magic":
    gz.write_bytes(gzip.compress(b"\x01\x02" + data[2:]))
  elif kind == "size_mismatch":
    gz.write_bytes(gzip.compress(data + b"\x00" * 16))
  return gz


CORRUPTIONS = [
  "bad_gzip",
  "truncated_gzip",
  "bad_deflate",
  "truncated_idx",
  "bad_magic",
  "size_mismatch",
]


@pytest.mark.parametrize("name", ["fashion_mnist", "idx"])
@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_a_corrupt_file_is_an_error_not_a_fallback(tmp_path, kind, name):
  folder = _write_idx(tmp_path / "data")
  bad = _corrupt(folder, kind)
  cfg = C.apply_overrides(
    C.load_config("smoke"), [f"data.name={name}", f"data.dir={folder}", "data.fallback=digits"]
  )
  log = []
  with pytest.raises(ValueError, match=re.escape(str(bad))) as e:
    runner.prepare(cfg, log.append)
  assert not isinstance(e.value, D.DatasetMissingError)
  assert "\n" not in str(e.value)
  assert log == []  # no fallback


def test_a_corrupt_fashion_mnist_through_the_cli_does_not_fall_back(tmp_path, capsys):
  folder = _write_idx(tmp_path / "fm")
  bad = _corrupt(folder, "truncated_gzip")
  code, err, workdir = _run_cli(
    tmp_path, capsys, "data.name=fashion_mnist", f"data.dir={folder}", "data.fallback=digits"
  )
  _assert_refused(code, err, workdir, str(bad))


def test_only_a_missing_file_falls_back_and_says_so(tmp_path):
  cfg = C.apply_overrides(
    C.load_config("smoke"),
    ["data.name=fashion_mnist", f"data.dir={tmp_path / 'empty'}", "data.fallback=digits"],
  )
  log = []
  cfg2, ds, _, _, _ = runner.prepare(cfg, log.append)
  assert ds.name == "digits" and cfg2.data.name == "digits"
  assert len(log) == 1 and "falling back to 'digits'" in log[0]
  assert "missing dataset file" in log[0] and "\n" not in log[0]
  with pytest.raises(D.DatasetMissingError, match="missing dataset file"):
    runner.prepare(C.apply_overrides(cfg, ["data.fallback=none"]))


# ---------------------------------------------------------------------------
# The tfds hint names a real way (never the network).


def test_tfds_hint_names_real_keys_and_a_real_command(tmp_path, no_network):
  with pytest.raises(D.DatasetMissingError) as e:
    D.load_dataset("tfds:mnist", data_dir=str(tmp_path))
  message = str(e.value)
  assert "\n" not in message
  assert "tfds build mnist --file_format=array_record" in message
  keys = re.findall(r"\bdata\.(\w+)", message)
  assert keys and set(keys) <= {f.name for f in dataclasses.fields(C.DataConfig)}, keys


def test_the_largest_seed_runs(tmp_path):
  cfg = C.apply_overrides(
    C.load_config("smoke"),
    [
      f"seed={C.SEED_MAX}",
      "stream=L:t0 U:r0.5",
      "train.learn_epochs=1",
      "train.unlearn_iterations=5",
      "data.max_train_per_class=20",
    ],
  )
  report = runner.run_experiment(
    cfg, tmp_path / "run", progress=False, render=False, echo=lambda s: None
  )
  assert report["config"]["seed"] == 2**32 - 1
  assert len(report["methods"]["ugclu"]["requests"]) == 2
