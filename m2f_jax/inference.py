"""Post-processing: network outputs -> semantic, panoptic and instance results.

Follows the official `MaskFormer.forward` (inference branch), `semantic_inference`,
`panoptic_inference` and `instance_inference` in `mask2former/maskformer_model.py`, and
Detectron2's `sem_seg_postprocess`:

1. the mask logits `[B, Q, h, w]` are upsampled to the padded input size (bilinear,
   align_corners=False), for the whole batch at once;
2. per image, the valid (unpadded) region is cropped and resized to the original image size
   ("postprocess before inference"; the official code does this first whenever panoptic or
   instance inference is on, or when its flag asks for it; otherwise semantic inference runs at
   the padded size and its class scores are cropped and resized instead);
3. semantic: sum over queries of softmax class probability (no-object dropped) x sigmoid mask,
   `[K, H, W]`, argmax -> label map;
   panoptic: queries whose class is not no-object and whose score > object_mask_threshold
   compete per pixel (argmax of score x mask probability); a segment keeps the pixels where it
   wins and its own probability is >= 0.5, and is dropped when those pixels are fewer than
   overlap_threshold x its own area (probability >= 0.5); stuff segments of one class merge;
   instance: top-k over queries x classes of the class probabilities; mask = logit > 0;
   score = class probability x mean mask probability inside the mask; a panoptic-trained
   model keeps only thing classes, as the official code (which keys it on panoptic inference
   being on; `postprocess(things_only=...)`, `things_only_for(task)` for the callers).
   Differs: `postprocess` drops results whose mask is empty (the official code keeps them
   with a zero box; they match no ground truth), so `predict` and `eval.py` see the same
   instances.

Array work is jit-compiled: the batched upsampling once per input shape, the per-image part
once per (padded size, output bucket) with the image and original sizes traced
(`crop_resize`; the bucket is the padded size whenever the original fits in it, see
`output_bucket`), then cropped on the host; the segment bookkeeping runs in numpy.
All results are numpy arrays. Class ids are contiguous in [0, K); map them to dataset ids in
the evaluators (`m2f_jax.evaluation`).
"""

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from m2f_jax.ops import resize_bilinear

Size = tuple[int, int]


# ---------------------------------------------------------------------------
# Array functions (traceable; one image unless the shape comment says otherwise).
# ---------------------------------------------------------------------------


def sem_seg_postprocess(x: jnp.ndarray, *, image_size: Size, output_size: Size) -> jnp.ndarray:
  """Crops `x [..., Hp, Wp]` to its valid `image_size` and resizes it to `output_size`.

  Detectron2's `sem_seg_postprocess` (bilinear, align_corners=False).
  """
  h, w = image_size
  if h > x.shape[-2] or w > x.shape[-1]:
    raise ValueError(f"sem_seg_postprocess: image_size {image_size} exceeds the padded size "
                     f"{x.shape[-2:]} of the array {x.shape}.")
  return resize_bilinear(x[..., :h, :w], *output_size)


def crop_resize_matrix(valid, out, *, in_len: int, out_len: int) -> jnp.ndarray:
  """`[out_len, in_len]` weights resizing the first `valid` samples to the first `out` ones.

  The linear map of `sem_seg_postprocess` along one axis (crop to `valid`, then bilinear
  resize to `out`: half-pixel centres, no antialiasing, edge samples renormalized over the
  crop, as `jax.image.resize` and torch's `align_corners=False`), with `valid` and `out`
  traced: one compiled function serves every image and original size of a padded size.
  Rows `>= out` are zero.
  """
  valid = jnp.asarray(valid, jnp.float32)
  inv_scale = valid / jnp.asarray(out, jnp.float32)
  src = (jnp.arange(out_len, dtype=jnp.float32) + 0.5) * inv_scale - 0.5  # [out_len]
  j = jnp.arange(in_len, dtype=jnp.float32)
  weights = jnp.maximum(0.0, 1.0 - jnp.abs(src[:, None] - j[None, :]))  # [out_len, in_len]
  weights = jnp.where(j[None, :] < valid, weights, 0.0)
  total = jnp.sum(weights, axis=1, keepdims=True)
  weights = jnp.where(total > 0, weights / jnp.where(total > 0, total, 1.0), 0.0)
  return jnp.where(jnp.arange(out_len)[:, None] < out, weights, 0.0)


