"""`nsnet explain`: the occlusion attribution really moves the score; the report is complete."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from nsnet.data.images import open_image
from nsnet.data.manifest import read_manifest
from nsnet.heads.train_stage import run_train
from nsnet.inference.explain import (
    Explanation,
    explain_image,
    occlude,
    score_composites,
    semantic_removed,
    write_report,
)
from nsnet.inference.predict import compute_features, load_chain
from nsnet.reports.explanation import contribution_text
from nsnet.stages.cli import main


def empty_params(tmp_path: Path) -> Path:
    """A params file with no keys: every parameter takes its built-in default."""
    path = tmp_path / "defaults.yaml"
    path.write_text("{}\n")
    return path


def train_bundle(built_cache, out: Path, head: str = "advanced", epochs: int = 15) -> Path:
    params = dataclasses.replace(built_cache.params, train=dataclasses.replace(
        built_cache.params.train, head=head, epochs=epochs, lr=3e-3, device="cpu"))
    run_train(params, built_cache.manifest, built_cache.features, out, out.parent / "log.csv")
    return out


@pytest.fixture(scope="module")
def chain(built_cache, tmp_path_factory):
    return load_chain(train_bundle(built_cache, tmp_path_factory.mktemp("explain") / "m"), "cpu")


@pytest.fixture(scope="module")
def fakes(built_cache) -> list[str]:
    rows = read_manifest(built_cache.manifest, only_ok=True)
    return rows.loc[rows["label"] == 1, "path"].tolist()[::7][:2]


@pytest.fixture(scope="module")
def explained(chain, fakes) -> list[Explanation]:
    return [explain_image(chain, path) for path in fakes]


def test_occluding_top_patches_lowers_the_score_more_than_others(chain, explained):
    rng = np.random.default_rng(0)
    k = 3
    for ex in explained:
        order = np.argsort([-p.contribution for p in ex.patches])
        text = chain.clip.encode_texts([ex.caption]).cpu().half().float()
        variants = [occlude(ex.composite, order[:k], ex.spec),  # most toward generated
                    occlude(ex.composite, order[-k:], ex.spec),  # most toward real
                    *(occlude(ex.composite, rng.choice(ex.spec.count, k, replace=False),
                              ex.spec) for _ in range(6))]
        logits = score_composites(chain, np.stack([ex.composite, *variants]), text)
        base, top, low, rand = logits[0], logits[1], logits[2], logits[3:]
        assert base == pytest.approx(ex.logit, abs=1e-5)  # same chain as explain's own score
        assert top < base  # removing the evidence for "generated" lowers the score
        assert top < low
        assert top < rand.mean()
        assert top <= rand.min() + 1e-6


def test_report_png_and_json(explained, tmp_path):
    ex = explained[0]
    assert len(ex.patches) == 49 and {p.band for p in ex.patches} == {"low", "high"}
    assert 0 < ex.semantic_removed < 1  # the advanced head removes the caption direction
    png, js = write_report(ex, tmp_path / "report.png", k=4)
    assert js == tmp_path / "report.json"
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 800 and im.height > 400
    data = json.loads(js.read_text())
    assert data["prob_generated"] == pytest.approx(ex.prob)
    assert data["caption"] == ex.caption and data["label"] in ("generated", "real", "uncertain")
    tops = [p["contribution"] for p in data["top_generated"]]
    assert len(tops) <= 4 and tops == sorted(tops, reverse=True) and all(t > 0 for t in tops)
    assert tops[0] == max(p["contribution"] for p in data["patches"])
    side = ex.spec.size
    for p in data["patches"]:  # each patch lies inside the image
        assert 0 <= p["row"] <= ex.height - side and 0 <= p["col"] <= ex.width - side


def test_semantic_share_matches_the_nsnet_basis(built_cache, fakes, tmp_path):
    nchain = load_chain(train_bundle(built_cache, tmp_path / "ns", "nsnet", 2), "cpu")
    rgb, _ = open_image(fakes[0])
    feats = compute_features(nchain, [rgb], ["0"])
    share = semantic_removed(nchain, feats.image, feats.text)
    x = torch.nn.functional.normalize(feats.image, dim=-1)
    assert 0 < share < 1
    assert share == pytest.approx(float((x @ nchain.head.basis).norm()), rel=1e-4)
    uchain = load_chain(train_bundle(built_cache, tmp_path / "probe", "composite_probe", 2), "cpu")
    assert semantic_removed(uchain, feats.image, feats.text) == 0.0


def test_cli_writes_png_and_json(chain, fakes, tmp_path):
    bundle = tmp_path / "b"
    from nsnet.heads.bundle import save_bundle

    save_bundle(bundle, chain.head, chain.config)
    out = tmp_path / "why.png"
    res = CliRunner().invoke(main, ["explain", fakes[0], "--model", str(bundle), "--out",
                                    str(out), "--params", str(empty_params(tmp_path))])
    assert res.exit_code == 0, res.output
    assert out.exists() and (tmp_path / "why.json").exists()
    assert "P(generated)" in res.output and "toward generated" in res.output
    res = CliRunner().invoke(main, ["explain", str(tmp_path / "missing.png"), "--model",
                                    str(bundle), "--params", str(empty_params(tmp_path))])
    assert res.exit_code == 1 and "missing" in res.output


def test_explain_warns_when_the_selection_saw_no_content(chain, explained, tmp_path):
    """A large photo in a black border with faint specks (JPEG ringing): the lowest and the
    highest spectral entropies are all border patches, so every contribution is ~0. The CLI,
    the JSON and the picture say so; an ordinary image gets no warning."""
    from skimage import data

    rng = np.random.default_rng(0)
    img = np.zeros((900, 1200, 3), np.uint8)
    img[:, 600:] = (rng.random((900, 600, 1)) < 0.1).astype(np.uint8) * 2
    img[300:600, 450:750] = data.astronaut()[:300, :300]
    path = tmp_path / "bordered.png"
    Image.fromarray(img).save(path)
    bundle = tmp_path / "b"
    from nsnet.heads.bundle import save_bundle

    save_bundle(bundle, chain.head, chain.config)
    res = CliRunner().invoke(main, ["explain", str(path), "--model", str(bundle), "--out",
                                    str(tmp_path / "why.png"), "--params",
                                    str(empty_params(tmp_path))])
    assert res.exit_code == 0, res.output
    assert "warning: all 49 selected patches are flat" in res.output
    report = json.loads((tmp_path / "why.json").read_text())
    assert report["warning"].startswith("all 49 selected patches are flat")
    assert max(p["contrast"] for p in report["patches"]) < 2.0
    assert all(ex.warning == "" for ex in explained)  # ordinary images: no warning
    assert all(max(p.contrast for p in ex.patches) > 2.0 for ex in explained)


def printed_contributions(output: str) -> list[str]:
    """The contributions `nsnet explain` lists under "toward generated", as printed."""
    lines = output.split("toward generated", 1)[1].splitlines()[1:]
    return [line.split()[0] for line in lines if line.startswith("  ") and " at (" in line]


def test_contribution_text_keeps_small_values_visible():
    assert contribution_text(1.8e-05) == "+1.8e-05"
    assert contribution_text(-0.04213) == "-0.0421"
    assert contribution_text(2.0) == "+2"


def test_cli_contributions_have_significant_digits(chain, fakes, tmp_path):
    """The text lists the JSON's top contributions to 3 significant digits, however small (the
    picture prints them with significant digits too; a fixed 4 decimals read +0.0000)."""
    bundle = tmp_path / "b"
    from nsnet.heads.bundle import save_bundle

    save_bundle(bundle, chain.head, chain.config)
    res = CliRunner().invoke(main, ["explain", fakes[0], "--model", str(bundle), "--out",
                                    str(tmp_path / "why.png"), "--top", "20", "--params",
                                    str(empty_params(tmp_path))])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "why.json").read_text())
    shown = printed_contributions(res.output)
    tops = [p["contribution"] for p in report["top_generated"]]
    assert len(shown) == len(tops) > 0
    assert shown == [contribution_text(c) for c in tops]
    for text, value in zip(shown, tops, strict=True):
        assert float(text) == pytest.approx(value, rel=5e-3)  # small ones are not rounded to 0
    assert min(tops) < 5e-5  # the list reaches contributions a fixed +.4f printed as +0.0000


def test_explain_runs_no_blip_for_a_head_that_reads_no_caption(built_cache, fakes, tmp_path):
    """Like `nsnet predict` and the API (the method's ``captions``): the nsnet head gets no
    caption, in the text, the JSON and the picture; the advanced head keeps its BLIP caption."""
    from nsnet.heads.method import method
    from nsnet.inference.predict import predict_paths

    bundle = train_bundle(built_cache, tmp_path / "ns", "nsnet", 2)
    assert not method("nsnet").captions and method("advanced").captions
    nchain = load_chain(bundle, "cpu")
    assert nchain.blip is None and predict_paths(nchain, fakes[:1])["caption"].tolist() == [""]
    res = CliRunner().invoke(main, ["explain", fakes[0], "--model", str(bundle), "--out",
                                    str(tmp_path / "why.png"), "--params",
                                    str(empty_params(tmp_path))])
    assert res.exit_code == 0, res.output
    assert "caption: none (the nsnet head reads no caption)" in res.output
    report = json.loads((tmp_path / "why.json").read_text())
    assert report["head"] == "nsnet" and report["caption"] is None
    assert explain_image(nchain, fakes[0]).caption == ""
