r"""Evaluation compiles at COCO scale: padded sizes, compile seconds per size, projected totals.

Evaluation pads each image to a multiple of 32 (the official padding), so the network
compiles once per padded size and post-processing twice. This script counts and times what a
COCO val2017 run compiles, and what the three remedies of `m2f_jax.compilation` save:

1. Sizes. `--num-images` (default 5000) image sizes drawn like COCO val2017, or the exact ones
   of a COCO JSON (`--coco-json annotations/panoptic_val2017.json`: its "images" widths and
   heights). The drawn distribution (`coco_val2017_sizes`) is an assumption, not COCO's list:
   the long side is 640 px (3% of the images smaller, 200-639 px), 70% landscape; the aspect
   ratio is one of the common photo ratios (4:3, 3:2, 16:9, 1:1 and their portrait forms,
   with the shares of `PHOTO_RATIOS`, +-1 px of rounding) for 92% of the images and
   log-uniform within [1/3, 3] for the rest. After the official test-time resize (shortest
   side 800, longest at most 1333; `--min-size`, `--max-size`) the script counts the distinct
   padded sizes of `eval.pad_to` "image" (official), "buckets:2" and "buckets:4".
2. Compile seconds per size, for each `--configs` (COCO panoptic R50 and Swin-L by default;
   "tiny" for a quick run): the network's `lower().compile()` at batch `--batch-size` and
   the post-processing's (`inference.compile_postprocess`, semantic + panoptic + instance),
   for the `--sizes` most frequent padded sizes (abstract weights: nothing runs), into an
   empty persistent cache as eval.py's first run. "from the cache": the same programs traced,
   lowered and read back from a persistent compilation cache (a temporary folder) after JAX's
   in-memory caches are cleared (tracing and lowering are not cached: a second run pays them).
   "ahead of time on the pool": the same sizes compiled again on a pool of `--threads`
   threads (default: the host's cores), as `m2f_jax.evaluate` compiles them ahead of time.
3. Projected totals for the whole split, per pad_to: compiles x (forward + post-processing
   compile s), serially, on the pool (the measured speed-up), and read from the cache;
   against the forward time of the split (`--run`: one batch at the most frequent size timed
   with random weights, median of `--runs`, scaled by each size's padded area and batches).
4. `--deviation`: "buckets:2" against the official padding on `--deviation-images` images of
   drawn sizes (random N(0, 1) images, each alone in its batch, random weights): max |class
   logit difference|, max |mask logit difference| inside the image, semantic labels that
   agree, and PQ of the bucket run's panoptic results scored against the official run's
   (100: identical).
5. `--synthetic`: the synthetic validation set through `m2f_jax.evaluate` (the tiny config;
   `--checkpoint` for a trained model, else random weights) with pad_to "image" and
   "buckets:2": PQ, mIoU and AP of each and their difference (needs the data stack).
6. `--eval-runs`: `eval.py` itself on the tiny config (random weights saved to a temporary
   model directory, `--eval-images` synthetic validation images at their own sizes: many
   padded sizes): compiled as batches come, compiled ahead of time, and again with the
   persistent cache it filled; wall seconds, compiles and cache reads of each.

  python benchmarks/eval_compiles.py                     # R50 and Swin-L, sizes + compiles
  python benchmarks/eval_compiles.py --configs r50 --run --deviation --synthetic --eval-runs
  python benchmarks/eval_compiles.py --configs tiny --num-images 20 --batch-size 1 --run \
      --min-size 0 --deviation --deviation-images 2 --sizes 2   # a quick look on a CPU

Imports neither grain, tensorflow-datasets nor ml_collections for sections 1-4 (the GPU
suite, benchmarks/gpu_suite.py, runs them: its "eval_compiles" section).
"""

