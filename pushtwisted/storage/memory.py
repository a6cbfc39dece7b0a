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
from pushtwisted.storage.interface import PendingUpdate, UpdateOutcome, UpdateResult

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

    def user_exists(self, uaid: str) -> Deferred[bool]:
        return succeed(uaid in self._users)

    def register(self, uaid: str, chid: str, channel_id: str, max_channels: int) -> Deferred[None]:
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
        if channel is not None and channel.state is not _State.DELETED:
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
        if channel is None or channel.state is _State.DELETED:
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

    def check(self) -> Deferred[None]:
        return succeed(None)

    def close(self) -> Deferred[None]:
        return succeed(None)
