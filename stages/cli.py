"""The `nsnet` console script: one subcommand per stage."""

import click

from stages.audit import audit
from stages.compare import compare
from stages.degrade import degrade, evaluate_views
from stages.demo_data import demo_data
from stages.evaluate import evaluate
from stages.explain import explain
from stages.extract import extract
from stages.index import index
from stages.predict import predict
from stages.serve import serve
from stages.train import train
from stages.tsne import tsne


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nsnet")
def main() -> None:
    """NS-Net / Advanced NS-Net detector of AI-generated images.

    Stages (usually driven by `dvc repro`): index -> audit -> extract -> train -> evaluate.
    Every command reads params.yaml and accepts --set key=value overrides.
    """


for command in (index, audit, extract, train, evaluate, compare, demo_data, degrade,
                evaluate_views):
    main.add_command(command)
for command in (predict, explain, serve, tsne):
    main.add_command(command)

if __name__ == "__main__":
    main()
