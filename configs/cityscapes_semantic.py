r"""Cityscapes gtFine semantic segmentation (19 classes), 90k iterations, poly schedule.

  # once: build the tfds dataset from your local copy (nothing is downloaded)
  python -m m2f_jax.data.prepare --config configs/cityscapes_semantic.py \
      --config.data.source_dir=/data/cityscapes --config.data.data_dir=/data/tfds
  python train.py --config configs/cityscapes_semantic.py:r50 --workdir /tmp/m2f_cs_sem_r50 \
      --config.data.data_dir=/data/tfds
"""

from m2f_jax import config_lib


def get_config(arg: str = "r50"):
  config = config_lib.base_config(
      model=config_lib.model_config(config_lib.backbone_from_arg(arg), num_classes=19),
      dataset="cityscapes", task="semantic", max_steps=90000, lr_schedule="poly")
  config.data.image_size = (512, 1024)  # the crop
  return config
