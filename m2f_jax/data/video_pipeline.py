"""grain input pipelines of video clips: training clips and whole evaluation videos.

The video counterpart of `pipeline.py`, following the official `YTVISDatasetMapper`
(`mask2former_video/data_video/dataset_mapper.py`) and its augmentations
(`data_video/augmentation.py`). Sources: `synthetic_video.SyntheticVideoSource`, or the
YouTube-VIS builders' `builder.as_data_source()[split]` (`builders/ytvis.py`). Their examples
become CLIP RECORDS (`clip_record`, numpy):

  "video":       uint8 [T, H, W, 3] RGB frames
  "instances":   {"masks": uint8 [N, T, H, W] (0 in frames where the instance is absent),
                  "category_id": int32 [N] contiguous class, "iscrowd": bool [N],
                  "track_id": int64 [N] the instance's id in its video}
  "video_id":    int
  "frame_indices": int32 [T] the frames of the source video the clip holds
  "length":      int, frames in the source video

Instances are the TUBES the task trains on. "video_instance": the thing tracks (the synthetic
clips' thing segments, whose ids are track ids; VIPSeg's thing segments; YouTube-VIS's
annotations). "video_panoptic" (`stuff=True`): the thing tracks and, per stuff class present
in the clip, ONE tube (its segments merged over all frames, track id = their smallest id),
as the image panoptic targets merge stuff per class; the instances then also carry "isthing"
bool [N]. Sources with per-frame panoptic maps (synthetic, VIPSeg through
`builders.vipseg.decode_clip`) keep them in the record ("panoptic" int32 [T, H, W], 0 = void,
and "segments_info"), the ground truth of video panoptic evaluation.

Training (`train_iterator`): per process shard, shuffle, repeat; per clip the official frame
sampling (`sample_frames`: a uniformly drawn reference frame and `num_frames - 1` others drawn
with replacement within +-`frame_range` of it, sorted), then ONE augmentation drawn per clip
and applied to every frame (`augment_clip`: "synthetic" = flip, scale jitter, crop / pad to
`image_size` as the image recipe; "ytvis" = the official `ResizeShortestEdge(min_size_train,
max_size_train, "choice_by_clip")` and `RandomFlip("flip_by_clip")`, then a random crop to
`image_size` where the resized clip is larger (the official code pads each batch to its
largest clip instead; fixed shapes compile once) and padding), then targets and batches:

  "images":       float32 [B, T, H, W, 3] normalized (pixel mean / std), 0 on padding
  "padding_mask": bool [B, H, W] True on image pixels (the same in every frame)
  "labels":       int32 [B, M] the track's class (0 on padding)
  "masks":        uint8 [B, M, T, H, W] (0 in frames where the instance is absent)
  "valid":        bool [B, M]
  "video_id":     int64 [B]

A target is a non-crowd track with a pixel in at least one sampled frame after augmentation
(a track cropped away in every frame is dropped, as `targets.make_targets` drops empty
instances); more than M keep the M largest. Its label is its category in every frame. The
official mapper's quirk: `prepare_targets` (video_maskformer_model.py) takes the classes from
the LAST sampled frame, where an instance absent from that frame is a dummy annotation of class
`num_classes` (no object): such an instance is trained as "no object" there, with its mask.
The train step applies it to this batch (`m2f_jax.training.train_step.official_video_labels`).

Evaluation (`eval_videos`): one whole video per batch, as the official inference; frames
resized with the official test-time `ResizeShortestEdge(min_size, max_size)` and padded to a
multiple of 32; the ground truth comes along in the YouTube-VIS JSON format (one compressed RLE
or None per frame, `ground_truth`; thing tracks only), and for "video_panoptic" also as
per-frame id maps and segments (`panoptic_ground_truth`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import functools
from typing import Any

import grain
import numpy as np

from m2f_jax.data import targets as targets_lib
from m2f_jax.data import transforms

AUGMENTATIONS = ("synthetic", "ytvis")
TASKS = ("video_instance", "video_panoptic")
# The official YouTube-VIS training resize (INPUT.MIN_SIZE_TRAIN; Detectron2's MAX_SIZE_TRAIN).
YTVIS_MIN_SIZES = (360, 480)
YTVIS_MAX_SIZE = 1333

# ------------------------------------------------------------------------------------------
# Clip records
# ------------------------------------------------------------------------------------------


def _decode_rles(rles: Sequence[str], height: int, width: int) -> np.ndarray:
  """Compressed RLE counts ("" = absent) -> uint8 [len, H, W]."""
  from pycocotools import mask as mask_util  # pylint: disable=g-import-not-at-top
  out = np.zeros((len(rles), height, width), np.uint8)
  for i, counts in enumerate(rles):
    if isinstance(counts, bytes):
      counts = counts.decode()
    if counts:
      out[i] = mask_util.decode({"size": [height, width], "counts": counts.encode()})
  return out


def _decode_image(frame) -> np.ndarray:
  if isinstance(frame, (bytes, np.bytes_)):
    import io  # pylint: disable=g-import-not-at-top
    import PIL.Image  # pylint: disable=g-import-not-at-top
    with PIL.Image.open(io.BytesIO(frame)) as image:
      return np.asarray(image.convert("RGB"))
  return np.asarray(frame)


def _panoptic_tubes(panoptic: np.ndarray, info: Mapping[str, Any], *, stuff: bool):
  """(masks uint8 [N, T, H, W], category, iscrowd, track ids, isthing) of a clip's segments:
  every thing segment; with `stuff`, one tube per (stuff class, iscrowd) present."""
  ids = np.asarray(info["id"], np.int64).reshape(-1)
  category = np.asarray(info["category_id"], np.int32).reshape(-1)
  iscrowd = np.asarray(info["iscrowd"], bool).reshape(-1)
  isthing = np.asarray(info["isthing"], bool).reshape(-1)
  groups = [[i] for i in np.flatnonzero(isthing)]
  if stuff:
    for key in sorted({(int(category[i]), bool(iscrowd[i])) for i in np.flatnonzero(~isthing)}):
      groups.append([i for i in np.flatnonzero(~isthing)
                     if (category[i], iscrowd[i]) == key])
  masks = np.zeros((len(groups),) + panoptic.shape, np.uint8)  # [N, T, H, W]
  for n, group in enumerate(groups):
    masks[n] = np.isin(panoptic, ids[group])
  first = np.array([g[0] for g in groups], np.int64)
  track = np.array([ids[g].min() for g in groups], np.int64)
  return masks, category[first], iscrowd[first], track, isthing[first]


def clip_record(example: Mapping[str, Any], frames: Sequence[int] | None = None, *,
                stuff: bool = False) -> dict[str, Any]:
  """A source's example -> the clip record of `frames` (None: every frame).

  Examples: synthetic clips ("video", "panoptic", "segments_info": thing segments become
  the instances), VIPSeg examples ("segments" and "presence", `builders/vipseg.py`: decoded by
  `vipseg.decode_clip`, then as synthetic clips) and YouTube-VIS examples ("video",
  "instances" and "segmentations": one compressed RLE per instance and frame, instance-major,
  "" where absent; see `builders/ytvis.py`). "video" is uint8 [T, H, W, 3] or a list of frames
  (arrays, or encoded images); masks (and encoded frames) are decoded only for the selected
  frames. `stuff`: also one tube per stuff class present (video panoptic; sources with
  panoptic maps only).
  """
  if "segments" in example and "presence" in example:  # VIPSeg: decode the selected frames
    from m2f_jax.data.builders import vipseg  # pylint: disable=g-import-not-at-top (tfds)
    decoded = vipseg.decode_clip(example, frames)
    record = clip_record(decoded, stuff=stuff)
    record.update(frame_indices=decoded["frame_indices"], length=decoded["length"])
    return record
  video = example["video"]
  length = len(video)
  frames = np.arange(length) if frames is None else np.asarray(frames, np.int64)
  if frames.size == 0 or frames.min() < 0 or frames.max() >= length:
    raise ValueError(f"clip {example.get('video_id')}: frames {frames.tolist()} out of "
                     f"range for {length} frames")
  if isinstance(video, np.ndarray):
    video = video[frames]
  else:  # a list of decoded frames, or of encoded images (decoded here, selected ones only)
    video = np.stack([_decode_image(video[t]) for t in frames])
  if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
    raise ValueError(f"clip {example.get('video_id')}: 'video' must be uint8 [T, H, W, 3], got "
                     f"{video.dtype} {video.shape}")
  height, width = video.shape[1:3]
  extra = {}
  if "panoptic" in example:  # synthetic: the thing segments are the tracks
    panoptic = np.asarray(example["panoptic"])[frames].astype(np.int32)  # [T, H, W]
    info = example["segments_info"]
    masks, category, iscrowd, ids, isthing = _panoptic_tubes(panoptic, info, stuff=stuff)
    extra = {"panoptic": panoptic, "segments_info": info}
  else:
    if stuff:
      raise ValueError(f"clip {example.get('video_id')}: video panoptic tubes need a source "
                       "with panoptic maps (synthetic_video, vipseg); this one has instances "
                       "only (YouTube-VIS): use data.task='video_instance'")
    inst = example["instances"]
    category = np.asarray(inst["category_id"], np.int32).reshape(-1)
    iscrowd = np.asarray(inst["iscrowd"], bool).reshape(-1)
    ids = np.asarray(inst["track_id"], np.int64).reshape(-1)
    rles = np.asarray(example["segmentations"], object).reshape(len(category), length)
    masks = np.stack([_decode_rles(rles[n, frames], height, width)
                      for n in range(len(category))]) if len(category) else \
        np.zeros((0, len(frames), height, width), np.uint8)  # [N, T, H, W]
    isthing = np.ones(len(category), bool)
  return {
      "video": video,
      "instances": {"masks": masks, "category_id": category, "iscrowd": iscrowd,
                    "track_id": ids, "isthing": isthing},
      "video_id": int(example.get("video_id", -1)),
      "frame_indices": frames.astype(np.int32),
      "length": int(length),
      **extra,
  }


def panoptic_ground_truth(clip: Mapping[str, Any]) -> dict[str, Any]:
  """A clip record's panoptic maps as the video panoptic evaluator reads them:
  {"ids": int32 [T, H, W] (0 = void), "segments": per frame [{"id", "category_id"
  (contiguous class), "iscrowd"}] of the segments present in that frame}."""
  if "panoptic" not in clip:
    raise ValueError(f"clip {clip.get('video_id')} has no panoptic maps: video panoptic "
                     "evaluation needs a source with them (synthetic_video, vipseg)")
  panoptic = clip["panoptic"]
  info = clip["segments_info"]
  ids = np.asarray(info["id"], np.int64).reshape(-1)
  category = np.asarray(info["category_id"], np.int64).reshape(-1)
  iscrowd = np.asarray(info["iscrowd"], bool).reshape(-1)
  segments = []
  for frame in panoptic:
    present = np.isin(ids, np.unique(frame))
    segments.append([{"id": int(i), "category_id": int(c), "iscrowd": int(cr)}
                     for i, c, cr in zip(ids[present], category[present], iscrowd[present])])
  return {"ids": np.asarray(panoptic, np.int32), "segments": segments}


def ground_truth(clip: Mapping[str, Any]) -> list[dict[str, Any]]:
  """A clip record's thing instances in the YouTube-VIS JSON format (crowd kept; the stuff
  tubes of a video panoptic record left out).

  [{"id" (track id), "category_id" (contiguous class), "iscrowd", "segmentations": one
  compressed RLE per frame or None where the instance is absent, "areas": pixels or None}].
  """
  from m2f_jax.evaluation import instance as instance_eval  # pylint: disable=g-import-not-at-top
  inst = clip["instances"]
  isthing = np.asarray(inst.get("isthing", np.ones(len(inst["category_id"]), bool)), bool)
  out = []
  for n in np.flatnonzero(isthing):
    masks = inst["masks"][n]  # [T, H, W]
    areas = masks.reshape(len(masks), -1).sum(-1)
    rles = instance_eval.mask_to_rle(masks)
    out.append({"id": int(inst["track_id"][n]), "category_id": int(inst["category_id"][n]),
                "iscrowd": int(inst["iscrowd"][n]),
                "segmentations": [r if a else None for r, a in zip(rles, areas)],
                "areas": [int(a) if a else None for a in areas]})
  return out


def sample_frames(length: int, rng: np.random.Generator, *, num_frames: int,
                  frame_range: int) -> np.ndarray:
  """The official training frame sampling: int [num_frames] sorted frame indices.

  A reference frame uniform in [0, length); the `num_frames - 1` others drawn uniformly with
  replacement from the frames within +-`frame_range` of it, the reference excluded; sorted.
  A one-frame video repeats its frame (the official code fails there).
  """
  ref = int(rng.integers(length))
  candidates = np.concatenate([np.arange(max(0, ref - frame_range), ref),
                               np.arange(ref + 1, min(length, ref + frame_range + 1))])
  if candidates.size == 0:
    candidates = np.array([ref])
  others = rng.choice(candidates, num_frames - 1) if num_frames > 1 else np.zeros(0, int)
  return np.sort(np.append(others, ref)).astype(np.int64)


# ------------------------------------------------------------------------------------------
# Augmentation: one draw per clip, applied to every frame
# ------------------------------------------------------------------------------------------


def _frame_records(clip):
  """Per-frame records (image, instance masks, padding mask) for `transforms`."""
  masks = clip["instances"]["masks"]  # [N, T, H, W]
  return [{"image": frame, "instances": {"masks": masks[:, t]},
           "padding_mask": np.ones(frame.shape[:2], bool)}
          for t, frame in enumerate(clip["video"])]


def _stack_frames(clip, frames):
  out = {k: v for k, v in clip.items() if k not in ("panoptic", "segments_info")}  # stale
  out["video"] = np.stack([f["image"] for f in frames])  # [T, H, W, 3]
  masks = np.stack([f["instances"]["masks"] for f in frames], axis=1)  # [N, T, H, W]
  out["instances"] = dict(clip["instances"], masks=masks)
  out["padding_mask"] = frames[0]["padding_mask"]  # [H, W], the same in every frame
  return out


def augment_clip(clip: Mapping[str, Any], rng: np.random.Generator, *,
                 image_size: tuple[int, int], augmentation: str = "synthetic",
                 flip: bool = True, scale_range: tuple[float, float] | None = None,
                 min_size_train: Sequence[int] | None = None,
                 max_size_train: int | None = None) -> dict[str, Any]:
  """One augmentation drawn for the clip, applied to all its frames -> size `image_size`.

  "synthetic": flip, scale jitter (`scale_range`, None: none) of the clip fitted into
  `image_size`, a random `image_size` window (padding 0 bottom / right), as the image recipe.
  "ytvis": flip, shortest edge resized to a choice of `min_size_train` (default 360, 480)
  with the longest capped at `max_size_train` (default 1333), a random `image_size` window
  where the result is larger, padding bottom / right. Adds "padding_mask" [H, W].
  """
  if augmentation not in AUGMENTATIONS:
    raise ValueError(f"unknown video augmentation {augmentation!r}: use one of {AUGMENTATIONS}")
  height, width = clip["video"].shape[1:3]
  out_h, out_w = (int(s) for s in image_size)
  flipped = bool(flip and rng.random() < 0.5)
  if augmentation == "synthetic":
    scale = rng.uniform(*scale_range) if scale_range is not None else 1.0
    factor = scale * min(out_h / height, out_w / width)
    new_h, new_w = max(1, round(height * factor)), max(1, round(width * factor))
  else:
    sizes = tuple(min_size_train or YTVIS_MIN_SIZES)
    short = int(sizes[int(rng.integers(len(sizes)))])
    new_h, new_w = transforms.resize_shortest_edge_size(height, width, short,
                                                        max_size_train or YTVIS_MAX_SIZE)
  top = int(rng.integers(0, max(new_h - out_h, 0) + 1))
  left = int(rng.integers(0, max(new_w - out_w, 0) + 1))
  frames = []
  for record in _frame_records(clip):
    if flipped:
      record = transforms.hflip(record)
    frames.append(transforms.resize_crop_pad(record, resized_size=(new_h, new_w), top=top,
                                             left=left, height=out_h, width=out_w))
  return _stack_frames(clip, frames)


# ------------------------------------------------------------------------------------------
# Training examples and pipeline
# ------------------------------------------------------------------------------------------


def clip_targets(clip: Mapping[str, Any], *, num_targets: int) -> dict[str, np.ndarray]:
  """Non-crowd tracks with a pixel in some frame, padded to M = `num_targets`.

  Returns {"labels": int32 [M], "masks": uint8 [M, T, H, W], "valid": bool [M]}; more than M
  keep the M largest (summed over frames).
  """
  inst = clip["instances"]
  masks = np.asarray(inst["masks"], np.uint8)  # [N, T, H, W]
  t_len, height, width = clip["video"].shape[:3]
  if masks.shape[1:] != (t_len, height, width):
    raise ValueError(f"clip {clip.get('video_id')}: instance masks {masks.shape[1:]} do not "
                     f"match the video {(t_len, height, width)}")
  areas = masks.reshape(len(masks), -1).sum(axis=1)
  keep = np.flatnonzero((areas > 0) & ~np.asarray(inst["iscrowd"], bool))
  if len(keep) > num_targets:
    keep = np.sort(keep[np.argsort(-areas[keep], kind="stable")[:num_targets]])
  n = len(keep)
  labels = np.zeros((num_targets,), np.int32)  # [M]
  out_masks = np.zeros((num_targets, t_len, height, width), np.uint8)  # [M, T, H, W]
  labels[:n] = np.asarray(inst["category_id"], np.int32)[keep]
  out_masks[:n] = masks[keep]
  return {"labels": labels, "masks": out_masks, "valid": np.arange(num_targets) < n}


def _train_clip(example, rng, *, task, num_frames, frame_range, image_size, augmentation,
                flip, scale_range, min_size_train, max_size_train):
  length = len(example["video"])
  frames = sample_frames(length, rng, num_frames=num_frames, frame_range=frame_range)
  clip = clip_record(example, frames, stuff=task == "video_panoptic")
  return augment_clip(clip, rng, image_size=image_size, augmentation=augmentation, flip=flip,
                      scale_range=scale_range, min_size_train=min_size_train,
                      max_size_train=max_size_train)


def train_example(clip: Mapping[str, Any], *, num_targets: int, pixel_mean: Sequence[float],
                  pixel_std: Sequence[float]) -> dict[str, np.ndarray]:
  """An augmented clip -> the arrays of one training example (see the module docstring)."""
  padding_mask = clip["padding_mask"]  # [H, W]
  images = targets_lib.normalize_image(clip["video"], pixel_mean=pixel_mean,
                                       pixel_std=pixel_std)  # [T, H, W, 3]
  images[:, ~padding_mask] = 0.0
  example = clip_targets(clip, num_targets=num_targets)
  example.update(images=images, padding_mask=padding_mask,
                 video_id=np.int64(clip["video_id"]))
  return example


def train_iterator(source: Sequence[Any], *, batch_size: int, seed: int, num_frames: int,
                   num_targets: int, image_size: tuple[int, int],
                   pixel_mean: Sequence[float], pixel_std: Sequence[float],
                   frame_range: int = 20, augmentation: str = "synthetic", flip: bool = True,
                   task: str = "video_instance",
                   scale_range: tuple[float, float] | None = None,
                   min_size_train: Sequence[int] | None = None,
                   max_size_train: int | None = None, num_epochs: int | None = None,
                   shard_options: grain.sharding.ShardOptions | None = None,
                   worker_count: int = 0, worker_buffer_size: int = 2,
                   read_threads: int = 0, prefetch: int = 0) -> grain.DatasetIterator:
  """A checkpointable iterator over this process's batches of training clips.

  Args:
    source: random-access source of videos (`SyntheticVideoSource`, a YouTube-VIS split).
    batch_size: clips per batch on this process.
    seed: shuffling, frame sampling and augmentation seed in [0, 2**32) (the same on every
      process; the shards differ).
    num_frames: T, frames per clip (official 2).
    num_targets: M, tracks per clip.
    image_size: (H, W) of every frame (multiples of 32).
    pixel_mean, pixel_std: RGB normalization on the 0..255 scale.
    frame_range: the other frames are drawn within +-frame_range of the reference (official
      20).
    augmentation: "synthetic" or "ytvis" (see `augment_clip`).
    task: "video_instance" (thing tracks) or "video_panoptic" (thing tracks and one tube per
      stuff class present in the clip; see the module docstring).
    flip, scale_range, min_size_train, max_size_train: see `augment_clip`.
    num_epochs: None repeats forever.
    shard_options: grain ShardOptions; default `ShardByJaxProcess(drop_remainder=True)`.
    worker_count, worker_buffer_size, read_threads, prefetch: as `pipeline.train_iterator`.

  Returns:
    A grain `DatasetIterator` (`get_state()` / `set_state()` resume it exactly) of the
    batches described in the module docstring.
  """
  from m2f_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  if not 0 <= seed < 2**32:
    raise ValueError(f"seed must be in [0, 2**32), got {seed}")
  if num_frames < 1:
    raise ValueError(f"num_frames must be >= 1, got {num_frames}")
  if augmentation not in AUGMENTATIONS:
    raise ValueError(f"unknown video augmentation {augmentation!r}: use one of {AUGMENTATIONS}")
  if task not in TASKS:
    raise ValueError(f"unknown video task {task!r} (data.task): use one of {TASKS}")
  shard = pipeline._shard_options(shard_options, drop_remainder=True)  # pylint: disable=protected-access
  ds = grain.MapDataset.source(source)
  if shard.drop_remainder:
    ds = ds[:len(ds) - len(ds) % shard.shard_count]
  ds = ds[shard.shard_index::shard.shard_count]
  if len(ds) < batch_size:
    raise ValueError(f"shard {shard.shard_index} of {shard.shard_count} holds {len(ds)} "
                     f"videos, fewer than one batch of {batch_size}")
  ds = ds.shuffle(seed=seed).repeat(num_epochs)
  augment_seed = int(np.random.SeedSequence([seed, shard.shard_index]).generate_state(1)[0])
  ds = ds.random_map(functools.partial(
      _train_clip, task=task, num_frames=int(num_frames), frame_range=int(frame_range),
      image_size=tuple(int(s) for s in image_size), augmentation=augmentation, flip=flip,
      scale_range=None if scale_range is None else tuple(scale_range),
      min_size_train=None if min_size_train is None else tuple(min_size_train),
      max_size_train=max_size_train), seed=augment_seed)
  ds = ds.map(functools.partial(train_example, num_targets=num_targets,
                                pixel_mean=tuple(pixel_mean), pixel_std=tuple(pixel_std)))
  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                            prefetch_buffer_size=prefetch))
  if worker_count > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=worker_buffer_size))
  return iter(ds)


def train_iterator_from_config(config) -> grain.DatasetIterator:
  """`train_iterator` over `data.dataset`'s train split with the config's fields (this
  process's share of `data.batch_size`)."""
  import jax  # pylint: disable=g-import-not-at-top
  from m2f_jax import data  # pylint: disable=g-import-not-at-top
  d = config.data
  if d.batch_size % jax.process_count():
    raise ValueError(f"data.batch_size={d.batch_size} (global) must divide among "
                     f"{jax.process_count()} processes")
  return train_iterator(
      data.data_source(d, "train"), batch_size=d.batch_size // jax.process_count(),
      seed=config.train.seed, num_frames=d.get("num_frames", 2),
      frame_range=d.get("frame_range", 20), num_targets=d.num_targets,
      image_size=tuple(d.image_size), pixel_mean=config.model.pixel_mean,
      pixel_std=config.model.pixel_std, augmentation=d.augmentation, task=d.task,
      scale_range=tuple(d.scale_range) if d.scale_range else None,
      min_size_train=d.min_size_train, max_size_train=d.max_size_train,
      worker_count=d.worker_count, read_threads=d.read_threads, prefetch=d.prefetch)


# ------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------


def _text(value) -> str:
  return value.decode() if isinstance(value, (bytes, np.bytes_)) else str(value)


def eval_example(example: Mapping[str, Any], *, pixel_mean: Sequence[float],
                 pixel_std: Sequence[float], min_size: int | None = None,
                 max_size: int | None = None, size_divisibility: int = 32,
                 task: str = "video_instance") -> dict[str, Any]:
  """A whole video -> one evaluation batch (B = 1):

    "images":      float32 [1, T, Hp, Wp, 3] resized (official test-time rule), normalized,
                   padded with 0 to multiples of `size_divisibility`
    "image_size":  int32 [2] (h, w) of the resized frames inside the padding
    "output_size": int32 [2] (H, W) of the original frames
    "video_id":    int
    "video_name":  str, the video's name (VIPSeg's video_id; else the id as text)
    "frame_names": [T] str, the frames' names (VIPSeg's image ids; else 00000, 00001, ...)
    "ground_truth": the video's thing instances in the YouTube-VIS JSON format (`ground_truth`)
    "panoptic_ground_truth": "video_panoptic" only: `panoptic_ground_truth`
  """
  if task not in TASKS:
    raise ValueError(f"unknown video task {task!r} (data.task): use one of {TASKS}")
  clip = clip_record(example)
  frames = [transforms.prepare_eval_image(f, pixel_mean=pixel_mean, pixel_std=pixel_std,
                                          min_size=min_size, max_size=max_size)
            for f in clip["video"]]  # [h, w, 3] each
  padded, _ = transforms.pad_images(frames, size_divisibility=size_divisibility)
  return {
      "images": padded[None],  # [1, T, Hp, Wp, 3]
      "image_size": np.array(frames[0].shape[:2], np.int32),
      "output_size": np.array(clip["video"].shape[1:3], np.int32),
      "video_id": clip["video_id"],
      "video_name": _text(example.get("name") or clip["video_id"]),
      "frame_names": [_text(n) for n in example["frame_names"]] if "frame_names" in example
                     else [f"{t:05d}" for t in range(len(clip["video"]))],
      "ground_truth": ground_truth(clip),
      **({"panoptic_ground_truth": panoptic_ground_truth(clip)}
         if task == "video_panoptic" else {}),
  }


def eval_videos(source: Sequence[Any], *, pixel_mean: Sequence[float],
                pixel_std: Sequence[float], min_size: int | None = None,
                max_size: int | None = None, size_divisibility: int = 32,
                max_videos: int | None = None, task: str = "video_instance",
                shard_options: grain.sharding.ShardOptions | None = None,
                read_threads: int = 0, prefetch: int = 0):
  """This process's evaluation videos, one per batch (`eval_example`), in source order.

  Every video of the source is in exactly one process's share (default sharding
  `ShardByJaxProcess`); `max_videos` keeps the first N of the source.
  """
  from m2f_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  shard = pipeline._shard_options(shard_options, drop_remainder=False)  # pylint: disable=protected-access
  total = len(source) if max_videos is None else min(len(source), int(max_videos))
  indices = list(range(shard.shard_index, total, shard.shard_count))
  ds = grain.MapDataset.source(indices).map(lambda i: eval_example(
      source[i], pixel_mean=tuple(pixel_mean), pixel_std=tuple(pixel_std), min_size=min_size,
      max_size=max_size, size_divisibility=size_divisibility, task=task))
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                              prefetch_buffer_size=prefetch))
