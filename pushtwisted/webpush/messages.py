"""WebPush client messages: the replies and notifications sent, the acks read.

A connection whose hello carried ``"use_webpush": true`` speaks the WebPush
flavour of the client protocol (WEBPUSH.md section 1).  ``decode``,
``parse_hello``, ``parse_register``, ``parse_unregister`` and the error
replies of ``pushtwisted.messages`` serve it too; this module has what
differs:

- ``hello_reply``: ``{"messageType":"hello","uaid":..,"status":200,
  "use_webpush":true,"broadcasts":{}}``;
- ``register_reply``: ``{"messageType":"register","channelID":..,"status":200,
  "pushEndpoint":..}`` (no ``uaid``, as autopush answers);
- ``notification``: one message per push message, ``channelID``,
  ``version`` (the message id), and ``data`` with ``headers`` only when the
  message has a body; never ``ttl``, ``topic`` or urgency;
- ``parse_ack``: ``{"messageType":"ack","updates":[{"channelID","version",
  "code"}]}`` with ``version`` the message id (a string);
- ``ack_code`` / ``nack_code``: the metric label of an ack's or nack's code.

Keys are matched case-insensitively, like every client message.  Everything
here is pure; the texts are compact JSON with non-ASCII characters escaped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import NamedTuple

from pushtwisted.messages import Incoming, InvalidCommand

__all__ = [
    "ACK_CODES",
    "NACK_CODES",
    "AckEntry",
    "WebPushAck",
    "ack_code",
    "hello_reply",
    "nack_code",
    "notification",
    "parse_ack",
    "register_reply",
]

#: Ack codes counted by value (delivered, decryption error, not delivered).
ACK_CODES = frozenset({100, 101, 102})
#: Nack codes counted by value (uncaught exception, unhandled rejection,
#: internal error).
NACK_CODES = frozenset({301, 302, 303})

#: JSON string literal of a ``str``, non-ASCII escaped.
_quote = json.encoder.encode_basestring_ascii
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


class AckEntry(NamedTuple):
    """One well-formed entry of a WebPush ack.

    :ivar version: the message id, as sent.
    :ivar code: the metric label of its code (``ack_code``).
    """

    version: str
    code: str


class WebPushAck(NamedTuple):
    """A WebPush ``ack``: its well-formed entries, and whether any entry was malformed."""

    entries: tuple[AckEntry, ...]
    malformed: bool


def hello_reply(uaid: str) -> str:
    """Return the successful WebPush hello reply for ``uaid`` (as the client spelled it)."""
    return (
        f'{{"messageType":"hello","uaid":{_quote(uaid)},"status":200,'
        '"use_webpush":true,"broadcasts":{}}'
    )


def register_reply(channel_id: str, endpoint: str) -> str:
    """Return the successful WebPush register reply."""
    return (
        f'{{"messageType":"register","channelID":{_quote(channel_id)},"status":200,'
        f'"pushEndpoint":{_quote(endpoint)}}}'
    )


def notification(
    channel_id: str, version: str, data: str | None, headers: Mapping[str, str]
) -> str:
    """Return the notification of one message; ``data`` and ``headers`` only with a body.

    :param version: the message id.
    :param data: the body as base64url, or None (or empty) for an empty body.
    :param headers: the crypto headers forwarded with the body.
    """
    text = (
        f'{{"messageType":"notification","channelID":{_quote(channel_id)},'
        f'"version":{_quote(version)}'
    )
    if data:
        text += f',"data":{_quote(data)},"headers":{_ENCODER.encode(dict(headers))}'
    return text + "}"


def _code(code: object, known: frozenset[int]) -> str:
    return str(code) if type(code) is int and code in known else "other"


def ack_code(code: object) -> str:
    """Return the metric label of an ack's code: ``100``, ``101``, ``102`` or ``other``."""
    return _code(code, ACK_CODES)


def nack_code(code: object) -> str:
    """Return the metric label of a nack's code: ``301``, ``302``, ``303`` or ``other``."""
    return _code(code, NACK_CODES)


def _entry(entry: object) -> AckEntry | None:
    if type(entry) is not dict:
        return None
    # Keys folded to lower case; the last of keys equal once folded wins.
    fields = {(k.lower() if k.isascii() else k): v for k, v in entry.items()}
    version = fields.get("version")
    if not isinstance(version, str) or not version:
        return None
    return AckEntry(version, ack_code(fields.get("code")))


def parse_ack(incoming: Incoming) -> WebPushAck:
    """Check a WebPush ``ack``; malformed entries are flagged, not fatal.

    An entry is well formed when it is an object whose ``version`` is a
    non-empty string; its ``channelID`` is not looked at (the message id
    names the channel).

    :raises InvalidCommand: 401 when ``updates`` is missing, not a list or empty.
    """
    updates = incoming.fields.get("updates")
    if not isinstance(updates, list) or not updates:
        raise InvalidCommand("ack without updates", status=401, echo=incoming.echo)
    entries = [_entry(item) for item in updates]
    good = tuple(entry for entry in entries if entry is not None)
    return WebPushAck(good, len(good) != len(entries))
