"""Extraction at benchmark scale: per-stage cost per image, measured at N and 4N images.

Generates 512 px JPEG and PNG images (half each), runs ``index`` and ``extract`` on them, each
stage in a fresh single-core subprocess (one torch thread, no worker processes, so CPU ms are
per core), and prints one Markdown table per run:

* CPU ms per image (user + system of the stage process),
* decodes per image (counted at the decoder),
* bytes per image written to ``cache/`` (selections vs embeddings/captions/manifest),
* peak RSS of the stage process, wall time at N and 4N (growth should be linear, memory flat),

then the CPU-side work of the extraction pass per image (decode, patch selection, composite,
BLIP resize) and an extrapolation to GenImage (2.6 M images) on a machine with ``--cores`` cores
and one GPU running BLIP and CLIP at the stated rates (``--caption-rate``, ``--image-rate``,
``--text-rate``: measured on a GPU with ``--device cuda`` where one is available, otherwise
assumptions that the table labels as such).

With ``--recipes`` it prints each feature recipe's CPU cost per image (measured, one core: the
pixels each recipe derives from the decoded image) and bytes per image in the store (measured
with the tiny models, and exact at ViT-L/14 sizes), then the GenImage extrapolation of the
extraction for "NS-Net only" (the composite recipe) against "all heads" (every baseline recipe
too), at the stated GPU rates (``--recipes-only`` skips the other tables).

With ``--views K`` it also extracts N images with ``patches.views: 1`` and ``K`` and prints the
CPU ms per image of each part of the extraction (decode, patch selection, composites, BLIP
resize, BLIP, CLIP image tower, CLIP text tower): only the image tower (and the cheap composites)
should grow with K (``--views-only`` skips the N / 4N tables).

    python bench/bench_scale.py --n 64            # about 2 minutes on a 2-core CPU
    python bench/bench_scale.py --n 64 --views 4 --views-only
    python bench/bench_scale.py --n 64 --recipes-only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GENIMAGE = 2_600_000


# ----------------------------------------------------------------------------- data


def make_images(root: Path, n: int, size: int, seed: int = 0) -> None:
    """Photo-like images (smooth gradients + texture + noise), half JPEG (q 90) half PNG."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for i in range(n):
        label = "real" if i % 2 == 0 else "fake"
        f1, f2 = rng.uniform(4, 40, 2)
        base = (np.sin(yy / f1 + rng.uniform(0, 6)) + np.cos(xx / f2)) * 50 + 128
        img = base[..., None] + rng.normal(0, rng.uniform(2, 25), (size, size, 3))
        img[rng.integers(0, size // 2):, :rng.integers(size // 4, size)] *= 0.6
        arr = np.clip(img, 0, 255).astype(np.uint8)
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        if i % 4 < 2:
            Image.fromarray(arr).save(folder / f"{i:06d}.jpg", quality=90)
        else:
            Image.fromarray(arr).save(folder / f"{i:06d}.png")


def workspace(base: Path, n: int, size: int, args: argparse.Namespace) -> Path:
    import yaml

    ws = base / f"n{n}"
    make_images(ws / "data", n, size)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"].update({"roots": [str(ws / "data")], "num_workers": 1})
    raw["clip"].update({"arch": args.arch, "pretrained": args.pretrained,
                        "batch_size": args.batch})
    raw["caption"].update({"model": args.caption, "max_new_tokens": args.max_new_tokens,
                           "batch_size": args.batch})
    raw["compute"].update({"device": args.device, "precision": args.precision,
                           "num_workers": 0, "torch_threads": 1, "shard_size": 4096})
    (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return ws


# ----------------------------------------------------------------------------- one stage


def child(stage: str, ws: Path) -> None:
    """Run one stage in this process (single core) and print its measurements as JSON."""
    os.chdir(ws)
    import torch

    torch.set_num_threads(1)
    from nsnet.config import load_params
    from nsnet.data import images, index_stage
    from nsnet.extraction import image_pass

    params = load_params("params.yaml")
    decodes = {"n": 0}
    real_open = images.open_image

    def counting_open(*a, **k):  # index's decodes (in this process: num_workers 1)
        decodes["n"] += 1
        return real_open(*a, **k)

    images.open_image = counting_open
    t0, c0 = time.perf_counter(), time.process_time()
    if stage == "index":
        index_stage.build_index(params, "cache/manifest.parquet", "cache/index_report.json")
    else:
        from nsnet.extraction.extract_stage import run_extract

        image_pass.DECODES["count"] = 0
        run_extract(params, "cache/manifest.parquet", "cache/features")
        decodes["n"] = image_pass.DECODES["count"]
    print(json.dumps({"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0,
                      "decodes": decodes["n"],
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


PARTS = ("decode", "selection", "composites", "blip_resize", "blip", "clip_image", "clip_text")


def _timed(owner: object, name: str, key: str, acc: dict[str, float]) -> None:
    """Wrap ``owner.name`` so its CPU time accumulates in ``acc[key]``."""
    real = getattr(owner, name)

    def wrapper(*a, **k):
        c = time.process_time()
        try:
            return real(*a, **k)
        finally:
            acc[key] += time.process_time() - c

    setattr(owner, name, wrapper)


def child_parts(ws: Path) -> None:
    """``extract`` in this process with each part of the pass timed (CPU s), printed as JSON."""
    os.chdir(ws)
    import torch

    torch.set_num_threads(1)
    from nsnet.backbones.blip import BlipResize, Captioner
    from nsnet.backbones.clip import ClipBackbone
    from nsnet.config import load_params
    from nsnet.extraction import extract_stage, image_pass, patch_selection

    acc = dict.fromkeys(PARTS, 0.0)
    # the composite recipe's derive looks these up in patch_selection when it runs
    for owner, name, key in ((image_pass, "decode_data", "decode"),
                             (patch_selection, "select_cells", "selection"),
                             (patch_selection, "composite", "composites"),
                             (patch_selection, "view_cells", "composites"),
                             (BlipResize, "resize", "blip_resize"),
                             (Captioner, "generate", "blip"),
                             (ClipBackbone, "encode_images", "clip_image"),
                             (ClipBackbone, "encode_texts", "clip_text")):
        _timed(owner, name, key, acc)
    params = load_params("params.yaml")
    c0 = time.process_time()
    extract_stage.run_extract(params, "cache/manifest.parquet", "cache/features")
    print(json.dumps({"parts": acc, "cpu": time.process_time() - c0}))


def views_table(base: Path, args: argparse.Namespace) -> list[tuple[int, dict]]:
    """Extract the same N images with 1 and ``args.views`` patch-order views (fresh caches)."""
    import shutil

    import yaml

    ws = workspace(base, args.n, args.size, args)
    run_stage("index", ws)
    rows = []
    for k in dict.fromkeys((1, args.views)):
        raw = yaml.safe_load((ws / "params.yaml").read_text())
        raw["patches"]["views"] = k
        (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        shutil.rmtree(ws / "cache" / "features", ignore_errors=True)  # a fresh store each K
        rows.append((k, run_stage("parts", ws)))
    return rows


def print_views(rows: list[tuple[int, dict]], n: int, args: argparse.Namespace) -> None:
    print(f"\n## Patch-order views: extraction CPU ms per image by part ({n} images of "
          f"{args.size} px; {args.arch}/{args.caption} on {args.device}; 1 core)\n")
    print("| patches.views | " + " | ".join(PARTS) + " | whole extract (incl. model loading) |")
    print("| ---: |" + " ---: |" * (len(PARTS) + 1))
    for k, r in rows:
        print(f"| {k} | " + " | ".join(f"{1e3 * r['parts'][p] / n:.2f}" for p in PARTS)
              + f" | {1e3 * r['cpu'] / n:.2f} |")
    if len(rows) == 2:
        (_, a), (k, b) = rows
        print(f"\n| growth 1 -> {k} views | " + " | ".join(PARTS) + " |")
        print("| --- |" + " ---: |" * len(PARTS))
        print("| ratio | " + " | ".join(
            f"{b['parts'][p] / a['parts'][p]:.2f}" if a["parts"][p] else "-" for p in PARTS)
            + " |")
    print(f"\n| GenImage GPU side (BLIP {args.caption_rate:.0f}/s, CLIP image "
          f"{args.image_rate:.0f}/s per view, text {args.text_rate:.0f}/s: stated rates) | "
          "hours |")
    print("| --- | ---: |")
    for k, _ in rows:
        hours = GENIMAGE * (1 / args.caption_rate + k / args.image_rate
                            + 1 / args.text_rate) / 3600
        print(f"| patches.views: {k} | {hours:.2f} |")


def run_stage(stage: str, ws: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, __file__, "--child", stage, "--ws", str(ws)],
                         env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{stage} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cache_bytes(ws: Path) -> dict[str, int]:
    """Bytes in cache/: the store's embedding and caption parts, the manifest, the rest (the
    patch selections and every part's part.json)."""
    files = [p for p in (ws / "cache").rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    store = ws / "cache" / "features"
    feats = sum(p.stat().st_size for kind in ("image", "text", "caption")
                for p in (store / kind).rglob("*.h5"))
    manifest = sum(p.stat().st_size for p in files if p.name in ("manifest.parquet",
                                                                  "index_report.json"))
    return {"other": total - feats - manifest, "features": feats, "manifest": manifest}


# ----------------------------------------------------------------------------- CPU side


def cpu_side(ws: Path, n: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """ms per image, one core, of each piece of the extraction pass, by format."""
    import torch

    torch.set_num_threads(1)
    from transformers import BlipImageProcessor

    from nsnet.backbones.blip import BlipResize
    from nsnet.data.images import open_image, read_bytes
    from nsnet.extraction.patch_selection import (
        PatchSpec,
        composite,
        patch_entropies_reference,
        select_cells,
        to_gray,
    )

    spec, resize = PatchSpec(), BlipResize(BlipImageProcessor())
    out: dict[str, dict[str, float]] = {}
    for ext in ("jpg", "png"):
        paths = sorted((ws / "data").rglob(f"*.{ext}"))[:n]
        t = dict.fromkeys(("read", "decode", "select", "select_before", "composite",
                           "blip_resize"), 0.0)
        for path in paths:
            c = time.process_time()
            data = read_bytes(path)
            t["read"] += time.process_time() - c
            c = time.process_time()
            rgb, _ = open_image(data)
            t["decode"] += time.process_time() - c
            c = time.process_time()
            cells, _ = select_cells(rgb, "ab" * 16, spec)
            t["select"] += time.process_time() - c
            c = time.process_time()
            patch_entropies_reference(to_gray(torch.from_numpy(rgb)), spec.size)
            t["select_before"] += time.process_time() - c
            c = time.process_time()
            composite(rgb, cells, spec)
            t["composite"] += time.process_time() - c
            c = time.process_time()
            resize.resize(rgb)
            t["blip_resize"] += time.process_time() - c
        out[ext] = {k: 1e3 * v / len(paths) for k, v in t.items()}
    return out


# ----------------------------------------------------------------------------- report


# ----------------------------------------------------------------------------- recipes

# Bytes per image at ViT-L/14 (float16), by recipe; the crops' augmented views exist for the
# training images only (GenImage's protocol trains on SD v1.4: about 1/8 of the images).
VITL = {"embed": 768, "width": 1024, "blocks": 24}


def recipe_cpu(ws: Path, n: int) -> dict[str, float]:
    """CPU ms per image (one core) of each recipe's pixels from one decoded image."""
    import torch

    torch.set_num_threads(1)
    from transformers import BlipImageProcessor

    from nsnet.backbones import recipes as R
    from nsnet.backbones.blip import BlipResize
    from nsnet.data.images import open_image
    from nsnet.extraction.patch_selection import PatchSpec, composite, select_cells

    spec, resize = PatchSpec(), BlipResize(BlipImageProcessor())
    t = dict.fromkeys(("decode", "composite (+ selection)", "blip resize", "clip_crop view 0",
                       "clip_crop view (training)", "clip_layers view (training)",
                       "cozzolino crop"), 0.0)
    paths = sorted((ws / "data").rglob("*.png"))[:n] + sorted((ws / "data").rglob("*.jpg"))[:n]
    for path in paths:
        c = time.process_time()
        rgb, _ = open_image(path)
        t["decode"] += time.process_time() - c
        c = time.process_time()
        composite(rgb, select_cells(rgb, "ab" * 16, spec)[0], spec)
        t["composite (+ selection)"] += time.process_time() - c
        c = time.process_time()
        resize.resize(rgb)
        t["blip resize"] += time.process_time() - c
        c = time.process_time()
        R.center_crop(rgb)
        t["clip_crop view 0"] += time.process_time() - c
        for key, spec_ in (("clip_crop view (training)", R.UNIVFD_TRAIN),
                           ("clip_layers view (training)", R.RINE_TRAIN)):
            draw = R.augment_draws(rgb, "ab" * 16, 2, spec_)[0]
            c = time.process_time()
            R.apply_augment(rgb, spec_, draw)
            t[key] += time.process_time() - c
        c = time.process_time()
        R.cozzolino_pixels(rgb)
        t["cozzolino crop"] += time.process_time() - c
    return {k: 1e3 * v / len(paths) for k, v in t.items()}


def recipe_bytes(ws: Path) -> dict[str, float]:
    """Bytes per stored row of each part kind in a tiny-model store (HDF5 overhead included)."""
    out = {}
    for kind_dir in sorted((ws / "cache" / "features").iterdir()):
        rows = 0
        size = 0
        for seg in kind_dir.rglob("*.h5"):
            size += seg.stat().st_size
            rows += int(seg.name.rsplit("-", 1)[1].split(".")[0])
        out[kind_dir.name] = size / max(rows, 1)
    return out


def print_recipes(cpu: dict[str, float], tiny: dict[str, float], args: argparse.Namespace
                  ) -> None:
    e, w, b = VITL["embed"], VITL["width"], VITL["blocks"]
    vitl = {"selection": 49 * 12, "caption": 60, "image": 2 * e, "text": 2 * e,
            "clip_crop": 2 * e, "clip_layers": 2 * w * b, "cozzolino": 2 * w}
    print("\n## Feature recipes: CPU per image (one core) and bytes per image\n")
    print("| pixels derived from the decoded image | CPU ms/img |")
    print("| --- | ---: |")
    for k, v in cpu.items():
        print(f"| {k} | {v:.2f} |")
    print("\n| store part | bytes per row, tiny models (HDF5 included) | bytes per row, "
          "ViT-L/14 fp16 |")
    print("| --- | ---: | ---: |")
    for k, v in tiny.items():
        print(f"| {k} | {v:.0f} | {vitl.get(k, 0)} |")
    n, train = GENIMAGE, GENIMAGE / 8  # GenImage trains on SD v1.4: ~1/8 of its images
    crop_set, layer_crops = 9, 2  # 1 + recipes.crop_augmentations, 1 + layer_augmentations
    ns = n * (vitl["selection"] + vitl["caption"] + vitl["image"] + vitl["text"])
    extra = (n * vitl["clip_crop"] + train * (crop_set - 1) * vitl["clip_crop"]
             + n * vitl["clip_layers"] + train * (layer_crops - 1) * vitl["clip_layers"]
             + n * vitl["cozzolino"])
    gpu_ns = n * (1 / args.caption_rate + 1 / args.image_rate + 1 / args.text_rate)
    # every crop view is one more image-tower pass; view 0 of clip_crop and clip_layers share
    # one; Cozzolino et al.'s backbone is another ViT-L/14 image tower
    passes = n * 1 + train * (crop_set - 1) + train * (layer_crops - 1) + n
    gpu_all = gpu_ns + passes / args.image_rate
    print(f"\n| GenImage, 2.6 M images (crops: {crop_set} for UnivFD, {layer_crops} for "
          f"RINE, augmented views for the ~{train / 1e6:.2f} M training images only) | "
          "store GB | GPU hours (stated rates) |")
    print("| --- | ---: | ---: |")
    print(f"| NS-Net only (composite recipe) | {ns / 1e9:.1f} | {gpu_ns / 3600:.2f} |")
    print(f"| all heads (+ clip_crop, clip_layers with all 24 blocks, cozzolino) | "
          f"{(ns + extra) / 1e9:.1f} | {gpu_all / 3600:.2f} |")
    layers8 = extra - (n + train * (layer_crops - 1)) * vitl["clip_layers"] * (1 - 8 / b)
    print(f"| all heads, clip_layers keeping 8 of 24 blocks (recipes.layers) | "
          f"{(ns + layers8) / 1e9:.1f} | {gpu_all / 3600:.2f} |")


def recipes_table(base: Path, args: argparse.Namespace) -> None:
    import yaml

    ws = workspace(base, args.n, args.size, args)
    raw = yaml.safe_load((ws / "params.yaml").read_text())
    raw["compare"] = {"heads": ["composite_probe", "nsnet", "advanced", "univfd", "rine",
                                "cozzolino"]}
    raw["recipes"] = {"cozzolino_arch": args.arch, "cozzolino_pretrained": args.pretrained,
                      "crop_augmentations": 2, "layer_augmentations": 1}
    (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    run_stage("index", ws)
    run_stage("extract", ws)
    print_recipes(recipe_cpu(ws, min(16, args.n)), recipe_bytes(ws), args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="images of the small run (then 4N)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--arch", default="tiny")
    ap.add_argument("--pretrained", default="")
    ap.add_argument("--caption", default="tiny")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--cores", type=int, default=16, help="cores of the target machine")
    ap.add_argument("--caption-rate", type=float, default=600.0,
                    help="BLIP-base images/s on the target GPU (stated)")
    ap.add_argument("--image-rate", type=float, default=2500.0,
                    help="CLIP ViT-L/14 image tower images/s on the target GPU (stated)")
    ap.add_argument("--text-rate", type=float, default=10000.0,
                    help="CLIP text tower captions/s on the target GPU (stated)")
    ap.add_argument("--views", type=int, default=1,
                    help="also compare extraction by part at patches.views 1 and this K")
    ap.add_argument("--views-only", action="store_true", help="only the --views table")
    ap.add_argument("--recipes", action="store_true",
                    help="also the feature recipes' CPU cost, bytes and GenImage extrapolation")
    ap.add_argument("--recipes-only", action="store_true", help="only the --recipes tables")
    ap.add_argument("--child", default="")
    ap.add_argument("--ws", default="")
    args = ap.parse_args()
    if args.child == "parts":
        child_parts(Path(args.ws))
        return
    if args.child:
        child(args.child, Path(args.ws))
        return
    if args.recipes or args.recipes_only:
        with tempfile.TemporaryDirectory() as tmp:
            recipes_table(Path(tmp), args)
        if args.recipes_only:
            return
    if args.views > 1:
        with tempfile.TemporaryDirectory() as tmp:
            print_views(views_table(Path(tmp), args), args.n, args)
        if args.views_only:
            return
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        spaces = {}
        for n in (args.n, 4 * args.n):
            ws = workspace(Path(tmp), n, args.size, args)
            spaces[n] = ws
            res = {stage: run_stage(stage, ws) for stage in ("index", "extract")}
            rows.append((n, res, cache_bytes(ws)))
        side = cpu_side(spaces[4 * args.n], min(32, 2 * args.n), args)
    print(f"\n## Extraction scale benchmark ({args.size} px, half JPEG half PNG; "
          f"{args.arch}/{args.caption} models on {args.device}; 1 core per stage; "
          f"load average {load:.1f} on {os.cpu_count()} cores)\n")
    print("| stage | N | CPU ms/img | decodes/img | wall s | peak RSS MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for n, res, _ in rows:
        for stage, r in res.items():
            print(f"| {stage} | {n} | {1e3 * r['cpu'] / n:.1f} | {r['decodes'] / n:.2f} | "
                  f"{r['wall']:.1f} | {r['rss_mb']:.0f} |")
    (n1, r1, b1), (n4, r4, b4) = rows
    print("\n| growth N -> 4N | wall N s | wall 4N s | ms/img of the first N | ms/img of the "
          "next 3N (linear: no higher) | peak RSS ratio (flat = 1) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for stage in ("index", "extract"):
        w1, w4 = r1[stage]["wall"], r4[stage]["wall"]
        rss = r4[stage]["rss_mb"] / r1[stage]["rss_mb"]
        print(f"| {stage} | {w1:.1f} | {w4:.1f} | {1e3 * w1 / n1:.1f} | "
              f"{1e3 * (w4 - w1) / (n4 - n1):.1f} | {rss:.2f} |")
    total = (r4["index"]["decodes"] + r4["extract"]["decodes"]) / n4
    print(f"\nDecodes per image from index through extract: {total:.2f} (index's validation "
          "+ one extraction pass). Whole-file reads per image through `dvc repro`: the same "
          "two (DVC depends on `nsnet scan`'s stat-only listing, not on a hash of the images; "
          "the audit reads the header facts index recorded).")
    print("\n| bytes per image in cache/ | N | 4N |")
    print("| --- | ---: | ---: |")
    for key, label in (("other", "selections + part.json (everything but the rest)"),
                       ("features", "embeddings + captions"), ("manifest", "manifest + report")):
        print(f"| {label} | {b1[key] / n1:.0f} | {b4[key] / n4:.0f} |")
    print("\n| extraction pass, CPU ms/img (1 core) | read | decode | patch selection "
          "(before: complex fp64 FFT) | composite | BLIP resize | total |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for ext, t in side.items():
        total = t["read"] + t["decode"] + t["select"] + t["composite"] + t["blip_resize"]
        print(f"| {ext} | {t['read']:.2f} | {t['decode']:.2f} | {t['select']:.2f} "
              f"({t['select_before']:.2f}) | {t['composite']:.2f} | {t['blip_resize']:.2f} | "
              f"{total:.2f} |")
    # GenImage on one machine: CPU work spread over the cores, GPU work at the stated rates;
    # index runs first, extraction's CPU and GPU sides overlap (workers prefetch).
    index_ms = 1e3 * r4["index"]["cpu"] / n4
    pass_ms = np.mean([sum(v for k, v in t.items() if k != "select_before")
                       for t in side.values()])
    cpu_workers = max(1, args.cores - 1)
    index_h = GENIMAGE * index_ms / 1e3 / args.cores / 3600
    cpu_h = GENIMAGE * pass_ms / 1e3 / cpu_workers / 3600
    gpu_h = GENIMAGE * (1 / args.caption_rate + 1 / args.image_rate + 1 / args.text_rate) / 3600
    print(f"\n| GenImage, 2.6 M images, {args.cores} cores + 1 GPU | hours |")
    print("| --- | ---: |")
    print(f"| index (hash + validating decode, {args.cores} processes) | {index_h:.2f} |")
    print(f"| extraction CPU side ({cpu_workers} decoding workers) | {cpu_h:.2f} |")
    print(f"| extraction GPU side (BLIP {args.caption_rate:.0f}/s, CLIP image "
          f"{args.image_rate:.0f}/s, text {args.text_rate:.0f}/s: stated rates) | {gpu_h:.2f} |")
    print(f"| total (index, then max of the overlapped sides) | "
          f"{index_h + max(cpu_h, gpu_h):.2f} |")


if __name__ == "__main__":
    main()
