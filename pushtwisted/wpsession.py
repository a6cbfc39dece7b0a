"""The WebPush rules of a client session: what a ``use_webpush`` connection does.

A hello with ``"use_webpush": true`` puts the session (``pushtwisted.session``)
in ``State.WEBPUSH_READY``, whose commands are handled here (``HANDLERS``);
hello, ping and purge stay the session's.  WEBPUSH.md sections 1 and 6 decide.

=====================  ========================================================
command                in WEBPUSH_READY
=====================  ========================================================
register               ``key`` absent (or null): a v1 endpoint; a 65-octet
                       P-256 point (base64url, padded or not): a v2 endpoint
                       bound to it.  The channel is registered for a WebPush
                       user; the reply carries ``pushEndpoint``.  Errors keep
                       the connection open: a bad channelID 401, a bad key 400
                       (errno 110 in the log), too many channels 413, storage
                       503.
unregister             the channel and its stored messages are deleted, its
                       messages leave the window; reply status 200.
ack                    per entry: the code counted; the id opened and that one
                       message deleted (a TTL-0 message is only forgotten: it
                       was never stored).  An id that does not open, or names
                       another UAID, is ignored and counted.  No reply; 401
                       after the good entries when some are malformed.
nack                   the code counted and logged; no reply, no state change.
broadcast_subscribe    ignored (no broadcasts are served).
=====================  ========================================================

Delivery (``MessageWindow``): each message is one ``notification`` whose
``version`` is its id (``node.crypto.message_ids.seal(uaid, chid, seq=,
topic=)``), at most ``[client] webpush_batch`` of them sent and not yet
acknowledged at a time (a sliding window).  After every hello the stored
messages go out in storage's order (topic messages first, then by arrival);
``deliver_message`` (the router's live path) sends into the same window, or
answers False when it is full, and the session then fetches from storage
again once an ack (or an unregister, or expiry) makes room.  Unacknowledged
messages are re-sent with the same id every ``[client] retry_interval``
seconds while they have not expired.  A TTL-0 message exists only in the
window: it is never deleted from storage and is forgotten when the
connection closes.

Metrics: ``webpush_messages{outcome=delivered}`` once per message per
connection, ``{outcome=resent}`` per re-send (retry timer, second hello),
``{outcome=expired}`` per sent message whose TTL ran out before its ack;
``webpush_acks{code}``, ``webpush_nacks{code}``; ``protocol_errors{reason=
unknown_message_id}`` for ignored ack ids.  Logs name the UAID by its hash
only, never a message id or payload.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import NamedTuple

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from pushtwisted import messages
from pushtwisted.connection import ClientConnection, Closed, Sender, StorageFailed
from pushtwisted.errors import InvalidToken
from pushtwisted.ids import normalize_id
from pushtwisted.logs import uaid_hash
from pushtwisted.messages import Incoming, InvalidCommand, MessageType
from pushtwisted.metrics import Metrics
from pushtwisted.node import Node
from pushtwisted.outbox import RetryingOutbox, TextSender
from pushtwisted.storage.interface import Mode, StoredMessage
from pushtwisted.tokens import MessageIds
from pushtwisted.webpush import messages as wpmessages
from pushtwisted.webpush.vapid import InvalidKey, register_key_hash

__all__ = ["HANDLERS", "MessageWindow", "WebPushHandlers"]


class _Sent(NamedTuple):
    """A message sent on the connection, and its id (the notification's ``version``)."""

    message: StoredMessage
    version: str


class MessageWindow(RetryingOutbox):
    """The WebPush messages sent on one connection and not yet acknowledged.

    :param sender: writes the notifications.
    :param metrics: counts ``webpush_messages{outcome=delivered|resent|expired}``.
    :param clock: runs the retry timer and tells when a message expired.
    :param interval: seconds between re-sends; 0 never re-sends.
    :param ids: seals the message ids.
    :param uaid: the connection's UAID (normal form).
    :param size: most messages sent and not acknowledged (``webpush_batch``).
    :param on_room: called when the retry timer dropped expired messages.
    :ivar more: storage may hold messages not sent on this connection.
    :ivar fetching: a fetch of the stored messages is running.
    """

    __slots__ = (
        "_sender",
        "_metrics",
        "_ids",
        "_uaid",
        "_size",
        "_sent",
        "_done",
        "_on_room",
        "more",
        "fetching",
    )

    def __init__(
        self,
        sender: TextSender,
        metrics: Metrics,
        clock: IReactorTime,
        interval: float,
        *,
        ids: MessageIds,
        uaid: str,
        size: int,
        on_room: Callable[[], object],
    ) -> None:
        super().__init__(clock, interval)
        self._sender = sender
        self._metrics = metrics
        self._ids = ids
        self._uaid = uaid
        self._size = size
        #: What was sent and is not acknowledged, by seq, in the order sent.
        self._sent: dict[int, _Sent] = {}
        #: Seqs acknowledged while a fetch was running (its answer may hold them).
        self._done: set[int] = set()
        self._on_room: Callable[[], object] | None = on_room
        self.more = False
        self.fetching = False

    def __contains__(self, seq: int) -> bool:
        return seq in self._sent

    def __len__(self) -> int:
        return len(self._sent)

    @property
    def full(self) -> bool:
        """True when no more message may be sent before an ack."""
        return len(self._sent) >= self._size

    def send(self, message: StoredMessage) -> bool:
        """Send ``message`` and keep it until acknowledged; False when the connection refused it."""
        version = self._ids.seal(self._uaid, message.chid, seq=message.seq, topic=message.topic)
        if not self._write(message, version):
            return False
        if not self._sent or self._retry_call is None:
            self._arm()
        self._sent[message.seq] = _Sent(message, version)
        self._metrics.increment("webpush_messages", outcome="delivered")
        return True

    def get(self, seq: int) -> StoredMessage | None:
        """Return the unacknowledged message ``seq``, or None."""
        sent = self._sent.get(seq)
        return None if sent is None else sent.message

    def discard(self, seq: int) -> None:
        """Forget message ``seq`` (acknowledged)."""
        self._sent.pop(seq, None)
        if self.fetching:
            self._done.add(seq)

    def forget_channel(self, chid: str) -> bool:
        """Forget the messages of channel ``chid`` (unregistered); True when there were any."""
        gone = [seq for seq, sent in self._sent.items() if sent.message.chid == chid]
        for seq in gone:
            del self._sent[seq]
        return bool(gone)

    def fetch_started(self) -> None:
        """A fetch begins: what it answers is all storage holds, until it answers."""
        self.more = False
        self._done.clear()

    def skip(self, seq: int) -> bool:
        """True when a fetched message ``seq`` was sent already, or acknowledged meanwhile."""
        return seq in self._sent or seq in self._done

    def keep_retrying(self) -> None:
        """Start the retry timer again if it stopped (a re-send found the connection not
        draining) while messages are unacknowledged."""
        if self._sent and self._retry_call is None:
            self._arm()

    def resend_all(self) -> None:
        """Send again every unacknowledged message (a second hello asks for everything)."""
        if self._kept() and self._resend():
            self._arm()

    def close(self) -> None:
        """Stop the retry timer and forget everything (the connection is gone)."""
        self._sent.clear()
        self._done.clear()
        self._on_room = None
        self._stop()

    def _write(self, message: StoredMessage, version: str) -> bool:
        text = wpmessages.notification(message.channel_id, version, message.data, message.headers)
        return self._sender.send_text(text)

    def _kept(self) -> bool:
        return bool(self._sent)

    def _resend(self) -> bool:
        """Drop the expired messages (TTL 0 never expires here), send the others again."""
        now = self._clock.seconds()
        sent = self._sent
        expired = [
            seq for seq, s in sent.items() if s.message.ttl > 0 and now >= s.message.expires_at
        ]
        for seq in expired:
            del sent[seq]
        if expired:
            self._metrics.increment("webpush_messages", len(expired), outcome="expired")
        count = 0
        for message, version in list(sent.values()):
            if not self._write(message, version):
                return False
            count += 1
        if count:
            self._metrics.increment("webpush_messages", count, outcome="resent")
        if expired and self._on_room is not None:
            self._on_room()
        return True


_Handler = Callable[["WebPushHandlers", Incoming], Awaitable[None]]


class WebPushHandlers(ClientConnection):
    """A client connection's WebPush handlers, used once its hello chose WebPush.

    ``pushtwisted.session.Session`` is one: it opens the window
    (``_open_window``) when a WebPush hello succeeds, sends what storage holds
    (``_fill``), and closes the window when the connection closes.
    """

    __slots__ = ("_window",)

    def __init__(self, sender: Sender, node: Node) -> None:
        super().__init__(sender, node)
        #: The unacknowledged messages; None unless the connection speaks WebPush.
        self._window: MessageWindow | None = None

    def deliver_message(self, message: StoredMessage) -> bool:
        """Send a live WebPush message; True when sent now or already unacknowledged here.

        False when the connection is not a ready WebPush one, refused the
        message (its output is not draining), or its window is full: then the
        message (unless its TTL is 0) waits in storage, and is fetched once an
        ack makes room or the output drained (``check_storage``).
        """
        window = self._window
        if window is None:
            return False
        if message.seq in window:
            return True
        if not window.full and window.send(message):
            return True
        if message.ttl > 0:
            window.more = True
        return False

    # -- the window -------------------------------------------------------------

    def _open_window(self, uaid: str) -> None:
        node = self._node
        self._window = MessageWindow(
            self._sender,
            node.metrics,
            node.clock,
            self._config.retry_interval,
            ids=node.crypto.message_ids,
            uaid=uaid,
            size=self._config.webpush_batch,
            on_room=self._fill_soon,
        )

    def _close_window(self) -> None:
        if self._window is not None:
            self._window.close()
            self._window = None

    def _fill_soon(self) -> None:
        """Fetch more in the background when storage may hold more (the timer made room)."""
        window = self._window
        if window is not None and window.more and not window.full:
            Deferred.fromCoroutine(self._fill()).addErrback(self._crashed)

    async def _refill(self) -> None:
        """Fetch more when an ack or unregister made room and storage may hold more."""
        window = self._window
        if window is not None and window.more and not window.full:
            await self._fill()

    async def _fill(
        self,
        resend: bool = False,
        prefetched: Sequence[StoredMessage] | None = None,
        again: bool = False,
    ) -> None:
        """Send the stored messages not sent on this connection, in order, while there is room.

        With ``resend`` (a second hello) the unacknowledged ones are first
        sent again.  One fetch runs at a time: a call while one runs asks it
        to fetch once more.  A failed fetch is retried on the clock
        (``_retry_fetch_later``).  ``prefetched``: what the hello's storage
        call read, sent instead of a first fetch (then one fetch more when
        ``again``).
        """
        window = self._window
        uaid = self.uaid
        if window is None or uaid is None:
            return
        if resend:
            window.resend_all()
        else:
            window.keep_retrying()
        if window.fetching:
            window.more = True
            return
        storage = self._node.storage
        window.fetching = True
        try:
            while True:
                window.fetch_started()
                if prefetched is not None:
                    stored, prefetched = prefetched, None
                    window.more = again
                else:
                    try:
                        stored = await self._storage("fetch_messages", storage.fetch_messages(uaid))
                    except Closed:
                        return
                    except StorageFailed:
                        window.more = True
                        self._retry_fetch_later()
                        return
                self._fetched()
                for message in stored:
                    if window.skip(message.seq):
                        continue
                    if window.full:
                        window.more = True
                        break
                    if not window.send(message):
                        window.more = True  # sent once the output drains
                        return
                if not window.more or window.full:
                    return
        finally:
            window.fetching = False

    # -- handlers ---------------------------------------------------------------

    async def _on_register_in_webpush(self, incoming: Incoming) -> None:
        register = messages.parse_register(incoming)
        key = incoming.fields.get("key")
        key_hash = None
        if key is not None:
            try:
                key_hash = register_key_hash(key)
            except InvalidKey:
                raise InvalidCommand(
                    "register key is not a P-256 public key (errno 110)",
                    status=400,
                    echo=incoming.echo,
                ) from None
        uaid = self.uaid
        assert uaid is not None
        chid = normalize_id(register.channel_id)
        await self._registered(
            incoming, self._register(uaid, chid, register.channel_id, Mode.WEBPUSH)
        )
        endpoint = self._node.webpush_endpoint_url(uaid, chid, key_hash)
        self._sender.send_text(wpmessages.register_reply(register.channel_id, endpoint))

    async def _on_unregister_in_webpush(self, incoming: Incoming) -> None:
        chid = await self._unregister_channel(incoming)
        if chid is not None and self._window is not None and self._window.forget_channel(chid):
            await self._refill()

    async def _on_ack_in_webpush(self, incoming: Incoming) -> None:
        ack = wpmessages.parse_ack(incoming)
        uaid, window = self.uaid, self._window
        assert uaid is not None and window is not None
        node = self._node
        metrics, ids, storage = node.metrics, node.crypto.message_ids, node.storage
        metrics.increment("acks")
        for version, code in ack.entries:
            metrics.increment("webpush_acks", code=code)
            try:
                opened = ids.open(version)
            except InvalidToken:
                opened = None
            if opened is None or opened.uaid != uaid:
                metrics.increment("protocol_errors", reason="unknown_message_id")
                self.log.debug(
                    "ack of an unknown message id {uaid_hash}", uaid_hash=uaid_hash(uaid)
                )
                continue
            sent = window.get(opened.seq)
            if sent is None or sent.ttl > 0:  # a TTL-0 message was never stored
                try:
                    await self._storage("delete_message", storage.delete_message(uaid, opened.seq))
                except StorageFailed:
                    continue  # still stored and unacknowledged: it is re-sent
            window.discard(opened.seq)
        await self._refill()
        if ack.malformed:
            raise InvalidCommand("malformed ack entries", status=401, echo=incoming.echo)

    async def _on_nack(self, incoming: Incoming) -> None:
        code = wpmessages.nack_code(incoming.fields.get("code"))
        self._node.metrics.increment("webpush_nacks", code=code)
        self.log.info("nack {uaid_hash} code {code}", uaid_hash=uaid_hash(self.uaid), code=code)

    async def _on_broadcast_subscribe(self, incoming: Incoming) -> None:
        """Ignore it: this server has no broadcasts (WEBPUSH.md 1.8)."""


#: The WebPush commands' handlers in ``State.WEBPUSH_READY`` (see the module).
HANDLERS: Mapping[MessageType, _Handler] = {
    MessageType.REGISTER: WebPushHandlers._on_register_in_webpush,
    MessageType.UNREGISTER: WebPushHandlers._on_unregister_in_webpush,
    MessageType.ACK: WebPushHandlers._on_ack_in_webpush,
    MessageType.NACK: WebPushHandlers._on_nack,
    MessageType.BROADCAST_SUBSCRIBE: WebPushHandlers._on_broadcast_subscribe,
}
