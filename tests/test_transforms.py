"""Tests of m2f_jax/data/transforms.py: every recipe keeps the labels on the image, pads with
void, follows Detectron2's size rules, crop constraint and colour augmentation, and is
deterministic given its rng; small images only."""

import grain
import numpy as np
import PIL.Image
import pytest

from m2f_jax.data import pipeline
from m2f_jax.data import synthetic
from m2f_jax.data import targets
from m2f_jax.data import transforms

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
BLOCK, MARGIN = 16, 4  # label blocks of the colour-coded record; MARGIN >= max downscale + 1
OFFICIAL = ("coco_lsj", "ade20k_semantic", "cityscapes")
# Output sizes small relative to the 64x96 source, so that no recipe downscales more than 3x
# (LSJ with a narrowed scale range in the alignment test).
SIZES = {"synthetic": (64, 64), "coco_lsj": (64, 64), "ade20k_semantic": (48, 48),
         "cityscapes": (32, 64)}


def _coded_record(seed, height=64, width=96):
  """Blocks of BLOCK px, one panoptic segment each (one void block); the image colour codes
  the segment; "instances" carries the block interiors (MARGIN px from every block edge)."""
  rng = np.random.default_rng(seed)
  grid_h, grid_w = height // BLOCK, width // BLOCK
  ids = rng.permutation(grid_h * grid_w).reshape(grid_h, grid_w)  # 0 = void
  panoptic = np.kron(ids, np.ones((BLOCK, BLOCK), np.int32)).astype(np.int32)
  levels = np.array([40, 70, 100, 130])  # no clipping by brightness / contrast
  palette = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
  palette = palette[rng.permutation(len(palette))[:ids.size]].astype(np.uint8)
  seg_ids = np.arange(1, ids.size, dtype=np.int32)
  categories = (seg_ids % 5).astype(np.int32)
  lut = np.full(ids.size, 255, np.uint8)
  lut[seg_ids] = categories
  inner = np.arange(BLOCK)
  inner = (inner >= MARGIN) & (inner < BLOCK - MARGIN)
  interior = inner[np.arange(height) % BLOCK][:, None] & inner[np.arange(width) % BLOCK][None]
  return {
      "image": palette[panoptic], "image_id": seed, "panoptic": panoptic,
      "semantic": lut[panoptic],
      "segments_info": {"id": seg_ids, "category_id": categories,
                        "iscrowd": np.zeros(len(seg_ids), bool),
                        "isthing": np.ones(len(seg_ids), bool)},
      "instances": {"masks": interior[None].astype(np.uint8), "category_id": np.zeros(1, np.int32),
                    "iscrowd": np.zeros(1, bool)},
  }, palette, lut


def _random_record(seed, height, width):
  """Per-pixel random segment ids (a window of it is found at one place only)."""
  rng = np.random.default_rng(seed)
  panoptic = rng.integers(1, 1000, (height, width)).astype(np.int32)
  seg_ids = np.arange(1, 1000, dtype=np.int32)
  info = {"id": seg_ids, "category_id": seg_ids % 7, "iscrowd": np.zeros(999, bool),
          "isthing": np.ones(999, bool)}
  return {"image": rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "image_id": seed,
          "panoptic": panoptic, "semantic": (panoptic % 7).astype(np.uint8),
          "segments_info": info}


def _check_padding(out, image_size, pad_value):
  """Padding is a bottom / right band: image `pad_value`, void labels, no instance pixels."""
  valid = out["padding_mask"]
  assert out["image"].shape == tuple(image_size) + (3,) and out["image"].dtype == np.uint8
  for key in ("panoptic", "semantic", "padding_mask"):
    assert out[key].shape == tuple(image_size), key
  rows, cols = valid.any(1), valid.any(0)
  np.testing.assert_array_equal(valid, rows[:, None] & cols[None])
  assert rows[:rows.sum()].all() and cols[:cols.sum()].all()  # prefixes: top-left rectangle
  assert np.all(out["image"][~valid] == pad_value)
  assert not out["panoptic"][~valid].any() and np.all(out["semantic"][~valid] == 255)
  if "instances" in out:
    assert not out["instances"]["masks"][:, ~valid].any()
  return rows.sum(), cols.sum()


