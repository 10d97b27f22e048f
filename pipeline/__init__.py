"""NS-Net / Advanced NS-Net: generalisable detection of AI-generated images over cached CLIP
features.

Data flows one way, and the subpackages follow it::

    nsnet.data        images -> manifest (index stage), layouts, degradations, demo data
    nsnet.backbones   the frozen CLIP and BLIP models (real weights or tiny random ones)
    nsnet.extraction  patch selection, captions, embeddings -> the feature store
    nsnet.heads       UFD / NS-Net / Advanced NS-Net heads, training loop, bundles
    nsnet.evaluation  metrics per source, degraded test copies, head comparison
    nsnet.reports     figures and records people read (explanations, t-SNE)
    nsnet.inference   scoring and explaining new images with a trained bundle (Detector)
    nsnet.serving     the detector as an HTTP service and web page (nsnet serve)

Shared foundations sit at the top: ``config`` (params.yaml), ``atomic`` (atomic writes),
``provenance``, ``cache_store`` (HDF5/Parquet files of ``cache/``) and ``metrics``.

The names below are the public surface; they are imported on first use, so ``import nsnet``
stays cheap::

    import nsnet
    params = nsnet.load_params("params.yaml")
    clip = nsnet.load_clip("ViT-L-14", "openai", device="cuda")
    head = nsnet.build_head("advanced", dim=clip.embed_dim)
    det = nsnet.Detector.load("models/detector")   # det.predict([...]), det.explain(...)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "Params": "nsnet.config",
    "ParamsError": "nsnet.config",
    "load_params": "nsnet.config",
    "load_clip": "nsnet.backbones.clip",
    "load_blip": "nsnet.backbones.blip",
    "ModelUnavailable": "nsnet.backbones.availability",
    "PatchSpec": "nsnet.extraction.patch_selection",
    "select_patches": "nsnet.extraction.patch_selection",
    "build_head": "nsnet.heads.method",
    "method": "nsnet.heads.method",
    "METHODS": "nsnet.registry",
    "load_bundle": "nsnet.heads.bundle",
    "save_bundle": "nsnet.heads.bundle",
    "load_chain": "nsnet.inference.predict",
    "predict_paths": "nsnet.inference.predict",
    "explain_image": "nsnet.inference.explain",
    "Detector": "nsnet.inference.detector",
    "verdict": "nsnet.inference.verdict",
}
__all__ = [
    "METHODS",
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
    "method",
    "predict_paths",
    "save_bundle",
    "select_patches",
    "verdict",
]

if TYPE_CHECKING:
    from nsnet.backbones.availability import ModelUnavailable
    from nsnet.backbones.blip import load_blip
    from nsnet.backbones.clip import load_clip
    from nsnet.config import Params, ParamsError, load_params
    from nsnet.extraction.patch_selection import PatchSpec, select_patches
    from nsnet.heads.bundle import load_bundle, save_bundle
    from nsnet.heads.method import build_head, method
    from nsnet.inference.detector import Detector
    from nsnet.inference.explain import explain_image
    from nsnet.inference.predict import load_chain, predict_paths
    from nsnet.inference.verdict import verdict
    from nsnet.registry import METHODS


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nsnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
