"""Signatures of node-to-node requests: HMAC-SHA256 with a shared secret.

Every request a node sends to another node's router listener carries three
headers:

``X-Push-Timestamp``
    the sender's clock, in whole Unix seconds (ASCII decimal);
``X-Push-Nonce``
    32 lower-case hex digits, random, never sent twice;
``X-Push-Signature``
    ``hex(HMAC-SHA256(secret, METHOD "\\n" PATH "\\n" TIMESTAMP "\\n" NONCE "\\n" BODY))``,
    lower-case, where ``METHOD`` is upper-case ASCII, ``PATH`` is the request
    target as sent (path plus ``?query`` when there is one) and ``BODY`` the
    raw body bytes (empty when there is none).

The receiver recomputes the signature with its own copy of the secret and
compares in constant time, refuses a timestamp more than ``max_skew``
seconds away from its clock, and refuses a nonce it has already accepted:
a captured request replayed within the skew window (which could deliver an
update again after the device acked it) is refused like a forged one.
Accepted nonces are remembered until their timestamp leaves the window
(``NonceWindow``).  Nodes that sign without a nonce (releases before it was
added) are refused: upgrade every node of a cluster together.  Keep the
router listener on a private network anyway: the signature authenticates,
it does not encrypt.

Refused requests are logged by ``RefusalLog``: the first at once, then at
most one line per ``REFUSAL_LOG_INTERVAL`` seconds with the counts, so a
scan of the router port cannot flood the log.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from collections import Counter, deque
from collections.abc import Mapping

from twisted.internet.interfaces import IReactorTime

from pushtwisted.logs import logger

__all__ = [
    "NONCE_HEADER",
    "REFUSAL_LOG_INTERVAL",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "NonceWindow",
    "RefusalLog",
    "RequestSigner",
    "SignatureError",
    "canonical_request",
    "compute_signature",
]

#: Header carrying the sender's Unix time in whole seconds.
TIMESTAMP_HEADER = b"X-Push-Timestamp"
#: Header carrying the request's random nonce (32 lower-case hex digits).
NONCE_HEADER = b"X-Push-Nonce"
#: Header carrying the hex HMAC-SHA256 of the canonical request.
SIGNATURE_HEADER = b"X-Push-Signature"
#: Seconds between two log lines about refused requests.
REFUSAL_LOG_INTERVAL = 10.0

#: Longest timestamp text accepted (digits); guards ``int()`` against huge input.
_MAX_TIMESTAMP_DIGITS = 12
_NONCE_BYTES = 16
_HEX_DIGITS = frozenset(b"0123456789abcdef")


class SignatureError(Exception):
    """A request's signature is missing, malformed, stale, wrong or replayed.

    The message is for the log only; the peer is answered a bare 401.
    """


def canonical_request(
    method: bytes, path: bytes, timestamp: bytes, nonce: bytes, body: bytes
) -> bytes:
    """Return the bytes that are signed: ``METHOD\\nPATH\\nTIMESTAMP\\nNONCE\\nBODY``."""
    return b"\n".join((method.upper(), path, timestamp, nonce, body))


def compute_signature(
    secret: bytes, method: bytes, path: bytes, timestamp: bytes, nonce: bytes, body: bytes
) -> bytes:
    """Return the lower-case hex HMAC-SHA256 of the canonical request, as ASCII bytes."""
    message = canonical_request(method, path, timestamp, nonce, body)
    return hmac.new(secret, message, hashlib.sha256).hexdigest().encode("ascii")


def _is_hex(value: bytes, length: int) -> bool:
    return len(value) == length and set(value) <= _HEX_DIGITS


class NonceWindow:
    """The nonces accepted lately, each kept until the time given with it.

    ``add`` is O(1) amortized: the nonces sit in a set for lookups and in a
    queue, in arrival order, for expiry; each call first drops the expired
    ones at the head of the queue (a nonce behind one that expires later
    waits for it: kept a little longer, never dropped early).

    :param limit: the most nonces kept; ``add`` refuses more (each costs
        about 150 bytes).
    """

    def __init__(self, limit: int = 200_000) -> None:
        self._limit = limit
        self._seen: set[bytes] = set()
        self._queue: deque[tuple[float, bytes]] = deque()

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, nonce: bytes, keep_until: float, now: float) -> None:
        """Remember ``nonce`` until ``keep_until``.

        :raises SignatureError: when ``nonce`` is remembered already, or
            ``limit`` nonces are.
        """
        queue = self._queue
        while queue and queue[0][0] < now:
            self._seen.discard(queue.popleft()[1])
        if nonce in self._seen:
            raise SignatureError("replayed request (nonce seen before)")
        if len(self._seen) >= self._limit:
            raise SignatureError(f"more than {self._limit} requests within the skew window")
        self._seen.add(nonce)
        queue.append((keep_until, nonce))


class RefusalLog:
    """Log refused node requests: the first at once, then one line per interval.

    Each line counts the refusals since the previous one, by reason.

    :param clock: what times the interval.
    :param interval: seconds between two lines.
    """

    log = logger()

    def __init__(self, clock: IReactorTime, interval: float = REFUSAL_LOG_INTERVAL) -> None:
        self._clock = clock
        self._interval = interval
        self._last: float | None = None
        self._counts: Counter[str] = Counter()

    def refused(self, error: SignatureError) -> None:
        """Count one refusal; write the line when the interval has passed."""
        # "stale timestamp (45 s away)" and the like count as one reason.
        self._counts[str(error).split(" (", 1)[0]] += 1
        now = self._clock.seconds()
        if self._last is not None and now - self._last < self._interval:
            return
        self.log.warn(
            "refused {count} node request(s) since the last such line: {reasons}",
            count=sum(self._counts.values()),
            reasons=", ".join(f"{reason} x{n}" for reason, n in self._counts.most_common()),
        )
        self._last = now
        self._counts.clear()


class RequestSigner:
    """Sign outgoing node-to-node requests and verify incoming ones.

    :param secret: the cluster's shared secret (text is UTF-8 encoded); must
        not be empty.
    :param clock: the reactor's time; timestamps are read from it.
    :param max_skew: the most seconds an incoming timestamp may differ from
        ``clock.seconds()``, in either direction.
    :param nonces: where accepted nonces are remembered (a new ``NonceWindow``
        by default).
    :raises ValueError: for an empty secret or a negative or non-finite skew.
    """

    def __init__(
        self,
        secret: str | bytes,
        *,
        clock: IReactorTime,
        max_skew: float = 30.0,
        nonces: NonceWindow | None = None,
    ) -> None:
        key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        if not key:
            raise ValueError("the router secret must not be empty")
        if not (math.isfinite(max_skew) and max_skew >= 0):
            raise ValueError("max_skew must be a finite number >= 0")
        self._secret = key
        self._clock = clock
        self._max_skew = max_skew
        self._nonces = nonces if nonces is not None else NonceWindow()

    def sign(self, method: bytes, path: bytes, body: bytes = b"") -> dict[bytes, bytes]:
        """Return the three signature headers for a request (name -> value)."""
        timestamp = b"%d" % math.floor(self._clock.seconds())
        nonce = secrets.token_hex(_NONCE_BYTES).encode("ascii")
        signature = compute_signature(self._secret, method, path, timestamp, nonce, body)
        return {TIMESTAMP_HEADER: timestamp, NONCE_HEADER: nonce, SIGNATURE_HEADER: signature}

    def verify(
        self,
        method: bytes,
        path: bytes,
        headers: Mapping[bytes, bytes | None],
        body: bytes,
    ) -> None:
        """Check an incoming request's signature headers; return when they are good.

        A good request's nonce is remembered: the same request again is refused.

        :param headers: the request's values of ``TIMESTAMP_HEADER``,
            ``NONCE_HEADER`` and ``SIGNATURE_HEADER`` (None or absent when
            missing).
        :raises SignatureError: when a header is missing or malformed, the
            timestamp is more than ``max_skew`` seconds away, the signature
            does not match, or the nonce was accepted before.
        """
        timestamp = headers.get(TIMESTAMP_HEADER)
        nonce = headers.get(NONCE_HEADER)
        signature = headers.get(SIGNATURE_HEADER)
        if not timestamp or not nonce or not signature:
            raise SignatureError("unsigned request")
        if len(timestamp) > _MAX_TIMESTAMP_DIGITS or not timestamp.isdigit():
            raise SignatureError("malformed timestamp")
        now = self._clock.seconds()
        sent_at = int(timestamp)
        skew = abs(now - sent_at)
        if skew > self._max_skew:
            raise SignatureError(f"stale timestamp ({skew:.0f} s away)")
        if not _is_hex(nonce, 2 * _NONCE_BYTES):
            raise SignatureError("malformed nonce")
        given = signature.strip().lower()
        if not _is_hex(given, 64):
            raise SignatureError("malformed signature")
        expected = compute_signature(self._secret, method, path, timestamp, nonce, body)
        if not hmac.compare_digest(expected, given):
            raise SignatureError("bad signature")
        # After this time the timestamp is stale: the nonce need not be kept.
        self._nonces.add(nonce, sent_at + self._max_skew, now)
