r"""Evaluation throughput on COCO-like image sizes: images/s, compilations, time split.

Runs `m2f_jax.evaluate.evaluate` (what `eval.py` runs: eval batches grouped by padded size,
the jit-compiled network, post-processing, the semantic / panoptic / instance evaluators)
on `--num-images` synthetic images whose sizes follow COCO val2017 (mostly 640 px on the
long side, landscape and portrait, some smaller ones), resized as the official COCO test
time (shortest edge 800, longest at most 1333) unless `--min-size 0`. The model is the
tiny config's with random weights and the panoptic object threshold at 0, so that
post-processing builds segments for every image as a trained model would (accuracy is not
what this measures).

Prints the number of padded sizes (buckets) the images fall in, the compilations of the
network and of post-processing (bounded by the buckets: one forward and at most two
post-processing functions per bucket when originals fit in their padded size), images/s,
and the time split between reading/batching, the forward pass (with its compilation),
post-processing and metrics.

  python benchmarks/eval.py                      # 300 images, COCO test-time resize
  python benchmarks/eval.py --num-images 60 --min-size 0   # quicker: original sizes
"""

import argparse
import collections
import importlib.util
import pathlib
import tempfile
import time

import jax
import numpy as np

from m2f_jax import evaluate
from m2f_jax.data import synthetic
from m2f_jax.data import transforms
from m2f_jax.models.mask2former import build_model

REPO = pathlib.Path(__file__).resolve().parents[1]


def coco_like_sizes(n: int, seed: int = 0) -> list[tuple[int, int]]:
  """(H, W) of `n` images distributed like COCO val2017's."""
  rng = np.random.default_rng(seed)
  sizes = []
  for _ in range(n):
    u = rng.random()
    if u < 0.70:  # landscape, 640 wide
      sizes.append((int(rng.integers(360, 481)), 640))
    elif u < 0.95:  # portrait, 640 tall
      sizes.append((640, int(rng.integers(360, 481))))
    else:  # smaller images
      long_side = int(rng.integers(300, 600))
      short = int(long_side * rng.uniform(0.6, 1.0))
      sizes.append((short, long_side) if rng.random() < 0.5 else (long_side, short))
  return sizes


def tiny_config():
  spec = importlib.util.spec_from_file_location("_tiny", REPO / "configs" / "tiny.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num-images", type=int, default=300)
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--min-size", type=int, default=800, help="0: keep the original sizes")
  parser.add_argument("--max-size", type=int, default=1333)
  args = parser.parse_args()

  config = tiny_config()
  min_size = args.min_size or None
  config.eval.update(batch_size=args.batch_size, object_mask_threshold=0.0,
                     min_size=min_size, max_size=args.max_size if min_size else None,
                     evaluators=("semantic", "panoptic", "instance"))
  sizes = coco_like_sizes(args.num_images)
  t = time.perf_counter()
  records = [dict(synthetic.generate_record(i, split="validation", image_size=size),
                  image_id=i) for i, size in enumerate(sizes)]
  generate_s = time.perf_counter() - t
  buckets = collections.Counter()
  for h, w in sizes:
    rh, rw = transforms.eval_resize_size(h, w, min_size, config.eval.max_size)
    buckets[(-(-rh // 32) * 32, -(-rw // 32) * 32)] += 1

  model = build_model(config.model)
  variables = model.init(jax.random.PRNGKey(0), np.zeros((1, 64, 64, 3), np.float32))
  with tempfile.TemporaryDirectory() as workdir:
    report = evaluate.evaluate(config=config, model=model, variables=variables,
                               workdir=workdir, source=records, num_visualizations=0)
  timing = report["timing"]
  total = report["seconds"]
  print(f"# benchmarks/eval.py: {args.num_images} COCO-like images, batch {args.batch_size}, "
        f"test-time resize {min_size}/{config.eval.max_size if min_size else None}, "
        f"jax {jax.__version__} on {jax.devices()[0].platform} "
        f"({jax.local_device_count()} device(s)); images generated in {generate_s:.1f} s")
  print(f"padded sizes (buckets): {len(buckets)}; largest: "
        + ", ".join(f"{h}x{w} ({n})" for (h, w), n in buckets.most_common(3)))
  print(f"compilations: forward {timing['forward_compilations']}, post-processing "
        f"{timing['postprocess_compilations']}")
  print(f"images/s: {report['num_images'] / total:.2f} ({report['num_images']} images in "
        f"{total:.1f} s, compilation included)")
  print("time split: " + ", ".join(
      f"{k} {timing[f'{k}_s']:.1f} s ({100 * timing[f'{k}_s'] / total:.0f}%)"
      for k in ("data", "forward", "postprocess", "metrics")))
  print(f"PQ {report['panoptic_seg']['PQ']:.2f}, mIoU {report['sem_seg']['mIoU']:.2f}, "
        f"AP {report['segm']['AP']:.2f} (random weights: only the work is meaningful)")


if __name__ == "__main__":
  main()
