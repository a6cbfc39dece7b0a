"""Logging: JSON lines for production, a level filter, and no raw IDs.

``json_observer`` is the observer factory for twistd::

    twistd -n --logger=pushtwisted.logs.json_observer simplepush --config ...

twistd imports the named object and calls it with no arguments; the result
is a ``twisted.logger.ILogObserver`` that writes one JSON object per line on
stdout:

- ``time``: ISO 8601 in UTC (``2024-05-01T12:00:00.123456Z``);
- ``level``: ``debug``, ``info``, ``warn``, ``error`` or ``critical``;
- ``namespace``: the emitting ``Logger``'s namespace;
- ``message``: the event formatted with ``formatEvent``;
- the event's own named fields, made JSON-safe (anything JSON cannot hold
  is ``repr``'d).  Twisted's ``log_*`` keys and the keys of legacy
  ``twisted.python.log`` events (``message``, ``format``, ``time``,
  ``system``, ``isError``, ``failure``, ``why``, ``logLevel``) are dropped,
  so do not use those names for fields; a field named ``namespace`` or
  ``traceback`` is written as ``field_<name>``;
- ``traceback``: the failure's traceback, when the event carries one.

**No raw UAIDs or tokens.**  A field named ``uaid``, ``token``, ``chid``,
``channelID``, ``channel_id`` or ``endpoint`` (any case; also the plural
``channelIDs``/``chids``) is replaced by its ``uaid_hash`` before the message
is formatted, so a ``{uaid}`` in a format string shows the hash too; any
other text of the line (message, traceback, other string fields) that
contains one of those raw values gets it replaced by the hash as well.
Log the hash yourself (``uaid_hash=uaid_hash(uaid)``) where you can.

**Levels.**  ``json_observer()`` drops events below the process log level,
``info`` by default; ``set_log_level("debug")`` (called by the service maker
from ``[server] log_level``) changes it, before or after twistd built the
observer.  ``make_log_filter`` and ``filtered_observer`` do the same for any
other observer.  ``filter_observers_at_begin()`` (also called by the service
maker) puts the process level in front of the observers twistd starts
logging to, so that it applies to every event, Twisted's and Autobahn's
included, whichever observer twistd was given (its default text one too).

**Cost per line.**  The observers of this module (``json_observer``,
``text_observer``, and twistd's default text observer, which
``filter_observers_at_begin`` has twistd build here instead of in
``twisted.logger``) write exactly the bytes Twisted's would, more cheaply:

- the timestamp is formatted once per second (Twisted's ``formatTime``
  output, local time zone included; ISO 8601 UTC for JSON), the
  ``[namespace#level]`` system field once per namespace and level;
- an ``AccessLog`` line carries its text already formatted
  (``log_pushtwisted_text``), so it is not parsed as a format string again;
- writes are buffered and flushed once per reactor turn, instead of a
  ``flush()`` (one ``write`` system call) per event: at once when the
  reactor is not running or the event comes from another thread, when the
  buffer holds ``BUFFER_LIMIT`` characters, after the reactor's shutdown
  (SIGTERM included) and at exit.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import math
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import (
    ILogFilterPredicate,
    ILogObserver,
    LogBeginner,
    LogEvent,
    Logger,
    LoggingFile,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEvent,
    globalLogBeginner,
    globalLogPublisher,
    textFileLogObserver,
    timeFormatRFC3339,
)
from twisted.logger import formatEventAsClassicLogText as _classic_text
from twisted.logger import formatTime as _format_time
from twisted.python import threadable
from twisted.python.compat import ioType
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted import logger as _twisted_logger

__all__ = [
    "BUFFER_LIMIT",
    "LOG_LEVELS",
    "AccessLog",
    "fast_text_file_observer",
    "filter_observers_at_begin",
    "filtered_observer",
    "flush_all",
    "json_observer",
    "make_log_filter",
    "set_log_level",
    "logger",
    "text_observer",
    "uaid_hash",
]

#: Level names accepted by ``make_log_filter`` and ``set_log_level``.
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warn", "error", "critical")
_ALIASES = {"warning": "warn"}

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


def _level(name: str) -> LogLevel:
    """Return the ``LogLevel`` called ``name`` or raise ValueError naming the valid ones."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in LOG_LEVELS:
        raise ValueError(f"unknown log level {name!r}; valid levels: {', '.join(LOG_LEVELS)}")
    level: LogLevel = LogLevel.levelWithName(key)
    return level


