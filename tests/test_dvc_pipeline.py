"""The real `dvc` pipeline: dvc.yaml agrees with the CLI, and in a fresh workspace it builds,
is then up to date, re-runs only the training side when a train parameter changes, reports,
and re-runs a stage only for the params and files it reads.

One workspace is built for the module (tiny demo set, tiny backbones, few epochs) and the slow
tests run in file order: the last one leaves its params and images changed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from nsnet.config import Params
from nsnet.data.demo_data import DEMO_VALUES, IMPORT_DIR, make_workspace
from nsnet.data.manifest import read_manifest
from nsnet.data.params_text import edit_params_text
from nsnet.stages.cli import main
from tests.conftest import fast_values, workspace_params

ROOT = Path(__file__).resolve().parents[1]
FEATURE_STAGES = ("scan", "index", "extract")
PNGS = ("plots/roc.png", "plots/pr.png", "plots/confusion.png", "plots/reliability.png",
        "plots/train_log.png", "plots/tsne.png")
TRAIN_SIDE = ("train", "evaluate", "compare")
FEATURE_OUTS = ("cache/manifest.parquet", "cache/index_report.json", "cache/listing.parquet")
OUTS = ("cache/manifest.parquet", "cache/index_report.json", "cache/listing.parquet",
        "models/detector/config.json",
        "models/detector/model.safetensors", "plots/train_log.csv", "metrics/metrics.json",
        "plots/roc.csv", "plots/pr.csv", "plots/confusion.csv", "metrics/compare.json",
        "metrics/audit.json", "plots/reliability.csv", *PNGS, "metrics/matrix.json",
        "plots/matrix.png", "metrics/details/robustness.json", "plots/robustness.png",
        "plots/curves.png", "reports/tables.md", "reports/tables.tex", "reports/tables.csv")
GIT_ID = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@localhost",
          "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@localhost"}


def _env() -> dict[str, str]:
    env = {**os.environ, **GIT_ID, "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}
    env["PYTHONPATH"] = IMPORT_DIR  # the workspace's own copy of pipeline/ and stages/ runs
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny models: one thread is fastest on a busy box
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def sh(ws: Path, *cmd: str) -> str:
    """Run a command in the workspace; fail with its output if it fails."""
    res = subprocess.run(cmd, cwd=ws, env=_env(), capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"{' '.join(cmd)} exited {res.returncode}:\n{out}"
    return out


def ran(out: str) -> set[str]:
    return set(re.findall(r"Running stage '([\w-]+)'", out))


def skipped(out: str) -> set[str]:
    return set(re.findall(r"Stage '([\w-]+)' didn't change, skipping", out))


# ----------------------------------------------------------------------------- dvc.yaml


def stages_of(dvc_yaml: Path) -> dict[str, dict[str, Any]]:
    return yaml.safe_load(dvc_yaml.read_text())["stages"]


def _paths(entries: list[Any] | None) -> list[str]:
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]


def produced(stage: dict[str, Any]) -> list[str]:
    return [*_paths(stage.get("outs")), *_paths(stage.get("metrics")), *_paths(stage.get("plots"))]


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def reads(stage: dict[str, Any], key: str) -> bool:
    """Whether a stage depends on params key ``key`` (listed, or its section is)."""
    return any(key == p or key.startswith(f"{p}.") for p in stage.get("params", []))


def reruns(stages: dict[str, dict[str, Any]], key: str = "train.lr") -> set[str]:
    """Stages a change of params key ``key`` re-runs: those reading it, and all downstream."""
    hit = {name for name, st in stages.items() if reads(st, key)}
    while True:
        outs = [o for name in hit for o in produced(stages[name])]
        more = {name for name, st in stages.items() if name not in hit
                and any(_under(d, o) or _under(o, d) for d in _paths(st.get("deps")) for o in outs)}
        if not more:
            return hit
        hit |= more


def test_dvc_yaml_params_are_real_keys():
    known = Params().to_dict()
    for name, stage in stages_of(ROOT / "dvc.yaml").items():
        for key in stage.get("params", []):
            node: Any = known
            for part in str(key).split("."):
                assert isinstance(node, dict) and part in node, f"{name}: unknown param {key}"
                node = node[part]


def test_feature_stages_do_not_depend_on_training():
    stages = stages_of(ROOT / "dvc.yaml")
    for name in FEATURE_STAGES:
        for key in stages[name].get("params", []):
            if key in ("protocol.train_reencode", "protocol.degradations",  # change pixels
                       "train.head"):  # which recipe extract computes
                continue
            assert str(key).split(".")[0] not in ("train", "evaluate", "protocol"), (name, key)
    assert set(TRAIN_SIDE) <= reruns(stages)
    assert not set(FEATURE_STAGES) & reruns(stages)


# Settings that change how fast, not what (nsnet.runtime resolves their `auto`).
MACHINE_KEYS = ("compute.device", "compute.num_workers", "compute.torch_threads",
                "compute.shard_size", "compute.scheduler", "clip.batch_size",
                "caption.batch_size", "data.num_workers", "train.device")


def test_no_stage_depends_on_a_machine_setting():
    for name, stage in stages_of(ROOT / "dvc.yaml").items():
        for key in MACHINE_KEYS:
            assert not reads(stage, key), (name, key)


def test_feature_readers_depend_on_the_catalogs_of_what_they_read():
    """Not on the whole store: only the stages scoring degraded copies on degraded.json."""
    for name, stage in stages_of(ROOT / "dvc.yaml").items():
        deps = _paths(stage.get("deps"))
        assert "cache/features" not in deps, name
        if "--features" in stage["cmd"] and name != "extract":
            assert "cache/features/clean.json" in deps, name
            degraded = "cache/features/degraded.json" in deps
            assert degraded == reads(stage, "protocol.degradations"), name
            assert degraded == (name in ("evaluate_degraded", "robustness")), name


DATA_DIRS = ("cache", "models", "metrics", "plots", "data")


def _cmd_paths(cmd: str) -> dict[str, str]:
    """``--option path`` pairs of a stage's cmd whose path lies in one of the data folders."""
    argv = cmd.split()
    return {opt: val for opt, val in zip(argv, argv[1:], strict=False)
            if opt.startswith("--") and val.split("/")[0] in DATA_DIRS}


