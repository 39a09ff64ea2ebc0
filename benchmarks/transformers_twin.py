"""transformers' PyTorch Mask2Former as the twin of one of our configs, trained as we train.

benchmarks/reference_training.py trains both side by side and tests/test_training_parity.py
compares their step-0 losses and gradients; both get everything torch-side from here:

  * `hf_config(config)`: the `Mask2FormerConfig` of `config.model` and `config.loss`;
  * `build(config, seed)`: that model, initialized by transformers under
    `torch.manual_seed(seed)`, in train mode;
  * `jax_variables(twin, model, config)`: its weights as our variables, through our importer
    (`save_pretrained` -> `convert.hf.read_state_dict` -> `convert.hf.hf_variables`);
  * `optimizer(twin, model, config)`: torch AdamW with our parameter groups (each tensor's
    weight decay and learning-rate multiplier read from `m2f_jax.training.optimizer`'s rules
    on the tensor it converts to), our schedule (`LambdaLR` of the same function) and
    clipping;
  * `torch_batch(batch)` and `losses(twin, batch)`: one dense batch of ours as transformers'
    inputs, and transformers' loss terms with the weighted total; `train_step`: one step;
  * `point_queue(points, matches)` and `fixed_rand(torch, queue)`: the random points our
    criterion drew, in the order in which transformers draws its own, to replace `torch.rand`.

The backbone mapping. Our from-scratch ResNet normalizes with GroupNorm (`norm="group_norm"`:
32 groups or fewer for narrow layers, epsilon 1e-6 as flax's default); transformers' ResNet
has BatchNorm, whose train mode normalizes with batch statistics. `build` replaces every
backbone `BatchNorm2d` by `nn.GroupNorm` with our group count and epsilon (initialized as
transformers initializes BatchNorm: weight 1, bias 0), and the import renames its tensors
`...normalization.{weight,bias}` to our `...group_norm.{weight,bias}`. A frozen-BatchNorm
backbone (the official recipe) needs no mapping: its BatchNorm is put in eval mode and frozen,
which is Detectron2's FrozenBatchNorm. Swin backbones map one to one.

Importable without torch; the functions that need it import it.
"""

import re
import tempfile
import unittest.mock

import flax
import jax
import numpy as np

from m2f_jax.convert import hf
from m2f_jax.models.mask2former import abstract_variables
from m2f_jax.training import optimizer as optim_lib

STAGES = ["stage1", "stage2", "stage3", "stage4"]
_BACKBONE = "model.pixel_level_module.encoder."
_GN_EPSILON = 1e-6  # flax.linen.GroupNorm's default, which our ResNet's GroupNorm keeps


def _torch():
  import torch  # pylint: disable=g-import-not-at-top
  return torch


def hf_config(config):
  """transformers' `Mask2FormerConfig` equal to `config.model` with `config.loss`."""
  import transformers  # pylint: disable=g-import-not-at-top
  m, loss, bb = config.model, config.loss, config.model.backbone
  if m.get("semantic_head", False):
    raise ValueError("config.model.semantic_head: transformers' Mask2Former has no per-pixel "
                     "class head; compare a config without it (e.g. configs/tiny.py:reference)")
  if bb.name == "resnet":
    backbone = transformers.ResNetConfig(
        embedding_size=bb.embedding_size, hidden_sizes=list(bb.hidden_sizes),
        depths=list(bb.depths), layer_type=bb.layer_type, hidden_act="relu",
        downsample_in_first_stage=False, downsample_in_bottleneck=bb.downsample_in_bottleneck,
        out_features=STAGES)
  elif bb.name == "swin":
    backbone = transformers.SwinConfig(
        embed_dim=bb.embed_dim, depths=list(bb.depths), num_heads=list(bb.num_heads),
        window_size=bb.window_size, patch_size=bb.patch_size, mlp_ratio=bb.mlp_ratio,
        qkv_bias=bb.qkv_bias, drop_path_rate=bb.drop_path_rate, out_features=STAGES)
  else:
    raise ValueError(f"backbone {bb.name!r}: transformers' twin needs resnet or swin")
  if m.encoder_num_heads != m.num_heads:
    raise ValueError("transformers has one num_attention_heads for encoder and decoder")
  num_classes = m.num_classes
  return transformers.Mask2FormerConfig(
      backbone_config=backbone, num_labels=num_classes,
      id2label={i: f"class_{i}" for i in range(num_classes)},
      num_queries=m.num_queries, hidden_dim=m.hidden_dim, feature_size=m.feature_size,
      mask_feature_size=m.mask_feature_size, encoder_layers=m.encoder_layers,
      encoder_feedforward_dim=m.encoder_feedforward_dim, num_attention_heads=m.num_heads,
      decoder_layers=m.decoder_layers,
      dim_feedforward=m.dim_feedforward, pre_norm=m.pre_norm,
      enforce_input_projection=m.enforce_input_projection, common_stride=m.common_stride,
      dropout=0.0, no_object_weight=loss.no_object_weight, class_weight=loss.class_weight,
      mask_weight=loss.mask_weight, dice_weight=loss.dice_weight,
      train_num_points=loss.train_num_points, oversample_ratio=loss.oversample_ratio,
      importance_sample_ratio=loss.importance_sample_ratio,
      use_auxiliary_loss=loss.deep_supervision)


