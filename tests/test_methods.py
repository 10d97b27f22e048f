"""Detectors as registered objects (``nsnet.heads.methods``): names derived from the modules,
looked up (never copied) by config, and the two training-free detectors added as one module
each: CLIP zero-shot and RIGID."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from nsnet.config import Params, ParamsError, TrainParams, params_from_dict
from nsnet.extraction.cached_features import FeatureSet
from nsnet.heads.method import build_head, method
from nsnet.heads.training_loop import fit, predict_logits
from nsnet.metrics import binary_metrics
from nsnet.registry import METHODS, RECIPES

ROOT = Path(__file__).resolve().parents[1]
TP = TrainParams(batch_size=32, device="cpu")


def test_head_names_come_from_the_module_files_without_importing_torch() -> None:
    code = ("import sys; from nsnet.config import load_params; from nsnet.registry import "
            "METHODS; p = load_params('params.yaml'); print(','.join(METHODS.names())); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    files = sorted(p.stem for p in (ROOT / "pipeline/heads/methods").glob("[!_]*.py"))
    assert out == [",".join(files), "False"]
    assert {"clip_zero_shot", "rigid", "advanced", "univfd"} <= set(files)


def test_every_method_names_a_registered_recipe_and_its_own_module() -> None:
    for name, m in METHODS.all().items():
        assert m.name == name and m.recipe in RECIPES, name
        assert type(m.build(8)).__module__.startswith("nsnet.heads."), name


@pytest.mark.parametrize("raw, message", [
    ({"train": {"head": "ufd"}}, "train.head: 'ufd' was renamed 'composite_probe'"),
    ({"train": {"head": "clip_zeroshot"}}, "train.head: 'clip_zeroshot' is not one of advanced,"),
    ({"compare": {"heads": ["rigid", "dino"]}}, "compare.heads[1]: 'dino' is not one of"),
    ({"methods": {"zero_shot": {}}}, "methods.zero_shot: 'zero_shot' is not one of"),
    ({"train": {"mapper": "ridge"}}, "train.mapper: 'ridge' is not one of end_to_end,"),
    ({"protocol": {"preset": "genimage2"}}, "protocol.preset: 'genimage2' is not one of none,"),
    ({"data": {"layout": "flat"}}, "data.layout: 'flat' is not one of auto,"),
])
def test_config_validates_names_by_looking_them_up(raw, message) -> None:
    with pytest.raises(ParamsError) as err:
        params_from_dict(raw)
    assert str(err.value).startswith(message)
    assert "rigid" in METHODS and "ufd" not in METHODS and METHODS.current("ufd") == \
        "composite_probe"


def test_a_methods_section_is_validated_by_its_owner() -> None:
    bad = params_from_dict({"methods": {"clip_zero_shot": {"real_prompts": "a photo"}}})
    with pytest.raises(ParamsError, match=r"methods\.clip_zero_shot\.real_prompts: expected a"):
        method("clip_zero_shot").settings_of(bad)
    unknown = params_from_dict({"methods": {"clip_zero_shot": {"prompts": []}}})
    with pytest.raises(ParamsError, match=r"unknown key methods\.clip_zero_shot\.prompts"):
        method("clip_zero_shot").settings_of(unknown)


# --- no name compared outside its own module -------------------------------------------------

def _compared_strings(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, string) of every string constant compared with ==, !=, in, not in."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        for side in [node.left, *node.comparators]:
            items = side.elts if isinstance(side, ast.Tuple | ast.List | ast.Set) else [side]
            found += [(node.lineno, i.value) for i in items
                      if isinstance(i, ast.Constant) and isinstance(i.value, str)]
    return found


def test_no_module_compares_a_head_or_recipe_name_outside_its_own_module() -> None:
    """The house looks a head or recipe up in its registry; only the head's or recipe's own
    module (``heads/methods/<name>.py``, ``extraction/recipes/<name>.py``) may compare its
    own name, and the registry names."""
    names = set(METHODS.names()) | set(RECIPES.names())
    homes = {ROOT / "pipeline/heads/methods", ROOT / "pipeline/extraction/recipes"}
    bad = []
    for folder in ("pipeline", "stages"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "pipeline/registry.py":
                continue
            own = {path.stem} if path.parent in homes else set()
            bad += [f"{path.relative_to(ROOT)}:{line} compares {s!r}"
                    for line, s in _compared_strings(ast.parse(path.read_text()))
                    if s in names - own]
    assert not bad, "look the name up in its registry instead:\n" + "\n".join(bad)


def test_the_name_check_finds_a_comparison() -> None:
    tree = ast.parse("if kind == 'rigid' or recipe in ('composite', 'x'):\n    pass\n")
    assert [s for _, s in _compared_strings(tree)] == ["rigid", "composite", "x"]


# --- the two training-free detectors ----------------------------------------------------------

def _frame(y: np.ndarray, split: str) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"{split}{i}" for i in range(len(y))], "label": y,
                         "source": np.where(y == 1, "gen", "real"), "split": split, "path": ""})


def _params(**methods: dict) -> Params:
    return params_from_dict({"clip": {"arch": "tiny", "pretrained": ""},
                             "train": {"device": "cpu", "batch_size": 32},
                             "methods": methods})


def test_clip_zero_shot_is_the_cosine_with_the_prompts_of_the_clip_that_made_the_features(
        tmp_path) -> None:
    from nsnet.backbones.clip import load_clip

    clip = load_clip("tiny", "", "cpu")
    real, fake = ["a real photograph"], ["an AI-generated image", "a synthetic image"]
    params = _params(clip_zero_shot={"real_prompts": real, "fake_prompts": fake, "scale": 50.0})
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    x = torch.from_numpy(rng.normal(size=(40, clip.embed_dim))).float()
    prov = {"clip": {"arch": "tiny", "pretrained": ""}, "recipe": "clip_crop"}
    train = FeatureSet(_frame(y, "train"), x, torch.zeros(40, 0), prov)
    result = fit("clip_zero_shot", train, None, params)
    assert result.best_epoch == 0 and result.history == []  # nothing trained
    assert result.info.schedule.source == "training-free"

    def direction(prompts: list[str]) -> torch.Tensor:
        return F.normalize(F.normalize(clip.encode_texts(prompts), dim=-1).mean(0), dim=-1)

    xn = F.normalize(x, dim=-1)
    expected = 50.0 * (xn @ direction(fake) - xn @ direction(real))
    got = torch.from_numpy(predict_logits(result.model, x, train.text))
    assert torch.allclose(got, expected, atol=1e-4)
    assert result.info.fitted["fake_prompts"] == fake


def _pairs(n: int, move: float, seed: int, d: int = 16) -> torch.Tensor:
    """(n, 2 * d) rows: an embedding and its noised copy, moved by about ``move``."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randn(n, d, generator=g)
    return torch.cat([clean, clean + move * torch.randn(n, d, generator=g)], dim=1)


