r"""Training-step speed: m2f_jax (jit) against transformers' PyTorch Mask2Former, same config.

One training step = forward, the Mask2Former loss (Hungarian matching on sampled points, the
class / mask / dice losses of every decoder stage), backward, full-model gradient clipping at
0.01 and AdamW with the official parameter groups (backbone lr x0.1, no decay on norms and
embeddings). The model is the official COCO panoptic R50 (133 classes, 100 queries, 10
decoder layers); JAX runs `m2f_jax.training.train_step.make_train_step` with the official COCO
optimizer, PyTorch runs `Mask2FormerForUniversalSegmentation` with its own `Mask2FormerLoss`
(same `--num_points`), `clip_grad_norm_` and `torch.optim.AdamW`. Both start from the same
weights (the PyTorch ones, imported) and train on the same images and targets (random
rectangles, `--targets` real targets per image). As in training, JAX gets the targets padded to
`--num_targets` slots per image (`data.num_targets`, 100 in the official configs; the padding
slots are flagged invalid and never matched, but the JAX loss samples its points for every
slot, as train.py's step does), PyTorch gets the real targets only (a list per image, as its
data loader gives them); `--num_targets 0` gives JAX the real targets unpadded too. The
header line says which. The backbone's BatchNorm layers are frozen on the
PyTorch side (eval mode, no gradient), as the official FrozenBatchNorm2d and as here.
After warm-up (and compilation for JAX) the two are timed in alternation, `--pause` seconds
apart (on the 2-core CPU, JAX timed right after PyTorch's step measured 6.1-14 s, with a
1 s pause 6.2-6.4 s: the two frameworks' worker threads interfere); the medians and their
ratio (PyTorch time / JAX time: > 1 means JAX is faster) are printed. `--malloc cpu` (the
default here) re-executes the benchmark once with the glibc malloc settings of
m2f_jax/host_malloc.py (train.py's `--cpu_malloc`), for both frameworks; `--malloc default`
keeps glibc's defaults, under which both frameworks page-fault their activations every step.

  python benchmarks/train_step.py                                    # CPU: batch 2, 512x512
  python benchmarks/train_step.py --batch 8 --size 1024 --runs 10 --dtype bfloat16   # GPU

`--dtype bfloat16`: JAX computes in bfloat16 (float32 parameters, model.dtype); PyTorch runs
forward and loss under `torch.autocast(bfloat16)`. Needs the reference extra (torch,
transformers); runs on whatever device jax and torch pick (torch uses CUDA when available).
"""

import argparse
import copy
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from m2f_jax import host_malloc


def hf_config(num_points: int):
  from transformers import Mask2FormerConfig, ResNetConfig  # pylint: disable=g-import-not-at-top
  backbone = ResNetConfig(depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048],
                          embedding_size=64, layer_type="bottleneck",
                          out_features=["stage1", "stage2", "stage3", "stage4"])
  return Mask2FormerConfig(backbone_config=backbone, num_labels=133, num_queries=100,
                           decoder_layers=10, train_num_points=num_points,
                           oversample_ratio=3.0, importance_sample_ratio=0.75,
                           class_weight=2.0, mask_weight=5.0, dice_weight=5.0,
                           no_object_weight=0.1, use_auxiliary_loss=True)


