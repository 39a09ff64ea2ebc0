r"""Peak device memory of the train step, from XLA's compiled memory analysis (nothing runs).

For each backbone (official COCO panoptic configs, `configs/coco_panoptic.py`: R50 with 100
queries, Swin-L with 200; 133 classes, 100 target slots, 12544 points per mask), computation
dtype (`model.dtype`: float32, or bfloat16 with float32 master weights) and `train.remat`, the
train step of `m2f_jax.training.train_step.make_train_step` (forward, matching + the full
loss, backward, AdamW) is lowered on abstract inputs at `--size` x `--size`, state donated as
train.py does, compact batches as the input pipeline ships them (uint8 images and segment
maps, expanded on the device), and compiled for the default device; nothing is executed, so
it runs on a CPU-only machine. Per device batch of `--batches` B1 B2 it reports

  peak = arguments + outputs - aliased (donated) + temporaries

(`compiled.memory_analysis()`: `argument_size_in_bytes`, `output_size_in_bytes`,
`alias_size_in_bytes`, `temp_size_in_bytes`) for B1 (the table's batch), and the largest
per-device batch that fits 16 GiB and 80 GiB, extrapolated LINEARLY from the peaks at B1 and
B2 (peak = fixed + per_image * B). On a CPU-only machine the analysis is the CPU compiler's
buffer assignment (its fusion and scheduling differ from the GPU's and the TPU's): an estimate
of an accelerator's figure, which the GPU suite can replace by the real compiler's.

The step compiles with `train_step.compiler_options(config)` (as train.py does: on the CPU a
remat step keeps its recomputation) and, on a CPU backend, with FAST_COMPILE_OPTIONS
(`--fast-compile`, the default; `--no-fast-compile` to leave them out): LLVM optimization
level 0 and no expensive LLVM passes. Buffer assignment, and so the memory analysis, is done
on the optimized HLO before LLVM code generation: verified 2026-11-30 on the R50 step at 256,
batch 2, float32, remat off and on, where arguments, outputs, aliased and temporary bytes were
identical with and without them, and the compile took 35-42% less CPU time (48 s instead of
82 s, remat on 54 s instead of 83 s). (`xla_cpu_use_fusion_emitters=False` changed the
temporaries, and was slower: not used.) The compiled code is slower, but nothing runs.
Training never uses these options.

  python benchmarks/memory.py                          # R50 and Swin-L, 1024, batches 2 and 4
  python benchmarks/memory.py --size 512 --backbones r50 --dtypes float32

Compiling one step at 1024 takes 1-4 minutes and several GiB of host memory on a 2-core CPU.
Needs jax, flax, optax (and ml_collections, or the stand-in of benchmarks/_common.py).
"""

import argparse
import math
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import _common  # pylint: disable=g-import-not-at-top,wrong-import-position

_common.ensure_config_dict()

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position

from m2f_jax import config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from m2f_jax.training import train_step  # pylint: disable=g-import-not-at-top,wrong-import-position

GIB = 2**30
# XLA options that cut LLVM code-generation time and leave buffer assignment unchanged (see
# the docstring); for this benchmark's CPU compile only.
FAST_COMPILE_OPTIONS = {"xla_backend_optimization_level": 0,
                        "xla_llvm_disable_expensive_passes": True}
BUDGETS_GIB = (16, 80)


def coco_panoptic_config(backbone: str, size: int, dtype: str, remat: bool):
  """configs/coco_panoptic.py's config (built in code: no config-file machinery needed)."""
  large = backbone == "swin_l"
  config = config_lib.base_config(
      model=config_lib.model_config(config_lib.backbone_from_arg(backbone), num_classes=133,
                                    num_queries=200 if large else 100),
      dataset="coco_panoptic", task="panoptic", max_steps=737500 if large else 368750,
      decay_steps=(655556, 710184) if large else (327778, 355092))
  config.data.image_size = (size, size)
  config.model.dtype = dtype
  config.train.remat = remat
  return config


