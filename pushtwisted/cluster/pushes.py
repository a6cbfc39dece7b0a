"""The body of ``PUT /push/<uaid>``: what one node hands another for a live socket.

The cluster router encodes it (``update_body``, ``message_body``) and the
router listener decodes it (``parse_push``), so both sides read one format.
Two kinds, as compact JSON objects:

- a SimplePush update: ``{"channelID": <str>, "version": <int>, "data": <str|null>}``
  (no ``kind``: the format of nodes that predate WebPush);
- a WebPush message: ``{"kind": "webpush", "chid", "channel_id", "seq", "ttl",
  "stored_at", "topic", "data", "headers"}``, the fields of a
  ``StoredMessage`` (a TTL-0 message carries its transient ``seq`` too).

``parse_push`` checks every field's type and range and answers None for
anything else, which the listener answers 400.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from pushtwisted.ids import is_valid_id
from pushtwisted.messages import MAX_VERSION
from pushtwisted.storage.interface import StoredMessage
from pushtwisted.webpush.headers import is_valid_topic

__all__ = ["Update", "message_body", "parse_push", "update_body"]

_WEBPUSH = "webpush"
_MAX_SEQ = 2**64 - 1


@dataclass(frozen=True, slots=True)
class Update:
    """A SimplePush update in a ``PUT /push`` body."""

    channel_id: str
    version: int
    data: str | None


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def update_body(channel_id: str, version: int, data: str | None) -> bytes:
    """Return the ``PUT /push`` body of a SimplePush update."""
    return _dumps({"channelID": channel_id, "version": version, "data": data})


def message_body(message: StoredMessage) -> bytes:
    """Return the ``PUT /push`` body of a WebPush message."""
    return _dumps(
        {
            "kind": _WEBPUSH,
            "chid": message.chid,
            "channel_id": message.channel_id,
            "seq": message.seq,
            "ttl": message.ttl,
            "stored_at": message.stored_at,
            "topic": message.topic,
            "data": message.data,
            "headers": dict(message.headers),
        }
    )


def _is_int(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_normal_id(value: object) -> bool:
    """Return True when ``value`` is an ID in normal form (32 lower-case hex)."""
    return is_valid_id(value) and len(str(value)) == 32 and str(value) == str(value).lower()


def _parse_update(value: dict[str, object]) -> Update | None:
    channel_id = value.get("channelID")
    version = value.get("version")
    data = value.get("data")
    if not isinstance(channel_id, str) or not channel_id:
        return None
    if not _is_int(version, 0, MAX_VERSION):
        return None
    assert isinstance(version, int)
    if data is not None and not isinstance(data, str):
        return None
    return Update(channel_id, version, data or None)


def _parse_message(value: dict[str, object]) -> StoredMessage | None:
    chid = value.get("chid")
    channel_id = value.get("channel_id")
    seq = value.get("seq")
    ttl = value.get("ttl")
    stored_at = value.get("stored_at")
    topic = value.get("topic")
    data = value.get("data")
    headers = value.get("headers")
    if not _is_normal_id(chid) or not isinstance(channel_id, str) or not channel_id:
        return None
    if not _is_int(seq, 0, _MAX_SEQ) or not _is_int(ttl, 0, _MAX_SEQ):
        return None
    if isinstance(stored_at, bool) or not isinstance(stored_at, int | float):
        return None
    if not math.isfinite(stored_at):
        return None
    if topic is not None and not (isinstance(topic, str) and is_valid_topic(topic)):
        return None
    if data is not None and not isinstance(data, str):
        return None
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        return None
    assert isinstance(chid, str) and isinstance(seq, int) and isinstance(ttl, int)
    return StoredMessage(
        chid=chid,
        channel_id=channel_id,
        seq=seq,
        ttl=ttl,
        stored_at=float(stored_at),
        topic=topic,
        data=data,
        headers=headers,
    )


def parse_push(body: bytes) -> Update | StoredMessage | None:
    """Return the update or message in a ``PUT /push`` body, or None when it is malformed."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: deeply nested JSON
        return None
    if not isinstance(value, dict):
        return None
    kind = value.get("kind")
    if kind is None:
        return _parse_update(value)
    if kind == _WEBPUSH:
        return _parse_message(value)
    return None
