"""`nsnet serve`: a real uvicorn server on a free loopback port, every endpoint, the limits, the
token, micro-batching, and the web page in a real headless Chromium.

The servers run in this process (a thread each) so the tests can read the batcher's counters;
one test starts the real `nsnet serve` command as a subprocess.
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from nsnet.data.manifest import read_manifest
from nsnet.inference.detector import Detector
from nsnet.inference.predict import load_chain, predict_paths
from nsnet.serving.app import ServeSettings, Service, create_app
from tests.conftest import require_system_packages

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(built_cache, tmp_path_factory) -> Path:
    from tests.test_detector import train_bundle

    return train_bundle(built_cache, tmp_path_factory.mktemp("serve") / "model")


@pytest.fixture(scope="module")
def chain(bundle):
    return load_chain(bundle, device="cpu")


@pytest.fixture(scope="module")
def paths(built_cache) -> list[str]:
    return read_manifest(built_cache.manifest, only_ok=True)["path"].tolist()[::7][:6]


@pytest.fixture(scope="module")
def expected(chain, paths):
    return predict_paths(chain, paths, batch_size=16)


class Running:
    """A live server: its base URL and the service behind it."""

    def __init__(self, url: str, service: Service) -> None:
        self.url, self.service = url, service

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kw)


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def serving(chain, bundle, loader=None, wait_ready: bool = True, **options: Any
            ) -> Iterator[Running]:
    """Start a real uvicorn server on a free loopback port; stop it afterwards."""
    import uvicorn

    sock = free_socket()
    settings = ServeSettings(model_dir=str(bundle), device="cpu", port=sock.getsockname()[1],
                             **options)
    if loader is None:
        def loader(s: ServeSettings) -> Detector:  # the module's chain, this server's limits
            return Detector(chain, s.max_pixels, s.max_batch, s.model_dir)
    app = create_app(settings, loader)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.port}"
    running = Running(url, app.state.service)
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        while wait_ready and running.service.detector is None:
            assert running.service.error is None, running.service.error
            assert time.monotonic() < deadline, "model did not load"
            time.sleep(0.02)
        yield running
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def png_bytes(size: tuple[int, int] = (96, 96), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def files_of(paths: list[str]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (Path(p).name, Path(p).read_bytes(), "image/png")) for p in paths]


@pytest.fixture(scope="module")
def server(chain, bundle) -> Iterator[Running]:
    with serving(chain, bundle, max_files=8, max_upload_mb=1.0, max_pixels=200_000,
                 max_wait_ms=5) as running:
        yield running


# --- endpoints -------------------------------------------------------------------------------

def test_health_ready_model_and_docs(server, bundle):
    with server.client() as c:
        assert c.get("/healthz").json()["status"] == "alive"
        assert c.get("/readyz").json() == {"status": "ready"}
        model = c.get("/v1/model").json()
        assert model["head"] == "advanced" and model["bundle"] == str(bundle)
        assert model["config"]["backbones"]["clip"]["arch"] == "tiny"
        assert model["server"]["max_files"] == 8 and model["server"]["auth"] is False
        spec = c.get("/openapi.json").json()
        assert {"/v1/detect", "/v1/model", "/healthz", "/readyz"} <= set(spec["paths"])
        assert "multipart/form-data" in spec["paths"]["/v1/detect"]["post"]["requestBody"][
            "content"]
        assert c.get("/docs").status_code == 200
        missing = c.get("/nope")
        assert missing.status_code == 404 and missing.json()["error"] == "http_404"


def test_served_probabilities_equal_predict(server, paths, expected):
    with server.client() as c:
        res = c.post("/v1/detect", files=files_of(paths))
    assert res.status_code == 200, res.text
    body = res.json()
    results = body["results"]
    assert [r["name"] for r in results] == [Path(p).name for p in paths]
    np.testing.assert_allclose([r["prob"] for r in results], expected["prob"], atol=1e-5)
    assert [r["verdict"] for r in results] == expected["label"].tolist()
    assert [r["caption"] for r in results] == expected["caption"].tolist()
    assert [r["id"] for r in results] == expected["id"].tolist()
    np.testing.assert_allclose([r["semantic_share"] for r in results],
                               expected["semantic_share"], atol=1e-5)
    assert body["threshold"] == pytest.approx(0.5) and body["head"] == "advanced"
    assert all(r["status"] == "ok" and r["error"] is None for r in results)


def test_explain_adds_per_patch_contributions_and_a_png(server, chain, paths):
    from nsnet.inference.explain import explain_image

    with server.client() as c:
        res = c.post("/v1/detect", params={"explain": "true"}, files=files_of(paths[:1]))
    assert res.status_code == 200, res.text
    ex = res.json()["results"][0]["explanation"]
    ref = explain_image(chain, paths[0])
    assert len(ex["patches"]) == chain.spec.count == 49
    np.testing.assert_allclose([p["contribution"] for p in ex["patches"]],
                               [p.contribution for p in ref.patches], atol=1e-5)
    png = base64.b64decode(ex["png_base64"])
    assert png.startswith(b"\x89PNG") and Image.open(io.BytesIO(png)).width > 300
    assert "explanation" not in c_post_plain(server, paths[:1])


def c_post_plain(server: Running, paths: list[str]) -> dict[str, Any]:
    with server.client() as c:
        return c.post("/v1/detect", files=files_of(paths)).json()["results"][0]


def test_unusable_files_get_their_reason_next_to_scored_ones(server, paths):
    files = files_of(paths[:1]) + [("file", ("notes.png", b"<html>oops</html>", "image/png")),
                                   ("file", ("empty.jpg", b"", "image/jpeg")),
                                   ("file", ("tiny.png", png_bytes((16, 16)), "image/png"))]
    with server.client() as c:
        res = c.post("/v1/detect", files=files)
    assert res.status_code == 200
    status = {r["name"]: (r["status"], r["prob"]) for r in res.json()["results"]}
    assert status["notes.png"] == ("not_an_image", None)
    notes = next(r for r in res.json()["results"] if r["name"] == "notes.png")
    assert notes["error"] and notes["width"] is None and notes["verdict"] is None
    assert status["empty.jpg"] == ("empty_file", None)
    assert status["tiny.png"] == ("too_small", None)
    assert status[Path(paths[0]).name][0] == "ok"


# --- limits: one clear JSON error each ----------------------------------------------------

@pytest.mark.parametrize(("kwargs", "status", "code"), [
    ({"content": b""}, 400, "empty_body"),
    ({"content": b"raw bytes", "headers": {"content-type": "image/png"}}, 415, "not_multipart"),
    ({"data": {"field": "value"}, "files": [("x", ("", b"", "text/plain"))]}, 400, "no_files"),
    ({"files": [("file", (f"{i}.png", b"x", "image/png")) for i in range(9)]}, 413,
     "too_many_files"),
    ({"files": [("file", ("big.png", b"\0" * (2**20 + 10), "image/png"))]}, 413,
     "upload_too_large"),
    ({"files": [("file", ("a.txt", b"just text", "text/plain"))]}, 415, "not_an_image"),
    ({"files": [("file", ("e.png", b"", "image/png"))]}, 400, "empty_file"),
    ({"files": [("file", ("bomb.png", png_bytes((500, 500)), "image/png"))]}, 413, "too_large"),
    ({"files": [("file", ("small.png", png_bytes((20, 20)), "image/png"))]}, 422, "too_small"),
    ({"files": [("file", ("cut.png", png_bytes()[:200], "image/png"))]}, 422, "corrupt"),
    ({"params": {"explain": "maybe"}, "files": [("file", ("a.png", b"x", "image/png"))]}, 422,
     "bad_request"),
])
def test_bad_requests_get_one_clear_json_error(server, kwargs, status, code):
    with server.client() as c:
        res = c.post("/v1/detect", **kwargs)
        assert res.status_code == status, res.text
        body = res.json()
        assert body["error"] == code and body["detail"]
        assert c.get("/healthz").status_code == 200  # and the server lives on


def test_unusable_single_file_reports_its_result_row(server):
    with server.client() as c:
        body = c.post("/v1/detect", files=[("file", ("a.txt", b"text", "text/plain"))]).json()
    assert body["results"][0]["name"] == "a.txt" and body["results"][0]["status"] == "not_an_image"


def test_uploads_are_never_written_to_disk(server, tmp_path):
    """An upload larger than Starlette's 1 MB spool threshold opens no file for writing."""
    writes: list[str] = []
    armed = threading.Event()

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if armed.is_set() and event == "open":
            path, mode, flags = (list(args) + [None, None])[:3]
            writing = (isinstance(mode, str) and any(m in mode for m in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writing:
                writes.append(str(path))

    sys.addaudithook(hook)
    big = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (640, 640, 3), np.uint8)).save(
        big, "BMP")  # 1.2 MB: over Starlette's 1 MB spool size per file
    payload = big.getvalue()
    assert len(payload) > 2**20
    with serving(server.service.detector.chain, server.service.settings.model_dir,
                 max_upload_mb=4, max_pixels=500_000) as big_server, big_server.client() as c:
        armed.set()
        try:
            res = c.post("/v1/detect", files=[("file", ("a.bmp", payload, "image/bmp"))])
        finally:
            armed.clear()
    assert res.status_code == 200, res.text
    assert not writes, f"files opened for writing while serving an upload: {writes}"


