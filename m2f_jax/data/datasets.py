"""Every dataset the project reads, one `DatasetSpec` each, looked up by `data.dataset`.

A spec says where a dataset's records come from (an in-memory source, or a tfds builder
built once from the user's local copy), its categories, its default task, and the official
training recipe and test-time resize of Mask2Former's configs for it. Everything else that
depends on the dataset (config defaults, `data_source`, `categories`, `prepare_dataset`, the
export CLI) reads the spec, so a new dataset is one new entry in `DATASETS`.

Builder modules (tfds, grain) are imported only when a spec's functions run, so importing
this module (from `config_lib`, say) costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import hashlib
import json
import os
from typing import Any

ALL_METRICS = ("semantic", "panoptic", "instance")
VIDEO_PANOPTIC = ("video_panoptic", "video_instance")  # VPQ / STQ, and the AP of the things
# coco_format config fields per split: (json_file, image_dir, panoptic_dir)
_COCO_FORMAT_FIELDS = {"train": ("json_file", "image_dir", "panoptic_dir"),
                       "validation": ("val_json_file", "val_image_dir", "val_panoptic_dir")}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the project knows of one dataset.

  Attributes:
    name: the `data.dataset` value.
    task: the default task ("semantic", "instance", "panoptic", "video_instance" or
      "video_panoptic").
    augmentation: the official training recipe (`transforms.AUGMENTATIONS`).
    eval_size: the official test-time resize (shortest edge, longest cap); (None, None)
      keeps the size.
    evaluators: per task, the metrics the official config reports (`evaluation.EVALUATORS`
      names); a task not listed reports its own metric only.
    builder: `builder(data_cfg, build_kwargs) -> tfds builder` (prepared or not), or None for
      a dataset generated in memory (nothing to prepare).
    categories: `categories(data_cfg) -> [{"id", "name", "isthing", ...}]`, contiguous ids.
    memory_source: `memory_source(data_cfg, split)` for in-memory datasets.
  """
  name: str
  task: str
  augmentation: str
  eval_size: tuple[int | None, int | None]
  categories: Callable[[Any], list[dict]]
  builder: Callable[[Any, dict], Any] | None = None
  memory_source: Callable[[Any, str], Any] | None = None
  evaluators: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)


# ------------------------------------------------------------------------------------------
# The builders and category lists of each dataset
# ------------------------------------------------------------------------------------------


def _synthetic_source(data_cfg, split: str):
  """Images of their own varied sizes (the training `image_size` is the crop, not theirs)."""
  from m2f_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  return synthetic.SyntheticSource(
      data_cfg.num_train if split == "train" else data_cfg.num_val, split=split,
      seed=data_cfg.seed)


def _synthetic_categories(data_cfg) -> list[dict]:
  del data_cfg
  from m2f_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  return [{k: c[k] for k in ("id", "name", "isthing")} for c in synthetic.CATEGORIES]


def _synthetic_video_source(data_cfg, split: str):
  """Clips of their own sizes and lengths (the training `image_size` is the crop)."""
  from m2f_jax.data import synthetic_video  # pylint: disable=g-import-not-at-top
  return synthetic_video.SyntheticVideoSource(
      data_cfg.num_train if split == "train" else data_cfg.num_val, split=split,
      seed=data_cfg.seed, num_frames=data_cfg.get("video_frames") or None,
      image_size=data_cfg.get("video_size") or None)


def _synthetic_video_categories(data_cfg) -> list[dict]:
  """"video_instance": the thing classes (ids 0..3 in the image dataset too), the tracks'
  categories; "video_panoptic": every class of the image dataset (things 0..3, stuff)."""
  found = _synthetic_categories(data_cfg)
  if data_cfg.get("task") == "video_panoptic":
    return found
  return [c for c in found if c["isthing"]]


def _ytvis_builder(release: str):
  def build(data_cfg, build_kwargs):
    from m2f_jax.data.builders import ytvis  # pylint: disable=g-import-not-at-top
    return ytvis.Ytvis(
        config=ytvis.make_config(release, int(data_cfg.get("heldout_videos") or 0),
                                 **build_kwargs["config"]),
        **build_kwargs["builder"])
  return build


def _ytvis_categories(data_cfg) -> list[dict]:
  """From the prepared dataset, else from the release's JSON in data.source_dir."""
  builder = tfds_builder(data_cfg)
  if builder.is_prepared():
    return [dict(c) for c in builder.info.metadata["categories"]]
  from m2f_jax.data.builders import ytvis  # pylint: disable=g-import-not-at-top
  if not data_cfg.get("source_dir"):
    raise ValueError(f"data.dataset={data_cfg.dataset!r} is not prepared and data.source_dir "
                     "is not set: no category list")
  path = ytvis.json_path(data_cfg.source_dir)
  with open(path) as f:
    return ytvis.categories_from_json(json.load(f), path)


