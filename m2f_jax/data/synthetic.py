"""A procedurally generated panoptic dataset where class is shape or texture, never colour.

Needs no files: every record is drawn from `np.random.default_rng([seed, split, index])`, so
any record of any split can be generated on demand (random access) and is the same on every
machine; the two splits are independent streams (disjoint records). Each image shows:

- 1-3 "stuff" classes told apart by their TEXTURE, laid out as Voronoi regions with wavy
  borders: stripes (horizontal or vertical bands), checks (a checkerboard), dots (a square
  lattice of small dots), each tilted by up to `MAX_TILT`. Each region paints its pattern with two colours of the
  shared `PALETTE`, drawn per image.
- 1-`max_things` "thing" instances told apart by their SHAPE: disc, square, triangle, cross,
  each with its own flat colour from the same palette, upright but tilted by up to
  `MAX_TILT`, from 16 units (at least 8 px) to 80% of the short side (log-uniform). Instances occlude one another in painting order;
  an instance of the same class is often placed against an earlier one, so same-class
  instances touch and overlap (the panoptic map stays exact: a pixel belongs to the topmost
  instance). Every instance keeps at least a third of its area visible.
- Optionally (`crowd_prob`) one crowd segment: a cluster of small shapes of one thing class.
- Gaussian pixel noise over the whole image.

With `image_size=None` (the default) each image has its own size, sides 96-256 px with an
aspect ratio between 1:2 and 2:1, so evaluation exercises resizing and padding; lengths (object
sizes, texture periods) scale with the longest side, so an image resized to a fixed longest
side looks the same whatever its original size. An explicit `image_size=(H, W)` gives exactly
that size (tiny sizes work; the patterns then get fine).

Every class draws its colours from one palette, so a per-pixel colour model cannot label the
pixels (tests/test_synthetic.py: a nearest-mean-colour classifier is at most 50% accurate;
`experiments/colour_baseline.py`: a Gaussian colour model with connected components reaches
PQ <= 30) while the tiny model of `configs/tiny.py` learns shape and texture on a CPU.

Two ways to read it, both yielding the records described in `m2f_jax/data/__init__.py`:

- `SyntheticSource`: a grain random-access source generating records in memory (no disk).
- `SyntheticShapes`: a tensorflow-datasets builder (array_record, PNG-encoded images and
  COCO-style RGB-encoded panoptic maps) for the `builder.as_data_source()` path the real
  datasets take; `build_tfds(data_dir, ...)` prepares it and returns the builder.

Category ids are the contiguous class indices (0..6), so results need no id mapping. The
same shapes and textures move through time in `m2f_jax/data/synthetic_video.py`.
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
    {"id": 0, "name": "disc", "isthing": 1},
    {"id": 1, "name": "square", "isthing": 1},
    {"id": 2, "name": "triangle", "isthing": 1},
    {"id": 3, "name": "cross", "isthing": 1},
    {"id": 4, "name": "stripes", "isthing": 0},
    {"id": 5, "name": "checks", "isthing": 0},
    {"id": 6, "name": "dots", "isthing": 0},
)
NUM_CLASSES = len(CATEGORIES)
THING_IDS = tuple(c["id"] for c in CATEGORIES if c["isthing"])
STUFF_IDS = tuple(c["id"] for c in CATEGORIES if not c["isthing"])
SPLITS = ("train", "validation")
IGNORE_LABEL = 255

# The one palette every class draws from (RGB).
PALETTE = np.array([
    (220, 50, 50), (240, 140, 40), (235, 215, 60), (70, 170, 70), (40, 170, 170),
    (60, 100, 220), (140, 70, 200), (230, 110, 180), (130, 90, 60), (128, 128, 128),
    (235, 235, 235), (35, 35, 45),
], np.float32)

# Varied image sizes: sides in [96, 256], aspect ratio within [1/2, 2].
SIZE_RANGE = (96, 256)
MAX_ASPECT = 2.0
# Lengths are given in units of (longest side / REFERENCE_SIDE) pixels.
REFERENCE_SIDE = 128
MIN_THING_SIZE = 16.0  # units
MAX_THING_FRACTION = 0.8  # of the short side
MIN_VISIBLE_FRACTION = 1.0 / 3.0  # of an instance's own area
MIN_CONTRAST = 110.0  # RGB distance between the two colours of a texture
MAX_TILT = 0.25  # radians: shapes stand upright and patterns run along the axes, up to this


def random_tilt(rng: np.random.Generator) -> float:
  return float(rng.uniform(-MAX_TILT, MAX_TILT))


def random_image_size(rng: np.random.Generator) -> tuple[int, int]:
  """(H, W) with sides in `SIZE_RANGE` and aspect ratio within [1/MAX_ASPECT, MAX_ASPECT]."""
  while True:
    h, w = (int(s) for s in rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1, 2))
    if max(h, w) <= MAX_ASPECT * min(h, w):
      return h, w


def unit(height: int, width: int) -> float:
  """Pixels per length unit: the longest side over `REFERENCE_SIDE`."""
  return max(height, width) / REFERENCE_SIDE


# ------------------------------------------------------------------------------------------
# Stuff: layout and textures
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Texture:
  """One stuff region's pattern: class, two palette colours and pattern geometry (pixels)."""
  category: int
  colours: np.ndarray  # float32 [2, 3]: background, pattern
  period: float
  theta: float
  phase: tuple[float, float]


