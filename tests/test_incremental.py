"""Extraction once per image, through the real `dvc repro` on the real dvc.yaml.

One demo workspace, set up as `make demo` sets it up (images tracked by `dvc add`, a link cache
type), is grown and shrunk in file order: adding images reads and computes only them and grows
DVC's cache by a small fraction; the grown workspace's metrics equal a from-scratch run's on
the same tree; removing a generator reads no image; queued head-only experiments reuse the
store. Beside it: a symlinked data folder, a copied workspace, and the number of whole-file
reads of a fresh `dvc repro` (strace, where installed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from nsnet.data.demo_data import DEMO_VALUES, make_demo_images, make_workspace
from tests.conftest import workspace_params
from tests.test_dvc_pipeline import ROOT, _env, init_workspace, ran, sh, skipped

pytestmark = pytest.mark.slow
IMAGES = {"n_real": 16, "n_fake_each": 8, "size": 96}
# The demo's values on the code's defaults (never the user's params.yaml), with the small fixed
# batches and workers these comparisons were written for (a grown store must score exactly
# like a from-scratch one).
WS = {"params": workspace_params(), "values": {
    **DEMO_VALUES, "data.num_workers": 2, "clip.batch_size": 64, "caption.batch_size": 32,
    "caption.max_new_tokens": 12, "compute.precision": "fp32", "compute.shard_size": 128,
    "compute.num_workers": 0, "train.batch_size": 64, "train.lr": 1e-3, "train.nsnet_k": 8,
    "train.hidden_dim": 256}}


def _tune(ws: Path, **extra: dict) -> None:
    """Few epochs; train on every source (12 images per generator leave val one-sided)."""
    raw = yaml.safe_load((ws / "params.yaml").read_text())
    raw["train"].update({"epochs": 2})
    raw["protocol"]["train_sources"] = []
    for section, values in extra.items():
        raw.setdefault(section, {}).update(values)
    (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def line_of(out: str, stage: str) -> str:
    return next(x for x in out.splitlines() if x.startswith(f"{stage}: ") and "files" in x
                or x.startswith(f"{stage}: ") and "images ->" in x)


def index_reads(out: str) -> tuple[int, int]:
    m = re.search(r"index: \d+ files \((\d+) read, (\d+) unchanged\)", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


def extract_computed(out: str) -> int:
    line = line_of(out, "extract")
    m = re.search(r"computed (\d+)", line)
    return int(m.group(1)) if m else 0


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def commit(ws: Path, message: str) -> None:
    sh(ws, "git", "add", "-A")
    sh(ws, "git", "commit", "-qm", message)


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A workspace after its first `dvc repro`, committed."""
    base = tmp_path_factory.mktemp("incremental")
    ws = make_workspace(base / "ws", ROOT, code="link", **WS, **IMAGES)
    _tune(ws)
    init_workspace(ws)
    first = sh(ws, "dvc", "repro")
    commit(ws, "first run")
    return {"ws": ws, "base": base, "first": first}


