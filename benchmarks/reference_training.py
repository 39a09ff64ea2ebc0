r"""Our training beside transformers' PyTorch Mask2Former: same model, weights, batches, recipe.

  python benchmarks/reference_training.py --steps 900 --seeds 2 --output /tmp/reftrain

For each seed s (0 .. --seeds - 1):
  1. transformers builds the config's model under `torch.manual_seed(s)`
     (benchmarks/transformers_twin.py; the GroupNorm backbone mapping is described there);
     our importer writes those weights as an m2f_jax model (`init_s/`).
  2. ours: `train.py --config CONFIG --config.init_from=init_s --config.train.seed=s` for
     --steps steps (the product's own loop, in a subprocess), then `eval.py` on its final
     checkpoint.
  3. the reference: the same initial weights in transformers' model, trained in this process
     on the batches of our grain pipeline for the same config and seed (the same batches in
     the same order as step 2), with torch AdamW given our parameter groups, schedule, weight
     decay, clipping and loss weights; its loss draws its own random points (torch.rand under
     `torch.manual_seed(s)`). Then `save_pretrained`, our importer, and `eval.py`, so one
     evaluator scores both.
  4. equal wall-clock (unless --no-equal-wall-clock): ours again, given as many steps as its
     measured rate fits into the reference's training time (its schedule set to that many
     steps, as a user would), then `eval.py`.

Writes DIR/reference_training.json ({"ours": ..., "reference": ..., "equal_wall_clock": ...},
each side with per-seed and median PQ, PQ_th, PQ_st, mIoU, AP, s_per_step and the loss
curve) and DIR/reference_training.png (loss curves, smoothed), and prints a table.
s_per_step: the median over steps after the first 20 (ours: the loop's own per-step times,
data included; the reference: the same loop body timed the same way, data included). Both
sides run one after the other on the same machine with the threads each framework takes by
default (all cores), never at the same time.
"""

import argparse
import datetime
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import transformers_twin as twin_lib  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

METRICS = (("PQ", "panoptic_seg", "PQ"), ("PQ_th", "panoptic_seg", "PQ_th"),
           ("PQ_st", "panoptic_seg", "PQ_st"), ("mIoU", "sem_seg", "mIoU"), ("AP", "segm", "AP"))
SKIP_STEPS = 20  # steps left out of s_per_step (compilation, warm-up)
SMOOTH = 50  # steps per point of the plotted curves (a moving mean of one-batch losses)


def _run(cmd, log_path):
  """Runs a command, its output in log_path; raises with the log's tail on failure."""
  t0 = time.perf_counter()
  with open(log_path, "w") as log:
    proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, check=False)
  elapsed = time.perf_counter() - t0
  if proc.returncode:
    tail = "".join(open(log_path).readlines()[-20:])
    raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}); {log_path}:\n{tail}")
  return elapsed


def _eval(checkpoint, config_arg, workdir, log_path):
  cmd = [sys.executable, "eval.py", f"--checkpoint={checkpoint}", f"--workdir={workdir}"]
  if config_arg:
    cmd.append(f"--config={config_arg}")
  _run(cmd, log_path)
  with open(os.path.join(workdir, "eval_results.json")) as f:
    report = json.load(f)
  return {name: float(report[group][key]) for name, group, key in METRICS}


def _config(config_arg, steps, seed):
  from m2f_jax import config_lib  # pylint: disable=g-import-not-at-top
  path, _, arg = config_arg.partition(":")
  config = config_lib.load_config_file(str(REPO / path) + (f":{arg}" if arg else ""))
  config.optim.max_steps = steps
  config.train.seed = seed
  config_lib.resolve_categories(config)
  return config


def _overrides(steps, seed, init_dir):
  return [f"--config.optim.max_steps={steps}", f"--config.train.seed={seed}",
          f"--config.init_from={init_dir}", "--config.train.log_every=1",
          f"--config.train.checkpoint_every={steps}"]


