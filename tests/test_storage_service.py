"""Tests for ``pushtwisted.storage.service.StorageService``: open, purge, close."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import LogEvent, Logger
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.errors import StorageUnavailable
from pushtwisted.storage.memory import MemoryStorage
from pushtwisted.storage.service import StorageService


class _Storage(MemoryStorage):
    """A ``MemoryStorage`` whose ``close`` answers when told to (or fails)."""

    def __init__(self) -> None:
        super().__init__()
        self.closing: list[Deferred[None]] = []

    def close(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.closing.append(d)
        return d


class StorageServiceTests(SynchronousTestCase):
    """The service's start and stop drive the backend's open, purge and close."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.storage = _Storage()
        self.calls: list[str] = []
        self.events: list[LogEvent] = []

    def service(self, **kwargs: object) -> StorageService:
        service = StorageService(self.storage, self.clock, **kwargs)  # type: ignore[arg-type]
        service.log = Logger(observer=self.events.append)  # type: ignore[misc]
        return service

    def failures(self) -> list[str]:
        return [e["log_format"] for e in self.events if "log_failure" in e]

    def test_open_at_start(self) -> None:
        """The opener runs once when the service starts; a failure is logged."""

        def opener() -> Deferred[None]:
            self.calls.append("open")
            return fail(StorageUnavailable("bad path"))

        service = self.service(opener=opener)
        self.assertEqual(self.calls, [])
        service.startService()
        self.assertEqual(self.calls, ["open"])
        self.assertEqual(self.failures(), ["storage could not be opened"])

    def test_purge_every_interval(self) -> None:
        """The purge runs every ``purge_interval`` seconds, not at start; a failed purge
        is logged and the next one still runs; stopping ends the timer."""
        results = [fail(StorageUnavailable("busy")), succeed(3)]

        def purge() -> Deferred[int]:
            self.calls.append("purge")
            return results.pop(0)

        service = self.service(purge=purge, purge_interval=60.0)
        service.startService()
        self.clock.advance(59)
        self.assertEqual(self.calls, [])
        self.clock.advance(1)
        self.assertEqual(self.calls, ["purge"])
        self.assertEqual(self.failures(), ["periodic storage purge failed"])
        self.clock.advance(60)
        self.assertEqual(self.calls, ["purge", "purge"])
        d = service.stopService()
        self.storage.closing[0].callback(None)
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_waits_for_close(self) -> None:
        """Stopping closes the backend and fires once it is closed."""
        service = self.service()
        service.startService()
        d = service.stopService()
        self.assertEqual(len(self.storage.closing), 1)
        self.assertNoResult(d)
        self.storage.closing[0].callback(None)
        self.successResultOf(d)
        self.assertFalse(service.running)

    def test_failed_close_is_logged(self) -> None:
        """A close that fails is logged; the stop still succeeds."""
        service = self.service()
        service.startService()
        d = service.stopService()
        self.storage.closing[0].errback(StorageUnavailable("gone"))
        self.successResultOf(d)
        self.assertEqual(self.failures(), ["storage close failed"])
