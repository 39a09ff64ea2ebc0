"""YouTube-VIS 2019 and 2021 (video instance segmentation), built from the user's local copy.

Follows the official loader (`mask2former_video/data_video/datasets/ytvis.py`,
`load_ytvis_json`): one example per video of the release's JSON (`videos` with `file_names`,
`height`, `width`, `length`; `annotations` with `video_id`, `category_id`, `iscrowd` and one
entry per frame in `segmentations`: polygons, compressed or uncompressed RLE, or None where the
instance is absent; `categories`), frames read from `train/JPEGImages/<file_name>`.

- Category ids become contiguous class indices in the order of the JSON's categories sorted by
  id (40 classes in both releases); `info.metadata["categories"]` keeps each one's id as
  "dataset_id".
- Every frame's mask is stored as a compressed RLE ("" where absent), decoded only for the
  frames a clip uses (`video_pipeline.clip_record`). Polygons with fewer than 3 points are
  left out (as the official loader); a frame with no valid polygon counts as absent and is
  noted in `info.metadata["dropped_annotations"]`. Crowd annotations are kept (`iscrowd`).
- Frames: JPEG files kept byte for byte (other formats stored as PNG), stored as encoded
  bytes and decoded only when a clip uses them (a training clip reads 2 frames of ~36).

The validation ground truth of YouTube-VIS is not public, so the evaluation split is a
held-out part of train: `YtvisConfig(heldout_videos=N)` ("<release>_heldoutN") puts N train
videos, drawn with a fixed seed, into the "validation" split and the rest into "train"
(`data.heldout_videos`); with 0 there is only "train".

Bad input (a missing or corrupt frame, a frame whose size is not the video's, a mask of the
wrong size, an unknown category, a segmentation list of the wrong length) raises
`builders.BadInputError` naming the file and the reason, or with `on_error="skip"` leaves the
video out and counts it in `info.metadata["skipped"]`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from etils import epath
import numpy as np
from pycocotools import mask as mask_util
import tensorflow_datasets as tfds

from m2f_jax.data import builders

RELEASES = ("2019", "2021")
HELDOUT_SEED = 0

_LAYOUT = """\
Put (or link) the YouTube-VIS {release} release in the manual dir (data.source_dir), which then
holds (as Mask2Former's datasets/ytvis_{release}/)
  train/JPEGImages/<video>/<frame>.jpg      (train.zip)
  train.json                               (or train/instances.json, as the 2021 zip has it)
Nothing is downloaded. The validation and test ground truth are not public: set
data.heldout_videos to evaluate on a held-out part of train."""


@dataclasses.dataclass(eq=False)
class YtvisConfig(builders.BuildConfig):
  """`release`: "2019" or "2021"; `heldout_videos`: train videos moved to "validation"."""
  release: str = "2019"
  heldout_videos: int = 0

  def __post_init__(self):
    super().__post_init__()
    if self.release not in RELEASES:
      raise ValueError(f"YouTube-VIS release must be one of {RELEASES}, got {self.release!r}")
    if self.heldout_videos < 0:
      raise ValueError(f"heldout_videos must be >= 0, got {self.heldout_videos}")


def make_config(release: str, heldout_videos: int = 0, **kwargs) -> YtvisConfig:
  name = release if not heldout_videos else f"{release}_heldout{heldout_videos}"
  return YtvisConfig(name=name, release=release, heldout_videos=int(heldout_videos), **kwargs)


def json_path(root: os.PathLike | str) -> str:
  """The train JSON of a release folder (train.json, or train/instances.json)."""
  root = epath.Path(root)
  for candidate in (root / "train.json", root / "train" / "instances.json"):
    if candidate.is_file():
      return os.fspath(candidate)
  raise FileNotFoundError(f"YouTube-VIS train annotations not found: neither {root / 'train.json'}"
                          f" nor {root / 'train' / 'instances.json'} exists")


def categories_from_json(dataset: dict[str, Any], path: str) -> list[dict[str, Any]]:
  """[{"id" (contiguous, by sorted dataset id), "name", "isthing": 1, "dataset_id"}]."""
  found = dataset.get("categories")
  if not found:
    raise ValueError(f"{path} has no 'categories' list")
  for c in found:
    if not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c:
      raise ValueError(f"{path}: category {c!r} needs an integer 'id' and a 'name'")
  return [{"id": i, "name": str(c["name"]), "isthing": 1, "dataset_id": int(c["id"])}
          for i, c in enumerate(sorted(found, key=lambda c: c["id"]))]


def _load_json(path: str) -> dict[str, Any]:
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e})") from None


def heldout_split(video_ids: list[int], heldout: int) -> tuple[list[int], list[int]]:
  """(train ids, validation ids): `heldout` ids drawn with a fixed seed from the sorted ids."""
  ids = sorted(video_ids)
  if heldout > len(ids):
    raise ValueError(f"heldout_videos={heldout} exceeds the {len(ids)} train videos")
  chosen = set(np.random.default_rng(HELDOUT_SEED).choice(ids, heldout, replace=False).tolist()) \
      if heldout else set()
  return [v for v in ids if v not in chosen], [v for v in ids if v in chosen]


def frame_rle(segmentation, height: int, width: int, *, where: str, json_file: str,
              notes: list[str]) -> str:
  """One frame's segmentation -> compressed RLE counts ("" where absent)."""
  if not segmentation:
    return ""
  if isinstance(segmentation, dict):
    size = [int(s) for s in segmentation.get("size", ())]
    if size != [height, width]:
      raise builders.BadInputError(json_file, f"{where}: its mask is {size} (HxW) but the "
                                              f"video is {[height, width]}")
    if isinstance(segmentation.get("counts"), list):  # uncompressed RLE
      rle = mask_util.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation.get("counts"), str):
      rle = {"size": size, "counts": segmentation["counts"].encode()}
    else:
      raise builders.BadInputError(json_file, f"{where}: an RLE without 'counts'")
  elif isinstance(segmentation, list):  # polygons
    polygons = [p for p in segmentation if len(p) % 2 == 0 and len(p) >= 6]
    if not polygons:
      notes.append(f"{json_file}: {where}: no polygon with 3 or more points")
      return ""
    rle = mask_util.merge(mask_util.frPyObjects(polygons, height, width))
  else:
    raise builders.BadInputError(json_file, f"{where}: a segmentation must be polygons, an "
                                            f"RLE or null, got {type(segmentation).__name__}")
  try:
    mask_util.area(rle)  # a malformed RLE string fails here
  except Exception as e:  # pylint: disable=broad-except
    raise builders.BadInputError(json_file, f"{where}: unreadable RLE ({e})") from None
  counts = rle["counts"]
  return counts.decode() if isinstance(counts, bytes) else counts


