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
threshold above 2 GiB, nor change the arena limit once threads exist), so they must be in the
environment before Python starts. Two ways, both opt-in (nothing restarts the process unless
asked; a restart loses interpreter options such as `-X`, `-W`, `-m pdb`, `coverage run`, and
`%run train.py` in a notebook would replace the kernel):

  MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_ARENA_MAX=1 python train.py ...
  python train.py --cpu_malloc ...   # train.py / eval.py re-execute themselves once with them

On a CPU run without the settings the entry points print `cpu_malloc_hint()` (the recipe
above) and go on with glibc's defaults. The benchmarks choose explicitly (`--malloc`).
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

  None when: not Linux with glibc, not a CPU run, or any of the three variables already set
  (by the user, or by an earlier restart).
  """
  environ = dict(os.environ if environ is None else environ)
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return None
  if any(name in environ for name in CPU_MALLOC_SETTINGS) or not runs_on_cpu(environ):
    return None
  environ.update(CPU_MALLOC_SETTINGS)
  return environ


def environment_recipe() -> str:
  """The settings as shell assignments, to put before the command."""
  return " ".join(f"{name}={value}" for name, value in CPU_MALLOC_SETTINGS.items())


def cpu_malloc_hint(environ=None) -> str | None:
  """A hint for a CPU run that could use the settings, or None (see `cpu_malloc_environment`)."""
  if cpu_malloc_environment(environ) is None:
    return None
  return ("hint: on CPU, steps run 1.7-2.8x faster with glibc malloc settings that keep freed "
          f"memory (and the peak memory) in the process: start the command with "
          f"`{environment_recipe()}`, or add --cpu_malloc to restart with them "
          "(m2f_jax/host_malloc.py).")


def restart_with_cpu_malloc_settings() -> None:
  """Re-executes this Python command with `CPU_MALLOC_SETTINGS` where that applies.

  Only for callers that were asked to (`--cpu_malloc`, a benchmark's `--malloc cpu`): the new
  process loses interpreter options (`-X`, `-W`, `-m pdb`). Call it before JAX is used.
  Returns normally when no restart is needed; otherwise does not return.
  """
  environ = cpu_malloc_environment()
  if environ is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable] + sys.argv, environ)


def apply_cpu_malloc_flag(requested: bool) -> None:
  """The entry points' `--cpu_malloc`: restart with the settings if requested, else hint.

  Requested: `restart_with_cpu_malloc_settings()` (nothing happens where the settings are
  already set or the run is not on CPU). Not requested: prints `cpu_malloc_hint()` to stderr
  where it applies, and changes nothing.
  """
  if requested:
    restart_with_cpu_malloc_settings()
    return
  hint = cpu_malloc_hint()
  if hint:
    print(hint, file=sys.stderr, flush=True)


def describe(environ=None) -> str:
  """The malloc settings in effect, for benchmark headers."""
  environ = os.environ if environ is None else environ
  settings = [f"{k}={environ[k]}" for k in CPU_MALLOC_SETTINGS if k in environ]
  return " ".join(settings) if settings else "glibc defaults"
