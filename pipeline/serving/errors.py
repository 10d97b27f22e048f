"""The service's one error shape: JSON ``{"error": code, "detail": message}`` with a status.

``ApiError`` is raised anywhere a request is refused; ``error_response`` renders it (and is used
directly where no exception handler runs, e.g. in the authentication middleware).
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse


class ApiError(Exception):
    """An HTTP error answered as JSON ``{"error": code, "detail": message}`` (+ ``extra``)."""

    def __init__(self, status: int, code: str, detail: str,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.headers = headers or {}
        self.extra = extra


def error_response(exc: ApiError) -> JSONResponse:
    """The JSON response of ``exc``: its status, headers, code, detail and extra keys."""
    return JSONResponse({"error": exc.code, "detail": exc.detail, **exc.extra}, exc.status,
                        headers=exc.headers)
