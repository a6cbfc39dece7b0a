"""The configuration written back as TOML: what ``check`` prints.

``dumps(document)`` writes ``{section: {key: value}}`` with the value types a
configuration holds (strings, booleans, integers, floats, lists of strings)
as TOML text that ``tomllib`` reads back to the same document.
``effective_toml(config)`` is that text for a whole ``Config``, secrets
(``crypto.keys``, ``router.secret``) masked.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from pushtwisted.config import Config

__all__ = ["SECRET_MASK", "config_document", "dumps", "effective_toml"]

#: What ``config_document`` shows instead of a secret value that is set.
SECRET_MASK = "********"

#: The short escapes TOML basic strings have.
_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _string(text: str) -> str:
    """Return ``text`` as a TOML basic string (control characters escaped)."""
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _value(value: object) -> str:
    """Return ``value`` as TOML.

    :raises TypeError: for a type a configuration does not hold.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} as a TOML value")


def _key(name: str) -> str:
    """Return ``name`` as a TOML key: bare when it can be, quoted otherwise."""
    bare = name and all(c.isascii() and (c.isalnum() or c in "-_") for c in name)
    return name if bare else _string(name)


def dumps(document: Mapping[str, Mapping[str, object]]) -> str:
    """Return TOML text for ``{section: {key: value}}``, one table per section.

    :raises TypeError: for a value that is not a string, boolean, number or list.
    """
    lines: list[str] = []
    for section, table in document.items():
        if lines:
            lines.append("")
        lines.append(f"[{_key(section)}]")
        lines.extend(f"{_key(key)} = {_value(value)}" for key, value in table.items())
    return "\n".join(lines) + "\n"


def config_document(config: Config, *, mask_secrets: bool = True) -> dict[str, dict[str, Any]]:
    """Return ``config`` as ``{section: {key: value}}``, the shape of the TOML file.

    :param mask_secrets: show each secret that is set (``router.secret``,
        every one of ``crypto.keys``, so their number shows) as ``SECRET_MASK``.
    """
    document: dict[str, dict[str, Any]] = {}
    for section in dataclasses.fields(Config):
        values = getattr(config, section.name)
        table: dict[str, Any] = {}
        for f in dataclasses.fields(values):
            value = getattr(values, f.name)
            if mask_secrets and f.metadata.get("secret"):
                if isinstance(value, list):
                    value = [SECRET_MASK for _ in value]
                elif value:
                    value = SECRET_MASK
            table[f.name] = list(value) if isinstance(value, list) else value
        document[section.name] = table
    return document


def effective_toml(config: Config) -> str:
    """Return the whole of ``config`` as TOML, secrets masked."""
    return dumps(config_document(config))
