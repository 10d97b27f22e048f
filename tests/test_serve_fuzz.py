"""Conformance: schemathesis, run as its CLI, fuzzes a live ``nsnet serve`` process against the
server's own /openapi.json (every check, positive and negative data, real images for the
upload), with and without ``--token``; no check may fail and no answer may be a 5xx. A second,
positive-only run fills the parts by media type, with a real image of every type the spec's
``encoding`` declares, and every upload must be scored.

The server is the real command (uvicorn in its own process) with the tiny test bundle. Each run
is bounded by ``--max-examples`` per operation and a fixed seed; its counts are printed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.test_serve import ROOT, defaults_file, free_socket

TESTS = ROOT / "tests"
# Test cases per operation and phase, and the seed (NSNET_FUZZ_EXAMPLES=1000 and another
# NSNET_FUZZ_SEED for a longer, different run by hand).
MAX_EXAMPLES = int(os.environ.get("NSNET_FUZZ_EXAMPLES", "50"))
SEED = os.environ.get("NSNET_FUZZ_SEED", "20240601")


@pytest.fixture(scope="module")
def bundle(built_cache, tmp_path_factory) -> Path:
    from tests.test_detector import train_bundle

    return train_bundle(built_cache, tmp_path_factory.mktemp("fuzz") / "model")


def venv_tool(name: str) -> str:
    exe = ROOT / ".venv" / "bin" / name
    return str(exe) if exe.exists() else name


@contextmanager
def nsnet_serve(bundle: Path, tmp_path: Path, token: str | None) -> Iterator[tuple[str, int]]:
    """``nsnet serve`` on a free port, ready: its base URL and the size of its log once ready
    (what follows is the run's). Stopped with Ctrl-C afterwards."""
    port = free_socket().getsockname()[1]
    cmd = [venv_tool("nsnet"), "serve", "--model", str(bundle), "--port", str(port),
           "--params", str(defaults_file(tmp_path)), "--set", "compute.device=cpu",
           "--set", "compute.torch_threads=1", "--max-files", "4", "--max-upload-mb", "4",
           "--max-pixels", "1000000", "--timeout", "60"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("NSNET_TOKEN", None)
    if token:
        cmd += ["--token", token]
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "nsnet serve did not become ready"
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        log.flush()
        yield url, (tmp_path / "serve.log").stat().st_size
        assert proc.poll() is None, "nsnet serve died during the run:\n" + \
            (tmp_path / "serve.log").read_text()[-5000:]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def readable(output: str, width: int = 240) -> str:
    """Schemathesis's report without the binary request bodies it prints."""
    lines = [line[:width] for line in output.splitlines()
             if line.isprintable() and "\\x" not in line]
    return "\n".join(lines[-300:])


def run_numbers(events: Path) -> dict[str, int]:
    """Requests sent and checks run (and failed) in schemathesis's NDJSON event report."""
    out = {"requests": 0, "checks": 0, "failed": 0}
    for line in events.read_text().splitlines():
        finished = json.loads(line).get("ScenarioFinished")
        if not finished:
            continue
        recorder = finished["recorder"]
        out["requests"] += len(recorder.get("interactions") or {})
        for results in (recorder.get("checks") or {}).values():
            out["checks"] += len(results)
            out["failed"] += sum(r["status"] != "success" for r in results)
    return out


def server_statuses(log: str, request: str = "") -> dict[int, int]:
    """How many answers of each status uvicorn's access log shows (to ``request``, e.g.
    ``"POST /v1/detect"``, if given)."""
    counts: dict[int, int] = {}
    for line in log.splitlines():
        if '" ' in line and "HTTP/1.1" in line and f'"{request}' in line:
            status = line.rsplit('" ', 1)[1].split()[0]
            if status.isdigit():
                counts[int(status)] = counts.get(int(status), 0) + 1
    return counts


def schemathesis_run(url: str, tmp_path: Path, parts: str, options: list[str]
                     ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], dict[str, int],
                                float]:
    """``schemathesis run`` (all checks) on the server's spec, the upload parts filled the
    ``parts`` way (``tests/schemathesis_hooks.py``): the process, its JSON report, its numbers
    and its seconds."""
    report_file = tmp_path / "report.json"
    cmd = [venv_tool("schemathesis"), "--config-file", str(TESTS / "schemathesis.toml"),
           "run", f"{url}/openapi.json", "--checks", "all", "--seed", SEED, "--workers", "1",
           "--request-timeout", "120", "--generation-database", "none", "--no-color",
           "--report", "json,ndjson", "--report-json-path", str(report_file),
           "--report-ndjson-path", str(tmp_path / "events.ndjson"),
           "--report-dir", str(tmp_path / "reports"), *options]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(TESTS / "schemathesis_hooks.py"),
           "NSNET_FUZZ_PARTS": parts}
    start = time.monotonic()
    run = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=900)
    seconds = time.monotonic() - start
    (tmp_path / "schemathesis.txt").write_text(run.stdout + run.stderr)
    return run, json.loads(report_file.read_text()), run_numbers(tmp_path / "events.ndjson"), \
        seconds


