"""Options and error handling shared by every command."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from pipeline.config import Params, ParamsError, load_params

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    ParamsError, FileNotFoundError, ValueError, RuntimeError, OSError,
)


def params_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--params FILE`` and repeatable ``--set key.sub=value`` overrides."""
    func = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                        help="Override a parameter, e.g. --set train.lr=1e-3 (repeatable).")(func)
    return click.option("--params", "params_file", default="params.yaml", show_default=True,
                        type=click.Path(dir_okay=False),
                        help="Parameter file (missing keys take their defaults).")(func)


def load(params_file: str, overrides: tuple[str, ...]) -> Params:
    """Validated params; torch's thread count is then set for this machine (compute.*)."""
    from pipeline import runtime

    params = load_params(params_file, overrides)
    runtime.configure_threads(params.compute.torch_threads, 0)
    return params


def friendly_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected failures into one clear message (exit code 1) instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except click.ClickException:
            raise
        except EXPECTED_ERRORS as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc

    return wrapper


def echo_summary(line: str) -> None:
    click.secho(line, fg="green", err=True)
