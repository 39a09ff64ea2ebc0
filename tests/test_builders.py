"""tfds builders of COCO (panoptic, instance, user COCO format), ADE20K and Cityscapes.

Tiny sources in each release's layout are written to tmp dirs (32x48 images), built through
`m2f_jax.data.prepare_dataset(config.data)` and read back with `data_source`; every decoded record is
compared with the fixture pixel for pixel. Bad source files are checked with on_error "fail"
(the error names the file) and "skip" (the example is left out and counted).
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import ml_collections
import numpy as np
import PIL.Image
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
tfds = pytest.importorskip("tensorflow_datasets")
mask_util = pytest.importorskip("pycocotools.mask")

from m2f_jax import data  # pylint: disable=g-import-not-at-top
from m2f_jax.data import builders  # pylint: disable=g-import-not-at-top
from m2f_jax.data import pipeline  # pylint: disable=g-import-not-at-top

H, W = 32, 48
# COCO category id -> contiguous index in the 133 panoptic (80 instance) categories.
COCO_CONTIGUOUS = {1: 0, 3: 2, 90: 79, 92: 80, 184: 116, 200: 132}

tfds.disable_progress_bar()
# pycocotools' decode under numpy 2
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _config(tmp_path, dataset, **fields):
  defaults = dict(data_dir=str(tmp_path / "tfds"), source_dir="", on_error="fail",
                  prepare_workers=2)
  return ml_collections.ConfigDict(dict(defaults, dataset=dataset, **fields))


def _save(path, array, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  PIL.Image.fromarray(np.ascontiguousarray(array)).save(path, **kwargs)


def _image(rng):
  return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def _rect(y0, y1, x0, x1):
  mask = np.zeros((H, W), bool)
  mask[y0:y1, x0:x1] = True
  return mask


def _id_to_rgb(ids):
  ids = np.asarray(ids, np.int64)
  return np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)


def _records(source):
  """{file_name: normalized record} of a tfds data source."""
  out = {}
  for i in range(len(source)):
    example = source[i]
    out[example["file_name"].decode()] = pipeline.normalize_record(example)
  return out


def _decoded(path):
  with PIL.Image.open(path) as image:
    return np.asarray(image.convert("RGB"))


def _assert_image(record, path):
  expected = _decoded(path)
  atol = 2 if str(path).endswith(".jpg") else 0  # another JPEG decoder (OpenCV) may read it
  np.testing.assert_allclose(record["image"], expected, atol=atol, rtol=0)
  assert record["image"].dtype == np.uint8


# ------------------------------------------------------------------------------------------
# COCO panoptic
# ------------------------------------------------------------------------------------------


def _panoptic_fixture(rng, categories):
  """Two train images (one with no object) and one validation image: segments and ids."""
  a, b, c, d = categories  # COCO ids: stuff, stuff, thing, thing
  ids = np.zeros((H, W), np.int32)
  ids[:, :24] = 5  # stuff a
  ids[:, 24:] = 70001  # stuff b (id needs the G and B channels)
  ids[4:12, 6:20] = 7  # thing c
  ids[14:30, 30:44] = 8  # thing d
  ids[20:26, 2:10] = 9  # crowd of thing c
  ids[0:3, 40:48] = 0  # void
  val_ids = np.zeros((H, W), np.int32)
  val_ids[8:, :] = 11
  return {
      "train": [
          {"id": 1, "file_name": "000000000001.png", "image": _image(rng), "ids": ids,
           "segments": [(5, a, 0), (70001, b, 0), (7, c, 0), (8, d, 0), (9, c, 1)]},
          {"id": 2, "file_name": "000000000002.jpg", "image": _image(rng),
           "ids": np.zeros((H, W), np.int32), "segments": []},
      ],
      "validation": [
          {"id": 3, "file_name": "000000000003.png", "image": _image(rng), "ids": val_ids,
           "segments": [(11, a, 0)]},
      ],
  }


def _write_panoptic(json_file, image_dir, png_dir, images, categories):
  annotations = []
  for im in images:
    _save(os.path.join(image_dir, im["file_name"]), im["image"], quality=95)
    png = os.path.splitext(im["file_name"])[0] + ".png"
    _save(os.path.join(png_dir, png), _id_to_rgb(im["ids"]))
    if im["segments"] is not None:
      annotations.append({"image_id": im["id"], "file_name": png, "segments_info": [
          {"id": s, "category_id": c, "iscrowd": crowd, "area": 1, "bbox": [0, 0, 1, 1]}
          for s, c, crowd in im["segments"]]})
  os.makedirs(os.path.dirname(json_file), exist_ok=True)
  with open(json_file, "w") as f:
    json.dump({"images": [{"id": im["id"], "file_name": im["file_name"], "height": H,
                           "width": W} for im in images],
               "annotations": annotations, "categories": categories}, f)


def _check_panoptic(records, images, image_dir, contiguous, isthing):
  assert set(records) == {im["file_name"] for im in images}
  for im in images:
    record = records[im["file_name"]]
    assert record["image_id"] == im["id"]
    _assert_image(record, os.path.join(image_dir, im["file_name"]))
    np.testing.assert_array_equal(record["panoptic"], im["ids"])
    info = record["segments_info"]
    np.testing.assert_array_equal(info["id"], [s for s, _, _ in im["segments"]])
    np.testing.assert_array_equal(info["category_id"],
                                  [contiguous[c] for _, c, _ in im["segments"]])
    np.testing.assert_array_equal(info["iscrowd"], [bool(x) for _, _, x in im["segments"]])
    np.testing.assert_array_equal(info["isthing"], [isthing[c] for _, c, _ in im["segments"]])
    semantic = np.full((H, W), 255, np.uint8)  # every segment (crowd too) paints its class
    for s, c, _ in im["segments"]:
      semantic[im["ids"] == s] = contiguous[c]
    np.testing.assert_array_equal(record["semantic"], semantic)


def test_coco_panoptic_release(tmp_path):
  rng = np.random.default_rng(0)
  fixture = _panoptic_fixture(rng, (92, 200, 1, 3))
  source = tmp_path / "coco"
  categories = [{"id": i, "name": f"c{i}", "isthing": int(i <= 90)} for i in (1, 3, 92, 200)]
  for split, folder in (("train", "train2017"), ("validation", "val2017")):
    # Detectron2's layout for train, the zip's (under annotations/) for validation.
    png_dir = (source / f"panoptic_{folder}" if split == "train"
               else source / "annotations" / f"panoptic_{folder}")
    _write_panoptic(str(source / "annotations" / f"panoptic_{folder}.json"),
                    str(source / folder), str(png_dir), fixture[split], categories)
  # instances_val2017.json: the instance ground truth of the validation examples.
  val_image = fixture["validation"][0]
  blob = _rect(2, 10, 4, 14)
  instances_json = {"images": [{"id": val_image["id"], "file_name": val_image["file_name"],
                                "height": H, "width": W}],
                    "categories": [c for c in categories if c["isthing"]],
                    "annotations": [
                        {"id": 1, "image_id": val_image["id"], "category_id": 3, "iscrowd": 0,
                         "segmentation": [[4, 2, 14, 2, 14, 10, 4, 10]], "area": 80.0,
                         "bbox": [4, 2, 10, 8]},
                        {"id": 2, "image_id": val_image["id"], "category_id": 1, "iscrowd": 1,
                         "segmentation": _uncompressed_rle(_rect(20, 30, 2, 12)),
                         "area": 100.0, "bbox": [2, 20, 10, 10]}]}
  with open(source / "annotations" / "instances_val2017.json", "w") as f:
    json.dump(instances_json, f)
  cfg = _config(tmp_path, "coco_panoptic", source_dir=str(source))
  builder = data.prepare_dataset(cfg)
  meta = builder.info.metadata
  assert len(meta["categories"]) == 133
  assert sum(c["isthing"] for c in meta["categories"]) == 80
  for coco_id, index in COCO_CONTIGUOUS.items():
    assert meta["categories"][index]["dataset_id"] == coco_id
  assert meta["skipped"]["train"]["count"] == 0
  assert data.categories(cfg) == [dict(c) for c in meta["categories"]]
  isthing = {1: True, 3: True, 92: False, 200: False}
  for split, folder in (("train", "train2017"), ("validation", "val2017")):
    records = _records(data.data_source(cfg, split))
    _check_panoptic(records, fixture[split], source / folder, COCO_CONTIGUOUS, isthing)
    if split == "train":  # no instances JSON: instance AP falls back to panoptic things
      assert all("instances" not in r for r in records.values())
  assert records  # the image with no object is kept (train, checked above)
  instances = records[val_image["file_name"]]["instances"]
  np.testing.assert_array_equal(instances["masks"],
                                [blob, _rect(20, 30, 2, 12)])
  np.testing.assert_array_equal(instances["category_id"],
                                [COCO_CONTIGUOUS[3], COCO_CONTIGUOUS[1]])
  np.testing.assert_array_equal(instances["iscrowd"], [False, True])
  # Prepared: a second call reads, even without the source.
  assert data.prepare_dataset(_config(tmp_path, "coco_panoptic")).is_prepared()


# ------------------------------------------------------------------------------------------
# COCO instance
# ------------------------------------------------------------------------------------------


def _uncompressed_rle(mask):
  """COCO's uncompressed RLE: run lengths of the column-major mask, starting with zeros."""
  flat = np.asarray(mask, np.uint8).flatten(order="F")
  changes = np.flatnonzero(np.diff(flat)) + 1
  bounds = np.concatenate([[0], changes, [flat.size]])
  counts = np.diff(bounds).tolist()
  if flat[0]:
    counts = [0] + counts
  return {"size": [H, W], "counts": counts}


