"""ADE20K SceneParsing (ADEChallengeData2016): 150 classes, semantic segmentation.

Follows Detectron2's `prepare_ade20k_sem_seg.py` / `ade20k_sem_seg_{train,val}`: annotation
label 0 ("other") becomes the ignore label 255 and labels 1..150 become classes 0..149.
Class names are Detectron2's `ADE20K_SEM_SEG_CATEGORIES`; thing / stuff follows the
official Mask2Former ADE20K panoptic registration (`register_ade20k_panoptic.py`).

Source layout (the manual dir, `data.source_dir`: ADEChallengeData2016/ or its parent):
  images/training/ADE_train_*.jpg       annotations/training/ADE_train_*.png
  images/validation/ADE_val_*.jpg       annotations/validation/ADE_val_*.png

Examples: "image" (the JPEG), "semantic" uint8 [H, W, 1] (255 = ignore), "image_id" (index
in the sorted file list), "file_name".
"""

from __future__ import annotations

import os

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from m2f_jax.data import builders

SPLITS = {"train": "training", "validation": "validation"}  # split -> ADE folder name
NUM_CLASSES = 150
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road, route", "bed", "window ", "grass",
    "cabinet", "sidewalk, pavement", "person", "earth, ground", "door", "table", "mountain, mount",
    "plant", "curtain", "chair", "car", "water", "painting, picture", "sofa", "shelf", "house",
    "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock, stone",
    "wardrobe, closet, press", "lamp", "tub", "rail", "cushion", "base, pedestal, stand", "box",
    "column, pillar", "signboard, sign", "chest of drawers, chest, bureau, dresser", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator, icebox", "grandstand, covered stand",
    "path", "stairs", "runway", "case, display case, showcase, vitrine",
    "pool table, billiard table, snooker table", "pillow", "screen door, screen",
    "stairway, staircase", "river", "bridge, span", "bookcase", "blind, screen", "coffee table",
    "toilet, can, commode, crapper, pot, potty, stool, throne", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm, palm tree", "kitchen island", "computer", "swivel chair", "boat",
    "bar", "arcade machine", "hovel, hut, hutch, shack, shanty", "bus", "towel", "light", "truck",
    "tower", "chandelier", "awning, sunshade, sunblind", "street lamp", "booth", "tv", "plane",
    "dirt track", "clothes", "pole", "land, ground, soil",
    "bannister, banister, balustrade, balusters, handrail",
    "escalator, moving staircase, moving stairway", "ottoman, pouf, pouffe, puff, hassock",
    "bottle", "buffet, counter, sideboard", "poster, posting, placard, notice, bill, card", "stage",
    "van", "ship", "fountain", "conveyer belt, conveyor belt, conveyer, conveyor, transporter",
    "canopy", "washer, automatic washer, washing machine", "plaything, toy", "pool", "stool",
    "barrel, cask", "basket, handbasket", "falls", "tent", "bag", "minibike, motorbike", "cradle",
    "oven", "ball", "food, solid food", "step, stair", "tank, storage tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket, cover",
    "sculpture", "hood, exhaust hood", "sconce", "vase", "traffic light", "tray", "trash can",
    "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass, drinking glass", "clock", "flag",
)
_THINGS = frozenset((
    7, 8, 10, 12, 14, 15, 18, 19, 20, 22, 23, 24, 27, 30, 31, 32, 33, 35, 36, 37, 38, 39, 41,
    42, 43, 44, 45, 47, 49, 50, 53, 55, 56, 57, 58, 62, 64, 65, 66, 67, 69, 70, 71, 72, 73, 74,
    75, 76, 78, 80, 81, 82, 83, 85, 86, 87, 88, 89, 90, 92, 93, 95, 97, 98, 102, 103, 104, 107,
    108, 110, 111, 112, 115, 116, 118, 119, 120, 121, 123, 124, 125, 126, 127, 129, 130, 132,
    133, 134, 135, 136, 137, 138, 139, 142, 143, 144, 146, 147, 148, 149))
# "dataset_id" is the label in the annotation PNGs.
CATEGORIES = tuple({"id": i, "name": name, "isthing": int(i in _THINGS), "dataset_id": i + 1}
                   for i, name in enumerate(_NAMES))
_KNOWN_LABELS = np.arange(256) <= NUM_CLASSES  # 0 (other) and 1..150


class Ade20kSceneParsing(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """ADE20K SceneParsing, 150 classes: image and semantic map."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Unzip ADEChallengeData2016.zip into the manual dir (data.source_dir), which then holds
  ADEChallengeData2016/images/{training,validation}/*.jpg
  ADEChallengeData2016/annotations/{training,validation}/*.png
(or point data.source_dir at ADEChallengeData2016/ itself). Nothing is downloaded."""
  # tfds looks a builder's file up with importlib_resources (not installed); it is known.
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        homepage="http://sceneparsing.csail.mit.edu/",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "semantic": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
            "image_id": np.int64,
            "file_name": tfds.features.Text(),
        }),
        metadata=builders.metadata(categories=list(CATEGORIES)),
    )

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    if (root / "ADEChallengeData2016").is_dir():
      root = root / "ADEChallengeData2016"
    splits = {}
    for split, folder in SPLITS.items():
      image_dir = builders.require(root / "images" / folder, f"ADE20K {split} images")
      label_dir = builders.require(root / "annotations" / folder,
                                   f"ADE20K {split} annotations")
      splits[split] = self._generate_examples(split, image_dir, label_dir)
    return splits

  def _generate_examples(self, split, image_dir, label_dir):
    names = sorted(n for n in os.listdir(image_dir) if n.lower().endswith(_IMAGE_SUFFIXES))

    def process(item, notes):
      del notes
      index, name = item
      image, size = builders.read_image(os.path.join(image_dir, name))
      label_path = os.path.join(label_dir, os.path.splitext(name)[0] + ".png")
      if not os.path.exists(label_path):
        raise builders.BadInputError(label_path, f"missing file: image {name} has no annotation")
      labels = builders.read_label_map(label_path)  # [H, W]
      builders.check_size(label_path, labels.shape, size, "annotation")
      builders.check_labels(label_path, labels, _KNOWN_LABELS, "labels")
      semantic = np.where(labels == 0, builders.IGNORE_LABEL, labels - 1).astype(np.uint8)
      return name, {"image": image, "semantic": builders.encode_png(semantic),
                    "image_id": index, "file_name": name}

    return builders.generate_examples(self, split, enumerate(names), process)
