"""Post-processing of the video model: one video's outputs -> YouTube-VIS results.

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
def select_topk(pred_logits: jnp.ndarray, pred_masks: jnp.ndarray, *, topk: int = TOPK):
  """The official top-k of one video, before any upsampling.

  Args:
    pred_logits: `[Q, K + 1]` class logits (last = no object).
    pred_masks: `[Q, T, h, w]` mask logits.
    topk: results kept (at most Q x K).

  Returns:
    scores float32 `[k]` (class probabilities, descending), labels int32 `[k]`, tube logits
    float32 `[k, T, h, w]`.
  """
  num_queries, num_classes = pred_logits.shape[0], pred_logits.shape[1] - 1
  probs = jax.nn.softmax(pred_logits.astype(jnp.float32), axis=-1)[:, :-1]  # [Q, K]
  scores, index = jax.lax.top_k(probs.reshape(-1), min(topk, num_queries * num_classes))
  query = index // num_classes
  labels = (index % num_classes).astype(jnp.int32)
  return scores, labels, pred_masks[query].astype(jnp.float32)  # [k, T, h, w]


@functools.partial(jax.jit, static_argnames=("padded_size", "image_size", "output_size"))
def masks_at_output(tubes: jnp.ndarray, *, padded_size: Size, image_size: Size,
                    output_size: Size) -> jnp.ndarray:
  """`[k, t, h, w]` logits -> bool `[k, t, H, W]` at the original size (logit > 0).

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
                    precision="highest") > 0  # [k, t, H, W]


def inference_video(*, pred_logits, pred_masks, padded_size: Size, image_size: Size,
                    output_size: Size, topk: int = TOPK, frame_chunk: int = 4,
                    encode: bool = True) -> dict[str, Any]:
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

  Returns:
    {"scores": float32 [k] descending, "labels": int32 [k] contiguous classes, and
    "segmentations" or "masks"} as numpy / lists.
  """
  if pred_logits.ndim != 2 or pred_masks.ndim != 4 or pred_masks.shape[0] != pred_logits.shape[0]:
    raise ValueError(f"inference_video: pred_logits {pred_logits.shape} must be [Q, K + 1] and "
                     f"pred_masks {pred_masks.shape} [Q, T, h, w] of one video")
  scores, labels, tubes = select_topk(pred_logits, pred_masks, topk=topk)
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
