"""Tests of m2f_jax/data/builders/vipseg.py on small VIPSeg_720P folders written here (the
layout of VIPSeg's create_panoptic_video_labels.py + splitjson.py): frames, ids and classes
decoded back to what was written (void, tracks, a segment absent from a frame, non-contiguous
category ids, an id reused with a second category), clips that `video_pipeline.clip_record`
accepts, and bad input (missing or corrupt frame or PNG, PNG of the wrong size, segments_info
and PNG disagreeing, unknown category) failing with the file and the reason, or skipped and
counted."""

import json
import os
import re

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from m2f_jax.data import builders
from m2f_jax.data import video_pipeline
from m2f_jax.data.builders import vipseg
from m2f_jax.data.panoptic_png import OFFSET
from m2f_jax.data.panoptic_png import id2rgb

H, W = 48, 64
# Out of id order (the builder sorts): contiguous class = rank of the id.
CATEGORIES = [
    {"id": 5, "name": "car", "isthing": 1, "color": [140, 140, 140]},
    {"id": 0, "name": "wall", "isthing": 0, "color": [120, 120, 120]},
    {"id": 3, "name": "sky", "isthing": 0, "color": [6, 230, 230]},
    {"id": 1, "name": "person", "isthing": 1, "color": [150, 5, 61]},
]
CLASS = {0: 0, 1: 1, 3: 2, 5: 3}  # dataset id -> contiguous class
WALL, SKY, PERSON, CAR = 7895160, 15132166, 4000150, 9211020  # segment (png) ids


def _frame_ids(t, *, car=True, sky=True, clash=False):
  """One frame's panoptic ids and segments_info: wall, sky, a moving person, a car, void."""
  ids = np.full((H, W), WALL, np.int64)
  segments = {WALL: 0}
  if sky:
    ids[:12] = SKY
    segments[SKY] = 3
  ids[20:36, 4 + 6 * t:20 + 6 * t] = PERSON
  segments[PERSON] = 1
  if car:
    ids[30:44, 40:60] = CAR
    segments[CAR] = 5
  if clash:  # the release's colour collision: sky's id on a car
    ids[14:18, 40:60] = SKY
    segments[SKY] = 5
  ids[44:, :8] = 0  # void
  info = [{"id": int(i), "category_id": c, "iscrowd": int(i == CAR and t == 0)}
          for i, c in segments.items()]
  return ids, info


def _write_release(root, *, videos=None):
  """A VIPSeg_720P folder; returns {split: [(name, ids [T, H, W], frame infos)]}."""
  videos = videos or {"train": [("1001_aaa", 3, {}), ("1002_bbb", 4, {2: {"sky": False,
                                                                          "clash": True}})],
                      "validation": [("2001_ccc", 3, {1: {"car": False}})]}
  rng = np.random.default_rng(0)
  written = {}
  for split, entries in videos.items():
    v_videos, v_annotations, written[split] = [], [], []
    for name, length, special in entries:
      os.makedirs(root / "images" / name)
      os.makedirs(root / "panomasksRGB" / name)
      images, annotations, all_ids, infos = [], [], [], []
      for t in range(length):
        frame = f"{t * 5:08d}"
        PIL.Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(
            root / "images" / name / f"{frame}.jpg", quality=90)
        ids, info = _frame_ids(t, **special.get(t, {}))
        PIL.Image.fromarray(id2rgb(ids)).save(root / "panomasksRGB" / name / f"{frame}.png")
        images.append({"id": frame, "width": W, "height": H, "file_name": f"{frame}.png"})
        annotations.append({"image_id": frame, "file_name": f"{frame}.png",
                            "segments_info": info})
        all_ids.append(ids)
        infos.append(info)
      v_videos.append({"video_id": name, "images": images})
      v_annotations.append({"video_id": name, "annotations": annotations})
      written[split].append((name, np.stack(all_ids), infos))
    suffix = vipseg.SPLITS[split]
    (root / f"panoptic_gt_VIPSeg_{suffix}.json").write_text(json.dumps(
        {"videos": v_videos, "annotations": v_annotations, "categories": CATEGORIES}))
  return written


def _name(example):
  name = example["name"]
  return name.decode() if isinstance(name, bytes) else str(name)