def test_bearer_token(chain, bundle, paths):
    with serving(chain, bundle, token="s3cret") as srv, srv.client() as c:
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        assert c.get("/").status_code == 200  # the page itself is public; its calls are not
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            for res in (c.get("/v1/model", headers=headers),
                        c.post("/v1/detect", files=files_of(paths[:1]), headers=headers)):
                assert res.status_code == 401 and res.json()["error"] == "unauthorized"
                assert res.headers["www-authenticate"].startswith("Bearer")
        good = {"Authorization": "Bearer s3cret"}
        assert c.get("/v1/model", headers=good).json()["server"]["auth"] is True
        assert c.post("/v1/detect", files=files_of(paths[:1]), headers=good).status_code == 200


# --- batching, overload, timeout, readiness ---------------------------------------------

def test_concurrent_requests_are_micro_batched(chain, bundle, paths, expected):
    with serving(chain, bundle, max_batch=8, max_wait_ms=1000) as srv:
        def one(i: int) -> tuple[int, dict[str, Any]]:
            with srv.client() as c:
                return i, c.post("/v1/detect", files=files_of([paths[i]])).json()

        with concurrent.futures.ThreadPoolExecutor(len(paths)) as pool:
            answers = dict(pool.map(one, range(len(paths))))
        stats = srv.service.batcher.stats
    assert stats.items == len(paths) and stats.batches < len(paths) and stats.largest > 1
    probs = [answers[i]["results"][0]["prob"] for i in range(len(paths))]
    np.testing.assert_allclose(probs, expected["prob"], atol=1e-5)  # each got its own answer


