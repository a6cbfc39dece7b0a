"""The storage contract every backend implements.

All IDs passed in are in *normal form* (``pushtwisted.ids.normalize_id``):
``uaid`` and ``chid`` are 32 lower-case hex characters.  A channel also keeps
the client's own spelling of its ID (``channel_id``), given at register and
returned wherever a reply to the client needs it.

A channel record is in one of three states:

- *registered*: the channel exists, nothing is pending;
- *live*: an update (version, optional data) waits for the client's ack;
- *deleted*: a tombstone left by unregister; PUTs to it are answered 410 and
  never resurrect it.  Tombstones expire after the configured TTL.

Every method returns a Deferred.  A *miss* (unknown UAID or channel) is a
normal result; a backend *failure* errbacks with ``StorageUnavailable`` (or
its subclass ``StorageBusy``), which callers turn into 503 and which never
resets a UAID.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred

__all__ = ["PendingUpdate", "Storage", "UpdateOutcome", "UpdateResult"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingUpdate:
    """An unacknowledged update, as sent to the client.

    :ivar channel_id: the client's own spelling of the channel ID.
    :ivar version: the version given by the app server.
    :ivar data: the payload, or None when none was given or stored.
    """

    channel_id: str
    version: int
    data: str | None = None


class UpdateOutcome(enum.Enum):
    """What ``Storage.update`` did with a new version."""

    #: The update was written; the channel is live.
    STORED = "stored"
    #: The UAID or channel is unknown or unregistered; nothing was written.
    GONE = "gone"
    #: ``only_newer`` was set and the version was not newer; nothing written.
    STALE = "stale"


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateResult:
    """The answer of ``Storage.update``.

    :ivar outcome: what happened.
    :ivar channel_id: the client's spelling of the channel ID when the channel
        exists (``STORED`` or ``STALE``), else None.
    """

    outcome: UpdateOutcome
    channel_id: str | None = None


class Storage(Protocol):
    """The asynchronous store of users, channels and pending updates."""

    def user_exists(self, uaid: str) -> Deferred[bool]:
        """Fire with True when the store has a record of ``uaid``."""

    def register(self, uaid: str, chid: str, channel_id: str, max_channels: int) -> Deferred[None]:
        """Create the channel (and the user record, if new) in state *registered*.

        Registering a channel that is already registered or live changes
        nothing (a pending update is kept); registering over a tombstone
        revives the channel.  ``max_channels`` > 0 limits how many channels a
        UAID holds: a new channel past it errbacks with ``TooManyChannels``.
        """

    def unregister(self, uaid: str, chid: str) -> Deferred[None]:
        """Remove the channel and leave a tombstone; unknown channels are a no-op."""

    def update(
        self,
        uaid: str,
        chid: str,
        version: int,
        data: str | None,
        only_newer: bool = False,
    ) -> Deferred[UpdateResult]:
        """Store ``version`` (and ``data``) as the channel's pending update.

        Only the latest version per channel is kept.  Unknown UAIDs, unknown
        channels and tombstones give ``GONE`` and are not written.  With
        ``only_newer``, a version not above the stored one gives ``STALE``.
        """

    def fetch_pending(self, uaid: str) -> Deferred[list[PendingUpdate]]:
        """Fire with every live update of ``uaid`` (empty when none or unknown)."""

    def ack(self, uaid: str, chid: str, version: int) -> Deferred[bool]:
        """Clear the pending update when ``version`` >= the stored version.

        Fires True when an update was cleared, False otherwise (unknown
        channel, nothing pending, or a newer version is stored).
        """

    def expired(self, uaid: str, chids: Sequence[str]) -> Deferred[list[str]]:
        """Fire with those of ``chids`` that have a live tombstone."""

    def check(self) -> Deferred[None]:
        """Probe the backend; errback with ``StorageUnavailable`` when unhealthy."""

    def close(self) -> Deferred[None]:
        """Release the backend's resources."""
