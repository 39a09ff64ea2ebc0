r"""Video Mask2Former speed and memory: the forward pass at 360p and the train step on clips.

The official YouTube-VIS R50 model (40 classes, 100 queries, 6 encoder and 9 decoder layers,
random weights) in float32:
  forward   clips [1, T, 384, 640, 3] (360p padded to a multiple of 32) for T = 2 and 36
            (the whole video in one pass, as the official inference when it fits): frames/s
            after compilation, median of --runs;
  train     the training step on 2-frame clips (forward, tube matching + criterion with
            12544 points, backward, AdamW) at the same size, batch --train_batch: clips/s.
Peak memory: XLA's buffer assignment of the compiled program (arguments + outputs + temporaries,
`compiled.memory_analysis()`, any platform), and on GPU the device's measured peak
(`memory_stats()["peak_bytes_in_use"]`).

  python benchmarks/video_forward.py                  # the measurement (minutes on CPU)
  python benchmarks/video_forward.py --frames 2 36 --frame_chunk 12
  python benchmarks/video_forward.py --smoke          # tiny model and sizes (tests)

Needs only jax, flax, optax, numpy, scipy and m2f_jax's models/criterion (no grain, tfds or
ml_collections), so it runs on a bare GPU machine.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


class _Cfg(dict):
  """The `model` config fields build_model reads, without ml_collections."""
  __getattr__ = dict.__getitem__


def model_config(smoke: bool, frame_chunk: int = 0) -> _Cfg:
  if smoke:  # configs/synthetic_video.py's model
    backbone = _Cfg(name="resnet", depths=[1, 1, 1, 1], hidden_sizes=[32, 64, 128, 256],
                    embedding_size=16, layer_type="bottleneck", downsample_in_bottleneck=False,
                    norm="group_norm")
    widths = dict(hidden_dim=64, feature_size=64, mask_feature_size=64, encoder_layers=2,
                  encoder_feedforward_dim=128, encoder_num_heads=4, decoder_layers=4,
                  num_heads=4, dim_feedforward=128, num_queries=16, num_classes=4)
  else:  # configs/ytvis_2019.py:r50
    backbone = _Cfg(name="resnet", depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048],
                    embedding_size=64, layer_type="bottleneck", downsample_in_bottleneck=False,
                    norm="frozen_bn")
    widths = dict(hidden_dim=256, feature_size=256, mask_feature_size=256, encoder_layers=6,
                  encoder_feedforward_dim=1024, encoder_num_heads=8, decoder_layers=10,
                  num_heads=8, dim_feedforward=2048, num_queries=100, num_classes=40)
  return _Cfg(backbone=backbone, encoder_num_points=4, pre_norm=False,
              enforce_input_projection=False, common_stride=4, dtype="float32", video=True,
              frame_chunk=frame_chunk, **widths)


def _peak_bytes(compiled) -> int | None:
  try:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except  (not every backend reports it)
    return None


def _device_peak() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def _fmt(n) -> str:
  return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def _time(fn, runs: int) -> float:
  jax.block_until_ready(fn())  # warm-up
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def bench_forward(model, variables, *, frames: int, size: tuple[int, int], runs: int) -> dict:
  clips = jnp.asarray(np.random.RandomState(0).randn(1, frames, *size, 3), jnp.float32)
  compiled = jax.jit(model.apply).lower(variables, clips).compile()
  seconds = _time(lambda: compiled(variables, clips), runs)
  return {"frames": frames, "seconds": seconds, "frames_per_s": frames / seconds,
          "compiled_peak_bytes": _peak_bytes(compiled), "device_peak_bytes": _device_peak()}


def make_clip_batch(*, batch: int, frames: int, size: tuple[int, int], targets: int,
                    num_classes: int, seed: int = 0) -> dict:
  """A batch of the training contract: moving boxes, M targets per clip."""
  rng = np.random.RandomState(seed)
  h, w = size
  masks = np.zeros((batch, targets, frames, h, w), np.uint8)
  for b in range(batch):
    for m in range(targets):
      y, x = rng.randint(0, h // 2), rng.randint(0, w // 2)
      for t in range(frames):
        masks[b, m, t, y + 2 * t:y + 2 * t + h // 3, x:x + w // 3] = 1
  return {"images": jnp.asarray(rng.randn(batch, frames, h, w, 3), jnp.float32),
          "labels": jnp.asarray(rng.randint(0, num_classes, (batch, targets)), jnp.int32),
          "masks": jnp.asarray(masks), "valid": jnp.ones((batch, targets), bool)}


def bench_train(model, variables, *, batch: int, size: tuple[int, int], num_points: int,
                targets: int, runs: int) -> dict:
  import optax  # pylint: disable=g-import-not-at-top
  from m2f_jax import criterion  # pylint: disable=g-import-not-at-top
  data = make_clip_batch(batch=batch, frames=2, size=size, targets=targets,
                         num_classes=model.num_classes)
  params = variables["params"]
  tx = optax.adamw(1e-4, weight_decay=0.05)
  opt_state = tx.init(params)

  def step(params, opt_state, data, key):
    def loss_fn(p):
      out = model.apply({**variables, "params": p}, data["images"], train=True)
      losses = criterion.set_criterion(
          outputs=out, targets={k: data[k] for k in ("labels", "masks", "valid")}, key=key,
          num_masks=criterion.count_masks(data["valid"]), num_points=num_points)
      return losses["total_loss"]
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  key = jax.random.PRNGKey(0)
  compiled = jax.jit(step).lower(params, opt_state, data, key).compile()
  seconds = _time(lambda: compiled(params, opt_state, data, key), runs)
  return {"batch": batch, "seconds": seconds, "clips_per_s": batch / seconds,
          "compiled_peak_bytes": _peak_bytes(compiled), "device_peak_bytes": _device_peak()}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--smoke", action="store_true", help="tiny model, 64x64, for tests")
  parser.add_argument("--frames", type=int, nargs="+", default=None)
  parser.add_argument("--frame_chunk", type=int, default=0,
                      help="backbone + pixel decoder on at most this many frames at a time")
  parser.add_argument("--train_batch", type=int, default=1)
  parser.add_argument("--runs", type=int, default=3)
  parser.add_argument("--skip_train", action="store_true")
  args = parser.parse_args(argv)

  from m2f_jax.models.mask2former import build_model  # pylint: disable=g-import-not-at-top
  size = (64, 64) if args.smoke else (384, 640)
  frames = args.frames or ([2, 3] if args.smoke else [2, 36])
  num_points = 64 if args.smoke else 12544
  model = build_model(model_config(args.smoke, args.frame_chunk))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 1, *size, 3)))
  print(f"video Mask2Former {'smoke' if args.smoke else 'R50 (YouTube-VIS)'} on "
        f"{jax.devices()[0].device_kind}, {size[0]}x{size[1]}, float32, "
        f"frame_chunk={args.frame_chunk}", flush=True)
  results = {"forward": [], "train": None}
  for t in frames:
    r = bench_forward(model, variables, frames=t, size=size, runs=args.runs)
    results["forward"].append(r)
    print(f"forward T={t:3d}: {r['seconds']:.3f} s  {r['frames_per_s']:.2f} frames/s  peak "
          f"{_fmt(r['compiled_peak_bytes'])} (compiled), {_fmt(r['device_peak_bytes'])} "
          "(device)", flush=True)
  if not args.skip_train:
    r = bench_train(model, variables, batch=args.train_batch, size=size, num_points=num_points,
                    targets=3 if args.smoke else 10, runs=args.runs)
    results["train"] = r
    print(f"train step, {r['batch']} clip(s) of 2 frames: {r['seconds']:.3f} s  "
          f"{r['clips_per_s']:.2f} clips/s  peak {_fmt(r['compiled_peak_bytes'])} (compiled), "
          f"{_fmt(r['device_peak_bytes'])} (device)", flush=True)
  return results


if __name__ == "__main__":
  main()
