"""Tests for ``pushtwisted.web._answer``: whole answers written from bytes built once a second.

Every answer ``json_response`` writes on a listener is compared byte for
byte with what ``twisted.web`` writes for the same status, headers and body
through ``setResponseCode``, ``setHeader`` and ``Request.write``: on the
same kind of connection, for the same request.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from pushtwisted.web._answer import AnswerCache
from pushtwisted.web._site import ListenerSite
from pushtwisted.web._util import error_body, json_bytes, json_response

_PEER = IPv4Address("TCP", "127.0.0.1", 40000)
_CORS = (
    (b"Access-Control-Allow-Origin", b"*"),
    (b"Access-Control-Allow-Methods", b"PUT, OPTIONS"),
    (b"Access-Control-Allow-Headers", b"content-type"),
)
#: (status, body, extra headers) of the answers compared.
_ANSWERS: list[tuple[int, object, tuple[tuple[bytes, bytes], ...]]] = [
    (200, {}, ()),
    (202, {}, ()),
    (200, {}, _CORS),
    (202, {}, _CORS),
    (404, error_body(404, 102, "Invalid Token"), ()),
    (405, error_body(405, 304, "Method Not Allowed"), ((b"Allow", b"PUT, OPTIONS"),)),
    (503, error_body(503, 999, "Storage unavailable"), ((b"Retry-After", b"5"),)),
    (201, {"a": 1}, ((b"Location", b"http://x/m/1"), (b"TTL", b"60"))),
]
#: The requests each answer is written for.
_REQUESTS = {
    "keep-alive HTTP/1.1": b"PUT /a HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nversion=1",
    "Connection: close": (
        b"PUT /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    ),
    "HTTP/1.0": b"PUT /a HTTP/1.0\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    "HEAD": b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n",
}


class _Answer(Resource):
    """Answers every request with one JSON answer, by ``json_response`` or by
    Twisted's own calls; records whether ``responseHeaders`` got ``Date``."""

    isLeaf = True

    def __init__(self, code: int, body: object, headers: Any, fast: bool) -> None:
        super().__init__()
        self.code, self.body, self.headers, self.fast = code, body, headers, fast
        self.built_headers: list[bool] = []

    def render(self, request: Any) -> int:
        if self.fast:
            json_response(request, self.code, self.body, headers=self.headers)
        else:
            payload = json_bytes(self.body)
            request.setResponseCode(self.code)
            for name, value in self.headers:
                request.setHeader(name, value)
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"Content-Length", b"%d" % len(payload))
            request.write(payload)
            request.finish()
        self.built_headers.append(request.responseHeaders.hasHeader(b"Date"))
        return NOT_DONE_YET