def test_full_queue_answers_503(chain, bundle, paths):
    with serving(chain, bundle, max_queue=2) as srv, srv.client() as c:
        res = c.post("/v1/detect", files=files_of(paths[:3]))
        assert res.status_code == 503 and res.json()["error"] == "overloaded"
        assert res.headers["retry-after"] == "1"
        assert c.post("/v1/detect", files=files_of(paths[:2])).status_code == 200


def test_slow_requests_time_out_with_503(chain, bundle, paths):
    # 0.3 s: ample for the upload of three small PNGs, far too short to explain them
    with serving(chain, bundle, timeout_s=0.3) as srv, srv.client() as c:
        res = c.post("/v1/detect", params={"explain": "true"}, files=files_of(paths[:3]))
        assert res.status_code == 503 and res.json()["error"] == "timeout"
        assert c.get("/healthz").status_code == 200
        assert srv.service.batcher.stats.timed_out == 1


def test_slow_uploads_time_out_with_408(chain, bundle):
    with serving(chain, bundle, timeout_s=0.5) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
                         b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n")
            reply = b""  # the server answers without the rest of the body
            while b"}" not in reply and (chunk := conn.recv(4096)):
                reply += chunk
            reply = reply.decode()
        assert reply.startswith("HTTP/1.1 408") and "upload_timeout" in reply
        with srv.client() as c:
            assert c.get("/healthz").status_code == 200


