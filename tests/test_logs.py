"""Tests for ``pushtwisted.logs``: JSON lines, hashed IDs, level filters."""

from __future__ import annotations

import io
import json
from datetime import datetime
from typing import Any

from twisted.logger import (
    ILogObserver,
    LogBeginner,
    LogEvent,
    Logger,
    LogLevel,
    LogPublisher,
    formatEvent,
)
from twisted.python.failure import Failure
from twisted.python.reflect import namedAny
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from pushtwisted.logs import (
    LOG_LEVELS,
    AccessLog,
    filter_observers_at_begin,
    filtered_observer,
    json_observer,
    make_log_filter,
    set_log_level,
    uaid_hash,
)

UAID = "0b5d8a2c-8a8e-4f2b-9d7e-3c1f00a1b2c3"
CHID = "c0ffee00c0ffee00c0ffee00c0ffee00"
TOKEN = "gAAAAABlZXRva2VuLXNlY3JldC10b2tlbg"


class _Unserialisable:
    def __repr__(self) -> str:
        return "<Unserialisable>"


class _BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class JsonObserverTests(SynchronousTestCase):
    """``json_observer`` writes one JSON object per event and never a raw ID."""

    def setUp(self) -> None:
        self.stream = io.StringIO()
        self.log = Logger(namespace="pushtwisted.test", observer=json_observer(self.stream))

    def lines(self) -> list[str]:
        """Return the lines written so far."""
        return self.stream.getvalue().splitlines()

    def records(self) -> list[dict[str, Any]]:
        """Return the lines written so far, parsed."""
        return [json.loads(line) for line in self.lines()]

    def test_provides_observer(self) -> None:
        """twistd gets an ``ILogObserver`` when it calls the named factory bare."""
        factory = namedAny("pushtwisted.logs.json_observer")
        self.assertTrue(verifyObject(ILogObserver, factory()))

    def test_basic_fields(self) -> None:
        """Time, level, namespace, formatted message and named fields are written."""
        self.log.info("hello accepted with {channels} channels", channels=3, ok=True)
        [record] = self.records()
        self.assertEqual(record["level"], "info")
        self.assertEqual(record["namespace"], "pushtwisted.test")
        self.assertEqual(record["message"], "hello accepted with 3 channels")
        self.assertEqual(record["channels"], 3)
        self.assertIs(record["ok"], True)
        stamp = datetime.fromisoformat(record["time"])
        self.assertEqual(stamp.utcoffset().total_seconds(), 0)  # type: ignore[union-attr]
        self.assertTrue(record["time"].endswith("Z"))
        self.assertFalse([key for key in record if key.startswith("log_")])

    def test_time(self) -> None:
        """``log_time`` is written as ISO 8601 UTC."""
        observer = json_observer(self.stream)
        observer(
            {
                "log_time": 86400.5,
                "log_level": LogLevel.warn,
                "log_namespace": "x",
                "log_format": "tick",
            }
        )
        [record] = self.records()
        self.assertEqual(record["time"], "1970-01-02T00:00:00.500000Z")
        self.assertEqual(record["level"], "warn")

    def test_secret_fields_hashed(self) -> None:
        """uaid, token, chid and channelID fields hold their hash, in any case."""
        self.log.info(
            "hello {uaid} on {channelID}",
            uaid=UAID,
            token=TOKEN,
            chid=CHID,
            channelID=CHID.upper(),
            channelIDs=[CHID, UAID],
            Token=TOKEN,
        )
        [line] = self.lines()
        for raw in (UAID, CHID, CHID.upper(), TOKEN):
            self.assertNotIn(raw, line)
        record = json.loads(line)
        self.assertEqual(record["uaid"], uaid_hash(UAID))
        self.assertEqual(record["token"], uaid_hash(TOKEN))
        self.assertEqual(record["Token"], uaid_hash(TOKEN))
        self.assertEqual(record["chid"], uaid_hash(CHID))
        self.assertEqual(record["channelID"], uaid_hash(CHID.upper()))
        self.assertEqual(record["channelIDs"], [uaid_hash(CHID), uaid_hash(UAID)])
        self.assertEqual(record["message"], f"hello {uaid_hash(UAID)} on {uaid_hash(CHID.upper())}")

    def test_secret_scrubbed_everywhere(self) -> None:
        """A raw secret elsewhere in the line (text, traceback) is replaced by its hash."""
        try:
            raise KeyError(f"no user {UAID}")
        except KeyError:
            self.log.failure("lookup failed for {who}", who=f"user {UAID}", uaid=UAID)
        [line] = self.lines()
        self.assertNotIn(UAID, line)
        record = json.loads(line)
        self.assertIn(uaid_hash(UAID), record["traceback"])
        self.assertEqual(record["who"], f"user {uaid_hash(UAID)}")

    def test_failure_traceback(self) -> None:
        """A failure is written as a ``traceback`` field; the level is critical."""
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            self.log.failure("storage call failed")
        [record] = self.records()
        self.assertEqual(record["message"], "storage call failed")
        self.assertEqual(record["level"], "critical")
        self.assertIn("ZeroDivisionError", record["traceback"])
        self.assertIn("Traceback", record["traceback"])

    def test_failure_without_format(self) -> None:
        """An event with only a failure gets the error message as its message."""
        observer = json_observer(self.stream)
        observer(
            {
                "log_level": LogLevel.error,
                "log_namespace": "x",
                "log_failure": Failure(ValueError("bad thing")),
            }
        )
        [record] = self.records()
        self.assertEqual(record["message"], "bad thing")
        self.assertIn("ValueError", record["traceback"])

    def test_json_safe(self) -> None:
        """Values JSON cannot hold are ``repr``'d; containers are kept."""
        self.log.info(
            "values",
            obj=_Unserialisable(),
            nan=float("nan"),
            nested={"a": [1, 2.5, None], 3: (b"x",)},
            bad=_BadRepr(),
        )
        [record] = self.records()
        self.assertEqual(record["obj"], "<Unserialisable>")
        self.assertEqual(record["nan"], "nan")
        self.assertEqual(record["nested"], {"a": [1, 2.5, None], "3": ["b'x'"]})
        self.assertIn("unrepresentable", record["bad"])

    def test_reserved_and_legacy_keys(self) -> None:
        """Legacy keys are dropped and clashing names are prefixed."""
        observer = json_observer(self.stream)
        observer(
            {
                "log_level": LogLevel.info,
                "log_namespace": "log_legacy",
                "log_format": "{log_text}",
                "log_text": "legacy text",
                "message": ("legacy text",),
                "isError": 0,
                "system": "-",
                "time": 1.0,
                "namespace": "mine",
                "traceback": "fake",
            }
        )
        [record] = self.records()
        self.assertEqual(record["message"], "legacy text")
        self.assertEqual(record["namespace"], "log_legacy")
        self.assertEqual(record["field_namespace"], "mine")
        self.assertEqual(record["field_traceback"], "fake")
        for key in ("isError", "system", "log_text"):
            self.assertNotIn(key, record)

    def test_one_line_per_event(self) -> None:
        """Newlines inside values never split an event over lines."""
        self.log.info("multi\nline {x}", x="a\nb")
        self.log.warn("second")
        self.assertEqual(len(self.lines()), 2)
        self.assertEqual(self.records()[0]["message"], "multi\nline a\nb")