def _augment(recipe, record, seed, **kwargs):
  return transforms.augment(record, np.random.default_rng(seed), image_size=SIZES[recipe],
                            augmentation=recipe, **kwargs)


# ------------------------------------------------------------------------------------------
# Primitives
# ------------------------------------------------------------------------------------------


def test_nearest_indices_are_pil_nearest():
  rng = np.random.default_rng(0)
  for in_h, in_w, out_h, out_w in [(7, 13, 19, 5), (64, 96, 37, 250), (480, 640, 1365, 1024),
                                   (33, 17, 33, 16)]:
    labels = rng.integers(0, 2**20, (in_h, in_w)).astype(np.int32)
    expected = np.asarray(PIL.Image.fromarray(labels, mode="I").resize(
        (out_w, out_h), PIL.Image.Resampling.NEAREST))
    got = labels[transforms.nearest_indices(in_h, out_h)[:, None],
                 transforms.nearest_indices(in_w, out_w)]
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("resized_size,window", [
    ((151, 203), (30, 50, 64, 96)),  # upscale, inside
    ((40, 50), (0, 0, 64, 64)),      # downscale, padded bottom / right
    ((97, 131), (-5, 110, 32, 32)),  # window leaving the image on two sides
])
def test_resize_crop_pad_is_resize_then_crop(resized_size, window):
  record = _random_record(1, 60, 80)
  fused = transforms.resize_crop_pad(record, resized_size=resized_size, top=window[0],
                                     left=window[1], height=window[2], width=window[3],
                                     image_pad_value=128)
  full = transforms.resize(record, *resized_size)
  expected = transforms.crop_pad(full, *window, image_pad_value=128)
  np.testing.assert_array_equal(fused["panoptic"], expected["panoptic"])
  # Rounding ties of PIL's two uint8 passes may break the other way (rare but at simple
  # ratios such as 1.5, where noise images hold many ties).
  diff = np.abs(fused["image"].astype(int) - expected["image"])
  assert diff.max() <= 2 and np.mean(diff > 0) < 0.02
  # The full resize is PIL's (bilinear image, nearest labels).
  np.testing.assert_array_equal(full["image"], np.asarray(PIL.Image.fromarray(
      record["image"]).resize(resized_size[::-1], PIL.Image.Resampling.BILINEAR)))


def test_detectron2_size_rules():
  size = transforms.resize_shortest_edge_size
  assert size(512, 683, 256, 2048) == (256, 342)     # ADE20K, shortest edge 256
  assert size(1024, 2048, 2048, 4096) == (2048, 4096)  # Cityscapes, at the cap
  assert size(500, 2000, 1200, 4096) == (1024, 4096)  # longest edge 4800 capped
  assert size(40, 60, 60, 80) == (53, 80)
  assert size(480, 640, 800, 1333) == (800, 1067)      # COCO test-time
  assert size(640, 427, 800, 1333) == (1199, 800)
  assert transforms.resize_scale_size(480, 640, scale=1.0, target_size=(1024, 1024)) == (
      768, 1024)
  assert transforms.resize_scale_size(480, 640, scale=0.1, target_size=(1024, 1024)) == (77, 102)
  assert transforms.default_min_sizes((512, 512)) == (
      256, 307, 358, 409, 460, 512, 563, 614, 665, 716, 768, 819, 870, 921, 972, 1024)
  cityscapes = transforms.default_min_sizes((512, 1024))
  assert (cityscapes[0], cityscapes[1], cityscapes[-1]) == (512, 614, 2048)


class _ReplayRandom:
  """Python's `random` API on a numpy Generator, drawing as `transforms.color_aug_ssd`."""

  def __init__(self, rng):
    self.rng = rng

  def randrange(self, n):
    return int(self.rng.integers(n))

  def uniform(self, a, b):
    return self.rng.uniform(a, b)

  def randint(self, a, b):
    return int(self.rng.integers(a, b + 1))