def _ours(args, seed, init_dir, steps, name):
  workdir = os.path.join(args.output, f"{name}_{seed}")
  train_s = _run([sys.executable, "train.py", f"--config={args.config}",
                  f"--workdir={workdir}", *_overrides(steps, seed, init_dir)],
                 os.path.join(args.output, f"{name}_{seed}_train.log"))
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  curve = [(r["step"], r["total_loss"]) for r in rows]
  step_times = [r["step_time"] for r in rows if r["step"] > SKIP_STEPS]
  loop_s = None
  for line in open(os.path.join(args.output, f"{name}_{seed}_train.log")):
    if line.startswith("trained "):  # "trained N steps in X s"
      loop_s = float(line.split(" in ")[1].split()[0])
  metrics = _eval(os.path.join(workdir, "checkpoints", str(steps)), None,
                  os.path.join(workdir, "eval"), os.path.join(args.output, f"{name}_{seed}_eval.log"))
  return dict(seed=seed, steps=steps, **metrics, s_per_step=statistics.median(step_times),
              train_loop_s=loop_s, process_s=train_s, loss_curve=curve)


def _reference(args, seed, config, init_variables):
  """transformers' model trained in this process on our pipeline's batches."""
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from m2f_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from m2f_jax import data  # pylint: disable=g-import-not-at-top
  from m2f_jax import device_batch  # pylint: disable=g-import-not-at-top
  from m2f_jax.models.mask2former import build_model  # pylint: disable=g-import-not-at-top
  from m2f_jax.training import loop  # pylint: disable=g-import-not-at-top

  model = build_model(config.model)
  twin = twin_lib.build(config, seed=seed)
  same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
                      twin_lib.jax_variables(twin, model, config), init_variables)
  if not all(jax.tree.leaves(same)):
    raise RuntimeError("transformers' model built twice from one seed differs")
  opt, sched, clip = twin_lib.optimizer(twin, model, config)
  data.prepare_dataset(config.data)
  batches = loop.train_data_iterator(config)
  dense = jax.jit(lambda b: device_batch.dense_batch(
      b, pixel_mean=config.model.pixel_mean, pixel_std=config.model.pixel_std,
      zero_padding=config.data.augmentation == "synthetic"))
  torch.manual_seed(seed)  # the loss's random points
  steps = config.optim.max_steps
  curve, step_times = [], []
  t_start = time.perf_counter()
  for step in range(1, steps + 1):
    t0 = time.perf_counter()
    batch = jax.tree.map(np.asarray, dense(next(batches)))
    total, _ = twin_lib.losses(twin, batch)
    opt.zero_grad(set_to_none=True)
    total.backward()
    clip()
    opt.step()
    sched.step()
    loss = float(total)
    if not np.isfinite(loss):
      raise FloatingPointError(f"reference seed {seed}: non-finite loss at step {step}")
    step_times.append(time.perf_counter() - t0)
    curve.append((step, loss))
    if step % 100 == 0 or step == steps:
      print(f"  reference seed {seed}: step {step}/{steps} loss {loss:.3f} "
            f"{statistics.median(step_times[-100:]):.3f} s/step", flush=True)
  loop_s = time.perf_counter() - t_start
  model_dir = os.path.join(args.output, f"reference_{seed}", "model")
  checkpoint.save_model(model_dir, config, twin_lib.jax_variables(twin, model, config))
  metrics = _eval(model_dir, args.config, os.path.join(args.output, f"reference_{seed}", "eval"),
                  os.path.join(args.output, f"reference_{seed}_eval.log"))
  return dict(seed=seed, steps=steps, **metrics,
              s_per_step=statistics.median(step_times[SKIP_STEPS:]), train_loop_s=loop_s,
              loss_curve=curve)


def _summary(runs):
  keys = [m[0] for m in METRICS] + ["s_per_step"]
  return {"seeds": runs,
          "median": {k: statistics.median(r[k] for r in runs) for k in keys},
          "min": {k: min(r[k] for r in runs) for k in keys},
          "max": {k: max(r[k] for r in runs) for k in keys}}


def _smooth(curve):
  steps, losses = np.array([c[0] for c in curve]), np.array([c[1] for c in curve])
  n = len(losses) // SMOOTH
  return (steps[:n * SMOOTH].reshape(n, SMOOTH).mean(1),
          losses[:n * SMOOTH].reshape(n, SMOOTH).mean(1))


