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
  # Two processes, data parallel: start this with --process-id 0 and with 1.
  python -m ugclu_jax run --config smoke --workdir runs/dp --distributed \\
      --coordinator localhost:12355 --num-processes 2 --process-id 0

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
  run.add_argument(
    "--jobs",
    type=int,
    default=1,
    metavar="N",
    help="with seeds > 1: run up to N seeds at a time, each in a process of its own (the "
    "same reports; on an accelerator the processes share it). Default 1: one after another",
  )
  run.add_argument(
    "--no-render",
    action="store_true",
    help="write report.json only, without report.md and the plots (render them later: "
    "python -m ugclu_jax report WORKDIR)",
  )
  dist = run.add_argument_group(
    "several processes",
    "One process of a data-parallel run over the devices of several processes\n"
    "(hosts, or processes of one machine): start the same command in each. Each\n"
    "process loads the data, computes the same steps and puts only its share of\n"
    "every batch on its devices (train.devices counts each process's devices).\n"
    "Process 0 alone writes --workdir and prints: no shared file system is needed.\n"
    "--resume works as in one process.",
  )
  dist.add_argument(
    "--distributed",
    action="store_true",
    help="join the run (jax.distributed.initialize) before anything else; without the "
    "three options below JAX detects the cluster (SLURM, Open MPI, Cloud TPU)",
  )
  dist.add_argument(
    "--coordinator", metavar="HOST:PORT", help="process 0's address, the same in every process"
  )
  dist.add_argument("--num-processes", type=int, metavar="N", help="how many processes")
  dist.add_argument("--process-id", type=int, metavar="I", help="this process: 0 to N-1")
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
  if args.jobs != 1:
    cmd += ["--jobs", str(args.jobs)]
  if args.distributed:
    cmd.append("--distributed")
    for flag in ("coordinator", "num_processes", "process_id"):
      if getattr(args, flag) is not None:
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
  return shlex.join(cmd + ["--resume"])


def _distributed(args) -> dict:
  """The arguments of :func:`ugclu_jax.parallel.initialize_distributed`, checked (one line)."""
  given = [
    (flag, value)
    for flag, value in (
      ("--coordinator", args.coordinator),
      ("--num-processes", args.num_processes),
      ("--process-id", args.process_id),
    )
    if value is not None
  ]
  if given and not args.distributed:
    raise ValueError(f"{given[0][0]} needs --distributed")
  n, i = args.num_processes, args.process_id
  if n is not None and n < 1:
    raise ValueError(f"--num-processes {n}: must be at least 1")
  if i is not None and n is None:
    raise ValueError(f"--process-id {i} needs --num-processes")
  if i is not None and not 0 <= i < n:
    raise ValueError(f"--process-id {i} is out of range for --num-processes {n}: use 0 to {n - 1}")
  host, _, port = (args.coordinator or "").rpartition(":")
  if args.coordinator is not None and not (host and port.isdigit()):
    raise ValueError(f"--coordinator {args.coordinator!r}: expected HOST:PORT")
  return {"coordinator": args.coordinator, "num_processes": n, "process_id": i}


def _run(args) -> None:
  distributed = _distributed(args)  # Checked before anything starts.
  if args.jobs < 1:
    raise ValueError(f"--jobs {args.jobs}: must be at least 1")
  if args.jobs > 1:
    if args.distributed:
      raise ValueError("--jobs runs seeds in processes of their own: not with --distributed")
    # The seeds' processes share the accelerator: none may take most of its memory up
    # front, this one (which only waits for them) included.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  if args.distributed:
    from ugclu_jax import parallel

    parallel.initialize_distributed(**distributed)
  from ugclu_jax.host import use_compilation_cache

  # Reuse compiled steps across runs (JAX_COMPILATION_CACHE_DIR overrides).
  use_compilation_cache()
  from ugclu_jax import config as C
  from ugclu_jax import runner

  cfg = C.apply_overrides(C.load_config(args.config), args.set)
  runner.run_experiment(
    cfg,
    args.workdir,
    resume=args.resume,
    overwrite=args.overwrite,
    progress=not args.no_progress,
    render=not args.no_render,
    jobs=args.jobs,
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


def _joined() -> bool:
  """Whether this process joined a multi-process run (``jax.distributed``)."""
  jax = sys.modules.get("jax")
  return jax is not None and jax.distributed.is_initialized()


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
    if args.command == "run" and args.distributed and _joined():
      # The other processes would wait for this one at their next collective, and
      # JAX's exit for them at its shutdown barrier: ending now ends them too.
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(errors.exit_code(e))
    return errors.exit_code(e)
  finally:
    for s, handler in handlers.items():
      signal.signal(s, handler)
  return errors.OK
