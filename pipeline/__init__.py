"""NS-Net / Advanced NS-Net: generalisable detection of AI-generated images over cached CLIP
features.

Data flows one way, and the subpackages follow it::

    pipeline.data        images -> manifest (index stage), layouts, degradations, demo data
    pipeline.backbones   the frozen CLIP and BLIP models (real weights or tiny random ones)
    pipeline.extraction  patch selection, captions, embeddings -> the feature store
    pipeline.heads       UFD / NS-Net / Advanced NS-Net heads, training loop, bundles
    pipeline.evaluation  metrics per source, degraded test copies, head comparison
    pipeline.reports     figures and records people read (explanations, t-SNE)
    pipeline.inference   scoring and explaining new images with a trained bundle (Detector)
    pipeline.serving     the detector as an HTTP service and web page (nsnet serve)

Shared foundations sit at the top: ``config`` (params.yaml), ``atomic`` (atomic writes),
``provenance``, ``cache_store`` (HDF5/Parquet files of ``cache/``) and ``metrics``.

The names below are the public surface; they are imported on first use, so ``import pipeline``
stays cheap::

    import pipeline
    params = pipeline.load_params("params.yaml")
    clip = pipeline.load_clip("ViT-L-14", "openai", device="cuda")
    head = pipeline.build_head("advanced", dim=clip.embed_dim)
    det = pipeline.Detector.load("models/detector")   # det.predict([...]), det.explain(...)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "Params": "pipeline.config",
    "ParamsError": "pipeline.config",
    "load_params": "pipeline.config",
    "load_clip": "pipeline.backbones.clip",
    "load_blip": "pipeline.backbones.blip",
    "ModelUnavailable": "pipeline.backbones.availability",
    "PatchSpec": "pipeline.extraction.patch_selection",
    "select_patches": "pipeline.extraction.patch_selection",
    "build_head": "pipeline.heads.detectors",
    "HEADS": "pipeline.heads.detectors",
    "load_bundle": "pipeline.heads.bundle",
    "save_bundle": "pipeline.heads.bundle",
    "load_chain": "pipeline.inference.predict",
    "predict_paths": "pipeline.inference.predict",
    "explain_image": "pipeline.inference.explain",
    "Detector": "pipeline.inference.detector",
    "verdict": "pipeline.inference.verdict",
}
__all__ = [
    "HEADS",
    "Detector",
    "ModelUnavailable",
    "Params",
    "ParamsError",
    "PatchSpec",
    "build_head",
    "explain_image",
    "load_blip",
    "load_bundle",
    "load_chain",
    "load_clip",
    "load_params",
    "predict_paths",
    "save_bundle",
    "select_patches",
    "verdict",
]

if TYPE_CHECKING:
    from pipeline.backbones.availability import ModelUnavailable
    from pipeline.backbones.blip import load_blip
    from pipeline.backbones.clip import load_clip
    from pipeline.config import Params, ParamsError, load_params
    from pipeline.extraction.patch_selection import PatchSpec, select_patches
    from pipeline.heads.bundle import load_bundle, save_bundle
    from pipeline.heads.detectors import HEADS, build_head
    from pipeline.inference.detector import Detector
    from pipeline.inference.explain import explain_image
    from pipeline.inference.predict import load_chain, predict_paths
    from pipeline.inference.verdict import verdict


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
