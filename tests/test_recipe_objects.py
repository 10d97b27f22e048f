"""Feature recipes as registered objects (``nsnet.extraction.recipes``): names derived from the
modules, no recipe name compared outside its own module, and the ``rigid`` recipe added as one
module, end to end on real images and the tiny CLIP: one decode, the same rows on every run,
and the same features from predict's inference path as from the store."""

from __future__ import annotations

import ast
import copy
import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nsnet.backbones import recipes as R
from nsnet.backbones.clip import load_clip
from nsnet.config import params_from_dict
from nsnet.data.images import open_image
from nsnet.extraction import image_pass
from nsnet.extraction.cached_features import load_features, training_crops
from nsnet.extraction.extract_stage import catalogs, run_extract
from nsnet.extraction.settings import ExtractSettings, kind_order, recipe_names
from nsnet.registry import RECIPES
from tests.conftest import read_part, tiny_raw

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline" / "extraction" / "recipes"


def test_recipe_names_come_from_the_module_files_without_importing_torch() -> None:
    code = ("import sys; from nsnet.registry import RECIPES; print(','.join(RECIPES.names())); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    files = sorted(p.stem for p in PACKAGE.glob("[!_]*.py"))
    assert out == [",".join(files), "False"]
    body = ast.parse((PACKAGE / "__init__.py").read_text()).body
    assert len(body) == 1 and isinstance(body[0].value, ast.Constant)  # a docstring only


def test_every_module_registers_its_recipe_and_the_order_is_the_stores() -> None:
    for name, recipe in RECIPES.all().items():
        assert recipe.name == name
        assert type(recipe).__module__ == f"nsnet.extraction.recipes.{name}"
    assert recipe_names() == ("composite", "clip_crop", "clip_layers", "cozzolino", "rigid")
    assert kind_order() == ("selection", "caption", "composite", "image", "text", "clip_crop",
                            "clip_layers", "cozzolino", "rigid")
    assert [n for n in recipe_names() if RECIPES.get(n).patch_orders] == ["composite"]


# --- the rigid recipe, end to end --------------------------------------------------------------

def _rigid_params(root: Path, **sections):
    return params_from_dict(tiny_raw(root, compare={"heads": ["rigid"]},
                                     train={"head": "rigid"}, **sections))


@pytest.fixture(scope="module")
def rigid(built_cache, tmp_path_factory):
    """The session cache plus the rigid recipe (clean, and the test images under jpeg30)."""
    ws = built_cache.copy_to(tmp_path_factory.mktemp("rigid") / "ws")
    params = _rigid_params(built_cache.params.data.roots[0].path,
                           protocol={"degradations": ["jpeg30"]})
    image_pass.DECODES["count"] = 0
    summary = run_extract(params, ws.manifest, ws.features)
    return dataclasses.replace(ws, params=params), summary, image_pass.DECODES["count"]


def test_rigid_is_extracted_from_one_decode_for_every_split_and_treatment(rigid):
    ws, summary, decodes = rigid
    rows = load_features(ws.params, ws.manifest, ws.features).frame
    n, n_test = len(rows), int((rows["split"] == "test").sum())
    assert decodes == summary.images == n  # one decode per image serves both treatments
    # no training-only crops: every image has its row, the test images under jpeg30 as well
    assert summary.missing == {"rigid": n + n_test}
    assert run_extract(ws.params, ws.manifest, ws.features).computed == 0
    settings = ExtractSettings.from_params(ws.params)
    assert not settings.training_crops("rigid")
    clean = catalogs(settings, ws.features)["clean.json"]["parts"]
    assert any(p.startswith("rigid/") for p in clean)


def test_rigid_rows_are_the_clean_and_the_noised_embedding(rigid):
    ws, _, _ = rigid
    rows = load_features(ws.params, ws.manifest, ws.features).frame
    ids, paths = rows["id"].tolist()[:6], rows["path"].tolist()[:6]
    got = read_part(ws.features, ws.params, "rigid", ids)["emb"]
    assert got.dtype == np.float16 and got.shape == (6, 2, 128)
    clip = load_clip("tiny", "", "cpu")
    pixels = np.stack([R.clip_preprocess(open_image(p)[0]) for p in paths])
    np.testing.assert_allclose(got[:, 0].astype(np.float32),
                               R.clip_crop_embeddings(clip, pixels).numpy(), atol=2e-3)
    noise = np.stack([R.rigid_noise(i) for i in ids])
    want = R.rigid_embeddings(clip, pixels, noise, 0.05).numpy()
    np.testing.assert_allclose(got.astype(np.float32), want, atol=2e-3)
    assert not np.array_equal(got[:, 0], got[:, 1])  # the noise moved every embedding
    assert np.abs(got[:, 0].astype(np.float32) - got[:, 1]).max(axis=1).min() > 0
    assert not np.array_equal(noise[0], noise[1])  # seeded by the content id
    np.testing.assert_array_equal(noise[0], R.rigid_noise(ids[0]))
    fs = load_features(ws.params, ws.manifest, ws.features, recipe="rigid")
    assert tuple(fs.image.shape) == (len(rows), 256) and fs.text.shape == (len(rows), 0)
    assert fs.provenance["row_shape"] == [2, 128] and fs.provenance["recipe"] == "rigid"
    assert training_crops(ws.params, ws.features, "rigid", rows) is None
    ours = fs.image[:6].reshape(6, 2, 128).numpy()
    np.testing.assert_array_equal(ours, got.astype(np.float32))


def test_rigid_extraction_gives_the_same_rows_on_every_run(built_cache, tmp_path):
    root = built_cache.params.data.roots[0].path
    ids = load_features(built_cache.params, built_cache.manifest,
                        built_cache.features).frame["id"].tolist()
    got = {}
    for name, sections in {"a": {}, "b": {}, "workers": {"compute": {"num_workers": 2}},
                           "batch5": {"clip": {"batch_size": 5}}}.items():
        params = _rigid_params(root, **sections)
        summary = run_extract(params, built_cache.manifest, tmp_path / name)
        assert set(summary.missing) == {"rigid"}  # only the recipe the heads read
        got[name] = read_part(tmp_path / name, params, "rigid", ids)["emb"]
    np.testing.assert_array_equal(got["a"], got["b"])
    np.testing.assert_array_equal(got["a"], got["workers"])
    np.testing.assert_allclose(got["a"].astype(np.float32), got["batch5"], atol=2e-3)


def test_predicts_inference_path_gives_the_stored_rigid_features(rigid):
    """``Recipe.infer`` (what predict runs on new images: the extraction's own ``derive`` and
    ``embed``) reproduces the stored rows, under the same rounding."""
    from nsnet.inference.predict import as_cached

    ws, _, _ = rigid
    rows = load_features(ws.params, ws.manifest, ws.features).frame.iloc[:8]
    ids = rows["id"].tolist()
    images = [open_image(p)[0] for p in rows["path"]]
    clip = load_clip("tiny", "", "cpu")
    recipe = RECIPES.get("rigid")
    feats = as_cached(recipe.infer(clip, None, images, ids))
    stored = read_part(ws.features, ws.params, "rigid", ids)["emb"]
    assert tuple(feats.shape) == (8, 256) == (8, recipe.width(clip, None))
    np.testing.assert_allclose(feats.numpy(), stored.reshape(8, -1).astype(np.float32),
                               atol=2e-3)


def test_a_rigid_bundle_scores_new_images_as_evaluate_scores_them(rigid, tmp_path):
    """The rigid head (training-free) over this recipe: predict's probabilities on the files
    are those of the cached features."""
    from nsnet.heads.train_stage import run_train
    from nsnet.heads.training_loop import predict_proba
    from nsnet.inference.explain import explain_image
    from nsnet.inference.predict import load_chain, predict_paths

    ws, _, _ = rigid
    params = copy.deepcopy(ws.params)
    params.train = dataclasses.replace(params.train, head="rigid", device="cpu")
    run_train(params, ws.manifest, ws.features, tmp_path / "b", tmp_path / "b.csv")
    fs = load_features(params, ws.manifest, ws.features, recipe="rigid")
    keep = np.zeros(len(fs), bool)
    keep[::5] = True
    fs = fs.subset(keep)
    chain = load_chain(tmp_path / "b", device="cpu")
    assert chain.blip is None and chain.config.backbones.recipe.name == "rigid"
    cached = predict_proba(chain.head, fs.image, fs.text)
    df = predict_paths(chain, fs.frame["path"].tolist(), batch_size=4)
    assert (df["status"] == "ok").all()
    np.testing.assert_allclose(df["prob"].to_numpy(), cached, atol=1e-5)
    ex = explain_image(chain, fs.frame["path"].iloc[0])
    assert len(ex.patches) == 49 and not ex.on_patches
    assert ex.prob == pytest.approx(float(df["prob"].iloc[0]), abs=1e-5)
