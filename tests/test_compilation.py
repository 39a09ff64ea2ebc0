"""m2f_jax/compilation.py: where eval.py's compilation cache goes, counting compiles, and a
second eval.py run in the same cache compiling nothing.

The cache's folder is chosen in subprocesses (the choice changes the process's JAX config;
this session's cache, tests/conftest.py's, must stay as it is).
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from m2f_jax import compilation
from tests import proc as proc_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
CACHE_VARS = ("JAX_COMPILATION_CACHE_DIR", "JAX_ENABLE_COMPILATION_CACHE",
              "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "XDG_CACHE_HOME",
              compilation.CACHE_ENV)


def _user_env(tmp_path, **extra) -> dict:
  """A user's environment: no cache settings of the test session's, HOME in tmp_path."""
  env = {k: v for k, v in proc_lib.env().items() if k not in CACHE_VARS}
  env.update(HOME=str(tmp_path / "home"), **extra)
  return env


_CHOICE = """
import json, sys, jax
from m2f_jax import compilation
line = compilation.configure_cache(sys.argv[1] or None)
print(json.dumps([line, jax.config.jax_compilation_cache_dir,
                  jax.config.jax_enable_compilation_cache,
                  jax.config.jax_persistent_cache_min_compile_time_secs]))
"""


def _choice(tmp_path, setting: str = "", **env) -> list:
  run = subprocess.run([sys.executable, "-c", _CHOICE, setting], cwd=REPO,
                       env=_user_env(tmp_path, **env), capture_output=True, text=True,
                       timeout=120)
  assert run.returncode == 0, run.stderr[-3000:]
  return json.loads(run.stdout.splitlines()[-1])


def test_cache_folder_choice(tmp_path):
  home = tmp_path / "home"
  default = str(home / ".cache" / "m2f_jax" / "jax_cache")
  line, folder, on, min_s = _choice(tmp_path)  # nothing set: the user's cache folder
  assert [folder, on, min_s] == [default, True, compilation.MIN_COMPILE_S], line
  assert "the default" in line and os.path.isdir(default)
  xdg = str(tmp_path / "xdg")
  assert _choice(tmp_path, XDG_CACHE_HOME=xdg)[1] == os.path.join(xdg, "m2f_jax", "jax_cache")
  # JAX's own setting (the test suite's, a user's) is left exactly as it is.
  given = str(tmp_path / "given")
  line, folder, on, min_s = _choice(tmp_path, JAX_COMPILATION_CACHE_DIR=given,
                                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  assert [folder, on, min_s] == [given, True, 0.5] and "left as set" in line, line
  assert not os.path.exists(given)  # not even created: JAX does that when it writes
  assert _choice(tmp_path, JAX_ENABLE_COMPILATION_CACHE="false")[1:3] == [None, False]
  # The environment variable and the flag win over JAX's setting; "none" turns it off.
  mine = str(tmp_path / "mine")
  assert _choice(tmp_path, JAX_COMPILATION_CACHE_DIR=given,
                 M2F_JAX_COMPILATION_CACHE=mine)[1] == mine
  assert _choice(tmp_path, str(tmp_path / "flag"), M2F_JAX_COMPILATION_CACHE=mine)[1] == str(
      tmp_path / "flag")
  line, _, on, _ = _choice(tmp_path, "none", JAX_COMPILATION_CACHE_DIR=given)
  assert not on and "off (--compilation_cache)" in line, line
  assert not _choice(tmp_path, M2F_JAX_COMPILATION_CACHE="none")[2]


def test_counter_counts_compiles_and_threads():
  fn = jax.jit(lambda x: jnp.sin(x) * 2)
  with compilation.CompileCounter() as counter:
    fn(np.ones(3, np.float32))
    fn(np.ones(3, np.float32))  # the in-memory cache: no compile
    fn(np.ones(4, np.float32))
  assert counter.compiles + counter.cache_hits == 2 == counter.thread_programs()
  assert counter.thread_seconds() > 0 and counter.thread_programs(ident=-1) == 0


def test_second_eval_in_the_same_cache_compiles_nothing(tmp_path):
  """eval.py twice on a slim model in a user's environment (no cache settings): the first
  run fills ~/.cache/m2f_jax/jax_cache (here under XDG_CACHE_HOME), the second compiles
  nothing, reads every program back and reports the same metrics."""
  from m2f_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from m2f_jax import config_lib  # pylint: disable=g-import-not-at-top
  from m2f_jax.models.mask2former import build_model  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config_file(f"{REPO / 'configs' / 'tiny.py'}:slim")
  # compile_ahead: its default (None) compiles ahead on accelerators only; this test's
  # "nothing compiles in the loop" needs it on the CPU too.
  config.eval.update(object_mask_threshold=0.0, batch_size=2, compile_ahead=True)
  model = build_model(config.model)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), np.zeros((1, 64, 64, 3), np.float32))
  model_dir = checkpoint.save_model(str(tmp_path / "model"), config, variables)
  env = _user_env(tmp_path, XDG_CACHE_HOME=str(tmp_path / "xdg"))
  reports = []
  for run_index in range(2):
    workdir = tmp_path / f"eval{run_index}"
    run = proc_lib.finish(proc_lib.start("eval.py", f"--checkpoint={model_dir}",
                                         f"--workdir={workdir}", "--max_images=4",
                                         environ=env))
    cache = tmp_path / "xdg" / "m2f_jax" / "jax_cache"
    assert f"compilation cache: {cache} (the default" in run.stdout, run.stdout
    assert "images/s | compiles:" in run.stdout, run.stdout
    reports.append(json.loads((workdir / "eval_results.json").read_text()))
  first, second = (r["timing"] for r in reports)
  assert first["compiles"] > 0 and first["compile_cache_hits"] == 0, first
  assert second["compiles"] == 0 and second["compile_cache_hits"] >= first["compiles"], second
  assert first["loop_compiles"] == second["loop_compiles"] == 0  # all compiled ahead
  assert any(cache.iterdir())
  for key in ("sem_seg", "panoptic_seg", "segm"):
    assert json.dumps(reports[0][key], sort_keys=True) == json.dumps(reports[1][key],
                                                                     sort_keys=True)
