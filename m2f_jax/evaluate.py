"""Evaluation of a model on a dataset's validation split, on every device of every host.

`evaluate(config=..., model=..., variables=..., workdir=...)` runs the jit-compiled network
over this process's share of the validation images on this process's devices (batches of
images of one padded size, sharded over a local mesh: every image is padded only to a
multiple of 32, as the official evaluation, so results do not depend on the batch; the
network compiles once per padded size), post-processes them with the official semantics (`m2f_jax.inference`), accumulates the
task's metrics (`m2f_jax.evaluation`), merges them across processes, writes
`eval_results.json` (Detectron2's names, percent; strict JSON, undefined metrics as null,
written atomically) and a few visualization PNGs, and returns
the results with the time split and compile counts under "timing". The metrics are those `config.eval.evaluators` names (`m2f_jax.evaluation.
EVALUATORS`); post-processing computes what they need. Used by `eval.py` and at the end of
`train.py`.
"""

import os
import pickle
import time

import jax
import ml_collections
import numpy as np

from m2f_jax import data
from m2f_jax import evaluation
from m2f_jax import inference
from m2f_jax import sharding
from m2f_jax import visualize
from m2f_jax.evaluation.reports import write_report  # strict JSON, atomic; also the CLIs'


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
  from m2f_jax.data import pipeline  # pylint: disable=g-import-not-at-top (grain)
  d, e = config.data, config.eval
  # Each process evaluates its own images on its own devices (batches of one padded size,
  # which differ between processes); only the metrics are merged at the end.
  mesh = mesh or sharding.local_mesh()
  if source is None:
    source = data.data_source(d, "validation")
  if max_images is not None:
    source = [source[i] for i in range(min(max_images, len(source)))]
  categories = data.categories(d, config.model.num_classes)
  class_names = [c["name"] for c in categories]
  isthing = [bool(c["isthing"]) for c in categories]
  per_process = max(1, e.batch_size // jax.process_count())
  per_process = -(-per_process // mesh.devices.size) * mesh.devices.size
  batches = pipeline.eval_batches(
      source, batch_size=per_process, pixel_mean=config.model.pixel_mean,
      pixel_std=config.model.pixel_std, pad_to="{}x{}".format(*e.pad_size) if e.pad_size else None,
      min_size=e.min_size, max_size=e.max_size)
  evaluators = evaluation.make_evaluators(e.evaluators, categories=categories,
                                          ignore_label=d.ignore_label)
  needs = {ev.spec.needs for ev in evaluators}

  replicated = sharding.replicated(mesh)
  variables = jax.device_put(variables, replicated)
  forward = jax.jit(lambda v, x: model.apply(v, x), out_shardings=replicated)
  vis_dir = os.path.join(workdir, "visualizations")
  os.makedirs(vis_dir, exist_ok=True)
  num_images, t0 = 0, time.perf_counter()
  post_compiles = inference.compilation_count()
  seconds = dict(data=0.0, forward=0.0, postprocess=0.0, metrics=0.0)
  t_batch = time.perf_counter()
  for batch in batches:
    t_forward = time.perf_counter()
    seconds["data"] += t_forward - t_batch
    images = jax.device_put(batch["images"], sharding.batch_sharding(mesh))
    out = forward(variables, images)
    logits = np.asarray(out["pred_logits"])
    masks = np.asarray(out["pred_masks"])
    t_post = time.perf_counter()
    seconds["forward"] += t_post - t_forward
    results = inference.postprocess(
        pred_logits=logits, pred_masks=masks, padded_size=batch["images"].shape[1:3],
        image_sizes=[tuple(s) for s in batch["image_size"]],
        output_sizes=[tuple(s) for s in batch["output_size"]],
        semantic_on="sem_seg" in needs, panoptic_on="panoptic_seg" in needs,
        instance_on="instances" in needs, isthing=isthing,
        things_only=inference.things_only_for(d.task),  # the same instances as predict
        object_mask_threshold=e.object_mask_threshold, overlap_threshold=e.overlap_threshold,
        instance_topk=e.instance_topk)
    t_metrics = time.perf_counter()
    seconds["postprocess"] += t_metrics - t_post
    for i, (res, ann) in enumerate(zip(results, batch["annotations"])):
      if not batch["example_valid"][i]:
        continue
      image_id = int(batch["image_id"][i])
      for evaluator in evaluators:
        evaluator.update(result=res, annotation=ann, image_id=image_id)
      if jax.process_index() == 0 and num_images < num_visualizations:
        h, w = batch["image_size"][i]
        oh, ow = batch["output_size"][i]
        image = _denormalize(batch["images"][i, :h, :w], config.model.pixel_mean,
                             config.model.pixel_std)
        if (h, w) != (oh, ow):
          import PIL.Image  # pylint: disable=g-import-not-at-top
          image = np.asarray(PIL.Image.fromarray(image).resize((ow, oh), PIL.Image.BILINEAR))
        visualize.result_overlay(image, res, class_names).save(
            os.path.join(vis_dir, f"{image_id}.png"))
      num_images += 1
    t_batch = time.perf_counter()
    seconds["metrics"] += t_batch - t_metrics

  t_compute = time.perf_counter()
  report = {"num_images": 0}
  for evaluator in evaluators:
    parts = _gather_objects(evaluator)
    for other in parts[1:]:
      parts[0].merge(other)
    computed = parts[0].compute()
    report.setdefault("ground_truth", {}).update(computed.pop("ground_truth", {}))
    report.update(computed)
  if not report.get("ground_truth"):
    report.pop("ground_truth", None)
  report["num_images"] = int(sum(_gather_objects(num_images)))
  seconds["metrics"] += time.perf_counter() - t_compute
  report["seconds"] = time.perf_counter() - t0
  # This process's time split (forward includes compiling) and compilations.
  report["timing"] = {
      **{f"{k}_s": v for k, v in seconds.items()},
      "forward_compilations": forward._cache_size(),  # pylint: disable=protected-access
      "postprocess_compilations": inference.compilation_count() - post_compiles,
  }
  if jax.process_index() == 0:
    write_report(os.path.join(workdir, "eval_results.json"), report)
  return report


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