def abstract_batch(config, batch: int) -> dict:
  """A compact panoptic batch (as `data.compact_targets` ships it) of ShapeDtypeStructs."""
  h, w = config.data.image_size
  m = config.data.num_targets
  s = jax.ShapeDtypeStruct
  return {"images": s((batch, h, w, 3), jnp.uint8), "padding_mask": s((batch, h, w), jnp.bool_),
          "segments": s((batch, 1, h, w), jnp.uint8), "labels": s((batch, m), jnp.int32),
          "valid": s((batch, m), jnp.bool_)}


def step_compiler_options(config, fast_compile: bool = True) -> dict:
  """train.py's compiler options, plus FAST_COMPILE_OPTIONS on a CPU backend if asked."""
  options = dict(train_step.compiler_options(config))
  if fast_compile and jax.default_backend() == "cpu":
    options.update(FAST_COMPILE_OPTIONS)
  return options


def compiled_memory(config, batch: int, fast_compile: bool = True) -> dict:
  """The memory analysis of the compiled train step at per-device `batch`, in bytes."""
  model, tx, state = train_step.abstract_train_state(config)
  step = jax.jit(train_step.make_train_step(model, tx, config), donate_argnums=0,
                 compiler_options=step_compiler_options(config, fast_compile))
  start = time.perf_counter()
  compiled = step.lower(state, abstract_batch(config, batch)).compile()
  seconds = time.perf_counter() - start
  m = compiled.memory_analysis()
  peak = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes +
          m.temp_size_in_bytes)
  return dict(peak=peak, arguments=m.argument_size_in_bytes, temp=m.temp_size_in_bytes,
              compile_s=seconds)


def largest_batch(b1: int, peak1: float, b2: int, peak2: float, budget: float) -> int:
  per_image = (peak2 - peak1) / (b2 - b1)
  fixed = peak1 - per_image * b1
  return max(0, math.floor((budget - fixed) / per_image)) if per_image > 0 else -1


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--backbones", nargs="+", default=["r50", "swin_l"])
  parser.add_argument("--size", type=int, default=1024)
  parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
  parser.add_argument("--remat", nargs="+", default=["off", "on"], choices=["off", "on"])
  parser.add_argument("--batches", type=int, nargs=2, default=[2, 4],
                      help="two per-device batch sizes: the table's, and the second point of "
                           "the linear extrapolation")
  parser.add_argument("--fast-compile", action=argparse.BooleanOptionalAction, default=True,
                      help="on a CPU backend, compile with FAST_COMPILE_OPTIONS (LLVM -O0; the "
                           "memory analysis is unchanged)")
  args = parser.parse_args()
  b1, b2 = args.batches
  device = jax.devices()[0]
  fast = args.fast_compile and jax.default_backend() == "cpu"
  print(f"train step memory at {args.size}x{args.size}, per-device batch {b1}; compiled for "
        f"{device.platform} ({device.device_kind}), jax {jax.__version__}"
        f"{' with ' + str(FAST_COMPILE_OPTIONS) if fast else ''}; largest batch: linear "
        f"extrapolation from batches {b1} and {b2}")
  print(f"| backbone | dtype | remat | params+opt state GiB | temporaries GiB | peak GiB (B={b1}) "
        f"| GiB per image | largest batch in 16 GiB | in 80 GiB | compile s |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for backbone in args.backbones:
    for dtype in args.dtypes:
      for remat in args.remat:
        config = coco_panoptic_config(backbone, args.size, dtype, remat == "on")
        m1 = compiled_memory(config, b1, args.fast_compile)
        m2 = compiled_memory(config, b2, args.fast_compile)
        fits = [largest_batch(b1, m1["peak"], b2, m2["peak"], g * GIB) for g in BUDGETS_GIB]
        per_image = (m2["peak"] - m1["peak"]) / (b2 - b1)
        print(f"| {backbone} | {dtype} | {remat} | {m1['arguments'] / GIB:.2f} | "
              f"{m1['temp'] / GIB:.2f} | {m1['peak'] / GIB:.2f} | {per_image / GIB:.2f} | "
              f"{fits[0]} | {fits[1]} | {m1['compile_s'] + m2['compile_s']:.0f} |", flush=True)


if __name__ == "__main__":
  main()
