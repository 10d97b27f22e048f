"""`nsnet predict`: score new images with a trained bundle (no DVC needed)."""

import click
from tqdm.auto import tqdm

from pipeline import runtime
from pipeline.inference.predict import (
    expand_inputs,
    format_results,
    load_chain,
    predict_paths,
    write_results,
)
from stages.common import echo_summary, friendly_errors, load, params_options


@click.command("predict")
@params_options
@click.argument("paths", nargs=-1, required=True)
@click.option("--model", "model_dir", default="models/detector", show_default=True,
              help="Model bundle directory (written by `nsnet train`).")
@click.option("--out", default=None, help="Also write results to .csv, .jsonl or .parquet.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Decision threshold [default: the bundle's].")
@click.option("--batch-size", type=click.IntRange(1), default=None,
              help="Images per batch [default: caption.batch_size].")
@click.option("--quiet", is_flag=True, help="No table on the terminal.")
@friendly_errors
def predict(params_file: str, overrides: tuple[str, ...], paths: tuple[str, ...], model_dir: str,
            out: str | None, threshold: float | None, batch_size: int | None,
            quiet: bool) -> None:
    """Probability that each image is generated, with its caption.

    PATHS are files, folders (searched recursively) or globs. The bundle names the backbones;
    params.yaml (if present) only sets compute.device, compute.precision and batch sizes.
    """
    params = load(params_file, overrides)
    files = expand_inputs(paths)
    chain = load_chain(model_dir, params.compute.device, params.compute.precision, threshold)
    with tqdm(total=len(files), desc="predict", unit="img", dynamic_ncols=True) as bar:
        batch = batch_size or runtime.caption_batch(params.caption.batch_size, chain.clip.device)
        df = predict_paths(chain, files, batch,
                           params.data.max_image_pixels, bar.update)
    if not quiet:
        click.echo(format_results(df))
    if out:
        write_results(df, out)
    ok = df["status"] == "ok"
    n_fake = int((df.loc[ok, "label"] == "generated").sum())
    views = (f"; {chain.views} patch-order views, {chain.view_average}"
             if chain.views > 1 else "")
    echo_summary(f"predict: {int(ok.sum())} scored ({n_fake} generated at threshold "
                 f"{chain.threshold:g}{views}), {int((~ok).sum())} skipped"
                 + (f" -> {out}" if out else ""))
