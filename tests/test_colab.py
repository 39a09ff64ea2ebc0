"""Runs colab/quickstart.ipynb headless on the CPU (nbclient), install cell included.

As a Colab user runs it: the kernel is a fresh virtual environment in which `m2f_jax` does
not import, and `M2F_JAX_SOURCE` is a `file://` git URL, so the install cell clones the
repository and pip-installs it (`m2f_jax[EXTRA] @ file://...`; no extra here: JAX_PLATFORMS=cpu
is set, and the cell reports a CPU runtime). The URL is a git repository of this working tree
(committed or not). The environment sees this venv's installed packages (links to everything in its
site-packages but m2f_jax), so pip finds every dependency installed and needs no network:
`M2F_JAX_PIP_OPTIONS="--no-index --no-build-isolation"` (offline; build with the setuptools
at hand). The notebook then trains the tiny model 100 steps from the installed package, saves
and reloads it, segments a validation image and displays the panoptic overlay; the test checks
that every cell runs, that m2f_jax came from the new installation, and that the overlay image
is in the output. It also checks that the committed notebook has no outputs.
"""

import base64
import io
import json
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import nbformat
import numpy as np
import PIL.Image
import pytest

from tests import proc

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "colab" / "quickstart.ipynb"
KERNEL = "m2f_jax_test"
CELL_TIMEOUT_S = 240


def _fresh_environment(root: pathlib.Path) -> pathlib.Path:
  """A virtual environment that sees this one's packages except m2f_jax; returns its python."""
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
  python = root / "bin" / "python"
  site = pathlib.Path(subprocess.run(
      [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
      check=True, capture_output=True, text=True).stdout.strip())
  ours = pathlib.Path(sysconfig.get_paths()["purelib"])
  for entry in ours.iterdir():  # pip, ipykernel, jax, ...: links; no (editable) m2f_jax
    if entry.name.startswith(("m2f_jax", "__editable__")) or entry.name == "__pycache__":
      continue
    (site / entry.name).symlink_to(entry)
  return python


def _git_url_of_working_tree(dest: pathlib.Path) -> str:
  """A `file://` git URL of a repository holding this working tree's files, as they are."""
  files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, check=True, capture_output=True).stdout.decode().split("\0")
  for name in filter(None, files):
    if (REPO / name).is_file():  # not deleted
      (dest / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(REPO / name, dest / name)
  git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
  for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "working tree"]):
    subprocess.run(git + args, cwd=dest, check=True)
  return dest.as_uri()


def _kernel_manager(kernel_dir: pathlib.Path, python: str = sys.executable):
  """A kernel manager that starts `python -m ipykernel_launcher`."""
  from jupyter_client.kernelspec import KernelSpecManager  # pylint: disable=g-import-not-at-top
  from jupyter_client.manager import KernelManager  # pylint: disable=g-import-not-at-top
  spec = kernel_dir / KERNEL
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "m2f_jax test", "language": "python"}))
  return KernelManager(kernel_name=KERNEL,
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)]))


def _outputs(cell, kind: str) -> list:
  return [o for o in cell.get("outputs", []) if kind in o.get("data", {})]


def test_committed_notebook_has_no_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code
  for cell in code:
    assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


@pytest.mark.slow  # an install and 100 steps of the tiny model: ~85 s alone
def test_quickstart_installs_and_runs(tmp_path, monkeypatch):
  from nbclient import NotebookClient  # pylint: disable=g-import-not-at-top
  python = _fresh_environment(tmp_path / "venv")
  source = tmp_path / "source"
  source.mkdir()
  url = _git_url_of_working_tree(source)
  # The kernel inherits this environment: CPU only, m2f_jax importable from nowhere (so the
  # install cell clones and installs it), pip offline.
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  # XLA as a user's process has it (the session's cache folder stays: it only saves compiles).
  monkeypatch.setenv("XLA_FLAGS", proc.env(fast_compile=False)["XLA_FLAGS"])
  monkeypatch.setenv("M2F_JAX_SOURCE", url)
  monkeypatch.setenv("M2F_JAX_PIP_OPTIONS", "--no-index --no-build-isolation")
  monkeypatch.delenv("PYTHONPATH", raising=False)
  nb = nbformat.read(NOTEBOOK, as_version=4)
  workdir = tmp_path / "run"
  workdir.mkdir()
  client = NotebookClient(nb, km=_kernel_manager(tmp_path / "kernels", python),
                          timeout=CELL_TIMEOUT_S, allow_errors=False,
                          resources={"metadata": {"path": str(workdir)}})
  try:
    client.execute()  # raises CellExecutionError naming the failing cell
  finally:  # a kernel manager we made is ours to stop (nbclient stops only its own)
    client.km.shutdown_kernel(now=True)

  code = [c for c in nb.cells if c.cell_type == "code"]
  text = "".join(o.get("text", "") for c in code for o in c.outputs if o.output_type == "stream")
  clone = workdir / "m2f_jax_repo"  # where the install cell clones M2F_JAX_SOURCE
  assert f"repository: {clone}" in text, text[:2000]
  # The first cell says what it found (JAX_PLATFORMS=cpu: the CPU, installed without an extra).
  assert "this runtime has a CPU" in text and "runs on the CPU" in text, text[:2000]
  assert f"pip install m2f_jax @ {clone.as_uri()}" in text, text[:2000]
  assert (clone / ".git").is_dir() and (clone / "configs" / "tiny.py").is_file()
  installed = pathlib.Path(text.split("m2f_jax imported from: ")[1].split()[0])
  assert installed.parent.parent.parent.parent == tmp_path / "venv", installed  # lib/pythonX/site
  assert "step 100/100" in text
  assert "training checkpoint holds the same weights: True" in text
  assert (workdir / "m2f_quickstart" / "model" / "config.json").is_file()
  assert (workdir / "m2f_quickstart" / "checkpoints" / "100").is_dir()

  images = [o for c in code for o in _outputs(c, "image/png")]
  assert len(images) == 1, "the overlay is the notebook's one image output"
  overlay = PIL.Image.open(io.BytesIO(base64.b64decode(images[0]["data"]["image/png"])))
  # Prediction and ground truth of one validation image, both enlarged 4x, with an 8 px gap.
  width = (overlay.width - 8) // 2
  assert overlay.width == 2 * width + 8 and width % 4 == 0 and overlay.height % 4 == 0, overlay.size
  assert overlay.mode == "RGB"
  pixels = np.asarray(overlay)
  assert pixels[:, :width].std() > 0 and pixels[:, -width:].std() > 0

