"""grain input pipelines: records -> augmented training batches, and evaluation batches.

Any random-access source of records works: `synthetic.SyntheticSource`, or a tfds builder's
`builder.as_data_source()[split]` (its examples are brought to the record format of
`m2f_jax/data/__init__.py` by `normalize_record`).

Training (`train_iterator`) on one process's shard: shuffle (reseeded every epoch), repeat,
one augmentation recipe of `transforms.AUGMENTATIONS` ("synthetic", or the official
"coco_lsj", "ade20k_semantic", "cityscapes" recipes; see `m2f_jax/data/transforms.py`),
targets, batches. The iterator is a grain `DatasetIterator`: `get_state()` / `set_state()`
resume it exactly.

Evaluation (`eval_batches`) optionally resizes the shortest edge (the official test-time
`ResizeShortestEdge`), pads each image to a multiple of 32 (or to one of a few coarse sizes,
or a fixed size: `eval_sizes.PAD_TO`), batches images of one padded size together (so results do not
depend on the batch) and carries what post-processing and metrics need: the padded region,
the resized and original sizes and the raw annotations. `image_sizes(source)` reads the
sizes of a split without decoding its images; `EvalBatches.schedule()` turns them into the
padded sizes the run will compile, in the order its batches will come.

Images are normalized with the model's pixel mean/std. Evaluation batches (and the
"synthetic" recipe) pad with zeros after normalization, as the official
`ImageList.from_tensors`; the official training recipes pad the uint8 image with 128 before
normalization, as Detectron2's `FixedSizeCrop` and the Mask2Former semantic mapper.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import functools
import io
from typing import Any

import grain
import numpy as np

from m2f_jax.data import eval_sizes
from m2f_jax.data import targets as targets_lib
from m2f_jax.data.panoptic_png import rgb2id
from m2f_jax.data import transforms

# ------------------------------------------------------------------------------------------
# Records
# ------------------------------------------------------------------------------------------


def normalize_record(example: Mapping[str, Any]) -> dict[str, Any]:
  """A source's example (in-memory or tfds-decoded) -> a record in the documented format."""
  image = np.asarray(example["image"])
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f"record 'image' must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
  height, width = image.shape[:2]
  record = {"image": image, "image_id": int(example.get("image_id", -1))}
  if "panoptic" in example:
    panoptic = np.asarray(example["panoptic"])
    if panoptic.ndim == 3:  # COCO RGB encoding
      panoptic = rgb2id(panoptic)
    info = example["segments_info"]
    record["panoptic"] = panoptic.astype(np.int32)
    record["segments_info"] = {
        "id": np.asarray(info["id"], np.int32).reshape(-1),
        "category_id": np.asarray(info["category_id"], np.int32).reshape(-1),
        "iscrowd": np.asarray(info["iscrowd"], bool).reshape(-1),
        "isthing": np.asarray(info["isthing"], bool).reshape(-1),
    }
  if "semantic" in example:
    semantic = np.asarray(example["semantic"])
    record["semantic"] = (semantic[..., 0] if semantic.ndim == 3 else semantic).astype(np.uint8)
  # COCO panoptic examples carry instances only where the release has an instances JSON.
  if "instances" in example and example.get("has_instances", True):
    instances = example["instances"]
    record["instances"] = {
        "masks": np.asarray(instances["masks"], np.uint8).reshape(-1, height, width),
        "category_id": np.asarray(instances["category_id"], np.int32).reshape(-1),
        "iscrowd": np.asarray(instances["iscrowd"], bool).reshape(-1),
    }
  if not {"panoptic", "semantic", "instances"} & set(record):
    raise ValueError(f"record {record['image_id']} has no 'panoptic', 'semantic' or "
                     f"'instances' annotation (keys: {sorted(example)})")
  for key in ("panoptic", "semantic"):
    if key in record and record[key].shape != (height, width):
      raise ValueError(f"record {record['image_id']}: '{key}' has shape {record[key].shape}, "
                       f"the image {(height, width)}")
  return record


# ------------------------------------------------------------------------------------------
# Training examples
# ------------------------------------------------------------------------------------------


