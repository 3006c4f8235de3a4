"""Checkpoints that cannot lie: a content hash, checked on restore, and fallback to a good one."""

import glob
import json
import os
import pathlib
import re
import shutil

import jax
import numpy as np
import pytest

from ugclu_jax import config as C
from ugclu_jax import report as R
from ugclu_jax import runner
from ugclu_jax.checkpointing import (
  INTEGRITY,
  CheckpointError,
  Checkpointer,
  DamagedError,
  content_hash,
  read_meta,
)

# The smoke config with a smaller budget (as tests/test_runner.py).
FAST = ["train.learn_epochs=2", "train.unlearn_iterations=40"]


def _tree(step):
  rng = np.random.default_rng(step)
  # Random bits do not compress: Orbax stores them raw, where a bit can be flipped.
  return {
    "w": rng.integers(0, 2**32, size=(64, 32), dtype=np.uint32),
    "b": (np.arange(7, dtype=np.int64) + step, np.zeros(3, bool)),
  }


def _saved(root, steps=(1, 2)):
  with Checkpointer(root) as ckpt:
    for s in steps:
      ckpt.save(s, _tree(s), {"cursor": s, "x": [0.5, None]})
  return root


def _data_files(step_dir):
  return sorted(glob.glob(str(step_dir / "arrays" / "**" / "d" / "*"), recursive=True))


