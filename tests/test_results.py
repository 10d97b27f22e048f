"""Results a paper can use: the cross-generator matrix, robustness curves, the report's tables
(Markdown, LaTeX, CSV; a real pdflatex compile where it is installed) and the figures' style."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import (
    build_cache,
    require_system_packages,
    tiny_params,
    tiny_raw,
    write_params,
)
from PIL import Image

from nsnet.config import params_from_dict
from nsnet.data.manifest import read_manifest
from nsnet.data.presets import PUBLISHED
from nsnet.evaluation.compare_stage import run_compare
from nsnet.evaluation.matrix import grid, unseen_mean
from nsnet.extraction.extract_stage import run_extract
from nsnet.reports.matrix_stage import format_matrix, run_matrix
from nsnet.reports.report_stage import run_report
from nsnet.reports.robustness_stage import run_robustness
from nsnet.reports.style import SERIES_COLOURS, text_colour
from nsnet.reports.tables import Cell, Row, Table, latex_escape, to_latex, to_markdown
from nsnet.stages.cli import main

GENERATORS = ["bilinear", "nn_conv", "tconv"]


def _with(params, **train):  # noqa: ANN001, ANN202 - a Params with train.* replaced
    return dataclasses.replace(params, train=dataclasses.replace(params.train, **train))


@pytest.fixture(scope="module")
def matrix_run(built_cache, tmp_path_factory):
    work = tmp_path_factory.mktemp("matrix")
    params = _with(built_cache.params, epochs=3)
    out = run_matrix(params, built_cache.manifest, built_cache.features,
                     work / "matrix.json", work / "matrix.png")
    return work, params, out


def test_matrix_trains_on_each_generator_with_the_reals_and_tests_on_all(matrix_run,
                                                                         built_cache):
    work, _, out = matrix_run
    rows = read_manifest(built_cache.manifest, only_ok=True)
    tested = sorted(set(rows.loc[(rows["split"] == "test") & (rows["label"] == 1), "source"]))
    assert len(tested) >= 2  # the tiny set: a generator may have no test image
    assert out["train_sources"] == GENERATORS and out["columns"] == tested
    assert out["heads"] == ["composite_probe", "nsnet", "advanced"]
    for head in out["heads"]:
        for src in GENERATORS:
            cell = out["cells"][head][src]
            assert cell["training"]["train_sources"] == sorted([src, "real"])
            assert set(cell["test"]["per_source"]) == set(tested)
    assert out["diagonal"] == {g: [g] if g in tested else [] for g in GENERATORS}
    values, std = grid(out, "nsnet", "acc")
    assert values.shape == (3, len(tested) + 1) and std is None
    for i in range(3):  # the last column is the row mean
        assert values[i, -1] == pytest.approx(np.mean(values[i, :-1]))
    off = [values[i, j] for i, g in enumerate(GENERATORS) for j, t in enumerate(tested)
           if g != t]
    assert unseen_mean(out, "nsnet", "acc") == pytest.approx(np.mean(off))
    summary = json.loads((work / "matrix.json").read_text())
    assert summary == {f"{h}_ap": round(unseen_mean(out, h, "ap"), 4) for h in out["heads"]}
    details = json.loads((work / "details" / "matrix.json").read_text())
    assert details["columns"] == tested
    text = format_matrix(out)
    assert "[nsnet] test acc (%): rows = trained on, columns = tested on" in text
    assert len(re.findall(r"\d\*", text)) == 3 * len(tested)  # each head's seen cells


def test_a_matrix_cell_is_that_training_run(matrix_run, built_cache, tmp_path):
    """The tconv row of a head = compare trained on protocol.train_sources [tconv, real]."""
    _, params, out = matrix_run
    one = dataclasses.replace(params, protocol=dataclasses.replace(
        params.protocol, train_sources=["tconv", "real"]))
    res = run_compare(one, built_cache.manifest, built_cache.features, ("advanced",))
    assert out["cells"]["advanced"]["tconv"]["test"]["mean"] == pytest.approx(
        res["heads"]["advanced"]["test"]["mean"])


def test_matrix_heatmap_is_drawn(matrix_run):
    work, _, _ = matrix_run
    with Image.open(work / "matrix.png") as img:
        w, h = img.size
        grey = np.asarray(img.convert("L"), dtype=float)
    assert 500 < w < 3000 and 500 < h < 4000  # three panels at a readable size
    assert grey.std() > 20  # not blank


def test_matrix_sources_param_and_heads_option(built_cache, tmp_path):
    raw = json.loads(json.dumps(built_cache.params.to_dict()))
    raw["train"]["epochs"] = 1
    raw["matrix"] = {"train_sources": ["tconv"], "metric": "ap"}
    params_file = write_params(tmp_path / "params.yaml", raw)
    res = CliRunner().invoke(main, [
        "matrix", "--params", str(params_file), "--manifest", str(built_cache.manifest),
        "--features", str(built_cache.features), "--heads", "composite_probe",
        "--out", str(tmp_path / "m.json"), "--plot", str(tmp_path / "m.png")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "m.json").read_text()).keys() == {"composite_probe_ap"}
    assert "[composite_probe] test ap (%)" in res.stdout
    raw["matrix"] = {"train_sources": ["real"], "metric": "acc"}
    write_params(params_file, raw)
    res = CliRunner().invoke(main, [
        "matrix", "--params", str(params_file), "--manifest", str(built_cache.manifest),
        "--features", str(built_cache.features),
        "--out", str(tmp_path / "m.json"), "--plot", str(tmp_path / "m.png")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "matrix.train_sources: real has no generated training images" in res.output


# ----------------------------------------------------------------------------- robustness
@pytest.fixture(scope="module")
def degraded(built_cache, tmp_path_factory):
    work = built_cache.copy_to(tmp_path_factory.mktemp("robust") / "ws")
    params = tiny_params(built_cache.params.data.roots[0].path,
                         protocol={"degradations": ["jpeg30", "resize64", "blur3"]},
                         train={"epochs": 2, "batch_size": 32})
    run_extract(params, work.manifest, work.features)
    return work, params


def test_robustness_is_compare_under_each_degradation(degraded, tmp_path):
    work, params = degraded
    rob = run_robustness(params, work.manifest, work.features, tmp_path / "rob.json",
                         tmp_path / "rob.png")
    assert rob["degradations"] == ["jpeg30", "resize64", "blur3"]
    res = run_compare(params, work.manifest, work.features, tuple(rob["heads"]))
    for head in rob["heads"]:
        assert list(rob["results"][head]) == ["clean", "jpeg30", "resize64", "blur3"]
        assert rob["results"][head]["clean"]["mean"] == pytest.approx(
            res["heads"][head]["test"]["mean"])
    # the trained bundle's head under each degradation = nsnet evaluate-degraded's numbers
    from nsnet.evaluation.degraded_eval_stage import run_evaluate_degraded
    from nsnet.heads.train_stage import run_train

    run_train(params, work.manifest, work.features, tmp_path / "model", tmp_path / "log.csv")
    bundle = run_evaluate_degraded(params, work.manifest, work.features, tmp_path / "model",
                                   tmp_path / "metrics")
    for name in ("jpeg30", "resize64", "blur3"):
        assert rob["results"][params.train.head][name]["mean"] == pytest.approx(
            bundle[name]["mean"])
    with Image.open(tmp_path / "rob.png") as img:
        assert img.size[0] > 900 and np.asarray(img.convert("L")).std() > 20


# ----------------------------------------------------------------------------- the report
def _fill(folder: Path, n: int, fake: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = rng.integers(0, 256, (64, 64, 3)).astype(np.float32)
        if fake:
            img[::2, ::2] = 255 - img[::2, ::2] * 0.2
        Image.fromarray(img.astype(np.uint8)).save(folder / f"{folder.parent.name}{i:02d}.png")


@pytest.fixture(scope="module")
def genimage_report(tmp_path_factory):
    """A GenImage tree (3 of its 8 generators), compare over 2 seeds, then the report."""
    base = tmp_path_factory.mktemp("gireport")
    root = base / "GenImage"
    for k, gen in enumerate(("stable_diffusion_v_1_4", "imagenet_ai_0508_adm",
                             "imagenet_midjourney")):
        for split, n in (("train", 6), ("val", 3)):
            _fill(root / gen / split / "ai", n, True, 10 * k + n)
            _fill(root / gen / split / "nature", n, False, 10 * k + n + 1)
    raw = tiny_raw(root, train={"epochs": 2, "batch_size": 8, "seeds": [0, 1]},
                   caption={"max_new_tokens": 4})
    raw["protocol"]["preset"] = "genimage"
    params = params_from_dict(raw)
    work = base / "ws"
    cache = build_cache(work, params)
    metrics = work / "metrics"
    run_compare(params, cache.manifest, cache.features,
                ("composite_probe", "nsnet"), metrics / "compare.json")
    run_matrix(params, cache.manifest, cache.features, metrics / "matrix.json",
               work / "matrix.png", heads=("composite_probe",))
    files = {"compare": metrics / "details" / "compare.json",
             "evaluate": metrics / "details" / "metrics.json",  # absent: compare gives rows
             "matrix": metrics / "details" / "matrix.json",
             "robustness": metrics / "details" / "robustness.json"}
    return work, files, {fmt: run_report(fmt, files) for fmt in ("markdown", "latex", "csv")}


ROWS = ["Midjourney", "SD V1.4", "ADM"]  # GenImage's Table 3 order, those present


def _tabulars(latex: str) -> list[list[list[str]]]:
    """Each tabular's rows (between \\midrule / \\toprule and \\bottomrule) split on &."""
    out = []
    for body in re.findall(r"\\begin\{tabular\}\{[lr]+\}(.*?)\\end\{tabular\}", latex, re.S):
        rows = [line.rstrip("\\ ").split(" & ") for line in body.strip().splitlines()
                if line.endswith("\\\\") and not line.startswith("\\multicolumn")]
        out.append(rows)
    return out


