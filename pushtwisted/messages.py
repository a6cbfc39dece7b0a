"""SimplePush client messages: parse incoming text, build outgoing JSON.

The WebPush messages a ``use_webpush`` connection adds (its hello reply,
register reply, notification, ack and nack) are in
``pushtwisted.webpush.messages``; ``decode`` and ``parse_hello`` here serve
both protocols.

Parsing is two-step, because the session decides what a message means in its
current state before it looks at the message's fields:

1. ``decode(text)`` turns one WebSocket message into an ``Incoming``: the kind
   of command, a lower-cased view of its keys, and the object itself (for
   echoing in error replies).  It raises ``ProtocolViolation`` for text that
   is not a JSON object (the connection closes, no reply) and
   ``InvalidCommand`` for a missing or unknown ``messageType`` (401 reply,
   then close).
2. ``parse_hello`` / ``parse_register`` / ``parse_unregister`` / ``parse_ack``
   / ``parse_ping`` turn an ``Incoming`` into a frozen dataclass, raising
   ``InvalidCommand`` (reply, connection stays open) for bad fields.

Keys and ``messageType`` values are matched case-insensitively (ASCII) and
never trimmed (PROTOCOL.md section 16.2).  Every builder returns compact JSON
text with non-ASCII characters escaped.  Everything here is pure.

The values made for every message or update on the delivery and ack path
(``Incoming``, ``Ack``, ``AckUpdate``, ``Update``) are ``NamedTuple``s, as
immutable and typed as the frozen dataclasses of the other commands, at a
third of their cost to create (a frozen dataclass sets each field through
``object.__setattr__``): ~0.4 us instead of ~1.2 us each, four of them per
notification and ack.
"""

from __future__ import annotations

import enum
import json
import json.scanner
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple, cast

from pushtwisted.errors import ProtocolViolation, PushError
from pushtwisted.ids import is_valid_id, normalize_id

__all__ = [
    "MessageType",
    "Incoming",
    "InvalidCommand",
    "Hello",
    "Register",
    "Unregister",
    "AckUpdate",
    "Ack",
    "Ping",
    "Purge",
    "Update",
    "ERROR_TEXT",
    "MAX_VERSION",
    "PONG",
    "decode",
    "hello_uaid",
    "parse_hello",
    "parse_register",
    "parse_unregister",
    "parse_ack",
    "parse_ping",
    "error_reply",
    "hello_reply",
    "register_reply",
    "unregister_reply",
    "notification",
    "expired_notification",
]

#: The ``error`` text of every error reply (details go to the log).
ERROR_TEXT = "Invalid Command"

#: The reply to a ping, and to purge.
PONG = "{}"

#: Largest version accepted in an ack (versions are signed 64-bit integers).
MAX_VERSION = 2**63 - 1


class MessageType(enum.Enum):
    """The commands a client may send (the lower-case ``messageType``).

    ``nack`` and ``broadcast_subscribe`` are WebPush commands: a session that
    does not speak WebPush treats them as unknown.
    """

    HELLO = "hello"
    REGISTER = "register"
    UNREGISTER = "unregister"
    ACK = "ack"
    PING = "ping"
    PURGE = "purge"
    NACK = "nack"
    BROADCAST_SUBSCRIBE = "broadcast_subscribe"


_KINDS = {kind.value: kind for kind in MessageType}


