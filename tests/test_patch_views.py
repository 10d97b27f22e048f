"""Patch-order views (``patches.views: K``): the reference's reshuffling, cached as K fixed orders.

Real images, real tiny backbones, real cache files: K = 1 is today's cache bit for bit, K > 1
views are distinct orders of the same patches, changing K re-embeds only the images, training
draws one view per image per epoch (deterministically), and evaluate, predict and explain
combine the views the same way.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

import nsnet.extraction.cached_features as features
from nsnet.cache_store import StoreError
from nsnet.config import ParamsError, params_from_dict
from nsnet.data.images import open_image
from nsnet.evaluation.compare_stage import format_comparison, run_compare
from nsnet.evaluation.evaluate_stage import run_evaluate
from nsnet.extraction.cached_features import MappedRows, load_features, select
from nsnet.extraction.extract_stage import run_extract
from nsnet.extraction.patch_selection import (
    PatchSpec,
    choose,
    composite,
    patch_entropies,
    select_patches,
    to_gray,
    view_cells,
    view_composites,
    view_orders,
)
from nsnet.heads.train_stage import run_train
from nsnet.heads.training_loop import average_views, fit, predict_proba
from nsnet.inference.explain import explain_image, occlude, score_composites
from nsnet.inference.predict import load_chain, predict_paths
from nsnet.stages.cli import main
from tests.conftest import BuiltCache, build_cache, part_of, tiny_raw, write_params

K = 3


def _same(a: object, b: object) -> bool:
    """Equal metric trees (NaN equals NaN)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _params(built: BuiltCache, views: int = K, **train):
    p = copy.deepcopy(built.params)
    p.patches.views = views
    p.train = dataclasses.replace(p.train, device="cpu", **train)
    return p


@pytest.fixture(scope="module")
def views_cache(built_cache, tmp_path_factory) -> BuiltCache:
    """The session cache with patches.views: 3 (captions, text and selections reused)."""
    ws = built_cache.copy_to(tmp_path_factory.mktemp("views") / "ws")
    params = _params(built_cache)
    summary = run_extract(params, ws.manifest, ws.features)
    n = summary.images
    assert summary.missing == {f"image:{k}": n for k in range(1, K)}, summary.line()
    return dataclasses.replace(ws, params=params)


# ----------------------------------------------------------------------------- the orders


def test_views_are_distinct_orders_of_the_same_patches():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (300, 260, 3), np.uint8)
    spec, image_id = PatchSpec(), "0123456789abcdef" * 2
    sel = select_patches(rgb, image_id, spec)
    cells = view_cells(sel.cells, image_id, 5)
    assert cells.shape == (5, spec.count, 2)
    np.testing.assert_array_equal(cells[0], sel.cells)  # view 0 = today's seeded order
    as_set = {tuple(c) for c in sel.cells}
    for k in range(5):
        assert sorted(map(tuple, cells[k])) == sorted(map(tuple, sel.cells))
        assert {tuple(c) for c in cells[k]} == as_set
    assert len({cells[k].tobytes() for k in range(5)}) == 5
    np.testing.assert_array_equal(view_cells(sel.cells, image_id, 5), cells)  # deterministic
    other = view_cells(sel.cells, "fedcba9876543210" * 2, 5)
    assert not np.array_equal(other[1], cells[1])  # seeded by the image id too
    comps = view_composites(rgb, sel.cells, image_id, 5, spec)
    np.testing.assert_array_equal(comps[0], sel.composite)
    assert not np.array_equal(comps[1], comps[0])
    # A 2 x 2 grid has 4! = 24 orders: 24 views are all of them, each exactly once.
    small = PatchSpec(size=32, n_low=2, n_high=2)
    ent = patch_entropies(to_gray(torch.from_numpy(rgb)), small.size)
    c4, _ = choose(ent, small, image_id)
    orders = view_orders(image_id, 24, 4)
    assert len({o.tobytes() for o in orders}) == 24
    assert view_cells(c4, image_id, 24).shape == (24, 4, 2)


