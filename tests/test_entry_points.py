"""End-to-end runs of the entry points on a tiny model: train.py, eval.py,
`python -m m2f_jax.predict` and `python -m m2f_jax.convert`, each in a subprocess.

One run of train.py (2 steps, 64x64 images, configs/tiny.py:slim) makes the checkpoint that
every other command reads; those commands run side by side to keep the wall time low.
The panoptic object threshold is 0 in the trained config, so that the barely trained model
still yields panoptic segments to check.
"""

import json
import pathlib
import subprocess

import numpy as np
import PIL.Image
from pycocotools import mask as mask_util
import pytest

from tests import proc as proc_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 2
SIZE = 64
NUM_VAL = 4
NUM_CLASSES = 7  # the synthetic dataset's (tests below check it against synthetic.py)
TIMEOUT_S = 300
# pycocotools' decode on numpy 2 (a library-internal warning).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
TRAIN_FLAGS = (
    "--config=configs/tiny.py:slim", f"--config.optim.max_steps={STEPS}",
    f"--config.data.image_size=({SIZE}, {SIZE})", "--config.data.batch_size=2",
    f"--config.data.num_val={NUM_VAL}", "--config.eval.batch_size=2",
    "--config.eval.object_mask_threshold=0.0", "--config.train.log_every=1",
    "--config.loss.train_num_points=256")


def _start(*args) -> subprocess.Popen:
  return proc_lib.start(*args)


def _finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
  return proc_lib.finish(proc, returncode=None, timeout=TIMEOUT_S)


_check = proc_lib.check


def _png(path) -> np.ndarray:
  with PIL.Image.open(path) as img:
    return np.asarray(img)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """`(workdir, train.py run)` after training STEPS steps and the final evaluation."""
  workdir = tmp_path_factory.mktemp("train")
  run = _finish(_start("train.py", f"--workdir={workdir}", *TRAIN_FLAGS))
  _check(run)
  return workdir, run


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  """Input files: the first synthetic validation images, one of another size, a broken one."""
  from m2f_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  folder = tmp_path_factory.mktemp("images")
  # The validation images eval.py reads (their own varied sizes), as files for predict.
  records = [synthetic.SyntheticSource(NUM_VAL, split="validation")[i] for i in range(NUM_VAL)]
  paths = {}
  for i, record in enumerate(records):
    paths[f"val{i}"] = folder / f"val{i}.png"
    PIL.Image.fromarray(record["image"]).save(paths[f"val{i}"])
  other = synthetic.SyntheticSource(1, split="validation", image_size=(48, 80))[0]
  paths["wide"] = folder / "wide.jpg"
  PIL.Image.fromarray(other["image"]).save(paths["wide"])
  paths["broken"] = folder / "broken.png"
  paths["broken"].write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
  paths["missing"] = folder / "missing.png"
  return paths, records


@pytest.fixture(scope="module")
def runs(trained, images, tmp_path_factory):
  """eval.py, predict (three tasks) and convert, started together; name -> (run, output)."""
  from m2f_jax import checkpoint  # pylint: disable=g-import-not-at-top
  workdir, _ = trained
  step_dir = workdir / "checkpoints" / str(STEPS)
  # A model directory (the format `python -m m2f_jax.convert` writes) from the training
  # checkpoint, so that both kinds of --checkpoint are exercised.
  config, _, variables = checkpoint.load_for_inference(str(step_dir))
  model_dir = pathlib.Path(checkpoint.save_model(
      str(tmp_path_factory.mktemp("model") / "tiny"), config, variables))
  paths, _ = images
  out = {name: tmp_path_factory.mktemp(name) for name in
         ("eval", "semantic", "panoptic", "instance", "convert")}
  vals = [paths[f"val{i}"] for i in range(NUM_VAL)]
  procs = {
      "eval": _start("eval.py", f"--checkpoint={step_dir}", f"--workdir={out['eval']}",
                     "--max_images=4"),
      "semantic": _start("-m", "m2f_jax.predict", "--checkpoint", step_dir, "--task",
                         "semantic", "--output", out["semantic"], *vals),
      "panoptic": _start("-m", "m2f_jax.predict", "--checkpoint", model_dir, "--task",
                         "panoptic", "--output", out["panoptic"], vals[0], paths["wide"],
                         vals[1]),
      "instance": _start("-m", "m2f_jax.predict", "--checkpoint", model_dir, "--task",
                         "instance", "--output", out["instance"], vals[0], paths["missing"],
                         paths["broken"], paths["wide"]),
      "convert": _start("-m", "m2f_jax.convert", "--from", "hf", out["convert"] / "no_such_dir",
                        "--output", out["convert"] / "converted"),
  }
  return {name: (_finish(proc), out[name]) for name, proc in procs.items()}


def _check_report(report: dict, num_images: int):
  """Detectron2's names and percent values for the tiny config's three tasks."""
  assert report["num_images"] == num_images
  assert set(report) >= {"sem_seg", "panoptic_seg", "segm"}
  from m2f_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  names = tuple(c["name"] for c in synthetic.CATEGORIES)
  assert len(names) == NUM_CLASSES
  expected = {
      "sem_seg": ["mIoU", "fwIoU", "mACC", "pACC"] + [f"{m}-{n}" for n in names
                                                      for m in ("IoU", "ACC")],
      "panoptic_seg": [f"{m}{s}" for s in ("", "_th", "_st") for m in ("PQ", "SQ", "RQ")],
      "segm": ["AP", "AP50", "AP75", "APs", "APm", "APl"] + [f"AP-{n}" for n in names],
  }
  for task, keys in expected.items():
    assert sorted(report[task]) == sorted(keys), task
    for key, value in report[task].items():
      assert value is None or 0.0 <= value <= 100.0, (task, key, value)  # strict JSON: null
  # A class's values are finite exactly when it occurs in the evaluated ground truth.
  present = {int(c) for i in range(num_images)
             for c in synthetic.SyntheticSource(num_images, split="validation")[i][
                 "segments_info"]["category_id"]}
  for i, name in enumerate(names):
    assert (report["sem_seg"][f"IoU-{name}"] is not None) == (i in present), (name, present)
  assert all(np.isfinite(report["sem_seg"][k]) for k in ("mIoU", "fwIoU", "mACC", "pACC"))
  assert all(np.isfinite(report["panoptic_seg"][k]) for k in ("PQ", "SQ", "RQ"))


