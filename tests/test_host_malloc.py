"""m2f_jax.host_malloc and the entry points' opt-in `--cpu_malloc`."""

import os
import pathlib
import subprocess
import sys

import pytest

from m2f_jax import host_malloc

REPO = pathlib.Path(__file__).resolve().parents[1]
# Runs an entry point as __main__ with os.execve replaced by a report (and exit 3), and with
# train.py's training loop replaced by a report, so that only the start of main() runs.
_PROBE = """
import os, runpy, sys, types
def execve(path, args, env):
  print("EXECVE", args[1:], env.get("MALLOC_ARENA_MAX"), flush=True)
  sys.exit(3)
os.execve = execve
import m2f_jax.training
loop = types.ModuleType("m2f_jax.training.loop")
loop.train_and_evaluate = lambda config, workdir: print("TRAINING", flush=True)
sys.modules["m2f_jax.training.loop"] = m2f_jax.training.loop = loop
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


def _env(**extra) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in host_malloc.CPU_MALLOC_SETTINGS}
  path = [str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
  return dict(env, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(path), **extra)


def _probe(tmp_path, *args, **env) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", _PROBE, *map(str, args)], cwd=tmp_path,
                        env=_env(**env), capture_output=True, text=True, timeout=120)


def test_cpu_runs_get_the_settings_once(monkeypatch):
  monkeypatch.setattr(host_malloc, "_accelerator_plugin_installed", lambda: False)
  env = host_malloc.cpu_malloc_environment({"PATH": "/bin"})
  if env is None:
    pytest.skip("not Linux with glibc: the settings do not apply")
  assert env["PATH"] == "/bin"
  for name, value in host_malloc.CPU_MALLOC_SETTINGS.items():
    assert env[name] == value
    assert f"{name}={value}" in host_malloc.environment_recipe()
  assert host_malloc.cpu_malloc_environment(env) is None  # already restarted: no loop
  assert host_malloc.cpu_malloc_hint(env) is None
  hint = host_malloc.cpu_malloc_hint({"PATH": "/bin"})
  assert "--cpu_malloc" in hint and host_malloc.environment_recipe() in hint


def test_no_restart_for_accelerators_or_user_settings(monkeypatch):
  monkeypatch.setattr(host_malloc, "_accelerator_plugin_installed", lambda: True)
  assert host_malloc.cpu_malloc_environment({}) is None  # a GPU/TPU plugin is installed
  assert host_malloc.cpu_malloc_hint({}) is None
  monkeypatch.setattr(host_malloc, "_accelerator_plugin_installed", lambda: False)
  assert host_malloc.cpu_malloc_environment({"JAX_PLATFORMS": "cuda,cpu"}) is None
  assert host_malloc.cpu_malloc_environment({"MALLOC_ARENA_MAX": "4"}) is None
  assert host_malloc.describe({}) == "glibc defaults"
  assert host_malloc.describe({"MALLOC_ARENA_MAX": "1"}) == "MALLOC_ARENA_MAX=1"


def test_restart_reexecutes_the_same_command_with_the_settings(tmp_path):
  script = tmp_path / "entry.py"
  script.write_text(
      "import os, sys\n"
      "from m2f_jax import host_malloc\n"
      "host_malloc.restart_with_cpu_malloc_settings()\n"
      "print(sys.argv[1:], os.environ.get('MALLOC_ARENA_MAX'), host_malloc.describe())\n")
  env = _env()
  out = subprocess.run([sys.executable, str(script), "--flag=1"], env=env, check=True,
                       capture_output=True, text=True).stdout
  if host_malloc.cpu_malloc_environment(env) is None:  # not glibc: nothing to do
    assert "glibc defaults" in out
  else:
    assert out.startswith("['--flag=1'] 1 MALLOC_MMAP_MAX_=0"), out


@pytest.mark.parametrize("entry,args", [
    ("train.py", ("--workdir", "wd")),
    ("eval.py", ("--checkpoint", "missing_checkpoint")),
])
def test_entry_points_restart_only_when_asked(tmp_path, entry, args):
  """Without --cpu_malloc nothing re-executes (a hint names the recipe); with it, once."""
  if host_malloc.cpu_malloc_environment(_env()) is None:
    pytest.skip("not Linux with glibc: the settings do not apply")
  plain = _probe(tmp_path, REPO / entry, *args)
  assert "EXECVE" not in plain.stdout, f"{entry} restarted without --cpu_malloc:\n{plain.stdout}"
  assert host_malloc.environment_recipe() in plain.stderr, plain.stderr[-3000:]
  if entry == "train.py":
    assert plain.returncode == 0 and "TRAINING" in plain.stdout, plain.stderr[-3000:]
  else:  # reached main(): the missing checkpoint is reported (a user error: status 2)
    assert plain.returncode == 2 and "missing_checkpoint" in plain.stderr, plain.stderr[-3000:]

  asked = _probe(tmp_path, REPO / entry, *args, "--cpu_malloc")
  assert asked.returncode == 3, f"{entry} --cpu_malloc did not restart:\n{asked.stderr[-3000:]}"
  assert f"EXECVE ['{REPO / entry}', " in asked.stdout and "'--cpu_malloc'] 1" in asked.stdout
  assert host_malloc.environment_recipe() not in asked.stderr  # no hint when asked

  preset = _probe(tmp_path, REPO / entry, *args, "--cpu_malloc",
                  **host_malloc.CPU_MALLOC_SETTINGS)  # after the restart: runs, no loop
  assert "EXECVE" not in preset.stdout and preset.returncode in (0, 2), preset.stderr[-3000:]
