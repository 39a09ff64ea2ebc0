r"""VIPSeg video panoptic segmentation (124 classes: 58 things, 66 stuff), VIPSeg_720P.

The official Mask2Former has no video panoptic config; this one is the video model of
configs/ytvis_2019.py (2-frame clips, frames within +-20 of a reference, AdamW 1e-4, backbone
x0.1, weight decay 0.05, full-model gradient clipping 0.01) with the VIPSeg schedule and sizes of
DVIS's Mask2Former-based VIPSeg configs (zhang-tao-whu/DVIS `configs/VIPSeg/MinVIS_R50_720p.yaml`
and `swin/MinVIS_SwinL.yaml`): 8 clips per batch, 20000 iterations with a x0.1 step at 14000,
training shortest side chosen per clip from 480, 512, ..., 800 (longest capped at 1333), test
shortest side 720 (the 720p frames at their own size), 200 queries for Swin-L. Training tubes:
every thing track and one tube per stuff class present in the clip (`data.task=
"video_panoptic"`); an instance absent from the clip's last frame keeps its class.

Initialization: the COCO panoptic model of the same backbone (its class head re-initialized
for VIPSeg's classes), as the issue asks; DVIS starts from the COCO instance models
(model_final_3c8ec9.pkl, model_final_e5f453.pkl) instead.

  # once: the tfds dataset from your local copy of VIPSeg_720P (nothing is downloaded)
  python -m m2f_jax.data.prepare --config configs/vipseg.py \
      --config.data.source_dir=/data/VIPSeg --config.data.data_dir=/data/tfds
  # the COCO panoptic model: Mask2Former's model zoo, maskformer2_R50_bs16_50ep
  python -m m2f_jax.convert --from detectron2 model_final_94dc52.pkl \
      --config configs/coco_panoptic.py:r50 --output /tmp/coco_pan_r50
  python train.py --config configs/vipseg.py:r50 --workdir /tmp/m2f_vipseg_r50 \
      --config.data.data_dir=/data/tfds --config.init_from=/tmp/coco_pan_r50

Swin-L: `model_final_f07440.pkl` (maskformer2_swin_large_IN21k_384_bs16_100ep) with
`--config configs/coco_panoptic.py:swin_l`, then `configs/vipseg.py:swin_l`.

Evaluation: VIPSeg's VPQ (windows of 1, 2, 4, 6, 8 frames) and STQ, and the video AP of the
thing tubes; predictions in VIPSeg's submission layout (pan_pred/, pred.json). Videos run as
clips of 6 frames overlapping by 2 whose tubes are linked (`eval.clip_frames`; our choice, to
bound memory at 720p: DVIS runs windows of 3 frames); `--config.eval.clip_frames=0` takes each
video in one pass.
"""

from m2f_jax import config_lib

BACKBONES = ("r50", "swin_l")


def get_config(arg: str = "r50"):
  if arg not in BACKBONES:
    raise ValueError(f"configs/vipseg.py:{arg}: use one of {BACKBONES}")
  backbone = config_lib.backbone_from_arg(arg)
  model = config_lib.model_config(backbone, num_classes=124,
                                  num_queries=200 if arg == "swin_l" else 100)
  model.video = True
  config = config_lib.base_config(model=model, dataset="vipseg", task="video_panoptic",
                                  max_steps=20000, decay_steps=(14000,), batch_size=8)
  # Training clips: 2 frames within +-20 of a reference; shortest side 480..800 (capped at
  # 1333), then a fixed window that holds a 16:9 video at 800 (one compiled shape).
  config.data.update(num_frames=2, frame_range=20, image_size=(768, 1344),
                     min_size_train=list(range(480, 801, 32)), max_size_train=1333)
  config.loss.video_absent_last_frame_no_object = False
  config.eval.update(min_size=720, max_size=1333, batch_size=1, clip_frames=6,
                     clip_overlap=2)
  return config