def test_readyz_tells_loading_from_alive_and_reports_load_failure(chain, bundle, paths):
    gate = threading.Event()

    def slow_loader(s: ServeSettings) -> Detector:
        gate.wait(30)
        return Detector(chain, s.max_pixels, s.max_batch, s.model_dir)

    with serving(chain, bundle, loader=slow_loader, wait_ready=False) as srv, srv.client() as c:
        assert c.get("/healthz").status_code == 200
        res = c.get("/readyz")
        assert res.status_code == 503 and res.json()["status"] == "loading"
        res = c.post("/v1/detect", files=files_of(paths[:1]))
        assert res.status_code == 503 and res.json()["error"] == "not_ready"
        gate.set()
        deadline = time.monotonic() + 30
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert c.post("/v1/detect", files=files_of(paths[:1])).status_code == 200

    def broken(s: ServeSettings) -> Detector:
        return Detector.load(Path(s.model_dir) / "missing", device="cpu")

    with serving(chain, bundle, loader=broken, wait_ready=False) as srv, srv.client() as c:
        deadline = time.monotonic() + 30
        while srv.service.error is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        res = c.get("/readyz")
        assert res.status_code == 503 and res.json()["status"] == "failed"
        assert "not a model bundle" in res.json()["detail"]
        assert "failed to load" in c.get("/v1/model").json()["detail"]


# --- the real command ---------------------------------------------------------------------

def defaults_file(tmp_path: Path) -> Path:
    """A params file with no keys (a named --params file must exist)."""
    path = tmp_path / "defaults.yaml"
    path.write_text("{}\n")
    return path


