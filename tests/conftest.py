"""The test session's shared setup: one compilation cache, fast CPU compiles, a compile budget.

Nearly all of the suite's time is XLA:CPU compiling train steps and forward passes, in this
process and in the train.py / eval.py / predict subprocesses that the end-to-end tests start.

- One persistent JAX compilation cache for the session. `pytest_configure` names a fresh
  folder in `JAX_COMPILATION_CACHE_DIR` (or keeps the one the caller set) before any test
  module imports jax; this process, pytest-xdist's workers and every subprocess inherit it
  (`tests.proc.env()`), so a step one test compiled is read back, not compiled again, by the
  next test or process that needs it. The folder is removed at the end unless it was given.
- Fast CPU compiles: `XLA_FLAGS` gains `tests.proc.FAST_COMPILE_FLAGS`, LLVM optimization
  level 0 and no expensive LLVM passes (measured on the slim tiny train step at 64x64, batch
  8: compile 29.1 -> 16.9 CPU s, each step 0.05 -> 0.13 s, losses equal to 3e-5 relative).
  The tests compare runs made under the same options, never against a timing;
  `M2F_JAX_TEST_FAST_COMPILE=0` leaves XLA_FLAGS as given. This is the test session's
  setting: nothing in the library sets it, and the notebook's kernel runs without it (it
  trains as a user's process does).
- A compile budget. Every compile of at least `MIN_CACHED_COMPILE_S` is written to the cache
  under its function's name, so the folder counts the session's expensive compiles in all
  processes. The terminal summary prints them per function, and the run fails when they pass
  `COMPILE_BUDGET` (a full run, every worker and subprocess together). Within a test,
  `compile_guard` (autouse) fails the test when its own process compiles one function anew
  (a persistent-cache miss of at least `MIN_CACHED_COMPILE_S`) more than
  `MAX_RECOMPILES_PER_TEST` times: a new variant per parameter belongs in a shared fixture.
- Longest files first: pytest runs two pytest-xdist workers, a file to a worker (pyproject's
  `addopts`: `-n 2 --dist loadfile --no-loadscope-reorder`), in the order of `LONGEST_FIRST`
  (per-file times of a full run; other files follow in their own order), so that no long
  file starts last and runs alone.
- absl flags marked parsed: grain's multiprocessing reads them.
"""

import collections
import os
import pathlib
import re
import shutil
import tempfile

import pytest

from tests.proc import FAST_COMPILE_FLAGS

MIN_CACHED_COMPILE_S = 0.5  # below this a compile is cheaper than its cache entry is worth
# Expensive compiles, a full run, all processes: 148 measured 2026-12-08 01:24; 172 at 04:36
# after the training-parity, evaluation-compile (cache, ahead of time, buckets) and
# experiments tests came in (fresh clone of 10cfb7f, `bash .ci/run`).
COMPILE_BUDGET = 190
MAX_RECOMPILES_PER_TEST = 4
# Measured 2026-12-07 (full run, 2 workers): the files of over ~40 s, longest first.
LONGEST_FIRST = ("test_faults.py", "test_colab.py", "test_training.py", "test_video_training.py",
                 "test_evaluate.py", "test_convert.py", "test_mixed_precision.py",
                 "test_video_criterion.py", "test_video_model.py", "test_device_batch.py",
                 "test_custom_data.py", "test_gpu_suite.py")
_OWNED = "M2F_JAX_TEST_OWNED_CACHE"  # set when this session made the cache folder
_BUDGET_KEY = pytest.StashKey[tuple]()


def pytest_configure(config):
  del config
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the first process of the session
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="m2f_jax_test_cache_")
    os.environ[_OWNED] = os.environ["JAX_COMPILATION_CACHE_DIR"]
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", str(MIN_CACHED_COMPILE_S))
  if os.environ.get("M2F_JAX_TEST_FAST_COMPILE", "1") != "0":
    flags = os.environ.get("XLA_FLAGS", "").split()
    os.environ["XLA_FLAGS"] = " ".join(flags + [f for f in FAST_COMPILE_FLAGS if f not in flags])
  from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top
  absl_flags.FLAGS.mark_as_parsed()


