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
  4. equal wall-clock (unless --no-equal-wall-clock): ours again, given as many steps as fit
     into the reference's time for --steps steps (ours' compile included; from the timing
     below; its schedule set to that many steps, as a user would), then `eval.py`.

Seconds per step (the ratio ours / reference) come from a side-by-side timing in this process
before the runs (`_timing`: the same batches, alternating blocks of steps with pauses, data
excluded on both sides), not from the training runs, which run at different times on a
machine that may be shared. The runs' own per-step medians are kept in the JSON as
`s_per_step` (data included).

Each run's figures are kept in DIR (`ours_S.json`, `reference_S.json`, ...; `timing.json`):
the same command again skips what is finished.

Writes DIR/reference_training.json ({"ours": ..., "reference": ..., "equal_wall_clock": ...},
each side with per-seed and median PQ, PQ_th, PQ_st, mIoU, AP, s_per_step and the loss
curve) and DIR/reference_training.png (loss curves, smoothed), and prints a table.
Both sides run one after the other with the threads each framework takes by default (all
cores), never at the same time.
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
TIMING_STEPS, TIMING_BLOCKS = 10, 4  # the side-by-side timing: 4 alternating blocks of 10


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


def _cached(path, fn):
  """fn()'s result, kept in `path` (JSON): a rerun with the same --output skips finished runs."""
  if os.path.isfile(path):
    with open(path) as f:
      return json.load(f)
  result = fn()
  with open(path + ".tmp", "w") as f:
    json.dump(result, f)
  os.replace(path + ".tmp", path)
  return result


def _ours(args, seed, init_dir, steps, name):
  return _cached(os.path.join(args.output, f"{name}_{seed}.json"),
                 lambda: _train_ours(args, seed, init_dir, steps, name))


def _train_ours(args, seed, init_dir, steps, name):
  workdir = os.path.join(args.output, f"{name}_{seed}")
  log = os.path.join(args.output, f"{name}_{seed}_train.log")
  train_s = _run([sys.executable, "train.py", f"--config={args.config}",
                  f"--workdir={workdir}", *_overrides(steps, seed, init_dir)], log)
  return _read_ours(args, seed, steps, name, train_s)


def _read_ours(args, seed, steps, name, train_s):
  """The figures of a finished run of ours: its metrics.jsonl, log line and eval.py."""
  workdir = os.path.join(args.output, f"{name}_{seed}")
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
  return _cached(os.path.join(args.output, f"reference_{seed}.json"),
                 lambda: _train_reference(args, seed, config, init_variables))


def _train_reference(args, seed, config, init_variables):
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
    loss = twin_lib.train_step(twin, opt, sched, clip, batch)
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


def _timing(args, config, init_variables):
  """s/step of both sides measured side by side: one process, the same batches, blocks of
  TIMING_STEPS steps alternating with a pause between blocks, data excluded on both sides
  (batches fetched and, for torch, expanded beforehand; our step expands its compact batch
  inside, as in training). Ours: the train step as train.py jits it, from the same weights."""
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from m2f_jax import device_batch  # pylint: disable=g-import-not-at-top
  from m2f_jax.training import loop  # pylint: disable=g-import-not-at-top
  from m2f_jax.training import train_step  # pylint: disable=g-import-not-at-top

  model, tx, _ = train_step.abstract_train_state(config)
  params = jax.tree.map(np.asarray, init_variables["params"])
  state = train_step.TrainState(
      step=jax.numpy.zeros((), jax.numpy.int32), params=params,
      batch_stats=init_variables.get("batch_stats", {}), opt_state=tx.init(params),
      rng=jax.random.PRNGKey(0))
  step_fn = jax.jit(train_step.make_train_step(model, tx, config), donate_argnums=0)
  batches_iter = loop.train_data_iterator(config)
  compact = [next(batches_iter) for _ in range(TIMING_STEPS)]
  dense_fn = jax.jit(lambda b: device_batch.dense_batch(
      b, pixel_mean=config.model.pixel_mean, pixel_std=config.model.pixel_std,
      zero_padding=config.data.augmentation == "synthetic"))
  dense = [jax.tree.map(np.asarray, dense_fn(b)) for b in compact]
  t0 = time.perf_counter()
  state, metrics = step_fn(state, compact[0])
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  twin = twin_lib.build(config, seed=0)
  opt, sched, clip = twin_lib.optimizer(twin, model, config)
  torch.manual_seed(0)

  def ours_block():
    nonlocal state
    times = []
    for b in compact:
      t = time.perf_counter()
      state, m = step_fn(state, b)
      jax.block_until_ready(m)
      times.append(time.perf_counter() - t)
    return times

  def reference_block():
    times = []
    for b in dense:
      t = time.perf_counter()
      twin_lib.train_step(twin, opt, sched, clip, b)
      times.append(time.perf_counter() - t)
    return times

  reference_block()  # warm-up of both sides
  ours_block()
  ours, ref = [], []
  for _ in range(TIMING_BLOCKS):
    time.sleep(1.0)
    ours += ours_block()
    time.sleep(1.0)
    ref += reference_block()
  result = dict(ours_s_per_step=statistics.median(ours),
                reference_s_per_step=statistics.median(ref),
                ours_compile_s=compile_s, steps_per_side=len(ours),
                torch_threads=torch.get_num_threads(), ours_times=ours, reference_times=ref)
  result["ratio"] = result["ours_s_per_step"] / result["reference_s_per_step"]
  return result


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


