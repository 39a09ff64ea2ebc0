r"""Input-pipeline speed: images/s of the COCO LSJ training pipeline, 0 and N grain workers.

A synthetic COCO-panoptic-format dataset is written to a temporary folder (JPEG images of
640x480 like COCO's, RGB-encoded panoptic PNGs, the JSON with segments_info and
categories; about 12 segments per image, things and stuff) and read as training would: by
default through the project's tfds builder (`data.dataset="coco_format"`:
`m2f_jax.data.prepare_dataset` then `data_source`), or with `--source files` through a plain
random-access source that decodes the JPEG / PNG files on every read. Batches come from
`pipeline.train_iterator(augmentation="coco_lsj")`: RandomFlip, ResizeScale(0.1, 2.0),
FixedSizeCrop(1024) with padding, panoptic targets padded to `--num_targets` slots, in
both forms (`--targets`): "compact" (the default of every config, `data.compact_targets`:
the uint8 image and a uint8 segment map [1, 1024, 1024], expanded on the device by
`m2f_jax.device_batch`) and "dense" (normalized float32 images and masks [M, 1024, 1024]
uint8). After one warm-up batch (which starts the worker processes) `--batches` batches are
timed; for each form and worker count it prints images/s, images/s per core used (workers +
the main process) and the bytes per example that go to the device. A per-stage profile of
the single-process path (read + decode, augment, targets) is printed first.

  python benchmarks/input_pipeline.py                      # workers 0, 1, 2; 64 images
  python benchmarks/input_pipeline.py --workers 0,4,8 --batches 30 --source files

What it implies: a training step consumes `per-accelerator rate x accelerators` images/s;
each grain worker adds about the 0-worker rate (one CPU core each, while cores last), so
an accelerator needs about ceil(rate / per-worker rate) workers (data.worker_count per
process = that x accelerators per host). The assumed rates are flags.
"""

import argparse
import io
import json
import math
import os
import tempfile
import time

from absl import flags
import grain
import ml_collections
import numpy as np
import PIL.Image

from m2f_jax.data import pipeline
from m2f_jax.data.panoptic_png import id2rgb
from m2f_jax.data import transforms

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
# A few COCO categories (id, isthing): things, then stuff.
CATEGORIES = [(1, 1), (2, 1), (3, 1), (18, 1), (44, 1), (62, 1), (84, 1),
              (149, 0), (184, 0), (187, 0), (190, 0), (199, 0)]


# ------------------------------------------------------------------------------------------
# A synthetic COCO panoptic dataset on disk
# ------------------------------------------------------------------------------------------


def write_coco_panoptic(root: str, num_images: int, *, height: int = 480, width: int = 640,
                        seed: int = 0) -> dict[str, str]:
  """Writes images/, panoptic/ and panoptic.json under `root`; returns their paths."""
  rng = np.random.default_rng(seed)
  image_dir, panoptic_dir = os.path.join(root, "images"), os.path.join(root, "panoptic")
  os.makedirs(image_dir)
  os.makedirs(panoptic_dir)
  yy, xx = np.mgrid[:height, :width]
  images, annotations = [], []
  for index in range(num_images):
    ids = np.zeros((height, width), np.int32)  # [H, W]; bands of stuff, then things
    segments, next_id = [], 1
    bands = np.sort(rng.choice(np.arange(40, height - 40), 3, replace=False))
    for top, bottom in zip(np.r_[0, bands], np.r_[bands, height]):
      ids[top:bottom] = next_id
      segments.append((next_id, CATEGORIES[rng.integers(7, 12)][0]))
      next_id += 1
    for _ in range(rng.integers(4, 14)):
      cy, cx = rng.uniform(0, height), rng.uniform(0, width)
      ry, rx = rng.uniform(10, height / 4), rng.uniform(10, width / 4)
      mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
      if mask.sum() < 64:
        continue
      ids[mask] = next_id
      segments.append((next_id, CATEGORIES[rng.integers(0, 7)][0]))
      next_id += 1
    colours = rng.integers(0, 256, (next_id, 3))
    image = colours[ids] + rng.normal(0, 12, (height, width, 3))  # texture for JPEG
    image += 40 * np.sin(xx / rng.uniform(5, 40))[..., None]
    name = f"{index:012d}"
    PIL.Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
        os.path.join(image_dir, name + ".jpg"), quality=90)
    PIL.Image.fromarray(id2rgb(ids)).save(os.path.join(panoptic_dir, name + ".png"))
    present = set(np.unique(ids).tolist())
    images.append({"id": index, "file_name": name + ".jpg", "height": height, "width": width})
    annotations.append({"image_id": index, "file_name": name + ".png", "segments_info": [
        {"id": i, "category_id": c, "iscrowd": 0, "area": int((ids == i).sum())}
        for i, c in segments if i in present]})
  categories = [{"id": c, "name": f"category_{c}", "isthing": t} for c, t in CATEGORIES]
  json_file = os.path.join(root, "panoptic.json")
  with open(json_file, "w") as f:
    json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
  return {"json_file": json_file, "image_dir": image_dir, "panoptic_dir": panoptic_dir}


