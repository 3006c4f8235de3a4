"""Command line: ``python -m ugclu_jax run|report|audit ...`` (thin: parse, then call the runner).

Nothing heavy is imported before the arguments are parsed: ``--help`` returns
without importing JAX. Every failure ends in one line on stderr and an exit
code of :data:`ugclu_jax.errors.EXIT_CODES`; ``UGCLU_DEBUG=1`` adds the traceback.
"""

import argparse
import errno
import os
import shlex
import signal
import sys
import threading
import traceback

from ugclu_jax import errors

RUN_EXAMPLES = """\
examples:
  python -m ugclu_jax run --config smoke --workdir runs/smoke
  python -m ugclu_jax run --config smoke --workdir runs/s1 --set seed=1 \\
      --set stream="L:t0 L:t1 U:t0" --set methods=ugclu,ugclu_hvp
  python -m ugclu_jax run --config default --workdir runs/default --resume

"""


def _parser() -> argparse.ArgumentParser:
  raw = argparse.RawDescriptionHelpFormatter
  p = argparse.ArgumentParser(
    prog="python -m ugclu_jax",
    description="UG-CLU continual learning-unlearning experiments",
    epilog=errors.EXIT_CODES,
    formatter_class=raw,
  )
  sub = p.add_subparsers(dest="command", required=True)
  run = sub.add_parser(
    "run",
    help="play a request stream against methods and the oracle",
    description="Play a request stream against methods and the oracle. "
    "One run per workdir: a second run on a busy workdir is refused.",
    epilog=RUN_EXAMPLES + errors.EXIT_CODES,
    formatter_class=raw,
  )
  run.add_argument(
    "--config",
    required=True,
    help="a config name (smoke, default: shipped in ugclu_jax/configs/, or "
    "experiments/configs/ of the source tree) or a path to a .py file",
  )
  run.add_argument("--workdir", required=True, help="output folder")
  run.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help='override a config field, e.g. --set stream="L:t0 L:t1 U:t0" '
    "--set data.name=digits --set methods=ugclu,ugclu_hvp",
  )
  mode = run.add_mutually_exclusive_group()
  mode.add_argument(
    "--resume",
    action="store_true",
    help="continue the run in --workdir from its last checkpoint (a finished "
    "run is only re-rendered)",
  )
  mode.add_argument(
    "--overwrite",
    action="store_true",
    help="delete the run in --workdir (report, plots, checkpoints, log, config) and start over",
  )
  run.add_argument("--no-progress", action="store_true", help="no progress bars")
  rep = sub.add_parser(
    "report",
    help="render report.md and plots from report.json files",
    epilog=errors.EXIT_CODES,
    formatter_class=raw,
  )
  rep.add_argument(
    "dirs",
    nargs="+",
    help="run folders (or report.json paths); several seeds are aggregated as mean ± std",
  )
  rep.add_argument("--out", default=None, help="output folder (required for several runs)")
  aud = sub.add_parser(
    "audit",
    help="check a workdir for traces of forgotten data",
    description="Re-derive the forgotten samples from config.json and check "
    "every kept artefact: checkpoint hashes, stores and metadata, checkpoints "
    "from before an unlearn request, run.log, report.json. Prints one line "
    "per finding (exit 5), or one 'clean' line (exit 0).",
    epilog=errors.EXIT_CODES,
    formatter_class=raw,
  )
  aud.add_argument("workdir", help="a run folder")
  return p


def _resume_command(args) -> str:
  """The command that continues an interrupted ``run``."""
  python = sys.executable or "python"
  relative = os.path.relpath(python)
  if not relative.startswith(os.pardir):  # e.g. .venv/bin/python
    python = relative if os.path.dirname(relative) else os.path.join(os.curdir, relative)
  cmd = [python, "-m", "ugclu_jax", "run", "--config", args.config, "--workdir", args.workdir]
  for item in args.set:
    cmd += ["--set", item]
  if args.no_progress:
    cmd.append("--no-progress")
  return shlex.join(cmd + ["--resume"])


def _run(args) -> None:
  from ugclu_jax.host import use_compilation_cache

  # Reuse compiled steps across runs (JAX_COMPILATION_CACHE_DIR overrides).
  use_compilation_cache()
  from ugclu_jax import config as C
  from ugclu_jax import runner

  cfg = C.apply_overrides(C.load_config(args.config), args.set)
  runner.run_experiment(
    cfg, args.workdir, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress
  )


def _report(args) -> None:
  if args.out is not None and os.path.exists(args.out) and not os.path.isdir(args.out):
    raise NotADirectoryError(errno.ENOTDIR, "not a folder (--out names a file)", args.out)
  from ugclu_jax import report

  path = report.render(args.dirs, args.out)
  print(f"wrote {path}")


def _audit(args) -> None:
  from ugclu_jax import audit

  findings, summary = audit.run_audit(args.workdir)
  for line in findings:
    print(line)
  if findings:
    raise audit.Findings(f"audit: {len(findings)} finding(s); {summary}")
  print(f"clean: {summary}")


COMMANDS = {"run": _run, "report": _report, "audit": _audit}


def entry() -> None:
  """Process entry point (`python -m ugclu_jax`, `ugclu-jax`): host memory, then main."""
  from ugclu_jax.host import keep_freed_host_memory

  # Before JAX starts its threads: XLA's per-call host buffers stay in the process.
  keep_freed_host_memory()
  sys.exit(main())


def main(argv=None) -> int:
  """Runs a command; returns its exit code (:data:`ugclu_jax.errors.EXIT_CODES`)."""
  args = _parser().parse_args(argv)
  handlers = {}
  if threading.current_thread() is threading.main_thread():
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    errors.install_signal_handlers()
  try:
    COMMANDS[args.command](args)
  except (Exception, KeyboardInterrupt) as e:
    if os.environ.get(errors.DEBUG_ENV, "") not in ("", "0"):
      traceback.print_exc()
    if isinstance(e, KeyboardInterrupt):
      line = errors.message(e)
      if args.command == "run":
        line += f"; continue with: {_resume_command(args)}"
    else:
      line = f"error: {errors.message(e)}"
    print(line, file=sys.stderr)
    return errors.exit_code(e)
  finally:
    for s, handler in handlers.items():
      signal.signal(s, handler)
  return errors.OK
