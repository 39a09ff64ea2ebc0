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

Modules: `synthetic` (procedural dataset: grain source and tfds builder), `targets`
(record -> training targets, image normalization), `pipeline` (normalization of records,
augmentation, `train_iterator`, `eval_batches`).
"""
