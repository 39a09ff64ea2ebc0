"""Your own data end to end (configs/custom.py): train, move the workdir, evaluate, predict.

A small COCO-panoptic dataset with the non-contiguous category ids 7, 12 (things) and 30
(stuff) is written to a tmp dir; train.py trains the custom config's small test model
(configs/custom.py:slim) 2 steps on it (the class count comes from the JSON). The workdir is
then moved and the source folder renamed, so eval.py, predict and a model export read only
what the checkpoint stores (and the prepared tfds dataset for eval.py); their COCO-format
outputs must carry the dataset's ids. Also: a stated num_classes that disagrees stops before
step 1, instance-format data trains the instance task, and predict gives inputs of the same
file name distinct outputs.
"""

import json
import os
import pathlib
import shutil
import subprocess

import numpy as np
import PIL.Image
import pytest

from tests import proc as proc_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZE = 64
STEPS = 2
TIMEOUT_S = 900  # a loaded 2-core machine compiled the train step in 3 min
CATEGORIES = [  # in the JSON out of id order: the contiguous classes sort them by id
    {"id": 30, "name": "grass", "isthing": 0, "color": [20, 200, 20]},
    {"id": 7, "name": "apple", "isthing": 1, "color": [220, 30, 30]},
    {"id": 12, "name": "pear", "isthing": 1, "color": [230, 230, 40]},
]
DATASET_IDS = {7, 12, 30}
THING_IDS = {7, 12}
FAST_FLAGS = (
    f"--config.optim.max_steps={STEPS}", f"--config.data.image_size=({SIZE}, {SIZE})",
    "--config.data.batch_size=2", "--config.eval.batch_size=2",
    f"--config.eval.min_size={SIZE}", f"--config.eval.max_size={SIZE}",
    "--config.eval.object_mask_threshold=0.0", "--config.train.log_every=1",
    "--config.loss.train_num_points=256")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _start(*args) -> subprocess.Popen:
  return proc_lib.start(*args)


def _finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
  return proc_lib.finish(proc, returncode=None, timeout=TIMEOUT_S)


_check = proc_lib.check


def _id_to_rgb(ids: np.ndarray) -> np.ndarray:
  return np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)


def _example(rng):
  """An image with grass everywhere and 1-2 apples / pears: (image, ids, segments)."""
  ids = np.ones((SIZE, SIZE), np.int32)  # segment 1: grass
  segments = [(1, 30)]
  for segment_id in range(2, 2 + int(rng.integers(1, 3))):
    h, w = rng.integers(12, 28, size=2)
    y, x = rng.integers(0, SIZE - h), rng.integers(0, SIZE - w)
    ids[y:y + h, x:x + w] = segment_id
    segments.append((segment_id, int(rng.choice([7, 12]))))
  colors = {c["id"]: c["color"] for c in CATEGORIES}
  image = np.zeros((SIZE, SIZE, 3), np.float32)
  for segment_id, category_id in segments:
    image[ids == segment_id] = colors[category_id]
  image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
  segments = [(s, c) for s, c in segments if (ids == s).any()]
  return image, ids, segments


def write_dataset(root: pathlib.Path, num_train: int = 6, num_val: int = 2, seed: int = 0):
  """COCO panoptic folders under `root`; returns the data flags of train.py."""
  rng = np.random.default_rng(seed)
  flags = {}
  for split, count, prefix in (("train", num_train, ""), ("val", num_val, "val_")):
    images, annotations = [], []
    for i in range(count):
      image, ids, segments = _example(rng)
      file_name = f"{split}_{i:03d}.jpg"
      (root / split).mkdir(parents=True, exist_ok=True)
      (root / f"panoptic_{split}").mkdir(parents=True, exist_ok=True)
      PIL.Image.fromarray(image).save(root / split / file_name, quality=95)
      PIL.Image.fromarray(_id_to_rgb(ids)).save(root / f"panoptic_{split}" / f"{split}_{i:03d}.png")
      images.append({"id": 100 + i, "file_name": file_name, "height": SIZE, "width": SIZE})
      annotations.append({"image_id": 100 + i, "file_name": f"{split}_{i:03d}.png",
                          "segments_info": [
                              {"id": s, "category_id": c, "iscrowd": 0,
                               "area": int((ids == s).sum()), "bbox": [0, 0, 1, 1]}
                              for s, c in segments]})
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    json_file = root / "annotations" / f"panoptic_{split}.json"
    json_file.write_text(json.dumps({"images": images, "annotations": annotations,
                                     "categories": CATEGORIES}))
    flags.update({f"{prefix}json_file": json_file, f"{prefix}image_dir": root / split,
                  f"{prefix}panoptic_dir": root / f"panoptic_{split}"})
  return flags


def _data_flags(flags: dict, tfds_dir) -> list[str]:
  return [f"--config.data.{k}={v}" for k, v in flags.items()] + [
      f"--config.data.data_dir={tfds_dir}"]


