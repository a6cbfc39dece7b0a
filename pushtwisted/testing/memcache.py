"""Test doubles for the memcached backends: an in-process memcached model.

- ``FakeMemcache``: a ``MemcacheClient`` whose server lives in a dict,
  with memcached's ``gets``/``cas`` and expiry semantics on a ``task.Clock``,
  a hook to force races (``interpose``) and a switch to fail every call
  (``broken``).

Run operations on it with an inline ``BatchRunner``
(``pushtwisted.testing.inline_submit``), or one at a time with
``MemcacheSteps(fake)([operation])``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.task import Clock

from pushtwisted.storage._memcache import MAX_RELATIVE_EXPIRE, JsonSerde
from pushtwisted.storage._memcache_wire import Command, Delete, Get, Store, Touch

__all__ = ["FakeMemcache"]


class FakeMemcache:
    """An in-process model of a memcached server behind a pymemcache client.

    Values are JSON-copied (like the real serde), every store bumps a cas
    token, and expiry follows memcached: 0 never, up to 30 days relative,
    beyond that an absolute Unix time, compared with ``clock.seconds()``.
    ``pipeline`` runs a round like the real client: the writes in order,
    then the reads.  ``interpose(key, fn)`` runs ``fn`` just before the next
    ``cas``/``add`` on ``key`` (to force a race); ``broken`` makes every
    call fail.  ``rounds`` counts ``pipeline`` calls and ``commands`` the
    commands they carried.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._serde = JsonSerde()
        self._items: dict[str, tuple[bytes, int, float | None]] = {}
        self._next_cas = 1
        self._interposed: dict[str, list[Callable[[], object]]] = {}
        self.broken = False
        self.expiries: dict[str, int] = {}
        self.rounds = 0
        self.commands: list[Command] = []

    def interpose(self, key: str, fn: Callable[[], object]) -> None:
        """Run ``fn`` just before the next ``cas`` or ``add`` of ``key``."""
        self._interposed.setdefault(key, []).append(fn)

    def _check(self) -> None:
        if self.broken:
            raise ConnectionRefusedError(111, "Connection refused")

    def _run_interposed(self, key: str) -> None:
        for fn in self._interposed.pop(key, []):
            fn()

    def _live(self, key: str) -> tuple[bytes, int, float | None] | None:
        item = self._items.get(key)
        if item is not None and item[2] is not None and self._clock.seconds() >= item[2]:
            del self._items[key]
            return None
        return item

    def _deadline(self, expire: int) -> float | None:
        if expire == 0:
            return None
        if expire > MAX_RELATIVE_EXPIRE:
            return float(expire)
        return self._clock.seconds() + expire

    def _store(self, key: str, value: Any, expire: int) -> None:
        raw, _ = self._serde.serialize(key, value)
        self._items[key] = (raw, self._next_cas, self._deadline(expire))
        self._next_cas += 1
        self.expiries[key] = expire

    # -- the client API the backends use ---------------------------------------

    def pipeline(self, commands: Sequence[Command]) -> list[object]:
        """Run the writes in order, then the reads; one reply per command."""
        self.rounds += 1
        self.commands.extend(commands)
        if self.broken:
            return [ConnectionRefusedError(111, "Connection refused")] * len(commands)
        replies: list[object] = [None] * len(commands)
        order = [i for i, c in enumerate(commands) if not isinstance(c, Get)]
        order += [i for i, c in enumerate(commands) if isinstance(c, Get)]
        for i in order:
            command = commands[i]
            if isinstance(command, Get):
                replies[i] = self.gets(command.key)
            elif isinstance(command, Store):
                if command.verb == b"cas":
                    replies[i] = self.cas(command.key, command.value, command.cas, command.expire)
                elif command.verb == b"add":
                    replies[i] = self.add(command.key, command.value, command.expire)
                else:
                    replies[i] = self.set(command.key, command.value, command.expire)
            elif isinstance(command, Touch):
                replies[i] = self.touch(command.key, command.expire)
            else:
                assert isinstance(command, Delete)
                replies[i] = self.delete(command.key)
        return replies

    def close(self) -> None:
        """Nothing to close."""

    def check_servers(self) -> None:
        """One server, which fails like every other call when told to."""
        self._check()

    # -- direct access, for tests ----------------------------------------------

    def get(self, key: str) -> Any:
        """The value of ``key``, or None."""
        self._check()
        item = self._live(key)
        return None if item is None else json.loads(item[0])

    def gets(self, key: str) -> tuple[Any, Any]:
        """``(value, cas)`` of ``key``, or ``(None, None)``."""
        self._check()
        item = self._live(key)
        return (None, None) if item is None else (json.loads(item[0]), str(item[1]).encode())

    def set(self, key: str, value: Any, expire: int = 0) -> bool:
        """Store unconditionally."""
        self._check()
        self._store(key, value, expire)
        return True

    def add(self, key: str, value: Any, expire: int = 0) -> bool:
        """Store if absent."""
        self._check()
        self._run_interposed(key)
        if self._live(key) is not None:
            return False
        self._store(key, value, expire)
        return True

    def cas(self, key: str, value: Any, cas: Any, expire: int = 0) -> bool | None:
        """Store if unchanged: True, False (changed) or None (absent)."""
        self._check()
        self._run_interposed(key)
        item = self._live(key)
        if item is None:
            return None
        if str(item[1]).encode() != cas:
            return False
        self._store(key, value, expire)
        return True

    def touch(self, key: str, expire: int = 0) -> bool:
        """Give ``key`` a new expiry; False when absent."""
        self._check()
        item = self._live(key)
        if item is None:
            return False
        self._items[key] = (item[0], item[1], self._deadline(expire))
        self.expiries[key] = expire
        return True

    def delete(self, key: str) -> bool:
        """Delete ``key``; False when absent."""
        self._check()
        return self._items.pop(key, None) is not None


if TYPE_CHECKING:
    from pushtwisted.storage._memcache import MemcacheClient

    _client: MemcacheClient = FakeMemcache(Clock())
