"""Published lists of images to leave out (``data.skip_lists``).

GenImage ships lists of corrupted files and of files with improper PNG headers
(``data/corrupted_files/*.txt``, ``data/improper_png_header/*.txt`` in its repository), one path
per line relative to where its authors unpacked the archives, e.g.
``./imagenet_ai_0419_sdv4/train/ai/033_sdv4_00134.png`` or
``./data/imagenet_glide/train/ai/GLIDE_..._00033.png``. A listed path matches an indexed file when
the file's path ends with the listed path's last four parts (archive folder, split, label
folder, file name), or all of them when it has fewer, so it does not matter where the archives
were unpacked. Matched files are listed in the index report with status ``skip_listed`` and the
list file and line as the reason (not in the manifest); they are never decoded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

SKIP_STATUS = "skip_listed"
KEY_PARTS = 4  # archive folder / split / label folder / file name


class SkipListError(FileNotFoundError):
    """A file named in ``data.skip_lists`` cannot be read."""


def _key(line: str) -> tuple[str, ...]:
    parts = [p for p in PurePosixPath(line.replace("\\", "/")).parts if p not in (".", "/", "")]
    return tuple(parts[-KEY_PARTS:])


@dataclass
class SkipLists:
    """Listed path keys -> where they are listed (``file:line``)."""

    where: dict[tuple[str, ...], str] = field(default_factory=dict)
    matched: set[tuple[str, ...]] = field(default_factory=set)

    def reason(self, path: str | os.PathLike[str]) -> str | None:
        """``listed in <file>:<line>`` when ``path`` is listed, else None."""
        parts = Path(path).parts
        for n in range(min(KEY_PARTS, len(parts)), 0, -1):
            key = tuple(parts[-n:])
            if key in self.where:
                self.matched.add(key)
                return f"listed in {self.where[key]}"
        return None

    @property
    def unmatched(self) -> list[str]:
        """Listed paths that matched no indexed file (e.g. lists of other generators)."""
        return sorted("/".join(k) for k in set(self.where) - self.matched)


def read_skip_lists(paths: list[str]) -> SkipLists:
    """Read the list files; a missing or unreadable one is a ``SkipListError`` naming it."""
    lists = SkipLists()
    for i, name in enumerate(paths):
        path = Path(name)
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise SkipListError(
                f"data.skip_lists[{i}]: cannot read {path} ({exc.strerror or exc}); give a text "
                "file with one image path per line, e.g. GenImage's "
                "data/corrupted_files/imagenet_ai_0419_sdv4.txt"
            ) from exc
        for lineno, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                lists.where.setdefault(_key(line), f"{path.name}:{lineno}")
    return lists
