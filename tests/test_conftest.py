"""The compile guard and compile count of tests/conftest.py, driven by JAX's own events."""

import pathlib

from jax import monitoring
import pytest

from tests import conftest

COMPILE = "/jax/core/compile/backend_compile_duration"
HIT = "/jax/compilation_cache/cache_hits"


@pytest.mark.allow_recompiles  # its own compile_guard hears the same made-up events
def test_counter_counts_costly_misses_per_function():
  counter = conftest.CompileCounter().start()
  try:
    limit = conftest.MAX_RECOMPILES_PER_TEST
    for _ in range(limit + 1):  # one more costly miss than allowed
      monitoring.record_event_duration_secs(COMPILE, conftest.MIN_CACHED_COMPILE_S,
                                            fun_name="jit_step")
    monitoring.record_event(HIT)  # a cache hit costs nothing, however long it took
    monitoring.record_event_duration_secs(COMPILE, 5.0, fun_name="jit_step")
    monitoring.record_event_duration_secs(COMPILE, 0.01, fun_name="jit_step")  # cheap
    monitoring.record_event_duration_secs(COMPILE, 1.0, fun_name="jit_apply")
  finally:
    counter.stop()
  monitoring.record_event_duration_secs(COMPILE, 1.0, fun_name="jit_step")  # stopped
  assert counter.misses == {"jit_step": limit + 1, "jit_apply": 1}
  assert counter.over_limit() == {"jit_step": limit + 1}


def test_cached_compiles_are_counted_by_function(tmp_path, monkeypatch):
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path))
  key = "0123456789abcdef" * 4
  for name in ("jit_step-" + key, "jit_step-" + key[::-1], "jit__lambda-" + key):
    pathlib.Path(tmp_path, name + "-cache").write_bytes(b"x")
    pathlib.Path(tmp_path, name + "-atime").write_bytes(b"x")  # not an entry
  counts = conftest._cached_compiles()  # pylint: disable=protected-access
  assert counts == {"jit_step": 2, "jit__lambda": 1}
