r"""A network-free video panoptic baseline that sees only colour, beside the model's VPQ.

  python experiments/video_colour_baseline.py                           # the main video job's
  python experiments/video_colour_baseline.py --workdir /tmp/m2f_video   # + the model's VPQ

The image baseline of `experiments/colour_baseline.py` run on every frame, with tracks: a
Gaussian colour model per class fitted on the frames of `--train-videos` training videos,
every pixel labelled by the class of highest posterior and smoothed by a 3x3 mode filter;
each stuff class is one segment over the whole video (one id, so stuff tubes are perfect
whenever the classes are); each 8-connected component of a thing class (at least
`--min-area` pixels) continues the track of the previous frame's component of the same class
that it overlaps most (greedy, by overlap), or starts a new track.

The videos are those the main video job evaluates (`configs/synthetic_video.py`'s data
section: `data.num_val` validation videos of `data.video_frames` frames of
`data.video_size`), scored with the evaluator `eval.py` uses (`m2f_jax.evaluation.
video_panoptic`: VIPSeg's VPQ over windows of 1, 2, 4, 6, 8 frames, and STQ). The video
AP needs scored tubes and is not computed here. `--workdir` reads the model's figures from
its `eval_results.json`.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # colour_baseline
# benchmarks/video_panoptic_eval.py: the segments of each frame of the same videos.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))

# pylint: disable=g-import-not-at-top,wrong-import-position
from colour_baseline import ColourModel
from colour_baseline import mode_filter
from colour_baseline import model_results
from colour_baseline import panoptic_from_classes
from colour_baseline import write_report
from m2f_jax import config_lib
from m2f_jax.data import synthetic
from m2f_jax.data import synthetic_video
from m2f_jax.evaluation import video_panoptic
from video_panoptic_eval import frame_segments


def link_frame(classes: np.ndarray, isthing, previous: dict[int, tuple[int, np.ndarray]],
               next_id: int, *, min_area: int, stuff_ids: dict[int, int]):
  """One frame's class map -> (ids [H, W], segments, tracks, next_id).

  `previous` maps a track id to (class, mask) in the previous frame; a thing component takes
  the id of the same-class previous mask it overlaps most, each previous track at most once
  (pairs taken in decreasing overlap), else the new id `next_id` (and next_id grows).
  Stuff class k is always `stuff_ids[k]`.
  """
  frame_ids, found = panoptic_from_classes(classes, isthing, min_area=min_area)
  ids = np.zeros(classes.shape, np.int64)
  segments, parts = [], []  # parts: the thing components, (class, mask)
  for segment in found:
    k, mask = segment["class"], frame_ids == segment["id"]
    if isthing[k]:
      parts.append((k, mask))
    else:
      ids[mask] = stuff_ids[k]
      segments.append({"id": stuff_ids[k], "category_id": k})
  pairs = sorted(((int((part & old).sum()), i, track)
                  for i, (k, part) in enumerate(parts)
                  for track, (old_k, old) in previous.items() if old_k == k), reverse=True)
  assigned, taken = {}, set()
  for overlap, i, track in pairs:
    if overlap > 0 and i not in assigned and track not in taken:
      assigned[i] = track
      taken.add(track)
  tracks = {}
  for i, (k, part) in enumerate(parts):
    if i not in assigned:
      assigned[i], next_id = next_id, next_id + 1
    ids[part] = assigned[i]
    segments.append({"id": assigned[i], "category_id": k})
    tracks[assigned[i]] = (k, part)
  return ids, segments, tracks, next_id


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/synthetic_video.py",
                      help="whose data section names the validation videos")
  parser.add_argument("--num-val", type=int, help="validation videos (default: data.num_val)")
  parser.add_argument("--train-videos", type=int, default=10)
  parser.add_argument("--min-area", type=int, default=16, help="smallest thing component")
  parser.add_argument("--workdir", help="a training workdir: print its eval_results.json")
  parser.add_argument("--output", help="write the baseline's report here (JSON)")
  args = parser.parse_args(argv)

  data = config_lib.load_config_file(args.config).data
  clip = dict(seed=data.seed, num_frames=data.video_frames,
              image_size=tuple(data.video_size) if data.get("video_size") else None)
  categories = [{k: c[k] for k in ("id", "name", "isthing")} for c in synthetic.CATEGORIES]
  isthing = [bool(c["isthing"]) for c in categories]
  num_classes = len(categories)
  start = time.time()
  train = [synthetic_video.generate_clip(i, split="train", **clip)
           for i in range(args.train_videos)]
  model = ColourModel(num_classes, ignore_label=synthetic.IGNORE_LABEL).fit(
      [frame for v in train for frame in v["video"]],
      [frame for v in train for frame in v["semantic"]])

  evaluator = video_panoptic.VideoPanopticEvaluator(categories=categories)
  num_val = args.num_val or data.num_val
  stuff_ids = {k: k + 1 for k in range(num_classes) if not isthing[k]}  # the same in every frame
  for index in range(num_val):
    video = synthetic_video.generate_clip(index, split="validation", **clip)
    tracks, next_id, pred_ids, pred_segments = {}, num_classes + 1, [], []
    for frame in video["video"]:
      classes = mode_filter(model.predict(frame), num_classes)
      ids, segments, tracks, next_id = link_frame(classes, isthing, tracks, next_id,
                                                  min_area=args.min_area, stuff_ids=stuff_ids)
      pred_ids.append(ids)
      pred_segments.append(segments)
    evaluator.update(video_id=video["video_id"], gt_ids=video["panoptic"],
                     gt_segments=frame_segments(video), pred_ids=pred_ids,
                     pred_segments=pred_segments)
  results = evaluator.compute()
  report = results["video_panoptic_seg"]
  print(f"colour baseline on {num_val} synthetic validation videos of {clip['num_frames']} "
        f"frames (Gaussian colour model fitted on {args.train_videos} training videos; "
        f"{time.time() - start:.1f} s)")
  print("  ".join(f"{k} {v:.2f}" for k, v in report.items() if v is not None))
  print("VPQ per window: " + ", ".join(f"{k}: {w['VPQ']:.2f}"
                                       for k, w in results["vpq_windows"].items()))
  line = f"VPQ: colour baseline {report['VPQ']:.1f}"
  if args.workdir:
    path, model = model_results(args.workdir, "video_panoptic_seg")
    line += f"   model ({path}) {model['VPQ']:.1f}"
    line += f"   STQ: colour baseline {report['STQ']:.1f}   model {model['STQ']:.1f}"
  print(line)
  write_report(args.output, results)
  return results


if __name__ == "__main__":
  main()