class LevelTests(SynchronousTestCase):
    """Level names, filters and the process-wide level of ``json_observer()``."""

    def setUp(self) -> None:
        self.addCleanup(set_log_level, "info")

    def emit_all(self, observer: ILogObserver) -> None:
        """Emit one event at each level to ``observer``."""
        log = Logger(namespace="pushtwisted.test", observer=observer)
        log.debug("debug")
        log.info("info")
        log.warn("warn")
        log.error("error")
        log.critical("critical")

    def test_json_observer_level(self) -> None:
        """``level`` drops the events below it."""
        stream = io.StringIO()
        self.emit_all(json_observer(stream, level="warn"))
        levels = [json.loads(line)["level"] for line in stream.getvalue().splitlines()]
        self.assertEqual(levels, ["warn", "error", "critical"])

    def test_process_level(self) -> None:
        """Without ``level``, the process level applies, even when set afterwards."""
        stream = io.StringIO()
        observer = json_observer(stream)
        self.emit_all(observer)
        set_log_level("error")
        self.emit_all(observer)
        set_log_level("DEBUG")
        self.emit_all(observer)
        levels = [json.loads(line)["level"] for line in stream.getvalue().splitlines()]
        self.assertEqual(
            levels,
            ["info", "warn", "error", "critical"]
            + ["error", "critical"]
            + ["debug", "info", "warn", "error", "critical"],
        )

    def test_filtered_observer(self) -> None:
        """``filtered_observer`` wraps any observer; ``warning`` means ``warn``."""
        seen: list[LogEvent] = []
        self.emit_all(filtered_observer(seen.append, "WARNING"))
        self.assertEqual([e["log_format"] for e in seen], ["warn", "error", "critical"])

    def test_make_log_filter(self) -> None:
        """``make_log_filter`` returns a predicate for ``FilteringLogObserver``."""
        predicate = make_log_filter("error")
        event = {"log_level": LogLevel.warn, "log_namespace": "x"}
        self.assertEqual(predicate(event).name, "no")
        event["log_level"] = LogLevel.critical
        self.assertEqual(predicate(event).name, "maybe")

    def test_unknown_level(self) -> None:
        """An unknown level raises ValueError naming the valid ones."""
        for call in (make_log_filter, set_log_level):
            with self.assertRaises(ValueError) as ctx:
                call("verbose")
            for name in LOG_LEVELS:
                self.assertIn(name, str(ctx.exception))
        with self.assertRaises(ValueError):
            json_observer(io.StringIO(), level="loud")


