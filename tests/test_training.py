"""Tests of m2f_jax/training/loop.py and train.py: the loss falls, the update does not depend
on the number of devices, processes or parameter sharding, a killed run resumes exactly, and
a non-finite loss stops training.

Every training run happens in a subprocess: fake devices need XLA_FLAGS before jax is
imported, and each of the two processes of the multi-process test needs its own jax. The
subprocesses run this file (`python -m tests.test_training WORKER_JSON`, see `_worker_main`)
or train.py, and share the session's persistent compilation cache (tests/conftest.py), so
the 1-device train step is compiled once for the whole session. The learning rate is constant (`optim.lr_schedule="step"`
without decay steps): the compiled step then does not depend on `optim.max_steps`, and runs
of different lengths share it. The model is configs/tiny.py:slim's (1 bottleneck per stage,
1 encoder and 2 decoder stages; compile time: this file must stay within a few minutes on 2
cores).
"""

import json
import math
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import proc as proc_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_S = 420
CONFIG = "configs/tiny.py:slim"  # the small test model
# The slim tiny config at 64x64 with 256 points per mask; batch 8 (the tiny config's).
OVERRIDES = {
    "data.image_size": (64, 64),
    "data.num_train": 64,  # 8 batches an epoch: the runs below cross epoch boundaries
    "data.num_val": 8,
    "eval.batch_size": 8,
    "loss.train_num_points": 256,
    "optim.lr_schedule": "step",  # no decay steps, no warm-up: constant 1e-3
    # The official clipping and class weight (the tiny main job departs from both): with
    # clipping, float-rounding differences between device layouts stay within the tolerances.
    "optim.clip_grad_norm": 0.01,
    "loss.class_weight": 2.0,
    "train.log_every": 1,
}
RESUME_STEPS = 24  # the uninterrupted / interrupted runs (and the loss-falls test)
CHECKPOINT_EVERY = 4
DEVICE_STEPS = 3  # steps of the device-count comparison
PROCESS_STEPS = 3  # steps of the two-process run


# ------------------------------------------------------------------------------------------
# Subprocess helpers
# ------------------------------------------------------------------------------------------


def _start(args, num_devices: int = 1) -> subprocess.Popen:
  return proc_lib.start(*args, environ=proc_lib.env(num_devices))


def _start_worker(job: dict, num_devices: int = 1) -> subprocess.Popen:
  return _start(["-m", "tests.test_training", json.dumps(job)], num_devices)


def _finish(proc: subprocess.Popen, returncode: int | None = 0) -> subprocess.CompletedProcess:
  return proc_lib.finish(proc, returncode, TIMEOUT_S)


def _train_py(workdir, **overrides) -> list[str]:
  """train.py's command line for the test config (+ overrides) in `workdir`."""
  flags = [f"--config.{k}={v}" for k, v in {**OVERRIDES, **overrides}.items()]
  return ["train.py", f"--workdir={workdir}", f"--config={CONFIG}", *flags]


def _metrics(workdir) -> list[dict]:
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  lines = path.read_text().splitlines()
  return [json.loads(line) for line in lines if line.endswith("}")]


def _wait_for_step(proc: subprocess.Popen, workdir, step: int) -> int:
  """Waits until metrics.jsonl logs `step` (or later); returns the last logged step."""
  deadline = time.monotonic() + TIMEOUT_S
  while time.monotonic() < deadline:
    logged = [m["step"] for m in _metrics(workdir)]
    if logged and logged[-1] >= step:
      return logged[-1]
    if proc.poll() is not None:
      _finish(proc)  # fails with its output
      raise AssertionError(f"the run ended before step {step}")
    time.sleep(0.02)
  proc.kill()
  raise AssertionError(f"no step {step} in {workdir}/metrics.jsonl after {TIMEOUT_S} s")


def _checkpoint_steps(workdir) -> list[int]:
  folder = pathlib.Path(workdir) / "checkpoints"
  if not folder.exists():
    return []
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())  # finalized only


def _load_npz(path) -> dict:
  with np.load(path) as f:
    return dict(f)


def _assert_trees_close(actual: dict, expected: dict, *, rtol: float, atol: float, what: str):
  assert actual.keys() == expected.keys()
  worst = max(actual, key=lambda k: np.max(np.abs(actual[k] - expected[k])
                                           / (atol + rtol * np.abs(expected[k]))))
  np.testing.assert_allclose(actual[worst], expected[worst], rtol=rtol, atol=atol,
                             err_msg=f"{what}: {worst} (the worst leaf)")


