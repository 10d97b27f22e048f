"""The HTTP service around one loaded ``Detector`` (FastAPI), and ``run_server`` (uvicorn).

Endpoints: ``GET /healthz`` (alive), ``GET /readyz`` (model loaded and warmed up),
``POST /v1/detect`` (multipart images -> JSON per image, ``?explain=true`` adds the per-patch
contributions and the explanation PNG), ``GET /v1/model`` (the bundle and the server limits),
``GET /`` (the web page), ``/docs`` (Swagger UI, served offline) and ``/openapi.json`` (the
contract: ``contract`` and ``schemas``). Every error is JSON ``{"error": code, "detail":
message}`` with a 4xx/5xx status; with ``--token``, every /v1/* request without it is 401 first
(``auth``).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from nsnet.inference.detector import Detector
from nsnet.inference.predict import Decoded
from nsnet.serving import contract, schemas
from nsnet.serving.auth import BearerAuth
from nsnet.serving.batcher import MicroBatcher, Overloaded, TimedOut
from nsnet.serving.errors import ApiError, error_response
from nsnet.serving.uploads import Upload, UploadReader

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("nsnet.serve")

# HTTP status when no image of a request could be used, by the first image's reason.
REASON_STATUS = {"empty_file": 400, "not_an_image": 415, "corrupt": 422, "too_large": 413,
                 "too_small": 422}
PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
            "script-src 'self'; connect-src 'self'")
# Swagger UI styles some elements inline; everything else, the spec included, comes from here.
DOCS_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
            "script-src 'self'; connect-src 'self'")


@dataclass(frozen=True)
class ServeSettings:
    """Options of ``nsnet serve`` (see ``nsnet serve --help``)."""

    model_dir: str = "models/detector"
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "auto"
    precision: str = "fp32"
    threshold: float | None = None
    max_batch: int = 16
    max_wait_ms: float = 10.0
    max_queue: int = 256
    max_files: int = 16
    max_upload_mb: float = 32.0
    max_pixels: int = 40_000_000
    timeout_s: float = 60.0
    token: str | None = field(default=None, repr=False)
    explain_top: int = 5

    def limits(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("token", "model_dir")}
        return {**out, "auth": bool(self.token)}


Loader = Callable[[ServeSettings], Detector]


def load_detector(settings: ServeSettings) -> Detector:
    """The default loader: the bundle and its backbones, as ``nsnet predict`` loads them."""
    return Detector.load(settings.model_dir, settings.device, settings.precision,
                         settings.threshold, settings.max_pixels, settings.max_batch)


@dataclass
class Job:
    decoded: Decoded
    explain: bool


class Service:
    """The state behind the endpoints: the detector once loaded, and the batcher."""

    def __init__(self, settings: ServeSettings, loader: Loader) -> None:
        self.settings, self.loader = settings, loader
        self.detector: Detector | None = None
        self.error: str | None = None
        self.on_load_error: Callable[[], None] | None = None
        self.started = time.time()
        self.batcher = MicroBatcher(self.run_batch, settings.max_batch,
                                    settings.max_wait_ms / 1000, settings.max_queue)

    def load(self) -> None:
        """Load and warm up the detector (in a thread, so ``/healthz`` answers meanwhile)."""
        try:
            det = self.loader(self.settings)
            rng = np.random.default_rng(0)
            det.predict(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))  # warm-up
            self.detector = det
            log.info("nsnet serve: model %s (%s head) ready", self.settings.model_dir,
                     det.chain.kind)
        except Exception as exc:  # noqa: BLE001 - reported by /readyz and at exit
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("nsnet serve: could not load the model: %s", self.error)
            if self.on_load_error:
                self.on_load_error()

    def ready(self) -> Detector:
        if self.detector is None:
            detail = (f"the model failed to load: {self.error}" if self.error
                      else "the model is still loading; retry when /readyz answers 200")
            raise ApiError(503, "not_ready", detail, headers={"Retry-After": "1"})
        return self.detector

    def run_batch(self, jobs: list[Job]) -> list[dict[str, Any]]:
        """Score every job's image in one model call (worker thread), then explain if asked."""
        from nsnet.inference.explain import explain_array
        from nsnet.reports.figures import explanation_png

        det = self.ready()
        df = det.predict_decoded([j.decoded for j in jobs])
        out = []
        for job, row in zip(jobs, df.to_dict("records"), strict=True):
            res = result_json(row)
            if job.explain and row["status"] == "ok":
                ex = explain_array(det.chain, job.decoded[1], row["id"], row["path"])
                info = ex.to_json(self.settings.explain_top)
                png = explanation_png(ex, self.settings.explain_top)
                res["explanation"] = {
                    k: info[k] for k in ("logit", "semantic_removed", "attribution", "patch_size",
                                         "top_generated", "top_real", "patches")}
                res["explanation"]["png_base64"] = base64.b64encode(png).decode()
            out.append(res)
        return out


