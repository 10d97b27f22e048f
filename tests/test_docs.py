"""The documentation cannot go stale: the references are what the code generates, every block
of command output comes from a recipe that runs the commands, every relative link resolves,
and the README is a short front door."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tools import doc_outputs, gen_docs
from tools.param_docs import PARAM_DOCS

ROOT = Path(__file__).resolve().parents[1]
PAGES = gen_docs.doc_files()
FENCE = re.compile(r"^```")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def test_references_are_what_the_code_generates():
    for name, render in gen_docs.REFERENCES.items():
        path = ROOT / "docs" / name
        assert path.exists() and path.read_text() == render(), (
            f"docs/{name} differs from the code: run `make docs` (or `python tools/gen_docs.py "
            "references`) and commit it")


def test_every_parameter_has_a_description():
    keys = [key for key, _, _ in gen_docs.parameter_rows()]
    missing = [k for k in keys if not PARAM_DOCS.get(k)]
    assert not missing, f"add these keys to PARAM_DOCS in tools/param_docs.py: {missing}"
    sections = {k.rsplit(".", 1)[0] for k in keys if "." in k}
    unknown = sorted(set(PARAM_DOCS) - set(keys) - sections)
    assert not unknown, f"PARAM_DOCS describes keys that do not exist: {unknown}"


def fenced_blocks(text: str) -> list[tuple[int, list[str]]]:
    """(line of the opening fence, the lines inside) of every fenced block."""
    lines, out, start = text.splitlines(), [], None
    for i, line in enumerate(lines):
        if FENCE.match(line):
            if start is None:
                start = i
            else:
                out.append((start, lines[start + 1:i]))
                start = None
    return out


def test_no_command_output_is_written_by_hand():
    """A fenced block that shows a command and what it printed (`$ ...` followed by output)
    sits between output markers whose recipe exists."""
    for page in PAGES:
        text = page.read_text()
        blocks = gen_docs.output_blocks(text)
        inside = {start for _, start, _ in blocks}
        for name, start, end in blocks:
            assert name in doc_outputs.RECIPES, f"{page.name}: no recipe {name!r}"
            body = text.splitlines()[start:end]
            assert body[0] == "```text" and body[-1] == "```", f"{page.name}: {name}"
        for start, body in fenced_blocks(text):
            printed = [line for prev, line in zip(["", *body], body, strict=False)
                       if line and not line.startswith(("$ ", "#"))
                       and not prev.rstrip().endswith("\\")]  # not a command's next line
            shows_output = any(line.startswith("$ ") for line in body) and bool(printed)
            assert not shows_output or start in inside, (
                f"{page.name}:{start + 1}: command output written by hand; put it in a "
                "recipe of tools/doc_outputs.py between <!-- output: NAME --> markers")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = page.read_text()
    outside = [line for i, line in enumerate(text.splitlines())
               if not any(s <= i <= s + len(b) + 1 for s, b in fenced_blocks(text))]
    return {slug(line.lstrip("#")) for line in outside if re.match(r"^#{1,6} ", line)}


def test_every_relative_link_resolves():
    bad = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"^[a-z]+:", target):  # http(s), mailto: not ours to check
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                bad.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{page.name}: {target} (no such heading)")
    assert not bad, "\n".join(bad)


def test_slugs_follow_github():
    assert slug("Switching to the real CLIP ViT-L/14 and BLIP weights") == \
        "switching-to-the-real-clip-vit-l14-and-blip-weights"
    assert slug("`nsnet predict`") == "nsnet-predict"
    assert slug("Robustness to degradations (GenImage's protocol)") == \
        "robustness-to-degradations-genimages-protocol"


def test_output_blocks_compare_at_any_hour():
    """A block committed in the morning matches a run in the afternoon or on another day."""
    morning = "  master   09:30 AM   -   0.7269\n  ├── f1054e0 [lowse-ruby]   11:02 AM   Success"
    for later in ("  master   03:15 PM   -   0.7301\n  ├── 5973eb4 [silly-barb]   3:17 PM  Success",
                  "  master   Nov 28, 2026   -   0.7\n  ├── 5973eb4 [silly-barb]   Dec 1, 2026 "
                  "Success"):
        assert normalised(morning) == normalised(later)
    assert normalised("09:30 AM Success") != normalised("09:30 AM Failed")


def test_readme_is_a_short_front_door():
    """What it is, the two commands with their real output, your own images, where to go."""
    text = (ROOT / "README.md").read_text()
    prose = [line for line in text.splitlines()]
    blocks = sum(len(b) for _, b in fenced_blocks(text))
    assert len(prose) - blocks <= 90, "the README is a front door: move details to docs/"
    for heading in ("## Quick start", "## Your own images", "## Where to go next"):
        assert heading in text
    assert "make demo" in text and "make test" in text  # .ci/run calls `make test`
    names = {name for name, _, _ in gen_docs.output_blocks(text)}
    assert {"demo", "test"} <= names
    linked = {Path(t.partition("#")[0]).name for t in LINK.findall(text)}
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert pages <= linked, f"docs pages the README does not link: {pages - linked}"


# `dvc exp show`'s Created column: `09:30 AM` today, `Nov 28, 2026` on an older day.
CLOCK = re.compile(r"\b\d{1,2}:\d{2}(:\d{2})? ?([AaPp][Mm])\b|"
                   r"\b(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{1,2}, \d{4}\b")


def normalised(text: str) -> list[str]:
    """Lines with what varies between runs replaced: numbers (timings, scores), content ids
    (they change with any byte of the file, e.g. a comment in params.yaml), git ids and DVC's
    random experiment names, the widths of spaces and rules."""
    out = []
    for line in text.splitlines():
        line = CLOCK.sub("TIME", line)  # dvc exp show's times and dates: the hour of the run
        line = re.sub(r"\[[a-z]+-[a-z]+\]", "[name]", line)
        line = re.sub(r"\b[0-9a-f]{12,}\b", "ID", line)  # content ids: hashes of the files' bytes
        line = re.sub(r"\b[0-9a-f]{7}\b", "SHA", line)
        line = re.sub(r"\d+(\.\d+)?", "N", line)
        line = re.sub(r"─+", "─", re.sub(r"\s+", " ", line)).strip()
        if line:
            out.append(line)
    return out


@pytest.mark.slow
def test_output_blocks_are_what_the_commands_print():
    """Rerun every recipe (but `make test`, which is this suite) in a fresh demo workspace:
    each committed block has the lines the commands print now, numbers aside."""
    committed = {}
    for page in PAGES:
        text = page.read_text()
        for name, start, end in gen_docs.output_blocks(text):
            committed[name] = "\n".join(text.splitlines()[start + 1:end - 1])
    names = sorted(set(committed) - doc_outputs.SLOW)
    fresh = doc_outputs.run(names)
    for name in names:
        assert normalised(committed[name]) == normalised(fresh[name]), (
            f"the output block {name!r} is stale: run `python tools/gen_docs.py outputs "
            f"--only {name}` and commit the pages")
