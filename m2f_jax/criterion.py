"""Hungarian matching and the training losses of Mask2Former.

Follows the official `HungarianMatcher` (mask2former/modeling/matcher.py) and `SetCriterion`
(mask2former/modeling/criterion.py, with Detectron2's PointRend `point_sample` and
`get_uncertain_point_coords_with_randomness`), and computes what transformers'
`Mask2FormerHungarianMatcher` / `Mask2FormerLoss` compute when given the same random points
(tests/test_criterion.py).

  matcher   cost[b, q, m] = cost_mask * mean_P BCE(pred_q, tgt_m)
                          + cost_class * -softmax(logits_q)[label_m]
                          + cost_dice * dice(pred_q, tgt_m),
            both masks point-sampled at `matcher_num_points` uniform random points shared by
            every prediction and target of an image (predictions at their H/4 resolution,
            targets at full resolution, bilinearly), without gradient; assignment by
            `m2f_jax.matching.linear_sum_assignment`.
  loss_ce   cross-entropy over K + 1 classes, weight `no_object_weight` on "no object",
            weighted mean over all B * Q queries (torch's `F.cross_entropy(weight=...)`).
  loss_mask / loss_dice
            sigmoid BCE (mean over points) and dice of each matched (prediction, target) pair
            on `num_points` points: the `importance_sample_ratio` most uncertain (-|logit|) of
            `oversample_ratio * num_points` uniform points of the predicted mask, plus uniform
            random points; summed over pairs and divided by `num_masks`.
  deep supervision
            the same losses on every earlier decoder stage, each with its own matching and its
            own random points (Detectron2's names `loss_ce_0`, `loss_mask_0`, ... ).

Shapes are static: targets are padded to M entries with a `valid` flag (see the data
contract). Padding targets are never matched and count nowhere.

Video (the official mask2former_video `VideoHungarianMatcher` and `VideoSetCriterion`): the
same functions take clips, pred_masks [B, Q, T, h, w] and target masks [B, M, T, H, W] (one
label per target and clip), and then
  matcher   one set of `matcher_num_points` random points per clip, shared by every query,
            target and frame; the BCE / dice costs run over the T x P sampled values of each
            tube (BCE averaged over T * P), the class cost as for images.
  loss_mask / loss_dice
            each matched (query, target) pair becomes T single-frame pairs (N * T masks), each
            with its own importance-sampled points; the sums over the N * T masks are divided
            by `num_masks`, the number of INSTANCES (not N * T), as the official.
  absent frames
            a target absent from a frame has an all-zero mask in that frame: matching and the
            losses treat it as "nothing there" (the official `prepare_targets` zero-fills the
            frames where an instance has no annotation). An instance with an all-zero tube is
            still a target if the batch marks it valid. The official mapper labels an instance
            that is absent from the LAST sampled frame with its dummy class = K ("no object",
            `_get_dummy_anno(num_classes)` read by `prepare_targets` from the last frame): a
            label K is accepted here (class cost and cross-entropy of "no object", with its
            weight `no_object_weight`), so data pipelines reproduce that quirk by passing K.
With T = 1 everything (random draws included) equals the image computation.
tests/test_video_criterion.py compares the video matching and losses with the official ones
(transcribed in tests/video_reference.py) given the same random points.

transformers' port differs from the official code in (the test compares the two where they
agree; this module follows the official code):
  * names: `loss_cross_entropy` for the official `loss_ce`.
  * matcher targets: the official matcher samples the target masks padded to the batch's
    image size (`prepare_targets`); transformers' matcher samples each image's unpadded
    `mask_labels` (normalized coordinates over a different extent) while its loss pads them
    to the largest in the batch, so matcher and loss disagree when image sizes differ.
  * matcher cost: the BCE terms are divided by the number of points before the matmuls (the
    official divides after; rounding only); NaN/inf costs become the float maximum (the
    official lets scipy raise).
  * order of operations: the mask losses are computed before the class loss and aux stages
    recurse through `forward` (num_masks recomputed); no effect on values or random draws.

This module differs from the official code in:
  * `num_masks`: the official all-reduces the count, divides by the world size and clamps at
    1 (a per-device mean; DDP then averages the gradients). Here the loss of the whole
    (global) batch is divided by `num_masks`, the caller's count over the global batch,
    clamped at 1 (`count_masks` gives the local count; psum it). The gradient is the
    official one unless the global count is below the number of devices.
  * `loss_ce` is a weighted mean over the batch given here; under DDP the official takes it
    per device and averages, which differs slightly when devices have different numbers of
    matched queries.
  * non-finite matching costs: `m2f_jax.matching` replaces them by a cost above every finite
    one (a diverged prediction is matched last) instead of failing.
  * random draws: the official draws uniform points per image for the matcher and per
    matched pair (by image, then query) for the loss; here per image and per target slot
    [B, M], from an explicit PRNG key (`draw_points`): the same distribution.
  * the target masks are converted to float32 once per step and shared by all stages.
"""

