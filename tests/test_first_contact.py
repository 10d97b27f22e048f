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

from nsnet.atomic import write_json, write_text
from nsnet.config import ParamsError, params_from_dict
from nsnet.data.manifest import read_manifest
from nsnet.heads.bundle import CONFIG, load_bundle, save_bundle
from nsnet.heads.bundle_config import BundleConfig, HeadConfig
from nsnet.heads.method import build_head
from nsnet.heads.train_stage import run_train
from nsnet.inference.explain import explain_image, write_report
from nsnet.inference.predict import load_chain, predict_paths, write_results
from nsnet.inference.verdict import verdict
from nsnet.reports.figures import MIN_SCALE, _norm, distinct_top, patch_locations
from nsnet.stages.cli import main
from tests.test_bad_images import _nsnet  # the CLI without the caps that bypass permissions

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
    code = ("import sys\nfrom nsnet.stages.cli import main\n"
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


@pytest.mark.parametrize(("layout", "examples"), [
    ("auto", "data/real/ and data/fake/<generator>/"),
    ("genimage", "data/<generator>/train/nature/ and data/<generator>/train/ai/")])
def test_an_empty_data_root_is_named_with_what_to_put_there(tmp_path, layout, examples):
    """A data root that is an empty folder (its subfolders empty too): scan says so at once and
    index stops with the folder's name and what it should hold, never that the listing was
    made for other roots (it was made for that root)."""
    (tmp_path / "data" / "fake").mkdir(parents=True)  # an empty label folder holds no file
    (tmp_path / "params.yaml").write_text(f"data:\n  roots: [data]\n  layout: {layout}\n")
    empty = "data root data holds no files: put your images in it, in label folders such as "
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        res = CliRunner().invoke(main, ["scan", "--out", "cache/listing.parquet"])
    finally:
        os.chdir(old)
    assert res.exit_code == 0, res.output
    assert "scan: data: no files" in res.output and f"warning: {empty}{examples}" in res.output
    for args in (["--listing", "cache/listing.parquet"], []):  # dvc's way, and the scan in index
        out = _fails(["index", *args], f"{empty}{examples}", cwd=tmp_path)
        assert "other roots" not in out and "no label folders" not in out
    (tmp_path / "data" / "real").mkdir()  # a file now: the listing is stale
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "data" / "real" / "a.png")
    _fails(["index", "--listing", "cache/listing.parquet"],
           "cache/listing.parquet lists no files of data root data, which holds files now",
           "run `nsnet scan` (or `dvc repro`) first", cwd=tmp_path)


def test_a_data_root_that_cannot_be_listed_is_not_called_empty(tmp_path):
    """chmod 000 on the root: the message says it could not be listed, and why (as root, the
    commands run without the capabilities that bypass permission bits)."""
    root = tmp_path / "data"
    (root / "real").mkdir(parents=True)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "real" / "a.png")
    (tmp_path / "params.yaml").write_text("data:\n  roots: [data]\n")
    root.chmod(0)
    try:
        drop = os.access(root, os.R_OK)  # root: permission bits are not enforced for us
        scan = _nsnet(["scan", "--out", "cache/listing.parquet"], tmp_path, drop)
        if drop and "PR_CAPBSET_DROP" in scan.stderr:
            pytest.skip("running as root and capabilities cannot be dropped here")
        index = _nsnet(["index", "--listing", "cache/listing.parquet"], tmp_path, drop)
    finally:
        root.chmod(0o755)
    want = "data root data: no file could be listed (data: PermissionError: Permission denied)"
    assert scan.returncode == 0 and f"warning: {want}" in scan.stderr, scan.stderr
    assert "scan: data: no files; 1 folder(s) could not be listed" in scan.stderr
    assert index.returncode == 1 and want in index.stderr, index.stderr
    assert "holds no files" not in scan.stderr + index.stderr


# Every command that reads params, with arguments that get it past option parsing.
PARAM_COMMANDS = {name: [] for name in ("scan", "index", "audit", "extract", "train",
                                        "evaluate", "compare", "evaluate-degraded", "cache",
                                        "tsne", "matrix", "robustness")}
PARAM_COMMANDS.update(predict=["missing.png"], explain=["missing.png"])


def test_every_params_command_loads_through_the_one_loader():
    """`nsnet.stages.common.load` prints the params line; every command with --params calls it
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
    from nsnet.config import source_line

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

    from nsnet.heads.bundle import WEIGHTS, _digest

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
        "from nsnet.backbones.clip import load_clip\n"
        "from nsnet.backbones.blip import load_blip\n"
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
    from nsnet.backbones.availability import ModelUnavailable
    from nsnet.backbones.blip import load_blip
    from nsnet.backbones.clip import load_clip

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


REAL_MODELS = {"clip": {"arch": "ViT-L-14", "pretrained": "openai"},
               "caption": {"model": "Salesforce/blip-image-captioning-base"}}
# The real CLI's entry, timed once its libraries are imported (the check, not the imports).
TIMED_CLI = """\
import sys, time
import huggingface_hub, open_clip, torch, transformers
from nsnet.stages.cli import main
start = time.monotonic()
try:
    main(sys.argv[1:], prog_name="nsnet")
finally:
    print(f"ELAPSED {time.monotonic() - start:.2f}", file=sys.stderr)
