"""Every `--config.X=Y` flag the README, the notebook and the configs' launch commands name works.

Flags are found in README.md, colab/quickstart.ipynb (every cell) and the docstrings of
configs/*.py. Each is parsed as train.py parses it (absl + ml_collections, locked config) with
the config its command names (`--config configs/X.py[:arg]`; train.py's default, the tiny
config, when none; every official config for the placeholder `configs/X.py`): the key must
exist and the value must parse. The flags that need no files of the user's (paths, datasets on
disk) then run on the tiny config's small test model (configs/tiny.py:slim), all in one
train.py run of 2 steps on 2 CPU devices.
Also: the official input-pipeline defaults are the ones benchmarks/README.md measured best, and
the notebook states no metric figure (figures live, dated, in the README).
"""

import glob
import json
import os
import pathlib
import re
import subprocess
import sys

from absl import flags
from ml_collections import config_flags
import pytest

from tests import proc as proc_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
# ml_collections loads config files with the deprecated load_module().
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
TINY = "configs/tiny.py"
# `--config.X=Y`: the key, and the value up to whitespace, a backtick, a quote or a backslash.
_FLAG = re.compile(r"--config\.([A-Za-z_][\w.]*)=([^\s`'\"\\]+)")
_CONFIG_FILE = re.compile(r"--config[ =](configs/\w+\.py(?::\w+)?)")
# The syntax in the README's entry-point table (`[--config.key=value]`), not a flag.
_SYNTAX_KEYS = {"key"}
# Flags that point at the user's files or datasets on disk: checked (key exists, value parses)
# but not run.
NEEDS_FILES = {"init_from", "data.source_dir", "data.data_dir", "data.image_dir",
               "data.json_file", "data.panoptic_dir", "data.dataset"}
# What makes the train.py run of the runnable flags small (as tests/test_entry_points.py).
FAST_FLAGS = (
    f"--config={REPO / TINY}:slim", "--config.optim.max_steps=2",
    "--config.data.image_size=(64, 64)", "--config.data.batch_size=2",
    "--config.data.num_val=2", "--config.eval.batch_size=2", "--config.train.log_every=1",
    "--config.loss.train_num_points=256")


def _doc_texts() -> dict[str, str]:
  """{name: text} of the documents whose flags are checked."""
  texts = {"README.md": (REPO / "README.md").read_text()}
  notebook = json.loads((REPO / "colab" / "quickstart.ipynb").read_text())
  texts["colab/quickstart.ipynb"] = "\n\n".join("".join(cell["source"])
                                                for cell in notebook["cells"])
  for path in sorted(glob.glob(str(REPO / "configs" / "*.py"))):
    source = pathlib.Path(path).read_text()
    docstring = re.match(r'\s*r?"""(.*?)"""', source, re.S)
    texts[os.path.relpath(path, REPO)] = docstring.group(1) if docstring else ""
  return texts


def documented_flags() -> list[tuple[str, str, str, str]]:
  """(document, config file[:arg], key, value) of every documented `--config.X=Y` flag.

  The config is the one named in the same paragraph before the flag; else, in a config's own
  docstring, that config; else train.py's default (the tiny config).
  """
  found = []
  for doc, text in _doc_texts().items():
    for paragraph in re.split(r"\n\s*\n", text):
      for match in _FLAG.finditer(paragraph):
        key, value = match.groups()
        if key in _SYNTAX_KEYS:
          continue
        named = _CONFIG_FILE.findall(paragraph[:match.start()])
        if named:
          config = named[-1]
        elif doc.startswith("configs/"):
          config = doc
        else:
          config = TINY
        found.append((doc, config, key, value))
  return found


def _config_files(config: str) -> list[str]:
  """The config file[:arg] strings a documented config stands for."""
  path = config.split(":")[0]
  if (REPO / path).is_file():
    return [config]
  # A placeholder (configs/X.py[:arg]): every config file.
  return sorted(os.path.relpath(p, REPO) for p in glob.glob(str(REPO / "configs" / "*.py")))


def _parse(config: str, *args: str):
  """The config train.py would run with `--config config args...` (its flag parsing)."""
  argv = ["train.py", f"--config={REPO / config}", *args]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def _get(config, key: str):
  for part in key.split("."):
    config = config[part]
  return config


