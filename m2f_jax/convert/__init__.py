"""Weight import from the checkpoints users already have.

  load_hf(path)                      transformers `save_pretrained` directory -> (model, variables)
  load_detectron2(path, model_cfg)   official Detectron2 model-zoo .pkl -> (model, variables)
  load_imagenet_backbone(path, ...)  torchvision ResNet / official Swin ImageNet weights for
                                     the backbone alone (training initialization)

`python -m m2f_jax.convert --from {hf,detectron2} SRC --output DIR` writes an m2f_jax
checkpoint (see `m2f_jax.checkpoint`).
"""

from m2f_jax.convert.core import ConversionError
from m2f_jax.convert.core import state_dict_to_variables
from m2f_jax.convert.detectron2 import load_detectron2
from m2f_jax.convert.hf import load_hf
from m2f_jax.convert.imagenet import load_imagenet_backbone

__all__ = ["ConversionError", "load_detectron2", "load_hf", "load_imagenet_backbone",
           "state_dict_to_variables"]