@pytest.fixture(scope="module")
def moved(tmp_path_factory):
  """Trains on the dataset, then moves the workdir and hides the source folder."""
  tmp = tmp_path_factory.mktemp("custom")
  flags = write_dataset(tmp / "mydata")
  workdir = tmp / "workdir"
  run = _finish(_start("train.py", "--config=configs/custom.py:slim", f"--workdir={workdir}",
                       *FAST_FLAGS, *_data_flags(flags, tmp / "tfds")))
  _check(run)
  new_workdir = tmp / "moved" / "workdir"
  new_workdir.parent.mkdir()
  shutil.move(workdir, new_workdir)
  (tmp / "mydata").rename(tmp / "mydata_gone")  # no access to the source files any more
  return new_workdir, run, tmp


def test_train_reads_the_classes_from_the_data(moved):
  workdir, run, _ = moved
  assert f"step {STEPS}/{STEPS}" in run.stdout
  config = json.loads((workdir / "config.json").read_text())
  assert config["model"]["num_classes"] == 3
  assert [(c["id"], c["dataset_id"], c["name"], c["isthing"], c["color"])
          for c in config["data"]["categories"]] == [
              (0, 7, "apple", 1, [220, 30, 30]), (1, 12, "pear", 1, [230, 230, 40]),
              (2, 30, "grass", 0, [20, 200, 20])]
  report = json.loads((workdir / "eval_results.json").read_text())
  assert {"sem_seg", "panoptic_seg", "segm"} <= set(report)
  assert "AP-apple" in report["segm"] and "IoU-grass" in report["sem_seg"]


def _panoptic_ids(path) -> np.ndarray:
  with PIL.Image.open(path) as img:
    rgb = np.asarray(img).astype(np.int64)
  return rgb[..., 0] + 256 * rgb[..., 1] + 256**2 * rgb[..., 2]


def test_moved_workdir_evaluates_predicts_and_exports(moved, tmp_path):
  workdir, _, tmp = moved
  step_dir = workdir / "checkpoints" / str(STEPS)
  # Inputs: two images of the same file name in two folders, and one more.
  val = sorted((tmp / "mydata_gone" / "val").iterdir())
  inputs = tmp_path / "inputs"
  for folder, source in (("a", val[0]), ("b", val[1]), ("b/c", val[0])):
    (inputs / folder).mkdir(parents=True)
    shutil.copy(source, inputs / folder / "photo.jpg")
  shutil.copy(val[1], inputs / "b" / "c" / "photo.png")  # the same stem in one folder
  # A model export of the moved training checkpoint (the convert CLI): it stores the categories.
  model_dir = tmp_path / "model"
  _check(_finish(_start("-m", "m2f_jax.convert", "--from", "checkpoint", step_dir, "--output",
                        model_dir)))
  stored = json.loads((model_dir / "config.json").read_text())["data"]["categories"]
  assert [c["dataset_id"] for c in stored] == [7, 12, 30]

  out = {name: tmp_path / name for name in ("eval", "panoptic", "instance", "semantic")}
  procs = {
      "eval": _start("eval.py", f"--checkpoint={step_dir}", f"--workdir={out['eval']}"),
      "panoptic": _start("-m", "m2f_jax.predict", "--checkpoint", step_dir, "--task",
                         "panoptic", "--output", out["panoptic"], inputs),
      "instance": _start("-m", "m2f_jax.predict", "--checkpoint", model_dir, "--task",
                         "instance", "--output", out["instance"], inputs / "a",
                         inputs / "b" / "photo.jpg"),
      "semantic": _start("-m", "m2f_jax.predict", "--checkpoint", model_dir, "--task",
                         "semantic", "--output", out["semantic"], val[0]),
  }
  runs = {name: _finish(proc) for name, proc in procs.items()}
  for run in runs.values():
    _check(run)

  report = json.loads((out["eval"] / "eval_results.json").read_text())
  assert report["num_images"] == 2 and {"sem_seg", "panoptic_seg", "segm"} <= set(report)

  # Panoptic: the folder structure kept, names unique, the dataset's ids.
  names = sorted(str(p.relative_to(out["panoptic"])) for p in out["panoptic"].rglob("*.json"))
  assert names == ["a/photo.panoptic.json", "b/c/photo.jpg.panoptic.json",
                   "b/c/photo.png.panoptic.json", "b/photo.panoptic.json", "categories.json"]
  table = json.loads((out["panoptic"] / "categories.json").read_text())
  assert [(c["id"], c["class_index"], c["name"], c["isthing"]) for c in table] == [
      (7, 0, "apple", 1), (12, 1, "pear", 1), (30, 2, "grass", 0)]
  isthing = {c["id"]: c["isthing"] for c in table}
  num_segments = 0
  for name in names[:-1]:
    info = json.loads((out["panoptic"] / name).read_text())
    ids = _panoptic_ids(out["panoptic"] / os.path.dirname(name) / info["file_name"])
    assert ids.shape == (SIZE, SIZE)
    for s in info["segments_info"]:
      assert s["category_id"] in DATASET_IDS and s["isthing"] == isthing[s["category_id"]]
      assert s["area"] == (ids == s["id"]).sum() > 0
    num_segments += len(info["segments_info"])
  assert num_segments > 0

  # Instances of a panoptic model: things only, no empty mask, the dataset's ids.
  assert sorted(str(p.relative_to(out["instance"])) for p in out["instance"].rglob("*.json")) == [
      "a/photo.instances.json", "b/photo.instances.json", "categories.json"]
  from pycocotools import mask as mask_util  # pylint: disable=g-import-not-at-top
  dets = [d for name in ("a", "b")
          for d in json.loads((out["instance"] / name / "photo.instances.json").read_text())]
  assert dets
  for det in dets:
    assert det["category_id"] in THING_IDS
    assert mask_util.area(det["segmentation"]) > 0 and det["bbox"][2] > 0

  # Semantic maps: class indices, mapped to the dataset's ids by categories.json.
  with PIL.Image.open(out["semantic"] / "val_000.semantic.png") as img:
    assert img.size == (SIZE, SIZE) and np.asarray(img).max() < 3
  assert (out["semantic"] / "categories.json").is_file()