def make_data(batch: int, size: int, targets: int, num_classes: int, seed: int = 0):
  """Images [B, H, W, 3], masks [B, M, H, W] and labels [B, M]: M = `targets` random
  rectangles per image with random classes (all real)."""
  rng = np.random.default_rng(seed)
  images = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
  masks = np.zeros((batch, targets, size, size), np.uint8)  # [B, M, H, W]
  for b in range(batch):
    for m in range(targets):
      y0, x0 = rng.integers(0, size * 3 // 4, 2)
      h, w = rng.integers(size // 16, size // 2, 2)
      masks[b, m, y0:y0 + h, x0:x0 + w] = 1
  labels = rng.integers(0, num_classes, (batch, targets)).astype(np.int32)  # [B, M]
  return images, masks, labels


def official_param_groups(ref, *, lr: float, weight_decay: float, backbone_multiplier: float):
  """The official build_optimizer's rules, merged into groups of equal hyper-parameters."""
  import torch  # pylint: disable=g-import-not-at-top
  norm_types = (torch.nn.BatchNorm2d, torch.nn.GroupNorm, torch.nn.LayerNorm)
  groups = {}
  for module_name, module in ref.named_modules():
    for param_name, param in module.named_parameters(recurse=False):
      if not param.requires_grad:
        continue
      backbone = module_name.startswith("model.pixel_level_module.encoder")
      no_decay = (isinstance(module, norm_types + (torch.nn.Embedding,))
                  or "relative_position_bias_table" in param_name)
      key = (lr * backbone_multiplier if backbone else lr, 0.0 if no_decay else weight_decay)
      groups.setdefault(key, []).append(param)
  return [{"params": p, "lr": k[0], "weight_decay": k[1]} for k, p in groups.items()]


def build_torch_step(ref, images, masks, labels, dtype: str, device):
  import torch  # pylint: disable=g-import-not-at-top
  ref.train()
  for module in ref.model.pixel_level_module.encoder.modules():  # FrozenBatchNorm2d
    if isinstance(module, torch.nn.BatchNorm2d):
      module.eval()
      module.weight.requires_grad_(False)
      module.bias.requires_grad_(False)
  opt = torch.optim.AdamW(official_param_groups(ref, lr=1e-4, weight_decay=0.05,
                                                backbone_multiplier=0.1), lr=1e-4)
  params = [p for p in ref.parameters() if p.requires_grad]
  pixel_values = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(device)
  mask_labels = [torch.from_numpy(m).float().to(device) for m in masks]
  class_labels = [torch.from_numpy(l).long().to(device) for l in labels]
  autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                            enabled=dtype == "bfloat16")

  def step():
    opt.zero_grad(set_to_none=True)
    with autocast:
      loss = ref(pixel_values=pixel_values, mask_labels=mask_labels,
                 class_labels=class_labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 0.01)
    opt.step()
    if device.type == "cuda":
      torch.cuda.synchronize()
    return loss.item()

  return step


def pad_targets(masks: np.ndarray, labels: np.ndarray, num_targets: int):
  """Pads [B, M, H, W] masks and [B, M] labels to `num_targets` slots as the input pipeline
  does (zero masks, label 0, valid False); returns (masks, labels, valid [B, num_targets])."""
  batch, real = labels.shape
  if num_targets < real:
    raise ValueError(f"--num_targets {num_targets} is below --targets {real}: give at least as "
                     "many slots as real targets (0: no padding).")
  pad = num_targets - real
  valid = np.arange(num_targets)[None, :].repeat(batch, 0) < real  # [B, num_targets]
  return (np.pad(masks, ((0, 0), (0, pad), (0, 0), (0, 0))), np.pad(labels, ((0, 0), (0, pad))),
          valid)


def build_jax_step(ref, images, masks, labels, valid, dtype: str, num_points: int):
  from m2f_jax.convert import hf  # pylint: disable=g-import-not-at-top
  from m2f_jax.models.mask2former import build_model  # pylint: disable=g-import-not-at-top
  model_cfg = hf.hf_config_to_model_config(ref.config.to_dict())
  state_dict = {k: v.detach().cpu() for k, v in ref.state_dict().items()}
  variables = hf.hf_variables(build_model(model_cfg), state_dict, source="reference")
  step, compile_s, _ = compile_jax_step(model_cfg, variables, images, masks, labels, valid,
                                        dtype, num_points)
  return step, compile_s


def compile_jax_step(model_cfg, variables, images, masks, labels, valid, dtype: str,
                     num_points: int):
  """`(step, compile_s, compiled)`: `step()` runs one step of the official COCO recipe
  (`make_train_step`) for `model_cfg` (our `model` config section) from `variables` and
  returns the loss; `compiled` is the compiled step (for its cost and memory analyses)."""
  from m2f_jax import config_lib  # pylint: disable=g-import-not-at-top
  from m2f_jax.models.mask2former import build_model  # pylint: disable=g-import-not-at-top
  from m2f_jax.training import train_step  # pylint: disable=g-import-not-at-top
  from m2f_jax.training import optimizer as optim_lib  # pylint: disable=g-import-not-at-top
  model_cfg = copy.deepcopy(model_cfg)  # the dtype is set below
  model_cfg.dtype = dtype
  config = config_lib.base_config(model=model_cfg, dataset="synthetic", task="panoptic",
                                  max_steps=368750, decay_steps=(327778, 355092),
                                  batch_size=images.shape[0])  # the official COCO schedule
  config.loss.train_num_points = num_points
  config.data.num_targets = labels.shape[1]
  model = build_model(config.model)
  tx = optim_lib.make_optimizer(config.optim, variables["params"])
  state = jax.device_put(train_step.TrainState(
      step=jnp.zeros((), jnp.int32), params=variables["params"],
      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(variables["params"]),
      rng=jax.random.PRNGKey(0)))
  batch = jax.device_put({"images": images, "masks": masks, "labels": labels,
                          "valid": valid})
  step_fn = jax.jit(train_step.make_train_step(model, tx, config), donate_argnums=0)
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0

  def step():
    nonlocal state
    state, metrics = compiled(state, batch)
    return float(metrics["total_loss"])  # waits for the step

  return step, compile_s, compiled


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--size", type=int, default=512)
  parser.add_argument("--runs", type=int, default=3)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each first")
  parser.add_argument("--pause", type=float, default=1.0,
                      help="seconds between timed steps, so that one framework's worker threads "
                      "have gone idle before the other's step is timed")
  parser.add_argument("--malloc", default="cpu", choices=("cpu", "default"),
                      help="cpu: re-execute once with the glibc settings of train.py's "
                      "--cpu_malloc, for both frameworks (m2f_jax/host_malloc.py); default: "
                      "glibc's defaults")
  parser.add_argument("--num_points", type=int, default=12544, help="official: 112 * 112")
  parser.add_argument("--targets", type=int, default=10, help="real target masks per image")
  parser.add_argument("--num_targets", type=int, default=100,
                      help="JAX's target slots per image, as data.num_targets (official configs: "
                      "100); 0: no padding (JAX gets the real targets only, as PyTorch)")
  args = parser.parse_args()
  if args.malloc == "cpu":
    host_malloc.restart_with_cpu_malloc_settings()
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import Mask2FormerForUniversalSegmentation  # pylint: disable=g-import-not-at-top
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  torch.manual_seed(0)
  ref = Mask2FormerForUniversalSegmentation(hf_config(args.num_points)).to(device)
  images, masks, labels = make_data(args.batch, args.size, args.targets, 133)
  padded = pad_targets(masks, labels, args.num_targets or args.targets)
  jax_step, compile_s = build_jax_step(ref, images, *padded, args.dtype, args.num_points)
  torch_step = build_torch_step(ref, images, masks, labels, args.dtype, device)
  jax_device = jax.devices()[0]
  print(f"jax {jax.__version__} on {jax_device.platform} ({jax_device.device_kind}); "
        f"torch {torch.__version__} on {device}; {args.dtype}; R50 COCO panoptic (133 classes, "
        f"100 queries, 10 decoder layers); {args.num_points} points; targets per image: "
        f"{args.targets} real, JAX padded to {args.num_targets or args.targets} slots "
        f"(data.num_targets), PyTorch the real ones; median of {args.runs} alternating runs "
        f"after {args.warmup} warm-up, {args.pause:g} s apart; malloc: {host_malloc.describe()}")
  losses = (torch_step(), jax_step())  # warm-up
  for _ in range(args.warmup - 1):
    torch_step(), jax_step()
  t_torch, t_jax = [], []
  for _ in range(args.runs):
    time.sleep(args.pause)
    t0 = time.perf_counter(); torch_step(); t_torch.append(time.perf_counter() - t0)
    time.sleep(args.pause)
    t0 = time.perf_counter(); jax_step(); t_jax.append(time.perf_counter() - t0)
  m_torch, m_jax = statistics.median(t_torch), statistics.median(t_jax)
  print(f"first loss: torch {losses[0]:.2f}, jax {losses[1]:.2f}")
  print("runs (s): torch " + " ".join(f"{t:.2f}" for t in t_torch)
        + " | jax " + " ".join(f"{t:.2f}" for t in t_jax))
  print(f"{'batch':>5} {'size':>5} {'torch s':>9} {'jax s':>9} {'speed-up':>9} "
        f"{'torch img/s':>12} {'jax img/s':>10} {'compile s':>10}")
  print(f"{args.batch:5d} {args.size:5d} {m_torch:9.3f} {m_jax:9.3f} {m_torch / m_jax:8.2f}x "
        f"{args.batch / m_torch:12.2f} {args.batch / m_jax:10.2f} {compile_s:10.1f}", flush=True)


if __name__ == "__main__":
  main()
