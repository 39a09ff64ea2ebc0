"""Compiling less and earlier: the entry points' persistent compilation cache, compile counts.

Evaluation compiles the network once per padded image size (and post-processing twice): a
COCO-sized split has a few dozen sizes, each a full compile of R50 or Swin-L (tens of
seconds on a GPU). Three things cut that cost (benchmarks/eval_compiles.py measures them):

- `configure_cache(setting)`: JAX's persistent compilation cache, turned on by `eval.py` at
  start-up (before anything compiles), so that a second evaluation of the same model and
  sizes reads every program back instead of compiling it. Where the cache goes, first match:
    1. `setting` (eval.py's `--compilation_cache`): a folder, or "none" (no cache);
    2. `$M2F_JAX_COMPILATION_CACHE`: the same values;
    3. a cache JAX is already given (`JAX_COMPILATION_CACHE_DIR`, `jax.config.update(
       "jax_compilation_cache_dir", ...)`, e.g. the test suite's) or has turned off
       (`JAX_ENABLE_COMPILATION_CACHE=false`): left exactly as it is;
    4. `default_cache_dir()`: `$XDG_CACHE_HOME/m2f_jax/jax_cache`, else
       `~/.cache/m2f_jax/jax_cache`.
  With a folder of this project's choosing (1, 2 and 4) every program is written
  (`MIN_COMPILE_S`; JAX's own default of 1 s would leave the post-processing programs out
  and compile them again every run) unless `JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS` is
  set.
  Only entry points call it: the library never changes a process's JAX configuration.
  JAX keys entries by program, compiler options, device kind and JAX version, so a cache
  shared between machines or versions is safe; delete the folder to reclaim the space.
- Ahead-of-time compiles (`m2f_jax.evaluate`, `eval.compile_ahead`): every padded size is
  lowered and compiled on a thread pool while the first batches are read.
- Fewer sizes (`eval.pad_to="buckets:N"`, `m2f_jax.data.pipeline.PAD_TO`), opt-in.

`CompileCounter` counts what was compiled (JAX's monitoring events), in every thread: the
evaluation report's "timing" and eval.py's progress line show it apart from images/s.
"""

from __future__ import annotations

import collections
import os
import threading
import time

CACHE_ENV = "M2F_JAX_COMPILATION_CACHE"
OFF = ("none", "off", "false", "0")
MIN_COMPILE_S = 0.0  # compiles at least this long are written to a cache of ours: all


def default_cache_dir() -> str:
  """Where eval.py keeps compiled programs unless told otherwise (created when used)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "m2f_jax", "jax_cache")


def configure_cache(setting: str | None = None) -> str:
  """Turns JAX's persistent compilation cache on (or off) for this process; returns a line
  saying which folder is used and why. Call it before anything compiles (see the module
  docstring for the order in which the folder is chosen)."""
  import jax  # pylint: disable=g-import-not-at-top
  source = "--compilation_cache"
  if not setting:
    setting, source = os.environ.get(CACHE_ENV, ""), f"${CACHE_ENV}"
  if not setting:
    if not jax.config.jax_enable_compilation_cache:
      return "compilation cache: off (JAX_ENABLE_COMPILATION_CACHE), left as set"
    given = jax.config.jax_compilation_cache_dir
    if given:
      return f"compilation cache: {given} (JAX's own setting, left as set)"
    setting, source = default_cache_dir(), "the default"
  if setting.strip().lower() in OFF:
    jax.config.update("jax_enable_compilation_cache", False)
    return f"compilation cache: off ({source})"
  folder = os.path.abspath(os.path.expanduser(setting))
  os.makedirs(folder, exist_ok=True)
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", folder)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_S)
  return f"compilation cache: {folder} ({source}; --compilation_cache=none: off)"


_HIT = "/jax/compilation_cache/cache_hits"
_DURATIONS = {"/jax/core/compile/jaxpr_trace_duration": "trace",
              "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
              "/jax/core/compile/backend_compile_duration": "compile"}


class CompileCounter:
  """What JAX compiled between `start()` and `stop()`, in every thread (monitoring events).

  A backend compile that read its program from the persistent cache is a `cache_hits`;
  any other is a `compiles` (with its seconds in `compile_s`). Per thread id: `seconds`
  sums the tracing, lowering and compiling (or cache reading) each thread did, so the
  thread that evaluates knows how long it spent on compiling rather than on images;
  `programs` counts its backend compiles and cache reads. `by_name`: compiles per function
  name.
  """

  def __init__(self):
    self.compiles = 0
    self.cache_hits = 0
    self.compile_s = 0.0
    self.seconds = collections.Counter()
    self.programs = collections.Counter()
    self.by_name = collections.Counter()
    self._lock = threading.Lock()
    self._hit = threading.local()

  def _on_event(self, event, **kwargs):
    del kwargs
    if event == _HIT:  # comes before the duration of the same compile, on its thread
      self._hit.value = True

  def _on_duration(self, event, duration, **kwargs):
    kind = _DURATIONS.get(event)
    if kind is None:
      return
    with self._lock:
      self.seconds[threading.get_ident()] += duration
      if kind == "compile":
        self.programs[threading.get_ident()] += 1
        if getattr(self._hit, "value", False):
          self.cache_hits += 1
        else:
          self.compiles += 1
          self.compile_s += duration
          self.by_name[kwargs.get("fun_name", "?")] += 1
    if kind == "compile":
      self._hit.value = False

  def start(self) -> CompileCounter:
    from jax import monitoring  # pylint: disable=g-import-not-at-top
    monitoring.register_event_listener(self._on_event)
    monitoring.register_event_duration_secs_listener(self._on_duration)
    return self

  def stop(self):
    from jax import monitoring  # pylint: disable=g-import-not-at-top
    monitoring.unregister_event_listener(self._on_event)
    monitoring.unregister_event_duration_listener(self._on_duration)

  def __enter__(self) -> CompileCounter:
    return self.start()

  def __exit__(self, *exc):
    self.stop()

  def thread_seconds(self, ident: int | None = None) -> float:
    """Seconds `ident`'s thread (default: this one) spent tracing, lowering and compiling."""
    with self._lock:
      return self.seconds[threading.get_ident() if ident is None else ident]

  def thread_programs(self, ident: int | None = None) -> int:
    """Programs `ident`'s thread (default: this one) compiled or read from the cache."""
    with self._lock:
      return self.programs[threading.get_ident() if ident is None else ident]


class Stopwatch:
  """Seconds spent inside `with watch:` blocks, summed."""

  def __init__(self):
    self.seconds = 0.0

  def __enter__(self):
    self._t0 = time.perf_counter()
    return self

  def __exit__(self, *exc):
    self.seconds += time.perf_counter() - self._t0
