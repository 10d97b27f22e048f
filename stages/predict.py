"""`nsnet predict`: score new images with a trained bundle (no DVC needed)."""

import click

from nsnet.stages.common import echo_summary, friendly_errors, load, params_options


@click.command("predict")
@params_options
@click.argument("paths", nargs=-1, required=True)
@click.option("--model", "model_dir", default="models/detector", show_default=True,
              help="Model bundle directory (written by `nsnet train`).")
@click.option("--out", default=None,
              help="Also write results to FILE.csv, FILE.jsonl or FILE.parquet (checked "
                   "before any image is scored).")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Decision threshold [default: the bundle's].")
@click.option("--batch-size", type=click.IntRange(1), default=None,
              help="Images per batch [default: caption.batch_size].")
@click.option("--quiet", is_flag=True, help="No table on the terminal.")
@click.option("--captions", is_flag=True,
              help="Also caption every image with BLIP when the head does not read captions "
                   "(only the advanced head does; the others are scored without BLIP).")
@friendly_errors
def predict(params_file: str | None, overrides: tuple[str, ...], paths: tuple[str, ...],
            model_dir: str, out: str | None, threshold: float | None, batch_size: int | None,
            quiet: bool, captions: bool) -> None:
    """Probability that each image is generated (with its caption where one is computed).

    PATHS are files, folders (searched recursively) or globs. Every file is listed: scored, or
    skipped with a reason. The label is "uncertain" when P is within the bundle's
    uncertain_band of the threshold. The bundle names the backbones; params.yaml (if present)
    only sets compute.device, compute.precision and batch sizes.
    """
    from tqdm.auto import tqdm

    from nsnet import runtime
    from nsnet.inference import predict as P
    from nsnet.metrics import threshold_text

    params = load(params_file, overrides)
    P.check_out_path(out)
    unlisted: list = []
    files = P.expand_inputs(paths, unlisted)
    if not files and not unlisted:
        raise click.ClickException(f"predict: no files found in {', '.join(paths)}")
    chain = P.load_chain(model_dir, params.compute.device, params.compute.precision, threshold,
                         captions)
    with tqdm(total=len(files), desc="predict", unit="img", dynamic_ncols=True) as bar:
        batch = batch_size or runtime.caption_batch(params.caption.batch_size, chain.clip.device)
        df = P.predict_paths(chain, files, batch, params.data.max_image_pixels, bar.update,
                             unlisted)
    if not quiet:
        click.echo(P.format_results(df))
    if out:
        P.write_results(df, out)
    ok = df["status"] == "ok"
    n_fake = int((df.loc[ok, "label"] == "generated").sum())
    n_unsure = int((df.loc[ok, "label"] == "uncertain").sum())
    views = (f"; {chain.views} patch-order views, {chain.view_average}"
             if chain.views > 1 else "")
    if not ok.any():
        raise click.ClickException(f"predict: nothing could be scored: {P.skipped_summary(df)}")
    echo_summary(f"predict: {int(ok.sum())} scored ({n_fake} generated, {n_unsure} uncertain "
                 f"at threshold {threshold_text(chain.threshold)} ± {chain.band:g}{views}), "
                 f"{P.skipped_summary(df)}" + (f" -> {out}" if out else ""))
