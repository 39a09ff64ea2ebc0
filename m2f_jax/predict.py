r"""Segments images with a checkpoint; writes overlays and machine-readable results.

  python -m m2f_jax.predict --checkpoint DIR --task panoptic a.jpg b.png --output out/
  python -m m2f_jax.predict --checkpoint DIR --task panoptic photos/ --output out/
  python -m m2f_jax.predict --checkpoint DIR --task video_instance frames/vid_a --output out/
  python -m m2f_jax.predict --checkpoint DIR --task video_panoptic frames/vid_a --output out/
      (each input a folder of frames; the outputs of m2f_jax/predict_video.py)

Inputs are image files and folders (searched recursively for .jpg, .jpeg, .png, .bmp, .tif,
.tiff, .webp). Each image's NAME is its path relative to the folder that holds all inputs,
without its extension, so the output keeps the input folder structure (a/x.jpg, b/x.jpg ->
out/a/x.*, out/b/x.*); two inputs that would still share a NAME (x.jpg, x.png) keep their
extension in it (x.jpg.*, x.png.*). Per image, in --output:
  NAME.overlay.png                   the image with coloured segments and class names
  semantic:  NAME.semantic.png       class index per pixel (uint8; uint16 above 255 classes):
                                      "class_index" of categories.json, 0..K-1
  panoptic:  NAME.panoptic.png       COCO panoptic PNG (id = R + 256 G + 256^2 B), and
             NAME.panoptic.json      {"file_name", "segments_info": [{"id", "category_id",
                                      "isthing", "area", "bbox"}]} (COCO panoptic format)
  instance:  NAME.instances.json     COCO results: [{"category_id", "score", "bbox",
                                      "segmentation": RLE}], things only for a model trained
                                      for panoptic segmentation, no empty mask (as eval.py)
and once: categories.json            [{"id", "class_index", "name", "isthing", "color"}]
Every "category_id" is the dataset's own category id ("id" of categories.json: for COCO,
COCO's ids), not the model's class index. An image that cannot be read is reported and
skipped; the others are still processed (the exit status is 1 if any failed). A checkpoint
that is missing, damaged, or of another architecture than its config's model stops the run
in one or two lines (exit status 2); --verbose (or M2F_VERBOSE=1) adds the traceback.
"""

import argparse
import json
import os
import sys

import numpy as np
import PIL.Image

from m2f_jax import checkpoint
from m2f_jax import data
from m2f_jax import errors
from m2f_jax import inference
from m2f_jax import visualize
from m2f_jax.data import panoptic_png
from m2f_jax.data import transforms


def read_image(path: str) -> np.ndarray:
  """uint8 [H, W, 3] RGB; raises ValueError naming the file if it cannot be decoded."""
  if not os.path.isfile(path):
    raise ValueError(f"{path}: no such file")
  try:
    with PIL.Image.open(path) as img:
      img.load()
      return np.asarray(img.convert("RGB"))
  except (OSError, PIL.UnidentifiedImageError, SyntaxError) as e:
    raise ValueError(f"{path}: not a readable image ({e})") from e


def prepare(image: np.ndarray, *, pixel_mean, pixel_std, min_size=None, max_size=None):
  """Resized (official test-time rule), normalized, padded to a multiple of 32, batched.

  Returns float32 [1, H, W, 3] and the (h, w) of the resized image inside it.
  """
  x = transforms.prepare_eval_image(image, pixel_mean=pixel_mean, pixel_std=pixel_std,
                                    min_size=min_size, max_size=max_size)  # [h, w, 3]
  return transforms.pad_images([x])[0], x.shape[:2]


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def find_images(inputs: list[str]) -> list[str]:
  """Image files and the images of folders (recursively, sorted), each path once."""
  found, seen = [], set()
  for item in inputs:
    paths = [item]
    if os.path.isdir(item):
      paths = sorted(os.path.join(root, f) for root, _, files in os.walk(item) for f in files
                     if f.lower().endswith(IMAGE_EXTENSIONS))
    for path in paths:
      key = os.path.realpath(path)
      if key not in seen:
        seen.add(key)
        found.append(path)
  return found


def output_names(paths: list[str]) -> list[str]:
  """A unique NAME per input path (module docstring): the path relative to the folder that
  holds all inputs, without its extension; with it where two would coincide."""
  if not paths:
    return []
  absolute = [os.path.abspath(p) for p in paths]
  root = os.path.commonpath([os.path.dirname(p) for p in absolute])
  relative = [os.path.relpath(p, root) for p in absolute]
  stems = [os.path.splitext(r)[0] for r in relative]
  counts = {}
  for stem in stems:
    counts[stem] = counts.get(stem, 0) + 1
  return [stem if counts[stem] == 1 else rel for stem, rel in zip(stems, relative)]


def category_table(categories: list[dict]) -> list[dict]:
  """categories.json: the dataset id, class index, name, thing flag and colour of each."""
  return [{"id": int(c.get("dataset_id", c["id"])), "class_index": int(c["id"]),
           "name": c["name"], "isthing": int(bool(c["isthing"])),
           **({"color": list(c["color"])} if c.get("color") is not None else {})}
          for c in categories]


