"""The shortcut benchmark and the advanced head's mapper variants (``train.mapper``).

A small seeded instance of bench/bench_shortcut.py's synthetic features, trained through the
real training loop: the linear probe falls for a semantic shortcut, NS-Net with k >= the
semantic rank does not, every mapper variant trains and scores; the regression maps are fit on
the training rows only; ``train.mapper`` is validated and travels in bundles, predict and serve.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nsnet.config import ParamsError, TrainParams, params_from_dict
from nsnet.heads.bundle import CONFIG, BundleError, load_bundle, save_bundle
from nsnet.heads.bundle_config import BundleConfig, HeadConfig, HeadSettings
from nsnet.heads.method import build_head
from nsnet.heads.semantic_map import fit_semantic_map
from nsnet.heads.training_loop import fit, head_loss, predict_proba
from nsnet.registry import MAPPERS

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_shortcut",
                                               ROOT / "bench" / "bench_shortcut.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_shortcut"] = bench
_spec.loader.exec_module(bench)

SMALL = bench.World(dim=32, rank=4)
TP = TrainParams(epochs=10, batch_size=128, lr=1e-3, hidden_dim=64, proj_dim=32, device="cpu")


def small_sets(seed: int = 0, world: bench.World = SMALL, n: int = 1200):
    geo = bench.geometry(world, seed)
    return (bench.draw(world, geo, n, world.train_shortcut, seed, "train"),
            bench.draw(world, geo, n // 4, world.train_shortcut, seed, "val"),
            [bench.draw(world, geo, n, p, seed, "test") for p in (0.95, 0.05)])


def _features(n: int = 300, d: int = 16, seed: int = 0):
    world = bench.World(dim=d, rank=4)
    return bench.draw(world, bench.geometry(world, seed), n, world.train_shortcut, seed, "train")


# ----------------------------------------------------------------------------- train.mapper

def test_mapper_choices_are_the_heads_variants():
    assert TrainParams().mapper in MAPPERS
    text = (ROOT / "docs" / "parameters.md").read_text()  # not the user's params.yaml
    assert all(f"`{m}`" in text for m in MAPPERS)  # the reference lists every choice


@pytest.mark.parametrize("value", ["bogus", "", 3, None, ["identity"]])
def test_a_bad_train_mapper_is_refused_naming_the_key(value):
    with pytest.raises(ParamsError, match=r"train\.mapper"):
        params_from_dict({"train": {"mapper": value}})
    with pytest.raises(ValueError, match="unknown mapper"):
        build_head("advanced", 8, mapper=value)


@pytest.mark.parametrize("mapper", MAPPERS)
def test_every_mapper_is_accepted(mapper):
    assert params_from_dict({"train": {"mapper": mapper}}).train.mapper == mapper


def test_the_cli_refuses_a_bad_mapper_before_any_work(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from nsnet.stages.cli import main
    from tests.conftest import tiny_raw, write_params

    raw = tiny_raw(tmp_path / "images")
    raw["train"]["mapper"] = "ridge"
    write_params(tmp_path / "params.yaml", raw)
    monkeypatch.chdir(tmp_path)
    for args in (["train"], ["compare"], ["index", "--set", "train.mapper=lstsq"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, result.output
        assert "ParamsError" in result.output and "train.mapper" in result.output
        assert "is not one of" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


# ----------------------------------------------------------------------------- the fitted map

def test_semantic_map_is_ridge_least_squares_with_intercept():
    fs = _features()
    t = F.normalize(fs.text.double(), dim=-1).numpy()
    x = F.normalize(fs.image.double(), dim=-1).numpy()
    fitted = fit_semantic_map(fs.text, fs.image, ridge=0.0)
    # reference: numpy least squares of x on [t, 1]; the map is its slope, the means its
    # intercept (x_hat = mu_x + (t - mu_t) W)
    coef, *_ = np.linalg.lstsq(np.hstack([t, np.ones((len(t), 1))]), x, rcond=None)
    np.testing.assert_allclose(fitted.weight.numpy(), coef[:-1], atol=2e-4)
    np.testing.assert_allclose(fitted.text_mean.numpy(), t.mean(0), atol=1e-6)
    np.testing.assert_allclose(fitted.image_mean.numpy(), x.mean(0), atol=1e-6)
    pred = x.mean(0) + (t - t.mean(0)) @ coef[:-1]
    r2 = 1 - ((x - pred) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert fitted.r2 == pytest.approx(r2, abs=1e-4)
    # blockwise accumulation, unnormalised rows, ridge shrinks
    assert torch.allclose(fit_semantic_map(fs.text, fs.image, block=7).weight,
                          fit_semantic_map(fs.text, fs.image).weight, atol=1e-5)
    raw = fit_semantic_map(fs.text, fs.image, normalize=False, ridge=0.0)
    coef_raw, *_ = np.linalg.lstsq(np.hstack([fs.text.double().numpy(), np.ones((len(t), 1))]),
                                   fs.image.double().numpy(), rcond=None)
    np.testing.assert_allclose(raw.weight.numpy(), coef_raw[:-1], atol=2e-4)
    assert fit_semantic_map(fs.text, fs.image, ridge=10.0).weight.norm() < fitted.weight.norm()


def test_within_group_fit_centres_each_group():
    fs = _features()
    y = fs.labels
    t = F.normalize(fs.text.double(), dim=-1)
    x = F.normalize(fs.image.double(), dim=-1)
    tc, xc = t.clone(), x.clone()
    for g in (0, 1):
        tc[y == g] -= t[y == g].mean(0)
        xc[y == g] -= x[y == g].mean(0)
    ref = torch.linalg.lstsq(tc, xc).solution
    fitted = fit_semantic_map(fs.text, fs.image, groups=y, ridge=0.0, block=50)
    np.testing.assert_allclose(fitted.weight.numpy(), ref.numpy(), atol=2e-4)
    np.testing.assert_allclose(fitted.image_mean.numpy(), x.mean(0).numpy(), atol=1e-6)


def test_views_are_averaged_and_too_few_rows_are_refused():
    fs = _features(40)
    views = torch.stack([fs.image, 2 * fs.image], dim=1)  # normalised views are equal
    assert torch.allclose(fit_semantic_map(fs.text, views).weight,
                          fit_semantic_map(fs.text, fs.image).weight, atol=1e-6)
    with pytest.raises(ValueError, match="aligned rows"):
        fit_semantic_map(fs.text[:1], fs.image[:1])
    with pytest.raises(ValueError, match="aligned rows"):
        fit_semantic_map(fs.text, fs.image[:-1])


FITTED = ("regression", "regression_real", "regression_within")


@pytest.mark.parametrize("mapper", FITTED)
def test_the_regression_map_is_fit_on_the_training_rows_only(mapper):
    train, val, tests = small_sets(n=400)
    tp = dataclasses.replace(TP, epochs=2, mapper=mapper)
    res = fit("advanced", train, val, tp)
    real = train.subset(train.frame["label"].to_numpy() == 0)
    rows = real if mapper == "regression_real" else train
    expected = fit_semantic_map(rows.text, rows.image,
                                groups=train.labels if mapper == "regression_within" else None)
    for name in ("text_mean", "image_mean", "weight"):  # frozen: training did not move it
        assert torch.equal(getattr(res.model.mapper, name), getattr(expected, name)), name
    assert res.info.mapper_rows == len(rows) and 0 < res.info.mapper_r2 < 1
    # the validation rows choose the epoch but never reach the map
    other = fit("advanced", train, tests[1], tp)
    assert torch.equal(other.model.mapper.weight, res.model.mapper.weight)
    both = fit_semantic_map(torch.cat([train.text, val.text]), torch.cat([train.image,
                                                                          val.image]))
    assert not torch.allclose(both.weight, res.model.mapper.weight)
    assert not any(p.requires_grad for p in res.model.mapper.parameters())


# ----------------------------------------------------------------------------- the projection

def _grads(model: torch.nn.Module, loss: torch.Tensor) -> dict[str, float]:
    model.zero_grad()
    loss.backward()
    return {n: 0.0 if p.grad is None else float(p.grad.abs().sum())
            for n, p in model.named_parameters()}


@pytest.mark.parametrize("mapper", MAPPERS)
def test_what_trains_the_mapper(mapper):
    """end_to_end: detection loss and alignment; detached: the alignment term only; identity
    and the regression maps: nothing (and no alignment term is added for them)."""
    fs = _features(64)
    torch.manual_seed(0)
    model = build_head("advanced", fs.dim, hidden_dim=16, proj_dim=8, dropout=0.0, mapper=mapper)
    x, t, y = fs.image, fs.text, fs.labels
    tp = dataclasses.replace(TP, mapper=mapper)
    detect = _grads(model, head_loss("advanced", model(x, t), y, x,
                                     dataclasses.replace(tp, align_weight=0.0)))
    total = _grads(model, head_loss("advanced", model(x, t), y, x, tp))
    mapper_detect = sum(v for n, v in detect.items() if n.startswith("mapper."))
    mapper_total = sum(v for n, v in total.items() if n.startswith("mapper."))
    assert sum(v for n, v in detect.items() if n.startswith("head.")) > 0
    if mapper == "end_to_end":
        assert mapper_detect > 0 and mapper_total > 0
    elif mapper == "detached":
        assert mapper_detect == 0 and mapper_total > 0
    else:
        assert mapper_detect == mapper_total == 0
        with torch.no_grad():
            a = head_loss("advanced", model(x, t), y, x, tp)
            b = head_loss("advanced", model(x, t), y, x, dataclasses.replace(tp, align_weight=0))
        assert torch.equal(a, b)


@pytest.mark.parametrize("mapper", MAPPERS)
def test_the_removed_part_lies_along_f(mapper):
    fs = _features(50)
    torch.manual_seed(1)
    model = build_head("advanced", fs.dim, hidden_dim=16, proj_dim=8, mapper=mapper).eval()
    if mapper in FITTED:
        model.mapper.set_map(fit_semantic_map(fs.text, fs.image))
    out = model(fs.image, fs.text)
    x = F.normalize(fs.image, dim=-1)
    removed = x - out.projected
    f = out.semantic
    # removed = c f per row
    c = (removed * f).sum(-1) / (f * f).sum(-1)
    torch.testing.assert_close(removed, c[:, None] * f, atol=1e-5, rtol=0)
    if mapper == "identity":
        torch.testing.assert_close(f, F.normalize(fs.text, dim=-1))
    # what stays is orthogonal to f: about the origin, or about the mean image for a fitted map
    centre = model.mapper.image_mean if mapper in FITTED else torch.zeros(fs.dim)
    assert ((out.projected - centre) * f).sum(-1).abs().max() < 1e-5


# ----------------------------------------------------------------------------- the benchmark

@pytest.fixture
def one_thread():
    """Small models train faster on one thread than on a shared machine's contended two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_shortcut_ordering_on_a_small_instance(one_thread):
    """Seeded: the probe falls for the semantic shortcut when it reverses; NS-Net with k = the
    semantic rank does not, and neither does the within-class regression map across a modality
    gap, where NS-Net's caption directions miss the image's; every head and variant has a row."""
    res = bench.run(SMALL, TP, 0, 2000, 500, 2000, [0.95, 0.05])
    assert list(res) == [label for label, _, _ in bench.heads(SMALL)]
    assert len(res) == 3 + len(MAPPERS)
    assert all(len(accs) == 2 and all(0 <= a <= 1 for a in accs) for accs in res.values())
    probe_in, probe_rev = res["composite_probe (linear probe)"]
    ns_in, ns_rev = res[f"nsnet k={SMALL.rank} (= rank)"]
    assert probe_in - probe_rev > 0.3 and probe_rev < 0.5
    assert abs(ns_in - ns_rev) < 0.06 and ns_rev > SMALL.artifact_acc - 0.12
    assert res["advanced mapper=end_to_end"][1] < ns_rev - 0.3  # the seed keeps the shortcut

    gap = dataclasses.replace(SMALL, alignment=0.3, offset=1.0)
    res = bench.run(gap, TP, 0, 2000, 500, 2000, [0.95, 0.05], ["k=4", "within"])
    assert list(res) == [f"nsnet k={SMALL.rank} (= rank)", "advanced mapper=regression_within"]
    ns_rev, within_rev = res[f"nsnet k={SMALL.rank} (= rank)"][1], res[
        "advanced mapper=regression_within"][1]
    assert ns_rev < 0.5 and within_rev > 0.65 and within_rev > ns_rev + 0.3