import argparse
import concurrent.futures
import datetime
import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))
_common = sys.modules.get("benchmarks__common")  # loaded once (gpu_suite.py loads it too)
if _common is None:
  _spec = importlib.util.spec_from_file_location("benchmarks__common",
                                                 REPO / "benchmarks" / "_common.py")
  _common = sys.modules.setdefault("benchmarks__common", importlib.util.module_from_spec(_spec))
  _spec.loader.exec_module(_common)
CONFIG_DICT = _common.ensure_config_dict()

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.compilation_cache import compilation_cache

from m2f_jax import config_lib
from m2f_jax import inference
from m2f_jax.data import eval_sizes
from m2f_jax.evaluation import pq
from m2f_jax.models.mask2former import build_model
# pylint: enable=g-import-not-at-top,wrong-import-position

# W/H of common photo formats and the share of images assumed to have each (the rest:
# log-uniform in [1/3, 3]).
PHOTO_RATIOS = ((4 / 3, 0.40), (3 / 2, 0.17), (16 / 9, 0.05), (1.0, 0.03),
                (3 / 4, 0.17), (2 / 3, 0.08), (9 / 16, 0.02))
CONFIGS = {"r50": "configs/coco_panoptic.py:r50", "swin_l": "configs/coco_panoptic.py:swin_l",
           "tiny": "configs/tiny.py"}
MODES = ("image", "buckets:2", "buckets:4")


def coco_val2017_sizes(n: int, seed: int = 0) -> list[tuple[int, int]]:
  """(H, W) of `n` images drawn like COCO val2017 (see the module docstring)."""
  rng = np.random.default_rng(seed)
  ratios = np.array([r for r, _ in PHOTO_RATIOS])
  shares = np.array([s for _, s in PHOTO_RATIOS])
  sizes = []
  for _ in range(n):
    if rng.random() < shares.sum():
      ratio = ratios[rng.choice(len(ratios), p=shares / shares.sum())]
    else:
      ratio = float(np.exp(rng.uniform(np.log(1 / 3), np.log(3))))
    long_side = 640 if rng.random() < 0.97 else int(rng.integers(200, 640))
    short = int(round(long_side / max(ratio, 1 / ratio))) + int(rng.integers(-1, 2))
    short = min(max(short, 1), long_side)
    sizes.append((short, long_side) if ratio >= 1 else (long_side, short))
  return sizes


def sizes_from_json(path: str) -> list[tuple[int, int]]:
  with open(path) as f:
    return [(int(im["height"]), int(im["width"])) for im in json.load(f)["images"]]


def plans(sizes, *, batch: int, min_size, max_size) -> dict[str, list]:
  """pad_to -> `eval_sizes.schedule` of the whole split (one process)."""
  inputs = [eval_sizes.eval_resize_size(h, w, min_size, max_size) for h, w in sizes]
  out = {}
  for mode in MODES:
    table = eval_sizes.bucket_table(inputs, pad_to=mode)
    out[mode] = eval_sizes.schedule(sizes, batch_size=batch, table=table, min_size=min_size,
                                    max_size=max_size)
  return out


def load_model_config(name: str):
  return config_lib.load_config_file(str(REPO / CONFIGS[name])).model


# ---------------------------------------------------------------------------------------------
# Compiling
# ---------------------------------------------------------------------------------------------

def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


class Compiler:
  """The network and post-processing programs of one model, compiled per padded size."""

  def __init__(self, model_cfg, batch: int):
    self.model = build_model(model_cfg)
    self.batch = batch
    self.variables = jax.eval_shape(self.model.init, jax.random.PRNGKey(0),
                                     jnp.zeros((1, 64, 64, 3), jnp.float32))

  def forward(self):
    model = self.model

    def network(v, x):
      return model.apply(v, x)

    return jax.jit(network)

  def compile_size(self, size, output_sizes, fn=None) -> tuple[float, float]:
    """Seconds to compile the network and the post-processing of one padded size."""
    fn = fn or self.forward()
    t0 = time.perf_counter()
    images = jax.ShapeDtypeStruct((self.batch, *size, 3), jnp.float32)
    lowered = fn.lower(self.variables, images)
    lowered.compile()
    t1 = time.perf_counter()
    out = lowered.out_info
    inference.compile_postprocess(
        pred_logits=out["pred_logits"], pred_masks=out["pred_masks"], padded_size=size,
        output_sizes=output_sizes, semantic_on=True, panoptic_on=True, instance_on=True)
    return t1 - t0, time.perf_counter() - t1


