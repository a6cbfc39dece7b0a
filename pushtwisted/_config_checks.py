"""Checks of configuration values that need more than a comparison.

Each ``*_problem`` function returns why a value is refused, or None; the
message never repeats a secret.  ``pushtwisted.config`` attaches them to its
fields.  ``coerce`` and ``from_env_string`` check a TOML value, or parse an
environment variable's text, against a field's annotated type.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from pushtwisted.errors import ConfigError
from pushtwisted.tokens import key_problem

__all__ = [
    "coerce",
    "did_you_mean",
    "from_env_string",
    "got",
    "http_url_problem",
    "keys_problem",
    "origins_problem",
    "type_name",
]


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


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return "a list of strings"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        tp, str(tp)
    )


def coerce(tp: Any, value: object) -> object:
    """Check ``value`` against the annotated type ``tp``; return it (ints widen to float).

    :raises ValueError: saying which type was expected.
    """
    if typing.get_origin(tp) is list:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ValueError(f"must be {type_name(tp)}")


def got(value: object, secret: bool) -> str:
    """Return ``", got <value>"`` for an error message; nothing for a secret."""
    return "" if secret else f", got {value!r}"


def from_env_string(var: str, tp: Any, raw: str, secret: bool) -> object:
    """Parse an environment variable's text as the type ``tp``.

    :raises ConfigError: naming the variable, when the text is not of that type.
    """
    if typing.get_origin(tp) is list:
        return [part.strip() for part in raw.split(",") if part.strip()]
    if tp is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{var}: must be a boolean{got(raw, secret)}")
    if tp is int or tp is float:
        try:
            return tp(raw.strip())
        except ValueError:
            raise ConfigError(f"{var}: must be {type_name(tp)}{got(raw, secret)}") from None
    return raw
