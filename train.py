r"""Trains Mask2Former; with no flags, the tiny model on the built-in synthetic dataset.

  python train.py                                   # tiny model, synthetic data, CPU-sized
  python train.py --config configs/coco_panoptic.py:r50 --workdir /tmp/m2f_r50 \
      --config.init_from=R-50.pkl
  python train.py --cpu_malloc                      # CPU: faster steps (m2f_jax/host_malloc.py)

Started again on the same --workdir it resumes from the last checkpoint. Multi-host: run the
same command on every host; `jax.distributed.initialize()` is called when the cluster is
detected (TPU pods, SLURM) or when --coordinator_address is given.
"""

import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from m2f_jax import host_malloc

_HERE = os.path.dirname(os.path.abspath(__file__))
config_flags.DEFINE_config_file("config", os.path.join(_HERE, "configs", "tiny.py"),
                                "Config file[:arg] (see configs/).", lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, metrics and results go here "
                    "(default: ./workdir/<config name>).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
flags.DEFINE_bool("cpu_malloc", False, "CPU runs: re-execute this command once with glibc "
                  "malloc settings that keep freed memory (faster steps, the peak memory "
                  "stays held); see m2f_jax/host_malloc.py for the environment recipe.")


def main(argv):
  del argv
  host_malloc.apply_cpu_malloc_flag(flags.FLAGS.cpu_malloc)  # before JAX starts; opt-in
  import jax  # pylint: disable=g-import-not-at-top
  from m2f_jax.training import loop  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  if f.coordinator_address:
    jax.distributed.initialize(coordinator_address=f.coordinator_address,
                               num_processes=f.num_processes, process_id=f.process_id)
  elif any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID")):
    jax.distributed.initialize()
  config = f.config
  name = os.path.splitext(os.path.basename(f["config"].config_filename))[0]
  workdir = os.path.abspath(f.workdir or os.path.join("workdir", name))
  logging.set_verbosity(logging.WARNING)  # progress lines are printed; Orbax logs at INFO
  print(f"workdir: {workdir}", flush=True)
  loop.train_and_evaluate(config, workdir)


if __name__ == "__main__":
  app.run(main)  # parses the flags, as grain's worker processes require
