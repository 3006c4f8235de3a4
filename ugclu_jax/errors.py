"""Exit codes, one-line error messages and safe interruption (imports nothing heavy).

The command line maps every failure to one line on stderr (``error: ...``) and
one exit code of :data:`EXIT_CODES`. ``SIGINT`` and ``SIGTERM`` raise
:class:`Interrupted` in the main thread, except inside :func:`hold_signals`
(a checkpoint being committed), or in a gc callback or ``__del__`` (where Python
would swallow the exception), where they wait for the next :func:`check_signals`.
"""

import contextlib
import gc
import signal
import sys

OK = 0
INTERNAL = 1
USAGE = 2
TRAINING = 3
ENVIRONMENT = 4

EXIT_CODES = """\
exit codes:
  0    done
  1    unexpected internal error (one line; UGCLU_DEBUG=1 shows the traceback)
  2    usage or validation error (arguments, config, stream, dataset, a workdir that
       already holds a run): refused before any training
  3    training failed (a loss or the parameters became non-finite)
  4    I/O or environment error (a path that cannot be read or written, a full disk,
       a workdir that is a file or is in use by another run, no checkpoint that
       verifies)
  5    audit: traces of forgotten data found
  130  interrupted by Ctrl-C (SIGINT); 143: stopped by SIGTERM. The last finished
       request is checkpointed; the same command with --resume continues."""

DEBUG_ENV = "UGCLU_DEBUG"


class Interrupted(KeyboardInterrupt):
  """SIGINT or SIGTERM arrived; ``exit_code`` is 128 + the signal number."""

  def __init__(self, signum: int):
    super().__init__(signum)
    self.signum = signum
    self.exit_code = 128 + signum

  def __str__(self) -> str:
    return f"interrupted by {signal.Signals(self.signum).name}"


def exit_code(exc: BaseException) -> int:
  """The exit code of a failure (:data:`EXIT_CODES`).

  An exception class may set ``exit_code`` to choose its own.
  """
  code = getattr(exc, "exit_code", None)
  if isinstance(code, int):
    return code
  if isinstance(exc, KeyboardInterrupt):
    return 128 + signal.SIGINT
  methods = sys.modules.get("ugclu_jax.methods")
  if methods is not None and isinstance(exc, methods.NonFiniteError):
    return TRAINING
  if isinstance(exc, OSError):
    return ENVIRONMENT
  if isinstance(exc, ValueError):  # ConfigError, StreamError, RunError, dataset errors.
    return USAGE
  return INTERNAL


def message(exc: BaseException) -> str:
  """The failure in one line (without the ``error:`` prefix)."""
  if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, Interrupted):
    return "interrupted by SIGINT"
  if isinstance(exc, OSError) and exc.filename is not None:
    cause = exc.strerror or type(exc).__name__
    path = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else exc.filename
    text = f"{path}: {cause}"
  else:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    if isinstance(exc, OSError) or exit_code(exc) == INTERNAL:
      text = f"{type(exc).__name__}: {text}"
  if exit_code(exc) == INTERNAL:
    text += f" (unexpected; rerun with {DEBUG_ENV}=1 for the traceback)"
  return text


def with_path(exc: OSError, path) -> OSError:
  """``exc`` naming ``path`` if it names none (e.g. a write that found the disk full)."""
  if exc.filename is not None:
    return exc
  cause = exc.strerror or str(exc) or type(exc).__name__
  return OSError(exc.errno, cause, str(path))  # The subclass follows from errno.


@contextlib.contextmanager
def writing(path):
  """Re-raises an ``OSError`` of the block as one naming ``path``."""
  try:
    yield
  except OSError as e:
    named = with_path(e, path)
    if named is e:
      raise
    raise named from e


# ----------------------------------------------------------------------------
# Signals
# ----------------------------------------------------------------------------

_held = 0
_pending = None


def _swallowed_here(frame) -> bool:
  """Whether Python would swallow an exception raised in ``frame`` (a gc callback, a __del__)."""
  callbacks = {getattr(c, "__code__", None) for c in gc.callbacks}
  while frame is not None:
    if frame.f_code in callbacks or frame.f_code.co_name == "__del__":
      return True
    frame = frame.f_back
  return False


def _handler(signum, frame):
  global _pending
  _pending = signum  # Until raised: check_signals() raises it at the next safe point.
  if not _held and not _swallowed_here(frame):
    _pending = None
    raise Interrupted(signum)


def install_signal_handlers() -> None:
  """SIGINT and SIGTERM raise :class:`Interrupted` (call from the main thread)."""
  global _held, _pending
  _held, _pending = 0, None
  for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, _handler)


def check_signals() -> None:
  """Raises :class:`Interrupted` for a signal that arrived and was not acted on yet.

  A no-op unless :func:`install_signal_handlers`'s handlers are in place. Safe
  points: the end of :func:`hold_signals` and the runner's log lines.
  """
  global _pending
  if _pending is not None and not _held and signal.getsignal(signal.SIGINT) is _handler:
    signum, _pending = _pending, None
    raise Interrupted(signum)


@contextlib.contextmanager
def hold_signals():
  """Defers SIGINT and SIGTERM to the end of the block (a commit that must not be cut)."""
  global _held
  _held += 1
  try:
    yield
  finally:
    _held -= 1
  check_signals()