@pytest.mark.slow
def test_bench_script_prints_the_table(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_shortcut.py"), "--seeds", "2",
         "--n-train", "400", "--n-val", "100", "--n-test", "400", "--dim", "24", "--rank", "4",
         "--epochs", "2"], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any("load average" in line and "torch thread" in line for line in lines)
    header = next(line for line in lines if line.startswith("| head |"))
    assert header.count("same space") == 3 and header.count("gap") == 3
    rows = [line for line in lines if line.startswith("| ") and "---" not in line][1:]
    labels = [r.split("|")[1].strip() for r in rows]
    assert labels[:3] == ["composite_probe (linear probe)", "nsnet k=1", "nsnet k=4 (= rank)"]
    assert labels[3:-1] == [f"advanced mapper={m}" for m in MAPPERS]
    assert labels[-1] == "ceiling (artifact alone)" and rows[-1].count("80.0") == 7
    assert all(r.count("±") == 6 for r in rows[:-1])


# ----------------------------------------------------------------------------- bundles

HP = {"hidden_dim": 16, "proj_dim": 8, "dropout": 0.0, "nsnet_k": 4, "normalize": True}


def _config(dim: int, mapper: str) -> BundleConfig:
    return BundleConfig(head=HeadConfig("advanced", dim,
                                        train=HeadSettings(**HP, mapper=mapper)))


