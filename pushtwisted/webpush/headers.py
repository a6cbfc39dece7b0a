"""Checks of a WebPush request's headers and body size, and the headers sent to the device.

Section 6 of the WebPush reference decides (items 7, 8, 9, 11, 16):

=================  ===============================================  =====================
header / body      accepted                                         otherwise
=================  ===============================================  =====================
body               at most ``max_bytes`` raw octets                 413 errno 104
TTL                exactly one ``1*DIGIT`` value; values of 2**31   missing: 400 errno 111;
                   or more count as 2**31; capped at ``max_ttl``    anything else: 400
                   (the effective TTL is returned)                  errno 114
Topic              absent, or 1 to 32 base64url characters          400 errno 113
                   (``A-Z a-z 0-9 - _``, no padding)
Urgency            absent (``normal``) or one of ``very-low``,      400 errno 112
                   ``low``, ``normal``, ``high`` (any case)
Content-Encoding   only looked at when the body is non-empty:       400 errno 110
                   ``aes128gcm`` with no ``salt`` in Encryption
                   and no ``dh`` in Crypto-Key; ``aesgcm`` with
                   ``Encryption: salt=`` and ``Crypto-Key: dh=``
=================  ===============================================  =====================

The checks run in that order (the body first, as the body limit is known
before the headers are parsed), so a request with several faults gets the
first one's error.  A header sent more than once counts as a bad value
(TTL, Topic, Urgency, Content-Encoding); Encryption and Crypto-Key are list
headers, so repeated ones are joined with ``,``.

Headers forwarded to the device (section 1.3, 6.9), only for a non-empty body:
``encoding`` (the lower-cased Content-Encoding), ``encryption`` and
``crypto_key`` with every ``"`` removed and base64 ``=`` padding stripped before
``,``, ``;`` or the end, and with every ``p256ecdsa`` parameter (the VAPID key)
removed from ``crypto_key``; a key whose value ends up empty is left out.
TTL, Topic and Urgency are never forwarded; ``Encryption-Key`` (the retired
``aesgcm128``) is ignored.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from twisted.web.http_headers import Headers

from pushtwisted.webpush.errors import Errno, WebPushError

__all__ = [
    "TTL_CEILING",
    "Urgency",
    "PushHeaders",
    "is_valid_topic",
    "parse_ttl",
    "parse_topic",
    "parse_urgency",
    "check_body_size",
    "crypto_headers",
    "sanitize",
    "parameters",
    "check_push",
]

#: RFC 8030 section 5.2: TTL values at or above this count as this.
TTL_CEILING = 2**31

_DIGITS_RE = re.compile(r"[0-9]+")
_TOPIC_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
_PADDING_RE = re.compile(r"=+(?=[ \t]*(?:[,;]|$))")
_PRINTABLE_RE = re.compile(r"[\x20-\x7e]*")
_OWS = " \t"


class Urgency(enum.Enum):
    """The four urgencies of RFC 8030 section 5.3."""

    VERY_LOW = "very-low"
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"


@dataclass(frozen=True, slots=True, kw_only=True)
class PushHeaders:
    """What a push request's headers say, once checked.

    :ivar ttl: the effective TTL in seconds (capped); the response's ``TTL`` header.
    :ivar topic: the Topic, or None.
    :ivar urgency: the Urgency (``NORMAL`` when absent).
    :ivar forward: the ``headers`` object sent to the device; empty for an empty body.
    """

    ttl: int
    topic: str | None
    urgency: Urgency
    forward: Mapping[str, str] = field(default_factory=dict)


def _single(values: Sequence[str] | None, error: WebPushError) -> str | None:
    """Return the one value of a header, None when absent.

    :raises WebPushError: ``error`` when the header was sent more than once.
    """
    if not values:
        return None
    if len(values) > 1:
        raise error
    return values[0].strip(_OWS)


def is_valid_topic(topic: str) -> bool:
    """Return True when ``topic`` is 1 to 32 base64url characters."""
    return _TOPIC_RE.fullmatch(topic) is not None


def parse_ttl(values: Sequence[str] | None, *, max_ttl: int) -> int:
    """Return the effective TTL of the ``TTL`` header's values.

    :raises WebPushError: 400 errno 111 when absent, 114 when not one ``1*DIGIT``.
    """
    invalid = WebPushError(400, Errno.TTL_INVALID, "Invalid TTL header")
    value = _single(values, invalid)
    if value is None:
        raise WebPushError(400, Errno.TTL_MISSING, "Missing TTL header")
    if _DIGITS_RE.fullmatch(value) is None:
        raise invalid
    digits = value.lstrip("0")
    # Compare lengths first: int() of a huge string is slow (and limited).
    ttl = TTL_CEILING if len(digits) > 10 else min(int(digits or "0"), TTL_CEILING)
    return min(ttl, max_ttl)


def parse_topic(values: Sequence[str] | None) -> str | None:
    """Return the ``Topic`` header's value, or None when absent.

    :raises WebPushError: 400 errno 113 unless it is 1 to 32 base64url characters.
    """
    invalid = WebPushError(400, Errno.TOPIC, "Invalid Topic header")
    value = _single(values, invalid)
    if value is None:
        return None
    if not is_valid_topic(value):
        raise invalid
    return value


def parse_urgency(values: Sequence[str] | None) -> Urgency:
    """Return the ``Urgency`` header's value, ``NORMAL`` when absent.

    :raises WebPushError: 400 errno 112 on an unknown value or several values.
    """
    invalid = WebPushError(400, Errno.URGENCY, "Invalid Urgency header")
    value = _single(values, invalid)
    if value is None:
        return Urgency.NORMAL
    try:
        return Urgency(value.lower())
    except ValueError:
        raise invalid from None


def check_body_size(length: int, *, max_bytes: int) -> None:
    """Accept a body of ``length`` octets.

    :raises WebPushError: 413 errno 104 when ``length > max_bytes``.
    """
    if length > max_bytes:
        raise WebPushError(413, Errno.PAYLOAD_TOO_LARGE, "Message body too large")


def sanitize(value: str) -> str:
    """Return a crypto header value with its ``"`` removed and base64 padding stripped."""
    return _PADDING_RE.sub("", value.replace('"', ""))