import jax
import jax.numpy as jnp

from m2f_jax import matching
from m2f_jax.ops import bilinear_sample
from m2f_jax.ops import top_k_indices

_HIGHEST = jax.lax.Precision.HIGHEST


def _bce_with_logits(logits: jnp.ndarray, labels) -> jnp.ndarray:
  """Elementwise torch `F.binary_cross_entropy_with_logits` (same stable formula)."""
  return (jnp.maximum(logits, 0.0) - logits * labels
          + jnp.log1p(jnp.exp(-jnp.abs(logits))))


def count_masks(target_valid: jnp.ndarray) -> jnp.ndarray:
  """The number of real targets in (this host's or device's part of) the batch, float32.

  Sum it over the global batch (e.g. `jax.lax.psum`, or just call this on the global array
  under jit) and pass it to `set_criterion` as `num_masks`.
  """
  return jnp.sum(target_valid.astype(jnp.float32))


def _num_point_split(num_points: int, oversample_ratio: float,
                     importance_sample_ratio: float) -> tuple[int, int, int]:
  """(oversampled, uncertain, random) point counts, as Detectron2 computes them."""
  if oversample_ratio < 1:
    raise ValueError(f"criterion: oversample_ratio={oversample_ratio} must be >= 1.")
  if not 0 <= importance_sample_ratio <= 1:
    raise ValueError(f"criterion: importance_sample_ratio={importance_sample_ratio} must be "
                     "in [0, 1].")
  num_oversampled = int(num_points * oversample_ratio)
  num_uncertain = int(importance_sample_ratio * num_points)
  return num_oversampled, num_uncertain, num_points - num_uncertain


def draw_points(key: jax.Array, *, batch_size: int, num_targets: int, num_points: int,
                matcher_num_points: int, oversample_ratio: float,
                importance_sample_ratio: float) -> dict[str, jnp.ndarray]:
  """Uniform random point coordinates (x, y) in [0, 1) for one decoder stage.

  Returns a dict of float32 arrays:
    "match":       [B, P_match, 2]  the matcher's points, shared within an image.
    "oversampled": [B, M, P_over, 2]  candidates of the importance sampling, per target.
    "random":      [B, M, P_rand, 2]  the uniform part of the loss points, per target.
  """
  num_oversampled, _, num_random = _num_point_split(num_points, oversample_ratio,
                                                    importance_sample_ratio)
  key_match, key_over, key_random = jax.random.split(key, 3)
  return {
      "match": jax.random.uniform(key_match, (batch_size, matcher_num_points, 2)),
      "oversampled": jax.random.uniform(key_over, (batch_size, num_targets, num_oversampled, 2)),
      "random": jax.random.uniform(key_random, (batch_size, num_targets, num_random, 2)),
  }


