r"""COCO 2017 panoptic segmentation (133 classes), the official 50-epoch schedule.

Backbones as in the official model zoo: r50, r101, swin_t, swin_s, swin_b, swin_l
(swin_l uses 200 queries and the 100-epoch schedule).

  # once: build the tfds dataset from your local copy (nothing is downloaded)
  python -c "from configs import coco_panoptic as c; from m2f_jax import data; \
      d = c.get_config().data; d.update(source_dir='/data/coco', data_dir='/data/tfds'); \
      data.prepare(d)"
  python train.py --config configs/coco_panoptic.py:r50 --workdir /tmp/m2f_coco_pan_r50 \
      --config.data.data_dir=/data/tfds

Data fields: m2f_jax/data/__init__.py. Your own data in COCO panoptic format: add
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
  config.data.update(  # m2f_jax/data/__init__.py documents these
      data_dir="", source_dir="", on_error="fail", prepare_workers=8, dataset_name="",
      json_file="", image_dir="", panoptic_dir="", val_json_file="", val_image_dir="",
      val_panoptic_dir="")
  return config