def test_nsnet_serve_command_with_token_from_env(bundle, tmp_path):
    port = free_socket().getsockname()[1]
    exe = ROOT / ".venv" / "bin" / "nsnet"
    cmd = [str(exe) if exe.exists() else "nsnet", "serve", "--model", str(bundle),
           "--port", str(port), "--params", str(defaults_file(tmp_path)),
           "--set", "compute.device=cpu"]
    env = {**os.environ, "NSNET_TOKEN": "from-env", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "nsnet serve did not become ready"
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        assert httpx.get(url + "/v1/model", timeout=10).status_code == 401
        res = httpx.get(url + "/v1/model", headers={"Authorization": "Bearer from-env"},
                        timeout=10)
        assert res.status_code == 200 and res.json()["server"]["auth"] is True
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out
    assert f"http://127.0.0.1:{port}/" in out

    bad = subprocess.run(cmd[:3] + [str(tmp_path / "nope")] + cmd[4:], env=env, text=True,
                         capture_output=True, timeout=120)
    assert bad.returncode == 1
    assert "could not load the model" in bad.stderr and "not a model bundle" in bad.stderr
    assert "Traceback" not in bad.stderr


# --- the web page in a real browser -------------------------------------------------------

def test_page_ships_no_external_resources(server):
    from nsnet.serving.app import STATIC

    for f in STATIC.iterdir():
        text = f.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, f.name
    with server.client() as c:
        res = c.get("/")
        assert res.status_code == 200 and "default-src 'self'" in res.headers[
            "content-security-policy"]
        assert c.get("/static/app.js").status_code == 200


def browser_driver():
    """Headless Debian Chromium via selenium, never letting selenium-manager download, with the
    network blocked: every host but the loopback goes to a dead proxy and resolves to nothing,
    so a page that needs a CDN cannot render. Console messages are kept (``get_log``)."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    require_system_packages("chromium chromium-driver", bool(chromium and driver))
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as ChromeService

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,1000", "--proxy-server=http://127.0.0.1:9",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=ChromeService(executable_path=driver), options=opts)


def test_missing_browser_fails_loudly_unless_opted_out(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("NSNET_SYSTEM_PACKAGES", raising=False)
    with pytest.raises(pytest.fail.Exception, match="chromium-driver.*SYSTEM_PACKAGES=no"):
        browser_driver()
    monkeypatch.setenv("NSNET_SYSTEM_PACKAGES", "no")
    with pytest.raises(pytest.skip.Exception, match="SYSTEM_PACKAGES=no"):
        browser_driver()


def test_web_page_shows_verdict_probability_caption_and_heatmap(server, paths, expected):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser = browser_driver()
    try:
        browser.get(server.url + "/")
        wait = WebDriverWait(browser, 90)
        wait.until(lambda b: "head" in b.find_element(By.ID, "model").text)
        browser.find_element(By.ID, "files").send_keys("\n".join(paths[:2]))
        wait.until(ec.presence_of_all_elements_located((By.CSS_SELECTOR, ".card .heat")))
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".card .heat")) == 2)
        for i, path in enumerate(paths[:2]):
            card = browser.find_element(By.CSS_SELECTOR, f'.card[data-name="{Path(path).name}"]')
            assert card.find_element(By.CSS_SELECTOR, ".verdict").text.lower() == \
                expected["label"].iloc[i]
            assert f"{expected['prob'].iloc[i]:.3f}" in card.find_element(
                By.CSS_SELECTOR, ".prob").text
            assert expected["caption"].iloc[i] in card.find_element(
                By.CSS_SELECTOR, ".caption").text
            heat = card.find_element(By.CSS_SELECTOR, ".heat")
            assert browser.execute_script("return arguments[0].naturalWidth", heat) > 300
        browser.find_element(By.ID, "files").send_keys(str(Path(__file__)))  # not an image
        wait.until(lambda b: "not_an_image" in b.find_element(By.ID, "results").text)
    finally:
        browser.quit()


def test_docs_render_offline_in_a_browser(chain, bundle):
    """/docs is Swagger UI from the installed package: with the network blocked it renders
    every operation and the bearer scheme, and loads nothing from another origin."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with serving(chain, bundle, token="s3cret") as srv:
        with srv.client() as c:
            res = c.get("/docs")
            assert res.status_code == 200 and "default-src 'self'" in res.headers[
                "content-security-policy"]
        browser = browser_driver()
        try:
            with pytest.raises(WebDriverException, match="ERR_"):  # the blocking works
                browser.get("http://example.com/")
            browser.get_log("browser")  # that failure's console lines are not the page's
            browser.get(srv.url + "/docs")
            wait = WebDriverWait(browser, 90)
            ops = ".opblock-summary-path"
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ops)) >= 4)
            shown = {e.get_attribute("data-path") for e in browser.find_elements(
                By.CSS_SELECTOR, ops)}
            assert shown == {"/healthz", "/readyz", "/v1/model", "/v1/detect"}
            assert browser.find_element(By.CSS_SELECTOR, "button.authorize").is_displayed()
            assert "nsnet detector" in browser.find_element(By.CSS_SELECTOR, ".info").text
            loaded = browser.execute_script(
                "return performance.getEntriesByType('resource').map(e => e.name)")
            assert any(u.endswith("/openapi.json") for u in loaded), loaded
            assert all(u.startswith(srv.url + "/") for u in loaded), loaded
            problems = [m["message"] for m in browser.get_log("browser")
                        if m["level"] in ("SEVERE", "WARNING")]
            assert not problems, problems
        finally:
            browser.quit()
