r"""PQ of COCO-panoptic-format predictions on disk (panopticapi's `pq_compute`).

  python -m m2f_jax.evaluation.panoptic --gt-json F --gt-folder D --pred-json F \
      --pred-folder D [--output R.json] [--workers N]

Both folders hold RGB-encoded panoptic PNGs (id = R + 256 G + 256^2 B); both JSONs hold
"annotations" with "image_id", "file_name" and "segments_info" (the ground truth also
"categories" with "isthing"). Prints the PQ table and writes Detectron2's report names
(percent) with `--output`. The metric itself is `m2f_jax.evaluation.pq`.
"""

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import sys
from typing import Any, Sequence

from m2f_jax.data.panoptic_png import read_panoptic_png
from m2f_jax.evaluation import reports
from m2f_jax.evaluation.pq import add_stats
from m2f_jax.evaluation.pq import categories_dict
from m2f_jax.evaluation.pq import detectron2_report
from m2f_jax.evaluation.pq import format_table
from m2f_jax.evaluation.pq import new_stats
from m2f_jax.evaluation.pq import pq_results
from m2f_jax.evaluation.pq import pq_stats



def _file_pair_stats(args):
  gt_ann, pred_ann, gt_folder, pred_folder, categories = args
  return pq_stats(
      gt_ids=read_panoptic_png(os.path.join(gt_folder, gt_ann["file_name"])),
      gt_segments=gt_ann["segments_info"],
      pred_ids=read_panoptic_png(os.path.join(pred_folder, pred_ann["file_name"])),
      pred_segments=pred_ann["segments_info"], categories=categories,
      image_id=gt_ann["image_id"])


def pq_compute_files(*, gt_json: str, gt_folder: str, pred_json: str, pred_folder: str,
                     workers: int = 1) -> dict[str, Any]:
  """panopticapi's `pq_compute` on files: returns `pq_results` (fractions)."""
  for folder in (gt_folder, pred_folder):
    if not os.path.isdir(folder):
      raise FileNotFoundError(f"Panoptic PNG folder {folder} does not exist.")
  with open(gt_json) as f:
    gt = json.load(f)
  with open(pred_json) as f:
    pred = json.load(f)
  categories = categories_dict(gt["categories"])
  pred_by_image = {a["image_id"]: a for a in pred["annotations"]}
  tasks = []
  for gt_ann in gt["annotations"]:
    if gt_ann["image_id"] not in pred_by_image:
      raise KeyError(f"{pred_json} has no prediction for the image with id {gt_ann['image_id']}.")
    tasks.append((gt_ann, pred_by_image[gt_ann["image_id"]], gt_folder, pred_folder, categories))
  stats = new_stats()
  if workers > 1:
    # "spawn": forking a process that runs JAX threads can deadlock.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
      for s in pool.map(_file_pair_stats, tasks, chunksize=max(1, len(tasks) // (4 * workers))):
        add_stats(stats, s)
  else:
    for task in tasks:
      add_stats(stats, _file_pair_stats(task))
  return pq_results(stats, categories)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(
      prog="python -m m2f_jax.evaluation.panoptic",
      description="Panoptic quality (panopticapi's definition) of COCO-panoptic-format "
                  "predictions on disk.")
  parser.add_argument("--gt-json", required=True, help="ground-truth panoptic JSON")
  parser.add_argument("--gt-folder", required=True, help="folder of ground-truth PNGs")
  parser.add_argument("--pred-json", required=True, help="predicted panoptic JSON")
  parser.add_argument("--pred-folder", required=True, help="folder of predicted PNGs")
  parser.add_argument("--output", help="write the results here as JSON")
  parser.add_argument("--workers", type=int, default=1, help="processes reading the PNGs")
  args = parser.parse_args(argv)
  results = pq_compute_files(gt_json=args.gt_json, gt_folder=args.gt_folder,
                             pred_json=args.pred_json, pred_folder=args.pred_folder,
                             workers=args.workers)
  print(format_table(results))
  report = {
      "panoptic_seg": detectron2_report(results),
      "num_categories": {name: results[name]["n"] for name in ("All", "Things", "Stuff")},
      "per_class": {str(k): {key.upper(): 100 * v[key] for key in ("pq", "sq", "rq")}
                    for k, v in results["per_class"].items()},
  }
  if args.output:  # strict JSON (an empty group's NaN as null), atomically
    reports.write_report(args.output, report)
    print(f"Wrote {args.output}")
  return report


if __name__ == "__main__":
  main(sys.argv[1:])