def make_log_filter(level: str) -> ILogFilterPredicate:
    """Return a predicate passing events at ``level`` or above.

    :param level: one of ``LOG_LEVELS`` (any case; ``warning`` means ``warn``).
    :raises ValueError: for an unknown level, naming the valid ones.
    """
    return LogLevelFilterPredicate(defaultLogLevel=_level(level))


def filtered_observer(observer: ILogObserver, level: str) -> ILogObserver:
    """Wrap ``observer`` so it only sees events at ``level`` or above.

    :raises ValueError: for an unknown level.
    """
    return _Filtered(observer, make_log_filter(level))


@implementer(ILogObserver)
class _Filtered:
    """``FilteringLogObserver(observer, [predicate])``: the same verdicts (an event
    goes on unless ``predicate`` says ``no``), without its per-event generator."""

    def __init__(self, observer: ILogObserver, predicate: ILogFilterPredicate) -> None:
        self._observer = observer
        self._predicate = predicate

    def __call__(self, event: LogEvent) -> None:
        if self._predicate(event) is PredicateResult.no:
            return
        if "log_trace" in event:
            event["log_trace"].append((self, self._observer))
        self._observer(event)


class _LevelPredicate(LogLevelFilterPredicate):
    """Twisted's level predicate, deciding each (namespace, level) once.

    Twisted's walks the dotted namespace and compares levels on every event;
    this keeps each verdict until a level is set again (at most
    ``_MAX_VERDICTS`` of them).
    """

    def __init__(self, defaultLogLevel: Any = LogLevel.info) -> None:
        self._verdicts: dict[tuple[object, object], Any] = {}
        super().__init__(defaultLogLevel)

    def __call__(self, event: LogEvent) -> Any:
        key = (event.get("log_namespace", ""), event.get("log_level", None))
        try:
            return self._verdicts[key]
        except (KeyError, TypeError):  # TypeError: an unhashable level
            pass
        verdict = super().__call__(event)
        if len(self._verdicts) < _MAX_VERDICTS:
            try:
                self._verdicts[key] = verdict
            except TypeError:
                pass
        return verdict

    def setLogLevelForNamespace(self, namespace: str, level: Any) -> None:
        """Set ``namespace``'s level and forget every verdict."""
        super().setLogLevelForNamespace(namespace, level)
        self._verdicts.clear()

    def clearLogLevels(self) -> None:
        """Reset every level to the default and forget every verdict."""
        super().clearLogLevels()
        self._verdicts.clear()


_MAX_VERDICTS = 4096

#: The process-wide level of ``json_observer()``; see ``set_log_level``.
_process_filter = _LevelPredicate(defaultLogLevel=LogLevel.info)
#: Bumped by ``set_log_level``: tells ``AccessLog`` to look at the level again.
_level_changes = 0


#: Every pushtwisted event goes through the process level before it reaches
#: any observer (twistd's default text observer writes every level).
_filtered_publisher = _Filtered(globalLogPublisher, _process_filter)


def logger() -> Logger:
    """Return a ``Logger`` (use as a class attribute) that honours ``set_log_level``.

    Events below the process level are dropped before any observer sees
    them, whichever observer twistd was given (``--logger`` or its default).
    """
    return Logger(observer=_filtered_publisher)


def set_log_level(level: str) -> None:
    """Set the level of every observer made by ``json_observer()`` without ``level``.

    twistd builds the ``--logger`` observer with no arguments, so the level
    from the configuration reaches it through this process-wide setting.

    :raises ValueError: for an unknown level.
    """
    global _level_changes
    _process_filter.setLogLevelForNamespace("", _level(level))
    _level_changes += 1


class AccessLog:
    """The access line of a busy listener: one pre-formatted info event per request.

    ::

        if access.enabled:
            access.line(f"{method} /update/ {status}", method=method, status=status)

    :param namespace: the events' namespace (that of the resource's logger).
    :param observer: where events go; Twisted's global publisher by default.
    """

    def __init__(self, namespace: str, observer: ILogObserver | None = None) -> None:
        self.namespace = namespace
        self._observer = globalLogPublisher if observer is None else observer
        self._logger = Logger(namespace=namespace, observer=self._observer)
        self._seen_changes = -1
        self._enabled = True

    @property
    def enabled(self) -> bool:
        """True when the process level lets this namespace's info events through."""
        if self._seen_changes != _level_changes:
            level = _process_filter.logLevelForNamespace(self.namespace)
            self._enabled = bool(LogLevel.info >= level)
            self._seen_changes = _level_changes
        return self._enabled

    def line(self, text: str, **fields: object) -> None:
        """Emit ``text`` (already formatted) as an info event carrying ``fields``.

        Call it only when ``enabled``; ``text`` is written as it is (its
        braces are escaped), ``fields`` are the event's named fields.
        """
        fields.update(
            log_logger=self._logger,
            log_level=LogLevel.info,
            log_namespace=self.namespace,
            log_source=None,
            log_format=text.replace("{", "{{").replace("}", "}}"),
            log_pushtwisted_text=text,
            log_time=time.time(),
        )
        self._observer(fields)