def _decode_all(det: Detector, uploads: list[Upload]) -> list[Decoded]:
    """Decode every upload; an unusable ``file`` part sent without a filename (``curl -F
    file=photo.jpg`` sends the text ``photo.jpg``) says how to send the file instead."""
    out: list[Decoded] = []
    for u in uploads:
        row, rgb = det.decode(u.data, u.name)
        if rgb is None and not u.has_filename:
            row["error"] = f"{row['error']} (a form value, not a file: send the file itself, " \
                           "e.g. curl -F file=@photo.jpg)"
        out.append((row, rgb))
    return out


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        return _clean(value.item())
    return value if value != "" else None


def result_json(row: dict[str, Any]) -> dict[str, Any]:
    """One image's answer: the ``nsnet predict`` row, with ``label`` named ``verdict``."""
    return {"name": row["path"], "status": row["status"], "prob": _clean(row["prob"]),
            "verdict": _clean(row["label"]), "caption": _clean(row["caption"]),
            "semantic_share": _clean(row["semantic_share"]), "id": _clean(row["id"]),
            "width": int(row["width"]) if row["width"] >= 0 else None,
            "height": int(row["height"]) if row["height"] >= 0 else None,
            "error": _clean(row["error"])}


def _parse_explain(values: list[str]) -> bool:
    """The ``explain`` query flag: exactly ``true`` or ``false`` (422 otherwise)."""
    if not values:
        return False
    if len(values) == 1 and values[0] in ("true", "false"):
        return values[0] == "true"
    raise ApiError(422, "bad_request", f"query.explain: expected true or false, got "
                                       f"{'&'.join(values)!r}")


