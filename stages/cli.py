"""The `nsnet` console script: one subcommand per stage."""

import click

from stages.audit import audit
from stages.cache import cache
from stages.compare import compare
from stages.degrade import degrade, evaluate_degraded, evaluate_views
from stages.demo_data import demo_data
from stages.evaluate import evaluate
from stages.explain import explain
from stages.extract import extract
from stages.index import index
from stages.matrix import matrix
from stages.predict import predict
from stages.report import report
from stages.robustness import robustness
from stages.scan import scan
from stages.serve import serve
from stages.train import train
from stages.tsne import tsne


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nsnet")
def main() -> None:
    """NS-Net / Advanced NS-Net detector of AI-generated images.

    Stages (usually driven by `dvc repro`): scan -> index -> audit -> extract -> train ->
    evaluate, plus compare, matrix, robustness and report for a paper's tables and figures.
    `nsnet cache` shows (and cleans) the feature store.
    Every command reads params.yaml and accepts --set key=value overrides.
    """


for command in (scan, index, audit, extract, train, evaluate, compare, matrix, robustness,
                report, demo_data, evaluate_degraded, cache, degrade, evaluate_views):
    main.add_command(command)
for command in (predict, explain, serve, tsne):
    main.add_command(command)

if __name__ == "__main__":
    main()
