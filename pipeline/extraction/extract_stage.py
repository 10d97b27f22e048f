"""The ``extract`` stage: selections, captions and CLIP embeddings, from one decode per image.

For the manifest's usable images, in manifest order, it writes

* ``selections.h5``    the patch selection (grid cells and entropies: a few hundred bytes per
                       image, not the 150 KB composite; composites are rebuilt from the image
                       wherever they are needed, or kept with ``patches.keep_composites``),
* ``captions.parquet`` BLIP captions,
* ``embeddings.h5``    CLIP image embeddings of the composites and text embeddings of the
                       captions (float16); with ``patches.views: K`` > 1 the image dataset is
                       (n, K, d), one embedding per patch order (``patch_selection.view_cells``),
                       while selection, caption and text embedding are shared by the views.

Each of the four parts (selections, captions, image and text embeddings) records the request
that made it (settings, the code that computes it, the manifest's images). A rerun computes only
the parts whose request changed and reuses the others, so changing ``clip.*`` never re-runs
BLIP, and an up-to-date cache costs no decode at all. Work is cut into resumable shards
(``pipeline.extraction.sharding``), in-process or on a dask cluster.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch

from pipeline import runtime
from pipeline.atomic import atomic_path, reserve_space
from pipeline.cache_store import (
    H5_SLACK,
    ID_DTYPE,
    decode_ids,
    encode_ids,
    table_provenance,
    write_table,
)
from pipeline.config import Params
from pipeline.data.manifest import OK, read_manifest
from pipeline.extraction import sharding
from pipeline.extraction.image_pass import BlipResize, ImagePass, PassPlan, batches
from pipeline.extraction.patch_selection import PatchSpec
from pipeline.provenance import base_provenance, code_fingerprint, fingerprint

AMP = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
LAYOUT = 2  # cache layout: 1 = composites in patches.h5 (nsnet < 0.2), 2 = selections
PARTS = ("selections", "captions", "image", "text")


class OldCacheLayout(RuntimeError):
    """A cache file was written by an older nsnet in a layout this version does not read."""


# ----------------------------------------------------------------------------- requests


def clip_request(params: Params) -> dict[str, Any]:
    return {"clip_arch": params.clip.arch, "clip_pretrained": params.clip.pretrained}


def requests(params: Params, ids: list[str], degradation: str = "",
             reencoded: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """What each part must have been made with to be reused (code included).

    ``reencoded``: the ids that ``protocol.train_reencode`` re-encodes (train/val rows).
    """
    from pipeline.backbones import blip, clip
    from pipeline.extraction import image_pass, patch_selection

    images = {"manifest": fingerprint(ids), "degradation": degradation,
              "max_image_pixels": params.data.max_image_pixels}
    if params.protocol.train_reencode and reencoded is not None:
        images["train_reencode"] = {"name": params.protocol.train_reencode,
                                    "ids": fingerprint(reencoded)}
    sel = {"part": "selections", **images,
           "patch_spec": PatchSpec.of(params.patches).as_dict(),
           "luma": [0.299, 0.587, 0.114], "entropy": "shannon-log2-fft-power",
           "order": "permutation-seeded-by-id", "fill": "repeat-own-patches",
           "code": code_fingerprint(patch_selection)}
    cap = {"part": "captions", **images, "blip_model": params.caption.model,
           "max_new_tokens": params.caption.max_new_tokens, "decoding": "greedy",
           "precision": params.compute.precision, "code": code_fingerprint(blip, image_pass)}
    emb = {**clip_request(params), "precision": params.compute.precision,
           "code": code_fingerprint(clip)}
    img = {"part": "image", **emb, "selections": fingerprint(sel), "views": params.patches.views}
    txt = {"part": "text", **emb, "captions": fingerprint(cap)}
    return {"selections": sel, "captions": cap, "image": img, "text": txt}


# ----------------------------------------------------------------------------- what exists


@dataclass(frozen=True)
class Outputs:
    selections: Path
    captions: Path
    embeddings: Path
    composites: Path | None = None  # only with patches.keep_composites

    @classmethod
    def at(cls, selections: str | Path, captions: str | Path, embeddings: str | Path,
           composites: str | Path | None = None) -> Outputs:
        return cls(Path(selections), Path(captions), Path(embeddings),
                   Path(composites) if composites else None)


def _h5_requests(path: Path, ids: list[str]) -> dict[str, Any]:
    """Requests recorded in an h5 output that holds exactly ``ids`` ({} otherwise)."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("layout") != LAYOUT or decode_ids(f["ids"][:]) != ids:
                return {}
            return json.loads(f.attrs.get("requests", "{}"))
    except (OSError, KeyError, ValueError):
        return {}


