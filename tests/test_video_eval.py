"""Tests of m2f_jax/evaluation/video_instance.py on hand-computed cases: tube IoU with None
frames, crowd truths, area ranges on the mean area of present frames, maxDets (AR1 / AR10),
the streaming evaluator and the CLI. (Checked against youtubevos/cocoapi's ytvoseval on
random cases while developing: identical to the last digit.)"""

import json
import math

import numpy as np
import pytest

from m2f_jax.evaluation import instance as instance_eval
from m2f_jax.evaluation import video_instance as vi


def _box(h, w, y0, x0, y1, x1):
  m = np.zeros((h, w), np.uint8)
  m[y0:y1, x0:x1] = 1
  return m


def _tube(frames):
  """[mask or None per frame] -> segmentations (compressed RLE or None)."""
  return [None if m is None else instance_eval.mask_to_rle(m) for m in frames]


def _areas(frames):
  return [None if m is None else int(m.sum()) for m in frames]


def _gt(videos, annotations, num_categories=1):
  anns = []
  for i, a in enumerate(annotations):
    anns.append({"id": i + 1, "video_id": a["video_id"], "category_id": a.get("category_id", 1),
                 "iscrowd": a.get("iscrowd", 0), "segmentations": _tube(a["frames"]),
                 "areas": _areas(a["frames"])})
  return {"videos": videos, "annotations": anns,
          "categories": [{"id": k + 1, "name": f"c{k + 1}"} for k in range(num_categories)]}


def _pred(video_id, frames, score, category_id=1):
  return {"video_id": video_id, "category_id": category_id, "score": score,
          "segmentations": _tube(frames)}


def test_tube_iou_sums_over_frames_and_counts_one_sided_frames():
  h = w = 10
  gt = [_box(h, w, 0, 0, 2, 2), None, _box(h, w, 5, 5, 7, 7)]  # areas 4, -, 4
  pred = [_box(h, w, 0, 1, 2, 3), _box(h, w, 0, 0, 1, 2), None]  # 4 (2 shared), 2, -
  inter = vi.tube_intersections([_tube(pred)], [_tube(gt)], 3)
  assert inter.tolist() == [[2]]
  pixels = lambda f: np.array([[0 if m is None else m.sum() for m in f]])  # pylint: disable=unnecessary-lambda-assignment
  iou = vi.tube_ious(pixels(pred), pixels(gt), inter)
  # I = 2; U = (4 + 4 - 2) + 2 (pred only) + 4 (truth only) = 12.
  assert iou[0, 0] == pytest.approx(2 / 12)


def test_ap_thresholds_of_one_match():
  h = w = 20
  videos = [{"id": 7, "height": h, "width": w, "length": 2}]
  gt = [_box(h, w, 0, 0, 10, 10), None]
  # IoU = 60 / 100: matched at thresholds .50 and .55 and .60 -> AP = 3/10, AP50 1, AP75 0.
  pred = [_box(h, w, 0, 0, 6, 10), _box(h, w, 12, 12, 14, 14)]  # 60 shared; 4 extra px
  # U = 100 + 4 = 104 -> IoU 60/104 = 0.577: thresholds .50, .55 -> AP 20.
  report = vi.evaluate(_gt(videos, [{"video_id": 7, "frames": gt}]), [_pred(7, pred, 0.9)])
  segm = report["segm"]
  assert segm["AP"] == pytest.approx(20.0)
  assert segm["AP50"] == pytest.approx(100.0) and segm["AP75"] == pytest.approx(0.0)
  assert segm["AR1"] == pytest.approx(20.0) and segm["AR10"] == pytest.approx(20.0)
  # area 100 < 128^2: small; medium and large have no truth.
  assert segm["APs"] == pytest.approx(20.0)
  assert math.isnan(segm["APm"]) and math.isnan(segm["APl"])


def test_crowd_truth_is_ignored():
  h = w = 20
  videos = [{"id": 1, "height": h, "width": w, "length": 1}]
  crowd, person = _box(h, w, 0, 0, 5, 5), _box(h, w, 10, 10, 15, 15)
  gt = _gt(videos, [{"video_id": 1, "frames": [crowd], "iscrowd": 1},
                    {"video_id": 1, "frames": [person]}])
  # The top prediction covers the crowd region: ignored, not a false positive.
  preds = [_pred(1, [crowd], 0.9), _pred(1, [person], 0.8)]
  assert vi.evaluate(gt, preds)["segm"]["AP"] == pytest.approx(100.0)
  # Without the crowd truth the top prediction is a false positive: precision 1/2 at every
  # recall point.
  gt["annotations"].pop(0)
  assert vi.evaluate(gt, preds)["segm"]["AP"] == pytest.approx(50.0)
  # A crowd truth alone: nothing to find.
  only_crowd = _gt(videos, [{"video_id": 1, "frames": [crowd], "iscrowd": 1}])
  assert math.isnan(vi.evaluate(only_crowd, preds)["segm"]["AP"])


def test_area_ranges_use_the_mean_of_present_frames():
  h = w = 300
  videos = [{"id": 1, "height": h, "width": w, "length": 2}]
  medium = _box(h, w, 0, 0, 130, 130)  # 16900 >= 128^2; (16900 + 0) / 2 would be small
  tube = [medium, None]
  gt = _gt(videos, [{"video_id": 1, "frames": tube}])
  segm = vi.evaluate(gt, [_pred(1, tube, 0.5)])["segm"]
  assert segm["APm"] == pytest.approx(100.0)
  assert math.isnan(segm["APs"]) and math.isnan(segm["APl"])
  # The ground truth's area comes from its JSON "areas", as ytvoseval.
  gt["annotations"][0]["areas"] = [70000, None]
  segm = vi.evaluate(gt, [_pred(1, tube, 0.5)])["segm"]
  assert segm["APl"] == pytest.approx(100.0) and math.isnan(segm["APm"])