def test_views_and_view_average_are_validated(tmp_path):
    raw = tiny_raw(tmp_path)
    for key, value, msg in (("views", 0, "patches.views: 0 is out of range"),
                            ("views", 2.5, "patches.views: expected an integer")):
        bad = copy.deepcopy(raw)
        bad["patches"][key] = value
        with pytest.raises(ParamsError, match=msg):
            params_from_dict(bad)
    bad = copy.deepcopy(raw)
    bad["patches"].update(n_low=2, n_high=2, views=25)
    with pytest.raises(ParamsError, match="25 distinct orders of 4 patches do not exist"):
        params_from_dict(bad)
    bad = copy.deepcopy(raw)
    bad["evaluate"]["view_average"] = "median"
    with pytest.raises(ParamsError, match="evaluate.view_average: 'median' is not one of"):
        params_from_dict(bad)
    res = CliRunner().invoke(main, ["extract", "--params", str(write_params(
        tmp_path / "p.yaml", raw)), "--set", "patches.views=-1"])
    assert res.exit_code == 1 and "patches.views: -1 is out of range" in res.output
    assert "Traceback" not in res.output


# ----------------------------------------------------------------------------- the cache


def test_one_view_is_todays_cache_and_metrics_bit_for_bit(built_cache, tmp_path, demo_images):
    """A params file without the new keys builds exactly the cache and metrics of views: 1."""
    raw = tiny_raw(demo_images)
    raw["patches"].pop("views")
    raw["evaluate"].pop("view_average")
    old = build_cache(tmp_path / "old", params_from_dict(raw))
    ids = load_features(old.params, old.manifest, old.features).frame["id"].tolist()
    for kind in ("selection", "caption", "image:0", "text"):  # the same parts, same rows
        a = part_of(old.features, old.params, kind)
        b = part_of(built_cache.features, built_cache.params, kind)
        assert a.part.key == b.part.key, kind
        ra, rb = a.gather(ids, list(a.shapes())), b.gather(ids, list(b.shapes()))
        for name in ra:
            np.testing.assert_array_equal(ra[name], rb[name], err_msg=f"{kind}/{name}")
    # The explicit key changes no part: nothing is computed.
    assert run_extract(built_cache.params, old.manifest, old.features).computed == 0
    metrics = []
    for cache, params in ((old, old.params), (built_cache, built_cache.params)):
        model = tmp_path / f"m{len(metrics)}"
        p = dataclasses.replace(params, train=dataclasses.replace(params.train, device="cpu"))
        run_train(p, cache.manifest, cache.features, model, model / "log.csv")
        res = run_evaluate(p, cache.manifest, cache.features, model, model / "m.json",
                           model / "plots")
        metrics.append({k: res[k] for k in ("val", "test")})
    assert _same(metrics[0], metrics[1])


def test_changing_views_embeds_only_the_new_orders(built_cache, views_cache):
    """View k of an image is its own part: K = 3 adds views 1 and 2, view 0 and the text
    embeddings are the one-view cache's (the same parts), and back to K = 1 computes nothing."""
    one = load_features(built_cache.params, built_cache.manifest, built_cache.features)
    fs = load_features(views_cache.params, views_cache.manifest, views_cache.features)
    n, d = one.image.shape
    assert fs.image.shape == (n, K, d) and fs.provenance["patches"]["views"] == K
    assert torch.equal(fs.image[:, 0], one.image)  # view 0 bit for bit
    assert torch.equal(fs.text, one.text)  # the caption's embedding is shared
    for k in range(1, K):
        assert not torch.equal(fs.image[:, k], fs.image[:, 0])
    assert run_extract(views_cache.params, views_cache.manifest,
                       views_cache.features).computed == 0
    back = _params(built_cache, views=1)
    assert run_extract(back, views_cache.manifest, views_cache.features).computed == 0
    assert torch.equal(load_features(back, views_cache.manifest, views_cache.features).image,
                       one.image)


