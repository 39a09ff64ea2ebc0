"""Mistakes a user can fix, and how the entry points report them: one or two lines, no trace.

Raise `UserError` (or a subclass) where a user's input is wrong: its message says what was
wrong, where (the file, flag or config key), and what to do. The entry points (`train.py`,
`eval.py`, `python -m m2f_jax.predict`) run their main function under `reporting()`, which
prints such an error as `error: <message>` on stderr and exits with status 2; the traceback is
printed only with `--verbose` or the environment variable `M2F_VERBOSE=1`.

  from m2f_jax.errors import UserError
  raise UserError(f"{path}: 3 categories, but model.num_classes=7; set "
                  "--config.model.num_classes=3")
"""

import contextlib
import datetime
import logging
import os
import re
import sys
import threading
import traceback
import warnings

VERBOSE_ENV = "M2F_VERBOSE"
EXIT_STATUS = 2  # as argparse / absl usage errors


class UserError(Exception):
  """A mistake in the user's input: the message says what, where, and what to do."""


class ConfigError(UserError):
  """A config value (or --config.* flag) that cannot work."""


class DataError(UserError):
  """A dataset that is missing, or whose contents do not fit the config."""


class CheckpointError(UserError):
  """A checkpoint that is missing, damaged, or of another model."""


class WorkdirError(UserError):
  """A workdir held by another run, or trained with an incompatible config."""


def config_key_error(exc: Exception, argv) -> ConfigError:
  """A --config.KEY that names no config field (ml_collections' KeyError / AttributeError)."""
  text = str(exc)
  if text.startswith(("'", '"')):  # a quoted repr of the message
    text = text[1:-1].encode().decode("unicode_escape")
  key = (re.findall(r"'(\w+)'", text) or ["?"])[0]
  arg = next((a.split("=")[0] for a in argv if a.startswith("--config.") and key in a),
             f"--config...{key}")
  hint = re.search(r'Did you mean "(\w+)"', text)
  hint = f"did you mean {hint.group(1)!r}? " if hint else ""
  return ConfigError(f"{arg}: the config has no field {key!r}; {hint}the fields are those of "
                     "the config file's get_config()")


def verbose(argv=None) -> bool:
  """True with --verbose on the command line or M2F_VERBOSE=1 in the environment."""
  argv = sys.argv if argv is None else argv
  return (os.environ.get(VERBOSE_ENV, "") not in ("", "0", "false", "False")
          or "--verbose" in argv or "--verbose=true" in argv or "--verbose=True" in argv)


def one_line(message: str, limit: int = 2) -> str:
  """The first `limit` non-empty lines of `message` (errors print at most two lines)."""
  lines = [l.rstrip() for l in str(message).splitlines() if l.strip()]
  return "\n".join(lines[:limit])


def report(exc: BaseException, *, file=None) -> None:
  """Prints `error: <message>` (at most two lines), plus the hint to see the traceback."""
  file = file or sys.stderr
  name = "" if isinstance(exc, UserError) else f"{type(exc).__name__}: "
  print(f"error: {name}{one_line(exc)}", file=file, flush=True)


class _BackgroundErrors(logging.Filter):
  """Drops the tracebacks Orbax's background threads and asyncio log for a failed write.

  The same failure reaches the main thread (`wait_until_finished`), which reports it.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR:
      return True
    return not ("/orbax/" in record.pathname or record.name == "asyncio")


def quiet_background_errors():
  """Unless verbose: no tracebacks of Orbax's background threads in the log (see above)."""
  if verbose():
    return
  for name in ("absl", "asyncio"):
    logging.getLogger(name).addFilter(_BackgroundErrors())


def _is_closed_loop_callback(unraisable) -> bool:
  """TensorStore's completion callback of a read or write whose event loop is closed."""
  return (unraisable.object is None and isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == "Event loop is closed")


@contextlib.contextmanager
def closed_loop_callbacks_to(log_path: str | None):
  """Within the block, TensorStore's `Event loop is closed` tracebacks go to `log_path`.

  When one read or write of an Orbax checkpoint fails (a full or read-only disk, a truncated
  file), Orbax's coroutine raises and its event loop is closed while TensorStore's other
  reads or writes are still in flight; each of them then completes on a TensorStore (native)
  thread whose callback calls `loop.call_soon_threadsafe` on the closed loop, and TensorStore
  prints that `RuntimeError: Event loop is closed` through `sys.unraisablehook` (with no
  object), often before the main thread has the failure to report. Those are appended to
  `log_path` (dropped if it is None or cannot be written: the disk may be full) unless
  --verbose / M2F_VERBOSE=1; every other unraisable exception goes to the previous hook.
  The hook is put back when the block ends normally; after an exception it stays, as the
  failed operation's callbacks may still come.
  """
  previous = sys.unraisablehook

  def hook(unraisable):
    if not _is_closed_loop_callback(unraisable) or verbose():
      previous(unraisable)
      return
    if log_path is None:
      return
    try:
      with open(log_path, "a") as f:
        f.write(f"{datetime.datetime.now().isoformat(timespec='seconds')} pid {os.getpid()}: "
                "a TensorStore callback after a failed checkpoint read or write\n")
        f.writelines(traceback.format_exception(unraisable.exc_type, unraisable.exc_value,
                                                unraisable.exc_traceback))
    except OSError:
      pass

  sys.unraisablehook = hook
  yield
  if sys.unraisablehook is hook:
    sys.unraisablehook = previous


def _silence_exit():
  """After a reported error: no tracebacks of threads and exit handlers that fail with it
  (a full disk also fails TensorBoard's last flush)."""
  threading.excepthook = lambda *_: None
  sys.unraisablehook = lambda *_: None
  logging.disable(logging.CRITICAL)
  warnings.simplefilter("ignore")  # e.g. coroutines of the failed write never awaited


@contextlib.contextmanager
def reporting(user_errors: tuple = ()):
  """Turns `UserError` (and `user_errors`) into a short message and exit status 2.

  With --verbose / M2F_VERBOSE=1 the exception propagates with its traceback.
  """
  try:
    yield
  except (UserError, *user_errors) as e:  # pylint: disable=broad-except
    if verbose():
      traceback.print_exc()
    else:
      _silence_exit()
    report(e)
    if not verbose() and len(one_line(e).splitlines()) < 2:
      print(f"  (traceback: --verbose or {VERBOSE_ENV}=1)", file=sys.stderr, flush=True)
    if isinstance(e, CheckpointError) and not verbose():
      # A failed checkpoint write leaves Orbax's threads and event loops behind, which print
      # tracebacks while the interpreter shuts down ("Event loop is closed"); the write has
      # failed and the finalized steps are untouched, so leave without that shutdown.
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(EXIT_STATUS)  # pylint: disable=protected-access
    raise SystemExit(EXIT_STATUS) from None