@pytest.mark.parametrize("mapper", MAPPERS)
def test_bundle_round_trip_per_mapper(tmp_path, mapper):
    train, val, tests = small_sets(n=200)
    res = fit("advanced", train, val, dataclasses.replace(TP, epochs=1, hidden_dim=16,
                                                           proj_dim=8, mapper=mapper))
    save_bundle(tmp_path, res.model, _config(train.dim, mapper))
    loaded, config = load_bundle(tmp_path)
    assert config.head.train.mapper == mapper and loaded.mapper_kind == mapper
    te = tests[0]
    np.testing.assert_array_equal(predict_proba(loaded, te.image, te.text),
                                  predict_proba(res.model, te.image, te.text))


def test_bundles_refuse_a_bad_mapper_and_weights_of_another_variant(tmp_path):
    torch.manual_seed(0)
    model = build_head("advanced", 12, **HP, mapper="regression_within")
    save_bundle(tmp_path / "bad", model, _config(12, "regression_within"))
    config = json.loads((tmp_path / "bad" / CONFIG).read_text())
    config["head"]["train"]["mapper"] = "ridge"
    (tmp_path / "bad" / CONFIG).write_text(json.dumps(config))
    with pytest.raises(BundleError, match=r"head\.train\.mapper: 'ridge' is not one of"):
        load_bundle(tmp_path / "bad")
    for wrong in ("end_to_end", "identity"):
        save_bundle(tmp_path / wrong, model, _config(12, wrong))
        with pytest.raises(BundleError, match="do not fit the head"):
            load_bundle(tmp_path / wrong)


