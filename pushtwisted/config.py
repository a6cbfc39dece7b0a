"""Configuration: TOML into frozen dataclasses, with environment overrides.

``load_config(path)`` reads a TOML file (or nothing, for the defaults),
applies ``SIMPLEPUSH_<SECTION>_<KEY>`` environment variables on top, and
validates every value.  Unknown sections or keys (in the file or in a
``SIMPLEPUSH_*`` variable) and values of the wrong type or range raise one
``ConfigError`` that lists every problem found, each naming its key.
``config.sample.toml`` documents every key with its default.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pushtwisted._config_checks import (
    coerce,
    did_you_mean,
    from_env_string,
    got,
    http_url_problem,
    keys_problem,
    origins_problem,
)
from pushtwisted.errors import ConfigError

__all__ = [
    "Config",
    "WebSocketConfig",
    "EndpointConfig",
    "ClientConfig",
    "WebPushConfig",
    "StorageConfig",
    "CryptoConfig",
    "MIN_ROUTER_SECRET",
    "RouterConfig",
    "ServerConfig",
    "load_config",
    "parse_config",
    "ENV_PREFIX",
    "MAX_KEY_PREFIX",
    "key_prefix_problem",
]

ENV_PREFIX = "SIMPLEPUSH_"

_T = TypeVar("_T")


def _nonneg(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


#: Longest ``[storage] key_prefix``: memcached keys are at most 250 bytes and
#: the longest key suffix is ``<32 hex>.<32 hex>`` (65 characters).
MAX_KEY_PREFIX = 185


def key_prefix_problem(prefix: str) -> str | None:
    """Return what makes ``prefix`` unusable as a memcached key prefix, or None.

    The one rule, used by ``[storage] key_prefix`` and by the memcached storage
    and directory: printable ASCII without spaces, at most ``MAX_KEY_PREFIX``.
    """
    if len(prefix) > MAX_KEY_PREFIX:
        return f"must be at most {MAX_KEY_PREFIX} characters"
    if not all(0x21 <= ord(c) <= 0x7E for c in prefix):
        return "must be printable ASCII without spaces"
    return None


def _check(check: Callable[[Any], str | None] | None = None, *, secret: bool = False) -> Any:
    """Field metadata: a validation function, and whether the value is a secret.

    A secret value is never repeated in an error, and is masked when the
    effective configuration is printed (``pushtwisted.config_toml``).
    """
    return {"check": check, "secret": secret}


@dataclass(frozen=True, slots=True, kw_only=True)
class WebSocketConfig:
    """``[websocket]``: the listener user agents connect to."""

    listen: str = "tcp:8080:interface=127.0.0.1"
    #: Allowed ``Origin`` values (scheme://host[:port]); empty allows all.
    origins: list[str] = field(default_factory=list, metadata=_check(origins_problem))
    #: Seconds between WebSocket ping frames to find dead peers; 0 = off.
    auto_ping_interval: float = field(default=300.0, metadata=_check(_nonneg))
    #: Seconds to wait for the pong before dropping the peer.
    auto_ping_timeout: float = field(default=30.0, metadata=_check(_nonneg))
    #: Largest incoming message in bytes; larger ones close with 1009.
    max_message_size: int = field(default=262144, metadata=_check(_positive))
    #: Listen backlog of the socket.
    backlog: int = field(default=1024, metadata=_check(_positive))
    #: Share the port with other processes (``SO_REUSEPORT``; ``tcp:`` only).
    reuse_port: bool = False
    #: Most open connections; more are accepted and closed at once. 0 = no limit.
    max_connections: int = field(default=0, metadata=_check(_nonneg))
    #: Seconds a new socket has to finish the WebSocket opening handshake; 0 = off.
    handshake_timeout: float = field(default=10.0, metadata=_check(_nonneg))
    #: Bytes of output a client may leave unread before it is aborted; past a
    #: quarter of it, updates wait in storage.  0 = no limit.
    max_output_buffer: int = field(default=1048576, metadata=_check(_nonneg))
    #: WebSocket pings (and unsolicited pongs) a client may send per second on
    #: average; faster closes with 1008.  0 = no limit.
    max_control_frames_per_second: float = field(default=10.0, metadata=_check(_nonneg))
    #: Control frames a client may send at once above that rate.
    max_control_frames_burst: int = field(default=30, metadata=_check(_positive))


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointConfig:
    """``[endpoint]``: the listener app servers PUT notifications to."""

    listen: str = "tcp:8081:interface=127.0.0.1"
    #: Base URL of every pushEndpoint: ``{public_url}/update/{token}``.
    public_url: str = field(default="http://127.0.0.1:8081", metadata=_check(http_url_problem))
    #: Largest ``data`` in bytes; larger is answered 413.
    max_data: int = field(default=4096, metadata=_check(_nonneg))
    #: Largest request body in bytes; larger is answered 413 before it is read.
    max_body: int = field(default=65536, metadata=_check(_positive))
    #: Add ``Access-Control-Allow-*`` headers to every response.
    cors: bool = False
    #: Ignore versions not above the stored one (answered 200, not stored).
    monotonic_versions: bool = False
    #: Listen backlog of the socket.
    backlog: int = field(default=1024, metadata=_check(_positive))
    #: Share the port with other processes (``SO_REUSEPORT``; ``tcp:`` only).
    reuse_port: bool = False
    #: Most open connections; more are accepted and closed at once. 0 = no limit.
    max_connections: int = field(default=0, metadata=_check(_nonneg))
    #: Seconds a request's head and body may take from its first byte; then 408. 0 = no limit.
    request_timeout: float = field(default=10.0, metadata=_check(_nonneg))


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """``[client]``: the SimplePush session rules."""

    #: Seconds a new socket has to send a successful hello; 0 = off.
    hello_timeout: float = field(default=30.0, metadata=_check(_nonneg))
    #: Minimum seconds between client pings; 0 = no limit.
    min_ping_interval: float = field(default=20.0, metadata=_check(_nonneg))
    #: Seconds between re-sends of unacknowledged updates; 0 = off.
    retry_interval: float = field(default=60.0, metadata=_check(_nonneg))
    #: Most channels per UAID (at hello and at register); 0 = no limit.
    max_channels: int = field(default=200, metadata=_check(_nonneg))
    #: Send ``expired`` after hello for listed channels that were unregistered.
    report_expired: bool = False
    #: Most messages a client may send per second on average; faster closes
    #: the connection with 1008.  0 = no limit.
    max_messages_per_second: float = field(default=20.0, metadata=_check(_nonneg))
    #: Messages a client may send at once above that rate (the burst).  Keep
    #: it at least ``2 * max_channels + 1``: a hello, then a register and an
    #: ack per channel, each sent as soon as the reply came, must pass.
    max_messages_burst: int = field(default=500, metadata=_check(_positive))
    #: WebPush: most messages sent and not yet acknowledged on one connection.
    webpush_batch: int = field(default=10, metadata=_check(_positive))


@dataclass(frozen=True, slots=True, kw_only=True)
class WebPushConfig:
    """``[webpush]``: the limits of WebPush messages (POST /wpush/...)."""

    #: Longest time to live in seconds; a larger ``TTL`` is lowered to it.
    max_ttl: int = field(default=2592000, metadata=_check(_positive))
    #: Largest message body in bytes (raw, encrypted); larger is answered 413.
    max_message_bytes: int = field(default=5630, metadata=_check(_positive))
    #: Most messages stored per UAID; past it a POST is answered 429.
    max_pending_messages: int = field(default=100, metadata=_check(_positive))


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageConfig:
    """``[storage]``: where registrations and pending updates live."""

    @staticmethod
    def _servers_problem(servers: list[str]) -> str | None:
        if not servers:
            return "must name at least one server"
        for server in servers:
            if server.startswith(("unix:", "/")):
                continue
            host, sep, port = server.rpartition(":")
            if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
                return f"{server!r} is not host:port"
        return None

    #: ``memory`` (volatile), ``sqlite`` (one file in ``path``) or ``memcached``.
    backend: str = field(
        default="sqlite",
        metadata=_check(
            lambda v: (
                None
                if v in ("memory", "sqlite", "memcached")
                else "must be one of: memory, sqlite, memcached"
            )
        ),
    )
    #: State directory (generated token key, embedded database).
    path: str = "pushtwisted-state"
    #: sqlite: ``full`` syncs every commit to disk (survives power loss);
    #: ``normal`` syncs at WAL checkpoints (survives a process crash, faster).
    sqlite_synchronous: str = field(
        default="full",
        metadata=_check(lambda v: None if v in ("full", "normal") else "must be full or normal"),
    )
    #: Keep ``data`` payloads for offline clients; false drops them.
    store_data: bool = True
    #: Seconds a tombstone of an unregistered channel is kept (410 to PUTs).
    ttl_deleted: float = field(default=86400.0, metadata=_check(_positive))
    #: memcached servers, ``host:port`` (or ``unix:/path``); keys are spread
    #: over them by rendezvous hashing.
    servers: list[str] = field(
        default_factory=lambda: ["127.0.0.1:11211"], metadata=_check(_servers_problem)
    )
    #: Prefix of every memcached key (lets several deployments share servers).
    key_prefix: str = field(default="", metadata=_check(key_prefix_problem))
    #: Threads the storage pool keeps when idle.
    pool_min_threads: int = field(default=1, metadata=_check(_nonneg))
    #: Most threads of the storage pool (and memcached connections per server).
    pool_max_threads: int = field(default=10, metadata=_check(_positive))
    #: Most storage calls in flight (queued or running); more get 503 at once.
    queue_limit: int = field(default=1000, metadata=_check(_positive))
    #: Seconds one storage call may take before it fails (503); also the
    #: memcached socket timeout and the sqlite busy timeout.
    timeout: float = field(default=5.0, metadata=_check(_positive))
    #: Seconds to wait for a memcached connection.
    connect_timeout: float = field(default=2.0, metadata=_check(_positive))
    #: memcached: seconds a channel with a pending update lives (refreshed at
    #: hello and on every update); more than 30 days is fine.
    ttl_live: float = field(default=2592000.0, metadata=_check(_positive))
    #: Seconds a user (UAID) and its channels live without a hello or a
    #: register: memcached expires the records, sqlite's hourly purge deletes
    #: them.  Keep it long: an expired channel answers 410.
    ttl_registered: float = field(default=2592000.0, metadata=_check(_positive))

    def __post_init__(self) -> None:
        if self.pool_min_threads > self.pool_max_threads:
            raise ConfigError(
                "storage.pool_min_threads: must be <= storage.pool_max_threads,"
                f" got {self.pool_min_threads} > {self.pool_max_threads}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class CryptoConfig:
    """``[crypto]``: endpoint token keys (the first issues, all are accepted)."""

    keys: list[str] = field(default_factory=list, metadata=_check(keys_problem, secret=True))


#: Shortest ``[router] secret`` accepted.
MIN_ROUTER_SECRET = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class RouterConfig:
    """``[router]``: the node-to-node listener of a cluster (``docs/cluster.md``).

    ``listen`` empty (the default) runs a single node: no directory and no
    router listener.  With ``listen`` set, ``public_url`` and a ``secret`` of
    at least ``MIN_ROUTER_SECRET`` characters are required here; the checks
    that involve other sections (``storage.backend``, ``crypto.keys``) are
    made by ``tap.build_service``.
    """

    #: Where the other nodes reach this one (a private address); "" = no cluster.
    listen: str = ""
    #: This node's router URL as the other nodes reach it (``http://host:port``).
    public_url: str = ""
    #: The shared secret that signs node-to-node requests (the same on every node).
    secret: str = field(default="", metadata=_check(secret=True))
    #: Seconds one node-to-node request may take (then the app server gets 202).
    timeout: float = field(default=2.0, metadata=_check(_positive))
    #: Seconds a signed request's timestamp may differ from this node's clock.
    max_skew: float = field(default=30.0, metadata=_check(_nonneg))

    @property
    def enabled(self) -> bool:
        """True when this node is part of a cluster (``listen`` is set)."""
        return bool(self.listen.strip())

    def __post_init__(self) -> None:
        if not self.enabled:
            return
        problems = []
        if len(self.secret) < MIN_ROUTER_SECRET:
            problems.append(
                f"router.secret: must be at least {MIN_ROUTER_SECRET} characters"
                " when router.listen is set"
            )
        if not self.public_url.strip():
            problems.append("router.public_url: must be set when router.listen is set")
        elif problem := http_url_problem(self.public_url):
            problems.append(f"router.public_url: {problem}, got {self.public_url!r}")
        if problems:
            raise ConfigError(*problems)


def _log_level_problem(level: str) -> str | None:
    valid = ("debug", "info", "warn", "warning", "error", "critical")
    return None if level.lower() in valid else "must be one of: " + ", ".join(valid)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """``[server]``: the process as a whole."""

    #: Lowest level of the events logged (debug, info, warn, error, critical).
    log_level: str = field(default="info", metadata=_check(_log_level_problem))
    #: Seconds a SIGTERM/SIGINT shutdown waits for clients to close and for
    #: in-flight requests and storage calls to finish.
    shutdown_timeout: float = field(default=10.0, metadata=_check(_nonneg))
    #: Seconds between full garbage collections that also walk the objects
    #: frozen every second (``pushtwisted.collector``); 0 = never.
    full_gc_interval: float = field(default=3600.0, metadata=_check(_nonneg))
    #: Write access lines for ``/status`` and ``/health`` on the endpoint listener.
    access_log_health: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole configuration of one pushtwisted node."""

    server: ServerConfig = field(default_factory=ServerConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    crypto: CryptoConfig = field(default_factory=CryptoConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    webpush: WebPushConfig = field(default_factory=WebPushConfig)


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def _build_section(
    name: str, cls: type[_T], table: Mapping[str, object], problems: list[str]
) -> _T | None:
    """Return the section built from ``table``, or None after adding its problems."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    found = len(problems)
    values: dict[str, object] = {}
    for key, value in table.items():
        path = f"{name}.{key}"
        if key not in known:
            problems.append(f"{path}: unknown key{did_you_mean(key, known)}")
            continue
        secret = bool(known[key].metadata.get("secret"))
        try:
            coerced = coerce(hints[key], value)
        except ValueError as e:
            problems.append(f"{path}: {e}{got(value, secret)}")
            continue
        check = known[key].metadata.get("check")
        problem = check(coerced) if check is not None else None
        if problem:
            problems.append(f"{path}: {problem}{got(value, secret)}")
            continue
        values[key] = coerced
    if len(problems) > found:
        return None  # the checks across keys would only repeat these problems
    try:
        return cls(**values)
    except ConfigError as e:
        problems.extend(e.problems)
        return None


def _env_overrides(
    environ: Mapping[str, str], sections: Mapping[str, type], problems: list[str]
) -> dict[str, dict[str, object]]:
    """Return ``{section: {key: value}}`` from every ``SIMPLEPUSH_*`` variable.

    Every variable with the prefix (any case) must name a known section and
    key; each one that does not, or whose text is not of the key's type,
    adds a problem naming the variable.
    """
    overrides: dict[str, dict[str, object]] = {}
    for var in sorted(environ):
        if not var.upper().startswith(ENV_PREFIX):
            continue
        section, _, key = var[len(ENV_PREFIX) :].lower().partition("_")
        if section not in sections:
            problems.append(
                f'{var}: unknown section "{section}"{did_you_mean(section, sections)};'
                " variables are named SIMPLEPUSH_<SECTION>_<KEY>"
            )
            continue
        cls = sections[section]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if key not in fields:
            problems.append(f"{var}: unknown key {section}.{key}{did_you_mean(key, fields)}")
            continue
        secret = bool(fields[key].metadata.get("secret"))
        tp = typing.get_type_hints(cls)[key]
        try:
            overrides.setdefault(section, {})[key] = from_env_string(var, tp, environ[var], secret)
        except ConfigError as e:
            problems.extend(e.problems)
    return overrides


def parse_config(
    document: Mapping[str, object], environ: Mapping[str, str] | None = None
) -> Config:
    """Build a ``Config`` from a parsed TOML document plus environment overrides.

    :raises ConfigError: listing every unknown section, key or variable and
        every bad value, each naming its key (or variable).
    """
    problems: list[str] = []
    sections = _sections()
    for name, table in document.items():
        if name not in sections:
            problems.append(f"{name}: unknown section{did_you_mean(name, sections)}")
        elif not isinstance(table, dict):
            problems.append(f"{name}: must be a table")
    overrides = _env_overrides(os.environ if environ is None else environ, sections, problems)
    built: dict[str, object] = {}
    for name, cls in sections.items():
        given = document.get(name)
        table = dict(given) if isinstance(given, dict) else {}
        table.update(overrides.get(name, {}))
        built[name] = _build_section(name, cls, table, problems)
    if problems:
        raise ConfigError(*problems)
    return Config(**built)  # type: ignore[arg-type]


def load_config(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file at ``path`` (None: defaults only) and return a ``Config``.

    :raises ConfigError: when the file cannot be read or parsed, or a key is bad.
    """
    document: dict[str, object] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                document = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML: {e}") from None
    return parse_config(document, environ)
