"""Tests of m2f_jax/evaluation/video_panoptic.py on hand-computed toy videos: VPQ per window
(an ID switch, void and crowd, a category with only false positives, windows longer than the
video), STQ with deeplab2's quirks as VIPSeg feeds it, the streaming evaluator and the CLI.
(Checked against VIPSeg's eval_vpq_vspw.py / eval_stq_vspw.py on random cases while
developing: identical to the last digit.)"""

import json
import math
import os

import numpy as np
import pytest

from m2f_jax.data.panoptic_png import write_panoptic_png
from m2f_jax.evaluation import video_panoptic as vp

WALL, PERSON, CAR, SKY = 0, 1, 2, 3  # category 0 is a real class, as VIPSeg's "wall"
CATEGORIES = [{"id": WALL, "name": "wall", "isthing": 0},
              {"id": PERSON, "name": "person", "isthing": 1},
              {"id": CAR, "name": "car", "isthing": 1},
              {"id": SKY, "name": "sky", "isthing": 0}]


def _segments(ids, categories, crowd=()):
  """segments_info of one frame: every non-zero id of the [H, W] map, its pixel count."""
  values, counts = np.unique(ids, return_counts=True)
  return [{"id": int(v), "category_id": categories[int(v)], "iscrowd": int(v in crowd),
           "area": int(n)} for v, n in zip(values, counts) if v]


def _video(gt, pred, gt_categories, pred_categories, crowd=()):
  """A video for `update`: [T, H, W] maps and per-frame segments (ids listed as sorted)."""
  gt, pred = np.asarray(gt), np.asarray(pred)
  return {"gt_ids": gt, "gt_segments": [_segments(f, gt_categories, crowd) for f in gt],
          "pred_ids": pred, "pred_segments": [_segments(f, pred_categories) for f in pred]}


def _report(videos, windows=vp.WINDOWS):
  evaluator = vp.VideoPanopticEvaluator(categories=CATEGORIES, windows=windows)
  for i, video in enumerate(videos):
    evaluator.update(video_id=f"v{i}", **video)
  return evaluator.compute()


def _window(report, k):
  w = report["vpq_windows"][str(k)]
  return w["VPQ"], w["VPQ_th"], w["VPQ_st"]


# Two frames of 1 x 4 pixels: a person (id 1) and a wall (id 2); the prediction keeps the
# wall (id 9) but gives the person id 5, then id 6.
ID_SWITCH = _video(gt=[[[1, 1, 2, 2]], [[1, 1, 2, 2]]],
                   pred=[[[5, 5, 9, 9]], [[6, 6, 9, 9]]],
                   gt_categories={1: PERSON, 2: WALL},
                   pred_categories={5: PERSON, 6: PERSON, 9: WALL})


def test_id_switch_is_penalised_in_the_two_frame_window_only():
  report = _report([ID_SWITCH])
  # k = 1: each frame matches perfectly.
  assert _window(report, 1) == (100.0, 100.0, 100.0)
  # k = 2: the person tube (4 pixels) meets two predicted tubes of 2 pixels: IoU 2/4 = 0.5 is
  # not > 0.5, so 1 FN and 2 FP (PQ 0); the wall still matches (PQ 1).
  assert _window(report, 2) == (50.0, 0.0, 100.0)
  # k = 4, 6, 8: longer than the video, no window: no category counts, undefined.
  for k in (4, 6, 8):
    assert _window(report, k) == (None, None, None)
    assert report["vpq_windows"][str(k)]["n"] == 0
  # The mean over windows is undefined as soon as one window is.
  assert report["video_panoptic_seg"]["VPQ"] is None


def test_mean_over_chosen_windows():
  summary = _report([ID_SWITCH], windows=(1, 2))["video_panoptic_seg"]
  assert (summary["VPQ"], summary["VPQ_th"], summary["VPQ_st"]) == (75.0, 50.0, 100.0)


def test_void_crowd_and_a_category_with_only_false_positives():
  # 1 x 8 pixels. Truth: person 10 (3 px), void, a crowd of cars 20 (2 px), wall 30 (2 px).
  # Prediction: person 7 on 2 person pixels and the void pixel; car 8 on the crowd; sky 9 on
  # the wall. Frame 1 is frame 0 with the person renamed 17.
  gt = [[[10, 10, 10, 0, 20, 20, 30, 30]]] * 2
  pred = [[[7, 7, 0, 7, 8, 8, 9, 9]], [[17, 17, 0, 17, 8, 8, 9, 9]]]
  video = _video(gt, pred, {10: PERSON, 20: CAR, 30: WALL},
                 {7: PERSON, 17: PERSON, 8: CAR, 9: SKY}, crowd=(20,))
  report = _report([video], windows=(1, 2))
  # k = 1, per frame: person IoU = I / (|p| + |g| - I - |p on void|) = 2 / (3 + 3 - 2 - 1)
  # = 2/3 > 0.5: TP. Car 8 lies on the crowd of its category: neither FP nor counted (the
  # crowd is no FN): car does not count. Wall: FN; sky: FP. Over 2 frames: person PQ =
  # (4/3) / 2 = 2/3, wall 0, sky 0; all = (2/3) / 3, things = person, stuff = wall and sky.
  vpq, th, st = _window(report, 1)
  assert vpq == pytest.approx(100 * 2 / 9)
  assert th == pytest.approx(100 * 2 / 3)
  assert st == 0.0
  assert report["vpq_windows"]["1"]["n"] == 3
  # k = 2: person tube 6 px vs predicted tubes 7 and 17 (3 px each, 1 on void): IoU = 2 /
  # (3 + 6 - 2 - 1) = 1/3: person 1 FN + 2 FP (neither lies mostly on void): PQ 0.
  assert _window(report, 2) == (0.0, 0.0, 0.0)
  assert report["vpq_windows"]["2"]["n_th"] == 1


