"""Tests of m2f_jax/data/builders/ytvis.py on small release folders written here: every
segmentation format (compressed / uncompressed RLE, polygons, None), category mapping, the
held-out evaluation split, clips and evaluation videos from the built data, and bad input
(missing frame, corrupt JPEG, mask of the wrong size, unknown category) failing with the file
and the reason, or skipped and counted."""

import io
import json
import re
import os

import ml_collections
import numpy as np
import PIL.Image
from pycocotools import mask as mask_util
import pytest
import tensorflow_datasets as tfds

from m2f_jax import data
from m2f_jax.data import builders
from m2f_jax.data import video_pipeline
from m2f_jax.data.builders import ytvis

H, W, T = 24, 32, 3


def _box(y0, x0, y1, x1):
  m = np.zeros((H, W), np.uint8)
  m[y0:y1, x0:x1] = 1
  return m


def _rle(m):
  r = mask_util.encode(np.asfortranarray(m))
  return {"size": [H, W], "counts": r["counts"].decode()}


def _uncompressed(m):
  flat = m.T.reshape(-1)
  change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [2]])))
  return {"size": [H, W], "counts": np.diff(np.concatenate([[0], change])).tolist()}


def _write_release(root, num_videos=3):
  """A YouTube-VIS-like folder; returns the masks each annotation should decode to."""
  rng = np.random.default_rng(0)
  videos, annotations, expected = [], [], {}
  for v in range(num_videos):
    name = f"vid{v:03d}"
    os.makedirs(root / "train" / "JPEGImages" / name)
    files = []
    for t in range(T):
      files.append(f"{name}/{t * 5:05d}.jpg")
      PIL.Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(
          root / "train" / "JPEGImages" / files[-1], quality=95)
    videos.append({"id": 10 + v, "file_names": files, "height": H, "width": W, "length": T})
    a = [_box(2, 2, 10, 12), None, _box(4, 4, 12, 14)]  # absent in frame 1
    b = [_box(14, 16, 20, 30)] * T
    segs_a = [_rle(a[0]), None, _uncompressed(a[2])]
    segs_b = [[[16, 14, 30, 14, 30, 20, 16, 20]], _rle(b[1]), [[1, 1, 2, 2]]]  # last: < 3 pts
    b = [mask_util.decode(mask_util.frPyObjects(segs_b[0], H, W))[..., 0], b[1],
         np.zeros((H, W), np.uint8)]
    for k, (segs, masks, cat) in enumerate(((segs_a, a, 3), (segs_b, b, 1))):
      annotations.append({"id": 100 * v + k + 1, "video_id": 10 + v, "category_id": cat,
                          "iscrowd": int(v == 0 and k == 1), "segmentations": segs,
                          "areas": [None if m is None else int(m.sum()) for m in masks]})
      expected[(10 + v, k)] = np.stack([np.zeros((H, W), np.uint8) if m is None else m
                                        for m in masks])
  dataset = {"videos": videos, "annotations": annotations,
             "categories": [{"id": 3, "name": "dog"}, {"id": 1, "name": "person"}]}
  (root / "train.json").write_text(json.dumps(dataset))
  return dataset, expected


