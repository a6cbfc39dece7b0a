"""``Storage.open_user`` tests every backend must pass (mixed into ``StorageContract``).

The hello's one storage call answers what ``user_mode`` and then
``fetch_pending`` or ``fetch_messages`` would answer, fetches nothing for a
UAID the hello does not keep, and runs the claim after the mode read and
before the fetch (a claim that stores an update is seen by the fetch).
"""

from __future__ import annotations

import uuid
from typing import Any

from twisted.internet.defer import Deferred

from pushtwisted.storage.interface import Mode, NewMessage, Storage, UpdateOutcome

__all__ = ["OpenUserContract", "StoringClaim"]


def _new_id() -> str:
    return uuid.uuid4().hex


class StoringClaim:
    """A ``Claim`` whose write is an update of ``chid`` (to see where it runs)."""

    def __init__(self, storage: Storage, chid: str, version: int) -> None:
        self.storage = storage
        self.chid = chid
        self.version = version
        self.runs: list[str] = []
        self.landings: list[tuple[str, object]] = []

    def run(self, uaid: str) -> Deferred[None]:
        self.runs.append(uaid)
        d = self.storage.update(uaid, self.chid, self.version, None)
        return d.addCallback(lambda result: None)

    def steps(self, uaid: str) -> None:
        return None

    def landed(self, uaid: str, result: object) -> None:
        self.landings.append((uaid, result))


class OpenUserContract:
    """Mix into a backend's contract tests (``self.storage`` is a fresh backend)."""

    storage: Storage

    async def _simplepush_user(self, version: int | None = 7) -> tuple[str, str]:
        uaid, chid = _new_id(), _new_id()
        await self.storage.register(uaid, chid, chid.upper(), 0)
        if version is not None:
            await self.storage.update(uaid, chid, version, "d")
        return uaid, chid

    async def test_open_user_kept_fetches_pending(self) -> None:
        """A kept SimplePush UAID: its mode and what ``fetch_pending`` answers."""
        uaid, _ = await self._simplepush_user()
        seen: list[Mode | None] = []

        def keep(mode: Mode | None) -> bool:
            seen.append(mode)
            return True

        opened = await self.storage.open_user(uaid, keep)
        self.assertEqual(seen, [Mode.SIMPLEPUSH])
        self.assertEqual((opened.mode, opened.kept), (Mode.SIMPLEPUSH, True))
        expected = await self.storage.fetch_pending(uaid)
        self.assertEqual([p.version for p in expected], [7])
        self.assertEqual(list(opened.pending), expected)
        self.assertEqual(list(opened.messages), [])

    async def test_open_user_not_kept_fetches_nothing(self) -> None:
        """A UAID the hello does not keep: its mode, nothing fetched, no claim."""
        uaid, chid = await self._simplepush_user()
        claim = StoringClaim(self.storage, chid, 9)
        opened = await self.storage.open_user(uaid, lambda mode: False, claim)
        self.assertEqual((opened.mode, opened.kept), (Mode.SIMPLEPUSH, False))
        self.assertEqual((list(opened.pending), claim.runs), ([], []))

    async def test_open_user_unknown(self) -> None:
        """An unknown UAID, kept: no mode, nothing fetched."""
        opened = await self.storage.open_user(_new_id(), lambda mode: mode is None)
        self.assertEqual((opened.mode, opened.kept), (None, True))
        self.assertEqual((list(opened.pending), list(opened.messages)), ([], []))

    async def test_open_user_webpush_messages(self) -> None:
        """A kept WebPush UAID: what ``fetch_messages`` answers."""
        uaid, chid = _new_id(), _new_id()
        await self.storage.register(uaid, chid, chid.upper(), 0, Mode.WEBPUSH)
        stored = await self.storage.store_message(uaid, NewMessage(chid=chid, ttl=60), 0)
        opened = await self.storage.open_user(uaid, lambda mode: mode is Mode.WEBPUSH)
        self.assertEqual((opened.mode, opened.kept), (Mode.WEBPUSH, True))
        self.assertEqual([m.seq for m in opened.messages], [stored.message.seq])
        self.assertEqual(list(opened.messages), await self.storage.fetch_messages(uaid))

    async def test_open_user_claim_before_fetch(self) -> None:
        """The claim runs once, for the UAID, after the mode read and before the fetch."""
        uaid, chid = await self._simplepush_user(version=None)
        claim = StoringClaim(self.storage, chid, 9)
        opened = await self.storage.open_user(uaid, lambda mode: True, claim)
        self.assertEqual(claim.runs, [uaid])
        self.assertEqual([p.version for p in opened.pending], [9])

    async def test_open_user_claim_for_unknown_user_fetches(self) -> None:
        """After a claim, a UAID without a user record is fetched all the same: another
        connection may have registered it before the claim landed."""
        uaid, chid = _new_id(), _new_id()
        claim = _RegisteringClaim(self.storage, chid)
        opened = await self.storage.open_user(uaid, lambda mode: True, claim)
        self.assertIsNone(opened.mode)
        self.assertEqual([p.version for p in opened.pending], [3])


class _RegisteringClaim(StoringClaim):
    """A claim during which the UAID is registered and updated (another connection)."""

    def __init__(self, storage: Storage, chid: str) -> None:
        super().__init__(storage, chid, 3)

    def run(self, uaid: str) -> Deferred[None]:
        async def both() -> Any:
            await self.storage.register(uaid, self.chid, self.chid.upper(), 0)
            result = await self.storage.update(uaid, self.chid, self.version, None)
            assert result.outcome is UpdateOutcome.STORED

        return Deferred.fromCoroutine(both())