"""


def test_extract_names_every_missing_model_at_once_before_any_work(tmp_path, demo_images):
    """Real CLIP and BLIP names, an empty Hugging Face cache, no hub: one message lists both
    (with how to get each and the keys of the offline backbones), within seconds, nothing
    computed."""
    from nsnet.cache_store import FeatureStore
    from nsnet.data.demo_data import TINY_MODELS
    from nsnet.data.index_stage import build_index
    from tests.conftest import tiny_params, tiny_raw, write_params

    manifest = tmp_path / "manifest.parquet"
    build_index(tiny_params(demo_images), manifest, tmp_path / "index_report.json")
    raw = tiny_raw(demo_images)
    for section, values in REAL_MODELS.items():
        raw[section].update(values)
    params = write_params(tmp_path / "params.yaml", raw)
    features = tmp_path / "features"
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(home / "hf"), HOME=str(home),
               PYTHONPATH=str(PROJECT))
    proc = subprocess.run(
        [sys.executable, "-c", TIMED_CLI, "extract", "--params", str(params), "--manifest",
         str(manifest), "--features", str(features)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    err = proc.stderr
    assert proc.returncode == 1, err
    assert "Traceback" not in err and "ERROR:root" not in err, err
    assert err.count("Error: ModelUnavailable") == 1, err
    assert "nsnet extract needs 2 model(s)" in err, err
    assert "CLIP 'ViT-L-14' / 'openai' (clip.arch, clip.pretrained)" in err
    assert "open_clip.create_model('ViT-L-14', pretrained='openai')" in err
    assert "BLIP 'Salesforce/blip-image-captioning-base' (caption.model)" in err
    assert "hf download Salesforce/blip-image-captioning-base" in err
    assert all(f"--set {key}=" in err for key in TINY_MODELS), err
    assert float(err.split("ELAPSED ")[1].split()[0]) < 30, err  # the plan and the check
    assert not FeatureStore(features).describe()  # no part written, no image decoded


def test_predict_names_every_missing_backbone_of_its_bundle(tmp_path, monkeypatch):
    """A bundle whose CLIP checkpoint and BLIP are both absent: one message names both, before
    either is loaded, and says they come with the bundle (no params key switches them)."""
    from nsnet.heads.bundle_config import Backbones, CaptionFacts, ClipFacts, PatchesConfig

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bb = Backbones(clip=ClipFacts("ViT-B-32", str(tmp_path / "absent.pt")),
                   caption=CaptionFacts("nsnet-tests/absent-blip"),
                   patches=PatchesConfig(32, 24, 25))
    save_bundle(tmp_path / "model", build_head("advanced", 512),
                BundleConfig(head=HeadConfig("advanced", 512), backbones=bb))
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    out = _fails(["predict", str(tmp_path / "a.png"), "--model", str(tmp_path / "model")],
                 f"the bundle {tmp_path / 'model'} needs 2 model(s)",
                 f"'ViT-B-32' / '{tmp_path / 'absent.pt'}' (backbones.clip)", "no such file",
                 "BLIP 'nsnet-tests/absent-blip' (backbones.caption): not in the Hugging Face",
                 "hf download nsnet-tests/absent-blip", "`backbones` in its config.json")
    assert out.count("ModelUnavailable") == 1 and "--set" not in out and "or set" not in out


def _hub_cache(root: Path, repo: str, *files: str) -> None:
    """``files`` of hub repo ``repo`` in a Hugging Face cache laid out as ``hf download`` does."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text("0" * 40)
    for name in files:
        path = folder / "snapshots" / ("0" * 40) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"{}")


def test_model_check_reads_the_cache_and_local_paths_without_loading(tmp_path, monkeypatch):
    from nsnet.backbones.availability import ModelUnavailable, Need, require_models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = str(tmp_path / "hub")
    blip = "Salesforce/blip-image-captioning-base"
    needs = [Need("clip", "ViT-L-14", "openai", ("clip.arch", "clip.pretrained")),
             Need("blip", blip, keys=("caption.model",)),
             Need("clip", "ViT-L-14", "openai", ("recipes.cozzolino_arch",
                                                 "recipes.cozzolino_pretrained"))]

    def missing() -> str:
        with pytest.raises(ModelUnavailable) as err:
            require_models(needs, "run", cache_dir=cache)
        return str(err.value)

    text = missing()  # the same CLIP named twice is one entry naming all its keys
    assert "run needs 2 model(s)" in text and text.count("'ViT-L-14' / 'openai'") == 1
    assert "(clip.arch, clip.pretrained, recipes.cozzolino_arch, recipes.cozzolino_pretrained)" \
        in text and cache in text
    _hub_cache(tmp_path / "hub", "timm/vit_large_patch14_clip_224.openai",
               "open_clip_model.safetensors")
    _hub_cache(tmp_path / "hub", blip, "config.json")  # no weights yet: still missing
    text = missing()
    assert "run needs 1 model(s)" in text and f"BLIP {blip!r}" in text and "CLIP" not in text
    _hub_cache(tmp_path / "hub", blip, "model.safetensors")
    require_models(needs, "run", cache_dir=cache)
    # Local files and folders, the built-in backbones; settings no download fixes.
    ckpt, folder = tmp_path / "vit.pt", tmp_path / "blip"
    ckpt.write_bytes(b"")
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    require_models([Need("clip", "ViT-B-32", str(ckpt)), Need("blip", str(folder)),
                    Need("clip", "tiny", ""), Need("blip", "tiny")], "run", cache_dir=cache)
    with pytest.raises(ModelUnavailable) as err:
        require_models([Need("clip", "ViT-B-32", "no-such-tag", ("clip.pretrained",)),
                        Need("clip", "ViT-Nope", "openai", ("clip.arch",)),
                        Need("blip", str(tmp_path / "empty"), keys=("caption.model",))],
                       "run", cache_dir=cache)
    text = str(err.value)
    assert "run needs 3 model(s)" in text and "neither a file nor a known tag" in text
    assert "not an open_clip architecture" in text and "no such folder" in text
    assert "hf download" not in text and "not reachable" not in text


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
    from nsnet.reports.figures import LABEL_COLOURS, source_styles

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
    from nsnet.metrics import rounded, threshold_text

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