@pytest.mark.slow
@pytest.mark.parametrize("token", [None, "fuzz-token"], ids=["open", "token"])
def test_schemathesis_finds_no_failure_and_no_5xx(bundle, tmp_path, token):
    with nsnet_serve(bundle, tmp_path, token) as (url, ready_at):
        options = ["--mode", "all", "--max-examples", str(MAX_EXAMPLES)]
        if token:
            options += ["--header", f"Authorization: Bearer {token}"]
        run, report, numbers, seconds = schemathesis_run(url, tmp_path, "format", options)
    statuses = server_statuses((tmp_path / "serve.log").read_text()[ready_at:])
    print(f"\nschemathesis {report['schemathesis_version']} against nsnet serve "
          f"{'with' if token else 'without'} --token, {seconds:.0f} s: "
          f"{report['test_cases']['generated']} test cases, {numbers['requests']} requests, "
          f"{numbers['checks']} checks, {numbers['failed']} failed, "
          f"{report['test_cases']['with_failures']} failing cases; server answers by status: "
          f"{dict(sorted(statuses.items()))}")
    assert run.returncode == 0, readable(run.stdout + run.stderr)
    assert numbers["failed"] == 0 and report["test_cases"]["errored"] == 0
    assert not [s for s in statuses if s >= 500], statuses
    assert sum(statuses.values()) > MAX_EXAMPLES, statuses  # it really ran
    if token:
        assert statuses.get(401, 0) > 0  # and tried without the token


@pytest.mark.slow
def test_parts_of_every_declared_media_type_are_accepted(bundle, tmp_path):
    """Positive cases only, each part filled through ``schemathesis.openapi.media_type`` with a
    real image of a media type the spec's ``encoding`` declares: schemathesis sends it with that
    Content-Type and no filename, and every one is scored (200)."""
    from tests.schemathesis_hooks import MEDIA_IMAGES

    with nsnet_serve(bundle, tmp_path, None) as (url, ready_at):
        spec = httpx.get(f"{url}/openapi.json", timeout=30).json()
        encoding = spec["paths"]["/v1/detect"]["post"]["requestBody"]["content"][
            "multipart/form-data"]["encoding"]
        declared = [t.strip() for t in encoding["file"]["contentType"].split(",")]
        assert set(declared) == set(MEDIA_IMAGES)  # a real image for every declared type
        run, report, numbers, seconds = schemathesis_run(
            url, tmp_path, "media-type", ["--mode", "positive", "--max-examples", "20"])
    statuses = server_statuses((tmp_path / "serve.log").read_text()[ready_at:],
                               "POST /v1/detect")
    print(f"\nschemathesis, media-type parts, {seconds:.0f} s: {numbers['requests']} requests, "
          f"{numbers['failed']} failed; server answers by status: {statuses}")
    assert run.returncode == 0, readable(run.stdout + run.stderr)
    assert numbers["failed"] == 0 and report["test_cases"]["errored"] == 0
    assert set(statuses) == {200} and statuses[200] >= len(MEDIA_IMAGES), statuses
