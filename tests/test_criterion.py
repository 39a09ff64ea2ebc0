"""Matcher and losses against transformers' Mask2FormerHungarianMatcher / Mask2FormerLoss.

Both sides get the same predictions, targets and random point coordinates: transformers'
`torch.rand` is replaced by a queue of the points `criterion.draw_all_points` draws, reordered
to transformers' order (per stage: final first, then aux 0..L-1; per image the matcher's
points; then the loss points per matched pair, by image and query). Values, matching indices
and gradients are compared.

Where transformers differs from the official code (see m2f_jax/criterion.py's docstring), the
inputs are in the configuration where they agree: every image's targets have the same
(padded) size, costs are finite, one process (num_masks = the local count).
"""

import unittest.mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2f_jax import criterion
from tests import reference

B, Q, K, M = 2, 6, 4, 4
L = 2  # aux stages
H, W = 16, 24  # targets (padded image size)
MASK_H, MASK_W = 4, 6  # predictions at H/4
NUM_POINTS = 20  # 15 uncertain of 60 oversampled + 5 random
OVERSAMPLE, IMPORTANCE = 3.0, 0.75
WEIGHTS = dict(class_weight=2.0, mask_weight=5.0, dice_weight=5.0)
NO_OBJECT = 0.1
# Agreement with transformers asserted below (float32), the figures README "Training" states:
# each loss term (and the total) within a relative LOSS_RTOL, each gradient entry within
# GRAD_ATOL. Largest differences measured over CASES: 2.1e-7 relative, 6e-8 absolute.
LOSS_RTOL = 5e-7
GRAD_ATOL = 2e-7
VALID_PATTERNS = {
    "3_and_1": [[True, False, True, True], [False, True, False, False]],
    "2_and_0": [[True, True, False, False], [False, False, False, False]],
}
# Fewer queries than target slots (Q = 3 < M = 6). "5_and_2": image 0 has more real targets
# than queries (only the 3 best are matched, the other 2 count in num_masks only); "3_and_1":
# every real target is matched and the solver also sees padding columns beyond Q.
FEW_QUERIES = 3
FEW_QUERY_PATTERNS = {
    "5_and_2": [[True, True, False, True, True, True], [False, True, False, False, True, False]],
    "3_and_1": [[False, True, True, False, False, True], [False, False, False, True, False, False]],
}
CASES = ([(f"q{Q}_m{M}_{name}", Q, valid) for name, valid in sorted(VALID_PATTERNS.items())]
         + [(f"q{FEW_QUERIES}_m6_{name}", FEW_QUERIES, valid)
            for name, valid in sorted(FEW_QUERY_PATTERNS.items())])


def _point_kwargs(num_targets):
  return dict(batch_size=B, num_targets=num_targets, num_points=NUM_POINTS,
              matcher_num_points=NUM_POINTS, oversample_ratio=OVERSAMPLE,
              importance_sample_ratio=IMPORTANCE)


def _inputs(valid, seed=0, num_queries=Q):
  """Random predictions [B, Q, ...] and targets [B, M, ...], M = len(valid[0])."""
  num_targets = len(valid[0])
  rng = np.random.default_rng(seed)
  outputs = {
      "pred_logits": rng.normal(size=(B, num_queries, K + 1)).astype(np.float32) * 2,
      "pred_masks": rng.normal(size=(B, num_queries, MASK_H, MASK_W)).astype(np.float32) * 3,
      "aux_logits": rng.normal(size=(L, B, num_queries, K + 1)).astype(np.float32) * 2,
      "aux_masks": rng.normal(size=(L, B, num_queries, MASK_H, MASK_W)).astype(np.float32) * 3,
  }
  masks = np.zeros((B, num_targets, H, W), np.uint8)
  for b in range(B):
    for m in range(num_targets):  # a random rectangle per target, also in padding slots
      y0, x0 = rng.integers(0, H - 4), rng.integers(0, W - 4)
      masks[b, m, y0:y0 + rng.integers(3, H - y0 + 1), x0:x0 + rng.integers(3, W - x0 + 1)] = 1
  targets = {"labels": rng.integers(0, K, size=(B, num_targets)).astype(np.int32),
             "masks": masks, "valid": np.asarray(valid, bool)}
  return outputs, targets