def test_latex_structure_booktabs_bold_best_and_quoted_rows(genimage_report):
    _, _, out = genimage_report
    latex = out["latex"]
    assert latex.count("\\begin{table}") == latex.count("\\end{table}") == 3  # acc, AP, matrix
    assert latex.count("\\toprule") == latex.count("\\bottomrule") == 3
    for spec, body in re.findall(r"\\begin\{tabular\}\{([lr]+)\}(.*?)\\end\{tabular\}", latex,
                                 re.S):
        rows = [r for r in body.strip().splitlines() if r.endswith("\\\\")
                and not r.startswith("\\multicolumn")]
        assert all(r.count(" & ") == len(spec) - 1 for r in rows), body
        assert body.count("{") == body.count("}")
    acc, ap, matrix = _tabulars(latex)
    assert acc[0] == ["Method", *ROWS, "mean (3/8 rows)"]
    ours = acc[1:3]
    assert [r[0] for r in ours] == ["composite\\_probe", "nsnet"]
    assert all("$\\pm$" in cell for r in ours for cell in r[1:])  # 2 seeds: every number
    quoted = acc[3:]  # the published means, after ours, each with the mean column alone
    assert [r[0] for r in quoted] == [latex_escape(p.title) for p in PUBLISHED["genimage"]]
    assert all(r[1:-1] == ["--"] * len(ROWS) for r in quoted)
    assert [r[-1].replace("\\textbf{", "").rstrip("}") for r in quoted] == [
        f"{p.acc:.1f}" for p in PUBLISHED["genimage"]]
    assert "\\emph{quoted (published, not measured here)}" in latex
    # the best of each column is bold (ties all bold), nothing else
    for j in range(1, len(acc[0])):
        cells = [r[j] for r in acc[1:] if r[j] != "--"]
        values = [float(re.search(r"\d+\.\d", c).group()) for c in cells]
        for cell, value in zip(cells, values, strict=True):
            assert cell.startswith("\\textbf{") == (value == max(values) and
                                                    len(values) > 1), (cell, values)
    assert len(ap) == 3  # header + ours: GenImage's published figures have no AP
    assert matrix[0][0] == "Trained on" and [r[0] for r in matrix[1:]] == [
        "ADM", "Midjourney", "SDv1.4"]
    assert "\\textbf" not in "".join(c for r in matrix for c in r)