def test_train(trained):
  workdir, run = trained
  assert f"step {STEPS}/{STEPS}" in run.stdout and f"trained {STEPS} steps" in run.stdout
  assert (workdir / "checkpoints" / str(STEPS) / "state").is_dir()
  config = json.loads((workdir / "config.json").read_text())
  assert config["optim"]["max_steps"] == STEPS and config["data"]["image_size"] == [SIZE, SIZE]
  metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
  assert all(np.isfinite(m["total_loss"]) for m in metrics)
  _check_report(json.loads((workdir / "eval_results.json").read_text()), NUM_VAL)
  assert "PQ" in run.stdout and "mIoU" in run.stdout


def test_eval(runs, images):
  run, out = runs["eval"]
  _check(run)
  assert f"wrote {out / 'eval_results.json'}" in run.stdout
  report = json.loads((out / "eval_results.json").read_text())
  _check_report(report, 4)
  visualizations = sorted((out / "visualizations").iterdir())
  assert [p.name for p in visualizations] == [f"{i}.png" for i in range(4)]
  _, records = images
  for p, record in zip(visualizations, records):
    assert _png(p).shape == record["image"].shape

  # The same model through predict: its semantic maps give eval's pixel accuracy (percent).
  _, semantic_out = runs["semantic"]
  correct = total = 0
  for i, record in enumerate(records):
    pred = _png(semantic_out / f"val{i}.semantic.png")
    valid = record["semantic"] != 255
    correct += int((pred[valid] == record["semantic"][valid]).sum())
    total += int(valid.sum())
  assert report["sem_seg"]["pACC"] == pytest.approx(100.0 * correct / total, abs=0.2)


def test_predict_semantic(runs, images):
  _, records = images
  run, out = runs["semantic"]
  _check(run)
  for i in range(NUM_VAL):
    assert str(out / f"val{i}.semantic.png") in run.stdout
    with PIL.Image.open(out / f"val{i}.semantic.png") as img:
      assert img.mode == "L"
      sem = np.asarray(img)
    assert sem.shape == records[i]["image"].shape[:2] and sem.max() < NUM_CLASSES
    assert _png(out / f"val{i}.overlay.png").shape == records[i]["image"].shape


def test_predict_panoptic(runs, images):
  from m2f_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  _, records = images
  run, out = runs["panoptic"]
  _check(run)
  num_segments = 0
  for name, shape in (("val0", records[0]["image"].shape[:2]), ("wide", (48, 80)),
                      ("val1", records[1]["image"].shape[:2])):
    rgb = _png(out / f"{name}.panoptic.png").astype(np.int64)
    assert rgb.shape == (*shape, 3)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 256**2 * rgb[..., 2]
    info = json.loads((out / f"{name}.panoptic.json").read_text())
    assert info["file_name"] == f"{name}.panoptic.png"
    segments = info["segments_info"]
    assert sorted(s["id"] for s in segments) == sorted(set(np.unique(ids).tolist()) - {0})
    for s in segments:
      mask = ids == s["id"]
      ys, xs = np.nonzero(mask)
      assert s["area"] == mask.sum()
      assert s["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
      assert s["isthing"] == synthetic.CATEGORIES[s["category_id"]]["isthing"]
    num_segments += len(segments)
    assert _png(out / f"{name}.overlay.png").shape == (*shape, 3)
  assert num_segments > 0


def test_predict_instance_and_unreadable_images(runs, images):
  paths, records = images
  run, out = runs["instance"]
  _check(run, returncode=1)
  assert f"error: {paths['missing']}: no such file" in run.stderr
  assert f"error: {paths['broken']}: not a readable image" in run.stderr
  assert "Traceback" not in run.stderr
  assert sorted(p.name for p in out.iterdir()) == [
      "categories.json", "val0.instances.json", "val0.overlay.png", "wide.instances.json",
      "wide.overlay.png"]
  for name, shape in (("val0", records[0]["image"].shape[:2]), ("wide", (48, 80))):
    dets = json.loads((out / f"{name}.instances.json").read_text())
    assert dets
    for det in dets:
      assert 0 <= det["category_id"] < NUM_CLASSES and 0.0 <= det["score"] <= 1.0
      assert det["segmentation"]["size"] == list(shape)
      mask = mask_util.decode({"size": det["segmentation"]["size"],
                               "counts": det["segmentation"]["counts"].encode()})
      assert mask.shape == shape
      if mask.any():
        ys, xs = np.nonzero(mask)
        assert det["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                               ys.max() - ys.min() + 1]
    assert _png(out / f"{name}.overlay.png").shape == (*shape, 3)


def test_convert_missing_directory(runs):
  run, out = runs["convert"]
  _check(run, returncode=1)
  assert run.stderr.startswith("error: ") and str(out / "no_such_dir") in run.stderr
  assert "Traceback" not in run.stderr
  assert not (out / "converted").exists()
