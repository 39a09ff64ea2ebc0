"""Post-processing: hand-built logits with known answers, and the official code in PyTorch."""

import numpy as np
import pytest

from m2f_jax import inference
from tests import reference

BIG = 8.0  # sigmoid(8) = 0.99966, sigmoid(-8) = 0.00034


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _one_hot_logits(labels, num_classes_plus_one, high=10.0):
  logits = np.zeros((len(labels), num_classes_plus_one), np.float32)
  logits[np.arange(len(labels)), labels] = high
  return logits


def test_semantic_inference_and_argmax():
  # q0 says class 0 on the left half, q1 class 1 on the right half, q2 is "no object".
  class_logits = _one_hot_logits([0, 1, 2], 3)
  masks = np.full((3, 2, 4), -BIG, np.float32)
  masks[0, :, :2] = BIG
  masks[1, :, 2:] = BIG
  masks[2] = BIG
  scores = np.asarray(inference.semantic_inference(class_logits, masks))
  want = np.einsum("qk,qhw->khw", _softmax(class_logits)[:, :-1], _sigmoid(masks))
  np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(scores.argmax(0), [[0, 0, 1, 1], [0, 0, 1, 1]])


def _panoptic_case():
  """Classes 0, 1 things, 2 stuff; 4 x 6 image; see the expected map in the test."""
  class_logits = _one_hot_logits([0, 2, 2, 1, 0, 3], 4)
  class_logits[4] = [1.0, 0.5, 0.0, 0.0]  # Best class 0 with probability 0.43 < 0.8.
  masks = np.full((6, 4, 6), -BIG, np.float32)
  masks[0, :, :2] = BIG        # thing 0: columns 0-1
  masks[1, :2, 2:] = BIG       # stuff 2: rows 0-1, columns 2-5
  masks[2, 2:, 4:] = BIG       # stuff 2 again: rows 2-3, columns 4-5 (merges with q1)
  masks[3, :, :3] = 4.0        # thing 1: columns 0-2, weaker; wins only rows 2-3 of column 2
  masks[4] = BIG               # low score: never kept
  masks[5] = BIG               # no object: never kept
  return class_logits, masks


def test_panoptic_thresholds_overlap_and_stuff_merge():
  class_logits, masks = _panoptic_case()
  isthing = [True, True, False]
  panoptic, segments = inference.panoptic_inference(class_logits, masks, isthing=isthing)
  # q3 keeps 2 of its 12 pixels (< 0.8): dropped, its pixels become void (0).
  np.testing.assert_array_equal(panoptic, [[1, 1, 2, 2, 2, 2],
                                           [1, 1, 2, 2, 2, 2],
                                           [1, 1, 0, 0, 2, 2],
                                           [1, 1, 0, 0, 2, 2]])
  assert segments == [{"id": 1, "isthing": True, "category_id": 0},
                      {"id": 2, "isthing": False, "category_id": 2}]
  # With a low overlap threshold q3 survives (2 / 12 >= 0.1) as segment 3.
  panoptic, segments = inference.panoptic_inference(class_logits, masks, isthing=isthing,
                                                    overlap_threshold=0.1)
  assert panoptic[2, 2] == panoptic[3, 2] == 3 and (panoptic == 3).sum() == 2
  assert segments[2] == {"id": 3, "isthing": True, "category_id": 1}
  # Class 2 as a thing: q2 is no longer merged into q1.
  panoptic, segments = inference.panoptic_inference(class_logits, masks,
                                                    isthing=[True, True, True])
  assert [s["id"] for s in segments] == [1, 2, 3] and (panoptic == 3).sum() == 4
  # Nothing above the object threshold: everything void.
  panoptic, segments = inference.panoptic_inference(class_logits, masks, isthing=isthing,
                                                    object_mask_threshold=0.99999)
  assert segments == [] and not panoptic.any()
  with pytest.raises(ValueError, match="isthing"):
    inference.panoptic_inference(class_logits, masks, isthing=[True, False])


