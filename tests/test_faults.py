"""Faults and user mistakes (docs/faults.md): damaged checkpoints, kills while a checkpoint is
written, changed configs, two runs on one workdir, dead processes, full disks, one-line errors,
strict JSON reports, images of odd modes and sizes.

The unit tests run in this process; the end-to-end ones run train.py / eval.py in
subprocesses on configs/tiny.py:slim (the small test model) at 64x64 that share the
session's persistent compilation cache (tests/conftest.py), and are marked slow. One
reference run (`reference`) trains STEPS steps with a checkpoint at every step; the other
runs copy its workdir and break it.
"""

import errno
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import PIL.Image
import pytest

from tests import proc as proc_lib

from m2f_jax import errors
from m2f_jax import workdir as workdir_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_S = 900  # a loaded 2-core machine: train.py runs take minutes
STEPS = 6
CONFIG = "--config=configs/tiny.py:slim"  # the small test model
FLAGS = ("--config.data.image_size=(64, 64)", "--config.data.num_train=64",
         "--config.data.num_val=2", "--config.eval.batch_size=2",
         "--config.loss.train_num_points=256", "--config.train.log_every=1",
         "--config.train.checkpoint_every=1", "--config.train.keep_checkpoints=20")


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------


def _env(**extra) -> dict:
  env = proc_lib.env(**extra)
  if errors.VERBOSE_ENV not in extra:
    env.pop(errors.VERBOSE_ENV, None)
  return env


def _start(args, **env) -> subprocess.Popen:
  return proc_lib.start(*args, environ=_env(**env))


def _finish(proc, returncode: int | None = 0, timeout=TIMEOUT_S) -> subprocess.CompletedProcess:
  return proc_lib.finish(proc, returncode, timeout)


def _train(workdir, *flags, **env) -> subprocess.Popen:
  return _start(["train.py", f"--workdir={workdir}", CONFIG, *FLAGS, *flags],
                **env)


def _metrics(workdir) -> list[dict]:
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(l) for l in path.read_text().splitlines() if l.endswith("}")]


def _losses(m: dict) -> dict:
  return {k: v for k, v in m.items() if k.startswith(("loss", "total")) or k == "grad_norm"}