def _assert_same_training(params: dict, metrics: list[dict], expected_params: dict,
                          expected_metrics: list[dict], initial: dict, what: str):
  """Same losses and gradient norms at every step, same parameter updates.

  Float32 sums in another order differ in the last bits. Adam divides each gradient entry by
  its own magnitude, so an entry that is rounding noise (a cancelling sum) moves by up to the
  learning rate either way: the updates are compared as a whole (relative norm of the
  difference), and elementwise only up to the learning rate.
  """
  assert len(metrics) == len(expected_metrics)
  for step, (m, e) in enumerate(zip(metrics, expected_metrics), start=1):
    for key in ("total_loss", "loss_ce", "loss_mask", "loss_dice", "grad_norm", "num_masks"):
      # Step 1 starts from the same state; later ones from states that differ slightly.
      np.testing.assert_allclose(m[key], e[key], rtol=1e-5 if step == 1 else 2e-4,
                                 err_msg=f"{what}: {key} at step {step}")
  assert params.keys() == expected_params.keys()
  diff = {k: (params[k] - expected_params[k]).astype(np.float64) for k in params}
  update = {k: (expected_params[k] - initial[k]).astype(np.float64) for k in params}
  relative = math.sqrt(sum(np.sum(d**2) for d in diff.values())
                       / sum(np.sum(u**2) for u in update.values()))
  worst = max(diff, key=lambda k: np.abs(diff[k]).max())
  print(f"{what}: update difference {relative:.2e} (relative norm), largest "
        f"{np.abs(diff[worst]).max():.2e} in {worst}")
  assert relative < 2e-3, f"{what}: the parameter updates differ by {relative:.2e} (norm)"
  assert np.abs(diff[worst]).max() < 1e-3, f"{what}: {worst} differs by more than the lr"


def _loss_terms(metrics: dict) -> dict:
  return {k: v for k, v in metrics.items() if k.startswith(("loss", "total")) or
          k in ("grad_norm", "num_masks", "learning_rate")}


