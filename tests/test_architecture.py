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
    ("foundations", {"nsnet.config", "nsnet.atomic", "nsnet.provenance",
                     "nsnet.cache_store", "nsnet.metrics", "nsnet.runtime", "nsnet.registry"}),
    ("data in", {"nsnet.data"}),
    ("frozen backbones", {"nsnet.backbones"}),
    ("extraction", {"nsnet.extraction"}),
    ("heads and training", {"nsnet.heads"}),
    ("evaluation", {"nsnet.evaluation"}),
    ("reports", {"nsnet.reports"}),
    ("inference", {"nsnet.inference"}),
    ("serving", {"nsnet.serving"}),
]
FACADE = "nsnet"  # pipeline/__init__.py: the public names, resolved lazily


def import_names() -> dict[str, str]:
    """Folder -> installed import name, as setup.py's ``FOLDERS`` maps them."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    folders = next(n.value for n in tree.body if isinstance(n, ast.Assign)
                   and getattr(n.targets[0], "id", "") == "FOLDERS")
    return {folder: name for name, folder in ast.literal_eval(folders).items()}


IMPORT_NAMES = import_names()  # {"pipeline": "nsnet", "stages": "nsnet.stages"}


def module_name(path: Path) -> str:
    """``pipeline/heads/bundle.py`` -> ``nsnet.heads.bundle`` (the installed import name)."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
    if parts[0] in IMPORT_NAMES:
        parts[0] = IMPORT_NAMES[parts[0]]
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
            if name and name.split(".")[0] == "nsnet" and not is_stage(name):
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
    import nsnet

    assert nsnet.__all__, "pipeline/__init__.py must declare __all__"
    for name in nsnet.__all__:
        obj = getattr(nsnet, name)
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


# --- Private names stay in their room -------------------------------------------------------
# A room is one subpackage of the flow, one foundation module, the facade, or `stages`. A name
# that starts with one underscore belongs to its room: another room that needs it gets a public
# name (e.g. `take_rows`), or the object returns what is needed (e.g. `HeadOutput.prepared`).


def is_stage(module: str) -> bool:
    return module == "nsnet.stages" or module.startswith("nsnet.stages.")


def room_of(module: str) -> str:
    """``nsnet.heads.detectors`` -> ``nsnet.heads``; a foundation module is its own room;
    every ``stages`` module shares one."""
    if is_stage(module):
        return "stages"
    for _, prefixes in LAYERS:
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                return prefix
    return module  # the facade


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_definitions(trees: dict[str, ast.AST]) -> dict[str, set[str]]:
    """``_name`` -> the rooms that define it (functions, classes, methods, module or class
    assignments, ``self._x = ...`` attributes, dataclass fields)."""
    found: dict[str, set[str]] = {}
    for module, tree in trees.items():
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names = [node.name]
            elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for t in ast.walk(target):
                        if isinstance(t, ast.Name):
                            names.append(t.id)
                        elif isinstance(t, ast.Attribute):
                            names.append(t.attr)
            for name in names:
                if _private(name):
                    found.setdefault(name, set()).add(room_of(module))
    return found


def private_crossings(trees: dict[str, ast.AST]) -> list[str]:
    """Every place where a module uses another room's underscore name: ``from m import _x``,
    ``anything._x`` or ``getattr(anything, "_x")`` where ``_x`` is defined only in other rooms
    of ours (``self._x`` and names defined in the module's own room are its own business;
    third-party privates are not ours to police)."""
    defined = private_definitions(trees)
    bad = []
    for module, tree in trees.items():
        room = room_of(module)
        for node in ast.walk(tree):
            where = f"{module}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and \
                    node.module.split(".")[0] == "nsnet":
                for alias in node.names:
                    if _private(alias.name) and room_of(node.module) != room:
                        bad.append(f"{where} imports {alias.name} from {node.module}")
                continue
            attr = None
            if isinstance(node, ast.Attribute) and not (
                    isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                attr = node.attr
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                    node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) > 1 \
                    and isinstance(node.args[1], ast.Constant) and \
                    isinstance(node.args[1].value, str):
                attr = node.args[1].value
            if attr and _private(attr) and attr in defined and room not in defined[attr]:
                rooms = ", ".join(sorted(defined[attr]))
                bad.append(f"{where} uses .{attr}, private to {rooms}")
    return sorted(set(bad))


