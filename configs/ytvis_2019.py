r"""YouTube-VIS 2019 video instance segmentation (40 classes), the official 8-epoch schedule.

As the official `configs/youtubevis_2019/*.yaml` of mask2former_video: 16 two-frame clips per
batch, AdamW 1e-4 (backbone x0.1, weight decay 0.05), full-model gradient clipping 0.01,
6000 iterations with a x0.1 step at 4000 (10 warmup iterations), training shortest side
chosen per clip from (360, 480), test shortest side 360 (ResNets) or 480 (every Swin: the
official Swin-T/S/B/L 2019 files all set MIN_SIZE_TEST 480), 200 queries for Swin-L.

  # once: the tfds dataset from your local copy of the release (nothing is downloaded)
  python -m m2f_jax.data.prepare --config configs/ytvis_2019.py \
      --config.data.source_dir=/data/ytvis_2019 --config.data.data_dir=/data/tfds
  # the official initialization: the COCO instance model of the same backbone
  python -m m2f_jax.convert --from detectron2 model_final_3c8ec9.pkl \
      --config configs/coco_instance.py:r50 --output /tmp/coco_ins_r50
  python train.py --config configs/ytvis_2019.py:r50 --workdir /tmp/m2f_ytvis19_r50 \
      --config.data.data_dir=/data/tfds --config.init_from=/tmp/coco_ins_r50

The class head of the COCO model (80 classes) is re-initialized for the 40 YouTube-VIS
classes (`training.checkpoints.initialize_from`). Official video model-zoo files convert
with `python -m m2f_jax.convert --from detectron2 FILE.pkl --config configs/ytvis_2019.py:ARG`.
Backbones: r50, r101, swin_t, swin_s, swin_b, swin_l.
"""

from m2f_jax import config_lib

# Release -> (max_steps, decay step, test shortest side per backbone kind (resnet, swin, swin_l)).
SCHEDULES = {"2019": (6000, 4000, (360, 480, 480)), "2021": (8000, 5500, (360, 480, 360))}


def ytvis_config(release: str, arg: str):
  """The official config of YouTube-VIS `release` ("2019" or "2021") for backbone `arg`."""
  max_steps, decay, test_sizes = SCHEDULES[release]
  backbone = config_lib.backbone_from_arg(arg)
  large = arg == "swin_l"
  model = config_lib.model_config(backbone, num_classes=40, num_queries=200 if large else 100)
  model.video = True
  config = config_lib.base_config(model=model, dataset=f"ytvis_{release}",
                                  task="video_instance", max_steps=max_steps,
                                  decay_steps=(decay,), batch_size=16)
  # Training clips: 2 frames within +-20 of a reference; shortest side 360 or 480 (capped at
  # 1333), then a fixed window that holds a 16:9 video at 480 (one compiled shape).
  config.data.update(num_frames=2, frame_range=20, image_size=(480, 864),
                     min_size_train=[360, 480], max_size_train=1333)
  test_size = test_sizes[2] if large else test_sizes[1] if backbone.name == "swin" else (
      test_sizes[0])
  config.eval.update(min_size=test_size, max_size=1333, batch_size=1)  # one video at a time
  return config


def get_config(arg: str = "r50"):
  return ytvis_config("2019", arg)
