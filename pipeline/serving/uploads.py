"""Multipart uploads parsed in memory as they stream in, under limits, with one clear error each.

Starlette's form parser spools files over 1 MB to temporary files and parses a body only once
it has arrived whole; this one keeps every byte in memory (bounded by ``max_bytes``) and parses
each chunk as it arrives, so an upload never touches the disk and no request can hold the event
loop for long: the work per chunk is bounded by the chunk, and the number of parts is capped
(``max_files`` files, and at most ``EXTRA_PARTS`` plain fields are even read), so a body of a
million tiny fields is refused at its first chunk instead of being parsed for seconds.

Every part must be a file: a part with a filename (under any field name), or any part of the
``file`` field (the spec's, filename or not). Another plain form field makes the request fail
(400 ``unexpected_field``), unless there is no file at all (400 ``no_files``, the more useful
answer).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from nsnet.serving.errors import ApiError

# Plain (non-file) form fields read before the body is refused as too many parts (413); any
# plain field fails the request anyway (400), these are only read to tell which answer fits.
EXTRA_PARTS = 8
# The multipart field of the images in the spec: its parts are files even without a filename.
FILE_FIELD = "file"


@dataclass
class Upload:
    name: str  # the client's file name (or the form field's name)
    data: bytes
    has_filename: bool = True  # False for a ``file`` part sent as a plain value


class MultipartReader:
    """An incremental ``multipart/form-data`` parser: ``feed`` chunks, then ``finish``.

    Every file part (a part whose Content-Disposition has a ``filename``, whatever its field
    name, or any part of the ``file`` field) becomes an ``Upload``; other fields are counted and
    remembered by name. ``feed`` raises ``ApiError`` 413 as soon as the body holds more than
    ``max_files`` files or ``EXTRA_PARTS`` plain fields, 415 if the body is not multipart, 400 if
    it is malformed; ``finish`` raises 400 for a truncated body, no file, or a plain field beside
    the files.
    """

    def __init__(self, content_type: str | None, max_files: int) -> None:
        self.content_type, self.max_files = content_type, max_files
        self.uploads: list[Upload] = []
        self.parts = 0
        self.fields: list[str] = []  # names of the plain (non-file) fields
        self.size = 0
        self._headers: dict[bytes, bytes] = {}
        self._field, self._value = b"", b""
        self._name: str | None = None  # the current part's file name; None for a plain field
        self._has_filename = True
        self._chunks: list[bytes] = []
        ctype, options = parse_options_header(content_type or "")
        boundary = options.get(b"boundary")
        self._parser = None if ctype != b"multipart/form-data" or not boundary else \
            MultipartParser(boundary, {"on_part_begin": self._part_begin,
                                       "on_header_field": self._header_field,
                                       "on_header_value": self._header_value,
                                       "on_header_end": self._header_end,
                                       "on_headers_finished": self._headers_finished,
                                       "on_part_data": self._part_data,
                                       "on_part_end": self._part_end})

    def feed(self, chunk: bytes) -> None:
        """Parse the next chunk of the body (raises ``ApiError`` as soon as it is refused)."""
        if not chunk:
            return
        self.size += len(chunk)
        if self._parser is None:
            raise ApiError(415, "not_multipart", f"Content-Type {self.content_type or '(none)'!r}"
                                                 ": send images as multipart/form-data")
        try:
            self._parser.write(chunk)
        except ApiError:
            raise
        except Exception as exc:  # noqa: BLE001 - the parser raises several types on bad input
            raise ApiError(400, "bad_multipart", f"malformed multipart body: {exc}") from None

    def finish(self) -> list[Upload]:
        """The file parts, in order, once the whole body has been fed."""
        if self.size == 0:
            raise ApiError(400, "empty_body", "the request has no body: send images as "
                                              "multipart/form-data, e.g. curl -F file=@photo.jpg")
        assert self._parser is not None  # feed refused any non-empty non-multipart body
        if self._parser.state != MultipartState.END:
            raise ApiError(400, "bad_multipart", "malformed multipart body: it ends before its "
                                                 "closing boundary")
        if not self.uploads:
            raise ApiError(400, "no_files", "the multipart body holds no file part: send images "
                                            "as files, e.g. curl -F file=@photo.jpg")
        if self.fields:
            names = ", ".join(repr(n) for n in self.fields[:3])
            raise ApiError(400, "unexpected_field", f"form field {names} is not a file: send only "
                                                    "image files (e.g. curl -F file=@photo.jpg)")
        return self.uploads

    # --- parser callbacks -------------------------------------------------------------------

    def _part_begin(self) -> None:
        self._headers, self._name, self._chunks = {}, None, []

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.strip().lower()] = self._value.strip()
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        self.parts += 1
        _, disp = parse_options_header(self._headers.get(b"content-disposition", b""))
        field = (disp.get(b"name") or b"").decode("utf-8", "replace")
        self._has_filename = b"filename" in disp
        if not self._has_filename and field != FILE_FIELD:  # a plain field: counted, not kept
            self.fields.append(field)
            if len(self.fields) > EXTRA_PARTS:
                raise ApiError(413, "too_many_parts",
                               f"more than {EXTRA_PARTS} form fields that are not files: send "
                               f"only image files, at most {self.max_files} per request")
            return
        if len(self.uploads) >= self.max_files:
            raise ApiError(413, "too_many_files",
                           f"more than {self.max_files} files in one request; send at most "
                           f"{self.max_files} per request")
        name = (disp.get(b"filename") or b"").decode("utf-8", "replace") or field
        self._name = name or f"file{len(self.uploads)}"

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._name is not None:
            self._chunks.append(data[start:end])

    def _part_end(self) -> None:
        if self._name is not None:
            self.uploads.append(Upload(self._name, b"".join(self._chunks), self._has_filename))
        self._name, self._chunks = None, []


class UploadReader:
    """Read a request body into ``MultipartReader`` under a size limit.

    A body refused part-way (too many parts or files, malformed, not multipart) is still read
    to its end, unparsed and discarded, up to ``max_bytes``, so the client, still sending, gets
    to read the answer; ``refusal`` holds that answer meanwhile (the caller raises it if its
    time runs out while draining).
    """

    def __init__(self, content_type: str | None, content_length: str | None, max_bytes: int,
                 max_files: int) -> None:
        self.content_length, self.max_bytes = content_length, max_bytes
        self.multipart = MultipartReader(content_type, max_files)
        self.refusal: ApiError | None = None
        self.size = 0

    async def read(self, stream: AsyncIterator[bytes]) -> list[Upload]:
        """The uploads of the body ``stream`` yields; ``ApiError`` when it is refused."""
        limit_mb = f"{self.max_bytes / 2**20:g} MB"
        declared = self.content_length
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise ApiError(413, "upload_too_large",
                           f"request body of {int(declared)} bytes exceeds the {limit_mb} limit")
        async for chunk in stream:
            self.size += len(chunk)
            if self.size > self.max_bytes:
                raise self.refusal or ApiError(413, "upload_too_large",
                                               f"request body exceeds the {limit_mb} limit")
            if self.refusal is None:
                try:
                    self.multipart.feed(chunk)
                except ApiError as exc:
                    self.refusal = exc
        if self.refusal is not None:
            raise self.refusal
        return self.multipart.finish()