class InvalidCommand(PushError):
    """A command the session answers with an error reply.

    :param reason: what was wrong, for the log (never sent).
    :param status: the ``status`` of the error reply (401, 413, 503).
    :param echo: the client's object, echoed in the reply; None for a bare
        ``{}`` ping.
    :param close_code: the WebSocket close code to send after the reply, or
        None when the connection stays open.
    """

    def __init__(
        self,
        reason: str,
        *,
        status: int,
        echo: Mapping[str, object] | None,
        close_code: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.echo = echo
        self.close_code = close_code


class Incoming(NamedTuple):
    """One decoded client message, before its fields are checked.

    :ivar kind: the command.
    :ivar fields: the object's keys lower-cased (the last of several keys
        that differ only in case wins, as for duplicate JSON keys).
    :ivar echo: the object as the client sent it; None for a bare ``{}``.
    """

    kind: MessageType
    fields: Mapping[str, object]
    echo: Mapping[str, object] | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """A valid ``hello``.

    :ivar uaid: the client's UAID exactly as sent, or ``""`` for "none"; when
        not empty it is a valid ID.
    :ivar channel_ids: the listed channelIDs, unchecked (any JSON values);
        empty for a WebPush hello.
    :ivar webpush: True when ``use_webpush`` was ``true``: the connection
        speaks WebPush.
    """

    uaid: str
    channel_ids: tuple[object, ...]
    webpush: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Register:
    """A valid ``register``: ``channel_id`` is a valid ID in the client's spelling."""

    channel_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Unregister:
    """An ``unregister`` with a non-empty string ``channel_id`` (maybe not a valid ID)."""

    channel_id: str

    @property
    def valid(self) -> bool:
        """Return True when ``channel_id`` is a valid ID."""
        return is_valid_id(self.channel_id)


class AckUpdate(NamedTuple):
    """One well-formed entry of an ack: the channel (normal form) and the version."""

    chid: str
    version: int


class Ack(NamedTuple):
    """An ``ack``: its well-formed entries, and whether any entry was malformed."""

    updates: tuple[AckUpdate, ...]
    malformed: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    """A ping: ``bare`` when it was the text ``{}`` rather than a ``ping`` object."""

    bare: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Purge:
    """A ``purge``: a no-op kept for old clients, answered ``{}``."""


class Update(NamedTuple):
    """An update sent to the client in a notification.

    :ivar channel_id: the client's own spelling of the channel ID.
    :ivar version: the app server's version.
    :ivar data: the payload; left out of the message when None or empty.
    """

    channel_id: str
    version: int
    data: str | None = None


#: What a bare ``{}`` decodes to (nothing in it can change).
_BARE_PING = Incoming(MessageType.PING, MappingProxyType({}), None)


def _fold(text: str) -> str:
    """Lower-case ASCII text; other text is returned unchanged (it never matches)."""
    return text.lower() if text.isascii() else text


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


# Built once: ``json.loads``/``json.dumps`` with any non-default argument make
# a new decoder/encoder on every call (~2 us each, on every message).
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_parse_float)

#: JSON string literal of a ``str``, non-ASCII escaped (what ``_dumps`` does).
_quote = json.encoder.encode_basestring_ascii
#: The decoder's value scanner (C), and JSON whitespace (RFC 8259 section 2).
_scan = json.scanner.make_scanner(_DECODER)  # type: ignore[arg-type]  # typeshed: any context
#: (It always matches, perhaps nothing.)
_skip_ws = cast(Callable[[str, int], "re.Match[str]"], re.compile(r"[ \t\n\r]*").match)


def _dumps(value: object) -> str:
    return _ENCODER.encode(value)


def decode(text: str) -> Incoming | None:
    """Decode one client message; return None for an empty one (ignored).

    :raises ProtocolViolation: when ``text`` is not a JSON object.
    :raises InvalidCommand: (401, close 1002) when ``messageType`` is
        missing, not a string or unknown.
    """
    if not text:
        return None
    # ``_DECODER.decode`` without its two Python frames: the same C scanner,
    # JSON whitespace allowed around the value and nothing else.  A leading
    # BOM is not JSON whitespace, so it fails here as in ``json.loads``.
    try:
        value, end = _scan(text, _skip_ws(text, 0).end())
    except (StopIteration, ValueError, RecursionError):
        raise ProtocolViolation("message is not valid JSON") from None
    if end != len(text) and _skip_ws(text, end).end() != len(text):
        raise ProtocolViolation("message is not valid JSON")
    if type(value) is not dict:
        raise ProtocolViolation("message is not a JSON object")
    if not value:  # ``{}`` with any JSON whitespace
        return _BARE_PING
    fields = {(key.lower() if key.isascii() else key): item for key, item in value.items()}
    message_type = fields.get("messagetype")
    if not isinstance(message_type, str):
        raise InvalidCommand(
            "messageType missing or not a string", status=401, echo=value, close_code=1002
        )
    kind = _KINDS.get(_fold(message_type))
    if kind is None:
        raise InvalidCommand("unknown messageType", status=401, echo=value, close_code=1002)
    return Incoming(kind, fields, value)