def matching_cost(*, pred_logits: jnp.ndarray, pred_masks: jnp.ndarray,
                  target_labels: jnp.ndarray, target_masks: jnp.ndarray,
                  points: jnp.ndarray, cost_class: float, cost_mask: float,
                  cost_dice: float) -> jnp.ndarray:
  """The official matcher's cost matrix (no gradient flows through it).

  Args:
    pred_logits: [B, Q, K+1] class logits.
    pred_masks: [B, Q, h, w] mask logits, or [B, Q, T, h, w] for clips.
    target_labels: int [B, M] in [0, K] (K: "no object", see the module docstring).
    target_masks: [B, M, H, W] binary (any numeric dtype), or [B, M, T, H, W] for clips.
    points: [B, P, 2] (x, y) in [0, 1], shared by all masks (and frames) of an image (clip).
    cost_class, cost_mask, cost_dice: weights of the three costs.

  Returns:
    [B, Q, M] float32 cost (padding columns hold costs of whatever they contain).
  """
  pred_logits = jax.lax.stop_gradient(pred_logits).astype(jnp.float32)
  pred_masks = jax.lax.stop_gradient(pred_masks).astype(jnp.float32)
  batch_size, num_targets = target_labels.shape
  num_points = points.shape[-2]
  probs = jax.nn.softmax(pred_logits, axis=-1)  # [B, Q, K+1]
  labels = jnp.clip(target_labels, 0, probs.shape[-1] - 1).astype(jnp.int32)
  class_cost = -jnp.take_along_axis(probs, labels[:, None, :], axis=-1)  # [B, Q, M]

  if pred_masks.ndim == 5:  # clips: the official video matcher, costs over T x P values
    _, num_queries, num_frames, height, width = pred_masks.shape
    # [B, h, w, T*Q] -> [B, P, T, Q] -> [B, T*P, Q]
    pred = bilinear_sample(jnp.transpose(pred_masks, (0, 3, 4, 2, 1)).reshape(
        batch_size, height, width, num_frames * num_queries), points)
    pred = jnp.transpose(pred.reshape(batch_size, num_points, num_frames, num_queries),
                         (0, 2, 1, 3)).reshape(batch_size, num_frames * num_points, num_queries)
    target_points = jnp.broadcast_to(points[:, None, None],
                                     (batch_size, num_targets, num_frames, num_points, 2))
    tgt = bilinear_sample(target_masks[..., None], target_points)[..., 0].reshape(
        batch_size, num_targets, num_frames * num_points)  # [B, M, T*P]
    num_points = num_frames * num_points
  else:
    # Predictions: queries as channels, one gather per point.
    pred = bilinear_sample(jnp.transpose(pred_masks, (0, 2, 3, 1)), points)  # [B, P, Q]
    # Targets at their own (full) resolution, the same points for every target of an image.
    target_points = jnp.broadcast_to(points[:, None], (batch_size, num_targets, num_points, 2))
    tgt = bilinear_sample(target_masks[..., None],
                          target_points)[..., 0]  # [B, M, P]

  pos = _bce_with_logits(pred, 1.0)  # [B, P, Q]
  neg = _bce_with_logits(pred, 0.0)
  mask_cost = (jnp.einsum("BPQ,BMP->BQM", pos, tgt, precision=_HIGHEST)
               + jnp.einsum("BPQ,BMP->BQM", neg, 1.0 - tgt, precision=_HIGHEST)) / num_points

  prob_points = jax.nn.sigmoid(pred)  # [B, P, Q]
  numerator = 2.0 * jnp.einsum("BPQ,BMP->BQM", prob_points, tgt, precision=_HIGHEST)
  denominator = prob_points.sum(axis=1)[:, :, None] + tgt.sum(axis=-1)[:, None, :]
  dice_cost = 1.0 - (numerator + 1.0) / (denominator + 1.0)  # [B, Q, M]

  return cost_mask * mask_cost + cost_class * class_cost + cost_dice * dice_cost


