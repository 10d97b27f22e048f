"""Provenance: what made a cached array or a metric file, and refusal to mix mismatches.

Every output records a provenance dict (model arch, weights, preprocessing, package and code
version). A consumer states what it expects; ``check_compatible`` raises ``ProvenanceMismatch``
naming every differing key instead of silently mixing caches built with different settings.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

from nsnet import __version__


class ProvenanceMismatch(RuntimeError):
    """An existing cache was made with other settings than the ones requested."""


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit of the source tree when there is one."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=here, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", str(here)],
            cwd=here, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        return f"{__version__}+g{sha}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return __version__


def code_fingerprint(*code: Any) -> str:
    """Hash of the source of ``code``: modules (their file), classes and functions (their own
    source, via ``inspect``), ``Path``s of data files (e.g. a model config) or constants the
    code reads (their ``repr``). A cached part records
    the code that computes it, so editing that code, and only that code, invalidates it; a
    docstring elsewhere in the same file does not."""
    import inspect

    h = hashlib.blake2b(digest_size=8)
    for obj in code:
        if isinstance(obj, Path):
            h.update(obj.read_bytes())
        elif inspect.ismodule(obj):
            h.update(Path(obj.__file__).read_bytes())
        elif inspect.isroutine(obj) or inspect.isclass(obj):
            h.update(inspect.getsource(obj).encode())
        else:  # a constant the code reads (a vocabulary, a table)
            h.update(repr(obj).encode())
    return h.hexdigest()


def base_provenance() -> dict[str, Any]:
    import torch

    return {
        "nsnet_version": __version__,
        "code_version": code_version(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def fingerprint(obj: Any) -> str:
    """Stable short hash of a JSON-able object (key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.blake2b(blob, digest_size=8).hexdigest()


def check_compatible(found: dict[str, Any], expected: dict[str, Any], what: str, hint: str) -> None:
    """Raise ``ProvenanceMismatch`` if any key of ``expected`` differs in ``found``."""
    diffs = [
        f"{key}: cache has {found.get(key)!r}, requested {value!r}"
        for key, value in expected.items()
        if found.get(key) != value
    ]
    if diffs:
        raise ProvenanceMismatch(
            f"{what} was made with different settings and will not be mixed in:\n  "
            + "\n  ".join(diffs)
            + f"\n{hint}"
        )