def _instance_fixture(categories):
  """Instances of two train images (one with none) and one validation image."""
  person, car, other = categories
  yy, xx = np.mgrid[:H, :W]
  blob = (yy - 16) ** 2 / 64 + (xx - 30) ** 2 / 120 <= 1  # an ellipse
  crowd = _rect(20, 30, 2, 12) | _rect(24, 28, 12, 20)
  rle = mask_util.encode(np.asfortranarray(blob.astype(np.uint8)))
  rle = {"size": rle["size"], "counts": rle["counts"].decode()}
  return {
      "train": [
          {"id": 10, "file_name": "a.png", "annotations": [
              # Two polygons of one instance: rectangles with integer corners cover
              # rows y0..y1-1 and columns x0..x1-1.
              {"category_id": person, "iscrowd": 0,
               "segmentation": [[4, 2, 14, 2, 14, 10, 4, 10], [16, 3, 20, 3, 20, 6, 16, 6]],
               "mask": _rect(2, 10, 4, 14) | _rect(3, 6, 16, 20)},
              {"category_id": car, "iscrowd": 0, "segmentation": rle, "mask": blob},
              {"category_id": person, "iscrowd": 1, "segmentation": _uncompressed_rle(crowd),
               "mask": crowd},
              {"category_id": car, "iscrowd": 0, "segmentation": [[1, 1, 5, 5]],
               "mask": None},  # fewer than 3 points: dropped
              {"category_id": car, "iscrowd": 0, "segmentation": [[6, 0, 12, 0, 12, 4, 6, 4]],
               "mask": _rect(0, 4, 6, 12)},  # overlaps the first
          ]},
          {"id": 11, "file_name": "b.jpg", "annotations": []},
      ],
      "validation": [
          {"id": 12, "file_name": "c.png", "annotations": [
              {"category_id": other, "iscrowd": 0,
               "segmentation": [[0, 0, 48, 0, 48, 32, 0, 32]], "mask": np.ones((H, W), bool)}]},
      ],
  }