def cache_off():
  jax.config.update("jax_enable_compilation_cache", False)
  compilation_cache.reset_cache()


def cache_on(folder: str):
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  compilation_cache.reset_cache()


def measure_compiles(compiler: Compiler, shapes, *, threads: int, log=print) -> dict:
  """`shapes` compiled one after the other (each timed), then again on a pool of `threads`
  threads, each time into an empty persistent cache (as eval.py's first run); then the first
  read back from the cache."""
  per_size = []
  with tempfile.TemporaryDirectory() as first, tempfile.TemporaryDirectory() as second:
    cache_on(first)
    jax.clear_caches()
    t0 = time.perf_counter()
    for shape in shapes:
      fwd, post = compiler.compile_size(shape.padded_size, shape.output_sizes)
      per_size.append((shape.padded_size, fwd, post))
      log(f"  compile {shape.padded_size}: forward {fwd:.1f} s, post-processing {post:.1f} s")
    serial_s = time.perf_counter() - t0
    cache_on(second)
    jax.clear_caches()
    fn = compiler.forward()
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
      list(pool.map(lambda s: compiler.compile_size(s.padded_size, s.output_sizes, fn),
                    shapes))
    pooled_s = time.perf_counter() - t0
    log(f"  {len(shapes)} sizes: one after the other {serial_s:.1f} s, on {threads} threads "
        f"{pooled_s:.1f} s ({serial_s / pooled_s:.2f}x)")
    cache_on(first)
    jax.clear_caches()
    read_fwd, read_post = compiler.compile_size(shapes[0].padded_size, shapes[0].output_sizes)
    log(f"  {shapes[0].padded_size} from the cache: forward {read_fwd:.2f} s, post-processing "
        f"{read_post:.2f} s (tracing and lowering included)")
  cache_off()
  jax.clear_caches()
  return dict(per_size=per_size, forward_s=float(np.mean([f for _, f, _ in per_size])),
              post_s=float(np.mean([p for _, _, p in per_size])),
              cache_s=read_fwd + read_post, serial_s=serial_s, pooled_s=pooled_s,
              pool_sizes=len(shapes), threads=threads)


def measurement_order(plan) -> list:
  """A schedule's sizes, landscape and portrait alternating, each by decreasing count."""
  by_count = sorted(plan, key=lambda s: -s.images)
  landscape = [s for s in by_count if s.padded_size[1] >= s.padded_size[0]]
  portrait = [s for s in by_count if s.padded_size[1] < s.padded_size[0]]
  order = [s for pair in zip(landscape, portrait) for s in pair]
  return order + [s for s in by_count if s not in order]


def time_forward(compiler: Compiler, size, *, runs: int, log=print) -> float:
  """Median seconds of one batch at `size` with random weights (after a warm-up)."""
  variables = jax.jit(compiler.model.init)(jax.random.PRNGKey(0),
                                            np.zeros((1, 64, 64, 3), np.float32))
  fn = jax.jit(compiler.model.apply)
  images = jax.device_put(np.random.default_rng(0).normal(
      size=(compiler.batch, *size, 3)).astype(np.float32))
  jax.block_until_ready(fn(variables, images))
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(variables, images))
    times.append(time.perf_counter() - t0)
  log(f"  forward batch {compiler.batch} at {size}: {1e3 * np.median(times):.0f} ms "
      f"(median of {runs})")
  return float(np.median(times))