# ------------------------------------------------------------------------------------------
# Checks that need no training
# ------------------------------------------------------------------------------------------


def _custom_config(flags: dict, tmp_path, **overrides):
  from m2f_jax import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config_file(str(REPO / "configs" / "custom.py") + ":tiny")
  config.data.update({k: str(v) for k, v in flags.items()}, data_dir=str(tmp_path / "tfds"))
  for key, value in overrides.items():
    section, field = key.split(".")
    config[section][field] = value
  return config


def test_stated_num_classes_that_disagrees_stops_before_step_one(tmp_path):
  from m2f_jax import config_lib  # pylint: disable=g-import-not-at-top
  from m2f_jax import errors  # pylint: disable=g-import-not-at-top
  flags = write_dataset(tmp_path / "mydata", num_train=2, num_val=1)
  config = _custom_config(flags, tmp_path, **{"model.num_classes": 5})
  with pytest.raises(errors.ConfigError) as info:
    config_lib.resolve_categories(config)
  message = str(info.value)
  assert "\n" not in message
  assert str(flags["json_file"]) in message and "3 categories" in message
  assert "model.num_classes=5" in message and "[7, 12, 30]" in message
  # The stated count that agrees is accepted; None becomes the data's count.
  for stated in (3, None):
    config = _custom_config(flags, tmp_path, **{"model.num_classes": stated})
    assert config_lib.resolve_categories(config).model.num_classes == 3
  # train.py: the same message, no step, no checkpoint.
  workdir = tmp_path / "workdir"
  run = _finish(_start("train.py", "--config=configs/custom.py:tiny", f"--workdir={workdir}",
                       "--config.model.num_classes=5", *FAST_FLAGS,
                       *_data_flags(flags, tmp_path / "tfds")))
  assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
  error = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
  assert len(error) == 1 and error[0] == f"error: {message}", run.stderr[-3000:]
  assert "step 1/" not in run.stdout and not (workdir / "checkpoints").exists()


def test_instance_format_data_trains_the_instance_task(tmp_path):
  from m2f_jax import config_lib  # pylint: disable=g-import-not-at-top
  flags = write_dataset(tmp_path / "mydata", num_train=1, num_val=1)
  json_file = pathlib.Path(flags["json_file"])
  dataset = json.loads(json_file.read_text())
  dataset["categories"] = [{"id": c["id"], "name": c["name"]} for c in CATEGORIES
                           if c["isthing"]]
  json_file.write_text(json.dumps(dataset))
  flags = {"json_file": json_file, "image_dir": flags["image_dir"]}
  config = config_lib.resolve_categories(_custom_config(flags, tmp_path))
  assert config.data.task == "instance" and tuple(config.eval.evaluators) == ("instance",)
  assert [(c["dataset_id"], c["name"], c["isthing"]) for c in config.data.categories] == [
      (7, "apple", 1), (12, "pear", 1)]
  assert config.model.num_classes == 2


def test_output_names_are_unique_and_keep_folders(tmp_path):
  from m2f_jax import predict  # pylint: disable=g-import-not-at-top
  for rel in ("a/x.jpg", "b/x.jpg", "b/y.png", "b/y.jpg", "b/c/z.png", "b/notes.txt"):
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_bytes(b"")
  paths = predict.find_images([str(tmp_path / "b"), str(tmp_path / "a" / "x.jpg"),
                               str(tmp_path / "b" / "y.png")])  # y.png twice: once
  assert [os.path.relpath(p, tmp_path) for p in paths] == [
      "b/c/z.png", "b/x.jpg", "b/y.jpg", "b/y.png", "a/x.jpg"]
  assert predict.output_names(paths) == ["b/c/z", "b/x", "b/y.jpg", "b/y.png", "a/x"]
  assert predict.output_names([str(tmp_path / "a" / "x.jpg")]) == ["x"]
