r"""Builds a config's tfds dataset once, from your local copy (nothing is downloaded).

  python -m m2f_jax.data.prepare --config configs/coco_panoptic.py \
      --config.data.source_dir=/data/coco --config.data.data_dir=/data/tfds

Reads `config.data` (the fields of `m2f_jax.config_lib.data_config`: dataset, source_dir,
data_dir, on_error, prepare_workers, and json_file / image_dir / ... for coco_format), builds
the dataset unless it is already prepared, and prints where it is and what each split holds
(and what was skipped with `--config.data.on_error=skip`). Training reads it from the same
`data.data_dir`. Datasets generated in memory (synthetic) need nothing.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file[:arg] (see configs/).",
                                lock_config=True)
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  from m2f_jax.data import builders  # pylint: disable=g-import-not-at-top
  from m2f_jax.data import datasets  # pylint: disable=g-import-not-at-top
  data_cfg = flags.FLAGS.config.data
  logging.set_verbosity(logging.ERROR)  # tfds' notes on configs and folders are not news here
  try:
    builder = datasets.prepare_dataset(data_cfg)
  except (ValueError, FileNotFoundError, builders.BadInputError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if builder is None:
    print(f"data.dataset={data_cfg.dataset!r} is generated in memory: nothing to prepare")
    return 0
  print(f"{builder.name}/{builder.builder_config.name} is prepared in {builder.data_path}")
  skipped = builder.info.metadata.get("skipped", {}) if builder.info.metadata else {}
  for split, info in sorted(builder.info.splits.items()):
    line = f"  {split}: {info.num_examples} examples"
    if skipped.get(split, {}).get("count"):
      line += f", {skipped[split]['count']} skipped (see the dataset's metadata)"
    print(line)
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
