"""What a node says when it starts: one summary line, then its warnings.

``summary_line`` is logged (info) once the listeners are bound::

    pushtwisted 0.1.0 started: sqlite storage /srv/push/state/pushtwisted.sqlite3;
    websocket on 127.0.0.1:8080, endpoint on 127.0.0.1:8081; public_url
    http://127.0.0.1:8081; endpoint key kept in /srv/push/state/endpoint.key

(one line in the log): the version, the storage backend and where it is
(the SQLite file as an absolute path, so a relative ``[storage] path`` shows
where it resolved; the memcached servers), every listener with the address
it is bound to, ``public_url``, and where the endpoint key comes from.

``startup_warnings`` are logged (warn) after it:

- an endpoint key generated just now: every pushEndpoint handed out with an
  earlier key no longer works (expected at a first start; otherwise the
  state directory was lost);
- a WebSocket or endpoint listener bound to every interface while
  ``[endpoint] public_url`` names this host only (127.0.0.1, ::1,
  localhost): application servers elsewhere cannot reach the pushEndpoints;
- a ``[client] max_messages_burst`` below ``2 * max_channels + 1``, which
  cuts off a client that registers and acks all its channels at once;
- what the state directory check could not make private.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from urllib.parse import urlsplit

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress

from pushtwisted import __version__
from pushtwisted.config import Config
from pushtwisted.statedir import State

__all__ = ["Listening", "describe_address", "startup_warnings", "summary_line"]

#: ``(section, bound address or None, listen description)`` of one listener.
Listening = tuple[str, IAddress | None, str]

#: The sections whose listeners face devices and application servers.
_PUBLIC = ("websocket", "endpoint")


def describe_address(address: IAddress | None, description: str) -> str:
    """Return ``host:port`` (``[v6]:port``), ``unix:path``, or the description.

    An address bound to every interface says so: ``0.0.0.0:8080 (every
    interface)``.
    """
    if isinstance(address, IPv4Address | IPv6Address):
        host = f"[{address.host}]" if isinstance(address, IPv6Address) else address.host
        every = " (every interface)" if _every_interface(address) else ""
        return f"{host}:{address.port}{every}"
    if isinstance(address, UNIXAddress) and address.name:
        name = address.name.decode() if isinstance(address.name, bytes) else address.name
        return f"unix:{name}"
    return description


def summary_line(config: Config, state: State, listening: Sequence[Listening]) -> str:
    """Return the one line that says what this node runs (see the module)."""
    listeners = ", ".join(
        f"{section} on {describe_address(address, description)}"
        for section, address, description in listening
    )
    parts = [
        _storage(config, state),
        listeners,
        f"public_url {config.endpoint.public_url}",
        _key(config, state),
    ]
    if config.router.enabled:
        parts.append(f"router.public_url {config.router.public_url}")
    return f"pushtwisted {__version__} started: " + "; ".join(parts)


def startup_warnings(config: Config, state: State, listening: Sequence[Listening]) -> list[str]:
    """Return what the operator should be told at start (see the module), in order."""
    warnings = []
    if state.key is not None and state.key.generated:
        warnings.append(
            f"a new endpoint key was generated in {state.key.path}: pushEndpoints handed out"
            " with an earlier key no longer work (expected at a first start; otherwise the"
            " state directory was lost: restore it, or have the devices register again)"
        )
    exposed = [
        section
        for section, address, _ in listening
        if section in _PUBLIC and _every_interface(address)
    ]
    if exposed and _this_host_only(config.endpoint.public_url):
        warnings.append(
            f"{' and '.join(exposed)} listen{'' if len(exposed) > 1 else 's'} on every"
            f" interface, but endpoint.public_url"
            f" {config.endpoint.public_url} points at this host only: application servers"
            " on other hosts cannot reach the pushEndpoints handed out; set"
            " endpoint.public_url (SIMPLEPUSH_ENDPOINT_PUBLIC_URL) to the URL they reach"
        )
    client = config.client
    needed = 2 * client.max_channels + 1
    if (
        client.max_messages_per_second > 0
        and client.max_channels
        and (client.max_messages_burst < needed)
    ):
        warnings.append(
            f"client.max_messages_burst = {client.max_messages_burst} is below 2 *"
            f" client.max_channels + 1 = {needed}: a client that registers and acks all its"
            " channels as fast as the replies come is closed (1008)"
        )
    warnings.extend(state.warnings)
    return warnings


def _storage(config: Config, state: State) -> str:
    storage = config.storage
    if storage.backend == "sqlite":
        return f"sqlite storage {state.database}"
    if storage.backend == "memcached":
        prefix = f" (key prefix {storage.key_prefix!r})" if storage.key_prefix else ""
        return f"memcached storage on {', '.join(storage.servers)}{prefix}"
    return f"{storage.backend} storage (volatile)"


def _key(config: Config, state: State) -> str:
    if config.crypto.keys:
        return f"endpoint keys from crypto.keys ({len(config.crypto.keys)})"
    if state.key is None:
        return "no endpoint key"
    verb = "generated in" if state.key.generated else "kept in"
    return f"endpoint key {verb} {state.key.path}"


def _every_interface(address: IAddress | None) -> bool:
    return isinstance(address, IPv4Address | IPv6Address) and address.host in ("", "0.0.0.0", "::")


def _this_host_only(url: str) -> bool:
    """Return True when ``url``'s host is a loopback address or ``localhost``."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
