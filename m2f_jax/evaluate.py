"""Evaluation of a model on a dataset's validation split, on every device of every host.

`evaluate(config=..., model=..., variables=..., workdir=...)` runs the jit-compiled network
over this process's share of the validation images (batch sharded over the mesh),
post-processes them with the official semantics (`m2f_jax.inference`), accumulates the
task's metrics (`m2f_jax.evaluation`), merges them across processes, writes
`eval_results.json` (Detectron2's names, percent) and a few visualization PNGs, and returns
the results. Used by `eval.py` and at the end of `train.py`.
"""

import json
import os
import pickle
import time

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from m2f_jax import inference
from m2f_jax import visualize
from m2f_jax.evaluation import instance as instance_eval
from m2f_jax.evaluation import panoptic as panoptic_eval
from m2f_jax.evaluation import semantic as semantic_eval


def _gather_objects(obj):
  """Every process's `obj` (picklable), as a list in process order."""
  if jax.process_count() == 1:
    return [obj]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  data = np.frombuffer(pickle.dumps(obj), np.uint8)
  sizes = multihost_utils.process_allgather(np.array([data.size]))
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:data.size] = data
  gathered = multihost_utils.process_allgather(padded)
  return [pickle.loads(gathered[i, :int(sizes[i, 0])].tobytes()) for i in range(len(sizes))]


def _denormalize(images: np.ndarray, mean, std) -> np.ndarray:
  return np.clip(images * np.asarray(std) + np.asarray(mean), 0, 255).astype(np.uint8)


