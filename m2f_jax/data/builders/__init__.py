"""tensorflow-datasets builders of the standard releases, built from the user's local copy.

One builder per source format, each yielding examples that `pipeline.normalize_record` turns
into the records of `m2f_jax/data/__init__.py`:

- `coco.CocoPanoptic`: COCO 2017 panoptic (133 classes), or any dataset in COCO panoptic
  format (its own categories); image, panoptic (COCO RGB encoding), semantic, segments_info.
- `coco.CocoInstance`: COCO 2017 instances (80 classes), or any dataset in COCO instance
  format; image and overlapping instance masks (polygons and RLE decoded, crowd kept).
- `ade20k.Ade20kSceneParsing`: ADEChallengeData2016 (150 classes); image and semantic map.
- `cityscapes.CityscapesFine`: Cityscapes gtFine (19 classes); image, semantic (train ids),
  panoptic built from the instance ids.
- `ytvis.Ytvis`: YouTube-VIS 2019 / 2021 (40 classes each), one example per video: encoded
  frames and per-frame instance RLEs, brought to clip records by `video_pipeline.clip_record`
  (not `normalize_record`); a held-out part of train is the "validation" split.

Nothing is ever downloaded: `builder.download_and_prepare(download_config=
tfds.download.DownloadConfig(manual_dir=SOURCE))` reads the release from SOURCE (each
builder's `MANUAL_DOWNLOAD_INSTRUCTIONS` gives the layout) and writes array_record files
under the builder's `data_dir`; `builder.as_data_source()[split]` reads them without
TensorFlow. `m2f_jax.data.prepare_dataset(config.data)` does this from a config.

Bad input: a file that cannot become an example (missing, corrupt or truncated, of the wrong
size, with an unknown category, an image without annotation) raises `BadInputError` naming
the file and the reason when the builder config's `on_error` is "fail" (the default); with
"skip" the example is left out, logged, and counted in `builder.info.metadata["skipped"]`
({split: {"count", "examples": ["file: reason", ...]}}). An image with no object is kept.

This module holds what the builders share: the config fields, the error policy and file
readers that turn every decoding failure into a `BadInputError`.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
import concurrent.futures
import dataclasses
import io
import os
from typing import Any

from absl import logging
import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from m2f_jax.data.panoptic_png import id2rgb
from m2f_jax.data.panoptic_png import rgb2id

ON_ERROR = ("fail", "skip")
IGNORE_LABEL = 255
_MAX_LISTED = 1000  # skipped files listed in the metadata per split (all are counted)


class BadInputError(ValueError):
  """A source file that cannot become an example; `path` names it, `reason` says why."""

  def __init__(self, path: os.PathLike | str, reason: str):
    self.path = os.fspath(path)
    self.reason = reason
    super().__init__(f"{self.path}: {reason}")


@dataclasses.dataclass(eq=False)
class BuildConfig(tfds.core.BuilderConfig):
  """The fields every builder config has (they only matter while building).

  Attributes:
    on_error: "fail" raises `BadInputError` at the first bad source file; "skip" leaves
      its example out, logs it and counts it in `info.metadata["skipped"]`.
    num_workers: threads reading and checking source files while building.
  """
  on_error: str = "fail"
  num_workers: int = 8

  def __post_init__(self):
    if self.on_error not in ON_ERROR:
      raise ValueError(f"on_error must be one of {ON_ERROR}, got {self.on_error!r}")


def metadata(**kwargs) -> tfds.core.MetadataDict:
  """Dataset metadata with the (build-time) skip report."""
  return tfds.core.MetadataDict(skipped={}, dropped_annotations={}, **kwargs)


# ------------------------------------------------------------------------------------------
# Reading source files
# ------------------------------------------------------------------------------------------


def encode_png(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  PIL.Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def _read_bytes(path: os.PathLike | str) -> bytes:
  try:
    with open(path, "rb") as f:
      return f.read()
  except FileNotFoundError:
    raise BadInputError(path, "missing file") from None
  except OSError as e:
    raise BadInputError(path, f"cannot read the file ({e})") from None


def _open(path, data: bytes, what: str) -> PIL.Image.Image:
  """The fully decoded image (a truncated or corrupt file raises `BadInputError`)."""
  try:
    image = PIL.Image.open(io.BytesIO(data))
    image.load()
  except PIL.UnidentifiedImageError:
    raise BadInputError(path, f"cannot decode the {what}: not an image file") from None
  except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as e:
    raise BadInputError(path, f"cannot decode the {what} ({type(e).__name__}: {e})") from None
  return image


def read_image(path: os.PathLike | str) -> tuple[bytes, tuple[int, int]]:
  """An RGB image file -> (encoded bytes for the `Image` feature, (H, W)).

  JPEG and PNG files in RGB are kept byte for byte; other formats and modes (grayscale,
  CMYK, palette, alpha) are converted to RGB (as Detectron2 reads them) and stored as PNG.
  """
  data = _read_bytes(path)
  image = _open(path, data, "image")
  if image.mode != "RGB" or image.format not in ("JPEG", "PNG"):
    data = encode_png(np.asarray(image.convert("RGB")))
  return data, (image.height, image.width)


def read_label_map(path: os.PathLike | str) -> np.ndarray:
  """A single-channel label PNG (8 or 16 bit, or palette indices) -> int32 [H, W]."""
  image = _open(path, _read_bytes(path), "label map")
  if image.mode not in ("L", "P", "I", "I;16", "I;16B"):
    raise BadInputError(path, f"expected a single-channel label PNG, got mode {image.mode}")
  return np.asarray(image).astype(np.int32)


def read_panoptic(path: os.PathLike | str) -> tuple[np.ndarray, bytes]:
  """A panoptic PNG -> (segment ids int32 [H, W], COCO RGB-encoded PNG bytes).

  RGB PNGs use COCO's encoding id = R + 256 G + 256^2 B (kept byte for byte); single-channel
  8 or 16 bit PNGs hold the ids themselves.
  """
  data = _read_bytes(path)
  image = _open(path, data, "panoptic PNG")
  if image.mode in ("L", "I", "I;16", "I;16B"):
    ids = np.asarray(image).astype(np.int32)
  else:
    ids = rgb2id(np.asarray(image.convert("RGB")))
    if image.mode == "RGB" and image.format == "PNG":
      return ids, data
  return ids, encode_png(id2rgb(ids))


def check_size(path, size: tuple[int, ...], image_size: tuple[int, int], what: str) -> None:
  if tuple(size) != tuple(image_size):
    raise BadInputError(path, f"the {what} is {size[0]}x{size[1]} (HxW) but its image is "
                              f"{image_size[0]}x{image_size[1]}")


def check_labels(path, labels: np.ndarray, known: np.ndarray, what: str) -> None:
  """Every value of `labels` must be in `known` (a bool lookup table over label values)."""
  values = np.unique(labels)
  unknown = values[(values >= len(known)) | ~known[np.minimum(values, len(known) - 1)]]
  if unknown.size:
    valid = np.flatnonzero(known)
    runs = np.split(valid, np.flatnonzero(np.diff(valid) > 1) + 1)
    ranges = ", ".join(f"{r[0]}..{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in runs)
    raise BadInputError(path, f"unknown {what} {unknown.tolist()[:10]} (known: {ranges})")


def require(path: os.PathLike | str, what: str) -> str:
  """`path` if it exists, else a FileNotFoundError naming it and what it should hold."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{what} not found: {os.fspath(path)} does not exist")
  return os.fspath(path)