def _steps(workdir) -> list[int]:
  folder = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def _assert_error_lines(run, *patterns, returncode=errors.EXIT_STATUS):
  """A short user error: exit status 2, at most two lines on stderr, no traceback."""
  assert run.returncode == returncode, (run.returncode, run.stdout[-2000:], run.stderr[-4000:])
  lines = [l for l in run.stderr.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1, run.stderr[-4000:]
  assert "Traceback" not in run.stderr, run.stderr[-4000:]
  tail = run.stderr[run.stderr.index(lines[0]):].strip().splitlines()
  assert len(tail) <= 2, tail
  for p in patterns:
    assert re.search(p, lines[0]), (p, lines[0])
  return lines[0]


# ------------------------------------------------------------------------------------------
# Unit tests: lock, config check, one-line errors, strict JSON, image modes and sizes
# ------------------------------------------------------------------------------------------


def test_one_run_per_workdir_lock(tmp_path):
  """A held lock refuses a second holder naming it; a dead holder's lock is taken over."""
  holder = subprocess.Popen([sys.executable, "-c", (
      "import sys, time; from m2f_jax import workdir; "
      f"workdir.WorkdirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); "
      "time.sleep(600)")], cwd=REPO, env=_env(), stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(errors.WorkdirError, match=(
        rf"{tmp_path} is in use by process {holder.pid} on {socket.gethostname()} .*"
        r"one training run per workdir")):
      workdir_lib.WorkdirLock(str(tmp_path)).acquire()
  finally:
    holder.kill()  # kill -9: no clean-up runs
    holder.wait()
  info = json.loads((tmp_path / workdir_lib.LOCK_FILE).read_text())
  assert info["pid"] == holder.pid and info["state"] == "running"
  with workdir_lib.WorkdirLock(str(tmp_path)) as lock:  # the dead holder's lock
    assert lock.holder()["pid"] == os.getpid()
  assert workdir_lib.WorkdirLock(str(tmp_path)).holder()["state"] == "released"


def test_lock_without_flock_checks_the_named_process(tmp_path):
  """A lock file naming a live process of this host (a file system without flock) refuses;
  one naming a dead process is taken over."""
  lock_file = tmp_path / workdir_lib.LOCK_FILE
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
  try:
    lock_file.write_text(json.dumps({"host": socket.gethostname(), "pid": sleeper.pid,
                                     "state": "running", "started": "then"}))
    with pytest.raises(errors.WorkdirError, match=f"process {sleeper.pid}"):
      workdir_lib.WorkdirLock(str(tmp_path)).acquire()
  finally:
    sleeper.kill()
    sleeper.wait()
  workdir_lib.WorkdirLock(str(tmp_path)).acquire().release()


def _tiny():
  from configs import tiny  # pylint: disable=g-import-not-at-top
  return tiny.get_config("slim")


def test_config_check_refuses_shape_changes_and_records_safe_ones(tmp_path):
  old = _tiny()
  workdir_lib.write_config(str(tmp_path), old)
  stored = (tmp_path / "config.json").read_text()
  new = _tiny()
  new.model.num_queries = 8
  new.data.dataset = "ade20k"
  new.optim.max_steps = 5000  # safe
  with pytest.raises(errors.WorkdirError) as error:
    workdir_lib.check_config(str(tmp_path), new, has_checkpoints=True)
  message = str(error.value)
  assert "model.num_queries (16 -> 8)" in message and "data.dataset" in message
  assert "optim.max_steps" not in message
  assert "new --workdir" in message and "--config.init_from=" in message
  assert (tmp_path / "config.json").read_text() == stored  # untouched
  # Without checkpoints nothing depends on the stored config: accepted.
  assert "model.num_queries" in workdir_lib.check_config(str(tmp_path), new,
                                                         has_checkpoints=False)
  # Safe changes: accepted and recorded.
  safe = _tiny()
  safe.optim.max_steps, safe.train.log_every, safe.eval.batch_size = 5000, 1, 2
  safe.data.num_val = 3
  changes = workdir_lib.check_config(str(tmp_path), safe, has_checkpoints=True)
  assert sorted(changes) == ["data.num_val", "eval.batch_size", "optim.max_steps",
                             "train.log_every"]
  workdir_lib.record_changes(str(tmp_path), changes)
  entry = json.loads((tmp_path / workdir_lib.HISTORY_FILE).read_text().splitlines()[-1])
  assert entry["changes"]["optim.max_steps"] == {"old": _tiny().optim.max_steps, "new": 5000}
  assert entry["pid"] == os.getpid()


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path, monkeypatch):
  path = tmp_path / "config.json"
  workdir_lib.write_text_atomic(str(path), "old")

  def fail(*_):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(os, "replace", fail)
  with pytest.raises(OSError):
    workdir_lib.write_text_atomic(str(path), "new")
  assert path.read_text() == "old" and os.listdir(tmp_path) == ["config.json"]


def test_user_errors_print_one_line_traceback_when_verbose():
  code = ("from m2f_jax import errors\n"
          "with errors.reporting():\n"
          "  raise errors.ConfigError('data.batch_size=3 must be a multiple of 2; set it')\n")
  run = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(),
                       capture_output=True, text=True, check=False)
  assert run.returncode == 2
  assert run.stderr.splitlines() == [
      "error: data.batch_size=3 must be a multiple of 2; set it",
      "  (traceback: --verbose or M2F_VERBOSE=1)"]
  run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                       text=True, env=_env(**{errors.VERBOSE_ENV: "1"}), check=False)
  assert run.returncode == 2 and "Traceback (most recent call last)" in run.stderr


def test_closed_loop_tracebacks_of_a_failed_write_go_to_the_log(tmp_path, monkeypatch, capsys):
  """What TensorStore's threads hand to sys.unraisablehook when Orbax's loop is closed."""
  import asyncio  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  from m2f_jax.training import checkpoints  # pylint: disable=g-import-not-at-top
  loop = asyncio.new_event_loop()
  loop.close()
  with pytest.raises(RuntimeError) as closed:
    loop.call_soon_threadsafe(print)
  def unraisable(exc, obj=None):
    return types.SimpleNamespace(exc_type=type(exc), exc_value=exc, err_msg=None,
                                 exc_traceback=exc.__traceback__, object=obj)
  passed_on = []
  monkeypatch.setattr(sys, "unraisablehook", passed_on.append)
  monkeypatch.delenv(errors.VERBOSE_ENV, raising=False)
  monkeypatch.setattr(sys, "argv", ["train.py"])
  other = unraisable(RuntimeError("Event loop is closed"), obj=print)
  with checkpoints.background_errors_logged(str(tmp_path)):
    sys.unraisablehook(unraisable(closed.value))
    sys.unraisablehook(other)  # not a callback of TensorStore's: passed on
    monkeypatch.setenv(errors.VERBOSE_ENV, "1")
    sys.unraisablehook(unraisable(closed.value))  # verbose: passed on
  assert sys.unraisablehook == passed_on.append  # put back
  log = (tmp_path / checkpoints.ERRORS_LOG).read_text()
  assert log.count("RuntimeError: Event loop is closed") == 1 and "_check_closed" in log, log
  assert [u.object for u in passed_on] == [print, None]
  assert capsys.readouterr().err == ""
  with pytest.raises(ValueError):  # after an error the hook stays (late callbacks)
    with checkpoints.background_errors_logged(str(tmp_path)):
      raise ValueError
  assert sys.unraisablehook != passed_on.append


