r"""Random kill -9 trials of train.py: does every resumed run log exactly the uninterrupted losses?

  python experiments/fault_trials.py --trials 20          # the issue #15 figure (target: 20/20)
  python experiments/fault_trials.py --trials 3 --steps 6 # a quick look

One uninterrupted run of train.py (configs/tiny.py:slim, the small test model, at 64x64 so
that a trial takes about a minute on 2 CPU cores) gives the reference losses.
Each trial then starts the same command in a fresh workdir, kills it with SIGKILL at a random
moment: after a random logged step, or while a random checkpoint is being written (its
temporary `STEP.orbax-checkpoint-tmp-*` directory exists), and runs the same command again to
the end. A trial passes when every line of its metrics.jsonl (steps after the last checkpoint
are logged twice) has exactly the loss terms and gradient norm of the reference run at that
step, bit for bit. All runs share one persistent compilation cache (the same compiled step).
Prints one line per trial and `K/N resumed runs logged exactly the losses of an
uninterrupted run`.
"""

import argparse
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
SLIM = ("--config=configs/tiny.py:slim", "--config.data.image_size=(64, 64)",
        "--config.data.num_train=64",
        "--config.data.num_val=2", "--config.eval.batch_size=2",
        "--config.loss.train_num_points=256", "--config.train.log_every=1",
        "--config.train.keep_checkpoints=100")


def _metrics(workdir: pathlib.Path) -> list[dict]:
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _losses(m: dict) -> dict:
  return {k: v for k, v in m.items() if k.startswith(("loss", "total")) or k == "grad_norm"}


def _finalized(workdir: pathlib.Path) -> list[int]:
  folder = workdir / "checkpoints"
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []


class Runner:
  def __init__(self, args, base: pathlib.Path):
    self.args, self.base = args, base
    path = [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    self.env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(path),
                    JAX_COMPILATION_CACHE_DIR=str(base / "jax_cache"),
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")

  def command(self, workdir) -> list[str]:
    return [sys.executable, "train.py", f"--workdir={workdir}", *SLIM,
            f"--config.optim.max_steps={self.args.steps}",
            f"--config.train.checkpoint_every={self.args.checkpoint_every}"]

  def start(self, workdir) -> subprocess.Popen:
    return subprocess.Popen(self.command(workdir), cwd=REPO, env=self.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

  def run(self, workdir) -> str:
    proc = self.start(workdir)
    _, stderr = proc.communicate()
    if proc.returncode != 0:
      raise RuntimeError(f"train.py in {workdir} exited {proc.returncode}:\n{stderr[-3000:]}")
    return stderr


def _kill_at(proc: subprocess.Popen, workdir: pathlib.Path, kind: str, at: int,
             timeout_s: float) -> str:
  """Waits for the event (step `at` logged, or checkpoint `at` being written); SIGKILL."""
  deadline = time.monotonic() + timeout_s
  ckpt = workdir / "checkpoints"
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      return f"ended before {kind} {at}"
    if kind == "step":
      logged = [m["step"] for m in _metrics(workdir)]
      if logged and logged[-1] >= at:
        break
    elif ckpt.exists() and any(p.name.startswith(f"{at}.orbax-checkpoint-tmp")
                               for p in ckpt.iterdir()):
      break
    time.sleep(0.001 if kind == "checkpoint" else 0.01)
  else:
    proc.kill()
    proc.communicate()
    return f"no {kind} {at} after {timeout_s} s"
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  return ""


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--trials", type=int, default=20)
  parser.add_argument("--steps", type=int, default=8, help="optim.max_steps of every run")
  parser.add_argument("--checkpoint_every", type=int, default=2)
  parser.add_argument("--seed", type=int, default=0, help="of the kill moments")
  parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for a kill")
  parser.add_argument("--keep", action="store_true", help="keep the workdirs")
  parser.add_argument("--budget_s", type=float, default=None,
                      help="start no trial after this many seconds (the figure is then K/M "
                      "of the M trials run)")
  args = parser.parse_args(argv)
  rng = random.Random(args.seed)
  base = pathlib.Path(tempfile.mkdtemp(prefix="m2f_fault_trials-"))
  runner = Runner(args, base)
  print(f"workdirs and compilation cache: {base}", flush=True)
  t0 = time.perf_counter()
  runner.run(base / "uninterrupted")
  expected = {m["step"]: _losses(m) for m in _metrics(base / "uninterrupted")}
  assert sorted(expected) == list(range(1, args.steps + 1)), sorted(expected)
  print(f"uninterrupted: {args.steps} steps in {time.perf_counter() - t0:.0f} s", flush=True)
  checkpoints = [s for s in range(1, args.steps + 1) if s % args.checkpoint_every == 0]
  passed = ran = 0
  try:
    for trial in range(args.trials):
      if args.budget_s is not None and time.perf_counter() - t0 > args.budget_s:
        print(f"time budget of {args.budget_s:.0f} s spent: {trial} of {args.trials} trials "
              "run", flush=True)
        break
      ran += 1
      t = time.perf_counter()
      workdir = base / f"trial{trial:02d}"
      # Half the kills while a checkpoint is written, half after a random step.
      if trial % 2 == 0 and checkpoints:
        kind, at = "checkpoint", rng.choice(checkpoints)
      else:
        kind, at = "step", rng.randrange(1, args.steps)
      problem = _kill_at(runner.start(workdir), workdir, kind, at, args.timeout)
      killed_after = max([m["step"] for m in _metrics(workdir)], default=0)
      kept = _finalized(workdir)
      stderr = runner.run(workdir)
      resumed = next((line.split("resumed from step ")[1].split()[0]
                     for line in stderr.splitlines() if "resumed from step " in line), "scratch")
      logged = _metrics(workdir)
      steps_seen = sorted({m["step"] for m in logged})
      same = (not problem and steps_seen == list(range(1, args.steps + 1))
              and all(_losses(m) == expected[m["step"]] for m in logged))
      passed += same
      print(f"trial {trial + 1:2d}: kill -9 at {kind} {at} (logged {killed_after}, "
            f"checkpoints {kept}), resumed from {resumed}: "
            f"{'same losses' if same else 'DIFFERENT ' + problem} "
            f"({time.perf_counter() - t:.0f} s)", flush=True)
      if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
  finally:
    if not args.keep:
      shutil.rmtree(base, ignore_errors=True)
  print(f"{passed}/{ran} resumed runs logged exactly the losses of an uninterrupted "
        f"run ({args.steps} steps, a checkpoint every {args.checkpoint_every}; "
        f"{time.perf_counter() - t0:.0f} s)", flush=True)
  return 0 if passed == ran == args.trials else 1


if __name__ == "__main__":
  sys.exit(main())
