"""Tests for ``pushtwisted.listeners``: a section's ``listen``, ``backlog`` and
``reuse_port``, and the service that listens on it.

The inner description goes to a recorder instead of ``serverFromString``
where the test is about what the parser writes; ``tests/test_tap.py`` and
``tests/test_tap_cluster.py`` check the listeners the whole tree opens.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.cluster.reuseport import ReusePortEndpoint
from pushtwisted.errors import ConfigError
from pushtwisted.listeners import (
    ListenerParser,
    ListenerService,
    ReusePortError,
    listen_problem,
    listener_description,
)


class _Recorder:
    """Stands in for ``serverFromString``: keeps the description it is given."""

    def __init__(self) -> None:
        self.descriptions: list[str] = []

    def __call__(self, reactor: Any, description: str) -> Any:
        self.descriptions.append(description)
        return object()


class DescriptionTests(SynchronousTestCase):
    """What ``ListenerParser`` hands on for each kind of description."""

    def inner(self, *args: str, **kwargs: str) -> str:
        """Hand the parser a description split as Twisted splits it (backlog 9, no
        reuse_port); return the inner description it passes on."""
        recorder = _Recorder()
        parser = ListenerParser(server_from_string=recorder)
        parser.parseStreamServer(MemoryReactorClock(), "9", "0", *args, **kwargs)
        [description] = recorder.descriptions
        return description

    def test_backlog_added(self) -> None:
        """``tcp``, ``tcp6``, ``ssl``, ``unix`` and ``reuseport`` get ``backlog=`` when they
        have none."""
        self.assertEqual(
            self.inner("tcp", "8080", interface="127.0.0.1"),
            "tcp:8080:interface=127.0.0.1:backlog=9",
        )
        for kind in ("tcp6", "ssl", "unix", "reuseport"):
            self.assertEqual(self.inner(kind, "x"), f"{kind}:x:backlog=9")

    def test_backlog_in_description_kept(self) -> None:
        """A ``backlog=`` written in the description wins."""
        self.assertEqual(self.inner("tcp", "8080", backlog="5"), "tcp:8080:backlog=5")

    def test_backlog_not_added_where_unsupported(self) -> None:
        """Types whose parser takes no backlog (``systemd``) are handed on as written."""
        self.assertEqual(
            self.inner("systemd", domain="INET", index="0"), "systemd:domain=INET:index=0"
        )

    def test_quoted_again(self) -> None:
        """Colons and backslashes in the parsed values are escaped again."""
        self.assertEqual(self.inner("unix", "/tmp/a:b"), r"unix:/tmp/a\:b:backlog=9")
        self.assertEqual(
            self.inner("tcp", "80", interface="::1"), r"tcp:80:interface=\:\:1:backlog=9"
        )
        self.assertEqual(self.inner("unix", "c\\d"), r"unix:c\\d:backlog=9")

    def test_port_out_of_range(self) -> None:
        """A ``tcp``, ``tcp6`` or ``ssl`` port past 65535 is a ``ValueError``, as an
        argument or as the ``port`` keyword; 65535 passes."""
        for args, kwargs in (
            (("tcp", "99999"), {}),
            (("tcp6", "65536"), {}),
            (("ssl", "70000"), {"privateKey": "k.pem"}),
            (("tcp",), {"port": "99999"}),
        ):
            with self.assertRaises(ValueError, msg=args) as caught:
                self.inner(*args, **kwargs)
            self.assertIn("port must be 0-65535", str(caught.exception))
        self.assertEqual(self.inner("tcp", "65535"), "tcp:65535:backlog=9")

    def test_empty(self) -> None:
        """A description without a type is a ``ValueError``."""
        with self.assertRaises(ValueError):
            self.inner()
        with self.assertRaises(ValueError):
            serverFromString(
                MemoryReactorClock(), listener_description("", backlog=1, reuse_port=False)
            )


class ReusePortTests(SynchronousTestCase):
    """``reuse_port`` turns ``tcp:``/``tcp6:`` into a ``ReusePortEndpoint``, and nothing else."""

    def endpoint(self, listen: str, backlog: int = 9) -> Any:
        description = listener_description(listen, backlog=backlog, reuse_port=True)
        return serverFromString(MemoryReactorClock(), description)

    def test_tcp(self) -> None:
        """``tcp:`` keeps its port and interface and gets the section's backlog."""
        endpoint = self.endpoint("tcp:8080:interface=127.0.0.1")
        assert isinstance(endpoint, ReusePortEndpoint)
        self.assertEqual(
            (endpoint.port, endpoint.interface, endpoint.backlog, endpoint.family),
            (8080, "127.0.0.1", 9, socket.AF_INET),
        )
        self.assertEqual(self.endpoint("tcp:8080:backlog=3").backlog, 3)

    def test_tcp6(self) -> None:
        """``tcp6:`` listens on every IPv6 address unless an interface is given."""
        endpoint = self.endpoint("tcp6:8080")
        self.assertEqual((endpoint.interface, endpoint.family), ("::", socket.AF_INET6))
        self.assertEqual(self.endpoint(r"tcp6:8080:interface=\:\:1").interface, "::1")

    def test_refused(self) -> None:
        """Other types, and keys ``reuseport`` does not take, are a ``ReusePortError``."""
        for bad in (
            "ssl:443:privateKey=k.pem",
            "unix:/tmp/s",
            "systemd:domain=INET:index=0",
            "tcp",
            "tcp:http",
            "tcp:80:backlog=0",
            "tcp:80:81",
            "tcp:80:reuse=1",
        ):
            with self.assertRaises(ReusePortError, msg=bad):
                self.endpoint(bad)

    def test_off(self) -> None:
        """Without ``reuse_port`` a ``tcp:`` description is Twisted's own TCP endpoint."""
        description = listener_description("tcp:8080", backlog=9, reuse_port=False)
        endpoint = serverFromString(MemoryReactorClock(), description)
        self.assertNotIsInstance(endpoint, ReusePortEndpoint)