_FAILED_WRITE = """
import os, sys, jax, numpy as np, orbax.checkpoint as ocp
from m2f_jax import errors
from m2f_jax.training import checkpoints
errors.quiet_background_errors()  # as train.py
# jax arrays of 64 shapes, made on the host (no compile per shape)
arrays = {f"w{i}": jax.device_put(np.random.default_rng(i).standard_normal((96, 96 + i),
                                                                           np.float32))
          for i in range(64)}
with errors.reporting(), checkpoints.background_errors_logged(sys.argv[1]):
  manager = ocp.CheckpointManager(os.path.join(sys.argv[1], "checkpoints"),
                                  options=ocp.CheckpointManagerOptions(create=True))
  manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(arrays)))
  checkpoints.wait_until_finished(manager)
"""


@pytest.mark.parametrize("attempt", range(3))  # the callbacks race with the main thread
def test_failed_write_on_a_full_disk_prints_only_the_error_line(tmp_path, attempt):
  """Orbax writing 3 MiB of random arrays (64 TensorStore writes) into a 1 MiB file system;
  without `background_errors_logged` 3 in 4 runs printed "Event loop is closed" tracebacks."""
  del attempt
  mount = tmp_path / "disk"
  if not _tmpfs(mount, "1m"):
    pytest.skip("mounting a tmpfs needs privileges")
  try:
    run = subprocess.run([sys.executable, "-c", _FAILED_WRITE, str(mount)], cwd=REPO,
                         env=_env(), capture_output=True, text=True, check=False,
                         timeout=TIMEOUT_S)
    _assert_error_lines(run, rf"could not write checkpoint step \S+ in {mount}/checkpoints "
                             r"\(No space left on device\); no earlier checkpoint exists")
    assert run.stderr.count("\n") == 2, run.stderr
  finally:
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_config_typo_is_one_line(tmp_path):
  run = _finish(_start(["train.py", f"--workdir={tmp_path / 'w'}",
                        "--config.optim.max_stepz=3"]), returncode=None)
  _assert_error_lines(run, r"--config\.optim\.max_stepz: the config has no field 'max_stepz'; "
                           r"did you mean 'max_steps'\?")
  assert not (tmp_path / "w").exists()


def test_missing_dataset_is_one_line(tmp_path):
  t0 = time.monotonic()
  run = _finish(_start(["train.py", f"--workdir={tmp_path / 'w'}",
                        "--config.data.dataset=ade20k", "--config.model.num_classes=150",
                        f"--config.data.data_dir={tmp_path / 'tfds'}",
                        f"--config.data.source_dir={tmp_path / 'nowhere'}"]), returncode=None)
  _assert_error_lines(run, "nowhere")
  assert not (tmp_path / "w" / "config.json").exists()
  print(f"missing dataset reported after {time.monotonic() - t0:.1f} s")


def test_batch_not_a_multiple_of_the_devices_is_one_line(tmp_path):
  run = _finish(_start(["train.py", f"--workdir={tmp_path / 'w'}", "--config.data.batch_size=3"],
                       XLA_FLAGS="--xla_force_host_platform_device_count=2"), returncode=None)
  _assert_error_lines(run, r"data\.batch_size=3 must be a multiple of the 2 devices; set "
                           r"--config\.data\.batch_size to a multiple of 2")
  assert not (tmp_path / "w" / "config.json").exists()


def test_eval_missing_checkpoint_is_one_line(tmp_path):
  run = _finish(_start(["eval.py", f"--checkpoint={tmp_path / 'nothing'}"]), returncode=None)
  _assert_error_lines(run, "nothing.* is neither a model directory")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  """A model directory of the slim tiny config (random weights; the format convert writes)."""
  import jax  # pylint: disable=g-import-not-at-top
  from m2f_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from m2f_jax.models import mask2former  # pylint: disable=g-import-not-at-top
  config = _tiny()
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype),
                           mask2former.abstract_variables(mask2former.build_model(config.model)))
  return pathlib.Path(checkpoint.save_model(str(tmp_path_factory.mktemp("model") / "tiny"),
                                            config, variables))


def _predict(checkpoint, tmp_path, *flags) -> subprocess.Popen:
  tmp_path.mkdir(parents=True, exist_ok=True)
  image = tmp_path / "image.png"
  PIL.Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(image)
  return _start(["-m", "m2f_jax.predict", f"--checkpoint={checkpoint}", "--task=panoptic",
                 f"--output={tmp_path / 'out'}", image, *flags])