def _loss_fn(outputs, targets, key, num_masks):
  losses = criterion.set_criterion(
      outputs=outputs, targets=targets, key=key, num_masks=num_masks, no_object_weight=NO_OBJECT,
      num_points=NUM_POINTS, oversample_ratio=OVERSAMPLE, importance_sample_ratio=IMPORTANCE,
      **WEIGHTS)
  return losses["total_loss"], losses


_value_and_grad = jax.jit(jax.value_and_grad(_loss_fn, has_aux=True))
_matching = jax.jit(lambda **kw: criterion.hungarian_matching(**kw, cost_class=2.0,
                                                              cost_mask=5.0, cost_dice=5.0))


def _stage_arrays(outputs, stage):
  """(logits, masks) of stage s in set_criterion's order: aux 0..L-1, then the final one."""
  if stage == L:
    return outputs["pred_logits"], outputs["pred_masks"]
  return outputs["aux_logits"][stage], outputs["aux_masks"][stage]


def _run_jax(valid, seed=0, num_queries=Q):
  outputs, targets = _inputs(valid, seed, num_queries)
  key = jax.random.key(seed)
  num_masks = criterion.count_masks(targets["valid"])  # one process: the local count
  (_, losses), grads = _value_and_grad(outputs, targets, key, num_masks)
  points = jax.tree.map(np.asarray, criterion.draw_all_points(
      key, num_stages=L + 1, **_point_kwargs(targets["valid"].shape[1])))
  matches = []
  for stage in range(L + 1):
    logits, masks = _stage_arrays(outputs, stage)
    query_index, matched = _matching(
        pred_logits=logits, pred_masks=masks, target_labels=targets["labels"],
        target_masks=targets["masks"], target_valid=targets["valid"],
        points=points["match"][stage])
    matches.append((np.asarray(query_index), np.asarray(matched)))
  return outputs, targets, jax.tree.map(np.asarray, losses), grads, points, matches


def _fake_rand(torch, queue):
  def rand(*size, **kwargs):
    del kwargs
    want = queue.pop(0)
    assert tuple(size) == want.shape, (size, want.shape)
    return torch.from_numpy(np.array(want))
  return rand


def _run_hf(outputs, targets, points, matches):
  """transformers' matcher per stage and its loss with grads, on the same points."""
  torch = reference.require_reference()
  from transformers.models.mask2former import modeling_mask2former as hf
  from transformers import Mask2FormerConfig
  config = Mask2FormerConfig(num_labels=K, no_object_weight=NO_OBJECT, train_num_points=NUM_POINTS,
                             oversample_ratio=OVERSAMPLE, importance_sample_ratio=IMPORTANCE,
                             **WEIGHTS)
  hf_weights = {"loss_cross_entropy": WEIGHTS["class_weight"],
                "loss_mask": WEIGHTS["mask_weight"], "loss_dice": WEIGHTS["dice_weight"]}
  loss_module = hf.Mask2FormerLoss(config, hf_weights)
  num_targets = targets["valid"].shape[1]
  slots = [np.flatnonzero(targets["valid"][b]) for b in range(B)]  # compact index -> slot
  mask_labels = [torch.from_numpy(targets["masks"][b, s].astype(np.float32)) for b, s in
                 enumerate(slots)]
  class_labels = [torch.from_numpy(targets["labels"][b, s].astype(np.int64)) for b, s in
                  enumerate(slots)]

  hf_order = [L] + list(range(L))  # transformers: final stage first, then aux 0..L-1
  queue, hf_matches = [], []
  for stage in hf_order:
    query_index, matched = matches[stage]
    match_points = [points["match"][stage, b][None] for b in range(B)]
    pairs = sorted((b, query_index[b, m], m) for b in range(B) for m in range(num_targets)
                   if matched[b, m])
    over = np.stack([points["oversampled"][stage, b, m] for b, _, m in pairs])
    rand = np.stack([points["random"][stage, b, m] for b, _, m in pairs])
    queue += match_points + [over, rand]
    # The matcher alone, for the indices.
    logits, masks = _stage_arrays(outputs, stage)
    with unittest.mock.patch.object(torch, "rand", _fake_rand(torch, list(match_points))):
      indices = loss_module.matcher(torch.from_numpy(masks), torch.from_numpy(logits),
                                    mask_labels, class_labels)
    hf_matches.append({(b, int(i), int(slots[b][j])) for b, (rows, cols) in enumerate(indices)
                       for i, j in zip(rows, cols)})

  leaves = {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in outputs.items()}
  with torch.enable_grad(), unittest.mock.patch.object(torch, "rand", _fake_rand(torch, queue)):
    aux = [{"masks_queries_logits": leaves["aux_masks"][i],
            "class_queries_logits": leaves["aux_logits"][i]} for i in range(L)]
    losses = loss_module(leaves["pred_masks"], leaves["pred_logits"], mask_labels, class_labels,
                         auxiliary_predictions=aux)
    total = sum(hf_weights[name.rstrip("_0123456789")] * value for name, value in losses.items())
    total.backward()
  assert not queue, "transformers drew fewer random points than expected"
  losses = {name.replace("loss_cross_entropy", "loss_ce"): float(v) for name, v in losses.items()}
  losses["total_loss"] = float(total)
  grads = {k: reference.to_numpy(v.grad) for k, v in leaves.items()}
  return losses, grads, hf_matches


