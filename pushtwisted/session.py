"""The state machine of one client connection, free of I/O.

A ``Session`` receives the text of each client message, talks to storage,
the registry, the router and metrics through the shared ``Node``, reads its
settings from ``[client]`` (``ClientConfig``), and answers through a
``Sender`` (the WebSocket protocol in production, a recorder in tests).
PROTOCOL.md sections 2 and 16 define SimplePush; a hello with
``"use_webpush": true`` makes the connection a WebPush one instead
(WEBPUSH.md sections 1 and 6), whose rules are in ``pushtwisted.wpsession``.

States::

    AWAIT_HELLO --hello--> HELLO_PENDING --ok--> READY          (SimplePush)
         ^                      |        --ok--> WEBPUSH_READY  (use_webpush)
         +---storage error/503--+
    any state --close/replaced/connection lost--> CLOSED

Messages are handled strictly one at a time in arrival order, rate
limited, by the message loop ``Session`` inherits from
``pushtwisted.connection.ClientConnection``.  Every handler is a coroutine.
Every storage and directory call goes through ``_storage``: if the session
closed while the call ran, the handler stops there; a failure is logged once
and the command is answered 503 (a hello also returns to AWAIT_HELLO).
SimplePush notifications sent and not yet acknowledged are kept, and re-sent
on a timer, by the session's ``pushtwisted.outbox.Outbox``; WebPush messages
by its ``pushtwisted.wpsession.MessageWindow``.  What storage holds is read
with the hello's one storage call (``pushtwisted.hello``) and sent after the
reply; when that call fails, it is fetched after the reply, and again on the
clock while that fails (``ClientConnection._retry_fetch_later``).

The hello chooses the UAID by PROTOCOL.md 16.3 in both protocols, with one
UAID one protocol (``pushtwisted.hello.keeps_uaid``): a UAID storage knows
as a WebPush user gets a fresh one in a SimplePush hello, and a WebPush
hello keeps its UAID only when storage knows it as a WebPush user
(WEBPUSH.md 6.1).  A second hello keeps the protocol of the first.

Handlers per (state, message) (``_HANDLERS``):

============= ========== ========== =========== ========= ========= ==============
state         hello      register   unregister  ack       nack,     ping / purge
                                                          broadcast
                                                          _subscribe
============= ========== ========== =========== ========= ========= ==============
AWAIT_HELLO   handshake  401+close  401+close   401+close unknown   ``{}``
READY         re-hello   register   unregister  ack       unknown   ``{}``
WEBPUSH_READY re-hello   WebPush    WebPush     WebPush   WebPush   ``{}``
============= ========== ========== =========== ========= ========= ==============

"unknown" is what an unknown ``messageType`` gets (401 and close 1002), as
before these commands existed; "WebPush" cells are ``wpsession.HANDLERS``.
HELLO_PENDING never sees a message (they are queued behind the hello).
CLOSED ignores everything.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import LogLevel

from pushtwisted import messages
from pushtwisted.connection import (
    FETCH_RETRY_FIRST,
    FETCH_RETRY_MAX,
    READY_STATES,
    CloseCode,
    Closed,
    Sender,
    State,
    StorageFailed,
)
from pushtwisted.errors import ProtocolViolation
from pushtwisted.hello import FRESH, HelloOpening
from pushtwisted.ids import is_valid_id, normalize_id
from pushtwisted.logs import level_enabled, uaid_hash
from pushtwisted.messages import Incoming, InvalidCommand, MessageType
from pushtwisted.node import Node
from pushtwisted.outbox import Outbox
from pushtwisted.webpush import messages as wpmessages
from pushtwisted.wpsession import HANDLERS as WEBPUSH_HANDLERS
from pushtwisted.wpsession import WebPushHandlers

__all__ = ["FETCH_RETRY_FIRST", "FETCH_RETRY_MAX", "Sender", "CloseCode", "State", "Session"]

_Handler = Callable[["Session", Incoming], Awaitable[None]]


class Session(WebPushHandlers, HelloOpening):
    """One client connection's state, SimplePush or WebPush.

    :param sender: writes replies and closes the connection.
    :param node: the node's shared collaborators (storage, registry, router,
        crypto, clock, metrics); the session reads ``node.config.client`` only.
    :ivar uaid: the UAID in normal form once a hello succeeded, else None.
    :ivar state: the current ``State``.
    :ivar connected_at: when the hello was recorded with the router (ms of
        the node's clock), else None.
    """

    __slots__ = (
        "_echo_uaid",
        "_hello_call",
        "_last_ping",
        "_outbox",
        "connected_at",
    )

    def __init__(self, sender: Sender, node: Node) -> None:
        super().__init__(sender, node)
        #: The UAID as first echoed to the client (its own spelling).
        self._echo_uaid: str | None = None
        self._hello_call: IDelayedCall | None = None
        self._last_ping: float | None = None
        #: Updates sent and not yet acked, from the first one on.
        self._outbox: Outbox | None = None
        self.connected_at: int | None = None

    # -- connection events ------------------------------------------------

    def opened(self) -> None:
        """Start the hello timer (the connection just opened)."""
        timeout = self._config.hello_timeout
        if timeout > 0 and self.state is State.AWAIT_HELLO:
            self._hello_call = self._node.clock.callLater(timeout, self._on_hello_timeout)

    def deliver(self, channel_id: str, version: int, data: str | None) -> bool:
        """Send a live update; return True when it reached an open, READY SimplePush connection.

        A version equal to the one already sent and not acked for that
        channel is not sent again (True is returned); any other version is
        sent and kept for the retry timer (``Outbox``).
        """
        if self.state is not State.READY:
            return False
        return self._open_outbox().deliver(channel_id, version, data)

    def check_storage(self) -> Deferred[None]:
        """Read storage again and send what is pending and not yet sent on this connection.

        Another node calls this (through the router listener) after it stored
        an update or message while this connection's directory entry was
        being written.
        """
        if self.state not in READY_STATES:
            return succeed(None)
        return Deferred.fromCoroutine(self._fetch_again())

    # -- handlers -------------------------------------------------------------

    async def _dispatch(self, text: str) -> None:
        """Decode one message and run its handler for the current state."""
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
        except Closed:
            return
        except StorageFailed as e:
            if self.state is State.HELLO_PENDING:
                self.state = State.AWAIT_HELLO
            failed = InvalidCommand(str(e), status=503, echo=incoming.echo)
            self._reject(failed, "invalid_command")
        except InvalidCommand as e:
            self._reject(e, "invalid_command")

    async def _on_hello_in_await_hello(self, incoming: Incoming) -> None:
        hello = messages.parse_hello(incoming, self._config.max_channels)
        self.state = State.HELLO_PENDING
        echo, self.connected_at, opened, missed = await self._open(hello)
        self._uaid_fresh = opened is FRESH
        normal = normalize_id(echo)
        if normal == echo:
            normal = echo  # one string per connection, not two equal ones
        self.uaid = normal
        self._echo_uaid = echo
        if hello.webpush:
            self.state = State.WEBPUSH_READY
            self._open_window(normal)
        else:
            self.state = State.READY
        self._cancel_hello_timer()
        registry = self._node.registry
        registry.add(normal, self)
        metrics = self._node.metrics
        metrics.increment("hellos")
        metrics.gauge("connections", len(registry))
        # Debug, not info: one formatted line per connection cost ~10% of the
        # connection rate; the hellos counter and connections gauge count them.
        # Not even built below debug: the hash and the bound logger cost ~2% of
        # the reactor's time when devices reconnect all the time.
        if level_enabled(_NAMESPACE, LogLevel.debug):
            self.log.debug(
                "hello {uaid_hash}",
                uaid_hash=uaid_hash(normal),
                reset=echo != hello.uaid,
                channels=len(hello.channel_ids),
                webpush=hello.webpush,
            )
        if hello.webpush:
            self._sender.send_text(wpmessages.hello_reply(echo))
            await self._fill(prefetched=None if opened is None else opened.messages, again=missed)
            return
        self._sender.send_text(messages.hello_reply(echo))
        if opened is not None:
            self._fetched()
            if opened.pending:
                self._open_outbox().send_pending(opened.pending, resend=False)
        if opened is None or missed:
            await self._flush()
        if self.state is State.READY and self._config.report_expired:
            await self._report_expired(hello.channel_ids)

    async def _on_hello_in_ready(self, incoming: Incoming) -> None:
        if self._hello_again(incoming):
            assert self._echo_uaid is not None
            self._sender.send_text(messages.hello_reply(self._echo_uaid))
            await self._flush(resend=True)

    async def _on_hello_in_webpush(self, incoming: Incoming) -> None:
        if self._hello_again(incoming):
            assert self._echo_uaid is not None
            self._sender.send_text(wpmessages.hello_reply(self._echo_uaid))
            await self._fill(resend=True)

    def _hello_again(self, incoming: Incoming) -> bool:
        """Check a second hello: True when it names no UAID or the same one.

        Another UAID is a protocol violation: 503 and close.  The connection
        keeps its protocol, whatever ``use_webpush`` says this time.
        """
        uaid = messages.hello_uaid(incoming)
        same = uaid == ""
        if not same and is_valid_id(uaid):
            same = normalize_id(uaid) == self.uaid
        if not same:
            self._violation("duplicate_hello", "second hello with another UAID")
            self._send_error(incoming.echo, 503)
            self._close(CloseCode.PROTOCOL_ERROR, "Second hello with another UAID")
            return False
        assert self.uaid is not None
        self._node.registry.add(self.uaid, self)
        self._node.metrics.increment("hellos")
        return True

    async def _on_command_before_hello(self, incoming: Incoming) -> None:
        self._violation("before_hello", f"{incoming.kind.value} before hello")
        self._send_error(incoming.echo, 401)
        self._close(CloseCode.PROTOCOL_ERROR, "Command requires hello")

    async def _on_register_in_ready(self, incoming: Incoming) -> None:
        register = messages.parse_register(incoming)
        assert self.uaid is not None and self._echo_uaid is not None
        uaid = self.uaid
        chid = normalize_id(register.channel_id)
        await self._registered(incoming, self._register(uaid, chid, register.channel_id))
        endpoint = self._node.endpoint_url(uaid, chid)
        reply = messages.register_reply(self._echo_uaid, register.channel_id, endpoint)
        self._sender.send_text(reply)

    async def _on_unregister_in_ready(self, incoming: Incoming) -> None:
        chid = await self._unregister_channel(incoming)
        if chid is not None and self._outbox is not None:
            self._outbox.forget(chid)

    async def _on_ack_in_ready(self, incoming: Incoming) -> None:
        ack = messages.parse_ack(incoming)
        assert self.uaid is not None
        storage = self._node.storage
        self._node.metrics.increment("acks")
        for update in ack.updates:
            try:
                await self._storage("ack", storage.ack(self.uaid, update.chid, update.version))
            except StorageFailed:
                continue  # the update stays stored and in the outbox: it is re-sent
            if self._outbox is not None:
                self._outbox.acked(update.chid, update.version)
        if ack.malformed:
            raise InvalidCommand("malformed ack entries", status=401, echo=incoming.echo)

    async def _on_ping(self, incoming: Incoming) -> None:
        ping = messages.parse_ping(incoming)
        metrics = self._node.metrics
        metrics.increment("pings")
        now = self._node.clock.seconds()
        interval = self._config.min_ping_interval
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

    async def _on_unknown_type(self, incoming: Incoming) -> None:
        """A WebPush-only command where WebPush is not spoken: an unknown messageType."""
        unknown = InvalidCommand(
            "unknown messageType", status=401, echo=incoming.echo, close_code=1002
        )
        self._reject(unknown, "invalid_message_type")

    # -- delivery -------------------------------------------------------------

    def _open_outbox(self) -> Outbox:
        if self._outbox is None:
            node = self._node
            self._outbox = Outbox(
                self._sender, node.metrics, node.clock, self._config.retry_interval
            )
        return self._outbox

    async def _flush(self, resend: bool = False) -> None:
        """Send every pending update in one notification and record them.

        Unless ``resend`` is set, an update whose version was already sent on
        this connection (live, while storage was answering) is skipped.  When
        the fetch fails, another one is scheduled (``_retry_fetch_later``).
        """
        assert self.uaid is not None
        try:
            pending = await self._storage(
                "fetch_pending", self._node.storage.fetch_pending(self.uaid)
            )
        except Closed:
            return
        except StorageFailed:
            self._retry_fetch_later()
            return
        self._fetched()
        if pending:
            self._open_outbox().send_pending(pending, resend=resend)

    async def _fetch_again(self) -> None:
        """Fetch what storage holds and send what this connection did not send yet."""
        if self.state is State.WEBPUSH_READY:
            await self._fill()
        elif self.state is State.READY:
            await self._flush()

    async def _report_expired(self, channel_ids: tuple[object, ...]) -> None:
        assert self.uaid is not None
        spelling: dict[str, str] = {}
        for channel_id in channel_ids:
            if isinstance(channel_id, str) and is_valid_id(channel_id):
                spelling.setdefault(normalize_id(channel_id), channel_id)
        if not spelling:
            return
        try:
            expired = await self._storage(
                "expired", self._node.storage.expired(self.uaid, list(spelling))
            )
        except (Closed, StorageFailed):
            return
        if expired:
            names = [spelling.get(chid, chid) for chid in expired]
            self._sender.send_text(messages.expired_notification(names))

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

    def _on_closed(self) -> None:
        """Cancel the timers, leave the registry and the router's record."""
        self._cancel_hello_timer()
        self._cancel_fetch_retry()
        if self._outbox is not None:
            self._outbox.close()
            self._outbox = None
        self._close_window()
        if self.uaid is not None:
            registry = self._node.registry
            registry.remove(self.uaid, self)
            self._node.metrics.gauge("connections", len(registry))
            # A newer local session for this UAID owns the directory entry now
            # (it may even carry the same millisecond): leave it alone.
            if self.connected_at is not None and registry.get(self.uaid) is None:
                self._node.router.on_disconnect(self.uaid, self.connected_at)


#: The namespace of ``Session.log``'s events.
_NAMESPACE = f"{Session.__module__}.{Session.__name__}"

_HANDLERS: dict[tuple[State, MessageType], _Handler] = {
    (State.AWAIT_HELLO, MessageType.HELLO): Session._on_hello_in_await_hello,
    (State.AWAIT_HELLO, MessageType.REGISTER): Session._on_command_before_hello,
    (State.AWAIT_HELLO, MessageType.UNREGISTER): Session._on_command_before_hello,
    (State.AWAIT_HELLO, MessageType.ACK): Session._on_command_before_hello,
    (State.AWAIT_HELLO, MessageType.NACK): Session._on_unknown_type,
    (State.AWAIT_HELLO, MessageType.BROADCAST_SUBSCRIBE): Session._on_unknown_type,
    (State.AWAIT_HELLO, MessageType.PING): Session._on_ping,
    (State.AWAIT_HELLO, MessageType.PURGE): Session._on_purge,
    (State.READY, MessageType.HELLO): Session._on_hello_in_ready,
    (State.READY, MessageType.REGISTER): Session._on_register_in_ready,
    (State.READY, MessageType.UNREGISTER): Session._on_unregister_in_ready,
    (State.READY, MessageType.ACK): Session._on_ack_in_ready,
    (State.READY, MessageType.NACK): Session._on_unknown_type,
    (State.READY, MessageType.BROADCAST_SUBSCRIBE): Session._on_unknown_type,
    (State.READY, MessageType.PING): Session._on_ping,
    (State.READY, MessageType.PURGE): Session._on_purge,
    (State.WEBPUSH_READY, MessageType.HELLO): Session._on_hello_in_webpush,
    **{(State.WEBPUSH_READY, kind): handler for kind, handler in WEBPUSH_HANDLERS.items()},
    (State.WEBPUSH_READY, MessageType.PING): Session._on_ping,
    (State.WEBPUSH_READY, MessageType.PURGE): Session._on_purge,
}
