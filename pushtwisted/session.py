"""The SimplePush state machine of one client connection, free of I/O.

A ``Session`` receives the text of each client message, talks to storage,
the registry and metrics through the shared ``Node``, and answers through a
``Sender`` (the WebSocket protocol in production, a recorder in tests).
PROTOCOL.md sections 2 and 16 define the behaviour.

States::

    AWAIT_HELLO --hello--> HELLO_PENDING --ok--> READY
         ^                      |
         +---storage error/503--+
    any state --close/replaced/connection lost--> CLOSED

Messages are handled strictly one at a time in arrival order: while one
awaits storage the next ones are queued.  Every handler is a coroutine,
run by ``_pump``: its first step directly (a handler that never waits needs
no Deferred), the rest, if it waits on storage, under
``Deferred.fromCoroutine``.  After each ``await`` it stops if the session
was closed meanwhile.

Handlers per (state, message):

============ ============ ============ =========== ========= ==============
state        hello        register     unregister  ack       ping / purge
============ ============ ============ =========== ========= ==============
AWAIT_HELLO  handshake    401 + close  401 + close 401+close ``{}``
READY        re-hello     register     unregister  ack       ``{}``
============ ============ ============ =========== ========= ==============

HELLO_PENDING never sees a message (they are queued behind the hello).
CLOSED ignores everything.
"""

from __future__ import annotations

import enum
import types
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from pushtwisted import messages
from pushtwisted.errors import ProtocolViolation, StorageError, TooManyChannels
from pushtwisted.ids import connected_at_ms, is_valid_id, new_uaid, normalize_id
from pushtwisted.logs import logger, uaid_hash
from pushtwisted.messages import Incoming, InvalidCommand, MessageType, Update
from pushtwisted.node import Node

__all__ = ["Sender", "CloseCode", "State", "Session"]

#: Most messages queued behind one that awaits storage before the client is
#: cut off (a well-behaved client waits for its replies).
_MAX_QUEUED = 50


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
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TOO_MANY_PINGS = 4774


class State(enum.Enum):
    """Where a session is in the SimplePush handshake."""

    AWAIT_HELLO = "await_hello"
    HELLO_PENDING = "hello_pending"
    READY = "ready"
    CLOSED = "closed"


_Handler = Callable[["Session", Incoming], Awaitable[None]]


