"""``MemoryStorage``: the in-process backend and the reference behaviour.

Everything lives in dictionaries and every call answers at once with
``succeed()``.  Nothing survives a restart; use it for tests and for a single
node that may lose state.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime

from pushtwisted.errors import TooManyChannels
from pushtwisted.storage.interface import (
    Claim,
    Keep,
    Mode,
    NewMessage,
    Opened,
    PendingUpdate,
    StoredMessage,
    StoreOutcome,
    StoreResult,
    UpdateOutcome,
    UpdateResult,
)
from pushtwisted.storage.opening import open_stepwise

__all__ = ["MemoryStorage"]


class _State(enum.Enum):
    REGISTERED = "registered"
    LIVE = "live"
    DELETED = "deleted"


@dataclass(slots=True)
class _Channel:
    state: _State
    channel_id: str
    version: int = 0
    data: str | None = None
    expires_at: float | None = None


class MemoryStorage:
    """A volatile ``Storage`` kept in dictionaries.

    :param clock: used to expire tombstones; without one they never expire.
    :param tombstone_ttl: seconds a tombstone of an unregistered channel lives.
    """

    def __init__(self, clock: IReactorTime | None = None, tombstone_ttl: float = 86400) -> None:
        self._clock = clock
        self._tombstone_ttl = tombstone_ttl
        self._users: dict[str, dict[str, _Channel]] = {}
        self._modes: dict[str, Mode] = {}
        #: WebPush messages by UAID, then by sequence number.
        self._messages: dict[str, dict[int, StoredMessage]] = {}
        self._next_seq: dict[str, int] = {}

    def _now(self) -> float:
        return self._clock.seconds() if self._clock is not None else 0.0

    def _channel(self, uaid: str, chid: str) -> _Channel | None:
        channel = self._users.get(uaid, {}).get(chid)
        if (
            channel is not None
            and channel.expires_at is not None
            and self._clock is not None
            and self._clock.seconds() >= channel.expires_at
        ):
            del self._users[uaid][chid]
            return None
        return channel

    def open_user(self, uaid: str, keep: Keep, claim: Claim | None = None) -> Deferred[Opened]:
        return open_stepwise(self, uaid, keep, claim)

    def user_mode(self, uaid: str) -> Deferred[Mode | None]:
        return succeed(self._modes.get(uaid))

    def register(
        self,
        uaid: str,
        chid: str,
        channel_id: str,
        max_channels: int,
        mode: Mode = Mode.SIMPLEPUSH,
        fresh: bool = False,
    ) -> Deferred[None]:
        if uaid not in self._users:
            self._modes[uaid] = mode
            if mode is Mode.WEBPUSH:
                self._next_seq[uaid] = int(self._now() * 1_000_000)
        channels = self._users.setdefault(uaid, {})
        channel = self._channel(uaid, chid)
        if channel is not None and channel.state is not _State.DELETED:
            return succeed(None)
        active = sum(1 for c in channels.values() if c.state is not _State.DELETED)
        if max_channels > 0 and active >= max_channels:
            return fail(TooManyChannels(f"UAID holds {active} channels"))
        channels[chid] = _Channel(_State.REGISTERED, channel_id)
        return succeed(None)

    def unregister(self, uaid: str, chid: str) -> Deferred[None]:
        channel = self._channel(uaid, chid)
        if channel is None or channel.state is _State.DELETED:
            return succeed(None)
        if self._modes.get(uaid) is Mode.WEBPUSH:
            del self._users[uaid][chid]  # no tombstone
            messages = self._messages.get(uaid)
            if messages:
                for seq in [s for s, m in messages.items() if m.chid == chid]:
                    del messages[seq]
            return succeed(None)
        expires = None
        if self._clock is not None:
            expires = self._clock.seconds() + self._tombstone_ttl
        self._users[uaid][chid] = _Channel(
            _State.DELETED, channel.channel_id, channel.version, None, expires
        )
        return succeed(None)

    def update(
        self,
        uaid: str,
        chid: str,
        version: int,
        data: str | None,
        only_newer: bool = False,
    ) -> Deferred[UpdateResult]:
        channel = self._channel(uaid, chid)
        if (
            channel is None
            or channel.state is _State.DELETED
            or self._modes.get(uaid) is not Mode.SIMPLEPUSH
        ):
            return succeed(UpdateResult(outcome=UpdateOutcome.GONE))
        if only_newer and version <= channel.version:
            return succeed(UpdateResult(outcome=UpdateOutcome.STALE, channel_id=channel.channel_id))
        channel.state = _State.LIVE
        channel.version = version
        channel.data = data
        return succeed(UpdateResult(outcome=UpdateOutcome.STORED, channel_id=channel.channel_id))

    def fetch_pending(self, uaid: str) -> Deferred[list[PendingUpdate]]:
        pending = [
            PendingUpdate(channel_id=c.channel_id, version=c.version, data=c.data)
            for _, c in sorted(self._users.get(uaid, {}).items())
            if c.state is _State.LIVE
        ]
        return succeed(pending)

    def ack(self, uaid: str, chid: str, version: int) -> Deferred[bool]:
        channel = self._channel(uaid, chid)
        if channel is None or channel.state is not _State.LIVE or version < channel.version:
            return succeed(False)
        channel.state = _State.REGISTERED
        channel.data = None
        return succeed(True)

    def expired(self, uaid: str, chids: Sequence[str]) -> Deferred[list[str]]:
        found = []
        for chid in chids:
            channel = self._channel(uaid, chid)
            if channel is not None and channel.state is _State.DELETED:
                found.append(chid)
        return succeed(found)

    # -- WebPush messages -------------------------------------------------------

    def _live_messages(self, uaid: str) -> dict[int, StoredMessage]:
        """Return the UAID's messages after dropping the expired ones."""
        messages = self._messages.get(uaid)
        if not messages:
            return {}
        now = self._now()
        for seq in [s for s, m in messages.items() if now >= m.expires_at]:
            del messages[seq]
        return messages

    def store_message(
        self, uaid: str, message: NewMessage, max_pending: int
    ) -> Deferred[StoreResult]:
        channel = self._channel(uaid, message.chid)
        if (
            channel is None
            or channel.state is _State.DELETED
            or self._modes.get(uaid) is not Mode.WEBPUSH
        ):
            return succeed(StoreResult(outcome=StoreOutcome.GONE))
        if message.ttl <= 0:
            return succeed(
                StoreResult(outcome=StoreOutcome.NOT_STORED, channel_id=channel.channel_id)
            )
        messages = self._live_messages(uaid)
        replaced = None
        if message.topic is not None:
            replaced = next(
                (
                    seq
                    for seq, m in messages.items()
                    if m.chid == message.chid and m.topic == message.topic
                ),
                None,
            )
        if replaced is None and max_pending > 0 and len(messages) >= max_pending:
            return succeed(StoreResult(outcome=StoreOutcome.FULL, channel_id=channel.channel_id))
        seq = self._next_seq[uaid]
        self._next_seq[uaid] = seq + 1
        stored = StoredMessage(
            chid=message.chid,
            channel_id=channel.channel_id,
            seq=seq,
            ttl=message.ttl,
            stored_at=self._now(),
            topic=message.topic,
            data=message.data,
            headers=dict(message.headers),
        )
        if replaced is not None:
            del messages[replaced]
        self._messages.setdefault(uaid, {})[seq] = stored
        return succeed(
            StoreResult(outcome=StoreOutcome.STORED, channel_id=channel.channel_id, message=stored)
        )

    def fetch_messages(self, uaid: str) -> Deferred[list[StoredMessage]]:
        messages = self._live_messages(uaid)
        return succeed(sorted(messages.values(), key=lambda m: (m.topic is None, m.seq)))

    def delete_message(self, uaid: str, seq: int) -> Deferred[bool]:
        messages = self._live_messages(uaid)
        return succeed(messages.pop(seq, None) is not None)

    def check(self) -> Deferred[None]:
        return succeed(None)

    def close(self) -> Deferred[None]:
        return succeed(None)
