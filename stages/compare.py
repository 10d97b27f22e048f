"""`nsnet compare`: all heads on the same cache, one table."""

import click

from nsnet.stages.common import features_option, friendly_errors, load, params_options


@click.command("compare")
@params_options
@click.option("--manifest", default="cache/manifest.parquet", show_default=True,
              help="Manifest written by `nsnet index`.")
@features_option
@click.option("--heads", default=None,
              help="Comma-separated heads to train and compare [default: compare.heads]; "
                   "their feature recipes must be in the store (`nsnet extract` computes the "
                   "recipes of compare.heads and train.head).")
@click.option("--out", default="metrics/compare.json", show_default=True,
              help="Metrics JSON to write: each head's test AP as <head>_ap.")
@click.option("--details", default=None,
              help="Full results to write: per-source tables of every head [default: "
                   "details/<name> beside --out, i.e. metrics/details/compare.json].")
@click.option("--views", "views", default="",
              help="Comma-separated numbers of patch-order views to put side by side, e.g. "
                   "1,4 (view 0 only vs all 4 views of a patches.views: 4 cache).")
@friendly_errors
def compare(params_file: str | None, overrides: tuple[str, ...], manifest: str, features: str,
            heads: str | None, out: str, details: str | None, views: str) -> None:
    """Train each head on the protocol's training rows, each on its own feature recipe from
    the one store; print test acc/real/fake/AP (%), with the published numbers of the preset
    in a `paper` column."""
    from nsnet.evaluation.compare_stage import format_comparison, run_compare

    overrides = (*overrides, f"compare.heads=[{heads}]") if heads is not None else overrides
    params = load(params_file, overrides)
    chosen = tuple(params.compare.heads)
    try:
        ks = tuple(dict.fromkeys(int(v) for v in views.split(",") if v.strip()))
    except ValueError:
        ks = (0,)
    if any(k < 1 for k in ks):
        raise click.BadParameter(f"--views {views!r}: give whole numbers >= 1, e.g. 1,4")
    res = run_compare(params, manifest, features, chosen, out, ks, details)
    click.echo(format_comparison(res, "test"))
