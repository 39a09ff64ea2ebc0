"""A procedurally generated panoptic dataset: coloured shapes on textured regions.

Needs no files: every record is drawn from `np.random.default_rng([seed, split, index])`, so
any record of any split can be generated on demand (random access) and is the same on every
machine. Each image shows 1-3 "stuff" classes laid out as large Voronoi regions with wavy
borders (sky: smooth blue gradient; grass: noisy green; wall: brown bricks) and 1-`max_things`
"thing" instances (circle: red; square: yellow; triangle: purple), of varied size, rotation
and per-instance colour, that may occlude instances of other classes. Instances of one class
never touch, and an occluded instance keeps most of its area, so a tiny model learns the
task in a few hundred steps on a CPU.

Two ways to read it, both yielding the records described in `m2f_jax/data/__init__.py`:

- `SyntheticSource`: a grain random-access source generating records in memory (no disk).
- `SyntheticShapes`: a tensorflow-datasets builder (array_record, PNG-encoded images and
  COCO-style RGB-encoded panoptic maps) for the `builder.as_data_source()` path the real
  datasets take; `build_tfds(data_dir, ...)` prepares it and returns the builder.

Category ids are the contiguous class indices (0..5), so results need no id mapping.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from etils import epath
import grain
import numpy as np
import tensorflow_datasets as tfds

from m2f_jax.data.panoptic_png import id2rgb

# COCO-panoptic-style category list; "id" is also the contiguous class index.
CATEGORIES = (
    {"id": 0, "name": "circle", "isthing": 1, "color": (220, 40, 40)},
    {"id": 1, "name": "square", "isthing": 1, "color": (240, 210, 40)},
    {"id": 2, "name": "triangle", "isthing": 1, "color": (150, 60, 210)},
    {"id": 3, "name": "sky", "isthing": 0, "color": (100, 160, 230)},
    {"id": 4, "name": "grass", "isthing": 0, "color": (50, 140, 50)},
    {"id": 5, "name": "wall", "isthing": 0, "color": (150, 90, 70)},
)
NUM_CLASSES = len(CATEGORIES)
THING_IDS = tuple(c["id"] for c in CATEGORIES if c["isthing"])
STUFF_IDS = tuple(c["id"] for c in CATEGORIES if not c["isthing"])
SPLITS = ("train", "validation")
IGNORE_LABEL = 255

_MORTAR = np.array((205, 200, 190), np.float32)


def _stuff_texture(category: int, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray,
                   height: int) -> np.ndarray:
  """The texture of one stuff class at pixel centres (yy, xx) [N], float32 [N, 3]."""
  base = np.array(CATEGORIES[category]["color"], np.float32)
  noise = rng.standard_normal((yy.shape[0], 1), np.float32)
  name = CATEGORIES[category]["name"]
  if name == "sky":  # smooth vertical gradient, little noise
    return base + (yy / height - 0.5)[:, None] * 50.0 + 3.0 * noise
  if name == "grass":  # strong per-pixel noise, mostly in green
    return base + noise * np.array((10.0, 28.0, 10.0), np.float32)
  if name == "wall":  # bricks 16x8 px with light mortar lines
    oy, ox = rng.uniform(0.0, 16.0, 2)
    row = np.floor((yy + oy) / 8.0)
    mortar = ((yy + oy) % 8.0 < 1.5) | ((xx + ox + 8.0 * (row % 2)) % 16.0 < 1.5)
    return np.where(mortar[:, None], _MORTAR, base) + 6.0 * noise
  raise ValueError(f"category {category} ({name}) is not a stuff class of {STUFF_IDS}")


def _shape_mask(category: int, yy: np.ndarray, xx: np.ndarray, *, cy: float, cx: float,
                size: float, theta: float) -> np.ndarray:
  """A circle / square / triangle of diameter ~`size` centred at (cy, cx), bool [H, W]."""
  dy, dx = yy - cy, xx - cx
  name = CATEGORIES[category]["name"]
  if name == "circle":
    return dy**2 + dx**2 <= (size / 2.0) ** 2
  if name == "square":
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    half = 0.45 * size
    return (np.abs(u) <= half) & (np.abs(v) <= half)
  if name == "triangle":
    angles = theta + 2.0 * np.pi * np.arange(3) / 3.0
    vy, vx = 0.6 * size * np.sin(angles), 0.6 * size * np.cos(angles)
    inside = np.ones_like(yy, bool)
    for i in range(3):  # left of every edge of the counter-clockwise triangle
      j = (i + 1) % 3
      cross = (vx[j] - vx[i]) * (dy - vy[i]) - (vy[j] - vy[i]) * (dx - vx[i])
      inside &= cross >= 0
    return inside
  raise ValueError(f"category {category} ({name}) is not a thing class of {THING_IDS}")


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
  out = mask.copy()
  for _ in range(radius):
    grown = out.copy()
    grown[1:] |= out[:-1]
    grown[:-1] |= out[1:]
    grown[:, 1:] |= out[:, :-1]
    grown[:, :-1] |= out[:, 1:]
    out = grown
  return out


def generate_record(index: int, *, split: str = "train", seed: int = 0,
                    image_size: tuple[int, int] = (128, 128), max_things: int = 4,
                    crowd_prob: float = 0.0, noise: float = 6.0) -> dict[str, Any]:
  """Record `index` of `split`: a pure function of its arguments.

  Args:
    index: record index (any non-negative int).
    split: "train" or "validation" (independent streams of the same distribution).
    seed: dataset seed.
    image_size: (H, W).
    max_things: at most this many thing instances (at least one).
    crowd_prob: probability of one extra crowd segment (a cluster of small shapes of one
      thing class, `iscrowd` True; its pixels keep the class in the semantic map).
    noise: standard deviation of the Gaussian pixel noise over the whole image.

  Returns:
    {"image": uint8 [H, W, 3], "panoptic": int32 [H, W] (segment ids, 0 = void),
     "segments_info": {"id", "category_id": int32 [S], "iscrowd", "isthing": bool [S]},
     "semantic": uint8 [H, W] (255 = void), "image_id": int}.
  """
  if split not in SPLITS:
    raise ValueError(f"split {split!r} is not one of {SPLITS}")
  rng = np.random.default_rng([seed, SPLITS.index(split), index])
  h, w = image_size
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5  # pixel centres, [H, W] each
  min_side = min(h, w)

  # Stuff: k classes on Voronoi cells of well-separated centres, borders warped by sines.
  k = rng.choice([1, 2, 3], p=[0.2, 0.4, 0.4])
  stuff = rng.choice(STUFF_IDS, size=k, replace=False)
  centres = []
  while len(centres) < k:
    c = rng.uniform(0.0, 1.0, 2) * (h, w)
    if all(np.hypot(*(c - o)) > 0.35 * min_side for o in centres) or rng.random() < 0.05:
      centres.append(c)
  dist = []
  for cy, cx in centres:
    amplitude = rng.uniform(0.03, 0.08) * min_side
    freq, phase = rng.uniform(1.0, 3.0), rng.uniform(0.0, 2.0 * np.pi)
    warp = amplitude * np.sin(2.0 * np.pi * freq * (xx + yy) / min_side + phase)
    dist.append(np.hypot(yy - cy, xx - cx) + warp)
  region = np.argmin(np.stack(dist), axis=0)  # [H, W] index into `stuff`

  image = np.zeros((h, w, 3), np.float32)
  panoptic = np.zeros((h, w), np.int32)
  categories, crowd = [], []  # per segment id - 1
  for i, category in enumerate(stuff):
    cell = region == i
    image[cell] = _stuff_texture(int(category), rng, yy[cell], xx[cell], h)
    categories.append(int(category))
    crowd.append(False)
    panoptic[cell] = len(categories)

  # Things (and optionally one crowd segment), painted in order; later ones occlude.
  min_area = max(16, int(0.003 * h * w))
  visible: dict[int, np.ndarray] = {}  # segment id -> visible mask so far

  def accept(mask, category):
    if mask.sum() < min_area:
      return False
    near = _dilate(mask, 2)
    for sid, vis in visible.items():
      if categories[sid - 1] == category and (near & vis).any():
        return False  # instances of one class never touch
      left = (vis & ~mask).sum()
      if left < min_area or left < 0.6 * vis.sum():
        return False  # an occluded segment keeps most of its area
    return True

  def paint(mask, category, is_crowd):
    colour = np.array(CATEGORIES[category]["color"], np.float32) + rng.uniform(-25, 25, 3)
    image[mask] = colour
    categories.append(category)
    crowd.append(is_crowd)
    sid = len(categories)
    panoptic[mask] = sid
    for other in visible:
      visible[other] &= ~mask
    visible[sid] = mask.copy()

  def random_shape(category, centre, spread, size_range):
    cy, cx = np.clip(centre + rng.uniform(-spread, spread, 2), 0, 1) * (h, w)
    return _shape_mask(category, yy, xx, cy=cy, cx=cx, theta=rng.uniform(0.0, 2.0 * np.pi),
                       size=rng.uniform(*size_range) * min_side)

  if rng.random() < crowd_prob:
    category = int(rng.choice(THING_IDS))
    centre = rng.uniform(0.2, 0.8, 2)
    mask = np.zeros((h, w), bool)
    for _ in range(rng.integers(4, 8)):
      mask |= random_shape(category, centre, 0.1, (0.05, 0.08))
    if mask.sum() >= min_area:
      paint(mask, category, True)
  for _ in range(rng.integers(1, max_things + 1)):
    category = int(rng.choice(THING_IDS))
    for _ in range(20):
      mask = random_shape(category, np.array([0.5, 0.5]), 0.4, (0.15, 0.35))
      if accept(mask, category):
        paint(mask, category, False)
        break

  image += noise * rng.standard_normal(image.shape, np.float32)
  image = np.clip(image, 0, 255).astype(np.uint8)
  ids = np.arange(1, len(categories) + 1, dtype=np.int32)
  present = np.bincount(panoptic.ravel(), minlength=len(categories) + 1)[1:] > 0
  category_id = np.array(categories, np.int32)
  lut = np.full(len(categories) + 1, IGNORE_LABEL, np.uint8)
  lut[ids] = category_id
  return {
      "image": image,
      "panoptic": panoptic,
      "segments_info": {
          "id": ids[present],
          "category_id": category_id[present],
          "iscrowd": np.array(crowd, bool)[present],
          "isthing": np.isin(category_id, THING_IDS)[present],
      },
      "semantic": lut[panoptic],
      "image_id": int(index),
  }


class SyntheticSource(grain.sources.RandomAccessDataSource):
  """`num_images` records of one split, generated on demand (deterministic, picklable)."""

  def __init__(self, num_images: int, *, split: str = "train", seed: int = 0,
               image_size: tuple[int, int] = (128, 128), max_things: int = 4,
               crowd_prob: float = 0.0, noise: float = 6.0):
    if split not in SPLITS:
      raise ValueError(f"split {split!r} is not one of {SPLITS}")
    self._num_images = int(num_images)
    self._kwargs = dict(split=split, seed=seed, image_size=tuple(image_size),
                        max_things=max_things, crowd_prob=crowd_prob, noise=noise)

  def __len__(self) -> int:
    return self._num_images

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if not 0 <= index < self._num_images:
      raise IndexError(f"index {index} out of range for {self._num_images} synthetic records")
    return generate_record(index, **self._kwargs)

  def __repr__(self) -> str:
    return f"SyntheticSource(num_images={self._num_images}, {self._kwargs})"


# ------------------------------------------------------------------------------------------
# tensorflow-datasets builder
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class SyntheticShapesConfig(tfds.core.BuilderConfig):
  image_size: tuple[int, int] = (128, 128)
  num_train: int = 2000
  num_validation: int = 100
  seed: int = 0
  max_things: int = 4
  crowd_prob: float = 0.0
  noise: float = 6.0


def builder_config(**kwargs) -> SyntheticShapesConfig:
  """A config named after its values, so differently built datasets never share a folder."""
  config = SyntheticShapesConfig(name="tmp", **kwargs)
  h, w = config.image_size
  config.name = (f"s{config.seed}_{h}x{w}_n{config.num_train}-{config.num_validation}"
                 f"_t{config.max_things}_c{config.crowd_prob:g}_z{config.noise:g}")
  return config


class SyntheticShapes(tfds.core.GeneratorBasedBuilder):
  """Shapes on textured stuff regions, with panoptic and semantic labels."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [SyntheticShapesConfig(name="default", description="the defaults")]
  # tfds finds a builder's file through `importlib_resources` (not installed) for builders in
  # packages; the file is known, and there is no checksums file beside it.
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    h, w = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(h, w, 3), encoding_format="png"),
            # RGB-encoded segment ids as COCO panoptic PNGs (decode with rgb2id).
            "panoptic": tfds.features.Image(shape=(h, w, 3), encoding_format="png"),
            "semantic": tfds.features.Image(shape=(h, w, 1), encoding_format="png"),
            "segments_info": tfds.features.Sequence({
                "id": np.int32, "category_id": np.int32,
                "iscrowd": np.bool_, "isthing": np.bool_}),
            "image_id": np.int64,
        }),
        metadata=tfds.core.MetadataDict(categories=[
            {k: c[k] for k in ("id", "name", "isthing", "color")} for c in CATEGORIES]),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    config = self.builder_config
    return {"train": self._generate_examples("train", config.num_train),
            "validation": self._generate_examples("validation", config.num_validation)}

  def _generate_examples(self, split: str, num_images: int):
    from m2f_jax.data import builders  # pylint: disable=g-import-not-at-top (imports this module)
    config = self.builder_config
    source = SyntheticSource(num_images, split=split, seed=config.seed,
                             image_size=config.image_size, max_things=config.max_things,
                             crowd_prob=config.crowd_prob, noise=config.noise)
    for index in range(num_images):
      record = source[index]
      yield index, {
          "image": builders.encode_png(record["image"]),
          "panoptic": builders.encode_png(id2rgb(record["panoptic"])),
          "semantic": builders.encode_png(record["semantic"]),
          "segments_info": record["segments_info"],
          "image_id": record["image_id"],
      }


def build_tfds(data_dir: str, **config_kwargs) -> SyntheticShapes:
  """Writes the dataset as array_record under `data_dir` (once) and returns the builder.

  Read a split with `builder.as_data_source()["train"]`; the pipeline's `normalize_record`
  turns its examples into the record format (it is applied by `train_iterator` and
  `eval_batches`). Keyword arguments are the fields of `SyntheticShapesConfig`.
  """
  config = builder_config(**config_kwargs) if config_kwargs else "default"
  builder = SyntheticShapes(data_dir=data_dir, config=config, file_format="array_record")
  builder.download_and_prepare()
  return builder