def filter_observers_at_begin(beginner: LogBeginner | None = None) -> None:
    """Make the observers ``beginner`` begins logging to next honour the process level.

    twistd builds its observer (``--logger``, ``--logfile`` or its default
    text one, which writes every level) after the service maker ran, and
    hands it to ``globalLogBeginner.beginLoggingTo``.  This wraps that one
    call so that each observer it is given is behind the process-level
    filter (see ``set_log_level``); the call after it is not wrapped.

    Until that call, ``twisted.logger.textFileLogObserver`` (which twistd
    looks up when it builds its default observer, on standard output or
    on ``--logfile``) is this module's ``fast_text_file_observer``: the same
    lines, formatted and written at a lower cost (see the module docstring).

    :param beginner: by default Twisted's global ``LogBeginner``.
    """
    target = globalLogBeginner if beginner is None else beginner
    begin = target.beginLoggingTo
    setattr(_twisted_logger, "textFileLogObserver", fast_text_file_observer)  # noqa: B010

    def begin_filtered(
        observers: Iterable[ILogObserver],
        discardBuffer: bool = False,  # Twisted's keyword names
        redirectStandardIO: bool = True,
    ) -> None:
        vars(target).pop("beginLoggingTo", None)  # once: back to the class's method
        if _twisted_logger.textFileLogObserver is fast_text_file_observer:
            setattr(_twisted_logger, "textFileLogObserver", textFileLogObserver)  # noqa: B010
        begin(
            [_Filtered(observer, _process_filter) for observer in observers],
            discardBuffer=discardBuffer,
            redirectStandardIO=redirectStandardIO,
        )

    setattr(target, "beginLoggingTo", begin_filtered)  # noqa: B010 - mypy: no method assignment


def json_observer(stream: IO[str] | None = None, *, level: str | None = None) -> ILogObserver:
    """Return an observer writing each event as one JSON line (see the module docstring).

    :param stream: where to write; by default the process's standard output
        as it is now (twistd calls this before it redirects ``sys.stdout``
        into the log, which would otherwise loop).
    :param level: the lowest level written; by default the process level set
        with ``set_log_level`` (``info`` until then).
    :raises ValueError: for an unknown level.
    """
    predicate = _process_filter if level is None else make_log_filter(level)
    return _Filtered(_JsonLineObserver(_output(stream)), predicate)


def text_observer(stream: IO[str] | None = None) -> ILogObserver:
    """Return Twisted's text lines, filtered by the process level.

    For ``twistd --logger pushtwisted.logs.text_observer``: the familiar text
    lines, but honouring ``[server] log_level`` (twistd's default observer
    writes every level, debug included).  The lines are those of
    ``textFileLogObserver``, written by ``fast_text_file_observer``.
    """
    return _Filtered(fast_text_file_observer(_output(stream)), _process_filter)


def fast_text_file_observer(
    outFile: IO[Any], timeFormat: str | None = timeFormatRFC3339
) -> ILogObserver:
    """Return an observer writing what ``twisted.logger.textFileLogObserver`` writes.

    Byte for byte the same lines, at a lower cost per line: the timestamp
    formatted once per second, the system field once per namespace and
    level, and the writes flushed once per reactor turn (see the module
    docstring).  Same arguments as Twisted's.
    """
    return _TextLineObserver(_TurnBuffer(outFile), _TextFormatter(timeFormat))


#: Characters buffered before a write, whatever the reactor does.
BUFFER_LIMIT = 64 * 1024
#: The event key of ``AccessLog``'s text, already formatted.
_TEXT_KEY = "log_pushtwisted_text"
#: Fractions of a second past this may round up to the next second.
_LAST_SAFE_FRACTION = 0.9999995

_buffers: weakref.WeakSet[_TurnBuffer] = weakref.WeakSet()


def flush_all() -> None:
    """Write out what every observer of this module has buffered (at exit)."""
    for buffer in list(_buffers):
        buffer.flush()


atexit.register(flush_all)