def test_a_video_shorter_than_the_window_adds_nothing():
  # Video 0 (1 frame): the person is missed (FN at k = 1). Video 1 (2 frames): perfect.
  short = _video([[[1, 1, 2, 2]]], [[[0, 0, 9, 9]]], {1: PERSON, 2: WALL}, {9: WALL})
  perfect = _video([[[1, 1, 2, 2]]] * 2, [[[5, 5, 9, 9]]] * 2, {1: PERSON, 2: WALL},
                   {5: PERSON, 9: WALL})
  report = _report([short, perfect], windows=(1, 2))
  # k = 1: person TP 2 (IoU 1) + FN 1: PQ = 2 / (2 + 0.5) = 0.8; wall PQ 1.
  assert _window(report, 1) == pytest.approx((90.0, 80.0, 100.0))
  # k = 2: only the second video has a window, and it is perfect.
  assert _window(report, 2) == (100.0, 100.0, 100.0)


def test_tube_category_is_the_first_frame_s_in_the_window():
  # The prediction calls tube 5 a person in frame 0 and a car in frame 1: in the 2-frame
  # window it is a person (first listing), so it matches the person tube.
  video = _video([[[1, 1, 2, 2]]] * 2, [[[5, 5, 9, 9]]] * 2, {1: PERSON, 2: WALL},
                 {5: PERSON, 9: WALL})
  video["pred_segments"][1][0]["category_id"] = CAR
  report = _report([video], windows=(1, 2))
  assert _window(report, 2) == (100.0, 100.0, 100.0)
  # k = 1: frame 1 has a car FP and a person FN: person PQ 1 / (1 + 0.5), car 0.
  assert _window(report, 1)[1] == pytest.approx(100 * (1 / 1.5 + 0) / 2)


def test_stq_of_an_id_switch():
  # Wall listed first (instance 0, a stuff class: no effect), person instance 1.
  video = dict(ID_SWITCH)
  video["gt_segments"] = [sorted(f, key=lambda s: s["category_id"]) for f in
                          ID_SWITCH["gt_segments"]]
  summary = _report([video])["video_panoptic_seg"]
  # SQ: wall and person are labelled right everywhere: mean IoU 1.
  # AQ: person tube 4 px; predicted tubes 5 and 6 (2 px each): TPA 2, FPA 0, FNA 2, so
  # 1/4 * (2 * 2/4 + 2 * 2/4) = 1/2 over one tube. STQ = sqrt(1/2 * 1).
  assert summary["SQ"] == 100.0
  assert summary["AQ"] == pytest.approx(50.0)
  assert summary["STQ"] == pytest.approx(100 * math.sqrt(0.5))


def test_stq_first_listed_thing_is_crowd_as_vipseg_numbers_it():
  # Person listed first: eval_stq_vspw.py gives it instance 0, which deeplab2 reads as crowd:
  # no truth tube is left, AQ = 0 (deeplab2's 0 / max(0, eps)), STQ = 0.
  video = dict(ID_SWITCH)
  video["gt_segments"] = [sorted(f, key=lambda s: -s["category_id"]) for f in
                          ID_SWITCH["gt_segments"]]
  summary = _report([video])["video_panoptic_seg"]
  assert (summary["AQ"], summary["STQ"], summary["SQ"]) == (0.0, 0.0, 100.0)


def test_stq_void_prediction_counts_as_a_class_and_void_truth_is_ignored():
  # Truth: wall on 4 px and a void pixel; prediction: wall on 2 of them and on the void
  # pixel, void on the other 2. Wall IoU = 2 / 4 (the void truth pixel is dropped); the
  # void column holds 2 labelled pixels: a class with IoU 0. SQ = (1/2 + 0) / 2.
  video = _video([[[2, 2, 2, 2, 0]]], [[[9, 9, 0, 0, 9]]], {2: WALL}, {9: WALL})
  summary = _report([video])["video_panoptic_seg"]
  assert summary["SQ"] == 25.0
  assert summary["AQ"] == 0.0  # no thing tube
  assert summary["STQ"] == 0.0


