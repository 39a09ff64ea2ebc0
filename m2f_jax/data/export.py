r"""Writes any image dataset the project reads in COCO panoptic format.

  python -m m2f_jax.data.export --dataset synthetic --split validation --output /tmp/syn_val
  python -m m2f_jax.data.export --dataset ade20k --split validation --num-examples 50 \
      --data-dir ~/tensorflow_datasets --output /tmp/ade_val
  python -m m2f_jax.data.export --config configs/coco_panoptic.py:r50 --split validation \
      --output /tmp/coco_val

The output folder holds

  images/<name>.png     the images (PNG: lossless, so they read back pixel for pixel)
  panoptic/<name>.png   RGB-encoded segment ids (id = R + 256 G + 256^2 B, 0 = void)
  panoptic.json         {"info", "images": [{"id", "file_name", "height", "width"}],
                         "annotations": [{"image_id", "file_name", "segments_info": [{"id",
                         "category_id", "iscrowd", "area", "bbox"}]}],
                         "categories": [{"id", "name", "isthing", "color"}]}

which other tools (panopticapi, Detectron2's `register_coco_panoptic`) read, and which the
`coco_format` dataset reads back to the same records (`data.val_json_file=.../panoptic.json`,
`data.val_image_dir=.../images`, `data.val_panoptic_dir=.../panoptic`, or the train fields).
Category ids are the dataset's own ("dataset_id" of `m2f_jax.data.categories`, e.g. COCO's
1..200), else the contiguous class indices.

The records come from `m2f_jax.data.data_source(data_cfg, split)` (tfds datasets must be
prepared: `python -m m2f_jax.data.prepare`). Records with a panoptic map keep their segments
(ids renumbered 1..S only when they do not fit the PNG encoding); records with only semantic
and/or instance labels become panoptic: each instance a segment (smaller instances on top
where they overlap), then one segment per class of the semantic map on the pixels left.

The folder is written beside its destination and renamed into place when complete, so a
failed export leaves nothing half-written; an existing non-empty folder is refused unless
`--overwrite`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

import numpy as np
import PIL.Image

from m2f_jax.data.panoptic_png import OFFSET
from m2f_jax import config_lib
from m2f_jax.atomic_dir import atomic_directory
from m2f_jax.data.panoptic_png import write_panoptic_png

JSON_NAME = "panoptic.json"
IMAGE_DIR = "images"
PANOPTIC_DIR = "panoptic"


def load_data_config(config_arg: str):
  """The `data` section of a config file given as `FILE[:arg]` (as train.py's --config)."""
  config = config_lib.load_config_file(config_arg)
  if "data" not in config:
    raise ValueError(f"--config {config_arg}: the config has no 'data' section")
  return config.data


def record_to_panoptic(record: dict[str, Any], categories: Sequence[dict[str, Any]],
                       ignore_label: int = 255) -> tuple[np.ndarray, list[dict[str, Any]]]:
  """A record -> (int64 [H, W] segment ids < 256^3, 0 = void; [{"id", "class", "iscrowd"}]).

  "class" is the contiguous class index. Segments without pixels are left out.
  """
  height, width = record["image"].shape[:2]
  if "panoptic" in record:
    ids = np.asarray(record["panoptic"]).astype(np.int64)
    info = record["segments_info"]
    segments = [{"id": int(i), "class": int(c), "iscrowd": int(bool(z))}
                for i, c, z in zip(info["id"], info["category_id"], info["iscrowd"])]
    if ids.size and (ids.min() < 0 or ids.max() >= OFFSET):  # renumber to 1..S
      new = np.zeros_like(ids)
      for k, s in enumerate(segments, start=1):
        new[ids == s["id"]] = k
        s["id"] = k
      ids = new
  else:
    ids = np.zeros((height, width), np.int64)
    segments = []
    if "instances" in record:
      inst = record["instances"]
      masks = np.asarray(inst["masks"]).astype(bool)  # [N, H, W]
      for k in np.argsort(-masks.reshape(len(masks), -1).sum(1), kind="stable"):
        segments.append({"id": len(segments) + 1, "class": int(inst["category_id"][k]),
                         "iscrowd": int(bool(inst["iscrowd"][k]))})
        ids[masks[k]] = segments[-1]["id"]  # larger first, so smaller ones stay on top
    if "semantic" in record:
      semantic = np.asarray(record["semantic"])
      free = ids == 0
      for cls in np.unique(semantic[free]):
        if cls == ignore_label or cls >= len(categories):
          continue
        segments.append({"id": len(segments) + 1, "class": int(cls), "iscrowd": 0})
        ids[free & (semantic == cls)] = segments[-1]["id"]
  present = set(np.unique(ids).tolist())
  return ids, [s for s in segments if s["id"] in present]


def _bbox(mask: np.ndarray) -> list[int]:
  """COCO [x, y, width, height] of a non-empty bool [H, W] mask."""
  ys, xs = np.nonzero(mask)
  return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
          int(ys.max() - ys.min() + 1)]


def _category_colour(index: int) -> list[int]:
  rng = np.random.default_rng([index, 7])
  return [int(v) for v in rng.integers(40, 256, 3)]


