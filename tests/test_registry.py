"""Tests for ``pushtwisted.registry.ClientRegistry``: newest connection wins, ``when_empty``."""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.registry import ClientRegistry
from pushtwisted.testing import FakeSession


class ClientRegistryTests(SynchronousTestCase):
    """Sessions by UAID."""

    def test_newest_wins(self) -> None:
        """Adding a second session for a UAID replaces (and closes) the first; the first
        one's removal leaves the second in place."""
        registry: ClientRegistry[FakeSession] = ClientRegistry()
        old, new = FakeSession(), FakeSession()
        registry.add("u", old)
        registry.add("u", new)
        self.assertEqual((old.replaced_count, new.replaced_count), (1, 0))
        registry.remove("u", old)
        self.assertIs(registry.get("u"), new)
        self.assertEqual(len(registry), 1)

    def test_when_empty_at_once(self) -> None:
        """With no session held, ``when_empty`` has already fired."""
        self.successResultOf(ClientRegistry[FakeSession]().when_empty())

    def test_when_empty_waits_for_the_last(self) -> None:
        """``when_empty`` fires when the last session is removed, not before, and not for
        the removal of a session that no longer held its UAID."""
        registry: ClientRegistry[FakeSession] = ClientRegistry()
        a, b, replaced = FakeSession(), FakeSession(), FakeSession()
        registry.add("a", replaced)
        registry.add("a", a)
        registry.add("b", b)
        empty = registry.when_empty()
        registry.remove("a", replaced)
        registry.remove("a", a)
        self.assertNoResult(empty)
        registry.remove("b", b)
        self.successResultOf(empty)

    def test_when_empty_cancelled(self) -> None:
        """Cancelling a wait forgets it; other waits still fire."""
        registry: ClientRegistry[FakeSession] = ClientRegistry()
        session = FakeSession()
        registry.add("u", session)
        cancelled, kept = registry.when_empty(), registry.when_empty()
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        registry.remove("u", session)
        self.successResultOf(kept)


class WatchTests(SynchronousTestCase):
    """``watch``: look-ups of a UAID whose hello reads storage are noted."""

    def setUp(self) -> None:
        self.registry: ClientRegistry[FakeSession] = ClientRegistry()

    def test_no_look_up(self) -> None:
        """Without a look-up of the UAID meanwhile, ``unwatch`` is False."""
        self.registry.watch("u")
        self.assertIsNone(self.registry.get("other"))
        self.assertFalse(self.registry.unwatch("u"))

    def test_look_up_noted_found_or_not(self) -> None:
        """A look-up that finds nobody, or an older session, is noted."""
        self.registry.watch("u")
        self.assertIsNone(self.registry.get("u"))
        self.assertTrue(self.registry.unwatch("u"))
        old = FakeSession()
        self.registry.add("u", old)
        self.registry.watch("u")
        self.assertIs(self.registry.get("u"), old)
        self.assertTrue(self.registry.unwatch("u"))

    def test_forgotten_after_unwatch(self) -> None:
        """Look-ups before a watch, or after it ended, are not noted."""
        self.registry.get("u")
        self.registry.watch("u")
        self.assertFalse(self.registry.unwatch("u"))
        self.registry.get("u")
        self.registry.watch("u")
        self.assertFalse(self.registry.unwatch("u"))

    def test_two_hellos_of_one_uaid(self) -> None:
        """Two hellos of one UAID read at once: a look-up is noted for both."""
        self.registry.watch("u")
        self.registry.watch("u")
        self.registry.get("u")
        self.assertTrue(self.registry.unwatch("u"))
        self.assertTrue(self.registry.unwatch("u"))
        self.registry.watch("u")
        self.assertFalse(self.registry.unwatch("u"))
