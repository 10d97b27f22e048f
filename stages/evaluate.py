"""`nsnet evaluate`: metrics per source and curves for dvc plots."""

import click

from stages.common import features_option, friendly_errors, load, params_options


@click.command("evaluate")
@params_options
@click.option("--manifest", default="cache/manifest.parquet", show_default=True,
              help="Manifest written by `nsnet index`.")
@features_option
@click.option("--model", "model_dir", default="models/detector", show_default=True,
              help="Model bundle directory (written by `nsnet train`).")
@click.option("--out", default="metrics/metrics.json", show_default=True,
              help="Metrics JSON to write: test mean acc, real_acc, fake_acc, ap (the numbers "
                   "`dvc metrics show` lists).")
@click.option("--details", default=None,
              help="Full results to write: per-source tables of val and test, model, "
                   "provenance [default: details/<name> beside --out, i.e. "
                   "metrics/details/metrics.json].")
@click.option("--plots", "plots_dir", default="plots", show_default=True,
              help="Folder for roc.csv, pr.csv and confusion.csv.")
@friendly_errors
def evaluate(params_file: str | None, overrides: tuple[str, ...], manifest: str, features: str,
             model_dir: str, out: str, details: str | None, plots_dir: str) -> None:
    """Accuracy (at 0.5, at the bundle's threshold, oracle), real/fake accuracy, AP, AUC,
    ECE and per-format accuracy on val and test, per source and mean."""
    from pipeline.evaluation.evaluate_stage import format_evaluation, run_evaluate
    from pipeline.metrics import threshold_text

    params = load(params_file, overrides)
    res = run_evaluate(params, manifest, features, model_dir, out, plots_dir, details)
    protocol = res["protocol"]
    if protocol["title"]:
        click.echo(f"protocol.preset {protocol['preset']}: {protocol['title']} "
                   f"[{protocol['reference']}]; "
                   f"fake = prob > {threshold_text(res['threshold'])}")
    click.echo(format_evaluation(res))
