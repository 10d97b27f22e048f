"""The `nsnet` console script: every subcommand's help, the whole chain, and clean errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner, Result
from conftest import part_of, read_part, tiny_raw, write_params

from nsnet.cache_store import table_provenance
from nsnet.config import load_params
from nsnet.data.manifest import read_manifest
from nsnet.stages.cli import main

SUBCOMMANDS = ("scan", "index", "extract", "train", "evaluate", "compare", "demo-data", "cache",
               "evaluate-degraded")
PARAM_COMMANDS = ("scan", "index", "extract", "train", "evaluate", "compare")


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=True)


def ok(*args: str) -> Result:
    res = invoke(*args)
    assert res.exit_code == 0, f"nsnet {' '.join(args)} failed:\n{res.output}\n{res.exception!r}"
    return res


def test_main_help_lists_every_subcommand():
    out = ok("--help").output
    for name in SUBCOMMANDS:
        assert name in out
    assert set(SUBCOMMANDS) <= set(main.commands)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help(name):
    out = ok(name, "--help").output
    assert f"Usage: main {name}" in out or f"Usage: nsnet {name}" in out
    if name in PARAM_COMMANDS:  # every stage reads params.yaml and takes --set overrides
        assert "--params" in out and "params.yaml" in out
        assert "--set" in out


def test_every_registered_command_has_help():
    for name in main.commands:
        assert ok(name, "-h").output.strip()


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, demo_images: Path) -> Path:
    """Run index -> extract -> train -> evaluate -> compare via the CLI."""
    work = tmp_path_factory.mktemp("cli")
    write_params(work / "params.yaml", tiny_raw(demo_images, train={"epochs": 2}))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        for stage in PARAM_COMMANDS:
            res = ok(stage)
            (work / f"{stage}.log").write_text(res.output)
    return work


CHAIN_FILES = [
    "cache/manifest.parquet", "cache/index_report.json", "models/detector/model.safetensors",
    "models/detector/config.json", "plots/train_log.csv", "metrics/metrics.json",
    "plots/roc.csv", "plots/pr.csv", "plots/confusion.csv", "metrics/compare.json",
]


def test_chain_produces_every_output(chain):
    for rel in CHAIN_FILES:
        assert (chain / rel).is_file() and (chain / rel).stat().st_size > 0, rel
    assert not list(chain.rglob("*.partial")), "atomic writes left temporaries behind"
    assert len(list((chain / "cache" / "features").glob("*/*/*.h5"))) >= 4  # 4 parts
    assert "index:" in (chain / "index.log").read_text()
    assert "test (%)" in (chain / "evaluate.log").read_text()
    compare_out = (chain / "compare.log").read_text()
    assert "mean" in compare_out and "advanced" in compare_out


def test_chain_outputs_are_aligned_and_carry_provenance(chain):
    ids = read_manifest(chain / "cache/manifest.parquet", only_ok=True)["id"].tolist()
    assert table_provenance(chain / "cache/manifest.parquet")["stage"] == "index"
    params = load_params(chain / "params.yaml")
    sel = part_of(chain / "cache/features", params, "selection")
    patch_prov = sel.info()["provenance"]
    assert patch_prov["stage"] == "extract" and patch_prov["code_version"]
    assert sel.info()["part"] == "selection" and len(sel.index()) == len(ids)
    caps = read_part(chain / "cache/features", params, "caption", ids)["caption"]
    assert len(caps) == len(ids) and all(len(c) > 0 for c in caps)
    cap = part_of(chain / "cache/features", params, "caption").info()
    assert cap["part"] == "caption" and cap["provenance"]["caption"]["model"] == "tiny"
    for kind in ("image:0", "text"):
        emb = read_part(chain / "cache/features", params, kind, ids)["emb"]
        assert emb.shape[0] == len(ids)
    emb_prov = part_of(chain / "cache/features", params, "image:0").info()["provenance"]
    assert emb_prov["stage"] == "extract" and emb_prov["clip"]["arch"] == "tiny"
    assert emb_prov["patches"] == patch_prov["patches"]
    bundle = json.loads((chain / "models/detector/config.json").read_text())
    assert bundle["head"]["name"] == "advanced"
    assert bundle["backbones"]["clip"]["arch"] == "tiny"
    assert bundle["provenance"]["code_version"]
    details = json.loads((chain / "metrics/details/metrics.json").read_text())
    assert details["head"] == "advanced" and 0.0 <= details["test"]["mean"]["acc"] <= 1.0
    assert details["provenance"]["code_version"]
    metrics = json.loads((chain / "metrics/metrics.json").read_text())  # the compared numbers
    assert metrics == {**{k: round(details["test"]["mean"][k], 4) for k in ("acc", "ap")},
                       "threshold": round(details["threshold"], 4)}
    compare = json.loads((chain / "metrics/details/compare.json").read_text())
    assert set(compare["heads"]) == {"composite_probe", "nsnet", "advanced"}
    assert set(json.loads((chain / "metrics/compare.json").read_text())) == {
        "composite_probe_ap", "nsnet_ap", "advanced_ap"}
    log = pd.read_csv(chain / "plots/train_log.csv")
    assert {"epoch", "val_ap"} <= set(log.columns) and len(log) == 2


def test_set_overrides_the_params_file(chain, monkeypatch):
    monkeypatch.chdir(chain)
    ok("train", "--set", "train.head=composite_probe", "--set", "train.epochs=1",
       "--set", "train.lr=1e-3", "--out", "models/probe", "--log", "plots/probe_log.csv")
    bundle = json.loads((chain / "models/probe/config.json").read_text())
    assert bundle["head"]["name"] == "composite_probe"
    assert bundle["training"]["params"]["lr"] == 1e-3
    assert len(pd.read_csv(chain / "plots/probe_log.csv")) == 1


def test_params_option_reads_another_file(chain, monkeypatch, tmp_path):
    monkeypatch.chdir(chain)
    raw = tiny_raw("unused", train={"epochs": 1, "head": "nsnet"})
    other = write_params(tmp_path / "other.yaml", raw)
    ok("train", "--params", str(other), "--out", str(tmp_path / "m"), "--log",
       str(tmp_path / "log.csv"))
    assert json.loads((tmp_path / "m/config.json").read_text())["head"]["name"] == "nsnet"


@pytest.mark.parametrize(("args", "needle"), [
    (("train", "--set", "train.lr=-1"), "train.lr"),
    (("index", "--set", "train.lerning_rate=1"), "train.lerning_rate"),
    (("extract", "--set", "patches.n_low=20"), "patches.n_low"),
    (("evaluate", "--set", "evaluate.threshold=2"), "evaluate.threshold"),
    (("extract", "--set", "caption.max_new_tokens=many"), "caption.max_new_tokens"),
    (("extract", "--set", "data.split.train=0.9"), "data.split"),
    (("extract", "--set", "compute.num_workers=lots"), "compute.num_workers"),
])
def test_bad_param_exits_1_with_one_clear_message(tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml", tiny_raw(tmp_path))
    res = invoke(*args)
    assert res.exit_code == 1, res.output
    assert needle in res.output
    assert "ParamsError" in res.output
    assert "Traceback" not in res.output
    # the params line, then one error line
    assert res.output.strip().splitlines()[0].startswith("params: params.yaml --set ")
    assert len(res.output.strip().splitlines()) == 2
    assert not (tmp_path / "cache").exists()  # validation happens before any work


def test_bad_params_file_exits_1(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("train:\n  epochs: [1\n")
    res = invoke("train")
    assert res.exit_code == 1 and "params.yaml" in res.output
    assert "Traceback" not in res.output


def test_missing_input_exits_1_naming_the_stage_to_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml", tiny_raw(tmp_path))
    res = invoke("extract")
    assert res.exit_code == 1
    assert "manifest.parquet" in res.output and "nsnet index" in res.output
    assert "Traceback" not in res.output


def test_demo_data_writes_images(tmp_path):
    ok("demo-data", str(tmp_path / "d"), "--n-real", "2", "--n-fake-each", "1")
    assert len(list((tmp_path / "d" / "real").glob("*.png"))) == 2
    assert len(list((tmp_path / "d" / "fake").rglob("*.png"))) == 3