def train_example(record: Mapping[str, Any], *, task: str, num_targets: int,
                  pixel_mean: Sequence[float], pixel_std: Sequence[float],
                  ignore_label: int = 255, zero_padding: bool = True,
                  compact: bool = False, target_layers: int = 1) -> dict[str, np.ndarray]:
  """An augmented record -> the arrays of one training example (see `train_iterator`).

  `zero_padding`: set the normalized image to 0 outside "padding_mask" (else the padding
  keeps the value the augmentation gave the uint8 image). `compact`: the uint8 image and
  the segment maps of `targets.make_compact_targets` (`target_layers` layers for instances),
  which `m2f_jax.device_batch.dense_batch` expands on the device (normalization and
  `zero_padding` happen there).
  """
  padding_mask = record["padding_mask"]
  if compact:
    example = targets_lib.make_compact_targets(record, task=task, num_targets=num_targets,
                                               ignore_label=ignore_label, layers=target_layers)
    images = np.asarray(record["image"], np.uint8)  # [H, W, 3]
  else:
    example = targets_lib.make_targets(record, task=task, num_targets=num_targets,
                                       ignore_label=ignore_label)
    images = targets_lib.normalize_image(record["image"], pixel_mean=pixel_mean,
                                         pixel_std=pixel_std)  # [H, W, 3]
    if zero_padding:
      images[~padding_mask] = 0.0
  example.update(images=images, padding_mask=padding_mask,
                 image_id=np.int64(record["image_id"]))
  return example


# ------------------------------------------------------------------------------------------
# Pipelines
# ------------------------------------------------------------------------------------------


def _shard_options(shard_options: grain.sharding.ShardOptions | None,
                   drop_remainder: bool) -> grain.sharding.ShardOptions:
  if shard_options is None:
    return grain.sharding.ShardByJaxProcess(drop_remainder=drop_remainder)
  return shard_options


