"""Is a listener reachable from outside the host's private networks?

The router listener serves the node-to-node API; it must be reachable by the
other nodes only.  The WebSocket and endpoint listeners default to
127.0.0.1, but ``[router] listen = "tcp:3000"`` binds every interface.
``public_exposure`` reads the address a Twisted endpoint description binds
and says what is wrong with it, for a warning at start; it does no I/O.

A loopback or private address (RFC 1918, IPv6 unique-local, link-local) is
fine, and so is a UNIX socket.  No ``interface`` (every address), an
unspecified one (``0.0.0.0``, ``::``), a public address, a host name and an
endpoint type whose address cannot be read here (``systemd:``, ...) are not.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = ["public_exposure"]

_UNESCAPED_COLON = re.compile(r"(?<!\\):")
#: Endpoint types that bind an IP address given by ``interface``.
_IP_TYPES = frozenset({"tcp", "tcp6", "ssl", "reuseport"})
#: Endpoint types reachable from this host only.
_LOCAL_TYPES = frozenset({"unix"})


def public_exposure(description: str) -> str | None:
    """Return why the listener ``description`` may be reachable from outside, or None."""
    parts = [p.replace("\\:", ":") for p in _UNESCAPED_COLON.split(description.strip())]
    kind = parts[0].strip().lower()
    if kind in _LOCAL_TYPES:
        return None
    if kind not in _IP_TYPES:
        return f"cannot tell which addresses a {kind!r} listener binds"
    interface = ""
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep and key.strip().lower() == "interface":
            interface = value.strip()
    if not interface:
        return "no interface given: it listens on every address of the host"
    try:
        address = ipaddress.ip_address(interface.strip("[]").partition("%")[0])
    except ValueError:
        return f"interface {interface!r} is not an IP address"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified:
        return f"interface {interface} listens on every address of the host"
    if address.is_loopback or address.is_private:
        return None
    return f"interface {interface} is not a private or loopback address"
