"""`nsnet explain`: a picture and a JSON of why one image was judged generated or real."""

import click

from nsnet.stages.common import echo_summary, friendly_errors, load, params_options


@click.command("explain")
@params_options
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--model", "model_dir", default="models/detector", show_default=True,
              help="Model bundle directory (written by `nsnet train`).")
@click.option("--out", default=None, help="Report PNG [default: <image stem>.explain.png]; "
                                          "the JSON goes beside it with the same stem.")
@click.option("--top", "k", type=click.IntRange(1, 20), default=5, show_default=True,
              help="How many most influential patches to list each way.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Decision threshold [default: the bundle's].")
@friendly_errors
def explain(params_file: str | None, overrides: tuple[str, ...], image: str, model_dir: str,
            out: str | None, k: int, threshold: float | None) -> None:
    """Occlusion attribution of the selected patches, caption and semantic share of IMAGE.

    The verdict is "uncertain" when P is within the bundle's uncertain_band of the threshold.
    """
    from pathlib import Path

    from nsnet.data.images import display_path
    from nsnet.inference.explain import explain_image, read_image, write_report
    from nsnet.inference.predict import load_chain
    from nsnet.metrics import threshold_text
    from nsnet.reports.explanation import contribution_text

    params = load(params_file, overrides)
    decoded = read_image(image, params.data.max_image_pixels)  # bad files fail before models load
    # BLIP runs only for a head that reads captions, as in `nsnet predict` and `nsnet serve`
    chain = load_chain(model_dir, params.compute.device, params.compute.precision, threshold)
    ex = explain_image(chain, image, params.data.max_image_pixels, decoded)
    png, js = write_report(ex, out or f"{Path(image).stem}.explain.png", k)
    click.echo(f"{display_path(Path(image).name)}: P(generated) = {ex.prob:.3f} -> {ex.label} "
               f"(threshold {threshold_text(ex.threshold)} ± {ex.uncertain_band:g}, "
               f"head {ex.head})")
    if chain.views > 1:
        click.echo(f"patch-order views: {chain.views}, combined by {chain.view_average}; a "
                   "patch's contribution occludes it in every view")
    click.echo(f"caption: {ex.caption}" if chain.reads_captions
               else f"caption: none (the {ex.head} head reads no caption)")
    click.echo(f"semantic part removed: {100 * ex.semantic_removed:.1f}% of the image feature")
    click.echo("patches pushing toward generated (contribution in logits, pixel y,x):")
    for p in ex.top(k, 1):
        click.echo(f"  {contribution_text(p.contribution)}  at ({p.row},{p.col})  {p.band} "
                   f"entropy {p.entropy:.2f}")
    if ex.warning:
        click.secho(f"warning: {ex.warning}", fg="yellow", err=True)
    echo_summary(f"explain: report {display_path(png)}, data {display_path(js)}")
