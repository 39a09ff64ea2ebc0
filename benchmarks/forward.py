r"""Forward-pass speed: m2f_jax (jit) against transformers' PyTorch Mask2Former, same config.

For each model (official COCO panoptic R50 and Swin-T: 133 classes, 100 queries) and batch
size, both models get the same random weights (the PyTorch ones, imported) and the same
images; after warm-up (and compilation for JAX) the two are timed in alternation, `--pause`
seconds apart (so that one framework's worker threads have gone idle before the other is
timed, as in train_step.py), and the medians and their ratio (PyTorch time / JAX time: > 1
means JAX is faster) are printed. The header names both frameworks' thread counts and the
malloc settings (`--malloc cpu`, the default here, re-executes the benchmark once with the
glibc settings of m2f_jax/host_malloc.py; `--malloc default` keeps glibc's).

  python benchmarks/forward.py                              # CPU, float32, 512x512, batch 1 and 8
  python benchmarks/forward.py --dtype bfloat16 --runs 20   # on a GPU: both sides in bfloat16

Needs the reference extra (torch, transformers). Runs on whatever device jax and torch pick
(torch uses CUDA when available).
"""

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from m2f_jax import host_malloc


def hf_config(backbone: str):
  from transformers import Mask2FormerConfig, ResNetConfig, SwinConfig  # pylint: disable=g-import-not-at-top
  stages = ["stage1", "stage2", "stage3", "stage4"]
  if backbone == "r50":
    bb = ResNetConfig(depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048], embedding_size=64,
                      layer_type="bottleneck", out_features=stages)
  else:
    bb = SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                    out_features=stages, drop_path_rate=0.3)
  return Mask2FormerConfig(backbone_config=bb, num_labels=133, num_queries=100, decoder_layers=10)


def build_pair(backbone: str, dtype: str, device):
  from transformers import Mask2FormerForUniversalSegmentation  # pylint: disable=g-import-not-at-top
  from m2f_jax.convert import hf  # pylint: disable=g-import-not-at-top
  from m2f_jax.models.mask2former import build_model  # pylint: disable=g-import-not-at-top
  cfg = hf_config(backbone)
  ref = Mask2FormerForUniversalSegmentation(cfg).eval().to(device)
  model_cfg = hf.hf_config_to_model_config(cfg.to_dict())
  model_cfg.dtype = dtype
  model = build_model(model_cfg)
  state = {k: v.detach().cpu() for k, v in ref.state_dict().items()}
  variables = jax.device_put(hf.hf_variables(model, state, source="reference"))
  return ref, model, variables


def thread_counts(torch, platform: str) -> str:
  """Both frameworks' CPU thread pools, for the header line."""
  xla_flags = os.environ.get("XLA_FLAGS", "")
  if platform == "cpu":  # XLA:CPU sizes its intra-op pool to the schedulable CPUs
    jax_threads = f"jax: XLA:CPU pool of {len(os.sched_getaffinity(0))} threads"
  else:
    jax_threads = f"jax: on {platform}"
  if xla_flags:
    jax_threads += f" (XLA_FLAGS={xla_flags})"
  return (f"threads: torch {torch.get_num_threads()} intra-op, "
          f"{torch.get_num_interop_threads()} inter-op; {jax_threads}")


def alternate(run_a, run_b, *, runs: int, pause: float) -> tuple[list[float], list[float]]:
  """Times `run_a` and `run_b` in alternation, sleeping `pause` s before each; seconds each."""
  t_a, t_b = [], []
  for _ in range(runs):
    for fn, times in ((run_a, t_a), (run_b, t_b)):
      time.sleep(pause)
      t0 = time.perf_counter()
      fn()
      times.append(time.perf_counter() - t0)
  return t_a, t_b


def time_pair(ref, model, variables, batch, size, dtype, device, runs, pause):
  import torch  # pylint: disable=g-import-not-at-top
  images = np.random.RandomState(0).randn(batch, size, size, 3).astype(np.float32)
  x_torch = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(device)
  x_jax = jax.device_put(jnp.asarray(images))
  forward = jax.jit(lambda v, x: model.apply(v, x))
  autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                            enabled=dtype == "bfloat16")

  def run_torch():
    with torch.inference_mode(), autocast:
      out = ref(x_torch)
    if device.type == "cuda":
      torch.cuda.synchronize()
    return out

  def run_jax():
    return jax.block_until_ready(forward(variables, x_jax))

  t0 = time.perf_counter()
  run_jax()
  compile_s = time.perf_counter() - t0
  run_torch()  # warm-up
  run_jax()
  t_torch, t_jax = alternate(run_torch, run_jax, runs=runs, pause=pause)
  return statistics.median(t_torch), statistics.median(t_jax), compile_s


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--backbones", default="r50,swin_t")
  parser.add_argument("--batches", default="1,8")
  parser.add_argument("--size", type=int, default=512)
  parser.add_argument("--runs", type=int, default=5)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--pause", type=float, default=1.0,
                      help="seconds before each timed run, so that one framework's worker "
                      "threads have gone idle before the other's run is timed")
  parser.add_argument("--malloc", default="cpu", choices=("cpu", "default"),
                      help="cpu: re-execute once with the glibc settings of train.py's "
                      "--cpu_malloc, for both frameworks (m2f_jax/host_malloc.py); default: "
                      "glibc's defaults")
  args = parser.parse_args()
  if args.malloc == "cpu":
    host_malloc.restart_with_cpu_malloc_settings()
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_grad_enabled(False)
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.devices()[0].device_kind}); "
        f"torch {torch.__version__} on {device}; {args.dtype}; {args.size}x{args.size}; "
        f"median of {args.runs} alternating runs, {args.pause:g} s apart; malloc: "
        f"{host_malloc.describe()}")
  print(thread_counts(torch, jax.devices()[0].platform))
  print(f"{'model':8} {'batch':>5} {'torch s':>9} {'jax s':>9} {'speed-up':>9} {'jax img/s':>10} "
        f"{'compile s':>10}")
  for backbone in args.backbones.split(","):
    ref, model, variables = build_pair(backbone, args.dtype, device)
    for batch in (int(b) for b in args.batches.split(",")):
      t_torch, t_jax, compile_s = time_pair(ref, model, variables, batch, args.size, args.dtype,
                                            device, args.runs, args.pause)
      print(f"{backbone:8} {batch:5d} {t_torch:9.3f} {t_jax:9.3f} {t_torch / t_jax:8.2f}x "
            f"{batch / t_jax:10.2f} {compile_s:10.1f}", flush=True)


if __name__ == "__main__":
  main()
