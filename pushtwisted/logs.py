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
  (``log_pushtwisted_text``), so it is not parsed as a format string again
  (``pushtwisted._logwrite`` holds these observers);
- writes are buffered and flushed once per reactor turn, instead of a
  ``flush()`` (one ``write`` system call) per event: at once when the
  reactor is not running or the event comes from another thread, when the
  buffer holds ``BUFFER_LIMIT`` characters, after the reactor's shutdown
  (SIGTERM included) and at exit.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
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
    globalLogBeginner,
    globalLogPublisher,
    textFileLogObserver,
)
from zope.interface import implementer

from pushtwisted._logwrite import (
    BUFFER_LIMIT,
    JsonLineObserver,
    fast_text_file_observer,
    flush_all,
    uaid_hash,
)
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
    "level_enabled",
    "make_log_filter",
    "set_log_level",
    "logger",
    "text_observer",
    "uaid_hash",
]

#: Level names accepted by ``make_log_filter`` and ``set_log_level``.
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warn", "error", "critical")
_ALIASES = {"warning": "warn"}


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


def level_enabled(namespace: str, level: LogLevel) -> bool:
    """True when the process level lets ``namespace``'s events at ``level`` through.

    For a hot path whose event costs work to build (a hash, a ``Logger``
    bound per access): skip it when it would be dropped anyway.
    """
    verdict = _process_filter({"log_namespace": namespace, "log_level": level})
    return verdict is not PredicateResult.no


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
            log_pushtwisted_text=text,  # TEXT_KEY
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
    return _Filtered(JsonLineObserver(_output(stream)), predicate)


def text_observer(stream: IO[str] | None = None) -> ILogObserver:
    """Return Twisted's text lines, filtered by the process level.

    For ``twistd --logger pushtwisted.logs.text_observer``: the familiar text
    lines, but honouring ``[server] log_level`` (twistd's default observer
    writes every level, debug included).  The lines are those of
    ``textFileLogObserver``, written by ``fast_text_file_observer``.
    """
    return _Filtered(fast_text_file_observer(_output(stream)), _process_filter)


def _output(stream: IO[str] | None) -> IO[str]:
    """Return ``stream``, or the real standard output (never a ``LoggingFile``)."""
    if stream is not None:
        return stream
    if isinstance(sys.stdout, LoggingFile) and sys.__stdout__ is not None:
        return sys.__stdout__
    return sys.stdout
