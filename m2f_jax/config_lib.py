"""Building blocks of the config files in `configs/`: the official Mask2Former defaults.

Every config file composes these functions and overrides what its model-zoo entry changes,
so no field is written twice. Values follow the official Detectron2 configs
(facebookresearch/Mask2Former `configs/**/*.yaml`); the field names of `model` follow
transformers' `Mask2FormerConfig` where one exists, so HF checkpoints map one to one.
"""

import importlib.util
import os

import ml_collections

from m2f_jax.data import datasets

# ImageNet statistics on the 0..255 RGB scale, as the official configs (PIXEL_MEAN/STD).
IMAGENET_MEAN = (123.675, 116.280, 103.530)
IMAGENET_STD = (58.395, 57.120, 57.375)


def resnet_backbone(depth: int = 50) -> ml_collections.ConfigDict:
  """Detectron2's ResNet as the official configs use it (torchvision-style stride in 3x3)."""
  depths = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}
  if depth not in depths:
    raise ValueError(f"ResNet depth {depth} is not one of {sorted(depths)}")
  return ml_collections.ConfigDict(dict(
      name="resnet",
      depths=depths[depth],
      hidden_sizes=[256, 512, 1024, 2048],
      embedding_size=64,
      layer_type="bottleneck",
      downsample_in_bottleneck=False,  # STRIDE_IN_1X1: False
      norm="frozen_bn",  # NORM: "FrozenBN"; "group_norm" for a backbone trained from scratch
  ))


# (embed_dim, depths, num_heads, window_size) of the official D2SwinTransformer configs.
SWIN_VARIANTS = {
    "tiny": (96, [2, 2, 6, 2], [3, 6, 12, 24], 7),
    "small": (96, [2, 2, 18, 2], [3, 6, 12, 24], 7),
    "base": (128, [2, 2, 18, 2], [4, 8, 16, 32], 12),  # the 384 (window 12) release
    "large": (192, [2, 2, 18, 2], [6, 12, 24, 48], 12),
}


def swin_backbone(variant: str = "tiny") -> ml_collections.ConfigDict:
  if variant not in SWIN_VARIANTS:
    raise ValueError(f"Swin variant {variant!r} is not one of {sorted(SWIN_VARIANTS)}")
  embed_dim, depths, num_heads, window = SWIN_VARIANTS[variant]
  return ml_collections.ConfigDict(dict(
      name="swin",
      embed_dim=embed_dim,
      depths=depths,
      num_heads=num_heads,
      window_size=window,
      patch_size=4,
      mlp_ratio=4.0,
      qkv_bias=True,
      drop_path_rate=0.3,
      # False (official, and transformers' Mask2Former backbone): pad every stage to the
      # window. True: the rule of transformers' plain SwinModel (no shift once a stage is
      # no larger than the window).
      adapt_window_to_input=False,
  ))


def model_config(backbone: ml_collections.ConfigDict, num_classes: int | None,
                 num_queries: int = 100) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      backbone=backbone,
      # K: the dataset's categories. None: as many as the data has (`resolve_categories`).
      num_classes=ml_collections.FieldReference(num_classes, field_type=int),
      num_queries=num_queries,
      hidden_dim=256,            # MASK_FORMER.HIDDEN_DIM
      feature_size=256,          # SEM_SEG_HEAD.CONVS_DIM
      mask_feature_size=256,     # SEM_SEG_HEAD.MASK_DIM
      encoder_layers=6,          # SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS
      encoder_feedforward_dim=1024,
      encoder_num_heads=8,
      encoder_num_points=4,
      decoder_layers=10,         # MASK_FORMER.DEC_LAYERS: 9 masked-attention layers + the queries
      num_heads=8,               # MASK_FORMER.NHEADS
      dim_feedforward=2048,
      pre_norm=False,
      enforce_input_projection=False,
      common_stride=4,
      dtype="float32",           # computation dtype: "float32" or "bfloat16"
      # The pixel decoder's deformable attention: "gather" (bilinear sampling by gathers) or
      # "matmul" (the same sampling as dense one-hot matmuls per level, for accelerators with
      # slow gathers, e.g. TPU); same parameters and outputs to float rounding
      # (m2f_jax/models/ms_deform_attn.py). "gather": measured faster on CPU
      # (benchmarks/deform_attn.py); GPU and TPU not measured yet.
      deform_attn_impl="gather",
      pixel_mean=IMAGENET_MEAN,  # the normalization the checkpoint expects (RGB, 0..255)
      pixel_std=IMAGENET_STD,
      # Video instance segmentation (mask2former_video): clips [B, T, H, W, 3] in, one class
      # per query and clip, masks [B, Q, T, H/4, W/4] (m2f_jax.models.video).
      video=False,
      # Video: backbone + pixel decoder on at most this many frames at a time (0: all; exact).
      frame_chunk=0,
      # A per-pixel class head on the mask features (outputs "semantic_logits"), trained by
      # loss.semantic_weight; not in the official model (False: none). Inference ignores it.
      semantic_head=False,
  ))


