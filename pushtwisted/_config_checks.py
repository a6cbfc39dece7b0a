"""Checks of configuration values that need more than a comparison.

Each ``*_problem`` function returns why a value is refused, or None; the
message never repeats a secret.  ``pushtwisted.config`` attaches them to its
fields.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from urllib.parse import urlsplit

from pushtwisted.tokens import key_problem

__all__ = ["did_you_mean", "http_url_problem", "keys_problem", "origins_problem"]


def http_url_problem(url: str) -> str | None:
    """Say why ``url`` is not an absolute ``http(s)://`` URL with a host, or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as e:
        return f"must be an absolute http:// or https:// URL ({e})"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "must be an absolute http:// or https:// URL with a host"
    if any(c.isspace() for c in url):
        return "must not contain spaces"
    if parts.query or parts.fragment or "?" in url or "#" in url:
        return "must not have a query or a fragment"
    if "@" in parts.netloc:
        return "must not hold a user name or password"
    return None


def origins_problem(origins: list[str]) -> str | None:
    """Say which entry is not a ``scheme://host[:port]`` origin, or None."""
    for origin in origins:
        try:
            parts = urlsplit(origin)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            parts = None
        if (
            parts is None
            or not parts.scheme
            or not parts.hostname
            or parts.path
            or "@" in parts.netloc
            or any(c in origin for c in "?# \t")
        ):
            return f"{origin!r} is not an origin: scheme://host[:port], without a path"
    return None


def keys_problem(keys: list[str]) -> str | None:
    """Say which key is not 32 bytes of URL-safe base64, or None (never the key itself)."""
    for number, key in enumerate(keys, 1):
        problem = key_problem(key)
        if problem is not None:
            return f"key {number} of {len(keys)}: {problem}"
    return None


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """Return ``' (did you mean "x"?)'`` for a close known name, else ''."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""