class WholeAnswerTests(SynchronousTestCase):
    """``json_response`` on a listener writes exactly what ``Request.write`` writes."""

    def exchange(
        self, answer: _Answer, data: bytes, *, keep_alive: bool = True
    ) -> tuple[bytes, str, bool]:
        """Send ``data`` on a new connection; return the bytes written, the
        access line and whether the connection is closing."""
        root = Resource()
        root.putChild(b"a", answer)
        clock = Clock()
        clock.advance(1_700_000_000.5)
        site = ListenerSite(
            root,
            reactor=clock,
            max_body=64,
            keep_alive=keep_alive,
            access_log=lambda request: True,
        )
        site.logFile = log = io.StringIO()
        site._logDateTime = "[14/Nov/2023:22:13:20 +0000]"
        channel = site.buildProtocol(_PEER)
        transport = StringTransport(peerAddress=_PEER)
        channel.makeConnection(transport)
        channel.dataReceived(data)
        return transport.value(), log.getvalue(), bool(transport.disconnecting)

    def compare(self, data: bytes, *, keep_alive: bool = True) -> None:
        for code, body, headers in _ANSWERS:
            fast = _Answer(code, body, headers, fast=True)
            twisted = _Answer(code, body, headers, fast=False)
            got = self.exchange(fast, data, keep_alive=keep_alive)
            expected = self.exchange(twisted, data, keep_alive=keep_alive)
            self.assertEqual(got, expected, (code, headers))
            self.assertTrue(expected[0].startswith(b"HTTP/1."), expected)
            self.assertEqual(fast.built_headers, [False], "the whole answer was written")
            self.assertEqual(twisted.built_headers, [True])

    def test_keep_alive(self) -> None:
        """HTTP/1.1 keep-alive: the same bytes, the same access line, the connection stays."""
        self.compare(_REQUESTS["keep-alive HTTP/1.1"])
        wire, line, closing = self.exchange(
            _Answer(202, {}, (), fast=True), _REQUESTS["keep-alive HTTP/1.1"]
        )
        self.assertEqual(
            wire.split(b"\r\n"),
            [
                b"HTTP/1.1 202 Accepted",
                b"Server: TwistedWeb/" + wire.split(b"Server: TwistedWeb/")[1].split(b"\r\n")[0],
                b"Date: Tue, 14 Nov 2023 22:13:20 GMT",
                b"Content-Type: application/json",
                b"Content-Length: 2",
                b"",
                b"{}",
            ],
        )
        self.assertIn('"PUT /a HTTP/1.1" 202 2 ', line)
        self.assertFalse(closing)

    def test_connection_close(self) -> None:
        """HTTP/1.1 with ``Connection: close``: its header first, then the connection closes."""
        self.compare(_REQUESTS["Connection: close"])
        wire, _, closing = self.exchange(
            _Answer(200, {}, (), fast=True), _REQUESTS["Connection: close"]
        )
        self.assertTrue(wire.startswith(b"HTTP/1.1 200 OK\r\nConnection: close\r\n"), wire)
        self.assertTrue(closing)

    def test_http_1_0(self) -> None:
        """HTTP/1.0: its status line, and the connection closes."""
        self.compare(_REQUESTS["HTTP/1.0"])
        wire, _, closing = self.exchange(_Answer(200, {}, (), fast=True), _REQUESTS["HTTP/1.0"])
        self.assertTrue(wire.startswith(b"HTTP/1.0 200 OK\r\n"), wire)
        self.assertTrue(closing)

    def test_head(self) -> None:
        """HEAD: the same head, no body, length 0 in the access line."""
        self.compare(_REQUESTS["HEAD"])
        wire, line, _ = self.exchange(_Answer(200, {}, (), fast=True), _REQUESTS["HEAD"])
        self.assertTrue(wire.endswith(b"Content-Length: 2\r\n\r\n"), wire)
        self.assertIn('"HEAD /a HTTP/1.1" 200 - ', line)

    def test_site_without_keep_alive(self) -> None:
        """A listener that closes every connection says so, on both paths alike."""
        self.compare(_REQUESTS["keep-alive HTTP/1.1"], keep_alive=False)

    def test_header_set_before_takes_twisteds_path(self) -> None:
        """A header set on the request before the answer: Twisted writes it, in its place."""

        class Tagged(_Answer):
            def render(self, request: Any) -> int:
                request.setHeader(b"X-Tag", b"1")
                return super().render(request)

        got = self.exchange(Tagged(200, {}, (), fast=True), _REQUESTS["keep-alive HTTP/1.1"])
        expected = self.exchange(Tagged(200, {}, (), fast=False), _REQUESTS["keep-alive HTTP/1.1"])
        self.assertEqual(got, expected)
        self.assertIn(b"\r\nDate: Tue, 14 Nov 2023 22:13:20 GMT\r\nX-Tag: 1\r\n", got[0])

    def test_pipelined_requests_answered_in_order(self) -> None:
        """Three requests in one read on one connection get their answers in order."""

        class Counting(Resource):
            isLeaf = True
            seen = 0

            def render(self, request: Any) -> int:
                self.seen += 1
                json_response(request, 200 if self.seen % 2 else 202, {"n": self.seen})
                return NOT_DONE_YET

        one = b"PUT /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        wire, line, closing = self.exchange(Counting(), one * 3)  # type: ignore[arg-type]
        answers = wire.split(b"HTTP/1.1 ")[1:]
        self.assertEqual([answer[:3] for answer in answers], [b"200", b"202", b"200"])
        self.assertEqual(
            [answer.rpartition(b"\r\n\r\n")[2] for answer in answers],
            [b'{"n":1}', b'{"n":2}', b'{"n":3}'],
        )
        self.assertEqual(line.count("\n"), 3)
        self.assertFalse(closing)

    def test_finish_notified(self) -> None:
        """``notifyFinish`` fires when the whole answer is written."""
        fired: list[object] = []

        class Notified(Resource):
            isLeaf = True

            def render(self, request: Any) -> int:
                request.notifyFinish().addCallback(fired.append)
                json_response(request, 200, {})
                return NOT_DONE_YET

        self.exchange(Notified(), _REQUESTS["keep-alive HTTP/1.1"])  # type: ignore[arg-type]
        self.assertEqual(fired, [None])


class AnswerCacheTests(SynchronousTestCase):
    """``AnswerCache`` builds each answer once per ``Date`` second."""

    def test_built_once_per_date(self) -> None:
        """The same answer in the same second is the same bytes object; a new second rebuilds."""
        cache = AnswerCache(b"S")
        headers = ((b"Content-Type", b"application/json"), (b"Content-Length", b"2"))
        first = cache.response(b"D1", (), b"HTTP/1.1", 200, headers, b"{}", False)
        again = cache.response(b"D1", (), b"HTTP/1.1", 200, headers, b"{}", False)
        later = cache.response(b"D2", (), b"HTTP/1.1", 200, headers, b"{}", False)
        self.assertIs(first, again)
        self.assertEqual(
            first,
            b"HTTP/1.1 200 OK\r\nServer: S\r\nDate: D1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        )
        self.assertEqual(later, first.replace(b"D1", b"D2"))

    def test_declines_what_twisted_would_change(self) -> None:
        """No ``Content-Length`` of the body's size, or no type: None (Twisted's path)."""
        cache = AnswerCache(b"S")
        typed = ((b"Content-Type", b"application/json"),)
        self.assertIsNone(cache.response(b"D", (), b"HTTP/1.1", 200, typed, b"{}", False))
        wrong = (*typed, (b"Content-Length", b"3"))
        self.assertIsNone(cache.response(b"D", (), b"HTTP/1.1", 200, wrong, b"{}", False))
        untyped = ((b"Content-Length", b"2"),)
        self.assertIsNone(cache.response(b"D", (), b"HTTP/1.1", 200, untyped, b"{}", False))

    def test_prior_headers_first(self) -> None:
        """Headers set before rendering come first, as in ``responseHeaders``."""
        cache = AnswerCache(b"S")
        prior = ((b"Connection", (b"close",)),)
        headers = ((b"Content-Type", b"t"), (b"Content-Length", b"0"))
        raw = cache.response(b"D", prior, b"HTTP/1.1", 404, headers, b"", True)
        assert raw is not None
        self.assertEqual(
            raw.split(b"\r\n")[:3], [b"HTTP/1.1 404 Not Found", b"Connection: close", b"Server: S"]
        )