def current_parts(out: Outputs, req: dict[str, dict[str, Any]], ids: list[str]) -> set[str]:
    """The parts whose existing output was made with exactly the requested settings."""
    have = set()
    if _h5_requests(out.selections, ids).get("selections") == req["selections"]:
        have.add("selections")
    try:
        cap = table_provenance(out.captions) if out.captions.exists() else {}
    except (OSError, ValueError):
        cap = {}
    if cap.get("request") == req["captions"] and cap.get("n_rows") == len(ids):
        have.add("captions")
    emb = _h5_requests(out.embeddings, ids)
    have |= {p for p in ("image", "text") if emb.get(p) == req[p]}
    return have


# ----------------------------------------------------------------------------- shards


def compute_shard(shard: sharding.Shard, progress: Callable[[int], Any] | None = None) -> int:
    """Compute the shard's missing parts from one decode per image; commit one h5 file."""
    cfg = shard.settings
    need = set(cfg["need"])
    device = runtime_device(cfg["device"])
    amp = AMP[cfg["precision"]]
    n = len(shard.ids)
    clip = blip = None
    if need & {"image", "text"}:
        from pipeline.backbones.clip import load_clip

        clip = load_clip(cfg["clip_arch"], cfg["clip_pretrained"], cfg["device"])
    if "captions" in need:
        from pipeline.backbones.blip import load_blip

        blip = load_blip(cfg["blip_model"], cfg["device"])
    out: dict[str, np.ndarray] = {}
    # inputs[i] = (path bytes, caption or None, train_reencode or ""): captions come in when
    # only text is computed
    captions: list[str] = [] if "captions" in need else [inp[1] for inp in shard.inputs]
    if need & {"selections", "captions", "image"}:
        out = _image_pass(shard, cfg, need, clip, blip, amp, device, captions, progress)
    if "text" in need:
        assert clip is not None
        bs = cfg["clip_batch"]
        out["text"] = np.concatenate([
            clip.encode_texts(captions[i:i + bs], amp).cpu().numpy().astype(np.float16)
            for i in range(0, n, bs)]) if n else np.empty((0, clip.embed_dim), np.float16)
        if not need & {"selections", "captions", "image"} and progress:
            progress(n)
    if "captions" in need:
        out["captions"] = np.asarray(captions, dtype=object)
    _write_shard(shard.out, shard.ids, out)
    return n


def runtime_device(name: str) -> torch.device:
    from pipeline.backbones.clip import resolve_device

    return resolve_device(name)


