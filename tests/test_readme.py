"""The README's first code block runs and does what it says."""

import pathlib
import re

import jax

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_optax_loop_example(capsys):
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
  assert blocks, "README has no python block"
  namespace = {}
  with jax.numpy_rank_promotion("allow"):  # README code uses ordinary broadcasting
    exec(compile(blocks[0], "README.md", "exec"), namespace)
  out = capsys.readouterr().out
  forget, remain = map(float, re.findall(r"forget acc ([\d.]+), remain acc ([\d.]+)", out)[0])
  assert forget < 0.2 and remain > 0.9, out