def test_markdown_and_csv_have_the_same_numbers(genimage_report):
    _, _, out = genimage_report
    md = out["markdown"]
    tables = [b for b in md.split("### ")[1:]]
    assert tables[0].startswith("Test accuracy (%) on genimage")
    lines = [line for line in tables[0].splitlines() if line.startswith("|")]
    assert lines[0] == "| Method | " + " | ".join(ROWS) + " | mean (3/8 rows) |"
    assert all(line.count("|") == len(ROWS) + 3 for line in lines)
    assert any("(quoted)" in line for line in lines)
    blocks = out["csv"].split("\n\n")
    rows = list(csv.reader(io.StringIO(blocks[0])))
    assert rows[0] == ["Test accuracy (%) on genimage"]
    assert rows[1][:4] == ["Method", "quoted", "Midjourney", "Midjourney std"]
    nsnet = next(r for r in rows if r[0] == "nsnet")
    md_nsnet = next(line for line in lines if line.startswith("| nsnet"))
    first = md_nsnet.split("|")[2].strip().replace("**", "")
    assert first == f"{float(nsnet[2]):.1f} ± {float(nsnet[3]):.1f}"


def test_report_is_deterministic_and_the_cli_writes_each_format(genimage_report, tmp_path):
    work, files, out = genimage_report
    assert run_report("latex", files) == out["latex"]
    args = ["report", *(f"--{k}={v}" for k, v in files.items())]
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "t.md"),
                                    "--out", str(tmp_path / "t.tex")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "t.md").read_text() == out["markdown"]
    assert (tmp_path / "t.tex").read_text() == out["latex"]
    assert res.stdout == "" and f"report: {tmp_path / 't.md'}, {tmp_path / 't.tex'}" in res.output
    res = CliRunner().invoke(main, [*args, "--format", "csv"])
    assert res.exit_code == 0 and res.stdout == out["csv"]
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "t.pdf")])
    assert res.exit_code != 0 and "name a .md, .tex or .csv file" in res.output
    res = CliRunner().invoke(main, ["report", "--compare", str(tmp_path / "none.json"),
                                    "--evaluate", str(tmp_path / "none.json")])
    assert res.exit_code == 1 and "run `nsnet compare` or `nsnet evaluate`" in res.output


