"""The expensive stages: ``patches``, ``caption`` and ``embed``, each computed once.

Every stage reads the manifest's ok images in manifest order, computes shards (see
``pipeline.extraction.sharding``) and merges them into one aligned output with its provenance.
Decoding and
patch selection run in DataLoader worker processes when ``compute.num_workers > 0``.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch

from pipeline.cache_store import (
    concat_h5,
    h5_ids,
    h5_provenance,
    require,
    table_provenance,
    write_h5,
    write_table,
)
from pipeline.config import Params
from pipeline.data import degradations as degrade
from pipeline.data.images import open_image, read_bytes
from pipeline.data.manifest import OK, content_id, read_manifest
from pipeline.extraction import sharding as sharding
from pipeline.extraction.patch_selection import PatchSpec, select_patches
from pipeline.provenance import ProvenanceMismatch, base_provenance, fingerprint

AMP = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class StaleManifest(RuntimeError):
    """An image changed on disk after ``nsnet index`` recorded it."""


# ----------------------------------------------------------------------------- decoding


class _Images(torch.utils.data.Dataset):
    """Decoded, id-verified images of one shard (runs in DataLoader workers)."""

    def __init__(self, ids: list[str], paths: list[bytes], max_pixels: int,
                 transform: Callable[[np.ndarray, str], Any] | None = None,
                 degradation: str = "") -> None:
        self.ids, self.paths, self.max_pixels, self.transform = ids, paths, max_pixels, transform
        # a pipeline.data.degradations name applied after decoding ("" none)
        self.degradation = degradation

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Any:
        path = os.fsdecode(self.paths[i])
        data = read_bytes(path)
        if content_id(data) != self.ids[i]:
            raise StaleManifest(f"{path} changed since it was indexed; rerun `nsnet index`")
        rgb, _ = open_image(data, self.max_pixels)
        if self.degradation:
            rgb = degrade.apply(self.degradation, rgb)
        return self.transform(rgb, self.ids[i]) if self.transform else rgb


def _batches(dataset: torch.utils.data.Dataset, batch_size: int, workers: int,
             collate: Callable[[list], Any] = list, pin: bool = False) -> Iterator[Any]:
    """Batches of ``dataset`` items, decoded (and transformed) in ``workers`` processes.

    Inside a daemonic process (a dask worker) child processes are not allowed, so decoding
    runs in-process there. ``pin`` pins collated tensors for asynchronous host-to-GPU copies.
    """
    if workers and multiprocessing.current_process().daemon:
        workers = 0
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
        pin_memory=pin, persistent_workers=False,
    )
    yield from loader


def _on_cuda(device: str) -> bool:
    from pipeline.backbones.clip import resolve_device

    return resolve_device(device).type == "cuda"


def _ok_rows(manifest_path: str | Path) -> pd.DataFrame:
    """The manifest's usable rows; ``attrs["skipped"]`` counts the others by reason."""
    df = read_manifest(manifest_path)
    ok = df["status"] == OK
    rows = df[ok].reset_index(drop=True)
    rows.attrs["skipped"] = {str(k): int(v) for k, v in df.loc[~ok, "status"].value_counts()
                             .sort_index().items()}
    return rows


def _manifest_fp(rows: pd.DataFrame) -> str:
    return fingerprint(rows["id"].tolist())


# ----------------------------------------------------------------------------- patches


class PatchTransform:
    """Dataset transform: decoded image -> (composite, pixel coords, entropies).

    Runs inside DataLoader workers, so only the fixed-size composite (150 KB at 224 px), not
    the decoded image, crosses back to the main process.
    """

    def __init__(self, spec: PatchSpec) -> None:
        self.spec = spec

    def __call__(self, rgb: np.ndarray, image_id: str) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]:
        sel = select_patches(rgb, image_id, self.spec)
        return sel.composite, sel.cells.astype(np.int32) * self.spec.size, sel.entropy


