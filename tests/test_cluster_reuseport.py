"""Tests for ``pushtwisted.cluster.reuseport``: descriptions, sockets, the service.

The socket tests bind real sockets on 127.0.0.1 (port 0, then that same
port again) but never run a reactor: the reactor is a fake that keeps the
adopted socket.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.protocol import ServerFactory
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.cluster.reuseport import (
    ReusePortService,
    TCPListen,
    listen_reuse_port,
    parse_tcp_description,
)


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


class ParseTests(SynchronousTestCase):
    """``parse_tcp_description`` reads tcp/tcp6 descriptions only."""

    def test_tcp(self) -> None:
        """Port, interface and backlog are read; IPv4 by default."""
        self.assertEqual(
            parse_tcp_description("tcp:8080:interface=127.0.0.1:backlog=1024"),
            TCPListen(port=8080, interface="127.0.0.1", backlog=1024, family=socket.AF_INET),
        )

    def test_defaults(self) -> None:
        """Without keys: every IPv4 address and the default backlog."""
        self.assertEqual(
            parse_tcp_description("tcp:80", default_backlog=7),
            TCPListen(port=80, interface="", backlog=7, family=socket.AF_INET),
        )
        self.assertEqual(parse_tcp_description("tcp:port=81").port, 81)

    def test_ipv6(self) -> None:
        """``tcp6`` or an IPv6 interface (colons escaped) means IPv6."""
        self.assertEqual(parse_tcp_description("tcp6:8080").interface, "::")
        listen = parse_tcp_description(r"tcp:8080:interface=\:\:1")
        self.assertEqual((listen.interface, listen.family), ("::1", socket.AF_INET6))

    def test_refused(self) -> None:
        """Other types, bad values and unknown keys are a ``ValueError``."""
        for bad in (
            "ssl:443:privateKey=k.pem",
            "unix:/tmp/s",
            "systemd:domain=INET:index=0",
            "tcp",
            "tcp:http",
            "tcp:70000",
            "tcp:80:backlog=0",
            "tcp:80:backlog=x",
            "tcp:80:81",
            "tcp:80:reuse=1",
        ):
            with self.assertRaises(ValueError, msg=bad):
                parse_tcp_description(bad)


class ListenTests(SynchronousTestCase):
    """``listen_reuse_port`` makes a SO_REUSEPORT socket and hands it over."""

    def setUp(self) -> None:
        self.reactor = _AdoptingReactor()
        self.addCleanup(self.reactor.close)

    def test_two_listeners_share_a_port(self) -> None:
        """Two listeners bind the same port, both with SO_REUSEPORT, listening."""
        factory: ServerFactory[Any] = ServerFactory()
        first = TCPListen(port=0, interface="127.0.0.1", backlog=5, family=socket.AF_INET)
        listen_reuse_port(self.reactor, first, factory)  # type: ignore[arg-type]
        port = self.reactor.sockets[0].getsockname()[1]
        second = TCPListen(port=port, interface="127.0.0.1", backlog=5, family=socket.AF_INET)
        listen_reuse_port(self.reactor, second, factory)  # type: ignore[arg-type]
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
        port = holder.getsockname()[1]
        listen = TCPListen(port=port, interface="127.0.0.1", backlog=5, family=socket.AF_INET)
        with self.assertRaises(OSError):
            listen_reuse_port(self.reactor, listen, ServerFactory())  # type: ignore[arg-type]
        self.assertEqual(self.reactor.sockets, [])


class ServiceTests(SynchronousTestCase):
    """``ReusePortService`` listens while running."""

    def test_start_stop(self) -> None:
        """Starting adopts one port; stopping stops listening; stopping again is fine."""
        reactor = MemoryReactorClock()
        factory: ServerFactory[Any] = ServerFactory()
        listen = TCPListen(port=0, interface="127.0.0.1", backlog=5, family=socket.AF_INET)
        service = ReusePortService(listen, factory, reactor)
        service.privilegedStartService()
        service.startService()
        self.assertEqual(len(reactor.adoptedPorts), 1)
        self.assertIs(reactor.adoptedPorts[0][2], factory)
        self.assertIsNotNone(service.port)
        self.successResultOf(service.stopService())
        self.assertIsNone(service.port)
        self.successResultOf(service.stopService())
