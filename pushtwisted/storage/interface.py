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

A user record has a ``Mode``, fixed when it is created (at its first
register): a SimplePush user's channels hold the latest version each (the
states above); a WebPush user's channels hold *messages*, many per channel,
each with its own sequence number, time to live and optional topic
(``StoredMessage``; WEBPUSH.md section 6):

- ``store_message`` gives each message the UAID's next sequence number, so
  sequence numbers grow with arrival and are never reused for that UAID
  (backends start a new user's sequence from the clock, in microseconds, so
  that a user record that expired and came back does not reuse an old
  message's number);
- a message with a topic replaces the stored message with the same channel
  and topic (taking a new sequence number, the replacement's arrival);
- ``fetch_messages`` answers the live ones in delivery order: topic messages
  first, then the others, each group by sequence number;
- a message is expired, never answered again and purged, once the clock
  reaches ``stored_at + ttl``;
- at most ``max_pending`` messages are stored per UAID (every stored,
  unexpired message counts, sent-but-unacknowledged ones included);
- ``delete_message`` removes exactly one message (an ack, or a ``DELETE``
  of its id); unregister removes the channel's messages with the channel;
- a WebPush channel leaves no tombstone: unregister removes it outright
  (a later message to it is ``GONE`` all the same, and ``expired``, which
  only the SimplePush hello asks, never names it).

Every method returns a Deferred.  A *miss* (unknown UAID or channel) is a
normal result; a backend *failure* errbacks with ``StorageUnavailable`` (or
its subclass ``StorageBusy``), which callers turn into 503 and which never
resets a UAID.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred

__all__ = [
    "Claim",
    "Keep",
    "Mode",
    "NewMessage",
    "Opened",
    "PendingUpdate",
    "Storage",
    "StoredMessage",
    "StoreOutcome",
    "StoreResult",
    "UpdateOutcome",
    "UpdateResult",
]


class Mode(enum.Enum):
    """The protocol a UAID speaks, fixed when its user record is created."""

    SIMPLEPUSH = "simplepush"
    WEBPUSH = "webpush"


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


@dataclass(frozen=True, slots=True, kw_only=True)
class NewMessage:
    """A WebPush message to store, as the endpoint accepted it.

    :ivar chid: the channel ID in normal form.
    :ivar ttl: the effective time to live in seconds (> 0: a TTL 0 message is
        never stored).
    :ivar topic: the ``Topic`` header (replaces the stored message with the
        same channel and topic), or None.
    :ivar data: the body as unpadded base64url, or None for an empty body.
    :ivar headers: the headers forwarded to the device (``encoding``,
        ``encryption``, ``crypto_key``); empty for an empty body.
    """

    chid: str
    ttl: int
    topic: str | None = None
    data: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredMessage:
    """A stored WebPush message, as ``fetch_messages`` and ``store_message`` answer it.

    :ivar chid: the channel ID in normal form.
    :ivar channel_id: the client's own spelling of the channel ID (from its register).
    :ivar seq: the UAID's sequence number of this message (unique for the UAID).
    :ivar topic: its topic, or None.
    :ivar ttl: its time to live in seconds.
    :ivar stored_at: the storage clock's time when it was stored (seconds).
    :ivar data: the body as unpadded base64url, or None.
    :ivar headers: the headers forwarded to the device.
    """

    chid: str
    channel_id: str
    seq: int
    ttl: int
    stored_at: float
    topic: str | None = None
    data: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def expires_at(self) -> float:
        """The clock time from which the message is expired."""
        return self.stored_at + self.ttl


class StoreOutcome(enum.Enum):
    """What ``Storage.store_message`` did with a message."""

    #: The message was written (``StoreResult.message`` has its sequence number).
    STORED = "stored"
    #: The message has TTL 0: the channel exists, nothing was written.
    NOT_STORED = "not_stored"
    #: The UAID is unknown or not a WebPush user, or the channel is unknown or
    #: unregistered; nothing was written (the endpoint answers 410).
    GONE = "gone"
    #: The UAID already holds ``max_pending`` messages; nothing was written (429).
    FULL = "full"


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreResult:
    """The answer of ``Storage.store_message``.

    :ivar outcome: what happened.
    :ivar channel_id: the client's spelling of the channel ID when the channel
        exists (``STORED``, ``NOT_STORED``, ``FULL``), else None.
    :ivar message: the stored message (``STORED`` only).
    """

    outcome: StoreOutcome
    channel_id: str | None = None
    message: StoredMessage | None = None


#: Given the mode of the hello's UAID, True when the hello keeps that UAID.
#: Pure: a backend may call it on its thread pool.
Keep = Callable[[Mode | None], bool]


class Claim(Protocol):
    """A write that must land, for the UAID a hello keeps, before its fetch reads."""

    def run(self, uaid: str) -> Awaitable[None]:
        """Make the claim for ``uaid`` (any backend); fire once it landed."""

    def steps(self, uaid: str) -> Generator[Any, Any, Any] | None:
        """The claim as memcached steps on the storage's own client, or None.

        When a memcached storage is given steps, it runs them in the hello's
        job and hands their result to ``landed`` (on the reactor thread).
        """

    def landed(self, uaid: str, result: object) -> None:
        """Finish a claim made by ``steps`` (the result of the steps)."""


@dataclass(frozen=True, slots=True)
class Opened:
    """What ``Storage.open_user`` answers.

    :ivar mode: the mode of the UAID's user record, or None when it has none.
    :ivar kept: ``keep(mode)``: the hello keeps the UAID.  When False nothing
        was claimed nor fetched.
    :ivar pending: the SimplePush updates stored for it (empty unless kept).
    :ivar messages: the WebPush messages stored for it (empty unless kept).
    """

    mode: Mode | None
    kept: bool
    pending: Sequence[PendingUpdate] = ()
    messages: Sequence[StoredMessage] = ()


class Storage(Protocol):
    """The asynchronous store of users, channels and pending updates."""

    def user_mode(self, uaid: str) -> Deferred[Mode | None]:
        """Fire with the mode of ``uaid``'s user record, or None when there is none.

        A hello calls it: it also extends the life of the user record where
        records expire.
        """

    def open_user(self, uaid: str, keep: Keep, claim: Claim | None = None) -> Deferred[Opened]:
        """A hello's reads in one call: ``user_mode``, then (when ``keep(mode)``) the
        claim, then the fetch of what is stored (``pushtwisted.storage.opening``)."""

    def register(
        self,
        uaid: str,
        chid: str,
        channel_id: str,
        max_channels: int,
        mode: Mode = Mode.SIMPLEPUSH,
        fresh: bool = False,
    ) -> Deferred[None]:
        """Create the channel (and the user record, if new) in state *registered*.

        Registering a channel that is already registered or live changes
        nothing (a pending update or message is kept); registering over a
        tombstone revives the channel.  ``max_channels`` > 0 limits how many
        channels a UAID holds: a new channel past it errbacks with
        ``TooManyChannels``.  ``mode`` is the new user record's mode; an
        existing user keeps its own.  ``fresh`` is a hint: the calling
        connection's hello made the UAID and this is its first register, so
        nothing is expected to be stored for it; a backend may try its writes
        before any read, and must still be right when something is stored.
        """

    def unregister(self, uaid: str, chid: str) -> Deferred[None]:
        """Remove the channel and leave a tombstone; unknown channels are a no-op.

        A WebPush channel is deleted with its stored messages and leaves no
        tombstone.
        """

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

    def store_message(
        self, uaid: str, message: NewMessage, max_pending: int
    ) -> Deferred[StoreResult]:
        """Store a WebPush message on a registered channel of a WebPush user.

        ``GONE`` when the UAID is unknown or a SimplePush user, or the channel
        is unknown or a tombstone; ``NOT_STORED`` (the channel's spelling, no
        write) when ``message.ttl`` is 0; ``FULL`` when ``max_pending`` (> 0)
        messages are stored already and this one would not replace one by
        its topic; else ``STORED`` with the message as stored (its ``seq``).
        """

    def fetch_messages(self, uaid: str) -> Deferred[list[StoredMessage]]:
        """Fire with the live messages of ``uaid`` in delivery order (see the module)."""

    def delete_message(self, uaid: str, seq: int) -> Deferred[bool]:
        """Delete the message of ``uaid`` with sequence number ``seq``.

        Fires True when one was deleted, False when there was none (acked or
        deleted before, expired, replaced by a newer one with its topic).
        """

    def check(self) -> Deferred[None]:
        """Probe the backend; errback with ``StorageUnavailable`` when unhealthy."""

    def close(self) -> Deferred[None]:
        """Release the backend's resources."""
