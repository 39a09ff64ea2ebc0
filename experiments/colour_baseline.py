r"""A network-free panoptic baseline that sees only colour, beside the model's PQ.

  python experiments/colour_baseline.py                        # synthetic, 100 val images
  python experiments/colour_baseline.py --workdir workdir/tiny  # + the model's PQ

The baseline (issue #10): a Gaussian colour model per class (mean and full 3x3 covariance
of the RGB values of its pixels, and its pixel frequency as prior) fitted on
`--train-images` training images; every validation pixel gets the class of highest
posterior; a 3x3 mode filter smooths the class map; each connected component (8-connected)
of a thing class becomes one instance (components under `--min-area` pixels are left void),
each stuff class one segment. The ground truth is the validation split exported in COCO
panoptic format (`python -m m2f_jax.data.export`, done here in a temporary folder unless
`--val-dir` names an export); PQ is panopticapi's (`m2f_jax.evaluation.panoptic`).

If a dataset's classes can be told apart by colour this baseline scores high, and a model
scoring below it has not shown that it segments anything. The synthetic dataset draws every
class's colours from one palette (`m2f_jax/data/synthetic.py`), so the baseline must stay
at PQ <= 30 there. `--workdir` reads the model's PQ from `eval_results.json` (as written by
`train.py` / `eval.py`).
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import PIL.Image
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from m2f_jax import config_lib
from m2f_jax.data import datasets
from m2f_jax.data import export as export_lib
from m2f_jax.data import pipeline
from m2f_jax.data import targets
from m2f_jax.data.panoptic_png import read_panoptic_png
from m2f_jax.data.panoptic_png import write_panoptic_png
from m2f_jax.evaluation import panoptic as panoptic_eval
from m2f_jax.evaluation import pq as pq_lib


class ColourModel:
  """Per-class Gaussian over RGB: `fit` on (pixels, labels), `predict` a class map."""

  def __init__(self, num_classes: int, ignore_label: int = 255, ridge: float = 1.0):
    self.num_classes = num_classes
    self.ignore_label = ignore_label
    self.ridge = ridge  # added to the covariance diagonal (RGB levels^2)

  def fit(self, images, labels):
    """images: uint8 [H, W, 3] each; labels: [H, W] class maps (ignore_label = unlabeled)."""
    pixels = np.concatenate([i.reshape(-1, 3) for i in images]).astype(np.float64)
    classes = np.concatenate([label.reshape(-1) for label in labels])
    self.mean = np.zeros((self.num_classes, 3))
    self.precision = np.tile(np.eye(3), (self.num_classes, 1, 1))
    self.log_norm = np.full(self.num_classes, -np.inf)  # log prior - 0.5 log det
    counts = np.bincount(classes[classes != self.ignore_label], minlength=self.num_classes)
    for k in range(self.num_classes):
      if counts[k] < 2:
        continue  # never seen: never predicted
      x = pixels[classes == k]
      self.mean[k] = x.mean(0)
      cov = np.cov(x, rowvar=False) + self.ridge * np.eye(3)
      self.precision[k] = np.linalg.inv(cov)
      self.log_norm[k] = np.log(counts[k] / counts.sum()) - 0.5 * np.linalg.slogdet(cov)[1]
    return self

  def predict(self, image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> int [H, W] classes of highest posterior."""
    x = image.reshape(-1, 3).astype(np.float64)
    d = x[:, None, :] - self.mean[None]  # [N, K, 3]
    score = -0.5 * np.einsum("nki,kij,nkj->nk", d, self.precision, d) + self.log_norm
    return np.argmax(score, axis=1).reshape(image.shape[:2])


def mode_filter(classes: np.ndarray, num_classes: int) -> np.ndarray:
  """The most frequent class of each 3x3 neighbourhood (edges replicated), int [H, W]."""
  votes = np.stack([ndimage.uniform_filter((classes == k).astype(np.float32), size=3,
                                           mode="nearest") for k in range(num_classes)])
  return np.argmax(votes, axis=0)