def random_texture(category: int, rng: np.random.Generator, u: float,
                   exclude: tuple[int, ...] = ()) -> Texture:
  """A random pattern of stuff class `category` at `u` pixels per unit."""
  choices = [i for i in range(len(PALETTE)) if i not in exclude]
  while True:  # two colours far enough apart for the pattern to show
    pair = rng.choice(choices, size=2, replace=False)
    if np.linalg.norm(PALETTE[pair[0]] - PALETTE[pair[1]]) >= MIN_CONTRAST:
      break
  colours = PALETTE[pair] + rng.uniform(-12.0, 12.0, (2, 3)).astype(np.float32)
  name = CATEGORIES[category]["name"]
  period = {"stripes": (8.0, 14.0), "checks": (5.0, 8.0), "dots": (8.0, 12.0)}
  if name not in period:
    raise ValueError(f"category {category} ({name}) is not a stuff class of {STUFF_IDS}")
  theta = random_tilt(rng)
  if name == "stripes":  # horizontal or vertical bands
    theta += float(rng.choice([0.0, np.pi / 2]))
  return Texture(category=category, colours=colours, period=rng.uniform(*period[name]) * u,
                 theta=theta, phase=tuple(rng.uniform(0.0, 1.0, 2)))


def paint_texture(texture: Texture, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
  """The texture at pixel centres (yy, xx) (broadcasting to [...]) -> float32 [..., 3]."""
  cos, sin = np.float32(np.cos(texture.theta)), np.float32(np.sin(texture.theta))
  a = (xx * cos + yy * sin) / np.float32(texture.period) + np.float32(texture.phase[0])
  b = (yy * cos - xx * sin) / np.float32(texture.period) + np.float32(texture.phase[1])
  name = CATEGORIES[texture.category]["name"]
  if name == "stripes":  # bands half a period wide
    on = a % 1.0 < 0.5
  elif name == "checks":  # cells of one period
    on = (np.floor(a) + np.floor(b)) % 2 == 1
  else:  # dots of radius 0.22 period on a square lattice
    on = (a - np.round(a)) ** 2 + (b - np.round(b)) ** 2 < 0.22**2
  return np.where(on[..., None], texture.colours[1], texture.colours[0])


def paint_stuff(region: np.ndarray, textures: list[Texture]) -> np.ndarray:
  """Region `i` of `region` (int [H, W]) painted with `textures[i]` -> float32 [H, W, 3]."""
  height, width = region.shape
  ys = np.arange(height, dtype=np.float32)[:, None] + 0.5  # pixel centres, [H, 1]
  xs = np.arange(width, dtype=np.float32)[None, :] + 0.5  # [1, W]
  image = paint_texture(textures[0], ys, xs)  # [H, W, 3]
  for i, texture in enumerate(textures[1:], start=1):
    image = np.where((region == i)[..., None], paint_texture(texture, ys, xs), image)
  return image


def stuff_layout(rng: np.random.Generator, height: int, width: int
                 ) -> tuple[np.ndarray, list[int]]:
  """1-3 distinct stuff classes on Voronoi cells with wavy borders -> (region [H, W], classes).

  `region[y, x]` indexes the returned class list.
  """
  min_side = min(height, width)
  k = int(rng.choice([1, 2, 3], p=[0.2, 0.4, 0.4]))
  stuff = [int(c) for c in rng.choice(STUFF_IDS, size=k, replace=False)]
  ys = np.arange(height, dtype=np.float32)[:, None] + 0.5  # pixel centres, [H, 1]
  xs = np.arange(width, dtype=np.float32)[None, :] + 0.5  # [1, W]
  centres = []
  while len(centres) < k:
    c = rng.uniform(0.0, 1.0, 2) * (height, width)
    if all(np.hypot(*(c - o)) > 0.35 * min_side for o in centres) or rng.random() < 0.05:
      centres.append(c)
  dist = []
  for cy, cx in centres:
    amplitude = rng.uniform(0.03, 0.08) * min_side
    freq, phase = rng.uniform(1.0, 3.0), rng.uniform(0.0, 2.0 * np.pi)
    warp = amplitude * np.sin(np.float32(2.0 * np.pi * freq / min_side) * (xs + ys)
                              + np.float32(phase))
    dist.append(np.hypot(ys - np.float32(cy), xs - np.float32(cx)) + warp)
  if k == 1:
    return np.zeros((height, width), np.int64), stuff
  return np.argmin(np.stack(dist), axis=0), stuff  # [H, W]


# ------------------------------------------------------------------------------------------
# Things: shapes
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Shape:
  """One thing: class, centre (pixels), size (pixels, ~ the diameter), rotation, colour."""
  category: int
  cy: float
  cx: float
  size: float
  theta: float
  colour: np.ndarray  # float32 [3]


def shape_mask(shape: Shape, height: int, width: int) -> np.ndarray:
  """The pixels inside `shape`, bool [H, W] (evaluated on its bounding box only)."""
  mask = np.zeros((height, width), bool)
  reach = 0.7 * shape.size + 1.0  # every shape lies within this distance of its centre
  y0, y1 = max(0, int(shape.cy - reach)), min(height, int(np.ceil(shape.cy + reach)))
  x0, x1 = max(0, int(shape.cx - reach)), min(width, int(np.ceil(shape.cx + reach)))
  if y0 >= y1 or x0 >= x1:
    return mask
  dy, dx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5  # [h, w] each
  dy, dx = dy - shape.cy, dx - shape.cx
  u = dx * np.cos(shape.theta) + dy * np.sin(shape.theta)
  v = -dx * np.sin(shape.theta) + dy * np.cos(shape.theta)
  s = shape.size
  name = CATEGORIES[shape.category]["name"]
  if name == "disc":
    inside = dy**2 + dx**2 <= (s / 2.0) ** 2
  elif name == "square":
    inside = (np.abs(u) <= 0.42 * s) & (np.abs(v) <= 0.42 * s)
  elif name == "cross":  # arms a third of the size wide
    arm = 0.17 * s
    inside = (((np.abs(u) <= 0.5 * s) & (np.abs(v) <= arm))
              | ((np.abs(v) <= 0.5 * s) & (np.abs(u) <= arm)))
  elif name == "triangle":  # equilateral, circumradius 0.62 size
    angles = 2.0 * np.pi * np.arange(3) / 3.0 - np.pi / 2.0  # a vertex up
    vu, vv = 0.62 * s * np.cos(angles), 0.62 * s * np.sin(angles)
    inside = np.ones_like(u, bool)
    for i in range(3):  # left of every edge of the counter-clockwise triangle
      j = (i + 1) % 3
      inside &= (vu[j] - vu[i]) * (v - vv[i]) - (vv[j] - vv[i]) * (u - vu[i]) >= 0
  else:
    raise ValueError(f"category {shape.category} ({name}) is not a thing class of {THING_IDS}")
  mask[y0:y1, x0:x1] = inside
  return mask


def random_thing_size(rng: np.random.Generator, height: int, width: int) -> float:
  """A log-uniform size (pixels) from `MIN_THING_SIZE` units (and at least 8 pixels) to 80%
  of the short side."""
  lo = max(MIN_THING_SIZE * unit(height, width), 8.0)
  hi = max(lo, MAX_THING_FRACTION * min(height, width))
  return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def thing_colour(rng: np.random.Generator, exclude=(), background=()) -> np.ndarray:
  """A palette colour not in `exclude` (palette indices) and at least `MIN_CONTRAST` / 1.5 from
  every colour of `background` (where possible), jittered: float32 [3]."""
  choices = [i for i in range(len(PALETTE)) if i not in exclude] or list(range(len(PALETTE)))
  gap = np.full(len(PALETTE), np.inf, np.float32)  # distance to the nearest background colour
  if len(background):
    gap = np.linalg.norm(PALETTE[:, None] - np.asarray(background)[None], axis=-1).min(1)
  far = [i for i in choices if gap[i] >= MIN_CONTRAST / 1.5]
  return PALETTE[rng.choice(far or choices)] + rng.uniform(-15.0, 15.0, 3).astype(np.float32)


# ------------------------------------------------------------------------------------------
# Records
# ------------------------------------------------------------------------------------------


def _check_split(split: str):
  if split not in SPLITS:
    raise ValueError(f"split {split!r} is not one of {SPLITS}")


def generate_record(index: int, *, split: str = "train", seed: int = 0,
                    image_size: tuple[int, int] | None = None, max_things: int = 5,
                    sibling_prob: float = 0.4, crowd_prob: float = 0.0, noise: float = 6.0,
                    with_amodal: bool = False) -> dict[str, Any]:
  """Record `index` of `split`: a pure function of its arguments.

  Args:
    index: record index (any non-negative int).
    split: "train" or "validation" (independent streams of the same distribution).
    seed: dataset seed.
    image_size: (H, W), or None for a size of its own (sides 96-256, aspect within 1:2-2:1).
    max_things: at most this many thing instances (at least one).
    sibling_prob: probability that a thing is placed against an earlier instance of the same
      class (touching or overlapping it), rather than anywhere.
    crowd_prob: probability of one extra crowd segment (a cluster of small shapes of one
      thing class, `iscrowd` True; its pixels keep the class in the semantic map).
    noise: standard deviation of the Gaussian pixel noise over the whole image.
    with_amodal: also return "amodal", each thing segment's whole shape (before occlusion).

  Returns:
    {"image": uint8 [H, W, 3], "panoptic": int32 [H, W] (segment ids, 0 = void),
     "segments_info": {"id", "category_id": int32 [S], "iscrowd", "isthing": bool [S]},
     "semantic": uint8 [H, W] (255 = void), "image_id": int}; with `with_amodal`, also
     "amodal": {"id": int32 [N], "masks": bool [N, H, W]} for the N thing segments, listed
     in painting order (a later one occludes an earlier one).
  """
  _check_split(split)
  rng = np.random.default_rng([seed, SPLITS.index(split), index])
  h, w = random_image_size(rng) if image_size is None else (int(s) for s in image_size)
  u = unit(h, w)
  region, stuff = stuff_layout(rng, h, w)
  textures = [random_texture(category, rng, u) for category in stuff]
  image = paint_stuff(region, textures)  # [H, W, 3]
  panoptic = region.astype(np.int32) + 1  # stuff segment i + 1 = region i
  categories, crowd = list(stuff), [False] * len(stuff)  # per segment id - 1

  min_area = max(4.0, 16.0 * u * u)
  things: list[tuple[Shape, np.ndarray]] = []  # (shape, whole mask) in painting order
  visible: dict[int, np.ndarray] = {}  # segment id -> visible mask so far
  amodal: dict[int, np.ndarray] = {}

  def acceptable(mask: np.ndarray) -> bool:
    area = mask.sum()
    if area < min_area:
      return False
    for sid, vis in visible.items():  # every earlier segment keeps enough of itself
      left = (vis & ~mask).sum()
      if left < min_area or left < MIN_VISIBLE_FRACTION * amodal[sid].sum():
        return False
    return True

  def paint(mask: np.ndarray, category: int, colour: np.ndarray, is_crowd: bool):
    image[mask] = colour
    categories.append(category)
    crowd.append(is_crowd)
    sid = len(categories)
    panoptic[mask] = sid
    for other in visible:
      visible[other] &= ~mask
    visible[sid] = mask.copy()
    amodal[sid] = mask

  def colour_at(cy: float, cx: float) -> np.ndarray:
    """A thing colour unlike the stuff under its centre and the things painted so far."""
    r = int(region[min(h - 1, max(0, int(cy))), min(w - 1, max(0, int(cx)))])
    used = [int(np.argmin(((PALETTE - s.colour) ** 2).sum(-1))) for s, _ in things]
    return thing_colour(rng, exclude=used, background=textures[r].colours)

  if rng.random() < crowd_prob:
    category = int(rng.choice(THING_IDS))
    centre = rng.uniform(0.2, 0.8, 2) * (h, w)
    mask = np.zeros((h, w), bool)
    colour = colour_at(*centre)
    for _ in range(rng.integers(4, 8)):
      cy, cx = centre + rng.uniform(-0.12, 0.12, 2) * min(h, w)
      mask |= shape_mask(Shape(category, cy, cx, rng.uniform(0.05, 0.1) * min(h, w),
                               random_tilt(rng), colour), h, w)
    if mask.sum() >= min_area:
      paint(mask, category, colour, True)
  for _ in range(rng.integers(1, max_things + 1)):
    for _ in range(20):
      if things and rng.random() < sibling_prob:  # against an earlier instance, same class
        other = things[rng.integers(len(things))][0]
        category = other.category
        size = float(np.clip(other.size * np.exp(rng.uniform(-0.4, 0.4)),
                             MIN_THING_SIZE * u, MAX_THING_FRACTION * min(h, w)))
        angle = rng.uniform(0.0, 2.0 * np.pi)
        distance = rng.uniform(0.3, 0.5) * (other.size + size)
        cy, cx = other.cy + distance * np.sin(angle), other.cx + distance * np.cos(angle)
      else:
        category = int(rng.choice(THING_IDS))
        size = random_thing_size(rng, h, w)
        margin = 0.3 * size
        cy, cx = rng.uniform(-margin, h + margin), rng.uniform(-margin, w + margin)
      shape = Shape(category, cy, cx, size, random_tilt(rng), colour_at(cy, cx))
      mask = shape_mask(shape, h, w)
      if acceptable(mask):
        paint(mask, category, shape.colour, False)
        things.append((shape, mask))
        break

  image += np.float32(noise) * rng.standard_normal(image.shape, np.float32)
  image = np.clip(image, 0, 255, out=image).astype(np.uint8)
  ids = np.arange(1, len(categories) + 1, dtype=np.int32)
  present = np.bincount(panoptic.ravel(), minlength=len(categories) + 1)[1:] > 0
  category_id = np.array(categories, np.int32)
  lut = np.full(len(categories) + 1, IGNORE_LABEL, np.uint8)
  lut[ids] = category_id
  record = {
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
  if with_amodal:
    thing_ids = [sid for sid in amodal if present[sid - 1]]
    record["amodal"] = {
        "id": np.array(thing_ids, np.int32),
        "masks": np.stack([amodal[s] for s in thing_ids]) if thing_ids
                 else np.zeros((0, h, w), bool)}
  return record


class SyntheticSource(grain.sources.RandomAccessDataSource):
  """`num_images` records of one split, generated on demand (deterministic, picklable).

  Keyword arguments are those of `generate_record` (`image_size=None`: varied sizes).
  """

  def __init__(self, num_images: int, *, split: str = "train", seed: int = 0,
               image_size: tuple[int, int] | None = None, max_things: int = 5,
               sibling_prob: float = 0.4, crowd_prob: float = 0.0, noise: float = 6.0):
    _check_split(split)
    self._num_images = int(num_images)
    self._kwargs = dict(split=split, seed=seed,
                        image_size=None if image_size is None else tuple(image_size),
                        max_things=max_things, sibling_prob=sibling_prob,
                        crowd_prob=crowd_prob, noise=noise)

  def __len__(self) -> int:
    return self._num_images

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if not 0 <= index < self._num_images:
      raise IndexError(f"index {index} out of range for {self._num_images} synthetic records")
    return generate_record(index, **self._kwargs)

  def image_sizes(self) -> list[tuple[int, int]]:
    """(H, W) of every record, drawn as `generate_record` draws them (no image made)."""
    if self._kwargs["image_size"] is not None:
      return [tuple(self._kwargs["image_size"])] * self._num_images
    stream = SPLITS.index(self._kwargs["split"])
    return [random_image_size(np.random.default_rng([self._kwargs["seed"], stream, index]))
            for index in range(self._num_images)]

  def __repr__(self) -> str:
    return f"SyntheticSource(num_images={self._num_images}, {self._kwargs})"


# ------------------------------------------------------------------------------------------
# tensorflow-datasets builder
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class SyntheticShapesConfig(tfds.core.BuilderConfig):
  image_size: tuple[int, int] | None = None  # None: varied sizes
  num_train: int = 2000
  num_validation: int = 100
  seed: int = 0
  max_things: int = 5
  sibling_prob: float = 0.4
  crowd_prob: float = 0.0
  noise: float = 6.0


def builder_config(**kwargs) -> SyntheticShapesConfig:
  """A config named after its values, so differently built datasets never share a folder."""
  config = SyntheticShapesConfig(name="tmp", **kwargs)
  size = "var" if config.image_size is None else "{}x{}".format(*config.image_size)
  config.name = (f"s{config.seed}_{size}_n{config.num_train}-{config.num_validation}"
                 f"_t{config.max_things}_b{config.sibling_prob:g}_c{config.crowd_prob:g}"
                 f"_z{config.noise:g}")
  return config


class SyntheticShapes(tfds.core.GeneratorBasedBuilder):
  """Shapes on textured stuff regions, with panoptic and semantic labels."""

  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "2.0.0": "Class is shape or texture, colours from one palette; same-class "
                            "instances touch and overlap; varied image sizes."}
  BUILDER_CONFIGS = [SyntheticShapesConfig(name="default", description="the defaults")]
  # tfds finds a builder's file through `importlib_resources` (not installed) for builders in
  # packages; the file is known, and there is no checksums file beside it.
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    h, w = self.builder_config.image_size or (None, None)
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
        metadata=tfds.core.MetadataDict(categories=[dict(c) for c in CATEGORIES]),
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
                             sibling_prob=config.sibling_prob, crowd_prob=config.crowd_prob,
                             noise=config.noise)
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
