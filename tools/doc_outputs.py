"""The recipes behind the docs' output blocks: real commands in fresh workspaces.

Each recipe returns the text of one ``<!-- output: NAME -->`` block: the command line(s) as a
user types them (``$ ...``) and what they print, progress bars left out and long runs abridged
(``...`` marks a cut). ``tools/gen_docs.py outputs`` runs them and writes the blocks; the slow
test in tests/test_docs.py runs them again and compares the blocks' shape. Recipes marked slow
(``make test``) run only when named with ``--only``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RECIPES: dict[str, Callable[[Context], str]] = {}
SLOW = {"test"}
# Later recipes change the demo workspace, so they run in this order.
ORDER = ("demo", "evaluate", "matrix", "report-tables", "metrics-show", "predict", "explain",
         "cache", "serve", "serve-detect", "audit-shortcut", "exp-show", "compare-views", "test")


def recipe(name: str) -> Callable[[Callable[[Context], str]], Callable[[Context], str]]:
    def add(fn: Callable[[Context], str]) -> Callable[[Context], str]:
        RECIPES[name] = fn
        return fn
    return add


def env() -> dict[str, str]:
    out = {**os.environ, "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(ROOT),
           "GIT_AUTHOR_NAME": "docs", "GIT_AUTHOR_EMAIL": "docs@localhost",
           "GIT_COMMITTER_NAME": "docs", "GIT_COMMITTER_EMAIL": "docs@localhost"}
    out["PATH"] = f"{BIN}{os.pathsep}{out.get('PATH', '')}"
    out["PYTHONUNBUFFERED"] = "1"  # stdout and stderr in the order a terminal shows them
    out.pop("COLUMNS", None)
    return out


def clean(text: str) -> list[str]:
    """Terminal output as lines: the last state of each carriage-return-updated line, colour
    codes and progress bars (``|████|``) removed."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r\n", "\n")
    lines = []
    for raw in text.split("\n"):
        line = raw.split("\r")[-1].rstrip()
        if re.search(r"\d+%\|", line) or ("\r" in raw and not line):
            continue  # a progress bar, or what is left of one
        lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    return lines


class Context:
    """A temporary folder, the demo workspace made by `make demo`, and the demo's output."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="nsnet-docs-"))
        self.ws = self.tmp / "demo-run"
        self.demo_lines: list[str] = []
        self.server: subprocess.Popen | None = None  # `nsnet serve`, for serve-detect
        self.url = ""

    def run(self, *cmd: str, cwd: Path | None = None, ok: bool = True) -> list[str]:
        res = subprocess.run(cmd, cwd=cwd or self.ws, env=env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=3600)
        out = res.stdout
        if ok and res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {res.returncode}:\n{out}")
        return [line.replace(str(self.tmp) + "/", "") for line in clean(out)]

    def close(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
        shutil.rmtree(self.tmp, ignore_errors=True)


def make(target: str) -> list[str]:
    """``make TARGET`` with this interpreter's venv, never (re)installing it: the Makefile's
    ``$(BIN)`` is set to it and its install target marked as old (``-o``)."""
    if not (BIN / "nsnet").exists():
        raise SystemExit(f"{BIN / 'nsnet'} not found: run the docs with the project's venv")
    return ["make", f"BIN={BIN}", "-o", f"{BIN}/nsnet", target]


def pick(lines: list[str], *patterns: str) -> list[str]:
    return [line for line in lines if any(re.match(p, line) for p in patterns)]


def block(lines: list[str], start: str, stop: str, include_stop: bool = True) -> list[str]:
    """The lines from the first match of ``start`` to the next match of ``stop``."""
    i = next(k for k, line in enumerate(lines) if re.match(start, line))
    j = next(k for k in range(i + 1, len(lines)) if re.match(stop, lines[k]))
    return lines[i:j + 1 if include_stop else j]


# ----------------------------------------------------------------------------- the demo
@recipe("demo")
def demo(ctx: Context) -> str:
    """`make demo`, abridged to each stage's summary (the full output is about 150 lines)."""
    ctx.demo_lines = ctx.run(*make("demo"), f"DEMO={ctx.ws}", cwd=ROOT)
    lines = ctx.demo_lines
    out = ["$ make demo", "..."]
    stages = [i for i, line in enumerate(lines) if line.startswith("Running stage")]
    keep = {
        "scan": (r"scan: ",), "index": (r"index: ",),
        "audit": (r"audit: ", r"no metadata shortcut", r"WARNING"),
        "extract": (r"extract: ",), "train": (r"train: ",), "tsne": (r"tsne: ",),
        "report": (r"report: ",),
    }
    for n, i in enumerate(stages):
        stage = re.match(r"Running stage '([\w-]+)'", lines[i]).group(1)
        part = lines[i + 1:stages[n + 1] if n + 1 < len(stages) else len(lines)]
        out.append(lines[i])
        if stage == "evaluate":
            out += block(part, r"\[\w+\] test", r"per format")
        elif stage == "evaluate_degraded":
            out += block(part, r"mean over generators per degradation",
                         r"^$|^Updating|^Running|^Use `dvc push`|^To track", False)
        elif stage == "compare":  # the accuracy block; real, fake and AP follow, then notes
            out += [*block(part, r"acc \(%\)", r"^$", False), "...",
                    *block(part, r"test split", r"nsnet: top-")]
        elif stage == "matrix":  # the first head's table; one per head follows
            out += [*block(part, r"\[\w+\] test", r"unseen mean"), "..."]
        elif stage == "robustness":  # accuracy; the AP table follows
            out += [*block(part, r"test acc", r"test ap", include_stop=False), "..."]
        else:
            out += pick(part, *keep.get(stage, ()))
    out += [line for line in lines if line.startswith("Demo done")]
    return "\n".join(out)


