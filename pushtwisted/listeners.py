"""Listener descriptions: a section's ``listen`` with its ``backlog`` and ``reuse_port``.

Every listener is a Twisted endpoint description, parsed by
``serverFromString`` and listened on by a ``ListenerService``.  The two
options a config section adds to its ``listen`` are applied by one more
endpoint type, ``ListenerParser`` (registered by
``twisted/plugins/pushtwisted_endpoints.py``), so that the description is
parsed by Twisted alone::

    pushtwisted-listener:BACKLOG:REUSE_PORT:<the section's listen description>

``listener_description`` writes it.  Twisted hands the parser the inner
description already split into arguments and keywords; the parser

- refuses a ``tcp``, ``tcp6`` or ``ssl`` port past 65535 (Twisted would
  only find out when binding, with an ``OverflowError``);
- gives a ``tcp``, ``tcp6``, ``ssl``, ``unix`` or ``reuseport`` listener
  ``backlog=BACKLOG`` unless the description sets one (other types, such as
  ``systemd``, take no backlog and are left as written);
- with ``REUSE_PORT`` = 1, serves a ``tcp:``/``tcp6:`` description on a
  ``SO_REUSEPORT`` socket (``pushtwisted.cluster.reuseport``) and refuses any
  other type with ``ReusePortError``;
- otherwise hands the description back to ``serverFromString``, written
  again with Twisted's own quoting.

``ListenerService`` listens on the endpoint while it runs; a TCP listener's
connections send a write at once when nothing waits to be sent
(``pushtwisted._eager_write``).  A listener that
cannot bind (port in use, an address this host does not have, no
permission) stops the start with a ``ConfigError`` naming the section's
``listen`` and the address, such as ``websocket.listen: cannot listen on
127.0.0.1:8080: address already in use``.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorCore,
    IReactorSocket,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface import implementer

from pushtwisted._eager_write import eager_writes
from pushtwisted.cluster.reuseport import reuse_port_endpoint
from pushtwisted.errors import ConfigError
from pushtwisted.logs import logger

__all__ = [
    "PREFIX",
    "ListenerParser",
    "ListenerService",
    "ReusePortError",
    "listen_problem",
    "listener_description",
]

#: The endpoint type of ``ListenerParser``.
PREFIX = "pushtwisted-listener"

#: Endpoint types whose parser takes a ``backlog`` keyword.
_BACKLOG_TYPES = frozenset({"tcp", "tcp6", "ssl", "unix", "reuseport"})
#: Endpoint types ``reuse_port`` can serve.
_REUSE_PORT_TYPES = frozenset({"tcp", "tcp6"})
#: Endpoint types whose port is the first argument (or the ``port`` keyword).
_PORT_TYPES = frozenset({"tcp", "tcp6", "ssl"})


class ReusePortError(ValueError):
    """``reuse_port`` was asked of a description it cannot serve."""


def listener_description(description: str, *, backlog: int, reuse_port: bool) -> str:
    """Return the description of a listener on ``description`` with the section's options."""
    return f"{PREFIX}:{backlog}:{int(reuse_port)}:{description}"


def _unparse(kind: str, args: Sequence[str], kwargs: Mapping[str, str]) -> str:
    """Write a parsed description back in Twisted's syntax, with its own quoting."""
    parts = [_quote(kind), *map(_quote, args)]
    parts += [f"{_quote(key)}={_quote(value)}" for key, value in kwargs.items()]
    return ":".join(parts)


def _quote(text: str) -> str:
    quoted: str = quoteStringArgument(text)  # type: ignore[no-untyped-call]
    return quoted


@implementer(IPlugin, IStreamServerEndpointStringParser)
class ListenerParser:
    """The ``pushtwisted-listener:BACKLOG:REUSE_PORT:<description>`` endpoint type.

    :param server_from_string: parses the inner description once the
        options are applied (``serverFromString``; tests pass a recorder).
    """

    prefix = PREFIX

    def __init__(
        self, server_from_string: Callable[[Any, str], IStreamServerEndpoint] = serverFromString
    ) -> None:
        self._server_from_string = server_from_string

    def parseStreamServer(
        self, reactor: IReactorCore, *args: object, **kwargs: object
    ) -> IStreamServerEndpoint:
        """Return the endpoint of the inner description, with the options applied.

        :param args: ``BACKLOG``, ``REUSE_PORT`` (``0`` or ``1``), then the
            inner description's type and arguments.
        :raises ReusePortError: when ``reuse_port`` is asked of another type
            than ``tcp``/``tcp6`` or with arguments it does not take.
        :raises ValueError: (and whatever the inner type's parser raises)
            for an unusable description.
        """
        strings = [str(arg) for arg in args]
        options = {key: str(value) for key, value in kwargs.items()}
        if len(strings) < 3:
            raise ValueError("no endpoint description")
        backlog, reuse_port, kind, inner = strings[0], strings[1], strings[2], strings[3:]
        if kind.lower() in _PORT_TYPES:
            port = inner[0] if inner else options.get("port", "")
            if port.strip().isdigit() and int(port) > 65535:
                raise ValueError(f"port must be 0-65535, got {port}")
        if kind.lower() in _BACKLOG_TYPES:
            options.setdefault("backlog", backlog)
        if reuse_port == "1":
            if kind.lower() not in _REUSE_PORT_TYPES:
                raise ReusePortError(f"needs a tcp: or tcp6: listener, not {kind!r}")
            try:
                return reuse_port_endpoint(
                    IReactorSocket(reactor), inner, options, ipv6=kind.lower() == "tcp6"
                )
            except ValueError as e:
                raise ReusePortError(str(e)) from None
        return self._server_from_string(reactor, _unparse(kind, inner, options))


