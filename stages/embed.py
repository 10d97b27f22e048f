"""`nsnet embed`: CLIP image and text embeddings into cache/embeddings.h5."""

import click

from pipeline.extraction.extract_stages import run_embed
from stages.common import echo_summary, friendly_errors, load, params_options


@click.command("embed")
@params_options
@click.option("--manifest", default="cache/manifest.parquet", show_default=True)
@click.option("--patches", "patches_path", default="cache/patches.h5", show_default=True)
@click.option("--captions", default="cache/captions.parquet", show_default=True)
@click.option("--out", default="cache/embeddings.h5", show_default=True)
@click.option("--scheduler", default="", help="dask scheduler address (tcp://host:port).")
@friendly_errors
def embed(params_file: str, overrides: tuple[str, ...], manifest: str, patches_path: str,
          captions: str, out: str, scheduler: str) -> None:
    """Embed patch composites and captions with the frozen CLIP (float16, id-aligned)."""
    params = load(params_file, overrides)
    echo_summary(run_embed(params, manifest, patches_path, captions, out, "cache",
                           scheduler).line())
