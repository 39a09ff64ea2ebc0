r"""Trains Mask2Former; with no flags, the tiny model on the built-in synthetic dataset.

  python train.py                                   # tiny model, synthetic data, CPU-sized
  python train.py --config configs/coco_panoptic.py:r50 --workdir /tmp/m2f_r50 \
      --config.init_from=R-50.pkl
  python train.py --cpu_malloc                      # CPU: faster steps (m2f_jax/host_malloc.py)

Started again on the same --workdir it resumes from the newest intact checkpoint (a damaged one
is reported and set aside); a config that no longer fits the workdir's checkpoints, or a
second run on the same workdir, stops with one line (docs/faults.md). Mistakes in the input
print one or two lines; --verbose (or M2F_VERBOSE=1) adds the traceback. Multi-host: run the
same command on every host; `jax.distributed.initialize()` is called when the cluster is
detected (TPU pods, SLURM) or when --coordinator_address is given, and every process stops
within --heartbeat_timeout seconds of another one dying.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from m2f_jax import errors
from m2f_jax import host_malloc

_HERE = os.path.dirname(os.path.abspath(__file__))
with errors.reporting():  # a --config.KEY typo is reported when the flag is defined
  try:
    config_flags.DEFINE_config_file("config", os.path.join(_HERE, "configs", "tiny.py"),
                                    "Config file[:arg] (see configs/).", lock_config=True)
  except (AttributeError, KeyError) as e:
    raise errors.config_key_error(e, sys.argv) from e
flags.DEFINE_string("workdir", None, "Checkpoints, metrics and results go here "
                    "(default: ./workdir/<config name>[_<variant>]).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
flags.DEFINE_bool("cpu_malloc", False, "CPU runs: re-execute this command once with glibc "
                  "malloc settings that keep freed memory (faster steps, the peak memory "
                  "stays held); see m2f_jax/host_malloc.py for the environment recipe.")
flags.DEFINE_integer("heartbeat_timeout", 60, "Multi-process: seconds without a heartbeat "
                     "after which a process counts as dead and the others stop.")
flags.DEFINE_bool("verbose", False, "Print tracebacks of user errors (also: M2F_VERBOSE=1).")



def main(argv):
  del argv
  host_malloc.apply_cpu_malloc_flag(flags.FLAGS.cpu_malloc)  # before JAX starts; opt-in
  import jax  # pylint: disable=g-import-not-at-top
  from m2f_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from m2f_jax.training import loop  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  if f.coordinator_address:
    workdir_lib.initialize_distributed(f.coordinator_address, f.num_processes, f.process_id,
                                       heartbeat_timeout_s=f.heartbeat_timeout)
  elif any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID")):
    workdir_lib.initialize_distributed(heartbeat_timeout_s=f.heartbeat_timeout)
  config = f.config
  # configs/tiny.py -> tiny; configs/tiny.py:long -> tiny_long (variants get their own).
  path, _, variant = f["config"].config_filename.partition(":")
  name = os.path.splitext(os.path.basename(path))[0] + (f"_{variant}" if variant else "")
  workdir = os.path.abspath(f.workdir or os.path.join("workdir", name))
  logging.set_verbosity(logging.WARNING)  # progress lines are printed; Orbax logs at INFO
  errors.quiet_background_errors()  # a failed checkpoint write is reported once, in one line
  print(f"workdir: {workdir}", flush=True)
  loop.train_and_evaluate(config, workdir)


if __name__ == "__main__":
  from m2f_jax.training.train_step import NonFiniteLossError  # pylint: disable=g-import-not-at-top
  with errors.reporting((NonFiniteLossError,)):
    app.run(main)  # parses the flags, as grain's worker processes require