def test_each_stage_cmd_names_every_path_dvc_yaml_declares():
    """dvc.yaml is the one place that names the data paths: each cmd passes them explicitly,
    every path it passes is declared, and every declared data path is passed."""
    for name, stage in stages_of(ROOT / "dvc.yaml").items():
        argv = stage["cmd"].split()
        assert argv[0] == "nsnet" and argv[1] in main.commands, stage["cmd"]
        command = main.commands[argv[1]]
        options = {o for p in command.params if isinstance(p, click.Option) for o in p.opts}
        passed = _cmd_paths(stage["cmd"])
        assert set(passed) <= options, f"{name}: unknown options {set(passed) - options}"
        declared = [*_paths(stage.get("deps")), *produced(stage)]
        for path in passed.values():
            assert any(_under(d, path) or _under(path, d) for d in declared), (
                f"stage {name}: `{stage['cmd']}` uses {path}, which dvc.yaml does not declare")
        for path in declared:  # a declared folder (report's metrics/details) holds passed files
            if path.split("/")[0] in DATA_DIRS and path != "data":
                assert any(_under(path, p) or _under(p, path) for p in passed.values()), (
                    f"stage {name}: dvc.yaml declares {path} but the cmd does not pass it")
        # Every default data path of the command is overridden in the cmd.
        for p in command.params:
            if isinstance(p, click.Option) and isinstance(p.default, str) and \
                    p.default.split("/")[0] in DATA_DIRS and p.name != "composites":
                assert set(p.opts) & set(passed), f"{name}: cmd relies on {p.opts[0]}'s default"


def test_each_stage_depends_on_the_code_it_runs():
    stages = stages_of(ROOT / "dvc.yaml")
    code = {name: [d for d in _paths(st.get("deps")) if d.startswith("pipeline")]
            for name, st in stages.items()}
    for name, deps in code.items():
        assert deps, f"stage {name} lists none of the code it runs"
        for dep in deps:
            assert (ROOT / dep).exists(), f"stage {name}: {dep} does not exist"
    uses = {name: {d for d in deps} for name, deps in code.items()}
    assert any(_under("pipeline/extraction/patch_selection.py", d) for d in uses["extract"])
    assert any(_under("pipeline/heads/detectors.py", d) for d in uses["train"])
    for name in FEATURE_STAGES:
        assert not any(_under("pipeline/heads/detectors.py", d) for d in uses[name]), name


