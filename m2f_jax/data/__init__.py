"""Datasets and grain input pipelines.

Every dataset (the built-in `synthetic` one, and the tfds builders of COCO, ADE20K and
Cityscapes) yields RECORDS, one per image, that `pipeline.normalize_record` brings to this
form (numpy arrays; all [H, W] maps share the image's size):

  "image":         uint8 [H, W, 3] RGB
  "image_id":      int
  and at least one annotation:
  "panoptic":      int32 [H, W] segment ids, 0 = void (tfds examples may hand the COCO
                   RGB encoding, uint8 [H, W, 3] with id = R + 256 G + 256^2 B)
  "segments_info": {"id": int32 [S], "category_id": int32 [S], "iscrowd": bool [S],
                    "isthing": bool [S]} describing the panoptic segments
  "semantic":      uint8 [H, W] class map, 255 = ignore (tfds examples may hand [H, W, 1];
                   derived from the panoptic map when absent)
  "instances":     {"masks": uint8 [N, H, W], "category_id": int32 [N], "iscrowd": bool [N]}
                   overlapping instance masks (instance task; derived from the panoptic
                   thing segments when absent)

Category ids in records are contiguous class indices in [0, K); a builder maps its
dataset's own ids (and keeps the original ones in its metadata).

`data_source(config.data, split)`, `categories(config.data)` and `prepare_dataset(config.data)`
pick a dataset by name (`data.dataset`) from the registry in `datasets.py`, one
`DatasetSpec` per dataset. The `data` config fields are declared, with their meaning, in
`m2f_jax.config_lib.data_config`. `python -m m2f_jax.data.prepare --config CONFIG` builds a
tfds dataset once from the user's local copy (nothing is ever downloaded).

Videos (task "video_instance": `synthetic_video`, YouTube-VIS) yield one record per video,
brought to CLIP RECORDS by `video_pipeline.clip_record` (frames uint8 [T, H, W, 3], instance
tracks uint8 [N, T, H, W]); `video_pipeline` makes training clips [B, T, H, W, 3] and whole
evaluation videos.

Modules: `datasets` (the registry), `prepare` (the CLI that builds a tfds dataset),
`panoptic_png` (the COCO panoptic PNG codec), `synthetic` (procedural dataset: grain
source and tfds builder), `targets`
(record -> training targets, image normalization), `pipeline` (normalization of records,
augmentation, `train_iterator`, `eval_batches`), `builders` (tfds builders of COCO, ADE20K,
Cityscapes and COCO-format data).
"""

from m2f_jax.data.datasets import DATASETS
from m2f_jax.data.datasets import categories
from m2f_jax.data.datasets import data_source
from m2f_jax.data.datasets import prepare_dataset
from m2f_jax.data.datasets import spec
from m2f_jax.data.datasets import tfds_builder

__all__ = ["DATASETS", "categories", "data_source", "prepare_dataset", "spec", "tfds_builder"]
