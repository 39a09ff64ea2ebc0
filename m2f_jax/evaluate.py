"""Evaluation of a model on a dataset's validation split, on every device of every host.

`evaluate(config=..., model=..., variables=..., workdir=...)` runs the jit-compiled network
over this process's share of the validation images on this process's devices (batches of
images of one padded size, sharded over a local mesh: by default every image is padded only
to a multiple of 32, as the official evaluation, so results do not depend on the batch; the
network compiles once per padded size; `eval.pad_to` trades exactness for fewer sizes),
post-processes them with the official semantics (`m2f_jax.inference`), accumulates the
task's metrics (`m2f_jax.evaluation`), merges them across processes, writes
`eval_results.json` (Detectron2's names, percent; strict JSON, undefined metrics as null,
written atomically) and a few visualization PNGs, and returns the results with the time
split and compile counts under "timing". The metrics are those `config.eval.evaluators`
names (`m2f_jax.evaluation.EVALUATORS`); post-processing computes what they need. Used by
`eval.py` and at the end of `train.py`.

Compiles: with `eval.compile_ahead` (default: on GPUs and TPUs, not on a CPU) the split's padded sizes are read from the
dataset without decoding images (`pipeline.image_sizes`), and every size's network and
post-processing programs are lowered and compiled on a thread pool (`eval.compile_threads`,
default one thread per core) in the order the batches will need them, while the first
batches are read; the loop waits for a size's programs only when its first batch is ready.
The same programs run either way. `progress` gets a line every `progress_every_s` seconds
with images/s (the time waiting for compiles left out) and the compiles apart
(`m2f_jax.compilation.CompileCounter`); eval.py prints it. The persistent compilation cache
is the entry point's to turn on (`m2f_jax.compilation.configure_cache`).
"""

from collections.abc import Callable
import concurrent.futures
import os
import pickle
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from m2f_jax import compilation
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


def _pad_to(e: ml_collections.ConfigDict) -> str:
  """`eval.pad_to`; a config saved before it existed may carry `eval.pad_size` (H, W)."""
  if e.get("pad_to"):
    return e.pad_to
  return "{}x{}".format(*e.pad_size) if e.get("pad_size") else "image"


def _host_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


class _AheadOfTime:
  """Compiles every padded size of a run on a thread pool, in the order of `schedule`."""

  def __init__(self, schedule, *, threads: int, compile_size):
    self.total = len(schedule)
    self.threads = max(1, min(threads, self.total))
    self._pool = concurrent.futures.ThreadPoolExecutor(self.threads,
                                                       thread_name_prefix="m2f_compile")
    self.futures = {shape.padded_size: self._pool.submit(compile_size, shape)
                    for shape in schedule}

  def ready(self) -> int:
    return sum(f.done() for f in self.futures.values())

  def wait(self, padded_size):
    future = self.futures.get(tuple(padded_size))
    if future is not None:
      future.result()  # re-raises a compile's error here

  def close(self):
    self._pool.shutdown(wait=True, cancel_futures=True)


