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

`data_source(config.data, split)` and `categories(config.data)` pick a dataset by name.

Modules: `synthetic` (procedural dataset: grain source and tfds builder), `targets`
(record -> training targets, image normalization), `pipeline` (normalization of records,
augmentation, `train_iterator`, `eval_batches`).
"""


def data_source(data_cfg, split: str):
  """The random-access source of `split` ("train" or "validation") for `data.dataset`."""
  if data_cfg.dataset == "synthetic":
    from m2f_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    return synthetic.SyntheticSource(
        data_cfg.num_train if split == "train" else data_cfg.num_val, split=split,
        seed=data_cfg.seed, image_size=tuple(data_cfg.image_size))
  raise ValueError(f"data.dataset {data_cfg.dataset!r} has no source yet; available: synthetic")


def categories(data_cfg, num_classes: int | None = None) -> list[dict]:
  """[{"id", "name", "isthing"}] with contiguous ids.

  From `data.class_names` (+ optional `data.isthing`) when the config has them (converted
  checkpoints carry their label names), else from the dataset `data.dataset`, else generic
  names `class_{i}` for `num_classes`. Without thing/stuff information every class counts as
  a thing (panoptic inference then merges no stuff segments).
  """
  names = data_cfg.get("class_names")
  if names:
    isthing = data_cfg.get("isthing") or [1] * len(names)
    return [{"id": i, "name": n, "isthing": int(t)} for i, (n, t) in enumerate(zip(names, isthing))]
  if data_cfg.get("dataset") == "synthetic":
    from m2f_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    return [{k: c[k] for k in ("id", "name", "isthing")} for c in synthetic.CATEGORIES]
  if num_classes is None:
    raise ValueError(f"no category list for data.dataset={data_cfg.get('dataset')!r}: set "
                     "data.class_names (and data.isthing) in the config")
  return [{"id": i, "name": f"class_{i}", "isthing": 1} for i in range(num_classes)]