def _image_pass(shard: sharding.Shard, cfg: dict[str, Any], need: set[str], clip: Any,
                blip: Any, amp: torch.dtype | None, device: torch.device, captions: list[str],
                progress: Callable[[int], Any] | None) -> dict[str, np.ndarray]:
    spec = PatchSpec(**cfg["patch_spec"])
    keep = bool(cfg.get("keep_composites"))
    blip_resize = (BlipResize(blip.processor.image_processor)
                   if blip is not None else None)
    plan = PassPlan(spec, cfg["max_pixels"], select="selections" in need,
                    composite="image" in need or keep, blip=blip_resize,
                    degradation=cfg.get("degradation", ""),
                    views=cfg.get("views", 1) if "image" in need else 1)
    cells_in = None
    if "selections" not in need and plan.composite:
        with h5py.File(cfg["selections_in"], "r") as f:
            cells_in = f["cells"][shard.start:shard.start + len(shard.ids)]
    # inputs[i] = (path, caption, degradation of this image: protocol.train_reencode or "")
    ds = ImagePass(shard.ids, [inp[0] for inp in shard.inputs], plan, cells_in,
                   [inp[2] if len(inp) > 2 else "" for inp in shard.inputs])
    n = len(shard.ids)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("cells", "entropy", "image",
                                                          "composites")}
    batch_size = cfg["caption_batch"] if blip is not None else cfg["clip_batch"]
    for batch in batches(ds, batch_size, cfg["num_workers"], pin=device.type == "cuda"):
        if plan.select:
            parts["cells"].append(batch["cells"].numpy())
            parts["entropy"].append(batch["entropy"].numpy())
        if blip is not None:
            pixels = blip_resize.normalise(batch["blip"], device)  # type: ignore[union-attr]
            captions.extend(generate_captions(blip, pixels, cfg["max_new_tokens"], amp))
        if "image" in need:
            parts["image"].append(embed_views(clip, batch, plan.views, cfg["clip_batch"], amp))
        if keep:
            parts["composites"].append(batch["composite"].numpy())
        if progress:
            progress(len(next(iter(batch.values()))))
    out = {}
    if plan.select:
        out["cells"] = _cat(parts["cells"], (0, spec.count, 2), np.int32)
        out["entropy"] = _cat(parts["entropy"], (0, spec.count), np.float32)
    if "image" in need:
        empty = (0, clip.embed_dim) if plan.views == 1 else (0, plan.views, clip.embed_dim)
        out["image"] = _cat(parts["image"], empty, np.float16)
    if keep:
        out["composites"] = _cat(parts["composites"], (0, spec.side, spec.side, 3), np.uint8)
    assert all(len(v) == n for v in out.values())
    return out


def embed_views(clip: Any, batch: dict[str, torch.Tensor], views: int, clip_batch: int,
                amp: torch.dtype | None) -> np.ndarray:
    """CLIP image embeddings of a batch's composites: (B, d) for one view, else (B, K, d).

    Each view is embedded in its own ``clip_batch`` chunks, so view 0 gets exactly the
    embeddings a one-view run computes."""
    per_view = [batch["composite"].numpy()]
    if views > 1:
        extra = batch["views"].numpy()
        per_view += [np.ascontiguousarray(extra[:, k]) for k in range(views - 1)]
    embs = [np.concatenate([
        clip.encode_images(comps[i:i + clip_batch], amp).cpu().numpy().astype(np.float16)
        for i in range(0, len(comps), clip_batch)]) for comps in per_view]
    return embs[0] if views == 1 else np.stack(embs, axis=1)


def _cat(chunks: list[np.ndarray], empty: tuple[int, ...], dtype: Any) -> np.ndarray:
    return np.concatenate(chunks).astype(dtype, copy=False) if chunks else np.empty(empty, dtype)


@torch.inference_mode()
def generate_captions(captioner: Any, pixels: torch.Tensor, max_new_tokens: int,
                      amp_dtype: torch.dtype | None = None) -> list[str]:
    """Greedy captions for one batch of ``pixel_values`` (same decoding as ``caption``)."""
    from pipeline.backbones.clip import _autocast

    pixels = pixels.to(captioner.device, non_blocking=True)
    with _autocast(captioner.device, amp_dtype):
        out = captioner.model.generate(pixel_values=pixels, max_new_tokens=max_new_tokens,
                                       num_beams=1, do_sample=False)
    texts = captioner.processor.batch_decode(out, skip_special_tokens=True)
    return [" ".join(t.split()) for t in texts]


def _write_shard(path: str, ids: list[str], arrays: dict[str, np.ndarray]) -> None:
    nbytes = sum(a.nbytes for a in arrays.values() if a.dtype != object)
    reserve_space(path, nbytes + 64 * len(ids) + sum(len(c) * 4 for c in
                                                      arrays.get("captions", [])) + H5_SLACK)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("ids", data=encode_ids(ids))
        for name, arr in arrays.items():
            if arr.dtype == object:
                f.create_dataset(name, data=arr.tolist(), dtype=h5py.string_dtype("utf-8"))
            else:
                f.create_dataset(name, data=arr)


# ----------------------------------------------------------------------------- merge


