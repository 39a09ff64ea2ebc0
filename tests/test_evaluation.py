"""Metrics: hand-computed cases, an independent PQ implementation, pycocotools, the PQ CLI."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_util

from m2f_jax.data.panoptic_png import write_panoptic_png
from m2f_jax.evaluation import instance, panoptic, pq, semantic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---------------------------------------------------------------------------
# Semantic.
# ---------------------------------------------------------------------------


def test_semantic_hand_computed():
  # K = 4; class 3 is predicted once but absent from the ground truth; 255 = ignore.
  gt = np.array([[0, 0, 0, 1], [1, 2, 255, 255]])
  pred = np.array([[0, 0, 3, 1], [0, 2, 3, 1]])
  conf = semantic.confusion_matrix(pred=pred, gt=gt, num_classes=4)
  assert conf.shape == (5, 5) and conf.sum() == 8
  assert conf[0, 0] == 2 and conf[3, 0] == 1 and conf[0, 1] == 1 and conf[1, 1] == 1
  assert conf[2, 2] == 1 and conf[3, 4] == 1 and conf[1, 4] == 1
  # IoU = 2/4, 1/2, 1/1 (class 3 has no ground truth: left out); ACC = 2/3, 1/2, 1.
  want = {"mIoU": 100 * 2 / 3, "fwIoU": 100 * (0.5 * 3 + 0.5 * 2 + 1 * 1) / 6,
          "mACC": 100 * (2 / 3 + 1 / 2 + 1) / 3, "pACC": 100 * 4 / 6}
  evaluator = semantic.SemanticEvaluator(num_classes=4)
  evaluator.update(pred=pred[:1], gt=gt[:1])  # Streaming: two updates add up.
  evaluator.update(pred=pred[1:], gt=gt[1:])
  got = evaluator.compute()
  assert set(got) == {"sem_seg"}
  assert got["sem_seg"] == pytest.approx(want)
  named = semantic.semantic_metrics(conf, ["a", "b", "c", "d"])
  assert named["IoU-a"] == pytest.approx(50.0) and named["ACC-c"] == pytest.approx(100.0)
  assert math.isnan(named["IoU-d"]) and math.isnan(named["ACC-d"])
  with pytest.raises(ValueError, match="gt values"):
    semantic.confusion_matrix(pred=pred, gt=gt + 1, num_classes=4)
  with pytest.raises(ValueError, match="pred values"):
    semantic.confusion_matrix(pred=pred + 1, gt=gt, num_classes=4)


# ---------------------------------------------------------------------------
# Panoptic.
# ---------------------------------------------------------------------------

CATEGORIES = [{"id": 1, "isthing": 1, "name": "person"}, {"id": 2, "isthing": 1, "name": "car"},
              {"id": 3, "isthing": 0, "name": "grass"}]


def _hand_images():
  """Three images (one row each): void, crowd, a void-aided match, ignored predictions, ties."""
  # Image A, 20 px: gt 10 (cat 1, 8 px) | VOID (2 px) | gt 20 (cat 3, 6 px) | crowd 30 (cat 1).
  gt_a = np.array([[10] * 8 + [0] * 2 + [20] * 6 + [30] * 4])
  gt_segments_a = [{"id": 10, "category_id": 1, "iscrowd": 0},
                   {"id": 20, "category_id": 3, "iscrowd": 0},
                   {"id": 30, "category_id": 1, "iscrowd": 1}]
  # pred 1 (cat 1): 5 px of gt 10 + the 2 void px: IoU = 5 / (7 + 8 - 5 - 2) = 0.625 (it would
  #   be 0.5, no match, without leaving the void pixels out of the union);
  # pred 2 (cat 3) on gt 10: a false positive; pred 3 (cat 3) = gt 20: IoU 1;
  # pred 4 (cat 1) on the crowd of cat 1: ignored; pred 5 (cat 2) on it: a false positive.
  pred_a = np.array([[1] * 5 + [2] * 3 + [1] * 2 + [3] * 6 + [4] * 3 + [5]])
  pred_segments_a = [{"id": i, "category_id": c} for i, c in
                     ((1, 1), (2, 3), (3, 3), (4, 1), (5, 2))]
  # Image B, 10 px: gt 7 (cat 2, 5 px) | VOID. pred 9 (cat 2) covers 2 px of it (IoU 0.4: a
  # false positive, and gt 7 a false negative); pred 8 (cat 3) lies on void (ignored); pred 6
  # (cat 1) has exactly half of its 2 px on void: not more than half, a false positive.
  gt_b = np.array([[7] * 5 + [0] * 5])
  gt_segments_b = [{"id": 7, "category_id": 2, "iscrowd": 0}]
  pred_b = np.array([[9] * 2 + [0] * 2 + [6] + [8] * 4 + [6]])
  pred_segments_b = [{"id": 9, "category_id": 2}, {"id": 8, "category_id": 3},
                     {"id": 6, "category_id": 1}]
  # Image C, 8 px: gt 11 (cat 3, 4 px) | gt 14 (cat 1, 4 px); pred 12 (cat 3) covers both:
  # IoU 4 / 8 = 0.5 is no match (IoU > 0.5 needed): one FP, two FNs.
  gt_c = np.array([[11] * 4 + [14] * 4])
  gt_segments_c = [{"id": 11, "category_id": 3, "iscrowd": 0},
                   {"id": 14, "category_id": 1, "iscrowd": 0}]
  pred_c = np.full((1, 8), 12)
  pred_segments_c = [{"id": 12, "category_id": 3}]
  return [(gt_a, gt_segments_a, pred_a, pred_segments_a),
          (gt_b, gt_segments_b, pred_b, pred_segments_b),
          (gt_c, gt_segments_c, pred_c, pred_segments_c)]


# Per class: cat 1 TP 1 (IoU .625), FP 1, FN 1: PQ .3125, SQ .625, RQ .5; cat 2 TP 0, FP 2, FN 1:
# all 0; cat 3 TP 1 (IoU 1), FP 2, FN 1: PQ .4, SQ 1, RQ .4.
HAND_WANT = {
    "PQ": 100 * (0.3125 + 0 + 0.4) / 3, "SQ": 100 * (0.625 + 0 + 1) / 3,
    "RQ": 100 * (0.5 + 0 + 0.4) / 3, "PQ_th": 100 * 0.3125 / 2, "SQ_th": 100 * 0.625 / 2,
    "RQ_th": 100 * 0.5 / 2, "PQ_st": 40.0, "SQ_st": 100.0, "RQ_st": 40.0}


def test_panoptic_hand_computed():
  evaluator = pq.PanopticEvaluator(categories=CATEGORIES)
  for gt_ids, gt_segments, pred_ids, pred_segments in _hand_images():
    evaluator.update(gt_ids=gt_ids, gt_segments=gt_segments, pred_ids=pred_ids,
                     pred_segments=pred_segments)
  s = evaluator.stats
  assert (s[1].tp, s[1].fp, s[1].fn) == (1, 1, 1) and s[1].iou == pytest.approx(0.625)
  assert (s[2].tp, s[2].fp, s[2].fn) == (0, 2, 1)
  assert (s[3].tp, s[3].fp, s[3].fn) == (1, 2, 1) and s[3].iou == pytest.approx(1.0)
  report = evaluator.compute()
  assert report["panoptic_seg"] == pytest.approx(HAND_WANT)
  assert report["panoptic_per_class"] == {
      "person": pytest.approx({"PQ": 100 * 0.625 / 2, "SQ": 100 * 0.625, "RQ": 50.0}),
      "car": {"PQ": 0.0, "SQ": 0.0, "RQ": 0.0},
      "grass": pytest.approx({"PQ": 40.0, "SQ": 100.0, "RQ": 40.0})}
  results = evaluator.results()
  assert [results[k]["n"] for k in ("All", "Things", "Stuff")] == [3, 2, 1]


def test_panoptic_contiguous_ids_and_empty_group():
  # Predictions as `postprocess` returns them (contiguous ids + isthing) with a category map.
  gt_ids, gt_segments, pred_ids, pred_segments = _hand_images()[0]
  contiguous = [dict(s, category_id=s["category_id"] - 1, isthing=s["category_id"] != 3)
                for s in pred_segments]
  direct = pq.PanopticEvaluator(categories=CATEGORIES)
  mapped = pq.PanopticEvaluator(categories=CATEGORIES, category_ids=[1, 2, 3])
  direct.update(gt_ids=gt_ids, gt_segments=gt_segments, pred_ids=pred_ids,
                pred_segments=pred_segments)
  mapped.update(gt_ids=gt_ids, gt_segments=gt_segments, pred_ids=pred_ids,
                pred_segments=contiguous)
  assert mapped.compute() == direct.compute()
  # No stuff category occurs: panopticapi would divide by zero; the stuff values are NaN.
  things_only = pq.PanopticEvaluator(categories=CATEGORIES)
  things_only.update(gt_ids=np.array([[1, 1]]), gt_segments=[{"id": 1, "category_id": 1}],
                     pred_ids=np.array([[5, 5]]), pred_segments=[{"id": 5, "category_id": 1}])
  report = things_only.compute()["panoptic_seg"]
  assert report["PQ"] == report["PQ_th"] == 100.0 and math.isnan(report["PQ_st"])
  with pytest.raises(KeyError, match="not in its segments_info"):
    pq.pq_stats(gt_ids=gt_ids, gt_segments=gt_segments, pred_ids=pred_ids,
                      pred_segments=pred_segments[:-1], categories={1: {}, 2: {}, 3: {}})
  with pytest.raises(KeyError, match="not in the panoptic map"):
    pq.pq_stats(gt_ids=gt_ids, gt_segments=gt_segments, pred_ids=pred_ids,
                      pred_segments=pred_segments + [{"id": 99, "category_id": 1}],
                      categories={1: {}, 2: {}, 3: {}})


def _reference_pq(images, categories):
  """panopticapi's definition written out segment pair by segment pair with boolean masks."""
  tp, fp, fn, iou_sum = ({c["id"]: 0 for c in categories} for _ in range(4))
  for gt_ids, gt_segments, pred_ids, pred_segments in images:
    void = gt_ids == 0
    last_crowd = {}
    for g in gt_segments:
      if g.get("iscrowd", 0):
        last_crowd[g["category_id"]] = gt_ids == g["id"]
    matched_gt, matched_pred = set(), set()
    for p in pred_segments:
      pred_mask = pred_ids == p["id"]
      for g in gt_segments:
        if g.get("iscrowd", 0) or g["category_id"] != p["category_id"]:
          continue
        gt_mask = gt_ids == g["id"]
        inter = np.sum(gt_mask & pred_mask)
        if inter == 0:
          continue
        union = np.sum(gt_mask | pred_mask) - np.sum(pred_mask & void)
        if inter / union > 0.5:
          tp[g["category_id"]] += 1
          iou_sum[g["category_id"]] += inter / union
          matched_gt.add(g["id"])
          matched_pred.add(p["id"])
    for g in gt_segments:
      if g["id"] not in matched_gt and not g.get("iscrowd", 0):
        fn[g["category_id"]] += 1
    for p in pred_segments:
      if p["id"] in matched_pred:
        continue
      pred_mask = pred_ids == p["id"]
      ignored = void | last_crowd.get(p["category_id"], np.zeros_like(void))
      if np.sum(pred_mask & ignored) / np.sum(pred_mask) <= 0.5:
        fp[p["category_id"]] += 1
  out = {}
  for name, keep in (("PQ", lambda c: True), ("PQ_th", lambda c: c["isthing"]),
                     ("PQ_st", lambda c: not c["isthing"])):
    ids = [c["id"] for c in categories if keep(c) and tp[c["id"]] + fp[c["id"]] + fn[c["id"]]]
    denominators = [tp[i] + (fp[i] + fn[i]) / 2 for i in ids]
    suffix = name[2:]
    out["PQ" + suffix] = 100 * np.mean([iou_sum[i] / d for i, d in zip(ids, denominators)])
    out["SQ" + suffix] = 100 * np.mean([iou_sum[i] / tp[i] if tp[i] else 0 for i in ids])
    out["RQ" + suffix] = 100 * np.mean([tp[i] / d for i, d in zip(ids, denominators)])
  return out, (tp, fp, fn, iou_sum)