def loss_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      no_object_weight=0.1,
      class_weight=2.0,
      mask_weight=5.0,
      dice_weight=5.0,
      train_num_points=12544,
      oversample_ratio=3.0,
      importance_sample_ratio=0.75,
      deep_supervision=True,
      # Video: an instance with no pixel in the last frame of its clip is trained as "no
      # object" (the official mapper + prepare_targets quirk); False: its own class.
      video_absent_last_frame_no_object=True,
      # Weight of the dense auxiliary class loss on model.semantic_head's per-pixel logits
      # (`m2f_jax.criterion.semantic_loss`); 0 (official): none.
      semantic_weight=0.0,
  ))


def optim_config(max_steps: int, lr_schedule: str = "step",
                 decay_steps=()) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      optimizer="adamw",
      learning_rate=1e-4,
      weight_decay=0.05,
      backbone_multiplier=0.1,
      clip_grad_norm=0.01,       # CLIP_TYPE full_model
      warmup_steps=10 if lr_schedule == "step" else 0,
      warmup_factor=1.0,         # the learning-rate factor at step 0, linear to 1 (official 1.0)
      lr_schedule=lr_schedule,   # "step" (COCO) or "poly" (ADE20K, Cityscapes)
      decay_steps=list(decay_steps),
      decay_factor=0.1,
      poly_power=0.9,
      max_steps=max_steps,
  ))


