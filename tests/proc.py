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

REPO = pathlib.Path(__file__).resolve().parents[1]
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
TIMEOUT_S = 600  # a loaded 2-core machine: one train.py run can take minutes


def env(num_devices: int | None = None, **extra) -> dict:
  """The environment of a child process; `num_devices` fake CPU devices if given."""
  path = [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
  out = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(path))
  if num_devices is not None:
    flags = [f for f in out.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT_FLAG)]
    out["XLA_FLAGS"] = " ".join(flags + [f"{DEVICE_COUNT_FLAG}={num_devices}"])
  out.update(extra)
  return out


def start(*args, cwd=REPO, environ: dict | None = None) -> subprocess.Popen:
  """`python ARGS...` in `cwd` with `environ` (default `env()`), output captured as text."""
  return subprocess.Popen([sys.executable, *map(str, args)], cwd=cwd,
                          env=env() if environ is None else environ, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, returncode: int | None = 0,
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
