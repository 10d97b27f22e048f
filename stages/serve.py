"""`nsnet serve`: the detector as an HTTP service with a web page (FastAPI + uvicorn)."""

import os

import click

from nsnet.stages.common import friendly_errors, load, params_options


@click.command("serve")
@params_options
@click.option("--model", "model_dir", default="models/detector", show_default=True,
              help="Model bundle directory (written by `nsnet train`).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Decision threshold [default: the bundle's].")
@click.option("--max-batch", type=click.IntRange(1), default=16, show_default=True,
              help="Most images per model call (concurrent requests are merged).")
@click.option("--max-wait-ms", type=click.FloatRange(0), default=10.0, show_default=True,
              help="How long the first queued image waits for others to join its batch.")
@click.option("--max-queue", type=click.IntRange(1), default=256, show_default=True,
              help="Most images waiting; beyond it requests get 503.")
@click.option("--max-files", type=click.IntRange(1), default=16, show_default=True,
              help="Most files in one request (413 beyond); with other form fields, at most "
                   "this + 8 multipart parts.")
@click.option("--max-upload-mb", type=click.FloatRange(0, min_open=True), default=32.0,
              show_default=True, help="Largest request body in MB (413 beyond).")
@click.option("--max-pixels", type=click.IntRange(1), default=40_000_000, show_default=True,
              help="Largest image in pixels, width x height (decompression-bomb guard; 413).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(0, min_open=True), default=60.0,
              show_default=True,
              help="Seconds for the upload (408), and again for the results (503).")
@click.option("--token", default=None, help="Require 'Authorization: Bearer TOKEN' on /v1/* "
                                           "[default: $NSNET_TOKEN, else no token].")
@friendly_errors
def serve(params_file: str | None, overrides: tuple[str, ...], model_dir: str, host: str, port: int,
          threshold: float | None, max_batch: int, max_wait_ms: float, max_queue: int,
          max_files: int, max_upload_mb: float, max_pixels: int, timeout_s: float,
          token: str | None) -> None:
    """Serve the detector over HTTP: POST /v1/detect, a web page at /, docs at /docs (offline),
    the contract at /openapi.json (see docs/serving.md).

    The bundle loads once in the background (/healthz answers at once, /readyz once the
    model is warm). params.yaml (if present) only sets compute.device and compute.precision.
    """
    from nsnet.serving.app import ServeSettings, run_server  # fastapi, torch: not for --help

    params = load(params_file, overrides)
    settings = ServeSettings(model_dir, host, port, params.compute.device,
                             params.compute.precision, threshold, max_batch, max_wait_ms,
                             max_queue, max_files, max_upload_mb, max_pixels, timeout_s,
                             token or os.environ.get("NSNET_TOKEN") or None)
    click.echo(f"nsnet serve: http://{host}:{port}/ (API docs at /docs); loading {model_dir}",
               err=True)
    run_server(settings)
