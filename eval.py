r"""Evaluates a checkpoint on its dataset's validation split; writes eval_results.json.

  python eval.py --checkpoint workdir/tiny/checkpoints/900           # a training checkpoint
  python eval.py --checkpoint /tmp/m2f_ckpt --config configs/tiny.py  # a converted model

--checkpoint is an m2f_jax model directory (`python -m m2f_jax.convert` output) or a
training checkpoint step directory (workdir/checkpoints/STEP; its config is read from the
workdir). Results and visualizations go to --workdir (default: next to the checkpoint).
It only reads the checkpoint, so it may run while train.py trains in that workdir.

Compiled programs are kept in a persistent cache (default ~/.cache/m2f_jax/jax_cache, or
$XDG_CACHE_HOME/m2f_jax/jax_cache), so a second evaluation of the same model compiles
nothing: --compilation_cache=DIR (or $M2F_JAX_COMPILATION_CACHE) moves it, =none turns it
off; a cache JAX is already given (JAX_COMPILATION_CACHE_DIR) is used as it is. The
progress line shows images/s and the compiles apart. Mistakes
(a missing or damaged checkpoint, one of another architecture than --config's model) print
one or two lines; --verbose (or M2F_VERBOSE=1) adds the traceback.
"""

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from m2f_jax import errors
from m2f_jax import host_malloc

with errors.reporting():  # a --config.KEY typo is reported when the flag is defined
  try:
    config_flags.DEFINE_config_file("config", None, "Config file[:arg]; default: the one "
                                    "stored with the checkpoint.", lock_config=False)
  except (AttributeError, KeyError) as e:
    raise errors.config_key_error(e, sys.argv) from e
flags.DEFINE_string("checkpoint", None, "Model or training-checkpoint directory.", required=True)
flags.DEFINE_string("workdir", None, "Where eval_results.json and visualizations go.")
flags.DEFINE_integer("max_images", None, "Evaluate only the first N validation images.")
flags.DEFINE_bool("cpu_malloc", False, "CPU runs: re-execute this command once with glibc "
                  "malloc settings that keep freed memory (faster steps, the peak memory "
                  "stays held); see m2f_jax/host_malloc.py for the environment recipe.")
flags.DEFINE_string("compilation_cache", None, "Folder of the persistent compilation cache, "
                    "or 'none' for no cache; default: $M2F_JAX_COMPILATION_CACHE, else JAX's "
                    "own setting if any, else ~/.cache/m2f_jax/jax_cache "
                    "(m2f_jax/compilation.py).")
flags.DEFINE_bool("verbose", False, "Print tracebacks of user errors (also: M2F_VERBOSE=1).")


def main(argv):
  del argv
  host_malloc.apply_cpu_malloc_flag(flags.FLAGS.cpu_malloc)  # before JAX starts; opt-in
  f = flags.FLAGS
  from m2f_jax import compilation  # pylint: disable=g-import-not-at-top
  print(compilation.configure_cache(f.compilation_cache), flush=True)  # before any compile
  from m2f_jax import evaluate  # pylint: disable=g-import-not-at-top
  from m2f_jax import checkpoint  # pylint: disable=g-import-not-at-top
  config, model, variables = checkpoint.load_checked(f.checkpoint, f.config)  # or CheckpointError
  workdir = os.path.abspath(f.workdir or f.checkpoint)
  os.makedirs(workdir, exist_ok=True)
  from m2f_jax import evaluate_video  # pylint: disable=g-import-not-at-top
  if evaluate_video.is_video_task(config):  # video instance / panoptic: video AP, VPQ, STQ
    report = evaluate_video.evaluate_video(config=config, model=model, variables=variables,
                                           workdir=workdir, max_videos=f.max_images)
    print(evaluate_video.format_report(report))
  else:
    report = evaluate.evaluate(config=config, model=model, variables=variables,
                               workdir=workdir, max_images=f.max_images,
                               progress=lambda line: print(line, flush=True))
    print(evaluate.format_report(report))
  print(f"wrote {os.path.join(workdir, 'eval_results.json')}")


if __name__ == "__main__":
  with errors.reporting():
    app.run(main)
