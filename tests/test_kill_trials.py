"""Seeded kill -9 trials (scripts/kill_trials.py): each resumes to the uninterrupted report."""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _script():
  spec = importlib.util.spec_from_file_location("kill_trials", ROOT / "scripts" / "kill_trials.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_a_kill_trial_resumes_to_the_reference_report(tmp_path, capsys):
  code = _script().main(
    [
      "--trials",
      "1",
      "--seed",
      "1",
      "--config",
      "smoke",
      "--set",
      "train.learn_epochs=2",
      "--set",
      "train.unlearn_iterations=40",
      "--set",
      "stream=L:t0 L:t1 U:c1 L:t2 U:r0.1",
      "--root",
      str(tmp_path),
    ]
  )
  out = capsys.readouterr().out
  assert code == 0, out
  assert "1/1 trials resumed to the reference report.json" in out, out
  assert (tmp_path / "trial_000" / "report.json").is_file()