def projection(plan, measured: dict, *, batch_s: float | None, ref_size) -> dict:
  """Projected seconds of one pad_to's run: compiles serially / pooled / cached, forward."""
  n = len(plan)
  per_size = measured["forward_s"] + measured["post_s"]
  speedup = measured["serial_s"] / measured["pooled_s"]
  out = dict(sizes=n, compile_s=n * per_size, pooled_s=n * per_size / speedup,
             cache_s=n * measured["cache_s"], forward_s=None)
  if batch_s is not None:
    area = ref_size[0] * ref_size[1]
    out["forward_s"] = sum(s.batches * batch_s * s.padded_size[0] * s.padded_size[1] / area
                           for s in plan)
  return out


# ---------------------------------------------------------------------------------------------
# Deviation of coarse buckets
# ---------------------------------------------------------------------------------------------

def _panoptic_pq(pairs, isthing) -> float:
  """PQ of the second result of each pair scored against the first (as ground truth)."""
  categories = {k: {"id": k, "isthing": int(t)} for k, t in enumerate(isthing)}
  stats = pq.new_stats()
  for i, (want, got) in enumerate(pairs):
    (gt_ids, gt_segments), (pred_ids, pred_segments) = want, got
    pq.add_stats(stats, pq.pq_stats(gt_ids=gt_ids, gt_segments=gt_segments, pred_ids=pred_ids,
                                    pred_segments=pred_segments, categories=categories,
                                    image_id=i))
  return float(pq.pq_results(stats, categories)["All"]["pq"] * 100)


