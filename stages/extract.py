"""`nsnet extract`: patch selections, BLIP captions and CLIP embeddings in one pass."""

import click

from stages.common import echo_summary, friendly_errors, load, params_options


@click.command("extract")
@params_options
@click.option("--manifest", default="cache/manifest.parquet", show_default=True,
              help="Manifest written by `nsnet index`.")
@click.option("--selections", default="cache/selections.h5", show_default=True,
              help="Patch selections out (cells + entropies, no pixels).")
@click.option("--captions", default="cache/captions.parquet", show_default=True,
              help="BLIP captions out.")
@click.option("--embeddings", default="cache/embeddings.h5", show_default=True,
              help="CLIP image/text embeddings out.")
@click.option("--composites", default="cache/composites.h5", show_default=True,
              help="Composites out, written only with patches.keep_composites: true.")
@click.option("--scheduler", default="", help="dask scheduler address (tcp://host:port).")
@friendly_errors
def extract(params_file: str | None, overrides: tuple[str, ...], manifest: str, selections: str,
            captions: str, embeddings: str, composites: str, scheduler: str) -> None:
    """Decode each image once; select 24 low + 25 high spectral-entropy patches, caption it
    with BLIP and embed composite and caption with the frozen CLIP. Parts whose settings did
    not change are reused, so e.g. a new clip.* setting never re-runs BLIP. With
    patches.views: K, CLIP embeds K patch orders of each image (a new K re-embeds only the
    images)."""
    from pipeline.extraction.extract_stage import Outputs, run_extract

    params = load(params_file, overrides)
    out = Outputs.at(selections, captions, embeddings, composites)
    echo_summary(run_extract(params, manifest, out, "cache", scheduler).line())
