"""Conformance: schemathesis, run as its CLI, fuzzes a live ``nsnet serve`` process against the
server's own /openapi.json (every check, positive and negative data, real images for the
upload), with and without ``--token``; no check may fail and no answer may be a 5xx.

The server is the real command (uvicorn in its own process) with the tiny test bundle. The run
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

import httpx
import pytest

from tests.test_serve import ROOT, defaults_file, free_socket

TESTS = ROOT / "tests"
# Test cases per operation and phase, and the seed (NSNET_FUZZ_EXAMPLES=1000 and another
# NSNET_FUZZ_SEED for a longer, different run by hand).
MAX_EXAMPLES = int(os.environ.get("NSNET_FUZZ_EXAMPLES", "100"))
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


def server_statuses(log: str) -> dict[int, int]:
    """How many answers of each status uvicorn's access log shows."""
    counts: dict[int, int] = {}
    for line in log.splitlines():
        if '" ' in line and "HTTP/1.1" in line:
            status = line.rsplit('" ', 1)[1].split()[0]
            if status.isdigit():
                counts[int(status)] = counts.get(int(status), 0) + 1
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("token", [None, "fuzz-token"], ids=["open", "token"])
def test_schemathesis_finds_no_failure_and_no_5xx(bundle, tmp_path, token):
    report_file = tmp_path / "report.json"
    with nsnet_serve(bundle, tmp_path, token) as (url, ready_at):
        cmd = [venv_tool("schemathesis"), "--config-file", str(TESTS / "schemathesis.toml"),
               "run", f"{url}/openapi.json", "--checks", "all", "--mode", "all",
               "--max-examples", str(MAX_EXAMPLES), "--seed", SEED, "--workers", "1",
               "--request-timeout", "120", "--generation-database", "none", "--no-color",
               "--report", "json,ndjson", "--report-json-path", str(report_file),
               "--report-ndjson-path", str(tmp_path / "events.ndjson"),
               "--report-dir", str(tmp_path / "reports")]
        if token:
            cmd += ["--header", f"Authorization: Bearer {token}"]
        env = {**os.environ, "SCHEMATHESIS_HOOKS": str(TESTS / "schemathesis_hooks.py")}
        start = time.monotonic()
        run = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=900)
        seconds = time.monotonic() - start
    statuses = server_statuses((tmp_path / "serve.log").read_text()[ready_at:])
    (tmp_path / "schemathesis.txt").write_text(run.stdout + run.stderr)
    report = json.loads(report_file.read_text())
    numbers = run_numbers(tmp_path / "events.ndjson")
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