def test_predict_of_a_missing_damaged_or_other_checkpoint_is_one_line(model_dir, tmp_path):
  """What, where and what to do, in one or two lines (status 2), before any output."""
  cases = {"missing": tmp_path / "nothing"}
  for name in ("other", "truncated", "no_metadata"):
    cases[name] = tmp_path / name
    shutil.copytree(model_dir, cases[name])
  config = json.loads((model_dir / "config.json").read_text())
  config["model"]["num_queries"] = 8  # weights of 16 queries, the config of 8
  (cases["other"] / "config.json").write_text(json.dumps(config))
  data = max((cases["truncated"] / "variables").rglob("d/*"), key=os.path.getsize)
  with open(data, "r+b") as f:
    f.truncate(100)
  os.remove(cases["no_metadata"] / "variables" / "_METADATA")
  procs = {name: _predict(path, tmp_path / f"{name}_out") for name, path in cases.items()}
  runs = {name: _finish(proc, returncode=None) for name, proc in procs.items()}
  _assert_error_lines(runs["missing"], r"^error: --checkpoint: .*/nothing is neither a model "
                                       r"directory \(config\.json \+ variables/\) nor a "
                                       r"training checkpoint step")
  _assert_error_lines(runs["other"], rf"--checkpoint {cases['other']} is another architecture "
                                     rf"than the model of its config {cases['other']}/config"
                                     r"\.json: \['params'\]\S+ is \(\d+(, \d+)*\) in the "
                                     r"checkpoint, \(\d+(, \d+)*\) in the model; put back")
  for name in ("truncated", "no_metadata"):
    _assert_error_lines(runs[name], rf"--checkpoint {cases[name]}: its weights do not restore "
                                    r"\(\w+: .+\); the checkpoint is damaged")
  for name in cases:
    assert not (tmp_path / f"{name}_out" / "out").exists(), name
  # The intact model directory predicts (the same command).
  run = _finish(_predict(model_dir, tmp_path / "intact"))
  assert (tmp_path / "intact" / "out" / "image.panoptic.png").is_file(), run.stdout


def test_reports_are_strict_json_and_atomic(tmp_path):
  from m2f_jax.evaluation import reports  # pylint: disable=g-import-not-at-top
  path = tmp_path / "eval_results.json"
  report = {"sem_seg": {"mIoU": 12.5, "IoU-a": float("nan"), "IoU-b": np.float32("inf")},
            "segm": {"APl": np.float64("nan")}, "num_images": np.int64(3)}
  reports.write_report(str(path), report)

  def reject(name):
    raise ValueError(f"not strict JSON: {name}")
  loaded = json.loads(path.read_text(), parse_constant=reject)
  assert loaded == {"sem_seg": {"mIoU": 12.5, "IoU-a": None, "IoU-b": None},
                    "segm": {"APl": None}, "num_images": 3}
  with pytest.raises(TypeError):  # a failed write leaves the previous report
    reports.write_report(str(path), {"x": object()})
  assert json.loads(path.read_text()) == loaded and os.listdir(tmp_path) == [path.name]


def _strict(text: str):
  def reject(name):
    raise ValueError(f"not strict JSON: {name}")
  return json.loads(text, parse_constant=reject)


