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


def compare(hf_dir: str, *, batch: int, height: int, width: int, seed: int = 0) -> dict:
  """Max abs differences {output name: value} between transformers and m2f_jax."""
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import Mask2FormerForUniversalSegmentation  # pylint: disable=g-import-not-at-top
  from m2f_jax import convert  # pylint: disable=g-import-not-at-top
  ref = Mask2FormerForUniversalSegmentation.from_pretrained(hf_dir).eval()
  model, variables = convert.load_hf(hf_dir)
  images = np.random.RandomState(seed).randn(batch, height, width, 3).astype(np.float32)
  with torch.no_grad():
    out = ref(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), output_auxiliary_logits=True)
  got = jax.jit(model.apply)(variables, images)
  diffs = {"pred_logits": np.abs(got["pred_logits"] - out.class_queries_logits.numpy()).max(),
           "pred_masks": np.abs(got["pred_masks"] - out.masks_queries_logits.numpy()).max()}
  for i, aux in enumerate(out.auxiliary_logits):
    diffs[f"aux_logits[{i}]"] = np.abs(got["aux_logits"][i] - aux["class_queries_logits"].numpy()).max()
    diffs[f"aux_masks[{i}]"] = np.abs(got["aux_masks"][i] - aux["masks_queries_logits"].numpy()).max()
  return {k: float(v) for k, v in diffs.items()}


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
    diffs = compare(hf_dir, batch=args.batch, height=height, width=width)
  worst = max(diffs.values())
  for k, v in diffs.items():
    print(f"{k:16} {v:.2e}")
  print(f"max abs difference {worst:.2e} ({'OK' if worst <= args.tolerance else 'ABOVE'} "
        f"tolerance {args.tolerance:g})")
  return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
  sys.exit(main())
