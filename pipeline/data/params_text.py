"""Editing a params.yaml file in place: set dotted keys, keep the user's comments and layout.

``nsnet demo-data --workspace`` writes the demo's values into the shipped params.yaml with it
(the first line says which). The schema and its validation are ``nsnet.config``'s.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from nsnet.config import YamlLoader

_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w-]*):(?P<gap> *)(?P<value>[^#]*?)"
                   r"(?P<comment> +#.*)?$")


def flow(value: Any) -> str:
    """``value`` as one line of YAML (flow style)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix(
        "\n...").strip()


def edit_params_text(text: str, values: dict[str, Any]) -> str:
    """``text`` (a params file) with the dotted ``values`` set, its comments kept.

    Each key's one-line value is replaced in place (a key that is absent is added to its
    section). When the file is laid out otherwise (a multi-line value, an odd layout), the
    result is the whole mapping written afresh without comments, so it is always correct.
    """
    want = yaml.load(text, Loader=YamlLoader) or {}
    for key, value in values.items():
        node = want
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    lines = text.splitlines()
    for key, value in values.items():
        lines = _set_line(lines, key.split("."), flow(value))
    edited = "\n".join(lines) + "\n"
    try:
        if yaml.load(edited, Loader=YamlLoader) == want:
            return edited
    except yaml.YAMLError:
        pass
    return yaml.safe_dump(want, sort_keys=False)


def _set_line(lines: list[str], path: list[str], value: str) -> list[str]:
    """Set ``path`` (section keys, then the key) where it is written on one line; a key that
    is not there leaves ``lines`` as they are (``edit_params_text`` then rewrites the file)."""
    start, end, depth = 0, len(lines), 0
    for i, part in enumerate(path):
        for row in range(start, end):
            m = _LINE.match(lines[row])
            if m and len(m["indent"]) == depth and m["key"] == part:
                break
        else:
            return lines
        if i == len(path) - 1:
            comment = (m["comment"] or "").lstrip()
            head = f"{m['indent']}{part}: {value}"
            if comment:  # keep the comment's column when the new value fits
                column = len(lines[row]) - len(comment)
                head = head.ljust(column) if len(head) < column else head + "  "
            return [*lines[:row], head + comment, *lines[row + 1:]]
        start, end = row + 1, _block_end(lines, row + 1, depth)
        depth += 2
    return lines


def _block_end(lines: list[str], row: int, depth: int) -> int:
    """First row after ``row`` that belongs to a key at ``depth`` or shallower."""
    for i in range(row, len(lines)):
        stripped = lines[i].strip()
        if stripped and not stripped.startswith("#") and \
                len(lines[i]) - len(lines[i].lstrip(" ")) <= depth:
            return i
    return len(lines)