def _merge_h5(path: Path, parts: list[str], names: dict[str, str], total: int,
              attrs: dict[str, Any], reuse: dict[str, Path] | None = None) -> None:
    """Stream shard datasets ``names`` (shard name -> output name) into one file; datasets in
    ``reuse`` (output name -> existing file) are copied from that file instead."""
    reuse = reuse or {}
    specs: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    if parts:
        with h5py.File(parts[0], "r") as f:
            specs = {out: (f[src].shape[1:], f[src].dtype) for src, out in names.items()}
    for out, src_path in reuse.items():
        with h5py.File(src_path, "r") as f:
            specs[out] = (f[out].shape[1:], f[out].dtype)
    row_bytes = 64 + sum(int(np.prod(s)) * d.itemsize for s, d in specs.values())
    reserve_space(path, total * row_bytes + H5_SLACK)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as out:
        ids = out.create_dataset("ids", shape=(total,), dtype=ID_DTYPE)
        dsets = {name: out.create_dataset(name, shape=(total, *s), dtype=d)
                 for name, (s, d) in specs.items()}
        row = 0
        for part in parts:
            with h5py.File(part, "r") as f:
                k = len(f["ids"])
                ids[row:row + k] = f["ids"][:]
                for src, name in names.items():
                    dsets[name][row:row + k] = f[src][:]
                row += k
        for name, src_path in reuse.items():
            with h5py.File(src_path, "r") as f:
                if not parts:
                    ids[:] = f["ids"][:]
                for i in range(0, total, 65536):
                    dsets[name][i:i + 65536] = f[name][i:i + 65536]
        for key, value in attrs.items():
            out.attrs[key] = json.dumps(value, sort_keys=True) if not isinstance(value, int) \
                else value


def _merge_captions(path: Path, parts: list[str], ids: list[str], model: str,
                    provenance: dict[str, Any]) -> None:
    captions: list[str] = []
    for part in parts:
        with h5py.File(part, "r") as f:
            captions.extend(c.decode() if isinstance(c, bytes) else c
                            for c in f["captions"][:])
    write_table(path, pd.DataFrame({"id": ids, "caption": captions, "model": model}), provenance)


def read_captions(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["caption"]).column("caption").to_pylist()


# ----------------------------------------------------------------------------- the stage


def ok_rows(manifest_path: str | Path) -> pd.DataFrame:
    """The manifest's usable rows; ``attrs["skipped"]`` counts the others by reason."""
    df = read_manifest(manifest_path)
    ok = df["status"] == OK
    rows = df[ok].reset_index(drop=True)
    rows.attrs["skipped"] = {str(k): int(v) for k, v in df.loc[~ok, "status"].value_counts()
                             .sort_index().items()}
    return rows


def run_extract(params: Params, manifest: str | Path, out: Outputs, cache_dir: str | Path,
                scheduler: str = "", degradation: str = "") -> sharding.RunSummary:
    """Bring ``out`` up to date with the manifest and params; compute only what changed."""
    rows = ok_rows(manifest)
    ids = rows["id"].tolist()
    reencode = train_reencode_of(params, rows, degradation)
    reencoded = [i for i, r in zip(ids, reencode, strict=True) if r] or None
    req = requests(params, ids, degradation, reencoded)
    keep = params.patches.keep_composites and out.composites is not None
    have = current_parts(out, req, ids)
    need = [p for p in PARTS if p not in have]
    if keep and "image" not in need:
        need.append("image")  # composites are made where the image part is computed
    scheduler = scheduler or params.compute.scheduler
    summary = sharding.RunSummary("extract", 0, 0, 0, 0.0, dict(rows.attrs["skipped"]),
                                  sorted(have))
    if not need:
        return summary
    device = runtime_device(params.compute.device)
    n_workers = runtime.workers(params.compute.num_workers, device)
    runtime.configure_threads(params.compute.torch_threads, n_workers, device)
    provenance = _load_models(params, need, device) if not scheduler else {}
    settings = {
        "need": need, "device": params.compute.device, "precision": params.compute.precision,
        "clip_arch": params.clip.arch, "clip_pretrained": params.clip.pretrained,
        "blip_model": params.caption.model, "max_new_tokens": params.caption.max_new_tokens,
        "patch_spec": req["selections"]["patch_spec"],
        "max_pixels": params.data.max_image_pixels, "degradation": degradation,
        "keep_composites": keep, "num_workers": n_workers, "views": params.patches.views,
        "caption_batch": runtime.caption_batch(params.caption.batch_size, device),
        "clip_batch": runtime.clip_batch(params.clip.batch_size, device),
    }
    if "selections" not in need:
        settings["selections_in"] = str(out.selections.absolute())
    key = {"need": need, "requests": {p: req[p] for p in need}, "keep": keep}
    workdir = sharding.work_dir(cache_dir, "extract", key)
    known = (read_captions(out.captions) if "text" in need and "captions" not in need
             else [None] * len(ids))
    inputs = list(zip(rows["path_raw"].tolist(), known, reencode, strict=True))
    plan = sharding.plan("extract", ids, inputs, params.compute.shard_size, workdir, settings,
                         ".h5")
    summary = sharding.run(plan, compute_shard, scheduler, desc="extract")
    summary.skipped = dict(rows.attrs["skipped"])
    summary.reused_parts = sorted(have)
    _merge(out, [s.out for s in plan], ids, req, need, have, provenance, params)
    sharding.cleanup(workdir)
    return summary


