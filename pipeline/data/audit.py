"""The dataset shortcut audit (``nsnet audit``): do real and fake files differ by metadata alone?

A detector learns whatever separates its training labels. When every real image is a camera
JPEG and every fake a PNG, "is it a PNG?" is a perfect detector on the training set and a
useless one elsewhere. This module reads only file *headers* (``PIL.Image.open`` parses the
markers/chunks before the pixel data; pixels are never decoded), so it costs a file open and a
few kilobytes per image:

* format, mode, width x height (and file size in bytes per pixel, summarised only),
* JPEG quality, estimated from the quantisation tables: the libjpeg (IJG) standard tables
  scaled to quality q are compared with the file's tables; the nearest q is reported, and
  whether the tables are exactly IJG's,
* EXIF and ICC profile presence.

It summarises these per label and per source, then fits a small scikit-learn classifier on the
metadata alone over the training rows and reports its cross-validated ROC AUC, and the single
feature that separates real from fake most. Above ``audit.warn_auc`` it warns plainly.
"""

from __future__ import annotations

import io
import math
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from nsnet import runtime
from nsnet.atomic import write_json
from nsnet.config import Params, parse_degradation
from nsnet.data.manifest import read_manifest
from nsnet.metrics import aligned
from nsnet.provenance import base_provenance

# ITU-T T.81 Annex K tables (natural order, as PIL's ``img.quantization``), used by libjpeg.
STD_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.int64)
STD_CHROMA = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
    *([99] * 32)], dtype=np.int64)

# File-container metadata only. Bytes per pixel is summarised but not classified on: for a
# lossless format it measures how complex the content is, which is not a shortcut.
FEATURES_NUMERIC = ("width", "height", "jpeg_quality", "exif", "icc")
FEATURES_CATEGORICAL = ("format", "mode")
FEATURES = FEATURES_CATEGORICAL + FEATURES_NUMERIC
# What a JPEG re-encoding of every training image (protocol.train_reencode) makes uniform.
REENCODE_EQUALISES = ("format", "mode", "jpeg_quality", "exif", "icc")
MAX_CLASSIFIER_ROWS = 50_000  # a seeded, stratified sample above this (the AUC is stable)