def _vipseg_builder(data_cfg, build_kwargs):
  del data_cfg
  from m2f_jax.data.builders import vipseg  # pylint: disable=g-import-not-at-top
  return vipseg.Vipseg(config=vipseg.make_config(**build_kwargs["config"]),
                       **build_kwargs["builder"])


def _vipseg_categories(data_cfg) -> list[dict]:
  """From the prepared dataset, else from a split's JSON in data.source_dir."""
  builder = tfds_builder(data_cfg)
  if builder.is_prepared():
    return [dict(c) for c in builder.info.metadata["categories"]]
  from m2f_jax.data.builders import vipseg  # pylint: disable=g-import-not-at-top
  if not data_cfg.get("source_dir"):
    raise ValueError("data.dataset='vipseg' is not prepared and data.source_dir is not set: "
                     "no category list")
  path = next(iter(vipseg.split_jsons(data_cfg.source_dir).values()))
  with open(path) as f:
    return vipseg.categories_from_json(json.load(f), path)


def _coco_builder(panoptic: bool):
  def build(data_cfg, build_kwargs):
    del data_cfg
    from m2f_jax.data.builders import coco  # pylint: disable=g-import-not-at-top
    cls = coco.CocoPanoptic if panoptic else coco.CocoInstance
    return cls(config=coco.CocoConfig(name=coco.RELEASE, **build_kwargs["config"]),
               **build_kwargs["builder"])
  return build


def _coco_categories(panoptic: bool):
  def categories(data_cfg) -> list[dict]:
    del data_cfg
    from m2f_jax.data.builders import coco  # pylint: disable=g-import-not-at-top
    return [dict(c) for c in (coco.PANOPTIC_CATEGORIES if panoptic
                              else coco.INSTANCE_CATEGORIES)]
  return categories


def coco_format_files(data_cfg) -> dict[str, dict[str, str]]:
  """{split: {"json_file", "image_dir", "panoptic_dir"}} for the splits with a JSON."""
  files = {}
  for split, fields in _COCO_FORMAT_FIELDS.items():
    if data_cfg.get(fields[0]):
      files[split] = {key: data_cfg.get(field) or ""
                      for key, field in zip(("json_file", "image_dir", "panoptic_dir"), fields)}
  return files


def _coco_format_builder(data_cfg, build_kwargs):
  from m2f_jax.data.builders import coco  # pylint: disable=g-import-not-at-top
  files = coco_format_files(data_cfg)
  panoptic = any(f["panoptic_dir"] for f in files.values())
  name = data_cfg.get("dataset_name")
  if not name:
    paths = "|".join(f"{split}={f['json_file']}" for split, f in sorted(files.items()))
    name = "custom_" + hashlib.sha1(paths.encode()).hexdigest()[:10]
  cls = coco.CocoPanoptic if panoptic else coco.CocoInstance
  return cls(config=coco.CocoConfig(name=name, files=files, **build_kwargs["config"]),
             **build_kwargs["builder"])


def _coco_format_categories(data_cfg) -> list[dict]:
  """From the prepared dataset, else from its JSON."""
  builder = tfds_builder(data_cfg)
  if builder.is_prepared():
    return [dict(c) for c in builder.info.metadata["categories"]]
  from m2f_jax.data.builders import coco  # pylint: disable=g-import-not-at-top
  files = coco_format_files(data_cfg)
  if not files:
    raise ValueError("data.dataset='coco_format' is not prepared and names no JSON "
                     "(data.json_file / data.val_json_file): no category list")
  json_file = next(iter(files.values()))["json_file"]
  with open(json_file) as f:
    dataset_json = json.load(f)
  return coco.categories_from_json(dataset_json, json_file,
                                   panoptic=any(f["panoptic_dir"] for f in files.values()))


def _ade20k_builder(data_cfg, build_kwargs):
  del data_cfg
  from m2f_jax.data import builders  # pylint: disable=g-import-not-at-top
  from m2f_jax.data.builders import ade20k  # pylint: disable=g-import-not-at-top
  return ade20k.Ade20kSceneParsing(
      config=builders.BuildConfig(name="default", **build_kwargs["config"]),
      **build_kwargs["builder"])


def _ade20k_categories(data_cfg) -> list[dict]:
  del data_cfg
  from m2f_jax.data.builders import ade20k  # pylint: disable=g-import-not-at-top
  return [dict(c) for c in ade20k.CATEGORIES]


