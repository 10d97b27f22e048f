"""`nsnet matrix`: the cross-generator matrix (train on each source, test on every source)."""

from collections.abc import Callable
from typing import Any

import click

from nsnet.stages.common import features_option, friendly_errors, load, params_options


def heads_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--heads HEAD,...`` (default: the experiment's heads)."""
    return click.option("--heads", default="", metavar="HEAD,...",
                        help="Comma-separated heads [default: every head `nsnet compare` "
                             "trains].")(func)


def parse_heads(heads: str) -> tuple[str, ...] | None:
    """``--heads a,b`` as a tuple (None: the experiment's heads); unknown names are refused."""
    from nsnet.registry import METHODS

    chosen = tuple(dict.fromkeys(h.strip() for h in heads.split(",") if h.strip()))
    for h in chosen:
        problem = METHODS.problem(h)
        if problem:
            raise click.BadParameter(problem, param_hint="--heads")
    return chosen or None


@click.command("matrix")
@params_options
@click.option("--manifest", default="cache/manifest.parquet", show_default=True,
              help="Manifest written by `nsnet index`.")
@features_option
@heads_option
@click.option("--out", default="metrics/matrix.json", show_default=True,
              help="Metrics JSON to write: each head's mean AP over the cells of sources it "
                   "was not trained on (<head>_ap).")
@click.option("--details", default=None,
              help="Full results to write: every cell's table [default: details/<name> "
                   "beside --out, i.e. metrics/details/matrix.json].")
@click.option("--plot", "png", default="plots/matrix.png", show_default=True,
              help="Heatmap to draw (PNG): one panel per head.")
@friendly_errors
def matrix(params_file: str | None, overrides: tuple[str, ...], manifest: str, features: str,
           heads: str, out: str, details: str | None, png: str) -> None:
    """Train every head on each training source in turn (matrix.train_sources, with the train
    side's reals) and test it on every test row: GenImage's train-on-one / test-on-all table,
    with train.seeds as mean ± std."""
    from nsnet.reports.matrix_stage import format_matrix, run_matrix

    params = load(params_file, overrides)
    res = run_matrix(params, manifest, features, out, png, details, parse_heads(heads))
    click.echo(format_matrix(res))