def _random_images(rng, count=12, shape=(12, 14)):
  """Voronoi ground truth with void and crowd; predictions from jittered centres."""
  yy, xx = np.mgrid[:shape[0], :shape[1]]
  images = []
  for _ in range(count):
    n = rng.integers(3, 7)
    centres = rng.uniform(0, shape, size=(n, 2))
    cats = rng.integers(1, 4, size=n)
    nearest = lambda c: np.argmin((yy[..., None] - c[:, 0]) ** 2 + (xx[..., None] - c[:, 1]) ** 2,
                                  axis=-1)
    gt_ids = nearest(centres) + 1
    gt_segments = [{"id": i + 1, "category_id": int(cats[i]), "iscrowd": 0} for i in range(n)]
    for i in range(n):
      if rng.random() < 0.15:
        gt_ids[gt_ids == i + 1] = 0  # void
      elif rng.random() < 0.2 and not any(s["iscrowd"] and s["category_id"] == cats[i]
                                          for s in gt_segments):
        gt_segments[i]["iscrowd"] = 1
    gt_segments = [s for s in gt_segments if np.any(gt_ids == s["id"])]
    m = rng.integers(2, 8)
    pred_centres = np.concatenate([centres + rng.normal(0, 1.5, size=(n, 2)),
                                   rng.uniform(0, shape, size=(m, 2))])[:max(m, 2)]
    pred_cats = np.concatenate([np.where(rng.random(n) < 0.8, cats, rng.integers(1, 4, n)),
                                rng.integers(1, 4, size=m)])
    pred_ids = (nearest(pred_centres) + 1) * 3  # ids other than the gt ids
    pred_ids[rng.random(shape) < 0.05] = 0  # some unlabeled predicted pixels
    present = np.unique(pred_ids)
    pred_segments = [{"id": int(i), "category_id": int(pred_cats[i // 3 - 1])}
                     for i in present if i != 0]
    images.append((gt_ids, gt_segments, pred_ids, pred_segments))
  return images


def test_panoptic_matches_independent_implementation():
  rng = np.random.default_rng(0)
  images = _random_images(rng)
  evaluator = pq.PanopticEvaluator(categories=CATEGORIES)
  for gt_ids, gt_segments, pred_ids, pred_segments in images:
    evaluator.update(gt_ids=gt_ids, gt_segments=gt_segments, pred_ids=pred_ids,
                     pred_segments=pred_segments)
  want, (tp, fp, fn, iou_sum) = _reference_pq(images, CATEGORIES)
  for c in (1, 2, 3):
    s = evaluator.stats[c]
    assert (s.tp, s.fp, s.fn) == (tp[c], fp[c], fn[c])
    assert s.iou == pytest.approx(iou_sum[c])
  assert sum(tp.values()) > 5 and sum(fp.values()) > 5 and sum(fn.values()) > 5
  report = evaluator.compute()
  assert report["panoptic_seg"] == pytest.approx(want)
  # Per class: PQ = IoU sum / (TP + FP/2 + FN/2), by category name.
  names = {c["id"]: c.get("name", str(c["id"])) for c in CATEGORIES}
  for c in (1, 2, 3):
    assert report["panoptic_per_class"][names[c]]["PQ"] == pytest.approx(
        100 * iou_sum[c] / (tp[c] + 0.5 * fp[c] + 0.5 * fn[c]))
  # The hand-computed images agree too.
  want_hand, _ = _reference_pq(_hand_images(), CATEGORIES)
  assert want_hand == pytest.approx(HAND_WANT)


def test_panoptic_cli_end_to_end(tmp_path):
  gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
  gt_dir.mkdir()
  pred_dir.mkdir()
  gt_json = {"categories": CATEGORIES, "images": [], "annotations": []}
  pred_json = {"annotations": []}
  for image_id, (gt_ids, gt_segments, pred_ids, pred_segments) in enumerate(_hand_images()):
    name = f"{image_id:06d}.png"
    write_panoptic_png(gt_dir / name, gt_ids)
    write_panoptic_png(pred_dir / name, pred_ids)
    gt_json["images"].append({"id": image_id, "file_name": name.replace("png", "jpg")})
    gt_json["annotations"].append({
        "image_id": image_id, "file_name": name,
        "segments_info": [dict(s, area=int(np.sum(gt_ids == s["id"]))) for s in gt_segments]})
    pred_json["annotations"].append({"image_id": image_id, "file_name": name,
                                     "segments_info": pred_segments})
  (tmp_path / "gt.json").write_text(json.dumps(gt_json))
  (tmp_path / "pred.json").write_text(json.dumps(pred_json))
  output = tmp_path / "pq.json"
  proc = subprocess.run(
      [sys.executable, "-m", "m2f_jax.evaluation.panoptic", "--gt-json", str(tmp_path / "gt.json"),
       "--gt-folder", str(gt_dir), "--pred-json", str(tmp_path / "pred.json"),
       "--pred-folder", str(pred_dir), "--output", str(output)],
      cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
  assert proc.returncode == 0, proc.stderr
  assert "Warning" not in proc.stderr, proc.stderr
  lines = proc.stdout.splitlines()
  assert lines[0].split() == ["|", "PQ", "SQ", "RQ", "N"]
  assert lines[2].split() == ["All", "|", f"{HAND_WANT['PQ']:.1f}", f"{HAND_WANT['SQ']:.1f}",
                              f"{HAND_WANT['RQ']:.1f}", "3"]
  report = json.loads(output.read_text())
  assert report["panoptic_seg"] == pytest.approx(HAND_WANT)
  assert report["num_categories"] == {"All": 3, "Things": 2, "Stuff": 1}
  assert report["per_class"]["1"] == pytest.approx({"PQ": 31.25, "SQ": 62.5, "RQ": 50.0})
  # Two worker processes give the same result.
  results = panoptic.pq_compute_files(
      gt_json=str(tmp_path / "gt.json"), gt_folder=str(gt_dir),
      pred_json=str(tmp_path / "pred.json"), pred_folder=str(pred_dir), workers=2)
  assert pq.detectron2_report(results) == pytest.approx(HAND_WANT)


# ---------------------------------------------------------------------------
# Instance (pycocotools).
# ---------------------------------------------------------------------------


def _box_mask(shape, y0, x0, h, w):
  m = np.zeros(shape, bool)
  m[y0:y0 + h, x0:x0 + w] = True
  return m


SHAPE = (128, 128)
# image id -> (masks, classes): a small (10x10) and a medium (50x50) object, a large
# (100x100) and a small (20x20) one; contiguous classes 0, 1 -> category ids 1, 2.
GT = {
    1: ([_box_mask(SHAPE, 0, 0, 10, 10), _box_mask(SHAPE, 60, 60, 50, 50)], [0, 1]),
    2: ([_box_mask(SHAPE, 0, 0, 100, 100), _box_mask(SHAPE, 105, 105, 20, 20)], [0, 1]),
}
INSTANCE_CATEGORIES = [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}]


def _instance_evaluator(**kwargs):
  kwargs = kwargs or {"categories": INSTANCE_CATEGORIES}
  return instance.InstanceEvaluator(category_ids=[1, 2], **kwargs)


def _add(evaluator, preds, with_gt=True):
  for image_id, (masks, scores, classes) in preds.items():
    gt = dict(gt_masks=np.stack(GT[image_id][0]), gt_classes=GT[image_id][1]) if with_gt else {}
    evaluator.update(image_id=image_id, pred_masks=np.stack(masks).reshape(-1, *SHAPE),
                     pred_scores=np.array(scores), pred_classes=np.array(classes), **gt)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # in decode
def test_mask_to_rle_round_trip():
  masks = np.stack([_box_mask((7, 9), 1, 2, 3, 4), _box_mask((7, 9), 0, 0, 7, 1)])
  rles = instance.mask_to_rle(masks)
  assert len(rles) == 2 and all(isinstance(r["counts"], str) for r in rles)
  assert rles[0]["size"] == [7, 9]
  np.testing.assert_array_equal(mask_util.decode(rles).transpose(2, 0, 1), masks)
  assert instance.mask_to_rle(masks[1]) == rles[1]
  assert list(mask_util.area(rles)) == [12, 7]


def test_instance_ap_perfect_and_degraded(tmp_path):
  perfect = {i: (masks, [0.9, 0.8], classes) for i, (masks, classes) in GT.items()}
  evaluator = _instance_evaluator()
  _add(evaluator, perfect)
  got = evaluator.compute()["segm"]
  for metric in instance.METRICS:
    assert got[metric] == pytest.approx(100.0), metric

  # person: 1 of 2 found -> recall 0.5 -> AP = 51 / 101 (101-point interpolation).
  # car: a confident false positive, then both cars -> precision 2/3 at every recall.
  wrong = _box_mask(SHAPE, 0, 60, 50, 50)
  degraded = {1: ([GT[1][0][0], wrong, GT[1][0][1]], [0.9, 0.95, 0.8], [0, 1, 1]),
              2: ([GT[2][0][1]], [0.7], [1])}
  want_person, want_car = 100 * 51 / 101, 100 * 2 / 3
  evaluator = _instance_evaluator()
  _add(evaluator, degraded)
  got = evaluator.compute()["segm"]
  assert got["AP-person"] == pytest.approx(want_person, rel=1e-6)
  assert got["AP-car"] == pytest.approx(want_car, rel=1e-6)
  for metric in ("AP", "AP50", "AP75"):
    assert got[metric] == pytest.approx((want_person + want_car) / 2, rel=1e-6), metric

  # The same ground truth from a COCO JSON (Detectron2's path) gives the same numbers.
  annotations = []
  for image_id, (masks, classes) in GT.items():
    for rle, k in zip(instance.mask_to_rle(np.stack(masks)), classes):
      annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                          "category_id": k + 1, "segmentation": rle,
                          "area": float(mask_util.area(rle)), "iscrowd": 0,
                          "bbox": mask_util.toBbox(rle).tolist()})
  path = tmp_path / "instances.json"
  path.write_text(json.dumps({
      "images": [{"id": i, "height": SHAPE[0], "width": SHAPE[1]} for i in GT],
      "annotations": annotations, "categories": INSTANCE_CATEGORIES}))
  from_json = _instance_evaluator(coco_gt=str(path))
  _add(from_json, degraded, with_gt=False)
  assert from_json.compute() == {"segm": pytest.approx(got)}


def test_instance_no_predictions_is_nan():
  evaluator = _instance_evaluator()
  evaluator.update(image_id=1, pred_masks=np.zeros((0, *SHAPE), bool),
                   pred_scores=np.zeros(0), pred_classes=np.zeros(0, int),
                   gt_masks=np.stack(GT[1][0]), gt_classes=GT[1][1])
  got = evaluator.compute()["segm"]
  assert set(got) == set(instance.METRICS) and all(math.isnan(v) for v in got.values())


# ---------------------------------------------------------------------------
# The evaluator registry (m2f_jax/evaluation/__init__.py).
# ---------------------------------------------------------------------------


def test_instance_ground_truth_is_named_in_the_report():
  """Instance annotations when a record has them, else panoptic thing segments, counted."""
  from m2f_jax import evaluation  # pylint: disable=g-import-not-at-top
  categories = [{"id": 0, "name": "a", "isthing": 1}, {"id": 1, "name": "b", "isthing": 0}]
  panoptic = np.array([[1, 1, 2, 2], [1, 1, 2, 2]], np.int32)
  info = {"id": np.array([1, 2]), "category_id": np.array([0, 1]),
          "iscrowd": np.array([False, False]), "isthing": np.array([True, False])}
  mask = (panoptic == 1)[None]
  result = {"instances": {"masks": mask, "scores": np.array([0.9], np.float32),
                          "classes": np.array([0], np.int32)}}
  with_instances = {"panoptic": panoptic, "segments_info": info,
                    "instances": {"masks": mask.astype(np.uint8),
                                  "category_id": np.array([0], np.int32),
                                  "iscrowd": np.array([False])}}
  panoptic_only = {"panoptic": panoptic, "segments_info": info}
  first, second = evaluation.make_evaluators(["instance", "instance"], categories=categories)
  first.update(result=result, annotation=with_instances, image_id=1)
  second.update(result=result, annotation=panoptic_only, image_id=2)
  second.update(result=result, annotation=panoptic_only, image_id=3)
  first.merge(second)
  report = first.compute()
  assert report["ground_truth"] == {"instance": {
      "instance annotations": 1, "thing segments of the panoptic annotations": 2}}
  assert report["segm"]["AP"] == pytest.approx(100.0)
  with pytest.raises(ValueError, match="unknown evaluator 'iou'"):
    evaluation.make_evaluators(["iou"], categories=categories)