@pytest.mark.parametrize("name,num_queries,valid", CASES, ids=[c[0] for c in CASES])
def test_matches_transformers(name, num_queries, valid):
  reference.require_reference()
  outputs, targets, losses, grads, points, matches = _run_jax(valid, num_queries=num_queries)
  want_losses, want_grads, hf_matches = _run_hf(outputs, targets, points, matches)

  num_targets = targets["valid"].shape[1]
  hf_order = [L] + list(range(L))
  for stage, want in zip(hf_order, hf_matches):
    query_index, matched = matches[stage]
    got = {(b, int(query_index[b, m]), m) for b in range(B) for m in range(num_targets)
           if matched[b, m]}
    assert got == want, f"{name}: stage {stage}"
    # Each image matches min(Q, its number of real targets); with Q < M some stay unmatched.
    want_count = np.minimum(targets["valid"].sum(axis=1), num_queries)
    np.testing.assert_array_equal(matched.sum(axis=1), want_count, err_msg=f"stage {stage}")

  assert set(losses) == set(want_losses)
  assert len(losses) == 3 * (L + 1) + 1
  for loss_name, want in want_losses.items():
    np.testing.assert_allclose(losses[loss_name], want, rtol=LOSS_RTOL, atol=0,
                               err_msg=f"{name}: {loss_name}")
  for leaf, want in want_grads.items():
    np.testing.assert_allclose(np.asarray(grads[leaf]), want, atol=GRAD_ATOL, rtol=0,
                               err_msg=f"{name}: gradient of {leaf}")
    assert np.abs(want).max() > 0


def test_no_targets():
  """A batch without real targets: CE against "no object" only, zero mask losses."""
  outputs, targets = _inputs([[False] * M] * B, seed=1)
  key = jax.random.key(1)
  (total, losses), grads = _value_and_grad(outputs, targets, key, np.float32(1.0))
  logits = np.concatenate([outputs["aux_logits"], outputs["pred_logits"][None]]).astype(np.float64)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want_ce = -log_probs[..., K].mean(axis=(1, 2))  # equal weights: a plain mean per stage
  for stage, suffix in enumerate([f"_{i}" for i in range(L)] + [""]):
    np.testing.assert_allclose(losses[f"loss_ce{suffix}"], want_ce[stage], rtol=1e-6)
    assert losses[f"loss_mask{suffix}"] == 0 and losses[f"loss_dice{suffix}"] == 0
  assert np.isfinite(float(total))
  for name, grad in grads.items():
    assert np.all(np.isfinite(grad)), name
  assert np.all(np.asarray(grads["pred_masks"]) == 0)


def test_padding_targets_change_nothing():
  """Padding slots' labels and masks do not matter; a partly empty batch stays finite."""
  valid = VALID_PATTERNS["2_and_0"]
  outputs, targets = _inputs(valid, seed=2)
  key = jax.random.key(2)
  (total, losses), grads = _value_and_grad(outputs, targets, key, np.float32(2.0))
  scrambled = dict(targets)
  pad = ~targets["valid"]
  scrambled["labels"] = np.where(pad, (targets["labels"] + 1) % K, targets["labels"])
  scrambled["masks"] = np.where(pad[..., None, None], 1 - targets["masks"], targets["masks"])
  (_, losses2), _ = _value_and_grad(outputs, scrambled, key, np.float32(2.0))
  for name in losses:
    np.testing.assert_allclose(losses2[name], losses[name], rtol=1e-6, err_msg=name)
  assert np.isfinite(float(total))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_count_masks_and_num_masks_clamp():
  valid = np.asarray(VALID_PATTERNS["3_and_1"])
  assert float(criterion.count_masks(valid)) == 4.0
  outputs, targets = _inputs(valid, seed=3)
  key = jax.random.key(3)
  (_, half), _ = _value_and_grad(outputs, targets, key, np.float32(0.5))
  (_, one), _ = _value_and_grad(outputs, targets, key, np.float32(1.0))
  (_, two), _ = _value_and_grad(outputs, targets, key, np.float32(2.0))
  np.testing.assert_allclose(two["loss_mask"], one["loss_mask"] / 2, rtol=1e-6)
  np.testing.assert_allclose(two["loss_ce"], one["loss_ce"], rtol=1e-6)
  for name in one:  # num_masks is clamped at 1
    np.testing.assert_allclose(half[name], one[name], rtol=1e-6)


