"""Runs colab/quickstart.ipynb headless on the CPU, in a kernel of this Python (nbclient).

The notebook trains the tiny model 100 steps, saves and reloads it, segments a validation image
and displays the panoptic overlay; the test checks that every cell runs and that the overlay
image is in the output. It also checks that the committed notebook has no outputs.
"""

import base64
import io
import json
import os
import pathlib
import sys

import nbformat
import numpy as np
import PIL.Image

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "colab" / "quickstart.ipynb"
KERNEL = "m2f_jax_test"
CELL_TIMEOUT_S = 240


def _kernel_manager(kernel_dir: pathlib.Path):
  """A kernel manager that starts `sys.executable -m ipykernel_launcher` (this venv)."""
  from jupyter_client.kernelspec import KernelSpecManager  # pylint: disable=g-import-not-at-top
  from jupyter_client.manager import KernelManager  # pylint: disable=g-import-not-at-top
  spec = kernel_dir / KERNEL
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
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


def test_quickstart_runs(tmp_path, monkeypatch):
  from nbclient import NotebookClient  # pylint: disable=g-import-not-at-top
  # The kernel inherits this environment: CPU only, the package importable from the
  # checkout (so the install cell skips pip), the configs read from the checkout.
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("M2F_JAX_SOURCE", str(REPO))
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  workdir = tmp_path / "run"
  workdir.mkdir()
  client = NotebookClient(nb, km=_kernel_manager(tmp_path / "kernels"),
                          timeout=CELL_TIMEOUT_S, allow_errors=False,
                          resources={"metadata": {"path": str(workdir)}})
  client.execute()  # raises CellExecutionError naming the failing cell

  code = [c for c in nb.cells if c.cell_type == "code"]
  text = "".join(o.get("text", "") for c in code for o in c.outputs if o.output_type == "stream")
  assert f"repository: {REPO}" in text
  assert "step 100/100" in text
  assert "training checkpoint holds the same weights: True" in text
  assert (workdir / "m2f_quickstart" / "model" / "config.json").is_file()
  assert (workdir / "m2f_quickstart" / "checkpoints" / "100").is_dir()

  images = [o for c in code for o in _outputs(c, "image/png")]
  assert len(images) == 1, "the overlay is the notebook's one image output"
  overlay = PIL.Image.open(io.BytesIO(base64.b64decode(images[0]["data"]["image/png"])))
  # Prediction and ground truth of a 64x64 image, both enlarged 4x, with an 8 px gap.
  assert overlay.size == (2 * 256 + 8, 256) and overlay.mode == "RGB"
  pixels = np.asarray(overlay)
  assert pixels[:, :256].std() > 0 and pixels[:, -256:].std() > 0