def test_merge_equals_one_evaluator():
  videos = [ID_SWITCH, _video([[[1, 1, 2, 2]]] * 3, [[[5, 0, 9, 9]]] * 3,
                              {1: PERSON, 2: WALL}, {5: PERSON, 9: WALL})]
  one = _report(videos)
  a = vp.VideoPanopticEvaluator(categories=CATEGORIES)
  b = vp.VideoPanopticEvaluator(categories=CATEGORIES)
  a.update(video_id="v0", **videos[0])
  b.update(video_id="v1", **videos[1])
  a.merge(b)
  assert a.compute() == one
  with pytest.raises(ValueError, match="v1"):
    a.merge(b)


def test_category_ids_map_contiguous_predictions():
  evaluator = vp.VideoPanopticEvaluator(categories=CATEGORIES, category_ids=[3, 2, 1, 0])
  video = dict(ID_SWITCH)
  video["pred_segments"] = [[dict(s, category_id=3 - s["category_id"]) for s in f]
                            for f in ID_SWITCH["pred_segments"]]
  evaluator.update(video_id="v", **video)
  assert evaluator.compute() == _report([ID_SWITCH])


@pytest.mark.parametrize("change, message", [
    (lambda v: v["pred_segments"][1].pop(0), r"frame 1: predicted segment ids \[6\]"),
    (lambda v: v["pred_segments"][0][0].update(id=77), r"segment 77 .* not in the panoptic"),
    (lambda v: v["pred_segments"][0][0].update(category_id=40), "unknown category_id 40"),
    (lambda v: v["pred_segments"].pop(), "2 ground-truth frames but 1 predicted"),
])
def test_errors_name_video_and_frame(change, message):
  video = {k: [[dict(s) for s in f] for f in v] if k.endswith("segments") else v
           for k, v in ID_SWITCH.items()}
  change(video)
  with pytest.raises(ValueError, match=message):
    _report([video])


def _write_vipseg(root, videos):
  """VIPSeg's layout: gt/<video>/<frame>.png, pred/<video>/<frame>.png and the two JSONs."""
  gt_json = {"videos": [], "annotations": [], "categories": CATEGORIES}
  pred_json = {"annotations": []}
  for video_id, video in videos.items():
    names = [f"{t:08d}.png" for t in range(len(video["gt_ids"]))]
    for folder, key in (("gt", "gt_ids"), ("pred", "pred_ids")):
      os.makedirs(os.path.join(root, folder, video_id))
      for name, ids in zip(names, video[key]):
        write_panoptic_png(os.path.join(root, folder, video_id, name), ids)
    gt_json["videos"].append({"video_id": video_id, "images": [
        {"id": n[:-4], "file_name": n, "height": 1, "width": 4} for n in names]})
    gt_json["annotations"].append({"video_id": video_id, "annotations": [
        {"image_id": n[:-4], "file_name": n, "segments_info": s}
        for n, s in zip(names, video["gt_segments"])]})
    pred_json["annotations"].append({"video_id": video_id, "annotations": [
        {"file_name": n[:-4] + ".jpg", "segments_info": s}  # as generate_rgb_and_json
        for n, s in zip(names, video["pred_segments"])]})
  for name, data in (("gt.json", gt_json), ("pred.json", pred_json)):
    with open(os.path.join(root, name), "w") as f:
      json.dump(data, f)


def _reject_nan(constant):
  raise ValueError(f"not strict JSON: {constant}")


def test_cli_round_trip(tmp_path, capsys):
  videos = {"a": ID_SWITCH,
            "b": _video([[[1, 1, 2, 2]]] * 3, [[[5, 0, 9, 9]]] * 3, {1: PERSON, 2: WALL},
                        {5: PERSON, 9: WALL})}
  _write_vipseg(str(tmp_path), videos)
  args = ["--gt-json", str(tmp_path / "gt.json"), "--gt-folder", str(tmp_path / "gt"),
          "--pred-json", str(tmp_path / "pred.json"), "--pred-folder", str(tmp_path / "pred")]
  assert vp.main(args + ["--output", str(tmp_path / "report.json")]) == 0
  assert "VPQ_th" in capsys.readouterr().out
  with open(tmp_path / "report.json") as f:
    report = json.load(f, parse_constant=_reject_nan)
  assert report == _report(list(videos.values()))
  assert report["vpq_windows"]["8"]["VPQ"] is None and report["num_videos"] == 2
  assert [f for f in os.listdir(tmp_path) if f.startswith(".")] == []  # no temporary left

  # A prediction file without one of the videos: an error message, exit status 1.
  with open(tmp_path / "pred.json") as f:
    pred = json.load(f)
  pred["annotations"] = pred["annotations"][:1]
  with open(tmp_path / "pred.json", "w") as f:
    json.dump(pred, f)
  assert vp.main(args) == 1
  assert "no prediction for video b" in capsys.readouterr().err
