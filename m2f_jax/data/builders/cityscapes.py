"""Cityscapes gtFine: 19 classes (11 stuff, 8 things), semantic and panoptic segmentation.

Follows cityscapesScripts (`helpers/labels.py`, `preparation/createTrainIdLabelImgs.py`,
`createPanopticImgs.py` with train ids) as Detectron2 registers `cityscapes_fine_*`:

- semantic: `*_gtFine_labelIds.png` mapped to the 19 train ids, 255 for every other label.
- panoptic: from `*_gtFine_instanceIds.png`, where a value v >= 1000 is instance v % 1000 of
  label v // 1000 and a value v < 1000 is label v without instance. Every value whose label
  has a train id becomes a segment with id v; its label has instances -> a thing, and a thing
  region without instance id (v < 1000, e.g. a group of people) is a crowd segment. Other
  labels (void, and caravan / trailer, which have instances but no train id) are void (0).
  Instance targets come from the thing segments (`targets.make_targets`).

Source layout (the manual dir, `data.source_dir`):
  leftImg8bit/{train,val}/CITY/CITY_*_leftImg8bit.png
  gtFine/{train,val}/CITY/CITY_*_gtFine_labelIds.png, CITY_*_gtFine_instanceIds.png

Examples: "image", "semantic" [H, W, 1], "panoptic" (COCO RGB encoding), "segments_info",
"image_id" (index in the sorted file list), "file_name" (CITY/CITY_*_leftImg8bit.png).
"""

from __future__ import annotations

import os

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from m2f_jax.data import builders
from m2f_jax.data.panoptic_png import id2rgb

SPLITS = {"train": "train", "validation": "val"}  # split -> Cityscapes folder name
_IMAGE_SUFFIX = "_leftImg8bit.png"

# (label id, train id, name) of the 19 evaluated classes; train ids 11.. are things.
_CLASSES = (
    (7, 0, "road"), (8, 1, "sidewalk"), (11, 2, "building"), (12, 3, "wall"), (13, 4, "fence"),
    (17, 5, "pole"), (19, 6, "traffic light"), (20, 7, "traffic sign"), (21, 8, "vegetation"),
    (22, 9, "terrain"), (23, 10, "sky"), (24, 11, "person"), (25, 12, "rider"), (26, 13, "car"),
    (27, 14, "truck"), (28, 15, "bus"), (31, 16, "train"), (32, 17, "motorcycle"),
    (33, 18, "bicycle"))
CATEGORIES = tuple({"id": train_id, "name": name, "isthing": int(train_id >= 11),
                    "dataset_id": label_id} for label_id, train_id, name in _CLASSES)
NUM_LABELS = 34  # label ids 0..33 (cityscapesScripts' labels.py; -1, license plate, is unused)
TRAIN_ID = np.full(NUM_LABELS, builders.IGNORE_LABEL, np.uint8)  # label id -> train id
for _label_id, _train_id, _ in _CLASSES:
  TRAIN_ID[_label_id] = _train_id
_KNOWN_LABELS = np.arange(256) < NUM_LABELS


class CityscapesFine(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Cityscapes gtFine, 19 classes: image, semantic map, panoptic ids and segments."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Unzip leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip into the manual dir
(data.source_dir), which then holds
  leftImg8bit/{train,val}/CITY/*_leftImg8bit.png
  gtFine/{train,val}/CITY/*_gtFine_labelIds.png, *_gtFine_instanceIds.png
Nothing is downloaded."""
  # tfds looks a builder's file up with importlib_resources (not installed); it is known.
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        homepage="https://www.cityscapes-dataset.com/",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "semantic": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
            # COCO's RGB encoding of segment ids: id = R + 256 G + 256^2 B.
            "panoptic": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "segments_info": tfds.features.Sequence({
                "id": np.int32, "category_id": np.int32,
                "iscrowd": np.bool_, "isthing": np.bool_}),
            "image_id": np.int64,
            "file_name": tfds.features.Text(),
        }),
        metadata=builders.metadata(categories=list(CATEGORIES)),
    )

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    splits = {}
    for split, folder in SPLITS.items():
      image_dir = builders.require(root / "leftImg8bit" / folder, f"Cityscapes {split} images")
      gt_dir = builders.require(root / "gtFine" / folder, f"Cityscapes {split} gtFine")
      splits[split] = self._generate_examples(split, image_dir, gt_dir)
    return splits

  def _generate_examples(self, split, image_dir, gt_dir):
    names = sorted(os.path.join(city, n) for city in os.listdir(image_dir)
                   if os.path.isdir(os.path.join(image_dir, city))
                   for n in os.listdir(os.path.join(image_dir, city)) if n.endswith(_IMAGE_SUFFIX))

    def process(item, notes):
      del notes
      index, name = item
      image, size = builders.read_image(os.path.join(image_dir, name))
      stem = os.path.join(gt_dir, name[:-len(_IMAGE_SUFFIX)])
      maps = {}
      for kind in ("labelIds", "instanceIds"):
        path = f"{stem}_gtFine_{kind}.png"
        if not os.path.exists(path):
          raise builders.BadInputError(path, f"missing file: image {name} has no {kind}")
        maps[kind] = builders.read_label_map(path)  # [H, W]
        builders.check_size(path, maps[kind].shape, size, f"{kind} map")
      builders.check_labels(f"{stem}_gtFine_labelIds.png", maps["labelIds"], _KNOWN_LABELS,
                            "label ids")
      instance_ids = maps["instanceIds"]
      values = np.unique(instance_ids)
      labels = np.where(values >= 1000, values // 1000, values)
      if (labels >= NUM_LABELS).any():
        raise builders.BadInputError(
            f"{stem}_gtFine_instanceIds.png",
            f"unknown label ids {sorted(set(labels[labels >= NUM_LABELS].tolist()))[:10]} "
            f"(known: 0..{NUM_LABELS - 1})")
      train_ids = TRAIN_ID[labels]
      keep = train_ids != builders.IGNORE_LABEL
      segment_ids, category = values[keep].astype(np.int32), train_ids[keep].astype(np.int32)
      isthing = category >= 11
      panoptic = np.where(np.isin(instance_ids, segment_ids), instance_ids, 0)  # [H, W]
      return name, {
          "image": image,
          "semantic": builders.encode_png(TRAIN_ID[maps["labelIds"]]),
          "panoptic": builders.encode_png(id2rgb(panoptic)),
          "segments_info": {"id": segment_ids, "category_id": category, "isthing": isthing,
                            "iscrowd": isthing & (segment_ids < 1000)},
          "image_id": index,
          "file_name": name,
      }

    return builders.generate_examples(self, split, enumerate(names), process)