def _build(root, tmp_path, **kwargs):
  builder = vipseg.Vipseg(config=vipseg.make_config(num_workers=2, **kwargs),
                          data_dir=str(tmp_path / "tfds"), file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
  return builder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("vipseg")
  written = _write_release(tmp / "vipseg" / "VIPSeg_720P")
  return _build(tmp / "vipseg", tmp), written, tmp / "vipseg" / "VIPSeg_720P"  # parent given


def test_examples_decode_to_the_release(built):
  builder, written, root = built
  assert builder.info.metadata["categories"] == [
      {"id": 0, "name": "wall", "isthing": 0, "dataset_id": 0, "color": [120, 120, 120]},
      {"id": 1, "name": "person", "isthing": 1, "dataset_id": 1, "color": [150, 5, 61]},
      {"id": 2, "name": "sky", "isthing": 0, "dataset_id": 3, "color": [6, 230, 230]},
      {"id": 3, "name": "car", "isthing": 1, "dataset_id": 5, "color": [140, 140, 140]}]
  sources = builder.as_data_source()
  assert {s: len(sources[s]) for s in sources} == {"train": 2, "validation": 1}
  for split, videos in written.items():
    examples = {_name(sources[split][i]): sources[split][i]
                for i in range(len(sources[split]))}
    for index, (name, ids, infos) in enumerate(videos):
      example = examples[name]
      clip = vipseg.decode_clip(example)
      assert clip["video_id"] == index and clip["length"] == len(ids)
      assert clip["video"].shape == (len(ids), H, W, 3) and clip["video"].dtype == np.uint8
      jpeg = root / "images" / name / f"{(len(ids) - 1) * 5:08d}.jpg"
      np.testing.assert_array_equal(clip["video"][-1], np.asarray(PIL.Image.open(jpeg)))
      assert example["video"][-1] == jpeg.read_bytes()  # JPEG bytes kept
      assert example["panoptic"][0] == (root / "panomasksRGB" / name / "00000000.png"
                                        ).read_bytes()  # PNG bytes kept
      expected = ids.astype(np.int32)
      semantic = np.full(ids.shape, 255, np.uint8)
      for t, info in enumerate(infos):
        for s in info:
          semantic[t][ids[t] == s["id"]] = CLASS[s["category_id"]]
      if name == "1002_bbb":  # frame 2: the sky's id on a car, decoded as a fresh id
        expected[2][ids[2] == SKY] = OFFSET
      np.testing.assert_array_equal(clip["panoptic"], expected)
      np.testing.assert_array_equal(clip["semantic"], semantic)
      seg = clip["segments_info"]
      got = {(i, c, bool(k), bool(th)) for i, c, k, th in zip(
          seg["id"].tolist(), seg["category_id"].tolist(), seg["iscrowd"], seg["isthing"])}
      want = {(WALL, 0, False, False), (PERSON, 1, False, True), (CAR, 3, True, True),
              (SKY, 2, False, False)}
      if name == "1002_bbb":
        want.add((OFFSET, 3, False, True))
      assert got == want
  notes = builder.info.metadata["dropped_annotations"]["train"]
  assert notes["count"] == 1 and f"segment id {SKY} has a second category" in \
      notes["examples"][0]


def test_clips_of_selected_frames_and_thing_instances(built):
  builder, written, _ = built
  (example,) = builder.as_data_source()["validation"]
  clip = vipseg.decode_clip(example, [1, 2])  # the car is absent from frame 1
  ids = written["validation"][0][1]
  np.testing.assert_array_equal(clip["panoptic"], ids[[1, 2]])
  assert clip["frame_indices"].tolist() == [1, 2]
  only = vipseg.decode_clip(example, [1])
  assert sorted(only["segments_info"]["id"].tolist()) == sorted([WALL, SKY, PERSON])
  record = video_pipeline.clip_record(clip)  # as it takes the synthetic clips
  inst = record["instances"]
  assert inst["track_id"].tolist() == [PERSON, CAR] and inst["category_id"].tolist() == [1, 3]
  assert inst["masks"].shape == (2, 2, H, W)
  assert inst["masks"][1, 0].sum() == 0 and inst["masks"][1, 1].sum() == 14 * 20
  with pytest.raises(ValueError, match="out of range"):
    vipseg.decode_clip(example, [3])


@pytest.mark.parametrize("damage, reason, bad", [
    ("missing_frame", "missing file", "jpg"),
    ("missing_png", "missing file", "png"),
    ("corrupt_jpeg", "cannot decode the image", "jpg"),
    ("corrupt_png", "cannot decode the panoptic PNG", "png"),
    ("png_size", re.escape("panoptic PNG is 24x64 (HxW) but its image is 48x64"), "png"),
    ("listed_not_in_png", rf"segment ids \[{CAR}\] of the segments_info .* not in the PNG",
     "png"),
    ("png_not_listed", rf"segment ids \[{PERSON}\] of the PNG are not in the segments_info",
     "png"),
    ("unknown_category", "unknown category_id 255", "json"),
])
def test_bad_input_fails_with_the_file_or_is_skipped(tmp_path, damage, reason, bad):
  root = tmp_path / "VIPSeg_720P"
  _write_release(root, videos={"train": [("v1", 2, {}), ("v2", 3, {})]})
  json_file = root / "panoptic_gt_VIPSeg_train.json"
  frame = root / "images" / "v2" / "00000005.jpg"
  png = root / "panomasksRGB" / "v2" / "00000005.png"
  dataset = json.loads(json_file.read_text())
  info = dataset["annotations"][1]["annotations"][1]["segments_info"]  # v2, frame 1
  if damage == "missing_frame":
    os.remove(frame)
  elif damage == "missing_png":
    os.remove(png)
  elif damage == "corrupt_jpeg":
    frame.write_bytes(frame.read_bytes()[:60])
  elif damage == "corrupt_png":
    png.write_bytes(png.read_bytes()[:60])
  elif damage == "png_size":
    PIL.Image.open(png).crop((0, 0, W, H // 2)).save(png)
  elif damage == "listed_not_in_png":
    ids, _ = _frame_ids(1, car=False)
    PIL.Image.fromarray(id2rgb(ids)).save(png)
  elif damage == "png_not_listed":
    info[:] = [s for s in info if s["id"] != PERSON]
  else:
    info[0]["category_id"] = 255
  json_file.write_text(json.dumps(dataset))
  with pytest.raises(builders.BadInputError, match=reason) as error:
    _build(root, tmp_path / "fail")
  assert error.value.path == str({"jpg": frame, "png": png, "json": json_file}[bad])
  builder = _build(root, tmp_path / "skip", on_error="skip")
  assert [_name(e) for e in builder.as_data_source()["train"]] == ["v1"]
  skipped = builder.info.metadata["skipped"]["train"]
  assert skipped["count"] == 1 and skipped["examples"][0].startswith(str(error.value.path))


def test_missing_annotations_name_what_to_run(tmp_path):
  os.makedirs(tmp_path / "release" / "images" / "v1")  # frames, but no JSON
  with pytest.raises(FileNotFoundError, match="panoptic_gt_VIPSeg_train.json .*splitjson.py"):
    _build(tmp_path / "release", tmp_path)
