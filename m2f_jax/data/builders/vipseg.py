"""VIPSeg (video panoptic segmentation, 124 classes), built from the user's local copy.

Reads the 720P release in COCO video panoptic format, as VIPSeg's own scripts write it
(VIPSeg-Dataset `change2_720p.py`, `create_panoptic_video_labels.py`, `splitjson.py`), the
layout the Detectron2-based video panoptic codebases read (`load_video_vspw_vps_json`):

  VIPSeg_720P/images/<video>/<frame>.jpg
  VIPSeg_720P/panomasksRGB/<video>/<frame>.png      RGB-encoded ids, id = R + 256 G + 256^2 B
  VIPSeg_720P/panoptic_gt_VIPSeg_{train,val}.json   {"videos": [{"video_id", "images":
      [{"id", "file_name", "height", "width"}]}], "annotations": [{"video_id", "annotations":
      [{"image_id", "file_name", "segments_info": [{"id", "category_id", "iscrowd"}]}]}],
      "categories": [{"id", "name", "isthing", "color"}]}

One example per video of a split's JSON ("train": `_train.json`, "validation": `_val.json`;
the test split has no ground truth, and `splitjson.py` writes no JSON for it). As the
reference loaders: the frames are the video's "images" in the JSON's order, frame
`<video>/<image file_name stem>.jpg` and PNG `<video>/<annotation file_name>`.

- Category ids become contiguous class indices in the order of the categories sorted by id
  (VIPSeg's are already 0..123: 58 things, 66 stuff); `info.metadata["categories"]` keeps
  each one's "name", "isthing", "color" and original id as "dataset_id".
- Void follows VIPSeg's evaluation (`eval_vpq_vspw.py`: VOID = 0; `eval_stq_vspw.py`: ignore
  label 255): a pixel of id 0 is void ("panoptic" 0, "semantic" 255). The raw panomasks' class
  0 ("others" in `label_num_dic_final.json`) is what the conversion turned into id 0 (it
  lists no segment for it); the JSON's category 0 is "wall", a real class. A segment of id 0
  in segments_info, or of a category the JSON does not list (255, say), is bad input.
- Frames: the release's JPEG bytes kept byte for byte (other formats stored as PNG);
  panoptic maps: the release's RGB PNG bytes kept byte for byte. Both are decoded only for
  the frames a clip uses (`decode_clip`).
- "segments": the video's segments (tracks: the conversion gives an instance one id for the
  whole video), each with "id", "png_id", contiguous "category_id", "iscrowd", "isthing",
  and "presence" (segment-major [S, T], flattened): whether frame t lists it. "id" is
  "png_id", except where the release gives one id two categories in different frames (its
  conversion colours the first instance of a thing with its category's colour, and stuff
  "Playground_slide" shares car's colour [140, 140, 140]): the later category's segment gets
  the fresh id 2^24 + k (beyond every PNG id) and is noted in
  `info.metadata["dropped_annotations"]` (nothing is dropped).
- Semantic maps are painted from the segments (crowd ones too), 255 on void.

`decode_clip(example, frames)` turns an example into the clip record of
`synthetic_video.generate_clip` ("video", "panoptic" ids with 0 = void, "semantic",
"segments_info"), which `video_pipeline.clip_record` accepts as it accepts synthetic clips.

Bad input (a missing or corrupt frame or PNG, a frame whose size is not the JSON's or the
video's, a PNG whose size is not its frame's, a segment of segments_info absent from its PNG,
an id of the PNG absent from segments_info, a repeated segment id, an unknown category, a
video or frame without annotation) raises `builders.BadInputError` naming the file and the
reason, or with `on_error="skip"` leaves the video out and counts it in
`info.metadata["skipped"]`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import io
import json
import os
from typing import Any

from etils import epath
import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from m2f_jax.data import builders
from m2f_jax.data.builders import coco
from m2f_jax.data.panoptic_png import OFFSET
from m2f_jax.data.panoptic_png import rgb2id

RELEASE_DIR = "VIPSeg_720P"
CONFIG_NAME = "720p"
SPLITS = {"train": "train", "validation": "val"}  # split -> the JSON's suffix
NUM_CLASSES = 124
VOID = 0  # the panoptic id of void pixels (their semantic label is builders.IGNORE_LABEL)

_LAYOUT = """\
Put (or link) VIPSeg converted to 720P and COCO format by VIPSeg's own scripts
(change2_720p.py, create_panoptic_video_labels.py, splitjson.py) in the manual dir
(data.source_dir), which then holds (or holds VIPSeg_720P/ holding)
  images/<video>/<frame>.jpg
  panomasksRGB/<video>/<frame>.png
  panoptic_gt_VIPSeg_train.json, panoptic_gt_VIPSeg_val.json