class CocoPanopticFiles(grain.sources.RandomAccessDataSource):
  """COCO panoptic files read and decoded on every access (category ids made contiguous)."""

  def __init__(self, json_file: str, image_dir: str, panoptic_dir: str):
    with open(json_file) as f:
      dataset = json.load(f)
    order = sorted(c["id"] for c in dataset["categories"])
    self._contiguous = {c: i for i, c in enumerate(order)}
    self._isthing = {c["id"]: bool(c["isthing"]) for c in dataset["categories"]}
    by_image = {a["image_id"]: a for a in dataset["annotations"]}
    self._items = [(i["id"], os.path.join(image_dir, i["file_name"]),
                    os.path.join(panoptic_dir, by_image[i["id"]]["file_name"]),
                    by_image[i["id"]]["segments_info"]) for i in dataset["images"]]

  def __len__(self):
    return len(self._items)

  def __getitem__(self, index):
    image_id, image_path, png_path, segments = self._items[index]
    with open(image_path, "rb") as f:
      image = np.asarray(PIL.Image.open(io.BytesIO(f.read())).convert("RGB"))
    panoptic = np.asarray(PIL.Image.open(png_path).convert("RGB"))
    return {"image": image, "panoptic": panoptic, "image_id": image_id, "segments_info": {
        "id": [s["id"] for s in segments],
        "category_id": [self._contiguous[s["category_id"]] for s in segments],
        "iscrowd": [bool(s["iscrowd"]) for s in segments],
        "isthing": [self._isthing[s["category_id"]] for s in segments]}}


def make_source(kind: str, files: dict[str, str], data_dir: str):
  """("tfds", source) through the project's builder, or ("files", source)."""
  if kind == "tfds":
    from m2f_jax import data  # pylint: disable=g-import-not-at-top
    data_cfg = ml_collections.ConfigDict(dict(
        dataset="coco_format", dataset_name="bench", data_dir=data_dir, on_error="fail",
        prepare_workers=2, **files))
    data.prepare_dataset(data_cfg)
    return data.data_source(data_cfg, "train")
  return CocoPanopticFiles(**files)


# ------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------


def profile_stages(source, *, image_size, num_targets, compact: bool,
                   count: int = 16) -> dict[str, float]:
  """Milliseconds per image of each stage of the single-process path."""
  rng = np.random.default_rng(0)
  times = {"read + decode": 0.0, "augment (LSJ)": 0.0, "targets (+ normalize)": 0.0}
  for i in range(-2, count):  # two warm-up images
    if i == 0:
      times = dict.fromkeys(times, 0.0)
    t0 = time.perf_counter()
    record = pipeline.normalize_record(source[i % len(source)])
    t1 = time.perf_counter()
    record = transforms.augment(record, rng, image_size=image_size, augmentation="coco_lsj")
    t2 = time.perf_counter()
    pipeline.train_example(record, task="panoptic", num_targets=num_targets, pixel_mean=MEAN,
                           pixel_std=STD, zero_padding=False, compact=compact)
    t3 = time.perf_counter()
    times["read + decode"] += t1 - t0
    times["augment (LSJ)"] += t2 - t1
    times["targets (+ normalize)"] += t3 - t2
  return {k: 1e3 * v / count for k, v in times.items()}