def export(data_cfg, split: str, output: str, *, num_examples: int | None = None,
           overwrite: bool = False, log_every: int = 100) -> str:
  """Writes `split` of `data_cfg.dataset` to the folder `output`; returns the JSON's path.

  Args:
    data_cfg: the `data` section of a config (`m2f_jax.config_lib.data_config(NAME)`).
    split: "train" or "validation".
    output: the folder to create (see the module docstring for its layout).
    num_examples: export only the first N records (None: all).
    overwrite: replace an existing non-empty `output`.
    log_every: print progress every this many records (0: never).
  """
  # pylint: disable=g-import-not-at-top (the data stack loads only when exporting)
  from m2f_jax.data import datasets
  from m2f_jax.data import pipeline
  output = os.path.abspath(output)
  occupied = os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output))
  if occupied and not overwrite:
    raise FileExistsError(f"--output {output} exists and is not empty: choose another folder "
                          "or pass --overwrite")
  source = datasets.data_source(data_cfg, split)
  categories = datasets.categories(data_cfg)
  ignore_label = int(data_cfg.get("ignore_label", 255))
  json_ids = [int(c.get("dataset_id", c["id"])) for c in categories]
  total = len(source) if num_examples is None else min(int(num_examples), len(source))

  with atomic_directory(output) as tmp:
    os.makedirs(os.path.join(tmp, IMAGE_DIR))
    os.makedirs(os.path.join(tmp, PANOPTIC_DIR))
    images, annotations, seen_ids = [], [], set()
    for index in range(total):
      record = pipeline.normalize_record(source[index])
      image_id = record["image_id"]
      if image_id < 0 or image_id in seen_ids:
        image_id = index if index not in seen_ids else max(seen_ids) + 1
      seen_ids.add(image_id)
      name = f"{image_id:012d}.png"
      height, width = record["image"].shape[:2]
      ids, segments = record_to_panoptic(record, categories, ignore_label)
      PIL.Image.fromarray(record["image"]).save(os.path.join(tmp, IMAGE_DIR, name),
                                                format="PNG")
      write_panoptic_png(os.path.join(tmp, PANOPTIC_DIR, name), ids)
      segments_info = []
      for s in segments:
        if not 0 <= s["class"] < len(categories):
          raise ValueError(f"{data_cfg.dataset} {split} record {index}: segment {s['id']} has "
                           f"class {s['class']}, outside the {len(categories)} categories")
        mask = ids == s["id"]
        segments_info.append({"id": s["id"], "category_id": json_ids[s["class"]],
                              "iscrowd": s["iscrowd"], "area": int(mask.sum()),
                              "bbox": _bbox(mask)})
      images.append({"id": image_id, "file_name": name, "height": height, "width": width})
      annotations.append({"image_id": image_id, "file_name": name,
                          "segments_info": segments_info})
      if log_every and (index + 1) % log_every == 0:
        print(f"exported {index + 1}/{total}", flush=True)
    dataset_json = {
        "info": {"description": f"{data_cfg.dataset} {split}, exported by m2f_jax.data.export",
                 "dataset": data_cfg.dataset, "split": split},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": json_id, "name": c["name"], "isthing": int(bool(c["isthing"])),
                        "color": [int(v) for v in c.get("color") or _category_colour(i)]}
                       for i, (c, json_id) in enumerate(zip(categories, json_ids))],
    }
    with open(os.path.join(tmp, JSON_NAME), "w") as f:
      json.dump(dataset_json, f)
  return os.path.join(output, JSON_NAME)


def main(argv: Sequence[str] | None = None) -> str:
  parser = argparse.ArgumentParser(
      prog="python -m m2f_jax.data.export",
      description="Write a dataset split in COCO panoptic format (images, RGB-encoded "
                  "panoptic PNGs, one JSON).")
  parser.add_argument("--dataset", help="a name of m2f_jax.data.DATASETS (default: the "
                      "config's data.dataset)")
  parser.add_argument("--config", help="FILE[:arg]: take the data section from this config")
  parser.add_argument("--split", default="validation", help="train or validation")
  parser.add_argument("--num-examples", type=int, help="export only the first N records")
  parser.add_argument("--output", required=True, help="folder to create")
  parser.add_argument("--data-dir", help="where tfds datasets are prepared (data.data_dir)")
  parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
  args = parser.parse_args(argv)
  from m2f_jax import config_lib  # pylint: disable=g-import-not-at-top
  if args.config:
    data_cfg = load_data_config(args.config)
    if args.dataset and args.dataset != data_cfg.dataset:
      raise ValueError(f"--dataset {args.dataset} differs from data.dataset="
                       f"{data_cfg.dataset!r} of --config {args.config}: give one of them")
  elif args.dataset:
    data_cfg = config_lib.data_config(args.dataset)
  else:
    parser.error("give --dataset NAME or --config FILE[:arg]")
  if args.data_dir is not None:
    data_cfg.data_dir = args.data_dir
  path = export(data_cfg, args.split, args.output, num_examples=args.num_examples,
                overwrite=args.overwrite)
  with open(path) as f:
    n = len(json.load(f)["images"])
  print(f"wrote {n} images of {data_cfg.dataset} {args.split} to {os.path.dirname(path)} "
        f"({JSON_NAME}, {IMAGE_DIR}/, {PANOPTIC_DIR}/)")
  return path


if __name__ == "__main__":
  main(sys.argv[1:])
