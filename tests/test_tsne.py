"""`nsnet tsne`: features before/after the head's projection, drawn as a PNG; the dvc stage."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from nsnet.config import FigureParams, ParamsError, params_from_dict
from nsnet.extraction.cached_features import load_features
from nsnet.heads.bundle import load_bundle
from nsnet.heads.train_stage import run_train
from nsnet.reports.tsne_stage import before_after, run_tsne, subsample
from nsnet.stages.cli import main
from tests.conftest import ROOT, default_raw, tiny_raw, write_params


def _params(built_cache, head: str, points: int = 40):
    return dataclasses.replace(
        built_cache.params, figures=FigureParams(tsne_points=points, tsne_perplexity=10.0),
        train=dataclasses.replace(built_cache.params.train, head=head, epochs=2, device="cpu"))


def _bundle(built_cache, params, out: Path) -> Path:
    run_train(params, built_cache.manifest, built_cache.features, out, out.parent / "log.csv")
    return out


def test_projection_removes_the_semantic_subspace(built_cache, tmp_path):
    fs = load_features(built_cache.params, built_cache.manifest, built_cache.features)
    for head in ("nsnet", "composite_probe"):
        model, _ = load_bundle(_bundle(built_cache, _params(built_cache, head), tmp_path / head))
        x, px = before_after(model, fs)
        assert x.shape == px.shape == (len(fs), fs.image.shape[1])
        if head == "composite_probe":  # the probe sees raw features and projects nothing
            np.testing.assert_array_equal(x, fs.image.numpy())
            np.testing.assert_array_equal(x, px)
        else:
            np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)  # normalised
            basis = model.basis.numpy()
            np.testing.assert_allclose(px @ basis, 0.0, atol=1e-5)  # nothing left in V_k
            np.testing.assert_allclose(px, x - (x @ basis) @ basis.T, atol=1e-5)


def test_run_tsne_draws_a_subsample(built_cache, tmp_path):
    params = _params(built_cache, "advanced", points=30)
    bundle = _bundle(built_cache, params, tmp_path / "m")
    out = run_tsne(params, built_cache.manifest, built_cache.features, bundle,
                   tmp_path / "plots" / "tsne.png")
    assert out["n"] == 30 and out["head"] == "advanced"
    assert set(out["silhouette"]) == {"before", "after"}
    with Image.open(tmp_path / "plots" / "tsne.png") as im:
        assert im.format == "PNG" and im.width > 600 and im.height > 600
    idx = subsample(100, 30, seed=0)
    assert len(set(idx)) == 30 and list(idx) == sorted(idx)
    np.testing.assert_array_equal(idx, subsample(100, 30, seed=0))
    np.testing.assert_array_equal(subsample(20, 30, seed=0), np.arange(20))


def test_cli_and_params(built_cache, demo_images, tmp_path):
    raw = tiny_raw(demo_images, figures={"tsne_points": 25})
    params_file = write_params(tmp_path / "params.yaml", raw)
    bundle = _bundle(built_cache, _params(built_cache, "nsnet"), tmp_path / "model")
    res = CliRunner().invoke(main, ["tsne", "--params", str(params_file), "--manifest",
                                    str(built_cache.manifest), "--features",
                                    str(built_cache.features), "--model", str(bundle),
                                    "--out", str(tmp_path / "t.png")])
    assert res.exit_code == 0, res.output
    assert "25 images" in res.output and (tmp_path / "t.png").exists()
    raw["figures"]["tsne_points"] = 3
    with pytest.raises(ParamsError, match="figures.tsne_points"):
        params_from_dict(raw)
    res = CliRunner().invoke(main, ["tsne", "--params", str(params_file), "--manifest",
                                    str(built_cache.manifest), "--features",
                                    str(built_cache.features), "--model",
                                    str(tmp_path / "none")])
    assert res.exit_code == 1 and "not a model bundle" in res.output


def test_dvc_declares_the_figure_stage_and_plots():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    tsne = stages["tsne"]
    assert tsne["cmd"].split()[:2] == ["nsnet", "tsne"] and "plots/tsne.png" in tsne["cmd"]
    assert {"cache/manifest.parquet", "cache/features/clean.json", "models/detector"} <= set(
        tsne["deps"])  # the catalog of the clean features read, not the whole store
    assert tsne["plots"] == [{"plots/tsne.png": {"cache": False}}]
    assert "figures" in default_raw()
    declared = {next(iter(p)) if isinstance(p, dict) else p
                for s in stages.values() for p in s.get("plots", [])}
    assert {"plots/roc.csv", "plots/pr.csv", "plots/confusion.csv", "plots/train_log.csv",
            "plots/tsne.png"} <= declared