def _write_instances(json_file, image_dir, images, categories, rng):
  anns, next_id = [], 1
  for im in images:
    _save(os.path.join(image_dir, im["file_name"]), _image(rng), quality=95)
    for a in im["annotations"]:
      anns.append({"id": next_id, "image_id": im["id"], "category_id": a["category_id"],
                   "iscrowd": a["iscrowd"], "segmentation": a["segmentation"],
                   "area": 1.0, "bbox": [0, 0, 1, 1]})
      next_id += 1
  os.makedirs(os.path.dirname(json_file), exist_ok=True)
  with open(json_file, "w") as f:
    json.dump({"images": [{"id": im["id"], "file_name": im["file_name"], "height": H,
                           "width": W} for im in images],
               "annotations": anns, "categories": categories}, f)


def _check_instances(records, images, image_dir, contiguous):
  assert set(records) == {im["file_name"] for im in images}
  for im in images:
    record = records[im["file_name"]]
    assert record["image_id"] == im["id"]
    _assert_image(record, os.path.join(image_dir, im["file_name"]))
    kept = [a for a in im["annotations"] if a["mask"] is not None]
    instances = record["instances"]
    assert instances["masks"].shape == (len(kept), H, W)
    for mask, a in zip(instances["masks"], kept):
      np.testing.assert_array_equal(mask, a["mask"].astype(np.uint8))
    np.testing.assert_array_equal(instances["category_id"],
                                  [contiguous[a["category_id"]] for a in kept])
    np.testing.assert_array_equal(instances["iscrowd"], [bool(a["iscrowd"]) for a in kept])