def test_metric_clis_write_strict_json_atomically(tmp_path, monkeypatch):
  """`python -m m2f_jax.evaluation.panoptic` / `.video_instance --output`: null, never NaN."""
  from m2f_jax.data import panoptic_png  # pylint: disable=g-import-not-at-top
  from m2f_jax.evaluation import panoptic  # pylint: disable=g-import-not-at-top
  from m2f_jax.evaluation import video_instance  # pylint: disable=g-import-not-at-top
  # Panoptic: no stuff segment anywhere, so the Stuff group's PQ, SQ and RQ are undefined.
  ids = np.zeros((4, 6), np.uint32)
  ids[:, :3] = 7
  for folder in ("gt", "pred"):
    (tmp_path / folder).mkdir()
    panoptic_png.write_panoptic_png(tmp_path / folder / "a.png", ids)
  segments = [{"id": 7, "category_id": 1, "iscrowd": 0, "area": 12}]
  (tmp_path / "gt.json").write_text(json.dumps({
      "categories": [{"id": 1, "isthing": 1, "name": "cat"}, {"id": 2, "isthing": 0,
                                                             "name": "sky"}],
      "images": [{"id": 0, "file_name": "a.jpg"}],
      "annotations": [{"image_id": 0, "file_name": "a.png", "segments_info": segments}]}))
  (tmp_path / "pred.json").write_text(json.dumps({"annotations": [
      {"image_id": 0, "file_name": "a.png", "segments_info": segments}]}))
  out = tmp_path / "pq.json"
  flags = ["--gt-json", str(tmp_path / "gt.json"), "--gt-folder", str(tmp_path / "gt"),
           "--pred-json", str(tmp_path / "pred.json"), "--pred-folder", str(tmp_path / "pred"),
           "--output", str(out)]
  panoptic.main(flags)
  report = _strict(out.read_text())
  assert report["panoptic_seg"]["PQ"] == 100.0 and report["panoptic_seg"]["PQ_st"] is None
  # Video instance: no prediction at all, so every metric is undefined.
  evaluator = video_instance.VideoInstanceEvaluator(categories=[{"id": 0, "name": "x"}])
  mask = np.zeros((8, 8), np.uint8)
  mask[2:6, 2:6] = 1
  evaluator.update(video_id=0, predictions=[], height=8, width=8, length=1, ground_truth=[
      {"id": 1, "category_id": 0, "iscrowd": 0, "areas": [16],
       "segmentations": [_rle(mask)]}])
  (tmp_path / "vis_gt.json").write_text(json.dumps(evaluator.ground_truth_json()))
  (tmp_path / "vis_pred.json").write_text("[]")
  vis = tmp_path / "vis.json"
  vis_flags = ["--gt-json", str(tmp_path / "vis_gt.json"), "--pred-json",
               str(tmp_path / "vis_pred.json"), "--output", str(vis)]
  assert video_instance.main(vis_flags) == 0
  assert set(_strict(vis.read_text())["segm"].values()) == {None}
  # A failure while writing leaves the previous reports, and no temporary file.
  before = {p.name: p.read_text() for p in (out, vis)}
  listing = sorted(os.listdir(tmp_path))
  def fail(*_):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(os, "replace", fail)
  with pytest.raises(OSError):
    panoptic.main(flags)
  with pytest.raises(OSError):
    video_instance.main(vis_flags)
  assert {p.name: p.read_text() for p in (out, vis)} == before
  assert sorted(os.listdir(tmp_path)) == listing


def _rle(mask: np.ndarray) -> dict:
  from m2f_jax.evaluation import instance  # pylint: disable=g-import-not-at-top
  rle = instance.mask_to_rle(mask[None])[0]
  return {"size": rle["size"], "counts": rle["counts"]}


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1"])
def test_images_of_odd_modes(tmp_path, mode):
  """Dataset building and predict read grayscale, palette, alpha, CMYK, 16-bit and 1-bit
  images as RGB."""
  from m2f_jax import predict  # pylint: disable=g-import-not-at-top
  from m2f_jax.data import builders  # pylint: disable=g-import-not-at-top
  rgb = np.random.default_rng(0).integers(0, 255, (13, 21, 3), np.uint8)
  image = PIL.Image.fromarray(rgb).convert(mode)
  path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
  image.save(path)
  data, size = builders.read_image(path)
  assert size == (13, 21)
  with PIL.Image.open(__import__("io").BytesIO(data)) as decoded:
    assert decoded.mode == "RGB" and decoded.size == (21, 13)
  array = predict.read_image(str(path))
  assert array.shape == (13, 21, 3) and array.dtype == np.uint8


@pytest.mark.parametrize("size", [(1, 1), (7, 300), (33, 47)])
def test_images_of_odd_sizes(size):
  """Tiny, thin and odd-sized images: resized by the test-time rule, padded to 32."""
  from m2f_jax import predict  # pylint: disable=g-import-not-at-top
  image = np.zeros((*size, 3), np.uint8)
  x, (h, w) = predict.prepare(image, pixel_mean=(0, 0, 0), pixel_std=(1, 1, 1),
                              min_size=96, max_size=128)
  assert x.shape[0] == 1 and x.shape[1] % 32 == 0 and x.shape[2] % 32 == 0
  assert 0 < h <= x.shape[1] and 0 < w <= x.shape[2] and max(h, w) <= 128


# ------------------------------------------------------------------------------------------
# Multi-process: a dead process stops the others within the heartbeat bound
# ------------------------------------------------------------------------------------------

HEARTBEAT_S = 5
_DIST_WORKER = """
import sys, time
import numpy as np
from m2f_jax import workdir
workdir.initialize_distributed(sys.argv[1], 2, int(sys.argv[2]), heartbeat_timeout_s=int(sys.argv[3]))
from jax.experimental import multihost_utils
print("ready", flush=True)
while True:  # collectives, as training steps
  multihost_utils.process_allgather(np.array(1))
  time.sleep(0.01)
"""