def compute_patches_shard(shard: sharding.Shard, progress: Callable[[int], Any] | None = None
                          ) -> int:
    cfg = shard.settings
    spec = PatchSpec(**cfg["spec"])
    n = len(shard.ids)
    comps = np.empty((n, spec.side, spec.side, 3), np.uint8)
    coords = np.empty((n, spec.count, 2), np.int32)
    ents = np.empty((n, spec.count), np.float32)
    ds = _Images(shard.ids, shard.inputs, cfg["max_pixels"], PatchTransform(spec),
                 cfg.get("degradation", ""))
    for start, batch in _enumerate_batches(ds, cfg["batch_size"], cfg["num_workers"]):
        for k, (comp, coord, ent) in enumerate(batch, start):
            comps[k], coords[k], ents[k] = comp, coord, ent
        if progress:
            progress(len(batch))
    write_h5(shard.out, {"composites": comps, "coords": coords, "entropy": ents}, shard.ids,
             {"shard": shard.index})
    return n


def _enumerate_batches(ds: _Images, batch_size: int, workers: int) -> Iterator[tuple[int, list]]:
    start = 0
    for batch in _batches(ds, batch_size, workers):
        yield start, batch
        start += len(batch)


def patches_provenance(params: Params) -> dict[str, Any]:
    return {"stage": "patches", "patch_spec": PatchSpec(**params.patches.__dict__).as_dict(),
            "luma": [0.299, 0.587, 0.114], "entropy": "shannon-log2-fft-power",
            "order": "permutation-seeded-by-id", "fill": "repeat-own-patches"}


def run_patches(params: Params, manifest: str | Path, out: str | Path, cache_dir: str | Path,
                scheduler: str = "", degradation: str = "") -> sharding.RunSummary:
    rows = _ok_rows(manifest)
    prov = {**patches_provenance(params), "manifest": _manifest_fp(rows)}
    settings = {"spec": prov["patch_spec"], "max_pixels": params.data.max_image_pixels,
                "batch_size": 32, "num_workers": params.compute.num_workers}
    if degradation:  # a degraded test view (pipeline.extraction.views_stage)
        settings["degradation"] = prov["degradation"] = degradation
    return _run_and_merge("patches", rows, rows["path_raw"].tolist(), settings, prov,
                          compute_patches_shard, out, cache_dir, params, scheduler, ".h5",
                          merge=lambda parts: concat_h5(out, parts, ["composites", "coords",
                                                                     "entropy"],
                                                        {**base_provenance(), **prov},
                                                        chunk_rows=8))


# ----------------------------------------------------------------------------- caption


class BlipPixels:
    """Dataset transform: decoded image -> BLIP ``pixel_values`` (3, S, S) float32.

    The processor treats each image on its own, so resizing and normalising in DataLoader
    workers gives exactly the tensor that ``Captioner.caption`` builds for a batch.
    """

    def __init__(self, image_processor: Any) -> None:
        self.image_processor = image_processor

    def __call__(self, rgb: np.ndarray, image_id: str) -> torch.Tensor:
        return self.image_processor(images=[rgb], return_tensors="pt")["pixel_values"][0]


@torch.inference_mode()
def generate_captions(captioner: Any, pixels: torch.Tensor, max_new_tokens: int,
                      amp_dtype: torch.dtype | None = None) -> list[str]:
    """Greedy captions for one batch of preprocessed images (same decoding as ``caption``)."""
    from pipeline.backbones.clip import _autocast

    pixels = pixels.to(captioner.device, non_blocking=True)
    with _autocast(captioner.device, amp_dtype):
        out = captioner.model.generate(pixel_values=pixels, max_new_tokens=max_new_tokens,
                                       num_beams=1, do_sample=False)
    texts = captioner.processor.batch_decode(out, skip_special_tokens=True)
    return [" ".join(t.split()) for t in texts]


