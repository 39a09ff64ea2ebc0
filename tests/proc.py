"""Subprocesses of the tests: the environment they run in, starting them, waiting for them.

`env()` is this process's environment for a child that runs the repository's code on the
CPU: PYTHONPATH starts with the repository, and everything tests/conftest.py set up for the
session is inherited, above all the shared persistent compilation cache
(`JAX_COMPILATION_CACHE_DIR`) and the test session's XLA options. Fake devices are added to
`XLA_FLAGS` instead of replacing it, so a child with 8 devices still compiles as the others do.
"""

import os
import pathlib
import socket
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
TIMEOUT_S = 600  # a loaded 2-core machine: one train.py run can take minutes
# The test session's XLA:CPU options (tests/conftest.py adds them to XLA_FLAGS): LLVM
# optimization level 0 and no expensive LLVM passes. Compiles take ~40% less CPU time, the
# compiled code runs slower; nothing in the library sets them.
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0",
                      "--xla_llvm_disable_expensive_passes=true")


def env(num_devices: int | None = None, fast_compile: bool = True, **extra) -> dict:
  """The environment of a child process; `num_devices` fake CPU devices if given;
  `fast_compile=False` takes FAST_COMPILE_FLAGS out of XLA_FLAGS (a user's own process)."""
  path = [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
  out = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(path))
  flags = out.get("XLA_FLAGS", "").split()
  if num_devices is not None:
    flags = [f for f in flags if not f.startswith(DEVICE_COUNT_FLAG)]
    flags.append(f"{DEVICE_COUNT_FLAG}={num_devices}")
  if not fast_compile:
    flags = [f for f in flags if f not in FAST_COMPILE_FLAGS]
  out["XLA_FLAGS"] = " ".join(flags)
  out.update(extra)
  return out


class Child(subprocess.Popen):
  """A child whose output goes to temporary files instead of pipes, and whose stdin is empty.

  A test that polls a child (waits for a step, a lock, a checkpoint being written) reads its
  output only at the end; through a pipe, a child that logs more than the pipe holds (64 KiB:
  a resumed train.py logging damaged checkpoints) would block on its next write and never
  reach what the test waits for. stdin is /dev/null, never the caller's (under pytest-xdist
  that is the worker's channel to the controller).
  """

  def __init__(self, args, **kwargs):
    self._out = tempfile.TemporaryFile("w+")  # pylint: disable=consider-using-with
    self._err = tempfile.TemporaryFile("w+")  # pylint: disable=consider-using-with
    self._outputs = None
    super().__init__(args, stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err,
                     text=True, **kwargs)

  def communicate(self, input=None, timeout=None):  # pylint: disable=redefined-builtin
    del input
    self.wait(timeout)
    if self._outputs is None:
      self._outputs = []
      for f in (self._out, self._err):
        f.seek(0)
        self._outputs.append(f.read())
        f.close()
    return tuple(self._outputs)


def start(*args, cwd=REPO, environ: dict | None = None) -> Child:
  """`python ARGS...` in `cwd` with `environ` (default `env()`), output kept as text."""
  return Child([sys.executable, *map(str, args)], cwd=cwd,
               env=env() if environ is None else environ)


def finish(proc: Child, returncode: int | None = 0,
           timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
  """Waits for `proc` (killed after `timeout` s); asserts its exit status unless None."""
  try:
    stdout, stderr = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    stdout, stderr = proc.communicate()
  run = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
  if returncode is not None:
    check(run, returncode)
  return run


def check(run: subprocess.CompletedProcess, returncode: int = 0):
  """Asserts the exit status of a finished run, showing the ends of its output if wrong."""
  assert run.returncode == returncode, (
      f"{' '.join(map(str, run.args[1:]))[:300]} exited {run.returncode}, expected "
      f"{returncode}\n--- stdout\n{run.stdout[-3000:]}\n--- stderr\n{run.stderr[-6000:]}")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]