@pytest.mark.parametrize("victim", [1, 0], ids=["worker_dies", "coordinator_dies"])
def test_dead_process_stops_the_other_within_the_heartbeat(victim):
  port = proc_lib.free_port()
  procs = [subprocess.Popen([sys.executable, "-c", _DIST_WORKER, f"127.0.0.1:{port}", str(i),
                             str(HEARTBEAT_S)], cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    for p in procs:
      assert p.stdout.readline().strip() == "ready", _finish(p, None).stderr[-3000:]
    time.sleep(1)
    procs[victim].kill()
    t0 = time.monotonic()
    survivor = procs[1 - victim]
    bound = HEARTBEAT_S + 20
    try:
      survivor.wait(timeout=bound)
    except subprocess.TimeoutExpired:
      pytest.fail(f"process {1 - victim} still runs {bound} s after process {victim} died")
    elapsed = time.monotonic() - t0
    stderr = survivor.stderr.read()
    assert survivor.returncode != 0
    assert "Terminating process because the JAX distributed service detected fatal errors" \
        in stderr, stderr[-3000:]
    print(f"process {victim} killed: process {1 - victim} exited after {elapsed:.1f} s")
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.communicate()


# ------------------------------------------------------------------------------------------
# End to end: train.py and eval.py on configs/tiny.py:slim
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """STEPS steps of train.py with a checkpoint at every step (and the final evaluation)."""
  workdir = tmp_path_factory.mktemp("reference")
  _finish(_train(workdir, f"--config.optim.max_steps={STEPS}"))
  assert _steps(workdir) == list(range(1, STEPS + 1))
  return workdir


def _copy(reference, dest, keep_steps) -> pathlib.Path:
  """A copy of the reference workdir with only the checkpoints of `keep_steps`."""
  skip = {str(step) for step in _steps(reference) if step not in keep_steps}

  def ignore(directory, names):
    return [n for n in names if n in skip] if pathlib.Path(directory).name == "checkpoints" else []

  shutil.copytree(reference, dest, ignore=ignore)
  return dest


def _tree_bytes(path) -> int:
  return sum(f.stat().st_size for f in pathlib.Path(path).rglob("*") if f.is_file())


@pytest.fixture(scope="module")
def resumed(reference, tmp_path_factory):
  """A copy of the reference with steps 2..4 damaged and 5, 6 removed, resumed to STEPS:

  run A (killed with SIGKILL while it writes a checkpoint), run B (started on the same
  workdir while A runs), run C (the same command as A, to the end).
  """
  workdir = _copy(reference, tmp_path_factory.mktemp("resumed") / "w", keep_steps=(1, 2, 3, 4))
  ckpt = workdir / "checkpoints"
  data_file = max((ckpt / "4" / "state").glob("ocdbt.process_0/d/*"), key=os.path.getsize)
  with open(data_file, "r+b") as f:  # a truncated data file
    f.truncate(1000)
  os.remove(ckpt / "3" / "state" / "_METADATA")
  os.remove(ckpt / "2" / "data" / "process_0-of-1.json")  # the data iterator's position
  logged_before = len(_metrics(workdir))
  config_before = (workdir / "config.json").read_text()
  flags = (f"--config.optim.max_steps={STEPS}",)
  a = _train(workdir, *flags)
  # B: the same command while A holds the workdir.
  deadline = time.monotonic() + 60
  while workdir_lib.WorkdirLock(str(workdir)).holder().get("pid") != a.pid:
    assert time.monotonic() < deadline and a.poll() is None, _finish(a, None).stderr[-3000:]
    time.sleep(0.05)
  b = _finish(_train(workdir, *flags), returncode=None)
  # eval.py reads a checkpoint of the workdir A trains in (it takes no lock).
  reader = _start(["eval.py", f"--checkpoint={ckpt / '1'}", f"--workdir={workdir / 'eval1'}",
                   "--max_images=1"])
  # A: killed once a checkpoint after the restored step 1 is being written.
  writing, deadline = None, time.monotonic() + TIMEOUT_S
  while writing is None:
    assert time.monotonic() < deadline and a.poll() is None, (
        "run A ended before it was caught writing a checkpoint", _finish(a, None).stderr[-3000:])
    tmp = [p.name for p in ckpt.iterdir() if ".orbax-checkpoint-tmp" in p.name]
    writing = next((n for n in tmp if int(n.split(".")[0]) >= 3), None)
    time.sleep(0.002)
  a.send_signal(signal.SIGKILL)
  a_run = _finish(a, returncode=-signal.SIGKILL)
  reader_run = _finish(reader)
  writing_step = int(writing.split(".")[0])
  finalized = _steps(workdir)
  c = _finish(_train(workdir, *flags))
  return dict(workdir=workdir, a=a_run, a_pid=a.pid, reader=reader_run, b=b, c=c, writing_step=writing_step,
              finalized=finalized, logged_before=logged_before, config_before=config_before)


@pytest.mark.slow
def test_damaged_checkpoints_are_skipped_and_kept(resumed, reference):
  workdir, a = resumed["workdir"], resumed["a"]
  lines = [l for l in a.stderr.splitlines() if l.startswith("checkpoint step")]
  assert len(lines) == 3, a.stderr[-3000:]
  assert re.fullmatch(rf"checkpoint step 4 is damaged \({workdir}/checkpoints/4/state: "
                      r"ValueError: OUT_OF_RANGE: Error reading .* is not valid for value of "
                      rf"size 1000\); skipped and moved to {workdir}/damaged_checkpoints/4 "
                      r"\(not deleted\)", lines[0]), lines[0]
  assert lines[1] == (f"checkpoint step 3 is damaged ({workdir}/checkpoints/3/state/_METADATA: "
                      f"missing); skipped and moved to {workdir}/damaged_checkpoints/3 "
                      "(not deleted)")
  assert lines[2].startswith(f"checkpoint step 2 is damaged ({workdir}/checkpoints/2/data/"
                             "process_0-of-1.json: missing)")
  assert "resumed from step 1" in a.stderr
  assert sorted(p.name for p in (workdir / "damaged_checkpoints").iterdir()) == ["2", "3", "4"]
  # Every step logged after the copy equals the reference run's.
  expected = {m["step"]: _losses(m) for m in _metrics(reference)}
  logged = _metrics(workdir)[resumed["logged_before"]:]
  assert {m["step"] for m in logged} == set(range(2, STEPS + 1))
  for m in logged:
    assert _losses(m) == pytest.approx(expected[m["step"]], rel=1e-6, abs=0), m["step"]


@pytest.mark.slow
def test_second_run_on_a_workdir_stops(resumed):
  b, workdir = resumed["b"], resumed["workdir"]
  _assert_error_lines(b, rf"{workdir} is in use by process {resumed['a_pid']} on "
                        rf"{socket.gethostname()} .*one training run per workdir")
  assert "trained" not in b.stdout


@pytest.mark.slow
def test_eval_reads_while_a_run_trains(resumed):
  assert (resumed["workdir"] / "eval1" / "eval_results.json").is_file(), resumed["reader"].stderr


@pytest.mark.slow
def test_kill_while_writing_a_checkpoint_resumes_from_the_previous_one(resumed):
  c, workdir = resumed["c"], resumed["workdir"]
  # The step being written was not finalized; C resumed from the newest finalized one.
  assert resumed["writing_step"] not in resumed["finalized"]
  last = max(resumed["finalized"])
  assert last == resumed["writing_step"] - 1
  assert f"resumed from step {last}" in c.stderr and "is damaged" not in c.stderr
  assert f"trained {STEPS - last} steps" in c.stdout
  assert _steps(workdir) == list(range(1, STEPS + 1))
  # The lock was taken over from the killed run A, and released at the end.
  assert workdir_lib.WorkdirLock(str(workdir)).holder()["state"] == "released"
  json.loads((workdir / "eval_results.json").read_text(),
             parse_constant=lambda c: pytest.fail(f"{c} in eval_results.json"))


@pytest.mark.slow
def test_changed_model_stops_before_anything_is_written(reference, tmp_path):
  workdir = _copy(reference, tmp_path / "w", keep_steps=(STEPS,))
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  run = _finish(_train(workdir, f"--config.optim.max_steps={STEPS + 2}",
                       "--config.model.num_queries=8"), returncode=None)
  _assert_error_lines(run, r"was trained with another config: model\.num_queries \(16 -> 8\)",
                      r"new --workdir", r"--config\.init_from=")
  after = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  changed = [str(p) for p in set(before) | set(after)
             if before.get(p) != after.get(p) and p.name != workdir_lib.LOCK_FILE]
  assert not changed, changed


@pytest.mark.slow
def test_eval_of_another_architecture_is_one_line(reference):
  run = _finish(_start(["eval.py", f"--checkpoint={reference / 'checkpoints' / str(STEPS)}",
                        "--config=configs/tiny.py"]), returncode=None)
  _assert_error_lines(run, r"is another architecture than the config's model: "
                           r"\['params'\]\S* is (absent|\(\d+(, \d+)*\)) in the checkpoint")


@pytest.mark.slow
def test_init_from_another_architecture_is_one_line(reference, tmp_path):
  run = _finish(_train(tmp_path / "w", "--config.optim.max_steps=1", "--config.model.num_queries=8",
                       f"--config.init_from={reference / 'checkpoints' / str(STEPS)}"), returncode=None)
  _assert_error_lines(run, r"init_from=.*: its variables do not match this config's model")
  assert not (tmp_path / "w" / "config.json").exists() and not _steps(tmp_path / "w")


def _tmpfs(path, size: str) -> bool:
  path.mkdir(parents=True, exist_ok=True)
  return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                        capture_output=True, check=False).returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["full", "read_only"])
