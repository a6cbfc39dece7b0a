"""Whole answers of the HTTP listeners, their bytes built once per ``Date`` second.

``twisted.web`` builds a response's status line and headers for every
request: ``setResponseCode``, a ``setHeader`` per header (each name looked
up, each value checked), then ``Request.write`` reads the headers back to
decide on chunking and ``Content-Type`` and joins them into the head.  A
push endpoint answers nearly every request with the same few responses
(``200 {}``, ``202 {}``), so ``AnsweringRequest.answer`` writes a response
whose headers are all known from the bytes ``AnswerCache`` built for it the
first time in the current ``Date`` second: the same status line, the same
headers in the same order (those set before rendering, ``Connection:
close`` included, then ``Server``, ``Date``, the answer's), the same body,
that ``Request.write`` would have written.  ``Request.finish`` then runs as
usual: the access log, keep-alive, the next pipelined request,
``notifyFinish`` and the channel's idle timer.

An answer takes Twisted's path instead when anything set on the request
could change its bytes: a header set or a write made through the request
since rendering began, a cookie, ``Last-Modified`` or an ``ETag``, a body
encoder, a status without a body (204, 304), or a request already finished
or disconnected.  The ``Server`` and ``Date`` headers go into
``responseHeaders`` only when Twisted's path needs them (a ``setHeader`` or
a ``write``), so a fast answer never builds them; its headers are in its
bytes, not in ``responseHeaders``.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.web.http import NO_BODY_CODES, RESPONSES
from twisted.web.http_headers import Headers
from twisted.web.server import Request, version

__all__ = ["AnswerCache", "AnsweringRequest", "response_head"]

#: ``(name, values)`` of the headers a request had before it was rendered.
_Prior = tuple[tuple[bytes, tuple[bytes, ...]], ...]
#: What decides an answer's bytes besides its ``Date``: the headers set before
#: rendering, the protocol, the status, the answer's headers, its body, HEAD.
_Key = tuple[_Prior, bytes, int, tuple[tuple[bytes, bytes], ...], bytes, bool]
#: Most answers kept per ``Date`` second; others are built for each request.
_MAX_ANSWERS = 64


def response_head(version: bytes, code: bytes, reason: bytes, headers: Headers) -> bytes:
    """Return the status line and headers ``HTTPChannel.writeHeaders`` writes."""
    lines = [b"%s %s %s" % (version, code, reason)]
    lines += [
        name + b": " + value for name, values in headers.getAllRawHeaders() for value in values
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


class AnswerCache:
    """A listener's whole answers of the current ``Date`` second, by what decides their bytes.

    :param server: the ``Server`` header's value.
    """

    def __init__(self, server: bytes = version) -> None:
        self._server = server
        self._date = b""
        self._answers: dict[_Key, bytes | None] = {}

    def response(
        self,
        date: bytes,
        prior: _Prior,
        http_version: bytes,
        code: int,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        head_only: bool,
    ) -> bytes | None:
        """Return the bytes of a whole response, or None when Twisted would not send them as is.

        :param date: the ``Date`` header's value.
        :param prior: the headers set before rendering (``Connection: close``).
        :param http_version: the request's protocol (``HTTP/1.1``).
        :param headers: the answer's headers, after ``Server`` and ``Date``; they
            must hold ``Content-Type`` and ``Content-Length`` (else None).
        :param head_only: a HEAD request: the head without the body.
        """
        if date != self._date:
            self._answers.clear()
            self._date = date
        key: _Key = (prior, http_version, code, tuple(headers), body, head_only)
        try:
            return self._answers[key]
        except KeyError:
            pass
        built = self._build(date, key)
        if len(self._answers) < _MAX_ANSWERS:
            self._answers[key] = built
        return built

    def _build(self, date: bytes, key: _Key) -> bytes | None:
        prior, http_version, code, headers, body, head_only = key
        all_headers = Headers()
        for name, values in prior:
            all_headers.setRawHeaders(name, list(values))
        all_headers.setRawHeaders(b"Server", [self._server])
        all_headers.setRawHeaders(b"Date", [date])
        for name, value in headers:
            all_headers.setRawHeaders(name, [value])
        length = all_headers.getRawHeaders(b"Content-Length")
        if length != [b"%d" % len(body)] or not all_headers.hasHeader(b"Content-Type"):
            return None  # Twisted would chunk it, or add its own type
        reason = RESPONSES.get(code, b"Unknown Status")
        head = response_head(http_version, b"%d" % code, reason, all_headers)
        return head if head_only else head + body


class AnsweringRequest(Request):
    """A ``Request`` that can write a whole answer from an ``AnswerCache``.

    ``start_answers`` (instead of setting ``Server`` and ``Date``) prepares it
    when rendering begins; until then, and when ``answer`` declines, it is
    Twisted's ``Request``.
    """

    _answers: AnswerCache | None = None
    _date = b""
    _prior: _Prior = ()
    #: ``Server`` and ``Date`` are not yet in ``responseHeaders``.
    _defaults_pending = False

    def start_answers(self, answers: AnswerCache, date: bytes) -> None:
        """Take ``date`` as the ``Date`` of the answer; ``Server`` and it are set when needed."""
        self._answers = answers
        self._date = date
        self._prior = tuple(
            (name, tuple(values)) for name, values in self.responseHeaders.getAllRawHeaders()
        )
        self._defaults_pending = True

    def _set_defaults(self) -> None:
        self._defaults_pending = False
        self.responseHeaders.setRawHeaders(b"Server", [version])
        self.responseHeaders.setRawHeaders(b"Date", [self._date])

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        """Set a response header (after ``Server`` and ``Date``, as Twisted orders them)."""
        if self._defaults_pending:
            self._set_defaults()
        super().setHeader(name, value)  # type: ignore[no-untyped-call]

    def write(self, data: bytes) -> None:
        """Write body bytes through Twisted, its head with ``Server`` and ``Date``."""
        if self._defaults_pending:
            self._set_defaults()
        super().write(data)  # type: ignore[no-untyped-call]

    def answer(self, code: int, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> bool:
        """Write and finish a whole answer; False (nothing done) when Twisted's path must.

        :param headers: every header of the answer after ``Server`` and
            ``Date``, ``Content-Type`` and ``Content-Length`` included.
        """
        answers = self._answers
        if (
            answers is None
            or not self._defaults_pending
            or self.startedWriting
            or self.finished
            or self._disconnected
            or self._encoder is not None
            or self._inFakeHead
            or self.lastModified is not None
            or self.etag is not None
            or self.cookies
            or code in NO_BODY_CODES
        ):
            return False
        head_only = self.method == b"HEAD"
        data = answers.response(
            self._date, self._prior, self.clientproto, code, headers, body, head_only
        )
        if data is None:
            return False
        self.code, self.code_message = code, RESPONSES.get(code, b"Unknown Status")
        self.startedWriting = 1
        if not head_only:
            self.sentLength = len(body)
        self.channel.write(data)  # type: ignore[no-untyped-call]
        self.finish()  # type: ignore[no-untyped-call]
        return True
