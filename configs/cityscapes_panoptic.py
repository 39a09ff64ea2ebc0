r"""Cityscapes gtFine panoptic segmentation (19 classes: 8 things, 11 stuff), 90k iterations.

  python train.py --config configs/cityscapes_panoptic.py:r50 --workdir /tmp/m2f_cs_pan_r50
"""

from m2f_jax import config_lib


def get_config(arg: str = "r50"):
  config = config_lib.base_config(
      model=config_lib.model_config(config_lib.backbone_from_arg(arg), num_classes=19),
      dataset="cityscapes", task="panoptic", max_steps=90000, lr_schedule="poly")
  config.data.crop_size = (512, 1024)
  return config
