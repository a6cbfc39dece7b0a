"""Tests for ``pushtwisted.web._site``: the transport policy of every HTTP listener.

Bytes go in through ``StringTransport``; the resource is a static page, so
these tests see only what the ``Site`` itself adds.  The endpoint's own use
of it (413 on ``PUT /update/``, CORS, metrics) is tested in
``tests/test_endpoint.py``, connection limits in ``tests/test_connlimit.py``.
"""

from __future__ import annotations

import io
import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.static import Data

from pushtwisted.connlimit import ConnectionLimit
from pushtwisted.metrics import NullMetrics
from pushtwisted.web._site import ListenerSite, scrub_target
from pushtwisted.web._util import raw_json_response

_PEER = IPv4Address("TCP", "127.0.0.1", 40000)


def _root() -> Resource:
    root = Resource()
    root.putChild(b"page", Data(b"hello", "text/plain"))
    root.putChild(b"secret", Data(b"token", "text/plain"))
    return root


def _recording(factory: Any, seen: list[object]) -> Any:
    """Wrap a request factory so that each request's ``getHost()`` is recorded."""

    def build(*args: Any, **kwargs: Any) -> Any:
        request = factory(*args, **kwargs)
        seen.append(request.getHost())
        return request

    return build


class ListenerSiteTests(SynchronousTestCase):
    """``ListenerSite`` applies the policy its builder chose."""

    def setUp(self) -> None:
        self.clock = Clock()

    def site(self, **kwargs: Any) -> ListenerSite:
        kwargs.setdefault("max_body", 16)
        site = ListenerSite(_root(), reactor=self.clock, **kwargs)
        site.startFactory()
        self.addCleanup(site.stopFactory)
        return site

    def connect(self, site: ListenerSite) -> tuple[Any, StringTransport]:
        channel = site.buildProtocol(_PEER)
        transport = StringTransport(peerAddress=_PEER)
        channel.makeConnection(transport)
        return channel, transport

    def test_keep_alive_by_default(self) -> None:
        """By default a response leaves the connection open for the next request."""
        channel, transport = self.connect(self.site())
        channel.dataReceived(b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value())
        self.assertFalse(transport.disconnecting)

    def test_date_header_of_the_current_second(self) -> None:
        """Every response carries the ``Date`` of the site's clock, formatted once a second."""
        site = self.site()
        self.clock.advance(1_700_000_000.25)
        channel, transport = self.connect(site)

        def dates() -> list[bytes]:
            return [
                line.partition(b": ")[2]
                for line in transport.value().split(b"\r\n")
                if line.startswith(b"Date: ")
            ]

        channel.dataReceived(b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(0.5)
        channel.dataReceived(b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(0.5)
        channel.dataReceived(b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(
            dates(),
            [b"Tue, 14 Nov 2023 22:13:20 GMT"] * 2 + [b"Tue, 14 Nov 2023 22:13:21 GMT"],
        )
        self.assertEqual(site.http_date(), b"Tue, 14 Nov 2023 22:13:21 GMT")

    def test_local_address_read_once_per_connection(self) -> None:
        """Requests on one connection see its local address; the transport is asked once."""
        asked: list[object] = []

        class Counting(StringTransport):
            def getHost(self) -> Any:
                asked.append(None)
                return super().getHost()

        channel = self.site().buildProtocol(_PEER)
        transport = Counting(peerAddress=_PEER)
        channel.makeConnection(transport)
        seen: list[object] = []
        channel.requestFactory = _recording(channel.requestFactory, seen)
        for _ in range(3):
            channel.dataReceived(b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 "), 3)
        self.assertEqual(seen, [transport.getHost()] * 3)
        self.assertEqual(len(asked), 2, "once for the requests, once just above")

    def test_one_request_per_connection(self) -> None:
        """With ``keep_alive`` off, the response says ``Connection: close`` and the
        connection closes once it is written."""
        channel, transport = self.connect(self.site(keep_alive=False))
        channel.dataReceived(b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = transport.value().partition(b"\r\n\r\n")
        self.assertIn(b"\r\nConnection: close", head)
        self.assertEqual(body, b"hello")
        self.assertTrue(transport.disconnecting)

    def test_early_413_headers_and_hook(self) -> None:
        """The early 413 carries the extra headers and calls ``on_oversize`` once."""
        calls: list[str] = []
        site = self.site(
            oversize_headers=((b"X-Extra", b"yes"),), on_oversize=lambda: calls.append("413")
        )
        channel, transport = self.connect(site)
        channel.dataReceived(b"PUT /page HTTP/1.1\r\nHost: x\r\nContent-Length: 17\r\n\r\n")
        raw = transport.value()
        self.assertTrue(raw.startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n"), raw)
        self.assertIn(b"\r\nX-Extra: yes\r\n", raw)
        self.assertEqual(json.loads(raw.partition(b"\r\n\r\n")[2])["errno"], 302)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(calls, ["413"])

    def test_no_access_log_by_default(self) -> None:
        """Without an ``access_log`` filter nothing reaches the access log."""
        site = self.site()
        site.logFile = buffer = io.StringIO()
        channel, _ = self.connect(site)
        channel.dataReceived(b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(buffer.getvalue(), "")

    def test_access_log_filter(self) -> None:
        """With a filter, only the requests it accepts (it sees the routed path) reach the
        access log."""
        site = self.site(access_log=lambda request: request.prepath[:1] != [b"secret"])
        site.logFile = buffer = io.StringIO()
        channel, _ = self.connect(site)
        channel.dataReceived(b"GET /%73ecret HTTP/1.1\r\nHost: x\r\n\r\n")
        channel.dataReceived(b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn("/page", buffer.getvalue())
        self.assertNotIn("ecret", buffer.getvalue())

    def test_access_lines_are_scrubbed(self) -> None:
        """Every access line has its tokens replaced, in the target and the Referer,
        whatever the case, the slashes or the form of the target."""
        site = self.site(access_log=lambda request: True)
        site.logFile = buffer = io.StringIO()
        channel, _ = self.connect(site)
        token = "gAAAAABl" + "x" * 76
        targets = [
            f"//update/{token}",
            f"/Update/{token}",
            f"/UPDATE//{token}/more",
            f"/update%2F{token}",
            f"/%75pdate/{token}",
            f"http://push.example/update/{token}",
            f"/wpush/v2/{token}",
            f"/elsewhere/{token}",
            f"/page?token={token}&x=1",
        ]
        for target in targets:
            channel.dataReceived(
                f"PUT {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                f"Referer: https://app.example/update/{token}\r\n\r\n".encode("ascii")
            )
        log = buffer.getvalue()
        self.assertEqual(len(log.splitlines()), len(targets))
        self.assertNotIn("xxxxxxxxxx", log)
        for shown in [
            '"PUT //update/<token> HTTP/1.1"',
            '"PUT /Update/<token> HTTP/1.1"',
            '"PUT /UPDATE//<token>/<token> HTTP/1.1"',
            '"PUT /<token> HTTP/1.1"',
            '"PUT /%75pdate/<token> HTTP/1.1"',
            '"PUT http://push.example/update/<token> HTTP/1.1"',
            '"PUT /wpush/v2/<token> HTTP/1.1"',
            '"PUT /elsewhere/<token> HTTP/1.1"',
            '"PUT /page?token=<token>&x=1 HTTP/1.1"',
            '"https://app.example/update/<token>"',
        ]:
            self.assertIn(shown, log)

    def test_scrub_target_keeps_what_is_not_a_token(self) -> None:
        """Short segments, API versions and query values are kept as sent."""
        for target in [b"/status", b"/health/", b"/metrics?x=1", b"/a/b%20c/", b"*", b""]:
            self.assertEqual(scrub_target(target), target)
        self.assertEqual(scrub_target(b"/wpush/v1/"), b"/wpush/v1/")
        self.assertEqual(scrub_target(b"/update"), b"/update")

    def test_limit_counts_and_releases(self) -> None:
        """With a ``ConnectionLimit`` each channel holds a place until its connection is lost."""
        limit = ConnectionLimit("test", 1, Clock(), NullMetrics())
        site = self.site(limit=limit)
        channel, _ = self.connect(site)
        self.assertIsNone(site.buildProtocol(_PEER))
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(limit.open, 0)
        self.assertIsNotNone(site.buildProtocol(_PEER))

    def test_no_limit(self) -> None:
        """Without a limit every connection is accepted."""
        site = self.site()
        self.assertTrue(all(site.buildProtocol(_PEER) is not None for _ in range(50)))


class _CountingTransport(StringTransport):
    """A ``StringTransport`` that counts the writes made to it."""

    writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)

    def writeSequence(self, iovec: Any) -> None:
        self.writes += 1
        super().writeSequence(iovec)


class _EmptyPage(Resource):
    """A page answered with headers only: ``Content-Length: 0`` and no body write."""

    isLeaf = True

    def render(self, request: Any) -> int:
        request.setHeader(b"Content-Length", b"0")
        request.finish()
        return NOT_DONE_YET


class ResponseWriteTests(SynchronousTestCase):
    """A response's head goes out in the transport write of its body."""

    def exchange(self, request: bytes, **kwargs: Any) -> _CountingTransport:
        root = _root()
        root.putChild(b"empty", _EmptyPage())
        site = ListenerSite(root, reactor=Clock(), max_body=16, **kwargs)
        channel = site.buildProtocol(_PEER)
        transport = _CountingTransport(peerAddress=_PEER)
        channel.makeConnection(transport)
        channel.dataReceived(request)
        return transport

    def test_head_and_body_in_one_write(self) -> None:
        transport = self.exchange(b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = transport.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 OK\r\n"), head)
        self.assertIn(b"\r\nContent-Length: 5", head)
        self.assertEqual(body, b"hello")
        self.assertEqual(transport.writes, 1)

    def test_head_without_body_is_sent_when_the_response_ends(self) -> None:
        transport = self.exchange(b"GET /empty HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(transport.value().endswith(b"\r\nContent-Length: 0\r\n\r\n"))
        self.assertEqual(transport.writes, 1)

    def test_head_request_gets_the_head_only(self) -> None:
        transport = self.exchange(b"HEAD /page HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(transport.value().endswith(b"\r\n\r\n"))
        self.assertFalse(transport.disconnecting)

    def test_head_sent_before_the_connection_closes(self) -> None:
        transport = self.exchange(b"GET /empty HTTP/1.1\r\nHost: x\r\n\r\n", keep_alive=False)
        self.assertIn(b"\r\nConnection: close\r\n", transport.value())
        self.assertTrue(transport.value().endswith(b"\r\n\r\n"))
        self.assertTrue(transport.disconnecting)

    def test_pipelined_answers_in_order(self) -> None:
        transport = self.exchange(
            b"GET /page HTTP/1.1\r\nHost: x\r\n\r\nGET /secret HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        first, second = transport.value().split(b"HTTP/1.1 200 OK")[1:]
        self.assertTrue(first.endswith(b"hello"))
        self.assertTrue(second.endswith(b"token"))


class RawJSONResponseTests(SynchronousTestCase):
    """``raw_json_response`` builds a whole closing HTTP/1.1 answer."""

    def test_shape(self) -> None:
        """Status line, JSON type, exact length, ``Connection: close``, extra headers, body."""
        raw = raw_json_response(503, {"a": "\u00e9"}, headers=((b"Retry-After", b"5"),))
        head, _, body = raw.partition(b"\r\n\r\n")
        self.assertEqual(
            head.split(b"\r\n"),
            [
                b"HTTP/1.1 503 Service Unavailable",
                b"Content-Type: application/json",
                b"Content-Length: %d" % len(body),
                b"Connection: close",
                b"Retry-After: 5",
            ],
        )
        self.assertEqual(json.loads(body), {"a": "\u00e9"})