def flip_bit_in(step_dir, array: np.ndarray, window: int = 16) -> None:
  """Flips one bit of ``array``'s values where a data file stores them as they are.

  Orbax compresses chunks, and the compressor keeps incompressible runs (random
  mantissas) as literals: a ``window``-byte run of the array found in a data
  file is the array's own bytes, and a flip there changes one value.
  """
  raw = np.ascontiguousarray(array).tobytes()
  flipped = 0
  for path in _data_files(step_dir):  # Small values may sit in two index files: flip each.
    data = bytearray(pathlib.Path(path).read_bytes())
    where = {bytes(data[i : i + window]): i for i in range(len(data) - window + 1)}
    for start in range(0, len(raw) - window + 1, 4):
      at = where.get(raw[start : start + window])
      if at is not None:
        data[at + window // 2] ^= 0x10
        pathlib.Path(path).write_bytes(bytes(data))
        flipped += 1
        break
  assert flipped, f"the array's bytes are in no data file of {step_dir}"


def flip_param_bit(ckpt_dir, step: int, template) -> str:
  """Flips one bit of a saved checkpoint that, unchecked, restores as a changed parameter.

  Orbax compresses chunks, so the bit is searched: seeded positions in the
  largest data file are flipped one at a time until the unverified restore
  succeeds and exactly the float32 arrays of one leaf differ (the issue's silent
  corruption). Returns that leaf's path.
  """
  with Checkpointer(ckpt_dir) as ckpt:
    before, _ = ckpt.read_unverified(step, template)
    path = pathlib.Path(max(_data_files(ckpt.step_dir(step)), key=os.path.getsize))
    original = path.read_bytes()
    rng = np.random.default_rng(0)
    for _ in range(60):
      data = bytearray(original)
      at = int(rng.integers(len(data)))
      data[at] ^= 1 << int(rng.integers(8))
      path.write_bytes(bytes(data))
      after, _ = ckpt.read_unverified(step, template)
      if after is not None:
        changed = [
          jax.tree_util.keystr(k)
          for (k, a), b in zip(jax.tree_util.tree_leaves_with_path(before), jax.tree.leaves(after))
          if not np.array_equal(a, b)
        ]
        # A method's state is (params, model_state, extra): index 0 is its parameters.
        if len(changed) == 1 and re.match(r"\['methods'\]\['\w+'\]\[0\]", changed[0]):
          return changed[0]
      path.write_bytes(original)
  raise AssertionError(f"no bit of {path} restores silently as a changed parameter")


def _truncate_array_file(step_dir):
  path = max(_data_files(step_dir), key=os.path.getsize)
  os.truncate(path, os.path.getsize(path) // 2)


def _delete_array_files(step_dir):
  for path in _data_files(step_dir):
    os.remove(path)


def _delete_manifest(step_dir):
  paths = glob.glob(str(step_dir / "arrays" / "**" / "manifest.ocdbt"), recursive=True)
  assert paths
  for path in paths:
    os.remove(path)


def _delete_meta(step_dir):
  os.remove(step_dir / "meta" / "metadata")


def _truncate_meta(step_dir):
  path = step_dir / "meta" / "metadata"
  os.truncate(path, os.path.getsize(path) // 2)


DAMAGES = {
  "truncated array file": _truncate_array_file,
  "deleted array files": _delete_array_files,
  "missing manifest": _delete_manifest,
  "missing metadata": _delete_meta,
  "truncated metadata": _truncate_meta,
}


# ----------------------------------------------------------------------------
# The module, on small trees
# ----------------------------------------------------------------------------


def test_content_hash_covers_bytes_dtype_shape_keys_and_meta():
  flat = {"00000": np.arange(6, dtype=np.float32), "00001": np.ones(2, np.int64)}
  base = content_hash(flat, {"a": 1})
  assert content_hash({k: v.copy() for k, v in flat.items()}, {"a": 1}) == base
  flipped = flat["00000"].copy()
  flipped.view(np.uint32)[3] ^= 1
  variants = [
    ({**flat, "00000": flipped}, {"a": 1}),
    ({**flat, "00000": flat["00000"].astype(np.float64)}, {"a": 1}),
    ({**flat, "00000": flat["00000"].reshape(2, 3)}, {"a": 1}),
    ({"00000": flat["00000"], "00002": flat["00001"]}, {"a": 1}),
    (flat, {"a": 2}),
  ]
  hashes = {content_hash(f, m) for f, m in variants}
  assert base not in hashes and len(hashes) == len(variants)


def test_save_writes_the_hash_last_and_restores(tmp_path):
  _saved(tmp_path / "c")
  assert (tmp_path / "c" / "2" / INTEGRITY).is_file()
  with Checkpointer(tmp_path / "c") as ckpt:
    step, tree, meta = ckpt.restore_latest_good(_tree(0))
  assert step == 2 and meta == {"cursor": 2, "x": [0.5, None]}
  np.testing.assert_array_equal(tree["w"], _tree(2)["w"])
  np.testing.assert_array_equal(tree["b"][0], _tree(2)["b"][0])
  assert read_meta(tmp_path / "c") == meta


@pytest.mark.parametrize("damage", ["bit flip", *DAMAGES, "missing hash"])
def test_damaged_latest_falls_back_in_one_line(damage, tmp_path, capfd):
  root = _saved(tmp_path / "c")
  if damage == "bit flip":
    flip_bit_in(root / "2", _tree(2)["w"])
  elif damage == "missing hash":
    os.remove(root / "2" / INTEGRITY)
  else:
    DAMAGES[damage](root / "2")
  lines = []
  assert read_meta(root, lines.append) == {"cursor": 1, "x": [0.5, None]}
  with Checkpointer(root) as ckpt:
    step, tree, _ = ckpt.restore_latest_good(_tree(0), lines.append)
    with pytest.raises(DamagedError):
      ckpt.restore(2, _tree(0))
  assert step == 1
  np.testing.assert_array_equal(tree["w"], _tree(1)["w"])
  assert len(lines) == 2, lines  # read_meta's and restore_latest_good's
  assert all("\n" not in line and line.startswith("checkpoint 2 in ") for line in lines)
  if damage == "bit flip":
    assert "content hash mismatch" in lines[0]
  err = capfd.readouterr().err
  assert "Traceback" not in err and "Event loop" not in err, err


def test_no_good_checkpoint_is_a_one_line_error(tmp_path):
  root = _saved(tmp_path / "c")
  for s in (1, 2):
    _truncate_meta(root / str(s))
  with pytest.raises(CheckpointError) as e:
    read_meta(root)
  assert isinstance(e.value, ValueError) and "\n" not in str(e.value)
  with Checkpointer(root) as ckpt, pytest.raises(CheckpointError):
    ckpt.restore_latest_good(_tree(0))


def test_only_incomplete_steps_count_as_none(tmp_path):
  root = _saved(tmp_path / "c", steps=(1,))
  os.remove(root / "1" / INTEGRITY)  # Killed after Orbax's rename, before the hash.
  lines = []
  assert read_meta(root, lines.append) is None
  assert len(lines) == 1 and "incomplete" in lines[0]
  with Checkpointer(root) as ckpt:
    assert ckpt.clean_after(None) == [1]
    assert ckpt.steps() == []


# ----------------------------------------------------------------------------
# The runner: resume from the newest good checkpoint to the same report
# ----------------------------------------------------------------------------


def _cfg():
  return C.apply_overrides(C.load_config("smoke"), FAST)


def _template():
  cfg, ds, _, _, names = runner.prepare(_cfg())
  _, _, states, store, learned = runner._initial(cfg, ds, names)
  return runner._state_tree(states, store, learned)


class _Stop(Exception):
  pass


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("ckpt") / "reference"
  report = runner.run_experiment(_cfg(), workdir, progress=False, echo=lambda s: None)
  return workdir, R.without_timings(report)


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
  """A run stopped in its last request (U:t3): checkpoints 6 and 7 are kept."""
  workdir = tmp_path_factory.mktemp("ckpt") / "partial"

  def echo(line):
    if line.startswith("[7] "):
      raise _Stop

  with pytest.raises(_Stop):
    runner.run_experiment(_cfg(), workdir, progress=False, echo=echo)
  with Checkpointer(workdir / "checkpoints") as ckpt:
    assert ckpt.steps() == [7, 6]
  return workdir


def _resume(workdir):
  lines = []
  report = runner.run_experiment(_cfg(), workdir, resume=True, progress=False, echo=lines.append)
  return R.without_timings(report), lines


@pytest.mark.parametrize("damage", ["bit flip in a parameter", *DAMAGES, "missing hash"])
def test_damaged_latest_checkpoint_resumes_from_the_previous(damage, reference, partial, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(partial, workdir)
  step_dir = workdir / "checkpoints" / "7"
  if damage == "bit flip in a parameter":
    flip_param_bit(workdir / "checkpoints", 7, _template())
  elif damage == "missing hash":  # Killed after Orbax's rename, before the hash was written.
    os.remove(step_dir / INTEGRITY)
  else:
    DAMAGES[damage](step_dir)
  report, lines = _resume(workdir)
  assert report == reference[1]
  bad = [line for line in lines if line.startswith("checkpoint 7 ")]
  what = "incomplete" if damage == "missing hash" else "damaged"
  assert len(bad) == 1 and what in bad[0], lines
  if damage.startswith("bit flip"):  # It restores without error: only the hash tells.
    assert "content hash mismatch" in bad[0]
  assert any(line.startswith("resuming") and "request 6 of 8" in line for line in lines), lines
  assert bad[0] in (workdir / "run.log").read_text()
  assert json.loads((workdir / "report.json").read_text())["methods"]
  with Checkpointer(workdir / "checkpoints") as ckpt:
    assert ckpt.steps() == [8]  # The redone unlearn request deleted the older ones.


def test_bit_flip_in_the_only_checkpoint_is_refused(reference, tmp_path, capsys):
  from ugclu_jax import cli

  workdir = tmp_path / "run"
  shutil.copytree(reference[0], workdir)
  with Checkpointer(workdir / "checkpoints") as ckpt:
    assert ckpt.steps() == [8]
  flip_param_bit(workdir / "checkpoints", 8, _template())
  before = (workdir / "report.json").read_bytes()
  code = cli.main(
    [
      "run",
      "--config",
      "smoke",
      "--workdir",
      str(workdir),
      "--resume",
      "--no-progress",
      *[a for kv in FAST for a in ("--set", kv)],
    ]
  )
  err = capsys.readouterr().err.strip()
  assert code == 4 and len(err.splitlines()) == 1, (code, err)  # errors.ENVIRONMENT
  assert "no intact checkpoint" in err and "Traceback" not in err
  assert (workdir / "report.json").read_bytes() == before
  with pytest.raises(CheckpointError):
    runner.load_state(workdir)
