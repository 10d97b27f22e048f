"""`nsnet patches`: spectral-entropy patch composites into cache/patches.h5."""

import click

from pipeline.extraction.extract_stages import run_patches
from stages.common import echo_summary, friendly_errors, load, params_options


@click.command("patches")
@params_options
@click.option("--manifest", default="cache/manifest.parquet", show_default=True)
@click.option("--out", default="cache/patches.h5", show_default=True)
@click.option("--scheduler", default="", help="dask scheduler address (tcp://host:port).")
@friendly_errors
def patches(params_file: str, overrides: tuple[str, ...], manifest: str, out: str,
            scheduler: str) -> None:
    """Select 24 low + 25 high spectral-entropy patches per image into a 7x7 composite."""
    params = load(params_file, overrides)
    echo_summary(run_patches(params, manifest, out, "cache", scheduler).line())
