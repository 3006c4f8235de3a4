"""Data parallelism: tests/multi_device_cases.py in a process with four CPU devices."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_multi_device_cases_pass_on_four_cpu_devices():
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=(
      os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip(),
  )
  proc = subprocess.run(
    [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/multi_device_cases.py"],
    capture_output=True,
    text=True,
    cwd=ROOT,
    env=env,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
  assert "7 passed" in proc.stdout, proc.stdout[-2000:]
