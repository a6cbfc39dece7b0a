"""``SqliteStorage``: the embedded, durable backend (stdlib ``sqlite3``).

One database file in WAL mode, with a single writer and group commit:

- **Writes** (``register``, ``unregister``, ``update``, ``ack``,
  ``store_message``, ``delete_message``, plus
  ``open``, ``purge_expired`` and ``check``) are queued on the reactor
  thread by a ``GroupCommit`` (``pushtwisted.storage._group_commit``).
  While no batch runs, the queue is drained: up to ``max_batch`` operations
  go to the runner as *one* call, which executes them on the one writer
  connection in *one* ``BEGIN IMMEDIATE`` transaction, then commits once, so
  one fsync covers the whole batch.  An operation's error rolls back only
  that operation: one that may write several statements (``register``,
  ``unregister``) runs inside its own ``SAVEPOINT``; ``update``, ``ack``
  and the others write one statement at most, which SQLite undoes by itself
  when it fails (in the usual case ``update`` and ``ack`` are one
  ``UPDATE ... RETURNING`` each).  Each caller's Deferred
  fires on the reactor thread only after that commit; if the commit fails,
  every operation of the batch fails.  Operations queued while a batch runs
  form the next batch.
- **Reads** (``user_mode``, ``fetch_pending``, ``expired``,
  ``fetch_messages``) run as
  separate runner calls on read connections (one per pool thread, kept in a
  ``threading.local``); in WAL mode they never block the writer and see
  every committed batch.

Past ``max_pending`` queued or running writes, new writes fail at once with
``StorageBusy``; a write that waits more than ``timeout`` seconds fails with
``StorageUnavailable`` (it may still be committed).  ``close()`` refuses new
calls, waits until every queued write is committed, then closes the
connections.

The tables and their migrations are in ``_sqlite_schema``, the WebPush
operations in ``_sqlite_messages``, what expires (tombstones, messages;
users not seen for ``ttl_registered``) in ``_sqlite_expiry``;
``now`` is the reactor clock read on the reactor thread.  Both are purged at
``open()`` and by ``purge_expired()``, tombstones also at ``unregister``.

The ``_blocking`` methods, and the write operations of
``pushtwisted.storage._sqlite_writes``, run on the storage pool.  They touch
only their arguments, the connections and the connection registry, never
Twisted; every ``sqlite3.Error`` (or ``OSError``) becomes
``StorageUnavailable``.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Concatenate, NamedTuple, ParamSpec, TypeVar

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime

from pushtwisted.errors import StorageUnavailable
from pushtwisted.storage import _sqlite_messages as _messages
from pushtwisted.storage import _sqlite_writes as _writes
from pushtwisted.storage._group_commit import GroupCommit, Outcome
from pushtwisted.storage._sqlite_expiry import purge, purge_all, stale, touch
from pushtwisted.storage._sqlite_schema import (
    DELETED,
    SCHEMA_VERSION,
    as_storage_error,
    migrate,
    translated,
)
from pushtwisted.storage.interface import (
    Claim,
    Keep,
    Mode,
    NewMessage,
    Opened,
    PendingUpdate,
    StoredMessage,
    StoreResult,
    UpdateResult,
)
from pushtwisted.storage.opening import open_stepwise

if TYPE_CHECKING:
    from pushtwisted.threadpool import Runner

__all__ = ["SqliteStorage", "SCHEMA_VERSION", "DB_FILENAME"]

_P = ParamSpec("_P")
_T = TypeVar("_T")

#: File name of the database inside the state directory.
DB_FILENAME = "pushtwisted.sqlite3"

#: Most host parameters in one ``IN (...)`` list.
_CHUNK = 500

#: A write operation as the writer runs it: everything but the connection bound.
_Call = Callable[[sqlite3.Connection], object]


class _Write(NamedTuple):
    """A queued write: the call, and whether it needs a savepoint of its own."""

    call: _Call
    #: True when the call may write more than one statement: an error must
    #: undo them all.  A single statement that fails is undone by SQLite.
    guarded: bool


class SqliteStorage:
    """A durable ``Storage`` in one SQLite file, with one writer and group commit.

    :param path: the database file, created 0600 (its directory 0700) if
        missing.  ``:memory:`` is not supported (each connection its own).
    :param run: the runner of blocking calls (``ThreadPoolService.run``); one
        call per read and one per batch of writes.
    :param clock: the reactor clock; ``seconds()`` dates tombstones and
        times writes out.
    :param ttl_deleted: seconds a tombstone of an unregistered channel lives.
    :param ttl_registered: seconds a user lives without a register or hello
        (then the purge deletes it with its channels); None: forever.
    :param busy_timeout: seconds a connection waits for another writer
        (another process, or the schema migration).
    :param synchronous: ``PRAGMA synchronous`` (``FULL`` also survives power
        loss; ``NORMAL`` survives process crashes and is faster in WAL).
    :param max_pending: most writes queued or running; past it new writes
        fail at once with ``StorageBusy``.
    :param max_batch: most writes committed in one transaction.
    :param timeout: seconds a write may wait for its commit before its
        Deferred fails with ``StorageUnavailable``; 0 or less waits forever
        (the runner's own timeout still bounds each batch).
    """

    def __init__(
        self,
        path: str,
        run: Runner,
        clock: IReactorTime,
        *,
        ttl_deleted: float,
        ttl_registered: float | None = None,
        busy_timeout: float = 5.0,
        synchronous: str = "FULL",
        max_pending: int = 1000,
        max_batch: int = 256,
        timeout: float = 0.0,
    ) -> None:
        if path == ":memory:" or path.startswith("file::memory:"):
            raise ValueError("SqliteStorage needs a file; ':memory:' is per connection")
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"bad synchronous mode {synchronous!r}")
        self._path = path
        self._run = run
        self._clock = clock
        self._ttl_deleted = ttl_deleted
        self._ttl_registered = ttl_registered
        self._busy_timeout = busy_timeout
        self._synchronous = synchronous.upper()
        # Thread side: read connections, the writer connection, the registry.
        self._local = threading.local()
        self._lock = threading.Lock()
        #: Reads running on pool threads; close() waits for them, because
        #: closing a connection another thread is using can crash sqlite3.
        self._active_reads = 0
        self._reads_done = threading.Condition(self._lock)
        self._writer_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        self._connections: list[sqlite3.Connection] = []
        self._schema_ready = False
        self._closed = False
        # Reactor side: the write queue.
        self._closing = False
        self._writes: GroupCommit[_Write] = GroupCommit(
            "sqlite",
            run,
            self._batch_blocking,
            clock,
            max_pending=max_pending,
            max_batch=max_batch,
            timeout=timeout,
        )

    # -- the asynchronous API (reactor thread) --------------------------------

    def open(self) -> Deferred[None]:
        """Create or migrate the schema and purge what expired (``purge_expired``).

        Optional: the first call of any method opens the database too, but
        calling this at startup surfaces a bad path or a newer schema early.
        """
        return self._purge("open").addCallback(lambda _: None)

    def purge_expired(self) -> Deferred[int]:
        """Delete expired tombstones and unseen users (``PURGE_USERS`` per write); count them."""
        return self._purge("purge_expired")

    def _purge(self, operation: str) -> Deferred[int]:
        now, ttl = self._clock.seconds(), self._ttl_registered
        return Deferred.fromCoroutine(purge_all(lambda: self._write(operation, purge, now, ttl)))

    def user_mode(self, uaid: str) -> Deferred[Mode | None]:
        return self._read("user_mode", self._user_mode_blocking, uaid)

    def open_user(self, uaid: str, keep: Keep, claim: Claim | None = None) -> Deferred[Opened]:
        """Without a claim, one read job (mode and fetch); with one, ``open_stepwise``."""
        if claim is not None:
            return open_stepwise(self, uaid, keep, claim)
        now = self._clock.seconds()
        d = self._read("open_user", self._open_blocking, uaid, keep, now)
        return d.addCallback(self._seen, uaid, now)

    def register(
        self,
        uaid: str,
        chid: str,
        channel_id: str,
        max_channels: int,
        mode: Mode = Mode.SIMPLEPUSH,
        fresh: bool = False,
    ) -> Deferred[None]:
        now = self._clock.seconds()
        args = (uaid, chid, channel_id, max_channels, now)
        return self._write("register", _messages.register, *args, mode, _writes.register)

    def unregister(self, uaid: str, chid: str) -> Deferred[None]:
        now = self._clock.seconds()
        return self._write(
            "unregister",
            _messages.unregister,
            uaid,
            chid,
            _writes.unregister,
            now,
            self._ttl_deleted,
        )

    def update(
        self,
        uaid: str,
        chid: str,
        version: int,
        data: str | None,
        only_newer: bool = False,
    ) -> Deferred[UpdateResult]:
        return self._write_one("update", _writes.update, uaid, chid, version, data, only_newer)

    def fetch_pending(self, uaid: str) -> Deferred[list[PendingUpdate]]:
        now = self._clock.seconds()
        d = self._read("fetch_pending", self._fetch_pending_blocking, uaid, now)
        return d.addCallback(self._seen, uaid, now)

    def _seen(self, found: tuple[_T, bool], uaid: str, now: float) -> _T:
        pending, is_stale = found
        if is_stale:  # a hello saw the user; best effort, not waited for
            self._write_one("touch", touch, uaid, now).addErrback(lambda _: None)
        return pending

    def ack(self, uaid: str, chid: str, version: int) -> Deferred[bool]:
        return self._write_one("ack", _writes.ack, uaid, chid, version)

    def expired(self, uaid: str, chids: Sequence[str]) -> Deferred[list[str]]:
        return self._read(
            "expired", self._expired_blocking, uaid, list(chids), self._clock.seconds()
        )

    def store_message(
        self, uaid: str, message: NewMessage, max_pending: int
    ) -> Deferred[StoreResult]:
        now = self._clock.seconds()
        return self._write("store_message", _messages.store, uaid, message, max_pending, now)

    def fetch_messages(self, uaid: str) -> Deferred[list[StoredMessage]]:
        now = self._clock.seconds()
        d = self._read("fetch_messages", self._fetch_messages_blocking, uaid, now)
        return d.addCallback(self._seen, uaid, now)

    def delete_message(self, uaid: str, seq: int) -> Deferred[bool]:
        now = self._clock.seconds()
        return self._write("delete_message", _messages.delete, uaid, seq, now)

    def check(self) -> Deferred[None]:
        """Probe the writer: fire once a (batched) write transaction committed."""
        return self._write_one("check", _writes.check)

    def close(self) -> Deferred[None]:
        """Refuse new calls, commit every queued write, then close the connections.

        Later calls fail with ``StorageUnavailable``.
        """
        return Deferred.fromCoroutine(self._close())

    async def _close(self) -> None:
        self._closing = True
        await self._writes.close()
        await self._run("close", self._close_blocking)

    # -- reads and writes (reactor thread) -----------------------------------

    def _read(
        self, operation: str, func: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> Deferred[_T]:
        if self._closing:
            return fail(StorageUnavailable("sqlite storage is closed"))
        return self._run(operation, self._guarded_read, functools.partial(func, *args, **kwargs))

    def _guarded_read(self, call: Callable[[], _T]) -> _T:
        """Run one read (pool thread), counted so that close() never races it."""
        with self._lock:
            if self._closed:
                raise StorageUnavailable("sqlite storage is closed")
            self._active_reads += 1
        try:
            return call()
        finally:
            with self._lock:
                self._active_reads -= 1
                self._reads_done.notify_all()

    def _write(
        self,
        operation: str,
        func: Callable[Concatenate[sqlite3.Connection, _P], _T],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> Deferred[_T]:
        """Queue ``func(writer_connection, *args)``; fire after its batch commits.

        ``func`` runs inside a savepoint of its own: an error undoes all it wrote.
        """

        def call(conn: sqlite3.Connection) -> _T:
            return func(conn, *args, **kwargs)

        result: Deferred[_T] = self._writes.submit(operation, _Write(call, True))
        return result

    def _write_one(
        self,
        operation: str,
        func: Callable[Concatenate[sqlite3.Connection, _P], _T],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> Deferred[_T]:
        """``_write`` for ``func`` that writes one statement at most: no savepoint."""

        def call(conn: sqlite3.Connection) -> _T:
            return func(conn, *args, **kwargs)

        result: Deferred[_T] = self._writes.submit(operation, _Write(call, False))
        return result

    # -- connections (pool threads) ------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """Open, configure and register a new connection (migrating the schema once)."""
        if self._closed:
            raise StorageUnavailable("sqlite storage is closed")
        directory = os.path.dirname(self._path)
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        os.close(os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600))  # -wal, -shm alike
        # check_same_thread=False so that close() may close every connection,
        # and so that the writer connection may serve batches on any pool
        # thread (one at a time, under _writer_lock).
        conn = sqlite3.connect(
            self._path,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            if not self._schema_ready:
                migrate(conn)
                self._schema_ready = True
        except BaseException:
            conn.close()
            raise
        with self._lock:
            if self._closed:
                conn.close()
                raise StorageUnavailable("sqlite storage is closed")
            self._connections.append(conn)
        return conn

    def _conn(self) -> sqlite3.Connection:
        """Return this thread's read connection, opening it if new."""
        if self._closed:
            raise StorageUnavailable("sqlite storage is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    # -- the writer (pool threads, one batch at a time) -----------------------

    def _batch_blocking(self, calls: list[_Write]) -> list[Outcome]:
        """Run ``calls`` in one transaction (the guarded ones in savepoints); commit once.

        Returns one outcome per call, in order.  An operation's error
        (``TooManyChannels``, a constraint, ...) rolls back that operation
        only.  When the transaction itself fails (cannot begin, an error
        that aborted it, the commit), every call fails: nothing of the batch
        is committed.
        """
        with self._writer_lock:
            try:
                if self._closed:
                    raise StorageUnavailable("sqlite storage is closed")
                conn = self._writer
                if conn is None:
                    conn = self._writer = self._connect()
                conn.execute("BEGIN IMMEDIATE")
            except Exception as e:
                return [(False, as_storage_error(e))] * len(calls)
            outcomes: list[Outcome] = []
            try:
                for call, guarded in calls:
                    if not guarded:
                        try:
                            outcomes.append((True, call(conn)))
                        except Exception as e:
                            if not conn.in_transaction:
                                raise  # the error rolled the whole batch back
                            outcomes.append((False, as_storage_error(e)))
                        continue
                    conn.execute("SAVEPOINT op")
                    try:
                        value = call(conn)
                    except Exception as e:
                        # Fails (and so fails the batch) when the error has
                        # already rolled back the whole transaction.
                        conn.execute("ROLLBACK TO op")
                        conn.execute("RELEASE op")
                        outcomes.append((False, as_storage_error(e)))
                    else:
                        conn.execute("RELEASE op")
                        outcomes.append((True, value))
                conn.execute("COMMIT")
            except Exception as e:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                return [(False, as_storage_error(e))] * len(calls)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return outcomes

    # -- blocking entry points (pool threads) ---------------------------------

    @translated
    def _user_mode_blocking(self, uaid: str) -> Mode | None:
        return _messages.user_mode(self._conn(), uaid)

    @translated
    def _fetch_messages_blocking(self, uaid: str, now: float) -> tuple[list[StoredMessage], bool]:
        conn = self._conn()
        return _messages.fetch(conn, uaid, now), stale(conn, uaid, now, self._ttl_registered)

    @translated
    def _fetch_pending_blocking(self, uaid: str, now: float) -> tuple[list[PendingUpdate], bool]:
        conn = self._conn()
        return _messages.fetch_pending(conn, uaid), stale(conn, uaid, now, self._ttl_registered)

    @translated
    def _open_blocking(self, uaid: str, keep: Keep, now: float) -> tuple[Opened, bool]:
        conn = self._conn()
        opened = _messages.open_user(conn, uaid, keep, now)
        return opened, opened.kept and stale(conn, uaid, now, self._ttl_registered)

    @translated
    def _expired_blocking(self, uaid: str, chids: list[str], now: float) -> list[str]:
        conn = self._conn()
        wanted = sorted(set(chids))
        found: set[str] = set()
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            rows = conn.execute(
                "SELECT chid FROM channels WHERE uaid = ? AND state = ? AND expires_at > ?"
                f" AND chid IN ({marks})",
                (uaid, DELETED, now, *chunk),
            )
            found.update(chid for (chid,) in rows)
        return [chid for chid in chids if chid in found]

    def _close_blocking(self) -> None:
        with self._writer_lock, self._lock:
            self._closed = True
            self._reads_done.wait_for(lambda: self._active_reads == 0, timeout=self._busy_timeout)
            self._writer = None
            connections, self._connections = self._connections, []
        for conn in connections:
            try:
                conn.close()
            except sqlite3.Error:
                pass