def _group_count(features: int) -> int:
  return next(g for g in (32, 16, 8, 4, 2, 1) if features % g == 0)  # as our ResNet


def build(config, seed: int):
  """transformers' model of `config`, initialized under `torch.manual_seed(seed)`, in train
  mode, with the backbone mapping of the module docstring."""
  torch = _torch()
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  twin = transformers.Mask2FormerForUniversalSegmentation(hf_config(config)).train()
  bb = config.model.backbone
  if bb.name == "resnet":
    encoder = twin.model.pixel_level_module.encoder
    for module in list(encoder.modules()):
      for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.BatchNorm2d):
          if bb.norm == "group_norm":
            gn = torch.nn.GroupNorm(_group_count(child.num_features), child.num_features,
                                    eps=_GN_EPSILON)
            setattr(module, name, gn)
          else:  # frozen_bn: running statistics, no gradient (Detectron2's FrozenBatchNorm)
            child.eval()
            child.train = lambda mode=True, c=child: c  # stays in eval mode
            child.weight.requires_grad_(False)
            child.bias.requires_grad_(False)
  return twin


def _our_names(state: dict, config) -> dict:
  """transformers tensor names -> the names our importer maps (the GroupNorm rename)."""
  if config.model.backbone.name != "resnet" or config.model.backbone.norm != "group_norm":
    return state
  return {re.sub(r"\.normalization\.(weight|bias)$", r".group_norm.\1", k)
          if k.startswith(_BACKBONE) else k: v for k, v in state.items()}


def jax_variables(twin, model, config) -> dict:
  """The twin's weights as `model`'s variables: `save_pretrained`, then our importer."""
  with tempfile.TemporaryDirectory() as tmp:
    twin.save_pretrained(tmp)
    state = hf.read_state_dict(tmp)
  return hf.hf_variables(model, _our_names(state, config), source="transformers' twin")


def to_our_layout(model, config, tensors: dict) -> dict:
  """`tensors` (torch parameter name -> array, e.g. gradients) in our variable layout."""
  return hf.hf_variables(model, _our_names(tensors, config), source="transformers' twin")


def parameter_paths(twin, model, config) -> dict[str, str]:
  """torch parameter name -> our parameter path ('a/b/kernel'), by filling each tensor with
  its own index and importing."""
  torch_params = dict(twin.named_parameters())
  names = sorted(torch_params)
  state = {k: np.full(tuple(v.shape), names.index(k) + 1 if k in torch_params else 0,
                      np.float32) for k, v in twin.state_dict().items()}
  coded = flax.traverse_util.flatten_dict(
      hf.hf_variables(model, _our_names(state, config))["params"])
  out = {}
  for path, leaf in coded.items():
    codes = np.unique(leaf)
    if codes.size == 1 and codes[0] > 0:
      out[names[int(codes[0]) - 1]] = "/".join(path)
  return out


def optimizer(twin, model, config):
  """`(torch.optim.AdamW, LambdaLR, clip)`: ours, on the twin's parameters.

  clip: called between `backward` and `step` (full-model gradient-norm clipping, or nothing).
  """
  torch = _torch()
  cfg = config.optim
  params_shape = abstract_variables(model)["params"]
  decay, scale = (flax.traverse_util.flatten_dict(t)
                  for t in optim_lib.parameter_rules(cfg, params_shape))
  decay = {"/".join(k): v for k, v in decay.items()}
  scale = {"/".join(k): v for k, v in scale.items()}
  paths = parameter_paths(twin, model, config)
  groups: dict[tuple[float, bool], list] = {}
  for name, param in twin.named_parameters():
    if not param.requires_grad:
      continue
    path = paths[name]
    groups.setdefault((float(scale[path]), bool(decay[path])), []).append(param)
  param_groups = [dict(params=p, lr=cfg.learning_rate * s,
                       weight_decay=cfg.weight_decay if d else 0.0)
                  for (s, d), p in sorted(groups.items()) if s > 0]
  opt = torch.optim.AdamW(param_groups, lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8)
  schedule = optim_lib.learning_rate_schedule(cfg)
  factors = np.asarray(jax.jit(jax.vmap(schedule))(np.arange(cfg.max_steps + 1))) / (
      cfg.learning_rate)
  sched = torch.optim.lr_scheduler.LambdaLR(
      opt, lambda step: float(factors[min(step, cfg.max_steps)]))
  trainable = [p for g in param_groups for p in g["params"]]

  def clip():
    if cfg.clip_grad_norm:
      torch.nn.utils.clip_grad_norm_(trainable, cfg.clip_grad_norm)

  return opt, sched, clip


