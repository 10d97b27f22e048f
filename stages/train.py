"""`nsnet train`: fit the configured head over the cached features."""

import click

from nsnet.stages.common import echo_summary, features_option, friendly_errors, load, params_options


@click.command("train")
@params_options
@click.option("--manifest", default="cache/manifest.parquet", show_default=True,
              help="Manifest written by `nsnet index`.")
@features_option
@click.option("--out", default="models/detector", show_default=True, help="Bundle directory.")
@click.option("--log", "log_csv", default="plots/train_log.csv", show_default=True,
              help="Per-epoch training log to write (CSV, a DVC plot).")
@friendly_errors
def train(params_file: str | None, overrides: tuple[str, ...], manifest: str, features: str,
          out: str, log_csv: str) -> None:
    """Train train.head on its feature recipe: the NS-Net family (composite_probe, nsnet,
    advanced) with train.*, keeping the best epoch by validation AP; the baselines (univfd,
    rine, cozzolino) as their papers train them."""
    from nsnet.data.readiness import check_training
    from nsnet.heads.train_stage import run_train

    params = load(params_file, overrides)
    # what is missing, in words, before any feature is read; what is too small, as warnings
    for line in check_training(manifest, params):
        click.secho(f"warning: {line}", fg="yellow", err=True)
    info = run_train(params, manifest, features, out, log_csv)
    extra = (f", semantic rank k={info.nsnet_k} explains "
             f"{100 * info.explained_variance:.1f}% of caption energy"
             if info.nsnet_k is not None and info.explained_variance is not None else "")
    views = (f" x {info.patch_views} patch-order views (one drawn per epoch)"
             if info.patch_views > 1 else
             f" x {info.crops} augmented training crops (one drawn per epoch)"
             if info.crops > 1 else "")
    echo_summary(f"train: {params.train.head} on {info.n_train} images{views}, best epoch "
                 f"{info.best_epoch} (val AP {info.best_val_ap:.4f}){extra} -> {out}")
    if info.seeds:
        from nsnet.evaluation.seeds import over_seeds

        agg = over_seeds(info.seeds)
        echo_summary(f"train: {len(info.seeds)} seeds {list(info.seeds)}: best val AP "
                     f"{agg['best_val_ap']:.4f} ± {agg['std']['best_val_ap']:.4f} (mean ± "
                     f"sample std); {out} is seed {params.train.seeds[0]}'s bundle, the others "
                     f"are in {out}/seeds/")
    if info.preset_train_missing:
        click.secho(f"note: protocol.preset {info.preset} trains on "
                    f"{len(info.preset_train_sources)} sources; not found in the training "
                    f"data: {', '.join(info.preset_train_missing)}", fg="yellow", err=True)
