"""COCO 2017 panoptic and instance segmentation, and any dataset in those two formats.

`CocoPanoptic` reads COCO panoptic annotations (a JSON of `images`, `annotations` with
`segments_info`, `categories`, and a folder of RGB-encoded PNGs, id = R + 256 G + 256^2 B);
`CocoInstance` reads COCO instance annotations (a JSON of `images`, `annotations` with
polygon or RLE `segmentation` and `iscrowd`, `categories`). Both follow Detectron2's loaders
(`detectron2/data/datasets/coco.py`, `coco_panoptic.py`) and the official Mask2Former
registration (`register_coco_panoptic_annos_semseg.py`):

- Category ids are mapped to contiguous class indices in the order of the categories sorted
  by id (COCO panoptic: 80 things, then 53 stuff, 133 in all; instances: the 80 things);
  `info.metadata["categories"]` keeps each one's original id as "dataset_id".
- Panoptic examples carry the semantic map every segment paints with its class (crowd
  segments too, as `prepare_coco_semantic_annos_from_panoptic_annos.py`), 255 elsewhere.
- Instance masks are rasterized with pycocotools (polygons merged per instance, compressed
  or uncompressed RLE decoded); crowd annotations are kept with `iscrowd` True. An instance
  whose polygons all have fewer than 3 points is dropped (as Detectron2 drops it) and counted
  in `info.metadata["dropped_annotations"]`. An image without annotations is kept.

The builder config `CocoConfig(name="2017")` reads the 2017 release from the manual dir (see
`MANUAL_DOWNLOAD_INSTRUCTIONS`); any other name with `files` set reads a user's dataset:

  CocoConfig(name="my_data", files={
      "train": {"json_file": ".../train.json", "image_dir": ".../images",
                "panoptic_dir": ".../panoptic_train"},   # panoptic format only
      "validation": {...}})

whose categories (its JSON's, the same in every split) are stored in the metadata.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from typing import Any

from etils import epath
import numpy as np
from pycocotools import mask as mask_util
import tensorflow_datasets as tfds

from m2f_jax.data import builders

RELEASE = "2017"
SPLITS = {"train": "train2017", "validation": "val2017"}  # split -> COCO folder name

# (COCO category id, name), sorted by id; ids <= 90 are things (panopticapi's categories).
_COCO_CATEGORIES = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"),
    (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"),
    (13, "stop sign"), (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"),
    (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"),
    (25, "giraffe"), (27, "backpack"), (28, "umbrella"), (31, "handbag"), (32, "tie"),
    (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"), (37, "sports ball"),
    (38, "kite"), (39, "baseball bat"), (40, "baseball glove"), (41, "skateboard"),
    (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"),
    (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"),
    (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"),
    (65, "bed"), (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"),
    (75, "remote"), (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"),
    (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"),
    (87, "scissors"), (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"), (92, "banner"),
    (93, "blanket"), (95, "bridge"), (100, "cardboard"), (107, "counter"), (109, "curtain"),
    (112, "door-stuff"), (118, "floor-wood"), (119, "flower"), (122, "fruit"), (125, "gravel"),
    (128, "house"), (130, "light"), (133, "mirror-stuff"), (138, "net"), (141, "pillow"),
    (144, "platform"), (145, "playingfield"), (147, "railroad"), (148, "river"), (149, "road"),
    (151, "roof"), (154, "sand"), (155, "sea"), (156, "shelf"), (159, "snow"), (161, "stairs"),
    (166, "tent"), (168, "towel"), (171, "wall-brick"), (175, "wall-stone"), (176, "wall-tile"),
    (177, "wall-wood"), (178, "water-other"), (180, "window-blind"), (181, "window-other"),
    (184, "tree-merged"), (185, "fence-merged"), (186, "ceiling-merged"), (187, "sky-other-merged"),
    (188, "cabinet-merged"), (189, "table-merged"), (190, "floor-other-merged"),
    (191, "pavement-merged"), (192, "mountain-merged"), (193, "grass-merged"), (194, "dirt-merged"),
    (195, "paper-merged"), (196, "food-other-merged"), (197, "building-other-merged"),
    (198, "rock-merged"), (199, "wall-other-merged"), (200, "rug-merged"),
)
PANOPTIC_CATEGORIES = tuple(
    {"id": i, "name": name, "isthing": int(coco_id <= 90), "dataset_id": coco_id}
    for i, (coco_id, name) in enumerate(_COCO_CATEGORIES))
INSTANCE_CATEGORIES = tuple(
    {"id": i, "name": name, "isthing": 1, "dataset_id": coco_id}
    for i, (coco_id, name) in enumerate(c for c in _COCO_CATEGORIES if c[0] <= 90))

_LAYOUT = """\
Put (or link) the COCO 2017 release in the manual dir (data.source_dir), which then holds
  train2017/*.jpg, val2017/*.jpg                     (train2017.zip, val2017.zip)
  annotations/{kind}_train2017.json, annotations/{kind}_val2017.json{pngs}
Nothing is downloaded."""
_PANOPTIC_PNGS = """
  panoptic_train2017/*.png, panoptic_val2017/*.png   (the zips inside
      panoptic_annotations_trainval2017.zip; also found under annotations/)
  annotations/instances_val2017.json (optional: when present, validation examples carry
      its instance masks, the ground truth of Detectron2's instance AP of panoptic models)"""
_FIELDS = ("json_file", "image_dir", "panoptic_dir")
_INSTANCE_FEATURES = tfds.features.Sequence({
    "masks": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
    "category_id": np.int32, "iscrowd": np.bool_})


@dataclasses.dataclass(eq=False)
class CocoConfig(builders.BuildConfig):
  """`files`: None for the 2017 release (config name "2017", read from the manual dir), else
  {split: {"json_file", "image_dir", "panoptic_dir" (panoptic format only)}}."""
  files: dict[str, dict[str, str]] | None = None


def categories_from_json(dataset: dict[str, Any], path: str, *,
                         panoptic: bool) -> list[dict[str, Any]]:
  """A COCO JSON's categories -> [{"id" (contiguous), "name", "isthing", "dataset_id"}].

  Sorted by their id; the instance format has no `isthing` (every category is a thing). A
  category's "color" ([R, G, B], as COCO panoptic's) is kept when it has one.
  """
  found = dataset.get("categories")
  if not found:
    raise ValueError(f"{path} has no 'categories' list")
  for c in found:
    if not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c:
      raise ValueError(f"{path}: category {c!r} needs an integer 'id' and a 'name'")
  ids = [c["id"] for c in found]
  if len(set(ids)) != len(ids):
    repeated = sorted(i for i in set(ids) if ids.count(i) > 1)
    raise ValueError(f"{path}: repeated category ids {repeated}; each category needs its own")
  out = []
  for i, c in enumerate(sorted(found, key=lambda c: c["id"])):
    out.append({"id": i, "name": str(c["name"]), "dataset_id": int(c["id"]),
                "isthing": int(c.get("isthing", 1)) if panoptic else 1})
    if isinstance(c.get("color"), (list, tuple)) and len(c["color"]) == 3:
      out[-1]["color"] = [int(v) for v in c["color"]]
  return out


def _load_json(path: str) -> dict[str, Any]:
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e})") from None


def _split_files(builder, dl_manager, *, panoptic: bool) -> dict[str, dict[str, str]]:
  """{split: {"json_file", "image_dir"[, "panoptic_dir"]}}, each checked to exist."""
  config = builder.builder_config
  fields = _FIELDS if panoptic else _FIELDS[:2]
  if config.files is not None:
    files = {}
    for split, given in config.files.items():
      missing = [f for f in fields if not given.get(f)]
      if missing:
        raise ValueError(f"{builder.name} config {config.name!r}: split {split!r} names no "
                         f"{missing}; a COCO {'panoptic' if panoptic else 'instance'} dataset "
                         f"needs {list(fields)}")
      files[split] = {f: builders.require(given[f], f"{split} {f}") for f in fields}
    return files
  if config.name != RELEASE:
    raise ValueError(f"{builder.name} config {config.name!r} has no `files`; only the config "
                     f"{RELEASE!r} reads the COCO release")
  root = dl_manager.manual_dir
  kind = "panoptic" if panoptic else "instances"
  files = {}
  for split, folder in SPLITS.items():
    files[split] = {
        "json_file": builders.require(root / "annotations" / f"{kind}_{folder}.json",
                                      f"COCO {kind} annotations of {split}"),
        "image_dir": builders.require(root / folder, f"COCO {split} images"),
    }
    if panoptic:
      candidates = [root / f"panoptic_{folder}", root / "annotations" / f"panoptic_{folder}"]
      found = [c for c in candidates if c.is_dir()]
      if not found:
        raise FileNotFoundError(
            f"COCO panoptic PNGs of {split} not found: neither {candidates[0]} nor "
            f"{candidates[1]} exists (unzip annotations/panoptic_{folder}.zip there)")
      files[split]["panoptic_dir"] = os.fspath(found[0])
      instances = root / "annotations" / f"instances_{folder}.json"
      if split == "validation" and instances.is_file():
        files[split]["instances_json"] = os.fspath(instances)
  return files


def _categories(builder, files, datasets, *, panoptic: bool) -> list[dict[str, Any]]:
  """The release's categories, or the user's (every split's JSON must agree)."""
  if builder.builder_config.files is None:
    return list(PANOPTIC_CATEGORIES if panoptic else INSTANCE_CATEGORIES)
  found = {split: categories_from_json(datasets[split], files[split]["json_file"],
                                       panoptic=panoptic) for split in files}
  first, *others = found
  for split in others:
    if found[split] != found[first]:
      raise ValueError(f"the categories of {files[split]['json_file']} differ from those of "
                       f"{files[first]['json_file']}; every split needs the same list")
  builder.info.metadata["categories"] = found[first]
  return found[first]


def _check_declared_size(path: str, image_info: dict[str, Any], size: tuple[int, int],
                         json_file: str) -> None:
  declared = (image_info.get("height"), image_info.get("width"))
  if None not in declared and tuple(declared) != tuple(size):
    raise builders.BadInputError(
        path, f"the image is {size[0]}x{size[1]} (HxW) but {json_file} says "
              f"{declared[0]}x{declared[1]}")


def _malformed_as_bad_input(json_file: str, process):
  """`process`, raising a `BadInputError` naming the JSON for an entry missing a field."""
  def wrapped(item, notes):
    try:
      return process(item, notes)
    except (KeyError, TypeError) as e:
      index, image_info = item
      name = image_info.get("file_name", f"#{index}") if isinstance(image_info, dict) else index
      raise builders.BadInputError(
          json_file, f"image {name}: malformed entry ({type(e).__name__}: {e})") from e
  return wrapped


def _image_id(image_info: dict[str, Any], index: int) -> int:
  """The JSON's integer image id, else the image's index in the JSON."""
  image_id = image_info.get("id")
  return int(image_id) if isinstance(image_id, (int, np.integer)) else index


def _info(builder, *, panoptic: bool, homepage: str,
          annotations: dict[str, tfds.features.FeatureConnector]) -> tfds.core.DatasetInfo:
  """The DatasetInfo of both builders: the image, `annotations`, ids, the categories."""
  release = PANOPTIC_CATEGORIES if panoptic else INSTANCE_CATEGORIES
  return tfds.core.DatasetInfo(
      builder=builder,
      description=__doc__,
      homepage=homepage,
      features=tfds.features.FeaturesDict({
          # JPEG files are kept as they are; other images are stored as RGB PNG.
          "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
          **annotations,
          "image_id": np.int64,
          "file_name": tfds.features.Text(),
      }),
      metadata=builders.metadata(
          categories=list(release) if builder.builder_config.files is None else []),
  )


def _split_generators(builder, dl_manager, *, panoptic: bool):
  """{split: examples} of both builders: files checked, JSONs read, categories agreed."""
  files = _split_files(builder, dl_manager, panoptic=panoptic)
  datasets = {split: _load_json(f["json_file"]) for split, f in files.items()}
  categories = _categories(builder, files, datasets, panoptic=panoptic)
  return {split: builder._generate_examples(split, files[split], datasets[split], categories)  # pylint: disable=protected-access
          for split in files}


def _decode_instances(annotations, height: int, width: int, *, by_dataset_id, json_file: str,
                      file_name: str, notes: list[str]) -> dict[str, Any]:
  """One image's COCO instance annotations -> PNG masks, contiguous classes, crowd flags.

  Polygons are merged per instance and RLEs (compressed or not) decoded with pycocotools;
  an instance whose polygons all have fewer than 3 points is dropped and noted (as
  Detectron2 drops it).
  """
  masks, category, crowd = [], [], []
  for a in annotations:
    where = f"image {file_name}: annotation {a.get('id')}"
    if a.get("category_id") not in by_dataset_id:
      raise builders.BadInputError(
          json_file, f"{where} has the unknown category_id {a.get('category_id')} (not "
                     f"among its {len(by_dataset_id)} categories)")
    segmentation = a.get("segmentation")
    if isinstance(segmentation, dict):  # RLE, compressed (str) or not (list of counts)
      size = tuple(segmentation.get("size", ()))
      if len(size) != 2:
        raise builders.BadInputError(json_file, f"{where}: its RLE has no [H, W] 'size'")
      if size != (height, width):
        raise builders.BadInputError(
            json_file, f"{where}: its RLE mask is {size[0]}x{size[1]} (HxW) but the image "
                       f"is {height}x{width}")
      rle = segmentation
      if isinstance(rle.get("counts"), list):
        rle = mask_util.frPyObjects(rle, height, width)
      mask = mask_util.decode(rle)  # [H, W]
    elif isinstance(segmentation, list) and segmentation:  # polygons
      polygons = [p for p in segmentation if len(p) % 2 == 0 and len(p) >= 6]
      if not polygons:
        notes.append(f"{json_file}: {where}: no polygon with 3 or more points")
        continue
      mask = mask_util.decode(mask_util.merge(
          mask_util.frPyObjects(polygons, height, width)))  # [H, W]
    else:
      raise builders.BadInputError(json_file, f"{where} has no segmentation (polygons "
                                              "or RLE)")
    masks.append(builders.encode_png(mask.astype(np.uint8)))
    category.append(by_dataset_id[a["category_id"]]["id"])
    crowd.append(bool(a.get("iscrowd", 0)))
  return {"masks": masks, "category_id": np.array(category, np.int32),
          "iscrowd": np.array(crowd, bool)}


class CocoPanoptic(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """COCO panoptic segmentation: image, panoptic ids, semantic map, segments.

  Validation examples of the release also carry the instances of instances_val2017.json
  when it is there (`has_instances`), which instance AP is computed against, as Detectron2
  does for panoptic models.
  """

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "1.1.0": "Instances of instances_val2017.json on validation examples."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _LAYOUT.format(kind="panoptic", pngs=_PANOPTIC_PNGS)
  # tfds looks a builder's file up with importlib_resources (not installed); it is known.
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return _info(self, panoptic=True, homepage="https://cocodataset.org/#panoptic-2020",
                 annotations={
                     # COCO's RGB encoding of segment ids: id = R + 256 G + 256^2 B.
                     "panoptic": tfds.features.Image(shape=(None, None, 3),
                                                     encoding_format="png"),
                     "semantic": tfds.features.Image(shape=(None, None, 1),
                                                     encoding_format="png"),
                     "segments_info": tfds.features.Sequence({
                         "id": np.int32, "category_id": np.int32,
                         "iscrowd": np.bool_, "isthing": np.bool_}),
                     # From instances_val2017.json when the release has it (validation).
                     "has_instances": np.bool_,
                     "instances": _INSTANCE_FEATURES,
                 })

  def _split_generators(self, dl_manager):
    return _split_generators(self, dl_manager, panoptic=True)

  def _generate_examples(self, split, files, dataset, categories):
    json_file = files["json_file"]
    by_dataset_id = {c["dataset_id"]: c for c in categories}
    annotations = {a["image_id"]: a for a in dataset.get("annotations", [])}
    instances_json = files.get("instances_json")
    per_image = collections.defaultdict(list)
    if instances_json:  # COCO's instance ids are the panoptic things' ids
      for a in _load_json(instances_json).get("annotations", []):
        per_image[a["image_id"]].append(a)

    def process(item, notes):
      index, image_info = item
      file_name = image_info["file_name"]
      image_path = os.path.join(files["image_dir"], file_name)
      annotation = annotations.get(image_info.get("id"))
      if annotation is None:
        raise builders.BadInputError(image_path, f"the image has no annotation in {json_file}")
      image, size = builders.read_image(image_path)
      _check_declared_size(image_path, image_info, size, json_file)
      png_name = annotation.get("file_name") or os.path.splitext(file_name)[0] + ".png"
      png_path = os.path.join(files["panoptic_dir"], png_name)
      ids, panoptic = builders.read_panoptic(png_path)  # [H, W]
      builders.check_size(png_path, ids.shape, size, "panoptic PNG")
      segments = annotation.get("segments_info", [])
      for s in segments:
        if s["category_id"] not in by_dataset_id:
          raise builders.BadInputError(
              json_file, f"image {file_name}: segment {s['id']} has the unknown category_id "
                         f"{s['category_id']} (not among its {len(categories)} categories)")
      segment_ids = np.array([s["id"] for s in segments], np.int32)  # [S]
      if len(np.unique(segment_ids)) != len(segment_ids):
        raise builders.BadInputError(json_file, f"image {file_name}: repeated segment ids "
                                                f"{segment_ids.tolist()}")
      present, inverse = np.unique(ids, return_inverse=True)
      stray = np.setdiff1d(present, np.append(segment_ids, 0))
      if stray.size:
        raise builders.BadInputError(
            png_path, f"segment ids {stray.tolist()[:10]} of the PNG are not in the "
                      f"segments_info of {json_file}")
      category = np.array([by_dataset_id[s["category_id"]]["id"] for s in segments], np.int32)
      isthing = np.array([by_dataset_id[s["category_id"]]["isthing"] for s in segments], bool)
      class_of = dict(zip(segment_ids.tolist(), category.tolist()))
      lut = np.array([class_of.get(i, builders.IGNORE_LABEL) for i in present.tolist()],
                     np.uint8)
      semantic = lut[inverse.reshape(ids.shape)]  # [H, W]
      return file_name, {
          "image": image,
          "panoptic": panoptic,
          "semantic": builders.encode_png(semantic),
          "segments_info": {
              "id": segment_ids, "category_id": category, "isthing": isthing,
              "iscrowd": np.array([bool(s.get("iscrowd", 0)) for s in segments], bool)},
          "has_instances": bool(instances_json),
          "instances": _decode_instances(
              per_image.get(image_info.get("id"), []) if instances_json else [], *size,
              by_dataset_id=by_dataset_id, json_file=instances_json or json_file,
              file_name=file_name, notes=notes),
          "image_id": _image_id(image_info, index),
          "file_name": file_name,
      }

    return builders.generate_examples(self, split, enumerate(dataset.get("images", [])),
                                      _malformed_as_bad_input(json_file, process))


class CocoInstance(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """COCO instance segmentation: image and overlapping instance masks."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _LAYOUT.format(kind="instances", pngs="")
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return _info(self, panoptic=False, homepage="https://cocodataset.org/#detection-2020",
                 annotations={"instances": _INSTANCE_FEATURES})

  def _split_generators(self, dl_manager):
    return _split_generators(self, dl_manager, panoptic=False)

  def _generate_examples(self, split, files, dataset, categories):
    json_file = files["json_file"]
    by_dataset_id = {c["dataset_id"]: c for c in categories}
    per_image = collections.defaultdict(list)
    for a in dataset.get("annotations", []):
      per_image[a["image_id"]].append(a)

    def process(item, notes):
      index, image_info = item
      file_name = image_info["file_name"]
      image_path = os.path.join(files["image_dir"], file_name)
      image, (height, width) = builders.read_image(image_path)
      _check_declared_size(image_path, image_info, (height, width), json_file)
      instances = _decode_instances(per_image.get(image_info.get("id"), []), height, width,
                                    by_dataset_id=by_dataset_id, json_file=json_file,
                                    file_name=file_name, notes=notes)
      return file_name, {
          "image": image,
          "instances": instances,
          "image_id": _image_id(image_info, index),
          "file_name": file_name,
      }

    return builders.generate_examples(self, split, enumerate(dataset.get("images", [])),
                                      _malformed_as_bad_input(json_file, process))
