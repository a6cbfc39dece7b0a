"""Listening sockets with ``SO_REUSEPORT``: several processes share one port.

Twisted's ``tcp:`` endpoint has no reuse-port option, so ``listen_reuse_port``
makes the socket itself (``SO_REUSEADDR`` + ``SO_REUSEPORT``, bound, listening,
non-blocking, close-on-exec) and hands it to the reactor with
``adoptStreamPort``; the kernel then spreads incoming connections over every
process listening on the port.  Run one ``twistd simplepush`` per core this
way, each with its own router port (``docs/cluster.md``).

Only ``tcp:`` and ``tcp6:`` descriptions are accepted, with the keys
``interface`` and ``backlog``: ``tcp:8080:interface=0.0.0.0:backlog=1024``.
Terminate TLS in front of the nodes (the load balancer) when you use it.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort, IReactorSocket
from twisted.internet.protocol import ServerFactory

__all__ = ["ReusePortService", "TCPListen", "listen_reuse_port", "parse_tcp_description"]

_UNESCAPED_COLON = re.compile(r"(?<!\\):")


@dataclass(frozen=True, slots=True, kw_only=True)
class TCPListen:
    """A parsed ``tcp:`` / ``tcp6:`` listener description.

    :ivar port: the TCP port (0 picks a free one).
    :ivar interface: the address to bind ("" = every IPv4 address).
    :ivar backlog: the listen backlog.
    :ivar family: ``socket.AF_INET`` or ``socket.AF_INET6``.
    """

    port: int
    interface: str
    backlog: int
    family: socket.AddressFamily


def parse_tcp_description(description: str, *, default_backlog: int = 50) -> TCPListen:
    """Parse ``tcp:PORT[:interface=ADDR][:backlog=N]`` (or ``tcp6:``).

    :raises ValueError: for another endpoint type, a bad port or backlog, or
        an unknown key.
    """
    parts = [p.replace("\\:", ":") for p in _UNESCAPED_COLON.split(description.strip())]
    kind = parts[0].lower()
    if kind not in ("tcp", "tcp6"):
        raise ValueError(f"reuse_port needs a tcp: or tcp6: listener, not {parts[0]!r}")
    port: int | None = None
    interface = "::" if kind == "tcp6" else ""
    backlog = default_backlog
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if not sep:
            if port is not None:
                raise ValueError(f"unexpected argument {part!r}")
            key, value = "port", part
        key = key.strip().lower()
        if key == "port":
            if not value.isdigit() or not 0 <= int(value) < 65536:
                raise ValueError(f"bad port {value!r}")
            port = int(value)
        elif key == "interface":
            interface = value
        elif key == "backlog":
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"bad backlog {value!r}")
            backlog = int(value)
        else:
            raise ValueError(f"unknown key {key!r} (reuse_port takes interface and backlog)")
    if port is None:
        raise ValueError("no port given")
    v6 = kind == "tcp6" or ":" in interface
    family = socket.AF_INET6 if v6 else socket.AF_INET
    return TCPListen(port=port, interface=interface, backlog=backlog, family=family)


def listen_reuse_port(
    reactor: IReactorSocket, listen: TCPListen, factory: ServerFactory[Any]
) -> IListeningPort:
    """Bind a ``SO_REUSEPORT`` socket as ``listen`` says and let the reactor serve it.

    :raises OSError: when the socket cannot be bound (another process holds
        the port without ``SO_REUSEPORT``, or a permission is missing).
    """
    sock = socket.socket(listen.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.set_inheritable(False)
        sock.bind((listen.interface, listen.port))
        sock.listen(listen.backlog)
        sock.setblocking(False)
        # The reactor duplicates the descriptor; ours is closed below.
        return reactor.adoptStreamPort(sock.fileno(), listen.family, factory)
    finally:
        sock.close()


class ReusePortService(Service):
    """A service listening on a ``SO_REUSEPORT`` socket while it runs.

    The socket is bound in ``privilegedStartService`` (so a port below 1024
    can be bound before twistd drops privileges) or else in
    ``startService``; a bind failure raises there and stops the start.

    :param listen: where to listen.
    :param factory: the protocol factory served (a ``Site``...).
    :param reactor: provides ``IReactorSocket``.
    :ivar port: the ``IListeningPort`` while listening, else None.
    """

    def __init__(self, listen: TCPListen, factory: ServerFactory[Any], reactor: Any) -> None:
        self.listen = listen
        self.factory = factory
        self._reactor = reactor
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        """Bind the socket now (before privileges are dropped)."""
        super().privilegedStartService()  # type: ignore[no-untyped-call]  # Twisted: untyped
        self._listen()

    def startService(self) -> None:
        """Bind the socket unless ``privilegedStartService`` did."""
        super().startService()  # type: ignore[no-untyped-call]  # Twisted: untyped
        self._listen()

    def _listen(self) -> None:
        if self.port is None:
            self.port = listen_reuse_port(self._reactor, self.listen, self.factory)

    def stopService(self) -> Deferred[None]:
        """Stop listening; fires when the socket is closed."""
        super().stopService()  # type: ignore[no-untyped-call]  # Twisted: untyped
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        stopped = port.stopListening()
        if stopped is None:
            return succeed(None)
        return stopped
