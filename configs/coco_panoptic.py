r"""COCO 2017 panoptic segmentation (133 classes), the official 50-epoch schedule.

Backbones as in the official model zoo: r50, r101, swin_t, swin_s, swin_b, swin_l
(swin_l uses 200 queries and the 100-epoch schedule).

  # once: build the tfds dataset from your local copy (nothing is downloaded)
  python -m m2f_jax.data.prepare --config configs/coco_panoptic.py \
      --config.data.source_dir=/data/coco --config.data.data_dir=/data/tfds
  python train.py --config configs/coco_panoptic.py:r50 --workdir /tmp/m2f_coco_pan_r50 \
      --config.data.data_dir=/data/tfds

Data fields: `m2f_jax.config_lib.data_config`. Your own data in COCO panoptic format: add
--config.data.dataset=coco_format --config.data.json_file=... --config.data.image_dir=...
--config.data.panoptic_dir=... (val_* for the validation split) and set model.num_classes.
"""

from m2f_jax import config_lib


def get_config(arg: str = "r50"):
  backbone = config_lib.backbone_from_arg(arg)
  large = arg == "swin_l"
  config = config_lib.base_config(
      model=config_lib.model_config(backbone, num_classes=133, num_queries=200 if large else 100),
      dataset="coco_panoptic", task="panoptic",
      max_steps=737500 if large else 368750,
      decay_steps=(655556, 710184) if large else (327778, 355092))
  return config
