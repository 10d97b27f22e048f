"""`nsnet tsne`: Figure 1, cached features before/after the head's semantic projection."""

import click

from nsnet.stages.common import echo_summary, features_option, friendly_errors, load, params_options


@click.command("tsne")
@params_options
@click.option("--manifest", default="cache/manifest.parquet", show_default=True,
              help="Manifest written by `nsnet index`.")
@features_option
@click.option("--model", "model_dir", default="models/detector", show_default=True,
              help="Model bundle directory (written by `nsnet train`).")
@click.option("--out", default="plots/tsne.png", show_default=True,
              help="Figure to write (PNG).")
@friendly_errors
def tsne(params_file: str | None, overrides: tuple[str, ...], manifest: str, features: str,
         model_dir: str, out: str) -> None:
    """t-SNE of figures.tsne_points cached image features, coloured by label and by source."""
    from nsnet.reports.tsne_stage import run_tsne

    params = load(params_file, overrides)
    res = run_tsne(params, manifest, features, model_dir, out)
    sil = res["silhouette"]
    echo_summary(f"tsne: {res['n']} images, {res['head']} head; real-vs-generated silhouette "
                 f"{sil['before']:.3f} before -> {sil['after']:.3f} after projection "
                 f"(higher = real and generated further apart) -> {out}")