def test_coco_instance_release(tmp_path):
  rng = np.random.default_rng(1)
  fixture = _instance_fixture((1, 3, 90))
  source = tmp_path / "coco"
  categories = [{"id": i, "name": f"c{i}"} for i in (1, 3, 90)]
  for split, folder in (("train", "train2017"), ("validation", "val2017")):
    _write_instances(str(source / "annotations" / f"instances_{folder}.json"),
                     str(source / folder), fixture[split], categories, rng)
  cfg = _config(tmp_path, "coco_instance", source_dir=str(source))
  builder = data.prepare_dataset(cfg)
  meta = builder.info.metadata
  assert len(meta["categories"]) == 80 and all(c["isthing"] for c in meta["categories"])
  assert meta["dropped_annotations"]["train"]["count"] == 1
  assert "a.png" in meta["dropped_annotations"]["train"]["examples"][0]
  for split, folder in (("train", "train2017"), ("validation", "val2017")):
    _check_instances(_records(data.data_source(cfg, split)), fixture[split], source / folder,
                     COCO_CONTIGUOUS)


# ------------------------------------------------------------------------------------------
# A user's dataset in COCO format (its own categories)
# ------------------------------------------------------------------------------------------

# Sorted by id: ground (3) -> 0, pear (7) -> 1, apple (10) -> 2, sky (12) -> 3.
CUSTOM = [{"id": 10, "name": "apple", "isthing": 1}, {"id": 3, "name": "ground", "isthing": 0},
          {"id": 12, "name": "sky", "isthing": 0}, {"id": 7, "name": "pear", "isthing": 1}]
CUSTOM_CONTIGUOUS = {3: 0, 7: 1, 10: 2, 12: 3}


def _custom_panoptic(tmp_path, rng, images=None):
  fixture = _panoptic_fixture(rng, (3, 12, 10, 7))
  root = tmp_path / "mine"
  fields = {}
  for split, prefix in (("train", ""), ("validation", "val_")):
    fields.update({
        f"{prefix}json_file": str(root / f"{split}.json"),
        f"{prefix}image_dir": str(root / "images"),  # one folder for both splits
        f"{prefix}panoptic_dir": str(root / f"panoptic_{split}")})
    _write_panoptic(fields[f"{prefix}json_file"], fields[f"{prefix}image_dir"],
                    fields[f"{prefix}panoptic_dir"],
                    (images or fixture)[split] if split == "train" else fixture[split], CUSTOM)
  return fixture, fields, root


def test_coco_format_panoptic_with_custom_categories(tmp_path):
  fixture, fields, root = _custom_panoptic(tmp_path, np.random.default_rng(2))
  cfg = _config(tmp_path, "coco_format", dataset_name="mine", **fields)
  expected = [{"id": 0, "name": "ground", "isthing": 0, "dataset_id": 3},
              {"id": 1, "name": "pear", "isthing": 1, "dataset_id": 7},
              {"id": 2, "name": "apple", "isthing": 1, "dataset_id": 10},
              {"id": 3, "name": "sky", "isthing": 0, "dataset_id": 12}]
  assert data.categories(cfg) == expected  # from the JSON, before building
  builder = data.prepare_dataset(cfg)
  assert (builder.name, builder.builder_config.name) == ("coco_panoptic", "mine")
  assert data.categories(cfg) == expected  # from the metadata
  isthing = {c["id"]: bool(c["isthing"]) for c in CUSTOM}
  for split in ("train", "validation"):
    _check_panoptic(_records(data.data_source(cfg, split)), fixture[split], root / "images",
                    CUSTOM_CONTIGUOUS, isthing)


