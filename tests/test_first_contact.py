"""First contact: what a new user meets before any result (help, errors, file modes, verdicts).

Real commands on real files: the uncertain band from params to bundle to predict/explain, output
files readable by colleagues under the usual umask, a `--help` that does not import torch, and
one clear message (no traceback) for every kind of bad option or params file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.atomic import write_json, write_text
from pipeline.config import HEAD_CHOICES, ParamsError, params_from_dict
from pipeline.data.manifest import read_manifest
from pipeline.heads.bundle import CONFIG, load_bundle, save_bundle
from pipeline.heads.bundle_config import BundleConfig, HeadConfig
from pipeline.heads.detectors import BASELINE_HEADS, HEADS, build_head
from pipeline.heads.train_stage import run_train
from pipeline.inference.explain import explain_image, write_report
from pipeline.inference.predict import load_chain, predict_paths, write_results
from pipeline.inference.verdict import verdict
from pipeline.reports.figures import MIN_SCALE, _norm, distinct_top, patch_locations
from stages.cli import main

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(built_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("first_contact") / "model"
    params = dataclasses.replace(
        built_cache.params,
        train=dataclasses.replace(built_cache.params.train, epochs=3, device="cpu"),
        evaluate=dataclasses.replace(built_cache.params.evaluate, uncertain_band=0.5))
    run_train(params, built_cache.manifest, built_cache.features, out, out.parent / "log.csv")
    return out


@pytest.fixture(scope="module")
def images(built_cache) -> list[str]:
    return read_manifest(built_cache.manifest, only_ok=True)["path"].iloc[::9].tolist()


# ----------------------------------------------------------------------------- uncertain band


def test_verdict_rule():
    assert verdict(0.499, 0.5, 0.05) == "uncertain"
    assert verdict(0.54, 0.5, 0.05) == "uncertain"
    assert verdict(0.56, 0.5, 0.05) == "generated"
    assert verdict(0.44, 0.5, 0.05) == "real"
    assert verdict(0.46, 0.5, 0.05) == "uncertain"
    # band 0: exactly evaluate's rule, fake iff prob > threshold (the threshold itself is real)
    assert verdict(0.5, 0.5, 0.0) == "real"
    assert verdict(0.5001, 0.5, 0.0) == "generated"
    assert verdict(float("nan"), 0.5, 0.0) == "uncertain"


def test_uncertain_band_param_is_validated():
    assert params_from_dict({}).evaluate.uncertain_band == 0.05
    for bad in (-0.01, 0.6, "wide", float("nan")):
        with pytest.raises(ParamsError, match="evaluate.uncertain_band"):
            params_from_dict({"evaluate": {"uncertain_band": bad}})


def test_train_stage_depends_on_the_band_it_stores():
    import yaml

    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    assert any(p in ("evaluate", "evaluate.uncertain_band") for p in stages["train"]["params"])


def test_bundle_band_drives_predict_labels_and_old_bundles_mean_zero(bundle, images, tmp_path):
    config = json.loads((bundle / CONFIG).read_text())
    assert config["decision"]["uncertain_band"] == 0.5
    chain = load_chain(bundle, "cpu")
    assert chain.band == 0.5
    df = predict_paths(chain, images)
    assert (df["status"] == "ok").all() and set(df["label"]) == {"uncertain"}  # band 0.5: all
    old = tmp_path / "old"
    old.mkdir()
    for f in bundle.iterdir():
        (old / f.name).write_bytes(f.read_bytes())
    del config["decision"]["uncertain_band"]
    (old / CONFIG).write_text(json.dumps(config))
    chain = load_chain(old, "cpu")
    assert chain.band == 0.0
    df = predict_paths(chain, images)
    expected = np.where(df["prob"] > chain.threshold, "generated", "real")
    assert df["label"].tolist() == expected.tolist()


def test_explain_says_uncertain_in_picture_and_json(bundle, images, tmp_path):
    chain = load_chain(bundle, "cpu")
    ex = explain_image(chain, images[0])
    assert ex.label == "uncertain" and ex.uncertain_band == 0.5
    png, js = write_report(ex, tmp_path / "why.png")
    data = json.loads(js.read_text())
    assert data["label"] == "uncertain" and data["uncertain_band"] == 0.5
    assert png.stat().st_size > 0


def test_predict_cli_counts_uncertain(bundle, images, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the built-in defaults
    res = CliRunner().invoke(main, ["predict", images[0], "--model", str(bundle),
                                    "--set", "compute.device=cpu"])
    assert res.exit_code == 0, res.output
    assert "uncertain" in res.output and "1 uncertain at threshold 0.5 ± 0.5" in res.output


# ----------------------------------------------------------------------------- explanation picture


def test_colour_scale_keeps_negligible_contributions_pale():
    assert _norm(np.array([0.004, -0.002])).vmax == MIN_SCALE  # noise stays near white
    assert _norm(np.array([1.5, -0.2])).vmax == 1.5  # strong evidence spans the scale
    assert _norm(np.array([1.5, -0.2])).vmin == -1.5


def test_one_patch_image_is_drawn_once_not_as_a_solid_square(bundle, tmp_path):
    path = tmp_path / "one_patch.png"
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    ex = explain_image(load_chain(bundle, "cpu"), path)
    locations = patch_locations(ex)
    assert len(locations) == 1 and sorted(locations[0][3]) == list(range(49))
    assert len(distinct_top(ex, 5, 1)) + len(distinct_top(ex, 5, -1)) <= 2  # one place, once
    total = sum(p.contribution for p in ex.patches)
    assert locations[0][2] == pytest.approx(total)
    png, _ = write_report(ex, tmp_path / "one.png")
    assert png.exists()


# ----------------------------------------------------------------------------- file modes


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_outputs_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_json(tmp_path / "m.json", {"a": 1})
        write_text(tmp_path / "t.txt", "x")
        save_bundle(tmp_path / "b", build_head("composite_probe", 8),
                    BundleConfig(head=HeadConfig("composite_probe", 8)))
        write_results(pd.DataFrame({"path": ["a"], "status": ["ok"]}), tmp_path / "r.csv")
        files = [tmp_path / "m.json", tmp_path / "t.txt", tmp_path / "b" / "config.json",
                 tmp_path / "b" / "model.safetensors", tmp_path / "r.csv"]
        for f in files:
            assert stat.S_IMODE(f.stat().st_mode) == mode, f
    finally:
        os.umask(old)


# ----------------------------------------------------------------------------- --help


def test_help_does_not_import_torch():
    code = ("import sys\nfrom stages.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'numpy', 'pandas', 'PIL', 'open_clip', 'transformers',"
            " 'h5py', 'matplotlib', 'pyarrow') if m in sys.modules]\n"
            "print('HEAVY', heavy, file=sys.stderr)\n")
    for args in ([], ["predict", "--help"]):
        run = code.replace("['--help']", repr([*args] or ["--help"]))
        proc = subprocess.run([sys.executable, "-c", run], cwd=PROJECT, capture_output=True,
                              text=True, timeout=120)
        assert "Usage:" in proc.stdout, proc.stderr
        assert "HEAVY []" in proc.stderr, proc.stderr


def test_head_choices_are_the_heads():
    assert tuple(HEADS) == HEAD_CHOICES and set(BASELINE_HEADS) <= set(HEADS)


def test_every_option_has_help_text():
    missing = [f"{name} {opt.opts[0]}" for name, cmd in main.commands.items()
               for opt in cmd.params if opt.param_type_name == "option" and not opt.help]
    assert not missing, missing


# ----------------------------------------------------------------------------- bad options


def _fails(args: list[str], *wants: str, cwd: Path | None = None) -> str:
    """Run in ``cwd`` (default: an empty folder, so no params.yaml is read)."""
    import tempfile

    runner = CliRunner()
    old = os.getcwd()
    os.chdir(cwd or tempfile.mkdtemp(prefix="nsnet-fails-"))
    try:
        res = runner.invoke(main, args)
    finally:
        os.chdir(old)
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output
    for want in wants:
        assert want in res.output, res.output
    return res.output


def test_named_params_file_must_exist(tmp_path):
    _fails(["index", "--params", str(tmp_path / "nope.yaml")], "--params",
           "nope.yaml: no such file")


def test_missing_default_params_file_means_defaults(tmp_path):
    out = _fails(["index"], "data root data/images does not exist", cwd=tmp_path)
    assert f"params: no params.yaml in {tmp_path} or above: built-in defaults" in out


# Every command that reads params, with arguments that get it past option parsing.
PARAM_COMMANDS = {name: [] for name in ("scan", "index", "audit", "extract", "train",
                                        "evaluate", "compare", "evaluate-degraded", "cache",
                                        "tsne", "matrix", "robustness")}
PARAM_COMMANDS.update(predict=["missing.png"], explain=["missing.png"])


def test_every_params_command_loads_through_the_one_loader():
    """`stages.common.load` prints the params line; every command with --params calls it
    (serve too, which this file cannot start)."""
    import inspect

    with_params = {name for name, cmd in main.commands.items()
                   if "--params" in {o for p in cmd.params for o in p.opts}}
    assert with_params == set(PARAM_COMMANDS) | {"serve"}
    for name in with_params:
        source = inspect.getsource(main.commands[name].callback.__wrapped__)
        assert "load(params_file, overrides" in source, name


@pytest.mark.parametrize("name", sorted(PARAM_COMMANDS))
def test_every_command_says_once_which_params_file_it_uses(tmp_path, name):
    """From a subfolder of a workspace: one line, up front, says that no params.yaml is here,
    that the built-in defaults are used and where the workspace's file is."""
    assert "--params" in {o for p in main.commands[name].params for o in p.opts}
    sub = tmp_path / "ws" / "data"
    sub.mkdir(parents=True)
    (tmp_path / "ws" / "params.yaml").write_text("seed: 1\n")
    old = os.getcwd()
    os.chdir(sub)
    try:
        res = CliRunner().invoke(main, [name, *PARAM_COMMANDS[name], "--set", "seed=2"])
    finally:
        os.chdir(old)
    assert "Traceback" not in res.output
    lines = [line for line in res.output.splitlines() if line.startswith("params: ")]
    assert lines == [f"params: no params.yaml in {sub}: built-in defaults --set seed=2 "
                     f"({tmp_path / 'ws'} has one: run from there, or pass --params FILE)"], \
        res.output
    assert res.output.startswith("params: ")  # up front, before any other output