def evaluate(*, config: ml_collections.ConfigDict, model, variables, workdir: str,
             source=None, max_images: int | None = None, num_visualizations: int = 4,
             mesh=None) -> dict:
  """Evaluates and writes `workdir/eval_results.json`; returns the results dict."""
  from m2f_jax import data  # pylint: disable=g-import-not-at-top
  from m2f_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from m2f_jax.training import loop  # pylint: disable=g-import-not-at-top
  d, e = config.data, config.eval
  mesh = mesh or loop.make_mesh()
  if source is None:
    source = data.data_source(d, "validation")
  if max_images is not None:
    source = [source[i] for i in range(min(max_images, len(source)))]
  categories = data.categories(d, config.model.num_classes)
  class_names = [c["name"] for c in categories]
  isthing = [bool(c["isthing"]) for c in categories]
  per_process = max(1, e.get("batch_size", mesh.devices.size) // jax.process_count())
  per_process = -(-per_process // jax.local_device_count()) * jax.local_device_count()
  pad_size = tuple(e.pad_size) if e.get("pad_size") else None
  if pad_size is None and jax.process_count() > 1:
    raise ValueError("eval.pad_size must be set with several processes (one batch shape)")
  batches = pipeline.eval_batches(
      source, batch_size=per_process, pixel_mean=config.model.pixel_mean,
      pixel_std=config.model.pixel_std, pad_size=pad_size, min_size=e.get("min_size"),
      max_size=e.get("max_size"))

  task_semantic = e.semantic_on
  sem = semantic_eval.SemanticEvaluator(num_classes=len(categories), ignore_label=d.ignore_label,
                                        class_names=class_names) if task_semantic else None
  pan = panoptic_eval.PanopticEvaluator(categories=categories) if e.panoptic_on else None
  ins = instance_eval.InstanceEvaluator(categories=categories) if e.instance_on else None

  replicated = NamedSharding(mesh, P())
  variables = jax.device_put(variables, replicated)
  forward = jax.jit(lambda v, x: model.apply(v, x), out_shardings=replicated)
  vis_dir = os.path.join(workdir, "visualizations")
  os.makedirs(vis_dir, exist_ok=True)
  num_images, t0 = 0, time.perf_counter()
  for batch in batches:
    images = loop.global_batch({"images": batch["images"]}, mesh)["images"]
    out = forward(variables, images)
    # Every process holds the whole (replicated) output; take this process's rows.
    lo = jax.process_index() * per_process
    logits = np.asarray(out["pred_logits"])[lo:lo + per_process]
    masks = np.asarray(out["pred_masks"])[lo:lo + per_process]
    results = inference.postprocess(
        pred_logits=logits, pred_masks=masks, padded_size=batch["images"].shape[1:3],
        image_sizes=[tuple(s) for s in batch["image_size"]],
        output_sizes=[tuple(s) for s in batch["output_size"]], semantic_on=task_semantic,
        panoptic_on=e.panoptic_on, instance_on=e.instance_on, isthing=isthing,
        object_mask_threshold=e.object_mask_threshold, overlap_threshold=e.overlap_threshold,
        instance_topk=e.instance_topk)
    for i, (res, ann) in enumerate(zip(results, batch["annotations"])):
      if not batch["example_valid"][i]:
        continue
      image_id = int(batch["image_id"][i])
      if sem is not None and "semantic" in ann:
        sem.update(pred=res["sem_seg"], gt=ann["semantic"])
      if pan is not None:
        info = ann["segments_info"]
        gt_segments = [{"id": int(s), "category_id": int(c), "iscrowd": int(cr)}
                       for s, c, cr in zip(info["id"], info["category_id"], info["iscrowd"])]
        pan.update(gt_ids=ann["panoptic"], gt_segments=gt_segments,
                   pred_ids=res["panoptic_seg"][0], pred_segments=res["panoptic_seg"][1],
                   image_id=image_id)
      if ins is not None:
        gt = ann.get("instances") or _instances_from_panoptic(ann)
        r = res["instances"]
        ins.update(image_id=image_id, pred_masks=r["masks"], pred_scores=r["scores"],
                   pred_classes=r["classes"], gt_masks=gt["masks"], gt_classes=gt["category_id"],
                   gt_iscrowd=gt["iscrowd"])
      if jax.process_index() == 0 and num_images < num_visualizations:
        h, w = batch["image_size"][i]
        oh, ow = batch["output_size"][i]
        image = _denormalize(batch["images"][i, :h, :w], config.model.pixel_mean,
                             config.model.pixel_std)
        if (h, w) != (oh, ow):
          import PIL.Image  # pylint: disable=g-import-not-at-top
          image = np.asarray(PIL.Image.fromarray(image).resize((ow, oh), PIL.Image.BILINEAR))
        if "panoptic_seg" in res:
          vis = visualize.panoptic_overlay(image, res["panoptic_seg"], class_names)
        elif "sem_seg" in res:
          vis = visualize.semantic_overlay(image, res["sem_seg"], class_names)
        else:
          vis = visualize.instance_overlay(image, res["instances"], class_names)
        vis.save(os.path.join(vis_dir, f"{image_id}.png"))
      num_images += 1

  report = {"num_images": 0}
  for evaluator in (sem, pan, ins):
    if evaluator is None:
      continue
    parts = _gather_objects(evaluator)
    for other in parts[1:]:
      parts[0].merge(other)
    report.update(parts[0].compute())
  report["num_images"] = int(sum(_gather_objects(num_images)))
  report["seconds"] = time.perf_counter() - t0
  if jax.process_index() == 0:
    path = os.path.join(workdir, "eval_results.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(report, f, indent=2)
    os.replace(tmp, path)
  return report


def _instances_from_panoptic(ann: dict) -> dict:
  """Instance ground truth from the thing segments of a panoptic annotation."""
  info = ann["segments_info"]
  keep = [i for i in range(len(info["id"])) if info["isthing"][i]]
  return {"masks": np.stack([ann["panoptic"] == info["id"][i] for i in keep]).astype(np.uint8)
                   if keep else np.zeros((0, *ann["panoptic"].shape), np.uint8),
          "category_id": np.asarray([info["category_id"][i] for i in keep], np.int32),
          "iscrowd": np.asarray([info["iscrowd"][i] for i in keep], bool)}


REPORT_KEYS = {
    "sem_seg": ("mIoU", "fwIoU", "mACC", "pACC"),
    "panoptic_seg": ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"),
    "segm": ("AP", "AP50", "AP75", "APs", "APm", "APl"),
}


def format_report(report: dict) -> str:
  """A printable table of the headline metrics (per-class values stay in the JSON)."""
  lines = []
  for task, keys in REPORT_KEYS.items():
    if task in report:
      keys = [k for k in keys if k in report[task]]
      lines.append(f"{task:13}" + "".join(f"{k:>8}" for k in keys))
      lines.append(" " * 13 + "".join(f"{report[task][k]:8.2f}" for k in keys))
  return "\n".join(lines)
