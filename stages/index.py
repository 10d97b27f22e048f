"""`nsnet index`: scan image folders into the manifest."""

import click

from stages.common import echo_summary, friendly_errors, load, params_options


@click.command("index")
@params_options
@click.option("--out", default="cache/manifest.parquet", show_default=True,
              help="Manifest to write (Parquet).")
@click.option("--report", default="cache/index_report.json", show_default=True,
              help="JSON report: skipped files by reason, duplicates, splits.")
@click.option("--strict/--no-strict", default=None, help="Fail if any file would be skipped.")
@friendly_errors
def index(params_file: str | None, overrides: tuple[str, ...], out: str, report: str,
          strict: bool | None) -> None:
    """Scan data.roots into a manifest: id, label, source, split, size, status."""
    from pipeline.data.index_stage import build_index, skipped_lines, unlabelled_line

    params = load(params_file, overrides)
    res = build_index(params, out, report, strict)
    s = res["summary"]
    echo_summary(
        f"index: {s['files']} files, {s['ok']} usable, skipped {s['skipped'] or 'none'}; "
        f"{res['duplicates']} duplicate groups ({res['cross_split_duplicates']} across splits), "
        f"{res['label_conflicts']} label conflicts; splits {s['by_split_label']} (see {report})"
    )
    lines = skipped_lines(res)
    if lines:
        click.secho("skipped (kept in the manifest with a reason, left out downstream):",
                    fg="yellow", err=True)
        click.secho("\n".join(lines), fg="yellow", err=True)
    if unlabelled_line(res):
        click.echo(unlabelled_line(res), err=True)
