"""`nsnet audit`: do real and fake images differ by file metadata alone (a shortcut)?"""

import click

from nsnet.stages.common import friendly_errors, load, params_options


@click.command("audit")
@params_options
@click.option("--manifest", default="cache/manifest.parquet", show_default=True,
              help="Manifest written by `nsnet index`.")
@click.option("--out", default="metrics/audit.json", show_default=True,
              help="Metrics JSON to write: the metadata classifier's AUC (metadata_auc).")
@click.option("--details", default=None,
              help="Full report to write [default: details/<name> beside --out, i.e. "
                   "metrics/details/audit.json].")
@click.option("--strict", is_flag=True,
              help="Exit 1 when the metadata classifier's AUC exceeds audit.warn_auc.")
@friendly_errors
def audit(params_file: str | None, overrides: tuple[str, ...], manifest: str, out: str,
          details: str | None, strict: bool) -> None:
    """Format, JPEG quality, size, mode, EXIF/ICC per label and source (file headers only),
    and how well a classifier on that metadata alone separates real from fake."""
    from nsnet.data.audit import run_audit

    params = load(params_file, overrides)
    res = run_audit(params, manifest, out, details)
    click.echo(res["text"])
    if strict and res["classifier"]["warning"]:
        raise click.ClickException("audit: metadata shortcut found (see the warning above)")