def test_the_params_line_names_the_file_in_use(tmp_path):
    from pipeline.config import source_line

    (tmp_path / "params.yaml").write_text("seed: 1\n")
    assert source_line(None, (), tmp_path) == "params: params.yaml"
    assert source_line("other.yaml", ("a=1",), tmp_path) == "params: other.yaml --set a=1"


def test_set_with_broken_yaml_is_one_message(tmp_path):
    _fails(["index", "--set", "train.lr=[1, 2"], "--set train.lr=[1, 2",
           "not valid YAML", cwd=tmp_path)


def test_binary_params_file_names_the_file(tmp_path):
    params = tmp_path / "params.bin"
    params.write_bytes(bytes(range(256)))
    _fails(["index", "--params", str(params)], "params.bin: not a text (UTF-8 YAML) file")


def test_predict_refuses_a_bad_out_name_before_loading_anything(tmp_path):
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    out = _fails(["predict", str(image), "--model", str(tmp_path / "no-bundle"), "--out",
                  str(tmp_path / "results.xlsx")], "results.xlsx", ".csv, .jsonl, .parquet")
    assert "not a model bundle" not in out and not (tmp_path / "results.xlsx").exists()


def test_explain_reports_a_bad_image_before_loading_models(tmp_path):
    image = tmp_path / "empty.png"
    image.write_bytes(b"")
    out = _fails(["explain", str(image), "--model", str(tmp_path / "no-bundle")],
                 "empty_file", "empty.png")
    assert "not a model bundle" not in out


