r"""ADE20K SceneParsing semantic segmentation (150 classes), 160k iterations, poly schedule.

r50 trains on 512x512 crops; swin_l (IN21k, 384) on 640x640 crops as the official res640 config.

  # once: build the tfds dataset from your local copy (nothing is downloaded)
  python -m m2f_jax.data.prepare --config configs/ade20k_semantic.py \
      --config.data.source_dir=/data/ade20k --config.data.data_dir=/data/tfds
  python train.py --config configs/ade20k_semantic.py:swin_l --workdir /tmp/m2f_ade_swin_l \
      --config.data.data_dir=/data/tfds
"""

from m2f_jax import config_lib


def get_config(arg: str = "r50"):
  config = config_lib.base_config(
      model=config_lib.model_config(config_lib.backbone_from_arg(arg), num_classes=150),
      dataset="ade20k", task="semantic", max_steps=160000, lr_schedule="poly")
  size = 640 if arg == "swin_l" else 512
  config.data.image_size = (size, size)  # the crop
  config.eval.update(min_size=size, max_size=4 * size)
  return config
