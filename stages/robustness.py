"""`nsnet robustness`: every head on the clean and the degraded test sets, as curves."""

import click

from nsnet.stages.common import features_option, friendly_errors, load, params_options
from nsnet.stages.matrix import heads_option, parse_heads


@click.command("robustness")
@params_options
@click.option("--manifest", default="cache/manifest.parquet", show_default=True,
              help="Manifest written by `nsnet index`.")
@features_option
@heads_option
@click.option("--details", default="metrics/details/robustness.json", show_default=True,
              help="Results to write: every head's table on clean and each degradation.")
@click.option("--plot", "png", default="plots/robustness.png", show_default=True,
              help="Figure to draw (PNG): accuracy and AP against each degradation's "
                   "strength, one line per head.")
@friendly_errors
def robustness(params_file: str | None, overrides: tuple[str, ...], manifest: str,
               features: str, heads: str, details: str, png: str) -> None:
    """Train every head (train.seeds) and score it on the clean test set and under every
    protocol.degradations entry (features from `nsnet extract`)."""
    from nsnet.reports.robustness_stage import format_robustness, run_robustness

    params = load(params_file, overrides)
    res = run_robustness(params, manifest, features, details, png, parse_heads(heads))
    click.echo(format_robustness(res, "acc"))
    click.echo(format_robustness(res, "ap"))