def test_features_expose_views_and_say_what_is_missing(built_cache, views_cache, monkeypatch):
    fs = load_features(views_cache.params, views_cache.manifest, views_cache.features)
    one = load_features(built_cache.params, built_cache.manifest, built_cache.features)
    assert fs.n_views == K and one.n_views == 1 and fs.dim == one.dim
    assert torch.equal(fs.first_views(1).image, one.image)
    assert fs.first_views(2).image.shape == (len(fs), 2, fs.dim)
    with pytest.raises(ValueError, match="hold 3 patch-order view"):
        fs.first_views(4)
    with pytest.raises(StoreError, match="no image features.*run `nsnet extract`"):
        load_features(_params(built_cache, views=K + 1), views_cache.manifest,
                      views_cache.features)
    monkeypatch.setattr(features, "_available_ram", lambda: 1)  # memory-mapped: same rows
    mapped = load_features(views_cache.params, views_cache.manifest, views_cache.features)
    assert isinstance(mapped.image, MappedRows) and mapped.n_views == K
    idx = torch.tensor([5, 0, 3])
    assert torch.equal(mapped.image[idx].float(), fs.image[idx])
    assert torch.equal(mapped.first_views(1).image[idx].float(), one.image[idx])
    assert mapped.first_views(2).image.shape == (len(fs), 2, fs.dim)


# ----------------------------------------------------------------------------- the heads


def test_training_draws_a_view_per_image_deterministically(views_cache):
    fs = load_features(views_cache.params, views_cache.manifest, views_cache.features)
    train, val = select(fs, "train"), select(fs, "val")
    tp = dataclasses.replace(views_cache.params.train, epochs=2, device="cpu")

    def weights(tr, va, **kw):
        return {k: v.clone() for k, v in fit("advanced", tr, va, tp, **kw).model.state_dict()
                .items()}

    a = weights(train, val)
    torch.manual_seed(999)
    b = weights(train, val)
    assert all(torch.equal(a[k], b[k]) for k in a)
    first = weights(train.first_views(1), val.first_views(1))
    assert any(not torch.equal(a[k], first[k]) for k in a)  # views 1, 2 were trained on
    # Scoring combines the views: the three averages differ and `first` is view 0 alone.
    model = fit("advanced", train, val, tp).model
    probs = {how: predict_proba(model, val.image, val.text, average=how)
             for how in ("mean_logit", "mean_prob", "first")}
    np.testing.assert_array_equal(
        probs["first"], predict_proba(model, val.first_views(1).image, val.text))
    assert not np.allclose(probs["mean_logit"], probs["first"])
    logits = torch.tensor([[0.0, 4.0], [-2.0, 2.0]])
    np.testing.assert_allclose(average_views(logits, "mean_logit"), [1 / (1 + math.exp(-2)), 0.5])
    np.testing.assert_allclose(average_views(logits, "mean_prob"),
                               [(0.5 + 1 / (1 + math.exp(-4))) / 2, 0.5])