def _bbox(mask: np.ndarray) -> list[int]:
  ys, xs = np.nonzero(mask)
  if not len(ys):
    return [0, 0, 0, 0]
  return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def write_results(result: dict, image: np.ndarray, *, task: str, name: str, output: str,
                  categories: list[dict]) -> list[str]:
  """Writes the files of one image; returns their paths."""
  from m2f_jax.evaluation import instance as instance_eval  # pylint: disable=g-import-not-at-top
  names = [c["name"] for c in categories]
  dataset_ids = [int(c.get("dataset_id", c["id"])) for c in categories]
  base = os.path.join(output, name)
  os.makedirs(os.path.dirname(base), exist_ok=True)
  written = []
  if task == "semantic":
    sem = result["sem_seg"]
    dtype = np.uint8 if len(names) <= 255 else np.uint16
    PIL.Image.fromarray(sem.astype(dtype)).save(base + ".semantic.png")
    written.append(base + ".semantic.png")
  elif task == "panoptic":
    ids, segments = result["panoptic_seg"]
    panoptic_png.write_panoptic_png(base + ".panoptic.png", ids)
    info = [{"id": int(s["id"]), "category_id": dataset_ids[int(s["category_id"])],
             "isthing": int(bool(s["isthing"])), "area": int((ids == s["id"]).sum()),
             "bbox": _bbox(ids == s["id"])} for s in segments]
    with open(base + ".panoptic.json", "w") as f:
      json.dump({"file_name": os.path.basename(base + ".panoptic.png"), "segments_info": info}, f)
    written += [base + ".panoptic.png", base + ".panoptic.json"]
  else:
    inst = result["instances"]
    rles = instance_eval.mask_to_rle(inst["masks"]) if len(inst["scores"]) else []
    dets = [{"category_id": dataset_ids[int(c)], "score": float(s), "bbox": _bbox(m),
             "segmentation": r}
            for m, s, c, r in zip(inst["masks"], inst["scores"], inst["classes"], rles)]
    with open(base + ".instances.json", "w") as f:
      json.dump(dets, f)
    written.append(base + ".instances.json")
  visualize.result_overlay(image, result, names).save(base + ".overlay.png")
  return [base + ".overlay.png"] + written


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m m2f_jax.predict", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", required=True,
                      help="model directory or training checkpoint step directory")
  parser.add_argument("--task", choices=("semantic", "instance", "panoptic", "video_instance",
                                         "video_panoptic"),
                      required=True, help="video_instance, video_panoptic: each input is a "
                      "folder of frames (m2f_jax/predict_video.py)")
  parser.add_argument("--output", required=True)
  parser.add_argument("images", nargs="+", help="image files and folders of images")
  parser.add_argument("--verbose", action="store_true", help="Print tracebacks of user "
                      f"errors (also: {errors.VERBOSE_ENV}=1).")
  args = parser.parse_args(argv)
  if args.task in ("video_instance", "video_panoptic"):  # folders of frames: predict_video
    from m2f_jax import predict_video  # pylint: disable=g-import-not-at-top
    return predict_video.main(args)

  import jax  # pylint: disable=g-import-not-at-top
  config, model, variables = checkpoint.load_checked(args.checkpoint)  # or CheckpointError
  categories = data.categories(config.data, config.model.num_classes)
  isthing = [bool(c["isthing"]) for c in categories]
  e = config.eval
  forward = jax.jit(model.apply)
  os.makedirs(args.output, exist_ok=True)
  with open(os.path.join(args.output, "categories.json"), "w") as f:
    json.dump(category_table(categories), f, indent=1)
  paths = find_images(args.images)
  failed = 0
  for path, name in zip(paths, output_names(paths)):
    try:
      image = read_image(path)
    except ValueError as err:
      print(f"error: {err}", file=sys.stderr)
      failed += 1
      continue
    x, size = prepare(image, pixel_mean=config.model.pixel_mean,
                      pixel_std=config.model.pixel_std, min_size=e.min_size,
                      max_size=e.max_size)
    out = forward(variables, x)
    result = inference.postprocess(
        pred_logits=out["pred_logits"], pred_masks=out["pred_masks"], padded_size=x.shape[1:3],
        image_sizes=[size], output_sizes=[image.shape[:2]],
        semantic_on=args.task == "semantic", panoptic_on=args.task == "panoptic",
        instance_on=args.task == "instance", isthing=isthing,
        things_only=inference.things_only_for(config.data.task),
        object_mask_threshold=e.object_mask_threshold, overlap_threshold=e.overlap_threshold,
        instance_topk=e.instance_topk)[0]
    for p in write_results(result, image, task=args.task, name=name, output=args.output,
                           categories=categories):
      print(p)
  return 1 if failed else 0


if __name__ == "__main__":
  with errors.reporting():
    sys.exit(main())
