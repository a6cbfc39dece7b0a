"""``ClientConnection``: the message loop under a client session, free of I/O.

What a session needs whatever its push protocol: messages handled strictly
one at a time in arrival order (while one awaits storage the next ones are
queued, at most ``_MAX_QUEUED``), a per-connection message rate limit, the
storage-call helper, the fetch of stored messages retried while storage
fails, error replies, and closing with a WebSocket close code.
``pushtwisted.session.Session`` adds the protocols on top by implementing
``_dispatch``, ``_fetch_again`` and ``_on_closed`` (SimplePush in
``pushtwisted.session``, WebPush in ``pushtwisted.wpsession``).

Each message is run by ``_pump``: its handler's first step directly
(``run_eagerly``: a handler that never waits needs no Deferred), the rest,
if it waits on storage, under ``Deferred.fromCoroutine``.  Every storage or
directory call goes through ``_storage``: if the connection closed while the
call ran, the handler stops there (``Closed``); a failure is logged once and
becomes ``StorageFailed``, which the protocol answers (503).

A failed fetch of the stored updates or messages never changes the hello's
answer (the hello's own read falls back to a fetch after the reply,
``pushtwisted.hello``): the session fetches again on the clock instead
(``_retry_fetch_later``), 1 s later, then after twice the last delay (at
most ``FETCH_RETRY_MAX``), until a fetch succeeds or the connection closes,
so that what was stored during a storage outage reaches the client once
storage answers again, without a reconnect.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Awaitable, Mapping
from typing import Protocol, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from pushtwisted import messages
from pushtwisted.config import ClientConfig
from pushtwisted.eager import run_eagerly
from pushtwisted.errors import StorageError, TooManyChannels
from pushtwisted.ids import normalize_id
from pushtwisted.logs import logger, uaid_hash
from pushtwisted.messages import Incoming, InvalidCommand
from pushtwisted.node import Node
from pushtwisted.storage.interface import Mode

__all__ = [
    "FETCH_RETRY_FIRST",
    "FETCH_RETRY_MAX",
    "READY_STATES",
    "ClientConnection",
    "CloseCode",
    "Closed",
    "Sender",
    "State",
    "StorageFailed",
]

#: Seconds before the first new fetch of stored updates after a failed one.
FETCH_RETRY_FIRST = 1.0
#: Longest wait between two fetches of stored updates while they fail.
FETCH_RETRY_MAX = 30.0

#: Most messages queued behind one that awaits storage before the client is
#: cut off (a well-behaved client waits for its replies).
_MAX_QUEUED = 50

_T = TypeVar("_T")


class Sender(Protocol):
    """How a session writes to its connection."""

    def send_text(self, text: str) -> bool:
        """Send one text message; return False when the connection is closed or closing."""

    def close(self, code: int, reason: str) -> None:
        """Start closing the connection with a WebSocket close code and reason."""


class CloseCode(enum.IntEnum):
    """WebSocket close codes the server sends."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    INTERNAL_ERROR = 1011
    TOO_MANY_PINGS = 4774


class State(enum.Enum):
    """Where a session is in its handshake, and which protocol it speaks once ready."""

    AWAIT_HELLO = "await_hello"
    HELLO_PENDING = "hello_pending"
    #: Ready, speaking SimplePush.
    READY = "ready"
    #: Ready, speaking WebPush (the hello had ``"use_webpush": true``).
    WEBPUSH_READY = "webpush_ready"
    CLOSED = "closed"


#: The states of a session past its hello, whatever its protocol.
READY_STATES = frozenset({State.READY, State.WEBPUSH_READY})


class Closed(Exception):
    """The connection closed while a handler waited: the handler stops, nothing is sent."""


class StorageFailed(Exception):
    """A storage or directory call failed (already logged): the command gets a 503."""