def panoptic_from_classes(classes: np.ndarray, isthing, *, min_area: int
                          ) -> tuple[np.ndarray, list[dict]]:
  """Class map -> (segment ids [H, W], [{"id", "class"}]): components of things, stuff whole."""
  ids = np.zeros(classes.shape, np.int64)
  segments = []
  for k in np.unique(classes):
    mask = classes == k
    if isthing[k]:
      components, n = ndimage.label(mask, structure=np.ones((3, 3)))
      for c in range(1, n + 1):
        part = components == c
        if part.sum() >= min_area:
          segments.append({"id": len(segments) + 1, "class": int(k)})
          ids[part] = segments[-1]["id"]
    else:
      segments.append({"id": len(segments) + 1, "class": int(k)})
      ids[mask] = segments[-1]["id"]
  return ids, segments


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dataset", default="synthetic", help="a name of m2f_jax.data.DATASETS")
  parser.add_argument("--data-dir", help="data.data_dir (tfds datasets)")
  parser.add_argument("--val-dir", help="an export of the validation split (default: export "
                      "it to a temporary folder)")
  parser.add_argument("--num-val", type=int, help="validation images (default: all)")
  parser.add_argument("--train-images", type=int, default=60)
  parser.add_argument("--min-area", type=int, default=16, help="smallest thing component")
  parser.add_argument("--workdir", help="a training workdir: print its eval_results.json PQ")
  parser.add_argument("--output", help="write the baseline's report here (JSON)")
  args = parser.parse_args(argv)

  data_cfg = config_lib.data_config(args.dataset)
  if args.data_dir:
    data_cfg.data_dir = args.data_dir
  categories = datasets.categories(data_cfg)
  isthing = [bool(c["isthing"]) for c in categories]
  start = time.time()
  train = datasets.data_source(data_cfg, "train")
  records = [pipeline.normalize_record(train[i])
             for i in range(min(args.train_images, len(train)))]
  model = ColourModel(len(categories), ignore_label=data_cfg.ignore_label).fit(
      [r["image"] for r in records],
      [targets.semantic_map(r, ignore_label=data_cfg.ignore_label) for r in records])

  with tempfile.TemporaryDirectory() as tmp:
    val_dir = args.val_dir
    if not val_dir:
      val_dir = os.path.join(tmp, "val")
      export_lib.export(data_cfg, "validation", val_dir, num_examples=args.num_val,
                        log_every=0)
    with open(os.path.join(val_dir, export_lib.JSON_NAME)) as f:
      gt = json.load(f)
    json_ids = [c["id"] for c in sorted(gt["categories"], key=lambda c: c["id"])]
    pred_dir = os.path.join(tmp, "pred")
    os.makedirs(pred_dir)
    annotations, correct, labelled = [], 0, 0
    gt_by_image = {a["image_id"]: a for a in gt["annotations"]}
    images = gt["images"][:args.num_val] if args.num_val else gt["images"]
    for info in images:
      image = np.asarray(PIL.Image.open(os.path.join(val_dir, export_lib.IMAGE_DIR,
                                                     info["file_name"])).convert("RGB"))
      classes = mode_filter(model.predict(image), len(categories))
      gt_ann = gt_by_image[info["id"]]
      gt_ids = read_panoptic_png(os.path.join(val_dir, export_lib.PANOPTIC_DIR,
                                              gt_ann["file_name"]))  # [H, W]
      gt_class = np.full(gt_ids.shape, -1)
      for s in gt_ann["segments_info"]:
        gt_class[gt_ids == s["id"]] = json_ids.index(s["category_id"])
      correct += int(((classes == gt_class) & (gt_class >= 0)).sum())
      labelled += int((gt_class >= 0).sum())
      ids, segments = panoptic_from_classes(classes, isthing, min_area=args.min_area)
      write_panoptic_png(os.path.join(pred_dir, gt_ann["file_name"]), ids)
      annotations.append({"image_id": info["id"], "file_name": gt_ann["file_name"],
                          "segments_info": [{"id": s["id"], "category_id": json_ids[s["class"]]}
                                            for s in segments]})
    if args.num_val:  # the ground truth of the evaluated images only
      keep = {info["id"] for info in images}
      gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in keep]
    gt_json, pred_json = os.path.join(tmp, "gt.json"), os.path.join(tmp, "pred.json")
    with open(gt_json, "w") as f:
      json.dump(gt, f)
    with open(pred_json, "w") as f:
      json.dump({"annotations": annotations}, f)
    results = panoptic_eval.pq_compute_files(
        gt_json=gt_json, gt_folder=os.path.join(val_dir, export_lib.PANOPTIC_DIR),
        pred_json=pred_json, pred_folder=pred_dir)

  report = pq_lib.detectron2_report(results)
  report["pixel_accuracy"] = 100.0 * correct / max(1, labelled)
  print(f"colour baseline on {len(images)} {args.dataset} validation images "
        f"(Gaussian colour model fitted on {len(records)} training images; "
        f"{time.time() - start:.1f} s)")
  print(pq_lib.format_table(results))
  print("per class PQ: " + ", ".join(
      f"{c['name']} {100 * results['per_class'][json_ids[i]]['pq']:.1f}"
      for i, c in enumerate(categories)))
  print(f"pixel accuracy {report['pixel_accuracy']:.2f}%")
  line = f"PQ: colour baseline {report['PQ']:.1f}"
  if args.workdir:
    path, model = model_results(args.workdir, "panoptic_seg")
    line += f"   model ({path}) {model['PQ']:.1f}"
  print(line)
  write_report(args.output, report)
  return report


def model_results(workdir: str, section: str) -> tuple[str, dict]:
  """(path, `section`) of the `eval_results.json` that train.py / eval.py wrote in `workdir`."""
  path = os.path.join(workdir, "eval_results.json")
  with open(path) as f:
    return path, json.load(f)[section]


def write_report(path: str | None, report: dict):
  """The baseline's report as JSON at `path` (nothing when None)."""
  if path:
    with open(path, "w") as f:
      json.dump(report, f, indent=2)


if __name__ == "__main__":
  main()