def _invalid(incoming: Incoming, reason: str, status: int = 401) -> InvalidCommand:
    return InvalidCommand(reason, status=status, echo=incoming.echo)


def hello_uaid(incoming: Incoming) -> str:
    """Return a hello's ``uaid`` as sent, ``""`` when it is missing or null.

    :raises InvalidCommand: 401 and close 1002 when it is not a string: a
        malformed command (PROTOCOL.md 16.3).
    """
    uaid = incoming.fields.get("uaid")
    if uaid is None:
        return ""
    if not isinstance(uaid, str):
        raise InvalidCommand(
            "hello uaid is not a string", status=401, echo=incoming.echo, close_code=1002
        )
    return uaid


def parse_hello(incoming: Incoming, max_channels: int) -> Hello:
    """Check a ``hello``'s fields.

    With ``"use_webpush": true`` (the JSON value true) the hello is a WebPush
    one, whose ``channelIDs`` (and ``broadcasts``) are optional and ignored.

    :param max_channels: most channelIDs allowed; 0 means no limit.
    :raises InvalidCommand: 401 and close 1002 for a uaid that is not a
        string (a malformed command); 503 for a uaid string that is neither
        empty nor a valid ID, or for too many channelIDs; 401 when channelIDs
        is missing or not a list (SimplePush).
    """
    uaid = hello_uaid(incoming)
    if uaid and not is_valid_id(uaid):
        raise _invalid(incoming, "hello uaid is not a valid ID", 503)
    if incoming.fields.get("use_webpush") is True:
        return Hello(uaid=uaid, channel_ids=(), webpush=True)
    channel_ids = incoming.fields.get("channelids")
    if not isinstance(channel_ids, list):
        raise _invalid(incoming, "hello channelIDs missing or not a list")
    if max_channels > 0 and len(channel_ids) > max_channels:
        raise _invalid(incoming, "hello lists too many channelIDs", 503)
    return Hello(uaid=uaid, channel_ids=tuple(channel_ids))


def parse_register(incoming: Incoming) -> Register:
    """Check a ``register``'s fields.

    :raises InvalidCommand: 401 when channelID is missing or not a valid ID.
    """
    channel_id = incoming.fields.get("channelid")
    if not isinstance(channel_id, str) or not is_valid_id(channel_id):
        raise _invalid(incoming, "register channelID is not a valid ID")
    return Register(channel_id=channel_id)


def parse_unregister(incoming: Incoming) -> Unregister:
    """Check an ``unregister``'s fields.

    :raises InvalidCommand: 401 when channelID is missing, empty or not a string.
    """
    channel_id = incoming.fields.get("channelid")
    if not isinstance(channel_id, str) or not channel_id:
        raise _invalid(incoming, "unregister channelID missing or not a string")
    return Unregister(channel_id=channel_id)


def _ack_update(entry: object) -> AckUpdate | None:
    if type(entry) is not dict:
        return None
    channel_id = version = None
    for key, item in entry.items():  # the last of keys equal once folded wins
        folded = key.lower() if key.isascii() else key
        if folded == "channelid":
            channel_id = item
        elif folded == "version":
            version = item
    if not isinstance(channel_id, str) or not is_valid_id(channel_id):
        return None
    if type(version) is not int or not 0 <= version <= MAX_VERSION:
        return None
    return AckUpdate(normalize_id(channel_id), version)


