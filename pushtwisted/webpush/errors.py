"""The error type of the WebPush HTTP routes, in autopush's JSON shape.

Every WebPush rejection renders as::

    {"code": <status>, "errno": <int or null>, "error": "<HTTP reason phrase>",
     "message": "<short public text>", "more_info": "<URL of the errno table>"}

with ``Content-Type: application/json`` and the extra headers its status needs
(section 6.15, 6.16 of the WebPush reference):

======  =====  ===============================================  =======================
status  errno  when                                             extra headers
======  =====  ===============================================  =======================
400     110    bad, missing or forbidden crypto headers
400     111    no TTL header
400     112    bad Urgency (ours)
400     113    bad Topic
400     114    TTL that is not ``1*DIGIT``
401     109    any VAPID failure                                ``WWW-Authenticate: vapid``
404     102    token or message id that does not decode
405     null   method other than POST on ``/wpush/...``         ``Allow: POST``
410     106    channel not registered                           ``Cache-Control: max-age=86400``
413     104    body over ``max_message_bytes``
429     115    per-UAID backlog cap reached (ours)              ``Retry-After``
503     201    storage thread pool saturated                    ``Retry-After``
503     202    storage unavailable                              ``Retry-After``
500     999    anything unexpected
======  =====  ===============================================  =======================

``WebPushError`` is not a ``PushError``: its errno may be null (405), which the
SimplePush error shape cannot carry.  ``from_exception`` maps the shared
``PushError`` types (``InvalidToken``, ``StorageError``) into it.  The
``message`` is a fixed public text: never a token, id, UAID or payload.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from http import HTTPStatus

from pushtwisted.errors import InvalidToken, StorageBusy, StorageError

__all__ = [
    "MORE_INFO",
    "Errno",
    "WebPushError",
    "method_not_allowed",
    "gone",
    "too_many_pending",
    "from_exception",
]

#: The ``more_info`` of every error body: the errno table these numbers follow.
MORE_INFO = "http://autopush.readthedocs.io/en/latest/http.html#error-codes"

_Headers = tuple[tuple[bytes, bytes], ...]


class Errno(enum.IntEnum):
    """The errno values of WebPush error bodies (autopush's numbers, plus 112 and 115)."""

    INVALID_TOKEN = 102
    PAYLOAD_TOO_LARGE = 104
    CHANNEL_GONE = 106
    VAPID = 109
    CRYPTO = 110
    TTL_MISSING = 111
    URGENCY = 112
    TOPIC = 113
    TTL_INVALID = 114
    BACKLOG = 115
    STORAGE_BUSY = 201
    STORAGE = 202
    INTERNAL = 999


class WebPushError(Exception):
    """A WebPush request rejection that knows its HTTP answer.

    :param status: the HTTP status code.
    :param errno: the errno put in the body, or None (rendered ``null``).
    :param message: the short public text put in the body.
    :param headers: extra response headers as ``(name, value)`` byte pairs.
    """

    def __init__(
        self,
        status: int,
        errno: int | None,
        message: str,
        *,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.errno = errno
        self.message = message
        self.headers: _Headers = tuple(headers)

    def to_json(self) -> dict[str, object]:
        """Return the error body as a JSON-ready dict."""
        try:
            phrase = HTTPStatus(self.status).phrase
        except ValueError:
            phrase = "Unknown"
        return {
            "code": self.status,
            "errno": None if self.errno is None else int(self.errno),
            "error": phrase,
            "message": self.message,
            "more_info": MORE_INFO,
        }

    def body(self) -> bytes:
        """Return the error body as compact ASCII JSON bytes."""
        return json.dumps(self.to_json(), separators=(",", ":")).encode("ascii")

    def response_headers(self) -> _Headers:
        """Return every header of the answer: ``Content-Type`` first, then the extra ones."""
        return ((b"Content-Type", b"application/json"), *self.headers)

    def __repr__(self) -> str:
        return f"WebPushError({self.status}, {self.errno}, {self.message!r})"


def method_not_allowed() -> WebPushError:
    """Return the 405 of a method other than POST on ``/wpush/...`` (errno null)."""
    return WebPushError(405, None, "Method not allowed", headers=((b"Allow", b"POST"),))


def gone() -> WebPushError:
    """Return the 410 errno 106 of an unregistered channel (cacheable for a day)."""
    return WebPushError(
        410,
        Errno.CHANNEL_GONE,
        "Subscription is no longer valid",
        headers=((b"Cache-Control", b"max-age=86400"),),
    )


def too_many_pending(*, retry_after: int) -> WebPushError:
    """Return the 429 errno 115 of a UAID whose backlog is full.

    :param retry_after: seconds put in ``Retry-After``.
    """
    return WebPushError(
        429,
        Errno.BACKLOG,
        "Too many pending messages for this subscription",
        headers=((b"Retry-After", b"%d" % retry_after),),
    )


def from_exception(error: BaseException, *, retry_after: int) -> WebPushError:
    """Map any exception raised while serving a WebPush route to its ``WebPushError``.

    A ``WebPushError`` is returned as it is; ``InvalidToken`` is 404 errno 102;
    ``StorageBusy`` is 503 errno 201 and any other ``StorageError`` 503 errno
    202, both with ``Retry-After``; anything else is 500 errno 999.  The
    exception's own text is never used.

    :param retry_after: seconds put in ``Retry-After`` on a 503.
    """
    if isinstance(error, WebPushError):
        return error
    if isinstance(error, InvalidToken):
        return WebPushError(404, Errno.INVALID_TOKEN, "Invalid token")
    if isinstance(error, StorageError):
        busy = isinstance(error, StorageBusy)
        return WebPushError(
            503,
            Errno.STORAGE_BUSY if busy else Errno.STORAGE,
            "Storage busy, retry later" if busy else "Storage unavailable, retry later",
            headers=((b"Retry-After", b"%d" % retry_after),),
        )
    return WebPushError(500, Errno.INTERNAL, "Internal server error")