# ------------------------------------------------------------------------------------------
# Generating examples with the error policy
# ------------------------------------------------------------------------------------------


def _ordered_map(fn: Callable[[Any], Any], items: Iterable[Any],
                 num_workers: int) -> Iterator[Any]:
  """`map(fn, items)` on `num_workers` threads, in order, a bounded number ahead."""
  if num_workers <= 1:
    yield from map(fn, items)
    return
  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    pending = collections.deque()
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) >= 2 * num_workers:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


def generate_examples(builder: tfds.core.DatasetBuilder, split: str, items: Iterable[Any],
                      process: Callable[[Any, list[str]], tuple[str, dict[str, Any]]]
                      ) -> Iterator[tuple[str, dict[str, Any]]]:
  """Yields `process(item, notes)` for every item, applying the config's `on_error`.

  `process` returns (key, example) or raises `BadInputError`; it may append to `notes`
  (one string per annotation it dropped, e.g. a polygon of fewer than 3 points), which end
  up in `info.metadata["dropped_annotations"]`. Skipped files end up in
  `info.metadata["skipped"]`.
  """
  config = builder.builder_config
  notes: list[str] = []

  def attempt(item):
    try:
      return process(item, notes), None
    except BadInputError as e:
      return None, e

  skipped = []
  for result, error in _ordered_map(attempt, items, config.num_workers):
    if error is None:
      yield result
    elif config.on_error == "fail":
      raise BadInputError(error.path, f"{error.reason} (building {builder.name}/{config.name} "
                                      f"{split}; on_error='skip' leaves such files out)")
    else:
      logging.warning("%s %s: skipping %s", builder.name, split, error)
      skipped.append(str(error))
  if skipped:
    logging.warning("%s %s: skipped %d bad source files (listed in info.metadata['skipped'])",
                    builder.name, split, len(skipped))
  if notes:
    logging.warning("%s %s: dropped %d annotations (listed in "
                    "info.metadata['dropped_annotations']), e.g. %s",
                    builder.name, split, len(notes), notes[0])
  info = builder.info.metadata
  info["skipped"][split] = {"count": len(skipped), "examples": skipped[:_MAX_LISTED]}
  info["dropped_annotations"][split] = {"count": len(notes), "examples": notes[:_MAX_LISTED]}
