"""Options and error handling shared by every command."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from nsnet.config import Params, ParamsError, load_params

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    ParamsError, FileNotFoundError, ValueError, RuntimeError, OSError,
)


def params_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--params FILE`` and repeatable ``--set key.sub=value`` overrides."""
    func = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                        help="Override a parameter, e.g. --set train.lr=1e-3 (repeatable).")(func)
    return click.option("--params", "params_file", default=None, metavar="FILE",
                        type=click.Path(dir_okay=False),
                        help="Parameter file [default: params.yaml if present, else built-in "
                             "defaults]; a named file must exist. Missing keys take their "
                             "defaults.")(func)


def features_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--features DIR``: the feature store that ``nsnet extract`` writes."""
    return click.option("--features", default="cache/features", show_default=True,
                        type=click.Path(file_okay=False),
                        help="Feature store (written by `nsnet extract`).")(func)


def load(params_file: str | None, overrides: tuple[str, ...], decoding: bool = False,
         scheduler: str = "") -> Params:
    """``--params FILE`` (must exist) or ``params.yaml`` (optional), with ``--set`` overrides,
    every ``auto`` resolved for this machine (``nsnet.runtime.resolve``: ``decoding`` for
    commands that run decoding worker processes, ``scheduler`` for a dask cluster); torch's
    thread count is then set."""
    from nsnet import runtime
    from nsnet.config import source_line

    click.secho(source_line(params_file, overrides), err=True, dim=True)
    if params_file is None:
        params = load_params("params.yaml", overrides)
    else:
        params = load_params(params_file, overrides, required=True)
    params = runtime.resolve(params, decoding, scheduler)
    runtime.configure_threads(params.compute.torch_threads, 0)
    return params


def printable(text: str) -> str:
    """``text`` with undecodable file-name bytes shown as ``\\xNN`` (never a print error)."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def friendly_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected failures into one clear message (exit code 1) instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except click.ClickException:
            raise
        except KeyboardInterrupt as exc:  # Ctrl-C: say what was kept, exit like a signal
            click.secho(printable(str(exc)) or "interrupted", fg="yellow", err=True)
            raise SystemExit(130) from None
        except EXPECTED_ERRORS as exc:
            raise click.ClickException(printable(f"{type(exc).__name__}: {exc}")) from exc

    return wrapper


def echo_summary(line: str) -> None:
    click.secho(line, fg="green", err=True)
