"""The parameters of an endpoint request: form body, multipart body, query string.

``request_fields(request)`` returns ``version`` and ``data`` (a body field
wins over the query string) and, for a body that is not a form, its media
type (the endpoint reports it: such a body is not parsed).

Bodies are parsed only after the token was checked, and each kind costs
time linear in its size:

- ``application/x-www-form-urlencoded``, or no ``Content-Type``: UTF-8,
  ``urllib.parse.parse_qsl``, at most ``MAX_FIELDS`` fields; the usual
  ``version=N`` or ``version=N&data=...`` (ASCII, nothing to unescape)
  is matched by one regular expression instead, with the same result;
- ``multipart/form-data``: the ``multipart`` package's push parser (the one
  treq already installs), bounded: at most ``MAX_FIELDS`` parts, each with at
  most ``MAX_PART_HEADERS`` header lines of at most ``MAX_PART_HEADER_LINE``
  bytes.  A part's body is opaque (a nested multipart is not descended
  into); only the first ``version`` and ``data`` parts are kept, decoded
  with their ``charset`` (one of ``TEXT_CHARSETS``, UTF-8 by default) after
  any ``base64`` or ``quoted-printable`` transfer encoding.

Anything malformed (not UTF-8, a broken multipart stream, a limit passed, a
charset outside the list) is ``WebError`` 400 errno 303, never another
exception.
"""

from __future__ import annotations

import binascii
import codecs
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Protocol

from multipart import (
    MultipartError,
    MultipartSegment,
    PushMultipartParser,
    parse_options_header,
)

from pushtwisted.web._util import WebError

__all__ = [
    "MAX_FIELDS",
    "MAX_PART_HEADERS",
    "MAX_PART_HEADER_LINE",
    "TEXT_CHARSETS",
    "Fields",
    "request_fields",
]

#: Most fields of a form, or parts of a multipart body (``version``, ``data``
#: and a few others).
MAX_FIELDS = 16
#: Most header lines of one part (RFC 7578 needs at most three).
MAX_PART_HEADERS = 8
#: Longest header line of a part, in bytes.
MAX_PART_HEADER_LINE = 1024
#: Charsets a multipart field may be in (Python codec names).
TEXT_CHARSETS = frozenset(
    {
        "utf-8",
        "ascii",
        "iso8859-1",
        "iso8859-15",
        "cp1252",
        "utf-16",
        "utf-16-le",
        "utf-16-be",
        "utf-32",
        "utf-32-le",
        "utf-32-be",
    }
)

_FORM = b"application/x-www-form-urlencoded"
_MULTIPART = b"multipart/form-data"
_PARAMS = ("version", "data")
_PARAM_KEYS = tuple((name, name.encode("ascii")) for name in _PARAMS)
#: Longest media type reported for a body that is not parsed.
_MAX_TYPE = 64
#: The common form bodies: ``version=N`` and ``version=N&data=...``, in ASCII
#: with nothing ``parse_qsl`` would change (no ``%`` escape, no ``+``).
_PLAIN_FORM = re.compile(rb"version=([0-9]*)(?:&data=([^%+&\x80-\xff]*))?")


class _Request(Protocol):
    """What ``request_fields`` reads of a ``twisted.web`` request."""

    args: dict[bytes, list[bytes]]
    content: IO[bytes] | None

    def getHeader(self, key: bytes) -> bytes | None:
        """Return the last value of request header ``key``, or None."""


@dataclass(frozen=True, slots=True)
class Fields:
    """The parameters of one request.

    :ivar version: the ``version`` field, or None.
    :ivar data: the ``data`` field, or None.
    :ivar ignored_type: the media type of a body that was not parsed (not a
        form), lower case, at most 64 printable characters; None otherwise.
    """

    version: str | None = None
    data: str | None = None
    ignored_type: str | None = None


def _invalid_body() -> WebError:
    return WebError(400, 303, "Invalid request body")


def request_fields(request: _Request) -> Fields:
    """Return the request's ``version`` and ``data``; body fields win over the query.

    :raises WebError: 400 errno 303 when the query or the body is malformed.
    """
    fields = _query_fields(request.args or {})
    ignored = None
    body = _body(request)
    if body:
        content_type = request.getHeader(b"content-type") or b""
        media = content_type.split(b";", 1)[0].strip().lower()
        if media in (b"", _FORM):
            fields.update(_form_fields(body))
        elif media == _MULTIPART:
            fields.update(_multipart_fields(content_type, body))
        else:
            ignored = _printable(media)
    return Fields(version=fields.get("version"), data=fields.get("data"), ignored_type=ignored)


