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

`data_source(config.data, split)` and `categories(config.data)` pick a dataset by name
(`data.dataset`); `prepare(config.data)` builds a tfds dataset once from the user's local
copy (nothing is ever downloaded). The config fields they read (defaults in brackets):

  dataset          "synthetic", or a tfds dataset: "coco_panoptic" (COCO 2017 panoptic, 133
                   classes), "coco_instance" (COCO 2017 instances, 80), "ade20k"
                   (ADEChallengeData2016, 150), "cityscapes" (gtFine, 19), "coco_format" (your
                   data in COCO panoptic or instance format, with its own categories)
  data_dir         [""] where tfds datasets are written and read ("" = tfds' default,
                   $TFDS_DATA_DIR or ~/tensorflow_datasets)
  source_dir       [""] the local copy of the release to build from (layouts: the builders'
                   MANUAL_DOWNLOAD_INSTRUCTIONS in `builders/`)
  on_error         ["fail"] a bad source file (corrupt, missing, wrong size, unknown
                   category, image without annotation) stops the build with its name and the
                   reason, or "skip": left out, logged, counted in the dataset's metadata
  prepare_workers  [8] threads reading source files while building
  coco_format only (the format is panoptic when a panoptic_dir is set, else instance):
  json_file, image_dir, panoptic_dir              [""] the "train" split
  val_json_file, val_image_dir, val_panoptic_dir  [""] the "validation" split
  dataset_name     [""] its tfds config name (default: "custom_" + a hash of the JSON paths)
  class_names, isthing   optional; override the dataset's categories in `categories`

Reading a prepared coco_format dataset needs the same dataset_name (or JSON paths) and
panoptic_dir (or its absence) as building it; its source files are not read again.

