"""The official video criterion, transcribed in torch for tests/test_video_criterion.py.

The official code needs Detectron2 and cannot be imported here, so its computation is
transcribed (minimal, same operations in the same order) from:
  facebookresearch/Mask2Former @ 9b0651c6c1d5b3af2e6da0589b719c514ec0d69a
    mask2former_video/modeling/matcher.py    `VideoHungarianMatcher.memory_efficient_forward`,
                                               `batch_dice_loss`, `batch_sigmoid_ce_loss`
    mask2former_video/modeling/criterion.py  `VideoSetCriterion.forward`, `loss_labels`,
                                               `loss_masks`, `dice_loss`, `sigmoid_ce_loss`,
                                               `calculate_uncertainty`
  facebookresearch/detectron2 @ 02b5c4e295e990042a714712c21dc79b731e8833
    projects/PointRend/point_rend/point_features.py  `point_sample`,
                                               `get_uncertain_point_coords_with_randomness`
(the Mask2Former repository has no copy of point_features.py).

This module imports torch: import it only after `tests.reference.require_reference()`.

Changes, none of which alters a value:
  * every `torch.rand(...)` is a call of the `rand` argument (same signature), so that the
    test can hand over the coordinates our criterion drew, in the official order;
  * one process: `num_masks` is the batch's count clamped at 1 (no all-reduce);
  * the matcher also returns its cost matrices (for the comparison), and targets are lists of
    dicts {"labels" [N], "masks" [N, T, H, W] float} as `prepare_targets` gives them;
  * `torch.jit.script` of the loss functions and `autocast(enabled=False)` are dropped
    (float32 inputs, same ops).
"""

import scipy.optimize
import torch
import torch.nn.functional as F

# detectron2/projects/PointRend/point_rend/point_features.py

def point_sample(inputs, point_coords, **kwargs):
  add_dim = False
  if point_coords.dim() == 3:
    add_dim = True
    point_coords = point_coords.unsqueeze(2)
  output = F.grid_sample(inputs, 2.0 * point_coords - 1.0, **kwargs)
  if add_dim:
    output = output.squeeze(3)
  return output


def get_uncertain_point_coords_with_randomness(coarse_logits, uncertainty_func, num_points,
                                               oversample_ratio, importance_sample_ratio, rand):
  assert oversample_ratio >= 1
  assert 0 <= importance_sample_ratio <= 1
  num_boxes = coarse_logits.shape[0]
  num_sampled = int(num_points * oversample_ratio)
  point_coords = rand(num_boxes, num_sampled, 2)
  point_logits = point_sample(coarse_logits, point_coords, align_corners=False)
  point_uncertainties = uncertainty_func(point_logits)
  num_uncertain_points = int(importance_sample_ratio * num_points)
  num_random_points = num_points - num_uncertain_points
  idx = torch.topk(point_uncertainties[:, 0, :], k=num_uncertain_points, dim=1)[1]
  shift = num_sampled * torch.arange(num_boxes, dtype=torch.long)
  idx += shift[:, None]
  point_coords = point_coords.view(-1, 2)[idx.view(-1), :].view(
      num_boxes, num_uncertain_points, 2)
  if num_random_points > 0:
    point_coords = torch.cat([point_coords, rand(num_boxes, num_random_points, 2)], dim=1)
  return point_coords


# mask2former_video/modeling/matcher.py

def batch_dice_loss(inputs, targets):
  inputs = inputs.sigmoid()
  inputs = inputs.flatten(1)
  numerator = 2 * torch.einsum("nc,mc->nm", inputs, targets)
  denominator = inputs.sum(-1)[:, None] + targets.sum(-1)[None, :]
  return 1 - (numerator + 1) / (denominator + 1)


def batch_sigmoid_ce_loss(inputs, targets):
  hw = inputs.shape[1]
  pos = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
  neg = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
  loss = (torch.einsum("nc,mc->nm", pos, targets)
          + torch.einsum("nc,mc->nm", neg, (1 - targets)))
  return loss / hw


@torch.no_grad()
def video_hungarian_matcher(outputs, targets, *, cost_class, cost_mask, cost_dice, num_points,
                            rand):
  """`VideoHungarianMatcher.memory_efficient_forward`; returns (indices, cost matrices)."""
  bs, num_queries = outputs["pred_logits"].shape[:2]
  indices, costs = [], []
  for b in range(bs):
    out_prob = outputs["pred_logits"][b].softmax(-1)  # [Q, K+1]
    tgt_ids = targets[b]["labels"]
    class_cost = -out_prob[:, tgt_ids]
    out_mask = outputs["pred_masks"][b]  # [Q, T, h, w]
    tgt_mask = targets[b]["masks"].to(out_mask)  # [N, T, H, W]
    # all masks (and frames) share the same set of points
    point_coords = rand(1, num_points, 2)
    tgt_mask = point_sample(tgt_mask, point_coords.repeat(tgt_mask.shape[0], 1, 1),
                            align_corners=False).flatten(1)  # [N, T*P]
    out_mask = point_sample(out_mask, point_coords.repeat(out_mask.shape[0], 1, 1),
                            align_corners=False).flatten(1)  # [Q, T*P]
    out_mask = out_mask.float()
    tgt_mask = tgt_mask.float()
    mask_cost = batch_sigmoid_ce_loss(out_mask, tgt_mask)
    dice_cost = batch_dice_loss(out_mask, tgt_mask)
    c = cost_mask * mask_cost + cost_class * class_cost + cost_dice * dice_cost
    c = c.reshape(num_queries, -1).cpu()
    costs.append(c.numpy())
    indices.append(scipy.optimize.linear_sum_assignment(c))
  indices = [(torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64))
             for i, j in indices]
  return indices, costs