def train_iterator(source: Sequence[Any], *, batch_size: int, seed: int, task: str,
                   num_targets: int, image_size: tuple[int, int],
                   pixel_mean: Sequence[float], pixel_std: Sequence[float],
                   ignore_label: int = 255, flip: bool = True,
                   scale_range: tuple[float, float] | None = None,
                   augmentation: str = "synthetic",
                   min_size_train: Sequence[int] | None = None,
                   max_size_train: int | None = None,
                   single_category_max_area: float = 1.0,
                   num_epochs: int | None = None,
                   shard_options: grain.sharding.ShardOptions | None = None,
                   worker_count: int = 0, worker_buffer_size: int = 2,
                   read_threads: int = 0, prefetch: int = 0, compact: bool = False,
                   target_layers: int = 1) -> grain.DatasetIterator:
  """A checkpointable iterator over this process's training batches.

  Args:
    source: random-access source of records (`len` and `[]`).
    batch_size: examples per batch on this process.
    seed: shuffling and augmentation seed, in [0, 2**32) (the same on every process; the
      shards differ).
    task: "semantic", "instance" or "panoptic" (see `targets.make_targets`).
    num_targets: M, targets per example.
    image_size: (H, W) of every training image (multiples of 32): the LSJ size, or the crop
      size of "ade20k_semantic" / "cityscapes".
    pixel_mean, pixel_std: RGB normalization on the 0..255 scale.
    ignore_label: semantic label of unlabeled pixels.
    flip: random horizontal flip.
    scale_range: (min, max) scale jitter of "synthetic" (None: none) and "coco_lsj" (None:
      the official (0.1, 2.0)).
    augmentation: the recipe, one of `transforms.AUGMENTATIONS`: "synthetic" (flip, optional
      scale jitter, crop / pad with 0), "coco_lsj", "ade20k_semantic", "cityscapes" (the
      official recipes; their padding is image 128 (uint8, before normalization) and void).
    min_size_train, max_size_train: short-edge choices and long-edge cap of "ade20k_semantic"
      / "cityscapes" (None: the official values for `image_size`, e.g. 256..1024 and 2048 for
      512x512).
    single_category_max_area: crop constraint of "ade20k_semantic" / "cityscapes" (1.0, the
      official value, disables it).
    num_epochs: None repeats forever.
    shard_options: grain ShardOptions; default `ShardByJaxProcess(drop_remainder=True)`.
    worker_count, worker_buffer_size: grain worker processes (0: all in this process) and
      the batches each keeps ready. Workers need absl flags parsed
      (`flags.FLAGS.mark_as_parsed()`); close the iterator after use.
    read_threads, prefetch: threads and buffered batches in this process (e.g. 1 and 2 to
      prepare batches while the accelerator computes).
    compact, target_layers: ship uint8 images and segment maps (`train_example`) instead of
      normalized float32 images and dense masks; the train step expands them on the device.

  Returns:
    A grain `DatasetIterator` (resume exactly with `get_state()` / `set_state()`) of dicts:
      "images": float32 [B, H, W, 3] normalized; padding 0 ("synthetic") or the
        normalized uint8 128 (official recipes)
      "padding_mask": bool [B, H, W] True on image pixels
      "labels": int32 [B, M], "masks": uint8 [B, M, H, W], "valid": bool [B, M]
      "image_id": int64 [B]
    or, with `compact`, "images" uint8 [B, H, W, 3] and "segments" uint8|uint16
    [B, L, H, W] in place of "masks" (`m2f_jax.device_batch`).
  """
  if not 0 <= seed < 2**32:
    raise ValueError(f"seed must be in [0, 2**32), got {seed}")
  if augmentation not in transforms.AUGMENTATIONS:
    raise ValueError(f"unknown augmentation {augmentation!r}: use one of "
                     f"{transforms.AUGMENTATIONS}")
  shard = _shard_options(shard_options, drop_remainder=True)
  ds = grain.MapDataset.source(source)
  if shard.drop_remainder:  # equal shards: every process runs the same number of steps
    ds = ds[:len(ds) - len(ds) % shard.shard_count]
  ds = ds[shard.shard_index::shard.shard_count]
  if len(ds) < batch_size:
    raise ValueError(f"shard {shard.shard_index} of {shard.shard_count} holds {len(ds)} "
                     f"records, fewer than one batch of {batch_size}")
  ds = ds.shuffle(seed=seed).repeat(num_epochs)
  ds = ds.map(normalize_record)
  augment_seed = int(np.random.SeedSequence([seed, shard.shard_index]).generate_state(1)[0])
  ds = ds.random_map(
      functools.partial(transforms.augment, image_size=tuple(image_size),
                        augmentation=augmentation, flip=flip, scale_range=scale_range,
                        min_size_train=min_size_train, max_size_train=max_size_train,
                        single_category_max_area=single_category_max_area,
                        ignore_label=ignore_label),
      seed=augment_seed)
  ds = ds.map(functools.partial(train_example, task=task, num_targets=num_targets,
                                pixel_mean=tuple(pixel_mean), pixel_std=tuple(pixel_std),
                                ignore_label=ignore_label,
                                zero_padding=augmentation == "synthetic", compact=compact,
                                target_layers=target_layers))
  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                            prefetch_buffer_size=prefetch))
  if worker_count > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=worker_buffer_size))
  return iter(ds)


def _eval_example(index: int, *, source, min_size, max_size, pixel_mean,
                  pixel_std) -> dict[str, Any]:
  record = normalize_record(source[index])
  image = record.pop("image")
  images = transforms.prepare_eval_image(image, pixel_mean=pixel_mean, pixel_std=pixel_std,
                                         min_size=min_size, max_size=max_size)  # [h, w, 3]
  return {
      "images": images,
      "image_size": np.array(images.shape[:2], np.int32),
      "output_size": np.array(image.shape[:2], np.int32),
      "example_valid": True,
      "image_id": record["image_id"],
      "annotations": record,
  }


def _collate_eval(examples: Sequence[dict[str, Any]], *, size_divisibility: int,
                  pad_size: tuple[int, int] | None) -> dict[str, Any]:
  images, padding_mask = transforms.pad_images(
      [e["images"] for e in examples], size_divisibility=size_divisibility, pad_size=pad_size)
  return {
      "images": images,
      "padding_mask": padding_mask,
      "image_size": np.stack([e["image_size"] for e in examples]),
      "output_size": np.stack([e["output_size"] for e in examples]),
      "example_valid": np.array([e["example_valid"] for e in examples]),
      "image_id": np.array([e["image_id"] for e in examples], np.int64),
      "annotations": [e["annotations"] for e in examples],
  }


# ------------------------------------------------------------------------------------------
# Evaluation: the split's image sizes, batches by padded size
# ------------------------------------------------------------------------------------------

Size = eval_sizes.Size