class _RefusingReactor(MemoryReactorClock):
    """A ``MemoryReactorClock`` whose ``listenTCP`` and ``listenUNIX`` fail as told."""

    def __init__(self, error: OSError) -> None:
        super().__init__()
        self.error = error

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        raise CannotListenError(interface, port, self.error)

    def listenUNIX(self, address: str, factory: Any, *args: Any, **kwargs: Any) -> Any:
        raise CannotListenError(None, address, self.error)


_IN_USE = OSError(errno.EADDRINUSE, "Address already in use")


class ListenerServiceTests(SynchronousTestCase):
    """``ListenerService`` listens while it runs; a bind failure names its section."""

    def service(self, reactor: MemoryReactorClock, listen: str) -> ListenerService:
        endpoint = serverFromString(
            reactor, listener_description(listen, backlog=9, reuse_port=False)
        )
        return ListenerService("websocket", listen, endpoint, Factory())

    def test_listens_and_stops(self) -> None:
        """The port is bound at the privileged start, kept, and closed at stop."""
        reactor = MemoryReactorClock()
        service = self.service(reactor, "tcp:8080:interface=127.0.0.1")
        service.privilegedStartService()
        service.startService()
        self.assertEqual([entry[0::2] for entry in reactor.tcpServers], [(8080, 9)])
        self.assertIsNotNone(service.port)
        self.successResultOf(service.stopService())
        self.assertIsNone(service.port)
        self.assertFalse(service.running)

    def test_start_alone_listens_once(self) -> None:
        """``startService`` without the privileged start listens, once."""
        reactor = MemoryReactorClock()
        service = self.service(reactor, "tcp:8080")
        service.startService()
        self.assertEqual(len(reactor.tcpServers), 1)
        self.assertIsNotNone(service.port)

    def test_address_in_use(self) -> None:
        """A port in use is a ``ConfigError``: section, address and reason, one line."""
        service = self.service(_RefusingReactor(_IN_USE), "tcp:8080:interface=127.0.0.1")
        error = self.assertRaises(ConfigError, service.privilegedStartService)
        self.assertEqual(
            error.problems,
            ("websocket.listen: cannot listen on 127.0.0.1:8080: address already in use",),
        )
        self.assertIsNone(service.port)

    def test_address_not_on_this_host(self) -> None:
        """An interface this host does not have is said so."""
        refusing = _RefusingReactor(OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"))
        service = self.service(refusing, "tcp:8080:interface=192.0.2.1")
        error = self.assertRaises(ConfigError, service.startService)
        self.assertEqual(
            str(error),
            "websocket.listen: cannot listen on 192.0.2.1:8080: this host has no such address",
        )

    def test_problem_text(self) -> None:
        """Every interface reads 0.0.0.0, IPv6 is bracketed, a UNIX socket is its path,
        other errors name the description."""
        cases = [
            (CannotListenError("", 80, _IN_USE), "0.0.0.0:80: address already in use"),
            (CannotListenError("::1", 80, _IN_USE), "[::1]:80: address already in use"),
            (
                CannotListenError(None, "/run/p.sock", OSError(errno.EACCES, "Permission denied")),
                "/run/p.sock: permission denied",
            ),
            (
                OverflowError("bind(): port must be 0-65535."),
                "'tcp:1': bind(): port must be 0-65535.",
            ),
        ]
        for error, tail in cases:
            self.assertEqual(
                listen_problem("endpoint", "tcp:1", error),
                f"endpoint.listen: cannot listen on {tail}",
            )

    def test_late_failure_is_logged(self) -> None:
        """An endpoint that fails after the start is logged, not raised."""
        listening: Deferred[Any] = Deferred()
        endpoint = _PendingEndpoint(listening)
        service = ListenerService("endpoint", "x:1", endpoint, Factory())
        service.privilegedStartService()
        listening.errback(CannotListenError("", 1, _IN_USE))
        self.assertEqual(len(self.flushLoggedErrors(CannotListenError)), 1)
        self.successResultOf(service.stopService())

    def test_stop_before_bound_cancels(self) -> None:
        """Stopping while the endpoint has not answered cancels the attempt quietly."""
        cancelled: list[object] = []
        listening: Deferred[Any] = Deferred(cancelled.append)
        service = ListenerService("endpoint", "x:1", _PendingEndpoint(listening), Factory())
        service.startService()
        self.successResultOf(service.stopService())
        self.assertEqual(len(cancelled), 1)
        self.assertEqual(self.flushLoggedErrors(), [])


class _PendingEndpoint:
    """An endpoint whose ``listen`` answers with a Deferred the test fires."""

    def __init__(self, listening: Deferred[Any]) -> None:
        self.listening = listening

    def listen(self, factory: Any) -> Deferred[Any]:
        return self.listening
