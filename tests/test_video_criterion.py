"""Tube matching and the video criterion (official mask2former_video matcher / criterion).

`test_matches_official_video_criterion` compares matching, losses and gradients with the
official `VideoHungarianMatcher` / `VideoSetCriterion`, transcribed in torch in
tests/video_reference.py (the official code needs Detectron2), given the same predictions,
targets and random points.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from m2f_jax import criterion
from m2f_jax.ops import bilinear_sample
from tests import reference

B, Q, M, T, K = 2, 5, 3, 2, 4


def _softplus(x):
  return np.logaddexp(0.0, x)


def _clip_case(seed=0, h=8, w=8, size=16):
  rng = np.random.RandomState(seed)
  outputs = {
      "pred_logits": jnp.asarray(rng.randn(B, Q, K + 1), jnp.float32),
      "pred_masks": jnp.asarray(3 * rng.randn(B, Q, T, h, w), jnp.float32),
      "aux_logits": jnp.asarray(rng.randn(2, B, Q, K + 1), jnp.float32),
      "aux_masks": jnp.asarray(3 * rng.randn(2, B, Q, T, h, w), jnp.float32),
  }
  masks = (rng.rand(B, M, T, size, size) > 0.6).astype(np.uint8)
  masks[0, 1, 1] = 0  # target 1 of clip 0 is absent from frame 1
  targets = {"labels": jnp.asarray(rng.randint(0, K, (B, M)), jnp.int32),
             "masks": jnp.asarray(masks),
             "valid": jnp.asarray([[True, True, True], [True, True, False]])}
  return outputs, targets


def test_tube_cost_is_official_and_matching_optimal():
  outputs, targets = _clip_case()
  points = jax.random.uniform(jax.random.PRNGKey(0), (B, 20, 2))
  kw = {"pred_logits": outputs["pred_logits"], "pred_masks": outputs["pred_masks"],
        "target_labels": targets["labels"], "target_masks": targets["masks"], "points": points,
        "cost_class": 2.0, "cost_mask": 5.0, "cost_dice": 5.0}
  cost = np.asarray(criterion.matching_cost(**kw))
  # Direct: each frame sampled at the same points, tubes flattened to T*P values.
  for b in range(B):
    pred = np.concatenate([np.asarray(bilinear_sample(
        outputs["pred_masks"][b, :, t][..., None], jnp.broadcast_to(points[b], (Q, 20, 2))))[..., 0]
                           for t in range(T)], axis=1)  # [Q, T*P]
    tgt = np.concatenate([np.asarray(bilinear_sample(
        targets["masks"][b, :, t][..., None], jnp.broadcast_to(points[b], (M, 20, 2))))[..., 0]
                          for t in range(T)], axis=1)  # [M, T*P]
    pred = pred.astype(np.float64)
    bce = (_softplus(-pred) @ tgt.T + _softplus(pred) @ (1 - tgt).T) / pred.shape[1]
    sig = 1 / (1 + np.exp(-pred))
    dice = 1 - (2 * sig @ tgt.T + 1) / (sig.sum(1)[:, None] + tgt.sum(1)[None] + 1)
    logits = np.asarray(outputs["pred_logits"][b], np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    cls = -probs[:, np.asarray(targets["labels"][b])]
    np.testing.assert_allclose(cost[b], 2 * cls + 5 * bce + 5 * dice, atol=1e-4)
  query_index, matched = criterion.hungarian_matching(target_valid=targets["valid"], **kw)
  for b in range(B):
    valid = np.asarray(targets["valid"][b])
    rows, cols = scipy.optimize.linear_sum_assignment(cost[b][:, valid])
    got = sum(cost[b, int(query_index[b, m]), m] for m in np.flatnonzero(valid))
    np.testing.assert_allclose(got, cost[b][:, valid][rows, cols].sum(), rtol=1e-5)
    assert np.asarray(matched[b]).tolist() == valid.tolist()
    assert len(set(np.asarray(query_index[b])[valid].tolist())) == valid.sum()


def test_one_frame_clips_equal_image_criterion():
  outputs, targets = _clip_case(seed=1)
  clip_out = {k: v[..., :1, :, :] if "masks" in k else v for k, v in outputs.items()}
  clip_tgt = dict(targets, masks=targets["masks"][:, :, :1])
  image_out = {k: v[..., 0, :, :] if "masks" in k else v for k, v in clip_out.items()}
  image_tgt = dict(targets, masks=clip_tgt["masks"][:, :, 0])
  kw = {"key": jax.random.PRNGKey(3), "num_masks": 5.0, "num_points": 32}
  video = criterion.set_criterion(outputs=clip_out, targets=clip_tgt, **kw)
  image = criterion.set_criterion(outputs=image_out, targets=image_tgt, **kw)
  assert video.keys() == image.keys()
  for k in image:
    np.testing.assert_allclose(np.asarray(video[k]), np.asarray(image[k]), rtol=1e-6,
                               err_msg=k)


def test_mask_losses_over_frames_normalized_by_instances():
  """Zero logits and empty targets: every sampled point (borders included, zero padding) has
  BCE log 2 and probability 1/2, so the losses are exact: sums over the N * T frame masks
  divided by the number of INSTANCES."""
  n, p = 3.0, 16
  outputs = {"pred_logits": jnp.zeros((1, 2, K + 1)),
             "pred_masks": jnp.zeros((1, 2, T, 8, 8), jnp.float32)}
  targets = {"labels": jnp.asarray([[0, 1]], jnp.int32),
             "masks": jnp.zeros((1, 2, T, 16, 16), jnp.uint8),
             "valid": jnp.asarray([[True, True]])}
  losses = criterion.set_criterion(outputs=outputs, targets=targets, key=jax.random.PRNGKey(0),
                                   num_masks=n, num_points=p)
  np.testing.assert_allclose(float(losses["loss_mask"]), 2 * T * np.log(2) / n, rtol=1e-5)
  dice = 1 - 1 / (p * 0.5 + 1)
  np.testing.assert_allclose(float(losses["loss_dice"]), 2 * T * dice / n, rtol=1e-5)


def test_absent_frames_and_no_object_label():
  """A target absent from a frame is an all-zero mask there (a perfect tube costs ~0 in that
  frame), and the official mapper's label for an instance absent from the last sampled frame,
  K ("no object"), is a matched target whose class target is no-object with weight 0.1."""
  big = 20.0
  pred_masks = np.full((1, 2, T, 8, 8), -big, np.float32)
  pred_masks[0, 0, 0] = big  # query 0: present in frame 0 only
  pred_masks[0, 1] = big  # query 1: everywhere
  masks = np.zeros((1, 2, T, 16, 16), np.uint8)
  masks[0, 0, 0] = 1  # target 0: absent from frame 1 (the last), so labelled K
  masks[0, 1] = 1
  logits = np.zeros((1, 2, K + 1), np.float32)
  outputs = {"pred_logits": jnp.asarray(logits), "pred_masks": jnp.asarray(pred_masks)}
  targets = {"labels": jnp.asarray([[K, 2]], jnp.int32), "masks": jnp.asarray(masks),
             "valid": jnp.asarray([[True, True]])}
  losses = criterion.set_criterion(outputs=outputs, targets=targets, key=jax.random.PRNGKey(0),
                                   num_masks=2.0, num_points=16)
  # ~0 up to the zero-padded borders of point sampling (there labels and logits shrink).
  assert float(losses["loss_dice"]) < 0.15
  present = masks.copy()
  present[0, 0, 1] = 1  # the same prediction against a target present in frame 1
  wrong = criterion.set_criterion(outputs=outputs, targets=dict(targets, masks=jnp.asarray(
      present)), key=jax.random.PRNGKey(0), num_masks=2.0, num_points=16)
  assert float(wrong["loss_dice"]) > 0.3 and float(wrong["loss_mask"]) > float(
      losses["loss_mask"]) + 2.0
  # Uniform logits: every nll is log(K+1); weights 0.1 (target K) and 1 (target 2).
  np.testing.assert_allclose(float(losses["loss_ce"]), np.log(K + 1), rtol=1e-6)
  points = jax.random.uniform(jax.random.PRNGKey(1), (1, 16, 2))
  query_index, matched = criterion.hungarian_matching(
      pred_logits=outputs["pred_logits"], pred_masks=outputs["pred_masks"],
      target_labels=targets["labels"], target_masks=targets["masks"],
      target_valid=targets["valid"], points=points)
  assert np.asarray(query_index).tolist() == [[0, 1]] and np.asarray(matched).all()


# ---- Parity with the official criterion (tests/video_reference.py) ----------------------------
#
# Both sides get the same predictions, targets and random point coordinates: the reference's
# `rand` pops the points `criterion.draw_all_points` drew, in the official order (per stage:
# the final prediction, then aux 0..L-1; per clip the matcher's points [1, P, 2]; then the
# loss points of the N * T frame masks, by clip, query and frame: first every mask's
# oversampled candidates, then every mask's random points).

PQ, PM, PL = 4, 5, 2  # queries, target slots and aux stages of the parity cases (B, T, K above)
PH, PW, PMASK_H, PMASK_W = 16, 24, 4, 6  # targets (padded frame size), predictions at H/4
NUM_POINTS = 20  # matcher: 20 per clip; loss: 15 uncertain of 60 oversampled + 5 random
OVERSAMPLE, IMPORTANCE = 3.0, 0.75
WEIGHTS = {"class_weight": 2.0, "mask_weight": 5.0, "dice_weight": 5.0}
# The matcher's weights. The official config gives it the loss weights; distinct values here
# show that each goes where it belongs.
COSTS = {"cost_class": 1.5, "cost_mask": 4.0, "cost_dice": 7.0}
NO_OBJECT = 0.1  # eos_coef
# Asserted (float32 on both sides): every loss term and the weighted total within LOSS_RTOL
# relative; per prediction tensor ||g - g_ref|| / ||g_ref|| within GRAD_RTOL; per stage and
# clip the cost matrix ||C - C_ref|| / ||C_ref|| within COST_RTOL; the same matched pairs.
# Largest measured over PARITY_CASES (with and without conftest's XLA flags): losses 2.2e-7,
# gradients 2.0e-7, costs 1.0e-7.
LOSS_RTOL, GRAD_RTOL, COST_RTOL = 1e-5, 1e-4, 1e-5
# valid: [B, M] real targets; absent: (clip, target, frame) with an empty mask. A target absent
# from the LAST frame gets the label K, as the official mapper's dummy annotation gives it.
PARITY_CASES = {
    # Clip 0 has 5 targets for 4 queries: one stays unmatched and counts in num_masks only.
    "more_targets_than_queries": {"valid": [[1, 1, 1, 1, 1], [0, 1, 0, 1, 0]],
                                  "absent": [(0, 1, 0), (0, 4, 1), (1, 3, 1)]},
    # Clip 1 has no target: its queries all learn "no object", its matcher sees 0 columns.
    "clip_without_target": {"valid": [[1, 0, 1, 1, 0], [0, 0, 0, 0, 0]],
                            "absent": [(0, 0, 0), (0, 2, 1)]},
}


def _parity_inputs(case, seed=0):
  """Predictions [B, Q, ...] with PL aux stages and clip targets [B, M, T, PH, PW]."""
  rng = np.random.default_rng(seed)
  outputs = {
      "pred_logits": rng.normal(size=(B, PQ, K + 1)).astype(np.float32) * 2,
      "pred_masks": rng.normal(size=(B, PQ, T, PMASK_H, PMASK_W)).astype(np.float32) * 3,
      "aux_logits": rng.normal(size=(PL, B, PQ, K + 1)).astype(np.float32) * 2,
      "aux_masks": rng.normal(size=(PL, B, PQ, T, PMASK_H, PMASK_W)).astype(np.float32) * 3,
  }
  masks = np.zeros((B, PM, T, PH, PW), np.uint8)
  for index in np.ndindex(B, PM, T):  # a random rectangle per target and frame
    y0, x0 = rng.integers(0, PH - 4), rng.integers(0, PW - 4)
    masks[index][y0:y0 + rng.integers(3, PH - y0 + 1), x0:x0 + rng.integers(3, PW - x0 + 1)] = 1
  for index in PARITY_CASES[case]["absent"]:
    masks[index] = 0
  valid = np.asarray(PARITY_CASES[case]["valid"], bool)
  labels = rng.integers(0, K, size=(B, PM))
  labels = np.where(valid & ~masks[:, :, -1].any(axis=(-2, -1)), K, labels).astype(np.int32)
  return outputs, {"labels": labels, "masks": masks, "valid": valid}


def _parity_loss(outputs, targets, key, num_masks):
  losses = criterion.set_criterion(
      outputs=outputs, targets=targets, key=key, num_masks=num_masks, no_object_weight=NO_OBJECT,
      num_points=NUM_POINTS, oversample_ratio=OVERSAMPLE, importance_sample_ratio=IMPORTANCE,
      **WEIGHTS, **COSTS)
  return losses["total_loss"], losses


_parity_value_and_grad = jax.jit(jax.value_and_grad(_parity_loss, has_aux=True))


@jax.jit
def _parity_matching(logits, masks, labels, target_masks, valid, match_points):
  """Cost matrices [S, B, Q, M] and matching [S, B, M] of each stage, on set_criterion's points."""
  def stage(lg, mk, pt):
    kw = dict(pred_logits=lg, pred_masks=mk, target_labels=labels, target_masks=target_masks,
              points=pt, **COSTS)
    return criterion.matching_cost(**kw), criterion.hungarian_matching(target_valid=valid, **kw)
  return jax.vmap(stage)(logits, masks, match_points)