@functools.cache
def _keep_encoded():
  """A tfds decoder class that leaves a feature's bytes as they are (also in a Sequence)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class KeepEncoded(tfds.decode.SkipDecoding):

    def decode_example_np(self, serialized_example):
      return serialized_example

    def decode_batch_example_np(self, serialized_example):
      return serialized_example

  return KeepEncoded


def _image_decoders(features) -> dict[str, Any]:
  """Every Image feature of a tfds FeaturesDict (nested in Sequences too) left encoded."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  decoders = {}
  for name, feature in features.items():
    inner = feature.feature if isinstance(feature, tfds.features.Sequence) else feature
    if isinstance(inner, tfds.features.Image):
      decoders[name] = _keep_encoded()()
    elif isinstance(inner, tfds.features.FeaturesDict):
      nested = _image_decoders(inner)
      if nested:
        decoders[name] = nested
  return decoders


def image_sizes(source: Sequence[Any], *, chunk: int = 256) -> list[Size] | None:
  """(H, W) of every record of `source` without decoding its images; None where unknown.

  - a source with an `image_sizes()` method (`synthetic.SyntheticSource`: drawn as its
    generator draws them; a user's source may add one);
  - a tfds data source (`builder.as_data_source()[split]`): every record read with its
    images left encoded, each size read from its image file's header (PIL);
  - a sequence of in-memory records: their "image" arrays' shapes.
  """
  if hasattr(source, "image_sizes"):
    return [(int(h), int(w)) for h, w in source.image_sizes()]
  if hasattr(source, "dataset_info") and hasattr(source, "decoders"):
    if "image" not in source.dataset_info.features:  # a video dataset, say
      return None
    import PIL.Image  # pylint: disable=g-import-not-at-top
    raw = dataclasses.replace(source, decoders=_image_decoders(source.dataset_info.features))
    sizes = []
    for start in range(0, len(raw), chunk):
      for example in raw.__getitems__(list(range(start, min(start + chunk, len(raw))))):
        w, h = PIL.Image.open(io.BytesIO(example["image"])).size
        sizes.append((h, w))
    return sizes
  if isinstance(source, (list, tuple)):
    return [tuple(int(s) for s in np.shape(r["image"])[:2]) for r in source]
  return None


class EvalBatches:
  """Re-iterable evaluation batches: examples grouped by padded size (see `eval_batches`)."""

  def __init__(self, examples: grain.IterDataset, *, batch_size: int, size_divisibility: int,
               table: dict[Size, Size] | None, fixed: Size | None, indices: Sequence[int],
               sizes: Sequence[Size] | None, min_size: int | None, max_size: int | None):
    self._examples = examples
    self._batch_size = batch_size
    self._size_divisibility = size_divisibility
    self._table = table
    self._fixed = fixed
    self._indices = list(indices)
    self.num_images = len(self._indices)  # this process's
    self.sizes = None if sizes is None else [tuple(s) for s in sizes]  # the split's, original
    self._min_size, self._max_size = min_size, max_size

  def _bucket(self, example) -> Size:
    return eval_sizes.bucket_of(example["image_size"], table=self._table, fixed=self._fixed,
                                size_divisibility=self._size_divisibility)

  def _collate(self, examples, bucket):
    return _collate_eval(examples, size_divisibility=self._size_divisibility, pad_size=bucket)

  def schedule(self) -> list[eval_sizes.BatchShape] | None:
    """This process's padded sizes in the order their first batches will come (None when
    the source's sizes are unknown: `image_sizes`); from the sizes only, no image read."""
    if self.sizes is None:
      return None
    return eval_sizes.schedule(self.sizes, batch_size=self._batch_size, table=self._table,
                               fixed=self._fixed, min_size=self._min_size,
                               max_size=self._max_size, indices=self._indices,
                               size_divisibility=self._size_divisibility)

  def __iter__(self):
    pending: dict[tuple[int, int], list[dict[str, Any]]] = {}  # in order of first appearance
    for example in self._examples:
      bucket = self._bucket(example)
      pending.setdefault(bucket, []).append(example)
      if len(pending[bucket]) == self._batch_size:
        yield self._collate(pending.pop(bucket), bucket)
    for bucket, examples in pending.items():  # the rest, filled with marked copies
      filler = dict(examples[0], example_valid=False)
      yield self._collate(examples + [filler] * (self._batch_size - len(examples)), bucket)