def test_parameter_reference_documents_the_code_defaults():
    reference = (PROJECT / "docs" / "parameters.md").read_text()
    defaults = params_from_dict({})
    assert f"| `data.roots` | `[{defaults.data.roots[0].path}]` |" in reference
    assert f"| `evaluate.uncertain_band` | `{defaults.evaluate.uncertain_band:g}` |" in reference


def test_minimal_bundle_still_loads(tmp_path):
    save_bundle(tmp_path, build_head("composite_probe", 8),
                BundleConfig(head=HeadConfig("composite_probe", 8)))
    load_bundle(tmp_path)


def test_a_bundle_of_the_head_once_called_ufd_loads_as_composite_probe(tmp_path):
    """A bundle the format-1 writer saved under the old head name (no other section)."""
    from safetensors.torch import save

    from pipeline.heads.bundle import WEIGHTS, _digest

    head = build_head("composite_probe", 8)
    blob = save(head.state_dict())
    (tmp_path / WEIGHTS).write_bytes(blob)
    (tmp_path / CONFIG).write_text(json.dumps({
        "format_version": 1, "weights_blake2b": _digest(blob),
        "head": {"kind": "ufd", "dim": 8, "hparams": {}}}))
    model, config = load_bundle(tmp_path)
    assert model.kind == config.head.name == "composite_probe"
    import torch

    x = torch.from_numpy(np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32))
    torch.testing.assert_close(model(x).logit, head(x).logit)