def test_rigid_scores_how_far_noise_moves_the_embedding_with_the_threshold_of_the_val_reals():
    y_tr, y_va = np.arange(60) % 2, np.arange(200) % 2
    prov = {"recipe": "rigid", "row_shape": [2, 16]}

    def rows(y: np.ndarray, seed: int) -> torch.Tensor:
        real, fake = _pairs(len(y), 0.05, seed), _pairs(len(y), 0.6, seed + 1)
        return torch.where(torch.from_numpy(y == 1)[:, None], fake, real)

    train = FeatureSet(_frame(y_tr, "train"), rows(y_tr, 0), torch.zeros(60, 0), prov)
    val = FeatureSet(_frame(y_va, "val"), rows(y_va, 10), torch.zeros(200, 0), prov)
    result = fit("rigid", train, val, _params())
    model = result.model
    scores = model.score(val.image[y_va == 0])
    assert float(model.threshold) == pytest.approx(float(torch.quantile(scores.double(), 0.95)),
                                                   rel=1e-5)
    assert result.info.fitted["threshold_from"] == "validation reals"
    logits = predict_logits(model, val.image, val.text)
    assert np.mean(logits[y_va == 0] <= 0) == pytest.approx(0.95, abs=0.011)  # 95% of reals
    assert binary_metrics(y_va, 1 / (1 + np.exp(-logits)))["ap"] > 0.99
    assert result.best_val_ap > 0.99
    no_val = fit("rigid", train, None, _params())
    assert no_val.info.fitted["threshold_from"] == "training reals"


