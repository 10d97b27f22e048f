"""The `nsnet` console script: one subcommand per stage."""

import click

from nsnet.stages.audit import audit
from nsnet.stages.cache import cache
from nsnet.stages.compare import compare
from nsnet.stages.degrade import degrade, evaluate_degraded, evaluate_views
from nsnet.stages.demo_data import demo_data
from nsnet.stages.evaluate import evaluate
from nsnet.stages.explain import explain
from nsnet.stages.extract import extract
from nsnet.stages.index import index
from nsnet.stages.matrix import matrix
from nsnet.stages.predict import predict
from nsnet.stages.report import report
from nsnet.stages.robustness import robustness
from nsnet.stages.scan import scan
from nsnet.stages.serve import serve
from nsnet.stages.train import train
from nsnet.stages.tsne import tsne


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