def test_the_docs_name_flags():
  keys = {key for _, _, key, _ in documented_flags()}
  assert {"train.shard_params", "data.source_dir", "init_from"} <= keys, keys
  with pytest.raises((AttributeError, KeyError, flags.Error), match="no_such_key"):
    _parse(TINY, "--config.train.no_such_key=1")


@pytest.mark.parametrize("doc,config,key,value", documented_flags(),
                         ids=lambda v: v if isinstance(v, str) and len(v) < 40 else None)
def test_documented_flag_exists_and_parses(doc, config, key, value):
  for config_file in _config_files(config):
    try:
      parsed = _parse(config_file, f"--config.{key}={value}")
    except Exception as e:  # pylint: disable=broad-exception-caught
      pytest.fail(f"{doc} names --config.{key}={value} for {config_file}, which train.py "
                  f"rejects: {type(e).__name__}: {e}. Fix the document or declare the key in "
                  "m2f_jax/config_lib.py.")
    assert _get(parsed, key) is not None or value == "None", (doc, config_file, key)


@pytest.mark.slow
def test_documented_flags_run_on_the_tiny_config(tmp_path):
  """The flags that need no user files, all in one 2-step train.py run on 2 CPU devices, on
  configs/tiny.py:slim."""
  runnable = {}
  for doc, _, key, value in documented_flags():
    if key in NEEDS_FILES:
      continue
    if runnable.get(key, value) != value:
      pytest.fail(f"{doc} gives --config.{key}={value}, another document "
                  f"--config.{key}={runnable[key]}: run them separately (extend this test).")
    runnable[key] = value
  assert runnable, "no runnable documented flag found"
  args = [f"--config.{k}={v}" for k, v in sorted(runnable.items())]
  env = proc_lib.env(num_devices=2)
  workdir = tmp_path / "workdir"
  run = subprocess.run([sys.executable, str(REPO / "train.py"), f"--workdir={workdir}",
                        *FAST_FLAGS, *args], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
  assert run.returncode == 0, (f"train.py {' '.join(args)} exited {run.returncode}\n"
                               f"{run.stdout[-2000:]}\n{run.stderr[-4000:]}")
  assert "step 2/2" in run.stdout, run.stdout[-2000:]
  saved = json.loads((workdir / "config.json").read_text())
  for key, value in runnable.items():  # the run used the documented values
    want = _get(_parse(TINY, f"--config.{key}={value}"), key)
    assert _get(saved, key) == json.loads(json.dumps(want)), (key, _get(saved, key), value)


def test_official_input_pipeline_defaults_are_the_measured_ones():
  """benchmarks/README.md measured worker processes slower and recommends these values."""
  text = (REPO / "benchmarks" / "README.md").read_text()
  recommended = dict(re.findall(r"`(?:data\.)?(worker_count|read_threads|prefetch)=(\d+)`", text))
  assert recommended == {"worker_count": "0", "read_threads": "1", "prefetch": "2"}, recommended
  for config_file in ("configs/coco_panoptic.py:r50", "configs/coco_instance.py:r50",
                      "configs/ade20k_semantic.py:r50", "configs/cityscapes_semantic.py:r50",
                      "configs/cityscapes_panoptic.py:r50"):
    data = _parse(config_file).data
    for key, value in recommended.items():
      assert data[key] == int(value), (config_file, key, data[key])


def test_notebook_states_no_stale_figures():
  """The notebook's text states no metric (the README's figures are dated and re-measured) and
  no step count but the one its own code sets (train.py's run is printed from the config)."""
  cells = json.loads((REPO / "colab" / "quickstart.ipynb").read_text())["cells"]
  code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
  own_steps = set(re.findall(r"config\.optim\.max_steps = (\d+)", code))
  assert own_steps, "the notebook no longer sets config.optim.max_steps: update this test"
  for cell in cells:
    if cell["cell_type"] != "markdown":
      continue
    text = "".join(cell["source"])
    figures = re.findall(r"\b(?:PQ|SQ|RQ|mIoU|AP\w*)\b\s*[~=:≈]?\s*~?\d[\d.]*", text)
    assert not figures, f"colab/quickstart.ipynb states {figures}: compute them in a code cell"
    steps = set(re.findall(r"\b(\d+) steps", text)) | set(re.findall(r"checkpoints/(\d+)", text))
    assert steps <= own_steps, (
        f"colab/quickstart.ipynb names {sorted(steps - own_steps)} steps, its code runs "
        f"{sorted(own_steps)}: print train.py's from the config")
