r"""One-command GPU suite: m2f_jax against transformers' PyTorch Mask2Former, one markdown table.

Measures, on one GPU (both frameworks on the same device, the same weights: the PyTorch
model's random weights imported with `m2f_jax.convert.hf`, as benchmarks/forward.py):

  forward     R50 and Swin-L (COCO panoptic: 133 classes; 100 / 200 queries), 1024x1024,
              batch 8, float32 and bfloat16 (JAX: model dtype bfloat16, float32 parameters;
              PyTorch: torch.autocast(bfloat16)); `check` = max |logits JAX - PyTorch| of the
              first run's pred_logits (float32 rows: the two compute the same function);
  eval        JAX only: the compiled forward + `m2f_jax.inference.postprocess` (semantic,
              panoptic and instance results, object threshold 0 so that every image gets
              segments, as benchmarks/eval.py) on random images, batch 8, 1024x1024;
  train step  R50, batch 4, 1024x1024, bfloat16 (`--train-dtypes bfloat16,float32`: also
              float32): forward, the full loss (12544 points, 10 real targets per image, JAX
              padded to the configured 100 slots as train.py), backward, gradient clipping
              and AdamW (benchmarks/train_step.py's builders: `make_train_step` with the
              official COCO optimizer; Mask2FormerLoss + AdamW with the official parameter
              groups);
  matching    `m2f_jax.matching.linear_sum_assignment` on the device (jit, B=16, 100x100
              uniform costs) against scipy looped on the host (benchmarks/matching.py); the
              images/s column counts matrices/s there; `check`: totals equal scipy's.
  eval compiles  JAX only, R50 and Swin-L, float32, batch 8 (benchmarks/eval_compiles.py):
              5000 image sizes drawn like COCO val2017 at the official test size (800/1333);
              per padded size the network and post-processing compile seconds, the seconds
              when read back from the persistent cache, 4 sizes compiled one after the other
              and on a pool of one thread per host core (as eval.py compiles ahead of time),
              the forward time of a batch at the most frequent size, and the projected
              totals of the 5000 images for pad_to "image" (official) and "buckets:2".

Times are medians of `--runs` calls (train step and eval: `--slow-runs`) after one warm-up,
the two frameworks alternating with `--pause` s between calls, each call waited for
(`block_until_ready`, host results, or `torch.cuda.synchronize`). `compile s`: JAX's
`lower(...).compile()` (eval: the first call, post-processing compilations included).
`speed-up`: PyTorch time / JAX time (> 1: JAX is faster; matching: scipy / JAX). `GFLOP`: the
compiled JAX program's flops per call (XLA's `cost_analysis()`); MFU: those flops / median
time / the GPU's dense peak for the row's dtype (H100 SXM/H200: bfloat16 989 TFLOP/s, float32
67 TFLOP/s; H100 PCIe 756 / 51; `--peak-tflops` for other devices); PyTorch rows are given the
same flop count. float32 rows run each framework's default precision: XLA may use TF32 for
float32 dots and convolutions on H100 (MFU can then pass 100% of the float32 peak), PyTorch
uses TF32 for cuDNN convolutions only (torch.backends flags, in the header with the peak used
and the versions); `check` shows the resulting logit difference.

Needs only what the GPU machines have: jax (CUDA), flax, optax, numpy, scipy, and torch +
transformers for the PyTorch rows (skipped, with a message, when they are missing). It imports
neither grain, tensorflow-datasets nor array_record, and runs without ml_collections
(benchmarks/_common.py's stand-in). JAX memory is allocated on demand
(XLA_PYTHON_CLIENT_PREALLOCATE=false unless set), so that PyTorch has room on the same GPU.
`--budget-s` (default 420) skips the sections (and dtypes) that would start after it, so the
whole run fits in about 8 minutes; skipped ones are named under the table (run them with
`--sections`).

  python benchmarks/gpu_suite.py --out /tmp/gpu_suite.md    # the GPU suite, ~8 min
  python benchmarks/gpu_suite.py --smoke                    # the same code, tiny, on the CPU

`--smoke`: a tiny ResNet and Swin (configs/tiny.py's widths, 1 encoder and 2 decoder layers),
64x64, batch 2, train step (float32) batch 2 with 3 targets padded to 8 and 256 points,
matching B=4 of 10x10, eval compiles of the tiny ResNet only (50 images at a 12th of the
test size, 2 sizes), 2 runs, no budget, on the CPU.
"""