def compute_caption_shard(shard: sharding.Shard, progress: Callable[[int], Any] | None = None
                          ) -> int:
    from pipeline.backbones.blip import load_blip

    cfg = shard.settings
    captioner = load_blip(cfg["model"], cfg["device"])
    ds = _Images(shard.ids, shard.inputs, cfg["max_pixels"],
                 BlipPixels(captioner.processor.image_processor), cfg.get("degradation", ""))
    captions: list[str] = []
    for pixels in _batches(ds, cfg["batch_size"], cfg["num_workers"], torch.stack,
                           pin=_on_cuda(cfg["device"])):
        captions.extend(generate_captions(captioner, pixels, cfg["max_new_tokens"],
                                          AMP[cfg["precision"]]))
        if progress:
            progress(len(pixels))
    df = pd.DataFrame({"id": shard.ids, "caption": captions, "model": cfg["model"]})
    write_table(shard.out, df, {"shard": shard.index})
    return len(shard.ids)


def caption_provenance(params: Params) -> dict[str, Any]:
    return {"stage": "caption", "blip_model": params.caption.model,
            "max_new_tokens": params.caption.max_new_tokens, "decoding": "greedy",
            "precision": params.compute.precision}


def run_caption(params: Params, manifest: str | Path, out: str | Path, cache_dir: str | Path,
                scheduler: str = "", degradation: str = "") -> sharding.RunSummary:
    from pipeline.backbones.blip import load_blip

    rows = _ok_rows(manifest)
    device = params.compute.device
    prov = {**caption_provenance(params), "manifest": _manifest_fp(rows)}
    if not scheduler:  # fail fast (and record weights' revision) before any shard work
        prov.update(load_blip(params.caption.model, device).provenance)
    settings = {"model": params.caption.model, "max_new_tokens": params.caption.max_new_tokens,
                "batch_size": params.caption.batch_size, "device": device,
                "precision": params.compute.precision, "max_pixels": params.data.max_image_pixels,
                "num_workers": params.compute.num_workers}
    if degradation:  # a degraded test view (pipeline.extraction.views_stage)
        settings["degradation"] = prov["degradation"] = degradation

    def merge(parts: list[str]) -> int:
        return concat_tables(out, parts, {**base_provenance(), **prov})

    return _run_and_merge("caption", rows, rows["path_raw"].tolist(), settings, prov,
                          compute_caption_shard, out, cache_dir, params, scheduler, ".parquet",
                          merge)


def concat_tables(path: str | Path, parts: list[str], provenance: dict[str, Any]) -> int:
    """Stream Parquet shards into one file (one row group per shard), atomically."""
    import json

    import pyarrow.parquet as pq

    from pipeline.atomic import atomic_path

    if not parts:
        write_table(path, pd.DataFrame({"id": [], "caption": [], "model": []}), provenance)
        return 0
    schema = pq.read_schema(parts[0])
    meta = {**(schema.metadata or {}), b"nsnet": json.dumps(provenance, sort_keys=True).encode()}
    rows = 0
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, schema.with_metadata(meta)) as writer:
            for part in parts:
                table = pq.read_table(part).replace_schema_metadata(meta)
                writer.write_table(table)
                rows += table.num_rows
    return rows


# ----------------------------------------------------------------------------- embed


def compute_embed_shard(shard: sharding.Shard, progress: Callable[[int], Any] | None = None
                        ) -> int:
    from pipeline.backbones.clip import load_clip

    cfg = shard.settings
    clip = load_clip(cfg["arch"], cfg["pretrained"], cfg["device"])
    amp = AMP[cfg["precision"]]
    bs = cfg["batch_size"]
    n = len(shard.ids)
    image = np.empty((n, clip.embed_dim), np.float16)
    text = np.empty((n, clip.embed_dim), np.float16)
    with h5py.File(cfg["patches"], "r") as f:
        comps = f["composites"]
        # On CUDA, read each block straight into one page-locked buffer (async upload).
        pinned = (torch.empty((bs, *comps.shape[1:]), dtype=torch.uint8).pin_memory().numpy()
                  if _on_cuda(cfg["device"]) else None)
        for i in range(0, n, bs):
            j = min(n, i + bs)
            if pinned is None:
                block = comps[shard.start + i: shard.start + j]
            else:
                comps.read_direct(pinned, np.s_[shard.start + i: shard.start + j], np.s_[:j - i])
                block = pinned[:j - i]
            image[i:j] = clip.encode_images(block, amp).cpu().numpy()
            text[i:j] = clip.encode_texts(shard.inputs[i:j], amp).cpu().numpy()
            if progress:
                progress(j - i)
    write_h5(shard.out, {"image": image, "text": text}, shard.ids, {"shard": shard.index})
    return n


