r"""Video instance and video panoptic segmentation of folders of frames; overlays, animated
GIFs and results.

  python -m m2f_jax.predict --checkpoint DIR --task video_instance frames/vid_a frames/vid_b \
      --output out/
  python -m m2f_jax.predict --checkpoint DIR --task video_panoptic frames/vid_a --output out/

Each FRAMES_DIR is one video: its images (.jpg, .jpeg, .png, .bmp, .tif, .tiff, .webp; not
searched recursively), in the order of their file names, all of one size. The whole video goes
through the network at once (the model's `frame_chunk` bounds the backbone's memory), then the
official post-processing (`m2f_jax.inference_video`: top 10 tubes by class score, masks at
logit > 0 at the original size). Per video NAME (the folder's name), in --output:

  NAME/<frame>.overlay.png   each frame with the tubes scoring >= --score_threshold (0.5),
                             one colour per tube in every frame, labelled "class score"
  NAME.gif                   those overlays as an animated GIF
and once:
  results.json               the YouTube-VIS submission format: [{"video_id", "category_id"
                             (the dataset's id), "score", "segmentations": one compressed RLE
                             per frame}]
  videos.json                [{"id" (the results' video_id), "name", "file_names", "height",
                             "width", "length"}] (YouTube-VIS "videos")

--task video_panoptic (a model trained on panoptic tubes) runs the official panoptic inference
over the whole video's volume (`inference_video.video_panoptic_inference`: stable segment ids,
stuff merged per class over the video) and writes, per video NAME:

  NAME/<frame>.overlay.png   each frame with its segments, a segment in one colour in every
                             frame, labelled with its class
  NAME.gif                   those overlays as an animated GIF
  pan_pred/NAME/<frame>.png  VIPSeg's submission layout: RGB-encoded segment ids
and once: pred.json (VIPSeg's {"annotations": [{"video_id": NAME, "annotations": [{"file_name",
"segments_info": [{"id", "category_id" (the dataset's id), "isthing"}]}]}]}) and videos.json.

Videos longer than the config's `eval.clip_frames` (when set) run as overlapping clips whose
tubes are linked (`inference_video.video_outputs`).

A folder that holds no image, or an image that cannot be read or has another size, is reported
and skipped; the other videos are still processed (the exit status is 1 if any failed).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np
import PIL.Image

from m2f_jax import inference_video
from m2f_jax import visualize
from m2f_jax.data import transforms

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def read_frames(frame_dir: str) -> tuple[list[str], np.ndarray]:
  """(file names, uint8 [T, H, W, 3]) of a folder's images, sorted by name.

  Raises ValueError naming the folder or file when there is no image, one cannot be decoded,
  or the sizes differ.
  """
  if not os.path.isdir(frame_dir):
    raise ValueError(f"{frame_dir}: not a folder of frames")
  names = sorted(n for n in os.listdir(frame_dir)
                 if n.lower().endswith(IMAGE_EXTENSIONS) and
                 os.path.isfile(os.path.join(frame_dir, n)))
  if not names:
    raise ValueError(f"{frame_dir}: no image ({', '.join(IMAGE_EXTENSIONS)}) in the folder")
  frames = []
  for name in names:
    path = os.path.join(frame_dir, name)
    try:
      with PIL.Image.open(path) as image:
        frames.append(np.asarray(image.convert("RGB")))
    except (OSError, PIL.UnidentifiedImageError, SyntaxError) as e:
      raise ValueError(f"{path}: not a readable image ({e})") from e
    if frames[-1].shape != frames[0].shape:
      raise ValueError(f"{path}: {frames[-1].shape[:2]} (HxW), but {names[0]} is "
                       f"{frames[0].shape[:2]}: the frames of a video share one size")
  return names, np.stack(frames)


def prepare_video(frames: np.ndarray, *, pixel_mean, pixel_std, min_size=None,
                  max_size=None) -> tuple[np.ndarray, tuple[int, int]]:
  """uint8 [T, H, W, 3] -> float32 [1, T, Hp, Wp, 3] (official test-time resize, normalized,
  padded to multiples of 32) and the (h, w) of the resized frames."""
  resized = [transforms.prepare_eval_image(f, pixel_mean=pixel_mean, pixel_std=pixel_std,
                                           min_size=min_size, max_size=max_size)
             for f in frames]
  padded, _ = transforms.pad_images(resized)
  return padded[None], resized[0].shape[:2]


def frame_overlays(frames: np.ndarray, result: dict[str, Any], class_names: list[str], *,
                   score_threshold: float = 0.5) -> list[PIL.Image.Image]:
  """One overlay per frame; a tube keeps its colour in every frame (best score on top)."""
  from pycocotools import mask as mask_util  # pylint: disable=g-import-not-at-top
  keep = [i for i, s in enumerate(result["scores"]) if s >= score_threshold]
  keep.sort(key=lambda i: result["scores"][i])  # lowest first: the best is painted last
  labels = {n + 1: f"{class_names[int(result['labels'][i])]} {result['scores'][i]:.2f}"
            for n, i in enumerate(keep)}
  out = []
  for t, frame in enumerate(frames):
    ids = np.zeros(frame.shape[:2], np.int64)
    for n, i in enumerate(keep):
      rle = result["segmentations"][i][t]
      ids[mask_util.decode({"size": rle["size"], "counts": rle["counts"].encode()}) > 0] = n + 1
    out.append(visualize.overlay(frame, ids, labels))
  return out


def panoptic_overlays(frames: np.ndarray, panoptic: dict[str, Any], class_names: list[str]
                      ) -> list[PIL.Image.Image]:
  """One overlay per frame of `inference_video.video_panoptic_inference`'s result; a segment
  keeps its id, so its colour, in every frame."""
  labels = {s["id"]: class_names[s["category_id"]] for s in panoptic["segments_info"]}
  return [visualize.overlay(frame, ids, labels) for frame, ids in zip(frames, panoptic["panoptic"])]


def write_vipseg_video(pan_pred: str, video_name: str, frame_names: list[str],
                       panoptic: dict[str, Any], *, category_ids=None) -> dict[str, Any]:
  """Writes one video's panoptic result in VIPSeg's submission layout: `pan_pred/<video>/
  <frame>.png` (RGB-encoded ids, id = R + 256 G + 256^2 B); returns its pred.json entry
  {"video_id", "annotations": [{"file_name", "segments_info": [{"id", "category_id",
  "isthing"}]}] (one per frame; category ids mapped through `category_ids`)}."""
  from m2f_jax.data import panoptic_png  # pylint: disable=g-import-not-at-top
  if len(frame_names) != len(panoptic["panoptic"]):
    raise ValueError(f"video {video_name}: {len(frame_names)} frame names for "
                     f"{len(panoptic['panoptic'])} frames")
  folder = os.path.join(pan_pred, video_name)
  os.makedirs(folder, exist_ok=True)
  annotations = []
  segments = inference_video.frame_segments(panoptic, category_ids)
  for name, ids, frame_segments in zip(frame_names, panoptic["panoptic"], segments):
    file_name = os.path.splitext(name)[0] + ".png"
    panoptic_png.write_panoptic_png(os.path.join(folder, file_name), ids)
    annotations.append({"file_name": file_name, "segments_info": frame_segments})
  return {"video_id": video_name, "annotations": annotations}


def save_gif(images: list[PIL.Image.Image], path: str, *, frame_ms: int = 200) -> None:
  images[0].save(path, save_all=True, append_images=images[1:], duration=frame_ms, loop=0)


def predict_videos(*, config, model, variables, frame_dirs: list[str], output: str,
                   score_threshold: float = 0.5, frame_chunk: int = 4,
                   task: str = "video_instance") -> int:
  """Runs the video model on each folder of frames and writes the files of the module
  docstring for `task` ("video_instance" or "video_panoptic"); returns the number of videos
  that failed."""
  import jax  # pylint: disable=g-import-not-at-top
  from m2f_jax import data  # pylint: disable=g-import-not-at-top
  categories = data.categories(config.data, config.model.num_classes)
  class_names = [c["name"] for c in categories]
  dataset_ids = [int(c.get("dataset_id", c["id"])) for c in categories]
  e = config.eval
  forward = jax.jit(model.apply)
  os.makedirs(output, exist_ok=True)
  isthing = [bool(c.get("isthing", 1)) for c in categories]
  results, videos, pan_annotations, failed = [], [], [], 0
  used = set()
  for frame_dir in frame_dirs:
    try:
      names, frames = read_frames(frame_dir)
    except ValueError as err:
      print(f"error: {err}", file=sys.stderr)
      failed += 1
      continue
    name = os.path.basename(os.path.normpath(frame_dir)) or "video"
    while name in used:  # two folders of one name: keep both
      name += "_"
    used.add(name)
    x, size = prepare_video(frames, pixel_mean=config.model.pixel_mean,
                            pixel_std=config.model.pixel_std, min_size=e.get("min_size"),
                            max_size=e.get("max_size"))
    logits, masks = inference_video.video_outputs(
        forward, variables, x, clip_frames=int(e.get("clip_frames") or 0),
        clip_overlap=int(e.get("clip_overlap") or 0))
    sizes = dict(padded_size=x.shape[2:4], image_size=size, output_size=frames.shape[1:3])
    video_id = len(videos)
    videos.append({"id": video_id, "name": name, "file_names": names,
                   "height": int(frames.shape[1]), "width": int(frames.shape[2]),
                   "length": int(frames.shape[0])})
    if task == "video_panoptic":
      panoptic = inference_video.video_panoptic_inference(
          pred_logits=logits, pred_masks=masks, isthing=isthing, frame_chunk=frame_chunk,
          object_mask_threshold=e.get("object_mask_threshold", 0.8),
          overlap_threshold=e.get("overlap_threshold", 0.8), **sizes)
      pan_annotations.append(write_vipseg_video(os.path.join(output, "pan_pred"), name, names,
                                                panoptic, category_ids=dataset_ids))
      overlays = panoptic_overlays(frames, panoptic, class_names)
    else:
      result = inference_video.inference_video(pred_logits=logits, pred_masks=masks,
                                               frame_chunk=frame_chunk, **sizes)
      results += inference_video.to_results(video_id, result, category_ids=dataset_ids)
      overlays = frame_overlays(frames, result, class_names, score_threshold=score_threshold)
    os.makedirs(os.path.join(output, name), exist_ok=True)
    for frame_name, image in zip(names, overlays):
      path = os.path.join(output, name, os.path.splitext(frame_name)[0] + ".overlay.png")
      image.save(path)
    save_gif(overlays, os.path.join(output, name + ".gif"))
    print(os.path.join(output, name + ".gif"))
  files = ((("pred.json", {"annotations": pan_annotations}),) if task == "video_panoptic"
           else (("results.json", results),)) + (("videos.json", videos),)
  for file_name, content in files:
    with open(os.path.join(output, file_name), "w") as f:
      json.dump(content, f)
    print(os.path.join(output, file_name))
  return failed


def main(args) -> int:
  """`python -m m2f_jax.predict --task video_instance|video_panoptic` (its parsed arguments:
  checkpoint, task, output, images = the folders of frames)."""
  from m2f_jax import checkpoint  # pylint: disable=g-import-not-at-top
  config, model, variables = checkpoint.load_checked(args.checkpoint)  # or CheckpointError
  failed = predict_videos(config=config, model=model, variables=variables,
                          frame_dirs=list(args.images), output=args.output,
                          task=getattr(args, "task", "video_instance"))
  return 1 if failed else 0
