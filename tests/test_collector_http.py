"""The endpoint listener's connections leave nothing behind for the frozen collector.

``pushtwisted.collector`` freezes what lives past a second, and a cycle among
frozen objects is never collected (until the hourly full collection).  So a
keep-alive HTTP connection from an app server, frozen while it was open,
must be freed once it closes by reference counting and the collection of
what is *not* frozen, whatever its requests were answered: delivered,
stored, refused early (413, 408, a body cut short), refused by the resource
(400, 404, 405, 410), failed in storage (503, 500), or the status, health
and metrics pages.  Each test freezes everything after every request, as
the collector does every second, then loses the connection, collects, and
checks that the channel and its requests are gone.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request

from pushtwisted.metrics import NullMetrics
from pushtwisted.prometheus import PrometheusMetrics
from pushtwisted.storage.memory import MemoryStorage
from pushtwisted.testing import FailingStorage, make_node
from pushtwisted.web.endpoint import build_endpoint_site
from pushtwisted.web.status import add_status_children

_PEER = IPv4Address("TCP", "127.0.0.1", 40001)
UAID = "0123456789abcdef0123456789abcdef"
CHID = "fedcba9876543210fedcba9876543210"


class _TcpLikeTransport(StringTransport):
    """A ``StringTransport`` that, like Twisted's TCP transport, drops its protocol when lost."""

    def __init__(self) -> None:
        super().__init__(peerAddress=_PEER)
        self.protocol: Any = None

    def loseConnection(self) -> None:
        super().loseConnection()
        self.lose()

    def lose(self) -> None:
        """The TCP connection is gone: drop the producer, tell the protocol, let go of it."""
        self.producer = None
        protocol, self.protocol = self.protocol, None
        if protocol is not None:
            protocol.connectionLost(None)


def _put(path: str, body: bytes = b"version=5", extra: bytes = b"") -> bytes:
    return (
        b"PUT " + path.encode() + b" HTTP/1.1\r\nHost: push\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


class EndpointNoCycleTests(SynchronousTestCase):
    """However a keep-alive endpoint connection was used, reference counting frees it."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.memory = MemoryStorage(self.clock)
        self.successResultOf(self.memory.register(UAID, CHID, CHID, 0))
        self.addCleanup(gc.unfreeze)

    def assertFreed(self, *requests: bytes, storage: Any = None) -> bytes:
        """Send ``requests`` on one connection, freezing after each, lose it; nothing
        of it may stay once what is not frozen is collected.

        :returns: what the server wrote.
        """
        node = make_node(storage=storage or self.memory, clock=self.clock, metrics=NullMetrics())
        site = build_endpoint_site(node)
        add_status_children(site.resource, node, PrometheusMetrics())
        token = node.crypto.make_token(UAID, CHID)
        gc.collect()  # what earlier tests left to the collector is not counted
        before = _count(Request)
        transport = _TcpLikeTransport()
        channel = site.buildProtocol(_PEER)
        transport.protocol = channel
        channel.makeConnection(transport)
        for request in requests:
            if transport.protocol is None:
                break
            transport.protocol.dataReceived(request.replace(b"{token}", token.encode()))
            self.clock.advance(0)
            gc.collect()
            gc.freeze()
        ref = weakref.ref(channel)
        del channel
        self.clock.advance(30)  # past the request deadline
        written = transport.value()
        transport.lose()
        self.clock.advance(3600)  # every timer of the connection has fired or gone
        del transport
        gc.collect()
        self.assertIsNone(ref())
        self.assertEqual(_count(Request), before)
        return written

    def test_answers_of_the_update_resource(self) -> None:
        """Stored (202), bad version (400), bad token (404), other method (405), unknown
        channel (410) and a multipart body, on one connection."""
        written = self.assertFreed(
            _put("/update/{token}"),
            _put("/update/{token}", b"version=x"),
            _put("/update/nope"),
            b"GET /update/{token} HTTP/1.1\r\nHost: push\r\n\r\n",
            b"OPTIONS /update/{token} HTTP/1.1\r\nHost: push\r\n\r\n",
            _put(
                "/update/{token}",
                b'--b\r\nContent-Disposition: form-data; name="version"\r\n\r\n7\r\n--b--\r\n',
                b"X: y\r\n",
            ).replace(b"application/x-www-form-urlencoded", b"multipart/form-data; boundary=b"),
        )
        for status in (b"202", b"400", b"404", b"405", b"200"):
            self.assertIn(b"HTTP/1.1 " + status, written)

    def test_gone(self) -> None:
        """A PUT to an unregistered channel (410)."""
        self.successResultOf(self.memory.unregister(UAID, CHID))
        self.assertIn(b"HTTP/1.1 410", self.assertFreed(_put("/update/{token}")))

    def test_storage_failure(self) -> None:
        """A PUT whose storage call fails (503, a ``Failure`` on the way)."""
        failing = FailingStorage(self.memory, ["update"])
        self.assertIn(b"HTTP/1.1 503", self.assertFreed(_put("/update/{token}"), storage=failing))

    def test_unexpected_error(self) -> None:
        """A PUT whose storage raises something unexpected (500, logged with a traceback)."""
        failing = FailingStorage(self.memory, ["update"], RuntimeError("bug"))
        written = self.assertFreed(_put("/update/{token}"), storage=failing)
        self.assertIn(b"HTTP/1.1 5", written)
        self.flushLoggedErrors(RuntimeError)

    def test_early_refusals(self) -> None:
        """A body over the limit (early 413) and a request that never ends (408)."""
        self.assertIn(
            b"HTTP/1.1 413",
            self.assertFreed(
                b"PUT /update/{token} HTTP/1.1\r\nHost: push\r\nContent-Length: 99999999\r\n\r\n"
            ),
        )
        self.assertIn(
            b"HTTP/1.1 408",
            self.assertFreed(b"PUT /update/{token} HTTP/1.1\r\nHost: push\r\n"),
        )

    def test_body_cut_short(self) -> None:
        """A body that never arrives whole (408 after the deadline, connection lost)."""
        self.assertIn(
            b"HTTP/1.1 408",
            self.assertFreed(
                b"PUT /update/{token} HTTP/1.1\r\nHost: push\r\nContent-Length: 100\r\n\r\nv"
            ),
        )

    def test_status_pages(self) -> None:
        """``/status``, ``/health``, ``/metrics`` and an unknown path."""
        written = self.assertFreed(
            b"GET /status HTTP/1.1\r\nHost: push\r\n\r\n",
            b"GET /health HTTP/1.1\r\nHost: push\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nHost: push\r\n\r\n",
            b"GET /nothing HTTP/1.1\r\nHost: push\r\n\r\n",
        )
        self.assertIn(b"HTTP/1.1 404", written)


def _count(kind: type) -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, kind))
