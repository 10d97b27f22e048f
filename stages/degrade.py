"""`nsnet degrade` and `nsnet evaluate-views`: degraded test views and their metrics."""

import click

from stages.common import echo_summary, friendly_errors, load, params_options


@click.command("degrade")
@params_options
@click.option("--manifest", default="cache/manifest.parquet", show_default=True,
              help="Manifest written by `nsnet index`.")
@click.option("--views", "views_dir", default="cache/views", show_default=True,
              help="Folder of the cached degraded views (`nsnet degrade`).")
@click.option("--scheduler", default="", help="dask scheduler address (tcp://host:port).")
@click.option("--force", is_flag=True, help="Recompute views even when they are current.")
@friendly_errors
def degrade(params_file: str | None, overrides: tuple[str, ...], manifest: str, views_dir: str,
            scheduler: str, force: bool) -> None:
    """Patches, captions and embeddings of the test split under each protocol.degradations
    entry (jpeg65 jpeg30 resize112 resize64 blur3 blur5), cached in cache/views/<name>/."""
    from pipeline.extraction.views_stage import run_views

    params = load(params_file, overrides)
    if not params.protocol.degradations:
        echo_summary("degrade: protocol.degradations is empty; nothing to do")
    for res in run_views(params, manifest, views_dir, scheduler, force):
        state = "reused (current)" if res["reused"] else "computed"
        echo_summary(f"view {res['view']}: {res['images']} test images, {state}")
        for line in res.get("log", []):
            echo_summary(f"  {line}")


@click.command("evaluate-views")
@params_options
@click.option("--manifest", default="cache/manifest.parquet", show_default=True,
              help="Manifest written by `nsnet index`.")
@click.option("--embeddings", default="cache/embeddings.h5", show_default=True,
              help="Feature store written by `nsnet embed`.")
@click.option("--model", "model_dir", default="models/detector", show_default=True,
              help="Model bundle directory (written by `nsnet train`).")
@click.option("--views", "views_dir", default="cache/views", show_default=True,
              help="Folder of the cached degraded views (`nsnet degrade`).")
@click.option("--metrics", "metrics_dir", default="metrics", show_default=True,
              help="Folder for degradations.json (each view's AP), details/degradations.json "
                   "and views/<name>.json.")
@click.option("--per-source/--no-per-source", default=True, show_default=True,
              help="Also print each view's per-generator table.")
@friendly_errors
def evaluate_views(params_file: str | None, overrides: tuple[str, ...], manifest: str,
                   embeddings: str, model_dir: str, views_dir: str, metrics_dir: str,
                   per_source: bool) -> None:
    """Metrics on the clean test set and on every degraded view (metrics/degradations.json)."""
    from pipeline.evaluation.evaluate_stage import views_note
    from pipeline.evaluation.views_eval_stage import format_views_table, run_evaluate_views
    from pipeline.metrics import format_table

    params = load(params_file, overrides)
    results = run_evaluate_views(params, manifest, embeddings, model_dir, views_dir,
                                 metrics_dir)
    note = views_note(params.patches.views, params.evaluate.view_average)
    note = f"; {note}" if note else ""
    if per_source:
        for name, res in results.items():
            click.echo(format_table(res, f"\n[{name}] test (%{note})"))
    click.echo(format_views_table(results, f"\nmean over generators per view (%{note})"))
