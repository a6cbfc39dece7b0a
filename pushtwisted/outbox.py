"""``Outbox``: the updates sent on one connection and not yet acknowledged.

A session creates its outbox at its first notification.  Each channel's
last sent update stays in it until the client acks that version (or a newer
one) or unregisters the channel; while any stays, all of them are sent
again every ``[client] retry_interval`` seconds (``notifications_resent``).
A version already sent on the connection is not sent twice, except by a
re-hello, which asks for everything again.
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

__all__ = ["Outbox", "TextSender"]


class TextSender(Protocol):
    """What an outbox needs of its connection (part of the session's ``Sender``)."""

    def send_text(self, text: str) -> bool:
        """Send one text message; return False when the connection is closed or closing."""


class Outbox:
    """Unacknowledged updates of one connection, and their retry timer.

    :param sender: writes the notifications.
    :param metrics: counts ``notifications_delivered`` and ``notifications_resent``.
    :param clock: runs the retry timer.
    :param interval: seconds between re-sends; 0 never re-sends.
    """

    __slots__ = ("_sender", "_metrics", "_clock", "_interval", "_sent", "_retry_call")

    def __init__(
        self, sender: TextSender, metrics: Metrics, clock: IReactorTime, interval: float
    ) -> None:
        self._sender = sender
        self._metrics = metrics
        self._clock = clock
        self._interval = interval
        #: The last update sent per channel, by channel ID in normal form.
        self._sent: dict[str, Update] = {}
        self._retry_call: IDelayedCall | None = None

    def deliver(self, channel_id: str, version: int, data: str | None) -> bool:
        """Send one live update unless that version was sent already.

        :returns: False when the connection refused the message, else True.
        """
        key = _channel_key(channel_id)
        previous = self._sent.get(key)
        if previous is not None and previous.version == version:
            return True
        update = Update(channel_id=channel_id, version=version, data=data)
        if not self._sender.send_text(messages.notification([update])):
            return False
        self._sent[key] = update
        self._metrics.increment("notifications_delivered")
        self._schedule_retry()
        return True

    def send_pending(self, pending: Sequence[PendingUpdate], *, resend: bool = False) -> None:
        """Send what storage holds in one notification.

        Unless ``resend``, an update whose version was already sent on this
        connection (live, while storage was answering) is left out.
        """
        sent = self._sent
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
            self._metrics.increment("notifications_delivered", len(updates))
        self._schedule_retry()

    def acked(self, chid: str, version: int) -> None:
        """Forget the update of ``chid`` (normal form) if ``version`` covers it."""
        sent = self._sent.get(chid)
        if sent is not None and version >= sent.version:
            del self._sent[chid]
            self._stop_if_empty()

    def forget(self, chid: str) -> None:
        """Forget the update of ``chid`` (normal form): the channel was unregistered."""
        if self._sent.pop(chid, None) is not None:
            self._stop_if_empty()

    def close(self) -> None:
        """Stop the retry timer and forget everything (the connection is gone)."""
        self._sent.clear()
        self._stop_if_empty()

    def _schedule_retry(self) -> None:
        if self._interval > 0 and self._retry_call is None and self._sent:
            self._retry_call = self._clock.callLater(self._interval, self._on_retry)

    def _stop_if_empty(self) -> None:
        if not self._sent and self._retry_call is not None:
            if self._retry_call.active():
                self._retry_call.cancel()
            self._retry_call = None

    def _on_retry(self) -> None:
        self._retry_call = None
        if not self._sent:
            return
        updates = list(self._sent.values())
        if not self._sender.send_text(messages.notification(updates)):
            return
        self._metrics.increment("notifications_resent", len(updates))
        self._schedule_retry()


def _channel_key(channel_id: str) -> str:
    """Return the record key of a channel: its normal form when it is a valid ID."""
    return normalize_id(channel_id) if is_valid_id(channel_id) else channel_id
