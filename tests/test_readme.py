"""Every python block of README.md runs as written and does what it says.

The blocks run in order in one namespace: each continues the previous ones (the
README says so), and each has a check below, in the same order.
"""

import math
import pathlib
import re

import jax
import numpy as np

import ugclu_jax as ug

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _accuracies(out, label):
  found = re.findall(rf"{label}: forget acc ([\d.]+), remain acc ([\d.]+)", out)
  assert len(found) == 1, out
  return tuple(map(float, found[0]))


def _forgets(label):
  """The block unlearned digit 3 and kept the rest."""

  def check(namespace, out):
    del namespace
    forget, remain = _accuracies(out, label)
    assert forget < 0.2 and remain > 0.9, out

  return check


def _steps_forget(namespace, out):
  _forgets("steps")(namespace, out)
  # N = 100, f = 5, fast-slow: 20 target steps, a remain step every iteration.
  assert namespace["counts"] == ug.RequestCounts(target=20, remain=100, fused=0)
  assert 0.0 < float(ug.mask_density(namespace["mask"])) < 1.0


def _parallel_step(namespace, out):
  del out
  mesh, batch, metrics = namespace["mesh"], namespace["batch"], namespace["metrics"]
  assert set(batch.x.devices()) == set(mesh.devices.flat)
  assert math.isfinite(float(metrics["remain_loss"]))
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(namespace["state"].params))


CHECKS = [_forgets("hvp"), _forgets("fast-slow"), _steps_forget, _parallel_step]


def test_readme_python_blocks(capsys):
  text = README.read_text()
  blocks = [
    (text.count("\n", 0, m.start(1)), m.group(1))
    for m in re.finditer(r"```python\n(.*?)```", text, re.S)
  ]
  assert len(blocks) == len(CHECKS), "a new README block needs its check here"
  namespace = {}
  for (line, code), check in zip(blocks, CHECKS):
    # Padding keeps README line numbers in tracebacks.
    with jax.numpy_rank_promotion("allow"):  # README code uses ordinary broadcasting
      exec(compile("\n" * line + code, str(README), "exec"), namespace)
    check(namespace, capsys.readouterr().out)