def data_config(dataset: str, *, task: str | None = None,
                batch_size: int = 16) -> ml_collections.ConfigDict:
  """The `data` section: every field any dataset or pipeline reads, with its meaning.

  Defaults come from the dataset's spec (`m2f_jax.data.datasets.DATASETS`): its task and
  official augmentation recipe.
  """
  spec = datasets.spec(dataset)
  return ml_collections.ConfigDict(dict(
      dataset=dataset,             # a name of m2f_jax.data.datasets.DATASETS
      task=task or spec.task,      # "semantic", "instance" or "panoptic" (the targets)
      batch_size=batch_size,       # global batch over all hosts
      ignore_label=255,            # semantic label of unlabeled pixels
      num_targets=100,             # M: target masks per training image (padded)
      compact_targets=True,        # ship uint8 images + segment maps, expanded on the device
                                   # (m2f_jax.device_batch); False: float32 images, dense masks
      target_layers=4,             # compact instance targets: overlapping masks kept per pixel
      frame_range=20,              # video: the other clip frames lie within +-this of a reference
                                   # frame (official SAMPLING_FRAME_RANGE; video_pipeline)
      heldout_videos=0,            # YouTube-VIS: train videos held out as the "validation" split
                                   # (the release's validation ground truth is not public)
      num_frames=2,                # T: frames per training clip (video; official SAMPLING_FRAME_NUM)
      augmentation=spec.augmentation,  # "coco_lsj", "ade20k_semantic", "cityscapes", "synthetic"
      image_size=(1024, 1024),     # training size (LSJ target size; crop size otherwise)
      scale_range=(0.1, 2.0),      # LSJ scale jitter ("synthetic": None = no jitter)
      # ADE20K / Cityscapes: shortest-edge choices and cap; None: the official values
      # derived from image_size ([int(x * 0.1 * S) for x in 5..20], 4 S).
      min_size_train=None,
      max_size_train=ml_collections.FieldReference(None, field_type=int),
      single_category_max_area=1.0,  # crop constraint of the semantic recipes (1.0: off)
      # Input pipeline (grain), per process. In-process by default: with dense masks, worker
      # processes measured slower (benchmarks/README.md, "Input pipeline").
      worker_count=0,              # worker processes (0: all in the training process)
      read_threads=1,              # threads reading and transforming records
      prefetch=2,                  # batches buffered ahead
      # tfds datasets: where they are written and read, and how they are built.
      data_dir="",                 # "" = tfds' default ($TFDS_DATA_DIR or ~/tensorflow_datasets)
      source_dir="",               # the local copy of the release to build from (layouts: the
                                   # builders' MANUAL_DOWNLOAD_INSTRUCTIONS in data/builders/)
      on_error="fail",             # a bad source file stops the build with its name and the
                                   # reason; "skip": left out, logged, counted in the metadata
      prepare_workers=8,           # threads reading source files while building
      # coco_format: your data in COCO panoptic format (a panoptic_dir set) or COCO instance
      # format; building reads these, reading needs the same dataset_name (or JSON paths).
      json_file="", image_dir="", panoptic_dir="",              # the "train" split
      val_json_file="", val_image_dir="", val_panoptic_dir="",  # the "validation" split
      dataset_name="",             # its tfds config name ("" = "custom_" + a hash of the JSONs)
      # The categories the model was trained on: [{"id": contiguous class index, "dataset_id":
      # the dataset's own id (written in COCO-format outputs), "name", "isthing": 0/1,
      # "color": [R, G, B]}]. None: read from the data (data.dataset's list, or the JSON of
      # coco_format) by `resolve_categories` when training starts or a model is exported, then
      # stored in the saved config, so checkpoints need no access to the data.
      categories=ml_collections.FieldReference(None, field_type=list),
      # Category names and thing flags overriding the dataset's (converted checkpoints carry
      # their label names); empty: the dataset's own.
      class_names=ml_collections.FieldReference(None, field_type=list),
      isthing=ml_collections.FieldReference(None, field_type=list),
      # synthetic: images per split and the generator's seed.
      num_train=2000, num_val=100, seed=0,
      # synthetic_video: frames and (H, W) of every generated video (0 / None: varied, 4..12
      # frames, sides 96..256). Fixed values give evaluation one compiled shape (the video
      # network compiles once per frame count and padded size).
      video_frames=0, video_size=ml_collections.FieldReference(None, field_type=tuple),
  ))


def eval_config(dataset: str, task: str) -> ml_collections.ConfigDict:
  """The `eval` section: test-time resize, batching, post-processing and metrics."""
  spec = datasets.spec(dataset)
  evaluators = spec.evaluators.get(task, (task,))
  return ml_collections.ConfigDict(dict(
      # The official test-time ResizeShortestEdge (None: keep the size).
      min_size=ml_collections.FieldReference(spec.eval_size[0], field_type=int),
      max_size=ml_collections.FieldReference(spec.eval_size[1], field_type=int),
      batch_size=8,  # global
      # What each image is padded to (m2f_jax.data.pipeline.PAD_TO): "image" (official: to
      # a multiple of 32; the network compiles once per padded size), "buckets:N" (N coarse
      # sizes made from the split's sizes: at most N compiles, results differ slightly:
      # benchmarks/README.md, "Evaluation compiles") or "HxW" (one fixed size).
      pad_to="image",
      # Compile every padded size of the split ahead of time (sizes from the dataset, no
      # image decoded), on compile_threads threads (0: one per core of this host) while
      # the first batches are read. Same programs, same results; False: as batches come.
      # None: on accelerators only; on a CPU the compile threads take the cores the
      # evaluation runs on (2-core CPU, 8 images: 82.7 s ahead against 64.5 s as batches
      # come, benchmarks/README.md "Evaluation compiles").
      compile_ahead=ml_collections.FieldReference(None, field_type=bool), compile_threads=0,
      object_mask_threshold=0.8, overlap_threshold=0.8, instance_topk=100,
      # Video: frames per forward pass (0: the whole video at once); longer videos run as
      # clips of that many frames overlapping by clip_overlap, their tubes linked
      # (m2f_jax/inference_video.py: link_clips). One compiled shape whatever the length.
      clip_frames=0, clip_overlap=2,
      # Video panoptic: VPQ's window lengths in frames (VIPSeg's; a window longer than a
      # video adds nothing for it: m2f_jax/evaluation/video_panoptic.py).
      vpq_windows=(1, 2, 4, 6, 8),
      # Metrics, by name of m2f_jax.evaluation.EVALUATORS ("semantic": mIoU, "panoptic": PQ,
      # "instance": mask AP); post-processing computes what they need.
      evaluators=evaluators,
  ))


