"""Command line: ``python -m ugclu_jax run|report ...`` (thin: parse, then call the runner)."""

import argparse
import os
import sys

USAGE_ERRORS = 2


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m ugclu_jax",
                              description="UG-CLU continual learning-unlearning experiments")
  sub = p.add_subparsers(dest="command", required=True)
  run = sub.add_parser("run", help="play a request stream against methods and the oracle")
  run.add_argument("--config", required=True,
                   help="a config name in experiments/configs/ or a path to a .py file")
  run.add_argument("--workdir", required=True, help="output folder")
  run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help='override a config field, e.g. --set stream="L:t0 U:t0" '
                        "--set data.name=digits --set methods=ugclu,ugclu_hvp")
  run.add_argument("--resume", action="store_true",
                   help="continue the run in --workdir from its last checkpoint")
  run.add_argument("--no-progress", action="store_true", help="no progress bars")
  rep = sub.add_parser("report", help="render report.md and plots from report.json files")
  rep.add_argument("dirs", nargs="+", help="run folders (or report.json paths); several "
                   "seeds are aggregated as mean ± std")
  rep.add_argument("--out", default=None, help="output folder (required for several runs)")
  return p


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  # Imports after parsing so that --help is instant.
  import jax
  if not jax.config.jax_compilation_cache_dir:
    # Reuse compiled steps across runs (JAX_COMPILATION_CACHE_DIR overrides).
    jax.config.update("jax_compilation_cache_dir",
                      os.path.join(os.path.expanduser("~"), ".cache", "ugclu_jax", "xla"))
  from ugclu_jax import config as C
  from ugclu_jax import runner
  from ugclu_jax.methods import NonFiniteError
  try:
    if args.command == "run":
      cfg = C.apply_overrides(C.load_config(args.config), args.set)
      runner.run_experiment(cfg, args.workdir, resume=args.resume,
                            progress=not args.no_progress)
    else:
      from ugclu_jax import report
      path = report.render(args.dirs, args.out)
      print(f"wrote {path}")
  except NonFiniteError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except ValueError as e:  # ConfigError, StreamError, RunError, dataset errors.
    print(f"error: {e}", file=sys.stderr)
    return USAGE_ERRORS
  return 0
