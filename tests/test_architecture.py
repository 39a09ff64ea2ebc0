"""The import structure of m2f_jax: no cycles, and layers import downwards only.

Every `import` statement of every module is read (also those inside functions: a lazy
import is still a dependency), resolved to the m2f_jax module it names, and checked:

- no import cycle among m2f_jax's modules (a package's `__init__` counts as a module; the
  implicit import of a parent package by its submodules does not);
- inference, evaluation, `evaluate`, `predict`, `checkpoint` and `eval.py` reach nothing of
  `m2f_jax.training`, directly or through other modules;
- `m2f_jax.models` reaches nothing of `m2f_jax.convert` (checkpoint formats live there).
"""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = "m2f_jax"


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
  found = {_module_name(p): p for p in (REPO / PACKAGE).rglob("*.py")}
  for script in ("train.py", "eval.py"):
    found[script] = REPO / script
  return found


def _resolve(name: str, modules) -> str | None:
  """The longest prefix of dotted `name` that is one of `modules`."""
  parts = name.split(".")
  for n in range(len(parts), 0, -1):
    candidate = ".".join(parts[:n])
    if candidate in modules:
      return candidate
  return None


def _imports(path: pathlib.Path, modules) -> set[str]:
  """The m2f_jax modules that the file at `path` imports."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # `from a.b import c`: c may be a module (a.b.c) or a name defined in a.b.
      names = [f"{node.module}.{a.name}" for a in node.names]
    for name in names:
      if name.split(".")[0] == PACKAGE:
        target = _resolve(name, modules)
        if target is not None:
          out.add(target)
  return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
  modules = _modules()
  return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _cycles(graph) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, on_stack, stack, out = {}, {}, set(), [], []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def _reachable(graph, start: str) -> dict[str, str]:
  """Every module `start` reaches -> the module that imports it on the way."""
  seen, todo = {}, [start]
  while todo:
    v = todo.pop()
    for w in sorted(graph.get(v, ())):
      if w not in seen and w != start:
        seen[w] = v
        todo.append(w)
  return seen


def _path(via: dict[str, str], start: str, end: str) -> str:
  chain = [end]
  while chain[-1] != start:
    chain.append(via[chain[-1]])
  return " -> ".join(reversed(chain))


def _violations(graph, sources, forbidden_prefix: str) -> list[str]:
  bad = []
  for source in sources:
    via = _reachable(graph, source)
    bad += [_path(via, source, m) for m in sorted(via)
            if m == forbidden_prefix or m.startswith(forbidden_prefix + ".")]
  return bad


def test_the_graph_is_read(graph):
  # Guards the test itself: a parser that found nothing would pass every rule below.
  assert "m2f_jax.training.train_step" in graph["m2f_jax.training.loop"]
  assert "m2f_jax.models.mask2former" in graph["m2f_jax.convert.hf"]
  assert len(graph) > 40


def test_no_import_cycles(graph):
  assert _cycles(graph) == []


def test_cycle_detection_finds_a_planted_cycle(graph):
  planted = {k: set(v) for k, v in graph.items()}
  planted["m2f_jax.ops"].add("m2f_jax.evaluate")
  assert any("m2f_jax.ops" in c and "m2f_jax.evaluate" in c for c in _cycles(planted))


def test_inference_side_imports_nothing_of_training(graph):
  sources = [m for m in graph if m.startswith(("m2f_jax.inference", "m2f_jax.evaluation"))]
  sources += ["m2f_jax.evaluate", "m2f_jax.predict", "m2f_jax.checkpoint", "eval.py"]
  assert _violations(graph, sources, "m2f_jax.training") == []


def test_models_import_nothing_of_convert(graph):
  sources = [m for m in graph if m.startswith("m2f_jax.models")]
  assert _violations(graph, sources, "m2f_jax.convert") == []