# mask2former_video/modeling/criterion.py

def dice_loss(inputs, targets, num_masks):
  inputs = inputs.sigmoid()
  inputs = inputs.flatten(1)
  numerator = 2 * (inputs * targets).sum(-1)
  denominator = inputs.sum(-1) + targets.sum(-1)
  loss = 1 - (numerator + 1) / (denominator + 1)
  return loss.sum() / num_masks


def sigmoid_ce_loss(inputs, targets, num_masks):
  loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
  return loss.mean(1).sum() / num_masks


def calculate_uncertainty(logits):
  assert logits.shape[1] == 1
  return -(torch.abs(logits.clone()))


def _src_permutation_idx(indices):
  batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
  src_idx = torch.cat([src for (src, _) in indices])
  return batch_idx, src_idx


def loss_labels(outputs, targets, indices, *, num_classes, empty_weight):
  src_logits = outputs["pred_logits"].float()
  idx = _src_permutation_idx(indices)
  target_classes_o = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
  target_classes = torch.full(src_logits.shape[:2], num_classes, dtype=torch.int64)
  target_classes[idx] = target_classes_o
  return {"loss_ce": F.cross_entropy(src_logits.transpose(1, 2), target_classes, empty_weight)}


def loss_masks(outputs, targets, indices, num_masks, *, num_points, oversample_ratio,
               importance_sample_ratio, rand):
  src_idx = _src_permutation_idx(indices)
  src_masks = outputs["pred_masks"]
  src_masks = src_masks[src_idx]  # [N, T, h, w]
  target_masks = torch.cat([t["masks"][i] for t, (_, i) in zip(targets, indices)]).to(src_masks)
  # NT x 1 x H x W
  src_masks = src_masks.flatten(0, 1)[:, None]
  target_masks = target_masks.flatten(0, 1)[:, None]
  with torch.no_grad():
    point_coords = get_uncertain_point_coords_with_randomness(
        src_masks, calculate_uncertainty, num_points, oversample_ratio,
        importance_sample_ratio, rand)
    point_labels = point_sample(target_masks, point_coords, align_corners=False).squeeze(1)
  point_logits = point_sample(src_masks, point_coords, align_corners=False).squeeze(1)
  return {"loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
          "loss_dice": dice_loss(point_logits, point_labels, num_masks)}


def video_set_criterion(outputs, targets, *, num_classes, eos_coef, cost_class, cost_mask,
                        cost_dice, num_points, oversample_ratio, importance_sample_ratio, rand):
  """`VideoSetCriterion.forward` (losses "labels", "masks"), one process.

  Args:
    outputs: {"pred_logits" [B, Q, K+1], "pred_masks" [B, Q, T, h, w], "aux_outputs": a list of
      such dicts}, torch tensors.
    targets: per clip {"labels" int64 [N], "masks" float [N, T, H, W]}.
    cost_*, num_points: the `VideoHungarianMatcher` (the official config gives the matcher
      the loss weights and TRAIN_NUM_POINTS).
    rand: replaces `torch.rand`.

  Returns:
    (losses, matches): the unweighted losses under the official names, and per stage in the
    official order (final, then aux 0..L-1) the matcher's (indices, cost matrices).
  """
  empty_weight = torch.ones(num_classes + 1)
  empty_weight[-1] = eos_coef
  match = {"cost_class": cost_class, "cost_mask": cost_mask, "cost_dice": cost_dice,
           "num_points": num_points, "rand": rand}
  mask_kw = {"num_points": num_points, "oversample_ratio": oversample_ratio,
             "importance_sample_ratio": importance_sample_ratio, "rand": rand}

  outputs_without_aux = {k: v for k, v in outputs.items() if k != "aux_outputs"}
  indices, costs = video_hungarian_matcher(outputs_without_aux, targets, **match)
  matches = [(indices, costs)]
  num_masks = sum(len(t["labels"]) for t in targets)
  num_masks = torch.as_tensor([num_masks], dtype=torch.float)
  num_masks = torch.clamp(num_masks / 1, min=1).item()

  losses = {}
  losses.update(loss_labels(outputs, targets, indices, num_classes=num_classes,
                            empty_weight=empty_weight))
  losses.update(loss_masks(outputs, targets, indices, num_masks, **mask_kw))
  for i, aux_outputs in enumerate(outputs.get("aux_outputs", [])):
    indices, costs = video_hungarian_matcher(aux_outputs, targets, **match)
    matches.append((indices, costs))
    l_dict = loss_labels(aux_outputs, targets, indices, num_classes=num_classes,
                         empty_weight=empty_weight)
    l_dict.update(loss_masks(aux_outputs, targets, indices, num_masks, **mask_kw))
    losses.update({k + f"_{i}": v for k, v in l_dict.items()})
  return losses, matches