def _cityscapes_builder(data_cfg, build_kwargs):
  del data_cfg
  from m2f_jax.data import builders  # pylint: disable=g-import-not-at-top
  from m2f_jax.data.builders import cityscapes  # pylint: disable=g-import-not-at-top
  return cityscapes.CityscapesFine(
      config=builders.BuildConfig(name="default", **build_kwargs["config"]),
      **build_kwargs["builder"])


def _cityscapes_categories(data_cfg) -> list[dict]:
  del data_cfg
  from m2f_jax.data.builders import cityscapes  # pylint: disable=g-import-not-at-top
  return [dict(c) for c in cityscapes.CATEGORIES]


# ------------------------------------------------------------------------------------------
# The registry
# ------------------------------------------------------------------------------------------

DATASETS: dict[str, DatasetSpec] = {s.name: s for s in (
    DatasetSpec(name="synthetic", task="panoptic", augmentation="synthetic",
                eval_size=(None, None), categories=_synthetic_categories,
                memory_source=_synthetic_source, evaluators={"panoptic": ALL_METRICS}),
    DatasetSpec(name="coco_panoptic", task="panoptic", augmentation="coco_lsj",
                eval_size=(800, 1333), categories=_coco_categories(panoptic=True),
                builder=_coco_builder(panoptic=True), evaluators={"panoptic": ALL_METRICS}),
    DatasetSpec(name="coco_instance", task="instance", augmentation="coco_lsj",
                eval_size=(800, 1333), categories=_coco_categories(panoptic=False),
                builder=_coco_builder(panoptic=False)),
    DatasetSpec(name="ade20k", task="semantic", augmentation="ade20k_semantic",
                eval_size=(512, 2048), categories=_ade20k_categories,
                builder=_ade20k_builder),
    DatasetSpec(name="cityscapes", task="semantic", augmentation="cityscapes",
                eval_size=(1024, 2048), categories=_cityscapes_categories,
                builder=_cityscapes_builder,
                # The official panoptic config reports mIoU, PQ and instance AP (Cityscapes'
                # own AP there; COCO-style mask AP here, over the panoptic thing segments).
                evaluators={"panoptic": ALL_METRICS}),
    # Video instance segmentation: moving shapes (thing tracks) over textured stuff.
    # Video panoptic segmentation (data.task="video_panoptic"): every class; VPQ / STQ and the
    # video AP of its things.
    DatasetSpec(name="synthetic_video", task="video_instance", augmentation="synthetic",
                eval_size=(None, None), categories=_synthetic_video_categories,
                memory_source=_synthetic_video_source,
                evaluators={"video_panoptic": VIDEO_PANOPTIC}),
    # VIPSeg (VIPSeg_720P), video panoptic. Test size: DVIS's VIPSeg configs (zhang-tao-whu/DVIS
    # configs/VIPSeg/MinVIS_R50_720p.yaml: INPUT.MIN_SIZE_TEST 720, MAX_SIZE_TEST Detectron2's
    # default 1333), i.e. the 720p frames at their own size.
    DatasetSpec(name="vipseg", task="video_panoptic", augmentation="ytvis",
                eval_size=(720, 1333), categories=_vipseg_categories, builder=_vipseg_builder,
                evaluators={"video_panoptic": VIDEO_PANOPTIC}),
    # YouTube-VIS (the evaluation split: data.heldout_videos train videos held out).
    DatasetSpec(name="ytvis_2019", task="video_instance", augmentation="ytvis",
                eval_size=(360, 1333), categories=_ytvis_categories,
                builder=_ytvis_builder("2019")),
    DatasetSpec(name="ytvis_2021", task="video_instance", augmentation="ytvis",
                eval_size=(360, 1333), categories=_ytvis_categories,
                builder=_ytvis_builder("2021")),
    # Your own data in COCO panoptic or instance format (its own categories).
    # Panoptic data reports mIoU, PQ and mask AP (of its thing segments), as COCO panoptic.
    DatasetSpec(name="coco_format", task="panoptic", augmentation="coco_lsj",
                eval_size=(800, 1333), categories=_coco_format_categories,
                builder=_coco_format_builder, evaluators={"panoptic": ALL_METRICS}),
)}


def spec(name: str) -> DatasetSpec:
  """The spec of dataset `name`; a ValueError listing the known ones otherwise."""
  if name not in DATASETS:
    raise ValueError(f"unknown data.dataset {name!r}: use one of {sorted(DATASETS)}")
  return DATASETS[name]


# ------------------------------------------------------------------------------------------
# What the rest of the project calls
# ------------------------------------------------------------------------------------------