def test_coco_format_instance_with_custom_categories(tmp_path):
  rng = np.random.default_rng(3)
  fixture = _instance_fixture((10, 7, 3))
  root = tmp_path / "mine"
  categories = [{"id": c["id"], "name": c["name"]} for c in CUSTOM]
  _write_instances(str(root / "train.json"), str(root / "train"), fixture["train"],
                   categories, rng)
  cfg = _config(tmp_path, "coco_format", json_file=str(root / "train.json"),
                image_dir=str(root / "train"), panoptic_dir="")
  builder = data.prepare_dataset(cfg)
  assert builder.name == "coco_instance"
  assert builder.builder_config.name.startswith("custom_")
  assert data.categories(cfg) == [
      {"id": i, "name": n, "isthing": 1, "dataset_id": d}
      for i, (n, d) in enumerate((("ground", 3), ("pear", 7), ("apple", 10), ("sky", 12)))]
  _check_instances(_records(data.data_source(cfg, "train")), fixture["train"],
                   root / "train", CUSTOM_CONTIGUOUS)
  with pytest.raises(ValueError, match="no split 'validation'"):
    data.data_source(cfg, "validation")


# ------------------------------------------------------------------------------------------
# ADE20K
# ------------------------------------------------------------------------------------------


def _write_ade(root, rng, counts=(("training", 2), ("validation", 1))):
  """ADEChallengeData2016 with JPEG images and labels 0..150; returns {file: labels}."""
  labels = {}
  for folder, n in counts:
    prefix = "ADE_train" if folder == "training" else "ADE_val"
    for i in range(1, n + 1):
      name = f"{prefix}_{i:08d}"
      label = rng.integers(0, 151, (H, W)).astype(np.uint8)
      label[:4, :4] = 0
      label[4, :3] = (1, 150, 12)
      _save(str(root / "images" / folder / f"{name}.jpg"), _image(rng), quality=95)
      _save(str(root / "annotations" / folder / f"{name}.png"), label)
      labels[f"{name}.jpg"] = label
  return labels


def test_ade20k(tmp_path):
  rng = np.random.default_rng(4)
  root = tmp_path / "ade" / "ADEChallengeData2016"
  labels = _write_ade(root, rng)
  cfg = _config(tmp_path, "ade20k", source_dir=str(tmp_path / "ade"))  # the parent works
  data.prepare_dataset(cfg)
  categories = data.categories(cfg)
  assert len(categories) == 150 and categories[0]["name"] == "wall"
  assert categories[12] == {"id": 12, "name": "person", "isthing": 1, "dataset_id": 13}
  for split, folder, n in (("train", "training", 2), ("validation", "validation", 1)):
    records = _records(data.data_source(cfg, split))
    assert len(records) == n
    for name, record in records.items():
      _assert_image(record, root / "images" / folder / name)
      label = labels[name].astype(np.int32)
      expected = np.where(label == 0, 255, label - 1).astype(np.uint8)
      np.testing.assert_array_equal(record["semantic"], expected)
      assert record["semantic"][4, 1] == 149 and record["semantic"][0, 0] == 255


# ------------------------------------------------------------------------------------------
# Cityscapes
# ------------------------------------------------------------------------------------------

# label id -> train id of the labels in the fixture (cityscapesScripts' labels.py).
CITYSCAPES_TRAIN_ID = {0: 255, 4: 255, 7: 0, 23: 10, 24: 11, 26: 13, 29: 255}


def _cityscapes_maps():
  label_ids = np.full((H, W), 7, np.uint8)  # road
  label_ids[:10] = 23  # sky
  label_ids[10:12] = 4  # static (void)
  label_ids[12:14, :10] = 0  # unlabeled
  instance_ids = label_ids.astype(np.uint16)
  for value, box in ((26000, (14, 24, 2, 12)), (26001, (14, 24, 20, 30)),
                     (29000, (26, 30, 40, 46))):  # two cars, a caravan (no train id)
    label_ids[box[0]:box[1], box[2]:box[3]] = value // 1000
    instance_ids[box[0]:box[1], box[2]:box[3]] = value
  label_ids[24:30, 32:38] = 24  # a group of persons: no instance id (crowd)
  instance_ids[24:30, 32:38] = 24
  return label_ids, instance_ids