def _detectron2_color_aug(img_rgb, random):
  """Detectron2's ColorAugSSDTransform.apply_image (img_format "RGB"), transcribed."""
  import cv2  # pylint: disable=g-import-not-at-top

  def convert(img, alpha=1, beta=0):
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

  def brightness(img):
    return convert(img, beta=random.uniform(-32, 32)) if random.randrange(2) else img

  def contrast(img):
    return convert(img, alpha=random.uniform(0.5, 1.5)) if random.randrange(2) else img

  def saturation(img):
    if random.randrange(2):
      img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
      img[:, :, 1] = convert(img[:, :, 1], alpha=random.uniform(0.5, 1.5))
      return cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
    return img

  def hue(img):
    if random.randrange(2):
      img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
      img[:, :, 0] = (img[:, :, 0].astype(int) + random.randint(-18, 18)) % 180
      return cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
    return img

  img = np.ascontiguousarray(img_rgb[:, :, [2, 1, 0]])
  img = brightness(img)
  if random.randrange(2):
    img = hue(saturation(contrast(img)))
  else:
    img = contrast(hue(saturation(img)))
  return img[:, :, [2, 1, 0]]


def test_color_aug_ssd_is_detectron2s():
  image = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
  changed = 0
  for seed in range(16):
    got = transforms.color_aug_ssd(image, np.random.default_rng(seed))
    expected = _detectron2_color_aug(image, _ReplayRandom(np.random.default_rng(seed)))
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.uint8 and got.shape == image.shape
    changed += not np.array_equal(got, image)
  assert changed >= 12  # unchanged with probability 1/16 (every step skipped)


def test_crop_category_constraint():
  semantic = np.zeros((100, 100), np.uint8)
  semantic[:, 50:] = 1

  def ok(window):
    top, left, h, w = window
    _, counts = np.unique(semantic[top:top + h, left:left + w], return_counts=True)
    return len(counts) > 1 and counts.max() < 0.75 * counts.sum()

  def rate(max_area, sem=semantic):
    windows = [transforms.crop_window(sem, (100, 100), (40, 40), np.random.default_rng(s),
                                      single_category_max_area=max_area) for s in range(300)]
    assert all(w[2:] == (40, 40) for w in windows)
    return np.mean([ok(w) for w in windows])

  # One draw satisfies the rule with p = 19/61; ten draws: 1 - (42/61)**10 = 0.976.
  assert rate(1.0) < 0.45 and rate(0.75) > 0.93
  # Ignored pixels count for no category: with class 0 ignored a window never qualifies,
  # so the tenth draw is kept, distributed as a single draw.
  assert rate(0.75, np.where(semantic == 0, 255, semantic).astype(np.uint8)) < 0.45
  # The crop is clipped to small images.
  assert transforms.crop_window(None, (30, 100), (40, 40), np.random.default_rng(0))[2:] == (
      30, 40)
  # Through the recipe (derived from the panoptic map here).
  record = _random_record(0, 40, 40)
  del record["semantic"]
  record["panoptic"] = np.where(np.arange(40) < 20, 1, 2).astype(np.int32)[None].repeat(40, 0)
  record["segments_info"]["category_id"] = np.arange(999, dtype=np.int32) % 2
  good = 0
  for seed in range(40):
    out = transforms.shortest_edge_crop_augment(
        record, np.random.default_rng(seed), image_size=(16, 16), min_sizes=(40,),
        max_size=None, single_category_max_area=0.75, color_aug=False, flip=False)
    _, counts = np.unique(out["panoptic"], return_counts=True)
    good += len(counts) > 1 and counts.max() < 0.75 * counts.sum()
  assert good >= 36