def _bold_of(values: list[float | None], std: float | None = None) -> dict[str, list[bool]]:
    """Which cells of a one-column table print bold, per format (a row per value)."""
    rows = [Row(f"m{i}", [Cell(v, None if v is None else std)]) for i, v in enumerate(values)]
    table = Table("acc", "t", "Method", ["c"], rows)
    md = [line for line in to_markdown([table]).splitlines() if line.startswith("| m")]
    tex = [line for line in to_latex([table]).splitlines() if line.startswith("m")]
    return {"markdown": ["**" in line for line in md],
            "latex": ["\\textbf{" in line for line in tex]}


@pytest.mark.parametrize(("values", "bold"), [
    ([0.5, 0.5, 0.4], [True, True, False]),  # a 2-way tie: both
    ([0.3, 0.833, 0.833, 0.833], [False, True, True, True]),  # 3-way: all three
    ([0.83329, 0.8334, 0.5], [True, True, False]),  # tied once printed (83.3): both
    ([0.8334, 0.8336, 0.5], [False, True, False]),  # 83.3 < 83.4: printed apart
    ([0.49999, 0.5, 0.4], [True, True, False]),  # 50.0 and 50.0
    ([0.6, 0.6, 0.6], [True, True, True]),  # every method alike: all bold
    ([0.6, None, 0.6], [True, False, True]),  # a dash is never bold
    ([0.7, None], [False, False]),  # one number: nothing to compare, plain
])
def test_bold_is_every_cell_printing_the_columns_best(values, bold):
    assert _bold_of(values) == {"markdown": bold, "latex": bold}
    assert _bold_of(values, std=0.012) == {"markdown": bold, "latex": bold}  # std aside