class Session:
    """One client connection's SimplePush state.

    :param sender: writes replies and closes the connection.
    :param node: the node's shared collaborators (config, storage, registry,
        crypto, clock, metrics).
    :ivar uaid: the UAID in normal form once a hello succeeded, else None.
    :ivar state: the current ``State``.
    """

    __slots__ = (
        "_sender",
        "_node",
        "uaid",
        "state",
        "_echo_uaid",
        "_hello_call",
        "_retry_call",
        "_last_ping",
        "_busy",
        "_queue",
        "_sent",
        "connected_at",
        "_tokens",
        "_tokens_at",
    )

    log = logger()

    def __init__(self, sender: Sender, node: Node) -> None:
        self._sender = sender
        self._node = node
        self.uaid: str | None = None
        self.state = State.AWAIT_HELLO
        #: The UAID as first echoed to the client (its own spelling).
        self._echo_uaid: str | None = None
        self._hello_call: IDelayedCall | None = None
        self._retry_call: IDelayedCall | None = None
        self._last_ping: float | None = None
        self._busy = False
        self._queue: deque[str] | None = None
        #: Updates sent and not yet acked, by channel ID in normal form.
        self._sent: dict[str, Update] | None = None
        #: When the hello was recorded with the router (ms of the node's clock), else None.
        self.connected_at: int | None = None
        #: The message rate limit's token bucket: tokens left, and when counted.
        self._tokens = float(node.config.client.max_messages_burst)
        self._tokens_at = node.clock.seconds()

    # -- connection events ------------------------------------------------

    def opened(self) -> None:
        """Start the hello timer (the connection just opened)."""
        timeout = self._node.config.client.hello_timeout
        if timeout > 0 and self.state is State.AWAIT_HELLO:
            self._hello_call = self._node.clock.callLater(timeout, self._on_hello_timeout)

    def receive(self, text: str) -> None:
        """Handle one incoming message, or queue it behind the one in progress.

        Never raises: failures are logged and close the connection.
        """
        if self.state is State.CLOSED:
            return
        if not self._within_rate():
            client = self._node.config.client
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

    def _within_rate(self) -> bool:
        """Take one token for a message; False when the client is over its rate.

        A token bucket of ``max_messages_burst`` tokens refilled at
        ``max_messages_per_second`` (``[client]``), computed on arrival: no timer.
        """
        client = self._node.config.client
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

    def deliver(self, channel_id: str, version: int, data: str | None) -> bool:
        """Send a live update; return True when it reached an open, READY connection.

        A version equal to the one already sent and not acked for that
        channel is not sent again (True is returned); any other version is
        sent and recorded for the retry timer.
        """
        if self.state is not State.READY:
            return False
        key = _channel_key(channel_id)
        sent = self._sent_record()
        previous = sent.get(key)
        if previous is not None and previous.version == version:
            return True
        update = Update(channel_id=channel_id, version=version, data=data)
        if not self._sender.send_text(messages.notification([update])):
            return False
        sent[key] = update
        self._node.metrics.increment("notifications_delivered")
        self._schedule_retry()
        return True

    def replaced(self) -> None:
        """Close because a newer connection took this UAID."""
        self.log.info("connection replaced {uaid_hash}", uaid_hash=uaid_hash(self.uaid))
        self._close(CloseCode.NORMAL, "Replaced by a newer connection")

    def check_storage(self) -> Deferred[None]:
        """Read storage again and send pending updates not yet sent on this connection.

        Another node calls this (through the router listener) after it stored
        an update while this connection's directory entry was being written.
        """
        if self.state is not State.READY:
            return succeed(None)
        return Deferred.fromCoroutine(self._flush())

    def shutdown(self) -> None:
        """Close with 1001 (going away): the server stops, the device reconnects elsewhere."""
        self._close(CloseCode.GOING_AWAY, "Server shutting down")

    def connection_lost(self) -> None:
        """Forget the connection: cancel timers, leave the registry, become CLOSED."""
        self._shutdown()

    # -- message pump -------------------------------------------------------

    def _pump(self, text: str) -> None:
        """Handle ``text`` and then every queued message, one at a time.

        A handler that finishes without waiting (pings, errors, and every
        handler with the memory backend) runs as one plain coroutine step,
        with no Deferred per message; one that waits on storage is handed to
        Twisted's coroutine driver and the queue resumes when it is done.
        """
        next_text: str | None = text
        while next_text is not None:
            self._busy = True
            coroutine = self._dispatch(next_text)
            try:
                awaited = coroutine.send(None)
            except StopIteration:
                pass
            except Exception:
                self._crashed(Failure())  # type: ignore[no-untyped-call]
            else:
                d = Deferred.fromCoroutine(_finish(coroutine, awaited))
                d.addErrback(self._crashed)
                d.addCallback(self._resume)
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
        try:
            incoming = messages.decode(text)
        except ProtocolViolation as e:
            self._violation("invalid_json", str(e))
            self._close(CloseCode.PROTOCOL_ERROR, "Invalid JSON")
            return
        except InvalidCommand as e:
            self._reject(e, "invalid_message_type")
            return
        if incoming is None or self.state is State.CLOSED:
            return
        handler = _HANDLERS.get((self.state, incoming.kind))
        if handler is None:  # HELLO_PENDING: unreachable, messages are queued.
            return
        try:
            await handler(self, incoming)
        except InvalidCommand as e:
            if not self._closed():
                self._reject(e, "invalid_command")

    # -- handlers -------------------------------------------------------------

    async def _on_hello_in_await_hello(self, incoming: Incoming) -> None:
        hello = messages.parse_hello(incoming, self._node.config.client.max_channels)
        self.state = State.HELLO_PENDING
        echo = hello.uaid
        if hello.uaid and hello.channel_ids:
            try:
                exists = await self._node.storage.user_exists(normalize_id(hello.uaid))
            except Exception as e:
                if self._closed():
                    return
                self._storage_failed("user_exists", e)
                self.state = State.AWAIT_HELLO
                raise InvalidCommand(
                    "storage failed during hello", status=503, echo=incoming.echo
                ) from None
            if self._closed():
                return
            if not exists:
                echo = ""
        if not echo:
            echo = new_uaid()
        normal = normalize_id(echo)
        if normal == echo:
            normal = echo  # one string per connection, not two equal ones
        router = self._node.router
        # The directory entry is written before storage is read, so an
        # update stored meanwhile is either routed here or fetched below.
        connected_at = connected_at_ms(self._node.clock.seconds())
        try:
            await router.on_hello(normal, connected_at)
        except Exception as e:
            if self._closed():
                return
            self._storage_failed("directory", e)
            self.state = State.AWAIT_HELLO
            raise InvalidCommand(
                "directory failed during hello", status=503, echo=incoming.echo
            ) from None
        if self._closed():
            router.on_disconnect(normal, connected_at)
            return
        self.connected_at = connected_at
        self.uaid = normal
        self._echo_uaid = echo
        self.state = State.READY
        self._cancel_hello_timer()
        registry = self._node.registry
        registry.add(normal, self)
        metrics = self._node.metrics
        metrics.increment("hellos")
        metrics.gauge("connections", len(registry))
        # Debug, not info: one formatted line per connection cost ~10% of the
        # connection rate; the hellos counter and connections gauge count them.
        self.log.debug(
            "hello {uaid_hash}",
            uaid_hash=uaid_hash(normal),
            reset=echo != hello.uaid,
            channels=len(hello.channel_ids),
        )
        self._sender.send_text(messages.hello_reply(echo))
        await self._flush()
        if self.state is State.READY and self._node.config.client.report_expired:
            await self._report_expired(hello.channel_ids)

    async def _on_hello_in_ready(self, incoming: Incoming) -> None:
        uaid = incoming.fields.get("uaid")
        same = uaid is None or uaid == ""
        if not same and isinstance(uaid, str) and is_valid_id(uaid):
            same = normalize_id(uaid) == self.uaid
        if not same:
            self._violation("duplicate_hello", "second hello with another UAID")
            self._send_error(incoming.echo, 503)
            self._close(CloseCode.PROTOCOL_ERROR, "Second hello with another UAID")
            return
        assert self.uaid is not None and self._echo_uaid is not None
        self._node.registry.add(self.uaid, self)
        self._node.metrics.increment("hellos")
        self._sender.send_text(messages.hello_reply(self._echo_uaid))
        await self._flush(resend=True)

    async def _on_command_before_hello(self, incoming: Incoming) -> None:
        self._violation("before_hello", f"{incoming.kind.value} before hello")
        self._send_error(incoming.echo, 401)
        self._close(CloseCode.PROTOCOL_ERROR, "Command requires hello")

    async def _on_register_in_ready(self, incoming: Incoming) -> None:
        register = messages.parse_register(incoming)
        assert self.uaid is not None and self._echo_uaid is not None
        uaid = self.uaid
        chid = normalize_id(register.channel_id)
        limit = self._node.config.client.max_channels
        try:
            await self._node.storage.register(uaid, chid, register.channel_id, limit)
        except TooManyChannels:
            if self._closed():
                return
            raise InvalidCommand("too many channels", status=413, echo=incoming.echo) from None
        except Exception as e:
            if self._closed():
                return
            self._storage_failed("register", e)
            raise InvalidCommand("storage failed", status=503, echo=incoming.echo) from None
        if self._closed():
            return
        self._node.metrics.increment("registers")
        endpoint = self._node.endpoint_url(uaid, chid)
        reply = messages.register_reply(self._echo_uaid, register.channel_id, endpoint)
        self._sender.send_text(reply)

    async def _on_unregister_in_ready(self, incoming: Incoming) -> None:
        unregister = messages.parse_unregister(incoming)
        assert self.uaid is not None
        if unregister.valid:
            chid = normalize_id(unregister.channel_id)
            try:
                await self._node.storage.unregister(self.uaid, chid)
            except Exception as e:
                if self._closed():
                    return
                self._storage_failed("unregister", e)
                raise InvalidCommand("storage failed", status=503, echo=incoming.echo) from None
            if self._closed():
                return
            if self._sent:
                self._sent.pop(chid, None)
                self._maybe_stop_retry()
        self._node.metrics.increment("unregisters")
        self._sender.send_text(messages.unregister_reply(unregister.channel_id))

    async def _on_ack_in_ready(self, incoming: Incoming) -> None:
        ack = messages.parse_ack(incoming)
        assert self.uaid is not None
        self._node.metrics.increment("acks")
        for update in ack.updates:
            try:
                await self._node.storage.ack(self.uaid, update.chid, update.version)
            except Exception as e:
                if self._closed():
                    return
                # The update stays stored and in the sent record: it is re-sent.
                self._storage_failed("ack", e)
                continue
            if self._closed():
                return
            record = self._sent
            sent = record.get(update.chid) if record else None
            if record is not None and sent is not None and update.version >= sent.version:
                del record[update.chid]
        self._maybe_stop_retry()
        if ack.malformed:
            raise InvalidCommand("malformed ack entries", status=401, echo=incoming.echo)

    async def _on_ping(self, incoming: Incoming) -> None:
        ping = messages.parse_ping(incoming)
        metrics = self._node.metrics
        metrics.increment("pings")
        now = self._node.clock.seconds()
        interval = self._node.config.client.min_ping_interval
        if interval > 0 and self._last_ping is not None and now - self._last_ping < interval:
            metrics.increment("too_many_pings")
            self._violation("too_many_pings", "client pings too often")
            echo = None if ping.bare else incoming.echo
            self._send_error(echo, 401)
            self._close(CloseCode.TOO_MANY_PINGS, "Too many pings")
            return
        self._last_ping = now
        self._sender.send_text(messages.PONG)

    async def _on_purge(self, incoming: Incoming) -> None:
        self._sender.send_text(messages.PONG)

    # -- delivery -------------------------------------------------------------

    def _sent_record(self) -> dict[str, Update]:
        if self._sent is None:
            self._sent = {}
        return self._sent

    async def _flush(self, resend: bool = False) -> None:
        """Send every pending update in one notification and record them.

        Unless ``resend`` is set, an update whose version was already sent on
        this connection (live, while storage was answering) is skipped.
        """
        assert self.uaid is not None
        try:
            pending = await self._node.storage.fetch_pending(self.uaid)
        except Exception as e:
            if self.state is State.READY:
                self._storage_failed("fetch_pending", e)
            return
        if self.state is not State.READY or not pending:
            return
        sent = self._sent_record()
        updates: list[Update] = []
        for item in pending:
            key = _channel_key(item.channel_id)
            previous = sent.get(key)
            if not resend and previous is not None and previous.version == item.version:
                continue
            update = Update(channel_id=item.channel_id, version=item.version, data=item.data)
            updates.append(update)
            sent[key] = update
        if updates and self._sender.send_text(messages.notification(updates)):
            self._node.metrics.increment("notifications_delivered", len(updates))
        self._schedule_retry()

    async def _report_expired(self, channel_ids: tuple[object, ...]) -> None:
        assert self.uaid is not None
        spelling: dict[str, str] = {}
        for channel_id in channel_ids:
            if isinstance(channel_id, str) and is_valid_id(channel_id):
                spelling.setdefault(normalize_id(channel_id), channel_id)
        if not spelling:
            return
        try:
            expired = await self._node.storage.expired(self.uaid, list(spelling))
        except Exception as e:
            if self.state is State.READY:
                self._storage_failed("expired", e)
            return
        if self.state is State.READY and expired:
            names = [spelling.get(chid, chid) for chid in expired]
            self._sender.send_text(messages.expired_notification(names))

    def _schedule_retry(self) -> None:
        interval = self._node.config.client.retry_interval
        if interval > 0 and self._retry_call is None and self._sent:
            self._retry_call = self._node.clock.callLater(interval, self._on_retry)

    def _maybe_stop_retry(self) -> None:
        if not self._sent and self._retry_call is not None:
            if self._retry_call.active():
                self._retry_call.cancel()
            self._retry_call = None

    def _on_retry(self) -> None:
        self._retry_call = None
        if self.state is not State.READY or not self._sent:
            return
        updates = list(self._sent.values())
        if not self._sender.send_text(messages.notification(updates)):
            return
        self._node.metrics.increment("notifications_resent", len(updates))
        self._schedule_retry()

    # -- errors and closing ---------------------------------------------------

    def _send_error(self, echo: Mapping[str, object] | None, status: int) -> None:
        self._sender.send_text(messages.error_reply(echo, status))

    def _reject(self, error: InvalidCommand, metric_reason: str) -> None:
        """Answer an ``InvalidCommand``; close afterwards when it asks to."""
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

    def _closed(self) -> bool:
        """Return True once the session is CLOSED (checked after every await)."""
        return self.state is State.CLOSED

    def _on_hello_timeout(self) -> None:
        self._hello_call = None
        if self.state in (State.AWAIT_HELLO, State.HELLO_PENDING):
            self.log.info("hello timeout")
            self._close(CloseCode.NORMAL, "Hello timeout")

    def _cancel_hello_timer(self) -> None:
        if self._hello_call is not None:
            if self._hello_call.active():
                self._hello_call.cancel()
            self._hello_call = None

    def _close(self, code: int, reason: str) -> None:
        """Become CLOSED and ask the sender to close (once)."""
        if self.state is State.CLOSED:
            return
        self._shutdown()
        self._sender.close(int(code), reason)

    def _shutdown(self) -> None:
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self._cancel_hello_timer()
        if self._retry_call is not None:
            if self._retry_call.active():
                self._retry_call.cancel()
            self._retry_call = None
        self._queue = None
        self._sent = None
        if self.uaid is not None:
            registry = self._node.registry
            registry.remove(self.uaid, self)
            self._node.metrics.gauge("connections", len(registry))
            # A newer local session for this UAID owns the directory entry now
            # (it may even carry the same millisecond): leave it alone.
            if self.connected_at is not None and registry.get(self.uaid) is None:
                self._node.router.on_disconnect(self.uaid, self.connected_at)