def test_a_bundle_without_mapper_is_the_seeds_head(tmp_path):
    torch.manual_seed(0)
    model = build_head("advanced", 12, **HP).eval()
    save_bundle(tmp_path, model, BundleConfig(head=HeadConfig("advanced", 12,
                                                              train=HeadSettings(**HP))))
    loaded, _ = load_bundle(tmp_path)
    assert loaded.mapper_kind == "end_to_end"
    x, t = torch.randn(4, 12), torch.randn(4, 12)
    assert torch.equal(loaded(x, t).logit, model(x, t).logit)


# ----------------------------------------------------------------------------- through the stages

def _trained(built_cache, root: Path, mapper: str) -> tuple[Path, object]:
    from nsnet.heads.train_stage import run_train

    params = dataclasses.replace(built_cache.params, train=dataclasses.replace(
        built_cache.params.train, epochs=6, lr=3e-3, device="cpu", mapper=mapper))
    out = root / mapper / "model"
    run_train(params, built_cache.manifest, built_cache.features, out, out.parent / "log.csv")
    return out, params


@pytest.mark.parametrize("mapper", MAPPERS)
def test_train_evaluate_and_predict_agree_for_every_mapper(built_cache, tmp_path_factory, mapper):
    from nsnet.evaluation.evaluate_stage import score
    from nsnet.extraction.cached_features import load_features
    from nsnet.inference.detector import Detector
    from nsnet.inference.predict import load_chain, predict_paths

    bundle, params = _trained(built_cache, tmp_path_factory.mktemp("mapper"), mapper)
    model, config = load_bundle(bundle)
    assert config.head.train.mapper == mapper
    assert config.training.params.mapper == mapper
    if mapper in FITTED:
        assert config.training.mapper_rows > 0
    fs = load_features(params, built_cache.manifest, built_cache.features)
    keep = np.zeros(len(fs), bool)
    keep[::8] = True
    fs = fs.subset(keep)
    evaluated = score(model, fs, config.decision.as_decision())["prob"].to_numpy()
    paths = fs.frame["path"].tolist()
    predicted = predict_paths(load_chain(bundle, device="cpu"), paths, batch_size=16)
    assert (predicted["status"] == "ok").all()
    np.testing.assert_allclose(predicted["prob"].to_numpy(), evaluated, atol=1e-5)
    assert np.ptp(evaluated) > 1e-4  # not a comparison between constants
    api = Detector.load(bundle, device="cpu").predict(paths[:3])  # what `nsnet serve` loads
    np.testing.assert_allclose(api["prob"].to_numpy(), evaluated[:3], atol=1e-5)