def parameters(value: str) -> list[tuple[str, str]]:
    """Return the ``(lower-cased name, value)`` pairs of a ``;``/``,`` separated list.

    Spaces around names and values are dropped; a part without ``=`` has the value ``""``.
    """
    pairs = []
    for part in re.split(r"[;,]", value):
        name, _, param = part.partition("=")
        if name.strip(_OWS):
            pairs.append((name.strip(_OWS).lower(), param.strip(_OWS)))
    return pairs


def _without_p256ecdsa(value: str) -> str:
    """Return a Crypto-Key value without its ``p256ecdsa`` parameters."""
    groups = []
    for group in value.split(","):
        kept = [
            part.strip(_OWS)
            for part in group.split(";")
            if part.strip(_OWS) and part.partition("=")[0].strip(_OWS).lower() != "p256ecdsa"
        ]
        if kept:
            groups.append(";".join(kept))
    return ",".join(groups)


def _joined(values: Sequence[str] | None) -> str | None:
    """Return a list header's values joined with ``,``, or None when absent."""
    if not values:
        return None
    return ",".join(v.strip(_OWS) for v in values)


def crypto_headers(
    encoding: Sequence[str] | None,
    encryption: Sequence[str] | None,
    crypto_key: Sequence[str] | None,
) -> dict[str, str]:
    """Check the crypto headers of a non-empty body; return those forwarded to the device.

    :param encoding: the values of ``Content-Encoding``.
    :param encryption: the values of ``Encryption``.
    :param crypto_key: the values of ``Crypto-Key``.
    :raises WebPushError: 400 errno 110 on an unknown, missing or repeated
        encoding, a parameter the encoding forbids or lacks, or a value that
        is not printable ASCII.
    """
    unknown = WebPushError(400, Errno.CRYPTO, "Unknown or missing Content-Encoding")
    name = _single(encoding, unknown)
    enc = _joined(encryption)
    key = _joined(crypto_key)
    for text in (name, enc, key):
        if text is not None and _PRINTABLE_RE.fullmatch(text) is None:
            raise WebPushError(400, Errno.CRYPTO, "Invalid crypto headers")
    enc = None if enc is None else sanitize(enc)
    key = None if key is None else sanitize(key)
    salts = [v for n, v in parameters(enc or "") if n == "salt"]
    dhs = [v for n, v in parameters(key or "") if n == "dh"]
    codec = (name or "").lower()
    if codec == "aes128gcm":
        if salts or dhs:
            raise WebPushError(
                400, Errno.CRYPTO, "aes128gcm takes no salt in Encryption or dh in Crypto-Key"
            )
    elif codec == "aesgcm":
        if not any(salts) or not any(dhs):
            raise WebPushError(
                400, Errno.CRYPTO, "aesgcm needs a salt in Encryption and a dh in Crypto-Key"
            )
    else:
        raise unknown
    forward = {"encoding": codec}
    if enc:
        forward["encryption"] = enc
    if key and (key := _without_p256ecdsa(key)):
        forward["crypto_key"] = key
    return forward


def _values(headers: Headers, name: bytes) -> list[str] | None:
    """Return a header's raw values as text (ISO-8859-1 never fails), None if absent."""
    raw = headers.getRawHeaders(name)
    return None if raw is None else [v.decode("latin-1") for v in raw]


def check_push(headers: Headers, body_length: int, *, max_ttl: int, max_bytes: int) -> PushHeaders:
    """Check a push request (section 6.7 to 6.9, 6.11) and return what it says.

    :param headers: the request headers.
    :param body_length: the body's size in octets.
    :param max_ttl: the TTL cap in seconds (``max_ttl`` of the config).
    :param max_bytes: the body limit in octets (``max_message_bytes``).
    :raises WebPushError: the first failing check's error, in the order of the table.
    """
    check_body_size(body_length, max_bytes=max_bytes)
    ttl = parse_ttl(_values(headers, b"ttl"), max_ttl=max_ttl)
    topic = parse_topic(_values(headers, b"topic"))
    urgency = parse_urgency(_values(headers, b"urgency"))
    forward: dict[str, str] = {}
    if body_length > 0:
        forward = crypto_headers(
            _values(headers, b"content-encoding"),
            _values(headers, b"encryption"),
            _values(headers, b"crypto-key"),
        )
    return PushHeaders(ttl=ttl, topic=topic, urgency=urgency, forward=forward)
