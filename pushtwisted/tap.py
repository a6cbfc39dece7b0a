"""The composition root: ``twistd simplepush`` builds the whole server here.

This is the only module that knows the concrete classes and the only one that
imports the reactor (inside ``makeService``).  ``build_service(config,
reactor)`` does the wiring and can be started on a ``MemoryReactorClock`` in
tests.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet.interfaces import IProtocolFactory
from twisted.python import usage

from pushtwisted.config import Config, load_config
from pushtwisted.errors import ConfigError
from pushtwisted.metrics import NullMetrics
from pushtwisted.node import Node
from pushtwisted.registry import ClientRegistry
from pushtwisted.storage.interface import Storage
from pushtwisted.storage.memory import MemoryStorage
from pushtwisted.tokens import EndpointCrypto, load_or_create_key
from pushtwisted.web.endpoint import build_endpoint_site
from pushtwisted.websocket import PushServerFactory

__all__ = ["Options", "PushService", "build_service", "makeService"]

# Endpoint types whose strports parser accepts a ``backlog`` argument.
_BACKLOG_TYPES = frozenset({"tcp", "tcp6", "ssl", "unix"})
_UNESCAPED_COLON = re.compile(r"(?<!\\):")


class Options(usage.Options):
    """Command line of ``twistd simplepush``."""

    synopsis = "[--config FILE]"
    longdesc = (
        "Run a SimplePush server: a WebSocket listener for user agents and an HTTP "
        "listener where application servers PUT notifications to /update/<token>. "
        "Without --config the built-in defaults are used (see config.sample.toml). "
        "Environment variables SIMPLEPUSH_<SECTION>_<KEY> (for example "
        "SIMPLEPUSH_WEBSOCKET_LISTEN=tcp:8080) override the file."
    )
    optParameters = [
        ["config", "c", None, "TOML configuration file (default: built-in defaults)."],
    ]


class PushService(MultiService):
    """The root service of one node; ``node`` holds the shared collaborators."""

    def __init__(self, node: Node) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.node = node


def _with_backlog(description: str, backlog: int) -> str:
    """Append ``backlog=`` to a strports description that takes one and has none."""
    parts = _UNESCAPED_COLON.split(description)
    if parts[0].strip().lower() not in _BACKLOG_TYPES:
        return description
    if any(part.strip().lower().startswith("backlog=") for part in parts[1:]):
        return description
    return f"{description}:backlog={backlog}"


def _token_keys(config: Config) -> list[str]:
    """Return the configured keys, or the one generated and kept in the state dir."""
    if config.crypto.keys:
        return list(config.crypto.keys)
    return [load_or_create_key(config.storage.path)]


def _build_storage(config: Config, reactor: Any) -> Storage:
    """Return the storage backend chosen by ``[storage]``.

    :raises ConfigError: for a backend that is not wired in here yet.
    """
    if config.storage.backend != "memory":
        raise ConfigError(
            f"storage.backend: {config.storage.backend!r} is not available yet, use 'memory'"
        )
    return MemoryStorage(clock=reactor, tombstone_ttl=config.storage.ttl_deleted)


def _listener(description: str, backlog: int, factory: IProtocolFactory, reactor: Any) -> Any:
    return strports.service(_with_backlog(description, backlog), factory, reactor=reactor)


def build_service(config: Config, reactor: Any) -> MultiService:
    """Wire one node from ``config`` and return its (not yet started) root service.

    :param reactor: provides ``IReactorTime`` and the listening interfaces the
        configured endpoint descriptions need (``MemoryReactorClock`` in tests).
    :raises ConfigError: when a token key or a listener description is invalid.
    """
    crypto = EndpointCrypto(_token_keys(config))
    node = Node(
        config=config,
        storage=_build_storage(config, reactor),
        registry=ClientRegistry(),
        crypto=crypto,
        clock=reactor,
        metrics=NullMetrics(),
    )
    root = PushService(node)
    listeners: list[tuple[str, str, int, IProtocolFactory]] = [
        (
            "websocket.listen",
            config.websocket.listen,
            config.websocket.backlog,
            PushServerFactory(node),
        ),
        (
            "endpoint.listen",
            config.endpoint.listen,
            config.endpoint.backlog,
            build_endpoint_site(node),
        ),
    ]
    for key, description, backlog, factory in listeners:
        try:
            service = _listener(description, backlog, factory, reactor)
        except (ValueError, TypeError, KeyError, OSError) as e:
            raise ConfigError(f"{key}: invalid endpoint description {description!r}: {e}") from None
        service.setServiceParent(root)
    return root


def makeService(options: Options) -> MultiService:
    """Load the configuration named by ``options`` and build the service (twistd hook).

    A configuration error ends the process with status 1 and ``error: <message>``
    on stderr, without a traceback.
    """
    try:
        config = load_config(options["config"])
        from twisted.internet import reactor

        return build_service(config, reactor)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