def test_bold_marks_the_value_not_its_std_and_never_the_matrix():
    rows = [Row("a", [Cell(0.5, 0.01)]), Row("b", [Cell(0.5, 0.02)]), Row("c", [Cell(0.4)])]
    table = Table("acc", "t", "Method", ["c"], rows)
    assert "| a | **50.0** ± 1.0 |" in to_markdown([table])
    assert "a & \\textbf{50.0} $\\pm$ 1.0 \\\\" in to_latex([table])
    matrix = Table("matrix-x", "t", "Trained on", ["c"], rows, bold_best=False)
    assert "**" not in to_markdown([matrix]) and "\\textbf" not in to_latex([matrix])


def test_latex_escape():
    assert latex_escape("glide_100_27 & 50% #1 †") == r"glide\_100\_27 \& 50\% \#1 $^\dagger$"


def _pdflatex() -> str | None:
    exe = shutil.which("pdflatex")
    if exe is None:
        return None
    found = subprocess.run(["kpsewhich", "booktabs.sty"], capture_output=True, text=True)
    return exe if found.stdout.strip() else None


@pytest.mark.slow
def test_latex_compiles_with_pdflatex(genimage_report, tmp_path):
    exe = _pdflatex()
    require_system_packages("texlive-latex-base texlive-latex-recommended", exe is not None)
    _, _, out = genimage_report
    doc = tmp_path / "tables.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage[T1]{fontenc}\n"
                   "\\usepackage{booktabs}\n\\usepackage{graphicx}\n\\begin{document}\n"
                   + out["latex"] + "\\end{document}\n")
    res = subprocess.run([exe, "-interaction=nonstopmode", "-halt-on-error", doc.name],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:]
    assert (tmp_path / "tables.pdf").stat().st_size > 1000
    log = (tmp_path / "tables.log").read_text(errors="replace")
    assert "Undefined control sequence" not in log and "Missing $" not in log


# ----------------------------------------------------------------------------- style
def test_style_series_colours_differ_and_text_reads_on_every_cell():
    from matplotlib import colormaps
    from matplotlib.colors import to_rgb

    assert len(set(SERIES_COLOURS)) == len(SERIES_COLOURS) == 8
    cmap = colormaps["cividis"]
    for v in np.linspace(0, 1, 21):
        r, g, b, _ = cmap(v)
        lum = 0.2126 * r + 0.7152 * g + 0.0722 * b
        text = to_rgb(text_colour(cmap(v)))
        text_lum = 0.2126 * text[0] + 0.7152 * text[1] + 0.0722 * text[2]
        assert abs(lum - text_lum) > 0.4, v  # black on light cells, white on dark ones


def test_a_matrix_row_without_validation_fakes_decides_at_half():
    import pandas as pd
    import torch

    from nsnet.data.experiment import resolve_experiment
    from nsnet.evaluation.matrix import decision_for
    from nsnet.extraction.cached_features import FeatureSet

    rows = [(f"r{s}{i}", "real", s, 0) for s in ("train", "val", "test") for i in range(2)]
    rows += [(f"t{s}{i}", "tconv", s, 1) for s in ("train", "test") for i in range(2)]
    frame = pd.DataFrame(rows, columns=["id", "source", "split", "label"]).assign(path="")
    fs = FeatureSet(frame, torch.zeros(len(frame), 4), torch.zeros(len(frame), 4), {})
    raw = tiny_raw("unused", evaluate={"threshold": "val_acc", "calibration": "platt"})
    params = params_from_dict(raw)
    exp = resolve_experiment(params, frame).with_training(["tconv"])
    changed, note = decision_for(params, exp, fs)
    assert (changed.evaluate.threshold, changed.evaluate.calibration) == (0.5, "none")
    assert note == "no fake validation images of tconv, real: decided at 0.5, uncalibrated"
    fixed = params_from_dict(tiny_raw("unused"))  # 0.5, none: nothing to fit, no note
    assert decision_for(fixed, exp, fs) == (fixed, "")