def test_instance_topk_scores():
  class_logits = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 5.0]], np.float32)
  masks = np.array([[[2, 2, -1], [-1, -1, -1]],
                    [[3, -2, 1], [-1, -1, -1]],
                    [[-1, -1, -1], [-1, -1, -1]]], np.float32)  # q2 has an empty mask.
  got = inference.instance_inference(class_logits, masks, topk=4)
  probs = _softmax(class_logits)[:, :2]  # [Q, K]
  mask_score = [_sigmoid(2.0), (_sigmoid(3.0) + _sigmoid(1.0)) / 2, 0.0]
  order = np.argsort(-probs.reshape(-1), kind="stable")[:4]
  queries, labels = order // 2, order % 2
  np.testing.assert_array_equal(got["classes"], labels)
  np.testing.assert_allclose(got["scores"], probs.reshape(-1)[order] * np.take(
      mask_score, queries), rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(got["masks"], masks[queries] > 0)
  assert got["masks"].dtype == bool and got["scores"].dtype == np.float32
  # Things only (the official rule for panoptic-trained models): class 0 is stuff here.
  got = inference.instance_inference(class_logits, masks, topk=4, things_only=True,
                                     isthing=[False, True])
  np.testing.assert_array_equal(got["classes"], labels[labels == 1])
  np.testing.assert_array_equal(got["masks"], masks[queries[labels == 1]] > 0)


# ---------------------------------------------------------------------------
# The whole batch path against the official code written in PyTorch.
# ---------------------------------------------------------------------------


def _official(torch, class_logits, masks_small, padded, image_sizes, output_sizes, isthing,
              *, before, object_mask_threshold, overlap_threshold, topk):
  """`MaskFormer.forward` (inference) + semantic/panoptic/instance_inference, in torch."""
  F = torch.nn.functional
  num_classes = class_logits.shape[-1] - 1
  masks_padded = F.interpolate(masks_small, size=padded, mode="bilinear", align_corners=False)

  def postprocess_(x, image_size, output_size):
    x = x[:, :image_size[0], :image_size[1]][None]
    return F.interpolate(x, size=output_size, mode="bilinear", align_corners=False)[0]

  out = []
  for cls, mask, image_size, output_size in zip(class_logits, masks_padded, image_sizes,
                                                output_sizes):
    if before:
      mask = postprocess_(mask, image_size, output_size)
    sem = torch.einsum("qc,qhw->chw", cls.softmax(-1)[:, :-1], mask.sigmoid())
    if not before:
      sem = postprocess_(sem, image_size, output_size)
    result = {"sem_seg": sem.argmax(0).numpy()}
    if before:
      # Panoptic.
      scores, labels = cls.softmax(-1).max(-1)
      prob = mask.sigmoid()
      keep = (labels != num_classes) & (scores > object_mask_threshold)
      kept_prob = prob[keep]
      kept_labels = labels[keep]
      panoptic = torch.zeros(output_size, dtype=torch.int32)
      segments, stuff, next_id = [], {}, 0
      if keep.any():
        winner = (scores[keep][:, None, None] * kept_prob).argmax(0)
        for k in range(len(kept_labels)):
          label = int(kept_labels[k])
          region = (winner == k) & (kept_prob[k] >= 0.5)
          area, own = int((winner == k).sum()), int((kept_prob[k] >= 0.5).sum())
          if area == 0 or own == 0 or not region.any() or area / own < overlap_threshold:
            continue
          if not isthing[label]:
            if label in stuff:
              panoptic[region] = stuff[label]
              continue
            stuff[label] = next_id + 1
          next_id += 1
          panoptic[region] = next_id
          segments.append({"id": next_id, "isthing": bool(isthing[label]), "category_id": label})
      result["panoptic_seg"] = (panoptic.numpy(), segments)
      # Instance (things only, as panoptic is on).
      probs = cls.softmax(-1)[:, :-1]
      top, index = probs.flatten().topk(topk, sorted=True)
      labels, queries = index % num_classes, index // num_classes
      things = torch.tensor([bool(isthing[int(l)]) for l in labels], dtype=torch.bool)
      top, labels, chosen = top[things], labels[things], mask[queries[things]]
      binary = (chosen > 0).float()
      mean_prob = (chosen.sigmoid().flatten(1) * binary.flatten(1)).sum(1) / (
          binary.flatten(1).sum(1) + 1e-6)
      # The one stated difference: `postprocess` drops results with an empty mask.
      nonempty = binary.flatten(1).sum(1) > 0
      result["instances"] = {"masks": binary[nonempty].numpy().astype(bool),
                             "scores": (top * mean_prob)[nonempty].numpy(),
                             "classes": labels[nonempty].numpy()}
    out.append(result)
  return out


@pytest.mark.parametrize("before", [True, False])
def test_postprocess_matches_official(before):
  torch = reference.require_reference()
  rng = np.random.default_rng(0)
  batch, queries, num_classes, h, w = 2, 6, 3, 4, 5
  padded = (16, 20)
  image_sizes = [(13, 17), (16, 20)]
  output_sizes = [(20, 26), (16, 20)]
  isthing = [True, False, True]
  class_logits = rng.normal(size=(batch, queries, num_classes + 1)).astype(np.float32)
  class_logits[:, :4, :] += 6 * np.eye(num_classes + 1, dtype=np.float32)[[0, 1, 1, 2]]
  mask_logits = rng.normal(size=(batch, queries, h, w)) - 2
  for q, (rows, cols) in enumerate([(slice(0, 2), slice(0, 3)), (slice(0, 2), slice(3, 5)),
                                    (slice(2, 4), slice(0, 2)), (slice(2, 4), slice(2, 5))]):
    mask_logits[:, q, rows, cols] += 6  # The confident queries each own a block.
  mask_logits = mask_logits.astype(np.float32)
  kwargs = dict(object_mask_threshold=0.8, overlap_threshold=0.5, topk=10)
  want = _official(torch, torch.from_numpy(class_logits), torch.from_numpy(mask_logits), padded,
                   image_sizes, output_sizes, isthing, before=before, **kwargs)
  got = inference.postprocess(
      pred_logits=class_logits, pred_masks=mask_logits, padded_size=padded,
      image_sizes=image_sizes, output_sizes=output_sizes, semantic_on=True,
      panoptic_on=before, instance_on=before, isthing=isthing,
      object_mask_threshold=kwargs["object_mask_threshold"],
      overlap_threshold=kwargs["overlap_threshold"], instance_topk=kwargs["topk"])
  assert len(got) == batch
  for g, wnt, size in zip(got, want, output_sizes):
    assert g["sem_seg"].shape == size and g["sem_seg"].dtype == np.int32
    np.testing.assert_array_equal(g["sem_seg"], wnt["sem_seg"])
    if not before:
      assert set(g) == {"sem_seg"}
      continue
    np.testing.assert_array_equal(g["panoptic_seg"][0], wnt["panoptic_seg"][0])
    assert g["panoptic_seg"][1] == wnt["panoptic_seg"][1]
    assert len(wnt["panoptic_seg"][1]) >= 3  # The case is not trivial.
    np.testing.assert_array_equal(g["instances"]["classes"], wnt["instances"]["classes"])
    np.testing.assert_allclose(g["instances"]["scores"], wnt["instances"]["scores"],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(g["instances"]["masks"], wnt["instances"]["masks"])


def test_postprocess_checks_arguments():
  logits = np.zeros((1, 2, 3), np.float32)
  masks = np.zeros((1, 2, 4, 4), np.float32)
  with pytest.raises(ValueError, match="image_sizes"):
    inference.postprocess(pred_logits=logits, pred_masks=masks, padded_size=(16, 16),
                          image_sizes=[(16, 16), (16, 16)])
  with pytest.raises(ValueError, match="isthing"):
    inference.postprocess(pred_logits=logits, pred_masks=masks, padded_size=(16, 16),
                          image_sizes=[(16, 16)], panoptic_on=True)


def test_postprocess_instances_things_only_without_empty_masks():
  """The instance rule `predict` and `eval.py` share: a panoptic-trained model's instances are
  things only (also when panoptic inference is off), and no result has an empty mask."""
  class_logits = np.array([[[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [4.0, 0.0, 0.0]]], np.float32)
  masks = np.full((1, 3, 2, 2), -5.0, np.float32)
  masks[0, 0, 0, :] = 5.0  # q0: class 0 (thing), top row
  masks[0, 1, 1, :] = 5.0  # q1: class 1 (stuff), bottom row; q2's mask is empty
  kwargs = dict(pred_logits=class_logits, pred_masks=masks, padded_size=(8, 8),
                image_sizes=[(8, 8)], semantic_on=False, instance_on=True,
                isthing=[True, False], instance_topk=6)
  assert inference.things_only_for("panoptic") and not inference.things_only_for("instance")
  things = inference.postprocess(things_only=True, **kwargs)[0]["instances"]
  everything = inference.postprocess(things_only=False, **kwargs)[0]["instances"]
  assert things["classes"].tolist() == [0, 0]  # q0 and q1 as class 0; q2 (empty) dropped
  assert sorted(everything["classes"].tolist()) == [0, 0, 1, 1]
  for result in (things, everything):
    assert result["masks"].shape[1:] == (8, 8) and result["masks"].any(axis=(1, 2)).all()


def test_compile_postprocess_leaves_nothing_to_compile():
  """After `compile_postprocess` for a padded size and its images' original sizes, the
  `postprocess` calls of such a batch compile nothing (not even an eager slice)."""
  from m2f_jax import compilation  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 4)).astype(np.float32)  # [B, Q, K+1], K = 3
  masks = rng.normal(size=(2, 5, 8, 12)).astype(np.float32)  # [B, Q, 32/4, 48/4]
  sizes, originals = [(30, 40), (32, 45)], [(30, 40), (50, 60)]  # the second larger: 128x128
  flags = dict(semantic_on=True, panoptic_on=True, instance_on=True)
  compiled = inference.compile_postprocess(
      pred_logits=jax.ShapeDtypeStruct(logits.shape, logits.dtype),
      pred_masks=jax.ShapeDtypeStruct(masks.shape, masks.dtype), padded_size=(32, 48),
      output_sizes=originals, **flags)
  assert compiled == 3  # the batched stage; the per-image stage at (32, 48) and (128, 128)
  with compilation.CompileCounter() as counter:
    results = inference.postprocess(
        pred_logits=logits, pred_masks=masks, padded_size=(32, 48), image_sizes=sizes,
        output_sizes=originals, isthing=[True, False, True], object_mask_threshold=0.0,
        **flags)
  assert counter.compiles == counter.cache_hits == 0, dict(counter.by_name)
  assert results[1]["sem_seg"].shape == (50, 60)
