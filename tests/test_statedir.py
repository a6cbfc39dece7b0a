"""Tests for ``pushtwisted.statedir``: the state directory made private and checked at start."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.config import StorageConfig
from pushtwisted.errors import ConfigError
from pushtwisted.statedir import State, prepare_state
from pushtwisted.storage.sqlite import DB_FILENAME, SCHEMA_VERSION
from pushtwisted.tokens import KEY_FILE, generate_key


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class PrepareStateTests(SynchronousTestCase):
    """``prepare_state`` creates, tightens and checks ``[storage] path``."""

    def prepare(self, path: str | Path, backend: str = "memory", need_key: bool = True) -> State:
        return prepare_state(StorageConfig(path=str(path), backend=backend), need_key=need_key)

    def test_not_needed(self) -> None:
        """With configured keys and no sqlite, nothing is created."""
        path = Path(self.mktemp())
        for backend in ("memory", "memcached"):
            self.assertEqual(self.prepare(path, backend, need_key=False), State())
        self.assertFalse(path.exists())

    def test_created_private_with_a_key(self) -> None:
        """A missing directory is created 0700 (parents too) and given a 0600 key."""
        path = Path(self.mktemp()) / "a" / "state"
        state = self.prepare(path)
        self.assertEqual(state.directory, path.resolve())
        self.assertTrue(state.directory is not None and state.directory.is_absolute())
        self.assertEqual(_mode(path), 0o700)
        assert state.key is not None
        self.assertEqual((state.key.path, state.key.generated), (path.resolve() / KEY_FILE, True))
        self.assertEqual(_mode(path / KEY_FILE), 0o600)
        self.assertEqual(state.warnings, ())
        self.assertFalse(self.prepare(path).key.generated)  # type: ignore[union-attr]

    def test_relative_path_resolved(self) -> None:
        """A relative path is reported as the absolute path it resolved to."""
        relative = os.path.relpath(self.mktemp())
        state = self.prepare(relative)
        self.assertEqual(state.directory, Path(os.path.abspath(relative)))

    def test_older_release_directory_tightened(self) -> None:
        """A 0755 directory holding only pushtwisted's files (as older releases left
        it) becomes 0700, and its 0644 files 0600."""
        path = Path(self.mktemp())
        path.mkdir(mode=0o755)
        path.chmod(0o755)
        for name in (KEY_FILE, DB_FILENAME, f"{DB_FILENAME}-wal", f"{DB_FILENAME}-shm"):
            content = generate_key() if name == KEY_FILE else ""
            (path / name).write_text(content, encoding="ascii")
            (path / name).chmod(0o644)
        state = self.prepare(path, "sqlite")
        self.assertEqual(state.warnings, ())
        self.assertEqual(_mode(path), 0o700)
        for entry in path.iterdir():
            self.assertEqual(_mode(entry), 0o600, entry.name)

    def test_shared_directory_left_with_a_warning(self) -> None:
        """A directory open to others that holds other files is not changed: a warning."""
        path = Path(self.mktemp())
        path.mkdir()
        path.chmod(0o755)
        (path / "notes.txt").write_text("mine", encoding="ascii")
        state = self.prepare(path)
        self.assertEqual(_mode(path), 0o755)
        [warning] = state.warnings
        self.assertIn(f"storage.path: {path.resolve()} is open to other users (mode 0755)", warning)
        self.assertIn("notes.txt", warning)
        self.assertEqual(_mode(path / KEY_FILE), 0o600)

    def test_cannot_create(self) -> None:
        """A directory that cannot be created is one error naming storage.path and the OS
        error."""
        error = self.assertRaises(ConfigError, self.prepare, "/proc/nope")
        self.assertEqual(
            error.problems,
            (
                "storage.path: cannot create the state directory /proc/nope: no such file or"
                " directory",
            ),
        )

    def test_file_where_the_directory_should_be(self) -> None:
        """A file at the path, or on the way to it, is refused."""
        file = Path(self.mktemp()).resolve()
        file.write_text("x", encoding="ascii")
        error = self.assertRaises(ConfigError, self.prepare, file)
        self.assertEqual(str(error), f"storage.path: {file} is not a directory")
        error = self.assertRaises(ConfigError, self.prepare, file / "state")
        self.assertEqual(
            str(error),
            f"storage.path: cannot create the state directory {file / 'state'}: not a directory",
        )

    def test_cannot_write(self) -> None:
        """A directory that exists but takes no file (``/sys``, even for root) is refused."""
        error = self.assertRaises(
            ConfigError, self.prepare, "/sys", need_key=False, backend="sqlite"
        )
        self.assertIn("storage.path: cannot write in the state directory /sys: ", str(error))

    def test_corrupt_key_file(self) -> None:
        """A key file that holds no key stops the start, naming the file."""
        path = Path(self.mktemp()).resolve()
        path.mkdir()
        (path / KEY_FILE).write_text("nope\n", encoding="ascii")
        error = self.assertRaises(ConfigError, self.prepare, path)
        self.assertIn(
            f"storage.path: the endpoint key file {path / KEY_FILE} is corrupt", str(error)
        )


class DatabaseCheckTests(SynchronousTestCase):
    """With the sqlite backend the database file is created private and opened once."""

    def prepare(self, path: Path) -> State:
        return prepare_state(StorageConfig(path=str(path), backend="sqlite"), need_key=False)

    def test_created_private(self) -> None:
        """A missing database is created 0600 and reported with its absolute path."""
        path = Path(self.mktemp()).resolve()
        state = self.prepare(path)
        self.assertEqual(state.database, path / DB_FILENAME)
        self.assertEqual(_mode(path / DB_FILENAME), 0o600)
        self.assertIsNone(state.key)

    def test_corrupt_file(self) -> None:
        """A file that is not a database is one error naming the file."""
        path = Path(self.mktemp()).resolve()
        path.mkdir()
        (path / DB_FILENAME).write_bytes(b"this is not sqlite" * 100)
        error = self.assertRaises(ConfigError, self.prepare, path)
        self.assertEqual(
            error.problems,
            (
                f"storage.path: cannot open the database {path / DB_FILENAME}: file is not a"
                " database",
            ),
        )

    def test_newer_schema(self) -> None:
        """A database written by a newer release is refused, naming the file."""
        path = Path(self.mktemp()).resolve()
        path.mkdir()
        conn = sqlite3.connect(path / DB_FILENAME)
        conn.execute("PRAGMA user_version = 99")
        conn.close()
        error = self.assertRaises(ConfigError, self.prepare, path)
        self.assertIn(
            f"storage.path: the database {path / DB_FILENAME} has schema version 99", str(error)
        )

    def test_current_database_accepted(self) -> None:
        """A database this release wrote passes, unchanged."""
        path = Path(self.mktemp()).resolve()
        path.mkdir()
        conn = sqlite3.connect(path / DB_FILENAME)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.close()
        self.assertEqual(self.prepare(path).database, path / DB_FILENAME)
