"""Multipart uploads parsed in memory, under limits, with one clear error each.

Starlette's form parser spools files over 1 MB to temporary files; this one keeps every byte in
memory (bounded by ``max_bytes``), so an upload never touches the disk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header


class ApiError(Exception):
    """An HTTP error answered as JSON ``{"error": code, "detail": message}``."""

    def __init__(self, status: int, code: str, detail: str,
                 headers: dict[str, str] | None = None, **extra: object) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.headers = headers or {}
        self.extra = extra


@dataclass
class Upload:
    name: str  # the client's file name (or the form field's name)
    data: bytes


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)


async def read_body(stream: AsyncIterator[bytes], content_length: str | None,
                    max_bytes: int) -> bytes:
    """The whole request body, refusing (413) as soon as it exceeds ``max_bytes``."""
    limit_mb = f"{max_bytes / 2**20:g} MB"
    if content_length and content_length.isdigit() and int(content_length) > max_bytes:
        raise ApiError(413, "upload_too_large",
                       f"request body of {int(content_length)} bytes exceeds the {limit_mb} limit")
    chunks, size = [], 0
    async for chunk in stream:
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, "upload_too_large", f"request body exceeds the {limit_mb} limit")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_multipart(body: bytes, content_type: str | None, max_files: int) -> list[Upload]:
    """The file parts of a ``multipart/form-data`` body (any field name), in order."""
    if not body:
        raise ApiError(400, "empty_body", "the request has no body: send images as "
                                          "multipart/form-data, e.g. curl -F file=@photo.jpg")
    ctype, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise ApiError(415, "not_multipart", f"Content-Type {content_type or '(none)'!r}: send "
                                             "images as multipart/form-data")
    parts: list[_Part] = []
    header: list[bytes] = [b"", b""]

    def on_part_begin() -> None:
        parts.append(_Part())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def on_header_end() -> None:
        parts[-1].headers[header[0].strip().lower()] = header[1].strip()
        header[0], header[1] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1].chunks.append(data[start:end])

    parser = MultipartParser(boundary, {"on_part_begin": on_part_begin,
                                        "on_header_field": on_header_field,
                                        "on_header_value": on_header_value,
                                        "on_header_end": on_header_end,
                                        "on_part_data": on_part_data})
    try:
        parser.write(body)
        parser.finalize()
    except Exception as exc:  # noqa: BLE001 - the parser raises several types on bad input
        raise ApiError(400, "bad_multipart", f"malformed multipart body: {exc}") from None
    uploads = []
    for part in parts:
        _, disp = parse_options_header(part.headers.get(b"content-disposition", b""))
        if b"filename" not in disp:
            continue  # a plain form field, not a file
        name = (disp.get(b"filename") or disp.get(b"name") or b"").decode("utf-8", "replace")
        uploads.append(Upload(name or f"file{len(uploads)}", b"".join(part.chunks)))
        if len(uploads) > max_files:
            raise ApiError(413, "too_many_files",
                           f"more than {max_files} files in one request; send at most "
                           f"{max_files} per request")
    if not uploads:
        raise ApiError(400, "no_files", "the multipart body holds no file part: send images "
                                        "as files, e.g. curl -F file=@photo.jpg")
    return uploads