def deviation(model_cfg, sizes, *, images: int, min_size, max_size, log=print) -> dict:
  """buckets:2 against the official padding on `images` drawn images, random weights."""
  model = build_model(model_cfg)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), np.zeros((1, 64, 64, 3), np.float32))
  fn = jax.jit(model.apply)
  inputs = [eval_sizes.eval_resize_size(h, w, min_size, max_size) for h, w in sizes]
  table = eval_sizes.bucket_table(inputs, pad_to="buckets:2")
  num_classes = int(model_cfg.num_classes)
  isthing = [k < num_classes * 80 // 133 for k in range(num_classes)]
  rng = np.random.default_rng(1)
  # Half landscape, half portrait, each padded to less than its bucket.
  picks = [i for i, s in enumerate(inputs)
           if table[eval_sizes.padded_to_multiple(s)] != eval_sizes.padded_to_multiple(s)]
  land = [i for i in picks if inputs[i][1] >= inputs[i][0]]
  port = [i for i in picks if inputs[i][1] < inputs[i][0]]
  chosen = (land[:(images + 1) // 2] + port[:images // 2])[:images]
  max_logit = max_mask = 0.0
  agree = total = 0
  pairs = []
  for i in chosen:
    h, w = inputs[i]
    image = rng.normal(size=(h, w, 3)).astype(np.float32)
    results = []
    for padded in (eval_sizes.padded_to_multiple((h, w)), table[eval_sizes.padded_to_multiple(
        (h, w))]):
      x = np.zeros((1, *padded, 3), np.float32)
      x[0, :h, :w] = image
      out = jax.device_get(fn(variables, x))
      results.append((out, padded))
    (a, pa), (b, pb) = results
    max_logit = max(max_logit, float(np.abs(a["pred_logits"] - b["pred_logits"]).max()))
    mh, mw = -(-h // 4), -(-w // 4)
    max_mask = max(max_mask, float(np.abs(a["pred_masks"][..., :mh, :mw]
                                          - b["pred_masks"][..., :mh, :mw]).max()))
    post = [inference.postprocess(
        pred_logits=o["pred_logits"].astype(np.float32),
        pred_masks=o["pred_masks"].astype(np.float32), padded_size=p, image_sizes=[(h, w)],
        semantic_on=True, panoptic_on=True, isthing=isthing, object_mask_threshold=0.0)[0]
            for o, p in results]
    agree += int((post[0]["sem_seg"] == post[1]["sem_seg"]).sum())
    total += h * w
    pairs.append((post[0]["panoptic_seg"], post[1]["panoptic_seg"]))
    log(f"  {h}x{w}: padded {pa} vs bucket {pb}")
  out = dict(images=len(chosen), max_logit_diff=max_logit, max_mask_diff=max_mask,
             semantic_agreement=100 * agree / max(total, 1), pq_vs_official=_panoptic_pq(
                 pairs, isthing))
  log(f"  buckets:2 vs official padding ({len(chosen)} images, random weights): max |class "
      f"logit diff| {max_logit:.3g}, max |mask logit diff| in the image {max_mask:.3g}, "
      f"semantic labels agreeing {out['semantic_agreement']:.1f}%, PQ vs official "
      f"{out['pq_vs_official']:.1f}")
  return out


def synthetic_deviation(checkpoint: str | None, *, log=print) -> dict:
  """The synthetic validation set through m2f_jax.evaluate, pad_to image and buckets:2."""
  from m2f_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from m2f_jax import evaluate  # pylint: disable=g-import-not-at-top
  if checkpoint:
    config, model, variables = checkpoint_lib.load_checked(checkpoint)
  else:
    config = config_lib.load_config_file(str(REPO / CONFIGS["tiny"]))
    model = build_model(config.model)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0),
                                    np.zeros((1, 64, 64, 3), np.float32))
  reports = {}
  for mode in ("image", "buckets:2"):
    config.eval.pad_to = mode
    with tempfile.TemporaryDirectory() as workdir:
      reports[mode] = evaluate.evaluate(config=config, model=model, variables=variables,
                                        workdir=workdir, num_visualizations=0)
  out = {}
  for key, metric in (("panoptic_seg", "PQ"), ("sem_seg", "mIoU"), ("segm", "AP")):
    a, b = reports["image"][key][metric], reports["buckets:2"][key][metric]
    out[metric] = (a, b)
    log(f"  synthetic validation ({'trained' if checkpoint else 'random weights'}): {metric} "
        f"image {a:.2f}, buckets:2 {b:.2f} (difference {b - a:+.2f}); padded sizes "
        f"{reports['image']['timing']['padded_sizes']} -> "
        f"{reports['buckets:2']['timing']['padded_sizes']}")
  return out


def eval_runs(num_images: int, *, log=print) -> list[dict]:
  """eval.py on the tiny config: compiled as needed, ahead of time, then from the cache."""
  from m2f_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config_file(str(REPO / CONFIGS["tiny"]))
  model = build_model(config.model)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), np.zeros((1, 64, 64, 3), np.float32))
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    model_dir = checkpoint_lib.save_model(os.path.join(tmp, "model"), config, variables)
    cache = os.path.join(tmp, "cache")
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
    same = [f"--config={REPO / CONFIGS['tiny']}", "--config.eval.min_size=0",  # own sizes
            "--config.eval.max_size=0", "--config.eval.object_mask_threshold=0.0"]
    for name, args in (("compiled as batches come, no cache",
                        ["--compilation_cache=none", "--config.eval.compile_ahead=False"]),
                       ("compiled ahead of time, no cache", ["--compilation_cache=none"]),
                       ("compiled ahead of time, empty cache", [f"--compilation_cache={cache}"]),
                       ("second run, same cache", [f"--compilation_cache={cache}"])):
      args = same + args
      workdir = os.path.join(tmp, f"eval{len(rows)}")
      t0 = time.perf_counter()
      run = subprocess.run([sys.executable, str(REPO / "eval.py"), f"--checkpoint={model_dir}",
                            f"--workdir={workdir}", f"--max_images={num_images}", *args],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
      wall = time.perf_counter() - t0
      if run.returncode != 0:
        raise RuntimeError(f"eval.py {args} failed:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}")
      with open(os.path.join(workdir, "eval_results.json")) as f:
        report = json.load(f)
      timing = report["timing"]
      rows.append(dict(run=name, wall_s=wall, seconds=report["seconds"], **{
          k: timing[k] for k in ("padded_sizes", "compiles", "compile_s", "compile_cache_hits",
                                 "compile_wait_s", "compile_ahead_threads")},
          PQ=report["panoptic_seg"]["PQ"]))
      log(f"  eval.py, {name}: {wall:.1f} s in all (evaluate {report['seconds']:.1f} s), "
          f"{timing['padded_sizes']} padded sizes, {timing['compiles']} compiles "
          f"({timing['compile_s']:.1f} s), {timing['compile_cache_hits']} read from the cache, "
          f"waited {timing['compile_wait_s']:.1f} s")
  return rows


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def host_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def fmt_seconds(seconds) -> str:
  if seconds is None:
    return "-"
  return f"{seconds / 60:.1f} min" if seconds >= 600 else f"{seconds:.0f} s"


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--configs", default="r50,swin_l",
                      help="of " + ", ".join(CONFIGS) + " ('': none)")
  parser.add_argument("--num-images", type=int, default=5000)
  parser.add_argument("--coco-json", default="", help="take the sizes of this COCO JSON")
  parser.add_argument("--min-size", type=int, default=800, help="0: no test-time resize")
  parser.add_argument("--max-size", type=int, default=1333)
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--sizes", type=int, default=4,
                      help="padded sizes compiled (the most frequent, landscape and portrait "
                      "alternating): one after the other, then on the thread pool")
  parser.add_argument("--threads", type=int, default=0, help="pool threads (0: host cores)")
  parser.add_argument("--run", action="store_true",
                      help="time a forward batch (random weights) for the projected totals")
  parser.add_argument("--runs", type=int, default=3)
  parser.add_argument("--deviation", action="store_true", help="buckets:2 vs official")
  parser.add_argument("--deviation-images", type=int, default=4)
  parser.add_argument("--synthetic", action="store_true",
                      help="the synthetic validation set, image vs buckets:2 (data stack)")
  parser.add_argument("--checkpoint", default="", help="--synthetic: a trained tiny model")
  parser.add_argument("--eval-runs", action="store_true",
                      help="eval.py on the tiny config: as needed, ahead of time, cached")
  parser.add_argument("--eval-images", type=int, default=40)
  args = parser.parse_args(argv)
  args.configs = [c for c in args.configs.split(",") if c]
  unknown = set(args.configs) - set(CONFIGS)
  if unknown:
    parser.error(f"--configs: unknown {sorted(unknown)}; use {sorted(CONFIGS)}")
  args.threads = args.threads or host_cores()
  return args