def tfds_builder(data_cfg):
  """The tfds builder of `data.dataset`, prepared or not."""
  s = spec(data_cfg.dataset)
  if s.builder is None:
    raise ValueError(f"data.dataset={s.name!r} is generated in memory and has no tfds builder")
  build_kwargs = {
      "builder": dict(data_dir=data_cfg.get("data_dir") or None, file_format="array_record"),
      "config": dict(on_error=data_cfg.get("on_error") or "fail",
                     num_workers=int(data_cfg.get("prepare_workers") or 8)),
  }
  return s.builder(data_cfg, build_kwargs)


def data_source(data_cfg, split: str):
  """The random-access source of `split` ("train" or "validation") for `data.dataset`."""
  s = spec(data_cfg.dataset)
  if s.memory_source is not None:
    return s.memory_source(data_cfg, split)
  builder = tfds_builder(data_cfg)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"data.dataset={s.name!r} is not prepared under {builder.data_dir} "
        f"(data.data_dir={data_cfg.get('data_dir', '')!r}): build it once with "
        "`python -m m2f_jax.data.prepare --config CONFIG --config.data.source_dir=...` "
        "(from Python: `m2f_jax.data.prepare_dataset(config.data)`)"
        + (" (data.json_file, ... for coco_format)" if s.name == "coco_format" else ""))
  sources = builder.as_data_source()
  if split not in sources:
    raise ValueError(f"{builder.name}/{builder.builder_config.name} has no split {split!r}; it "
                     f"has {sorted(sources)}")
  return sources[split]


def prepare_dataset(data_cfg):
  """Builds the tfds dataset of `data.dataset` unless it is prepared; returns its builder.

  Reads the user's local copy (`data.source_dir`, or for coco_format `data.json_file`,
  `data.image_dir`, ...): nothing is downloaded. Raises FileNotFoundError / ValueError naming
  the missing path or field, and `builders.BadInputError` naming a bad source file (with
  `data.on_error="fail"`). Run it once, on one process, before training. Datasets generated
  in memory need nothing: returns None.
  """
  if spec(data_cfg.dataset).builder is None:
    return None
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

  From `data.categories` when the config stores them (every trained or exported model's
  config does: `config_lib.resolve_categories`), else from `data.class_names` (+ optional
  `data.isthing`; converted checkpoints carry their label names), else from the dataset
  `data.dataset`, else generic names `class_{i}` for `num_classes`. Without thing/stuff
  information every class counts as a thing (panoptic inference then merges no stuff
  segments).
  """
  stored = data_cfg.get("categories")
  if stored:
    return [dict(c) for c in stored]
  names = data_cfg.get("class_names")
  if names:
    isthing = data_cfg.get("isthing") or [1] * len(names)
    return [{"id": i, "name": n, "isthing": int(t)} for i, (n, t) in enumerate(zip(names, isthing))]
  dataset = data_cfg.get("dataset")
  if dataset in DATASETS:
    return DATASETS[dataset].categories(data_cfg)
  if num_classes is None:
    raise ValueError(f"no category list for data.dataset={dataset!r}: set "
                     "data.class_names (and data.isthing) in the config")
  return [{"id": i, "name": f"class_{i}", "isthing": 1} for i in range(num_classes)]


def complete_categories(found: list[dict]) -> list[dict]:
  """`categories(...)` with every key outputs need: "id" (contiguous), "dataset_id" (the
  dataset's own id; default the index), "name", "isthing" (0/1), "color" ([R, G, B]; the
  dataset's, else a palette's)."""
  from m2f_jax import visualize  # pylint: disable=g-import-not-at-top
  palette = visualize.segment_colors(len(found))
  out = []
  for i, c in enumerate(found):
    if int(c.get("id", i)) != i:
      raise ValueError(f"category {c} is number {i} of the list: ids must be contiguous")
    color = c.get("color")
    out.append({"id": i, "dataset_id": int(c.get("dataset_id", i)), "name": str(c["name"]),
                "isthing": int(bool(c.get("isthing", 1))),
                "color": [int(v) for v in (color if color is not None else palette[i])]})
  return out


def categories_source(data_cfg) -> str:
  """Where `categories(data_cfg)` reads from, for messages."""
  if data_cfg.get("categories"):
    return "the config's data.categories"
  if data_cfg.get("class_names"):
    return "the config's data.class_names"
  if data_cfg.get("dataset") == "coco_format":
    files = coco_format_files(data_cfg)
    if files:
      return next(iter(files.values()))["json_file"]
  return f"data.dataset={data_cfg.get('dataset')!r}"
