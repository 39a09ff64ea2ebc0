r"""A tiny video Mask2Former trained from scratch on the synthetic videos (CPU, minutes).

The model of `configs/tiny.py` as a video model (`model.video`: per-frame backbone and pixel
decoder, the masked-attention decoder over both frames of a clip), trained on 2-frame clips of
`synthetic_video` (moving shapes over textured stuff; the 4 thing classes are the video
instances) and evaluated with the YouTube-VIS video AP on whole validation videos.

  python train.py --config configs/synthetic_video.py --workdir /tmp/m2f_video
"""

from m2f_jax import config_lib


def get_config(arg: str = ""):
  del arg
  tiny = config_lib.load_config_file(__file__.replace("synthetic_video.py", "tiny.py"))
  model = tiny.model
  model.update(video=True, num_classes=4)  # the synthetic thing classes
  config = config_lib.base_config(model=model, dataset="synthetic_video",
                                  task="video_instance", max_steps=900, lr_schedule="poly",
                                  batch_size=4)
  config.data.update(image_size=(96, 96), num_frames=2, num_targets=8, scale_range=None,
                     num_train=2000, num_val=50, seed=0, worker_count=0, read_threads=0,
                     prefetch=0)
  config.loss = tiny.loss  # 1024 points, class weight 5 (see configs/tiny.py)
  config.optim = tiny.optim
  config.optim.max_steps = 900
  config.eval.update(batch_size=1, min_size=96, max_size=96)  # one whole video per batch
  config.train.update(checkpoint_every=300, log_every=20)
  return config
