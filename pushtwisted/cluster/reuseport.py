"""Listening sockets with ``SO_REUSEPORT``: several processes share one port.

Twisted's ``tcp:`` endpoint has no reuse-port option, so ``listen_reuse_port``
makes the socket itself (``SO_REUSEADDR`` + ``SO_REUSEPORT``, bound, listening,
non-blocking, close-on-exec) and hands it to the reactor with
``adoptStreamPort``; the kernel then spreads incoming connections over every
process listening on the port.  Run one ``twistd simplepush`` per core this
way, each with its own router port (``docs/cluster.md``).

``ReusePortParser`` makes this an endpoint type for ``serverFromString``
(registered by ``twisted/plugins/pushtwisted_endpoints.py``)::

    reuseport:PORT[:interface=ADDR][:backlog=N]

IPv6 when the interface is an IPv6 address (colons escaped: ``\\:\\:``).
``[websocket] reuse_port = true`` turns a ``tcp:`` or ``tcp6:`` listener into
this endpoint (``pushtwisted.listeners``).  Terminate TLS in front of the
nodes (the load balancer) when you use it.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorCore,
    IReactorSocket,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.internet.protocol import ServerFactory
from twisted.plugin import IPlugin
from zope.interface import implementer

__all__ = ["ReusePortEndpoint", "ReusePortParser", "listen_reuse_port", "reuse_port_endpoint"]


def listen_reuse_port(
    reactor: IReactorSocket,
    factory: ServerFactory[Any],
    *,
    port: int,
    interface: str,
    backlog: int,
    family: socket.AddressFamily,
) -> IListeningPort:
    """Bind a ``SO_REUSEPORT`` socket and let the reactor serve ``factory`` on it.

    :raises OSError: when the socket cannot be bound (another process holds
        the port without ``SO_REUSEPORT``, or a permission is missing).
    """
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.set_inheritable(False)
        sock.bind((interface, port))
        sock.listen(backlog)
        sock.setblocking(False)
        # The reactor duplicates the descriptor; ours is closed below.
        return reactor.adoptStreamPort(sock.fileno(), family, factory)
    finally:
        sock.close()


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """A TCP server endpoint whose socket has ``SO_REUSEPORT`` set.

    :param reactor: provides ``IReactorSocket``.
    :param port: the TCP port (0 picks a free one).
    :param interface: the address to bind ("" = every IPv4 address).
    :param backlog: the listen backlog.
    :param ipv6: bind an IPv6 socket (implied by an interface with a colon).
    """

    def __init__(
        self,
        reactor: IReactorSocket,
        port: int,
        *,
        interface: str = "",
        backlog: int = 50,
        ipv6: bool = False,
    ) -> None:
        self._reactor = reactor
        self.port = port
        self.interface = interface
        self.backlog = backlog
        v6 = ipv6 or ":" in interface
        self.family = socket.AF_INET6 if v6 else socket.AF_INET

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Listen now; fire with the port, or fail with ``CannotListenError``."""
        try:
            listening = listen_reuse_port(
                self._reactor,
                # Twisted annotates ServerFactory; any IProtocolFactory is served.
                protocolFactory,  # type: ignore[arg-type]
                port=self.port,
                interface=self.interface,
                backlog=self.backlog,
                family=self.family,
            )
        except OSError as e:
            error = CannotListenError(self.interface, self.port, e)  # type: ignore[no-untyped-call]
            return fail(error)
        return succeed(listening)


@implementer(IPlugin, IStreamServerEndpointStringParser)
class ReusePortParser:
    """The ``reuseport:PORT[:interface=ADDR][:backlog=N]`` endpoint type.

    :raises ValueError: (from ``parseStreamServer``) for a bad port or
        backlog, a missing port or an unknown key.
    """

    prefix = "reuseport"

    def parseStreamServer(
        self, reactor: IReactorCore, *args: object, **kwargs: object
    ) -> IStreamServerEndpoint:
        """Return the endpoint the description's arguments name."""
        return reuse_port_endpoint(
            IReactorSocket(reactor),
            [str(arg) for arg in args],
            {key: str(value) for key, value in kwargs.items()},
        )


def reuse_port_endpoint(
    reactor: IReactorSocket,
    args: Sequence[str],
    kwargs: Mapping[str, str],
    *,
    ipv6: bool = False,
) -> ReusePortEndpoint:
    """Build a ``ReusePortEndpoint`` from a parsed description's strings.

    Takes ``port`` (the one argument, or a keyword), ``interface`` and
    ``backlog``; ``ipv6`` makes the default interface ``::``.

    :raises ValueError: for a bad port or backlog, a missing port, an extra
        argument or an unknown key.
    """
    unknown = sorted(set(kwargs) - {"port", "interface", "backlog"})
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (reuseport takes interface and backlog)")
    if len(args) > 1 or (args and "port" in kwargs):
        raise ValueError(f"unexpected argument {args[-1]!r}")
    raw_port = args[0] if args else kwargs.get("port")
    if raw_port is None:
        raise ValueError("no port given")
    if not raw_port.isdigit() or not 0 <= int(raw_port) < 65536:
        raise ValueError(f"bad port {raw_port!r}")
    raw_backlog = kwargs.get("backlog", "50")
    if not raw_backlog.isdigit() or int(raw_backlog) < 1:
        raise ValueError(f"bad backlog {raw_backlog!r}")
    return ReusePortEndpoint(
        reactor,
        int(raw_port),
        interface=kwargs.get("interface", "::" if ipv6 else ""),
        backlog=int(raw_backlog),
        ipv6=ipv6,
    )
