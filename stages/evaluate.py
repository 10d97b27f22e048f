"""`nsnet evaluate`: metrics per source and curves for dvc plots."""

from pathlib import Path

import click

from nsnet.stages.common import features_option, friendly_errors, load, params_options


@click.command("evaluate")
@params_options
@click.option("--manifest", default="cache/manifest.parquet", show_default=True,
              help="Manifest written by `nsnet index`.")
@features_option
@click.option("--model", "model_dir", default="models/detector", show_default=True,
              help="Model bundle directory (written by `nsnet train`).")
@click.option("--out", default="metrics/metrics.json", show_default=True,
              help="Metrics JSON to write: the test mean acc and ap and the decision threshold "
                   "(the numbers `dvc metrics show` lists; with several train.seeds also their "
                   "_std and n_seeds).")
@click.option("--details", default=None,
              help="Full results to write: per-source tables of val and test, model, "
                   "provenance [default: details/<name> beside --out, i.e. "
                   "metrics/details/metrics.json].")
@click.option("--plots", "plots_dir", default="plots", show_default=True,
              help="Folder for the curves: roc, pr, confusion and reliability as CSV (DVC "
                   "plots) and as PNG pictures (viewable offline), train_log.png, and "
                   "curves.png (ROC, precision-recall and reliability side by side).")
@click.option("--train-log", default="plots/train_log.csv", show_default=True,
              help="Training log (`nsnet train --log`) drawn as <plots>/train_log.png; "
                   "skipped when absent.")
@friendly_errors
def evaluate(params_file: str | None, overrides: tuple[str, ...], manifest: str, features: str,
             model_dir: str, out: str, details: str | None, plots_dir: str,
             train_log: str) -> None:
    """Accuracy (at 0.5, at the bundle's threshold, oracle), real/fake accuracy, AP, AUC,
    ECE and per-format accuracy on val and test, per source and mean."""
    from nsnet.evaluation.evaluate_stage import format_evaluation, run_evaluate
    from nsnet.metrics import details_path, threshold_text
    from nsnet.reports.curves import draw_evaluation
    from nsnet.reports.report_stage import draw_curves

    params = load(params_file, overrides)
    res = run_evaluate(params, manifest, features, model_dir, out, plots_dir, details)
    protocol = res["protocol"]
    if protocol["title"]:
        click.echo(f"protocol.preset {protocol['preset']}: {protocol['title']} "
                   f"[{protocol['reference']}]; "
                   f"fake = prob > {threshold_text(res['threshold'])}")
    click.echo(format_evaluation(res))
    draw_evaluation(plots_dir, train_log, res["model"]["best_epoch"])
    if (Path(plots_dir) / "roc.csv").exists():  # the three curves side by side, for a paper
        draw_curves(plots_dir, evaluate=details or details_path(out))