def train_reencode_of(params: Params, rows: pd.DataFrame, degradation: str) -> list[str]:
    """Per row, the re-encoding ``protocol.train_reencode`` applies: train and val rows (the
    training side) get it; test rows, and every row of a degraded view, keep their files."""
    name = params.protocol.train_reencode
    if not name or degradation:
        return [""] * len(rows)
    return [name if split in ("train", "val") else "" for split in rows["split"]]


def _load_models(params: Params, need: list[str], device: torch.device) -> dict[str, Any]:
    """Load the models up front (fail fast on missing weights) and return their provenance."""
    prov: dict[str, Any] = {}
    if "image" in need or "text" in need:
        from pipeline.backbones.clip import load_clip

        prov.update(load_clip(params.clip.arch, params.clip.pretrained,
                              params.compute.device).provenance)
    if "captions" in need:
        from pipeline.backbones.blip import load_blip

        prov.update(load_blip(params.caption.model, params.compute.device).provenance)
    return prov


def _merge(out: Outputs, parts: list[str], ids: list[str], req: dict[str, dict[str, Any]],
           need: list[str], have: set[str], models: dict[str, Any], params: Params) -> None:
    base = {**base_provenance(), **models}
    n = len(ids)
    if "selections" in need:
        prov = {**base, **req["selections"], "stage": "extract"}
        _merge_h5(out.selections, parts, {"cells": "cells", "entropy": "entropy"}, n,
                  {"layout": LAYOUT, "provenance": prov,
                   "requests": {"selections": req["selections"]}})
    if "captions" in need:
        _merge_captions(out.captions, parts, ids, params.caption.model,
                        {**base, **req["captions"], "stage": "extract",
                         "request": req["captions"], "n_rows": n})
    if "image" in need or "text" in need:
        fresh = {p: p for p in ("image", "text") if p in need}
        reuse = {p: out.embeddings for p in ("image", "text") if p in have}
        prov = {**base, **clip_request(params), "precision": params.compute.precision,
                "stage": "extract", "patch_spec": req["selections"]["patch_spec"],
                "blip_model": params.caption.model, "manifest": fingerprint(ids),
                "train_reencode": req["selections"].get("train_reencode", {}).get("name", ""),
                "views": params.patches.views}
        # atomic_path writes a temporary sibling and renames it last, so the reused parts
        # are read from the existing file while the new one is written.
        _merge_h5(out.embeddings, parts, fresh, n,
                  {"layout": LAYOUT, "provenance": prov,
                   "requests": {p: req[p] for p in ("image", "text")}}, reuse)
    if out.composites is not None and params.patches.keep_composites:
        _merge_h5(out.composites, parts, {"composites": "composites"}, n,
                  {"layout": LAYOUT, "provenance": {**base, **req["selections"]}})


def check_layout(path: str | Path, what: str) -> None:
    """Refuse a cache file of the old layout with a message that says what to do."""
    with h5py.File(path, "r") as f:
        if f.attrs.get("layout") != LAYOUT:
            raise OldCacheLayout(
                f"{path} was written by an older nsnet (cache layout 1, {what} from stored "
                "composites); this version keeps selections instead of composites. Rerun "
                "`nsnet extract` (or `dvc repro`), which recomputes it, and delete any "
                "cache/patches.h5 left from the old layout."
            )
