"""Helpers shared by the benchmark scripts: loading a sibling script, timing, the stand-in config.

The GPU machines have jax, flax, optax, orbax, numpy, scipy, torch and transformers but not
grain, tensorflow-datasets, array_record or ml_collections. The library's model, converter
and train step take `ml_collections.ConfigDict` configs (`m2f_jax.config_lib` builds them;
other modules name the type in annotations only), so `ensure_config_dict()` puts a minimal
stand-in module under the name `ml_collections` into `sys.modules` when, and only when, the
real package cannot be imported: a `ConfigDict` (a dict with attribute access, nested dicts
converted, `update`, `get`, `to_dict`) and a `FieldReference` that holds its default. It is
enough for building configs in code, as the benchmarks do; it does not read config files'
command-line overrides, lock fields, or check types. Scripts call it before importing
m2f_jax; with ml_collections installed it does nothing.
"""

import importlib.util
import pathlib
import statistics
import sys
import time
import types

REPO = pathlib.Path(__file__).resolve().parents[1]


class _FieldReference:
  """ml_collections.FieldReference's constructor; a ConfigDict stores its value."""

  def __init__(self, default, field_type=None, op=None, required=False):
    del field_type, op, required
    self.value = default

  def get(self):
    return self.value


class _ConfigDict(dict):
  """The part of ml_collections.ConfigDict that configs built in code use."""

  def __init__(self, initial_dictionary=None, **kwargs):
    super().__init__()
    del kwargs  # type_safe, convert_dict, allow_dotted_keys
    for key, value in (initial_dictionary or {}).items():
      self[key] = value

  def __setitem__(self, key, value):
    if isinstance(value, _FieldReference):
      value = value.value
    if isinstance(value, dict) and not isinstance(value, _ConfigDict):
      value = _ConfigDict(value)
    super().__setitem__(key, value)

  def __getattr__(self, key):
    try:
      return self[key]
    except KeyError:
      raise AttributeError(f"config has no field {key!r} (fields: {sorted(self)})") from None

  def __setattr__(self, key, value):
    self[key] = value

  def __delattr__(self, key):
    del self[key]

  def update(self, *others, **kwargs):
    for other in (*others, kwargs):
      for key, value in dict(other).items():
        self[key] = value

  def to_dict(self):
    return {k: v.to_dict() if isinstance(v, _ConfigDict) else v for k, v in self.items()}

  def copy_and_resolve_references(self):
    return _ConfigDict(self.to_dict())

  def lock(self):
    return self

  def unlock(self):
    return self


def ensure_config_dict() -> str:
  """Makes `import ml_collections` work; returns "ml_collections" or "stand-in" (which)."""
  try:
    import ml_collections  # pylint: disable=g-import-not-at-top,unused-import
    return "ml_collections"
  except ImportError:
    pass
  module = types.ModuleType("ml_collections")
  module.__doc__ = "benchmarks/_common.py's stand-in (ml_collections is not installed)."
  module.ConfigDict = _ConfigDict
  module.FrozenConfigDict = _ConfigDict
  module.FieldReference = _FieldReference
  sys.modules["ml_collections"] = module
  return "stand-in"


def load_benchmark(name: str):
  """A sibling script of benchmarks/ as a module (`benchmarks_<name>`), without running main."""
  module_name = f"benchmarks_{name}"
  if module_name in sys.modules:
    return sys.modules[module_name]
  spec = importlib.util.spec_from_file_location(module_name, REPO / "benchmarks" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[module_name] = module
  spec.loader.exec_module(module)
  return module


def alternate(*fns, runs: int, pause: float) -> list[list[float]]:
  """Times each of `fns` `runs` times, in alternation, sleeping `pause` s before each call
  (so that one framework's worker threads have gone idle before the other is timed);
  returns each function's seconds. benchmarks/forward.py's `alternate`, for any number."""
  times = [[] for _ in fns]
  for _ in range(runs):
    for fn, t in zip(fns, times):
      time.sleep(pause)
      t0 = time.perf_counter()
      fn()
      t.append(time.perf_counter() - t0)
  return times


def median(times) -> float:
  return statistics.median(times)