# ------------------------------------------------------------------------------------------
# Recipes
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", transforms.AUGMENTATIONS)
def test_labels_follow_the_image(recipe):
  """Colour -> label pixel for pixel (away from resampling borders), labels exact, padding
  void, for each recipe; colour augmentation off, then on."""
  pad_value = 0 if recipe == "synthetic" else 128
  kwargs = {"synthetic": dict(scale_range=(0.6, 1.6)), "coco_lsj": dict(scale_range=(0.75, 2.0))}
  checked = 0
  for seed in range(6):
    record, palette, lut = _coded_record(seed)
    if recipe in ("ade20k_semantic", "cityscapes"):  # colour augmentation off
      out = transforms.shortest_edge_crop_augment(
          record, np.random.default_rng(seed), image_size=SIZES[recipe],
          min_sizes=transforms.default_min_sizes(SIZES[recipe]),
          max_size=4 * max(SIZES[recipe]), color_aug=False)
    else:
      out = _augment(recipe, record, seed, **kwargs.get(recipe, {}))
    _check_padding(out, SIZES[recipe], pad_value)
    np.testing.assert_array_equal(out["semantic"], lut[out["panoptic"]])  # labels exact
    interior = out["instances"]["masks"][0].astype(bool)
    assert interior.sum() > 0
    np.testing.assert_array_equal(out["image"][interior], palette[out["panoptic"][interior]])
    checked += interior.sum()
    t = pipeline.train_example(out, task="panoptic", num_targets=30, pixel_mean=MEAN,
                               pixel_std=STD, zero_padding=recipe == "synthetic")
    assert not t["masks"][:, ~out["padding_mask"]].any()
    pad_image = t["images"][~out["padding_mask"]]
    expected = 0.0 if recipe == "synthetic" else (pad_value - np.array(MEAN)) / STD
    np.testing.assert_allclose(pad_image, np.broadcast_to(expected, pad_image.shape), rtol=1e-6)
  assert checked > 1000
  if recipe not in ("ade20k_semantic", "cityscapes"):
    return
  # With colour augmentation: a pixelwise map, so colours stay a function of the label and
  # the label a function of the colour (the palette avoids clipping into one colour).
  for seed in range(6):
    record, _, lut = _coded_record(seed)
    out = _augment(recipe, record, seed)
    _check_padding(out, SIZES[recipe], 128)
    np.testing.assert_array_equal(out["semantic"], lut[out["panoptic"]])
    interior = out["instances"]["masks"][0].astype(bool)
    pairs = np.unique(np.concatenate([out["panoptic"][interior][:, None],
                                      out["image"][interior].astype(np.int64)], 1), axis=0)
    assert len(np.unique(pairs[:, 0])) == len(pairs)  # label -> one colour
    assert len(np.unique(pairs[:, 1:], axis=0)) == len(pairs)  # colour -> one label


def test_lsj_window_and_sizes():
  """ResizeScale size, FixedSizeCrop window (one uniform factor for both offsets), padding."""
  record = _random_record(3, 48, 72)
  for seed, scale in enumerate([0.5, 1.0, 1.5, 2.0, 0.1]):
    out = transforms.augment(record, np.random.default_rng(seed), image_size=(64, 64),
                             augmentation="coco_lsj", scale_range=(scale, scale), flip=False)
    new_h, new_w = transforms.resize_scale_size(48, 72, scale=scale, target_size=(64, 64))
    valid_h, valid_w = _check_padding(out, (64, 64), 128)
    assert (valid_h, valid_w) == (min(new_h, 64), min(new_w, 64))
    full = transforms.resize(record, new_h, new_w)["panoptic"]
    max_h, max_w = new_h - valid_h, new_w - valid_w
    matches = [(top, left) for top in range(max_h + 1) for left in range(max_w + 1)
               if np.array_equal(full[top:top + valid_h, left:left + valid_w],
                                 out["panoptic"][:valid_h, :valid_w])]
    assert len(matches) == 1
    (top, left), = matches
    lo = max((top - 0.5) / max_h if max_h else 0, (left - 0.5) / max_w if max_w else 0)
    hi = min((top + 0.5) / max_h if max_h else 1, (left + 0.5) / max_w if max_w else 1)
    assert lo <= hi + 1e-9, (top, left, max_h, max_w)  # one u: top = round(u * max_h), ...
  # The default scale range is the official (0.1, 2.0): the width is min(64 s, 64) here.
  scales = [_augment("coco_lsj", record, seed)["padding_mask"].any(0).sum() / 64
            for seed in range(40)]
  assert min(scales) < 0.3 and max(scales) == 1.0