def test_a_training_free_fit_lives_in_the_state_dict() -> None:
    """What a bundle saves (the state dict) restores the fit on a freshly built head."""
    y = np.arange(40) % 2
    prov = {"recipe": "rigid", "row_shape": [2, 16]}
    train = FeatureSet(_frame(y, "train"), _pairs(40, 0.3, 0), torch.zeros(40, 0), prov)
    model = fit("rigid", train, None, _params()).model
    assert set(model.state_dict()) == {"threshold", "spread"} and float(model.spread) > 0
    fresh = build_head("rigid", 16)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(train.image).logit, model(train.image).logit)


# --- one experiment loop, settings resolved once -----------------------------------------------

def _calls(fn, *args, **kwargs) -> dict[str, int]:
    """How often ``fn(*args)`` calls the functions that resolve the experiment and the
    extraction settings (counted by the profiler: every import path counts)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.runcall(fn, *args, **kwargs)
    stats = pstats.Stats(prof).stats  # (file, line, name) -> (calls, ...)
    wanted = {("experiment.py", "resolve_experiment"), ("settings.py", "from_params"),
              ("settings.py", "reading")}
    out = {name: 0 for _, name in wanted}
    for (file, _, name), (calls, *_) in stats.items():
        if (Path(file).name, name) in wanted and Path(file).is_relative_to(ROOT / "pipeline"):
            out[name] += calls
    return out


@pytest.mark.slow
def test_compare_matrix_and_robustness_resolve_the_experiment_and_settings_once(
        built_cache, tmp_path) -> None:
    import dataclasses

    from nsnet.evaluation.compare_stage import run_compare
    from nsnet.reports.matrix_stage import run_matrix
    from nsnet.reports.robustness_stage import run_robustness

    p = built_cache.params
    params = dataclasses.replace(
        p, train=dataclasses.replace(p.train, epochs=1, device="cpu", seeds=[0, 1]),
        compare=dataclasses.replace(p.compare, heads=["composite_probe", "nsnet", "advanced"]))
    args = (params, built_cache.manifest, built_cache.features)
    compare = _calls(run_compare, *args, out_json=tmp_path / "c.json")
    matrix = _calls(run_matrix, *args, tmp_path / "m.json", tmp_path / "m.png")
    robust = _calls(run_robustness, *args, tmp_path / "r.json", tmp_path / "r.png")
    for calls in (compare, matrix, robust):  # three heads, two seeds, one recipe, clean only
        assert calls == {"resolve_experiment": 1, "from_params": 0, "reading": 1}, calls


# --- the new detectors through every command -----------------------------------------------------

NEW = ["clip_zero_shot", "rigid"]


@pytest.fixture(scope="module")
def new_heads(built_cache, tmp_path_factory):
    """The session cache plus the recipes of the two training-free heads (and jpeg30), as a
    workspace whose params.yaml compares them with NS-Net."""
    from nsnet.extraction.extract_stage import run_extract
    from tests.conftest import tiny_raw, write_params

    ws = built_cache.copy_to(tmp_path_factory.mktemp("new_heads") / "ws")
    raw = tiny_raw(built_cache.params.data.roots[0].path,
                   compare={"heads": [*NEW, "nsnet"]}, protocol={"degradations": ["jpeg30"]},
                   train={"head": "rigid", "device": "cpu", "epochs": 2},
                   methods={"clip_zero_shot": {"real_prompts": ["a photo"],
                                               "fake_prompts": ["a fake image"]}})
    write_params(ws.workdir / "params.yaml", raw)
    run_extract(params_from_dict(raw), ws.manifest, ws.features)
    return ws


def _nsnet(ws, *args: str) -> str:
    from click.testing import CliRunner

    from nsnet.stages.cli import main

    res = CliRunner().invoke(main, [*args[:1], "--params", str(ws.workdir / "params.yaml"),
                                    *args[1:]], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.slow
def test_training_free_heads_run_in_compare_matrix_robustness_and_report(new_heads, tmp_path,
                                                                        monkeypatch):
    monkeypatch.chdir(new_heads.workdir)
    out = _nsnet(new_heads, "compare", "--out", str(tmp_path / "c.json"))
    assert all(h in out for h in NEW)
    assert "clip_zero_shot training-free" in out.replace("\n  ", " ")  # not an epoch
    details = json.loads((tmp_path / "details" / "c.json").read_text())
    assert {h: details["heads"][h]["recipe"] for h in NEW} == {"clip_zero_shot": "clip_crop",
                                                               "rigid": "rigid"}
    assert details["heads"]["rigid"]["training"]["fitted"]["threshold_from"] == \
        "validation reals"
    _nsnet(new_heads, "matrix", "--heads", ",".join(NEW), "--out", str(tmp_path / "m.json"),
           "--details", str(tmp_path / "md.json"), "--plot", str(tmp_path / "m.png"))
    matrix = json.loads((tmp_path / "md.json").read_text())
    assert set(matrix["cells"]) == set(NEW)
    _nsnet(new_heads, "robustness", "--heads", ",".join(NEW), "--details",
           str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png"))
    robust = json.loads((tmp_path / "r.json").read_text())
    assert set(robust["results"]["rigid"]) == {"clean", "jpeg30"}
    from click.testing import CliRunner

    from nsnet.stages.cli import main

    report = CliRunner().invoke(main, ["report", "--compare", str(tmp_path / "details" /
                                                                 "c.json")])
    assert report.exit_code == 0, report.output
    assert "Training-free (fit without a gradient step): clip_zero_shot, rigid." in \
        " ".join(report.output.split())


@pytest.mark.slow
def test_a_training_free_bundle_predicts_and_serves(new_heads, tmp_path, monkeypatch):
    from nsnet.inference.detector import Detector
    from nsnet.inference.predict import load_chain, predict_paths
    from tests.test_serve import serving

    monkeypatch.chdir(new_heads.workdir)
    bundle = tmp_path / "zs"
    _nsnet(new_heads, "train", "--set", "train.head=clip_zero_shot", "--out", str(bundle),
           "--log", str(tmp_path / "log.csv"))
    chain = load_chain(bundle, "cpu")
    assert chain.blip is None and chain.config.training.schedule.source == "training-free"
    paths = sorted(str(p) for p in Path(new_heads.params.data.roots[0].path).rglob("*.png"))[:4]
    expected = predict_paths(chain, paths)
    out = _nsnet(new_heads, "predict", *paths, "--model", str(bundle), "--out",
                 str(tmp_path / "p.csv"))
    assert Path(paths[0]).name in out  # the table on the terminal
    got = pd.read_csv(tmp_path / "p.csv")
    np.testing.assert_allclose(got["prob"], expected["prob"], atol=1e-6)
    with serving(chain, bundle, lambda s: Detector(chain, s.max_pixels, s.max_batch,
                                                   s.model_dir)) as server, \
            server.client() as client:
        with open(paths[0], "rb") as fh:
            res = client.post("/v1/detect", files={"file": ("a.png", fh, "image/png")})
    assert res.status_code == 200, res.text
    assert res.json()["results"][0]["prob"] == pytest.approx(float(expected["prob"][0]),
                                                             abs=1e-6)