# ------------------------------------------------------------------------------------------
# Fixtures: the compilation cache and the runs several tests read
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The 1-device process (started, not finished): its npz files, once `wait()` returns.

  `global_*`: DEVICE_STEPS steps on the batches of a 1-process run.
  `shards2_*`: PROCESS_STEPS steps on the global batches of a 2-process run (see
  `test_two_processes_match_one_process`).
  """
  out = tmp_path_factory.mktemp("reference")
  proc = _start_worker({"mode": "steps", "out": str(out), "save_initial": True, "runs": [
      {"name": "global", "shard_params": False, "data": "global", "steps": DEVICE_STEPS},
      {"name": "shards2", "shard_params": False, "data": "shards2", "steps": PROCESS_STEPS},
  ]}, num_devices=1)

  class Reference:
    initial = out / "initial_state.npz"

    def wait(self):
      if proc.returncode is None:
        _finish(proc)
      runs = {name: (_load_npz(out / f"{name}_params.npz"),
                     json.loads((out / f"{name}_metrics.json").read_text()))
              for name in ("global", "shards2")}
      return runs, _load_npz(out / "initial_params.npz")

  yield Reference()
  if proc.poll() is None:  # a test failed before waiting for it
    proc.kill()
    proc.communicate()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, reference):
  """train.py for RESUME_STEPS steps without interruption (started, not finished)."""
  reference.wait()  # its compiled step lands in the cache first
  workdir = tmp_path_factory.mktemp("uninterrupted")
  proc = _start(_train_py(workdir, **{"optim.max_steps": RESUME_STEPS,
                                      "train.checkpoint_every": CHECKPOINT_EVERY}))

  def wait():
    if proc.returncode is None:
      _finish(proc)
    return workdir

  yield wait
  if proc.poll() is None:
    proc.kill()
    proc.communicate()


# ------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------


def test_check_finite_names_the_step_and_the_term():
  from m2f_jax.training import train_step  # pylint: disable=g-import-not-at-top
  train_step.check_finite({"total_loss": 3.0, "loss_ce": 1.0, "grad_norm": math.inf}, 7)
  with pytest.raises(train_step.NonFiniteLossError, match=r"^step 12: non-finite loss in "
                     r"loss_dice_2, total_loss \(loss_dice_2=nan, total_loss=inf\)"):
    train_step.check_finite({"total_loss": math.inf, "loss_ce": 1.0, "loss_dice_2": math.nan,
                       "loss_mask_2": 0.5, "grad_norm": math.nan}, 12)


@pytest.mark.slow  # two compilations of the small model's train step
def test_semantic_head_adds_its_weighted_loss():
  """loss.semantic_weight adds weight x loss_sem to the official total, nothing else."""
  import jax  # pylint: disable=g-import-not-at-top
  from m2f_jax import config_lib  # pylint: disable=g-import-not-at-top
  from m2f_jax.training import train_step  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config_file(f"{REPO / 'configs' / 'tiny.py'}:slim")
  config.loss.train_num_points = 64
  config.model.semantic_head = True
  model, tx, _ = train_step.abstract_train_state(config)
  state = jax.jit(lambda rng: train_step.create_train_state(model, tx, rng, (64, 64)))(
      jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  masks = np.zeros((2, 4, 64, 64), np.uint8)
  masks[:, 0, :32], masks[:, 1, 32:, :20], masks[:, 2, 40:, 30:] = 1, 1, 1
  batch = {"images": rng.normal(size=(2, 64, 64, 3)).astype(np.float32),
           "padding_mask": np.ones((2, 64, 64), bool), "masks": masks,
           "labels": np.array([[4, 0, 2, 0], [5, 1, 3, 0]], np.int32),
           "valid": np.array([[True, True, True, False]] * 2)}
  metrics = {}
  for weight in (0.0, 3.0):
    config.loss.semantic_weight = weight
    _, metrics[weight] = jax.jit(train_step.make_train_step(model, tx, config))(state, batch)
  assert "loss_sem" not in metrics[0.0] and float(metrics[3.0]["loss_sem"]) > 0
  np.testing.assert_allclose(
      float(metrics[3.0]["total_loss"]),
      float(metrics[0.0]["total_loss"]) + 3.0 * float(metrics[3.0]["loss_sem"]), rtol=1e-5)
  config.model.semantic_head = False
  with pytest.raises(ValueError, match="set config.model.semantic_head = True"):
    train_step.make_train_step(model, tx, config)


@pytest.mark.slow  # end to end: training subprocesses (tests/test_training.py's docstring)
def test_device_count_and_param_sharding_give_the_same_update(tmp_path, reference):
  """8 fake devices (parameters replicated, and sharded with train.shard_params) vs 1."""
  proc = _start_worker({"mode": "steps", "out": str(tmp_path),
                        "initial_state": str(reference.initial), "runs": [
      {"name": "replicated", "shard_params": False, "data": "global", "steps": DEVICE_STEPS},
      {"name": "sharded", "shard_params": True, "data": "global", "steps": DEVICE_STEPS},
  ]}, num_devices=8)
  run = _finish(proc)
  assert "devices: 8" in run.stdout, run.stdout
  assert "replicated: sharded leaves: 0" in run.stdout, run.stdout
  assert "sharded: sharded leaves: 0" not in run.stdout, run.stdout
  runs, initial = reference.wait()
  expected_params, expected_metrics = runs["global"]
  for name in ("replicated", "sharded"):
    params = _load_npz(tmp_path / f"{name}_params.npz")
    metrics = json.loads((tmp_path / f"{name}_metrics.json").read_text())
    _assert_same_training(params, metrics, expected_params, expected_metrics, initial,
                          f"8 devices, {name}")


@pytest.mark.slow  # end to end: training subprocesses (tests/test_training.py's docstring)
def test_two_processes_match_one_process(tmp_path, reference):
  """loop.train in 2 processes (gloo, 1 device each) vs the same global batches in 1.

  Each process reads its own shard of the records (`ShardByJaxProcess`: records i::2, its own
  shuffle and augmentation seeds) and feeds its half of the global batch, so the global
  batch of a 2-process run is [4 examples of shard 0, 4 examples of shard 1]: a 1-process
  run (any number of devices) reads other batches. The reference builds, in one process,
  the two iterators the two processes build (`loop.train_data_iterator` with
  `jax.process_index/process_count` patched to i / 2) and concatenates their batches.
  """
  port = proc_lib.free_port()
  procs = [_start_worker({"mode": "train", "workdir": str(tmp_path), "process_id": i,
                          "num_processes": 2, "coordinator": f"127.0.0.1:{port}",
                          "overrides": {"optim.max_steps": PROCESS_STEPS,
                                        "train.checkpoint_every": 2}},
                         num_devices=1) for i in range(2)]
  for proc in procs:
    _finish(proc)
  params = [_load_npz(tmp_path / f"params_{i}.npz") for i in range(2)]
  for k in params[0]:  # replicated: both processes hold the same bits
    np.testing.assert_array_equal(params[0][k], params[1][k], err_msg=k)
  runs, initial = reference.wait()
  expected_params, expected_metrics = runs["shards2"]
  _assert_same_training(params[0], _metrics(tmp_path), expected_params, expected_metrics,
                        initial, "2 processes")
  # The checkpoint the two processes wrote together holds those parameters.
  assert _checkpoint_steps(tmp_path) == [2, PROCESS_STEPS]
  from m2f_jax import checkpoint  # pylint: disable=g-import-not-at-top
  _, _, variables = checkpoint.load_for_inference(str(tmp_path / "checkpoints" / str(PROCESS_STEPS)))
  restored = _flatten(variables["params"])
  for k in params[0]:
    np.testing.assert_array_equal(restored[k], params[0][k], err_msg=k)


@pytest.mark.slow  # end to end: training subprocesses (tests/test_training.py's docstring)
def test_killed_run_resumes_with_the_same_losses(tmp_path, uninterrupted):
  """SIGTERM (the loop saves and exits 143), then SIGKILL after a periodic checkpoint."""
  flags = _train_py(tmp_path, **{"optim.max_steps": RESUME_STEPS,
                                 "train.checkpoint_every": CHECKPOINT_EVERY,
                                 "train.keep_checkpoints": 100})
  # 1. SIGTERM: the loop finishes its step, saves it and exits with 143.
  proc = _start(flags)
  _wait_for_step(proc, tmp_path, 5)
  proc.send_signal(signal.SIGTERM)
  run = _finish(proc, returncode=143)
  stopped = _metrics(tmp_path)[-1]["step"]
  assert _checkpoint_steps(tmp_path)[-1] == stopped, (_checkpoint_steps(tmp_path), stopped)
  assert "SIGTERM: saving step" in run.stderr
  # 2. Resume, then SIGKILL once a periodic checkpoint after the SIGTERM one exists.
  periodic = (stopped // CHECKPOINT_EVERY + 1) * CHECKPOINT_EVERY
  proc = _start(flags)
  _wait_for_step(proc, tmp_path, periodic + 1)
  while periodic not in _checkpoint_steps(tmp_path):  # saved asynchronously: finalized?
    assert proc.poll() is None, _finish(proc)
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  _finish(proc, returncode=-signal.SIGKILL)
  killed_at = _metrics(tmp_path)[-1]["step"]
  last_saved = _checkpoint_steps(tmp_path)[-1]
  assert periodic <= last_saved <= killed_at < RESUME_STEPS, (
      _checkpoint_steps(tmp_path), killed_at)
  # 3. Resume from that periodic checkpoint to the end (and the final evaluation).
  run = _finish(_start(flags))
  assert f"resumed from step {last_saved}" in run.stderr
  assert f"trained {RESUME_STEPS - last_saved} steps" in run.stdout

  # Every logged step (steps after the last checkpoint are logged twice) equals the
  # uninterrupted run's: same data, same random draws, same state.
  reference_dir = uninterrupted()
  expected = {m["step"]: _loss_terms(m) for m in _metrics(reference_dir)}
  logged = _metrics(tmp_path)
  assert sorted({m["step"] for m in logged}) == list(range(1, RESUME_STEPS + 1))
  assert len(logged) == RESUME_STEPS + killed_at - last_saved
  for m in logged:
    assert _loss_terms(m) == pytest.approx(expected[m["step"]], rel=1e-6, abs=0), m["step"]
  # The final parameters and the evaluation agree too.
  from m2f_jax import checkpoint  # pylint: disable=g-import-not-at-top
  final = [_flatten(checkpoint.load_for_inference(str(d / "checkpoints" / str(RESUME_STEPS)))[2]
                    ["params"]) for d in (tmp_path, reference_dir)]
  _assert_trees_close(final[0], final[1], rtol=1e-6, atol=1e-7, what="resumed")
  results = [_flat_numbers(json.loads((d / "eval_results.json").read_text()))
             for d in (tmp_path, reference_dir)]
  for r in results:  # wall times and compile counts differ between runs (the other run
    del r["/seconds"]  # may have filled the persistent cache first); metrics do not
    for key in [k for k in r if k.startswith("/timing/")]:
      del r[key]
  assert "/panoptic_seg/PQ" in results[0]
  assert results[0] == pytest.approx(results[1], nan_ok=True)


@pytest.mark.slow  # end to end: training subprocesses (tests/test_training.py's docstring)
def test_loss_falls(uninterrupted):
  losses = [m["total_loss"] for m in _metrics(uninterrupted())]
  assert len(losses) == RESUME_STEPS
  first, last = np.mean(losses[:5]), np.mean(losses[-5:])
  # 24 steps on the synthetic data of issue #10 (class is shape or texture): measured
  # last / first = 0.79 (0.6 on the earlier colour-coded data).
  assert last < 0.85 * first and max(losses[-5:]) < min(losses[:5]), losses


@pytest.mark.slow  # end to end: training subprocesses (tests/test_training.py's docstring)
def test_non_finite_loss_stops_training(tmp_path, reference):
  """NaN images at step 4: the run stops naming step 4, and never checkpoints that step."""
  reference.wait()  # the compiled step is in the cache
  run = _finish(_start_worker({
      "mode": "train", "workdir": str(tmp_path), "nan_at_step": 4,
      "overrides": {"optim.max_steps": 8, "train.checkpoint_every": 2}}),
                returncode=None)
  assert run.returncode != 0
  message = run.stderr.strip().splitlines()[-1]
  match = re.fullmatch(r"m2f_jax\.training\.train_step\.NonFiniteLossError: step 4: non-finite loss "
                       r"in ([\w, ]+) \((.+)\); lower optim\.learning_rate, .*", message)
  assert match, message
  # Every term but loss_ce_0: the learnable queries' classes never see the image.
  stages = [""] + [f"_{i}" for i in range(_config({}).model.decoder_layers - 1)]
  terms = {f"loss_{t}{s}" for t in ("ce", "mask", "dice") for s in stages} - {"loss_ce_0"}
  if _config({}).loss.semantic_weight:  # the per-pixel auxiliary loss sees the image too
    terms.add("loss_sem")
  assert match.group(1).split(", ") == sorted(terms | {"total_loss"}), message
  assert all(v.endswith("=nan") for v in match.group(2).split(", ")), message
  assert [m["step"] for m in _metrics(tmp_path)] == [1, 2, 3]
  assert _checkpoint_steps(tmp_path) == [2]  # step 4 was never saved


# ------------------------------------------------------------------------------------------
# The worker (subprocess side)
# ------------------------------------------------------------------------------------------


def _flatten(tree) -> dict:
  import flax  # pylint: disable=g-import-not-at-top
  return {"/".join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(tree).items()}


def _flat_numbers(tree, prefix="") -> dict:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flat_numbers(v, f"{prefix}/{k}"))
    return out
  return {prefix: tree} if isinstance(tree, (int, float)) else {}


def _config(overrides: dict):
  from m2f_jax import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config_file(str(REPO / CONFIG))
  # The official frozen-BN backbone: GroupNorm's reductions round differently per device
  # layout (2.4e-4 relative in grad_norm at step 2, over these tests' tolerances).
  config.model.backbone.norm = "frozen_bn"
  for key, value in {**OVERRIDES, **overrides}.items():
    section, field = key.split(".")
    config[section][field] = tuple(value) if isinstance(value, list) else value
  return config


def _batches(config, data: str):
  """The global batches of a 1-process run ("global") or of a 2-process run ("shards2")."""
  from unittest import mock  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from m2f_jax.training import loop  # pylint: disable=g-import-not-at-top
  if data == "global":
    yield from loop.train_data_iterator(config)
    return
  iterators = []
  for i in range(2):  # what process i of 2 builds
    with mock.patch.object(jax, "process_index", lambda i=i: i), \
         mock.patch.object(jax, "process_count", lambda: 2):
      iterators.append(loop.train_data_iterator(config))
  while True:
    parts = [next(it) for it in iterators]
    yield {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _run_steps(job: dict):
  """Steps of loop's train step on a mesh of every device, from loop's 1-device init.

  With `initial_state`, the initial state comes from that file (written by a 1-device
  worker with `save_initial`), and the steps are compiled before it is read.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from m2f_jax import sharding  # pylint: disable=g-import-not-at-top
  from m2f_jax.training import train_step  # pylint: disable=g-import-not-at-top
  config = _config(job.get("overrides", {}))
  model, tx, abstract = train_step.abstract_train_state(config)
  mesh = sharding.make_mesh()
  out = pathlib.Path(job["out"])
  print(f"devices: {mesh.devices.size}", flush=True)
  if not job.get("initial_state"):  # as loop.train creates it
    image_shape = tuple(config.data.image_size)
    init = jax.jit(lambda r: train_step.create_train_state(model, tx, r, image_shape),
                   out_shardings=sharding.state_shardings(abstract, mesh, False))
    initial = jax.device_get(init(jax.random.PRNGKey(config.train.seed)))
    if job.get("save_initial"):
      leaves = {f"{i:04d}": x for i, x in enumerate(jax.tree.leaves(initial))}
      np.savez(out / "initial_tmp.npz", **leaves)
      (out / "initial_tmp.npz").rename(out / "initial_state.npz")
      np.savez(out / "initial_params.npz", **_flatten(initial.params))
  compiled = {}
  for run in job["runs"]:
    shardings = sharding.state_shardings(abstract, mesh, run["shard_params"])
    num_sharded = sum(s.spec != P() for s in jax.tree.leaves(shardings.params))
    print(f"{run['name']}: sharded leaves: {num_sharded}", flush=True)
    step_fn = jax.jit(train_step.make_train_step(model, tx, config),
                      in_shardings=(shardings, sharding.batch_sharding(mesh)),
                      out_shardings=(shardings, NamedSharding(mesh, P())), donate_argnums=0)
    batch = sharding.global_batch(next(_batches(config, run["data"])), mesh)
    abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                  abstract, shardings)
    compiled[run["name"]] = (shardings, step_fn.lower(abstract_state, batch).compile())
  if job.get("initial_state"):
    path = pathlib.Path(job["initial_state"])
    deadline = time.monotonic() + TIMEOUT_S
    while not path.exists():
      if time.monotonic() > deadline:
        raise TimeoutError(f"no {path}")
      time.sleep(0.1)
    leaves = _load_npz(path)
    initial = jax.tree.unflatten(jax.tree.structure(abstract),
                                 [leaves[k] for k in sorted(leaves)])
  for run in job["runs"]:
    shardings, step_fn = compiled[run["name"]]
    state = jax.device_put(initial, shardings)
    metrics = []
    batches = _batches(config, run["data"])
    for _ in range(run["steps"]):
      state, step_metrics = step_fn(state, sharding.global_batch(next(batches), mesh))
      metrics.append({k: float(v) for k, v in jax.device_get(step_metrics).items()})
    np.savez(out / f"{run['name']}_params.npz", **_flatten(jax.device_get(state.params)))
    (out / f"{run['name']}_metrics.json").write_text(json.dumps(metrics))


