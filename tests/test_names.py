"""One name, one meaning: every command and DVC stage a user is pointed at exists, the renamed
commands are refused with a message, and "views" means patch orders only.

The texts checked are what a user reads: every ``--help`` of the click tree, every string
literal and comment of ``pipeline/``, ``stages/``, ``bench/`` and ``tools/`` (error messages,
hints, docstrings), and the docs (``README.md``, ``docs/``, ``tests/README.md``,
``params.yaml``, ``dvc.yaml``, the ``Makefile``, the web page).
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from nsnet.stages.cli import main

ROOT = Path(__file__).resolve().parents[1]
PY_DIRS = ("pipeline", "stages", "bench", "tools")
TEXT_FILES = ("README.md", "params.yaml", "dvc.yaml", "Makefile", "pyproject.toml")
TEXT_GLOBS = ("docs/**/*.md", "tests/*.md", "pipeline/serving/static/*")
# params.yaml is the user's file (tests do not depend on its values), but its comments are
# documentation a user reads: the tests that read every text may open it.
READS_PARAMS_COMMENTS = pytest.mark.reads_repo_params

COMMAND = re.compile(r"\bnsnet ([a-z][a-z0-9_-]*)")
# English after the project's name, not a command: "this nsnet reads format 2", "nsnet k=1"
PROSE = {"import", "reads", "decodes", "before", "detector", "commands", "project", "web", "k",
         "within"}  # and `from nsnet import Detector`
STAGE = re.compile(r"\b[Ss]tage [`'\"]([a-z_]+)[`'\"]|[`'\"]([a-z_]+)[`'\"] stage\b")
REPRO = re.compile(r"\bdvc repro((?: [a-z][a-z_]*)+)")


def python_texts(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of every line of a string literal (f-string parts included) and of every
    comment."""
    source = path.read_text()
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            for i, line in enumerate(node.value.splitlines() or [""]):
                yield node.lineno + i, line  # exact for docstrings and other long strings
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            yield tok.start[0], tok.string


def file_lines(path: Path) -> Iterator[tuple[int, str]]:
    yield from enumerate(path.read_text().splitlines(), 1)


def help_texts(group: click.Group, prefix: str = "nsnet") -> Iterator[tuple[str, str]]:
    """(where, text) of the help a user sees: each visible command's help, short help,
    epilog and option help, recursively."""
    yield prefix, group.help or ""
    for name, cmd in group.commands.items():
        if cmd.hidden:  # a refused old name: its help is the refusal (checked below)
            continue
        where = f"{prefix} {name} --help"
        for text in (cmd.help, cmd.short_help, cmd.epilog):
            yield where, text or ""
        for param in cmd.params:
            yield f"{where} ({param.name})", getattr(param, "help", None) or ""
        if isinstance(cmd, click.Group):
            yield from help_texts(cmd, f"{prefix} {name}")


def user_texts() -> Iterator[tuple[str, str]]:
    """(where, text) of every text the module docstring lists."""
    yield from help_texts(main)
    for folder in PY_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for line, text in python_texts(path):
                yield f"{path.relative_to(ROOT)}:{line}", text
    paths = [ROOT / f for f in TEXT_FILES if (ROOT / f).exists()]
    paths += [p for g in TEXT_GLOBS for p in sorted(ROOT.glob(g)) if p.is_file()]
    for path in paths:
        for line, text in file_lines(path):
            yield f"{path.relative_to(ROOT)}:{line}", text


def commands() -> set[str]:
    return {name for name, cmd in main.commands.items() if not cmd.hidden}


def refused() -> dict[str, str]:
    """Old command names and the message that refuses each."""
    return {name: cmd.help or "" for name, cmd in main.commands.items() if cmd.hidden}


def dvc_stages() -> set[str]:
    return set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])


def named_commands(text: str) -> list[str]:
    return [m for m in COMMAND.findall(text) if m not in PROSE]


def named_stages(text: str) -> list[str]:
    names = [a or b for a, b in STAGE.findall(text)]
    return names + [w for m in REPRO.findall(text) for w in m.split()]


def stale_pointers() -> list[str]:
    known, old, stages = commands(), refused(), dvc_stages()
    bad = []
    for where, text in user_texts():
        if text in old.values():  # the message that refuses an old name may name it
            continue
        for name in named_commands(text):
            if name not in known:
                why = "a refused old name" if name in old else "no such command"
                bad.append(f"{where}: `nsnet {name}` ({why})")
        bad += [f"{where}: DVC stage {name!r} (not in dvc.yaml)"
                for name in named_stages(text) if name not in stages]
    return bad


@READS_PARAMS_COMMENTS
def test_every_command_and_stage_a_user_is_pointed_at_exists():
    bad = stale_pointers()
    assert not bad, (f"texts point at commands or stages that do not exist (commands: "
                     f"{', '.join(sorted(commands()))}):\n" + "\n".join(bad))