def _band(result):
  """Ours' smoothed loss curves against the band of the reference's (min..max over seeds at
  each point): the share of points inside, and ours' mean over the reference's mean."""
  ref = np.stack([_smooth(r["loss_curve"])[1] for r in result["reference"]["seeds"]])
  ours = np.stack([_smooth(r["loss_curve"])[1] for r in result["ours"]["seeds"]])
  lo, hi = ref.min(0), ref.max(0)
  inside = (ours >= lo) & (ours <= hi)
  return {"points": int(ref.shape[1]), "share_inside": float(inside.mean()),
          "ours_mean_over_reference_mean": float(np.mean(ours.mean(0) / ref.mean(0))),
          "last_point": {"ours": ours[:, -1].tolist(), "reference": ref[:, -1].tolist()}}


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
  parser.add_argument("--equal-wall-clock-seeds", type=int, default=None,
                      help="run the equal-wall-clock comparison for the first N seeds only")
  args = parser.parse_args(argv)
  os.makedirs(args.output, exist_ok=True)
  from m2f_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from m2f_jax.models.mask2former import build_model  # pylint: disable=g-import-not-at-top

  result = {"config": args.config, "steps": args.steps,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host_cpus": os.cpu_count()}
  config = _config(args.config, args.steps, 0)
  init = twin_lib.jax_variables(twin_lib.build(config, seed=0), build_model(config.model), config)
  print("timing both sides, alternating", flush=True)
  timing = _cached(os.path.join(args.output, "timing.json"),
                   lambda: _timing(args, config, init))
  result["timing"] = {k: v for k, v in timing.items() if not k.endswith("_times")}
  result["s_per_step_ratio"] = timing["ratio"]
  # Equal wall-clock: the reference's time for --steps steps, ours' compile included.
  equal_steps = int((args.steps * timing["reference_s_per_step"] - timing["ours_compile_s"])
                    / timing["ours_s_per_step"])
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
    print(f"  ours: PQ {ours[-1]['PQ']:.2f}", flush=True)
    print(f"seed {seed}: reference ({args.steps} steps)", flush=True)
    ref.append(_reference(args, seed, config, init))
    print(f"  reference: PQ {ref[-1]['PQ']:.2f}", flush=True)
    if args.equal_wall_clock and (args.equal_wall_clock_seeds is None
                                  or seed < args.equal_wall_clock_seeds):
      print(f"seed {seed}: ours at the reference's time for {args.steps} steps "
            f"({equal_steps} steps)", flush=True)
      equal.append(_ours(args, seed, init_dir, equal_steps, "ours_equal_wall_clock"))
    result["ours"], result["reference"] = _summary(ours), _summary(ref)
    if equal:
      result["equal_wall_clock"] = _summary(equal)
    result["loss_band"] = _band(result)
    with open(os.path.join(args.output, "reference_training.json"), "w") as f:
      json.dump(result, f, indent=1)
  _plot(result, os.path.join(args.output, "reference_training.png"))
  print(_table(result))
  band = result["loss_band"]
  print(f"ours' loss curves (mean of {SMOOTH} steps) inside the reference's seed band at "
        f"{100 * band['share_inside']:.0f}% of {band['points']} points; ours' mean / the "
        f"reference's mean: {band['ours_mean_over_reference_mean']:.3f}")
  t = result["timing"]
  print(f"s/step side by side ({t['steps_per_side']} steps each, alternating): ours "
        f"{t['ours_s_per_step']:.3f}, reference {t['reference_s_per_step']:.3f}, ratio "
        f"{t['ratio']:.3f}; ours' compile {t['ours_compile_s']:.1f} s")
  print(f"wrote {os.path.join(args.output, 'reference_training.json')} and "
        f"reference_training.png")


if __name__ == "__main__":
  main()