def base_config(*, model: ml_collections.ConfigDict, dataset: str, task: str,
                max_steps: int, lr_schedule: str = "step", decay_steps=(),
                batch_size: int = 16) -> ml_collections.ConfigDict:
  """A complete config: model, data, loss, optim, train and eval sections."""
  config = ml_collections.ConfigDict()
  config.model = model
  config.data = data_config(dataset, task=task, batch_size=batch_size)
  config.loss = loss_config()
  config.optim = optim_config(max_steps, lr_schedule, decay_steps)
  config.train = ml_collections.ConfigDict(dict(
      seed=0, checkpoint_every=5000, keep_checkpoints=3, log_every=20,
      remat=False,          # recompute activations in the backward pass (saves memory)
      shard_params=False,   # shard parameters and optimizer state over the devices (ZeRO-3)
  ))
  config.eval = eval_config(dataset, task)
  config.init_from = ""  # an m2f_jax checkpoint directory or ImageNet backbone weights
  return config


def backbone_from_arg(arg: str) -> ml_collections.ConfigDict:
  """`r50`, `r101`, `swin_t`, `swin_s`, `swin_b`, `swin_l` -> a backbone config."""
  resnets = {"r50": 50, "r101": 101}
  swins = {"swin_t": "tiny", "swin_s": "small", "swin_b": "base", "swin_l": "large"}
  if arg in resnets:
    return resnet_backbone(resnets[arg])
  if arg in swins:
    return swin_backbone(swins[arg])
  raise ValueError(f"unknown backbone {arg!r}: use one of {sorted(resnets) + sorted(swins)}")


def load_config_file(config_arg: str) -> ml_collections.ConfigDict:
  """`path/to/config.py[:arg]` (as train.py's --config) -> the ConfigDict of its get_config."""
  path, _, arg = config_arg.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path} not found (from --config {config_arg!r})")
  spec = importlib.util.spec_from_file_location("_m2f_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {path} has no get_config(arg) function")
  return module.get_config(arg) if arg else module.get_config()


def resolve_categories(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Stores the data's categories in `config.data.categories`; sets or checks the class count.

  Run before the model is built (training start, model export). Categories come from
  `data.categories` when already stored, else from the data (`datasets.categories`: the
  dataset's list, or a coco_format JSON's); each gets its "dataset_id" (default: its index)
  and "color" (the JSON's, else a palette's). `model.num_classes` None becomes their count; a
  stated count that differs raises `errors.ConfigError` (one line, before any step). COCO
  instance-format data (coco_format without panoptic_dir) can only train the instance task:
  `data.task` and `eval.evaluators` are set to it. Mutates `config` and returns it.
  """
  from m2f_jax import errors  # pylint: disable=g-import-not-at-top
  d = config.data
  files = datasets.coco_format_files(d) if d.dataset == "coco_format" else {}
  if files and d.task == "panoptic" and not any(f["panoptic_dir"] for f in files.values()):
    d.task = "instance"  # COCO instance format: no panoptic PNGs, no stuff
    config.eval.evaluators = ("instance",)
  try:
    found = datasets.categories(d, config.model.num_classes)
  except (ValueError, FileNotFoundError) as e:
    raise errors.DataError(f"cannot read the categories of data.dataset={d.dataset!r}: {e}") \
        from None
  categories = datasets.complete_categories(found)
  stated = config.model.num_classes
  if stated is None:
    config.model.num_classes = len(categories)
  elif int(stated) != len(categories):
    where = datasets.categories_source(d)
    raise errors.ConfigError(
        f"{where} has {len(categories)} categories (ids "
        f"{[c['dataset_id'] for c in categories][:20]}) but model.num_classes={stated}: drop "
        f"--config.model.num_classes (it is read from the data) or set it to {len(categories)}")
  d.categories = categories
  return config
