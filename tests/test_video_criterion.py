"""Tube matching and the video criterion (official mask2former_video matcher / criterion)."""

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from m2f_jax import criterion
from m2f_jax.ops import bilinear_sample

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
  kw = dict(pred_logits=outputs["pred_logits"], pred_masks=outputs["pred_masks"],
            target_labels=targets["labels"], target_masks=targets["masks"], points=points,
            cost_class=2.0, cost_mask=5.0, cost_dice=5.0)
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
  kw = dict(key=jax.random.PRNGKey(3), num_masks=5.0, num_points=32)
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
