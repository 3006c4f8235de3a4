"""One style for the whole tree: ruff's formatter and linter, configured in pyproject.toml."""

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _ruff():
  exe = pathlib.Path(sys.executable).with_name("ruff")
  found = str(exe) if exe.is_file() else shutil.which("ruff")
  if found is None:
    pytest.fail("ruff is not installed (requirements.txt lists it; run `make setup`)")
  return found


@pytest.mark.parametrize(
  "args",
  [("format", "--check", "--diff", "--no-cache"), ("check", "--no-cache")],
  ids=["format", "lint"],
)
def test_the_tree_passes_ruff(args):
  proc = subprocess.run([_ruff(), *args, "."], cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
