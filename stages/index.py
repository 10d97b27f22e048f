"""`nsnet index`: scan image folders into the manifest."""

import click

from nsnet.stages.common import echo_summary, friendly_errors, load, params_options


@click.command("index")
@params_options
@click.option("--out", default="cache/manifest.parquet", show_default=True,
              help="Manifest to write (Parquet).")
@click.option("--report", default="cache/index_report.json", show_default=True,
              help="JSON report: skipped files by reason, duplicates, splits.")
@click.option("--strict/--no-strict", default=None, help="Fail if any file would be skipped.")
@click.option("--listing", default=None, type=click.Path(dir_okay=False),
              help="Listing written by `nsnet scan` [default: scan data.roots now].")
@click.option("--rescan", is_flag=True,
              help="Hash and decode every file again, even those unchanged since the last "
                   "manifest at --out.")
@click.option("--check-training/--no-check-training", default=True, show_default=True,
              help="Fail (after writing the manifest) when the images cannot train a detector "
                   "(e.g. no generated images in the train split); --no-check-training indexes "
                   "a test-only tree for a model trained elsewhere.")
@friendly_errors
def index(params_file: str | None, overrides: tuple[str, ...], out: str, report: str,
          strict: bool | None, listing: str | None, rescan: bool, check_training: bool) -> None:
    """Index the files of data.roots into a manifest: id, label, source, split, size,
    status. Files whose path, size and modification time are unchanged since the previous
    manifest keep their row; only new or changed files are hashed and decoded."""
    from nsnet.data.index_stage import (
        build_index,
        skipped_lines,
        summary_line,
        unlabelled_line,
    )
    from nsnet.data.readiness import NotTrainable
    from nsnet.data.readiness import check_training as check

    params = load(params_file, overrides)
    res = build_index(params, out, report, strict, listing, rescan)
    echo_summary(summary_line(res, report))
    lines = skipped_lines(res)
    if lines:
        click.secho(f"skipped (left out downstream; each with its reason in {report}):",
                    fg="yellow", err=True)
        click.secho("\n".join(lines), fg="yellow", err=True)
    if unlabelled_line(res):
        click.echo(unlabelled_line(res), err=True)
    if check_training:
        try:
            warnings = check(out, params)
        except NotTrainable as exc:
            raise click.ClickException(f"index: cannot train on these images: {exc}") from exc
        for line in warnings:
            click.secho(f"warning: {line}", fg="yellow", err=True)
