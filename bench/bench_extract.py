"""Extraction throughput on the machine at hand; prints Markdown tables.

1. images/s of the patches, caption and embed stages: the batched pipeline (``run_patches`` /
   ``run_caption`` / ``run_embed``: DataLoader workers, batches, pinned uploads, autocast) vs
   a naive loop over one image at a time with the same models;
2. read throughput of the feature store through our loaders (``load_features`` for
   embeddings.h5, the embed stage's block reads for patches.h5) vs ``open().read()`` of the
   same file;
3. model efficiency: counted FLOPs per image of the CLIP image tower, the device's achievable
   matmul TFLOP/s in the same dtype (a large ``torch.matmul``), and the fraction of it that the
   embed stage reaches.

CPU, tiny models (seconds):
    python bench/bench_extract.py
GPU, real-shaped ViT-L/14 and BLIP-base with random weights (timing only):
    python bench/bench_extract.py --arch ViT-L-14 --caption base-random --device cuda \
        --precision fp16 --images 4096 --naive 256 --num-workers 8 --store-rows 65536
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.backbones.blip import load_blip  # noqa: E402
from pipeline.backbones.clip import load_clip, resolve_device  # noqa: E402
from pipeline.cache_store import concat_h5, h5_provenance, write_h5, write_table  # noqa: E402
from pipeline.config import Params, params_from_dict  # noqa: E402
from pipeline.data.images import open_image, read_bytes  # noqa: E402
from pipeline.data.index_stage import build_index  # noqa: E402
from pipeline.data.manifest import read_manifest  # noqa: E402
from pipeline.extraction.extract_stages import AMP, run_caption, run_embed, run_patches  # noqa: E402
from pipeline.extraction.patch_selection import PatchSpec, select_patches  # noqa: E402

VIT_L14_GFLOPS = 162.0  # open_clip's model profile: image tower at 224 px (81 G multiply-adds)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=96, help="images for the batched pipeline")
    ap.add_argument("--naive", type=int, default=24, help="images for the one-at-a-time loop")
    ap.add_argument("--size", type=int, default=256, help="side of the generated images (px)")
    ap.add_argument("--arch", default="tiny", help="tiny, or an open_clip arch (random weights)")
    ap.add_argument("--caption", default="tiny", choices=("tiny", "base-random"),
                    help="tiny BLIP, or BLIP-base's architecture with random weights")
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                    help="auto: fp16 on CUDA, fp32 on CPU")
    ap.add_argument("--num-workers", type=int, default=min(8, max(0, (os.cpu_count() or 1) - 1)))
    ap.add_argument("--clip-batch", type=int, default=64)
    ap.add_argument("--caption-batch", type=int, default=16)
    ap.add_argument("--shard-size", type=int, default=1024)
    ap.add_argument("--store-rows", type=int, default=100_000,
                    help="rows of the synthetic embeddings.h5 for the read benchmark")
    ap.add_argument("--patch-rows", type=int, default=1024,
                    help="rows of the synthetic patches.h5 (150 KB each) for the read benchmark")
    ap.add_argument("--workdir", default="", help="keep files here (default: a temp dir)")
    return ap.parse_args(argv)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- setup


def random_clip_checkpoint(arch: str, dest: Path) -> str:
    """Random weights of a real open_clip architecture, saved so ``load_clip`` can load them."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None)
    torch.save({k: v.half() for k, v in model.state_dict().items()}, dest)
    return str(dest)


def random_blip_base(dest: Path) -> str:
    """BLIP-base's architecture (ViT-B/16 at 384 px, BERT-base decoder), random weights."""
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    from pipeline.backbones.blip import _tiny

    torch.manual_seed(0)
    model = BlipForConditionalGeneration(BlipConfig())
    tokenizer = _tiny()[1].tokenizer  # decoding only; unknown ids decode to [UNK]
    processor = BlipProcessor(image_processor=BlipImageProcessor(), tokenizer=tokenizer)
    model.save_pretrained(dest)
    processor.save_pretrained(dest)
    return str(dest)


def make_params(args: argparse.Namespace, root: Path, clip_weights: str, blip: str,
                precision: str) -> Params:
    return params_from_dict({
        "data": {"roots": [str(root)], "num_workers": max(1, args.num_workers)},
        "clip": {"arch": args.arch, "pretrained": clip_weights, "batch_size": args.clip_batch},
        "caption": {"model": blip, "max_new_tokens": args.max_new_tokens,
                    "batch_size": args.caption_batch},
        "compute": {"device": args.device, "precision": precision,
                    "num_workers": args.num_workers, "shard_size": args.shard_size},
    })


# ----------------------------------------------------------------------------- stages


def batched(params: Params, cache: Path) -> dict[str, float]:
    m = cache / "manifest.parquet"
    secs = {}
    secs["patches"], _ = timed(lambda: run_patches(params, m, cache / "patches.h5", cache))
    secs["caption"], _ = timed(lambda: run_caption(params, m, cache / "captions.parquet", cache))
    secs["embed"], _ = timed(lambda: run_embed(params, m, cache / "patches.h5",
                                               cache / "captions.parquet",
                                               cache / "embeddings.h5", cache))
    return secs


