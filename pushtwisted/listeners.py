"""Listener descriptions: a section's ``listen`` with its ``backlog`` and ``reuse_port``.

Every listener is a Twisted endpoint description turned into a service by
``strports.service`` (``serverFromString`` + ``StreamServerEndpointService``).
The two options a config section adds to its ``listen`` are applied by one
more endpoint type, ``ListenerParser`` (registered by
``twisted/plugins/pushtwisted_endpoints.py``), so that the description is
parsed by Twisted alone::

    pushtwisted-listener:BACKLOG:REUSE_PORT:<the section's listen description>

``listener_description`` writes it.  Twisted hands the parser the inner
description already split into arguments and keywords; the parser

- gives a ``tcp``, ``tcp6``, ``ssl``, ``unix`` or ``reuseport`` listener
  ``backlog=BACKLOG`` unless the description sets one (other types, such as
  ``systemd``, take no backlog and are left as written);
- with ``REUSE_PORT`` = 1, serves a ``tcp:``/``tcp6:`` description on a
  ``SO_REUSEPORT`` socket (``pushtwisted.cluster.reuseport``) and refuses any
  other type with ``ReusePortError``;
- otherwise hands the description back to ``serverFromString``, written
  again with Twisted's own quoting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.internet.interfaces import (
    IReactorCore,
    IReactorSocket,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin
from zope.interface import implementer

from pushtwisted.cluster.reuseport import reuse_port_endpoint

__all__ = ["PREFIX", "ListenerParser", "ReusePortError", "listener_description"]

#: The endpoint type of ``ListenerParser``.
PREFIX = "pushtwisted-listener"

#: Endpoint types whose parser takes a ``backlog`` keyword.
_BACKLOG_TYPES = frozenset({"tcp", "tcp6", "ssl", "unix", "reuseport"})
#: Endpoint types ``reuse_port`` can serve.
_REUSE_PORT_TYPES = frozenset({"tcp", "tcp6"})


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
