"""Load test of `nsnet serve` on loopback; prints a Markdown table.

In one run: trains a tiny demo bundle with the real `nsnet` commands (or uses ``--model``),
scores the same images with `nsnet predict`'s code one at a time and in batches, then starts the
real `nsnet serve` command and lets N concurrent clients post one image per request for a
bounded time. It reports throughput, client-side p50/p99 latency, the server's mean micro-batch,
that every request got exactly its own answer (the right image, the probability `predict` gives
it, no request lost or answered twice), and the server's RSS over the run. Last, one client sends
a hostile multipart body (``--hostile-fields`` tiny form fields) while another polls /healthz:
how fast it is refused and how long /healthz takes meanwhile.

With the demo bundle (no ``--model``), `predict`'s images/s is also measured for a bundle of
every head (each trained on its own recipe of the demo's one feature store): a head that reads
no caption is scored without BLIP, so only the advanced head pays for captioning.

    python bench/bench_serve.py                      # tiny demo bundle, 8 clients, 30 s
    python bench/bench_serve.py --model models/detector --images data/some_images \
        --clients 32 --seconds 60 --device cuda
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402

from nsnet.inference.predict import expand_inputs, load_chain, predict_paths  # noqa: E402

NSNET = [sys.executable, "-m", "nsnet.stages.cli"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="bundle [default: train a tiny demo bundle]")
    ap.add_argument("--images", default=None, help="folder of images [default: the demo's]")
    ap.add_argument("--n-images", type=int, default=64, help="distinct images to send")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients")
    ap.add_argument("--seconds", type=float, default=30.0, help="length of the load phase")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=10.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, here and in serve")
    ap.add_argument("--hostile-fields", type=int, default=300_000,
                    help="form fields in the hostile body (0: skip that phase)")
    return ap.parse_args(argv)


def run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})




def demo_bundle(work: Path) -> tuple[Path, Path]:
    """A tiny demo workspace trained with the real commands: (bundle, images). Its params list
    every head in compare.heads, so `nsnet extract` computes every recipe."""
    ws = work / "ws"
    run(NSNET + ["demo-data", str(ws), "--workspace", "--project", str(ROOT), "--n-real", "48",
                 "--n-fake-each", "24"], ROOT)
    for stage in ("index", "extract", "train"):
        run(NSNET + [stage, "--set", "compute.device=cpu", "--set", "train.epochs=10"], ws)
    return ws / "models" / "detector", ws / "data" / "demo"


def per_head_rates(ws: Path, files: list[Path], batch: int, device: str
                   ) -> list[tuple[str, str, bool, float]]:
    """(head, recipe, BLIP loaded, images/s of batched `predict`) for a bundle of every head."""
    rows = []
    from nsnet.registry import METHODS

    for head in METHODS.names():
        out = ws / "models" / head
        run(NSNET + ["train", "--set", "compute.device=cpu", "--set", "train.epochs=3",
                     "--set", f"train.head={head}", "--out", str(out), "--log",
                     str(ws / f"{head}.csv")], ws)
        chain = load_chain(out, device)
        predict_paths(chain, files[:2], 2)  # warm-up
        t0 = time.perf_counter()
        predict_paths(chain, files, batch_size=batch)
        rows.append((head, chain.recipe, chain.blip is not None,
                     len(files) / (time.perf_counter() - t0)))
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(proc: psutil.Process) -> float:
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


def load_phase(url: str, files: list[Path], clients: int, seconds: float
               ) -> tuple[list[float], dict[str, Any], int, int]:
    """Clients post one image per request until time is up.

    Returns latencies, answers by request name, error answers and requests never answered.
    """
    blobs = [f.read_bytes() for f in files]
    latencies: list[float] = []
    answers: dict[str, Any] = {}
    errors = [0]
    sent: set[str] = set()
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(k: int) -> None:
        n = 0
        with httpx.Client(base_url=url, timeout=120) as c:
            while time.monotonic() < stop:
                i = (k * 7919 + n) % len(files)
                name = f"c{k}-r{n}-i{i}.png"  # unique per request: a mixed-up answer shows
                with lock:
                    sent.add(name)
                t0 = time.perf_counter()
                try:
                    res = c.post("/v1/detect", files=[("file", (name, blobs[i], "image/png"))])
                except httpx.HTTPError:
                    continue  # no answer at all: counted as lost
                finally:
                    n += 1
                dt = time.perf_counter() - t0
                with lock:
                    if res.status_code != 200:
                        errors[0] += 1
                        if errors[0] == 1:
                            print(f"first error answer: {res.status_code} {res.text[:300]}",
                                  file=sys.stderr)
                        answers.setdefault(name, [])
                    else:
                        latencies.append(dt)
                        for r in res.json()["results"]:
                            answers.setdefault(r["name"], []).append((i, r))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, answers, errors[0], len(sent - set(answers))


def hostile_phase(url: str, fields: int) -> dict[str, Any]:
    """Post a body of ``fields`` tiny form fields while polling /healthz (every ~10 ms)."""
    head = "--hostile\r\nContent-Disposition: form-data; name="
    body = ("".join(f'{head}"f{i}"\r\n\r\nv\r\n' for i in range(fields))
            + "--hostile--\r\n").encode()
    answer: dict[str, Any] = {"mb": len(body) / 2**20}

    def send() -> None:
        t0 = time.perf_counter()
        res = httpx.post(url + "/v1/detect", content=body, timeout=300,
                         headers={"content-type": "multipart/form-data; boundary=hostile"})
        answer.update(status=f"{res.status_code} `{res.json().get('error')}`",
                      seconds=time.perf_counter() - t0)

    health: list[float] = []
    sender = threading.Thread(target=send)
    with httpx.Client(base_url=url, timeout=300) as c:
        c.get("/healthz")
        sender.start()
        while sender.is_alive() or not health:
            t0 = time.perf_counter()
            c.get("/healthz")
            health.append(time.perf_counter() - t0)
            time.sleep(0.01)
    sender.join()
    return {**answer, "health": sorted(health)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            bundle, images = Path(args.model), Path(args.images or ".")
        else:
            print("building a tiny demo bundle with the nsnet commands ...", file=sys.stderr)
            bundle, images = demo_bundle(Path(tmp))
        files = expand_inputs([images])[: args.n_images]
        chain = load_chain(bundle, args.device)
        predict_paths(chain, files[:2], 2)  # warm-up
        t0 = time.perf_counter()
        one = predict_paths(chain, files, batch_size=1)
        t_one = time.perf_counter() - t0
        t0 = time.perf_counter()
        batched = predict_paths(chain, files, batch_size=args.max_batch)
        t_batched = time.perf_counter() - t0
        usable = (batched["status"] == "ok").tolist()  # the demo set has unusable files too
        files = [f for f, ok in zip(files, usable, strict=True) if ok]
        expected = dict(enumerate(batched["prob"][usable]))
        heads = ([] if args.model else
                 per_head_rates(Path(tmp) / "ws", files, args.max_batch, args.device))

        port = free_port()
        (Path(tmp) / "none.yaml").write_text("{}\n")  # no params: the options below say all
        log = open(Path(tmp) / "serve.log", "w+")  # read back if the server fails
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
        server = subprocess.Popen(
            NSNET + ["serve", "--model", str(bundle), "--port", str(port), "--max-batch",
                     str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
                     "--max-queue", str(max(256, 4 * args.clients)), "--params",
                     str(Path(tmp) / "none.yaml"), "--set", f"compute.device={args.device}",
                     "--set", f"compute.torch_threads={args.threads}"],
            env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while True:
                if server.poll() is not None:
                    log.seek(0)
                    raise SystemExit(f"nsnet serve exited: {log.read()}")
                try:
                    if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("nsnet serve did not become ready in 300 s")
                time.sleep(0.2)
            proc = psutil.Process(server.pid)
            load_phase(url, files, args.clients, min(3.0, args.seconds / 5))  # warm-up
            rss_samples = [rss_mb(proc)]
            sampling = threading.Event()

            def sample() -> None:
                while not sampling.wait(0.5):
                    rss_samples.append(rss_mb(proc))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            t0 = time.perf_counter()
            latencies, answers, errors, lost = load_phase(url, files, args.clients, args.seconds)
            t_load = time.perf_counter() - t0
            sampling.set()
            sampler.join()
            rss_samples.append(rss_mb(proc))
            stats = httpx.get(url + "/v1/model", timeout=10).json()["batching"]
            hostile = hostile_phase(url, args.hostile_fields) if args.hostile_fields else None
        finally:
            server.terminate()
            server.wait(30)
            log.close()

    sent = len(latencies) + errors + lost
    twice = sum(len(v) > 1 for v in answers.values())
    wrong = sum(1 for name, got in answers.items() for i, r in got
                if not name.endswith(f"-i{i}.png") or abs(r["prob"] - expected[i]) > 1e-4)
    lat = sorted(latencies)
    p50 = statistics.median(lat) * 1000
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000
    third = max(1, len(rss_samples) // 3)
    thirds = [statistics.mean(rss_samples[:third]),
              statistics.mean(rss_samples[third:-third] or rss_samples),
              statistics.mean(rss_samples[-third:])]

    print(f"\n{len(files)} images, {args.clients} clients x {args.seconds:g} s, "
          f"max batch {args.max_batch}, max wait {args.max_wait_ms:g} ms, device {args.device}, "
          f"{args.threads} torch thread(s), load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs\n")
    print("| way in | images | seconds | images/s | p50 ms | p99 ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(f"| `predict`, one image at a time | {len(one)} | {t_one:.1f} | "
          f"{len(one) / t_one:.2f} | | |")
    print(f"| `predict`, batches of {args.max_batch} | {len(batched)} | {t_batched:.1f} | "
          f"{len(batched) / t_batched:.2f} | | |")
    print(f"| `nsnet serve`, {args.clients} concurrent clients, 1 image/request | "
          f"{len(latencies)} | {t_load:.1f} | {len(latencies) / t_load:.2f} | {p50:.0f} | "
          f"{p99:.0f} |")
    if heads:
        print(f"\n| `predict` per head (batches of {args.max_batch}) | recipe | BLIP runs | "
              "images/s |")
        print("| --- | --- | --- | ---: |")
        for head, recipe, blip, rate in heads:
            print(f"| {head} | {recipe} | {'yes' if blip else 'no'} | {rate:.2f} |")
    print(f"\nrequests sent {sent}, answered 200: {len(latencies)}, errors: {errors}, "
          f"answered twice: {twice}, wrong image or probability: {wrong}, "
          f"lost (no answer): {lost}")
    print(f"server micro-batches: {stats['batches']} (mean {stats['mean_batch']:.1f} images, "
          f"largest {stats['largest']})")
    print(f"server RSS (MB), mean of each third of the run: {thirds[0]:.0f} / {thirds[1]:.0f} / "
          f"{thirds[2]:.0f}; min {min(rss_samples):.0f}, max {max(rss_samples):.0f} "
          f"({len(rss_samples)} samples)")

    if hostile:
        h = hostile["health"]
        print(f"\n| hostile body | answer | refused after s | /healthz calls meanwhile | "
              f"max ms | median ms |\n| --- | --- | ---: | ---: | ---: | ---: |\n"
              f"| {args.hostile_fields} form fields, {hostile['mb']:.1f} MB | {hostile['status']} "
              f"| {hostile['seconds']:.2f} | {len(h)} | {h[-1] * 1000:.0f} | "
              f"{statistics.median(h) * 1000:.1f} |")


if __name__ == "__main__":
    main()