def naive(params: Params, cache: Path, n: int) -> dict[str, float]:
    """The same work one image at a time, in the main process, no overlap."""
    rows = read_manifest(cache / "manifest.parquet", only_ok=True).head(n)
    spec = PatchSpec(**params.patches.__dict__)
    amp = AMP[params.compute.precision]
    captioner = load_blip(params.caption.model, params.compute.device)
    clip = load_clip(params.clip.arch, params.clip.pretrained, params.compute.device)
    secs = {"patches": 0.0, "caption": 0.0, "embed": 0.0}
    limit = params.data.max_image_pixels
    for r in rows.itertuples():
        path = os.fsdecode(r.path_raw)
        t0 = time.perf_counter()
        sel = select_patches(open_image(read_bytes(path), limit)[0], r.id, spec)
        t1 = time.perf_counter()
        (cap,) = captioner.caption([open_image(read_bytes(path), limit)[0]],
                                   params.caption.max_new_tokens, amp)
        sync()
        t2 = time.perf_counter()
        clip.encode_images(sel.composite[None], amp).cpu()
        clip.encode_texts([cap], amp).cpu()
        t3 = time.perf_counter()
        for stage, t in zip(secs, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            secs[stage] += t
    return secs


# ----------------------------------------------------------------------------- efficiency


def image_tower_flops(clip: Any) -> float:
    """FLOPs of one image through the image tower, counted by torch (2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, clip.image_size, clip.image_size, device=clip.device)
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused MHA kernel is not counted
    try:
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            clip.model.encode_image(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return float(counter.get_total_flops())


def image_tower_rate(clip: Any, batch: int, amp: torch.dtype | None, seconds: float) -> float:
    """Images/s of ``encode_images`` on in-memory composites (no decoding, no IO)."""
    comps = np.random.default_rng(0).integers(0, 256, (batch, 224, 224, 3), np.uint8)
    clip.encode_images(comps, amp)  # warm-up
    n, t0 = 0, time.perf_counter()
    while True:
        clip.encode_images(comps, amp).cpu()
        n += batch
        if time.perf_counter() - t0 >= seconds:
            return n / (time.perf_counter() - t0)


def matmul_tflops(device: torch.device, dtype: torch.dtype, seconds: float = 2.0) -> float:
    """Achievable dense matmul throughput (TFLOP/s) in ``dtype`` on ``device``."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.matmul(a, b)
    best, t_end = math.inf, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t, _ = timed(lambda: torch.matmul(a, b))
        best = min(best, t)
    return 2 * n**3 / best / 1e12


# ----------------------------------------------------------------------------- store reads


def synthetic_store(params: Params, cache: Path, rows: int, patch_rows: int
                    ) -> tuple[Path, Path, Path]:
    """The real cache's files tiled to more rows, in the layout the stages write."""
    from pipeline.data.manifest import MANIFEST_COLUMNS

    man = read_manifest(cache / "manifest.parquet")
    ok = man[man["status"] == "ok"].reset_index(drop=True)
    take = np.arange(rows) % len(ok)
    big = ok.iloc[take].reset_index(drop=True)
    big["id"] = [f"{i:032x}" for i in range(rows)]
    out = cache / "store"
    write_table(out / "manifest.parquet", big[[c for c in MANIFEST_COLUMNS if c in big]], {})
    with h5py.File(cache / "embeddings.h5", "r") as f:
        arrays = {k: f[k][:][take] for k in ("image", "text")}
    write_h5(out / "part-e.h5", arrays, big["id"].tolist(), {})
    concat_h5(out / "embeddings.h5", [out / "part-e.h5"], ["image", "text"],
              h5_provenance(cache / "embeddings.h5"), chunk_rows=0)
    take = take[:patch_rows]
    with h5py.File(cache / "patches.h5", "r") as f:
        arrays = {k: f[k][:][take] for k in ("composites", "coords", "entropy")}
    write_h5(out / "part-p.h5", arrays, big["id"].tolist()[:patch_rows], {})
    concat_h5(out / "patches.h5", [out / "part-p.h5"], ["composites", "coords", "entropy"],
              h5_provenance(cache / "patches.h5"), chunk_rows=8)
    for part in ("part-e.h5", "part-p.h5"):
        (out / part).unlink()
    return out / "manifest.parquet", out / "embeddings.h5", out / "patches.h5"


def plain_read(path: Path) -> None:
    """Sequential read of the whole file through one reused 16 MB buffer."""
    buf = bytearray(16 << 20)
    with open(path, "rb", buffering=0) as fh:
        while fh.readinto(buf):
            pass


def raw_h5(path: Path) -> None:
    with h5py.File(path, "r") as f:
        f["image"][:], f["text"][:]


def read_patches(path: Path, block: int) -> None:
    """The embed stage's access pattern: composites in clip.batch_size blocks."""
    with h5py.File(path, "r") as f:
        comps = f["composites"]
        for i in range(0, len(comps), block):
            comps[i:i + block]


def best_of(fn: Callable[[], Any], repeat: int = 3) -> float:
    return min(timed(fn)[0] for _ in range(repeat))


def store_reads(params: Params, cache: Path, rows: int, patch_rows: int
                ) -> list[tuple[str, int, float, float]]:
    from pipeline.extraction.cached_features import load_features

    manifest, emb, pat = synthetic_store(params, cache, rows, patch_rows)
    out = []
    for name, path, loader in (
        ("embeddings.h5 via load_features", emb, lambda: load_features(params, manifest, emb)),
        ("embeddings.h5 arrays via h5py (no ids, no fp32)", emb, lambda: raw_h5(emb)),
        ("patches.h5 via embed-stage block reads", pat,
         lambda: read_patches(pat, params.clip.batch_size)),
    ):
        plain_read(path)  # both measured from the page cache
        size = path.stat().st_size
        out.append((name, size, size / best_of(loader) / 1e9,
                    size / best_of(lambda p=path: plain_read(p)) / 1e9))
    return out


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    precision = args.precision if args.precision != "auto" else (
        "fp16" if device.type == "cuda" else "fp32")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="nsnet-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        run(args, work, device, precision)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path, device: torch.device, precision: str) -> None:
    from pipeline.data.demo_data import make_demo_images

    fake_each = args.images // 6
    make_demo_images(work / "images", n_real=args.images - 3 * fake_each, n_fake_each=fake_each,
                     size=args.size, seed=0)
    weights = "" if args.arch == "tiny" else random_clip_checkpoint(args.arch, work / "clip.pt")
    blip = "tiny" if args.caption == "tiny" else random_blip_base(work / "blip-base")
    params = make_params(args, work / "images", weights, blip, precision)
    cache = work / "cache"
    build_index(params, cache / "manifest.parquet", cache / "index_report.json")
    n = len(read_manifest(cache / "manifest.parquet", only_ok=True))
    clip = load_clip(params.clip.arch, params.clip.pretrained, params.compute.device)
    load_blip(params.caption.model, params.compute.device)  # model loading is not timed

    secs_b = batched(params, cache)
    n_naive = min(n, args.naive)
    secs_n = naive(params, cache, n_naive)
    amp = AMP[precision] if device.type == "cuda" else None
    dtype = amp or torch.float32
    counted = image_tower_flops(clip)
    flops = VIT_L14_GFLOPS * 1e9 if args.arch == "ViT-L-14" else counted
    tflops = matmul_tflops(device, dtype)
    tower = image_tower_rate(clip, min(args.clip_batch, n), amp, seconds=3.0)
    reads = store_reads(params, cache, args.store_rows, args.patch_rows)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    print(f"\n### Extraction benchmark: {name}, {precision}, CLIP {args.arch}, BLIP "
          f"{args.caption}, {args.size} px images, num_workers={args.num_workers}\n")
    print(f"| stage | batched pipeline ({n} images) img/s | naive one-at-a-time "
          f"({n_naive} images) img/s | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for stage in ("patches", "caption", "embed"):
        b, s = n / secs_b[stage], n_naive / secs_n[stage]
        print(f"| {stage} | {b:.3g} | {s:.3g} | {b / s:.1f}x |")
    embed_rate = n / secs_b["embed"]
    print(f"\n| model | image-tower GFLOPs/img | matmul TFLOP/s ({dtype_name(dtype)}) "
          "| image tower img/s (in memory) | embed stage img/s | fraction of matmul peak "
          "(tower / stage) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    peak = tflops * 1e12
    print(f"| {args.arch} | {flops / 1e9:.4g} (counted {counted / 1e9:.4g}) | {tflops:.3g} | "
          f"{tower:.3g} | {embed_rate:.3g} | {tower * flops / peak:.1%} / "
          f"{embed_rate * flops / peak:.1%} |")
    print("\n(FLOPs = 2 x multiply-adds. ViT-L-14 uses open_clip's profile, 162 GFLOPs; torch's "
          "counter misses the attention-score kernels. The embed stage also runs the text tower "
          "on each caption, which the fraction does not credit.)")
    print("\n| feature store file (page cache) | size | our loader GB/s | plain sequential "
          "read GB/s | ratio |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, size, ours, plain in reads:
        print(f"| {label} | {size / 1e6:.0f} MB | {ours:.2f} | {plain:.2f} | "
              f"{ours / plain:.0%} |")
    print("\n" + json.dumps({"images": n, "naive_images": n_naive, "batched_s": secs_b,
                             "naive_s": secs_n, "image_tower_flops": flops,
                             "matmul_tflops": tflops, "image_tower_img_s": tower},
                            default=float))


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")


if __name__ == "__main__":
    main()