def main(argv=None, log=print) -> dict:
  args = parse_args(argv)
  dev = jax.devices()[0]
  stamp = f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"
  sizes = sizes_from_json(args.coco_json) if args.coco_json else coco_val2017_sizes(
      args.num_images)
  min_size, max_size = (args.min_size or None), (args.max_size if args.min_size else None)
  log(f"# benchmarks/eval_compiles.py, {stamp}: jax {jax.__version__} on {dev.platform} "
      f"({dev.device_kind}), {host_cores()} host cores; {len(sizes)} images "
      f"({args.coco_json or 'drawn like COCO val2017'}), resize {min_size}/{max_size}, "
      f"batch {args.batch_size}")
  plan = plans(sizes, batch=args.batch_size, min_size=min_size, max_size=max_size)
  for mode, shapes in plan.items():
    counts = np.cumsum(sorted((s.images for s in shapes), reverse=True))
    top = sorted(shapes, key=lambda s: -s.images)[:3]
    hold = int(np.searchsorted(counts, 0.9 * len(sizes))) + 1
    log(f"pad_to={mode}: {len(shapes)} padded sizes ({hold} hold 90% of the images); most: "
        + ", ".join(f"{s.padded_size[0]}x{s.padded_size[1]} ({s.images})" for s in top))
  result = dict(header=stamp, platform=dev.platform, device=dev.device_kind,
                images=len(sizes), sizes={m: len(s) for m, s in plan.items()}, configs={})
  shapes = measurement_order(plan["image"])[:args.sizes]
  for name in args.configs:
    log(f"{name} ({CONFIGS[name]}):")
    model_cfg = load_model_config(name)
    compiler = Compiler(model_cfg, args.batch_size)
    measured = measure_compiles(compiler, shapes, threads=args.threads, log=log)
    ref = max(plan["image"], key=lambda s: s.images).padded_size
    batch_s = time_forward(compiler, ref, runs=args.runs, log=log) if args.run else None
    entry = dict(measured=measured, batch_s=batch_s, ref_size=ref, projections={})
    for mode in MODES:
      p = projection(plan[mode], measured, batch_s=batch_s, ref_size=ref)
      entry["projections"][mode] = p
    if args.deviation:
      entry["deviation"] = deviation(model_cfg, sizes, images=args.deviation_images,
                                     min_size=min_size, max_size=max_size, log=log)
    result["configs"][name] = entry
  if args.synthetic:
    result["synthetic"] = synthetic_deviation(args.checkpoint or None, log=log)
  if args.eval_runs:
    result["eval_runs"] = eval_runs(args.eval_images, log=log)
  log("")
  log(markdown(result))
  return result