Modules: `synthetic` (procedural dataset: grain source and tfds builder), `targets`
(record -> training targets, image normalization), `pipeline` (normalization of records,
augmentation, `train_iterator`, `eval_batches`), `builders` (tfds builders of COCO, ADE20K,
Cityscapes and COCO-format data).
"""

from __future__ import annotations

import hashlib
import json
import os

TFDS_DATASETS = ("coco_panoptic", "coco_instance", "ade20k", "cityscapes", "coco_format")
# coco_format config fields per split: (json_file, image_dir, panoptic_dir)
_COCO_FORMAT_FIELDS = {"train": ("json_file", "image_dir", "panoptic_dir"),
                       "validation": ("val_json_file", "val_image_dir", "val_panoptic_dir")}


def data_source(data_cfg, split: str):
  """The random-access source of `split` ("train" or "validation") for `data.dataset`."""
  if data_cfg.dataset == "synthetic":
    from m2f_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    return synthetic.SyntheticSource(
        data_cfg.num_train if split == "train" else data_cfg.num_val, split=split,
        seed=data_cfg.seed, image_size=tuple(data_cfg.image_size))
  if data_cfg.dataset not in TFDS_DATASETS:
    raise ValueError(f"unknown data.dataset {data_cfg.dataset!r}: use 'synthetic' or one of "
                     f"{TFDS_DATASETS}")
  builder = tfds_builder(data_cfg)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"data.dataset={data_cfg.dataset!r} is not prepared under {builder.data_dir} "
        f"(data.data_dir={data_cfg.get('data_dir', '')!r}): build it once with "
        "`m2f_jax.data.prepare(config.data)`, which reads data.source_dir"
        + (" (data.json_file, ... for coco_format)" if data_cfg.dataset == "coco_format" else ""))
  sources = builder.as_data_source()
  if split not in sources:
    raise ValueError(f"{builder.name}/{builder.builder_config.name} has no split {split!r}; it "
                     f"has {sorted(sources)}")
  return sources[split]


def _coco_format_files(data_cfg) -> dict[str, dict[str, str]]:
  """{split: {"json_file", "image_dir", "panoptic_dir"}} for the splits with a JSON."""
  files = {}
  for split, fields in _COCO_FORMAT_FIELDS.items():
    if data_cfg.get(fields[0]):
      files[split] = {key: data_cfg.get(field) or ""
                      for key, field in zip(("json_file", "image_dir", "panoptic_dir"), fields)}
  return files


def tfds_builder(data_cfg):
  """The tfds builder of `data.dataset` (one of TFDS_DATASETS), prepared or not."""
  from m2f_jax.data import builders  # pylint: disable=g-import-not-at-top
  kwargs = dict(data_dir=data_cfg.get("data_dir") or None, file_format="array_record")
  build = dict(on_error=data_cfg.get("on_error") or "fail",
               num_workers=int(data_cfg.get("prepare_workers") or 8))
  dataset = data_cfg.dataset
  if dataset in ("coco_panoptic", "coco_instance"):
    from m2f_jax.data.builders import coco  # pylint: disable=g-import-not-at-top
    cls = coco.CocoPanoptic if dataset == "coco_panoptic" else coco.CocoInstance
    return cls(config=coco.CocoConfig(name=coco.RELEASE, **build), **kwargs)
  if dataset == "coco_format":
    from m2f_jax.data.builders import coco  # pylint: disable=g-import-not-at-top
    files = _coco_format_files(data_cfg)
    panoptic = any(f["panoptic_dir"] for f in files.values())
    name = data_cfg.get("dataset_name")
    if not name:
      paths = "|".join(f"{split}={f['json_file']}" for split, f in sorted(files.items()))
      name = "custom_" + hashlib.sha1(paths.encode()).hexdigest()[:10]
    cls = coco.CocoPanoptic if panoptic else coco.CocoInstance
    return cls(config=coco.CocoConfig(name=name, files=files, **build), **kwargs)
  if dataset == "ade20k":
    from m2f_jax.data.builders import ade20k  # pylint: disable=g-import-not-at-top
    return ade20k.Ade20kSceneParsing(config=builders.BuildConfig(name="default", **build),
                                     **kwargs)
  if dataset == "cityscapes":
    from m2f_jax.data.builders import cityscapes  # pylint: disable=g-import-not-at-top
    return cityscapes.CityscapesFine(config=builders.BuildConfig(name="default", **build),
                                     **kwargs)
  raise ValueError(f"data.dataset {dataset!r} is not a tfds dataset; use one of {TFDS_DATASETS}")


def prepare(data_cfg):
  """Builds the tfds dataset of `data.dataset` unless it is prepared; returns its builder.

  Reads the user's local copy (`data.source_dir`, or for coco_format `data.json_file`,
  `data.image_dir`, ...): nothing is downloaded. Raises FileNotFoundError / ValueError naming
  the missing path or field, and `builders.BadInputError` naming a bad source file (with
  `data.on_error="fail"`). Run it once, on one process, before training.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds_builder(data_cfg)
  if builder.is_prepared():
    return builder
  manual_dir = None
  if data_cfg.dataset == "coco_format":
    if not builder.builder_config.files:
      raise ValueError("data.dataset='coco_format' needs data.json_file and data.image_dir "
                       "(and data.panoptic_dir for the panoptic format) for the train split, "
                       "and/or data.val_json_file, data.val_image_dir (data.val_panoptic_dir)")
  else:
    manual_dir = data_cfg.get("source_dir")
    if not manual_dir:
      raise ValueError(f"data.dataset={data_cfg.dataset!r} is not prepared under "
                       f"{builder.data_dir}; set data.source_dir to your local copy.\n"
                       f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    if not os.path.isdir(manual_dir):
      raise FileNotFoundError(f"data.source_dir={manual_dir!r} does not exist (it should hold "
                              f"the release).\n{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def categories(data_cfg, num_classes: int | None = None) -> list[dict]:
  """[{"id", "name", "isthing"}] with contiguous ids (tfds datasets add "dataset_id").

  From `data.class_names` (+ optional `data.isthing`) when the config has them (converted
  checkpoints carry their label names), else from the dataset `data.dataset`, else generic
  names `class_{i}` for `num_classes`. Without thing/stuff information every class counts as
  a thing (panoptic inference then merges no stuff segments).
  """
  names = data_cfg.get("class_names")
  if names:
    isthing = data_cfg.get("isthing") or [1] * len(names)
    return [{"id": i, "name": n, "isthing": int(t)} for i, (n, t) in enumerate(zip(names, isthing))]
  dataset = data_cfg.get("dataset")
  if dataset == "synthetic":
    from m2f_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    return [{k: c[k] for k in ("id", "name", "isthing")} for c in synthetic.CATEGORIES]
  if dataset in TFDS_DATASETS:
    return [dict(c) for c in _tfds_categories(data_cfg)]
  if num_classes is None:
    raise ValueError(f"no category list for data.dataset={data_cfg.get('dataset')!r}: set "
                     "data.class_names (and data.isthing) in the config")
  return [{"id": i, "name": f"class_{i}", "isthing": 1} for i in range(num_classes)]


def _tfds_categories(data_cfg) -> list[dict]:
  dataset = data_cfg.dataset
  if dataset in ("coco_panoptic", "coco_instance"):
    from m2f_jax.data.builders import coco  # pylint: disable=g-import-not-at-top
    return list(coco.PANOPTIC_CATEGORIES if dataset == "coco_panoptic"
                else coco.INSTANCE_CATEGORIES)
  if dataset == "ade20k":
    from m2f_jax.data.builders import ade20k  # pylint: disable=g-import-not-at-top
    return list(ade20k.CATEGORIES)
  if dataset == "cityscapes":
    from m2f_jax.data.builders import cityscapes  # pylint: disable=g-import-not-at-top
    return list(cityscapes.CATEGORIES)
  # coco_format: from the prepared dataset, else from its JSON.
  builder = tfds_builder(data_cfg)
  if builder.is_prepared():
    return list(builder.info.metadata["categories"])
  from m2f_jax.data.builders import coco  # pylint: disable=g-import-not-at-top
  files = _coco_format_files(data_cfg)
  if not files:
    raise ValueError("data.dataset='coco_format' is not prepared and names no JSON "
                     "(data.json_file / data.val_json_file): no category list")
  json_file = next(iter(files.values()))["json_file"]
  with open(json_file) as f:
    dataset_json = json.load(f)
  return coco.categories_from_json(dataset_json, json_file,
                                   panoptic=any(f["panoptic_dir"] for f in files.values()))