def images_per_second(source, *, workers: int, batch_size: int, batches: int, image_size,
                      num_targets: int, read_threads: int, prefetch: int,
                      compact: bool) -> tuple[float, float]:
  """(images/s, bytes per example shipped to the device)."""
  iterator = pipeline.train_iterator(
      source, batch_size=batch_size, seed=0, task="panoptic", num_targets=num_targets,
      image_size=image_size, pixel_mean=MEAN, pixel_std=STD, augmentation="coco_lsj",
      shard_options=grain.sharding.NoSharding(), worker_count=workers,
      read_threads=read_threads, prefetch=prefetch, compact=compact)
  try:
    first = next(iterator)  # starts the workers
    key = "segments" if compact else "masks"
    assert first[key].shape[:2] == ((batch_size, 1) if compact else (batch_size, num_targets))
    nbytes = sum(np.asarray(v).nbytes for v in first.values()) / batch_size
    t0 = time.perf_counter()
    for _ in range(batches):
      next(iterator)
    return batches * batch_size / (time.perf_counter() - t0), nbytes
  finally:
    if hasattr(iterator, "close"):
      iterator.close()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
  parser.add_argument("--targets", default="compact,dense",
                      help="comma-separated target forms: compact (the default) and dense")
  parser.add_argument("--images", type=int, default=64)
  parser.add_argument("--batch_size", type=int, default=4)
  parser.add_argument("--batches", type=int, default=16, help="timed batches per setting")
  parser.add_argument("--num_targets", type=int, default=100,
                      help="M (config data.num_targets; official COCO configs: 100)")
  parser.add_argument("--image_size", type=int, default=1024)
  parser.add_argument("--read_threads", type=int, default=0)
  parser.add_argument("--prefetch", type=int, default=0)
  parser.add_argument("--source", choices=("tfds", "files"), default="tfds")
  parser.add_argument("--rates", default="3.3,10,20",
                      help="assumed training images/s per accelerator (R50, COCO LSJ 1024): "
                           "3.3 = official 16 images per ~0.6 s step on 8 V100")
  args = parser.parse_args()
  flags.FLAGS.mark_as_parsed()  # grain worker processes read absl flags
  image_size = (args.image_size, args.image_size)

  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    files = write_coco_panoptic(os.path.join(tmp, "coco"), args.images)
    print(f"wrote {args.images} COCO-panoptic-format images (640x480 JPEG + PNG) in "
          f"{time.perf_counter() - t0:.1f} s")
    kind = args.source
    try:
      source = make_source(kind, files, os.path.join(tmp, "tfds"))
    except Exception as e:  # pylint: disable=broad-except
      print(f"tfds builder unavailable ({type(e).__name__}: {e}); reading the files directly")
      kind, source = "files", make_source("files", files, "")
    print(f"source: {kind} ({type(source).__name__}, {len(source)} records); "
          f"{os.cpu_count()} CPU cores; batch {args.batch_size}, M={args.num_targets}, "
          f"{image_size[0]}x{image_size[1]}")
    forms = args.targets.split(",")
    for form in forms:
      stages = profile_stages(source, image_size=image_size, num_targets=args.num_targets,
                              compact=form == "compact")
      print(f"\nsingle-process profile ({form} targets), ms per image:")
      for name, ms in stages.items():
        print(f"  {name:22s} {ms:7.1f}")
      print(f"  {'total':22s} {sum(stages.values()):7.1f}  "
            f"(= {1e3 / sum(stages.values()):.1f} images/s)")

    print("\n| targets | workers | images/s | images/s per core | MiB per example to the device |"
          "\n|---|---:|---:|---:|---:|")
    rates = {}
    for form in forms:
      for workers in (int(w) for w in args.workers.split(",")):
        rate, nbytes = images_per_second(
            source, workers=workers, batch_size=args.batch_size, batches=args.batches,
            image_size=image_size, num_targets=args.num_targets,
            read_threads=args.read_threads, prefetch=args.prefetch,
            compact=form == "compact")
        rates[form, workers] = rate
        cores = min(workers + 1, os.cpu_count() or 1)
        print(f"| {form} | {workers} | {rate:.1f} | {rate / cores:.1f} | "
              f"{nbytes / 2**20:.1f} |", flush=True)

  form = forms[0]
  per_worker = rates.get((form, 0)) or min(r for (f, _), r in rates.items() if f == form)
  print(f"\nper worker ({form} targets, one core each) ~{per_worker:.1f} images/s; workers "
        "needed per accelerator at an assumed training rate:")
  for rate in (float(r) for r in args.rates.split(",")):
    print(f"  {rate:5.1f} images/s per accelerator -> {math.ceil(rate / per_worker)} "
          "worker(s) (plus a core for the training process)")


if __name__ == "__main__":
  main()