def pytest_collection_modifyitems(config, items):
  del config
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file stays whole


def _cached_compiles() -> collections.Counter:
  """Function name -> entries in the session's compilation cache (compiles >= the minimum)."""
  folder = pathlib.Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
  names = (re.sub(r"-[0-9a-f]{64}-cache$", "", p.name) for p in folder.glob("*-cache"))
  return collections.Counter(names)


def _full_run(config) -> bool:
  """The whole suite: no test files, -m or -k given (the budget is for that run)."""
  return (config.args_source != pytest.Config.ArgsSource.ARGS and not config.option.markexpr
          and not config.option.keyword)


def pytest_sessionfinish(session, exitstatus):
  config = session.config
  if hasattr(config, "workerinput") or os.environ.get(_OWNED) is None:
    return  # an xdist worker, or a cache folder shared with other runs: nothing to count
  counts = _cached_compiles()
  over = sum(counts.values()) > COMPILE_BUDGET and _full_run(config)
  config.stash[_BUDGET_KEY] = (counts, over)
  if over and exitstatus == pytest.ExitCode.OK:
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
  del exitstatus
  if _BUDGET_KEY not in config.stash:
    return
  counts, over = config.stash[_BUDGET_KEY]
  top = ", ".join(f"{name} {n}" for name, n in counts.most_common(8))
  terminalreporter.write_line(
      f"compiles of >= {MIN_CACHED_COMPILE_S} s, all processes: {sum(counts.values())} (budget "
      f"{COMPILE_BUDGET} for a full run, tests/conftest.py); most: {top}")
  if over:
    terminalreporter.write_line(
        f"FAILED the compile budget: more than COMPILE_BUDGET={COMPILE_BUDGET} expensive "
        "compiles. Share the compiled step or the trained checkpoint through a fixture, or "
        "raise the budget in tests/conftest.py with the measured reason.", red=True)


def pytest_unconfigure(config):
  owned = os.environ.get(_OWNED)
  if owned and not hasattr(config, "workerinput"):
    shutil.rmtree(owned, ignore_errors=True)


class CompileCounter:
  """Counts, per function, the compiles of this process that missed the persistent cache and
  took at least MIN_CACHED_COMPILE_S (JAX's monitoring events), between start() and stop()."""

  def __init__(self):
    self.misses = collections.Counter()
    self._hit = False

  def _on_event(self, event, **kwargs):
    del kwargs
    if event == "/jax/compilation_cache/cache_hits":  # comes before the compile's duration
      self._hit = True

  def _on_duration(self, event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      if not self._hit and duration >= MIN_CACHED_COMPILE_S:
        self.misses[kwargs.get("fun_name", "?")] += 1
      self._hit = False

  def start(self):
    from jax import monitoring  # pylint: disable=g-import-not-at-top
    monitoring.register_event_listener(self._on_event)
    monitoring.register_event_duration_secs_listener(self._on_duration)
    return self

  def stop(self):
    from jax import monitoring  # pylint: disable=g-import-not-at-top
    monitoring.unregister_event_listener(self._on_event)
    monitoring.unregister_event_duration_listener(self._on_duration)

  def over_limit(self) -> dict[str, int]:
    return {name: n for name, n in self.misses.items() if n > MAX_RECOMPILES_PER_TEST}


@pytest.fixture(autouse=True)
def compile_guard(request):
  """Fails a test whose process compiles one function anew more than the allowed times."""
  counter = CompileCounter().start()
  try:
    yield counter
  finally:
    counter.stop()
  over = counter.over_limit()
  if over and "allow_recompiles" not in request.keywords:
    pytest.fail(f"{request.node.nodeid} compiled {over} anew (each >= {MIN_CACHED_COMPILE_S} s, "
                f"more than {MAX_RECOMPILES_PER_TEST} times for one function): share the "
                "compiled function through a fixture, or mark the test allow_recompiles "
                "with the reason")