def test_full_or_read_only_disk_during_a_checkpoint_keeps_the_previous_one(
    reference, tmp_path, fault):
  """Resumed where the next checkpoint cannot be written (no room left on the file system,
  or checkpoints/ mounted read-only): one line, and the previous checkpoint still restores."""
  mount = tmp_path / "disk"
  # Room for the copied workdir (one checkpoint) and the filler below, not for a second one.
  size_mib = 64 + 2 * _tree_bytes(reference / "checkpoints" / str(STEPS)) // (1 << 20)
  if not _tmpfs(mount, f"{size_mib}m"):
    pytest.skip("mounting a tmpfs needs privileges")
  try:
    workdir = _copy(reference, mount / "w", keep_steps=(STEPS,))
    shutil.rmtree(workdir / "tensorboard", ignore_errors=True)
    if fault == "full":
      stat = os.statvfs(mount)
      free = stat.f_bavail * stat.f_frsize
      with open(mount / "filler", "wb") as f:  # leave 256 KiB: logs fit, a checkpoint not
        f.write(b"\0" * max(free - 256 * 1024, 0))
      reason = "No space left on device"
    else:
      ckpt = str(workdir / "checkpoints")
      subprocess.run(["mount", "--bind", ckpt, ckpt], check=True)
      subprocess.run(["mount", "-o", "remount,bind,ro", ckpt], check=True)
      reason = "Read-only file system"
    run = _finish(_train(workdir, f"--config.optim.max_steps={STEPS + 1}"), returncode=None)
    _assert_error_lines(run, rf"could not write checkpoint step (in progress|{STEPS + 1}) in "
                             rf"{workdir}/checkpoints .*{reason}.*; step {STEPS} "
                             r"stays valid\. Free space")
    if fault == "full":
      os.remove(mount / "filler")
    else:
      subprocess.run(["umount", str(workdir / "checkpoints")], check=True)
    assert _steps(workdir) == [STEPS]
    from m2f_jax import checkpoint  # pylint: disable=g-import-not-at-top
    _, _, variables = checkpoint.load_for_inference(str(workdir / "checkpoints" / str(STEPS)))
    _, _, expected = checkpoint.load_for_inference(str(reference / "checkpoints" / str(STEPS)))
    for a, b in zip(__import__("jax").tree.leaves(variables),
                    __import__("jax").tree.leaves(expected)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  finally:
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_non_finite_loss_from_labels_beyond_num_classes(tmp_path):
  """Labels >= model.num_classes make the loss NaN: the error names num_classes, not the
  learning rate."""
  run = _finish(_start(["-m", "tests.test_faults", json.dumps(
      {"workdir": str(tmp_path), "bad_label_at_step": 2, "flags": list(FLAGS)})]),
                returncode=None)
  assert run.returncode != 0
  last = run.stderr.strip().splitlines()[-1]
  assert re.search(r"DataError: step 2: non-finite loss, and the data has class index \d+ but "
                   r"model.num_classes=7 .*set --config.model.num_classes", last), last
  assert "learning_rate" not in last


# ------------------------------------------------------------------------------------------
# The worker (subprocess side): loop.train with labels beyond the classes at one step
# ------------------------------------------------------------------------------------------


def _worker_main(job: dict):
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from m2f_jax.training import loop  # pylint: disable=g-import-not-at-top
  config = tiny.get_config("slim")
  for flag in job["flags"]:
    key, value = flag[len("--config."):].split("=")
    section, field = key.split(".")
    config[section][field] = type(config[section][field])(
        eval(value) if value[0] in "(0123456789" else value)  # pylint: disable=eval-used
  config.optim.max_steps = 3
  make_iterator = loop.train_data_iterator

  class BadLabels:
    """The training iterator, with labels beyond the classes in one batch."""

    def __init__(self, config):
      self.it, self.count = make_iterator(config), 0

    def __next__(self):
      batch, self.count = next(self.it), self.count + 1
      if self.count == job["bad_label_at_step"]:
        batch = dict(batch, labels=np.where(batch["valid"], 1000, batch["labels"]))
      return batch

    def get_state(self) -> bytes:
      return json.dumps(self.it.get_state()).encode()

    def set_state(self, state: bytes):
      self.it.set_state(json.loads(state.decode()))

  loop.train_data_iterator = BadLabels
  loop.train(config, job["workdir"])


if __name__ == "__main__":
  _worker_main(json.loads(sys.argv[1]))
