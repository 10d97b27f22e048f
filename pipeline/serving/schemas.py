"""The bodies the service answers, as pydantic models: FastAPI renders them into /openapi.json.

Every endpoint's 200 body has a model, and every error body a model whose ``error`` lists the
codes that status can carry on that endpoint, so a client generated from the spec, or a gateway
validating against it, knows exactly what comes back.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

# The per-image statuses of an upload (``nsnet.inference.predict.decode_bytes``).
IMAGE_STATUSES = ("ok", "empty_file", "not_an_image", "corrupt", "too_large", "too_small")


class Health(BaseModel):
    """The process answers (it may still be loading the model)."""

    status: Literal["alive"]
    uptime_s: float = Field(ge=0, description="seconds since the server started")


class Ready(BaseModel):
    """The model is loaded and warmed up: /v1/* can be used."""

    status: Literal["ready"]


class NotReady(BaseModel):
    """The model is still loading, or failed to load (``detail`` says why)."""

    status: Literal["loading", "failed"]
    detail: str | None = Field(description="the load error when status is failed, else null")


class Patch(BaseModel):
    """One of the 49 selected patches and what occluding it does to the verdict."""

    index: int = Field(description="position in the 7 x 7 grid, row-major")
    row: int = Field(description="top pixel of the patch in the (EXIF-oriented) image")
    col: int = Field(description="left pixel of the patch")
    entropy: float = Field(description="spectral entropy of the patch (bits)")
    band: str = Field(description="'low' (smooth) or 'high' (textured) spectral entropy")
    contribution: float = Field(description="logit(original) - logit(occluded): > 0 pushed the "
                                            "image toward generated")
    delta_prob: float = Field(description="prob(original) - prob(occluded)")


class Explanation(BaseModel):
    """Per-patch occlusion attribution (``nsnet explain``) and its picture."""

    logit: float
    semantic_removed: float = Field(description="share of the image feature removed as "
                                                "semantic, ||x - Px|| / ||x||")
    attribution: str = Field(description="how contributions are measured")
    patch_size: int = Field(ge=1, description="side of a patch in pixels")
    top_generated: list[Patch] = Field(description="patches that pushed most toward generated")
    top_real: list[Patch] = Field(description="patches that pushed most toward real")
    patches: list[Patch] = Field(description="every selected patch")
    png_base64: str = Field(json_schema_extra={"contentEncoding": "base64",
                                               "contentMediaType": "image/png"},
                            description="the explanation picture, PNG, base64")


class ImageResult(BaseModel):
    """One uploaded file's answer: a probability, or the reason it could not be used."""

    name: str = Field(description="the uploaded file's name")
    status: str = Field(description="ok, or why the file could not be used: "
                                    + ", ".join(IMAGE_STATUSES[1:]),
                        examples=list(IMAGE_STATUSES))
    prob: float | None = Field(ge=0, le=1, description="probability that the image is "
                                                       "generated; null when not scored")
    verdict: Literal["generated", "real", "uncertain"] | None = Field(
        description="the label `nsnet predict` gives: generated, real, or uncertain within the "
                    "bundle's band around the threshold; null when not scored")
    caption: str | None = Field(description="the caption whose semantics were removed")
    semantic_share: float | None = Field(description="share of the image feature removed as "
                                                     "semantic")
    id: str | None = Field(description="content hash of the file's bytes")
    width: int | None = Field(ge=0, description="decoded width in pixels")
    height: int | None = Field(ge=0, description="decoded height in pixels")
    error: str | None = Field(description="why the file could not be used; null when ok")
    explanation: Explanation | SkipJsonSchema[None] = Field(
        None, description="only with ?explain=true, for scored images")


class Detection(BaseModel):
    """The answer to POST /v1/detect: one result per uploaded file, in upload order."""

    threshold: float = Field(description="the decision threshold in use")
    head: str = Field(description="the bundle's head (nsnet, advanced, ufd, ...)")
    results: list[ImageResult] = Field(min_length=1)


class ServerLimits(BaseModel):
    """The options ``nsnet serve`` runs with (the token itself is never shown)."""

    host: str
    port: int
    device: str
    precision: str
    threshold: float | None = Field(description="--threshold, null for the bundle's")
    max_batch: int
    max_wait_ms: float
    max_queue: int
    max_files: int
    max_upload_mb: float
    max_pixels: int
    timeout_s: float
    explain_top: int
    auth: bool = Field(description="whether /v1/* needs a bearer token")


class BatchingStats(BaseModel):
    """Micro-batching counters since the server started."""

    batches: int
    items: int
    largest: int
    refused: int
    timed_out: int
    mean_batch: float


class ModelInfo(BaseModel):
    """The loaded bundle, the server's limits and its micro-batching counters."""

    bundle: str = Field(description="the bundle directory")
    head: str
    threshold: float
    max_pixels: int
    min_image_side: int = Field(ge=1, description="smallest usable image side, in pixels "
                                                  "(the bundle's patch size)")
    config: dict[str, Any] = Field(description="the bundle's config.json: head, backbones, "
                                               "patches, training provenance")
    server: ServerLimits
    batching: BatchingStats


def error_model(name: str, codes: tuple[str, ...], doc: str, results: bool = False
                ) -> type[BaseModel]:
    """A model of ``{"error", "detail"}`` whose ``error`` is one of ``codes`` (and, with
    ``results``, the per-file results when no uploaded file could be used)."""
    fields: dict[str, Any] = {
        "error": (Literal[codes], Field(description="machine-readable code")),
        "detail": (str, Field(description="what went wrong, for people")),
    }
    if results:
        fields["results"] = (list[ImageResult] | SkipJsonSchema[None], Field(
            None, description="one result per uploaded file, when none could be used"))
    from pydantic import create_model

    model = create_model(name, __config__=ConfigDict(title=name), **fields)
    model.__doc__ = doc
    return model
