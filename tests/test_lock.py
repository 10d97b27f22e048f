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
# Wheels that only some platforms pull in (torch's CUDA stack on Linux x86_64), and that the
# CPU-only route (`make install TORCH=cpu`) leaves out.
PLATFORM_ONLY = re.compile(r"^(nvidia-|cuda-|triton$)")


def same_release(installed: str, pinned: str) -> bool:
    """``2.14.1+cpu`` (PyTorch's CPU-only build, a local version label) is release ``2.14.1``,
    as pip's ``==2.14.1`` matches it (PEP 440)."""
    return installed.split("+", 1)[0] == pinned


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
        if not same_release(got, pinned):
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


def test_a_cpu_build_is_the_pinned_release():
    assert same_release("2.14.1+cpu", "2.14.1") and same_release("2.14.1", "2.14.1")
    assert not same_release("2.14.2+cpu", "2.14.1") and not same_release("2.14", "2.14.1")


def test_cpu_route_installs_the_pinned_torch_from_the_cpu_index_first():
    """`make install TORCH=cpu`: torch and torchvision at their pinned versions from the CPU
    wheel index (no CUDA wheels), then the project with the constraints as on the default
    route; `make lock` strips the +cpu label so the file stays valid for both."""
    import subprocess

    def dry(*args: str) -> str:
        return subprocess.run(["make", "-n", "-B", *args, "BIN=/venv/bin"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60).stdout

    pins_ = pins()
    cpu = dry("install", "TORCH=cpu")
    first = next(line for line in cpu.splitlines() if "--index-url" in line)
    assert "--no-deps" in first and "download.pytorch.org/whl/cpu" in first
    assert f"torch=={pins_['torch']}" in first and f"torchvision=={pins_['torchvision']}" in first
    assert cpu.index(first) < cpu.index("-c constraints.txt -e '.[dev]'")
    assert "--index-url" not in dry("install")  # the default route: PyPI's wheels
    lock = dry("lock")
    sed = re.search(r"sed -E '([^']+)'", lock).group(1)  # lock drops local version labels
    out = subprocess.run(["sed", "-E", sed], input="torch==2.14.1+cpu\nnumpy==2.4.6\n",
                         capture_output=True, text=True, timeout=30).stdout
    assert out == "torch==2.14.1\nnumpy==2.4.6\n"


def test_the_callers_make_variables_do_not_reach_the_tests():
    """`make test TORCH=cpu` exports TORCH=cpu and MAKEFLAGS to pytest: the install-route test
    above still sees the Makefile's defaults (conftest drops the caller's make variables)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TORCH": "cpu", "MAKEFLAGS": " -- TORCH=cpu CONSTRAINTS=",
           "MAKELEVEL": "1", "CONSTRAINTS": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         f"{__file__}::test_cpu_route_installs_the_pinned_torch_from_the_cpu_index_first"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout + proc.stderr


def test_make_test_says_what_it_installs_and_can_opt_out():
    """`make test` prints one line before apt-get; SYSTEM_PACKAGES=no installs nothing and
    tells pytest to skip the tests that need the packages."""
    import subprocess

    def dry(*args: str) -> str:
        return subprocess.run(["make", "-n", "-B", *args, "BIN=/venv/bin"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60).stdout

    default, opted_out = dry("browser", "latex", "test"), dry("browser", "latex", "test",
                                                               "SYSTEM_PACKAGES=no")
    for packages in ("chromium chromium-driver", "texlive-latex-base texlive-latex-recommended"):
        assert f"installing Debian packages {packages} with apt-get, as root" in default
    assert "NSNET_SYSTEM_PACKAGES=no" not in default
    assert "NSNET_SYSTEM_PACKAGES=no /venv/bin/pytest" in opted_out
    assert '[ "no" = no ]' in opted_out and '[ "yes" = no ]' in default