def test_compare_and_serve_carry_the_mapper(built_cache, tmp_path_factory):
    from nsnet.evaluation.compare_stage import run_compare
    from nsnet.inference.predict import load_chain, predict_paths
    from tests.test_serve import files_of, serving

    root = tmp_path_factory.mktemp("carry")
    bundle, params = _trained(built_cache, root, "regression_within")
    out = run_compare(params, built_cache.manifest, built_cache.features, heads=("advanced",),
                      out_json=root / "compare.json")
    training = out["heads"]["advanced"]["training"]
    assert training["params"]["mapper"] == "regression_within" and training["mapper_rows"] > 0
    chain = load_chain(bundle, device="cpu")
    paths = _some_paths(built_cache)
    expected = predict_paths(chain, paths, batch_size=8)
    with serving(chain, bundle, loader=_real_loader) as running, running.client() as c:
        model = c.get("/v1/model").json()
        assert model["config"]["head"]["train"]["mapper"] == "regression_within"
        r = c.post("/v1/detect", files=files_of(paths))
        assert r.status_code == 200, r.text
        probs = [item["prob"] for item in r.json()["results"]]
    np.testing.assert_allclose(probs, expected["prob"].to_numpy(), atol=1e-5)


def _some_paths(built_cache) -> list[str]:
    from nsnet.data.manifest import read_manifest

    return read_manifest(built_cache.manifest, only_ok=True)["path"].tolist()[::11][:3]


def _real_loader(settings):
    from nsnet.serving.app import load_detector

    return load_detector(settings)  # the bundle is read from disk, as `nsnet serve` does


def _r2(fitted, fs) -> float:
    t, x = F.normalize(fs.text, dim=-1), F.normalize(fs.image, dim=-1)
    pred = fitted.image_mean + (t - fitted.text_mean) @ fitted.weight
    return float(1 - ((x - pred) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def test_with_few_rows_the_map_does_not_memorise_the_training_images(monkeypatch):
    import nsnet.heads.semantic_map as sm

    world = bench.World(dim=32, rank=4)
    geo = bench.geometry(world, 0)
    few = bench.draw(world, geo, 24, 0.5, 0, "train")  # fewer rows than dimensions
    fresh = bench.draw(world, geo, 2000, 0.5, 0, "test")
    fitted = fit_semantic_map(few.text, few.image)
    assert fitted.df == pytest.approx(0.1 * (24 - 1), rel=1e-3) and fitted.ridge > sm.RIDGE
    assert fitted.r2 - _r2(fitted, fresh) < 0.15  # about as good on unseen rows
    monkeypatch.setattr(sm, "MAX_DF_SHARE", 1e9)  # without the cap: memorised
    loose = fit_semantic_map(few.text, few.image)
    assert loose.r2 > 0.95 and loose.r2 - _r2(loose, fresh) > 0.4
    plenty = bench.draw(world, geo, 2000, 0.5, 0, "val")
    assert fit_semantic_map(plenty.text, plenty.image).ridge == sm.RIDGE  # the cap is not hit