def _swagger_assets() -> Path:
    """Swagger UI's script and style, from the installed ``fastapi-offline`` package."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def create_app(settings: ServeSettings, loader: Loader = load_detector) -> FastAPI:
    """The FastAPI application; the model loads in a thread when the app starts."""
    service = Service(settings, loader)
    auth = bool(settings.token)
    min_side = contract.bundle_patch_size(settings.model_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.batcher.start()
        threading.Thread(target=service.load, name="nsnet-load", daemon=True).start()
        yield
        await service.batcher.stop()

    app = FastAPI(title="nsnet detector", version=_version(), lifespan=lifespan,
                  docs_url=None, redoc_url=None,
                  description="Detects AI-generated images (NS-Net / Advanced NS-Net heads "
                              "over frozen CLIP features). Send images to POST /v1/detect. "
                              "Every error is JSON `{\"error\": code, \"detail\": message}`."
                              + (" Every /v1/* request needs `Authorization: Bearer <token>`."
                                 if auth else ""))
    app.state.service = service
    if settings.token:
        app.add_middleware(BearerAuth, token=settings.token)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = contract.build_openapi(app, auth)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": f"http_{exc.status_code}", "detail": str(exc.detail)},
                            exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": "bad_request", "detail": detail}, 422)

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("nsnet serve: unexpected error")
        return JSONResponse({"error": "internal", "detail": f"{type(exc).__name__}: {exc}"}, 500)

    @app.get("/healthz", tags=["service"], summary="Liveness: the process answers",
             operation_id="healthz", response_model=schemas.Health)
    async def healthz() -> dict[str, Any]:
        return {"status": "alive", "uptime_s": round(time.time() - service.started, 3)}

    @app.get("/readyz", tags=["service"], summary="Readiness: the model is loaded and warm",
             operation_id="readyz", response_model=schemas.Ready,
             responses={503: {"model": schemas.NotReady, "headers": contract.RETRY_AFTER,
                              "description": "the model is loading, or failed to load"}})
    async def readyz() -> JSONResponse:
        if service.detector is not None:
            return JSONResponse({"status": "ready"})
        status = "failed" if service.error else "loading"
        return JSONResponse({"status": status, "detail": service.error}, 503,
                            headers={"Retry-After": "1"})

    @app.get("/v1/model", tags=["detector"], summary="The loaded bundle and the server limits",
             operation_id="model", response_model=schemas.ModelInfo,
             responses=contract.model_responses(auth))
    async def model() -> dict[str, Any]:
        det = service.ready()
        return {**det.describe(), "min_image_side": det.chain.min_side,
                "server": settings.limits(), "batching": service.batcher.stats.as_dict()}

    @app.post("/v1/detect", tags=["detector"],
              summary="Probability that each uploaded image is generated",
              operation_id="detect", response_model=schemas.Detection,
              response_model_exclude_unset=True,
              openapi_extra=contract.detect_request(settings.max_files, settings.max_upload_mb,
                                                    settings.max_pixels, min_side),
              responses=contract.detect_responses(auth, settings.max_files,
                                                  settings.max_upload_mb, settings.max_pixels))
    async def detect(request: Request) -> dict[str, Any]:
        """One JSON result per uploaded file, in order: ``prob`` (of generated), ``verdict``,
        ``caption``, ``semantic_share``, ``id``, or ``status``/``error`` when a file cannot be
        used. ``?explain=true`` adds ``explanation`` (per-patch contributions, PNG base64)."""
        explain = _parse_explain(request.query_params.getlist("explain"))
        det = service.ready()
        uploads = await _read_uploads(request, settings)
        if service.batcher.waiting + len(uploads) > settings.max_queue:
            raise ApiError(503, "overloaded", f"{service.batcher.waiting} images are waiting "
                           f"(queue limit {settings.max_queue}); retry later",
                           headers={"Retry-After": "1"})
        decoded = await run_in_threadpool(_decode_all, det, uploads)
        del uploads
        jobs = [Job(d, explain) for d in decoded if d[1] is not None]
        if not jobs:
            row = decoded[0][0]
            raise ApiError(REASON_STATUS.get(row["status"], 422), row["status"],
                           f"{row['path']}: {row['error']}" if len(decoded) == 1 else
                           f"none of the {len(decoded)} files is a usable image "
                           f"(first: {row['path']}: {row['error']})",
                           results=[result_json(r) for r, _ in decoded])
        try:
            scored = iter(await service.batcher.submit(jobs, settings.timeout_s))
        except Overloaded as exc:
            raise ApiError(503, "overloaded", str(exc), headers={"Retry-After": "1"}) from None
        except TimedOut as exc:
            raise ApiError(503, "timeout", f"the images were {exc}; the server is busy, retry "
                           "later", headers={"Retry-After": "1"}) from None
        results = [next(scored) if rgb is not None else result_json(row) for row, rgb in decoded]
        return {"threshold": det.threshold, "head": det.chain.kind, "results": results}

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_CSP})

    @app.get("/docs", include_in_schema=False)
    async def docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html", headers={"Content-Security-Policy": DOCS_CSP})

    app.mount("/docs/swagger-ui", StaticFiles(directory=_swagger_assets()), name="swagger-ui")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


async def _read_uploads(request: Request, settings: ServeSettings) -> list[Upload]:
    """The request's files, streamed and parsed under the limits; a client that sends its body
    too slowly does not hold memory for ever (408)."""
    reader = UploadReader(request.headers.get("content-type"),
                          request.headers.get("content-length"),
                          int(settings.max_upload_mb * 2**20), settings.max_files)
    try:
        return await asyncio.wait_for(reader.read(request.stream()), settings.timeout_s)
    except asyncio.TimeoutError:
        raise reader.refusal or ApiError(408, "upload_timeout", f"the upload did not arrive "
                                         f"within {settings.timeout_s:g} s") from None
    except ClientDisconnect:
        raise ApiError(400, "bad_multipart", "the client closed the connection before the "
                                             "body was complete") from None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nsnet")
    except PackageNotFoundError:
        return "0+unknown"


def run_server(settings: ServeSettings, loader: Loader = load_detector) -> None:
    """Serve until Ctrl-C; raises ``RuntimeError`` if the model cannot be loaded."""
    import uvicorn

    app = create_app(settings, loader)
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port,
                                          log_level="info", timeout_graceful_shutdown=5))
    service: Service = app.state.service
    service.on_load_error = lambda: setattr(server, "should_exit", True)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after a clean shutdown
        pass
    if service.error:
        raise RuntimeError(f"could not load the model {settings.model_dir}: {service.error}")
