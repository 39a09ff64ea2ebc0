"""Every command, flag and install extra the README (and notebook, docs, configs) names works.

`--config.X=Y` flags are found in README.md, colab/quickstart.ipynb (every cell), the files the
README's details moved to (`MOVED_FROM_README`) and the docstrings of configs/*.py. Each is
parsed as train.py parses it (absl + ml_collections, locked config) with the config its command
names (`--config configs/X.py[:arg]`; train.py's default, the tiny config, when none; every
official config for the placeholder `configs/X.py`): the key must exist and the value must
parse. The flags that need no files of the user's (paths, datasets on disk) then run on the
tiny config's small test model (configs/tiny.py:slim), all in one train.py run of 2 steps on 2
CPU devices.

The README's commands: its first lines are the two commands of a fresh machine, the test one
exactly what .ci/run runs; every `python PROGRAM --flag` it shows names a program of this
repository and a flag that program's --help lists; its contents list links to real headings,
early. Install extras: every `.[extra]` the README names is declared in pyproject.toml; the
accelerator extras are the JAX project's own (`jax[cuda12]`, ...), which the installed jax
declares; and each resolves with pip against the package registry (a slow test, see
`test_accelerator_extras_resolve_with_pip`).
Also: the official input-pipeline defaults are the ones benchmarks/README.md measured best, and
the notebook states no metric figure (figures live, dated, in the README).
"""

import concurrent.futures
import glob
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import tomllib

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
_CONFIG_FILE = re.compile(r"--config(?:\s+|=)(configs/\w+\.py(?::\w+)?)")
# Where the README's details, lab notes and probes went (issue #29): their commands are checked
# as the README's. (docs/faults.md is not: it shows mistyped flags on purpose.)
MOVED_FROM_README = ("docs/internals.md", "docs/synthetic_task.md", "experiments/README.md")
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
  for name in MOVED_FROM_README:
    texts[name] = (REPO / name).read_text()
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


# ------------------------------------------------------------------------------------------
# The README's commands, contents and install extras
# ------------------------------------------------------------------------------------------

def _readme() -> str:
  return (REPO / "README.md").read_text()


def test_readme_starts_with_the_two_commands_and_ci_runs_the_test_one():
  """Line 1 the title, then one code block: the main job's command, then the tests' command,
  whose install and pytest invocation are exactly .ci/run's."""
  lines = _readme().splitlines()
  assert lines[0] == "# m2f_jax" and lines[2] == "```bash" and lines[7] == "```", lines[:8]
  main_job, tests = lines[4], lines[6]
  assert lines[3].startswith("# ") and lines[5].startswith("# "), lines[3:6]
  assert main_job == ("python3 -m venv .venv && .venv/bin/pip install -e . && "
                      ".venv/bin/python train.py"), main_job
  install, pytest_args = re.fullmatch(
      r"python3 -m venv \.venv && \.venv/bin/pip install -e '(\.\[[\w,]+\])' && "
      r"\.venv/bin/python -m pytest(.*)", tests).groups()
  ci = (REPO / ".ci" / "run").read_text()
  assert f".venv-ci/bin/pip install -q -e '{install}'" in ci, (install, ci)
  ci_pytest = re.findall(r"^\.venv-ci/bin/python -m pytest(.*)$", ci, re.M)
  assert ci_pytest == [pytest_args], (ci_pytest, pytest_args)