def markdown(result: dict) -> str:
  lines = [f"{result['images']} images, {result['platform']} ({result['device']}), "
           f"{result['header']}"]
  if result["configs"]:
    lines += ["", "| config | pad_to | padded sizes | compile s per size (forward + post) | "
              "s per size from the cache | compiles, serial | compiles, ahead of time on the "
              "pool | compiles, cached | forward, all images |", "|" + "---|" * 9]
  for name, entry in result["configs"].items():
    m = entry["measured"]
    for mode, p in entry["projections"].items():
      lines.append(
          f"| {name} | {mode} | {p['sizes']} | {m['forward_s']:.1f} + {m['post_s']:.1f} | "
          f"{m['cache_s']:.2f} | {fmt_seconds(p['compile_s'])} | {fmt_seconds(p['pooled_s'])} "
          f"({m['threads']} threads: {m['serial_s'] / m['pooled_s']:.2f}x on {m['pool_sizes']} "
          f"sizes) | {fmt_seconds(p['cache_s'])} | {fmt_seconds(p['forward_s'])} |")
  deviations = [(n, e["deviation"]) for n, e in result["configs"].items() if "deviation" in e]
  if deviations:
    lines += ["", "| config | images | max abs class logit diff | max abs mask logit diff "
              "(in the image) | semantic labels agreeing | PQ vs official padding |",
              "|" + "---|" * 6]
    for name, d in deviations:
      lines.append(f"| {name} | {d['images']} | {d['max_logit_diff']:.3g} | "
                   f"{d['max_mask_diff']:.3g} | {d['semantic_agreement']:.1f}% | "
                   f"{d['pq_vs_official']:.1f} |")
  if "synthetic" in result:
    lines += [""] + [f"- synthetic validation {k}: image {a:.2f}, buckets:2 {b:.2f}"
                     for k, (a, b) in result["synthetic"].items()]
  if "eval_runs" in result:
    lines += ["", "| eval.py run | wall s | padded sizes | compiles | compile s | read from "
              "cache | waited s |", "|" + "---|" * 7]
    for r in result["eval_runs"]:
      lines.append(f"| {r['run']} | {r['wall_s']:.1f} | {r['padded_sizes']} | {r['compiles']} "
                   f"| {r['compile_s']:.1f} | {r['compile_cache_hits']} | "
                   f"{r['compile_wait_s']:.1f} |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