def test_dvc_yaml_declares_the_detector_artifact():
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    artifact = spec["artifacts"]["detector"]
    assert artifact["type"] == "model" and artifact["desc"]
    assert artifact["path"] in produced(spec["stages"]["train"])


# ----------------------------------------------------------------------------- real dvc


def init_workspace(ws: Path) -> None:
    """What `make demo` does before `dvc repro` (tested against the Makefile below): git and
    DVC, a link cache type, the images tracked by `dvc add`, one commit."""
    sh(ws, "git", "init", "-q")
    sh(ws, "dvc", "init", "-q")
    sh(ws, "dvc", "config", "cache.type", LINK_TYPES)
    sh(ws, "dvc", "add", "-q", "data/demo")
    sh(ws, "git", "add", "-A")
    sh(ws, "git", "commit", "-qm", "workspace")


LINK_TYPES = "hardlink,symlink"


def test_make_demo_sets_up_the_workspace_as_the_tests_do():
    out = subprocess.run(["make", "-n", "demo", "BIN=/bin"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60).stdout
    for step in ("git init", "dvc init", f"dvc config cache.type {LINK_TYPES}",
                 "dvc add -q data/demo", "dvc repro"):
        assert step in out, step
    assert out.index("dvc add") < out.index("dvc repro")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    # The demo's values on the code's defaults (not the user's params.yaml), small and fast;
    # 12 images per generator leave no tconv image in val, and the decision rule needs both
    # labels there: train on every source.
    values = {**DEMO_VALUES, **fast_values(), "data.roots": ["data/demo"], "train.epochs": 2,
              "protocol.train_sources": []}
    ws = make_workspace(tmp_path_factory.mktemp("dvc") / "ws", ROOT, code="copy",
                        params=workspace_params(), values=values, n_real=24, n_fake_each=12,
                        size=128)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    assert params["train"]["lr"] != 0.0005  # the last test changes it to this value
    init_workspace(ws)
    out = sh(ws, "dvc", "repro")
    sh(ws, "git", "add", "-A")
    sh(ws, "git", "commit", "-qm", "first run")
    return ws, out


@pytest.mark.slow
def test_repro_runs_every_stage_and_writes_every_out(workspace):
    ws, out = workspace
    stages = stages_of(ws / "dvc.yaml")
    assert ran(out) == set(stages), out
    for rel in OUTS:
        assert (ws / rel).is_file() and (ws / rel).stat().st_size > 0, rel
    for stage in stages.values():
        for rel in produced(stage):
            assert (ws / rel).exists(), rel
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(stages)
    # The expensive stages depend on their own params only, never on train.* (but extract on
    # train.head, the recipe it computes).
    for stage in FEATURE_STAGES:
        keys = lock["stages"][stage].get("params", {}).get("params.yaml", {})
        assert not {k for k in keys if k.split(".")[0] == "train"} - {"train.head"}, stage
    assert "train.lr" in lock["stages"]["train"]["params"]["params.yaml"]
    # The demo workspace prints the shortcut audit and the calibrated decision table.
    assert "audit: 60 images, headers only" in out and "label real" in out
    assert "no metadata shortcut above audit.warn_auc=0.8" in out
    assert "(evaluate.threshold=val_acc, calibration platt)" in out
    assert "calibration (platt): ECE" in out


@pytest.mark.slow
def test_second_repro_is_up_to_date(workspace):
    """Only the stat-only `scan` runs (always); its listing is unchanged, so nothing else."""
    ws, _ = workspace
    out = sh(ws, "dvc", "repro")
    assert ran(out) == {"scan"}, out
    assert skipped(out) == set(stages_of(ws / "dvc.yaml")) - {"scan"}, out
    assert _up_to_date(sh(ws, "dvc", "status"))
    assert sh(ws, "git", "status", "--porcelain") == ""  # nothing untracked or modified


def _up_to_date(status: str) -> bool:
    """`dvc status` lists nothing but the always-run scan stage."""
    lines = [x.strip() for x in status.splitlines() if x.strip()]
    return lines in ([], ["scan:", "always changed"]) or "up to date" in status


@pytest.mark.slow
def test_metrics_and_plots_show(workspace, tmp_path):
    ws, _ = workspace
    metrics = json.loads(sh(ws, "dvc", "metrics", "show", "--json"))
    data = metrics[""]["data"]
    test_mean = data["metrics/metrics.json"]["data"]
    assert set(test_mean) == {"acc", "ap", "threshold"}
    assert 0.0 <= test_mean["acc"] <= 1.0
    assert set(data["metrics/degradations.json"]["data"]) == {"degraded_ap"}
    assert set(data) == {"metrics/metrics.json", "metrics/degradations.json",
                         "metrics/audit.json"}  # not details; compare/matrix are plain outputs
    heads = ("composite_probe", "nsnet", "advanced", "univfd", "rine", "cozzolino")
    compared = json.loads((ws / "metrics/compare.json").read_text())
    assert set(compared) == {f"{h}_ap" for h in heads}  # every head, from one extraction
    # the matrix's compact numbers share compare's column names (each head's unseen-cell AP)
    matrix = json.loads((ws / "metrics/matrix.json").read_text())
    assert set(matrix) == set(compared)
    details = json.loads((ws / "metrics/details/metrics.json").read_text())
    assert details["test"]["mean"]["acc"] == pytest.approx(test_mean["acc"], abs=1e-4)
    assert "metrics/metrics.json" in sh(ws, "dvc", "metrics", "show")
    out_dir = tmp_path / "plots_html"
    sh(ws, "dvc", "plots", "show", "-o", str(out_dir))
    html = (out_dir / "index.html").read_text()
    for name in ("roc.csv", "pr.csv", "confusion.csv", "train_log.csv", "matrix.png",
                 "robustness.png", "curves.png"):
        assert name in html, name
    for png in PNGS:  # every curve also as a picture, copied beside the page
        static = f"static/workspace_{png.replace('/', '_')}"
        assert f'<img src="{static}">' in html and (out_dir / static).stat().st_size, png
    tables = (ws / "reports/tables.md").read_text()
    assert tables.startswith("### Test accuracy (%)") and "Cross-generator matrix" in tables
    assert data["metrics/audit.json"]["data"]["metadata_auc"] <= 0.8
    audit = json.loads((ws / "metrics/details/audit.json").read_text())
    assert audit["classifier"]["warning"] is False
    decision = details["decision"]
    assert (decision["rule"], decision["calibration"]) == ("val_acc", "platt")
    assert data["metrics/metrics.json"]["data"]["threshold"] == round(decision["threshold"], 4)


@pytest.mark.slow
def test_metrics_show_fits_in_200_columns(workspace):
    ws, _ = workspace
    out = sh(ws, "dvc", "metrics", "show")
    widths = [len(line) for line in out.splitlines()]
    assert widths and max(widths) <= 200, out
    for name in ("acc", "ap", "threshold", "degraded_ap", "metadata_auc"):
        assert name in out.split(), out


def test_make_demo_commits_the_baseline_run():
    """`dvc exp show --only-changed` needs the baseline's dvc.lock and metrics in git."""
    out = subprocess.run(["make", "-n", "demo", "BIN=/bin"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60).stdout
    repro = out.index("dvc repro")
    assert "commit" in out[repro:] and "git add -A" in out[repro:], out


@pytest.mark.slow
def test_train_param_change_reruns_only_train_evaluate_compare(workspace):
    ws, _ = workspace
    feature_side = [*FEATURE_OUTS, *sorted((ws / "cache" / "features").rglob("*.h5"))]
    cached = {p: (ws / p).stat().st_mtime_ns for p in feature_side}
    old_model = (ws / "models/detector/model.safetensors").read_bytes()
    out = sh(ws, "dvc", "exp", "run", "-S", "train.lr=0.0005")
    stages = stages_of(ws / "dvc.yaml")
    expected = reruns(stages, "train.lr")
    assert set(TRAIN_SIDE) <= expected
    assert ran(out) - {"scan"} == expected, out  # scan always runs (a stat-only walk)
    assert skipped(out) == set(stages) - expected - {"scan"}, out
    assert not ran(out) & {"index", "extract"}
    assert yaml.safe_load((ws / "params.yaml").read_text())["train"]["lr"] == 0.0005
    assert {p: (ws / p).stat().st_mtime_ns for p in feature_side} == cached  # untouched
    bundle = json.loads((ws / "models/detector/config.json").read_text())
    assert bundle["training"]["params"]["lr"] == 0.0005
    assert (ws / "models/detector/model.safetensors").read_bytes() != old_model
    assert _up_to_date(sh(ws, "dvc", "status"))
    # The experiment recorded its metrics (they are in git, not ignored).
    exps = json.loads(sh(ws, "dvc", "exp", "show", "--json"))
    revs = [r for c in exps for e in (c.get("experiments") or []) for r in e["revs"]]
    assert revs, exps
    metrics = revs[0]["data"]["metrics"]["metrics/metrics.json"]
    assert "error" not in metrics, metrics
    assert metrics["data"]["acc"] is not None


def on_a_terminal(ws: Path, *cmd: str, columns: int = 120) -> str:
    """Run a command on a pseudo-terminal ``columns`` wide (as a person sees it); the text
    without colour codes."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {**_env(), "COLUMNS": str(columns), "TERM": "xterm"}
    proc = subprocess.Popen(cmd, cwd=ws, env=env, stdin=slave, stdout=slave, stderr=slave,
                            close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the other side closed
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(300) == 0, b"".join(chunks).decode(errors="replace")
    os.close(master)
    text = b"".join(chunks).decode(errors="replace").replace("\r", "")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


@pytest.mark.slow
def test_exp_show_only_changed_shows_the_changed_parameter_in_120_columns(workspace):
    """After `dvc exp run -S train.lr=0.0005` (the test above), the comparison a person runs
    fits a 120-column terminal with the parameter that changed in view: the DVC metrics are
    few and short (acc, ap, threshold, degraded_ap)."""
    ws, _ = workspace
    out = on_a_terminal(ws, "dvc", "exp", "show", "--only-changed", "--no-pager")
    lines = [line for line in out.splitlines() if line.strip()]
    assert max(len(line) for line in lines) <= 120, out
    header = next(line for line in lines if "Experiment" in line)
    for column in ("ap", "threshold", "train.lr"):  # acc may not change on this tiny set
        assert column in header.split(), out
    assert any("0.0005" in line for line in lines), out


def _edit(path: Path, old: str = "", new: str = "") -> None:
    text = path.read_text()
    if old:
        assert old in text
        path.write_text(text.replace(old, new))
    else:
        path.write_text(text + "\n# an edit that changes no behaviour\n")


@pytest.mark.slow
def test_code_edits_rerun_exactly_the_stages_that_run_that_code(workspace):
    """Editing the patch selection's code re-runs extract and everything after it, and inside
    extract recomputes only the parts that code computes (BLIP does not run); a comment
    elsewhere in the file invalidates no feature; editing a head re-runs only the head
    stages."""
    ws, _ = workspace
    stages = stages_of(ws / "dvc.yaml")
    _edit(ws / "pipeline/extraction/patch_selection.py")
    out = sh(ws, "dvc", "repro")
    assert ran(out) == {"scan", "extract"}, out  # extract's code changed ...
    assert "all up to date in the store" in out, out  # ... but not a function of a feature,
    # so no part was computed, the store did not change, and nothing downstream re-ran
    _edit(ws / "pipeline/extraction/patch_selection.py", "(what the cache stores)",
          "(what the store keeps)")
    out = sh(ws, "dvc", "repro")
    line = next(x for x in out.splitlines() if x.startswith("extract:") and "computed" in x)
    assert "selection" in line and "image:0" in line and "caption" not in line, line
    assert ran(out) == set(stages) - {"index", "audit"}, out  # audit reads the manifest only
    sh(ws, "git", "add", "-A")
    sh(ws, "git", "commit", "-qm", "patch selection edited")
    _edit(ws / "pipeline/heads/detectors.py")
    out = sh(ws, "dvc", "repro")
    assert ran(out) == {"scan", "train", "evaluate", "evaluate_degraded", "compare", "matrix",
                        "robustness", "report", "tsne"}, out
    assert _up_to_date(sh(ws, "dvc", "status"))


@pytest.mark.slow
def test_plots_page_shows_every_picture_with_the_network_blocked(workspace, tmp_path):
    """`dvc plots show` loads its chart library from a CDN, so offline its CSV plots are blank;
    the PNG pictures must show anyway. Headless Chromium, network emulated offline: the CDN
    script is not there, and every picture is decoded and visibly drawn (screenshot)."""
    import io

    import numpy as np
    from PIL import Image

    from tests.test_serve import browser_driver

    ws, _ = workspace
    out_dir = tmp_path / "plots_html"
    sh(ws, "dvc", "plots", "show", "-o", str(out_dir))
    browser = browser_driver()
    try:
        browser.execute_cdp_cmd("Network.enable", {})
        browser.execute_cdp_cmd("Network.emulateNetworkConditions", {
            "offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0})
        browser.get((out_dir / "index.html").as_uri())
        assert browser.execute_script("return typeof vegaEmbed") == "undefined"  # offline
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete,"
            " i.naturalWidth])")
        shown = {src.split("workspace_plots_")[-1]: (done, width) for src, done, width in images}
        assert set(shown) >= {Path(p).name for p in PNGS}, images
        for name, (done, width) in shown.items():
            assert done and width > 200, (name, done, width)
        from selenium.webdriver.common.by import By

        for element in browser.find_elements(By.TAG_NAME, "img"):
            browser.execute_script("arguments[0].scrollIntoView()", element)
            shot = np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("L"))
            assert shot.std() > 10, element.get_attribute("src")  # a drawn picture, not blank
        browser.save_screenshot(str(tmp_path / "plots_offline.png"))
    finally:
        browser.quit()


def out_of_date(ws: Path) -> set[str]:
    """The stages `dvc status` finds changed (their own params or deps), but the always-run
    scan."""
    stages = set(stages_of(ws / "dvc.yaml"))
    return set(json.loads(sh(ws, "dvc", "status", "--json"))) & stages - {"scan"}


@pytest.mark.slow
def test_stages_rerun_only_for_what_they_read(workspace):
    """train.head is read by extract (which recipe it computes) and train alone: compare,
    matrix and robustness train every head. Two broken files re-run index only: the manifest
    stays byte for byte (they are in the report). A new degradation's copies leave the clean
    features' catalog as it was: of the stages after extract, only those scoring degraded
    copies are out of date, never train."""
    ws, _ = workspace
    stages = stages_of(ws / "dvc.yaml")
    assert out_of_date(ws) == set()
    params = ws / "params.yaml"
    text = params.read_text()
    assert yaml.safe_load(text)["train"]["head"] != "nsnet"
    params.write_text(edit_params_text(text, {"train.head": "nsnet"}))
    assert {name for name, st in stages.items() if reads(st, "train.head")} == {"extract",
                                                                                 "train"}
    assert out_of_date(ws) == {"extract", "train"}  # not compare, matrix or robustness
    params.write_text(text)

    manifest = (ws / "cache/manifest.parquet").read_bytes()
    demo = ws / "data" / "demo"
    (demo / "real" / "broken.png").write_bytes(b"not an image")
    cut = next((demo / "fake" / "tconv").glob("*.png")).read_bytes()[:400]
    (demo / "fake" / "tconv" / "cut.png").write_bytes(cut)
    out = sh(ws, "dvc", "repro", "index")
    assert ran(out) == {"scan", "index"}, out
    assert (ws / "cache/manifest.parquet").read_bytes() == manifest
    report = json.loads((ws / "cache/index_report.json").read_text())
    assert {Path(s["path"]).name: s["status"] for s in report["skipped"]} == {
        "broken.png": "not_an_image", "cut.png": "corrupt"}
    assert out_of_date(ws) == set()  # audit, extract and the heads: unchanged inputs

    degradations = yaml.safe_load(text)["protocol"]["degradations"]
    assert "jpeg65" not in degradations
    params.write_text(edit_params_text(text, {"protocol.degradations": [*degradations,
                                                                        "jpeg65"]}))
    out = sh(ws, "dvc", "repro", "extract")
    line = next(x for x in out.splitlines() if x.startswith("extract:") and "rows" in x)
    n_test = int((read_manifest(ws / "cache/manifest.parquet")["split"] == "test").sum())
    assert f"{n_test} jpeg65" in line and f"computed {n_test} " in line, line  # their copies
    assert out_of_date(ws) == {"evaluate_degraded", "robustness"}
