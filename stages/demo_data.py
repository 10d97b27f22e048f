"""`nsnet demo-data`: the built-in simulated real-vs-generated image set."""

from pathlib import Path

import click

from nsnet.stages.common import echo_summary, friendly_errors


@click.command("demo-data")
@click.argument("out", default="data/demo")
@click.option("--n-real", default=240, show_default=True,
              help="Real images to write.")
@click.option("--n-fake-each", default=160, show_default=True,
              help="Generated images per simulated generator.")
@click.option("--seed", default=0, show_default=True,
              help="Random seed of the simulated set.")
@click.option("--workspace", is_flag=True,
              help="Make OUT a DVC workspace (dvc.yaml + demo params.yaml + data/demo) using "
                   "the project in --project.")
@click.option("--project", default=".", show_default=True, type=click.Path(file_okay=False),
              help="The nsnet project whose dvc.yaml the --workspace uses.")
@friendly_errors
def demo_data(out: str, n_real: int, n_fake_each: int, seed: int, workspace: bool,
              project: str) -> None:
    """Write real crops of scikit-image photos and simulated generator outputs (3 families)."""
    from nsnet.data.demo_data import make_demo_images, make_workspace

    kw = {"n_real": n_real, "n_fake_each": n_fake_each, "seed": seed}
    if workspace:
        make_workspace(out, Path(project), **kw)
        echo_summary(f"demo workspace ready in {out} (run `dvc repro` there)")
    else:
        counts = make_demo_images(out, **kw)
        echo_summary(f"demo images in {out}: {counts}")