@recipe("evaluate")
def evaluate(ctx: Context) -> str:
    """The demo's `nsnet evaluate` (test split): the per-generator table with its decision."""
    part = block(ctx.demo_lines, r"Running stage 'evaluate'", r"Running stage")
    return "\n".join(["$ nsnet evaluate", *block(part, r"\[\w+\] test", r"per format")])


@recipe("matrix")
def matrix(ctx: Context) -> str:
    """The demo's `nsnet matrix` (stage `matrix`): the table of the head `nsnet`, one of six."""
    part = block(ctx.demo_lines, r"Running stage 'matrix'", r"Running stage")
    table = block(part, r"\[nsnet\] test", r"unseen mean")
    return "\n".join(["$ nsnet matrix", "...", *table, "...",
                       *[x for x in part if x.startswith("* the training source")]])


@recipe("report-tables")
def report_tables(ctx: Context) -> str:
    """The first table of the demo's `reports/tables.md` (stage `report`)."""
    lines = ctx.run("head", "-n", "12", "reports/tables.md")
    return "\n".join(["$ head -n 12 reports/tables.md", *lines])


@recipe("metrics-show")
def metrics_show(ctx: Context) -> str:
    return "\n".join(["$ dvc metrics show", *[x for x in ctx.run("dvc", "metrics", "show")
                                              if x.strip()]])


@recipe("exp-show")
def exp_show(ctx: Context) -> str:
    """The experiments `make demo` queued, compared on a 120-column terminal (as a person
    sees it)."""
    table = terminal(ctx.ws, "dvc", "exp", "show", "--only-changed", "--no-pager")
    return "\n".join(["$ dvc exp show --only-changed", *[x for x in table if x.strip()]])


