"""UAID and channelID validation and normal form (PROTOCOL.md section 16.14).

IDs are UUIDs, written either as 32 hex characters or dashed 8-4-4-4-12, in
any case.  Storage keys and tokens use the *normal form*: 32 lower-case hex
characters.  Replies echo the client's own spelling.

A connection is identified, within its node, by ``connected_at``: the
node's clock at its hello in integer milliseconds (``connected_at_ms``).
"""

from __future__ import annotations

import re
import uuid

__all__ = [
    "connected_at_ms",
    "is_valid_id",
    "normalize_id",
    "new_uaid",
    "id_to_bytes",
    "id_from_bytes",
]

_ID_RE = re.compile(
    r"\A(?:[0-9a-fA-F]{32}"
    r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\Z"
)


def is_valid_id(value: object) -> bool:
    """Return True when ``value`` is a string holding a UUID in an accepted form."""
    return isinstance(value, str) and len(value) in (32, 36) and _ID_RE.match(value) is not None


def normalize_id(value: str) -> str:
    """Return the normal form (32 lower-case hex) of a valid ID.

    :raises ValueError: when ``value`` is not a valid ID.
    """
    if not is_valid_id(value):
        raise ValueError("not a valid UUID")
    return value.replace("-", "").lower()


def new_uaid() -> str:
    """Return a fresh random UAID in normal form."""
    return uuid.uuid4().hex


def id_to_bytes(normal: str) -> bytes:
    """Return the 16 raw bytes of an ID in normal form."""
    return bytes.fromhex(normal)


def id_from_bytes(raw: bytes) -> str:
    """Return the normal form of 16 raw ID bytes."""
    return raw.hex()


def connected_at_ms(seconds: float) -> int:
    """Return a clock reading (seconds) as the integer milliseconds of ``connected_at``."""
    return int(seconds * 1000)
