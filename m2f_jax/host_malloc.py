"""glibc malloc settings for CPU runs: keep freed memory instead of returning it to the OS.

XLA:CPU allocates every step's temporary buffers (gigabytes for a Mask2Former train step)
and frees them at the end. With glibc's defaults, blocks that large are `mmap`ed and
`munmap`ed each time, so every step faults all of its pages in again: on the 2-core CPU
machine, the R50 train step at batch 2 and 512x512 took 2.3 million minor page faults and
6-25 s of system time per step (PyTorch's step 1.4-1.7 million). With

  MALLOC_MMAP_MAX_=0           large blocks come from the heap, not from mmap,
  MALLOC_TRIM_THRESHOLD_=64 GiB  freed heap memory is kept for the next step,
  MALLOC_ARENA_MAX=1           XLA's worker threads share that heap (a thread's own arena
                               would `mmap` anything larger than 64 MiB regardless),

there are no page faults after the first step, and the step takes 7.5 s instead of 11-19 s
(PyTorch's: 5.9 s instead of 10-11 s; `benchmarks/train_step.py` measures both ways). The
cost: the process keeps its peak memory until it exits.

glibc reads these variables once, when the process starts (`mallopt` cannot set a trim
threshold above 2 GiB, nor change the arena limit once threads exist), so the entry points
call `restart_with_cpu_malloc_settings()` first thing: when the run will use the CPU (no
accelerator plugin installed, or JAX_PLATFORMS=cpu) and the variables are not set yet, it
re-executes the same command with them. Set any of the three yourself (or
M2F_HOST_MALLOC=default) to keep your own settings.
"""

import importlib.metadata
import importlib.util
import os
import platform
import sys

CPU_MALLOC_SETTINGS = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(64 << 30),
    "MALLOC_ARENA_MAX": "1",
}


def _accelerator_plugin_installed() -> bool:
  """Whether JAX may pick a GPU or TPU: a PJRT plugin (CUDA, ROCm, ...) or libtpu."""
  if importlib.util.find_spec("libtpu") is not None:
    return True
  return bool(importlib.metadata.entry_points(group="jax_plugins"))


def runs_on_cpu(environ=None) -> bool:
  """Whether JAX will run this process on the CPU, decided without initializing JAX."""
  environ = os.environ if environ is None else environ
  platforms = environ.get("JAX_PLATFORMS", environ.get("JAX_PLATFORM_NAME", ""))
  if platforms:
    return platforms.split(",")[0].strip().lower() == "cpu"
  return not _accelerator_plugin_installed()


def cpu_malloc_environment(environ=None) -> dict[str, str] | None:
  """The environment to restart with, or None where nothing should change.

  None when: not Linux with glibc, not a CPU run, M2F_HOST_MALLOC=default, or any of the
  three variables already set (by the user, or by an earlier restart).
  """
  environ = dict(os.environ if environ is None else environ)
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return None
  if environ.get("M2F_HOST_MALLOC", "").lower() == "default":
    return None
  if any(name in environ for name in CPU_MALLOC_SETTINGS) or not runs_on_cpu(environ):
    return None
  environ.update(CPU_MALLOC_SETTINGS)
  return environ


def restart_with_cpu_malloc_settings() -> None:
  """Re-executes this Python command with `CPU_MALLOC_SETTINGS` where that applies.

  Call it before anything starts threads or initializes JAX (first line of the entry
  point). Returns normally when no restart is needed; otherwise does not return.
  """
  environ = cpu_malloc_environment()
  if environ is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable] + sys.argv, environ)


def describe(environ=None) -> str:
  """The malloc settings in effect, for benchmark headers."""
  environ = os.environ if environ is None else environ
  settings = [f"{k}={environ[k]}" for k in CPU_MALLOC_SETTINGS if k in environ]
  return " ".join(settings) if settings else "glibc defaults"