def _ours(outputs, targets, key):
  """Losses, gradients, drawn points, and per stage (aux 0..L-1, final) costs and matches."""
  num_masks = criterion.count_masks(targets["valid"])  # one process: the local count
  (_, losses), grads = _parity_value_and_grad(outputs, targets, key, num_masks)
  points = jax.tree.map(np.asarray, criterion.draw_all_points(
      key, num_stages=PL + 1, batch_size=B, num_targets=PM * T, num_points=NUM_POINTS,
      matcher_num_points=NUM_POINTS, oversample_ratio=OVERSAMPLE,
      importance_sample_ratio=IMPORTANCE))
  logits = np.concatenate([outputs["aux_logits"], outputs["pred_logits"][None]])
  masks = np.concatenate([outputs["aux_masks"], outputs["pred_masks"][None]])
  cost, (query_index, matched) = jax.tree.map(np.asarray, _parity_matching(
      logits, masks, targets["labels"], targets["masks"], targets["valid"], points["match"]))
  return (jax.tree.map(np.asarray, losses), jax.tree.map(np.asarray, grads), points, cost,
          query_index, matched)


def _official(outputs, targets, points, query_index, matched):
  """tests/video_reference.py's criterion on the same points: losses, total, grads, matching.

  The loss points are queued in the order of OUR matching (query_index, matched [S, B, M]);
  the test asserts that the official matching is the same.
  """
  torch = reference.require_reference()
  from tests import video_reference  # pylint: disable=g-import-not-at-top (imports torch)
  slots = [np.flatnonzero(targets["valid"][b]) for b in range(B)]  # compact index -> slot
  official_targets = [
      {"labels": torch.from_numpy(targets["labels"][b, s].astype(np.int64)),
       "masks": torch.from_numpy(targets["masks"][b, s].astype(np.float32))}
      for b, s in enumerate(slots)]

  order = [PL] + list(range(PL))  # official: the final stage first, then aux 0..L-1
  queue = []
  for stage in order:
    queue += [points["match"][stage, b][None] for b in range(B)]
    pairs = sorted((b, query_index[stage, b, m], m) for b in range(B) for m in range(PM)
                   if matched[stage, b, m])  # by clip, then query
    frame_masks = [(b, m * T + t) for b, _, m in pairs for t in range(T)]
    queue.append(np.stack([points["oversampled"][stage, b, i] for b, i in frame_masks]))
    queue.append(np.stack([points["random"][stage, b, i] for b, i in frame_masks]))

  def rand(*size):
    want = queue.pop(0)
    assert tuple(size) == want.shape, (size, want.shape)
    return torch.from_numpy(np.array(want))

  leaves = {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in outputs.items()}
  weight = {"loss_ce": WEIGHTS["class_weight"], "loss_mask": WEIGHTS["mask_weight"],
            "loss_dice": WEIGHTS["dice_weight"]}  # the official weight_dict
  with torch.enable_grad():
    losses, official_matches = video_reference.video_set_criterion(
        {"pred_logits": leaves["pred_logits"], "pred_masks": leaves["pred_masks"],
         "aux_outputs": [{"pred_logits": leaves["aux_logits"][i],
                          "pred_masks": leaves["aux_masks"][i]} for i in range(PL)]},
        official_targets, num_classes=K, eos_coef=NO_OBJECT, num_points=NUM_POINTS,
        oversample_ratio=OVERSAMPLE, importance_sample_ratio=IMPORTANCE, rand=rand, **COSTS)
    total = sum(weight[name.rstrip("_0123456789")] * value for name, value in losses.items())
    total.backward()
  assert not queue, "the official criterion drew fewer random points than expected"
  losses = {name: float(value) for name, value in losses.items()}
  losses["total_loss"] = float(total)
  grads = {k: reference.to_numpy(v.grad) for k, v in leaves.items()}
  # Per stage in OUR order (aux 0..L-1, final): matched (clip, query, slot) and cost [Q, M_b].
  by_stage = dict(zip(order, official_matches))
  pairs = [{(b, int(i), int(slots[b][j])) for b, (rows, cols) in enumerate(by_stage[s][0])
            for i, j in zip(rows, cols)} for s in range(PL + 1)]
  costs = [by_stage[s][1] for s in range(PL + 1)]
  return losses, grads, pairs, costs, slots


