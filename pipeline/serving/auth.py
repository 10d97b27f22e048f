"""Bearer-token authentication of /v1/*, checked before anything else about the request.

An ASGI middleware, so it runs before routing and validation: a request under /v1 without the
right token gets 401 whatever else is wrong with it (an unknown path, a wrong method, a bad
query, a bad body), and an unauthenticated client learns nothing about the API's shape. The
body of a refused request is never read.
"""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from nsnet.serving.errors import ApiError, error_response

PROTECTED = "/v1"


def is_protected(path: str) -> bool:
    return path == PROTECTED or path.startswith(PROTECTED + "/")


def check_bearer(authorization: str, token: str) -> ApiError | None:
    """None if ``authorization`` (the header's value) carries ``token``, else the 401 error."""
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return ApiError(401, "unauthorized", "this server needs a bearer token: send "
                        "'Authorization: Bearer <token>'", headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return ApiError(401, "unauthorized", "wrong bearer token",
                        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    return None


class BearerAuth:
    """Answer 401 to every HTTP request under /v1 that lacks ``Authorization: Bearer token``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_protected(scope["path"]):
            problem = check_bearer(Headers(scope=scope).get("authorization", ""), self.token)
            if problem is not None:
                await error_response(problem)(scope, receive, send)
                return
        await self.app(scope, receive, send)