@types.coroutine
def _finish(coroutine: Coroutine[Any, Any, None], awaited: Any) -> Generator[Any, Any, None]:
    """Continue ``coroutine``, suspended on ``awaited``, under Twisted's driver.

    ``Session._pump`` runs a handler's first step itself; only when that step
    stops on an unfired Deferred is the rest wrapped with this (a plain
    pass-through of results and failures in both directions).
    """
    while True:
        try:
            result = yield awaited
        except BaseException as e:
            try:
                awaited = coroutine.throw(e)
            except StopIteration:
                return
        else:
            try:
                awaited = coroutine.send(result)
            except StopIteration:
                return


def _channel_key(channel_id: str) -> str:
    """Return the record key of a channel: its normal form when it is a valid ID."""
    return normalize_id(channel_id) if is_valid_id(channel_id) else channel_id


_HANDLERS: dict[tuple[State, MessageType], _Handler] = {
    (State.AWAIT_HELLO, MessageType.HELLO): Session._on_hello_in_await_hello,
    (State.AWAIT_HELLO, MessageType.REGISTER): Session._on_command_before_hello,
    (State.AWAIT_HELLO, MessageType.UNREGISTER): Session._on_command_before_hello,
    (State.AWAIT_HELLO, MessageType.ACK): Session._on_command_before_hello,
    (State.AWAIT_HELLO, MessageType.PING): Session._on_ping,
    (State.AWAIT_HELLO, MessageType.PURGE): Session._on_purge,
    (State.READY, MessageType.HELLO): Session._on_hello_in_ready,
    (State.READY, MessageType.REGISTER): Session._on_register_in_ready,
    (State.READY, MessageType.UNREGISTER): Session._on_unregister_in_ready,
    (State.READY, MessageType.ACK): Session._on_ack_in_ready,
    (State.READY, MessageType.PING): Session._on_ping,
    (State.READY, MessageType.PURGE): Session._on_purge,
}