class _TurnBuffer:
    """Text for one stream, written and flushed once per reactor turn.

    Written at once (the buffer first) when the reactor is not running, the
    caller is not the reactor thread, or ``BUFFER_LIMIT`` characters are
    waiting; otherwise at the end of the turn (``callLater(0)``), after the
    reactor's shutdown, and at exit.  A write made by the stream itself
    while it is being written (a redirected standard output) is dropped.

    :param reactor: the reactor whose turns are followed; by default the one
        installed when the first line comes (none installed: written at once).
    :param in_reactor_thread: says whether the caller is the reactor's
        thread; Twisted's ``isInIOThread`` by default.
    """

    def __init__(
        self,
        stream: IO[Any],
        reactor: Any = None,
        in_reactor_thread: Callable[[], bool] = threadable.isInIOThread,
    ) -> None:
        self._stream = stream
        self._encoding = "utf-8" if ioType(stream) is not str else None  # type: ignore[no-untyped-call]
        self._reactor = reactor
        self._in_reactor_thread = in_reactor_thread
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


class _TextFormatter:
    """``textFileLogObserver``'s line of an event, with the repeated parts cached."""

    def __init__(self, time_format: str | None) -> None:
        self._time_format = time_format
        self._second: float | None = None
        self._stamp = ""
        self._systems: dict[tuple[object, object], str] = {}

    def time(self, when: float | None) -> str:
        """Return ``formatTime(when, time_format)``, formatted once per second."""
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
        if len(self._systems) < _MAX_VERDICTS:
            self._systems[key] = system
        return system

    def __call__(self, event: LogEvent) -> str | None:
        """Return the event's line, as ``formatEventAsClassicLogText`` does."""
        if "log_failure" in event or "log_system" in event:
            return _classic_text(event, formatTime=self.time)
        text = event.get(_TEXT_KEY)
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
class _TextLineObserver:
    """Write each event's text line (``_TextFormatter``) through a ``_TurnBuffer``."""

    def __init__(self, buffer: _TurnBuffer, format_event: _TextFormatter) -> None:
        self._buffer = buffer
        self.formatEvent = format_event

    def __call__(self, event: LogEvent) -> None:
        text = self.formatEvent(event)
        if text:
            self._buffer.write(text)

    def flush(self) -> None:
        """Write out what is buffered."""
        self._buffer.flush()


def _output(stream: IO[str] | None) -> IO[str]:
    """Return ``stream``, or the real standard output (never a ``LoggingFile``)."""
    if stream is not None:
        return stream
    if isinstance(sys.stdout, LoggingFile) and sys.__stdout__ is not None:
        return sys.__stdout__
    return sys.stdout


@implementer(ILogObserver)
class _JsonLineObserver:
    """Write each event as one JSON object and a newline (through a ``_TurnBuffer``)."""

    def __init__(self, stream: IO[str]) -> None:
        self._buffer = _TurnBuffer(stream)

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
            if len(kinds) < _MAX_VERDICTS:
                kinds[key] = kind
        if kind is None:
            return _slow_event_to_json(event)
        if kind == _SKIP:
            continue
        fields[f"field_{key}" if kind == _RENAMED else key] = _json_safe(value, _MAX_DEPTH)
    text = event.get(_TEXT_KEY)
    record: dict[str, Any] = {
        "time": _iso_time(event.get("log_time")),
        "level": _level_name(event.get("log_level")),
        "namespace": str(event.get("log_namespace", "")),
        "message": text if type(text) is str else formatEvent(event),
    }
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        if not record["message"]:
            record["message"] = failure.getErrorMessage()
        record["traceback"] = failure.getTraceback()
    record.update(fields)
    return _encode_json(record)


def _slow_event_to_json(event: LogEvent) -> str:
    """``_event_to_json`` for any event: secrets hashed, odd keys too."""
    hashed: dict[str, Any] = {}
    secrets: dict[str, str] = {}
    for key, value in event.items():
        if key.lower() in _SECRET_FIELDS:
            hashed[key] = _hash_value(value, secrets)
    safe_event = {**event, **hashed}

    text = event.get(_TEXT_KEY)
    record: dict[str, Any] = {
        "time": _iso_time(event.get("log_time")),
        "level": _level_name(event.get("log_level")),
        "namespace": str(event.get("log_namespace", "")),
        "message": text if type(text) is str else formatEvent(safe_event),
    }
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        if not record["message"]:
            record["message"] = failure.getErrorMessage()
        record["traceback"] = failure.getTraceback()
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
