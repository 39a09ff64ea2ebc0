"""Writing a directory atomically: build it beside its destination, then rename it into place.

Model directories (`m2f_jax.checkpoint.save_model`) and dataset exports
(`m2f_jax.data.export`) are written this way, so a failure never leaves a half-written
output and never touches an existing one until the new one is complete.
"""

import contextlib
import os
import shutil
import tempfile


@contextlib.contextmanager
def atomic_directory(directory: str):
  """Yields a temporary sibling of `directory` to fill; on success it replaces `directory`.

  An existing `directory` is moved aside and removed only after the new one is in place; on
  any error the temporary directory is removed and `directory` is left as it was.
  """
  directory = os.path.abspath(directory)
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.tmp-", dir=parent)
  try:
    yield tmp
    if os.path.exists(directory):
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.old-", dir=parent)
      os.rename(directory, os.path.join(old, "d"))
      os.rename(tmp, directory)
      shutil.rmtree(old)
    else:
      os.rename(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