def _new_images(folder: Path, n: int, seed: int) -> list[Path]:
    """``n`` new fake images of a new generator (other crops: new contents)."""
    scratch = folder.parent / f".scratch-{seed}"
    make_demo_images(scratch, n_real=1, n_fake_each=n, size=IMAGES["size"], seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for p in sorted((scratch / "fake" / "tconv").glob("*.png"))[:n]:
        out.append(Path(shutil.copy(p, folder / f"new_{seed}_{p.name}")))
    shutil.rmtree(scratch)
    return out


def test_adding_images_reads_and_computes_only_them(grown):
    ws = grown["ws"]
    old_reads, _ = index_reads(grown["first"])
    store_before, dvc_before = du(ws / "cache" / "features"), du(ws / ".dvc" / "cache")
    segments = {p: (p.stat().st_ino, p.stat().st_mtime_ns)
                for p in (ws / "cache" / "features").glob("*/*/*.h5")}
    added = _new_images(ws / "data" / "demo" / "fake" / "newgen", 2, seed=11)  # about 4%
    out = sh(ws, "dvc", "repro", "extract")  # the feature side (DVC's cache measured here)
    read, unchanged = index_reads(out)
    assert (read, unchanged) == (len(added), old_reads), out
    manifest = __import__("pandas").read_parquet(ws / "cache" / "manifest.parquet")
    new = manifest[manifest["source"] == "newgen"]
    n_degraded = len(yaml.safe_load((ws / "params.yaml").read_text())["protocol"]
                     ["degradations"])
    want = len(new) + n_degraded * int((new["split"] == "test").sum())
    assert extract_computed(out) == want, line_of(out, "extract")
    store_added = du(ws / "cache" / "features") - store_before
    dvc_added = du(ws / ".dvc" / "cache") - dvc_before
    assert store_added > 0
    for path, stamp in segments.items():  # committed segments are never rewritten
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == stamp, path
    # DVC stores the new segments, the new manifest and the index report: a small fraction
    # of the extraction outputs, never a second copy of the store.
    manifest_bytes = (ws / "cache" / "manifest.parquet").stat().st_size
    assert dvc_added < store_added + 3 * manifest_bytes + 64 * 1024, (dvc_added, store_added)
    out = sh(ws, "dvc", "repro")  # the heads on the grown store
    assert {"index", "extract"} <= skipped(out), out
    sh(ws, "dvc", "add", "-q", "data/demo")  # version the new images too
    commit(ws, "grown")
    grown["added"] = added


def test_grown_workspace_scores_like_a_from_scratch_run(grown):
    ws, base = grown["ws"], grown["base"]
    scratch = make_workspace(base / "scratch", ROOT, code="link", **WS, **IMAGES)
    _tune(scratch)
    for path in grown["added"]:
        dest = scratch / path.relative_to(ws)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest)
    init_workspace(scratch)
    sh(scratch, "dvc", "repro")
    a = json.loads((ws / "metrics/details/metrics.json").read_text())
    b = json.loads((scratch / "metrics/details/metrics.json").read_text())
    assert a["test"]["per_source"] == b["test"]["per_source"]
    assert a["val"]["per_source"] == b["val"]["per_source"]
    assert json.loads((ws / "metrics/compare.json").read_text()) == \
        json.loads((scratch / "metrics/compare.json").read_text())


def test_removing_a_generator_reads_no_image(grown):
    ws = grown["ws"]
    shutil.rmtree(ws / "data" / "demo" / "fake" / "newgen")
    out = sh(ws, "dvc", "repro", "extract")
    assert ran(out) >= {"scan", "index", "extract"}, out
    read, _ = index_reads(out)
    assert read == 0 and "all up to date in the store" in line_of(out, "extract"), out
    sh(ws, "git", "checkout", "-q", "--", ".")  # back to the committed tree and lock
    sh(ws, "dvc", "checkout", "-q", "--force")  # the images come back, as links
    out = sh(ws, "dvc", "repro")
    assert "index" in skipped(out), out  # the same files, sizes and times as committed
    assert sh(ws, "git", "status", "--porcelain") == ""


def test_queued_head_only_experiments_reuse_the_store(grown):
    """`dvc exp run --queue` + `dvc queue start`: temporary workspaces get the images and the
    store from DVC's cache (links), so index and extract are skipped and no image decoded."""
    ws = grown["ws"]
    assert sh(ws, "git", "status", "--porcelain") == ""
    sh(ws, "dvc", "exp", "run", "--queue", "-S", "train.lr=0.0005")
    sh(ws, "dvc", "exp", "run", "--queue", "-S", "train.lr=0.002")
    sh(ws, "dvc", "queue", "start", "-j", "1")
    deadline = time.monotonic() + 600
    while re.search(r"Queued|Running", sh(ws, "dvc", "queue", "status")):
        assert time.monotonic() < deadline, sh(ws, "dvc", "queue", "status")
        time.sleep(2)
    status = sh(ws, "dvc", "queue", "status")
    names = re.findall(r"^\w+\s+(\S+)\s+.*Success", status, flags=re.M)
    assert len(names) == 2 and "Failed" not in status, status
    for name in names:
        log = sh(ws, "dvc", "queue", "logs", name)
        assert {"index", "audit", "extract"} <= skipped(log), log
        assert "train" in ran(log), log
    exps = json.loads(sh(ws, "dvc", "exp", "show", "--json"))
    lrs = {r["data"]["params"]["params.yaml"]["data"]["train"]["lr"]
           for c in exps for e in (c.get("experiments") or []) for r in e["revs"]}
    assert {0.0005, 0.002} <= lrs


