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
