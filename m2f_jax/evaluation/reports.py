"""Metric reports on disk: strict JSON (`null` where a metric is undefined), written atomically.

Strict JSON parsers (JavaScript's, Go's, `json.loads(..., parse_constant=...)`) reject the
`NaN` and `Infinity` Python's json module writes by default; an undefined metric (a class
absent from the ground truth, no prediction at all) is `null` instead. A report is written to
a temporary file in the same folder and renamed over the old one (`os.replace`), so a reader
or a failure mid-write never sees half a report. No JAX: the metric CLIs use it too.
"""

import json
import os
import tempfile

import numpy as np


def strict_json(tree):
  """`tree` with NaN and infinities as None (null) and numpy scalars as Python numbers."""
  if isinstance(tree, dict):
    return {k: strict_json(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [strict_json(v) for v in tree]
  if isinstance(tree, (float, np.floating)):
    return float(tree) if np.isfinite(tree) else None
  if isinstance(tree, np.integer):
    return int(tree)
  return tree


def write_report(path: str, report: dict):
  """Writes strict JSON (undefined metrics as null) atomically: temporary file, os.replace."""
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-",
                             dir=os.path.dirname(os.path.abspath(path)))
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(strict_json(report), f, indent=2, allow_nan=False)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
