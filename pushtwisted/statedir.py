"""The state directory (``[storage] path``): private, writable, checked at start.

``prepare_state`` runs once when the server is built, before the reactor
runs, and only when the directory is needed (the sqlite backend, or no
``[crypto] keys``):

- the directory is created with mode 0700 (and its missing parents); one
  that exists and is open to other users (as older releases left it, 0755)
  is made 0700 when it holds nothing but pushtwisted's files, and is
  otherwise left alone with a warning (it may be a directory the operator
  shares, such as the working directory);
- the files pushtwisted keeps there (``endpoint.key``, the SQLite database
  and its ``-wal``, ``-shm`` and ``-journal``) are made 0600, with a warning
  when that is refused (another owner);
- the directory must take a new file (checked with an anonymous temporary
  file, which leaves nothing behind);
- without configured keys, the endpoint key is read, or generated and
  written (``tokens.load_or_create_key``); a key file that holds no valid
  key is refused, naming the file;
- with the sqlite backend, the database file is created 0600 when absent
  (SQLite gives its ``-wal`` and ``-shm`` the database's mode) and opened
  once, so that a corrupt file, or one written by a newer release, stops the
  start instead of failing every call later.

Each problem is a ``ConfigError`` naming ``storage.path`` and the path, with
the OS or SQLite error: the start ends with that one line and status 1.
The checks are blocking file and SQLite calls made on the main thread
before the reactor starts (nothing is served yet); the storage backend
itself still opens the database on the storage thread pool.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pushtwisted.config import StorageConfig
from pushtwisted.errors import ConfigError
from pushtwisted.storage._sqlite_schema import SCHEMA_VERSION
from pushtwisted.storage.sqlite import DB_FILENAME
from pushtwisted.tokens import KEY_FILE, KeyFile, load_or_create_key

__all__ = ["State", "os_reason", "prepare_state"]

#: Names pushtwisted writes in the state directory.
_OURS = frozenset(
    {
        KEY_FILE,
        Path(KEY_FILE).with_suffix(".tmp").name,
        DB_FILENAME,
        f"{DB_FILENAME}-wal",
        f"{DB_FILENAME}-shm",
        f"{DB_FILENAME}-journal",
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class State:
    """What ``prepare_state`` found and did.

    :ivar directory: the state directory as an absolute path, or None when
        none is needed (``backend`` memory or memcached with ``crypto.keys``).
    :ivar key: the endpoint key kept there, or None with configured keys.
    :ivar database: the SQLite file (absolute), or None for other backends.
    :ivar warnings: what to tell the operator at start (permissions that
        could not be tightened).
    """

    directory: Path | None = None
    key: KeyFile | None = None
    database: Path | None = None
    warnings: tuple[str, ...] = ()


def os_reason(error: OSError) -> str:
    """Return an OS error's text as the tail of a sentence (``permission denied``)."""
    text = error.strerror or str(error)
    return text[:1].lower() + text[1:]


def prepare_state(config: StorageConfig, *, need_key: bool) -> State:
    """Make the state directory ready and return what is kept there (see the module).

    :param need_key: no ``crypto.keys`` are configured: read or generate the
        endpoint key.
    :raises ConfigError: naming ``storage.path`` when the directory cannot
        be created or written, the key file is unreadable or corrupt, or the
        database cannot be opened.
    """
    sqlite = config.backend == "sqlite"
    if not (sqlite or need_key):
        return State()
    directory = Path(os.path.abspath(config.path))
    warnings: list[str] = []
    _private_directory(directory, warnings)
    key = None
    if need_key:
        try:
            key = load_or_create_key(directory)
        except OSError as e:
            where = e.filename or directory / KEY_FILE
            raise ConfigError(f"storage.path: cannot use {where}: {os_reason(e)}") from None
    database = None
    if sqlite:
        database = directory / DB_FILENAME
        _check_database(database, config.timeout)
    for name in sorted(_OURS):
        _private_file(directory / name, warnings)
    return State(directory=directory, key=key, database=database, warnings=tuple(warnings))


def _private_directory(directory: Path, warnings: list[str]) -> None:
    """Create ``directory`` 0700, or tighten it, and check that it takes a file."""
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"storage.path: {directory} is not a directory")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"storage.path: cannot create the state directory {directory}: {os_reason(e)}"
        ) from None
    mode = stat.S_IMODE(directory.stat().st_mode)
    if mode & 0o077:
        others = sorted(entry.name for entry in directory.iterdir() if entry.name not in _OURS)
        if others:
            warnings.append(
                f"storage.path: {directory} is open to other users (mode {mode:04o}) and"
                f" holds other files ({others[0]}...): left as it is; give pushtwisted a"
                " directory of its own"
            )
        else:
            try:
                directory.chmod(0o700)
            except OSError as e:
                warnings.append(
                    f"storage.path: {directory} is open to other users (mode {mode:04o})"
                    f" and cannot be made 0700: {os_reason(e)}"
                )
    try:
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as e:
        raise ConfigError(
            f"storage.path: cannot write in the state directory {directory}: {os_reason(e)}"
        ) from None


def _private_file(path: Path, warnings: list[str]) -> None:
    """Make ``path`` 0600 when it exists and is open to others; warn when refused."""
    try:
        mode = stat.S_IMODE(path.lstat().st_mode)
    except FileNotFoundError:
        return
    if not mode & 0o077 or path.is_symlink():
        return
    try:
        path.chmod(0o600)
    except OSError as e:
        warnings.append(
            f"storage.path: {path} is readable by other users (mode {mode:04o}) and"
            f" cannot be made 0600: {os_reason(e)}"
        )


def _check_database(path: Path, timeout: float) -> None:
    """Create the database file 0600 when absent, then open and read it once.

    :param timeout: seconds to wait for a lock another writer holds.

    :raises ConfigError: naming the file, when it cannot be created or is not
        a database this release can use.
    """
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    except OSError as e:
        raise ConfigError(f"storage.path: cannot create {path}: {os_reason(e)}") from None
    try:
        conn = sqlite3.connect(path, timeout=timeout)
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise ConfigError(f"storage.path: cannot open the database {path}: {e}") from None
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"storage.path: the database {path} has schema version {version}, newer than"
            f" this release's {SCHEMA_VERSION}: run the release that wrote it"
        )