def evaluate(*, config: ml_collections.ConfigDict, model, variables, workdir: str,
             source=None, max_images: int | None = None, num_visualizations: int = 4,
             mesh=None, progress: Callable[[str], None] | None = None,
             progress_every_s: float = 10.0) -> dict:
  """Evaluates and writes `workdir/eval_results.json`; returns the results dict.

  `progress(line)`: called every `progress_every_s` seconds and at the end with images/s
  and the compiles (None: silent).
  """
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
  pad_to = _pad_to(e)
  compile_ahead = e.get("compile_ahead", None)
  if compile_ahead is None:  # accelerators only: a CPU's compile threads slow its evaluation
    compile_ahead = jax.default_backend() != "cpu"
  t_sizes = time.perf_counter()
  sizes = pipeline.image_sizes(source) if compile_ahead else None  # None: unknown, or not read
  sizes_s = time.perf_counter() - t_sizes
  batches = pipeline.eval_batches(
      source, batch_size=per_process, pixel_mean=config.model.pixel_mean,
      pixel_std=config.model.pixel_std, pad_to=pad_to, min_size=e.min_size,
      max_size=e.max_size, sizes=sizes)
  evaluators = evaluation.make_evaluators(e.evaluators, categories=categories,
                                          ignore_label=d.ignore_label)
  needs = {ev.spec.needs for ev in evaluators}
  post_flags = dict(semantic_on="sem_seg" in needs, panoptic_on="panoptic_seg" in needs,
                    instance_on="instances" in needs)

  replicated = sharding.replicated(mesh)
  variables = jax.device_put(variables, replicated)

  def network(v, x):
    return model.apply(v, x)

  forward = jax.jit(network, out_shardings=replicated)
  batch_sharding = sharding.batch_sharding(mesh)

  def compile_size(shape):  # on a pool thread: the network and post-processing of one size
    images = jax.ShapeDtypeStruct((per_process, *shape.padded_size, 3), jnp.float32,
                                  sharding=batch_sharding)
    lowered = forward.lower(variables, images)
    lowered.compile()
    out = lowered.out_info
    inference.compile_postprocess(
        pred_logits=out["pred_logits"], pred_masks=out["pred_masks"],
        padded_size=shape.padded_size, output_sizes=shape.output_sizes,
        instance_topk=e.instance_topk, **post_flags)

  vis_dir = os.path.join(workdir, "visualizations")
  os.makedirs(vis_dir, exist_ok=True)
  num_images, t0 = 0, time.perf_counter()
  post_compiles = inference.compilation_count()
  seconds = dict(data=0.0, forward=0.0, postprocess=0.0, metrics=0.0)
  counter = compilation.CompileCounter().start()
  waited = compilation.Stopwatch()
  schedule = batches.schedule() if compile_ahead else None
  ahead = (_AheadOfTime(schedule, threads=e.get("compile_threads", 0) or _host_cores(),
                        compile_size=compile_size) if schedule else None)
  total = batches.num_images
  last_progress = t0
  padded_sizes = set()

  def report_progress():
    elapsed = time.perf_counter() - t0
    busy = max(elapsed - waited.seconds - counter.thread_seconds(), 1e-9)
    line = (f"eval {num_images}/{total} images, {num_images / busy:.2f} images/s | compiles: "
            f"{counter.compiles} ({counter.compile_s:.1f} s), {counter.cache_hits} from the "
            f"cache, waited {waited.seconds + counter.thread_seconds():.1f} s")
    if ahead is not None:
      line += (f", sizes compiled ahead {ahead.ready()}/{ahead.total} ({ahead.threads} "
               f"thread{'s' if ahead.threads > 1 else ''})")
    progress(line)

  try:
    t_batch = time.perf_counter()
    for batch in batches:
      t_forward = time.perf_counter()
      seconds["data"] += t_forward - t_batch
      padded_sizes.add(batch["images"].shape[1:3])
      if ahead is not None:
        with waited:
          ahead.wait(batch["images"].shape[1:3])
      images = jax.device_put(batch["images"], batch_sharding)
      out = forward(variables, images)
      logits = np.asarray(out["pred_logits"])
      masks = np.asarray(out["pred_masks"])
      t_post = time.perf_counter()
      seconds["forward"] += t_post - t_forward
      results = inference.postprocess(
          pred_logits=logits, pred_masks=masks, padded_size=batch["images"].shape[1:3],
          image_sizes=[tuple(s) for s in batch["image_size"]],
          output_sizes=[tuple(s) for s in batch["output_size"]], isthing=isthing,
          things_only=inference.things_only_for(d.task),  # the same instances as predict
          object_mask_threshold=e.object_mask_threshold, overlap_threshold=e.overlap_threshold,
          instance_topk=e.instance_topk, **post_flags)
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
      if progress is not None and t_batch - last_progress >= progress_every_s:
        report_progress()
        last_progress = t_batch
    if progress is not None:
      report_progress()
  finally:
    if ahead is not None:
      ahead.close()
    counter.stop()

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
  # This process's time split (forward and post-processing include the compiles this thread
  # did or waited for) and compilations.
  report["timing"] = {
      **{f"{k}_s": v for k, v in seconds.items()},
      "padded_sizes": len(padded_sizes),
      "forward_compilations": forward._cache_size(),  # pylint: disable=protected-access
      "postprocess_compilations": inference.compilation_count() - post_compiles,
      # Programs compiled (not read from the persistent cache), in every thread, and the
      # seconds that took; programs read from the cache; seconds this thread waited for
      # compiles (its own, and those ahead of time not ready yet).
      "compiles": counter.compiles, "compile_s": counter.compile_s,
      "compile_cache_hits": counter.cache_hits,
      "compile_wait_s": waited.seconds + counter.thread_seconds(),
      "loop_compiles": counter.thread_programs(),  # this thread's (0: all ready ahead)
      "compile_ahead_threads": ahead.threads if ahead is not None else 0,
      "sizes_s": sizes_s,  # reading the split's image sizes (no image decoded)
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