def _anchor(heading: str) -> str:
  """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_contents_link_to_its_headings_early():
  """A first-time reader finds install, quick start, the model-zoo evaluation, own data and
  video in the contents list near the top; every `(#anchor)` link names a real heading."""
  text = _readme()
  anchors = {_anchor(h) for h in re.findall(r"^#{2,3} (.+)$", text, re.M)}
  links = re.findall(r"\]\(#([\w-]+)\)", text)
  assert links and not set(links) - anchors, sorted(set(links) - anchors)
  lines = text.splitlines()
  start = lines.index("## Contents")
  end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("## "))
  assert end <= 120, f"the contents end at line {end}: keep them within the first 120 lines"
  contents = set(re.findall(r"\]\(#([\w-]+)\)", "\n".join(lines[start:end])))
  assert {"install", "quick-start", "evaluate-a-model-zoo-checkpoint", "train",
          "train-on-your-own-data", "video"} <= contents, contents
  assert set(contents) <= anchors


# `python PROGRAM args`: train.py / eval.py / a script of this repository, or `-m MODULE`.
_COMMAND = re.compile(r"(?:^|[\s/'\"(])python3?(?:\.\d+)?\s+(-m\s+[\w.]+|[\w/.-]+\.py)"
                      r"((?:[ \t]+[^\s'\"`&;|]+)*)")
_OURS = re.compile(r"^(train\.py|eval\.py|(benchmarks|experiments)/\w+\.py|-m m2f_jax(\.\w+)*)$")
_DASH_FLAG = re.compile(r"(?<![\w-])--([A-Za-z][\w-]*)")


def _commands(text: str) -> list[tuple[str, str]]:
  """(program, arguments) of every `python PROGRAM ...` in code blocks and inline code."""
  spans = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
  inline = re.sub(r"```[a-z]*\n.*?```", "", text, flags=re.S)
  spans += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", inline)]
  found = []
  for span in spans:
    span = span.replace("\\\n", " ")  # continued lines
    for line in span.splitlines():
      line = re.sub(r"(^|\s)#.*", "", line)  # comments
      for program, args in _COMMAND.findall(line):
        found.append((" ".join(program.split()), args))
  return found


def _help_flags(program: str) -> set[str]:
  """The flag names `python PROGRAM --help` lists (absl: the program's own flags)."""
  argv = program.split() if program.startswith("-m ") else [str(REPO / program)]
  run = subprocess.run([sys.executable, *argv, "--help"], cwd=REPO, capture_output=True,
                       text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  out = run.stdout + run.stderr
  assert "--" in out, f"python {program} --help printed no flags:\n{out[-2000:]}"
  return set(re.findall(r"--(?:\[no\])?([A-Za-z][\w-]*)", out))


def test_readme_commands_are_this_repositorys_programs_with_real_flags():
  """Every `python PROGRAM --flag` of the README: the program exists (a file, or a module that
  imports), and every flag it is shown with is one its --help lists; every flag named on its
  own (`--cpu_malloc`) is one of those programs' flags."""
  text = _readme()
  commands = [(p, a) for p, a in _commands(text) if _OURS.match(p)]
  programs = {p for p, _ in commands}
  assert {"train.py", "eval.py", "-m m2f_jax.convert", "-m m2f_jax.predict",
          "-m m2f_jax.data.prepare"} <= programs, programs
  for program in programs:
    if program.startswith("-m "):
      assert importlib.util.find_spec(program[3:]) is not None, f"README: python {program}"
    else:
      assert (REPO / program).is_file(), f"README: python {program}: no such file"
  shown = {p: set() for p in programs}
  for program, args in commands:
    shown[program] |= set(_DASH_FLAG.findall(args))  # `--config.X=Y`: "config" (see above)
  with_flags = sorted(p for p in programs if shown[p])
  with concurrent.futures.ThreadPoolExecutor(4) as pool:  # subprocesses: ~1-2 s each
    helps = dict(zip(with_flags, pool.map(_help_flags, with_flags)))
  for program in with_flags:
    assert shown[program] <= helps[program], (
        f"README shows python {program} with {sorted(shown[program] - helps[program])}, "
        f"which its --help does not list")
  inline = re.sub(r"```[a-z]*\n.*?```", "", text, flags=re.S)
  alone = {f for span in re.findall(r"`(--[A-Za-z][^`]*)`", inline)
           for f in _DASH_FLAG.findall(span) if f != "config"}
  known = set().union(*helps.values())
  assert alone and alone <= known, sorted(alone - known)


def test_readme_checkpoint_steps_are_the_last_steps_of_their_runs():
  """`workdir/NAME/checkpoints/STEP` in the README is the last step (the one always saved) of
  the run that writes NAME: the main job's, or the own-data command's."""
  runs = {"tiny": "configs/tiny.py", "mine": "configs/custom.py:tiny"}
  named = re.findall(r"workdir/(\w+)/checkpoints/(\d+)", _readme())
  assert {name for name, _ in named} == set(runs), named
  for name, step in named:
    max_steps = _parse(runs[name]).optim.max_steps
    assert int(step) == max_steps, (f"README names workdir/{name}/checkpoints/{step}; "
                                    f"{runs[name]} runs {max_steps} steps")


_ACCELERATOR_EXTRAS = ("cuda12", "cuda13", "tpu")


def _extras() -> dict[str, list[str]]:
  with open(REPO / "pyproject.toml", "rb") as f:
    return tomllib.load(f)["project"]["optional-dependencies"]


def test_readme_install_extras_are_declared_and_are_jaxs_own():
  """Every `.[a,b]` the README names is declared in pyproject.toml; cuda12, cuda13 and tpu are
  `jax[<the same name>]` with the lower bound of the jax dependency, and the installed jax
  declares each of those extras (with jax's plugin or libtpu pinned to its own version)."""
  named = set()
  for group in re.findall(r"\.\[([\w,]+)\]", _readme()):
    named |= set(group.split(","))
  extras = _extras()
  assert set(_ACCELERATOR_EXTRAS) | {"test", "reference"} <= named, named
  assert named <= set(extras), sorted(named - set(extras))
  with open(REPO / "pyproject.toml", "rb") as f:
    jax_dep = next(d for d in tomllib.load(f)["project"]["dependencies"] if d.startswith("jax"))
  bound = jax_dep[len("jax"):]
  jax_meta = importlib.metadata.metadata("jax")
  for name in _ACCELERATOR_EXTRAS:
    assert extras[name] == [f"jax[{name}]{bound}"], (name, extras[name], jax_dep)
    assert name in jax_meta.get_all("Provides-Extra"), (name, jax_meta.get_all("Provides-Extra"))
    pinned = [r for r in jax_meta.get_all("Requires-Dist") if f'extra == "{name}"' in r]
    assert any(r.startswith(("jax-cuda", "libtpu")) for r in pinned), (name, pinned)


def _registry_reachable() -> str | None:
  """None if pip reaches the package registry, else why not."""
  run = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "jax", "--timeout",
                        "15", "--retries", "1"], capture_output=True, text=True, timeout=120)
  return None if run.returncode == 0 else (run.stdout + run.stderr).strip()[-300:]


