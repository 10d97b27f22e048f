"""`nsnet caption`: BLIP captions into cache/captions.parquet."""

import click

from pipeline.extraction.extract_stages import run_caption
from stages.common import echo_summary, friendly_errors, load, params_options


@click.command("caption")
@params_options
@click.option("--manifest", default="cache/manifest.parquet", show_default=True)
@click.option("--out", default="cache/captions.parquet", show_default=True)
@click.option("--scheduler", default="", help="dask scheduler address (tcp://host:port).")
@friendly_errors
def caption(params_file: str, overrides: tuple[str, ...], manifest: str, out: str,
            scheduler: str) -> None:
    """Caption every usable image with BLIP (batched, greedy, caption.max_new_tokens)."""
    params = load(params_file, overrides)
    echo_summary(run_caption(params, manifest, out, "cache", scheduler).line())