def eval_batches(source: Sequence[Any], *, batch_size: int, pixel_mean: Sequence[float],
                 pixel_std: Sequence[float], size_divisibility: int = 32,
                 pad_to: str | None = "image", min_size: int | None = None,
                 max_size: int | None = None, sizes: Sequence[Size] | None = None,
                 shard_options: grain.sharding.ShardOptions | None = None,
                 read_threads: int = 0, prefetch: int = 0) -> EvalBatches:
  """This process's evaluation batches, grouped by padded size; iterate it (re-iterable).

  By default every image is padded only to the next multiple of `size_divisibility`, as the
  official evaluation pads each image alone, and a batch holds images of one padded size: an
  image's prediction does not depend on the batch size or on its neighbours, and the network
  compiles once per padded size. Batches come in the order their padded size fills up
  (not the source order); the last batch of each size is filled with copies marked
  `example_valid` False. Every record of the source is in exactly one batch of one process
  (default sharding: `ShardByJaxProcess`, its `drop_remainder` ignored); processes may yield
  different numbers of batches (evaluation runs on each process's own devices).

  Args:
    source: random-access source of records.
    batch_size: examples per batch on this process.
    pixel_mean, pixel_std: RGB normalization on the 0..255 scale.
    size_divisibility: pad each image to the next multiple of this.
    pad_to: one of `eval_sizes.PAD_TO`: "image" (the official padding), "buckets:N" (N coarse sizes
      made from the whole split's sizes: fewer compiles, results slightly different) or
      "HxW" (one fixed size).
    min_size, max_size: resize the shortest edge to `min_size`, the longest to at most
      `max_size` (the official test-time resize); None keeps the size.
    sizes: the original (H, W) of every record of `source` (default: `image_sizes(source)`,
      read without decoding images); "buckets:N" needs them, `schedule()` uses them.
    shard_options: grain ShardOptions; default `ShardByJaxProcess()`.
    read_threads, prefetch: threads and buffered examples.

  Returns:
    An `EvalBatches`, an iterable of dicts:
      "images": float32 [B, H, W, 3] normalized, 0 on padding
      "padding_mask": bool [B, H, W] True on the (resized) image
      "image_size": int32 [B, 2] (h, w) of the (resized) image = the valid region, the
        `image_sizes` of `inference.postprocess`
      "output_size": int32 [B, 2] (h, w) of the original image = the annotations' size, the
        `output_sizes` of `inference.postprocess`
      "example_valid": bool [B] False on filler examples
      "image_id": int64 [B]
      "annotations": list of B records without "image" (panoptic, segments_info, semantic,
        instances, as the source has them) at the original size
  """
  shard = _shard_options(shard_options, drop_remainder=False)
  num_records = len(source)
  indices = list(range(shard.shard_index, num_records, shard.shard_count))
  if not indices:
    raise ValueError(f"shard {shard.shard_index} of {shard.shard_count} of a source of "
                     f"{num_records} records is empty")
  mode, arg = eval_sizes.parse_pad_to(pad_to)
  if sizes is None:
    sizes = image_sizes(source)
    if sizes is None and mode == "buckets":  # a source without metadata: read every image
      sizes = [np.shape(normalize_record(source[i])["image"])[:2] for i in range(num_records)]
  if sizes is not None and len(sizes) != num_records:
    raise ValueError(f"eval_batches: {len(sizes)} sizes for a source of {num_records} records")
  table = None
  if mode == "buckets" or (mode == "fixed" and sizes is not None):  # (fixed: checked here)
    table = eval_sizes.bucket_table(
        [eval_sizes.eval_resize_size(h, w, min_size, max_size) for h, w in sizes],
        pad_to=pad_to, size_divisibility=size_divisibility)
    table = table if mode == "buckets" else None
  examples = grain.MapDataset.source(indices).map(functools.partial(
      _eval_example, source=source, min_size=min_size,
      max_size=max_size, pixel_mean=tuple(pixel_mean), pixel_std=tuple(pixel_std)))
  examples = examples.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                                        prefetch_buffer_size=prefetch))
  return EvalBatches(examples, batch_size=batch_size, size_divisibility=size_divisibility,
                     table=table, fixed=arg if mode == "fixed" else None, indices=indices,
                     sizes=sizes, min_size=min_size, max_size=max_size)
