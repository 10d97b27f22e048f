"""The package's design, checked: data flows one way through the subpackages, with no cycles.

Every ``pipeline`` module sits in a subpackage that names its part of the flow (or is one of the
few shared foundations), imports only from its own layer or the layers before it (lazy imports
inside functions and ``TYPE_CHECKING`` imports count too), and the import graph has no cycle.
The ``stages`` commands stay thin: they parse options and call the library.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline"

# The flow, upstream first: a module may import from its own layer and the layers before it.
LAYERS = [
    ("foundations", {"pipeline.config", "pipeline.atomic", "pipeline.provenance",
                     "pipeline.cache_store", "pipeline.metrics", "pipeline.runtime"}),
    ("data in", {"pipeline.data"}),
    ("frozen backbones", {"pipeline.backbones"}),
    ("extraction", {"pipeline.extraction"}),
    ("heads and training", {"pipeline.heads"}),
    ("evaluation", {"pipeline.evaluation"}),
    ("reports", {"pipeline.reports"}),
    ("inference", {"pipeline.inference"}),
    ("serving", {"pipeline.serving"}),
]
FACADE = "pipeline"  # pipeline/__init__.py: the public names, resolved lazily


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every pipeline module that ``path`` imports, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name.startswith("pipeline"):
                found.add(name)
    return found


def layer_of(module: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} sits in no layer: move it into a subpackage of the flow")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports_of(p, known) - {m} for m, p in mods.items()}


def test_every_module_has_a_place(graph: dict[str, set[str]]) -> None:
    for module in graph:
        if module != FACADE:
            layer_of(module)


def test_imports_flow_downstream_only(graph: dict[str, set[str]]) -> None:
    bad = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
           for m, deps in graph.items() if m != FACADE
           for d in sorted(deps) if d != FACADE and layer_of(d) > layer_of(m)]
    assert not bad, "upstream code imports downstream code:\n" + "\n".join(bad)


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    edges = {m: {d for d in deps if d != FACADE and not d.startswith(m + ".")}
             for m, deps in graph.items() if m != FACADE}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges.get(m, ())):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_public_surface_is_declared() -> None:
    import pipeline

    assert pipeline.__all__, "pipeline/__init__.py must declare __all__"
    for name in pipeline.__all__:
        obj = getattr(pipeline, name)
        assert obj.__doc__, f"pipeline.{name} has no docstring"


def test_stage_commands_are_thin() -> None:
    """``stages/*.py`` only wire options to the library: no numpy/torch, short bodies."""
    for path in sorted((ROOT / "stages").glob("*.py")):
        tree = ast.parse(path.read_text())
        heavy = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                 for a in n.names} | {n.module.split(".")[0] for n in ast.walk(tree)
                                      if isinstance(n, ast.ImportFrom) and n.module}
        assert not heavy & {"numpy", "torch", "pandas", "h5py"}, f"{path.name} computes itself"
        for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
            body = fn.end_lineno - fn.body[0].lineno + 1
            assert body <= 40, f"{path.name}:{fn.name} has {body} lines; move logic to pipeline/"
