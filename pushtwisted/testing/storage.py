"""Storage wrappers for tests: record, fail or hold a storage's calls by name.

``open_user`` is made of the wrapper's own calls (``open_stepwise``), so a
test that fails or holds ``user_mode`` or ``fetch_pending`` reaches the
hello's combined read too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail

from pushtwisted.errors import StorageUnavailable
from pushtwisted.storage.interface import (
    Claim,
    Keep,
    Mode,
    NewMessage,
    Opened,
    PendingUpdate,
    Storage,
    StoredMessage,
    StoreResult,
    UpdateResult,
)
from pushtwisted.storage.opening import open_stepwise

__all__ = ["FailingStorage", "HeldCall", "HoldingStorage"]


class _WrappedStorage:
    """A ``Storage`` whose every call goes through ``_call`` to ``inner``."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        #: The name of every call, in order.
        self.calls: list[str] = []
        #: Each register's chid and ``fresh``, in order.
        self.registers: list[tuple[str, bool]] = []

    def _call(self, name: str, run: Callable[[], Deferred[Any]]) -> Deferred[Any]:
        self.calls.append(name)
        return run()

    def user_mode(self, uaid: str) -> Deferred[Mode | None]:
        return self._call("user_mode", lambda: self.inner.user_mode(uaid))

    def open_user(self, uaid: str, keep: Keep, claim: Claim | None = None) -> Deferred[Opened]:
        # Made of this wrapper's own calls, so each part is recorded, held or failed by name.
        return open_stepwise(self, uaid, keep, claim)

    def register(
        self,
        uaid: str,
        chid: str,
        channel_id: str,
        max_channels: int,
        mode: Mode = Mode.SIMPLEPUSH,
        fresh: bool = False,
    ) -> Deferred[None]:
        self.registers.append((chid, fresh))
        return self._call(
            "register",
            lambda: self.inner.register(uaid, chid, channel_id, max_channels, mode, fresh),
        )

    def unregister(self, uaid: str, chid: str) -> Deferred[None]:
        return self._call("unregister", lambda: self.inner.unregister(uaid, chid))

    def update(
        self, uaid: str, chid: str, version: int, data: str | None, only_newer: bool = False
    ) -> Deferred[UpdateResult]:
        return self._call(
            "update", lambda: self.inner.update(uaid, chid, version, data, only_newer)
        )

    def fetch_pending(self, uaid: str) -> Deferred[list[PendingUpdate]]:
        return self._call("fetch_pending", lambda: self.inner.fetch_pending(uaid))

    def ack(self, uaid: str, chid: str, version: int) -> Deferred[bool]:
        return self._call("ack", lambda: self.inner.ack(uaid, chid, version))

    def expired(self, uaid: str, chids: Sequence[str]) -> Deferred[list[str]]:
        return self._call("expired", lambda: self.inner.expired(uaid, chids))

    def store_message(
        self, uaid: str, message: NewMessage, max_pending: int
    ) -> Deferred[StoreResult]:
        return self._call(
            "store_message", lambda: self.inner.store_message(uaid, message, max_pending)
        )

    def fetch_messages(self, uaid: str) -> Deferred[list[StoredMessage]]:
        return self._call("fetch_messages", lambda: self.inner.fetch_messages(uaid))

    def delete_message(self, uaid: str, seq: int) -> Deferred[bool]:
        return self._call("delete_message", lambda: self.inner.delete_message(uaid, seq))

    def check(self) -> Deferred[None]:
        return self._call("check", self.inner.check)

    def close(self) -> Deferred[None]:
        return self._call("close", self.inner.close)


class FailingStorage(_WrappedStorage):
    """Wraps a storage; the methods named in ``failing`` fail, the others pass through.

    :param error: what they fail with (``StorageUnavailable`` by default).
    :param synchronous: raise at once instead of returning a failed Deferred.
    """

    def __init__(
        self,
        inner: Storage,
        failing: Iterable[str] = (),
        error: Exception | None = None,
        *,
        synchronous: bool = False,
    ) -> None:
        super().__init__(inner)
        self.failing = set(failing)
        self.error = error
        self.synchronous = synchronous

    def _call(self, name: str, run: Callable[[], Deferred[Any]]) -> Deferred[Any]:
        self.calls.append(name)
        if name not in self.failing:
            return run()
        error = self.error or StorageUnavailable(f"{name}: backend down")
        if self.synchronous:
            raise error
        return fail(error)


class HeldCall:
    """A storage call held by a ``HoldingStorage`` until answered by hand."""

    def __init__(self, name: str, run: Callable[[], Deferred[Any]]) -> None:
        self.name = name
        self._run = run
        #: Set when the caller cancelled ``deferred``.
        self.cancelled = False
        self.deferred: Deferred[Any] = Deferred(self._cancelled)

    def _cancelled(self, _: Deferred[Any]) -> None:
        self.cancelled = True

    def release(self) -> None:
        """Run the call on the wrapped storage now and answer with its result."""
        self._run().chainDeferred(self.deferred)

    def fail(self, error: Exception | None = None) -> None:
        """Answer with a failure (``StorageUnavailable`` by default)."""
        self.deferred.errback(error or StorageUnavailable(f"{self.name}: backend down"))


class HoldingStorage(_WrappedStorage):
    """Wraps a storage; calls to the methods named in ``held`` wait in ``pending``."""

    def __init__(self, inner: Storage, held: Iterable[str] = ()) -> None:
        super().__init__(inner)
        self.held = set(held)
        self.pending: list[HeldCall] = []

    def _call(self, name: str, run: Callable[[], Deferred[Any]]) -> Deferred[Any]:
        self.calls.append(name)
        if name not in self.held:
            return run()
        call = HeldCall(name, run)
        self.pending.append(call)
        return call.deferred

    def next(self) -> HeldCall:
        """Return the oldest call still waiting (removing it from ``pending``)."""
        return self.pending.pop(0)