def crop_resize(x: jnp.ndarray, *, image_size, output_size, out_shape: Size) -> jnp.ndarray:
  """`sem_seg_postprocess` with traced sizes: `x [..., Hp, Wp]` -> `[..., Ho, Wo]`.

  The result holds the crop `x[..., :h, :w]` (`image_size`) resized to `output_size` in its
  top-left corner and zeros elsewhere; `out_shape` (static) must hold `output_size`.
  """
  hp, wp = x.shape[-2:]
  rows = crop_resize_matrix(image_size[0], output_size[0], in_len=hp, out_len=out_shape[0])
  cols = crop_resize_matrix(image_size[1], output_size[1], in_len=wp, out_len=out_shape[1])
  x = jnp.einsum("ph,...hw->...pw", rows, x.astype(jnp.float32),
                 precision=jax.lax.Precision.HIGHEST)
  return jnp.einsum("qw,...pw->...pq", cols, x, precision=jax.lax.Precision.HIGHEST)


def output_bucket(padded_size: Size, output_size: Size, multiple: int = 128) -> Size:
  """The static shape results of one image are computed in (then cropped on the host).

  The padded input size when the original size fits in it (e.g. COCO evaluated at 800 px:
  one compilation per padded size), else each larger side rounded up to `multiple`.
  """
  return tuple(p if o <= p else -(-o // multiple) * multiple
               for p, o in zip(padded_size, output_size))


def semantic_scores(class_logits: jnp.ndarray, mask_logits: jnp.ndarray) -> jnp.ndarray:
  """Per-class scores `[..., K, H, W]`: softmax class probabilities x sigmoid masks, summed over Q.

  Args:
    class_logits: `[..., Q, K+1]` (index K = no object, dropped after the softmax).
    mask_logits: `[..., Q, H, W]`.
  """
  probs = jax.nn.softmax(class_logits.astype(jnp.float32), axis=-1)[..., :-1]  # [..., Q, K]
  masks = jax.nn.sigmoid(mask_logits.astype(jnp.float32))  # [..., Q, H, W]
  return jnp.einsum("...QK,...QHW->...KHW", probs, masks,
                    precision=jax.lax.Precision.HIGHEST)  # [..., K, H, W]


def _panoptic_arrays(class_logits, mask_logits, object_mask_threshold, valid=None):
  """The array part of the official `panoptic_inference` for one image.

  `valid [H, W]` (optional) marks the pixels of the image; the others count nowhere.

  Returns a dict: `winner [H, W]` (index of the kept query with the largest score x mask
  probability; 0 when no query is kept), `confident [H, W]` (the winner's probability >= 0.5),
  and per query `[Q]`: `keep`, `score`, `label`, `mask_area` (pixels won), `original_area`
  (pixels with probability >= 0.5), `confident_area` (pixels won with probability >= 0.5).
  """
  num_queries, num_classes_plus_one = class_logits.shape
  probs = jax.nn.softmax(class_logits.astype(jnp.float32), axis=-1)  # [Q, K+1]
  scores = jnp.max(probs, axis=-1)  # [Q]
  labels = jnp.argmax(probs, axis=-1)  # [Q]
  keep = (labels != num_classes_plus_one - 1) & (scores > object_mask_threshold)
  masks = jax.nn.sigmoid(mask_logits.astype(jnp.float32))  # [Q, H, W]
  # Queries that are not kept score -1 < 0 <= any kept query's probability, so the argmax runs
  # over the kept queries in their order (first maximum wins, as torch.argmax).
  prob_masks = jnp.where(keep[:, None, None], scores[:, None, None] * masks, -1.0)  # [Q, H, W]
  winner = jnp.argmax(prob_masks, axis=0)  # [H, W]
  above = masks >= 0.5  # [Q, H, W]
  confident = jnp.take_along_axis(above, winner[None], axis=0)[0]  # [H, W]
  if valid is not None:
    above &= valid[None]
    confident &= valid
  flat_winner = winner.reshape(-1)
  mask_area = jnp.bincount(
      flat_winner, weights=None if valid is None else valid.reshape(-1).astype(jnp.int32),
      length=num_queries)  # [Q]
  confident_area = jnp.bincount(flat_winner, weights=confident.reshape(-1).astype(jnp.int32),
                                length=num_queries)  # [Q]
  return dict(winner=winner.astype(jnp.int32), confident=confident, keep=keep, score=scores,
              label=labels.astype(jnp.int32), mask_area=mask_area,
              original_area=jnp.sum(above, axis=(1, 2)), confident_area=confident_area)


def _instance_arrays(class_logits, mask_logits, topk):
  """The array part of the official `instance_inference` for one image.

  Returns `score [k]` (class probability x mean mask probability inside the mask), `label [k]`,
  `query [k]` (the query each result comes from), sorted by class probability, and
  `binary [Q, H, W]` (mask logit > 0).
  """
  num_queries, num_classes_plus_one = class_logits.shape
  num_classes = num_classes_plus_one - 1
  probs = jax.nn.softmax(class_logits.astype(jnp.float32), axis=-1)[:, :-1]  # [Q, K]
  top_probs, top_index = jax.lax.top_k(probs.reshape(-1), topk)  # [k]
  query = top_index // num_classes
  mask_logits = mask_logits.astype(jnp.float32)
  binary = mask_logits > 0  # [Q, H, W]
  inside = binary.astype(jnp.float32)
  mask_scores = (jnp.sum(jax.nn.sigmoid(mask_logits) * inside, axis=(1, 2))
                 / (jnp.sum(inside, axis=(1, 2)) + 1e-6))  # [Q]
  return dict(score=top_probs * mask_scores[query], label=(top_index % num_classes).astype(
      jnp.int32), query=query.astype(jnp.int32), binary=binary)


# ---------------------------------------------------------------------------
# Host bookkeeping.
# ---------------------------------------------------------------------------


def _panoptic_segments(arrays, *, isthing: np.ndarray, overlap_threshold: float):
  """Segment ids and segments_info from `_panoptic_arrays` (the official loop)."""
  a = jax.tree.map(np.asarray, arrays)
  segment_of_query = np.zeros(a["keep"].shape[0], np.int32)
  segments_info = []
  stuff_segment = {}
  current_id = 0
  for q in np.flatnonzero(a["keep"]):
    label = int(a["label"][q])
    thing = bool(isthing[label])
    mask_area = int(a["mask_area"][q])
    original_area = int(a["original_area"][q])
    if mask_area > 0 and original_area > 0 and int(a["confident_area"][q]) > 0:
      if mask_area / original_area < overlap_threshold:
        continue
      if not thing:  # Merge stuff segments of one class.
        if label in stuff_segment:
          segment_of_query[q] = stuff_segment[label]
          continue
        stuff_segment[label] = current_id + 1
      current_id += 1
      segment_of_query[q] = current_id
      segments_info.append({"id": current_id, "isthing": thing, "category_id": label})
  panoptic = np.where(a["confident"], segment_of_query[a["winner"]], 0).astype(np.int32)
  return panoptic, segments_info


def things_only_for(task: str) -> bool:
  """The official rule: instance results of a model trained for panoptic segmentation are
  things only (its PANOPTIC_ON config). `task`: the task the model was trained on."""
  return task == "panoptic"


def _instance_results(arrays, *, things_only: bool, isthing: np.ndarray | None,
                      drop_empty: bool = False):
  a = jax.tree.map(np.asarray, arrays)
  keep = np.ones(a["label"].shape, bool)
  if things_only:
    keep = isthing[a["label"]]
  if drop_empty:
    keep &= a["binary"].any(axis=(1, 2))[a["query"]]
  return {"masks": a["binary"][a["query"][keep]],
          "scores": a["score"][keep].astype(np.float32),
          "classes": a["label"][keep].astype(np.int32)}


def _check_isthing(isthing, num_classes: int) -> np.ndarray:
  if isthing is None:
    raise ValueError("panoptic inference needs isthing: a bool sequence with one entry per "
                     f"class ({num_classes}), True for thing classes.")
  isthing = np.asarray(isthing, bool)
  if isthing.shape != (num_classes,):
    raise ValueError(f"isthing has shape {isthing.shape}; expected ({num_classes},) for "
                     f"class logits with K+1 = {num_classes + 1} entries.")
  return isthing


# ---------------------------------------------------------------------------
# Single-image inference at the final resolution (the official per-image functions).
# ---------------------------------------------------------------------------


@jax.jit
def semantic_inference(class_logits: jnp.ndarray, mask_logits: jnp.ndarray) -> jnp.ndarray:
  """Official `semantic_inference`: `[Q, K+1]`, `[Q, H, W]` -> class scores `[K, H, W]`."""
  return semantic_scores(class_logits, mask_logits)


_panoptic_arrays_jit = jax.jit(_panoptic_arrays)
_instance_arrays_jit = jax.jit(_instance_arrays, static_argnums=2)


def panoptic_inference(class_logits, mask_logits, *, isthing: Sequence[bool],
                       object_mask_threshold: float = 0.8, overlap_threshold: float = 0.8):
  """Official `panoptic_inference` for one image.

  Args:
    class_logits: `[Q, K+1]`.
    mask_logits: `[Q, H, W]` at the output resolution.
    isthing: `[K]` bools, True for thing classes.
    object_mask_threshold: queries with class probability <= this are dropped.
    overlap_threshold: segments keeping less than this fraction of their area are dropped.

  Returns:
    `(panoptic [H, W] int32, segments_info)`: segment ids 1, 2, ... (0 = void) and one dict
    `{"id", "isthing", "category_id"}` per segment, category_id a contiguous class index.
  """
  isthing = _check_isthing(isthing, class_logits.shape[-1] - 1)
  arrays = _panoptic_arrays_jit(class_logits, mask_logits, object_mask_threshold)
  return _panoptic_segments(arrays, isthing=isthing, overlap_threshold=overlap_threshold)


def instance_inference(class_logits, mask_logits, *, topk: int = 100, things_only: bool = False,
                       isthing: Sequence[bool] | None = None) -> dict[str, np.ndarray]:
  """Official `instance_inference` for one image.

  Args:
    class_logits: `[Q, K+1]`.
    mask_logits: `[Q, H, W]` at the output resolution.
    topk: results per image (over queries x classes; at most Q x K).
    things_only: keep only thing classes (the official code does when panoptic inference is
      on); needs `isthing`.
    isthing: `[K]` bools.

  Returns:
    `{"masks": bool [N, H, W], "scores": float32 [N], "classes": int32 [N]}`, N <= topk,
    in decreasing class probability.
  """
  num_queries, num_classes_plus_one = class_logits.shape
  if things_only:
    isthing = _check_isthing(isthing, num_classes_plus_one - 1)
  topk = min(topk, num_queries * (num_classes_plus_one - 1))
  arrays = _instance_arrays_jit(class_logits, mask_logits, topk)
  return _instance_results(arrays, things_only=things_only, isthing=isthing)


# ---------------------------------------------------------------------------
# Batched post-processing of network outputs.
# ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("padded_size", "semantic_at_padded_size"))
def _batched_stage(class_logits, mask_logits, *, padded_size, semantic_at_padded_size):
  """Per image of the batch: its masks `[Q, Hp, Wp]` and scores `[K, Hp, Wp]` (or None).

  Returned as one array per image, so that the host takes an image without an eager slice
  (which would compile programs of its own per shape).
  """
  masks = resize_bilinear(mask_logits.astype(jnp.float32), *padded_size)  # [B, Q, Hp, Wp]
  scores = semantic_scores(class_logits, masks) if semantic_at_padded_size else None
  batch = masks.shape[0]
  return (tuple(masks[i] for i in range(batch)),
          None if scores is None else tuple(scores[i] for i in range(batch)))


@functools.partial(jax.jit, static_argnames=(
    "out_shape", "semantic_on", "panoptic_on", "instance_on", "topk"))
def _image_stage(class_logits, masks, padded_scores, object_mask_threshold, image_size,
                 output_size, *, out_shape, semantic_on, panoptic_on, instance_on, topk):
  """One image's arrays at the static `out_shape`; `image_size`, `output_size` are traced.

  Compiled once per (padded size, out_shape); the host crops the results to `output_size`.
  """
  resize = functools.partial(crop_resize, image_size=image_size, output_size=output_size,
                             out_shape=out_shape)
  out = {}
  if padded_scores is not None:  # Semantic inference ran at the padded size.
    out["sem_seg"] = jnp.argmax(resize(padded_scores), axis=0).astype(jnp.int32)
  if not (panoptic_on or instance_on or (semantic_on and padded_scores is None)):
    return out
  valid = ((jnp.arange(out_shape[0])[:, None] < output_size[0])
           & (jnp.arange(out_shape[1])[None, :] < output_size[1]))  # [Ho, Wo]
  masks = resize(masks)  # [Q, Ho, Wo]
  if semantic_on and padded_scores is None:
    out["sem_seg"] = jnp.argmax(semantic_scores(class_logits, masks), axis=0).astype(jnp.int32)
  # Outside the image: probability 0 (never above 0.5, never inside an instance mask).
  masks = jnp.where(valid[None], masks, -jnp.inf)
  if panoptic_on:
    out["panoptic"] = _panoptic_arrays(class_logits, masks, object_mask_threshold, valid)
  if instance_on:
    out["instances"] = _instance_arrays(class_logits, masks, topk)
  return out


def _crop(arrays: dict, output_size: Size) -> dict:
  """The host-side crop of `_image_stage`'s maps to the original image size."""
  h, w = output_size
  out = {}
  if "sem_seg" in arrays:
    out["sem_seg"] = np.asarray(arrays["sem_seg"])[:h, :w]
  if "panoptic" in arrays:
    out["panoptic"] = dict(jax.tree.map(np.asarray, arrays["panoptic"]))
    for key in ("winner", "confident"):
      out["panoptic"][key] = out["panoptic"][key][:h, :w]
  if "instances" in arrays:
    out["instances"] = dict(jax.tree.map(np.asarray, arrays["instances"]))
    out["instances"]["binary"] = out["instances"]["binary"][:, :h, :w]
  return out


def compilation_count() -> int:
  """How many shapes the batched post-processing has compiled so far (in this process)."""
  return _batched_stage._cache_size() + _image_stage._cache_size()  # pylint: disable=protected-access


def compile_postprocess(*, pred_logits: jax.ShapeDtypeStruct, pred_masks: jax.ShapeDtypeStruct,
                        padded_size: Size, output_sizes: Sequence[Size],
                        semantic_on: bool = True, panoptic_on: bool = False,
                        instance_on: bool = False, instance_topk: int = 100,
                        postprocess_before_inference: bool = False) -> int:
  """Compiles ahead of time what `postprocess` will run for batches of these shapes.

  `pred_logits`, `pred_masks`: the shapes and dtypes of the network outputs `postprocess`
  will get (numpy arrays on the host); `output_sizes`: the original sizes of the images of
  that padded size; the flags as `postprocess` will be called. Afterwards `postprocess`
  calls on such batches compile nothing (the same cache entries; any thread may call this).
  Returns the number of programs compiled.
  """
  batch, num_queries, num_classes_plus_one = pred_logits.shape
  before = postprocess_before_inference or panoptic_on or instance_on
  padded_size = (int(padded_size[0]), int(padded_size[1]))
  spec = jax.ShapeDtypeStruct
  stage = _batched_stage.lower(spec(pred_logits.shape, pred_logits.dtype),
                               spec(pred_masks.shape, pred_masks.dtype),
                               padded_size=padded_size,
                               semantic_at_padded_size=semantic_on and not before)
  stage.compile()
  masks, scores = stage.out_info  # per image: [Q, Hp, Wp], [K, Hp, Wp] or None
  topk = min(instance_topk, num_queries * (num_classes_plus_one - 1))
  out_shapes = sorted({output_bucket(padded_size, tuple(int(s) for s in size))
                       for size in output_sizes})
  for out_shape in out_shapes:
    _image_stage.lower(
        spec(pred_logits.shape[1:], pred_logits.dtype), spec(masks[0].shape, masks[0].dtype),
        None if scores is None else spec(scores[0].shape, scores[0].dtype),
        spec((), jnp.float32), spec((2,), jnp.int32), spec((2,), jnp.int32),
        out_shape=out_shape, semantic_on=semantic_on, panoptic_on=panoptic_on,
        instance_on=instance_on, topk=topk).compile()
  return 1 + len(out_shapes)


def postprocess(*, pred_logits: jnp.ndarray, pred_masks: jnp.ndarray, padded_size: Size,
                image_sizes: Sequence[Size], output_sizes: Sequence[Size] | None = None,
                semantic_on: bool = True, panoptic_on: bool = False,
                instance_on: bool = False, isthing: Sequence[bool] | None = None,
                object_mask_threshold: float = 0.8, overlap_threshold: float = 0.8,
                instance_topk: int = 100, things_only: bool | None = None,
                postprocess_before_inference: bool = False) -> list[dict[str, Any]]:
  """Network outputs of a batch -> per-image results, as the official inference branch.

  Args:
    pred_logits: `[B, Q, K+1]` class logits (index K = no object).
    pred_masks: `[B, Q, h, w]` mask logits (h, w = padded size / 4).
    padded_size: `(Hp, Wp)` of the network input batch.
    image_sizes: per image, `(h, w)` of the image inside the padded input.
    output_sizes: per image, `(H, W)` of the results (the original image size); default
      `image_sizes`.
    semantic_on, panoptic_on, instance_on: which results to compute.
    isthing: `[K]` bools, True for thing classes; needed by panoptic inference, and by
      instance inference of things only.
    object_mask_threshold, overlap_threshold: panoptic thresholds (official 0.8, 0.8).
    instance_topk: instance results per image (official TEST.DETECTIONS_PER_IMAGE = 100),
      before results with an empty mask are dropped.
    things_only: instance results of thing classes only; None: when panoptic_on (the
      official code's condition). Callers pass `things_only_for(task the model was trained
      on)`, so that instance results do not depend on which other results are asked for.
    postprocess_before_inference: the official SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE; the
      effective value is `postprocess_before_inference or panoptic_on or instance_on`, as in
      the official code. When False, semantic scores are computed at the padded size and then
      cropped and resized; otherwise the mask logits are cropped and resized first.

  Returns:
    One dict per image with, depending on the flags,
      "sem_seg": int32 `[H, W]` class index per pixel;
      "panoptic_seg": `(int32 [H, W] segment ids (0 = void), segments_info)`, segments_info a
        list of `{"id", "isthing", "category_id"}` (COCO panoptic style, contiguous class ids);
      "instances": `{"masks": bool [N, H, W], "scores": float32 [N], "classes": int32 [N]}`,
        no empty mask among them.
  """
  batch, num_queries, num_classes_plus_one = pred_logits.shape
  num_classes = num_classes_plus_one - 1
  if pred_masks.ndim != 4 or pred_masks.shape[:2] != (batch, num_queries):
    raise ValueError(f"postprocess: pred_masks {pred_masks.shape} must be [B, Q, h, w] with "
                     f"B, Q of pred_logits {pred_logits.shape}.")
  if len(image_sizes) != batch:
    raise ValueError(f"postprocess: {len(image_sizes)} image_sizes for a batch of {batch}.")
  output_sizes = image_sizes if output_sizes is None else output_sizes
  if len(output_sizes) != batch:
    raise ValueError(f"postprocess: {len(output_sizes)} output_sizes for a batch of {batch}.")
  things_only = panoptic_on if things_only is None else bool(things_only)
  if panoptic_on or (instance_on and things_only):
    isthing = _check_isthing(isthing, num_classes)
  before = postprocess_before_inference or panoptic_on or instance_on
  padded_size = (int(padded_size[0]), int(padded_size[1]))
  masks, padded_scores = _batched_stage(
      pred_logits, pred_masks, padded_size=padded_size,
      semantic_at_padded_size=semantic_on and not before)
  topk = min(instance_topk, num_queries * num_classes)
  logits = np.asarray(pred_logits)  # per image on the host: no eager slice to compile

  results = []
  for i in range(batch):
    image_size = tuple(int(s) for s in image_sizes[i])
    output_size = tuple(int(s) for s in output_sizes[i])
    if image_size[0] > padded_size[0] or image_size[1] > padded_size[1]:
      raise ValueError(f"postprocess: image_size {image_size} exceeds the padded size "
                       f"{padded_size}.")
    arrays = _crop(_image_stage(
        logits[i], masks[i], None if padded_scores is None else padded_scores[i],
        np.float32(object_mask_threshold), np.array(image_size, np.int32),
        np.array(output_size, np.int32), out_shape=output_bucket(padded_size, output_size),
        semantic_on=semantic_on, panoptic_on=panoptic_on, instance_on=instance_on,
        topk=topk), output_size)
    result = {}
    if semantic_on:
      result["sem_seg"] = arrays["sem_seg"]
    if panoptic_on:
      result["panoptic_seg"] = _panoptic_segments(
          arrays["panoptic"], isthing=isthing, overlap_threshold=overlap_threshold)
    if instance_on:
      result["instances"] = _instance_results(
          arrays["instances"], things_only=things_only, isthing=isthing, drop_empty=True)
    results.append(result)
  return results