class ListenerService(Service):
    """Listen on ``endpoint`` with ``factory`` while the service runs.

    It binds in ``privilegedStartService`` (twistd calls it before dropping
    privileges), or in ``startService`` when that was not called.

    :param section: the configuration section, named in errors.
    :param description: the section's ``listen``, as configured.
    :raises ConfigError: (from the start) when the endpoint fails to listen
        at once, naming ``<section>.listen`` and the address
        (``listen_problem``).  A failure that comes later (an endpoint that
        listens asynchronously) is logged.
    :ivar port: the listening port once bound, else None.
    """

    log = logger()

    def __init__(
        self,
        section: str,
        description: str,
        endpoint: IStreamServerEndpoint,
        factory: IProtocolFactory,
    ) -> None:
        self.section = section
        self.description = description
        self.endpoint = endpoint
        self.factory = factory
        self.port: IListeningPort | None = None
        self._listening: Deferred[IListeningPort] | None = None
        self._failed_now: list[Failure] | None = None

    def privilegedStartService(self) -> None:
        """Listen now."""
        super().privilegedStartService()  # type: ignore[no-untyped-call]  # Twisted: untyped
        self._listen()

    def startService(self) -> None:
        """Listen now, unless ``privilegedStartService`` did."""
        super().startService()  # type: ignore[no-untyped-call]  # Twisted: untyped
        if self._listening is None:
            self._listen()

    def stopService(self) -> Deferred[None]:
        """Stop listening (or stop trying to); fire once the port is closed."""
        super().stopService()  # type: ignore[no-untyped-call]  # Twisted: untyped
        port, self.port = self.port, None
        listening, self._listening = self._listening, None
        if port is not None:
            return maybeDeferred(port.stopListening).addCallback(lambda _: None)
        if listening is not None:
            listening.cancel()
        return succeed(None)

    def _listen(self) -> None:
        self._failed_now = []
        self._listening = self.endpoint.listen(self.factory)
        self._listening.addCallbacks(self._bound, self._failed)
        failed, self._failed_now = self._failed_now, None
        if failed:
            error = failed[0].value
            assert error is not None
            raise ConfigError(listen_problem(self.section, self.description, error))

    def _bound(self, port: IListeningPort) -> None:
        eager_writes(port)
        self.port = port

    def _failed(self, failure: Failure) -> None:
        if self._failed_now is not None:
            self._failed_now.append(failure)
        elif not isinstance(failure.value, CancelledError):
            self.log.failure(
                "{section}.listen: cannot listen on {description}",
                failure,
                section=self.section,
                description=self.description,
            )


def listen_problem(section: str, description: str, error: BaseException) -> str:
    """Return the one line that says why ``<section>.listen`` cannot listen.

    ``section.listen: cannot listen on <address>: <reason>``; the address is
    ``host:port`` (``[v6]:port``, ``0.0.0.0`` for every interface) or the
    UNIX socket path, taken from Twisted's ``CannotListenError``; for any
    other error, the description.
    """
    if not isinstance(error, CannotListenError):
        return f"{section}.listen: cannot listen on {description!r}: {error}"
    interface, port = error.interface, error.port
    if interface is None:
        where = str(port)
    elif ":" in interface:
        where = f"[{interface}]:{port}"
    else:
        where = f"{interface or '0.0.0.0'}:{port}"
    return f"{section}.listen: cannot listen on {where}: {_reason(error.socketError)}"


def _reason(error: object) -> str:
    """Return an OS error's text as the tail of a sentence (``address already in use``)."""
    if not isinstance(error, OSError) or not error.strerror:
        return str(error)
    if error.errno == errno.EADDRNOTAVAIL:
        return "this host has no such address"
    text = error.strerror
    return text[:1].lower() + text[1:]
