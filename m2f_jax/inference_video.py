"""Post-processing of the video model: one video's outputs -> YouTube-VIS results, and video
panoptic segmentation.

Video panoptic (`video_panoptic_inference`, not in the official code, which has no video
panoptic task): the official image `panoptic_inference` over the T x H x W volume, so segment
ids are stable over the video with no association step; videos longer than the model takes
at once: overlapping clips (`clip_starts`) whose tubes are linked by Hungarian matching on
mask IoU over the overlapping frames (`link_clips`), then the same inference.

Video instance segmentation:

Follows the official `VideoMaskFormer.inference_video` (`mask2former_video/
video_maskformer_model.py`):

1. class probabilities = softmax over the K + 1 classes, no-object dropped, `[Q, K]`;
2. the top 10 of the Q x K (query, class) pairs: score = the class probability (no mask
   score, unlike image instance inference), label = the class, mask = the query's tube;
3. each kept tube `[T, h, w]` is upsampled to the padded input size (bilinear,
   align_corners=False), cropped to the valid (resized) region, resized to the original frame
   size, and thresholded at logit > 0 (here the three linear steps as one matrix per axis);
4. results in the YouTube-VIS submission format: {"video_id", "category_id", "score",
   "segmentations": one compressed RLE per frame} (`to_results`).

Where it differs: the official code upsamples all Q tubes before choosing the top 10; here
the top 10 are chosen first (the same result: resizing is per tube), and steps 3-4 run over
chunks of `frame_chunk` frames, each chunk encoded to RLE before the next, so memory stays
bounded by one chunk whatever the video's length. Results are sorted by score (the official
`topk(sorted=False)` leaves the order unspecified).

Peak memory for a 36-frame 720p video (1280x720 frames at the official test size 360: input
640x360 padded to 640x384, mask logits [Q = 100, 36, 96, 160] float32 = 221 MB, K = 40, top 10),
measured on this CPU (process RSS sampled during the call, after compiling; the model's outputs
already in memory): `frame_chunk=4` (default) +268 MB, `frame_chunk=1` +112 MB, in 7-8 s;
the whole video at once as dense masks (`frame_chunk=36, encode=False`) +1.6 GB. Computed:
10 tubes x 4 frames at the padded size are 39 MB, at 720x1280 147 MB (float32) + 37 MB (bool);
the official order (all 100 tubes upsampled to the padded size before the top 10) would hold
100 x 36 x 384 x 640 x 4 B = 3.5 GB.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from m2f_jax.evaluation import instance as instance_eval
from m2f_jax.inference import crop_resize_matrix

Size = tuple[int, int]
TOPK = 10  # the official number of results per video


@functools.partial(jax.jit, static_argnames=("topk",))
def select_topk(pred_logits: jnp.ndarray, pred_masks: jnp.ndarray, *, topk: int = TOPK,
                classes: jnp.ndarray | None = None):
  """The official top-k of one video, before any upsampling.

  Args:
    pred_logits: `[Q, K + 1]` class logits (last = no object).
    pred_masks: `[Q, T, h, w]` mask logits.
    topk: results kept (at most Q x K).
    classes: optional bool `[K]`: only these classes compete (the others score -1).

  Returns:
    scores float32 `[k]` (class probabilities, descending), labels int32 `[k]`, tube logits
    float32 `[k, T, h, w]`.
  """
  num_queries, num_classes = pred_logits.shape[0], pred_logits.shape[1] - 1
  probs = jax.nn.softmax(pred_logits.astype(jnp.float32), axis=-1)[:, :-1]  # [Q, K]
  if classes is not None:
    probs = jnp.where(classes[None, :], probs, -1.0)
  scores, index = jax.lax.top_k(probs.reshape(-1), min(topk, num_queries * num_classes))
  query = index // num_classes
  labels = (index % num_classes).astype(jnp.int32)
  return scores, labels, pred_masks[query].astype(jnp.float32)  # [k, T, h, w]


def logits_at_output(tubes: jnp.ndarray, *, padded_size: Size, image_size: Size,
                     output_size: Size) -> jnp.ndarray:
  """`[k, t, h, w]` logits -> float32 `[k, t, H, W]` logits at the original size (traceable).

  Upsampled to `padded_size` (the network input), cropped to `image_size` (the resized
  frames inside the padding), resized to `output_size`; bilinear, align_corners=False. The
  three steps are linear along each axis: they run as one matrix per axis
  (`inference.crop_resize_matrix` composed), `[H, h]` and `[W, w]`, i.e. two matmuls per
  frame (9x faster on CPU than resizing twice; equal up to float rounding).
  """
  h, w = tubes.shape[-2:]
  matrices = []
  for axis, low in ((0, h), (1, w)):
    upsample = crop_resize_matrix(low, padded_size[axis], in_len=low,
                                  out_len=padded_size[axis])  # [Hp, h]
    crop_resize = crop_resize_matrix(image_size[axis], output_size[axis],
                                     in_len=padded_size[axis], out_len=output_size[axis])
    matrices.append(jnp.matmul(crop_resize, upsample, precision="highest"))  # [H, h]
  return jnp.einsum("yh,kthw,xw->ktyx", matrices[0], tubes.astype(jnp.float32), matrices[1],
                    precision="highest")  # [k, t, H, W]


@functools.partial(jax.jit, static_argnames=("padded_size", "image_size", "output_size"))
def masks_at_output(tubes: jnp.ndarray, *, padded_size: Size, image_size: Size,
                    output_size: Size) -> jnp.ndarray:
  """`[k, t, h, w]` logits -> bool `[k, t, H, W]` at the original size (logit > 0; resized
  as `logits_at_output`)."""
  return logits_at_output(tubes, padded_size=padded_size, image_size=image_size,
                          output_size=output_size) > 0  # [k, t, H, W]


def inference_video(*, pred_logits, pred_masks, padded_size: Size, image_size: Size,
                    output_size: Size, topk: int = TOPK, frame_chunk: int = 4,
                    encode: bool = True, classes: Sequence[bool] | None = None
                    ) -> dict[str, Any]:
  """One video's results, as the official `inference_video` (see the module docstring).

  Args:
    pred_logits: `[Q, K + 1]` (one video of the model's `pred_logits [B, Q, K + 1]`).
    pred_masks: `[Q, T, h, w]` (one video of `pred_masks [B, Q, T, H/4, W/4]`).
    padded_size: (Hp, Wp) of the network input.
    image_size: (h, w) of the resized frames inside the padding.
    output_size: (H, W) of the original frames.
    topk: results per video (official 10).
    frame_chunk: frames upsampled at a time (bounds the memory; the result does not depend
      on it).
    encode: True: masks as compressed RLEs, `segmentations` [k][T] (chunk by chunk, never
      all at full size); False: `masks` bool `[k, T, H, W]`.
    classes: optional bool `[K]`: the top k among these classes only (a video panoptic
      model's things: its video instance results; probabilities not renormalized).

  Returns:
    {"scores": float32 [k] descending, "labels": int32 [k] contiguous classes, and
    "segmentations" or "masks"} as numpy / lists.
  """
  if pred_logits.ndim != 2 or pred_masks.ndim != 4 or pred_masks.shape[0] != pred_logits.shape[0]:
    raise ValueError(f"inference_video: pred_logits {pred_logits.shape} must be [Q, K + 1] and "
                     f"pred_masks {pred_masks.shape} [Q, T, h, w] of one video")
  scores, labels, tubes = select_topk(
      pred_logits, pred_masks, topk=topk,
      classes=None if classes is None else jnp.asarray(np.asarray(classes, bool)))
  if classes is not None:  # fewer than topk (query, class) pairs of those classes
    found = int(np.sum(np.asarray(scores) >= 0))
    scores, labels, tubes = scores[:found], labels[:found], tubes[:found]
  num_frames = tubes.shape[1]
  chunk = max(1, min(int(frame_chunk), num_frames))
  sizes = dict(padded_size=tuple(int(s) for s in padded_size),
               image_size=tuple(int(s) for s in image_size),
               output_size=tuple(int(s) for s in output_size))
  segmentations = [[] for _ in range(tubes.shape[0])]
  masks = []
  for start in range(0, num_frames, chunk):
    part = tubes[:, start:start + chunk]
    valid = part.shape[1]
    if valid < chunk:  # the last chunk padded: one compiled shape per video size
      part = jnp.pad(part, ((0, 0), (0, chunk - valid), (0, 0), (0, 0)))
    binary = np.asarray(masks_at_output(part, **sizes))[:, :valid]  # [k, t, H, W]
    if encode:
      for i in range(binary.shape[0]):
        segmentations[i] += instance_eval.mask_to_rle(binary[i])
    else:
      masks.append(binary)
  out = {"scores": np.asarray(scores), "labels": np.asarray(labels)}
  if encode:
    out["segmentations"] = segmentations
  else:
    out["masks"] = np.concatenate(masks, axis=1) if masks else np.zeros(
        (len(out["scores"]), 0) + sizes["output_size"], bool)
  return out


def to_results(video_id: int, result: dict[str, Any],
               category_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
  """`inference_video(..., encode=True)` -> YouTube-VIS submission entries of one video.

  `category_ids` maps contiguous classes to the dataset's ids (None: kept).
  """
  out = []
  for score, label, segmentations in zip(result["scores"], result["labels"],
                                         result["segmentations"]):
    category = int(label) if category_ids is None else int(category_ids[int(label)])
    out.append({"video_id": int(video_id), "category_id": category, "score": float(score),
                "segmentations": segmentations})
  return out


# ------------------------------------------------------------------------------------------
# Video panoptic segmentation: the official panoptic_inference over the T x H x W volume
# ------------------------------------------------------------------------------------------

OBJECT_MASK_THRESHOLD = 0.8  # the official panoptic_inference thresholds
OVERLAP_THRESHOLD = 0.8


@functools.partial(jax.jit, static_argnames=("padded_size", "image_size", "output_size"))
def _panoptic_chunk(class_logits, tubes, num_valid, object_mask_threshold, *,
                    padded_size: Size, image_size: Size, output_size: Size):
  """`inference._panoptic_arrays` on a chunk of frames of the candidate queries: frames are
  folded into the rows (every step is per pixel but the areas, which are sums); frames from
  `num_valid` on are padding and count nowhere."""
  from m2f_jax import inference  # pylint: disable=g-import-not-at-top
  k, t = tubes.shape[:2]
  logits = logits_at_output(tubes, padded_size=padded_size, image_size=image_size,
                            output_size=output_size)  # [k, t, H, W]
  height, width = output_size
  valid = jnp.broadcast_to((jnp.arange(t) < num_valid)[:, None, None], (t, height, width))
  arrays = inference._panoptic_arrays(  # pylint: disable=protected-access
      class_logits, logits.reshape(k, t * height, width), object_mask_threshold,
      valid.reshape(t * height, width))
  arrays["winner"] = arrays["winner"].reshape(t, height, width)
  arrays["confident"] = arrays["confident"].reshape(t, height, width)
  return arrays


def _bucket(n: int, cap: int) -> int:
  """The next power of two >= n (at most `cap`): few compiled shapes."""
  return min(cap, 1 << max(0, int(n) - 1).bit_length())


def video_panoptic_inference(*, pred_logits, pred_masks, padded_size: Size, image_size: Size,
                             output_size: Size, isthing: Sequence[bool],
                             object_mask_threshold: float = OBJECT_MASK_THRESHOLD,
                             overlap_threshold: float = OVERLAP_THRESHOLD,
                             frame_chunk: int = 4) -> dict[str, Any]:
  """The official `panoptic_inference` over one video's T x H x W volume.

  As `inference.panoptic_inference` with every frame in one image: queries whose class
  (softmax, argmax) is not "no object" and whose probability > `object_mask_threshold` are
  kept; each pixel of every frame goes to the kept query with the largest class probability
  x mask probability (first such query on ties), if that probability is >= 0.5; a segment
  whose won pixels (summed over the video) are fewer than `overlap_threshold` x its own
  (probability >= 0.5, summed over the video) is dropped; the stuff segments of one class
  merge into one over the whole video. So a segment id is the same object in every frame: no
  association step.

  Memory stays bounded: only the kept queries (padded to a power of two) are upsampled, by
  chunks of `frame_chunk` frames (the winner maps and the areas are accumulated; the result
  does not depend on the chunk).

  Args:
    pred_logits: `[Q, K + 1]` (one video of the model's `pred_logits`).
    pred_masks: `[Q, T, h, w]` mask logits.
    padded_size, image_size, output_size: as `inference_video`.
    isthing: `[K]` bools, True for thing classes.
    object_mask_threshold, overlap_threshold: the official 0.8 and 0.8.
    frame_chunk: frames upsampled at a time.

  Returns:
    {"panoptic": int32 [T, H, W] segment ids (0 = void), "segments_info": [{"id",
    "category_id" (contiguous class), "isthing", "score", "query"}] of the video,
    "frame_segments": per frame the ids of the segments present in it}.
  """
  from m2f_jax import inference  # pylint: disable=g-import-not-at-top
  if pred_logits.ndim != 2 or pred_masks.ndim != 4 or pred_masks.shape[0] != pred_logits.shape[0]:
    raise ValueError(f"video_panoptic_inference: pred_logits {pred_logits.shape} must be "
                     f"[Q, K + 1] and pred_masks {pred_masks.shape} [Q, T, h, w] of one video")
  num_queries, num_classes = pred_logits.shape[0], pred_logits.shape[1] - 1
  isthing = inference._check_isthing(isthing, num_classes)  # pylint: disable=protected-access
  class_logits = np.asarray(pred_logits, np.float32)
  z = class_logits - class_logits.max(-1, keepdims=True)
  probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)  # [Q, K + 1]
  labels = probs.argmax(-1)
  num_frames = pred_masks.shape[1]
  out_h, out_w = (int(s) for s in output_size)
  candidates = np.flatnonzero((labels != num_classes)
                              & (probs.max(-1) > object_mask_threshold * 0.999))
  if candidates.size == 0:
    return {"panoptic": np.zeros((num_frames, out_h, out_w), np.int32), "segments_info": [],
            "frame_segments": [[] for _ in range(num_frames)]}
  # The candidates (a superset of the kept queries: the exact threshold test runs in the
  # jitted function, in float32 as the image inference), in query order, padded with rows
  # that are "no object" for sure.
  size = _bucket(candidates.size, num_queries)
  sub_logits = np.zeros((size, num_classes + 1), np.float32)
  sub_logits[:, -1] = 1.0
  sub_logits[:candidates.size] = class_logits[candidates]
  index = np.zeros(size, np.int64)
  index[:candidates.size] = candidates
  tubes = jnp.asarray(pred_masks)[index]  # [k, T, h, w]
  chunk = max(1, min(int(frame_chunk), num_frames))
  sizes = dict(padded_size=tuple(int(s) for s in padded_size),
               image_size=tuple(int(s) for s in image_size), output_size=(out_h, out_w))
  winners, confident, areas = [], [], None
  for start in range(0, num_frames, chunk):
    part = tubes[:, start:start + chunk]
    valid = part.shape[1]
    if valid < chunk:  # one compiled shape per video size
      part = jnp.pad(part, ((0, 0), (0, chunk - valid), (0, 0), (0, 0)))
    a = jax.tree.map(np.asarray, _panoptic_chunk(
        jnp.asarray(sub_logits), part, valid, jnp.float32(object_mask_threshold), **sizes))
    winners.append(a["winner"][:valid])
    confident.append(a["confident"][:valid])
    sums = {k: a[k].astype(np.int64) for k in ("mask_area", "original_area", "confident_area")}
    areas = sums if areas is None else {k: areas[k] + sums[k] for k in sums}
    per_query = {k: a[k] for k in ("keep", "score", "label")}
  arrays = dict(per_query, **areas, winner=np.concatenate(winners),
                confident=np.concatenate(confident))
  panoptic, segments = inference._panoptic_segments(  # pylint: disable=protected-access
      arrays, isthing=isthing, overlap_threshold=overlap_threshold)
  # The query of each segment: the first kept query whose pixels it holds (a merged stuff
  # segment: its class's first surviving query); one pass over the volume.
  num_segments = len(segments)
  pairs = np.bincount((arrays["winner"].astype(np.int64) * (num_segments + 1)
                       + panoptic).reshape(-1), minlength=size * (num_segments + 1))
  pairs = pairs.reshape(size, num_segments + 1)[:, 1:] > 0  # [k, S]
  for s in segments:
    q = int(np.argmax(pairs[:, s["id"] - 1]))
    s.update(category_id=int(s["category_id"]), query=int(candidates[q]),
             score=float(arrays["score"][q]))
  present = [np.flatnonzero(np.bincount(frame.reshape(-1), minlength=num_segments + 1)[1:]) + 1
             for frame in panoptic]
  return {"panoptic": panoptic.astype(np.int32), "segments_info": segments,
          "frame_segments": [ids.tolist() for ids in present]}


# ------------------------------------------------------------------------------------------
# Videos longer than the model takes at once: overlapping clips linked into tubes
# ------------------------------------------------------------------------------------------


def clip_starts(num_frames: int, clip_frames: int, overlap: int) -> list[int]:
  """First frames of the clips of `clip_frames` frames that cover `num_frames` frames, each
  overlapping the previous by at least `overlap` frames (the last one ends at the last frame,
  so every clip has the same length: one compiled shape). A video that fits is one clip."""
  if not 1 <= overlap < clip_frames:
    raise ValueError(f"clips of {clip_frames} frames overlapping by {overlap}: linking needs "
                     "1 <= overlap < clip_frames (eval.clip_frames, eval.clip_overlap)")
  if num_frames <= clip_frames:
    return [0]
  stride = clip_frames - overlap
  starts = list(range(0, num_frames - clip_frames, stride))
  return starts + [num_frames - clip_frames]


def _binary_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Mask IoU `[N, M]` of bool `[N, P]` and `[M, P]` (0 where both are empty)."""
  a, b = a.astype(np.float32), b.astype(np.float32)
  inter = a @ b.T
  union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
  return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


ABSENT_LOGIT = -1e4  # mask logit of a linked tube in the frames of clips it is not in


def link_clips(clips: Sequence[tuple[np.ndarray, np.ndarray]], starts: Sequence[int],
               num_frames: int) -> tuple[np.ndarray, np.ndarray]:
  """Tubes of overlapping clips linked into video tubes.

  The first clip's queries start the video tubes. Each later clip's queries are matched one
  to one (Hungarian, `scipy.optimize.linear_sum_assignment`) with the tubes of the previous
  clip, maximizing the IoU of their masks (logit > 0 at the network's resolution) over the
  frames the two clips share; a matched pair with IoU > 0 continues the tube. A query left
  unlinked (no overlap with any tube there: an object that enters, or hidden in the shared
  frames) starts a new tube if its class (argmax) is not "no object", and is dropped
  otherwise. A tube's mask logits in a frame are the mean over the clips that hold both the
  frame and the tube (`ABSENT_LOGIT` where none does), its class logits the mean over its
  clips. An object hidden in every frame shared by two clips therefore becomes two tubes
  (whole-video inference would keep one).

  Args:
    clips: per clip (pred_logits `[Q, K + 1]`, pred_masks `[Q, t, h, w]`), in order.
    starts: each clip's first frame (`clip_starts`).
    num_frames: T of the video.

  Returns:
    (pred_logits `[N, K + 1]`, pred_masks `[N, T, h, w]`), N >= Q tubes, as the model's
    output for the whole video (for `video_panoptic_inference` and `inference_video`).
  """
  from scipy import optimize  # pylint: disable=g-import-not-at-top
  if len(clips) != len(starts) or not clips:
    raise ValueError(f"link_clips: {len(clips)} clips but {len(starts)} starts")
  logits0, masks0 = (np.asarray(x, np.float32) for x in clips[0])
  num_queries, clip_len, h, w = masks0.shape
  num_classes = logits0.shape[1] - 1
  tube_logits, tube_clips = [], []  # per tube: summed class logits, clip count
  mask_sum = []  # per tube: [T, h, w]
  frame_count = []  # per tube: [T]
  previous = None  # (start, masks [Q, t, h, w], tube index of each query)
  for (logits, masks), start in zip(clips, starts):
    logits, masks = np.asarray(logits, np.float32), np.asarray(masks, np.float32)
    if masks.shape != (num_queries, clip_len, h, w) or logits.shape != logits0.shape:
      raise ValueError(f"link_clips: clip at frame {start} has outputs {logits.shape}, "
                       f"{masks.shape}; the first has {logits0.shape}, {masks0.shape}")
    if start < 0 or start + clip_len > num_frames:
      raise ValueError(f"link_clips: clip frames {start}..{start + clip_len - 1} outside the "
                       f"video's {num_frames}")
    tube_of = np.full(num_queries, -1, np.int64)
    if previous is not None:
      prev_start, prev_masks, prev_tubes = previous
      lo, hi = start, min(prev_start + clip_len, start + clip_len)
      if hi <= lo:
        raise ValueError(f"link_clips: the clip at frame {start} does not overlap the previous "
                         f"one (frames {prev_start}..{prev_start + clip_len - 1})")
      a = prev_masks[:, lo - prev_start:hi - prev_start].reshape(num_queries, -1) > 0
      b = masks[:, lo - start:hi - start].reshape(num_queries, -1) > 0
      iou = _binary_iou(a, b)  # [previous queries, queries]
      rows, cols = optimize.linear_sum_assignment(-iou)
      for r, c in zip(rows, cols):
        if iou[r, c] > 0 and prev_tubes[r] >= 0:
          tube_of[c] = prev_tubes[r]
    for q in range(num_queries):
      if tube_of[q] < 0 and (previous is None or logits[q].argmax() != num_classes):
        tube_of[q] = len(tube_logits)
        tube_logits.append(np.zeros(num_classes + 1, np.float32))
        tube_clips.append(0)
        mask_sum.append(np.zeros((num_frames, h, w), np.float32))
        frame_count.append(np.zeros(num_frames, np.int32))
      if tube_of[q] >= 0:
        n = tube_of[q]
        tube_logits[n] += logits[q]
        tube_clips[n] += 1
        mask_sum[n][start:start + clip_len] += masks[q]
        frame_count[n][start:start + clip_len] += 1
    previous = (start, masks, tube_of)
  covered = np.zeros(num_frames, bool)
  for start in starts:
    covered[start:start + clip_len] = True
  if not covered.all():
    raise ValueError(f"link_clips: frames {np.flatnonzero(~covered).tolist()} are in no clip")
  count = np.stack(frame_count)[:, :, None, None]  # [N, T, 1, 1]
  masks = np.where(count > 0, np.stack(mask_sum) / np.maximum(count, 1), ABSENT_LOGIT)
  logits = np.stack(tube_logits) / np.asarray(tube_clips, np.float32)[:, None]
  return logits.astype(np.float32), masks.astype(np.float32)


def frame_segments(result: dict[str, Any], category_ids: Sequence[int] | None = None
                   ) -> list[list[dict[str, Any]]]:
  """`video_panoptic_inference`'s result -> per frame [{"id", "category_id", "isthing"}] of
  the segments present in that frame (VIPSeg's per-frame segments_info); `category_ids` maps
  contiguous classes to the dataset's ids (None: kept)."""
  by_id = {s["id"]: s for s in result["segments_info"]}
  out = []
  for ids in result["frame_segments"]:
    frame = []
    for i in ids:
      s = by_id[i]
      category = s["category_id"] if category_ids is None else int(category_ids[s["category_id"]])
      frame.append({"id": int(i), "category_id": int(category), "isthing": int(s["isthing"])})
    out.append(frame)
  return out


def video_outputs(forward, variables, images: np.ndarray, *, clip_frames: int = 0,
                  clip_overlap: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """One video's (pred_logits `[Q, K + 1]`, pred_masks `[Q, T, h, w]`): the whole video in
  one `forward(variables, images [1, T, H, W, 3])`, or, when it has more than `clip_frames`
  (> 0) frames, clips of `clip_frames` overlapping by `clip_overlap` linked into tubes
  (`clip_starts`, `link_clips`)."""
  num_frames = images.shape[1]
  if not clip_frames or num_frames <= clip_frames:
    out = forward(variables, images)
    return np.asarray(out["pred_logits"])[0], np.asarray(out["pred_masks"])[0]
  starts = clip_starts(num_frames, int(clip_frames), int(clip_overlap))
  clips = []
  for start in starts:
    out = forward(variables, images[:, start:start + clip_frames])
    clips.append((np.asarray(out["pred_logits"])[0], np.asarray(out["pred_masks"])[0]))
  return link_clips(clips, starts, num_frames)