def _relative(got, want) -> float:
  """||got - want|| / ||want|| (Frobenius), in float64."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def parity_differences(case: str) -> dict[str, float]:
  """Relative differences ours vs official of every loss, gradient and cost matrix.

  Asserts the same matched pairs on the way (a different matching makes every number moot).
  """
  outputs, targets = _parity_inputs(case)
  losses, grads, points, cost, query_index, matched = _ours(outputs, targets, jax.random.key(0))
  want_losses, want_grads, want_pairs, want_costs, slots = _official(
      outputs, targets, points, query_index, matched)
  diffs = {}
  for stage in range(PL + 1):
    got_pairs = {(b, int(query_index[stage, b, m]), m) for b in range(B) for m in range(PM)
                 if matched[stage, b, m]}
    assert got_pairs == want_pairs[stage], f"{case}: matching of stage {stage}"
    counts = np.minimum(targets["valid"].sum(axis=1), PQ)  # more targets than queries: Q
    np.testing.assert_array_equal(matched[stage].sum(axis=1), counts, err_msg=f"stage {stage}")
    for b in range(B):
      if slots[b].size:
        diffs[f"cost stage {stage} clip {b}"] = _relative(cost[stage, b][:, slots[b]],
                                                          want_costs[stage][b])
  assert set(losses) == set(want_losses) and len(losses) == 3 * (PL + 1) + 1
  for name, want in want_losses.items():
    diffs[name] = _relative(losses[name], want)
  for name, want in want_grads.items():
    assert np.abs(want).max() > 0, name
    diffs[f"grad {name}"] = _relative(grads[name], want)
  return diffs


@pytest.mark.parametrize("case", sorted(PARITY_CASES))
def test_matches_official_video_criterion(case):
  reference.require_reference()
  diffs = parity_differences(case)
  for name, diff in diffs.items():
    tol = (GRAD_RTOL if name.startswith("grad") else COST_RTOL if name.startswith("cost")
           else LOSS_RTOL)
    assert diff <= tol, (f"{case}: {name} differs from the official by {diff:.3g} relative "
                         f"(tolerance {tol:g}); all: "
                         + ", ".join(f"{k} {v:.2g}" for k, v in diffs.items()))
