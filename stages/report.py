"""`nsnet report`: the paper's tables (Markdown, LaTeX, CSV) from the metrics files."""

import click

from nsnet.stages.common import echo_summary, friendly_errors


@click.command("report")
@click.option("--format", "fmt", type=click.Choice(["markdown", "latex", "csv"]),
              default="markdown", show_default=True,
              help="Format to print (LaTeX: booktabs) when no --out is given.")
@click.option("--out", "outs", multiple=True, metavar="FILE",
              help="File to write instead of printing, its format by suffix: .md Markdown, "
                   ".tex LaTeX, .csv CSV (repeatable).")
@click.option("--compare", default="metrics/details/compare.json", show_default=True,
              help="Results of `nsnet compare` (one row per head).")
@click.option("--evaluate", default="metrics/details/metrics.json", show_default=True,
              help="Results of `nsnet evaluate` (the row when compare's are absent).")
@click.option("--matrix", default="metrics/details/matrix.json", show_default=True,
              help="Results of `nsnet matrix` (skipped when absent).")
@click.option("--robustness", default="metrics/details/robustness.json", show_default=True,
              help="Results of `nsnet robustness` (skipped when absent).")
@click.option("--figures", "plots_dir", default=None, metavar="DIR",
              help="Also draw DIR/curves.png (ROC, precision-recall, reliability) from the "
                   "CSVs `nsnet evaluate` wrote in DIR.")
@friendly_errors
def report(fmt: str, outs: tuple[str, ...], compare: str, evaluate: str, matrix: str,
           robustness: str, plots_dir: str | None) -> None:
    """Rows = methods (with the preset's published numbers, quoted), columns = the preset's
    official rows + mean, best in bold, ± over train.seeds; then the matrix and robustness."""
    from nsnet.reports.report_stage import draw_curves, format_of, run_report

    files = {"compare": compare, "evaluate": evaluate, "matrix": matrix,
             "robustness": robustness}
    for out in outs:
        run_report(format_of(out), files, out)
    if plots_dir:
        draw_curves(plots_dir, evaluate=evaluate)
    if not outs:
        click.echo(run_report(fmt, files), nl=False)
    written = [*outs, *([f"{plots_dir}/curves.png"] if plots_dir else [])]
    if written:  # one line saying where the tables went (nothing else is printed then)
        echo_summary(f"report: {', '.join(written)}")
