r"""COCO 2017 panoptic segmentation (133 classes), the official 50-epoch schedule.

Backbones as in the official model zoo: r50, r101, swin_t, swin_s, swin_b, swin_l
(swin_l uses 200 queries and the 100-epoch schedule).

  python train.py --config configs/coco_panoptic.py:r50 --workdir /tmp/m2f_coco_pan_r50
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
