"""`nsnet evaluate-degraded`: the detector on every degraded copy of the test set."""

import click

from nsnet.stages.common import features_option, friendly_errors, load, params_options


@click.command("evaluate-degraded")
@params_options
@click.option("--manifest", default="cache/manifest.parquet", show_default=True,
              help="Manifest written by `nsnet index`.")
@features_option
@click.option("--model", "model_dir", default="models/detector", show_default=True,
              help="Model bundle directory (written by `nsnet train`).")
@click.option("--metrics", "metrics_dir", default="metrics", show_default=True,
              help="Folder for degradations.json (each degradation's mean AP) and "
                   "details/degradations.json (the per-source tables).")
@click.option("--per-source/--no-per-source", default=False, show_default=True,
              help="Also print each degradation's per-generator table.")
@friendly_errors
def evaluate_degraded(params_file: str | None, overrides: tuple[str, ...], manifest: str,
                      features: str, model_dir: str, metrics_dir: str, per_source: bool
                      ) -> None:
    """Metrics on the clean test set and on its copy under every protocol.degradations entry
    (jpeg65 jpeg30 resize112 resize64 blur3 blur5), whose features `nsnet extract` computes."""
    from nsnet.evaluation.degraded_eval_stage import (
        format_degraded_table,
        run_evaluate_degraded,
    )
    from nsnet.evaluation.evaluate_stage import views_note
    from nsnet.metrics import format_table

    params = load(params_file, overrides)
    results = run_evaluate_degraded(params, manifest, features, model_dir, metrics_dir)
    note = views_note(params.patches.views, params.evaluate.view_average)
    if len(params.train.seeds) > 1:
        note = "; ".join(n for n in (note, f"mean ± std over {len(params.train.seeds)} seeds")
                         if n)
    note = f"; {note}" if note else ""
    if per_source:
        for name, res in results.items():
            if name != "clean":  # `nsnet evaluate` prints the clean table
                click.echo(format_table(res, f"\n[{name}] test (%{note})"))
    click.echo(format_degraded_table(results, f"mean over generators per degradation "
                                              f"(%{note}); per generator: "
                                              f"{metrics_dir}/details/degradations.json"))


def _renamed(old: str, message: str) -> click.Command:
    @click.command(old, hidden=True, context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args: tuple[str, ...]) -> None:
        raise click.ClickException(message)

    command.help = message
    return command


degrade = _renamed("degrade", "`nsnet degrade` is gone: `nsnet extract` computes the degraded "
                   "test copies of protocol.degradations in the feature store (one decode per "
                   "image); `nsnet evaluate-degraded` scores them.")
evaluate_views = _renamed("evaluate-views", "`nsnet evaluate-views` was renamed "
                          "`nsnet evaluate-degraded` (degraded copies of the test set; "
                          "`views` now only means patch orders).")
