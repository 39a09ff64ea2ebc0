"""The synthetic dataset in time: clips where shapes move over textured stuff.

The classes, palette, textures and shapes are those of `m2f_jax/data/synthetic.py` (things by
shape, stuff by texture, colours from one shared palette). A clip has 4-12 frames over a
static stuff layout; each thing is a track with its own class, colour, size, velocity and spin,
painted in a fixed depth order, so tracks occlude one another. Some tracks enter the image
from outside, some leave it, some wander inside, and (with probability `crossing_prob`) two
tracks of the same class cross paths in mid-clip, one passing over the other.

Per-frame panoptic maps use one id per track (and per stuff class) for the whole clip, so
the ids are track ids: `panoptic[t] == k` is the visible part of track k in frame t (absent
while it is outside the image or hidden). Every clip is drawn from
`np.random.default_rng([seed, split, index, 1])`: deterministic random access, train and
validation disjoint, independent of the image dataset's records.

Clip records (numpy):

  "video":         uint8 [T, H, W, 3] RGB frames
  "panoptic":      int32 [T, H, W] track ids, 0 = void
  "semantic":      uint8 [T, H, W] class map, 255 = void
  "segments_info": {"id", "category_id": int32 [S], "iscrowd", "isthing": bool [S]}, the
                   segments visible in at least one frame
  "video_id":      int

`SyntheticVideoSource` is a grain random-access source of them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import numpy as np

from m2f_jax.data import synthetic

FRAME_RANGE = (4, 12)  # frames per clip, both included
_STREAM = 1  # the last rng key element: keeps clips apart from the image records


@dataclasses.dataclass(frozen=True)
class Track:
  """A thing moving in straight line: position at frame t = (cy, cx) + t * (vy, vx)."""
  category: int
  cy: float
  cx: float
  vy: float
  vx: float
  size: float
  theta: float
  spin: float  # radians per frame
  colour: np.ndarray  # float32 [3]

  def shape_at(self, t: int) -> synthetic.Shape:
    return synthetic.Shape(self.category, self.cy + t * self.vy, self.cx + t * self.vx,
                           self.size, self.theta + t * self.spin, self.colour)


def _random_tracks(rng: np.random.Generator, height: int, width: int, num_frames: int, *,
                   max_things: int, crossing_prob: float) -> list[Track]:
  """Wandering, entering and leaving tracks, plus maybe a same-class crossing pair."""
  longest = max(height, width)
  tracks = []

  def make(category, cy, cx, vy, vx, size=None):
    size = synthetic.random_thing_size(rng, height, width) if size is None else size
    used = [int(np.argmin(((synthetic.PALETTE - t.colour) ** 2).sum(-1))) for t in tracks]
    tracks.append(Track(category, cy, cx, vy, vx, size, synthetic.random_tilt(rng),
                        rng.uniform(-0.03, 0.03), synthetic.thing_colour(rng, exclude=used)))

  def velocity(low=0.015, high=0.05):
    angle = rng.uniform(0.0, 2.0 * np.pi)
    speed = rng.uniform(low, high) * longest
    return speed * np.sin(angle), speed * np.cos(angle)

  if rng.random() < crossing_prob:  # two tracks of one class meet at frame tc
    category = int(rng.choice(synthetic.THING_IDS))
    size = min(synthetic.random_thing_size(rng, height, width), 0.4 * min(height, width))
    tc = rng.uniform(0.35, 0.65) * (num_frames - 1)
    py, px = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    angle = rng.uniform(0.0, 2.0 * np.pi)
    for turn in (0.0, rng.uniform(0.6, 1.4) * np.pi):  # directions at least ~110 deg apart
      speed = rng.uniform(0.6, 1.0) * size / max(1.0, 0.25 * num_frames)
      vy, vx = speed * np.sin(angle + turn), speed * np.cos(angle + turn)
      make(category, py - tc * vy, px - tc * vx, vy, vx,
           size * np.exp(rng.uniform(-0.2, 0.2)))
  num_tracks = max(len(tracks), int(rng.integers(2, max_things + 1)))
  while len(tracks) < num_tracks:
    category = int(rng.choice(synthetic.THING_IDS))
    kind = rng.choice(["wander", "enter", "leave"], p=[0.5, 0.25, 0.25])
    size = synthetic.random_thing_size(rng, height, width)
    if kind == "wander":
      vy, vx = velocity()
      make(category, rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width, vy, vx,
           size)
      continue
    # Cross an image edge (from outside in, or inside out) at a random frame.
    tb = rng.uniform(0.2, 0.8) * (num_frames - 1)
    side = rng.integers(4)
    along = rng.uniform(0.15, 0.85)
    ey, ex = [(0.0, along * width), (height, along * width), (along * height, 0.0),
              (along * height, width)][side]
    inward = [(1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0)][side]
    speed = rng.uniform(0.8, 1.6) * size / max(1.0, 0.5 * num_frames)
    sign = 1.0 if kind == "enter" else -1.0
    drift = rng.uniform(-0.3, 0.3) * speed  # across the edge's normal
    vy = sign * speed * inward[0] + drift * inward[1]
    vx = sign * speed * inward[1] + drift * inward[0]
    make(category, ey - tb * vy, ex - tb * vx, vy, vx, size)
  order = rng.permutation(len(tracks))  # depth: later is on top
  return [tracks[i] for i in order]


def generate_clip(index: int, *, split: str = "train", seed: int = 0,
                  image_size: tuple[int, int] | None = None, num_frames: int | None = None,
                  max_things: int = 6, crossing_prob: float = 0.7, noise: float = 6.0,
                  with_amodal: bool = False) -> dict[str, Any]:
  """Clip `index` of `split`: a pure function of its arguments.

  Args:
    index: clip index (any non-negative int).
    split: "train" or "validation" (independent streams).
    seed: dataset seed.
    image_size: (H, W), or None for a size of its own (as the image dataset: sides 96-256).
    num_frames: T, or None for a random length in `FRAME_RANGE`.
    max_things: at most this many tracks (at least two).
    crossing_prob: probability of a pair of same-class tracks crossing paths.
    noise: standard deviation of the Gaussian pixel noise (fresh every frame).
    with_amodal: also return "amodal": {"id": int32 [N], "masks": bool [N, T, H, W]}, each
      track's whole shape in every frame (before occlusion and outside-image clipping).

  Returns:
    The clip record described in the module docstring.
  """
  synthetic._check_split(split)  # pylint: disable=protected-access
  rng = np.random.default_rng([seed, synthetic.SPLITS.index(split), index, _STREAM])
  h, w = (synthetic.random_image_size(rng) if image_size is None
          else (int(s) for s in image_size))
  t_len = int(rng.integers(FRAME_RANGE[0], FRAME_RANGE[1] + 1)) if num_frames is None \
      else int(num_frames)
  if t_len < 1:
    raise ValueError(f"num_frames must be >= 1, got {num_frames}")
  u = synthetic.unit(h, w)
  region, stuff = synthetic.stuff_layout(rng, h, w)
  background = synthetic.paint_stuff(
      region, [synthetic.random_texture(category, rng, u) for category in stuff])  # [H, W, 3]
  stuff_ids = region.astype(np.int32) + 1  # [H, W]
  tracks = _random_tracks(rng, h, w, t_len, max_things=max(2, max_things),
                          crossing_prob=crossing_prob)
  categories = list(stuff) + [t.category for t in tracks]  # per segment id - 1

  video = np.empty((t_len, h, w, 3), np.uint8)
  panoptic = np.empty((t_len, h, w), np.int32)
  amodal = np.zeros((len(tracks), t_len, h, w), bool) if with_amodal else None
  for t in range(t_len):
    frame = background.copy()
    ids = stuff_ids.copy()
    for k, track in enumerate(tracks):  # back to front
      mask = synthetic.shape_mask(track.shape_at(t), h, w)
      frame[mask] = track.colour
      ids[mask] = len(stuff) + 1 + k
      if amodal is not None:
        amodal[k, t] = mask
    frame += noise * rng.standard_normal(frame.shape, np.float32)
    video[t] = np.clip(frame, 0, 255).astype(np.uint8)
    panoptic[t] = ids

  all_ids = np.arange(1, len(categories) + 1, dtype=np.int32)
  present = np.bincount(panoptic.ravel(), minlength=len(categories) + 1)[1:] > 0
  category_id = np.array(categories, np.int32)
  lut = np.full(len(categories) + 1, synthetic.IGNORE_LABEL, np.uint8)
  lut[all_ids] = category_id
  record = {
      "video": video,
      "panoptic": panoptic,
      "semantic": lut[panoptic],
      "segments_info": {
          "id": all_ids[present],
          "category_id": category_id[present],
          "iscrowd": np.zeros(int(present.sum()), bool),
          "isthing": np.isin(category_id, synthetic.THING_IDS)[present],
      },
      "video_id": int(index),
  }
  if amodal is not None:
    record["amodal"] = {"id": np.arange(len(stuff) + 1, len(categories) + 1, dtype=np.int32),
                        "masks": amodal}
  return record


class SyntheticVideoSource(grain.sources.RandomAccessDataSource):
  """`num_clips` clips of one split, generated on demand (deterministic, picklable).

  Keyword arguments are those of `generate_clip`.
  """

  def __init__(self, num_clips: int, *, split: str = "train", seed: int = 0,
               image_size: tuple[int, int] | None = None, num_frames: int | None = None,
               max_things: int = 6, crossing_prob: float = 0.7, noise: float = 6.0):
    synthetic._check_split(split)  # pylint: disable=protected-access
    self._num_clips = int(num_clips)
    self._kwargs = dict(split=split, seed=seed,
                        image_size=None if image_size is None else tuple(image_size),
                        num_frames=num_frames, max_things=max_things,
                        crossing_prob=crossing_prob, noise=noise)

  def __len__(self) -> int:
    return self._num_clips

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if not 0 <= index < self._num_clips:
      raise IndexError(f"index {index} out of range for {self._num_clips} synthetic clips")
    return generate_clip(index, **self._kwargs)

  def __repr__(self) -> str:
    return f"SyntheticVideoSource(num_clips={self._num_clips}, {self._kwargs})"
