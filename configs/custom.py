r"""Your own data in COCO panoptic (or COCO instance) format, with any model size.

  python train.py --config configs/custom.py:tiny --workdir workdir/mine \
      --config.data.json_file=mydata/annotations/panoptic_train.json \
      --config.data.image_dir=mydata/train --config.data.panoptic_dir=mydata/panoptic_train \
      --config.data.val_json_file=mydata/annotations/panoptic_val.json \
      --config.data.val_image_dir=mydata/val --config.data.val_panoptic_dir=mydata/panoptic_val

The folder layout, evaluation, prediction and bad files: README.md, "Train on your own data".

Variants: `tiny` (the model and recipe of configs/tiny.py: CPU-sized, trained from scratch),
`slim` (the small test model of configs/tiny.py:slim, for tests) and the official `r50`,
`r101`, `swin_t`, `swin_s`, `swin_b`, `swin_l` (those of configs/coco_panoptic.py: LSJ crops
of 1024, the COCO schedule; scale --config.optim.max_steps and --config.optim.decay_steps to
your data, and start from pretrained weights with --config.init_from).

The number of classes, their names, thing/stuff flags and colours come from the JSON's
categories (`model.num_classes` is None; a stated count that differs stops the run before
the first step) and are stored with every checkpoint. Without a panoptic_dir the data is read
as COCO instance format and the task becomes "instance". The first run builds the dataset
once, under --config.data.data_dir (tfds' default folder when empty).
"""

import os

from m2f_jax import config_lib

_HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg: str = "tiny"):
  if arg in ("tiny", "slim"):
    config = config_lib.load_config_file(
        os.path.join(_HERE, "tiny.py" + (":slim" if arg == "slim" else "")))
  else:
    config = config_lib.load_config_file(os.path.join(_HERE, f"coco_panoptic.py:{arg}"))
  # The data section of coco_format: the recipe and test-time size of the variant stay.
  data = config_lib.data_config("coco_format", task="panoptic",
                                batch_size=config.data.batch_size)
  data.update({k: config.data[k] for k in (
      "augmentation", "image_size", "scale_range", "num_targets", "worker_count",
      "read_threads", "prefetch")})
  config.data = data
  config.eval.evaluators = config_lib.eval_config("coco_format", "panoptic").evaluators
  config.model.num_classes = None  # from the data's categories
  return config