def terminal(cwd: Path, *cmd: str, columns: int = 120) -> list[str]:
    """``cmd``'s output on a pseudo-terminal ``columns`` wide."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    proc = subprocess.Popen(cmd, cwd=cwd, env={**env(), "TERM": "xterm",
                                               "COLUMNS": str(columns)},
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    text = b"".join(chunks).decode(errors="replace")
    if proc.wait(600) != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{text}")
    os.close(master)
    return clean(text)


# ----------------------------------------------------------------------------- new images
@recipe("predict")
def predict(ctx: Context) -> str:
    new = ctx.ws / "new"
    new.mkdir(exist_ok=True)
    for src in ("fake/tconv/tconv_0007.png", "fake/bilinear/bilinear_0003.png",
                "real/real_0010.png"):
        shutil.copy(ctx.ws / "data/demo" / src, new / Path(src).name)
    (new / "empty.jpg").write_bytes(b"")
    (new / "notes.png").write_text("not an image\n")
    (new / "IMG_0001.heic").write_bytes(b"\0" * 64)
    lines = ctx.run("nsnet", "predict", "new/", "--out", "results.csv")
    return "\n".join(["$ nsnet predict new/ --out results.csv", *lines])


@recipe("explain")
def explain(ctx: Context) -> str:
    lines = ctx.run("nsnet", "explain", "data/demo/fake/tconv/tconv_0004.png", "--out",
                    "report.png")
    return "\n".join(["$ nsnet explain data/demo/fake/tconv/tconv_0004.png --out report.png",
                      *lines])


@recipe("cache")
def cache(ctx: Context) -> str:
    """`nsnet cache` in the demo workspace: what the feature store holds (first parts)."""
    lines = ctx.run("nsnet", "cache")
    table = [x for x in lines if x.strip()]
    parts = [i for i, x in enumerate(table) if i > 1 and not x.startswith(" ")]  # + summary
    end = parts[2] if len(parts) > 2 else len(table)  # params, header, two parts (wrapped)
    return "\n".join(["$ nsnet cache", *table[:end], *(["..."] if end < len(table) else [])])


@recipe("serve")
def serve(ctx: Context) -> str:
    """`nsnet serve` in the demo workspace: its first lines until the model is ready; then the
    `serve-detect` recipe posts three files to it, and the server is stopped."""
    import socket
    import time

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx.server = subprocess.Popen(["nsnet", "serve", "--model", "models/detector", "--port",
                                   str(port)], cwd=ctx.ws, env=env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
    ctx.url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(ctx.url + "/readyz", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    else:
        raise RuntimeError("nsnet serve did not get ready in 5 minutes")
    lines = []
    while not any("/readyz" in x and "200" in x for x in lines):
        lines.append(ctx.server.stdout.readline().rstrip())
    shown = [x for x in lines if "/readyz" not in x or "200" in x or "503" in x][:6]
    return "\n".join([f"$ nsnet serve --model models/detector --port {port}", *shown])


@recipe("serve-detect")
def serve_detect(ctx: Context) -> str:
    """Three files posted to the server that `serve` started (one result per line)."""
    import json

    try:
        files = ["data/demo/real/real_0000.png", "data/demo/fake/tconv/tconv_0000.png",
                 "params.yaml"]
        out = subprocess.run(["curl", "-s", *[a for f in files for a in ("-F", f"file=@{f}")],
                              f"{ctx.url}/v1/detect"], cwd=ctx.ws, capture_output=True,
                             text=True, timeout=300, check=True).stdout
    finally:
        ctx.server.terminate()
        ctx.server.wait(60)
    answer = json.loads(out)
    results = answer.pop("results")
    head = json.dumps(answer)[:-1] + ', "results": ['
    rows = [f"  {json.dumps(r)}," for r in results]
    rows[-1] = rows[-1][:-1] + "]}"
    port = ctx.url.rsplit(":", 1)[1]
    return "\n".join([f"$ curl -s -F file=@real_0000.png -F file=@tconv_0000.png "
                      f"-F file=@params.yaml http://127.0.0.1:{port}/v1/detect", head, *rows])


@recipe("compare-views")
def compare_views(ctx: Context) -> str:
    """Patch-order views side by side (re-embeds the demo's images with 4 views)."""
    ctx.run("nsnet", "extract", "--set", "patches.views=4")
    lines = ctx.run("nsnet", "compare", "--set", "patches.views=4", "--views", "1,4",
                    "--heads", "composite_probe,advanced", "--out", "/dev/null")
    return "\n".join(["$ nsnet extract --set patches.views=4          # images only",
                      "$ nsnet compare --set patches.views=4 --views 1,4 "
                      "--heads composite_probe,advanced", *lines])


# ----------------------------------------------------------------------------- the audit
@recipe("audit-shortcut")
def audit_shortcut(ctx: Context) -> str:
    """A tree whose reals are JPEG (quality 90) and whose fakes are PNG."""
    import numpy as np
    from PIL import Image

    work = ctx.tmp / "shortcut"
    rng = np.random.default_rng(0)
    for folder, fmt in (("real", "jpg"), ("fake/gen", "png")):
        (work / "data/images" / folder).mkdir(parents=True)
        for i in range(30):
            base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            img = Image.fromarray(base).resize((64, 64), Image.Resampling.BILINEAR)
            img.save(work / "data/images" / folder / f"{i:03d}.{fmt}",
                     **({"quality": 90} if fmt == "jpg" else {}))
    (work / "params.yaml").write_text("data: {roots: [data/images]}\n")
    ctx.run("nsnet", "index", cwd=work)
    first = ctx.run("nsnet", "audit", cwd=work)
    second = ctx.run("nsnet", "audit", "--set", "protocol.train_reencode=jpeg95", cwd=work)
    return "\n".join(["$ nsnet audit", *first,
                      "$ nsnet audit --set protocol.train_reencode=jpeg95 | tail -1",
                      *pick(second, r"with protocol.train_reencode=")])


# ----------------------------------------------------------------------------- the tests
@recipe("test")
def test(ctx: Context) -> str:
    """`make test` (the whole suite: about 15 minutes on 2 cores), first and last lines."""
    lines = ctx.run(*make("test"), cwd=ROOT)
    lines = [x.replace(f"{BIN}/", ".venv/bin/") for x in lines  # as `make test` echoes them
             if x.strip() and not x.startswith("make")]
    return "\n".join(["$ make test", *lines[:3], "...", lines[-1]])


def run(names: list[str]) -> dict[str, str]:
    """Run the named recipes (in workspace order; ``demo`` first when any needs it)."""
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        raise SystemExit(f"no recipe for output block(s) {unknown}: add them to "
                         "tools/doc_outputs.py")
    todo = [n for n in ORDER if n in names]
    ctx = Context()
    try:
        needs_demo = any(n not in ("audit-shortcut", "test") for n in todo)
        if needs_demo and "demo" not in todo:
            todo.insert(0, "demo")
        if "serve-detect" in todo and "serve" not in todo:
            todo.insert(todo.index("serve-detect"), "serve")
        results = {}
        for name in todo:
            print(f"docs: running recipe {name}", file=sys.stderr)
            results[name] = RECIPES[name](ctx)
        return {n: results[n] for n in names if n in results}
    finally:
        ctx.close()
