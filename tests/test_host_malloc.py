"""m2f_jax.host_malloc: when the entry points restart with the CPU malloc settings."""

import os
import subprocess
import sys

from m2f_jax import host_malloc


def test_cpu_runs_get_the_settings_once(monkeypatch):
  monkeypatch.setattr(host_malloc, "_accelerator_plugin_installed", lambda: False)
  env = host_malloc.cpu_malloc_environment({"PATH": "/bin"})
  assert env is not None and env["PATH"] == "/bin"
  for name, value in host_malloc.CPU_MALLOC_SETTINGS.items():
    assert env[name] == value
  assert host_malloc.cpu_malloc_environment(env) is None  # already restarted: no loop


def test_no_restart_for_accelerators_or_user_settings(monkeypatch):
  monkeypatch.setattr(host_malloc, "_accelerator_plugin_installed", lambda: True)
  assert host_malloc.cpu_malloc_environment({}) is None  # a GPU/TPU plugin is installed
  assert host_malloc.cpu_malloc_environment({"JAX_PLATFORMS": "cpu"}) is not None
  monkeypatch.setattr(host_malloc, "_accelerator_plugin_installed", lambda: False)
  assert host_malloc.cpu_malloc_environment({"JAX_PLATFORMS": "cuda,cpu"}) is None
  assert host_malloc.cpu_malloc_environment({"MALLOC_ARENA_MAX": "4"}) is None
  assert host_malloc.cpu_malloc_environment({"M2F_HOST_MALLOC": "default"}) is None
  assert host_malloc.describe({}) == "glibc defaults"
  assert host_malloc.describe({"MALLOC_ARENA_MAX": "1"}) == "MALLOC_ARENA_MAX=1"


def test_restart_reexecutes_the_same_command_with_the_settings(tmp_path):
  script = tmp_path / "entry.py"
  script.write_text(
      "import os, sys\n"
      "from m2f_jax import host_malloc\n"
      "host_malloc.restart_with_cpu_malloc_settings()\n"
      "print(sys.argv[1:], os.environ.get('MALLOC_ARENA_MAX'), host_malloc.describe())\n")
  env = {k: v for k, v in os.environ.items()
         if k not in host_malloc.CPU_MALLOC_SETTINGS and k != "M2F_HOST_MALLOC"}
  env["JAX_PLATFORMS"] = "cpu"
  out = subprocess.run([sys.executable, str(script), "--flag=1"], env=env, check=True,
                       capture_output=True, text=True).stdout
  if host_malloc.cpu_malloc_environment(env) is None:  # not glibc: nothing to do
    assert "glibc defaults" in out
  else:
    assert out.startswith("['--flag=1'] 1 MALLOC_MMAP_MAX_=0"), out
