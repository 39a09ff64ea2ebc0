r"""Deformable-attention speed: the "gather" and "matmul" formulations at the pixel decoder's shapes.

`model.deform_attn_impl` chooses how `m2f_jax.models.ms_deform_attn` samples the values:
"gather" (four flat gathers per level) or "matmul" (dense one-hot [Q, H*W] weights times the
values, per level). This times both on the core op, `multi_scale_deformable_attention[_matmul]`,
at the shapes one encoder layer of the R50 pixel decoder has for an image of `--size`: levels
res5, res4, res3 (strides 32, 16, 8: 16x16, 32x32, 64x64 at 512), every pixel of every level a
query (Q = S), 8 heads of 32 channels, 4 points per level; random values, locations around
each query's own pixel (as after training: offsets of a few pixels) and softmax weights.
Forward ("fwd") and forward + gradients of values, locations and weights ("fwd+bwd"), jit-
compiled first, then `--runs` timed calls each in alternation; medians in milliseconds per
call (the pixel decoder runs 6 such layers per step). Needs only jax and numpy; runs on
whatever device jax picks.

  python benchmarks/deform_attn.py                        # 512 and 1024, batch 1
  python benchmarks/deform_attn.py --sizes 512 --batch 2 --runs 5
  python benchmarks/deform_attn.py --sizes 1024 --impls gather   # "matmul" grows as S^2
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from m2f_jax.models import ms_deform_attn

IMPLS = {"gather": ms_deform_attn.multi_scale_deformable_attention,
         "matmul": ms_deform_attn.multi_scale_deformable_attention_matmul}


def make_inputs(batch: int, size: int, heads: int = 8, head_dim: int = 32, points: int = 4,
                seed: int = 0):
  """The inputs of one pixel-decoder encoder layer's deformable attention at image `size`."""
  shapes = tuple((size // s, size // s) for s in (32, 16, 8))  # res5, res4, res3
  seq_len = sum(h * w for h, w in shapes)
  rng = np.random.default_rng(seed)
  value = rng.standard_normal((batch, seq_len, heads, head_dim), np.float32)
  centres = []
  for h, w in shapes:  # each query's own pixel centre, normalized (as the encoder's)
    ys, xs = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
    centres.append(np.stack([xs, ys], -1).reshape(h * w, 2))
  centres = np.concatenate(centres)[None, :, None, None, None, :]  # [1, Q, 1, 1, 1, 2]
  pixel = np.array([[1.0 / w, 1.0 / h] for h, w in shapes], np.float32)[:, None, :]  # [L, 1, 2]
  offsets = rng.normal(0.0, 3.0, (batch, seq_len, heads, len(shapes), points, 2)) * pixel
  locations = (centres + offsets).astype(np.float32)  # [B, Q, N, L, P, 2]
  logits = rng.standard_normal((batch, seq_len, heads, len(shapes) * points))
  weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  weights = weights.reshape(locations.shape[:-1]).astype(np.float32)  # [B, Q, N, L, P]
  return shapes, value, locations, weights


def _timed(fn, args, runs):
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return times


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--runs", type=int, default=3)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--forward_only", action="store_true")
  parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=list(IMPLS),
                      help="the formulations to time (\"gather\" is always run: the reference)")
  args = parser.parse_args()
  dtype = jnp.dtype(args.dtype)
  print(f"device: {jax.devices()[0].platform} ({jax.devices()[0].device_kind}), batch "
        f"{args.batch}, {args.dtype} values, 8 heads x 32 channels, 4 points, 3 levels")
  print("| size | Q = S | impl | fwd ms | fwd+bwd ms | compile s | max abs diff vs gather |")
  print("|---|---|---|---|---|---|---|")
  for size in args.sizes:
    shapes, value, locations, weights = make_inputs(args.batch, size)
    value = jnp.asarray(value, dtype)
    cotangent = jnp.ones((args.batch, value.shape[1], value.shape[2] * value.shape[3]), dtype)
    fns = {}
    for name, impl in IMPLS.items():
      if name != "gather" and name not in args.impls:
        continue
      fwd = jax.jit(lambda v, loc, w, impl=impl: impl(v, shapes, loc, w))
      bwd = jax.jit(jax.grad(
          lambda v, loc, w, impl=impl: jnp.sum(
              (impl(v, shapes, loc, w) * cotangent).astype(jnp.float32)), argnums=(0, 1, 2)))
      start = time.perf_counter()
      out = jax.block_until_ready(fwd(value, locations, weights))
      if not args.forward_only:
        jax.block_until_ready(bwd(value, locations, weights))
      fns[name] = (fwd, bwd, time.perf_counter() - start, np.asarray(out, np.float32))
    times = {name: ([], []) for name in fns}
    for _ in range(args.runs):  # alternate the formulations
      for name, (fwd, bwd, _, _) in fns.items():
        times[name][0].extend(_timed(fwd, (value, locations, weights), 1))
        if not args.forward_only:
          times[name][1].extend(_timed(bwd, (value, locations, weights), 1))
    for name, (_, _, compile_s, out) in fns.items():
      fwd_ms = 1e3 * statistics.median(times[name][0])
      bwd_ms = 1e3 * statistics.median(times[name][1]) if times[name][1] else float("nan")
      diff = float(np.max(np.abs(out - fns["gather"][3])))
      print(f"| {size} | {value.shape[1]} | {name} | {fwd_ms:.1f} | {bwd_ms:.1f} | "
            f"{compile_s:.1f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
  main()
