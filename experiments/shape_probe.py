r"""Can the backbone learn the synthetic classes? A per-pixel probe, without the decoders.

  python experiments/shape_probe.py                       # tiny.py's backbone, 600 steps
  python experiments/shape_probe.py --min-thing-size 32   # larger things (length units)
  python experiments/shape_probe.py --head pooled         # classify each true segment

Trains `--config`'s backbone from scratch with a light per-pixel head (each of res2..res5
projected to 64 channels, resized to stride 4 and summed, GroupNorm, ReLU, a 3x3 and a
1x1 convolution) on the synthetic training images, with the dense class loss of
`model.semantic_head` (`m2f_jax.criterion.semantic_loss`), the main job's batch size,
image size, optimizer and schedule (AdamW, poly). Then prints the per-class IoU at stride 4
on `--eval-images` validation images (the ground truth of a stride-4 pixel: the class
covering more than half of its 4x4 block; other pixels are not counted) and the confusion
matrix (rows: truth, columns: prediction, percent of the row).

`--head pooled` asks less of the backbone: each ground-truth segment's class from the
backbone features averaged INSIDE its true mask (res3..res5 projected to 64 channels, pooled,
summed, a 64-wide MLP), trained with a cross-entropy per segment; it prints the accuracy per
class over the validation segments and their confusion. That is the read-out the decoder's
queries make (masked attention over a segment's features), given perfect masks.

It separates "the backbone cannot tell the classes apart yet" from "the decoder does not
use what the backbone knows": the thing classes differ only by shape and the stuff classes
only by texture (`m2f_jax/data/synthetic.py`), so their IoUs show which cue is learnt.
`--min-thing-size` (in `synthetic.MIN_THING_SIZE` units), `--sibling-prob` and `--max-things`
change the generated data of this run only.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import optax

from m2f_jax import config_lib
from m2f_jax import criterion
from m2f_jax.data import pipeline
from m2f_jax.data import synthetic
from m2f_jax.models.mask2former import build_backbone
from m2f_jax.training import optimizer as optim_lib


class Probe(nn.Module):
  """Backbone -> res2..res5 at stride 4, summed -> per-pixel class logits [B, H/4, W/4, K]."""
  backbone: nn.Module
  num_classes: int
  width: int = 64

  @nn.compact
  def __call__(self, images):
    features = self.backbone(images)
    b, h, w, _ = images.shape
    x = sum(jax.image.resize(nn.Dense(self.width)(features[name]), (b, h // 4, w // 4,
                                                                    self.width), "bilinear")
            for name in sorted(features))
    x = nn.relu(nn.GroupNorm(num_groups=min(32, self.width))(x))
    x = nn.relu(nn.Conv(self.width, (3, 3))(x))
    return nn.Dense(self.num_classes)(x)


def pool_inside(features, masks):
  """Mean of `features` [B, h, w, C] inside each mask [B, N, H, W] (H, W multiples of h, w;
  each feature cell weighted by the fraction of its block the mask covers) -> [B, N, C];
  zeros for an empty mask."""
  b, n, height, width = masks.shape
  h, w = features.shape[1:3]
  cover = masks.astype(jnp.float32).reshape(b, n, h, height // h, w, width // w).mean((3, 5))
  total = jnp.einsum("bnhw,bhwc->bnc", cover, features.astype(jnp.float32))
  return total / jnp.maximum(cover.sum((2, 3)), 1e-6)[..., None]


class PooledProbe(nn.Module):
  """Backbone -> res3..res5 projected and averaged inside each true mask -> [B, N, K] logits."""
  backbone: nn.Module
  num_classes: int
  width: int = 64

  @nn.compact
  def __call__(self, images, masks):
    features = self.backbone(images)
    x = sum(pool_inside(nn.Dense(self.width)(features[name]), masks)
            for name in ("res3", "res4", "res5"))
    return nn.Dense(self.num_classes)(nn.relu(nn.Dense(self.width)(x)))


def segment_loss(logits, labels, valid):
  """Mean cross-entropy over the valid segments (labels >= K, e.g. crowd, count as none)."""
  num_classes = logits.shape[-1]
  keep = valid & (labels < num_classes)
  ce = optax.softmax_cross_entropy_with_integer_labels(
      logits, jnp.where(keep, labels, 0).astype(jnp.int32))
  return jnp.sum(ce * keep) / jnp.maximum(jnp.sum(keep), 1)


def block_truth(masks, labels, valid, num_classes: int) -> np.ndarray:
  """[B, H/4, W/4] class covering > half of each 4x4 block (its targets), -1 elsewhere."""
  b, m, h, w = masks.shape
  cover = masks.astype(np.float32).reshape(b, m, h // 4, 4, w // 4, 4).mean((3, 5))
  onehot = np.eye(num_classes + 1)[np.where(valid, labels, num_classes)][..., :num_classes]
  dist = np.einsum("bmhw,bmk->bhwk", cover, onehot)
  return np.where(dist.max(-1) > 0.5, dist.argmax(-1), -1)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/tiny.py",
                      help="config[:arg] whose backbone, batch, image size and optimizer to use")
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--image-size", type=int, default=None, help="default: the config's")
  parser.add_argument("--eval-images", type=int, default=96)
  parser.add_argument("--min-thing-size", type=float, default=None,
                      help=f"default: synthetic.MIN_THING_SIZE ({synthetic.MIN_THING_SIZE})")
  parser.add_argument("--sibling-prob", type=float, default=0.4)
  parser.add_argument("--max-things", type=int, default=5)
  parser.add_argument("--head", choices=("pixel", "pooled"), default="pixel",
                      help="pixel: per-pixel classes; pooled: each true segment's class")
  args = parser.parse_args(argv)

  config = config_lib.load_config_file(args.config)
  if args.min_thing_size is not None:
    synthetic.MIN_THING_SIZE = args.min_thing_size  # this process's generated data only
  size = args.image_size or config.data.image_size[0]
  batch_size = config.data.batch_size
  num_classes = synthetic.NUM_CLASSES
  config.optim.max_steps = args.steps
  backbone = build_backbone(config.model.backbone, jnp.float32)
  pooled = args.head == "pooled"
  model = (PooledProbe if pooled else Probe)(backbone, num_classes)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)),
                      *([jnp.zeros((1, 1, size, size))] if pooled else []))
  tx = optim_lib.make_optimizer(config.optim, params)  # the main job's AdamW and schedule
  opt_state = tx.init(params)

  def batches(split, count, flip):
    source = synthetic.SyntheticSource(count, split=split, sibling_prob=args.sibling_prob,
                                       max_things=args.max_things)
    return pipeline.train_iterator(
        source, batch_size=batch_size, seed=0, task="panoptic", num_targets=12,
        image_size=(size, size), pixel_mean=config.model.pixel_mean,
        pixel_std=config.model.pixel_std, flip=flip, augmentation="synthetic",
        shard_options=grain.sharding.NoSharding())

  def loss_fn(p, batch):
    if pooled:
      return segment_loss(model.apply(p, batch["images"], batch["masks"]), batch["labels"],
                          batch["valid"])
    return criterion.semantic_loss(
        semantic_logits=model.apply(p, batch["images"]), target_labels=batch["labels"],
        target_masks=batch["masks"], valid=batch["valid"])

  @jax.jit
  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  keys = ("images", "labels", "masks", "valid")
  train = batches("train", config.data.num_train, True)
  start, losses = time.time(), []
  for i in range(args.steps):
    batch = next(train)
    params, opt_state, loss = step(params, opt_state, {k: batch[k] for k in keys})
    losses.append(float(loss))
    if (i + 1) % 100 == 0 or i + 1 == args.steps:
      print(f"step {i + 1}/{args.steps}  loss {np.mean(losses[-100:]):.3f}  "
            f"{time.time() - start:.0f} s", flush=True)

  predict = jax.jit(lambda p, *x: model.apply(p, *x).argmax(-1))
  confusion = np.zeros((num_classes, num_classes), np.int64)
  val = batches("validation", args.eval_images, False)
  for _ in range(max(1, args.eval_images // batch_size)):
    batch = next(val)
    if pooled:  # one count per true segment
      pred = np.asarray(predict(params, batch["images"], batch["masks"]))
      truth = np.where(batch["valid"] & (batch["labels"] < num_classes), batch["labels"], -1)
    else:  # one count per stride-4 pixel
      pred = np.asarray(predict(params, batch["images"]))
      truth = block_truth(batch["masks"], batch["labels"], batch["valid"], num_classes)
    confusion += np.bincount(truth[truth >= 0] * num_classes + pred[truth >= 0],
                             minlength=num_classes**2).reshape(num_classes, num_classes)
  names = [c["name"] for c in synthetic.CATEGORIES]
  things = [i for i, c in enumerate(synthetic.CATEGORIES) if c["isthing"]]
  stuff = [i for i, c in enumerate(synthetic.CATEGORIES) if not c["isthing"]]
  print(f"\n{args.steps} steps, batch {batch_size}, {size}x{size}, "
        f"min thing size {synthetic.MIN_THING_SIZE} units, sibling prob {args.sibling_prob}, "
        f"max things {args.max_things}, head {args.head}")
  if pooled:
    correct = np.diag(confusion)
    acc = 100 * correct / np.maximum(confusion.sum(1), 1)
    print("accuracy  " + "  ".join(f"{n} {v:.1f}" for n, v in zip(names, acc)))
    over = {group: 100 * correct[ids].sum() / max(1, confusion[ids].sum())
            for group, ids in (("things", things), ("stuff", stuff))}
    print(f"accuracy over segments  things {over['things']:.1f}  stuff {over['stuff']:.1f}")
    _print_confusion(confusion, names)
    return 0
  inter = np.diag(confusion).astype(np.float64)
  union = confusion.sum(0) + confusion.sum(1) - inter
  iou = 100 * inter / np.maximum(union, 1)
  print("IoU  " + "  ".join(f"{n} {v:.1f}" for n, v in zip(names, iou)))
  print(f"mean IoU  things {iou[things].mean():.1f}  stuff {iou[stuff].mean():.1f}")
  _print_confusion(confusion, names)
  return 0


def _print_confusion(confusion, names):
  print("confusion (rows: truth, columns: prediction, % of the row)")
  rows = 100 * confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
  print("          " + " ".join(f"{n[:8]:>8}" for n in names))
  for name, row in zip(names, rows):
    print(f"{name[:8]:>8}  " + " ".join(f"{v:8.0f}" for v in row))


if __name__ == "__main__":
  sys.exit(main())
