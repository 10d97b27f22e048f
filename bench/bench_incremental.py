"""A benchmark tree that grows and shrinks: what `dvc repro` does for each change.

A DVC workspace is set up as `make demo` sets it up (the images tracked with `dvc add`, a
link cache type) with N generated images; its features are extracted once, then the tree
changes and `dvc repro extract` runs again, each change measured in this one run:

* first extraction of N images,
* +1% and +10% images (new generator folders),
* -1 source (a generator folder removed),
* nothing changed (the cost of an up-to-date `dvc repro`).

For each: files hashed and decoded by ``index``, images through the models (and feature rows
computed, degraded test copies included), whole-file reads per image of the *old* images
(strace, where installed), wall time, bytes added to the feature store and to DVC's cache.

Then the time to gather all N ids' features for training (``load_features``), and the same
gather at GenImage scale: the id index and the by-id gather are timed on a synthetic store of
2.6 M ids cut into 8192-row segments (one-value rows, so the per-id overhead is measured at full
size), and the bytes of 768-d float16 embeddings are added at the read rate measured here.

    python bench/bench_incremental.py --n 400       # about 6 minutes on a loaded 2-core CPU
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GENIMAGE = 2_600_000
SEGMENT = 8192


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1",
            "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@l", "GIT_COMMITTER_NAME": "b",
            "GIT_COMMITTER_EMAIL": "b@l"}


def sh(ws: Path, *cmd: str) -> str:
    res = subprocess.run(cmd, cwd=ws, env=env(), capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}{res.stderr[-3000:]}")
    return res.stdout + res.stderr


def du(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def setup(base: Path, n: int, size: int) -> Path:
    import yaml

    from nsnet.data.demo_data import make_workspace

    n_real = n // 4
    ws = make_workspace(base / "ws", ROOT, code="link", n_real=n_real,
                        n_fake_each=(n - n_real) // 3, size=size)
    raw = yaml.safe_load((ws / "params.yaml").read_text())
    raw["compute"]["shard_size"] = 256
    (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    sh(ws, "git", "init", "-q")
    sh(ws, "dvc", "init", "-q")
    sh(ws, "dvc", "config", "cache.type", "hardlink,symlink")
    sh(ws, "dvc", "add", "-q", "data/demo")
    sh(ws, "git", "add", "-A")
    sh(ws, "git", "commit", "-qm", "bench")
    return ws


def grow(ws: Path, name: str, n: int, size: int, seed: int) -> list[Path]:
    from nsnet.data.demo_data import make_demo_images

    scratch = ws.parent / f"scratch-{seed}"
    make_demo_images(scratch, n_real=1, n_fake_each=n, size=size, seed=seed)
    folder = ws / "data" / "demo" / "fake" / name
    folder.mkdir(parents=True)
    out = [Path(shutil.copy(p, folder / p.name))
           for p in sorted((scratch / "fake" / "tconv").glob("*.png"))[:n]]
    shutil.rmtree(scratch)
    return out


def old_image_reads(trace: Path, data: Path, new: set[str]) -> float:
    """Bytes read from images that existed before the change / their total size."""
    root = os.path.realpath(data)
    pat = re.compile(r"p?readv?\(\d+<(" + re.escape(root) + r"/[^>]+)>.*= (\d+)$")
    nbytes = 0
    for line in trace.read_text(errors="replace").splitlines():
        m = pat.search(line)
        if m and m.group(1) not in new:
            nbytes += int(m.group(2))
    total = sum(p.stat().st_size for p in Path(root).rglob("*")
                if p.is_file() and str(p) not in new)
    return nbytes / max(total, 1)


def repro(ws: Path, new: set[str]) -> dict:
    """`dvc repro extract` under strace (when installed): counts, time, reads, bytes."""
    store0, dvc0 = du(ws / "cache" / "features"), du(ws / ".dvc" / "cache")
    # DVC copies a persisted output that is linked from its cache before re-running the stage
    # ("unprotect"): the store and the manifest, when extract has work.
    linked = sum(p.stat().st_size for p in [*(ws / "cache" / "features").rglob("*"),
                                            ws / "cache" / "manifest.parquet"]
                 if p.is_file() and p.stat().st_nlink > 1)
    trace = ws.parent / "trace.out"
    cmd = ["dvc", "repro", "extract"]
    if shutil.which("strace"):
        cmd = ["strace", "-f", "-qq", "-y", "-s", "0", "-e",
               "trace=read,pread64,readv,preadv", "-o", str(trace), *cmd]
    t0 = time.perf_counter()
    out = sh(ws, *cmd)
    wall = time.perf_counter() - t0
    reads = old_image_reads(trace, ws / "data" / "demo", new) if trace.exists() else None
    trace.unlink(missing_ok=True)
    index = re.search(r"index: \d+ files \((\d+) read", out)
    extract = next((x for x in out.splitlines()
                    if x.startswith("extract: ") and "feature rows" in x), "")
    computed = re.search(r"computed (\d+)", extract)
    ran_extract = "Running stage 'extract'" in out
    return {"hashed": int(index.group(1)) if index else 0,
            "unprotect": linked if ran_extract else 0,
            "rows": int(computed.group(1)) if computed else 0,
            "old_reads": reads, "wall": wall,
            "store": du(ws / "cache" / "features") - store0,
            "dvc": du(ws / ".dvc" / "cache") - dvc0}


def load_time(ws: Path) -> tuple[float, int, int]:
    """Seconds to gather every id's features (in this process, one thread), rows, bytes."""
    import torch

    from nsnet.config import load_params
    from nsnet.extraction.cached_features import load_features

    torch.set_num_threads(1)
    params = load_params(ws / "params.yaml")
    cwd = os.getcwd()
    os.chdir(ws)
    try:
        load_features(params, "cache/manifest.parquet", "cache/features")  # warm the page cache
        t0 = time.perf_counter()
        fs = load_features(params, "cache/manifest.parquet", "cache/features")
        seconds = time.perf_counter() - t0
    finally:
        os.chdir(cwd)
    nbytes = (fs.image.numel() + fs.text.numel()) * 2  # as stored: float16
    return seconds, len(fs), nbytes