def _plot(result, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(8, 5))
  for side, color in (("reference", "tab:orange"), ("ours", "tab:blue")):
    for run in result[side]["seeds"]:
      x, y = _smooth(run["loss_curve"])
      ax.plot(x, y, color=color, alpha=0.8,
              label=f"{side} seed {run['seed']} (PQ {run['PQ']:.1f})")
  ax.set_xlabel("step")
  ax.set_ylabel(f"total loss (mean of {SMOOTH} steps)")
  ax.set_title(f"{result['config']}: ours vs transformers' Mask2Former, same weights and batches")
  ax.legend()
  fig.savefig(path, dpi=100, bbox_inches="tight")


def _table(result):
  lines = [f"{'side':<22} {'seed':>4} " + " ".join(f"{m[0]:>7}" for m in METRICS)
           + f" {'s/step':>7}"]
  for side in ("reference", "ours", "equal_wall_clock"):
    if side not in result:
      continue
    for run in result[side]["seeds"] + [dict(result[side]["median"], seed="med")]:
      label = side if side != "equal_wall_clock" else f"ours, {run.get('steps', '')} steps"
      if run["seed"] == "med":
        label = f"{side} (median)"
      lines.append(f"{label:<22} {run['seed']:>4} " + " ".join(
          f"{run[m[0]]:7.2f}" for m in METRICS) + f" {run['s_per_step']:7.3f}")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/tiny.py:reference",
                      help="a config whose model transformers can express (no semantic head)")
  parser.add_argument("--steps", type=int, default=900)
  parser.add_argument("--seeds", type=int, default=2, help="seeds per side (0, 1, ...)")
  parser.add_argument("--output", default="/tmp/m2f_reference_training")
  parser.add_argument("--no-equal-wall-clock", dest="equal_wall_clock", action="store_false",
                      help="skip ours' run at the reference's training time")
  args = parser.parse_args(argv)
  os.makedirs(args.output, exist_ok=True)
  from m2f_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from m2f_jax.models.mask2former import build_model  # pylint: disable=g-import-not-at-top

  result = {"config": args.config, "steps": args.steps,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host_cpus": os.cpu_count()}
  ours, ref, equal = [], [], []
  for seed in range(args.seeds):
    config = _config(args.config, args.steps, seed)
    model = build_model(config.model)
    init = twin_lib.jax_variables(twin_lib.build(config, seed=seed), model, config)
    init_dir = os.path.join(args.output, f"init_{seed}")
    if not os.path.isdir(init_dir):
      checkpoint.save_model(init_dir, config, init)
    print(f"seed {seed}: ours ({args.steps} steps)", flush=True)
    ours.append(_ours(args, seed, init_dir, args.steps, "ours"))
    print(f"  ours: PQ {ours[-1]['PQ']:.2f} {ours[-1]['s_per_step']:.3f} s/step", flush=True)
    print(f"seed {seed}: reference ({args.steps} steps)", flush=True)
    ref.append(_reference(args, seed, config, init))
    print(f"  reference: PQ {ref[-1]['PQ']:.2f} {ref[-1]['s_per_step']:.3f} s/step", flush=True)
    if args.equal_wall_clock:
      steps = int(args.steps * ref[-1]["train_loop_s"] / ours[-1]["train_loop_s"])
      print(f"seed {seed}: ours at the reference's {ref[-1]['train_loop_s']:.0f} s "
            f"({steps} steps)", flush=True)
      equal.append(_ours(args, seed, init_dir, steps, "ours_equal_wall_clock"))
    result["ours"], result["reference"] = _summary(ours), _summary(ref)
    if equal:
      result["equal_wall_clock"] = _summary(equal)
    result["s_per_step_ratio"] = (result["ours"]["median"]["s_per_step"]
                                  / result["reference"]["median"]["s_per_step"])
    with open(os.path.join(args.output, "reference_training.json"), "w") as f:
      json.dump(result, f, indent=1)
  _plot(result, os.path.join(args.output, "reference_training.png"))
  print(_table(result))
  print(f"s/step ours / reference: {result['s_per_step_ratio']:.3f}")
  print(f"wrote {os.path.join(args.output, 'reference_training.json')} and "
        f"reference_training.png")


if __name__ == "__main__":
  main()