@READS_PARAMS_COMMENTS
def test_the_pointer_check_reads_what_it_should():
    """The patterns find commands in backticks, shell lines and prose, skip the name used as
    English, and the walk covers help texts, messages, comments and docs."""
    assert named_commands("run `nsnet embed` (or dvc repro); $ nsnet cache --gc") == [
        "embed", "cache"]
    assert named_commands("this nsnet reads format 2; ``nsnet patches``") == ["patches"]
    assert named_stages("Running stage 'views': ... (DVC stage `evaluate_views`); the `index` "
                        "stage; dvc repro index extract --force") == [
        "views", "evaluate_views", "index", "index", "extract"]
    wheres = [w for w, _ in user_texts()]
    for expected in ("nsnet train --help (features)", "nsnet evaluate-degraded --help",
                     "README.md:1", "params.yaml:1", "dvc.yaml:1"):
        assert expected in wheres, expected
    prefixes = {w.split(":")[0].split("/")[0] for w in wheres}
    assert {"pipeline", "stages", "bench", "docs"} <= prefixes
    texts = dict(user_texts())
    assert any("nsnet extract" in t for w, t in texts.items() if w.startswith("pipeline/"))


@pytest.mark.parametrize("old", sorted(refused()))
def test_renamed_commands_are_refused_with_a_message(old):
    res = CliRunner().invoke(main, [old, "--anything", "x"])
    message = refused()[old]
    assert res.exit_code == 1 and message in " ".join(res.output.split())
    assert "Traceback" not in res.output
    assert any(f"nsnet {new}" in message for new in commands()), message
    listed = CliRunner().invoke(main, ["--help"]).output
    assert not re.search(rf"^\s+{old}\s", listed, re.M), listed  # hidden from --help


# "views" are the K patch orders of an image (patches.views, FeatureSet.n_views, compare
# --views); degraded test copies are "degraded"/"degradations" (protocol.degradations, nsnet
# evaluate-degraded, metrics/degradations.json).
VIEW = re.compile(r"\b[Vv]iews?\b|[Vv]iew_|_views?\b|\bView[A-Z]")
DEGRADED = re.compile(r"degrad|\bjpeg\d|\bresize\d|\bblur\d|robustness", re.I)
PATCH_ORDER = re.compile(r"patch.order|patches\.views|patch_views|view_average|"
                         r"n_views|first_views|--views|\bK\b|views_cache|views_bundle")
OLD_NAMES = re.compile(r"evaluate[_-]views|views_(?:eval_)?stage|ViewPaths|(?:cache|metrics)"
                       r"/views|stage [`'\"]views[`'\"]")
# The previous cache layout kept degraded copies in cache/views/<degradation>/; its migration
# must name that folder.
LEGACY_LAYOUT = {"pipeline/extraction/store_admin.py", "docs/feature-store.md", "stages/cache.py"}


def view_words_mixed_up() -> list[str]:
    old = refused()
    bad = []
    for where, text in user_texts():
        if text in old.values() or text in old:  # a refused name and its message
            continue
        for line in text.splitlines():
            if OLD_NAMES.search(line) and where.split(":")[0] not in LEGACY_LAYOUT:
                bad.append(f"{where}: old name for the degraded copies: {line.strip()}")
            elif VIEW.search(line) and DEGRADED.search(line) and not PATCH_ORDER.search(line) \
                    and where.split(":")[0] not in LEGACY_LAYOUT:
                bad.append(f"{where}: 'view' beside a degradation: {line.strip()}")
    return bad


@READS_PARAMS_COMMENTS
def test_views_mean_patch_orders_and_degraded_copies_are_degraded():
    bad = view_words_mixed_up()
    assert not bad, ("'views' means patch orders only; call degraded test copies degraded "
                     "(or say patch-order views):\n" + "\n".join(bad))


def test_identifiers_keep_the_two_words_apart():
    """No Python name says both (``degraded_views``, ``view_degradation``), no command or DVC
    stage is called a view, and test names follow the same rule."""
    mixed = re.compile(r"(?=.*view)(?=.*degrad)", re.I)
    names = set()
    for folder in (*PY_DIRS, "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                name = getattr(node, "name", None) or getattr(node, "id", None) or \
                    getattr(node, "attr", None) or getattr(node, "arg", None)
                if isinstance(name, str) and mixed.match(name):
                    names.add(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    allowed = {n for n in names if "patch_orders" in n}  # the patch orders of degraded copies
    assert not names - allowed, sorted(names - allowed)
    assert not [c for c in commands() | dvc_stages() if "view" in c]
    assert not [p.name for p in ROOT.rglob("*view*.py")
                if "patch_views" not in p.name and ".venv" not in p.parts]


def test_the_view_check_tells_the_words_apart():
    assert VIEW.search("a degraded view") and DEGRADED.search("a degraded view")
    assert not PATCH_ORDER.search("a degraded view")
    assert PATCH_ORDER.search("the K patch-order views of each degraded test image")
    assert OLD_NAMES.search("`nsnet evaluate-views` writes metrics/views/<name>.json")
    assert not VIEW.search("a preview; an overview; the viewport")