def test_assignment_to_targets():
  # Q = 3 < M = 4: the solver pairs only 3 columns; column 1 is padding, column 2 is left.
  rows = jnp.array([[0, 1, 2]])
  cols = jnp.array([[3, 1, 0]])
  valid = jnp.array([[True, False, True, True]])
  query_index, matched = criterion.assignment_to_targets(rows, cols, valid)
  np.testing.assert_array_equal(matched, [[True, False, False, True]])
  np.testing.assert_array_equal(np.where(matched, query_index, -1), [[2, -1, -1, 0]])


def test_semantic_loss_hand_computed():
  """The dense auxiliary loss: per low-resolution pixel, the class fractions of its block."""
  k = 3
  logits = np.random.default_rng(0).normal(size=(1, 2, 2, k)).astype(np.float32)
  masks = np.zeros((1, 3, 4, 4), np.uint8)
  masks[0, 0, :2, :2] = 1        # class 2 fills block (0, 0)
  masks[0, 1, :2, 2:3] = 1       # class 0 covers half of block (0, 1)
  masks[0, 2, 2:, :] = 1         # a padding slot: ignored (blocks (1, *) stay void)
  labels = np.array([[2, 0, 1]])
  valid = np.array([[True, True, False]])
  log_p = logits[0] - np.log(np.exp(logits[0]).sum(-1, keepdims=True))
  want = -(1.0 * log_p[0, 0, 2] + 0.5 * log_p[0, 1, 0]) / 1.5
  got = criterion.semantic_loss(semantic_logits=logits, target_labels=labels,
                                target_masks=masks, valid=valid)
  np.testing.assert_allclose(float(got), want, rtol=1e-6)
  # A label >= K (the video "no object" relabelling) counts as void, like no target.
  void = criterion.semantic_loss(semantic_logits=logits, target_labels=np.array([[k, 0, 1]]),
                                 target_masks=masks, valid=valid)
  np.testing.assert_allclose(float(void), -log_p[0, 1, 0], rtol=1e-6)
  # Nothing covered: zero, finite gradient.
  grad = jax.grad(lambda lg: criterion.semantic_loss(
      semantic_logits=lg, target_labels=labels, target_masks=masks,
      valid=np.zeros_like(valid)))(jnp.asarray(logits))
  assert np.all(np.asarray(grad) == 0)


def test_semantic_loss_of_clips_is_that_of_their_frames():
  rng = np.random.default_rng(1)
  b, m, t, k = 2, 3, 4, 5
  logits = rng.normal(size=(b, t, 4, 6, k)).astype(np.float32)
  masks = (rng.uniform(size=(b, m, t, 8, 12)) < 0.3).astype(np.uint8)
  labels = rng.integers(0, k, (b, m))
  valid = np.array([[True, True, False], [True, False, True]])
  clip = criterion.semantic_loss(semantic_logits=logits, target_labels=labels,
                                 target_masks=masks, valid=valid)
  frames = criterion.semantic_loss(  # frames as images: targets repeated per frame
      semantic_logits=logits.reshape(b * t, 4, 6, k),
      target_labels=np.repeat(labels, t, axis=0),
      target_masks=masks.transpose(0, 2, 1, 3, 4).reshape(b * t, m, 8, 12),
      valid=np.repeat(valid, t, axis=0))
  np.testing.assert_allclose(float(clip), float(frames), rtol=1e-6)
  with pytest.raises(ValueError, match="must tile the logits"):
    criterion.semantic_loss(semantic_logits=logits, target_labels=labels,
                            target_masks=masks[..., :7, :], valid=valid)
