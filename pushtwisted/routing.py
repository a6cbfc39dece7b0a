"""Where a stored update goes: the ``Router`` seam and ``LocalRouter``.

Every node has exactly one router (``Node.router``): a ``LocalRouter`` when
it runs alone, the cluster's ``pushtwisted.cluster.router.Router`` when
``[router] listen`` is set.  The endpoint stores an update and then asks
``router.deliver`` (a WebPush message: ``router.deliver_message``); a
session calls ``router.on_hello`` after choosing its UAID and before reading
storage (or hands ``router.claim`` to ``Storage.open_user``, which does the
same in one call), and ``router.on_disconnect`` when it closes.  Delivery is decided
here and in the cluster router only; the cluster router's first step is
``LocalRouter.deliver_here`` (``deliver_message_here``).

Decision table of ``LocalRouter.deliver`` and ``deliver_message`` (the
update or message is stored already, unless it is a WebPush message with
TTL 0, which is never stored: then "not delivered" means dropped):

====  =============================================  ==========================
step  condition                                      outcome
====  =============================================  ==========================
1     a session on this node holds the UAID and      delivered: the endpoint
      takes the update (it is ready, its socket is   answers 200 (WebPush:
      open)                                          201)
2     no session holds it, or it refused the         not delivered: 202, the
      update, or its ``deliver`` raised (logged)     update waits in storage
                                                     (WebPush: 201)
====  =============================================  ==========================

A WebPush session refuses a message (False) when it is not a ready WebPush
session or its window of unacknowledged messages is full; the message is in
storage then, and the session fetches it when its window frees.

Why no update is lost: the endpoint stores *before* it looks the session up,
and a hello watches its UAID in the registry *before* it reads storage, so
whichever of the two comes second sees the other's write (a look-up during
the read makes the hello fetch again).  The registry's
"newest connection wins" rule (``pushtwisted.registry``) picks the session.

``LocalRouter`` keeps no directory, so its ``on_hello`` and
``on_disconnect`` do nothing, and they allocate no Deferred.
"""

from __future__ import annotations

from collections.abc import Awaitable, Generator
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from pushtwisted.logs import logger, uaid_hash
from pushtwisted.registry import ClientRegistry
from pushtwisted.storage.interface import Claim, StoredMessage

__all__ = ["HelloClaim", "LocalRouter", "RoutedSession", "Router"]


class RoutedSession(Protocol):
    """What routers and the router listener need of a connected session."""

    @property
    def connected_at(self) -> int | None:
        """When its hello succeeded, in integer milliseconds of this node's clock."""

    def deliver(self, channel_id: str, version: int, data: str | None) -> bool:
        """Send a live update; True when it reached an open, ready connection."""

    def deliver_message(self, message: StoredMessage) -> bool:
        """Send a WebPush message; True when it was sent now or is already unacknowledged
        on this connection, False when this is not a ready WebPush session or its
        window of unacknowledged messages is full."""

    def check_storage(self) -> Deferred[None]:
        """Read storage again and send what is pending and not yet sent."""

    def replaced(self) -> None:
        """Close because a newer connection took the UAID."""


class Router(Protocol):
    """Delivers stored updates and learns where each UAID is connected."""

    def deliver(
        self, uaid: str, channel_id: str, version: int, data: str | None
    ) -> Awaitable[bool]:
        """Hand a stored update to a live socket; True when one took it (200).

        Never fails: an update that no socket took waits in storage (202).
        """

    def deliver_message(self, uaid: str, message: StoredMessage) -> Awaitable[bool]:
        """Hand a WebPush message to the live socket holding ``uaid``, on any node.

        True when a session took it.  Never fails: a message that no session
        took waits in storage, or is dropped when its TTL is 0.
        """

    def on_hello(self, uaid: str, connected_at: int, fresh: bool = False) -> Awaitable[None]:
        """Record that this node holds ``uaid`` since ``connected_at`` (ms).

        Done when the record is written; a session awaits it before reading
        storage.  Fails (``StorageUnavailable``) when it cannot be written.
        ``fresh``: this node has just made ``uaid``, so no record of it can
        exist yet (the write need not read first).
        """

    def on_disconnect(self, uaid: str, connected_at: int) -> object:
        """Forget the record of the connection that closed, if it is still its own.

        Never fails; whatever it returns is ignored by the session.
        """

    def claim(self, connected_at: int) -> Claim | None:
        """``on_hello`` for a hello's ``Storage.open_user``, or None when there is no record."""


class LocalRouter:
    """The ``Router`` of a node running alone: deliver to a session of this node.

    :param registry: this node's connected sessions (``RoutedSession``).
    """

    __slots__ = ("_registry",)

    log = logger()

    def __init__(self, registry: ClientRegistry[Any]) -> None:
        self._registry = registry

    def deliver_here(self, uaid: str, channel_id: str, version: int, data: str | None) -> bool:
        """Give the update to the session on this node holding ``uaid``, if any.

        :returns: True when it took the update (see the module's table).
        """
        session: RoutedSession | None = self._registry.get(uaid)
        if session is None:
            return False
        try:
            return bool(session.deliver(channel_id, version, data))
        except Exception:
            self.log.failure("local delivery failed {uaid_hash}", uaid_hash=uaid_hash(uaid))
            return False

    async def deliver(self, uaid: str, channel_id: str, version: int, data: str | None) -> bool:
        """Deliver on this node only (``deliver_here``); never fails."""
        return self.deliver_here(uaid, channel_id, version, data)

    def deliver_message_here(self, uaid: str, message: StoredMessage) -> bool:
        """Give the WebPush message to the session on this node holding ``uaid``, if any.

        :returns: True when it took the message (see the module's table).
        """
        session: RoutedSession | None = self._registry.get(uaid)
        if session is None:
            return False
        try:
            return bool(session.deliver_message(message))
        except Exception:
            self.log.failure("local delivery failed {uaid_hash}", uaid_hash=uaid_hash(uaid))
            return False

    async def deliver_message(self, uaid: str, message: StoredMessage) -> bool:
        """Deliver a WebPush message on this node only (``deliver_message_here``); never fails."""
        return self.deliver_message_here(uaid, message)

    async def on_hello(self, uaid: str, connected_at: int, fresh: bool = False) -> None:
        """Do nothing: the registry is this node's only record of its clients."""

    def on_disconnect(self, uaid: str, connected_at: int) -> None:
        """Do nothing (see ``on_hello``)."""

    def claim(self, connected_at: int) -> None:
        """None: no record to write (see ``on_hello``)."""


class HelloClaim:
    """A ``Claim`` made of ``router.on_hello`` at ``connected_at`` (no memcached steps)."""

    __slots__ = ("_connected_at", "_router")

    def __init__(self, router: Router, connected_at: int) -> None:
        self._router = router
        self._connected_at = connected_at

    def run(self, uaid: str) -> Awaitable[None]:
        """Write the router's record (``Router.on_hello``)."""
        return self._router.on_hello(uaid, self._connected_at)

    def steps(self, uaid: str) -> Generator[Any, Any, Any] | None:
        """None: the record is written by ``run``."""
        return None

    def landed(self, uaid: str, result: object) -> None:
        """Nothing to finish (``steps`` gives none)."""
