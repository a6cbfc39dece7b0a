"""The one error hierarchy of pushtwisted.

Every error that reaches a peer knows how to present itself: request-facing
errors carry the HTTP status (endpoint) or the ``status`` field of a client
error reply (WebSocket), and protocol violations carry the WebSocket close
code.  The detail text goes to the log, never to the wire.
"""

from __future__ import annotations

__all__ = [
    "PushError",
    "ConfigError",
    "InvalidToken",
    "ProtocolViolation",
    "StorageError",
    "StorageUnavailable",
    "StorageBusy",
    "TooManyChannels",
]


class PushError(Exception):
    """Base class of every pushtwisted error."""

    http_status: int = 500
    errno: int = 999


class ConfigError(PushError):
    """The configuration is invalid; each problem names its TOML key path.

    ``ConfigError(*problems)`` carries every problem found, one line each;
    ``str()`` joins them with newlines.
    """

    def __init__(self, *problems: str) -> None:
        super().__init__(*problems)
        self.problems: tuple[str, ...] = problems

    def __str__(self) -> str:
        return "\n".join(self.problems)


class InvalidToken(PushError):
    """An endpoint token does not decode, authenticate or parse."""

    http_status = 404
    errno = 102


class ProtocolViolation(PushError):
    """A client broke the SimplePush protocol; the connection is closed.

    :param ws_close_code: the WebSocket close code to send.
    """

    def __init__(self, message: str, ws_close_code: int = 1002) -> None:
        super().__init__(message)
        self.ws_close_code = ws_close_code


class StorageError(PushError):
    """A storage backend failed in a way that is not a simple miss."""

    http_status = 503
    errno = 402


class StorageUnavailable(StorageError):
    """The store cannot be reached or answered an error; the caller retries."""


class StorageBusy(StorageUnavailable):
    """The storage thread pool queue is full; new work fails fast."""


class TooManyChannels(PushError):
    """A UAID already holds the configured maximum number of channels."""

    http_status = 413
    errno = 108
