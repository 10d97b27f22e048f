"""`nsnet cache`: what the feature store holds, and removing what the params no longer use."""

import click

from nsnet.stages.common import echo_summary, features_option, friendly_errors, load, params_options


@click.command("cache")
@params_options
@features_option
@click.option("--gc", "gc", is_flag=True,
              help="List the parts no current setting reads (a dry run); with --yes, delete "
                   "them.")
@click.option("--yes", is_flag=True, help="With --gc: really delete the listed parts.")
@click.option("--migrate", "migrate_from", default=None, type=click.Path(file_okay=False),
              help="Convert a cache of the previous layout in this folder (selections.h5, "
                   "captions.parquet, embeddings.h5, views/) into the store, without "
                   "recomputing.")
@click.option("--manifest", default="cache/manifest.parquet", show_default=True,
              help="Manifest written by `nsnet index` (for --migrate: each image's split).")
@friendly_errors
def cache(params_file: str | None, overrides: tuple[str, ...], features: str, gc: bool,
          yes: bool, migrate_from: str | None, manifest: str) -> None:
    """List the store's parts: settings, rows, size, and whether the current params use
    them. Nothing is deleted unless --gc --yes is given."""
    from nsnet.data.manifest import read_manifest
    from nsnet.extraction.store_admin import (
        collect_garbage,
        format_store_table,
        migrate_legacy,
        store_table,
        wrapped,
    )

    params = load(params_file, overrides)
    if migrate_from:
        rows = read_manifest(manifest, only_ok=True)
        for line in migrate_legacy(params, rows, migrate_from, features):
            echo_summary(wrapped(line))
    if gc:
        rows = collect_garbage(params, features, delete=yes)
        verb = "removed" if yes else "would remove (add --yes)"
        for r in rows:
            click.echo(f"{verb}: {r.part}/{r.key} ({r.rows} rows, {r.bytes / 1e6:.2f} MB)")
            click.echo(wrapped(r.description, "    "))
        echo_summary(f"cache --gc: {verb} {len(rows)} unused part(s), "
                     f"{sum(r.bytes for r in rows) / 1e6:.1f} MB")
        return
    click.echo(format_store_table(store_table(params, features)))