@pytest.fixture(scope="module")
def views_bundle(views_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("views_bundle") / "model"
    # the seed's mapper: the default's best epoch on this tiny val split can be an early, flat
    # one (test_shortcut.py checks predict = evaluate for every mapper)
    params = _params(views_cache, epochs=15, lr=3e-3, mapper="end_to_end")
    run_train(params, views_cache.manifest, views_cache.features, out, out.parent / "log.csv")
    return out


def test_evaluate_and_predict_agree_on_views(views_cache, views_bundle, tmp_path):
    params = _params(views_cache)
    res = run_evaluate(params, views_cache.manifest, views_cache.features, views_bundle,
                       tmp_path / "m.json", tmp_path / "plots")
    assert (res["patch_views"], res["view_average"]) == (K, "mean_logit")
    fs = load_features(params, views_cache.manifest, views_cache.features)
    keep = np.zeros(len(fs), bool)
    keep[::4] = True
    fs = fs.subset(keep)
    chain = load_chain(views_bundle, device="cpu")
    assert (chain.views, chain.view_average) == (K, "mean_logit")
    cached = predict_proba(chain.head, fs.image, fs.text)
    df = predict_paths(chain, fs.frame["path"].tolist(), batch_size=8)
    assert df["id"].tolist() == fs.frame["id"].tolist()
    np.testing.assert_allclose(df["prob"].to_numpy(), cached, atol=1e-5)
    assert np.ptp(cached) > 1e-3
    # explain: the same combined probability; occlusion covers every view's copy of a patch
    path = fs.frame["path"].iloc[0]
    ex = explain_image(chain, path)
    assert ex.prob == pytest.approx(float(cached[0]), abs=1e-5)
    assert len(ex.patches) == PatchSpec().count
    assert any(abs(p.contribution) > 0 for p in ex.patches)
    # Patch 5's contribution: that cell occluded in each view, wherever the view placed it.
    rgb, _ = open_image(path)
    image_id, spec = fs.frame["id"].iloc[0], PatchSpec()
    sel = select_patches(rgb, image_id, spec)
    np.testing.assert_array_equal(ex.composite, sel.composite)  # the report shows view 0
    cells, orders = view_cells(sel.cells, image_id, K), view_orders(image_id, K, spec.count)
    comps = []
    for v in range(K):
        tile = int(np.flatnonzero(orders[v] == 5)[0])  # view v's tile holding view 0's tile 5
        np.testing.assert_array_equal(cells[v][tile], sel.cells[5])
        comps.append(occlude(composite(rgb, cells[v], spec), [tile], spec))
    text = chain.clip.encode_texts([ex.caption]).half().float()
    logits = torch.from_numpy(score_composites(chain, np.stack(comps), text))
    assert ex.patches[5].contribution == pytest.approx(ex.logit - float(logits.mean()), abs=1e-4)


def test_evaluate_table_says_how_views_were_combined(views_cache, views_bundle, tmp_path):
    raw = tiny_raw(views_cache.workdir)
    raw["patches"]["views"] = K
    raw["evaluate"]["view_average"] = "mean_prob"
    params = write_params(tmp_path / "params.yaml", raw)
    res = CliRunner().invoke(main, [
        "evaluate", "--params", str(params), "--manifest", str(views_cache.manifest),
        "--features", str(views_cache.features), "--model", str(views_bundle),
        "--out", str(tmp_path / "m.json"), "--plots", str(tmp_path / "plots")])
    assert res.exit_code == 0, res.output
    assert "test (%; 3 patch-order views, mean_prob)" in res.output
    res = CliRunner().invoke(main, [
        "train", "--params", str(params), "--manifest", str(views_cache.manifest),
        "--features", str(views_cache.features), "--out", str(tmp_path / "model"),
        "--log", str(tmp_path / "log.csv"), "--set", "train.epochs=1", "--set", "train.device=cpu"])
    assert res.exit_code == 0, res.output
    assert "x 3 patch-order views (one drawn per epoch)" in res.output
    bundle = json.loads((tmp_path / "model" / "config.json").read_text())
    assert bundle["views"] == {"count": K, "average": "mean_prob"}
    res = CliRunner().invoke(main, [  # a cache of another K: one clear message
        "evaluate", "--params", str(params), "--manifest", str(views_cache.manifest),
        "--features", str(views_cache.features), "--model", str(views_bundle),
        "--out", str(tmp_path / "m.json"), "--set", "patches.views=2"])
    assert res.exit_code == 1 and "was trained on 3 patch-order view(s) per image but " \
        "patches.views is 2" in res.output and "Traceback" not in res.output


def test_compare_puts_one_view_and_k_views_side_by_side(built_cache, views_cache, tmp_path):
    params = _params(views_cache, epochs=3)
    out = run_compare(params, views_cache.manifest, views_cache.features, ("advanced",),
                      tmp_path / "c.json", views=(1, K))
    assert list(out["heads"]) == ["advanced K=1", f"advanced K={K}"]
    assert out["heads"][f"advanced K={K}"]["training"]["patch_views"] == K
    table = format_comparison(out)
    assert "advanced K=1" in table.splitlines()[0] and "K=1 trains and scores view 0" in table
    # The K=1 column is exactly what a one-view cache gives.
    one = run_compare(_params(built_cache, views=1, epochs=3), built_cache.manifest,
                      built_cache.features, ("advanced",))
    assert _same(one["heads"]["advanced"]["test"], out["heads"]["advanced K=1"]["test"])
    with pytest.raises(ValueError, match="cannot be taken"):
        run_compare(params, views_cache.manifest, views_cache.features, ("composite_probe",),
                    views=(4,))
    raw = tiny_raw(views_cache.workdir)
    raw["patches"]["views"] = K
    res = CliRunner().invoke(main, [
        "compare", "--params", str(write_params(tmp_path / "p.yaml", raw)),
        "--heads", "composite_probe",
        "--manifest", str(views_cache.manifest), "--features", str(views_cache.features),
        "--out", str(tmp_path / "c2.json"), "--views", "1,x"])
    assert res.exit_code != 0 and "--views" in res.output and "Traceback" not in res.output


def test_degraded_test_copies_hold_the_same_patch_orders(views_cache, views_bundle, tmp_path):
    """`nsnet extract` embeds K orders of each degraded test image; evaluate-degraded combines
    them like evaluate and says so."""
    from nsnet.evaluation.degraded_eval_stage import run_evaluate_degraded

    ws = views_cache.copy_to(tmp_path / "ws")
    params = _params(views_cache)
    params.protocol.degradations = ["jpeg30"]
    summary = run_extract(params, ws.manifest, ws.features)
    assert summary.treatments["jpeg30"] == summary.computed > 0
    fs = load_features(params, ws.manifest, ws.features, degradation="jpeg30")
    assert fs.n_views == K and set(fs.frame["split"]) == {"test"}
    out = run_evaluate_degraded(params, ws.manifest, ws.features, views_bundle,
                                tmp_path / "metrics")
    assert set(out) == {"clean", "jpeg30"}
    summary = json.loads((tmp_path / "metrics" / "details" / "degradations.json").read_text())
    assert (summary["patch_views"], summary["view_average"]) == (K, "mean_logit")


def test_k_view_images_are_reused_when_only_captions_change(views_cache, tmp_path):
    ws = views_cache.copy_to(tmp_path / "ws")
    before = load_features(views_cache.params, ws.manifest, ws.features).image
    params = copy.deepcopy(views_cache.params)
    params.caption.max_new_tokens = 3
    summary = run_extract(params, ws.manifest, ws.features)
    assert set(summary.missing) == {"caption", "text"}, summary.line()
    after = load_features(params, ws.manifest, ws.features)
    assert after.n_views == K and torch.equal(after.image, before)


@pytest.mark.slow
def test_dvc_reruns_only_the_image_embeddings_when_patches_views_changes(tmp_path):
    """Real dvc on the real dvc.yaml: a new patches.views re-runs extract, which embeds only the
    new patch order (captions, selections and text are reused), never index."""
    from nsnet.data.demo_data import TINY_MODELS, make_workspace
    from tests.conftest import fast_values, workspace_params
    from tests.test_dvc_pipeline import ROOT, ran, sh, skipped

    values = {**TINY_MODELS, **fast_values(), "data.roots": ["data/demo"]}
    ws = make_workspace(tmp_path / "ws", ROOT, code="link", params=workspace_params(),
                        values=values, n_real=8, n_fake_each=4, size=96)
    sh(ws, "git", "init", "-q")
    sh(ws, "dvc", "init", "-q")
    sh(ws, "dvc", "repro", "extract")
    raw = yaml.safe_load((ws / "params.yaml").read_text())
    raw["patches"]["views"] = 2
    (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    out = sh(ws, "dvc", "repro", "extract")
    assert ran(out) - {"scan"} == {"extract"} and "index" in skipped(out), out  # scan: always
    line = next(x for x in out.splitlines() if x.startswith("extract:") and "computed" in x)
    assert "image:1" in line and "caption" not in line and "selection" not in line, line


def test_predict_and_explain_cli_say_the_views(views_cache, views_bundle, tmp_path):
    path = load_features(views_cache.params, views_cache.manifest,
                         views_cache.features).frame["path"].iloc[0]
    (tmp_path / "defaults.yaml").write_text("{}\n")  # a named --params file must exist
    none = ["--params", str(tmp_path / "defaults.yaml"), "--set", "compute.device=cpu"]
    res = CliRunner().invoke(main, ["predict", path, "--model", str(views_bundle), *none])
    assert res.exit_code == 0, res.output
    assert "1 scored" in res.output and "3 patch-order views, mean_logit" in res.output
    res = CliRunner().invoke(main, ["explain", path, "--model", str(views_bundle),
                                    "--out", str(tmp_path / "r.png"), *none])
    assert res.exit_code == 0, res.output
    assert "patch-order views: 3, combined by mean_logit" in res.output
    assert (tmp_path / "r.png").stat().st_size > 0 and (tmp_path / "r.json").exists()


def test_python_detector_used_by_serve_combines_the_views(views_cache, views_bundle):
    """`nsnet.Detector` (what `nsnet serve` runs) scores K-view bundles as evaluate does."""
    from nsnet.inference.detector import Detector

    params = _params(views_cache)
    fs = load_features(params, views_cache.manifest, views_cache.features)
    keep = np.zeros(len(fs), bool)
    keep[1::9] = True
    fs = fs.subset(keep)
    det = Detector.load(views_bundle, device="cpu")
    assert det.describe()["config"]["views"] == {"count": K, "average": "mean_logit"}
    paths = fs.frame["path"].tolist()
    rows = det.predict([Path(p).read_bytes() for p in paths])
    cached = predict_proba(det.chain.head, fs.image, fs.text)
    np.testing.assert_allclose(rows["prob"].to_numpy(), cached, atol=1e-5)
    assert np.isfinite(rows["semantic_share"].to_numpy()).all()


def test_calibrated_k_view_bundle_scores_the_same_in_evaluate_and_predict(views_cache, tmp_path):
    """Views are combined into one logit, then the bundle's calibration applies, everywhere."""
    from nsnet.evaluation.evaluate_stage import score
    from nsnet.heads.bundle import load_bundle

    params = _params(views_cache, epochs=8, lr=3e-3)
    params.evaluate.calibration = "platt"
    params.evaluate.view_average = "mean_prob"
    run_train(params, views_cache.manifest, views_cache.features, tmp_path / "m",
              tmp_path / "log.csv")
    model, config = load_bundle(tmp_path / "m")
    decision = config.decision.as_decision()
    assert decision.calibration == "platt"
    fs = load_features(params, views_cache.manifest, views_cache.features)
    keep = np.zeros(len(fs), bool)
    keep[2::9] = True
    fs = fs.subset(keep)
    frame = score(model, fs, decision, "mean_prob")
    assert not np.allclose(frame["prob"], frame["prob_raw"])  # calibration did something
    chain = load_chain(tmp_path / "m", device="cpu")
    assert chain.view_average == "mean_prob"
    df = predict_paths(chain, fs.frame["path"].tolist(), batch_size=8)
    np.testing.assert_allclose(df["prob"].to_numpy(), frame["prob"].to_numpy(), atol=1e-5)
