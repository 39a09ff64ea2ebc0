r"""Converts a transformers or Detectron2 Mask2Former checkpoint to an m2f_jax checkpoint.

  python -m m2f_jax.convert --from hf /path/to/hf_dir --output /tmp/m2f_ckpt
  python -m m2f_jax.convert --from detectron2 model_final.pkl \
      --config configs/coco_panoptic.py:r50 --output /tmp/m2f_ckpt
  python -m m2f_jax.convert --from checkpoint workdir/mine/checkpoints/1200 --output /tmp/mine

The output directory holds `config.json` (a full m2f_jax config, with the model's categories
in `data.categories`: the label names of a transformers checkpoint, the dataset's ids, names,
thing flags and colours for a --config naming a dataset) and Orbax `variables/`. Nothing is
written unless the whole checkpoint converts. `--from checkpoint` exports the weights of a
training checkpoint step (WORKDIR/checkpoints/STEP, its config read from the workdir) as such
a model directory.
"""

import argparse
import json
import os
import sys

from m2f_jax import checkpoint
from m2f_jax import config_lib
from m2f_jax import errors
from m2f_jax.convert import core


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m m2f_jax.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--from", dest="source_format", choices=("hf", "detectron2", "checkpoint"),
                      required=True)
  parser.add_argument("source", help="transformers directory, Detectron2 .pkl file, or "
                      "training checkpoint step directory (WORKDIR/checkpoints/STEP)")
  parser.add_argument("--output", required=True, help="checkpoint directory to write")
  parser.add_argument("--config", help="config file[:arg] matching a Detectron2 checkpoint "
                      "(e.g. configs/coco_panoptic.py:r50); for hf it is read from config.json, "
                      "for checkpoint from the workdir")
  parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
  args = parser.parse_args(argv)

  from m2f_jax.convert import detectron2, hf  # pylint: disable=g-import-not-at-top
  if not os.path.exists(args.source):
    print(f"error: {args.source} does not exist (give a transformers save_pretrained "
          "directory for --from hf, a model-zoo .pkl for --from detectron2, a training checkpoint "
          "step for --from checkpoint)", file=sys.stderr)
    return 1
  if os.path.exists(args.output) and os.listdir(args.output) and not args.overwrite:
    print(f"error: {args.output} exists and is not empty; choose another --output or pass "
          "--overwrite", file=sys.stderr)
    return 1
  try:
    if args.source_format == "hf":
      with open(os.path.join(args.source, "config.json")) as f:
        hf_cfg = json.load(f)
      model_cfg = hf.hf_config_to_model_config(hf_cfg)
      if args.config:
        config = config_lib.load_config_file(args.config)
      else:  # a transformers directory does not say what data it was trained on
        config = config_lib.base_config(model=model_cfg, dataset="coco_format",
                                        task="panoptic", max_steps=0)
        config.eval.update(min_size=None, max_size=None)  # no test-time resize unless given
      config.model = model_cfg
      config.data.class_names = hf.class_names_from_hf(hf_cfg)
      _, variables = hf.load_hf(args.source)
    elif args.source_format == "checkpoint":
      config, _, variables = checkpoint.load_for_inference(
          args.source, config_lib.load_config_file(args.config) if args.config else None)
    else:
      if not args.config:
        parser.error("--from detectron2 needs --config (the config the checkpoint was trained with)")
      config = config_lib.load_config_file(args.config)
      _, variables = detectron2.load_detectron2(args.source, config.model)
      config.model.semantic_head = False  # the official model has none (load_detectron2)
  except (core.ConversionError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  try:
    out = checkpoint.save_model(args.output, config, variables, overwrite=args.overwrite)
  except (FileExistsError, errors.UserError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