def test_max_detections_ar1_ar10():
  h = w = 20
  videos = [{"id": 1, "height": h, "width": w, "length": 1}]
  a, b = _box(h, w, 0, 0, 5, 5), _box(h, w, 10, 10, 15, 15)
  gt = _gt(videos, [{"video_id": 1, "frames": [a]}, {"video_id": 1, "frames": [b]}])
  segm = vi.evaluate(gt, [_pred(1, [a], 0.9), _pred(1, [b], 0.8)])["segm"]
  assert segm["AR1"] == pytest.approx(50.0) and segm["AR10"] == pytest.approx(100.0)
  assert segm["AP"] == pytest.approx(100.0)


def test_categories_are_matched_separately_and_reported():
  h = w = 20
  videos = [{"id": 1, "height": h, "width": w, "length": 1}]
  a = _box(h, w, 0, 0, 5, 5)
  gt = _gt(videos, [{"video_id": 1, "frames": [a], "category_id": 1},
                    {"video_id": 1, "frames": [a], "category_id": 2}], num_categories=2)
  segm = vi.evaluate(gt, [_pred(1, [a], 0.9, category_id=1)])["segm"]
  assert segm["AP-c1"] == pytest.approx(100.0) and segm["AP-c2"] == pytest.approx(0.0)
  assert segm["AP"] == pytest.approx(50.0)


def test_no_prediction_and_bad_input():
  videos = [{"id": 1, "height": 4, "width": 4, "length": 2}]
  gt = _gt(videos, [{"video_id": 1, "frames": [_box(4, 4, 0, 0, 2, 2), None]}])
  assert all(math.isnan(v) for v in vi.evaluate(gt, [])["segm"].values())
  with pytest.raises(ValueError, match="video 2"):
    vi.evaluate(gt, [_pred(2, [None, None], 0.5)])
  with pytest.raises(ValueError, match="1 frame segmentations"):
    vi.evaluate(gt, [_pred(1, [None], 0.5)])
  with pytest.raises(ValueError, match=r"\[5, 4\]"):
    vi.evaluate(gt, [_pred(1, [_box(5, 4, 0, 0, 1, 1), None], 0.5)])


def test_polygons_and_uncompressed_rle_ground_truth():
  h, w = 10, 12
  videos = [{"id": 1, "height": h, "width": w, "length": 2}]
  mask = _box(h, w, 2, 3, 6, 8)
  flat = mask.T.reshape(-1)
  change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [2]])))  # run starts
  counts = np.diff(np.concatenate([[0], change])).tolist()
  gt = {"videos": videos, "categories": [{"id": 1, "name": "a"}], "annotations": [
      {"id": 1, "video_id": 1, "category_id": 1, "iscrowd": 0, "areas": [20, 20],
       "segmentations": [[[3, 2, 8, 2, 8, 6, 3, 6]], {"size": [h, w], "counts": counts}]}]}
  from pycocotools import mask as mask_util  # pylint: disable=g-import-not-at-top
  polygon = mask_util.decode(mask_util.merge(mask_util.frPyObjects([[3, 2, 8, 2, 8, 6, 3, 6]],
                                                                   h, w)))
  segm = vi.evaluate(gt, [_pred(1, [polygon, mask], 1.0)])["segm"]
  assert segm["AP"] == pytest.approx(100.0)


def test_streaming_evaluator_merges_and_cli(tmp_path):
  h = w = 16
  a, b = _box(h, w, 0, 0, 8, 8), _box(h, w, 4, 4, 12, 12)
  one = vi.VideoInstanceEvaluator(categories=[{"id": 0, "name": "x"}])
  two = vi.VideoInstanceEvaluator(categories=[{"id": 0, "name": "x"}])
  gt_tube = {"id": 5, "category_id": 0, "iscrowd": 0, "segmentations": _tube([a, b]),
             "areas": [64, 64]}
  one.update(video_id=3, predictions=[_pred(3, [a, b], 0.9, 0)], ground_truth=[gt_tube],
             height=h, width=w, length=2)
  two.update(video_id=4, predictions=[_pred(4, [a, None], 0.8, 0)],
             ground_truth=[dict(gt_tube, id=5)], height=h, width=w, length=2)
  one.merge(two)
  report = one.compute()
  # Video 4's prediction: I = 64, U = 64 (frame 0) + 64 (frame 1, truth only) -> IoU 0.5,
  # a match at the .50 threshold only: AP75 = recall 1/2 -> 51 of 101 recall points.
  assert report["segm"]["AP50"] == pytest.approx(100.0)
  assert report["segm"]["AP75"] == pytest.approx(50.0, abs=0.6)
  gt_path, pred_path, out = tmp_path / "gt.json", tmp_path / "pred.json", tmp_path / "r.json"
  gt_path.write_text(json.dumps(one.ground_truth_json()))
  pred_path.write_text(json.dumps(one.predictions))
  assert vi.main(["--gt-json", str(gt_path), "--pred-json", str(pred_path),
                  "--output", str(out)]) == 0
  written = json.loads(out.read_text())["segm"]
  assert set(vi.METRICS) <= set(written)
  assert written["AP"] == pytest.approx(report["segm"]["AP"])
