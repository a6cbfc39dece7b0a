"""How ``pushtwisted.logs``'s observers write: the same lines as Twisted's, for less.

- ``fast_text_file_observer``: the lines of ``twisted.logger.textFileLogObserver``
  byte for byte, with the timestamp formatted once per second and the
  ``[namespace#level]`` system field once per namespace and level;
- ``JsonLineObserver``: the JSON lines of ``pushtwisted.logs.json_observer``
  (secrets hashed, see there), each key's treatment looked up once;
- both write through a ``TurnBuffer``: flushed once per reactor turn instead
  of once per line (see its docstring), and by ``flush_all`` at exit.

An ``AccessLog`` event carries its text, already formatted, under
``TEXT_KEY``; both use it instead of parsing its format string again.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import math
import sys
import threading
import weakref
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import (
    ILogObserver,
    LogEvent,
    formatEvent,
    timeFormatRFC3339,
)
from twisted.logger import formatEventAsClassicLogText as _classic_text
from twisted.logger import formatTime as _format_time
from twisted.python import threadable
from twisted.python.compat import ioType
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "BUFFER_LIMIT",
    "TEXT_KEY",
    "JsonLineObserver",
    "TextFormatter",
    "TextLineObserver",
    "TurnBuffer",
    "fast_text_file_observer",
    "flush_all",
    "in_io_thread",
    "uaid_hash",
]

#: Field names (lower case) whose values are hashed before they are written.
_SECRET_FIELDS = frozenset(
    {
        "uaid",
        "token",
        "chid",
        "channelid",
        "channel_id",
        "endpoint",
        "pushendpoint",
        "chids",
        "channelids",
        "channel_ids",
    }
)
#: Raw values shorter than this are hashed in their field but not searched
#: for in the rest of the line (too likely to match unrelated text).
_MIN_SCRUB_LENGTH = 8
#: Keys ``twisted.python.log`` events carry besides their named fields.
_LEGACY_KEYS = frozenset(
    {"message", "format", "isError", "logLevel", "time", "failure", "why", "system"}
)
_RESERVED = frozenset({"time", "level", "namespace", "message", "traceback"})
_MAX_DEPTH = 8


def uaid_hash(value: str | None) -> str:
    """Return the first 16 hex characters of SHA-256 of ``value`` ('' for None)."""
    if not value:
        return ""
    return hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:16]


#: Most namespace/level pairs and key names whose treatment is remembered.
_MAX_CACHED = 4096


def fast_text_file_observer(
    outFile: IO[Any], timeFormat: str | None = timeFormatRFC3339
) -> ILogObserver:
    """Return an observer writing what ``twisted.logger.textFileLogObserver`` writes.

    Byte for byte the same lines, at a lower cost per line: the timestamp
    formatted once per second, the system field once per namespace and
    level, and the writes flushed once per reactor turn (see the module
    docstring).  Same arguments as Twisted's.
    """
    return TextLineObserver(TurnBuffer(outFile), TextFormatter(timeFormat))


#: Characters buffered before a write, whatever the reactor does.
BUFFER_LIMIT = 64 * 1024
#: The event key of ``AccessLog``'s text, already formatted.
TEXT_KEY = "log_pushtwisted_text"
#: Fractions of a second past this may round up to the next second.
_LAST_SAFE_FRACTION = 0.9999995

_buffers: weakref.WeakSet[TurnBuffer] = weakref.WeakSet()


def flush_all() -> None:
    """Write out what every observer of this module has buffered (at exit)."""
    for buffer in list(_buffers):
        buffer.flush()


atexit.register(flush_all)


def in_io_thread() -> bool:
    """Twisted's ``threadable.isInIOThread``, without its two calls per line.

    ``isInIOThread`` compares ``threadable.ioThread`` with
    ``threading.current_thread().ident``, which is ``threading.get_ident()``.
    """
    return threadable.ioThread == threading.get_ident()


class TurnBuffer:
    """Text for one stream, written and flushed once per reactor turn.

    Written at once (the buffer first) when the reactor is not running, the
    caller is not the reactor thread, or ``BUFFER_LIMIT`` characters are
    waiting; otherwise at the end of the turn (``callLater(0)``), after the
    reactor's shutdown, and at exit.  A write made by the stream itself
    while it is being written (a redirected standard output) is dropped.

    :param reactor: the reactor whose turns are followed; by default the one
        installed when the first line comes (none installed: written at once).
    :param in_reactor_thread: says whether the caller is the reactor's
        thread; by default ``in_io_thread`` (Twisted's ``isInIOThread``).
    """

    def __init__(
        self,
        stream: IO[Any],
        reactor: Any = None,
        in_reactor_thread: Callable[[], bool] | None = None,
    ) -> None:
        self._stream = stream
        self._encoding = "utf-8" if ioType(stream) is not str else None  # type: ignore[no-untyped-call]
        self._reactor = reactor
        self._in_reactor_thread = in_io_thread if in_reactor_thread is None else in_reactor_thread
        self._lines: list[str] = []
        self._size = 0
        self._scheduled = False
        self._watched: Any = None
        self._lock = threading.RLock()
        self._writing = False
        _buffers.add(self)

    def write(self, text: str) -> None:
        """Write ``text`` now or at the end of this reactor turn."""
        reactor = self._reactor
        if reactor is None:
            reactor = sys.modules.get("twisted.internet.reactor")
        with self._lock:
            if self._writing:
                return
            self._lines.append(text)
            self._size += len(text)
            if (
                self._size < BUFFER_LIMIT
                and reactor is not None
                and getattr(reactor, "running", False)
                and self._in_reactor_thread()
            ):
                if not self._scheduled:
                    self._schedule(reactor)
                return
            self.flush()

    def _schedule(self, reactor: Any) -> None:
        try:
            if self._watched is not reactor:
                reactor.addSystemEventTrigger("after", "shutdown", self.flush)
                self._watched = reactor
            reactor.callLater(0, self._turn_ended)
            self._scheduled = True
        except Exception:  # a reactor that cannot: write as we go
            self.flush()

    def _turn_ended(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Write and flush everything buffered."""
        with self._lock:
            if not self._lines or self._writing:
                return
            text = "".join(self._lines)
            self._lines.clear()
            self._size = 0
            self._writing = True
            try:
                if self._encoding is None:
                    self._stream.write(text)
                else:
                    self._stream.write(text.encode(self._encoding))
                self._stream.flush()
            except Exception as e:  # never raise into a publisher or the reactor
                _report_lost(e)
            finally:
                self._writing = False


def _report_lost(error: Exception) -> None:
    stderr = sys.__stderr__
    if stderr is not None:
        try:
            stderr.write(f"pushtwisted.logs: log lines lost: {error!r}\n")
        except Exception:
            pass


class TextFormatter:
    """``textFileLogObserver``'s line of an event, with the repeated parts cached."""

    def __init__(self, time_format: str | None) -> None:
        self._time_format = time_format
        self._second: float | None = None
        self._stamp = ""
        #: The times that get ``_stamp``: ``_second <= when < _second_end``.
        self._second_end = -math.inf
        self._systems: dict[tuple[object, object], str] = {}

    def time(self, when: float | None) -> str:
        """Return ``formatTime(when, time_format)``, formatted once per second."""
        if type(when) is float and self._second_end > when >= self._second:  # type: ignore[operator]
            return self._stamp  # the second of the last stamp, not near its end
        time_format = self._time_format
        if when is None or time_format is None:
            return "-"
        try:
            second = math.floor(when)
            fraction = when - second
        except Exception:
            return _format_time(when, time_format)
        if second == self._second and fraction < _LAST_SAFE_FRACTION:
            return self._stamp
        stamp = _format_time(when, time_format)
        if fraction < _LAST_SAFE_FRACTION and "%f" not in time_format:
            self._second, self._stamp = second, stamp
            # second + fraction < _second_end implies fraction < _LAST_SAFE_FRACTION.
            self._second_end = second + _LAST_SAFE_FRACTION
        return stamp

    def _system(self, event: LogEvent) -> str | None:
        """The ``namespace#level`` of an event without ``log_system`` (None: ask Twisted)."""
        key = (event.get("log_namespace", "-"), event.get("log_level", None))
        try:
            return self._systems[key]
        except KeyError:
            pass
        except TypeError:
            return None
        namespace, level = key
        try:
            name = "-" if level is None else level.name
            system = f"{namespace}#{name}"
        except Exception:
            return None
        if len(self._systems) < _MAX_CACHED:
            self._systems[key] = system
        return system

    def __call__(self, event: LogEvent) -> str | None:
        """Return the event's line, as ``formatEventAsClassicLogText`` does."""
        if "log_failure" in event or "log_system" in event:
            return _classic_text(event, formatTime=self.time)
        text = event.get(TEXT_KEY)
        if type(text) is not str:
            text = formatEvent(event)
        if not text:
            return None
        system = self._system(event)
        if system is None:
            return _classic_text(event, formatTime=self.time)
        line = f"{self.time(event.get('log_time', None))} [{system}] {text}"
        if "\n" in line:
            line = line.replace("\n", "\n\t")
        return line + "\n"


@implementer(ILogObserver)
class TextLineObserver:
    """Write each event's text line (``TextFormatter``) through a ``TurnBuffer``."""

    def __init__(self, buffer: TurnBuffer, format_event: TextFormatter) -> None:
        self._buffer = buffer
        self.formatEvent = format_event

    def __call__(self, event: LogEvent) -> None:
        text = self.formatEvent(event)
        if text:
            self._buffer.write(text)

    def flush(self) -> None:
        """Write out what is buffered."""
        self._buffer.flush()


@implementer(ILogObserver)
class JsonLineObserver:
    """Write each event as one JSON object and a newline (through a ``TurnBuffer``)."""

    def __init__(self, stream: IO[str]) -> None:
        self._buffer = TurnBuffer(stream)

    def __call__(self, event: LogEvent) -> None:
        try:
            line = _event_to_json(event)
        except Exception as e:  # never lose the line, never raise into the publisher
            line = json.dumps(
                {
                    "time": _iso_time(event.get("log_time")),
                    "level": "error",
                    "namespace": "pushtwisted.logs",
                    "message": f"could not serialise a log event: {e!r}",
                }
            )
        self._buffer.write(line + "\n")

    def flush(self) -> None:
        """Write out what is buffered."""
        self._buffer.flush()


#: ``json.dumps(record, allow_nan=False, ensure_ascii=False)``, without a new encoder per call.
_encode_json = json.JSONEncoder(allow_nan=False, ensure_ascii=False).encode
#: What ``_event_to_json`` does with a key: leave it out, write it as it is, or as
#: ``field_<key>``; None: a secret, the event takes ``_slow_event_to_json``.
_SKIP, _FIELD, _RENAMED = 0, 1, 2
_key_kinds: dict[str, int | None] = {}


def _key_kind(key: str) -> int | None:
    if key.lower() in _SECRET_FIELDS:
        return None
    if key.startswith("log_") or key in _LEGACY_KEYS:
        return _SKIP
    return _RENAMED if key in _RESERVED else _FIELD


def _event_to_json(event: LogEvent) -> str:
    """Return the JSON text of one event, secrets hashed.

    An event without secret fields (nearly all) is written here, each key's
    treatment looked up once per key name; any other goes through
    ``_slow_event_to_json``, which gives the same text for these.
    """
    kinds = _key_kinds
    fields: dict[str, Any] = {}
    for key, value in event.items():
        try:
            kind = kinds[key]
        except (KeyError, TypeError):
            if type(key) is not str:
                return _slow_event_to_json(event)
            kind = _key_kind(key)
            if len(kinds) < _MAX_CACHED:
                kinds[key] = kind
        if kind is None:
            return _slow_event_to_json(event)
        if kind == _SKIP:
            continue
        fields[f"field_{key}" if kind == _RENAMED else key] = _json_safe(value, _MAX_DEPTH)
    record = _record_head(event, event)
    record.update(fields)
    return _encode_json(record)


def _record_head(event: LogEvent, formatted: LogEvent) -> dict[str, Any]:
    """The fixed fields of a JSON line: time, level, namespace, message (and traceback).

    The message is the event's pre-formatted text, else ``formatted`` (the
    event, or its copy with secrets hashed) rendered by Twisted.
    """
    text = event.get(TEXT_KEY)
    record: dict[str, Any] = {
        "time": _iso_time(event.get("log_time")),
        "level": _level_name(event.get("log_level")),
        "namespace": str(event.get("log_namespace", "")),
        "message": text if type(text) is str else formatEvent(formatted),
    }
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        if not record["message"]:
            record["message"] = failure.getErrorMessage()
        record["traceback"] = failure.getTraceback()
    return record


def _slow_event_to_json(event: LogEvent) -> str:
    """``_event_to_json`` for any event: secrets hashed, odd keys too."""
    hashed: dict[str, Any] = {}
    secrets: dict[str, str] = {}
    for key, value in event.items():
        if key.lower() in _SECRET_FIELDS:
            hashed[key] = _hash_value(value, secrets)
    safe_event = {**event, **hashed}

    record = _record_head(event, safe_event)
    for key, value in safe_event.items():
        if not isinstance(key, str) or key.startswith("log_") or key in _LEGACY_KEYS:
            continue
        out_key = f"field_{key}" if key in _RESERVED else key
        record[out_key] = _json_safe(value, _MAX_DEPTH)
    if secrets:
        record = {key: _scrub(value, secrets) for key, value in record.items()}
    return json.dumps(record, allow_nan=False, ensure_ascii=False)


def _hash_value(value: object, secrets: dict[str, str]) -> object:
    """Return ``value`` hashed (each item of a list), remembering raw -> hash."""
    if value is None:
        return None
    if isinstance(value, list | tuple | set | frozenset):
        return [_hash_value(item, secrets) for item in value]
    raw = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    digest = uaid_hash(raw)
    if len(raw) >= _MIN_SCRUB_LENGTH:
        secrets[raw] = digest
    return digest


def _scrub(value: Any, secrets: Mapping[str, str]) -> Any:
    """Replace every raw secret inside the strings of ``value`` by its hash."""
    if isinstance(value, str):
        for raw, digest in secrets.items():
            if raw in value:
                value = value.replace(raw, digest)
        return value
    if isinstance(value, list):
        return [_scrub(item, secrets) for item in value]
    if isinstance(value, dict):
        return {key: _scrub(item, secrets) for key, item in value.items()}
    return value


def _json_safe(value: object, depth: int) -> Any:
    """Return ``value`` as something ``json.dumps`` writes; ``repr`` the rest."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if depth > 0 and isinstance(value, list | tuple):
        return [_json_safe(item, depth - 1) for item in value]
    if depth > 0 and isinstance(value, dict):
        return {str(key): _json_safe(item, depth - 1) for key, item in value.items()}
    try:
        return repr(value)
    except Exception as e:
        return f"<unrepresentable {type(value).__name__}: {e!r}>"


def _iso_time(stamp: object) -> str:
    """Return the POSIX time ``stamp`` (or now) as ISO 8601 UTC with a ``Z``.

    The date and time of day are formatted once per second; the microseconds
    are rounded as ``datetime.fromtimestamp`` rounds them.
    """
    global _iso_second, _iso_prefix
    if type(stamp) is float and math.isfinite(stamp):
        fraction, whole = math.modf(stamp)
        micro = round(fraction * 1e6)
        if micro >= 1_000_000:
            whole, micro = whole + 1.0, micro - 1_000_000
        elif micro < 0:
            whole, micro = whole - 1.0, micro + 1_000_000
        if whole != _iso_second:
            _iso_prefix = datetime.fromtimestamp(whole, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
            _iso_second = whole
        return f"{_iso_prefix}.{micro:06d}Z"
    return _slow_iso_time(stamp)


_iso_second: float | None = None
_iso_prefix = ""


def _slow_iso_time(stamp: object) -> str:
    """``_iso_time`` by ``datetime`` alone."""
    moment = (
        datetime.fromtimestamp(stamp, tz=UTC)
        if isinstance(stamp, int | float)
        else datetime.now(tz=UTC)
    )
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _level_name(level: object) -> str:
    name = getattr(level, "name", None)
    return name if isinstance(name, str) else "info"
