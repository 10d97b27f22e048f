"""`nsnet scan`: a stat-only listing of data.roots (what `dvc repro` checks for changes)."""

import click

from nsnet.stages.common import echo_summary, friendly_errors, load, params_options


@click.command("scan")
@params_options
@click.option("--out", default="cache/listing.parquet", show_default=True,
              help="Listing to write (Parquet: root, relpath, size, mtime_ns per file).")
@friendly_errors
def scan(params_file: str | None, overrides: tuple[str, ...], out: str) -> None:
    """List every file under data.roots with its size and modification time, reading no
    image. Roots may be folders, symlinks or paths outside the workspace; the listing changes
    exactly when a file is added, removed or modified, so `dvc repro` re-runs `index` only
    then."""
    from nsnet.data.listing import listing_summary, root_problem, scan_roots, write_listing

    params = load(params_file, overrides)
    files, errors = scan_roots(params)
    write_listing(out, files, errors)
    echo_summary(listing_summary(files, errors, [r.path for r in params.data.roots]))
    listed = set(files["root"])
    for root in params.data.roots:
        if root.path not in listed:  # `index` stops on it: say now what the folder lacks
            problem = root_problem(root.path, root.layout or params.data.layout)
            click.secho(f"warning: {problem}", fg="yellow", err=True)