def _run_train(job: dict):
  """loop.train, optionally as one of several processes or with NaN images at one step."""
  import jax  # pylint: disable=g-import-not-at-top
  from m2f_jax.training import loop  # pylint: disable=g-import-not-at-top
  if job.get("num_processes"):
    jax.distributed.initialize(coordinator_address=job["coordinator"],
                               num_processes=job["num_processes"],
                               process_id=job["process_id"])
  if job.get("nan_at_step"):
    make_iterator = loop.train_data_iterator

    class Poisoned:
      """The training iterator, with NaN images in batch `nan_at_step`."""

      def __init__(self, config):
        self.it, self.count = make_iterator(config), 0

      def __next__(self):
        batch, self.count = next(self.it), self.count + 1
        if self.count == job["nan_at_step"]:
          # float32 NaN images (also for a compact batch, whose uint8 images the step
          # converts to float32 before normalizing)
          batch = dict(batch, images=np.full(batch["images"].shape, np.nan, np.float32))
        return batch

      def get_state(self) -> bytes:  # grain's checkpoint handler: bytes for other iterators
        return json.dumps(self.it.get_state()).encode()

      def set_state(self, state: bytes):
        self.it.set_state(json.loads(state.decode()))

    loop.train_data_iterator = Poisoned
  _, variables = loop.train(_config(job.get("overrides", {})), job["workdir"])
  local = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), variables["params"])
  np.savez(pathlib.Path(job["workdir"]) / f"params_{jax.process_index()}.npz", **_flatten(local))


def _worker_main(job: dict):
  if job["mode"] == "steps":
    _run_steps(job)
  elif job["mode"] == "train":
    _run_train(job)
  else:
    raise ValueError(f"unknown worker mode {job['mode']!r}")


if __name__ == "__main__":
  _worker_main(json.loads(sys.argv[1]))
