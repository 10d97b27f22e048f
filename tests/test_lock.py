"""The environment is the tested one: installed versions equal ``constraints.txt``.

``make install`` installs with ``pip -c constraints.txt``; ``make lock`` rewrites the file from
the venv. This test (run by ``make test`` and CI) fails when the two drift apart, e.g. after an
unpinned install or a ``pip install -U`` without ``make lock``.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, distributions, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
# Wheels that only some platforms pull in (torch's CUDA stack on Linux x86_64).
PLATFORM_ONLY = re.compile(r"^(nvidia-|cuda-|triton$)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    out = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, ver = line.partition("==")
            assert ver, f"constraints.txt: {line!r} is not a name==version pin"
            out[_norm(name)] = ver
    return out


def test_installed_versions_match_the_constraints_file():
    wrong, absent = [], []
    for name, pinned in pins().items():
        try:
            got = version(name)
        except PackageNotFoundError:
            if not PLATFORM_ONLY.match(name):
                absent.append(name)
            continue
        if got != pinned:
            wrong.append(f"{name} {got} (pinned {pinned})")
    assert not wrong and not absent, (
        f"installed versions differ from constraints.txt: {wrong}; pinned but not installed: "
        f"{absent}. Reinstall with `make install` or, after a deliberate upgrade, `make lock`.")


def test_constraints_pin_every_installed_dependency_but_not_the_project():
    pinned = pins()
    assert "nsnet" not in pinned
    for direct in ("torch", "torchvision", "open-clip-torch", "transformers", "dvc", "numpy"):
        assert direct in pinned, direct
    installed = {_norm(d.metadata["Name"]) for d in distributions()}
    unpinned = sorted(installed - set(pinned) - {"nsnet", "pip", "setuptools", "wheel"})
    assert not unpinned, f"installed but not in constraints.txt (run `make lock`): {unpinned}"