def torch_batch(batch: dict):
  """One dense batch of ours (numpy) as transformers' `(pixel_values, mask_labels,
  class_labels)`: NCHW images, and per image the masks and classes of its real targets."""
  torch = _torch()
  images = np.asarray(batch["images"], np.float32)
  valid = np.asarray(batch["valid"], bool)
  masks, labels = np.asarray(batch["masks"]), np.asarray(batch["labels"])
  pixel_values = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  mask_labels = [torch.from_numpy(masks[b, valid[b]].astype(np.float32))
                 for b in range(len(valid))]
  class_labels = [torch.from_numpy(labels[b, valid[b]].astype(np.int64))
                  for b in range(len(valid))]
  return pixel_values, mask_labels, class_labels


def losses(twin, batch: dict, rand_queue: list | None = None):
  """`(total, terms)` of transformers' training loss on one dense batch of ours.

  terms: unweighted, in our names (`loss_ce`, `loss_mask`, `loss_dice`, `loss_ce_0`, ...).
  rand_queue: the criterion's random points (`point_queue`), or None for torch's own.
  """
  torch = _torch()
  pixel_values, mask_labels, class_labels = torch_batch(batch)
  out = twin(pixel_values=pixel_values, output_auxiliary_logits=True)
  kwargs = dict(masks_queries_logits=out.masks_queries_logits,
                class_queries_logits=out.class_queries_logits, mask_labels=mask_labels,
                class_labels=class_labels, auxiliary_predictions=out.auxiliary_logits)
  if rand_queue is None:
    terms = twin.criterion(**kwargs)
  else:
    with unittest.mock.patch.object(torch, "rand", fixed_rand(torch, rand_queue)):
      terms = twin.criterion(**kwargs)
    if rand_queue:
      raise AssertionError(f"transformers drew fewer random points than given "
                           f"({len(rand_queue)} left)")
  total = sum(twin.weight_dict[k.rstrip("_0123456789")] * v for k, v in terms.items())
  return total, {k.replace("loss_cross_entropy", "loss_ce"): v for k, v in terms.items()}


def train_step(twin, opt, sched, clip, batch: dict) -> float:
  """One training step of the twin on a dense batch of ours: loss, backward, clipping, AdamW,
  schedule. Returns the step's total loss."""
  total, _ = losses(twin, batch)
  opt.zero_grad(set_to_none=True)
  total.backward()
  clip()
  opt.step()
  sched.step()
  return float(total.detach())


def point_queue(points: dict, matches: list) -> list[np.ndarray]:
  """Our criterion's points (`criterion.draw_all_points`, stages aux 0..L-1 then final) in
  the order transformers' `Mask2FormerLoss` calls `torch.rand`.

  matches: per stage, our `(query_index, matched)` [B, M] of that stage. transformers goes
  final stage first, then aux 0..L-1; per stage, the matcher's points image by image, then
  the loss's oversampled and random points of the matched pairs ordered by (image, query).
  """
  num_stages = len(matches)
  queue = []
  for stage in [num_stages - 1] + list(range(num_stages - 1)):
    query_index, matched = matches[stage]
    batch_size, num_targets = matched.shape
    queue += [points["match"][stage, b][None] for b in range(batch_size)]
    pairs = sorted((b, int(query_index[b, m]), m) for b in range(batch_size)
                   for m in range(num_targets) if matched[b, m])
    for kind in ("oversampled", "random"):
      per_pair = [points[kind][stage, b, m] for b, _, m in pairs]
      queue.append(np.stack(per_pair) if per_pair
                   else np.zeros((0, *points[kind].shape[-2:]), np.float32))
  return queue


def fixed_rand(torch, queue: list):
  """A `torch.rand` that answers each call with the next array of `queue` (shapes checked)."""
  real_rand = torch.rand

  def rand(*size, **kwargs):
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
      size = tuple(size[0])
    if not size:  # a scalar draw (e.g. the decoder's layerdrop): not a point
      return real_rand((), **kwargs)
    want = queue.pop(0)
    if tuple(size) != want.shape:
      raise AssertionError(f"transformers asked torch.rand for {tuple(size)}, the next of our "
                           f"points has shape {want.shape}")
    return torch.from_numpy(np.array(want, np.float32))

  return rand