def _synthetic_part(root: Path, n: int, width: int, seed: int) -> tuple[object, np.ndarray]:
    """A part of ``n`` random ids in 8192-row segments of ``width`` float16 values; returns it
    and the ids in another (a manifest's) order."""
    from nsnet.cache_store import FeatureStore, Part, encode_ids

    store = FeatureStore(root)
    part = Part("image", {"bench": width})
    rng = np.random.default_rng(seed)
    ids = [f"{x:032x}" for x in rng.integers(0, 2**63, n, dtype=np.int64)]
    writer = store.part(part)
    for i in range(0, n, SEGMENT):
        chunk = ids[i:i + SEGMENT]
        writer.write_segment(chunk, {"emb": np.zeros((len(chunk), width), np.float16)}, {})
    order = encode_ids(ids)[rng.permutation(n)]
    return FeatureStore(root).part(part), order  # a fresh reader: nothing cached


def gather_rate(base: Path, n: int = 200_000, width: int = 768) -> float:
    """Bytes per second of a by-id gather of 768-d float16 rows (page cache warm)."""
    part, order = _synthetic_part(base / "rate" / "features", n, width, 1)
    part.gather(order, ["emb"])  # warm the page cache, as training reads a local store
    t0 = time.perf_counter()
    part.gather(order, ["emb"])
    return n * width * 2 / (time.perf_counter() - t0)


def genimage_gather(base: Path) -> tuple[float, float]:
    """(index build s, gather s) for 2.6 M ids in 8192-row segments of one-value rows."""
    part, order = _synthetic_part(base / "big" / "features", GENIMAGE, 1, 0)
    t0 = time.perf_counter()
    part.index()
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    part.gather(order, ["emb"])
    return built, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400, help="images of the first extraction")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--skip-genimage", action="store_true",
                    help="skip the 2.6 M-id gather (writes ~320 + 25 segments, ~0.6 GB)")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        base = Path(tmp)
        ws = setup(base, args.n, args.size)
        rows.append(("first extraction", args.n, repro(ws, set())))
        n = len(list((ws / "data" / "demo").rglob("*.png")))
        for label, share, name, seed in (("+1% images", 0.01, "gen1", 21),
                                         ("+10% images", 0.10, "gen10", 22)):
            k = max(1, round(share * n))
            new = {os.path.realpath(p) for p in grow(ws, name, k, args.size, seed)}
            rows.append((label, k, repro(ws, new)))
            n += k
        shutil.rmtree(ws / "data" / "demo" / "fake" / "nn_conv")
        rows.append(("-1 source (nn_conv)", 0, repro(ws, set())))
        rows.append(("nothing changed", 0, repro(ws, set())))
        seconds, n_rows, nbytes = load_time(ws)
        big = None if args.skip_genimage else (*genimage_gather(base), gather_rate(base))
    print(f"\n## Incremental extraction through `dvc repro extract` ({args.n} generated "
          f"{args.size} px images first; tiny models on the CPU; degraded test copies "
          f"included; load average {load:.1f} on {os.cpu_count()} cores)\n")
    print("| change | images added | files hashed + decoded (index) | feature rows through "
          "BLIP and CLIP | whole-file reads of old images | wall s | store + KB | "
          "DVC cache + KB | copied by DVC's unprotect KB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, k, r in rows:
        reads = "n/a (no strace)" if r["old_reads"] is None else f"{r['old_reads']:.3f}"
        print(f"| {label} | {k} | {r['hashed']} | {r['rows']} | {reads} | "
              f"{r['wall']:.1f} | {r['store'] / 1e3:.0f} | {r['dvc'] / 1e3:.0f} | "
              f"{r['unprotect'] / 1e3:.0f} |")
    print("\nFeature rows: one per image as it is, plus one per test image and degradation "
          "(protocol.degradations); each is a selection, a caption and the image and text "
          "embeddings. Whole-file reads of old images: bytes read from the images that were "
          "there before the change, over their size (the first extraction: index + extract). "
          "DVC's unprotect: before it re-runs a stage, DVC copies that stage's persisted "
          "outputs that are hard links into its cache (then links them back): with the "
          "hardlink cache type this is the store's size once per extract run that has work; "
          "a reflink filesystem (XFS, Btrfs, APFS) with cache.type reflink avoids it.")
    print(f"\nGathering all {n_rows} ids' features of the demo workspace (image + text, "
          f"{nbytes / 1e6:.1f} MB as stored) for training: {seconds:.3f} s.")
    if big is not None:
        built, gather, rate = big
        payload = GENIMAGE * 2 * 768 * 2 / rate  # image + text, 768-d float16
        print(f"\n| GenImage, {GENIMAGE / 1e6:.1f} M ids in {GENIMAGE // SEGMENT + 1} segments "
              "| seconds |")
        print("| --- | ---: |")
        print(f"| id index over every segment (measured) | {built:.1f} |")
        print(f"| gather by id in manifest order, per-id overhead (measured) | {gather:.1f} |")
        print(f"| 768-d image + text embeddings, {GENIMAGE * 2 * 768 * 2 / 1e9:.1f} GB at "
              f"{rate / 1e6:.0f} MB/s (the by-id gather rate of 200 k 768-d rows measured "
              f"here; extrapolated) | {payload:.1f} |")
        print(f"| total | {built + gather + payload:.1f} |")


if __name__ == "__main__":
    main()
