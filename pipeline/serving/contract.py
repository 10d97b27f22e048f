"""What /openapi.json says beyond the response models: limits, statuses, authentication.

The spec is built from the running server's settings, so it states the limits this server
enforces (``--max-files`` as ``maxItems``, ``--max-upload-mb``, ``--max-pixels``, the bundle's
patch size as the smallest image side) and, when ``--token`` is set, a bearer security scheme on
every /v1/* operation with its 401. Every status an operation can answer is listed with its body.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from nsnet.serving import schemas
from nsnet.serving.uploads import EXTRA_PARTS

SCHEME = "bearerAuth"
# The media type of each image file extension nsnet decodes (``nsnet.data.images``'s
# ``IMAGE_EXTENSIONS``): the content types a file part is declared with (``encoding``). The server
# reads the bytes, whatever a part's label says.
MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
               ".jfif": "image/jpeg", ".webp": "image/webp", ".gif": "image/gif",
               ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff",
               ".ppm": "image/x-portable-pixmap", ".pgm": "image/x-portable-graymap"}
IMAGE_MEDIA_TYPES = tuple(dict.fromkeys(MEDIA_TYPES.values()))
JSON = "application/json"
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "required": True,
                               "schema": {"type": "string"}}}
WWW_AUTHENTICATE = {"WWW-Authenticate": {"description": "Bearer (with error=\"invalid_token\" "
                                                        "for a wrong token)", "required": True,
                                         "schema": {"type": "string"}}}

Unauthorized = schemas.error_model("Unauthorized", ("unauthorized",),
                                   "No bearer token, or a wrong one.")
ModelNotReady = schemas.error_model("ModelNotReady", ("not_ready",),
                                    "The model is still loading, or failed to load.")
DetectBadRequest = schemas.error_model(
    "DetectBadRequest", ("empty_body", "no_files", "unexpected_field", "bad_multipart",
                         "empty_file"),
    "No body, no file part, a form field that is not a file, a malformed multipart body, or "
    "only empty files.", results=True)
UploadTimeout = schemas.error_model("UploadTimeout", ("upload_timeout",),
                                    "The body did not arrive within --timeout.")
DetectTooLarge = schemas.error_model(
    "DetectTooLarge", ("upload_too_large", "too_many_files", "too_many_parts", "too_large"),
    "Over --max-upload-mb, --max-files, too many form fields, or (every file) --max-pixels.",
    results=True)
DetectUnsupported = schemas.error_model(
    "DetectUnsupported", ("not_multipart", "not_an_image"),
    "Not multipart/form-data, or no file is a decodable image.", results=True)
DetectUnprocessable = schemas.error_model(
    "DetectUnprocessable", ("bad_request", "corrupt", "too_small"),
    "A bad query parameter, or no file is usable: truncated/corrupt, or smaller than a patch.",
    results=True)
DetectUnavailable = schemas.error_model(
    "DetectUnavailable", ("not_ready", "overloaded", "timeout"),
    "The model is not ready, the queue is full, or the images were not scored in time.")


def bundle_patch_size(model_dir: str | Path) -> int | None:
    """The smallest image side the bundle scores, from its config.json: the patch size (the
    composite recipe) or 1 (the other recipes' crops pad smaller images); None if it cannot be read
    (the server then reports the load error at /readyz)."""
    from nsnet.heads.bundle import read_config
    from nsnet.registry import RECIPES

    try:
        config = read_config(model_dir)
    except (OSError, ValueError):
        return None
    if not RECIPES.get(config.head.recipe).patch_orders:  # a crop: smaller images are padded
        return 1
    patches = config.backbones.patches if config.backbones else None
    return patches.size if patches else None


def _json(model: type[Any], description: str, headers: dict[str, Any] | None = None
          ) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "description": description}
    if headers:
        out["headers"] = headers
    return out


def model_responses(auth: bool) -> dict[int | str, dict[str, Any]]:
    """The error statuses of GET /v1/model."""
    out: dict[int | str, dict[str, Any]] = {
        503: _json(ModelNotReady, "the model is still loading (or failed to load)",
                   RETRY_AFTER)}
    if auth:
        out[401] = _json(Unauthorized, "missing or wrong bearer token", WWW_AUTHENTICATE)
    return dict(sorted(out.items()))


def detect_responses(auth: bool, max_files: int, max_upload_mb: float, max_pixels: int
                     ) -> dict[int | str, dict[str, Any]]:
    """The error statuses of POST /v1/detect (the per-file ones only when no file is usable)."""
    out: dict[int | str, dict[str, Any]] = {
        400: _json(DetectBadRequest, "empty body (`empty_body`), no file part (`no_files`), a "
                   "form field that is not a file (`unexpected_field`), a malformed or truncated "
                   "multipart body (`bad_multipart`), or every file empty (`empty_file`, with "
                   "`results`)"),
        408: _json(UploadTimeout, "the body did not arrive within --timeout"),
        413: _json(DetectTooLarge, f"body over {max_upload_mb:g} MB (`upload_too_large`), more "
                   f"than {max_files} files (`too_many_files`) or {EXTRA_PARTS} form fields "
                   f"that are not files (`too_many_parts`), or every image over {max_pixels} "
                   "pixels (`too_large`, with `results`)"),
        415: _json(DetectUnsupported, "not multipart/form-data (`not_multipart`), or no file is "
                   "a decodable image (`not_an_image`, with `results`)"),
        422: _json(DetectUnprocessable, "a bad query parameter (`bad_request`), or no file is "
                   "usable: truncated or corrupt (`corrupt`), smaller than one patch "
                   "(`too_small`), with `results`"),
        503: _json(DetectUnavailable, "model not ready (`not_ready`), queue full "
                   "(`overloaded`), or not scored within --timeout (`timeout`)", RETRY_AFTER),
    }
    if auth:
        out[401] = _json(Unauthorized, "missing or wrong bearer token", WWW_AUTHENTICATE)
    return dict(sorted(out.items()))


def detect_request(max_files: int, max_upload_mb: float, max_pixels: int,
                   min_side: int | None) -> dict[str, Any]:
    """The ``openapi_extra`` of POST /v1/detect: the ``explain`` flag and the multipart body."""
    side = (f"{min_side} px (the bundle's patch size)" if min_side
            else "one patch of the bundle (GET /v1/model: min_image_side)")
    files = {
        "type": "array", "minItems": 1, "maxItems": max_files,
        "items": {"type": "string", "format": "binary"},
        "description": (
            f"1 to {max_files} image files, one part each, with a filename or not (a part with "
            "a filename is taken as a file under any field name too), whose bytes decode as an "
            "image: PNG, JPEG, WebP, GIF, BMP, TIFF, PPM or PGM (`encoding` lists their media "
            "types; the server reads the bytes, whatever the part's Content-Type says). Any "
            "other form field is refused (400 `unexpected_field`). Limits: the whole body at "
            f"most {max_upload_mb:g} MB "
            f"(413), each image at most {max_pixels} pixels (width x height; 413 `too_large`) "
            f"and at least {side} on its shorter side (422 `too_small`). An unusable file gets "
            "its status in its result; the request fails only when no file is usable."),
    }
    return {
        "parameters": [{
            "name": "explain", "in": "query", "required": False,
            "schema": {"type": "boolean", "default": False},
            "description": "`true` adds `explanation` to each scored image: the per-patch "
                           "occlusion contributions and the picture (PNG, base64). Only "
                           "`true` or `false`; anything else is 422 `bad_request`."}],
        "requestBody": {"required": True, "content": {"multipart/form-data": {
            "schema": {"type": "object", "required": ["file"], "properties": {"file": files},
                       "additionalProperties": False},
            "encoding": {"file": {"contentType": ", ".join(IMAGE_MEDIA_TYPES)}}}}},
    }


def build_openapi(app: FastAPI, auth: bool) -> dict[str, Any]:
    """The app's spec, with the bearer scheme on every /v1/* operation when ``auth``."""
    spec = get_openapi(title=app.title, version=app.version, description=app.description,
                       routes=app.routes, tags=app.openapi_tags)
    if auth:
        spec.setdefault("components", {})["securitySchemes"] = {SCHEME: {
            "type": "http", "scheme": "bearer",
            "description": "the server's --token (or $NSNET_TOKEN): every /v1/* request "
                           "without it, or with a wrong one, gets 401 before anything else "
                           "is checked"}}
        for path, operations in spec["paths"].items():
            if path.startswith("/v1/"):
                for operation in operations.values():
                    operation["security"] = [{SCHEME: []}]
    return spec
