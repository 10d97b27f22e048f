"""`nsnet extract`: bring the feature store up to date (selections, captions, embeddings)."""

import click

from nsnet.stages.common import echo_summary, features_option, friendly_errors, load, params_options


@click.command("extract")
@params_options
@click.option("--manifest", default="cache/manifest.parquet", show_default=True,
              help="Manifest written by `nsnet index`.")
@features_option
@click.option("--scheduler", default="", help="dask scheduler address (tcp://host:port).")
@click.option("--dry-run", is_flag=True,
              help="Only say what is missing from the store (no model loaded, no image read).")
@friendly_errors
def extract(params_file: str | None, overrides: tuple[str, ...], manifest: str, features: str,
            scheduler: str, dry_run: bool) -> None:
    """Compute the features the store lacks, from one decode per image: select 24 low + 25
    high spectral-entropy patches, caption with BLIP, embed composite (each of patches.views
    orders) and caption with the frozen CLIP, for every usable image and every test image
    under each protocol.degradations entry. Features are keyed by image content and settings:
    new images cost their own features only, a new clip.* setting never re-runs BLIP, and an
    interrupted run resumes from its committed segments."""
    from nsnet.extraction.extract_stage import plan_extract, run_extract

    params = load(params_file, overrides, decoding=True, scheduler=scheduler)
    if dry_run:
        plan = plan_extract(params, manifest, features)
        missing = ", ".join(f"{k} {n}" for k, n in plan.missing.items()) or "nothing"
        echo_summary(f"extract --dry-run: {plan.samples} feature rows asked for, "
                     f"{plan.reused} complete in {features}; missing: {missing}")
        return
    echo_summary(run_extract(params, manifest, features, scheduler).line())