class Ytvis(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """YouTube-VIS: frames and per-frame instance masks (RLE) of every video."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _LAYOUT.format(release="2019 or 2021")
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        homepage="https://youtube-vos.org/dataset/vis/",
        features=tfds.features.FeaturesDict({
            # The encoded frames (the release's JPEG bytes; PNG for other formats), decoded
            # only for the frames a clip uses (`video_pipeline.clip_record`): a training clip
            # reads 2 of a video's frames.
            "video": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
            "instances": tfds.features.Sequence({
                "category_id": np.int32, "iscrowd": np.bool_, "track_id": np.int64}),
            # Instance-major, one per instance and frame: compressed RLE, "" where absent.
            "segmentations": tfds.features.Sequence(tfds.features.Text()),
            "video_id": np.int64,
            "name": tfds.features.Text(),
        }),
        metadata=builders.metadata(categories=[]),
    )

  def _split_generators(self, dl_manager):
    config = self.builder_config
    root = dl_manager.manual_dir
    json_file = json_path(root)
    image_dir = builders.require(root / "train" / "JPEGImages", "YouTube-VIS train frames")
    dataset = _load_json(json_file)
    categories = categories_from_json(dataset, json_file)
    self.info.metadata["categories"] = categories
    videos = {v["id"]: v for v in dataset.get("videos", [])}
    train_ids, heldout_ids = heldout_split(list(videos), config.heldout_videos)
    per_video = {}
    for a in dataset.get("annotations", []):
      per_video.setdefault(a.get("video_id"), []).append(a)
    splits = {"train": train_ids}
    if heldout_ids:
      splits["validation"] = heldout_ids
    return {split: self._generate_examples(split, [videos[i] for i in ids], per_video,
                                           categories, json_file, image_dir)
            for split, ids in splits.items()}

  def _generate_examples(self, split, videos, per_video, categories, json_file, image_dir):
    by_dataset_id = {c["dataset_id"]: c["id"] for c in categories}

    def process(video, notes):
      try:
        return _process_video(video, per_video.get(video.get("id"), []), by_dataset_id,
                              json_file, image_dir, notes)
      except (KeyError, TypeError) as e:
        raise builders.BadInputError(
            json_file, f"video {video.get('id')}: malformed entry ({type(e).__name__}: {e})"
        ) from e

    return builders.generate_examples(self, split, videos, process)


def _process_video(video, annotations, by_dataset_id, json_file, image_dir, notes):
  """One video's frames and instance RLEs (raises `BadInputError`)."""
  video_id, height, width = int(video["id"]), int(video["height"]), int(video["width"])
  file_names = video["file_names"]
  length = int(video.get("length", len(file_names)))
  if len(file_names) != length:
    raise builders.BadInputError(json_file, f"video {video_id}: {len(file_names)} file_names "
                                            f"but length {length}")
  frames = []
  for name in file_names:
    path = os.path.join(image_dir, name)
    data, size = builders.read_image(path)
    builders.check_size(path, size, (height, width), "frame")
    frames.append(data)
  category, crowd, track, rles = [], [], [], []
  for a in annotations:
    where = f"video {video_id}: annotation {a.get('id')}"
    if a.get("category_id") not in by_dataset_id:
      raise builders.BadInputError(json_file, f"{where} has the unknown category_id "
                                              f"{a.get('category_id')} (not among its "
                                              f"{len(by_dataset_id)} categories)")
    segmentations = a.get("segmentations") or [None] * length
    if len(segmentations) != length:
      raise builders.BadInputError(json_file, f"{where}: {len(segmentations)} segmentations "
                                              f"for {length} frames")
    rles += [frame_rle(s, height, width, where=f"{where}, frame {t}", json_file=json_file,
                       notes=notes) for t, s in enumerate(segmentations)]
    category.append(by_dataset_id[a["category_id"]])
    crowd.append(bool(a.get("iscrowd", 0)))
    track.append(int(a.get("id", len(track) + 1)))
  name = os.path.dirname(file_names[0]) if file_names else str(video_id)
  return str(video_id), {
      "video": frames,
      "instances": {"category_id": np.array(category, np.int32),
                    "iscrowd": np.array(crowd, bool), "track_id": np.array(track, np.int64)},
      "segmentations": rles,
      "video_id": video_id,
      "name": name,
  }
