"""experiments/: the probes and baselines of the synthetic task (docs/synthetic_task.md).

Their helpers on hand-made arrays, and each script's main() on a few tiny examples (the real
runs take minutes to an hour).
"""

import importlib.util
import json
import pathlib

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]


def _load(name: str):
  spec = importlib.util.spec_from_file_location(f"experiments_{name}",
                                                REPO / "experiments" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_shape_probe_block_truth_and_a_short_run(capsys):
  bench = _load("shape_probe")
  masks = np.zeros((1, 2, 4, 8), np.uint8)
  masks[0, 0, :, :4] = 1  # class 3 fills block (0, 0)
  masks[0, 1, :2, 4:] = 1  # class 1 covers half of block (0, 1): not more than half
  truth = bench.block_truth(masks, np.array([[3, 1]]), np.array([[True, True]]), 7)
  np.testing.assert_array_equal(truth, [[[3, -1]]])
  masks[0, 1, :3, 4:] = 1  # now 3/4 of it
  truth = bench.block_truth(masks, np.array([[3, 1]]), np.array([[True, False]]), 7)
  np.testing.assert_array_equal(truth, [[[3, -1]]])  # an invalid target counts as nothing
  assert bench.main(["--config", f"{REPO / 'configs' / 'tiny.py'}:slim", "--steps", "2",
                     "--image-size", "32", "--eval-images", "8"]) == 0
  out = capsys.readouterr().out
  iou = next(line for line in out.splitlines() if line.startswith("IoU")).split()[1:]
  assert len(iou) == 14 and all(0 <= float(v) <= 100 for v in iou[1::2]), iou
  assert "mean IoU  things" in out and out.count("\n") > 10


def test_shape_probe_pooled_head(capsys):
  bench = _load("shape_probe")
  features = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)  # cells 0..3, channels (2c, 2c+1)
  masks = np.zeros((1, 3, 4, 4), np.uint8)
  masks[0, 0, :2, :2] = 1  # all of cell (0, 0)
  masks[0, 1, 0, :] = 1  # half of cells (0, 0) and (0, 1): weights 1/2, 1/2
  masks[0, 1, 2, 2] = 1  # a quarter of cell (1, 1)
  pooled = np.asarray(bench.pool_inside(features, masks))
  np.testing.assert_allclose(pooled[0, 0], [0, 1])
  np.testing.assert_allclose(pooled[0, 1], (0.5 * np.array([0, 1]) + 0.5 * np.array([2, 3])
                                            + 0.25 * np.array([6, 7])) / 1.25, rtol=1e-6)
  np.testing.assert_allclose(pooled[0, 2], [0, 0])  # an empty mask
  logits = np.array([[[0.0, 2.0], [2.0, 0.0], [0.0, 0.0]]], np.float32)
  loss = bench.segment_loss(logits, np.array([[1, 0, 5]]), np.array([[True, True, True]]))
  np.testing.assert_allclose(float(loss), np.log1p(np.exp(-2.0)), rtol=1e-5)  # label 5 >= K
  assert bench.main(["--config", f"{REPO / 'configs' / 'tiny.py'}:slim", "--steps", "2",
                     "--image-size", "32", "--eval-images", "8", "--head", "pooled",
                     "--max-things", "3"]) == 0
  out = capsys.readouterr().out
  acc = next(line for line in out.splitlines() if line.startswith("accuracy  ")).split()[1:]
  assert len(acc) == 14 and all(0 <= float(v) <= 100 for v in acc[1::2]), acc
  assert "accuracy over segments  things" in out and "head pooled" in out


def test_video_colour_baseline_links_components_into_tracks(capsys):
  bench = _load("video_colour_baseline")
  isthing = [True, True, True, True, False, False, False]
  stuff_ids = {4: 5, 5: 6, 6: 7}
  first = np.full((8, 12), 4)
  first[1:4, 1:4] = 0  # two discs (class 0) and a tiny square (below min_area)
  first[1:4, 7:10] = 0
  first[6, 11] = 1
  ids, segments, tracks, next_id = bench.link_frame(first, isthing, {}, 8, min_area=2,
                                                    stuff_ids=stuff_ids)
  assert next_id == 10 and sorted(tracks) == [8, 9]
  assert ids[2, 2] == 8 and ids[2, 8] == 9 and ids[0, 0] == 5 and ids[6, 11] == 0
  assert {(s["id"], s["category_id"]) for s in segments} == {(5, 4), (8, 0), (9, 0)}
  second = np.full((8, 12), 5)  # the stuff changed class: its own id
  second[1:4, 8:11] = 0  # the right disc moved right: overlaps track 9 only
  second[1:4, 2:5] = 2  # a triangle where the left disc was: another class, a new track
  second[5:8, 0:3] = 0  # a new disc
  ids, segments, tracks, next_id = bench.link_frame(second, isthing, tracks, next_id,
                                                    min_area=2, stuff_ids=stuff_ids)
  assert ids[2, 9] == 9 and ids[0, 0] == 6
  assert {ids[2, 3], ids[6, 1]} == {10, 11} and next_id == 12
  assert {s["id"]: s["category_id"] for s in segments} == {6: 5, 9: 0, int(ids[2, 3]): 2,
                                                           int(ids[6, 1]): 0}
  merged = np.full((8, 12), 5)
  merged[1:4, 1:11] = 0  # one component over both previous discs: the larger overlap wins
  previous = {8: (0, first == 0), 9: (0, (first == 0) & (np.arange(12) >= 6))}
  previous[8] = (0, previous[8][1] & (np.arange(12) < 6))
  ids, _, _, _ = bench.link_frame(merged, isthing, previous, 20, min_area=2,
                                  stuff_ids=stuff_ids)
  assert ids[2, 5] in (8, 9) and len(np.unique(ids[1:4, 1:11])) == 1
  report = bench.main(["--config", f"{REPO / 'configs' / 'synthetic_video.py'}",
                       "--num-val", "2", "--train-videos", "2"])["video_panoptic_seg"]
  assert 0 <= report["VPQ"] <= 100 and 0 <= report["STQ"] <= 100
  assert "VPQ: colour baseline" in capsys.readouterr().out


def test_colour_baseline_scores_and_prints_beside_the_model(tmp_path, capsys):
  bench = _load("colour_baseline")
  model = bench.ColourModel(2).fit([np.array([[[250, 0, 0], [0, 0, 250]]], np.uint8)] * 2,
                                   [np.array([[0, 1]])] * 2)
  np.testing.assert_array_equal(model.predict(np.array([[[240, 10, 5], [5, 5, 240]]],
                                                       np.uint8)), [[0, 1]])
  classes = np.zeros((6, 6), int)
  classes[0, 0] = 1  # a lone pixel: the 3x3 mode filter removes it
  np.testing.assert_array_equal(bench.mode_filter(classes, 2), np.zeros((6, 6)))
  (tmp_path / "eval_results.json").write_text('{"panoptic_seg": {"PQ": 12.5}}')
  report = bench.main(["--num-val", "4", "--train-images", "4", "--workdir", str(tmp_path),
                       "--output", str(tmp_path / "baseline.json")])
  assert 0 <= report["PQ"] <= 100 and 0 <= report["pixel_accuracy"] <= 100
  assert f"model ({tmp_path / 'eval_results.json'}) 12.5" in capsys.readouterr().out
  assert json.loads((tmp_path / "baseline.json").read_text())["PQ"] == report["PQ"]
