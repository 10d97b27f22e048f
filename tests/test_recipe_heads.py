"""Every cacheable detector on one store: the baselines' recipes as parts of the feature store,
their heads trained as their papers train them, and the same probabilities in predict.

Real images, the tiny backbones (the second backbone of Cozzolino et al. is the tiny CLIP too),
real store files: the recipe of a head is computed only when a requested head reads it, view 0
of a cropped recipe is the test-time crop, training views exist for training images only, and
`nsnet compare` trains all six heads from one extraction.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from nsnet.backbones import recipes as R
from nsnet.backbones.clip import load_clip
from nsnet.config import params_from_dict
from nsnet.data.images import open_image
from nsnet.evaluation.compare_stage import (
    METRIC_LABELS,
    METRICS,
    format_comparison,
    run_compare,
)
from nsnet.evaluation.evaluate_stage import run_evaluate
from nsnet.extraction import image_pass
from nsnet.extraction.cached_features import load_features, training_crops
from nsnet.extraction.extract_stage import plan_extract, run_extract
from nsnet.heads.bundle import load_bundle
from nsnet.heads.method import method
from nsnet.heads.train_stage import run_train
from nsnet.inference.predict import load_chain, predict_paths
from nsnet.stages.cli import main
from tests.conftest import read_part, tiny_raw, write_params

ALL = ["composite_probe", "nsnet", "advanced", "univfd", "rine", "cozzolino"]
BASELINES = ("univfd", "rine", "cozzolino")
RECIPES = {"cozzolino_arch": "tiny", "cozzolino_pretrained": "", "crop_augmentations": 2,
           "layer_augmentations": 1}


def _raw(root, heads=ALL, **sections):
    return tiny_raw(root, compare={"heads": list(heads)}, recipes=dict(RECIPES), **sections)


@pytest.fixture(scope="module")
def store(built_cache, tmp_path_factory):
    """The session cache plus every baseline recipe (the composite parts are reused)."""
    ws = built_cache.copy_to(tmp_path_factory.mktemp("recipes") / "ws")
    params = params_from_dict(_raw(built_cache.params.data.roots[0].path))
    image_pass.DECODES["count"] = 0
    summary = run_extract(params, ws.manifest, ws.features)
    return dataclasses.replace(ws, params=params), summary, image_pass.DECODES["count"]


def test_recipes_are_computed_from_one_decode_and_only_what_is_missing(store):
    ws, summary, decodes = store
    n = summary.images
    n_train = int((load_features(ws.params, ws.manifest, ws.features)
                   .frame["split"] == "train").sum())
    assert decodes == n  # one decode per image for every recipe at once
    assert summary.missing == {"clip_crop:0": n, "clip_crop:1": n_train, "clip_crop:2": n_train,
                               "clip_layers:0": n, "clip_layers:1": n_train, "cozzolino": n}
    assert run_extract(ws.params, ws.manifest, ws.features).computed == 0


def test_a_head_added_to_the_list_extracts_only_its_recipe(built_cache, tmp_path):
    ws = built_cache.copy_to(tmp_path / "ws")
    root = built_cache.params.data.roots[0].path
    plan = plan_extract(params_from_dict(_raw(root, ["nsnet", "advanced"])), ws.manifest,
                        ws.features)
    assert plan.shards == []  # the composite recipe is there
    plan = plan_extract(params_from_dict(_raw(root, ["nsnet", "advanced", "cozzolino"])),
                        ws.manifest, ws.features)
    assert set(plan.missing) == {"cozzolino"}
    # train.head counts as a requested head too
    plan = plan_extract(params_from_dict(_raw(root, ["nsnet"], train={"head": "univfd"})),
                        ws.manifest, ws.features)
    assert {k.split(":")[0] for k in plan.missing} == {"clip_crop"}


def test_view_0_is_the_test_time_crop_and_training_views_exist_for_training_images(store):
    ws, _, _ = store
    rows = load_features(ws.params, ws.manifest, ws.features).frame
    clip = load_clip("tiny", "", "cpu")
    ids, paths = rows["id"].tolist()[:6], rows["path"].tolist()[:6]
    crops = np.stack([R.center_crop(open_image(p)[0]) for p in paths])
    want = R.clip_crop_embeddings(clip, crops).numpy().astype(np.float16)
    got = read_part(ws.features, ws.params, "clip_crop:0", ids)["emb"]
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), atol=2e-3)
    tokens = read_part(ws.features, ws.params, "clip_layers:0", ids)["emb"]
    want = R.clip_layers(clip, crops).numpy()
    assert tokens.shape == want.shape == (6, len(R.all_layers(clip)), 128)
    np.testing.assert_allclose(tokens.astype(np.float32), want, atol=2e-2, rtol=2e-3)
    coz = read_part(ws.features, ws.params, "cozzolino", ids)["emb"].astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(coz, axis=1), 1.0, atol=2e-3)  # unit vectors
    train = rows[rows["split"] == "train"]
    views = training_crops(ws.params, ws.features, "clip_crop", train)
    assert tuple(views.shape) == (len(train), 2, 128)  # views 1 and 2 of each training image
    assert not torch.equal(views[:, 0], views[:, 1])
    from tests.conftest import part_of

    aug = part_of(ws.features, ws.params, "clip_crop:1")
    assert set(np.char.decode(aug.index().keys, "ascii")) == set(train["id"])


@pytest.fixture(scope="module")
def bundles(store, tmp_path_factory):
    ws, _, _ = store
    out = {}
    base = tmp_path_factory.mktemp("bundles")
    for head in (*BASELINES, "nsnet"):
        params = copy.deepcopy(ws.params)
        params.train = dataclasses.replace(params.train, head=head, device="cpu", epochs=6,
                                           lr=3e-3)
        out[head] = (params, base / head)
        run_train(params, ws.manifest, ws.features, base / head, base / f"{head}.csv")
    return out


@pytest.mark.parametrize("head", [*BASELINES, "nsnet"])
def test_bundles_name_their_recipe_and_predict_scores_as_evaluate(store, bundles, head,
                                                                   tmp_path):
    ws, _, _ = store
    params, bundle = bundles[head]
    _, config = load_bundle(bundle)
    assert config.head.recipe == method(head).recipe
    if head == "rine":
        assert config.head.row_shape == (2, 128)  # tiny CLIP: 2 blocks x 128
    res = run_evaluate(params, ws.manifest, ws.features, bundle, tmp_path / "m.json",
                       tmp_path / "plots")
    assert 0.0 <= res["test"]["mean"]["acc"] <= 1.0
    fs = load_features(params, ws.manifest, ws.features, recipe=method(head).recipe)
    keep = np.zeros(len(fs), bool)
    keep[::4] = True
    fs = fs.subset(keep)
    chain = load_chain(bundle, device="cpu")
    assert chain.blip is None  # none of these heads reads a caption: no BLIP at inference
    from nsnet.heads.training_loop import predict_proba

    cached = predict_proba(chain.head, fs.image, fs.text)
    df = predict_paths(chain, fs.frame["path"].tolist(), batch_size=8)
    assert (df["status"] == "ok").all() and set(df["caption"]) == {""}
    np.testing.assert_allclose(df["prob"].to_numpy(), cached, atol=1e-5)


def test_baselines_train_with_their_papers_settings(bundles):
    for head in BASELINES:
        _, config = load_bundle(bundles[head][1])
        schedule = config.training.schedule
        assert schedule.source.startswith("official code")
        assert not config.training.schedule.source == "train.*"
    _, univfd = load_bundle(bundles["univfd"][1])
    assert univfd.training.schedule.optimizer == "adamw"
    assert univfd.training.crops == 2  # trained on the 2 augmented crops, not crop 0
    _, rine = load_bundle(bundles["rine"][1])
    assert rine.training.schedule.epochs == 1 and rine.training.best_epoch == 1
    _, nsnet = load_bundle(bundles["nsnet"][1])
    assert nsnet.training.schedule.source == "train.*"


def test_explain_attributes_a_baselines_crop(store, bundles, tmp_path):
    ws, _, _ = store
    path = load_features(ws.params, ws.manifest, ws.features).frame["path"].iloc[0]
    (tmp_path / "p.yaml").write_text("{}\n")
    res = CliRunner().invoke(main, ["explain", path, "--model", str(bundles["univfd"][1]),
                                    "--params", str(tmp_path / "p.yaml"), "--out",
                                    str(tmp_path / "r.png"), "--set", "compute.device=cpu"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["input"] == "crop" and len(report["patches"]) == 49
    assert (tmp_path / "r.png").stat().st_size > 0
    assert report["warning"] is None and max(p["contrast"] for p in report["patches"]) > 2.0
    # A photo in a wide black border: the center crop the head reads holds no content.
    from PIL import Image

    bordered = np.zeros((600, 600, 3), np.uint8)
    bordered[:100, :100] = 200
    Image.fromarray(bordered).save(tmp_path / "bordered.png")
    res = CliRunner().invoke(main, ["explain", str(tmp_path / "bordered.png"), "--model",
                                    str(bundles["univfd"][1]), "--params",
                                    str(tmp_path / "p.yaml"), "--out", str(tmp_path / "b.png"),
                                    "--set", "compute.device=cpu"])
    assert res.exit_code == 0, res.output
    assert "warning: all 49 tiles of the crop are flat" in res.output
    assert json.loads((tmp_path / "b.json").read_text())["warning"].startswith(
        "all 49 tiles of the crop are flat")


def test_cache_lists_every_recipe_as_key_value_within_120_columns(store, tmp_path):
    """`nsnet cache` and `--gc`: settings as key=value (never a Python dict), lines <= 120."""
    ws, _, _ = store
    raw = _raw(ws.params.data.roots[0].path)
    params = write_params(tmp_path / "p.yaml", raw)
    res = CliRunner().invoke(main, ["cache", "--params", str(params), "--features",
                                    str(ws.features)])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert max(map(len, lines)) <= 120 and "{" not in res.stdout and "'" not in res.stdout
    parts = {line.split()[0] for line in lines[1:-1] if not line.startswith(" ")}
    assert parts == {"selection", "caption", "image", "text", "clip_crop", "clip_layers",
                     "cozzolino"}
    crop = next(line for line in lines if line.startswith("clip_crop "))
    assert "treatment=none augment=" in crop and "clip.arch=tiny clip.pretrained=-" in crop
    settings = " ".join(line[lines[0].index("settings"):] for line in lines[1:-1])
    assert all(re.fullmatch(r"[\w.]+=\S+", pair) for pair in settings.split()), settings
    raw["caption"]["max_new_tokens"] += 1  # the caption and text parts are no longer read
    res = CliRunner().invoke(main, ["cache", "--gc", "--params", str(write_params(
        tmp_path / "q.yaml", raw)), "--features", str(ws.features)])
    assert res.exit_code == 0, res.output
    assert res.stdout.count("would remove (add --yes): ") == 2  # caption, text
    assert max(map(len, res.stdout.splitlines())) <= 120 and "{" not in res.stdout


def test_compare_runs_every_head_from_one_extraction(store, tmp_path):
    ws, _, _ = store
    params = copy.deepcopy(ws.params)
    params.train = dataclasses.replace(params.train, device="cpu", epochs=3)
    out = run_compare(params, ws.manifest, ws.features, out_json=tmp_path / "c.json")
    assert list(out["heads"]) == ALL
    assert {h: r["recipe"] for h, r in out["heads"].items()} == {
        "composite_probe": "composite", "nsnet": "composite", "advanced": "composite",
        "univfd": "clip_crop", "rine": "clip_layers", "cozzolino": "cozzolino"}
    table = format_comparison(out)
    assert all(h in table.splitlines()[0] for h in ALL)
    assert max(map(len, table.splitlines())) <= 120  # six heads fit a terminal
    assert set(json.loads((tmp_path / "c.json").read_text())) == {f"{h}_ap" for h in ALL}


def test_compare_prints_the_published_numbers_under_a_preset(store, tmp_path):
    from nsnet.evaluation.compare_stage import published_columns

    cols = published_columns("aigibench-2", ["univfd", "rine", "nsnet"])
    assert cols["univfd"]["acc"] == pytest.approx(72.5) and "rine" not in cols
    out = {"heads": {"univfd": {"test": {"per_source": {"a": {"acc": 0.5}}, "mean":
                                         {"acc": 0.5, "real_acc": 0.4, "fake_acc": 0.6,
                                          "ap": 0.7}},
                                "training": {"best_epoch": 1}, "patch_views": 1}},
           "published": cols}
    table = format_comparison(out)
    acc, ap = (x.split() for x in table.splitlines() if x.startswith("paper (published)"))
    assert acc[-1] == "72.5" and ap[-1] == "75.6"  # under the acc and the AP block
    assert "paper: univfd" in table and "same protocol" in table


def _compare_out(heads: list[str], sources: list[str]) -> dict:
    """A compare result over 3 seeds whose every number says where it belongs."""
    def value(i: int, j: int, k: int) -> float:  # head i, source j (len: the mean), metric k
        return (100 * i + 10 * j + k) / 10_000

    out: dict = {"heads": {}, "order": heads, "seeds": [0, 1, 2], "published": {
        "univfd": {"acc": 72.5, "ap": 75.6, "title": "UniversalFakeDetect", "source": "X",
                   "same_protocol": True}}}
    for i, h in enumerate(heads):
        rows = {s: {m: value(i, j, k) for k, m in enumerate(METRICS)}
                for j, s in enumerate(sources)}
        mean = {m: value(i, len(sources), k) for k, m in enumerate(METRICS)}
        std = {m: 0.123 for m in METRICS}
        out["heads"][h] = {"test": {"per_source": rows, "mean": mean, "std": {
            "per_source": {s: std for s in sources}, "mean": std}},
            "training": {"best_epoch": 7}, "patch_views": 4}
    return out


@pytest.mark.parametrize("n_heads", [6, 10])
def test_compare_table_stays_within_120_columns_for_any_number_of_heads(n_heads):
    heads = [f"{h} K={k}" for h in (*ALL, "extra") for k in (1, 4)][:n_heads]
    sources = ["bilinear", "nn_conv", "tconv"]
    table = format_comparison(_compare_out(heads, sources))
    assert max(map(len, table.splitlines())) <= 120
    seen: dict[tuple[str, str, str], str] = {}  # (metric, row, head) -> the printed cell
    for block in table.split("\n\n")[:-1]:
        header, rule, *rows = block.splitlines()
        corner, *names = re.split(r"\s{2,}", header.strip())
        assert set(rule) == {"-"} and len(rule) == len(header)
        metric = {v: k for k, v in METRIC_LABELS.items()}[corner]
        for row in rows:
            label, *cells = re.split(r"\s{2,}", row.strip())
            assert len(cells) == len(names), row
            seen.update({(metric, label, h): c for h, c in zip(names, cells, strict=True)})
    for i, h in enumerate(heads):  # every number once, in its metric's block, row and column
        for k, m in enumerate(METRICS):
            for j, src in enumerate([*sources, "mean"]):
                assert seen.pop((m, src, h)) == f"{(100 * i + 10 * j + k) / 100:.1f}±12.3"
    published = {"acc": "72.5", "ap": "75.6"}  # what is left: the published means
    assert seen == {(m, "paper (published)", h): published[m] if h.startswith("univfd") else "-"
                    for m in published for h in heads}
    assert all(f"{h} 7," in table or f"{h} 7." in table for h in heads)  # never cut apart


def test_compare_cli_takes_heads_and_refuses_a_missing_recipe(built_cache, tmp_path):
    """--heads names heads whose recipe the store lacks: one message says to extract it."""
    params = write_params(tmp_path / "p.yaml", tiny_raw(built_cache.params.data.roots[0].path))
    res = CliRunner().invoke(main, ["compare", "--params", str(params), "--heads", "cozzolino",
                                    "--manifest", str(built_cache.manifest), "--features",
                                    str(built_cache.features), "--out",
                                    str(tmp_path / "c.json")])
    assert res.exit_code == 1 and "cozzolino" in res.output
    assert "nsnet extract" in res.output and "Traceback" not in res.output