def test_a_symlinked_data_folder_is_seen_by_the_next_repro(tmp_path):
    outside = tmp_path / "lab-share" / "demo"
    make_demo_images(outside, **IMAGES)
    ws = make_workspace(tmp_path / "ws", ROOT, code="link", **WS, n_real=1, n_fake_each=1, size=96)
    shutil.rmtree(ws / "data" / "demo")
    (ws / "data" / "demo").symlink_to(outside, target_is_directory=True)
    _tune(ws)
    sh(ws, "git", "init", "-q")
    sh(ws, "dvc", "init", "-q")
    first = sh(ws, "dvc", "repro", "extract")
    n = index_reads(first)[0]
    assert n == 3 * IMAGES["n_fake_each"] + IMAGES["n_real"]
    _new_images(outside / "fake" / "newgen", 1, seed=12)
    out = sh(ws, "dvc", "repro", "extract")
    assert "index" in ran(out) and index_reads(out) == (1, n), out
    assert extract_computed(out) >= 1


def test_a_copied_workspace_reads_its_own_images(grown, tmp_path):
    """The manifest keeps paths relative to the root as params.yaml names it: a copy with the
    original moved away re-extracts (after a caption setting change) from its own files."""
    src = grown["ws"]
    copy = tmp_path / "copy"
    shutil.copytree(src, copy, symlinks=True)
    moved = src.with_name(src.name + "-moved")
    src.rename(moved)
    try:
        raw = yaml.safe_load((copy / "params.yaml").read_text())
        raw["caption"]["max_new_tokens"] = 5
        (copy / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        out = sh(copy, "dvc", "repro", "extract")
        assert extract_computed(out) > 0 and "caption" in line_of(out, "extract"), out
        manifest = __import__("pandas").read_parquet(copy / "cache" / "manifest.parquet")
        assert set(manifest["root"]) == {"data/demo"}
        assert not any(os.path.isabs(os.fsdecode(p)) for p in manifest["relpath"])
    finally:
        moved.rename(src)


def _whole_reads(ws: Path, data: Path, *cmd: str) -> float:
    """Bytes read from files under ``data`` by ``cmd`` (and its children) / their total size."""
    trace = ws / "strace.out"
    proc = subprocess.run(["strace", "-f", "-qq", "-y", "-s", "0", "-e",
                           "trace=read,pread64,readv,preadv", "-o", str(trace), *cmd],
                          cwd=ws, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    root = os.path.realpath(data)
    pattern = re.compile(r"p?readv?\(\d+<(" + re.escape(root) + r"/[^>]+)>.*= (\d+)$")
    nbytes = sum(int(m.group(2)) for line in trace.read_text(errors="replace").splitlines()
                 if (m := pattern.search(line)))
    total = sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())
    trace.unlink()
    return nbytes / total


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_a_fresh_repro_reads_each_image_at_most_twice(tmp_path):
    ws = make_workspace(tmp_path / "ws", ROOT, code="link", **WS, **IMAGES)
    _tune(ws)
    init_workspace(ws)
    reads = _whole_reads(ws, ws / "data" / "demo", "dvc", "repro", "extract")
    assert 1.5 < reads <= 2.05, reads  # index hashes + validates, extract decodes