@lru_cache(maxsize=1)
def ijg_tables() -> tuple[np.ndarray, np.ndarray]:
    """(100, 64) luminance and chrominance tables of libjpeg quality 1..100 (baseline)."""
    q = np.arange(1, 101)
    scale = np.where(q < 50, 5000 // q, 200 - 2 * q)[:, None]
    luma = np.clip((STD_LUMA[None] * scale + 50) // 100, 1, 255)
    chroma = np.clip((STD_CHROMA[None] * scale + 50) // 100, 1, 255)
    return luma, chroma


def jpeg_quality(tables: dict[int, Any]) -> tuple[int, bool]:
    """Nearest IJG quality of a JPEG's quantisation tables, and whether they match exactly.

    ``tables`` is PIL's ``img.quantization`` (table id -> 64 values in natural order).
    """
    luma, chroma = ijg_tables()
    dist = np.zeros(100)
    if 0 in tables:
        dist += np.abs(luma - np.asarray(tables[0], np.int64)[None]).sum(1)
    if 1 in tables:
        dist += np.abs(chroma - np.asarray(tables[1], np.int64)[None]).sum(1)
    best = int(np.argmin(dist))
    return best + 1, bool(dist[best] == 0)


HEADER_COLUMNS = ["format", "mode", "width", "height", "jpeg_quality", "ijg_tables", "exif", "icc",
                  "audit_error"]
INDEXED_HEADER_COLUMNS = ("jpeg_quality", "ijg_tables", "exif", "icc")  # manifest columns


def header_row(path: str | bytes) -> dict[str, Any]:
    """Metadata of one file (a path, or its bytes) from its header only (``Image.open``
    without ``load``)."""
    row: dict[str, Any] = {"format": "", "mode": "", "width": -1, "height": -1,
                           "jpeg_quality": -1, "ijg_tables": False, "exif": False, "icc": False,
                           "audit_error": ""}
    try:
        with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path) as img:
            row.update(format=img.format or "", mode=img.mode, width=img.width,
                       height=img.height, icc=bool(img.info.get("icc_profile")),
                       exif=bool(img.info.get("exif")))
            tables = getattr(img, "quantization", None)
            if tables:
                row["jpeg_quality"], row["ijg_tables"] = jpeg_quality(tables)
    except Exception as exc:  # noqa: BLE001 - a file that changed since `index`: report it
        row["audit_error"] = f"{type(exc).__name__}: {exc}"
    return row


def read_headers(paths: list[str], workers: int = 0) -> pd.DataFrame:
    """``header_row`` of every path, in ``workers`` processes (0 = in this process)."""
    if workers > 0 and len(paths) > 256:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = list(pool.map(header_row, paths, chunksize=256))
    else:
        rows = [header_row(p) for p in paths]
    return pd.DataFrame(rows, index=range(len(paths)), columns=HEADER_COLUMNS)


def audit_frame(manifest: pd.DataFrame, workers: int | str = 0) -> pd.DataFrame:
    """Usable manifest rows with their header metadata (one row per image).

    ``nsnet index`` records the header fields while it reads each file anyway, so no image is
    opened here; a manifest without them (an older one) has its headers read now."""
    ok = manifest[manifest["status"] == "ok"].reset_index(drop=True)
    if all(c in ok for c in INDEXED_HEADER_COLUMNS):
        heads = ok[HEADER_COLUMNS[:-1]].copy()
        heads["audit_error"] = ""
    else:
        from nsnet import runtime
        from nsnet.data.manifest import file_paths

        heads = read_headers([os.fsdecode(p) for p in file_paths(ok)],
                             runtime.index_workers(workers))
    df = pd.concat([ok[["id", "path", "label", "source", "split", "bytes"]], heads], axis=1)
    pixels = (df["width"].clip(lower=1) * df["height"].clip(lower=1)).astype(np.float64)
    df["bytes_per_pixel"] = df["bytes"] / pixels
    return df


# ----------------------------------------------------------------------------- summaries
def _shares(values: pd.Series, top: int = 3) -> str:
    """``PNG 100%`` / ``JPEG 60%, PNG 40%``: the most common values and their shares."""
    counts = Counter(values.astype(str).replace("", "?"))
    n = sum(counts.values())
    return ", ".join(f"{k} {100 * c / n:.0f}%" for k, c in counts.most_common(top))


def group_summary(df: pd.DataFrame) -> dict[str, Any]:
    """What one group of images looks like (counts and shares; JSON-friendly)."""
    jpeg = df[df["jpeg_quality"] > 0]["jpeg_quality"]
    sizes = df["width"].astype(str) + "x" + df["height"].astype(str)
    return {
        "n": int(len(df)),
        "formats": {str(k): int(v) for k, v in df["format"].value_counts().items()},
        "modes": {str(k): int(v) for k, v in df["mode"].value_counts().items()},
        "jpeg_quality_median": float(jpeg.median()) if len(jpeg) else None,
        "jpeg_quality_range": [int(jpeg.min()), int(jpeg.max())] if len(jpeg) else None,
        # cameras and editors often use their own tables; libraries (PIL, libjpeg) IJG's
        "jpeg_ijg_tables_share": float(df.loc[df["jpeg_quality"] > 0, "ijg_tables"].mean())
        if len(jpeg) else None,
        "size_most_common": sizes.mode().iloc[0] if len(df) else "",
        "size_most_common_share": float((sizes == sizes.mode().iloc[0]).mean()) if len(df)
        else 0.0,
        "width_median": float(df["width"].median()) if len(df) else None,
        "height_median": float(df["height"].median()) if len(df) else None,
        "bytes_per_pixel_median": float(df["bytes_per_pixel"].median()) if len(df) else None,
        "exif_share": float(df["exif"].mean()) if len(df) else 0.0,
        "icc_share": float(df["icc"].mean()) if len(df) else 0.0,
        "_formats_text": _shares(df["format"]), "_modes_text": _shares(df["mode"]),
        "_sizes_text": _shares(sizes, 2),
    }


# ----------------------------------------------------------------------------- classifier
def feature_matrix(df: pd.DataFrame, features: tuple[str, ...] = FEATURES) -> pd.DataFrame:
    """Numeric design matrix: one-hot categoricals, numbers as they are."""
    cols = []
    for f in features:
        if f in FEATURES_CATEGORICAL:
            cols.append(pd.get_dummies(df[f].astype(str), prefix=f, dtype=np.float64))
        else:
            cols.append(df[[f]].astype(np.float64))
    return pd.concat(cols, axis=1)


def single_feature_auc(df: pd.DataFrame, feature: str) -> float:
    """How well one feature alone separates the labels: ROC AUC of its value (categorical:
    of its category's share of fakes), folded so that 0.5 = no information, 1 = perfect."""
    from sklearn.metrics import roc_auc_score

    y = df["label"].to_numpy()
    if feature in FEATURES_CATEGORICAL:
        values = df[feature].astype(str)
        score = values.map(df.groupby(values)["label"].mean()).to_numpy(np.float64)
    else:
        score = df[feature].to_numpy(np.float64)
    auc = float(roc_auc_score(y, score))
    return max(auc, 1.0 - auc)


def metadata_auc(df: pd.DataFrame, features: tuple[str, ...], folds: int, seed: int
                 ) -> float | None:
    """Cross-validated ROC AUC of a random forest on the metadata ``features`` (None if too
    few rows of a class for the folds)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    y = df["label"].to_numpy()
    if min(int((y == 0).sum()), int((y == 1).sum())) < folds:
        return None
    x = feature_matrix(df, features).to_numpy()
    model = RandomForestClassifier(n_estimators=50, max_depth=8, random_state=seed, n_jobs=1)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(model, x, y, cv=cv, scoring="roc_auc")))


def _sample(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    if len(df) <= n:
        return df
    return df.groupby("label", group_keys=False).sample(frac=n / len(df), random_state=seed)


def training_rows(df: pd.DataFrame, params: Params) -> pd.DataFrame:
    rows = df[(df["split"] == "train") & (df["audit_error"] == "")]
    if params.protocol.train_sources:
        rows = rows[rows["source"].isin(params.protocol.train_sources)]
    return rows.reset_index(drop=True)


def classify(df: pd.DataFrame, params: Params) -> dict[str, Any]:
    """The metadata classifier on the training rows: AUC, per-feature AUCs, the verdict."""
    train = _sample(training_rows(df, params), MAX_CLASSIFIER_ROWS, params.seed)
    out: dict[str, Any] = {"n_train": int(len(train)), "folds": params.audit.folds,
                           "warn_auc": params.audit.warn_auc}
    auc = metadata_auc(train, FEATURES, params.audit.folds, params.seed)
    out["auc"] = auc
    if auc is None:
        out.update(warning=False, feature_auc={}, top_feature=None)
        return out
    per = {f: single_feature_auc(train, f) for f in FEATURES}
    top = max(per, key=lambda f: (per[f], -FEATURES.index(f)))
    out.update(feature_auc=per, top_feature=top, warning=bool(auc > params.audit.warn_auc))
    reencode = params.protocol.train_reencode
    if reencode:
        rest = tuple(f for f in FEATURES if f not in REENCODE_EQUALISES)
        out["after_reencode"] = {"reencode": reencode, "features": list(rest),
                                 "auc": metadata_auc(train, rest, params.audit.folds,
                                                     params.seed)}
    return out


def _describe(train: pd.DataFrame, feature: str) -> str:
    """`real: JPEG 100%; fake: PNG 100%` or `real median 512, fake median 256`."""
    parts = []
    for label, name in ((0, "real"), (1, "fake")):
        values = train[train["label"] == label][feature]
        if feature in FEATURES_CATEGORICAL or feature in ("exif", "icc"):
            parts.append(f"{name}: {_shares(values, 2)}")
        else:
            parts.append(f"{name} median {values.median():.3g}")
    return "; ".join(parts)


def warning_text(res: dict[str, Any], train: pd.DataFrame) -> str:
    """The plain-language verdict of the classifier."""
    clf = res["classifier"]
    if clf["auc"] is None:
        return (f"metadata classifier: skipped (needs at least {clf['folds']} training images of "
                "each label)")
    top = clf["top_feature"]
    head = (f"metadata classifier on {clf['n_train']} training images: cross-validated AUC "
            f"{clf['auc']:.2f} ({clf['folds']} folds)")
    if clf["feature_auc"][top] >= 0.6:
        head += (f"; most separating feature: {top} (alone AUC {clf['feature_auc'][top]:.2f}; "
                 f"{_describe(train, top)})")
    else:
        head += "; no single feature separates them (each alone AUC < 0.60)"
    if not clf["warning"]:
        return head + f"\nno metadata shortcut above audit.warn_auc={clf['warn_auc']:g}."
    text = (head + f"\nWARNING: your real and fake training images differ by their file "
            f"metadata ({top} most of all): a detector can learn that instead of the "
            f"generator (AUC {clf['auc']:.2f} > audit.warn_auc={clf['warn_auc']:g}). Make the "
            "formats uniform, e.g. protocol.train_reencode: jpeg95, and compare the results.")
    after = clf.get("after_reencode")
    if after:
        auc = "n/a" if after["auc"] is None else f"{after['auc']:.2f}"
        left = ", ".join(after["features"])
        text += (f"\nwith protocol.train_reencode={after['reencode']} every training image "
                 f"becomes a JPEG of that quality; the metadata left ({left}) separates them "
                 f"with AUC {auc}.")
    return text


# ----------------------------------------------------------------------------- the stage
def run_audit(params: Params, manifest: str | Path, out_json: str | Path,
              details_json: str | Path | None = None) -> dict[str, Any]:
    """Read every usable image's header, summarise, classify; write the report.

    ``out_json`` (a DVC metrics file, ``metrics/audit.json``) gets the one number compared
    between runs, the metadata classifier's cross-validated AUC (``metadata_auc``);
    ``details_json`` (default ``<dir>/details/<name>``) the full report.
    """
    t0 = time.perf_counter()
    df = audit_frame(read_manifest(manifest), runtime.index_workers(params.data.num_workers))
    if not len(df):
        raise ValueError(f"{manifest} has no usable images to audit; check data.roots and the "
                         "skipped files that `nsnet index` reported")
    seconds = time.perf_counter() - t0
    if params.protocol.train_reencode:
        parse_degradation(params.protocol.train_reencode)  # validated in config; jpeg<q> only
    res: dict[str, Any] = {
        "n": int(len(df)), "header_seconds": seconds,
        "errors": int((df["audit_error"] != "").sum()),
        "per_label": {("fake" if lab == 1 else "real"): group_summary(g)
                      for lab, g in df.groupby("label", sort=True)},
        "per_source": {str(s): group_summary(g) for s, g in df.groupby("source", sort=True)},
        "train_reencode": params.protocol.train_reencode,
    }
    res["classifier"] = classify(df, params)
    public = _public(res)
    public["provenance"] = base_provenance()
    out_json = Path(out_json)
    write_json(details_json or out_json.parent / "details" / out_json.name, public)
    auc = res["classifier"].get("auc")
    write_json(out_json, {"metadata_auc": None if auc is None else round(float(auc), 4)})
    res["text"] = format_audit(res, training_rows(df, params))
    return res


def _public(res: dict[str, Any]) -> dict[str, Any]:
    """The JSON record: the summaries without their display strings."""
    def clean(d: Any) -> Any:
        if isinstance(d, dict):
            return {k: clean(v) for k, v in d.items() if not str(k).startswith("_")}
        if isinstance(d, float) and math.isnan(d):
            return None
        return d
    return clean({k: v for k, v in res.items() if k != "text"})


def format_audit(res: dict[str, Any], train: pd.DataFrame) -> str:
    """The terminal report: one row per label and per source (columns as wide as their
    widest entry), then the classifier verdict."""
    rows = [["group", "n", "format", "JPEG q", "size", "mode", "EXIF", "ICC"]]
    for kind in ("per_label", "per_source"):
        for name, g in res[kind].items():
            q = "-" if g["jpeg_quality_median"] is None else f"{g['jpeg_quality_median']:.0f}"
            rows.append([f"{kind[4:]} {name}", str(g["n"]), g["_formats_text"], q,
                         g["_sizes_text"], g["_modes_text"], f"{100 * g['exif_share']:.0f}%",
                         f"{100 * g['icc_share']:.0f}%"])
    head = (f"audit: {res['n']} images, headers only ({res['header_seconds']:.1f} s)"
            + (f", {res['errors']} unreadable since index" if res["errors"] else ""))
    return "\n".join([head, *aligned(rows, right=(1, 3, 6, 7)), warning_text(res, train)])
