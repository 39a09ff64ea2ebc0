r"""Checks an import against transformers: same images in, max abs difference of every output.

  python -m m2f_jax.convert.verify --hf-dir path/to/hf_dir --size 512x683 --batch 2
  python -m m2f_jax.convert.verify --preset swin_t --size 256x320   # random official config

Runs transformers' Mask2FormerForUniversalSegmentation (PyTorch, CPU) and the imported Flax
model on the same random images and prints, for the final and every intermediate
prediction, the largest absolute difference of class and mask logits. Needs the reference
extra (torch, transformers). With --preset, the reference is built from the official
architecture with random weights (every parameter perturbed) and saved to a temporary
directory first, as a user's `save_pretrained` directory would be.
"""

import argparse
import sys
import tempfile

import jax
import numpy as np


def _preset(name: str, num_labels: int, num_queries: int):
  from transformers import Mask2FormerConfig, ResNetConfig, SwinConfig  # pylint: disable=g-import-not-at-top
  from m2f_jax import config_lib  # pylint: disable=g-import-not-at-top
  stages = ["stage1", "stage2", "stage3", "stage4"]
  bb = config_lib.backbone_from_arg(name)
  if bb.name == "resnet":
    backbone = ResNetConfig(depths=list(bb.depths), hidden_sizes=list(bb.hidden_sizes),
                            embedding_size=bb.embedding_size, layer_type="bottleneck",
                            out_features=stages)
  else:
    backbone = SwinConfig(embed_dim=bb.embed_dim, depths=list(bb.depths),
                          num_heads=list(bb.num_heads), window_size=bb.window_size,
                          out_features=stages)
  return Mask2FormerConfig(backbone_config=backbone, num_labels=num_labels,
                           num_queries=num_queries)


def run_both(hf_dir: str, *, batch: int, height: int, width: int, seed: int = 0):
  """transformers' and m2f_jax's outputs (with every aux stage) on the same random images.

  Returns (the transformers output, the m2f_jax output dict); each model is loaded and run
  once, for both `differences` and `attention_mask_flips`.
  """
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import Mask2FormerForUniversalSegmentation  # pylint: disable=g-import-not-at-top
  from m2f_jax import convert  # pylint: disable=g-import-not-at-top
  ref = Mask2FormerForUniversalSegmentation.from_pretrained(hf_dir).eval()
  model, variables = convert.load_hf(hf_dir)
  images = np.random.RandomState(seed).randn(batch, height, width, 3).astype(np.float32)
  with torch.no_grad():
    out = ref(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), output_auxiliary_logits=True)
  return out, jax.jit(model.apply)(variables, images)


def differences(out, got) -> dict:
  """Max abs differences {output name: value} between the two outputs of `run_both`."""
  diffs = {}
  for i, aux in enumerate(out.auxiliary_logits):
    diffs[f"aux_logits[{i}]"] = np.abs(got["aux_logits"][i] - aux["class_queries_logits"].numpy()).max()
    diffs[f"aux_masks[{i}]"] = np.abs(got["aux_masks"][i] - aux["masks_queries_logits"].numpy()).max()
  diffs["pred_logits"] = np.abs(got["pred_logits"] - out.class_queries_logits.numpy()).max()
  diffs["pred_masks"] = np.abs(got["pred_masks"] - out.masks_queries_logits.numpy()).max()
  return {k: float(v) for k, v in diffs.items()}


def attention_mask_flips(out, got, *, height: int, width: int) -> list[int]:
  """Per decoder layer, how many attention-mask entries the two models decide differently.

  `out`, `got`: the outputs of `run_both` for images of `height` x `width`. Layer i masks
  its cross-attention with `sigmoid(mask logits of stage i) < 0.5` at the size of level
  i % 3. A logit within float rounding of 0 can fall on either side, and from then on the
  two models attend to different positions: a discontinuity of the network, not an import
  error.
  """
  from m2f_jax.models.transformer_decoder import attention_mask  # pylint: disable=g-import-not-at-top
  sizes = [(height // s, width // s) for s in (32, 16, 8)]
  flips = []
  for i, aux in enumerate(out.auxiliary_logits):
    h, w = sizes[i % 3]
    want = np.asarray(attention_mask(aux["masks_queries_logits"].numpy(), h, w))
    flips.append(int((np.asarray(attention_mask(np.asarray(got["aux_masks"][i]), h, w)) != want).sum()))
  return flips


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m m2f_jax.convert.verify", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--hf-dir", help="a save_pretrained directory")
  source.add_argument("--preset", help="r50, r101, swin_t, swin_s, swin_b or swin_l (random)")
  parser.add_argument("--size", default="256x320", help="HxW, multiples of 32")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--num-labels", type=int, default=133)
  parser.add_argument("--num-queries", type=int, default=100)
  parser.add_argument("--tolerance", type=float, default=1e-4)
  args = parser.parse_args(argv)
  height, width = (int(v) for v in args.size.lower().split("x"))
  with tempfile.TemporaryDirectory() as tmp:
    hf_dir = args.hf_dir
    if args.preset:
      import torch  # pylint: disable=g-import-not-at-top
      from transformers import Mask2FormerForUniversalSegmentation  # pylint: disable=g-import-not-at-top
      torch.manual_seed(0)
      ref = Mask2FormerForUniversalSegmentation(
          _preset(args.preset, args.num_labels, args.num_queries)).eval()
      gen = torch.Generator().manual_seed(0)
      with torch.no_grad():
        for name, t in list(ref.named_parameters()) + list(ref.named_buffers()):
          if t.is_floating_point():
            noise = torch.randn(t.shape, generator=gen) * 0.02
            t.copy_(t.abs() + 0.5 + noise.abs()) if name.endswith("running_var") else t.add_(noise)
      ref.save_pretrained(tmp)
      hf_dir = tmp
    out, got = run_both(hf_dir, batch=args.batch, height=height, width=width)
    diffs = differences(out, got)
    worst = max(diffs.values())
    for k, v in diffs.items():
      print(f"{k:16} {v:.2e}")
    print(f"max abs difference {worst:.2e} ({'OK' if worst <= args.tolerance else 'ABOVE'} "
          f"tolerance {args.tolerance:g})")
    if worst <= args.tolerance:
      return 0
    flips = attention_mask_flips(out, got, height=height, width=width)
    first = next((i for i, n in enumerate(flips) if n), None)
    if first is None:
      return 1
    before = [v for k, v in diffs.items()
              if k.startswith("aux_") and int(k.split("[")[1][:-1]) <= first]
    print(f"attention-mask entries decided differently per layer: {flips}. Layer {first} "
          f"masks with logits within rounding of 0 (sigmoid < 0.5 is a step), so the models "
          f"attend differently from stage {first + 1} on; up to stage {first} the largest "
          f"difference is {max(before):.2e}.")
    return 0 if max(before) <= args.tolerance else 1


if __name__ == "__main__":
  sys.exit(main())