def assignment_to_targets(rows: jnp.ndarray, cols: jnp.ndarray,
                          target_valid: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Turns the solver's (rows, cols) [B, min(Q, M)] into per-target form.

  Returns:
    query_index: int32 [B, M], the query matched with each target (0 where unmatched).
    matched: bool [B, M], True for the real targets that have a query.
  """
  batch_size, num_targets = target_valid.shape
  batch = jnp.arange(batch_size)[:, None]
  query_index = jnp.zeros((batch_size, num_targets), jnp.int32).at[batch, cols].set(
      rows.astype(jnp.int32))
  assigned = jnp.zeros((batch_size, num_targets), bool).at[batch, cols].set(True)
  return query_index, assigned & target_valid.astype(bool)


def _solve(cost: jnp.ndarray, target_valid: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Solves [N, Q, M] costs; returns per-target (query_index, matched), each [N, M]."""
  valid = target_valid.astype(bool)
  rows, cols = matching.linear_sum_assignment(jax.lax.stop_gradient(cost), valid)
  return assignment_to_targets(rows, cols, valid)


def hungarian_matching(*, pred_logits: jnp.ndarray, pred_masks: jnp.ndarray,
                       target_labels: jnp.ndarray, target_masks: jnp.ndarray,
                       target_valid: jnp.ndarray, points: jnp.ndarray, cost_class: float = 2.0,
                       cost_mask: float = 5.0,
                       cost_dice: float = 5.0) -> tuple[jnp.ndarray, jnp.ndarray]:
  """The official `HungarianMatcher` for one decoder stage, batched.

  Args: see `matching_cost`; target_valid: bool [B, M].

  Returns:
    query_index: int32 [B, M], the query assigned to each target.
    matched: bool [B, M], True where a real target has a query (all real targets if Q >= M).
  """
  cost = matching_cost(pred_logits=pred_logits, pred_masks=pred_masks,
                       target_labels=target_labels, target_masks=target_masks, points=points,
                       cost_class=cost_class, cost_mask=cost_mask, cost_dice=cost_dice)
  return _solve(cost, target_valid)


def classification_loss(*, pred_logits: jnp.ndarray, target_labels: jnp.ndarray,
                        query_index: jnp.ndarray, matched: jnp.ndarray,
                        no_object_weight: float) -> jnp.ndarray:
  """Official `loss_labels`: weighted cross-entropy over K + 1 classes, a scalar.

  Unmatched queries have the target "no object" (index K) with weight `no_object_weight`;
  the result is sum(weight * nll) / sum(weight) over all B * Q queries.
  """
  batch_size, num_queries, num_classes_1 = pred_logits.shape
  no_object = num_classes_1 - 1
  batch = jnp.arange(batch_size)[:, None]
  # Unmatched targets write out of bounds and are dropped.
  scatter_index = jnp.where(matched, query_index, num_queries)
  target_classes = jnp.full((batch_size, num_queries), no_object, jnp.int32).at[
      batch, scatter_index].set(target_labels.astype(jnp.int32), mode="drop")  # [B, Q]
  log_probs = jax.nn.log_softmax(pred_logits.astype(jnp.float32), axis=-1)  # [B, Q, K+1]
  nll = -jnp.take_along_axis(log_probs, target_classes[..., None], axis=-1)[..., 0]  # [B, Q]
  weight = jnp.where(target_classes == no_object, no_object_weight, 1.0)  # [B, Q]
  return jnp.sum(weight * nll) / jnp.sum(weight)


def mask_losses(*, pred_masks: jnp.ndarray, target_masks: jnp.ndarray,
                query_index: jnp.ndarray, matched: jnp.ndarray, oversampled_points: jnp.ndarray,
                random_points: jnp.ndarray, num_uncertain_points: int,
                num_masks) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Official `loss_masks`: point-sampled sigmoid BCE and dice of the matched pairs.

  Args:
    pred_masks: [B, Q, h, w] mask logits.
    target_masks: [B, M, H, W] binary.
    query_index, matched: [B, M] from `hungarian_matching`.
    oversampled_points: [B, M, P_over, 2] uniform candidates for the importance sampling.
    random_points: [B, M, P_rand, 2] uniform points added to the uncertain ones.
    num_uncertain_points: how many of the candidates to keep (the most uncertain).
    num_masks: the normalizer (already clamped by the caller).

  Returns:
    (loss_mask, loss_dice) scalars: sums over matched pairs divided by num_masks.
  """
  # [B, M, h, w, 1]: the prediction matched with each target (padding targets: any query).
  src = jnp.take_along_axis(pred_masks.astype(jnp.float32),
                            query_index[:, :, None, None], axis=1)[..., None]
  # Detectron2's get_uncertain_point_coords_with_randomness, uncertainty = -|logit|.
  coarse = bilinear_sample(jax.lax.stop_gradient(src), oversampled_points)[..., 0]  # [B,M,Po]
  top = top_k_indices(-jnp.abs(coarse), num_uncertain_points)  # [B, M, k]
  uncertain_points = jnp.take_along_axis(oversampled_points, top[..., None], axis=-2)
  points = jax.lax.stop_gradient(
      jnp.concatenate([uncertain_points, random_points], axis=-2))  # [B, M, P, 2]

  labels = jax.lax.stop_gradient(bilinear_sample(
      target_masks[..., None], points)[..., 0])  # [B, M, P]
  logits = bilinear_sample(src, points)[..., 0]  # [B, M, P]

  bce = jnp.mean(_bce_with_logits(logits, labels), axis=-1)  # [B, M]
  probs = jax.nn.sigmoid(logits)
  numerator = 2.0 * jnp.sum(probs * labels, axis=-1)
  denominator = jnp.sum(probs, axis=-1) + jnp.sum(labels, axis=-1)
  dice = 1.0 - (numerator + 1.0) / (denominator + 1.0)  # [B, M]
  loss_mask = jnp.sum(jnp.where(matched, bce, 0.0)) / num_masks
  loss_dice = jnp.sum(jnp.where(matched, dice, 0.0)) / num_masks
  return loss_mask, loss_dice


def semantic_loss(*, semantic_logits: jnp.ndarray, target_labels: jnp.ndarray,
                  target_masks: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
  """The dense auxiliary class loss of `model.semantic_head` (not in the official criterion).

  Per-pixel cross-entropy of `semantic_logits` [B, (T,) h, w, K] against the class
  distribution of the targets at that resolution: each low-resolution pixel's target is the
  fraction of its block of full-resolution pixels that each class's target masks cover
  (`target_masks` [B, M, (T,) H, W] with H, W multiples of h, w; `target_labels` [B, M] in
  0..K-1, `valid` [B, M]). Pixels no valid target covers (void, padding) add nothing; the sum
  is divided by the covered area of the (global) batch. Labels >= K (e.g. the video
  "no object" relabelling) count as void.
  """
  num_classes = semantic_logits.shape[-1]
  h, w = semantic_logits.shape[-3:-1]
  big_h, big_w = target_masks.shape[-2:]
  if big_h % h or big_w % w or target_masks.shape[:2] != target_labels.shape:
    raise ValueError(f"semantic_loss: target masks {target_masks.shape} [B, M, (T,) H, W] "
                     f"must tile the logits {semantic_logits.shape} [B, (T,) h, w, K]")
  blocks = target_masks.reshape(*target_masks.shape[:-2], h, big_h // h, w, big_w // w)
  cover = jnp.mean(blocks, axis=(-3, -1), dtype=jnp.float32)  # [B, M, (T,) h, w]
  onehot = jax.nn.one_hot(target_labels, num_classes) * valid[..., None]  # [B, M, K]
  cover = jnp.moveaxis(cover, 1, -1)  # [B, (T,) h, w, M]
  target = jnp.einsum("b...m,bmk->b...k", cover, onehot)  # [B, (T,) h, w, K]
  log_p = jax.nn.log_softmax(semantic_logits.astype(jnp.float32), axis=-1)
  # The covered area is a sum of block fractions (>= 1 / block size when not 0): the floor
  # only guards the batch where nothing is covered (the loss is then 0).
  return -jnp.sum(target * log_p) / jnp.maximum(jnp.sum(target), 1e-6)


def draw_all_points(key: jax.Array, *, num_stages: int, **kwargs) -> dict[str, jnp.ndarray]:
  """`draw_points` for each of `num_stages` decoder stages: arrays with a leading [S] axis.

  Stage s (in the order of `set_criterion`'s stacking: aux stages 0..L-1, then the final
  prediction) uses `jax.random.split(key, num_stages)[s]`.
  """
  return jax.vmap(lambda k: draw_points(k, **kwargs))(jax.random.split(key, num_stages))


def set_criterion(*, outputs: dict, targets: dict, key: jax.Array, num_masks,
                  no_object_weight: float = 0.1, class_weight: float = 2.0,
                  mask_weight: float = 5.0, dice_weight: float = 5.0,
                  cost_class: float | None = None, cost_mask: float | None = None,
                  cost_dice: float | None = None, num_points: int = 12544,
                  matcher_num_points: int | None = None, oversample_ratio: float = 3.0,
                  importance_sample_ratio: float = 0.75,
                  deep_supervision: bool = True,
                  with_matching: bool = False) -> dict[str, jnp.ndarray]:
  """Official `SetCriterion` (labels + masks losses) with deep supervision.

  Args:
    outputs: the model's dict: "pred_logits" [B, Q, K+1], "pred_masks" [B, Q, h, w], and
      (used when `deep_supervision`) "aux_logits" [L, B, Q, K+1], "aux_masks" [L, B, Q, h, w].
      Clips (the video model): masks [B, Q, T, h, w] and [L, B, Q, T, h, w].
    targets: "labels" int [B, M], "masks" [B, M, H, W] binary, "valid" bool [B, M]; clips:
      "masks" [B, M, T, H, W], zero in the frames where an instance is absent.
    key: PRNG key for every random point (see `draw_all_points`).
    num_masks: number of real targets in the GLOBAL batch (`count_masks`, summed over
      devices); clamped at 1 here.
    no_object_weight: cross-entropy weight of the "no object" class (official eos_coef).
    class_weight, mask_weight, dice_weight: loss weights in `total_loss`.
    cost_class, cost_mask, cost_dice: matcher weights (default: the loss weights, as the
      official config uses the same values).
    num_points: points per matched mask in the loss (official TRAIN_NUM_POINTS).
    matcher_num_points: points per image in the matcher (default: num_points, as official).
    oversample_ratio, importance_sample_ratio: the importance sampling of the loss points.
    deep_supervision: also apply the losses to every aux stage.
    with_matching: also return "matching": {"query_index", "matched"} [S, B, M], the
      assignment of each stage (aux 0..L-1, then the final one; see `hungarian_matching`).

  Returns:
    {"loss_ce", "loss_mask", "loss_dice"} of the final prediction, "loss_ce_{i}",
    "loss_mask_{i}", "loss_dice_{i}" for aux stage i (unweighted, Detectron2's names), and
    "total_loss" = the weighted sum of all of them. float32 scalars.
  """
  cost_class = class_weight if cost_class is None else cost_class
  cost_mask = mask_weight if cost_mask is None else cost_mask
  cost_dice = dice_weight if cost_dice is None else cost_dice
  matcher_num_points = num_points if matcher_num_points is None else matcher_num_points

  pred_logits, pred_masks = outputs["pred_logits"], outputs["pred_masks"]
  if deep_supervision and "aux_logits" in outputs:
    logits = jnp.concatenate([outputs["aux_logits"], pred_logits[None]], axis=0)  # [S,B,Q,K+1]
    masks = jnp.concatenate([outputs["aux_masks"], pred_masks[None]], axis=0)  # [S,B,Q,h,w]
  else:
    logits, masks = pred_logits[None], pred_masks[None]
  num_stages, batch_size, num_queries = logits.shape[:3]

  labels, valid = targets["labels"], targets["valid"].astype(bool)
  target_masks = targets["masks"]  # [B, M, (T,) H, W] uint8/bool, sampled without a float copy
  num_targets = labels.shape[1]
  clips = pred_masks.ndim == 5
  num_frames = pred_masks.shape[2] if clips else 1
  frames = "T, " if clips else ""
  if (masks.shape[1:3] != (batch_size, num_queries) or labels.shape != valid.shape
      or target_masks.shape[:2] != labels.shape or labels.shape[0] != batch_size
      or pred_masks.ndim not in (4, 5) or target_masks.ndim != pred_masks.ndim
      or (clips and target_masks.shape[2] != num_frames)):
    raise ValueError(
        f"set_criterion: inconsistent shapes: pred_logits {pred_logits.shape} [B, Q, K+1], "
        f"pred_masks {pred_masks.shape} [B, Q, {frames}h, w], targets labels {labels.shape} "
        f"[B, M], masks {targets['masks'].shape} [B, M, {frames}H, W], valid "
        f"{targets['valid'].shape} [B, M].")
  _, num_uncertain, _ = _num_point_split(num_points, oversample_ratio, importance_sample_ratio)
  # The loss points: per target (images) or per target and frame (clips: N * T masks).
  points = draw_all_points(key, num_stages=num_stages, batch_size=batch_size,
                           num_targets=num_targets * num_frames, num_points=num_points,
                           matcher_num_points=matcher_num_points,
                           oversample_ratio=oversample_ratio,
                           importance_sample_ratio=importance_sample_ratio)
  num_masks = jnp.maximum(jnp.asarray(num_masks, jnp.float32), 1.0)

  # Matching: costs per stage, then one solver call for all stages and images.
  cost = jax.vmap(lambda lg, mk, pt: matching_cost(
      pred_logits=lg, pred_masks=mk, target_labels=labels, target_masks=target_masks,
      points=pt, cost_class=cost_class, cost_mask=cost_mask, cost_dice=cost_dice))(
          logits, masks, points["match"])  # [S, B, Q, M]
  stage_valid = jnp.broadcast_to(valid, (num_stages, batch_size, num_targets))
  query_index, matched = _solve(cost.reshape(num_stages * batch_size, num_queries, num_targets),
                                stage_valid.reshape(num_stages * batch_size, num_targets))
  query_index = query_index.reshape(num_stages, batch_size, num_targets)
  matched = matched.reshape(num_stages, batch_size, num_targets)

  # Clips: the N * T single-frame masks of the official video criterion, as images of
  # Q * T predictions and M * T targets (target m, frame t at m * T + t).
  frame_masks = target_masks.reshape(batch_size, num_targets * num_frames,
                                     *target_masks.shape[-2:])  # [B, M*T, H, W]

  def stage_losses(lg, mk, qi, mt, over, rand):
    loss_ce = classification_loss(pred_logits=lg, target_labels=labels, query_index=qi,
                                  matched=mt, no_object_weight=no_object_weight)
    if clips:
      mk = mk.reshape(batch_size, num_queries * num_frames, *mk.shape[-2:])  # [B, Q*T, h, w]
      qi = (qi[:, :, None] * num_frames + jnp.arange(num_frames, dtype=qi.dtype)).reshape(
          batch_size, num_targets * num_frames)  # [B, M*T]
      mt = jnp.repeat(mt, num_frames, axis=1)
    loss_mask, loss_dice = mask_losses(pred_masks=mk, target_masks=frame_masks,
                                       query_index=qi, matched=mt, oversampled_points=over,
                                       random_points=rand, num_uncertain_points=num_uncertain,
                                       num_masks=num_masks)
    return loss_ce, loss_mask, loss_dice

  loss_ce, loss_mask, loss_dice = jax.vmap(stage_losses)(
      logits, masks, query_index, matched, points["oversampled"], points["random"])  # [S] each

  losses = {}
  for stage in range(num_stages):
    suffix = "" if stage == num_stages - 1 else f"_{stage}"
    losses[f"loss_ce{suffix}"] = loss_ce[stage]
    losses[f"loss_mask{suffix}"] = loss_mask[stage]
    losses[f"loss_dice{suffix}"] = loss_dice[stage]
  losses["total_loss"] = (class_weight * jnp.sum(loss_ce) + mask_weight * jnp.sum(loss_mask)
                          + dice_weight * jnp.sum(loss_dice))
  if with_matching:
    losses["matching"] = {"query_index": query_index, "matched": matched}
  return losses