# ----------------------------------------------------------------------------- missing weights


def _load_in_subprocess(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(PROJECT)}
    return subprocess.run([sys.executable, "-c", code], cwd=PROJECT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_missing_hub_weights_one_message_with_a_command_that_exists(tmp_path):
    proc = _load_in_subprocess(
        "from pipeline.backbones.clip import load_clip\n"
        "from pipeline.backbones.blip import load_blip\n"
        "for f, a in ((load_clip, ('ViT-B-32', 'openai', 'cpu')),\n"
        "             (load_blip, ('Salesforce/blip-image-captioning-base', 'cpu'))):\n"
        "    try:\n        f(*a)\n    except Exception as e:\n"
        "        print('MESSAGE', type(e).__name__, e)\n")
    assert "ERROR:root" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.stdout.count("MESSAGE ModelUnavailable") == 2, proc.stdout + proc.stderr
    assert "hub is not reachable" in proc.stdout
    assert "hf download Salesforce/blip-image-captioning-base" in proc.stdout
    assert "huggingface-cli" not in proc.stdout
    assert (Path(sys.executable).parent / "hf").exists()  # the installed hub's command


def test_broken_local_weights_do_not_blame_the_hub(tmp_path):
    from pipeline.backbones.availability import ModelUnavailable
    from pipeline.backbones.blip import load_blip
    from pipeline.backbones.clip import load_clip

    bad = tmp_path / "ckpt.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelUnavailable) as err:
        load_clip("ViT-B-32", str(bad), "cpu")
    assert "is a local file that could not be loaded" in str(err.value)
    assert "hub" not in str(err.value) and "Cause:" in str(err.value)
    with pytest.raises(ModelUnavailable) as err:
        load_blip(str(tmp_path), "cpu")
    assert "is a local folder but does not hold a loadable BLIP" in str(err.value)
    assert "hub" not in str(err.value)


# ----------------------------------------------------------------------------- progress bars


def test_index_train_and_compare_show_progress(built_cache, tmp_path):
    common = ["--manifest", str(built_cache.manifest), "--features",
              str(built_cache.features), "--set", "train.epochs=2", "--set",
              "train.device=cpu"]
    raw = json.loads(json.dumps(built_cache.params.to_dict()))
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(raw))  # JSON is YAML
    runner = CliRunner()
    res = runner.invoke(main, ["index", "--params", str(params), "--out",
                               str(tmp_path / "m.parquet"), "--report", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    n = len(read_manifest(tmp_path / "m.parquet"))
    assert "index: 100%" in res.output and f"{n}/{n}" in res.output
    res = runner.invoke(main, ["train", "--params", str(params), *common, "--out",
                               str(tmp_path / "model"), "--log", str(tmp_path / "log.csv")])
    assert res.exit_code == 0, res.output
    assert "train: 100%" in res.output and "2/2" in res.output and "val AP" in res.output
    res = runner.invoke(main, ["compare", "--params", str(params), *common, "--out",
                               str(tmp_path / "compare.json")])
    assert res.exit_code == 0, res.output
    assert "compare: 100%" in res.output and "6/6" in res.output
    assert (tmp_path / "details" / "compare.json").exists()  # beside --out, not in the cwd


# ----------------------------------------------------------------------------- t-SNE figure


def _hsv(colour: str) -> tuple[float, float, float]:
    import colorsys

    from matplotlib.colors import to_rgb

    return colorsys.rgb_to_hsv(*to_rgb(colour))


def test_tsne_source_colours_never_reuse_the_label_colours():
    from pipeline.reports.figures import LABEL_COLOURS, source_styles

    styles = source_styles([f"gen{i}" for i in range(20)])
    assert len(set(styles.values())) == 20  # every source is distinguishable
    for colour, _ in styles.values():
        if _hsv(colour)[1] < 0.2:
            continue  # a grey has no hue to confuse
        for label_colour in LABEL_COLOURS.values():
            gap = abs(_hsv(colour)[0] - _hsv(label_colour)[0])
            assert min(gap, 1 - gap) > 0.05, (colour, label_colour)


def test_tsne_says_which_direction_of_the_silhouette_is_better(built_cache, tmp_path):
    bundle_dir = tmp_path / "m"
    params = dataclasses.replace(built_cache.params, train=dataclasses.replace(
        built_cache.params.train, epochs=1, device="cpu"))
    run_train(params, built_cache.manifest, built_cache.features, bundle_dir,
              tmp_path / "log.csv")
    raw = json.loads(json.dumps(params.to_dict()))
    raw["figures"]["tsne_points"] = 20
    raw["figures"]["tsne_perplexity"] = 5.0
    (tmp_path / "p.yaml").write_text(json.dumps(raw))
    res = CliRunner().invoke(main, ["tsne", "--params", str(tmp_path / "p.yaml"), "--manifest",
                                    str(built_cache.manifest), "--features",
                                    str(built_cache.features), "--model", str(bundle_dir),
                                    "--out", str(tmp_path / "tsne.png")])
    assert res.exit_code == 0, res.output
    assert "higher = real and generated further apart" in res.output


# ----------------------------------------------------------------------------- one threshold text


def test_threshold_is_printed_the_same_way_everywhere(bundle, images, built_cache, tmp_path,
                                                       monkeypatch):
    """predict, explain, the explanation picture and evaluate print a threshold with the 4
    decimals that metrics.json keeps: 0.191785 reads 0.1918 everywhere."""
    from pipeline.metrics import rounded, threshold_text

    assert threshold_text(0.191785) == "0.1918" and threshold_text(0.5) == "0.5"
    for t in (0.191785, 0.5, 0.0001, 0.99999, 0.123):
        assert float(threshold_text(t)) == rounded(t)
    odd = tmp_path / "odd"
    odd.mkdir()
    for f in bundle.iterdir():
        (odd / f.name).write_bytes(f.read_bytes())
    config = json.loads((odd / CONFIG).read_text())
    config["decision"]["threshold"] = 0.191785
    (odd / CONFIG).write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    raw = json.loads(json.dumps(built_cache.params.to_dict()))
    (tmp_path / "params.yaml").write_text(json.dumps(raw))
    runner = CliRunner()
    outs = {
        "predict": runner.invoke(main, ["predict", images[0], "--model", str(odd)]),
        "explain": runner.invoke(main, ["explain", images[0], "--model", str(odd), "--out",
                                        str(tmp_path / "why.png")]),
        "evaluate": runner.invoke(main, ["evaluate", "--manifest", str(built_cache.manifest),
                                         "--features", str(built_cache.features),
                                         "--model", str(odd), "--out",
                                         str(tmp_path / "m.json"), "--plots",
                                         str(tmp_path / "plots")]),
    }
    for name, res in outs.items():
        assert res.exit_code == 0, (name, res.output)
        assert "0.1918" in res.output and "0.191785" not in res.output, (name, res.output)
        assert "0.192 " not in res.output, (name, res.output)
    assert json.loads((tmp_path / "m.json").read_text())["threshold"] == 0.1918
