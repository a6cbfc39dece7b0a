"""Signatures of node-to-node requests: HMAC-SHA256 with a shared secret.

Every request a node sends to another node's router listener carries two
headers:

``X-Push-Timestamp``
    the sender's clock, in whole Unix seconds (ASCII decimal);
``X-Push-Signature``
    ``hex(HMAC-SHA256(secret, METHOD "\\n" PATH "\\n" TIMESTAMP "\\n" BODY))``,
    lower-case, where ``METHOD`` is upper-case ASCII, ``PATH`` is the request
    target as sent (path plus ``?query`` when there is one) and ``BODY`` the
    raw body bytes (empty when there is none).

The receiver recomputes the signature with its own copy of the secret and
compares in constant time, and refuses a timestamp more than ``max_skew``
seconds away from its clock.  Within that window a captured request can be
replayed; every node-to-node operation is idempotent (a version already sent
is not sent again, "check storage" reads storage, a kick names the
connection it closes), so a replay changes nothing.  Keep the router
listener on a private network anyway: the signature authenticates, it does
not encrypt.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping

from twisted.internet.interfaces import IReactorTime

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "RequestSigner",
    "SignatureError",
    "canonical_request",
    "compute_signature",
]

#: Header carrying the sender's Unix time in whole seconds.
TIMESTAMP_HEADER = b"X-Push-Timestamp"
#: Header carrying the hex HMAC-SHA256 of the canonical request.
SIGNATURE_HEADER = b"X-Push-Signature"

#: Longest timestamp text accepted (digits); guards ``int()`` against huge input.
_MAX_TIMESTAMP_DIGITS = 12
_HEX_DIGITS = frozenset(b"0123456789abcdef")


class SignatureError(Exception):
    """A request's signature is missing, malformed, stale or wrong.

    The message is for the log only; the peer is answered a bare 401.
    """


def canonical_request(method: bytes, path: bytes, timestamp: bytes, body: bytes) -> bytes:
    """Return the bytes that are signed: ``METHOD\\nPATH\\nTIMESTAMP\\nBODY``."""
    return b"\n".join((method.upper(), path, timestamp, body))


def compute_signature(
    secret: bytes, method: bytes, path: bytes, timestamp: bytes, body: bytes
) -> bytes:
    """Return the lower-case hex HMAC-SHA256 of the canonical request, as ASCII bytes."""
    message = canonical_request(method, path, timestamp, body)
    return hmac.new(secret, message, hashlib.sha256).hexdigest().encode("ascii")


class RequestSigner:
    """Sign outgoing node-to-node requests and verify incoming ones.

    :param secret: the cluster's shared secret (text is UTF-8 encoded); must
        not be empty.
    :param clock: the reactor's time; timestamps are read from it.
    :param max_skew: the most seconds an incoming timestamp may differ from
        ``clock.seconds()``, in either direction.
    :raises ValueError: for an empty secret or a negative or non-finite skew.
    """

    def __init__(self, secret: str | bytes, *, clock: IReactorTime, max_skew: float = 30.0) -> None:
        key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        if not key:
            raise ValueError("the router secret must not be empty")
        if not (math.isfinite(max_skew) and max_skew >= 0):
            raise ValueError("max_skew must be a finite number >= 0")
        self._secret = key
        self._clock = clock
        self._max_skew = max_skew

    def sign(self, method: bytes, path: bytes, body: bytes = b"") -> dict[bytes, bytes]:
        """Return the two signature headers for a request (name -> value)."""
        timestamp = b"%d" % math.floor(self._clock.seconds())
        signature = compute_signature(self._secret, method, path, timestamp, body)
        return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: signature}

    def verify(
        self,
        method: bytes,
        path: bytes,
        headers: Mapping[bytes, bytes | None],
        body: bytes,
    ) -> None:
        """Check an incoming request's signature headers; return when they are good.

        :param headers: the request's values of ``TIMESTAMP_HEADER`` and
            ``SIGNATURE_HEADER`` (None or absent when missing).
        :raises SignatureError: when a header is missing or malformed, the
            timestamp is more than ``max_skew`` seconds away, or the signature
            does not match.
        """
        timestamp = headers.get(TIMESTAMP_HEADER)
        signature = headers.get(SIGNATURE_HEADER)
        if not timestamp or not signature:
            raise SignatureError("unsigned request")
        if len(timestamp) > _MAX_TIMESTAMP_DIGITS or not timestamp.isdigit():
            raise SignatureError("malformed timestamp")
        skew = abs(self._clock.seconds() - int(timestamp))
        if skew > self._max_skew:
            raise SignatureError(f"stale timestamp ({skew:.0f} s away)")
        given = signature.strip().lower()
        if len(given) != 64 or not set(given) <= _HEX_DIGITS:
            raise SignatureError("malformed signature")
        expected = compute_signature(self._secret, method, path, timestamp, body)
        if not hmac.compare_digest(expected, given):
            raise SignatureError("bad signature")