Nothing is downloaded."""


def make_config(**kwargs) -> builders.BuildConfig:
  """The builder config ("720p"); kwargs: `on_error`, `num_workers`."""
  return builders.BuildConfig(name=CONFIG_NAME, **kwargs)


def release_dir(root: os.PathLike | str) -> epath.Path:
  """The folder holding images/, panomasksRGB/ and the JSONs: `root` or `root`/VIPSeg_720P."""
  root = epath.Path(root)
  if not (root / "images").is_dir() and (root / RELEASE_DIR).is_dir():
    return root / RELEASE_DIR
  return root


def json_path(root: os.PathLike | str, split: str) -> epath.Path:
  """panoptic_gt_VIPSeg_{train,val}.json of `split` ("train" or "validation")."""
  return release_dir(root) / f"panoptic_gt_VIPSeg_{SPLITS[split]}.json"


def split_jsons(root: os.PathLike | str) -> dict[str, str]:
  """{split: JSON path} of the splits whose JSON exists (FileNotFoundError if none)."""
  found = {split: os.fspath(json_path(root, split)) for split in SPLITS}
  found = {split: path for split, path in found.items() if os.path.isfile(path)}
  if not found:
    raise FileNotFoundError(
        f"VIPSeg annotations not found: neither {json_path(root, 'train')} nor "
        f"{json_path(root, 'validation')} exists (run VIPSeg's create_panoptic_video_labels.py"
        " and splitjson.py)")
  return found


def categories_from_json(dataset: dict[str, Any], path: str) -> list[dict[str, Any]]:
  """[{"id" (contiguous, by sorted dataset id), "name", "isthing", "dataset_id", "color"}]:
  the COCO panoptic rules (`coco.categories_from_json`), which VIPSeg's JSON follows."""
  return coco.categories_from_json(dataset, path, panoptic=True)


_load_json = coco._load_json  # pylint: disable=protected-access