def clip_request(params: Params) -> dict[str, Any]:
    return {"clip_arch": params.clip.arch, "clip_pretrained": params.clip.pretrained}


def run_embed(params: Params, manifest: str | Path, patches: str | Path, captions: str | Path,
              out: str | Path, cache_dir: str | Path, scheduler: str = "") -> sharding.RunSummary:
    import pyarrow.parquet as pq

    from pipeline.backbones.clip import load_clip

    rows = _ok_rows(manifest)
    ids = rows["id"].tolist()
    require(patches, "patches")
    require(captions, "caption")
    hint = "Rerun the upstream stages (`dvc repro`), or `nsnet patches` / `nsnet caption`."
    if h5_ids(patches) != ids:
        raise ProvenanceMismatch(f"{patches} does not hold the manifest's images. {hint}")
    cap = pq.read_table(captions).to_pandas()
    if cap["id"].tolist() != ids:
        raise ProvenanceMismatch(f"{captions} does not hold the manifest's images. {hint}")
    patch_prov = h5_provenance(patches)
    expected = patches_provenance(params)
    from pipeline.provenance import check_compatible

    check_compatible(patch_prov, {k: v for k, v in expected.items() if k != "stage"},
                     str(patches), hint)
    cap_prov = table_provenance(captions)
    check_compatible(cap_prov, {"blip_model": params.caption.model,
                                "max_new_tokens": params.caption.max_new_tokens},
                     str(captions), hint)
    device = params.compute.device
    prov: dict[str, Any] = {"stage": "embed", **clip_request(params),
                            "precision": params.compute.precision,
                            "patches": fingerprint(patch_prov), "captions": fingerprint(cap_prov),
                            "patch_spec": patch_prov.get("patch_spec"),
                            "blip_model": cap_prov.get("blip_model"),
                            "manifest": _manifest_fp(rows)}
    prov.update(load_clip(params.clip.arch, params.clip.pretrained, device).provenance)
    settings = {"arch": params.clip.arch, "pretrained": params.clip.pretrained,
                "batch_size": params.clip.batch_size, "device": device,
                "precision": params.compute.precision, "patches": str(Path(patches).absolute()),
                "inputs": prov["patches"] + prov["captions"]}
    return _run_and_merge("embed", rows, cap["caption"].tolist(), settings, prov,
                          compute_embed_shard, out, cache_dir, params, scheduler, ".h5",
                          merge=lambda parts: concat_h5(out, parts, ["image", "text"],
                                                        {**base_provenance(), **prov},
                                                        chunk_rows=0))


# ----------------------------------------------------------------------------- shared


def _run_and_merge(stage: str, rows: pd.DataFrame, inputs: list[Any], settings: dict[str, Any],
                   prov: dict[str, Any], compute: Callable[..., int], out: str | Path,
                   cache_dir: str | Path, params: Params, scheduler: str, suffix: str,
                   merge: Callable[[list[str]], int]) -> sharding.RunSummary:
    scheduler = scheduler or params.compute.scheduler
    key = {**{k: v for k, v in settings.items() if k not in ("num_workers", "batch_size",
                                                             "device")}, "prov": prov}
    workdir = sharding.work_dir(cache_dir, stage, key)
    plan = sharding.plan(stage, rows["id"].tolist(), inputs, params.compute.shard_size, workdir,
                         settings, suffix)
    summary = sharding.run(plan, compute, scheduler, desc=stage)
    merge([s.out for s in plan])
    sharding.cleanup(workdir)
    summary.skipped = dict(rows.attrs.get("skipped", {}))
    return summary