def _build(root, tmp_path, **kwargs):
  builder = ytvis.Ytvis(config=ytvis.make_config("2019", **kwargs),
                             data_dir=str(tmp_path / "tfds"), file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
  return builder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("ytvis")
  root = tmp / "ytvis_2019"
  dataset, expected = _write_release(root)
  return _build(root, tmp, heldout_videos=1), dataset, expected, root, tmp


def test_examples_decode_to_the_release(built):
  builder, dataset, expected, _, _ = built
  assert builder.info.metadata["categories"] == [
      {"id": 0, "name": "person", "isthing": 1, "dataset_id": 1},
      {"id": 1, "name": "dog", "isthing": 1, "dataset_id": 3}]
  sources = builder.as_data_source()
  assert len(sources["train"]) == 2 and len(sources["validation"]) == 1
  ids = sorted(int(s[i]["video_id"]) for s in sources.values() for i in range(len(s)))
  assert ids == [10, 11, 12]
  for source in sources.values():
    for i in range(len(source)):
      clip = video_pipeline.clip_record(source[i])
      vid = clip["video_id"]
      assert clip["video"].shape == (T, H, W, 3)
      frame = np.asarray(PIL.Image.open(io.BytesIO(open(
          os.path.join(built[3], "train", "JPEGImages",
                       dataset["videos"][vid - 10]["file_names"][0]), "rb").read())))
      np.testing.assert_array_equal(clip["video"][0], frame)  # JPEG bytes kept
      inst = clip["instances"]
      assert inst["category_id"].tolist() == [1, 0]  # dog, person (contiguous by id)
      assert inst["track_id"].tolist() == [100 * (vid - 10) + 1, 100 * (vid - 10) + 2]
      assert inst["iscrowd"].tolist() == [False, vid == 10]
      for k in range(2):
        np.testing.assert_array_equal(inst["masks"][k], expected[(vid, k)])
  notes = builder.info.metadata["dropped_annotations"]
  assert sum(n["count"] for n in notes.values()) == 3  # one short polygon per video


def test_clips_and_evaluation_videos_from_the_built_data(built):
  builder = built[0]
  train = builder.as_data_source()["train"]
  batch = next(video_pipeline.train_iterator(
      train, batch_size=2, seed=0, num_frames=2, num_targets=4, image_size=(32, 64),
      pixel_mean=(0, 0, 0), pixel_std=(1, 1, 1), augmentation="ytvis", min_size_train=(24, 32)))
  assert batch["images"].shape == (2, 2, 32, 64, 3) and batch["masks"].shape == (2, 4, 2, 32, 64)
  (video,) = list(video_pipeline.eval_videos(builder.as_data_source()["validation"],
                                             pixel_mean=(0, 0, 0), pixel_std=(1, 1, 1),
                                             min_size=48, max_size=100))
  assert video["images"].shape == (1, T, 64, 64, 3)
  assert tuple(video["output_size"]) == (H, W)
  gt = video["ground_truth"]
  assert [g["segmentations"][1] is None for g in gt] == [True, False]
  assert gt[1]["areas"][2] is None  # the frame whose only polygon had < 3 points


def test_registered_datasets_and_categories_from_the_json(built):
  _, _, _, root, tmp = built
  cfg = ml_collections.ConfigDict(dict(dataset="ytvis_2021", source_dir=str(root),
                                       data_dir=str(tmp / "other"), heldout_videos=1,
                                       on_error="fail", prepare_workers=2))
  assert data.spec("ytvis_2021").task == "video_instance"
  assert [c["name"] for c in data.categories(cfg)] == ["person", "dog"]  # not prepared yet
  assert data.tfds_builder(cfg).builder_config.name == "2021_heldout1"
  data.prepare_dataset(cfg)  # as `python -m m2f_jax.data.prepare` does
  assert len(data.data_source(cfg, "train")) == 2
  assert len(data.data_source(cfg, "validation")) == 1
  assert [c["dataset_id"] for c in data.categories(cfg)] == [1, 3]  # from the metadata


@pytest.mark.parametrize("damage, reason", [
    ("missing_frame", "missing file"),
    ("corrupt_jpeg", "cannot decode"),
    ("wrong_size", re.escape("its mask is [12, 32]")),
    ("unknown_category", "unknown category_id 7"),
])
def test_bad_input_fails_with_the_file_or_is_skipped(tmp_path, damage, reason):
  root = tmp_path / "release"
  dataset, _ = _write_release(root, num_videos=2)
  bad_frame = root / "train" / "JPEGImages" / dataset["videos"][1]["file_names"][1]
  if damage == "missing_frame":
    os.remove(bad_frame)
  elif damage == "corrupt_jpeg":
    bad_frame.write_bytes(bad_frame.read_bytes()[:40])
  else:
    ann = dataset["annotations"][2]  # video 11's first annotation
    if damage == "wrong_size":
      ann["segmentations"][0] = _rle(_box(0, 0, 2, 2)) | {"size": [12, 32]}
    else:
      ann["category_id"] = 7
    (root / "train.json").write_text(json.dumps(dataset))
  where = str(bad_frame) if "frame" in damage or "jpeg" in damage else str(root / "train.json")
  with pytest.raises(builders.BadInputError, match=reason) as error:
    _build(root, tmp_path / "fail")
  assert error.value.path == where
  builder = _build(root, tmp_path / "skip", on_error="skip")
  assert len(builder.as_data_source()["train"]) == 1
  assert builder.info.metadata["skipped"]["train"]["count"] == 1