def _body(request: _Request) -> bytes:
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    return content.read()


def _query_fields(args: dict[bytes, list[bytes]]) -> dict[str, str]:
    """Return ``version`` and ``data`` from the query string (first values)."""
    fields: dict[str, str] = {}
    for name, key in _PARAM_KEYS:
        values = args.get(key)
        if values:
            try:
                fields[name] = values[0].decode("utf-8")
            except UnicodeDecodeError:
                raise _invalid_body() from None
    return fields


def _form_fields(body: bytes) -> dict[str, str]:
    """Parse an urlencoded body; the first value of each field wins."""
    fields = _plain_form_fields(body)
    return fields if fields is not None else _parsed_form_fields(body)


def _plain_form_fields(body: bytes) -> dict[str, str] | None:
    """Return the fields of a ``_PLAIN_FORM`` body, or None for any other body."""
    match = _PLAIN_FORM.fullmatch(body)
    if match is None:
        return None
    version, data = match.groups()
    fields = {"version": version.decode("ascii")}
    if data is not None:
        fields["data"] = data.decode("ascii")
    return fields


def _parsed_form_fields(body: bytes) -> dict[str, str]:
    """Parse any urlencoded body with ``parse_qsl``."""
    try:
        pairs = urllib.parse.parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        raise _invalid_body() from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in _PARAMS:
            fields.setdefault(name, value)
    return fields


def _multipart_fields(content_type: bytes, body: bytes) -> dict[str, str]:
    """Parse a ``multipart/form-data`` body; the first ``version``/``data`` part wins."""
    _, options = parse_options_header(content_type.decode("latin-1"))
    boundary = options.get("boundary")
    if not boundary:
        raise _invalid_body()
    fields: dict[str, str] = {}
    try:
        parser = PushMultipartParser(
            boundary,
            content_length=len(body),
            max_header_size=MAX_PART_HEADER_LINE,
            max_header_count=MAX_PART_HEADERS,
            max_segment_count=MAX_FIELDS,
        )
        for segment, payload in _parts(parser, body):
            if segment.name in _PARAMS and segment.name not in fields:
                fields[segment.name] = _part_text(segment, payload)
    except MultipartError:
        raise _invalid_body() from None
    return fields


def _parts(parser: PushMultipartParser, body: bytes) -> Iterator[tuple[MultipartSegment, bytes]]:
    """Yield each complete part with its payload (empty for a part we do not keep).

    :raises MultipartError: when the stream is malformed, incomplete, or passes a limit.
    """
    segment: MultipartSegment | None = None
    chunks: list[bytes] = []
    for chunk in (body, b""):  # b"" ends the stream: an unfinished one raises
        for event in parser.parse(chunk):
            if isinstance(event, MultipartSegment):
                segment, chunks = event, []
            elif event is None:
                assert segment is not None
                yield segment, b"".join(chunks)
                segment = None
            elif segment is not None and segment.name in _PARAMS:
                chunks.append(event)


def _part_text(segment: MultipartSegment, payload: bytes) -> str:
    """Return a part's text: transfer encoding undone, decoded with its charset."""
    encoding = (segment.header("Content-Transfer-Encoding") or "").strip().lower()
    try:
        if encoding == "base64":
            payload = binascii.a2b_base64(b"".join(payload.split()), strict_mode=True)
        elif encoding == "quoted-printable":
            payload = binascii.a2b_qp(payload)
        elif encoding not in ("", "7bit", "8bit", "binary"):
            raise _invalid_body()
        charset = codecs.lookup(segment.charset or "utf-8").name
        if charset not in TEXT_CHARSETS:
            raise _invalid_body()
        return payload.decode(charset)
    except (binascii.Error, LookupError, ValueError):
        raise _invalid_body() from None


def _printable(media: bytes) -> str:
    """Return a media type as short printable text, for a log line and a metric."""
    text = media[:_MAX_TYPE].decode("ascii", "replace")
    return "".join(c if c.isprintable() and c.isascii() else "?" for c in text)