@pytest.mark.slow  # network: ~3 MB from the registry, ~5 s per extra
@pytest.mark.parametrize("extra,wanted", [("cuda12", "jax-cuda12-plugin"),
                                          ("cuda13", "jax-cuda13-plugin"),
                                          ("tpu", "libtpu")])
def test_accelerator_extras_resolve_with_pip(extra, wanted, tmp_path):
  """`pip install --dry-run -e '.[EXTRA]'`, as the README's install commands, resolves.

  A plain dry run downloads every wheel it resolves to read its dependencies: 3.2 GB for
  cuda12 (NVIDIA's CUDA wheels), measured 2026-12-08. `--use-feature=fast-deps` reads only
  each wheel's metadata with HTTP range requests: the same resolution for ~3 MB (index pages
  included) in ~5 s. It needs only the package registry (CI's one network access); without
  it the test skips saying so.
  """
  why = _registry_reachable()
  if why:
    pytest.skip(f"the package registry is not reachable, so the extras cannot be resolved: {why}")
  report = tmp_path / "report.json"
  run = subprocess.run(
      [sys.executable, "-m", "pip", "install", "--dry-run", "--use-feature=fast-deps", "-q",
       "--timeout", "60", "--report", str(report), "-e", f"{REPO}[{extra}]"],
      capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, f"pip could not resolve .[{extra}]:\n{run.stderr[-3000:]}"
  install = {i["metadata"]["name"]: i["metadata"]["version"]
             for i in json.loads(report.read_text())["install"]}
  assert wanted in install, (extra, install)
  if wanted.startswith("jax-"):  # the plugin of the jax that the install leaves in place
    jax_version = install.get("jax", importlib.metadata.version("jax"))
    assert install[wanted] == jax_version, (install, jax_version)


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
