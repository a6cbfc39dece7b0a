"""The values ``MemcachedStorage`` keeps under its keys, and their JSON codecs.

- a SimplePush user's record ``<uaid>``: the JSON list of its chids
  (``decode_list``); each channel's record ``<uaid>.<chid>``
  (``ChannelRecord``: state ``live``, ``registered`` or ``deleted``);
- a WebPush user's record ``<uaid>``: an object with ``"mode": "webpush"``
  (``WebPushUser``: channels, next sequence number, message index of
  ``Entry``); each message body ``<uaid>:m:<seq>`` (``decode_body``).

``decode_user`` tells the two kinds of user record apart.  Every decoder
raises ``StorageUnavailable`` for a value of the wrong shape: a corrupt
value is an error, never a miss.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from pushtwisted.errors import StorageUnavailable
from pushtwisted.storage.interface import Mode

__all__ = [
    "DELETED",
    "LIVE",
    "REGISTERED",
    "ChannelRecord",
    "Entry",
    "WebPushUser",
    "decode_body",
    "decode_list",
    "decode_record",
    "decode_user",
    "first_seq",
    "is_webpush",
]

_MODE = "webpush"

LIVE = "live"
REGISTERED = "registered"
DELETED = "deleted"
_STATES = frozenset((LIVE, REGISTERED, DELETED))


@dataclass(frozen=True, slots=True)
class ChannelRecord:
    """A SimplePush channel's record (``<uaid>.<chid>``)."""

    state: str
    channel_id: str
    version: int
    data: str | None
    touched: float

    def encode(self) -> dict[str, object]:
        return {
            "state": self.state,
            "channel_id": self.channel_id,
            "version": self.version,
            "data": self.data,
            "touched": self.touched,
        }


def decode_record(value: object) -> ChannelRecord:
    """Decode a SimplePush channel record."""
    if isinstance(value, dict):
        state = value.get("state")
        channel_id = value.get("channel_id")
        version = value.get("version")
        data = value.get("data")
        touched = value.get("touched", 0)
        if (
            state in _STATES
            and isinstance(channel_id, str)
            and isinstance(version, int)
            and not isinstance(version, bool)
            and (data is None or isinstance(data, str))
            and isinstance(touched, (int, float))
        ):
            return ChannelRecord(str(state), channel_id, version, data, float(touched))
    raise StorageUnavailable(f"memcached: corrupt channel record {value!r:.80}")


def is_webpush(listed: object, mode: Mode) -> bool:
    """Whether a register or unregister goes to a WebPush user (``listed``: its record)."""
    if listed is None:
        return mode is Mode.WEBPUSH
    return isinstance(decode_user(listed), WebPushUser)


def decode_list(value: object) -> list[str]:
    """Decode a SimplePush user's list of chids (sorted, de-duplicated)."""
    if isinstance(value, list) and all(isinstance(c, str) for c in value):
        return sorted(set(value))
    raise StorageUnavailable(f"memcached: corrupt channel list {value!r:.80}")


@dataclass(frozen=True, slots=True)
class Entry:
    """A stored message as the user record indexes it (its body is a key of its own)."""

    seq: int
    chid: str
    topic: str | None
    stored_at: float
    ttl: int

    @property
    def expires_at(self) -> float:
        return self.stored_at + self.ttl


@dataclass(frozen=True, slots=True)
class WebPushUser:
    """A WebPush user record: its channels, next sequence number and message index."""

    channels: Mapping[str, str]
    next_seq: int
    entries: tuple[Entry, ...] = ()

    def encode(self) -> dict[str, object]:
        return {
            "mode": _MODE,
            "channels": dict(self.channels),
            "next": self.next_seq,
            "messages": [[e.seq, e.chid, e.topic, e.stored_at, e.ttl] for e in self.entries],
        }

    def live(self, now: float) -> WebPushUser:
        """The record without its expired entries."""
        entries = tuple(e for e in self.entries if now < e.expires_at)
        return self if len(entries) == len(self.entries) else replace(self, entries=entries)

    def without(self, seqs: set[int]) -> WebPushUser:
        return replace(self, entries=tuple(e for e in self.entries if e.seq not in seqs))


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _decode_entry(value: object) -> Entry:
    if isinstance(value, list) and len(value) == 5:
        seq, chid, topic, stored_at, ttl = value
        if (
            _int(seq)
            and isinstance(chid, str)
            and (topic is None or isinstance(topic, str))
            and isinstance(stored_at, (int, float))
            and not isinstance(stored_at, bool)
            and _int(ttl)
        ):
            return Entry(seq, chid, topic, float(stored_at), ttl)
    raise StorageUnavailable(f"memcached: corrupt message entry {value!r:.80}")


def decode_user(value: object) -> list[str] | WebPushUser:
    """Decode a user record: a SimplePush list of chids (sorted), or a ``WebPushUser``."""
    if isinstance(value, list) and all(isinstance(c, str) for c in value):
        return sorted(set(value))
    if isinstance(value, dict) and value.get("mode") == _MODE:
        channels, next_seq = value.get("channels"), value.get("next")
        entries = value.get("messages")
        if (
            isinstance(channels, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in channels.items())
            and isinstance(next_seq, int)
            and not isinstance(next_seq, bool)
            and isinstance(entries, list)
        ):
            return WebPushUser(channels, next_seq, tuple(map(_decode_entry, entries)))
    raise StorageUnavailable(f"memcached: corrupt user record {value!r:.80}")


def decode_body(value: object) -> tuple[str | None, dict[str, str]]:
    """Decode a message body: its data and headers."""
    if isinstance(value, dict):
        data, headers = value.get("data"), value.get("headers")
        if (
            (data is None or isinstance(data, str))
            and isinstance(headers, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
        ):
            return data, headers
    raise StorageUnavailable(f"memcached: corrupt message body {value!r:.80}")


def first_seq(now: float) -> int:
    """The first sequence number of a user created at ``now`` (the clock in µs)."""
    return int(now * 1_000_000)
