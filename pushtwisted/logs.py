"""Logging helpers: never log a raw UAID or token.

``uaid_hash`` gives a short stable digest that correlates log lines of one
device across nodes without revealing its ID.
"""

from __future__ import annotations

import hashlib

__all__ = ["uaid_hash"]


def uaid_hash(value: str | None) -> str:
    """Return the first 16 hex characters of SHA-256 of ``value`` ('' for None)."""
    if not value:
        return ""
    return hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:16]
