r"""Evaluates a checkpoint on its dataset's validation split; writes eval_results.json.

  python eval.py --checkpoint workdir/tiny/checkpoints/600           # a training checkpoint
  python eval.py --checkpoint /tmp/m2f_ckpt --config configs/tiny.py  # a converted model

--checkpoint is an m2f_jax model directory (`python -m m2f_jax.convert` output) or a
training checkpoint step directory (workdir/checkpoints/STEP; its config is read from the
workdir). Results and visualizations go to --workdir (default: next to the checkpoint).
It only reads the checkpoint, so it may run while train.py trains in that workdir. Mistakes
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
flags.DEFINE_bool("verbose", False, "Print tracebacks of user errors (also: M2F_VERBOSE=1).")


def load(path: str, config):
  """`(config, model, variables)` of --checkpoint; CheckpointError if it cannot serve."""
  import jax  # pylint: disable=g-import-not-at-top
  from m2f_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from m2f_jax.models import mask2former  # pylint: disable=g-import-not-at-top
  try:
    config, model, variables = checkpoint.load_for_inference(path, config)
  except FileNotFoundError as e:
    raise errors.CheckpointError(f"--checkpoint: {e}") from e
  except Exception as e:  # pylint: disable=broad-except  (damaged, or config.json replaced)
    raise errors.CheckpointError(
        f"--checkpoint {path}: its weights do not restore with its config ({type(e).__name__}"
        f": {errors.one_line(e, 1)[:200]}); is it damaged, or its config.json not the one it "
        "was trained with?") from e

  def shapes(tree) -> dict:  # {"['params']['...']": shape}
    tree = {k: v for k, v in tree.items() if jax.tree.leaves(v)}  # no empty batch_stats
    return {jax.tree_util.keystr(k): tuple(x.shape)
            for k, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
  try:
    want = shapes(mask2former.abstract_variables(model))
  except Exception:  # pylint: disable=broad-except  (a model of other inputs: not compared)
    return config, model, variables
  got = shapes(variables)
  if got != want:
    name = next(k for k in sorted(set(got) | set(want)) if got.get(k) != want.get(k))
    raise errors.CheckpointError(
        f"--checkpoint {path} is another architecture than the config's model: {name} is "
        f"{got.get(name, 'absent')} in the checkpoint, {want.get(name, 'absent')} in the "
        "model; evaluate it with its own config (omit --config) or the matching one")
  return config, model, variables


def main(argv):
  del argv
  host_malloc.apply_cpu_malloc_flag(flags.FLAGS.cpu_malloc)  # before JAX starts; opt-in
  from m2f_jax import evaluate  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  config, model, variables = load(f.checkpoint, f.config)
  workdir = os.path.abspath(f.workdir or f.checkpoint)
  os.makedirs(workdir, exist_ok=True)
  from m2f_jax import evaluate_video  # pylint: disable=g-import-not-at-top
  if evaluate_video.is_video_task(config):  # video instance / panoptic: video AP, VPQ, STQ
    report = evaluate_video.evaluate_video(config=config, model=model, variables=variables,
                                           workdir=workdir, max_videos=f.max_images)
    print(evaluate_video.format_report(report))
  else:
    report = evaluate.evaluate(config=config, model=model, variables=variables,
                               workdir=workdir, max_images=f.max_images)
    print(evaluate.format_report(report))
  print(f"wrote {os.path.join(workdir, 'eval_results.json')}")


if __name__ == "__main__":
  with errors.reporting():
    app.run(main)
