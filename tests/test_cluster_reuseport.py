"""Tests for ``pushtwisted.cluster.reuseport``: the ``reuseport:`` endpoint type.

The socket tests bind real sockets on 127.0.0.1 (port 0, then that same
port again) but never run a reactor: the reactor is a fake that keeps the
adopted socket.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import ServerFactory
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.cluster.reuseport import ReusePortEndpoint, listen_reuse_port


class _AdoptingReactor:
    """Keeps every adopted listening socket (a duplicate, as the real reactor does)."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []

    def adoptStreamPort(self, fileno: int, family: int, factory: Any) -> Any:
        sock = socket.fromfd(fileno, family, socket.SOCK_STREAM)
        self.sockets.append(sock)
        return sock

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def parse(description: str) -> ReusePortEndpoint:
    """Return what ``serverFromString`` makes of ``description`` (through the plugin)."""
    endpoint = serverFromString(MemoryReactorClock(), description)
    assert isinstance(endpoint, ReusePortEndpoint), endpoint
    return endpoint


class ParseTests(SynchronousTestCase):
    """``reuseport:`` descriptions, parsed by Twisted and our parser plugin."""

    def test_all_keys(self) -> None:
        """Port, interface and backlog are read; IPv4 by default."""
        endpoint = parse("reuseport:8080:interface=127.0.0.1:backlog=1024")
        self.assertEqual(
            (endpoint.port, endpoint.interface, endpoint.backlog, endpoint.family),
            (8080, "127.0.0.1", 1024, socket.AF_INET),
        )

    def test_defaults(self) -> None:
        """Without keys: every IPv4 address and a backlog of 50; ``port=`` works too."""
        endpoint = parse("reuseport:80")
        self.assertEqual((endpoint.interface, endpoint.backlog), ("", 50))
        self.assertEqual(parse("reuseport:port=81").port, 81)

    def test_ipv6(self) -> None:
        """An IPv6 interface (colons escaped) means an IPv6 socket."""
        endpoint = parse(r"reuseport:8080:interface=\:\:1")
        self.assertEqual((endpoint.interface, endpoint.family), ("::1", socket.AF_INET6))

    def test_refused(self) -> None:
        """Bad values, a missing port, extra arguments and unknown keys are a ``ValueError``."""
        for bad in (
            "reuseport",
            "reuseport:http",
            "reuseport:70000",
            "reuseport:80:backlog=0",
            "reuseport:80:backlog=x",
            "reuseport:80:81",
            "reuseport:80:port=81",
            "reuseport:80:reuse=1",
        ):
            with self.assertRaises(ValueError, msg=bad):
                serverFromString(MemoryReactorClock(), bad)


class ListenTests(SynchronousTestCase):
    """``listen_reuse_port`` makes a SO_REUSEPORT socket and hands it over."""

    def setUp(self) -> None:
        self.reactor = _AdoptingReactor()
        self.addCleanup(self.reactor.close)

    def listen(self, port: int) -> None:
        listen_reuse_port(
            self.reactor,  # type: ignore[arg-type]
            ServerFactory(),
            port=port,
            interface="127.0.0.1",
            backlog=5,
            family=socket.AF_INET,
        )

    def test_two_listeners_share_a_port(self) -> None:
        """Two listeners bind the same port, both with SO_REUSEPORT, listening."""
        self.listen(0)
        port = self.reactor.sockets[0].getsockname()[1]
        self.listen(port)
        for sock in self.reactor.sockets:
            self.assertEqual(sock.getsockname(), ("127.0.0.1", port))
            self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT), 1)
            self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN), 1)
            self.assertFalse(sock.get_inheritable())

    def test_plain_listener_blocks(self) -> None:
        """A port held without SO_REUSEPORT cannot be shared: ``OSError``, nothing adopted."""
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        with self.assertRaises(OSError):
            self.listen(holder.getsockname()[1])
        self.assertEqual(self.reactor.sockets, [])


class EndpointTests(SynchronousTestCase):
    """``ReusePortEndpoint.listen`` answers like Twisted's own TCP endpoints."""

    def test_listen(self) -> None:
        """Listening adopts one port serving the factory and fires with it."""
        reactor = MemoryReactorClock()
        factory: ServerFactory[Any] = ServerFactory()
        endpoint = ReusePortEndpoint(reactor, 0, interface="127.0.0.1", backlog=5)
        port = self.successResultOf(endpoint.listen(factory))
        [(_, family, adopted)] = reactor.adoptedPorts
        self.assertIs(adopted, factory)
        self.assertEqual(family, socket.AF_INET)
        self.assertIsNotNone(port)

    def test_cannot_listen(self) -> None:
        """A port held without SO_REUSEPORT fails the Deferred with ``CannotListenError``."""
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        reactor = MemoryReactorClock()
        endpoint = ReusePortEndpoint(reactor, holder.getsockname()[1], interface="127.0.0.1")
        self.failureResultOf(endpoint.listen(ServerFactory()), CannotListenError)
        self.assertEqual(reactor.adoptedPorts, [])