@pytest.mark.parametrize("recipe", ["ade20k_semantic", "cityscapes"])
def test_shortest_edge_crop_window_and_sizes(recipe):
  crop_h, crop_w = SIZES[recipe]
  record = _random_record(5, 40, 60)
  for seed, short in enumerate([16, 30, 64, 90]):
    out = _augment(recipe, record, seed, min_size_train=(short,), max_size_train=100,
                   flip=False)
    new_h, new_w = transforms.resize_shortest_edge_size(40, 60, short, 100)
    valid_h, valid_w = _check_padding(out, (crop_h, crop_w), 128)
    assert (valid_h, valid_w) == (min(new_h, crop_h), min(new_w, crop_w))
    full = transforms.resize(record, new_h, new_w)["panoptic"]
    assert sum(np.array_equal(full[t:t + valid_h, l:l + valid_w],
                              out["panoptic"][:valid_h, :valid_w])
               for t in range(new_h - valid_h + 1) for l in range(new_w - valid_w + 1)) == 1
  # The official short-edge choices of the crop size (seen where the short side is not
  # cropped), and the flip (of the crop only, before padding).
  source_size = (30, 40) if recipe == "ade20k_semantic" else (40, 30)
  short_axis = int(np.argmin(source_size))
  record = _random_record(6, *source_size)
  sizes, flipped = set(), 0
  for seed in range(60):
    out = _augment(recipe, record, seed)
    valid = (out["padding_mask"].any(1).sum(), out["padding_mask"].any(0).sum())
    if valid[short_axis] < SIZES[recipe][short_axis]:
      sizes.add(int(valid[short_axis]))
    noflip = _augment(recipe, record, seed, flip=False)
    h, w = valid
    if not np.array_equal(out["panoptic"], noflip["panoptic"]):
      flipped += 1
      np.testing.assert_array_equal(out["panoptic"][:h, :w], noflip["panoptic"][:h, :w][:, ::-1])
      np.testing.assert_array_equal(out["image"][:h, :w], noflip["image"][:h, :w][:, ::-1])
  assert 15 <= flipped <= 45
  assert len(sizes) >= 2 and sizes <= set(transforms.default_min_sizes(SIZES[recipe]))


@pytest.mark.parametrize("recipe", transforms.AUGMENTATIONS)
def test_deterministic_given_the_rng(recipe):
  record = synthetic.generate_record(2, image_size=(40, 56))
  a, b, c = (_augment(recipe, record, s) for s in (7, 7, 8))
  for key in ("image", "panoptic", "semantic", "padding_mask"):
    np.testing.assert_array_equal(a[key], b[key])
  assert any(not np.array_equal(a[k], c[k]) for k in ("image", "panoptic", "padding_mask"))
  with pytest.raises(ValueError, match="augmentation"):
    transforms.augment(record, np.random.default_rng(0), image_size=(32, 32),
                       augmentation="coco")


@pytest.mark.parametrize("recipe,task", [("coco_lsj", "panoptic"),
                                         ("ade20k_semantic", "semantic")])
def test_train_iterator_with_official_recipes(recipe, task):
  source = synthetic.SyntheticSource(4, image_size=(40, 56))
  kwargs = dict(batch_size=2, seed=0, task=task, num_targets=10, image_size=(32, 32),
                pixel_mean=MEAN, pixel_std=STD, augmentation=recipe,
                shard_options=grain.sharding.NoSharding())
  a = [next(it) for it in [pipeline.train_iterator(source, **kwargs)] for _ in range(2)]
  b = [next(it) for it in [pipeline.train_iterator(source, **kwargs)] for _ in range(2)]
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  batch = a[0]
  assert batch["images"].shape == (2, 32, 32, 3) and batch["masks"].shape == (2, 10, 32, 32)
  pad = ~batch["padding_mask"]
  np.testing.assert_allclose(batch["images"][pad],
                             np.broadcast_to((128 - np.array(MEAN)) / STD,
                                             batch["images"][pad].shape), rtol=1e-6)
  assert not (batch["masks"] & pad[:, None]).any()
  with pytest.raises(ValueError, match="augmentation"):
    pipeline.train_iterator(source, **dict(kwargs, augmentation="lsj"))


def test_eval_resize_is_resize_shortest_edge():
  source = synthetic.SyntheticSource(2, split="validation", image_size=(40, 60))
  batch = next(iter(pipeline.eval_batches(source, batch_size=2, pixel_mean=MEAN,
                                          pixel_std=STD, min_size=50, max_size=1000)))
  assert tuple(batch["image_size"][0]) == transforms.resize_shortest_edge_size(40, 60, 50, 1000)
  assert batch["images"].shape[1:3] == (64, 96)  # padded to multiples of 32
  np.testing.assert_allclose(
      batch["images"][0, :50, :75],
      targets.normalize_image(transforms.resize_image(source[0]["image"], 50, 75),
                              pixel_mean=MEAN, pixel_std=STD))
