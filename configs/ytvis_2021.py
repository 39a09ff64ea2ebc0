r"""YouTube-VIS 2021 video instance segmentation (40 classes), the official 8-epoch schedule.

`configs/ytvis_2019.py` with the 2021 data and schedule (official `configs/youtubevis_2021/`):
8000 iterations with a x0.1 step at 5500, test shortest side 360 (ResNets, Swin-L) or 480
(Swin-T/S/B). Everything else, and the commands, as there:

  python train.py --config configs/ytvis_2021.py:swin_l --workdir /tmp/m2f_ytvis21_swin_l \
      --config.data.data_dir=/data/tfds --config.init_from=/tmp/coco_ins_swin_l
"""

import importlib.util
import os


def get_config(arg: str = "r50"):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ytvis_2019.py")
  spec = importlib.util.spec_from_file_location("_ytvis_2019", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.ytvis_config("2021", arg)