def parse_ack(incoming: Incoming) -> Ack:
    """Check an ``ack``'s fields; malformed entries are flagged, not fatal.

    An entry is well formed when it is an object with a valid ``channelID``
    and an integer ``version`` in 0..2**63-1 (a boolean is not an integer).
    A non-list ``updates`` or ``expired`` counts as malformed; the entries of
    ``expired`` are accepted and ignored.

    :raises InvalidCommand: 401 when ``updates`` and ``expired`` are both
        missing, null or empty.
    """
    updates = incoming.fields.get("updates")
    expired = incoming.fields.get("expired")
    if updates in (None, []) and expired in (None, []):
        raise _invalid(incoming, "ack without updates or expired")
    good: list[AckUpdate] = []
    malformed = expired is not None and not isinstance(expired, list)
    if isinstance(updates, list):
        for entry in updates:
            update = _ack_update(entry)
            if update is None:
                malformed = True
            else:
                good.append(update)
    elif updates is not None:
        malformed = True
    return Ack(tuple(good), malformed)


def parse_ping(incoming: Incoming) -> Ping:
    """Return the ``Ping`` of a ping message (its extra keys are ignored)."""
    return Ping(bare=incoming.echo is None)


def error_reply(echo: Mapping[str, object] | None, status: int) -> str:
    """Return the error reply: the client's object with ``status`` and ``error`` set.

    Client keys equal to ``status`` or ``error`` in any case are removed, and
    every casing of ``messageType`` becomes one ``messageType`` key whose
    (string) value is lower-cased.  ``echo`` None (a bare ``{}``) gives just
    ``{"status":..,"error":..}``.
    """
    reply: dict[str, object] = {}
    if echo:
        message_type: object = None
        for key, value in echo.items():
            if _fold(key) == "messagetype":
                message_type = value
        for key, value in echo.items():
            folded = _fold(key)
            if folded in ("status", "error"):
                continue
            if folded == "messagetype":
                if "messageType" not in reply:
                    if isinstance(message_type, str):
                        message_type = message_type.lower()
                    reply["messageType"] = message_type
                continue
            reply[key] = value
    reply["status"] = status
    reply["error"] = ERROR_TEXT
    try:
        return _dumps(reply)
    except (ValueError, RecursionError):
        # Nesting that json.loads just managed may be too deep to re-encode.
        slim = {k: reply[k] for k in ("messageType", "status", "error") if k in reply}
        return _dumps(slim)


# The replies every connection gets are written as text directly, each the
# same as ``_dumps`` of the equivalent dict (tests check it): building and
# encoding the dict cost ~5% of the connection rate.


def hello_reply(uaid: str) -> str:
    """Return the successful hello reply for ``uaid`` (as the client spelled it)."""
    return f'{{"messageType":"hello","uaid":{_quote(uaid)},"status":200}}'


def register_reply(uaid: str, channel_id: str, endpoint: str) -> str:
    """Return the successful register reply (keys in the documented order)."""
    return (
        f'{{"messageType":"register","uaid":{_quote(uaid)},"status":200,'
        f'"channelID":{_quote(channel_id)},"pushEndpoint":{_quote(endpoint)}}}'
    )


def unregister_reply(channel_id: str) -> str:
    """Return the unregister reply (always status 200)."""
    return f'{{"messageType":"unregister","status":200,"channelID":{_quote(channel_id)}}}'


def notification(updates: Iterable[Update]) -> str:
    """Return one notification carrying ``updates`` (``data`` only when non-empty).

    The text is the same as ``_dumps`` of the equivalent dicts, written
    directly because it is built once per delivered update (no dicts to
    build and walk).
    """
    items = []
    for update in updates:
        item = f'{{"channelID":{_quote(update.channel_id)},"version":{int.__repr__(update.version)}'
        if update.data:
            item += f',"data":{_quote(update.data)}'
        items.append(item + "}")
    return '{"messageType":"notification","updates":[' + ",".join(items) + "]}"


def expired_notification(channel_ids: Sequence[str]) -> str:
    """Return the notification listing unregistered channels (``expired``)."""
    return _dumps({"messageType": "notification", "expired": list(channel_ids)})
