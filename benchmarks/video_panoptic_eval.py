r"""Speed of the VPQ + STQ evaluator (`m2f_jax.evaluation.video_panoptic`) on synthetic videos.

The validation videos of `synthetic_video` (the main video job's evaluation set: 50 videos of
8 frames, 96x96) are scored twice: with their ground truth as the prediction (VPQ 100), and
with every segment id shifted and 5% of the pixels made void (a prediction that differs from
the truth, so every matching branch runs). Only the evaluator is timed (`update` of every
video + `compute`: VPQ over the windows 1, 2, 4, 6, 8 and STQ); generating the videos and the
model's inference are not.

  python benchmarks/video_panoptic_eval.py                      # 50 videos, 8 frames, 96x96
  python benchmarks/video_panoptic_eval.py --videos 10 --size 256 --frames 12
"""

import argparse
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from m2f_jax.data import synthetic  # pylint: disable=g-import-not-at-top,wrong-import-position
from m2f_jax.data import synthetic_video  # pylint: disable=g-import-not-at-top,wrong-import-position
from m2f_jax.evaluation import video_panoptic  # pylint: disable=g-import-not-at-top,wrong-import-position


def frame_segments(video) -> list[list[dict]]:
  """Per frame, the segments of `video` present in it ({"id", "category_id", "iscrowd"})."""
  info = video["segments_info"]
  segments = [{"id": int(i), "category_id": int(c), "iscrowd": int(k)}
              for i, c, k in zip(info["id"], info["category_id"], info["iscrowd"])]
  present = [set(np.unique(frame).tolist()) for frame in video["panoptic"]]
  return [[s for s in segments if s["id"] in ids] for ids in present]


def perturbed(video, rng: np.random.Generator, void_fraction: float = 0.05):
  """A prediction from the truth: ids shifted by 1000, `void_fraction` of the pixels void."""
  ids = np.where(video["panoptic"] > 0, video["panoptic"] + 1000, 0)
  ids[rng.random(ids.shape) < void_fraction] = 0
  segments = [[dict(s, id=s["id"] + 1000) for s in frame] for frame in frame_segments(video)]
  return ids, segments


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--videos", type=int, default=50)
  parser.add_argument("--frames", type=int, default=8)
  parser.add_argument("--size", type=int, default=96, help="square frames of this side")
  args = parser.parse_args(argv)
  categories = [{k: c[k] for k in ("id", "name", "isthing")} for c in synthetic.CATEGORIES]
  videos = [synthetic_video.generate_clip(i, split="validation", seed=0, num_frames=args.frames,
                                          image_size=(args.size, args.size))
            for i in range(args.videos)]
  rng = np.random.default_rng(0)
  cases = {"truth as prediction": [(v["panoptic"], frame_segments(v)) for v in videos],
           "ids shifted, 5% void": [perturbed(v, rng) for v in videos]}
  print(f"{args.videos} videos x {args.frames} frames of {args.size}x{args.size}")
  print(f"{'prediction':<22} {'seconds':>8} {'videos/s':>9} {'VPQ':>6} {'STQ':>6}")
  for name, predictions in cases.items():
    evaluator = video_panoptic.VideoPanopticEvaluator(categories=categories)
    start = time.perf_counter()
    for video, (ids, segments) in zip(videos, predictions):
      evaluator.update(video_id=video["video_id"], gt_ids=video["panoptic"],
                       gt_segments=frame_segments(video), pred_ids=ids, pred_segments=segments)
    report = evaluator.compute()["video_panoptic_seg"]
    seconds = time.perf_counter() - start
    print(f"{name:<22} {seconds:8.3f} {args.videos / seconds:9.1f} {report['VPQ']:6.1f} "
          f"{report['STQ']:6.1f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