class ProcessLevelTests(SynchronousTestCase):
    """``logs.logger()`` events honour the process level whatever the observer."""

    def test_debug_dropped_at_info_reaches_observer_at_debug(self) -> None:
        """At level info a debug event never reaches a global observer; at debug it does."""
        from twisted.logger import globalLogPublisher

        from pushtwisted.logs import logger, set_log_level

        seen: list[dict[str, object]] = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        self.addCleanup(set_log_level, "info")
        log = logger()
        set_log_level("info")
        log.debug("hidden {n}", n=1)
        log.info("shown {n}", n=2)
        set_log_level("debug")
        log.debug("now shown {n}", n=3)
        self.assertEqual([e.get("n") for e in seen], [2, 3])


class AccessLogTests(SynchronousTestCase):
    """``AccessLog`` writes pre-formatted info lines, only when info is let through."""

    def setUp(self) -> None:
        self.addCleanup(set_log_level, "info")
        self.seen: list[LogEvent] = []
        self.access = AccessLog("pushtwisted.web.test", self.seen.append)

    def test_line_is_the_text_with_its_fields(self) -> None:
        """The event's text is exactly the given text (braces too), at info, in the
        namespace, with the named fields."""
        self.assertTrue(self.access.enabled)
        self.access.line("GET /{x} 200 {}", method="GET", status=200)
        [event] = self.seen
        self.assertEqual(formatEvent(event), "GET /{x} 200 {}")
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertEqual(event["log_namespace"], "pushtwisted.web.test")
        self.assertEqual((event["method"], event["status"]), ("GET", 200))
        self.assertIsInstance(event["log_time"], float)

    def test_json_line(self) -> None:
        """Through ``json_observer`` the line is the message and the fields are keys."""
        stream = io.StringIO()
        access = AccessLog("pushtwisted.web.test", json_observer(stream))
        access.line("PUT /update/ 202 in 0.5s abc", status=202, uaid_hash="abc")
        record = json.loads(stream.getvalue())
        self.assertEqual(record["message"], "PUT /update/ 202 in 0.5s abc")
        self.assertEqual(
            (record["level"], record["status"], record["uaid_hash"]), ("info", 202, "abc")
        )

    def test_enabled_follows_the_process_level(self) -> None:
        """Above info nothing should be built; back at info or debug it is on again."""
        set_log_level("warn")
        self.assertFalse(self.access.enabled)
        set_log_level("debug")
        self.assertTrue(self.access.enabled)
        set_log_level("error")
        self.assertFalse(self.access.enabled)
        set_log_level("info")
        self.assertTrue(self.access.enabled)


class _Warnings:
    """Stands in for the ``warnings`` module of a ``LogBeginner``."""

    def showwarning(self, *args: object, **kwargs: object) -> None:
        """Ignore the warning."""


class _Stdio:
    """Stands in for ``sys`` (``stdout``/``stderr``) of a ``LogBeginner``."""

    def __init__(self) -> None:
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()


class BeginFilterTests(SynchronousTestCase):
    """``filter_observers_at_begin`` puts the process level before twistd's observers."""

    def setUp(self) -> None:
        self.addCleanup(set_log_level, "info")
        self.publisher = LogPublisher()
        self.beginner = LogBeginner(self.publisher, io.StringIO(), _Stdio(), _Warnings())
        self.log = Logger(namespace="twisted.web.server", observer=self.publisher)

    def test_every_namespace_filtered(self) -> None:
        """Events of any namespace below the level never reach the observer, including
        those logged before logging began; those at or above it do."""
        set_log_level("warn")
        filter_observers_at_begin(self.beginner)
        self.log.info("buffered info")
        self.log.warn("buffered warn")
        seen: list[LogEvent] = []
        self.beginner.beginLoggingTo([seen.append], redirectStandardIO=False)
        self.log.debug("debug")
        self.log.info("Site starting on 8080")
        self.log.error("error")
        self.assertEqual([e["log_format"] for e in seen], ["buffered warn", "error"])

    def test_level_set_afterwards_applies(self) -> None:
        """The filter follows the process level as it changes."""
        filter_observers_at_begin(self.beginner)
        seen: list[LogEvent] = []
        self.beginner.beginLoggingTo([seen.append], redirectStandardIO=False)
        self.log.info("one")
        set_log_level("error")
        self.log.info("two")
        self.assertEqual([e["log_format"] for e in seen], ["one"])

    def test_only_the_next_call(self) -> None:
        """The call after the wrapped one is Twisted's own again."""
        set_log_level("error")
        filter_observers_at_begin(self.beginner)
        first: list[LogEvent] = []
        second: list[LogEvent] = []
        self.beginner.beginLoggingTo([first.append], redirectStandardIO=False)
        self.beginner.beginLoggingTo([second.append], redirectStandardIO=False)
        self.log.info("info")
        self.assertEqual([e["log_format"] for e in first], [])
        self.assertIn("info", [e.get("log_format") for e in second])

    def test_without_it_every_level_passes(self) -> None:
        """Control: an observer begun without the filter sees info at level error."""
        set_log_level("error")
        seen: list[LogEvent] = []
        self.beginner.beginLoggingTo([seen.append], redirectStandardIO=False)
        self.log.info("info")
        self.assertEqual([e["log_format"] for e in seen], ["info"])
