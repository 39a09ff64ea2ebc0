"""benchmarks/: the parts that decide what is compared (padding, pauses, threads, solver call).

The benchmarks themselves take minutes (they build the official R50 / Swin-T models); these
tests run their helpers and the matching benchmark on tiny sizes.
"""

import importlib.util
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _load(name: str):
  spec = importlib.util.spec_from_file_location(f"benchmarks_{name}",
                                                REPO / "benchmarks" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_train_step_pads_jax_targets_as_training_does():
  bench = _load("train_step")
  images, masks, labels = bench.make_data(batch=2, size=32, targets=3, num_classes=133)
  assert images.shape == (2, 32, 32, 3) and masks.shape == (2, 3, 32, 32)
  padded_masks, padded_labels, valid = bench.pad_targets(masks, labels, 8)
  assert padded_masks.shape == (2, 8, 32, 32) and padded_labels.shape == valid.shape == (2, 8)
  np.testing.assert_array_equal(valid, np.arange(8)[None].repeat(2, 0) < 3)
  np.testing.assert_array_equal(padded_masks[:, :3], masks)
  np.testing.assert_array_equal(padded_labels[:, :3], labels)
  assert not padded_masks[:, 3:].any() and not padded_labels[:, 3:].any()
  same = bench.pad_targets(masks, labels, 3)  # --num_targets 0: the real targets only
  assert same[0].shape == masks.shape and same[2].all()
  with pytest.raises(ValueError, match="--num_targets 2 is below --targets 3"):
    bench.pad_targets(masks, labels, 2)


def test_forward_pauses_between_alternating_runs():
  bench = _load("forward")
  events = []

  def run(name):
    return lambda: events.append((name, time.perf_counter()))

  t_a, t_b = bench.alternate(run("a"), run("b"), runs=2, pause=0.05)
  assert len(t_a) == len(t_b) == 2
  assert [name for name, _ in events] == ["a", "b", "a", "b"]
  gaps = np.diff([t for _, t in events])
  assert np.all(gaps >= 0.05), gaps


def test_forward_names_both_frameworks_thread_counts():
  bench = _load("forward")
  torch = pytest.importorskip("torch", reason="the benchmarks compare with torch")
  line = bench.thread_counts(torch, "cpu")
  assert f"torch {torch.get_num_threads()} intra-op" in line
  assert f"XLA:CPU pool of {len(os.sched_getaffinity(0))} threads" in line
  assert "jax: on gpu" in bench.thread_counts(torch, "gpu")


def test_matching_benchmark_solves_padded_costs_with_valid_cols():
  """As the train step: [B, N, 6] costs with the first M columns real, checked against scipy."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = subprocess.run(
      [sys.executable, str(REPO / "benchmarks" / "matching.py"), "--batch", "3", "--queries", "4",
       "--targets", "1", "5", "--num_targets", "6", "--runs", "1"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "M real of 6 target slots (valid_cols)" in run.stdout, run.stdout
  rows = [line.split() for line in run.stdout.splitlines()[2:]]
  assert [(r[0], r[1]) for r in rows] == [("4", "1"), ("4", "5")], run.stdout


def test_video_panoptic_eval_benchmark_scores_truth_100_and_the_perturbed_prediction_lower(
    capsys):
  """The figures it prints come from the evaluator: VPQ / STQ 100 for the truth, lower for the
  shifted-id prediction with void pixels (so its timing covers the matching branches)."""
  bench = _load("video_panoptic_eval")
  assert bench.main(["--videos", "2", "--frames", "8", "--size", "64"]) == 0  # every window fits
  rows = {line[:22].strip(): line[22:].split() for line in capsys.readouterr().out.splitlines()
          if line.startswith(("truth", "ids"))}
  assert [float(x) for x in rows["truth as prediction"][2:]] == [100.0, 100.0]
  vpq, stq = (float(x) for x in rows["ids shifted, 5% void"][2:])
  assert 0 < vpq < 100 and 0 < stq < 100


def test_reference_training_report_has_both_sides_seeds_medians_and_curves(tmp_path):
  """benchmarks/reference_training.py's summary, table and plot on made-up runs (the runs
  themselves take an hour: their figures are in benchmarks/README.md)."""
  pytest.importorskip("torch", reason="the benchmark compares with torch")
  pytest.importorskip("matplotlib", reason="the benchmark plots with matplotlib")
  bench = _load("reference_training")
  rng = np.random.default_rng(0)

  def run(seed, pq):
    return dict(seed=seed, steps=100, PQ=pq, PQ_th=pq / 2, PQ_st=pq * 1.5, mIoU=pq + 5,
                AP=pq / 4, s_per_step=0.1 + seed / 100, train_loop_s=10.0,
                loss_curve=[(s, float(50 - s / 10 + rng.normal())) for s in range(1, 101)])

  result = {"config": "configs/tiny.py:reference", "steps": 100,
            "ours": bench._summary([run(0, 40.0), run(1, 44.0)]),
            "reference": bench._summary([run(0, 41.0), run(1, 43.0), run(2, 39.0)])}
  assert result["ours"]["median"]["PQ"] == 42.0 and result["reference"]["median"]["PQ"] == 41.0
  assert result["reference"]["min"]["PQ"] == 39.0 and result["reference"]["max"]["PQ"] == 43.0
  for side in ("ours", "reference"):
    assert set(result[side]["median"]) == {"PQ", "PQ_th", "PQ_st", "mIoU", "AP", "s_per_step"}
  table = bench._table(result)
  assert len(table.splitlines()) == 1 + (2 + 1) + (3 + 1)
  x, y = bench._smooth(result["ours"]["seeds"][0]["loss_curve"])
  assert len(x) == len(y) == 100 // bench.SMOOTH
  band = bench._band(result)
  assert band["points"] == 100 // bench.SMOOTH and 0 <= band["share_inside"] <= 1
  assert abs(band["ours_mean_over_reference_mean"] - 1) < 0.05  # same made-up curve + noise
  bench._plot(result, tmp_path / "curves.png")
  assert (tmp_path / "curves.png").stat().st_size > 1000


def test_eval_compiles_sizes_plans_and_projection():
  """benchmarks/eval_compiles.py: COCO-like sizes (long side 640, aspect ratios within
  [1/3, 3]), the padded sizes of each pad_to at the official test size, the projection."""
  bench = _load("eval_compiles")
  sizes = bench.coco_val2017_sizes(2000)
  assert sizes == bench.coco_val2017_sizes(2000)  # seeded
  assert all(max(s) <= 640 and min(s) >= 1 for s in sizes)
  assert np.mean([max(s) == 640 for s in sizes]) > 0.95
  ratios = np.array([w / h for h, w in sizes])
  assert ratios.min() >= 1 / 3.1 and ratios.max() <= 3.1 and np.mean(ratios >= 1) > 0.6
  plans = bench.plans(sizes, batch=8, min_size=800, max_size=1333)
  counts = {mode: len(plan) for mode, plan in plans.items()}
  assert counts["buckets:2"] == 2 and counts["buckets:4"] == 4 and counts["image"] > 20
  for plan in plans.values():
    assert sum(s.images for s in plan) == len(sizes)
    assert all(min(s.padded_size) <= 800 <= max(s.padded_size) <= 1344 for s in plan)
  order = bench.measurement_order(plans["image"])
  landscape, portrait = order[0].padded_size, order[1].padded_size  # the most frequent each
  assert landscape[1] > landscape[0] and portrait[0] > portrait[1]
  measured = dict(forward_s=10.0, post_s=2.0, cache_s=0.5, serial_s=48.0, pooled_s=16.0)
  image = bench.projection(plans["image"], measured, batch_s=1.0, ref_size=(800, 1088))
  coarse = bench.projection(plans["buckets:2"], measured, batch_s=1.0, ref_size=(800, 1088))
  assert image["compile_s"] == 12.0 * counts["image"] == 3 * image["pooled_s"]
  assert coarse["cache_s"] == 1.0 and coarse["forward_s"] > image["forward_s"]  # more padding