def code_trees() -> dict[str, ast.AST]:
    """The package, the ``stages`` commands and the ``bench`` scripts (each its own room)."""
    scripts = [p for folder in ("stages", "bench") for p in sorted((ROOT / folder).glob("*.py"))]
    paths = {**modules(), **{module_name(p): p for p in scripts}}
    return {m: ast.parse(p.read_text(), str(p)) for m, p in paths.items()}


def test_no_module_uses_another_rooms_private_names() -> None:
    bad = private_crossings(code_trees())
    assert not bad, ("a room uses another room's underscore names; give the thing a public "
                     "name (or return what is needed):\n" + "\n".join(bad))


def test_the_private_name_check_sees_imports_attributes_and_getattr() -> None:
    """The checker on a small made-up package: each kind of crossing is found, the own room's
    names, ``self._x`` and unknown (third-party) privates are not."""
    sources = {
        "nsnet.heads.detectors": "class H:\n    def _prep(self, x):\n        return x\n"
                                    "    def forward(self, x):\n        return self._prep(x)\n",
        "nsnet.heads.bundle": "def _digest(b):\n    return b\n"
                                 "def load(h):\n    return h._prep(1)\n",
        "nsnet.extraction.cached_features": "_CACHE = {}\ndef _take(rows, idx):\n"
                                               "    return rows\n",
        "nsnet.evaluation.protocol_rows":
            "from nsnet.extraction.cached_features import _take, FeatureSet\n"
            "from nsnet.extraction import cached_features as cf\n"
            "import sys\n"
            "def rows(chain, r):\n"
            "    sys._getframe(0)\n"
            "    getattr(cf, '_CACHE')\n"
            "    return chain.head._prep(r), cf._take(r, 0)\n",
        "nsnet.stages.train": "from nsnet.heads.bundle import _digest\n",
    }
    bad = private_crossings({m: ast.parse(s) for m, s in sources.items()})
    assert bad == [
        "nsnet.evaluation.protocol_rows:1 imports _take from "
        "nsnet.extraction.cached_features",
        "nsnet.evaluation.protocol_rows:6 uses ._CACHE, private to "
        "nsnet.extraction",
        "nsnet.evaluation.protocol_rows:7 uses ._prep, private to nsnet.heads",
        "nsnet.evaluation.protocol_rows:7 uses ._take, private to nsnet.extraction",
        "nsnet.stages.train:1 imports _digest from nsnet.heads.bundle",
    ]
    assert room_of("nsnet.config") == "nsnet.config"
    assert room_of("bench.bench_heads") == "bench.bench_heads"
    assert "bench.bench_heads" in code_trees()
    assert room_of("nsnet.heads.bundle") == "nsnet.heads" and room_of("nsnet.stages.cli") == \
        "stages"


@pytest.mark.slow
def test_the_wheel_installs_one_top_level_package(tmp_path) -> None:
    """`pip wheel --no-deps .` holds `nsnet` (library, commands, package data) and nothing else
    at top level: no generic `pipeline` or `stages` in the user's site-packages."""
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    for name in ("pipeline", "stages", "setup.py", "pyproject.toml", "README.md"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                         if (ROOT / name).is_dir() else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path), str(src)],
                   check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("nsnet-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"nsnet"}
    for module in [*modules(), "nsnet.stages.cli", "nsnet.stages.train"]:
        path = module.replace(".", "/")
        assert f"{path}.py" in names or f"{path}/__init__.py" in names, module
    assert "nsnet/backbones/configs/nsnet-tiny-clip.json" in names
    assert "nsnet/serving/static/index.html" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "nsnet = nsnet.stages.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