class ClientConnection:
    """One client connection's message loop, under its protocol's handlers.

    :param sender: writes replies and closes the connection.
    :param node: the node's shared collaborators (storage, registry, router,
        crypto, clock, metrics); the connection reads ``node.config.client`` only.
    :ivar uaid: the UAID in normal form once a hello succeeded, else None.
    :ivar state: the current ``State``.
    """

    __slots__ = (
        "_sender",
        "_node",
        "_config",
        "uaid",
        "state",
        "_busy",
        "_queue",
        "_tokens",
        "_tokens_at",
        "_fetch_retry",
        "_fetch_retry_delay",
        "_uaid_fresh",
    )

    log = logger()

    def __init__(self, sender: Sender, node: Node) -> None:
        self._sender = sender
        self._node = node
        self._config: ClientConfig = node.config.client
        self.uaid: str | None = None
        self.state = State.AWAIT_HELLO
        self._busy = False
        self._queue: deque[str] | None = None
        #: The message rate limit's token bucket: tokens left, and when counted.
        self._tokens = float(self._config.max_messages_burst)
        self._tokens_at = node.clock.seconds()
        #: The next fetch of stored updates after a failed one, and its delay.
        self._fetch_retry: IDelayedCall | None = None
        self._fetch_retry_delay = FETCH_RETRY_FIRST
        #: The hello made the UAID here and no register has been tried since:
        #: nothing can be stored for it (``Storage.register``'s ``fresh``).
        self._uaid_fresh = False

    # -- connection events ------------------------------------------------

    def receive(self, text: str) -> None:
        """Handle one incoming message, or queue it behind the one in progress.

        Never raises: failures are logged and close the connection.
        """
        if self.state is State.CLOSED:
            return
        if not self._within_rate():
            client = self._config
            self._violation(
                "too_many_messages",
                f"more than {client.max_messages_per_second:g} messages per second"
                f" (burst {client.max_messages_burst})",
            )
            self.log.warn(
                "closing {uaid_hash}: client sends messages too fast",
                uaid_hash=uaid_hash(self.uaid),
            )
            self._close(CloseCode.POLICY_VIOLATION, "Too many messages")
            return
        if self._busy:
            if self._queue is None:
                self._queue = deque()
            if len(self._queue) >= _MAX_QUEUED:
                self.log.warn(
                    "too many queued messages {uaid_hash}", uaid_hash=uaid_hash(self.uaid)
                )
                self._close(CloseCode.POLICY_VIOLATION, "Too many queued messages")
                return
            self._queue.append(text)
            return
        self._pump(text)

    def replaced(self) -> None:
        """Close because a newer connection took this UAID."""
        self.log.info("connection replaced {uaid_hash}", uaid_hash=uaid_hash(self.uaid))
        self._close(CloseCode.NORMAL, "Replaced by a newer connection")

    def shutdown(self) -> None:
        """Close with 1001 (going away): the server stops, the device reconnects elsewhere."""
        self._close(CloseCode.GOING_AWAY, "Server shutting down")

    def connection_lost(self) -> None:
        """Forget the connection: cancel timers, leave the registry, become CLOSED."""
        self._shutdown()

    def _within_rate(self) -> bool:
        """Take one token for a message; False when the client is over its rate.

        A token bucket of ``max_messages_burst`` tokens refilled at
        ``max_messages_per_second`` (``[client]``), computed on arrival: no timer.
        """
        client = self._config
        rate = client.max_messages_per_second
        if rate <= 0:
            return True
        now = self._node.clock.seconds()
        tokens = min(
            float(client.max_messages_burst), self._tokens + (now - self._tokens_at) * rate
        )
        self._tokens_at = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True

    # -- message pump -------------------------------------------------------

    def _pump(self, text: str) -> None:
        """Handle ``text`` and then every queued message, one at a time.

        A handler that finishes without waiting (pings, errors, and every
        handler with the memory backend) runs as one plain coroutine step
        (``run_eagerly``), with no Deferred per message; one that waits on
        storage is handed to Twisted's coroutine driver and the queue resumes
        when it is done.  What that saves, in CPU per message through a ready
        session with the memory backend (``python -m bench.session_pump``,
        best of 9 x 50,000, four runs): a ping 5.1-5.4 us instead of
        9.5-10.0 us with ``Deferred.fromCoroutine`` per message (about 45%
        less), an ack 10.4-10.7 us instead of 14.9-16.4 us (about 30% less).
        """
        next_text: str | None = text
        while next_text is not None:
            self._busy = True
            try:
                rest = run_eagerly(self._dispatch(next_text))
            except Exception:
                self._crashed(Failure())  # type: ignore[no-untyped-call]
            else:
                if rest is not None:
                    rest.addErrback(self._crashed)
                    rest.addCallback(self._resume)
                    return
            self._busy = False
            next_text = self._next_queued()

    def _resume(self, _: object) -> None:
        self._busy = False
        text = self._next_queued()
        if text is not None:
            self._pump(text)

    def _next_queued(self) -> str | None:
        if self.state is State.CLOSED or not self._queue:
            return None
        return self._queue.popleft()

    def _crashed(self, failure: Failure) -> None:
        self.log.failure(
            "unexpected error handling a message {uaid_hash}",
            failure,
            uaid_hash=uaid_hash(self.uaid),
        )
        self._close(CloseCode.INTERNAL_ERROR, "Internal error")

    async def _dispatch(self, text: str) -> None:
        """Handle one message (the protocol's handlers)."""
        raise NotImplementedError

    def _register(
        self, uaid: str, chid: str, channel_id: str, mode: Mode = Mode.SIMPLEPUSH
    ) -> Deferred[None]:
        """Start the storage register of a channel (``fresh`` for the first one of a new UAID)."""
        fresh, self._uaid_fresh = self._uaid_fresh, False
        max_channels = self._config.max_channels
        return self._node.storage.register(uaid, chid, channel_id, max_channels, mode, fresh)

    async def _storage(self, operation: str, pending: Awaitable[_T]) -> _T:
        """Await one storage or directory call made for this connection.

        :raises Closed: the connection closed while the call ran (whatever its
            outcome): the handler stops without answering.
        :raises StorageFailed: the call failed; it is logged here, under
            ``operation``.
        :raises TooManyChannels: passed on, an answer rather than a failure.
        """
        try:
            result = await pending
        except Exception as e:
            if self.state is State.CLOSED:
                raise Closed() from None
            if isinstance(e, TooManyChannels):
                raise
            self._storage_failed(operation, e)
            raise StorageFailed(f"{operation} failed") from None
        if self.state is State.CLOSED:
            raise Closed()
        return result

    # -- channels -------------------------------------------------------------

    async def _registered(self, incoming: Incoming, registering: Deferred[None]) -> None:
        """Await a storage register made for ``incoming`` and count it.

        :raises InvalidCommand: 413 when the UAID holds ``max_channels`` already.
        """
        try:
            await self._storage("register", registering)
        except TooManyChannels:
            raise InvalidCommand("too many channels", status=413, echo=incoming.echo) from None
        self._node.metrics.increment("registers")

    async def _unregister_channel(self, incoming: Incoming) -> str | None:
        """Unregister the channel ``incoming`` names and reply 200.

        :returns: the channel ID in normal form, or None when it is not a
            valid ID (nothing to unregister; the reply is 200 all the same).
        :raises InvalidCommand: 401 when channelID is missing or not a string.
        """
        unregister = messages.parse_unregister(incoming)
        assert self.uaid is not None
        chid = None
        if unregister.valid:
            chid = normalize_id(unregister.channel_id)
            await self._storage("unregister", self._node.storage.unregister(self.uaid, chid))
        self._node.metrics.increment("unregisters")
        self._sender.send_text(messages.unregister_reply(unregister.channel_id))
        return chid

    # -- fetching what storage holds ------------------------------------------

    def _fetched(self) -> None:
        """A fetch of stored updates succeeded: the next failed one waits the first delay."""
        self._fetch_retry_delay = FETCH_RETRY_FIRST

    def _retry_fetch_later(self) -> None:
        """Fetch the stored updates again after the current delay, then double it."""
        if self._fetch_retry is not None or self.state not in READY_STATES:
            return
        delay = self._fetch_retry_delay
        self._fetch_retry_delay = min(delay * 2, FETCH_RETRY_MAX)
        self._fetch_retry = self._node.clock.callLater(delay, self._retry_fetch)

    def _retry_fetch(self) -> None:
        self._fetch_retry = None
        if self.state in READY_STATES:
            Deferred.fromCoroutine(self._fetch_again()).addErrback(self._crashed)

    def _cancel_fetch_retry(self) -> None:
        if self._fetch_retry is not None:
            self._fetch_retry.cancel()
            self._fetch_retry = None

    async def _fetch_again(self) -> None:
        """Fetch and send what storage holds (the protocol's flush)."""
        raise NotImplementedError

    # -- errors and closing ---------------------------------------------------

    def _send_error(self, echo: Mapping[str, object] | None, status: int) -> None:
        self._sender.send_text(messages.error_reply(echo, status))

    def _reject(self, error: InvalidCommand, metric_reason: str) -> None:
        """Answer an ``InvalidCommand``; close afterwards when it asks to.

        A closed connection answers nothing.
        """
        if self.state is State.CLOSED:
            return
        if error.close_code is not None:
            self._violation(metric_reason, error.reason)
        else:
            self.log.info(
                "rejected command {uaid_hash}: {reason}",
                uaid_hash=uaid_hash(self.uaid),
                reason=error.reason,
                status=error.status,
            )
        self._send_error(error.echo, error.status)
        if error.close_code is not None:
            self._close(error.close_code, "Invalid command")

    def _violation(self, reason: str, detail: str) -> None:
        self._node.metrics.increment("protocol_errors", reason=reason)
        self.log.info(
            "protocol violation {uaid_hash}: {detail}",
            uaid_hash=uaid_hash(self.uaid),
            reason=reason,
            detail=detail,
        )

    def _storage_failed(self, operation: str, error: Exception) -> None:
        if isinstance(error, StorageError):
            self.log.warn(
                "storage {operation} failed {uaid_hash}: {error}",
                operation=operation,
                uaid_hash=uaid_hash(self.uaid),
                error=str(error),
            )
        else:
            # Called from the except block: the failure is the current exception.
            self.log.failure(
                "storage {operation} failed {uaid_hash}",
                operation=operation,
                uaid_hash=uaid_hash(self.uaid),
            )

    def _close(self, code: int, reason: str) -> None:
        """Become CLOSED and ask the sender to close (once)."""
        if self.state is State.CLOSED:
            return
        self._shutdown()
        self._sender.close(int(code), reason)

    def _shutdown(self) -> None:
        """Become CLOSED (once): drop the queue, then let the protocol let go."""
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self._queue = None
        self._on_closed()

    def _on_closed(self) -> None:
        """Release what the protocol holds (timers, registry entry); called once."""
