"""The sizes evaluation images enter the network with: the test-time resize and the padding.

Pure functions of image sizes (no image, no grain, no OpenCV: the GPU benchmarks import them):

- `resize_shortest_edge_size` / `eval_resize_size`: Detectron2's `ResizeShortestEdge`, the
  official test-time resize (also the training recipes' rule);
- `PAD_TO`, `bucket_table`: what each image is padded to (`eval.pad_to`): by default the
  next multiple of 32, as the official evaluation (one compile per padded size), or a few
  coarse sizes made from the whole split's sizes, or one fixed size;
- `schedule`: the padded sizes an evaluation run will compile, in the order its batches
  will need them (`m2f_jax.evaluate` compiles them ahead of time).
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
from typing import Any

def resize_shortest_edge_size(height: int, width: int, short_edge: int,
                              max_size: int | None) -> tuple[int, int]:
  """Detectron2's `ResizeShortestEdge.get_output_shape`: shortest edge -> `short_edge`, then
  the longest edge capped at `max_size` (None: no cap)."""
  size = float(short_edge)
  scale = size / min(height, width)
  new_h, new_w = (size, scale * width) if height < width else (scale * height, size)
  if max_size and max(new_h, new_w) > max_size:
    scale = max_size / max(new_h, new_w)
    new_h, new_w = new_h * scale, new_w * scale
  return int(new_h + 0.5), int(new_w + 0.5)


def eval_resize_size(height: int, width: int, min_size: int | None,
                     max_size: int | None) -> tuple[int, int]:
  """The official test-time `ResizeShortestEdge(min_size, max_size)`; None: no resize."""
  if not min_size:
    return height, width
  return resize_shortest_edge_size(height, width, min_size, max_size)


Size = tuple[int, int]
# `eval.pad_to`: what each evaluation image is padded to (the network compiles once per
# padded size; post-processing twice).
PAD_TO = {
    "image": "each image to the next multiple of 32 (the official padding, the default: an "
             "image's result is what the official evaluation computes)",
    "buckets:N": "N coarse sizes: images split by orientation (landscape, portrait), each "
                 "orientation's sizes sorted by their long side and cut into groups of about "
                 "equal image counts (N // 2 groups per orientation, landscape gets an odd "
                 "one; an orientation alone gets all N; N = 1: one size for all), each group "
                 "padded to its largest height and width: N compiles at most, results differ "
                 "slightly from the official ones (benchmarks/README.md, 'Evaluation "
                 "compiles')",
    "HxW": "every image to H x W (multiples of 32 holding every image): one compile",
}


def parse_pad_to(pad_to: str | None) -> tuple[str, Any]:
  """`eval.pad_to` -> ("image", None) | ("buckets", N) | ("fixed", (H, W))."""
  text = str(pad_to or "image").strip().lower()
  if text == "image":
    return "image", None
  if text.startswith("buckets:") and text[len("buckets:"):].isdigit() and \
      int(text[len("buckets:"):]) >= 1:
    return "buckets", int(text[len("buckets:"):])
  parts = text.split("x")
  if len(parts) == 2 and all(p.isdigit() and int(p) > 0 for p in parts):
    return "fixed", (int(parts[0]), int(parts[1]))
  raise ValueError(f"eval.pad_to={pad_to!r} is not one of " + ", ".join(
      f"{k!r} ({v.split(':')[0].split(' (')[0]})" for k, v in PAD_TO.items())
      + ": e.g. --config.eval.pad_to=image, buckets:2 or 800x1344")


def padded_to_multiple(size: Sequence[int], size_divisibility: int = 32) -> Size:
  """(h, w) rounded up to multiples of `size_divisibility`."""
  d = size_divisibility
  return int(-(-int(size[0]) // d) * d), int(-(-int(size[1]) // d) * d)


def _coarse_groups(sizes: list[Size], counts: list[int], groups: int) -> list[list[Size]]:
  """`sizes` (sorted) cut into at most `groups` runs of about equal total count."""
  total, runs, current, seen = sum(counts), [], [], 0
  for size, count in zip(sizes, counts):
    current.append(size)
    seen += count
    if seen * groups >= total * (len(runs) + 1) and len(runs) < groups - 1:
      runs.append(current)
      current = []
  if current:
    runs.append(current)
  return runs


def bucket_table(input_sizes: Sequence[Sequence[int]], *, pad_to: str | None = "image",
                 size_divisibility: int = 32) -> dict[Size, Size]:
  """{an image's size padded to a multiple of 32: the padded size of its batches}.

  `input_sizes`: the (h, w) every image enters the network with (after the test-time
  resize), for the whole split (every process computes the same table); `pad_to`: one of
  `PAD_TO`. A pure function of the sizes: the same split always gets the same buckets.
  """
  mode, arg = parse_pad_to(pad_to)
  counts: dict[Size, int] = {}
  for size in input_sizes:
    key = padded_to_multiple(size, size_divisibility)
    counts[key] = counts.get(key, 0) + 1
  if mode == "image":
    return {s: s for s in counts}
  if mode == "fixed":
    h, w = arg
    too_big = [s for s in counts if s[0] > h or s[1] > w]
    if h % size_divisibility or w % size_divisibility or too_big:
      raise ValueError(f"eval.pad_to={pad_to!r}: H and W must be multiples of "
                       f"{size_divisibility} holding every image; padded sizes "
                       f"{sorted(too_big)[:3]} do not fit: use a larger size or 'buckets:2'")
    return {s: (h, w) for s in counts}
  landscape = sorted((s for s in counts if s[1] >= s[0]), key=lambda s: (s[1], s[0]))
  portrait = sorted((s for s in counts if s[1] < s[0]), key=lambda s: (s[0], s[1]))
  if arg == 1 or not (landscape and portrait):
    shares = [(landscape + portrait, arg)] if arg > 1 else [(list(counts), 1)]
  else:
    shares = [(landscape, arg - arg // 2), (portrait, arg // 2)]
  table = {}
  for sizes, groups in shares:
    for run in _coarse_groups(sizes, [counts[s] for s in sizes], groups):
      bucket = (max(s[0] for s in run), max(s[1] for s in run))
      table.update({s: bucket for s in run})
  return table


@dataclasses.dataclass(frozen=True)
class BatchShape:
  """One padded size of an evaluation run, as `schedule` plans it."""
  padded_size: Size               # (H, W) of the batches
  output_sizes: tuple[Size, ...]  # distinct original (H, W) of its images
  images: int                     # images padded to it
  batches: int                    # batches of that size


def schedule(sizes: Sequence[Sequence[int]], *, batch_size: int, table: dict[Size, Size] | None,
             fixed: Size | None = None, min_size: int | None = None,
             max_size: int | None = None, indices: Sequence[int] | None = None,
             size_divisibility: int = 32) -> list[BatchShape]:
  """The padded sizes of the images `indices` of `sizes` (original (H, W); default: all),
  in the order their first batches come from `pipeline.eval_batches` (a size's first batch
  is out when `batch_size` of its images have been read; sizes that never fill a batch come
  last, in the order of their first image). `table`: `bucket_table`'s (None: per image);
  `fixed`: one padded size for all."""
  order, pending, outputs, images = [], {}, {}, {}
  for index in range(len(sizes)) if indices is None else indices:
    h, w = (int(s) for s in sizes[index])
    bucket = bucket_of(eval_resize_size(h, w, min_size, max_size), table=table, fixed=fixed,
                       size_divisibility=size_divisibility)
    outputs.setdefault(bucket, {})[(h, w)] = None
    images[bucket] = images.get(bucket, 0) + 1
    pending[bucket] = pending.get(bucket, 0) + 1
    if pending[bucket] == batch_size:
      pending[bucket] = 0
      if bucket not in order:
        order.append(bucket)
  order += [b for b in images if b not in order]
  return [BatchShape(b, tuple(outputs[b]), images[b], -(-images[b] // batch_size))
          for b in order]


def bucket_of(input_size: Sequence[int], *, table: dict[Size, Size] | None,
              fixed: Size | None = None, size_divisibility: int = 32) -> Size:
  """The padded size of an image entering the network at `input_size` (see `schedule`)."""
  if fixed is not None:
    return tuple(fixed)
  size = padded_to_multiple(input_size, size_divisibility)
  if table is None:
    return size
  if size not in table:
    raise ValueError(f"an evaluation image of input size {tuple(input_size)} is not among "
                     "the sizes the buckets were made from (the image_sizes of the source): "
                     "the source's sizes changed while it was read")
  return table[size]