def _write_cityscapes(root, rng, cities=(("train", "aachen", 2), ("val", "frankfurt", 1))):
  label_ids, instance_ids = _cityscapes_maps()
  for folder, city, n in cities:
    for i in range(n):
      stem = f"{city}/{city}_000000_{i:06d}"
      _save(str(root / "leftImg8bit" / folder / f"{stem}_leftImg8bit.png"), _image(rng))
      _save(str(root / "gtFine" / folder / f"{stem}_gtFine_labelIds.png"), label_ids)
      _save(str(root / "gtFine" / folder / f"{stem}_gtFine_instanceIds.png"), instance_ids)
  return label_ids, instance_ids


def test_cityscapes(tmp_path):
  rng = np.random.default_rng(5)
  root = tmp_path / "cityscapes"
  label_ids, instance_ids = _write_cityscapes(root, rng)
  cfg = _config(tmp_path, "cityscapes", source_dir=str(root))
  data.prepare_dataset(cfg)
  categories = data.categories(cfg)
  assert [c["name"] for c in categories[11:]] == [
      "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
  assert [c["isthing"] for c in categories] == [0] * 11 + [1] * 8
  semantic = np.vectorize(CITYSCAPES_TRAIN_ID.get)(label_ids).astype(np.uint8)
  kept = np.isin(instance_ids, [7, 23, 24, 26000, 26001])
  panoptic = np.where(kept, instance_ids, 0)
  for split, folder, n in (("train", "train", 2), ("validation", "val", 1)):
    records = _records(data.data_source(cfg, split))
    assert len(records) == n
    for name, record in records.items():
      assert name.endswith("_leftImg8bit.png") and "/" in name
      _assert_image(record, root / "leftImg8bit" / folder / name)
      np.testing.assert_array_equal(record["semantic"], semantic)
      np.testing.assert_array_equal(record["panoptic"], panoptic)
      info = record["segments_info"]
      np.testing.assert_array_equal(info["id"], [7, 23, 24, 26000, 26001])
      np.testing.assert_array_equal(info["category_id"], [0, 10, 11, 13, 13])
      np.testing.assert_array_equal(info["isthing"], [False, False, True, True, True])
      np.testing.assert_array_equal(info["iscrowd"], [False, False, True, False, False])
  # The source feeds the training pipeline: targets are the non-crowd segments.
  batch = next(pipeline.train_iterator(
      data.data_source(cfg, "train"), batch_size=2, seed=0, task="panoptic", num_targets=8,
      image_size=(32, 64), pixel_mean=(0.0, 0.0, 0.0), pixel_std=(1.0, 1.0, 1.0), flip=False))
  for labels, valid in zip(batch["labels"], batch["valid"]):
    np.testing.assert_array_equal(np.sort(labels[valid]), [0, 10, 13, 13])


# ------------------------------------------------------------------------------------------
# Bad input: on_error "fail" names the file, "skip" leaves the example out and counts it
# ------------------------------------------------------------------------------------------


def _bad_coco_panoptic(tmp_path, case):
  rng = np.random.default_rng(6)
  fixture = _panoptic_fixture(rng, (3, 12, 10, 7))
  images = [dict(im) for im in fixture["train"]]
  images.append({"id": 4, "file_name": "bad.png", "image": _image(rng),
                 "ids": fixture["train"][0]["ids"], "segments": fixture["train"][0]["segments"]})
  if case == "no_annotation":
    images[-1]["segments"] = None
  _, fields, root = _custom_panoptic(tmp_path, rng, {"train": images})
  fields = {k: v for k, v in fields.items() if not k.startswith("val_")}
  bad = root / "images" / "bad.png"
  if case == "corrupt_image":
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(200))
  elif case == "mask_size":
    bad = root / "panoptic_train" / "bad.png"
    _save(str(bad), _id_to_rgb(np.full((H // 2, W), 5)))
  elif case == "malformed":  # a segment without category_id
    bad = pathlib.Path(fields["json_file"])
    dataset = json.loads(bad.read_text())
    del dataset["annotations"][-1]["segments_info"][0]["category_id"]
    bad.write_text(json.dumps(dataset))
  return fields, bad.name, "train", 2


def _bad_coco_instance(tmp_path, case):
  rng = np.random.default_rng(7)
  images = _instance_fixture((10, 7, 3))["train"]
  bad = {"id": 20, "file_name": "bad.png", "annotations": [dict(images[0]["annotations"][0])]}
  if case == "unknown_category":
    bad["annotations"][0]["category_id"] = 999
  elif case == "rle_size":
    m = mask_util.encode(np.asfortranarray(np.ones((H, W // 2), np.uint8)))
    bad["annotations"][0]["segmentation"] = {"size": m["size"], "counts": m["counts"].decode()}
  root = tmp_path / "mine"
  _write_instances(str(root / "train.json"), str(root / "train"), images + [bad],
                   [{"id": c["id"], "name": c["name"]} for c in CUSTOM], rng)
  name = "train.json"
  if case == "missing_image":
    os.remove(root / "train" / "bad.png")
    name = "bad.png"
  fields = dict(json_file=str(root / "train.json"), image_dir=str(root / "train"))
  return fields, name, "train", 2


def _bad_ade20k(tmp_path, case):
  rng = np.random.default_rng(8)
  root = tmp_path / "ade" / "ADEChallengeData2016"
  _write_ade(root, rng, counts=(("training", 3), ("validation", 1)))
  image = root / "images" / "training" / "ADE_train_00000002.jpg"
  label = root / "annotations" / "training" / "ADE_train_00000002.png"
  if case == "truncated_image":
    image.write_bytes(image.read_bytes()[:400])
    bad = image
  elif case == "no_annotation":
    os.remove(label)
    bad = label
  elif case == "unknown_category":
    _save(str(label), np.full((H, W), 151, np.uint8))
    bad = label
  return dict(source_dir=str(tmp_path / "ade")), bad.name, "train", 2


def _bad_cityscapes(tmp_path, case):
  rng = np.random.default_rng(9)
  root = tmp_path / "cityscapes"
  _write_cityscapes(root, rng, cities=(("train", "aachen", 3), ("val", "frankfurt", 1)))
  stem = root / "gtFine" / "train" / "aachen" / "aachen_000000_000001"
  if case == "unknown_category":
    label_ids, _ = _cityscapes_maps()
    label_ids[0, 0] = 40
    _save(f"{stem}_gtFine_labelIds.png", label_ids)
    bad = f"{stem}_gtFine_labelIds.png"
  elif case == "mask_size":
    _, instance_ids = _cityscapes_maps()
    _save(f"{stem}_gtFine_instanceIds.png", instance_ids[:, :W - 8])
    bad = f"{stem}_gtFine_instanceIds.png"
  return dict(source_dir=str(root)), os.path.basename(bad), "train", 2


BAD_CASES = [  # (dataset, fixture, case, the reason in the error)
    ("coco_format", _bad_coco_panoptic, "corrupt_image", "cannot decode the image"),
    ("coco_format", _bad_coco_panoptic, "mask_size", "PNG is 16x48 .* image is 32x48"),
    ("coco_format", _bad_coco_panoptic, "no_annotation", "has no annotation in .*train.json"),
    ("coco_format", _bad_coco_panoptic, "malformed", "image bad.png: malformed entry .*KeyError"),
    ("coco_format", _bad_coco_instance, "unknown_category", "unknown category_id 999"),
    ("coco_format", _bad_coco_instance, "rle_size", "RLE mask is 32x24 .* image is 32x48"),
    ("coco_format", _bad_coco_instance, "missing_image", "missing file"),
    ("ade20k", _bad_ade20k, "truncated_image", "cannot decode the image .*Truncated"),
    ("ade20k", _bad_ade20k, "no_annotation", "missing file: image .* has no annotation"),
    ("ade20k", _bad_ade20k, "unknown_category", r"unknown labels \[151\] \(known: 0..150\)"),
    ("cityscapes", _bad_cityscapes, "unknown_category", r"unknown label ids \[40\]"),
    ("cityscapes", _bad_cityscapes, "mask_size", "instanceIds map is 32x40"),
]


@pytest.mark.parametrize("dataset,make,case,reason", BAD_CASES,
                         ids=[f"{m.__name__[5:]}-{c}" for _, m, c, _ in BAD_CASES])
def test_bad_input(tmp_path, dataset, make, case, reason):
  fields, bad_name, split, num_good = make(tmp_path, case)
  with pytest.raises(builders.BadInputError, match=bad_name) as error:
    data.prepare_dataset(_config(tmp_path, dataset, on_error="fail", **fields))
  assert error.value.path.endswith(bad_name)
  assert re.search(reason, error.value.reason), error.value.reason
  assert "on_error='skip'" in str(error.value)
  cfg = _config(tmp_path, dataset, on_error="skip", **fields)
  builder = data.prepare_dataset(cfg)
  skipped = builder.info.metadata["skipped"][split]
  assert skipped["count"] == 1 and bad_name in skipped["examples"][0], skipped
  records = _records(data.data_source(cfg, split))
  assert len(records) == num_good and not any(bad_name in n for n in records)
  # The report survives reading the prepared dataset in a new builder.
  assert data.tfds_builder(cfg).info.metadata["skipped"][split]["count"] == 1


def test_missing_source_paths_are_named(tmp_path):
  with pytest.raises(ValueError, match="on_error"):
    data.tfds_builder(_config(tmp_path, "ade20k", on_error="ignore"))
  with pytest.raises(ValueError, match="data.source_dir"):
    data.prepare_dataset(_config(tmp_path, "ade20k"))
  with pytest.raises(FileNotFoundError, match="nowhere"):
    data.prepare_dataset(_config(tmp_path, "cityscapes", source_dir=str(tmp_path / "nowhere")))
  (tmp_path / "coco" / "train2017").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="panoptic_train2017.json"):
    data.prepare_dataset(_config(tmp_path, "coco_panoptic", source_dir=str(tmp_path / "coco")))
  with pytest.raises(FileNotFoundError, match="missing.json"):
    data.prepare_dataset(_config(tmp_path, "coco_format", json_file=str(tmp_path / "missing.json"),
                         image_dir=str(tmp_path)))
  with pytest.raises(FileNotFoundError, match=r"prepare_dataset\(config.data\)"):
    data.data_source(_config(tmp_path, "coco_instance"), "train")


def test_prepare_cli(tmp_path):
  """`python -m m2f_jax.data.prepare` builds a config's dataset, then reads it back."""
  _, fields, _ = _custom_panoptic(tmp_path, np.random.default_rng(5))
  flags = [f"--config.data.{k}={v}" for k, v in fields.items()]
  flags += ["--config.data.dataset=coco_format", "--config.data.dataset_name=cli",
            f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.data.prepare_workers=2"]
  cmd = [sys.executable, "-m", "m2f_jax.data.prepare", "--config",
         str(REPO / "configs" / "coco_panoptic.py")]
  run = subprocess.run(cmd + flags, capture_output=True, text=True, cwd=REPO, timeout=300)
  assert run.returncode == 0, run.stderr
  assert "coco_panoptic/cli is prepared in" in run.stdout
  assert "train: 2 examples" in run.stdout and "validation: 1 examples" in run.stdout
  cfg = _config(tmp_path, "coco_format", dataset_name="cli", **fields)
  assert data.tfds_builder(cfg).is_prepared()
  # A missing source folder: one line naming the field, exit status 1, nothing built.
  run = subprocess.run(cmd + ["--config.data.dataset=ade20k",
                              f"--config.data.data_dir={tmp_path / 'tfds'}"],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
  assert run.returncode == 1
  assert run.stderr.startswith("error: data.dataset='ade20k' is not prepared"), run.stderr
  assert "data.source_dir" in run.stderr and "Traceback" not in run.stderr
  # A dataset generated in memory needs nothing.
  run = subprocess.run(cmd[:-1] + [str(REPO / "configs" / "tiny.py")], capture_output=True,
                       text=True, cwd=REPO, timeout=300)
  assert run.returncode == 0 and "nothing to prepare" in run.stdout, run.stderr