class Vipseg(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """VIPSeg: frames and per-frame panoptic PNGs of every video, with its segments."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _LAYOUT
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    encoded = tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_))
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        homepage="https://github.com/VIPSeg-Dataset/VIPSeg-Dataset",
        features=tfds.features.FeaturesDict({
            # [T] encoded frames (the release's JPEG bytes) and RGB-encoded panoptic PNGs
            # (the release's bytes), decoded only for the frames a clip uses (`decode_clip`).
            "video": encoded,
            "panoptic": encoded,
            # [S] the video's segments; "presence" is segment-major [S, T], flattened.
            "segments": tfds.features.Sequence({
                "id": np.int32, "png_id": np.int32, "category_id": np.int32,
                "iscrowd": np.bool_, "isthing": np.bool_}),
            "presence": tfds.features.Sequence(np.bool_),
            "frame_names": tfds.features.Sequence(tfds.features.Text()),  # [T] image ids
            "video_id": np.int64,  # the video's index in its split's JSON
            "name": tfds.features.Text(),  # the JSON's video_id, e.g. "1001_HD6ULm3bJvI"
        }),
        metadata=builders.metadata(categories=[]),
    )

  def _split_generators(self, dl_manager):
    root = release_dir(dl_manager.manual_dir)
    jsons = split_jsons(root)
    image_dir = builders.require(root / "images", "VIPSeg frames")
    panoptic_dir = builders.require(root / "panomasksRGB", "VIPSeg panoptic PNGs")
    datasets = {split: _load_json(path) for split, path in jsons.items()}
    found = {split: categories_from_json(datasets[split], jsons[split]) for split in jsons}
    first, *others = found
    for split in others:
      if found[split] != found[first]:
        raise ValueError(f"the categories of {jsons[split]} differ from those of "
                         f"{jsons[first]}; every split needs the same list")
    self.info.metadata["categories"] = found[first]
    return {split: self._generate_examples(split, datasets[split], found[first], jsons[split],
                                           image_dir, panoptic_dir)
            for split in jsons}

  def _generate_examples(self, split, dataset, categories, json_file, image_dir,
                         panoptic_dir):
    by_dataset_id = {c["dataset_id"]: c for c in categories}
    annotations = {}
    for a in dataset.get("annotations", []):
      if isinstance(a, dict):
        annotations[a.get("video_id")] = a.get("annotations")

    def process(item, notes):
      index, video = item
      name = video.get("video_id") if isinstance(video, dict) else None
      try:
        return _process_video(index, video, annotations.get(name), by_dataset_id,
                              json_file, image_dir, panoptic_dir, notes)
      except (KeyError, TypeError, AttributeError) as e:
        raise builders.BadInputError(
            json_file, f"video {name if name is not None else f'#{index}'}: malformed entry "
                       f"({type(e).__name__}: {e})") from e

    return builders.generate_examples(self, split, enumerate(dataset.get("videos", [])),
                                      process)


def _process_video(index, video, annotations, by_dataset_id, json_file, image_dir,
                   panoptic_dir, notes):
  """One video's frames, PNGs and segments (raises `BadInputError`)."""
  name = str(video["video_id"])
  if annotations is None:
    raise builders.BadInputError(json_file, f"video {name} has no entry in 'annotations'")
  per_image = {a["image_id"]: a for a in annotations}
  images = video["images"]
  if not images:
    raise builders.BadInputError(json_file, f"video {name} has no frames")
  frames, pngs, frame_names, listed = [], [], [], []
  video_size = None
  for image in images:
    frame_path = os.path.join(image_dir, name, os.path.splitext(image["file_name"])[0] + ".jpg")
    annotation = per_image.get(image["id"])
    if annotation is None:
      raise builders.BadInputError(frame_path, f"the frame has no annotation in {json_file}")
    data, size = builders.read_image(frame_path)
    declared = (image.get("height"), image.get("width"))
    if None not in declared and tuple(declared) != tuple(size):
      raise builders.BadInputError(frame_path, f"the frame is {size[0]}x{size[1]} (HxW) but "
                                               f"{json_file} says {declared[0]}x{declared[1]}")
    video_size = video_size or size
    if size != video_size:
      raise builders.BadInputError(frame_path, f"the frame is {size[0]}x{size[1]} (HxW) but the "
                                               f"video's first is {video_size[0]}x"
                                               f"{video_size[1]}; a video's frames share a size")
    png_path = os.path.join(panoptic_dir, name, annotation["file_name"])
    ids, png = builders.read_panoptic(png_path)  # [H, W]
    builders.check_size(png_path, ids.shape, size, "panoptic PNG")
    listed.append(_check_segments(annotation.get("segments_info", []), ids, by_dataset_id,
                                  where=f"video {name}, frame {image['id']}",
                                  json_file=json_file, png_path=png_path))
    frames.append(data)
    pngs.append(png)
    frame_names.append(str(image["id"]))
  segments, presence = _video_segments(listed, name, json_file, notes)
  return name, {
      "video": frames,
      "panoptic": pngs,
      "segments": segments,
      "presence": presence.reshape(-1),
      "frame_names": frame_names,
      "video_id": int(index),
      "name": name,
  }


def _check_segments(segments_info, ids: np.ndarray, by_dataset_id, *, where: str,
                    json_file: str, png_path: str) -> dict[int, tuple[int, bool, bool]]:
  """One frame's segments_info against its PNG ids -> {png id: (class, iscrowd, isthing)}."""
  out = {}
  for s in segments_info:
    segment_id = int(s["id"])
    if s["category_id"] not in by_dataset_id:
      raise builders.BadInputError(
          json_file, f"{where}: segment {segment_id} has the unknown category_id "
                     f"{s['category_id']} (not among its {len(by_dataset_id)} categories)")
    if segment_id == VOID:
      raise builders.BadInputError(json_file, f"{where}: a segment of id 0, which is void")
    if segment_id in out:
      raise builders.BadInputError(json_file, f"{where}: segment id {segment_id} is listed "
                                              "twice in segments_info")
    category = by_dataset_id[s["category_id"]]
    out[segment_id] = (category["id"], bool(s.get("iscrowd", 0)), bool(category["isthing"]))
  present = np.unique(ids)
  stray = np.setdiff1d(present, np.array([VOID, *out], np.int64))
  if stray.size:
    raise builders.BadInputError(png_path, f"segment ids {stray.tolist()[:10]} of the PNG are "
                                           f"not in the segments_info of {json_file} ({where})")
  missing = sorted(set(out) - set(present.tolist()))
  if missing:
    raise builders.BadInputError(png_path, f"segment ids {missing[:10]} of the segments_info of"
                                           f" {json_file} ({where}) are not in the PNG")
  return out


def _video_segments(listed: list[dict[int, tuple[int, bool, bool]]], name: str,
                    json_file: str, notes: list[str]) -> tuple[dict[str, np.ndarray],
                                                               np.ndarray]:
  """Per-frame segments -> the video's segments ({"id", "png_id", ...} [S]), presence [S, T].

  A segment is a (png id, class) pair; a png id seen with a second class gets a fresh id.
  """
  keys: dict[tuple[int, int], int] = {}  # (png id, class) -> segment index
  rows = []  # [png id, id, class, iscrowd, isthing]
  fresh = OFFSET
  for frame in listed:
    for png_id, (category, iscrowd, isthing) in frame.items():
      if (png_id, category) in keys:
        continue
      segment_id = png_id
      if any(key[0] == png_id for key in keys):
        segment_id, fresh = fresh, fresh + 1
        notes.append(f"{json_file}: video {name}: segment id {png_id} has a second category "
                     f"(class {category}); decoded as id {segment_id} there")
      keys[(png_id, category)] = len(rows)
      rows.append([png_id, segment_id, category, iscrowd, isthing])
  presence = np.zeros((len(rows), len(listed)), bool)  # [S, T]
  for t, frame in enumerate(listed):
    for png_id, (category, _, _) in frame.items():
      presence[keys[(png_id, category)], t] = True
  rows = np.array(rows, np.int64).reshape(-1, 5)
  return {"id": rows[:, 1].astype(np.int32), "png_id": rows[:, 0].astype(np.int32),
          "category_id": rows[:, 2].astype(np.int32), "iscrowd": rows[:, 3].astype(bool),
          "isthing": rows[:, 4].astype(bool)}, presence


# ------------------------------------------------------------------------------------------
# Clip records
# ------------------------------------------------------------------------------------------


def _decode(data, mode: str) -> np.ndarray:
  if isinstance(data, np.ndarray) and data.dtype != object:
    return data
  with PIL.Image.open(io.BytesIO(bytes(data))) as image:
    return np.asarray(image.convert(mode))


def decode_clip(example: Mapping[str, Any],
                frames: Sequence[int] | None = None) -> dict[str, Any]:
  """A VIPSeg example -> the clip record of `frames` (None: every frame), numpy:

    "video":         uint8 [T, H, W, 3] RGB frames
    "panoptic":      int32 [T, H, W] segment ids (the video's, tracks), 0 = void
    "semantic":      uint8 [T, H, W] contiguous class, 255 = void
    "segments_info": {"id", "category_id": int32 [S], "iscrowd", "isthing": bool [S]}, the
                     segments present in at least one of `frames`
    "video_id":      int
    "frame_indices": int32 [T] the frames of the source video the clip holds
    "length":        int, frames in the source video

  as `synthetic_video.generate_clip`'s records (`video_pipeline.clip_record` takes either).
  Only the selected frames and PNGs are decoded.
  """
  length = len(example["video"])
  frames = np.arange(length) if frames is None else np.asarray(frames, np.int64)
  if frames.size == 0 or frames.min() < 0 or frames.max() >= length:
    raise ValueError(f"VIPSeg video {example.get('video_id')}: frames {frames.tolist()} out of "
                     f"range for {length} frames")
  seg = example["segments"]
  ids = np.asarray(seg["id"], np.int32).reshape(-1)
  png_ids = np.asarray(seg["png_id"], np.int64).reshape(-1)
  category = np.asarray(seg["category_id"], np.int32).reshape(-1)
  presence = np.asarray(example["presence"], bool).reshape(len(ids), length)[:, frames]
  video = np.stack([_decode(example["video"][t], "RGB") for t in frames])  # [T, H, W, 3]
  panoptic = np.zeros(video.shape[:3], np.int32)  # [T, H, W]
  semantic = np.full(video.shape[:3], builders.IGNORE_LABEL, np.uint8)  # [T, H, W]
  for i, t in enumerate(frames):
    rgb = _decode(example["panoptic"][t], "RGB")
    if rgb.shape[:2] != video.shape[1:3]:
      raise ValueError(f"VIPSeg video {example.get('video_id')}, frame {t}: panoptic PNG "
                       f"{rgb.shape[:2]} but frame {video.shape[1:3]}")
    values, inverse = np.unique(rgb2id(rgb), return_inverse=True)
    here = np.flatnonzero(presence[:, i])  # the frame's segments: their png ids are unique
    at = np.searchsorted(values, png_ids[here])
    found = (at < len(values)) & (values[np.minimum(at, len(values) - 1)] == png_ids[here])
    id_lut = np.zeros(len(values), np.int32)
    class_lut = np.full(len(values), builders.IGNORE_LABEL, np.uint8)
    id_lut[at[found]] = ids[here[found]]
    class_lut[at[found]] = category[here[found]]
    inverse = inverse.reshape(rgb.shape[:2])
    panoptic[i] = id_lut[inverse]
    semantic[i] = class_lut[inverse]
  keep = presence.any(axis=1)
  return {
      "video": video,
      "panoptic": panoptic,
      "semantic": semantic,
      "segments_info": {
          "id": ids[keep], "category_id": category[keep],
          "iscrowd": np.asarray(seg["iscrowd"], bool).reshape(-1)[keep],
          "isthing": np.asarray(seg["isthing"], bool).reshape(-1)[keep]},
      "video_id": int(example.get("video_id", -1)),
      "frame_indices": frames.astype(np.int32),
      "length": int(length),
  }