import argparse
import datetime
import gc
import importlib.util
import os
import pathlib
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share the GPU with torch
if "--smoke" in sys.argv:
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))  # m2f_jax from this checkout (nothing installed on the GPU host)
_spec = importlib.util.spec_from_file_location("benchmarks__common",
                                               REPO / "benchmarks" / "_common.py")
_common = sys.modules.setdefault("benchmarks__common", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(_common)

CONFIG_DICT = _common.ensure_config_dict()

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import numpy as np

from m2f_jax import inference
from m2f_jax import matching as matching_lib
from m2f_jax.convert import hf
from m2f_jax.models.mask2former import build_model
# pylint: enable=g-import-not-at-top,wrong-import-position

eval_compiles_bench = _common.load_benchmark("eval_compiles")
forward_bench = _common.load_benchmark("forward")
train_bench = _common.load_benchmark("train_step")
matching_bench = _common.load_benchmark("matching")

STAGES = ["stage1", "stage2", "stage3", "stage4"]
# Models as transformers' config.json (the dict Mask2FormerConfig.to_dict() gives): the same
# dict builds the PyTorch model and, through the converter, ours.
MODELS = {
    "R50": dict(backbone_config=dict(model_type="resnet", depths=[3, 4, 6, 3],
                                     hidden_sizes=[256, 512, 1024, 2048], embedding_size=64,
                                     layer_type="bottleneck", out_features=STAGES),
                num_labels=133, num_queries=100, decoder_layers=10),
    "Swin-L": dict(backbone_config=dict(model_type="swin", embed_dim=192, depths=[2, 2, 18, 2],
                                        num_heads=[6, 12, 24, 48], window_size=12,
                                        drop_path_rate=0.3, out_features=STAGES),
                   num_labels=133, num_queries=200, decoder_layers=10),
}
_TINY_HEADS = dict(num_labels=7, num_queries=16, hidden_dim=64, feature_size=64,
                   mask_feature_size=64, encoder_layers=1, encoder_feedforward_dim=128,
                   num_attention_heads=4, decoder_layers=2, dim_feedforward=128)
SMOKE_MODELS = {  # configs/tiny.py's widths; 1 encoder and 2 decoder layers (compile time)
    "R50": dict(backbone_config=dict(model_type="resnet", depths=[1, 1, 1, 1],
                                     hidden_sizes=[32, 64, 128, 256], embedding_size=16,
                                     layer_type="bottleneck", out_features=STAGES),
                **_TINY_HEADS),
    "Swin-L": dict(backbone_config=dict(model_type="swin", embed_dim=16, depths=[1, 1, 1, 1],
                                        num_heads=[1, 2, 4, 8], window_size=4,
                                        out_features=STAGES),
                   **_TINY_HEADS),
}
LOSS = dict(oversample_ratio=3.0, importance_sample_ratio=0.75, class_weight=2.0,
            mask_weight=5.0, dice_weight=5.0, no_object_weight=0.1, use_auxiliary_loss=True)
# Dense peaks (TFLOP/s) by a word of jax's device_kind, first match: NVIDIA's data sheets.
PEAK_TFLOPS = (("H100 PCIe", {"bfloat16": 756.0, "float32": 51.0}),
               ("H100", {"bfloat16": 989.0, "float32": 67.0}),
               ("H200", {"bfloat16": 989.0, "float32": 67.0}))
COLUMNS = ("what", "framework", "dtype", "batch", "size", "median ms", "images/s", "compile s",
           "speed-up", "GFLOP", "MFU", "check")


# ---------------------------------------------------------------------------------------------
# The two frameworks' models.
# ---------------------------------------------------------------------------------------------

def hf_dict(spec: dict) -> dict:
  return dict(spec, model_type="mask2former")


def torch_model(spec: dict, device, **extra):
  """transformers' Mask2FormerForUniversalSegmentation for `spec`, built on `device`."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  config = transformers.Mask2FormerConfig(**spec, **extra)
  with torch.device(device):
    return transformers.Mask2FormerForUniversalSegmentation(config).eval()


def jax_variables(spec: dict, ref, size: int):
  """Our model config and variables: `ref`'s weights imported, or a fresh init (no torch)."""
  model_cfg = hf.hf_config_to_model_config(hf_dict(spec))
  model = build_model(model_cfg)
  if ref is None:
    variables = model.init(jax.random.PRNGKey(0), np.zeros((1, size, size, 3), np.float32))
  else:
    state = {k: v.detach().cpu() for k, v in ref.state_dict().items()}
    variables = hf.hf_variables(model, state, source="reference")
  return model_cfg, jax.device_put(variables)


def with_dtype(model_cfg, dtype: str):
  import copy  # pylint: disable=g-import-not-at-top
  cfg = copy.deepcopy(model_cfg)
  cfg.dtype = dtype
  return build_model(cfg)


# ---------------------------------------------------------------------------------------------
# Measuring.
# ---------------------------------------------------------------------------------------------

def flops_of(compiled) -> float | None:
  """XLA's flop count of a compiled program (None where the backend gives none)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def compile_timed(fn, *args):
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - t0


class Suite:
  """Runs the sections, collects the table rows, prints and writes them."""

  def __init__(self, args):
    self.args = args
    self.start = time.monotonic()
    self.rows = []
    self.notes = []
    self.header = []
    try:
      import torch  # pylint: disable=g-import-not-at-top
      import transformers  # pylint: disable=g-import-not-at-top,unused-import
      self.torch = torch
      self.device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke
                                 else "cpu")
    except ImportError as e:
      self.torch = None
      self.device = None
      msg = (f"PyTorch rows skipped: {e.name} is not installed (pip install torch transformers "
             "for the side-by-side comparison)")
      print(msg, flush=True)
      self.notes.append(msg)
    dev = jax.devices()[0]
    self.device_kind = dev.device_kind
    known = next(((k, p) for k, p in PEAK_TFLOPS if k in dev.device_kind), None)
    if args.peak_tflops:
      self.peaks = {"bfloat16": args.peak_tflops[0], "float32": args.peak_tflops[-1]}
      peak_note = f"given --peak-tflops {args.peak_tflops}"
    elif known:
      self.peaks = dict(known[1])
      peak_note = (f"{known[0]} dense: bfloat16 {known[1]['bfloat16']:g}, float32 "
                   f"{known[1]['float32']:g} TFLOP/s")
    else:
      self.peaks = {}
      peak_note = f"none known for {dev.device_kind!r}: MFU not given (--peak-tflops)"
    torch_line = "torch: not installed"
    if self.torch is not None:
      torch = self.torch
      torch_line = (f"torch {torch.__version__} on {self.device} (TF32 matmul "
                    f"{torch.backends.cuda.matmul.allow_tf32}, cuDNN "
                    f"{torch.backends.cudnn.allow_tf32}); "
                    + forward_bench.thread_counts(torch, dev.platform))
    self.header = [
        f"benchmarks/gpu_suite.py{' --smoke' if args.smoke else ''}, "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"jax {jax.__version__} on {dev.platform} ({dev.device_kind}), default matmul precision "
        f"{getattr(jax.config, 'jax_default_matmul_precision', None) or 'default'}; {torch_line}",
        f"medians of {args.runs} alternating runs (train step, eval: {args.slow_runs}) after 1 "
        f"warm-up, {args.pause:g} s apart; "
        f"MFU peak: {peak_note}; PyTorch MFU uses the JAX program's flops; "
        f"XLA_PYTHON_CLIENT_PREALLOCATE={os.environ.get('XLA_PYTHON_CLIENT_PREALLOCATE')}; "
        f"configs: {CONFIG_DICT}",
    ]
    print("\n".join(self.header), flush=True)

  # -- bookkeeping ------------------------------------------------------------------------------

  def elapsed(self) -> float:
    return time.monotonic() - self.start

  def within_budget(self, section: str) -> bool:
    if self.elapsed() <= self.args.budget_s:
      return True
    msg = f"{section}: skipped, {self.elapsed():.0f} s past the --budget-s {self.args.budget_s:g}"
    print(msg, flush=True)
    self.notes.append(msg)
    return False

  @staticmethod
  def gflop(flops) -> str:
    return f"{flops / 1e9:.1f}" if flops else "-"

  def mfu(self, flops, seconds, dtype) -> str:
    peak = self.peaks.get(dtype)
    if not flops or not peak:
      return "-"
    return f"{100 * flops / seconds / (peak * 1e12):.1f}%"

  def add(self, **row):
    row = {c: str(row.get(c, "-")) for c in COLUMNS}
    self.rows.append(row)
    print(f"[{self.elapsed():5.0f} s] " + " | ".join(row[c] for c in COLUMNS), flush=True)
    if self.args.out:
      pathlib.Path(self.args.out).write_text(self.markdown())

  def markdown(self) -> str:
    lines = [f"{h}  " for h in self.header]
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r[c] for c in COLUMNS) + " |" for r in self.rows]
    lines += [""] + [f"- {n}" for n in self.notes]
    lines.append(f"- total {self.elapsed():.0f} s")
    return "\n".join(lines) + "\n"

  def sync(self):
    if self.device is not None and self.device.type == "cuda":
      self.torch.cuda.synchronize()

  def free(self):
    gc.collect()
    if self.device is not None and self.device.type == "cuda":
      self.torch.cuda.empty_cache()

  # -- sections ---------------------------------------------------------------------------------

  def forward(self, name: str, spec: dict, *, batch: int, size: int, with_eval: bool):
    """Forward images/s of both frameworks in float32 and bfloat16 (+ eval, JAX)."""
    torch = self.torch
    ref = torch_model(spec, self.device) if torch is not None else None
    model_cfg, variables = jax_variables(spec, ref, size)
    images = np.random.RandomState(0).randn(batch, size, size, 3).astype(np.float32)
    x_jax = jax.device_put(images)
    x_torch = (torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(self.device)
               if torch is not None else None)
    for dtype in self.args.dtypes:
      if not self.within_budget(f"forward {name} {dtype}"):
        break
      model = with_dtype(model_cfg, dtype)
      compiled, compile_s = compile_timed(lambda v, x, m=model: m.apply(v, x), variables, x_jax)
      flops = flops_of(compiled)

      def run_jax(compiled=compiled):
        return jax.block_until_ready(compiled(variables, x_jax))

      out_jax = run_jax()
      common = dict(dtype=dtype, batch=batch, size=f"{size}x{size}")
      if torch is not None:
        autocast = torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                                  enabled=dtype == "bfloat16")

        def run_torch():
          with torch.inference_mode(), autocast:
            out = ref(pixel_values=x_torch)
          self.sync()
          return out

        out_torch = run_torch()
        diff = float(np.max(np.abs(
            np.asarray(out_jax["pred_logits"], np.float32)
            - out_torch.class_queries_logits.float().cpu().numpy())))
        del out_torch
        t_torch, t_jax = _common.alternate(run_torch, run_jax, runs=self.args.runs,
                                                 pause=self.args.pause)
        m_torch, m_jax = _common.median(t_torch), _common.median(t_jax)
        self.add(what=f"forward {name}", framework="pytorch", **common,
                 **{"median ms": f"{1e3 * m_torch:.1f}", "images/s": f"{batch / m_torch:.1f}",
                    "MFU": self.mfu(flops, m_torch, dtype)})
        self.add(what=f"forward {name}", framework="jax", **common,
                 **{"median ms": f"{1e3 * m_jax:.1f}", "images/s": f"{batch / m_jax:.1f}",
                    "compile s": f"{compile_s:.1f}", "speed-up": f"{m_torch / m_jax:.2f}x",
                    "GFLOP": self.gflop(flops), "MFU": self.mfu(flops, m_jax, dtype),
                    "check": f"max abs logit diff {diff:.1e}"})
      else:
        (t_jax,) = _common.alternate(run_jax, runs=self.args.runs, pause=self.args.pause)
        m_jax = _common.median(t_jax)
        self.add(what=f"forward {name}", framework="jax", **common,
                 **{"median ms": f"{1e3 * m_jax:.1f}", "images/s": f"{batch / m_jax:.1f}",
                    "compile s": f"{compile_s:.1f}", "GFLOP": self.gflop(flops),
                    "MFU": self.mfu(flops, m_jax, dtype)})
      del out_jax
      if with_eval and self.within_budget(f"eval {name} {dtype}"):
        self.evaluation(name, compiled, variables, x_jax, int(spec["num_labels"]), **common)
      del compiled
      self.free()
    del ref, variables, x_torch
    self.free()

  def evaluation(self, name, compiled, variables, x_jax, num_classes, *, dtype, batch, size):
    """The compiled forward + post-processing to semantic, panoptic and instance results."""
    side = x_jax.shape[1:3]
    isthing = [k < num_classes * 80 // 133 for k in range(num_classes)]  # COCO: 80 things

    def run_eval():
      out = compiled(variables, x_jax)
      return inference.postprocess(
          pred_logits=out["pred_logits"].astype(np.float32),
          pred_masks=out["pred_masks"].astype(np.float32), padded_size=side,
          image_sizes=[side] * batch, semantic_on=True, panoptic_on=True, instance_on=True,
          isthing=isthing, object_mask_threshold=0.0)  # numpy results: waits for the device

    t0 = time.perf_counter()
    results = run_eval()
    first_s = time.perf_counter() - t0
    segments = sum(len(r["panoptic_seg"][1]) for r in results)
    (times,) = _common.alternate(run_eval, runs=self.args.slow_runs, pause=self.args.pause)
    m = _common.median(times)
    self.add(what=f"eval {name} (forward + postprocess)", framework="jax", dtype=dtype,
             batch=batch, size=size,
             **{"median ms": f"{1e3 * m:.1f}", "images/s": f"{batch / m:.1f}",
                "compile s": f"{first_s:.1f} (first call)",
                "check": f"{segments / batch:.1f} segments/image"})

  def train(self, name: str, spec: dict, *, batch: int, size: int, targets: int,
            num_targets: int, num_points: int):
    """One training step of both frameworks (benchmarks/train_step.py's builders)."""
    torch = self.torch
    images, masks, labels = train_bench.make_data(batch, size, targets, int(spec["num_labels"]))
    padded = train_bench.pad_targets(masks, labels, num_targets)
    ref = (torch_model(spec, self.device, train_num_points=num_points, **LOSS)
           if torch is not None else None)
    model_cfg, variables = jax_variables(spec, ref, size)
    variables = jax.device_get(variables)
    common = dict(batch=batch, size=f"{size}x{size}")
    what = f"train step {name} ({targets} targets, JAX padded to {num_targets})"
    for dtype in self.args.train_dtypes:
      if not self.within_budget(f"train step {name} {dtype}"):
        break
      jax_step, compile_s, compiled = train_bench.compile_jax_step(
          model_cfg, variables, images, *padded, dtype, num_points)
      flops = flops_of(compiled)
      loss_jax = jax_step()  # warm-up
      if torch is not None:
        torch_step = train_bench.build_torch_step(ref, images, masks, labels, dtype, self.device)
        loss_torch = torch_step()  # warm-up
        t_torch, t_jax = _common.alternate(torch_step, jax_step, runs=self.args.slow_runs,
                                                 pause=self.args.pause)
        m_torch, m_jax = _common.median(t_torch), _common.median(t_jax)
        self.add(what=what, framework="pytorch", dtype=dtype, **common,
                 **{"median ms": f"{1e3 * m_torch:.1f}", "images/s": f"{batch / m_torch:.2f}",
                    "MFU": self.mfu(flops, m_torch, dtype),
                    "check": f"first loss {loss_torch:.1f}"})
        del torch_step
      else:
        (t_jax,) = _common.alternate(jax_step, runs=self.args.slow_runs, pause=self.args.pause)
        m_torch = m_jax = _common.median(t_jax)
      self.add(what=what, framework="jax", dtype=dtype, **common,
               **{"median ms": f"{1e3 * m_jax:.1f}", "images/s": f"{batch / m_jax:.2f}",
                  "compile s": f"{compile_s:.1f}",
                  "speed-up": f"{m_torch / m_jax:.2f}x" if torch is not None else "-",
                  "GFLOP": self.gflop(flops), "MFU": self.mfu(flops, m_jax, dtype),
                  "check": f"first loss {loss_jax:.1f}"})
      del jax_step, compiled
      self.free()
    del ref, variables
    self.free()

  def matching(self, *, batch: int, n: int):
    """Hungarian matching: jit on the device against scipy on the host (benchmarks/matching.py)."""
    cost = matching_bench.make_costs("uniform", batch, n, n)  # [B, N, N]
    cost_dev = jax.device_put(cost)
    compiled, compile_s = compile_timed(matching_lib.linear_sum_assignment, cost_dev)
    rows, cols = map(np.asarray, jax.block_until_ready(compiled(cost_dev)))
    ours = cost[np.arange(batch)[:, None], rows, cols].sum(1)
    ref = np.array([c[r, s].sum() for c, (r, s) in zip(cost, matching_bench.scipy_loop(cost, n))])
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    ms_jax, ms_scipy = matching_bench.median_ms(
        [lambda: jax.block_until_ready(compiled(cost_dev)),
         lambda: matching_bench.scipy_loop(cost, n)], self.args.runs * 2)
    common = dict(what="Hungarian matching", dtype="float32", batch=batch, size=f"{n}x{n}")
    self.add(framework="scipy (host, loop)", **common,
             **{"median ms": f"{ms_scipy:.2f}", "images/s": f"{1e3 * batch / ms_scipy:.0f}"})
    self.add(framework="jax (device)", **common,
             **{"median ms": f"{ms_jax:.2f}", "images/s": f"{1e3 * batch / ms_jax:.0f}",
                "compile s": f"{compile_s:.1f}", "speed-up": f"{ms_scipy / ms_jax:.2f}x",
                "check": "totals = scipy's"})


  def eval_compiles(self, name: str, spec: dict, *, batch: int, num_images: int, sizes: int,
                    min_size: int, max_size: int):
    """Evaluation compiles at COCO scale (benchmarks/eval_compiles.py), JAX only."""
    bench = eval_compiles_bench
    model_cfg = hf.hf_config_to_model_config(hf_dict(spec))
    image_sizes = bench.coco_val2017_sizes(num_images)
    plan = bench.plans(image_sizes, batch=batch, min_size=min_size, max_size=max_size)
    shapes = bench.measurement_order(plan["image"])[:sizes]
    compiler = bench.Compiler(model_cfg, batch)
    threads = bench.host_cores()
    measured = bench.measure_compiles(compiler, shapes, threads=threads)
    ref = max(plan["image"], key=lambda s: s.images).padded_size
    batch_s = bench.time_forward(compiler, ref, runs=self.args.slow_runs)
    common = dict(framework="jax", dtype="float32", batch=batch)
    size = f"{ref[0]}x{ref[1]}"
    self.add(what=f"eval compiles {name}: one padded size", size=size, **common,
             **{"median ms": f"{1e3 * batch_s:.1f}", "images/s": f"{batch / batch_s:.1f}",
                "compile s": f"{measured['forward_s']:.1f} + {measured['post_s']:.1f}",
                "check": f"from the cache {measured['cache_s']:.2f} s"})
    self.add(what=f"eval compiles {name}: {len(shapes)} sizes ahead of time", size=size,
             **common, **{"compile s": f"{measured['serial_s']:.1f} -> "
                                       f"{measured['pooled_s']:.1f}",
                          "speed-up": f"{measured['serial_s'] / measured['pooled_s']:.2f}x",
                          "check": f"{threads} threads"})
    for mode in ("image", "buckets:2"):
      p = bench.projection(plan[mode], measured, batch_s=batch_s, ref_size=ref)
      self.add(what=f"eval compiles {name}: {num_images} images, pad_to={mode}", **common,
               size=f"{p['sizes']} sizes",
               **{"compile s": " / ".join(bench.fmt_seconds(p[k])
                                          for k in ("compile_s", "pooled_s", "cache_s")),
                  "check": f"forward {bench.fmt_seconds(p['forward_s'])}; compiles: serial / "
                           "pool / cached"})
    del compiler
    self.free()


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--smoke", action="store_true",
                      help="the same code at tiny sizes on the CPU (tests; 1-5 min)")
  parser.add_argument("--out", default="", help="also write the table to this markdown file "
                      "(rewritten after every row)")
  parser.add_argument("--runs", type=int, default=None,
                      help="timed runs of the forward and matching (default 10; smoke 2)")
  parser.add_argument("--slow-runs", type=int, default=None,
                      help="timed runs of the train step and eval (default 5; smoke 2)")
  parser.add_argument("--pause", type=float, default=None,
                      help="seconds before each timed call (default 0.2)")
  parser.add_argument("--budget-s", type=float, default=None,
                      help="sections that would start after this many seconds are skipped "
                      "(default 420; smoke: none)")
  parser.add_argument("--sections",
                      default="matching,forward_r50,train,forward_swin,eval_compiles",
                      help="comma-separated, in this order: matching, forward_r50 (with "
                      "eval), train, forward_swin, eval_compiles (R50 and Swin-L)")
  parser.add_argument("--dtypes", default="float32,bfloat16", help="forward dtypes")
  parser.add_argument("--train-dtypes", default=None,
                      help="train step dtypes (default bfloat16; smoke float32)")
  parser.add_argument("--peak-tflops", type=float, nargs="+", default=None,
                      help="the device's dense peak TFLOP/s: BF16 [FP32] (default: known for "
                      "H100/H200)")
  args = parser.parse_args(argv)
  if args.budget_s is None:
    args.budget_s = float("inf") if args.smoke else 420.0
  args.runs = args.runs or (2 if args.smoke else 10)
  args.slow_runs = args.slow_runs or (2 if args.smoke else 5)
  args.pause = 0.2 if args.pause is None else args.pause
  args.dtypes = args.dtypes.split(",")
  args.train_dtypes = (args.train_dtypes or ("float32" if args.smoke else "bfloat16")
                       ).split(",")
  args.sections = args.sections.split(",")
  return args


def main(argv=None):
  args = parse_args(argv)
  suite = Suite(args)
  models = SMOKE_MODELS if args.smoke else MODELS
  size = 64 if args.smoke else 1024
  for section in args.sections:
    if not suite.within_budget(section):
      continue
    if section == "matching":
      suite.matching(batch=4 if args.smoke else 16, n=10 if args.smoke else 100)
    elif section == "forward_r50":
      suite.forward("R50", models["R50"], batch=2 if args.smoke else 8, size=size,
                    with_eval=True)
    elif section == "train":
      suite.train("R50", models["R50"], batch=2 if args.smoke else 4, size=size,
                  targets=3 if args.smoke else 10, num_targets=8 if args.smoke else 100,
                  num_points=256 if args.smoke else 12544)
    elif section == "forward_swin":
      suite.forward("Swin-L", models["Swin-L"], batch=2 if args.smoke else 8, size=size,
                    with_eval=False)
    elif section == "eval_compiles":
      for name in ("R50",) if args.smoke else ("R50", "Swin-L"):
        if suite.within_budget(f"eval_compiles {name}"):
          # Smoke: the tiny R50, 50 images at a 12th of the official test size, 2 sizes.
          suite.eval_compiles(name, models[name], batch=2 if args.smoke else 8,
                              num_images=50 if args.smoke else 5000,
                              sizes=2 if args.smoke else 4,
                              min_size=64 if args.smoke else 800,
                              max_size=107 if args.smoke else 1333)
    else:
      raise ValueError(f"--sections: unknown section {section!r} (matching, forward_r50, "
                       "train, forward_swin, eval_compiles)")
  print()
  print(suite.markdown(), flush=True)
  return suite


if __name__ == "__main__":
  main()
