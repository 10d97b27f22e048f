"""The evaluation's curves as PNG pictures (viewable offline): labelled axes, one colour per
series, empty reliability bins as gaps; `nsnet evaluate` draws them beside the CSV plots."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from matplotlib.colors import to_hex
from PIL import Image

from nsnet.heads.train_stage import run_train
from nsnet.reports import curves
from nsnet.reports.figures import render_tsne
from nsnet.reports.report_stage import draw_curves
from nsnet.reports.result_figures import render_robustness
from nsnet.stages.cli import main
from tests.conftest import write_params


def _bins() -> pd.DataFrame:
    centers = (np.arange(15) + 0.5) / 15
    n_raw = np.array([0, 0, 3, 0, 5, 9, 0, 0, 4, 0, 0, 2, 0, 0, 1])
    n_cal = np.array([4, 0, 0, 6, 0, 0, 3, 0, 0, 5, 0, 0, 0, 7, 0])
    frac = np.linspace(0.1, 0.9, 15)
    return pd.DataFrame({"bin_center": centers, "perfect": centers,
                         "frac_fake_raw": np.where(n_raw > 0, frac, np.nan), "n_raw": n_raw,
                         "frac_fake_calibrated": np.where(n_cal > 0, frac[::-1], np.nan),
                         "n_calibrated": n_cal})


def test_reliability_leaves_empty_bins_as_gaps_in_distinct_colours():
    bins = _bins()
    ax = curves.reliability_figure(bins).axes[0]
    lines = {line.get_label().split(" (")[0]: line for line in ax.get_lines()}
    assert set(lines) == {"perfectly calibrated", "raw", "calibrated"}
    for name, n_col in (("raw", "n_raw"), ("calibrated", "n_calibrated")):
        y = np.asarray(lines[name].get_ydata(), dtype=float)
        empty = bins[n_col].to_numpy() == 0
        assert np.isnan(y[empty]).all() and not np.isnan(y[~empty]).any()  # gaps, never 0
    colours = {to_hex(line.get_color()) for line in lines.values()}
    assert len(colours) == 3
    assert ax.get_xlabel() == "P(generated), bin centre"
    assert ax.get_ylabel() == "share of generated images in the bin"


def test_every_curve_has_labelled_axes_and_a_title():
    roc = pd.DataFrame({"fpr": [0, 0, 0.5, 1], "tpr": [0, 0.5, 1, 1]})
    pr = pd.DataFrame({"recall": [0.5, 1], "precision": [1, 0.8]})
    pairs = pd.DataFrame({"actual": ["real", "fake", "fake"], "predicted": ["real", "fake",
                                                                             "real"]})
    log = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [3, 2, 1], "val_loss": [1, .8, .9],
                        "val_ap": [.6, .9, .8], "val_acc": [.5, .8, .7], "val_auc": [.6, .9, .8]})
    figures = [curves.roc_figure(roc), curves.pr_figure(pr, 0.6),
               curves.confusion_figure(pairs), curves.reliability_figure(_bins()),
               curves.train_log_figure(log, best_epoch=2)]
    for fig in figures:
        for ax in fig.axes:
            assert ax.get_xlabel() and ax.get_ylabel() not in ("", "y"), fig
        assert any(ax.get_title() for ax in fig.axes) or fig._suptitle is not None
    roc_ax = figures[0].axes[0]
    assert "AUC 0.875" in [t.get_text() for t in roc_ax.get_legend().get_texts()][1]
    right = figures[4].axes[1]
    assert "kept: epoch 2" in [t.get_text() for t in right.get_legend().get_texts()]
    series = [to_hex(line.get_color()) for line in right.get_lines()[:3]]
    assert len(set(series)) == 3


def test_evaluate_draws_every_curve_as_a_png(built_cache, tmp_path):
    params = dataclasses.replace(built_cache.params, train=dataclasses.replace(
        built_cache.params.train, epochs=3, device="cpu"))
    run_train(params, built_cache.manifest, built_cache.features, tmp_path / "model",
              tmp_path / "plots" / "train_log.csv")
    import json

    params_file = write_params(tmp_path / "p.yaml", json.loads(json.dumps(params.to_dict())))
    res = CliRunner().invoke(main, ["evaluate", "--params", str(params_file), "--manifest",
                                    str(built_cache.manifest), "--features",
                                    str(built_cache.features), "--model",
                                    str(tmp_path / "model"), "--out", str(tmp_path / "m.json"),
                                    "--plots", str(tmp_path / "plots"), "--train-log",
                                    str(tmp_path / "plots" / "train_log.csv")])
    assert res.exit_code == 0, res.output
    for name in curves.NAMES:
        with Image.open(tmp_path / "plots" / f"{name}.png") as img:
            assert img.format == "PNG" and min(img.size) > 200, name
            assert np.asarray(img.convert("L")).std() > 10, name  # something is drawn


@pytest.mark.parametrize("missing", ["roc.csv", "train_log.csv"])
def test_absent_inputs_are_skipped(tmp_path, missing):
    pd.DataFrame({"fpr": [0, 1], "tpr": [0, 1]}).to_csv(tmp_path / "roc.csv", index=False)
    pd.DataFrame({"epoch": [1], "val_ap": [0.5]}).to_csv(tmp_path / "train_log.csv",
                                                          index=False)
    (tmp_path / missing).unlink()
    made = {p.name for p in curves.draw_evaluation(tmp_path, tmp_path / "train_log.csv")}
    assert made == {"roc.png", "train_log.png"} - {missing.replace(".csv", ".png")}


PAGE = 1400  # px: the width of a `dvc plots show` page


@pytest.mark.parametrize("reliability", [True, False])
def test_curves_png_fits_a_dvc_plots_page_with_every_panel(tmp_path, reliability):
    """plots/curves.png was 1548 px wide: the reliability panel fell off a 1400 px page."""
    pd.DataFrame({"fpr": [0, 0, 0.5, 1], "tpr": [0, 0.5, 1, 1]}).to_csv(tmp_path / "roc.csv",
                                                                        index=False)
    pd.DataFrame({"recall": [0.5, 1], "precision": [1, 0.8]}).to_csv(tmp_path / "pr.csv",
                                                                     index=False)
    if reliability:
        _bins().to_csv(tmp_path / "reliability.csv", index=False)
    details = tmp_path / "metrics.json"
    details.write_text('{"head": "advanced", "decision": {"threshold": 0.5748, '
                       '"calibration": "platt"}}')
    out = draw_curves(tmp_path, evaluate=details)
    with Image.open(out) as img:
        width, height = img.size
        grey = np.asarray(img.convert("L"), dtype=float)
    assert 800 < width <= PAGE
    assert (height > 0.9 * width) == reliability  # the third panel: a row of its own
    if reliability:  # something drawn in the lower half, the reliability panel's row
        assert grey[height // 2:].std() > 10


def test_robustness_and_tsne_pngs_fit_a_dvc_plots_page(tmp_path):
    rng = np.random.default_rng(0)
    heads = ["composite_probe", "nsnet", "advanced", "univfd", "rine", "cozzolino"]
    names = ["jpeg60", "jpeg30", "resize128", "resize64", "blur1", "blur3"]  # 3 kinds
    rob = {"heads": heads, "degradations": names, "results": {
        h: {n: {"mean": {"acc": rng.uniform(0.5, 1), "ap": rng.uniform(0.5, 1)}}
            for n in ["clean", *names]} for h in heads}}
    frame = pd.DataFrame({"label": rng.integers(0, 2, 80), "source": rng.choice(
        ["real", "imagenet_midjourney", "stable_diffusion_v_1_4", "adm"], 80)})
    points = {"before": rng.normal(size=(80, 2)), "after projection": rng.normal(size=(80, 2))}
    for out in (render_robustness(rob, tmp_path / "robustness.png"),
                render_tsne(points, frame, tmp_path / "tsne.png", "t-SNE")):
        with Image.open(out) as img:
            assert 900 < img.size[0] <= PAGE, out.name
