"""A training workdir's guards: one run at a time, a config that fits its checkpoints.

`WORKDIR/train.lock` names the run that holds the workdir (host, pid, start time) and is
held with `fcntl.flock` for the run's life: the kernel releases it when that process ends in
any way (kill -9 included), so a second `train.py` on the same workdir stops with one line
naming the holder, and the next run after a dead one takes the lock over. `eval.py` and
`predict` only read and take no lock.

`check_config` compares the run's config with `WORKDIR/config.json` (the config of the
checkpoints there) before anything is written: a change of shapes or meaning (model, classes,
dataset, batches, losses, optimizer) stops with one line naming the keys; a safe change (more
steps, logging, checkpoint frequency, evaluation settings) is allowed and appended to
`WORKDIR/config_history.jsonl`. `write_config` replaces `config.json` atomically once the run
has been accepted (its checkpoint restored).

`initialize_distributed` starts jax.distributed with a deliberate heartbeat: when one process
dies, the others stop within `heartbeat_timeout_s` (plus a few seconds) instead of hanging in
a collective.
"""

import datetime
import errno
import fcntl
import json
import os
import socket
import tempfile

import ml_collections

from m2f_jax.errors import WorkdirError

LOCK_FILE = "train.lock"
CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"

# Keys (dotted prefixes) whose change never alters what the checkpoints hold nor how the
# remaining steps are computed: a resumed run may change them.
SAFE_KEYS = (
    "optim.max_steps",          # train longer (or stop earlier)
    "train.checkpoint_every", "train.keep_checkpoints", "train.log_every",
    "train.remat",              # recompute activations: same values, less memory
    "train.shard_params",       # where the state lives, not what it is
    "eval.",                    # evaluation settings
    "data.num_val",             # the validation split's size (synthetic)
    "data.worker_count", "data.read_threads", "data.prefetch",  # input speed, same batches
    "data.prepare_workers", "data.on_error", "data.data_dir", "data.source_dir",
    "init_from",                # read only when a run starts without checkpoints
)

# Default seconds without a heartbeat after which jax.distributed declares a process dead.
HEARTBEAT_TIMEOUT_S = 60


# ------------------------------------------------------------------------------------------
# One run per workdir
# ------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's live process
    return True
  return True


class WorkdirLock:
  """`WORKDIR/train.lock`, held (flock) while a run trains; see the module docstring."""

  def __init__(self, workdir: str):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
    self._fd = None

  def holder(self) -> dict:
    try:
      with open(self.path) as f:
        return json.loads(f.read() or "{}")
    except (OSError, ValueError):
      return {}

  def acquire(self) -> "WorkdirLock":
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise
      raise WorkdirError(self._busy_message(self.holder())) from None
    # The lock is ours. A holder on this host whose process still lives (a file system
    # without working flock) keeps the workdir; a dead one is taken over.
    previous = self.holder()
    if (previous.get("host") == socket.gethostname() and previous.get("pid")
        and previous["pid"] != os.getpid() and _pid_alive(int(previous["pid"]))
        and previous.get("state") == "running"):
      os.close(fd)
      raise WorkdirError(self._busy_message(previous))
    info = {"host": socket.gethostname(), "pid": os.getpid(), "state": "running",
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    os.fsync(fd)
    self._fd = fd
    return self

  def _busy_message(self, holder: dict) -> str:
    who = (f"process {holder.get('pid', '?')} on {holder.get('host', '?')} (since "
           f"{holder.get('started', '?')})") if holder else "another process"
    return (f"{os.path.dirname(self.path)} is in use by {who}: one training run per workdir. "
            f"Wait for it, stop it, or use another --workdir ({self.path})")

  def release(self):
    if self._fd is None:
      return
    info = {**self.holder(), "state": "released"}
    os.ftruncate(self._fd, 0)
    os.pwrite(self._fd, (json.dumps(info) + "\n").encode(), 0)
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


# ------------------------------------------------------------------------------------------
# The config of a workdir
# ------------------------------------------------------------------------------------------


def _flatten(tree, prefix: str = "") -> dict:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def _normalized(config) -> dict:
  """Flat {dotted key: JSON value} (tuples as lists, as config.json stores them)."""
  if isinstance(config, ml_collections.ConfigDict):
    config = json.loads(config.to_json())
  return _flatten(config)


def _is_safe(key: str) -> bool:
  return any(key == k or (k.endswith(".") and key.startswith(k)) for k in SAFE_KEYS)


def stored_config(workdir: str) -> dict | None:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise WorkdirError(f"{path} is not valid JSON ({e}); restore it from "
                       f"{HISTORY_FILE} or use another --workdir") from None


def config_changes(old: dict, new) -> dict:
  """{key: (old value, new value)} of every differing key (None where absent)."""
  a, b = _normalized(old), _normalized(new)
  return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_config(workdir: str, config, *, has_checkpoints: bool) -> dict:
  """Stops a run whose config does not fit the workdir's checkpoints; returns the changes.

  Without checkpoints any change is accepted (nothing trained depends on the old config).
  """
  old = stored_config(workdir)
  if old is None:
    return {}
  changes = config_changes(old, config)
  # A key only one side has (a field added to the code since) is recorded, not refused.
  unsafe = [k for k, (a, b) in changes.items()
            if not _is_safe(k) and a is not None and b is not None]
  if has_checkpoints and unsafe:
    shown = ", ".join(f"{k} ({_short(changes[k][0])} -> {_short(changes[k][1])})"
                      for k in unsafe[:4])
    more = f" and {len(unsafe) - 4} more" if len(unsafe) > 4 else ""
    raise WorkdirError(
        f"{workdir} was trained with another config: {shown}{more} differ from its "
        f"{CONFIG_FILE}. Resume with the same config, or train in a new --workdir (add "
        f"--config.init_from={os.path.join(workdir, 'checkpoints', 'STEP')} to start from "
        "those weights)")
  return changes


def _short(value, limit: int = 40) -> str:
  text = json.dumps(value)
  return text if len(text) <= limit else text[:limit - 3] + "..."


def record_changes(workdir: str, changes: dict):
  """Appends the run's accepted changes to WORKDIR/config_history.jsonl."""
  if not changes:
    return
  entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "host": socket.gethostname(), "pid": os.getpid(),
           "changes": {k: {"old": v[0], "new": v[1]} for k, v in changes.items()}}
  with open(os.path.join(workdir, HISTORY_FILE), "a") as f:
    f.write(json.dumps(entry) + "\n")


def write_text_atomic(path: str, text: str):
  """Writes `path` through a temporary sibling and os.replace: old or new, never half."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=directory)
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    try:
      os.unlink(tmp)
    except OSError:
      pass
    raise


def write_config(workdir: str, config: ml_collections.ConfigDict):
  write_text_atomic(os.path.join(workdir, CONFIG_FILE), config.to_json(indent=2))


# ------------------------------------------------------------------------------------------
# Multi-process
# ------------------------------------------------------------------------------------------


def initialize_distributed(coordinator_address: str | None = None, num_processes=None,
                           process_id=None, *, heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S):
  """jax.distributed.initialize with a bounded time to notice a dead process.

  A process that sends no heartbeat for `heartbeat_timeout_s` is declared dead; every other
  process then stops with an error (the coordination service's) instead of waiting forever
  in a collective. Shutdown waits as long for the others to finish.
  """
  import jax  # pylint: disable=g-import-not-at-top
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             heartbeat_timeout_seconds=heartbeat_timeout_s,
                             shutdown_timeout_seconds=max(heartbeat_timeout_s, 30))
