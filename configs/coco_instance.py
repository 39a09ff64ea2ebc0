r"""COCO 2017 instance segmentation (80 classes), the official 50-epoch schedule.

  python train.py --config configs/coco_instance.py:r50 --workdir /tmp/m2f_coco_ins_r50
"""

from m2f_jax import config_lib


def get_config(arg: str = "r50"):
  backbone = config_lib.backbone_from_arg(arg)
  large = arg == "swin_l"
  return config_lib.base_config(
      model=config_lib.model_config(backbone, num_classes=80, num_queries=200 if large else 100),
      dataset="coco_instance", task="instance",
      max_steps=737500 if large else 368750,
      decay_steps=(655556, 710184) if large else (327778, 355092))
