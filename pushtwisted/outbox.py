"""``Outbox``: the updates sent on one connection and not yet acknowledged.

``RetryingOutbox`` is the retry timer every outbox shares: SimplePush's
``Outbox`` here, WebPush's ``MessageWindow`` (``pushtwisted.wpsession``).

A session creates its outbox at its first notification.  Each channel's
last sent update stays in it until the client acks that version (or a newer
one) or unregisters the channel; while any stays, all of them are sent
again every ``[client] retry_interval`` seconds (``notifications_resent``),
counted from the first of them sent.  A version already sent on the
connection is not sent twice, except by a re-hello, which asks for
everything again.

The retry timer is one reactor call per connection per interval, not one
per notification: an ack that empties the outbox leaves the timer running,
and the next notification re-arms it by moving its due time.  When it fires
with nothing kept it stops; when the updates kept were sent less than an
interval ago it waits for the rest.  A notification and its ack cost no
``callLater`` and no cancel (each is a heap push, and every cancel a later
heap rebuild, in the reactor).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from pushtwisted import messages
from pushtwisted.ids import is_valid_id, normalize_id
from pushtwisted.messages import Update
from pushtwisted.metrics import Metrics
from pushtwisted.storage.interface import PendingUpdate

__all__ = ["Outbox", "RetryingOutbox", "TextSender"]

#: Seconds a retry may come before its due time (clock rounding), rather
#: than wait for so little.
_EARLY = 0.001


class TextSender(Protocol):
    """What an outbox needs of its connection (part of the session's ``Sender``)."""

    def send_text(self, text: str) -> bool:
        """Send one text message; return False when the connection is closed or closing."""


class RetryingOutbox:
    """The retry timer of what a connection sent and the client has not acknowledged.

    A subclass keeps what it sent, calls ``_arm`` when it sends something
    while nothing was kept or the timer is not running, and implements
    ``_kept`` and ``_resend``.

    :param clock: runs the retry timer.
    :param interval: seconds between re-sends; 0 never re-sends.
    """

    __slots__ = ("_clock", "_interval", "_retry_call", "_due")

    def __init__(self, clock: IReactorTime, interval: float) -> None:
        self._clock = clock
        self._interval = interval
        self._retry_call: IDelayedCall | None = None
        #: When what is kept is to be re-sent (clock seconds).
        self._due = 0.0

    def _kept(self) -> bool:
        """Return True while anything sent is not acknowledged."""
        raise NotImplementedError

    def _resend(self) -> bool:
        """Send again everything kept; return False when the connection refused it."""
        raise NotImplementedError

    def _arm(self) -> None:
        """Make what is kept due one interval from now; start the timer if it is not running."""
        interval = self._interval
        if interval > 0:
            self._due = self._clock.seconds() + interval
            if self._retry_call is None:
                self._retry_call = self._clock.callLater(interval, self._on_retry)

    def _stop(self) -> None:
        """Cancel the timer (the connection is gone)."""
        call, self._retry_call = self._retry_call, None
        if call is not None and call.active():
            call.cancel()

    def _on_retry(self) -> None:
        self._retry_call = None
        if not self._kept():
            return  # everything was acked: the timer stops until the next notification
        clock = self._clock
        wait = self._due - clock.seconds()
        if wait > _EARLY:
            # What is kept was sent after this timer was set.
            self._retry_call = clock.callLater(wait, self._on_retry)
            return
        if self._resend():
            self._arm()


class Outbox(RetryingOutbox):
    """Unacknowledged updates of one connection, and their retry timer.

    :param sender: writes the notifications.
    :param metrics: counts ``notifications_delivered`` and ``notifications_resent``.
    :param clock: runs the retry timer.
    :param interval: seconds between re-sends; 0 never re-sends.
    """

    __slots__ = ("_sender", "_metrics", "_sent")

    def __init__(
        self, sender: TextSender, metrics: Metrics, clock: IReactorTime, interval: float
    ) -> None:
        super().__init__(clock, interval)
        self._sender = sender
        self._metrics = metrics
        #: The last update sent per channel, by channel ID in normal form.
        self._sent: dict[str, Update] = {}

    def deliver(self, channel_id: str, version: int, data: str | None) -> bool:
        """Send one live update unless that version was sent already.

        :returns: False when the connection refused the message, else True.
        """
        key = _channel_key(channel_id)
        sent = self._sent
        previous = sent.get(key)
        if previous is not None and previous.version == version:
            return True
        update = Update(channel_id, version, data)
        if not self._sender.send_text(messages.notification((update,))):
            return False
        if not sent or self._retry_call is None:
            self._arm()
        sent[key] = update
        self._metrics.increment("notifications_delivered")
        return True

    def send_pending(self, pending: Sequence[PendingUpdate], *, resend: bool = False) -> None:
        """Send what storage holds in one notification.

        Unless ``resend``, an update whose version was already sent on this
        connection (live, while storage was answering) is left out.
        """
        sent = self._sent
        if not sent or self._retry_call is None:
            self._arm()
        updates: list[Update] = []
        for item in pending:
            key = _channel_key(item.channel_id)
            previous = sent.get(key)
            if not resend and previous is not None and previous.version == item.version:
                continue
            update = Update(item.channel_id, item.version, item.data)
            updates.append(update)
            sent[key] = update
        if updates and self._sender.send_text(messages.notification(updates)):
            self._metrics.increment("notifications_delivered", len(updates))

    def acked(self, chid: str, version: int) -> None:
        """Forget the update of ``chid`` (normal form) if ``version`` covers it."""
        sent = self._sent.get(chid)
        if sent is not None and version >= sent.version:
            del self._sent[chid]

    def forget(self, chid: str) -> None:
        """Forget the update of ``chid`` (normal form): the channel was unregistered."""
        self._sent.pop(chid, None)

    def close(self) -> None:
        """Stop the retry timer and forget everything (the connection is gone)."""
        self._sent.clear()
        self._stop()

    def _kept(self) -> bool:
        return bool(self._sent)

    def _resend(self) -> bool:
        updates = list(self._sent.values())
        if not self._sender.send_text(messages.notification(updates)):
            return False
        self._metrics.increment("notifications_resent", len(updates))
        return True


def _channel_key(channel_id: str) -> str:
    """Return the record key of a channel: its normal form when it is a valid ID."""
    return normalize_id(channel_id) if is_valid_id(channel_id) else channel_id
