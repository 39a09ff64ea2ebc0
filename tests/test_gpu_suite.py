"""benchmarks/gpu_suite.py: imports without the data stack, and runs end to end (--smoke).

The GPU machines have no grain, tensorflow-datasets, array_record or ml_collections: the
subprocesses here make those imports fail (None in sys.modules) before loading the suite.
"""

import copy
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SUITE = REPO / "benchmarks" / "gpu_suite.py"
DATA_STACK = ("grain", "tensorflow_datasets", "array_record", "ml_collections")


def _run(code: str, *, blocked=DATA_STACK, timeout: int = 300) -> subprocess.CompletedProcess:
  prelude = f"import sys\nfor _m in {tuple(blocked)!r}:\n  sys.modules[_m] = None\n"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = subprocess.run([sys.executable, "-c", prelude + code], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=timeout)
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
  return run


def _run_suite(*argv: str, blocked=DATA_STACK, timeout: int = 300) -> subprocess.CompletedProcess:
  return _run(f"import runpy\nsys.argv = {['gpu_suite.py', *argv]!r}\n"
              f"runpy.run_path({str(SUITE)!r}, run_name='__main__')\n",
              blocked=blocked, timeout=timeout)


def _table(markdown: str) -> list[dict[str, str]]:
  lines = [l for l in markdown.splitlines() if l.startswith("|")]
  header = [c.strip() for c in lines[0].strip("|").split("|")]
  return [dict(zip(header, (c.strip() for c in l.strip("|").split("|")))) for l in lines[2:]]


def test_suite_imports_without_the_data_stack_or_ml_collections():
  run = _run(
      "import importlib.util\n"
      f"spec = importlib.util.spec_from_file_location('gpu_suite', {str(SUITE)!r})\n"
      "suite = importlib.util.module_from_spec(spec)\n"
      "spec.loader.exec_module(suite)\n"
      "assert suite.CONFIG_DICT == 'stand-in', suite.CONFIG_DICT\n"
      "import m2f_jax.training.train_step, m2f_jax.config_lib, m2f_jax.criterion\n"
      f"loaded = [m for m in {DATA_STACK[:3]!r} if sys.modules.get(m) is not None]\n"
      "assert not loaded, loaded\n"
      "print('ok', suite.parse_args(['--smoke']).train_dtypes)\n", timeout=180)
  assert "ok ['float32']" in run.stdout


def test_config_dict_stand_in_builds_the_configs_the_suite_uses():
  spec = importlib.util.spec_from_file_location("bench_common_test",
                                                REPO / "benchmarks" / "_common.py")
  common = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(common)
  cfg = common._ConfigDict(dict(a=1, nested=dict(b=2),  # pylint: disable=protected-access
                                ref=common._FieldReference(None, field_type=int)))  # pylint: disable=protected-access
  cfg.update(a=3, c=4)
  cfg.nested.b = 5
  clone = copy.deepcopy(cfg)
  clone.nested.b = 6
  assert (cfg.a, cfg.c, cfg.nested.b, cfg.ref, cfg.get("d", 7)) == (3, 4, 5, None, 7)
  assert clone.nested.b == 6 and cfg.to_dict() == {"a": 3, "nested": {"b": 5}, "ref": None,
                                                    "c": 4}
  with pytest.raises(AttributeError, match="no field 'missing'"):
    _ = cfg.missing


def test_suite_skips_pytorch_rows_when_torch_is_missing():
  run = _run_suite("--smoke", "--sections", "matching", blocked=DATA_STACK + ("torch",))
  assert "PyTorch rows skipped: torch is not installed" in run.stdout, run.stdout
  rows = _table(run.stdout)
  assert [r["framework"] for r in rows] == ["scipy (host, loop)", "jax (device)"], run.stdout
  assert rows[1]["check"] == "totals = scipy's"


@pytest.mark.slow
def test_smoke_runs_every_section_and_writes_the_table(tmp_path):
  out = tmp_path / "suite.md"
  run = _run_suite("--smoke", "--out", str(out), timeout=1200)
  rows = _table(out.read_text())
  assert _table(run.stdout) == rows
  torch_ok = "PyTorch rows skipped" not in run.stdout
  whats = {(r["what"].split(" (")[0], r["framework"], r["dtype"]) for r in rows}
  expected = {("Hungarian matching", "jax (device)", "float32"),
              ("train step R50", "jax", "float32")}
  for name in ("R50", "Swin-L"):
    for dtype in ("float32", "bfloat16"):
      expected.add((f"forward {name}", "jax", dtype))
      if torch_ok:
        expected.add((f"forward {name}", "pytorch", dtype))
  for dtype in ("float32", "bfloat16"):
    expected.add(("eval R50", "jax", dtype))
  expected |= {(f"eval compiles R50: {what}", "jax", "float32")
               for what in ("one padded size", "2 sizes ahead of time",
                            "50 images, pad_to=image", "50 images, pad_to=buckets:2")}
  assert expected <= whats, sorted(whats)
  for r in rows:
    if r["what"].startswith("eval compiles"):
      continue  # test_eval_compiles_rows (compile rows have no median ms)
    assert float(r["median ms"]) > 0 and float(r["images/s"]) > 0, r
    if r["framework"] == "jax" and r["what"].startswith(("forward", "train")):
      assert float(r["compile s"]) > 0 and float(r["GFLOP"]) > 0, r
      if torch_ok:
        assert r["speed-up"].endswith("x"), r
    if torch_ok and r["framework"] == "jax" and r["what"].startswith("forward") and \
        r["dtype"] == "float32":  # same weights, same function
      assert float(r["check"].split()[-1]) < 1e-3, r


@pytest.mark.slow  # ~30 s; the smoke run above makes the same rows among the others
def test_eval_compiles_rows():
  """The eval-compile rows (benchmarks/eval_compiles.py) without the data stack: sizes of
  COCO-like images, compile seconds per size, the pool, the projections."""
  rows = _table(_run_suite("--smoke", "--sections", "eval_compiles").stdout)
  by_what = {r["what"]: r for r in rows}
  one = by_what["eval compiles R50: one padded size"]
  forward_s, post_s = (float(x) for x in one["compile s"].split(" + "))
  assert forward_s > 0 and post_s > 0 and float(one["median ms"]) > 0, one
  assert one["check"].startswith("from the cache"), one
  pool = by_what["eval compiles R50: 2 sizes ahead of time"]
  assert pool["speed-up"].endswith("x") and "threads" in pool["check"], pool
  image = by_what["eval compiles R50: 50 images, pad_to=image"]
  coarse = by_what["eval compiles R50: 50 images, pad_to=buckets:2"]
  assert int(coarse["size"].split()[0]) == 2 < int(image["size"].split()[0]), (image, coarse)
  assert image["check"].startswith("forward "), image
