"""Tests for ``pushtwisted.logs``: JSON lines, hashed IDs, level filters."""

from __future__ import annotations

import io
import json
import math
import os
import random
import subprocess
import sys
import threading
import time
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any
from unittest import SkipTest

from twisted.internet.task import Clock
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogBeginner,
    LogEvent,
    Logger,
    LogLevel,
    LogPublisher,
    formatEvent,
    formatTime,
    textFileLogObserver,
    timeFormatRFC3339,
)
from twisted.python import threadable
from twisted.python.failure import Failure
from twisted.python.reflect import namedAny
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from pushtwisted._logwrite import (
    TextFormatter,
    TextLineObserver,
    TurnBuffer,
    _event_to_json,
    _iso_time,
    _slow_event_to_json,
    _slow_iso_time,
    in_io_thread,
)
from pushtwisted.logs import (
    BUFFER_LIMIT,
    LOG_LEVELS,
    AccessLog,
    _Filtered,
    fast_text_file_observer,
    filter_observers_at_begin,
    filtered_observer,
    flush_all,
    json_observer,
    level_enabled,
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

    def test_level_enabled(self) -> None:
        """``level_enabled`` follows the process level, per namespace and level."""
        self.assertFalse(level_enabled("pushtwisted.test", LogLevel.debug))
        self.assertTrue(level_enabled("pushtwisted.test", LogLevel.info))
        set_log_level("debug")
        self.assertTrue(level_enabled("pushtwisted.test", LogLevel.debug))
        set_log_level("error")
        self.assertFalse(level_enabled("pushtwisted.test", LogLevel.warn))
        self.assertTrue(level_enabled("pushtwisted.test", LogLevel.critical))

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


_DST_SCRIPT = """
import json, sys
from twisted.logger import formatTime, timeFormatRFC3339
from pushtwisted._logwrite import TextFormatter
instants = json.loads(sys.argv[1])
fast = TextFormatter(timeFormatRFC3339)
print(json.dumps([[fast.time(t), formatTime(t)] for t in instants]))
"""

#: Instants around the 2024 (and 2025) changes of the zones tested.
_TRANSITIONS = {
    "Europe/Paris": [1711846800, 1729990800],
    "America/New_York": [1710054000, 1730613600],
    "Australia/Lord_Howe": [1712415600, 1727971200],
    "America/St_Johns": [1710048600, 1730608200],
    "UTC": [1735689600],
}


def _instants_around(moment: float) -> list[float]:
    """Instants from 3 s before to 3 s after ``moment``, fractions near the edges too."""
    out: list[float] = []
    for second in range(-3, 4):
        for fraction in (0.0, 0.000001, 0.25, 0.5, 0.9999994, 0.9999995, 0.9999996, 0.999999):
            out.append(moment + second + fraction)
    return out


class FastTextTests(SynchronousTestCase):
    """``fast_text_file_observer`` writes byte for byte what Twisted's text observer does."""

    def events(self) -> list[LogEvent]:
        """A mix of events: plain, pre-formatted, legacy, failures, odd ones."""
        publisher = LogPublisher()
        seen: list[LogEvent] = []
        publisher.addObserver(seen.append)
        log = Logger(namespace="pushtwisted.test", observer=publisher)
        log.info("plain {n}", n=1)
        log.debug("debug line")
        log.warn("two\nlines {x!r}", x="y")
        log.error("{missing} key")
        log.info("")
        log.failure("it failed {n}", Failure(ZeroDivisionError("boom")), n=2)
        access = AccessLog("pushtwisted.web.access", publisher)
        access.line("PUT /update/ 202 in 0.5s {abc}", status=202)
        access.line("PUT /update/ 200 in 0.001s", status=200)
        base = seen[0]["log_time"]
        seen.extend(
            [
                {"log_format": "no time", "log_namespace": "n", "log_level": LogLevel.info},
                {"log_format": "legacy", "log_system": "-", "log_time": base},
                {"log_format": "system {x}", "log_system": 42, "log_time": base, "x": 1},
                {"log_format": "no namespace", "log_time": base},
                {"log_format": "none level", "log_time": base, "log_level": None},
                {"message": ("no format",), "log_time": base},
                {"log_format": "unhashable", "log_namespace": ["x"], "log_time": base},
                {"log_format": "late in the second", "log_time": math.floor(base) + 0.9999997},
                {"log_format": "nan time", "log_time": float("nan")},
            ]
        )
        for offset in (0.1, 0.5, 1.0, 1.6, 3600.0, -86400.0 * 180):
            event = dict(seen[0])
            event["log_time"] = base + offset
            seen.append(event)
        return seen

    def render(self, factory: Any, events: list[LogEvent]) -> str:
        stream = io.StringIO()
        observer = factory(stream)
        for event in events:
            try:
                observer(event)
            except Exception as e:
                stream.write(f"raised {type(e).__name__}\n")
        return stream.getvalue()

    def test_same_bytes_as_twisted(self) -> None:
        """Every event of the mix gives the same text as ``textFileLogObserver``."""
        events = self.events()
        expected = self.render(textFileLogObserver, events)
        self.assertEqual(self.render(fast_text_file_observer, events), expected)
        self.assertIn("Traceback", expected)
        self.assertIn("[pushtwisted.web.access#info] PUT /update/ 202 in 0.5s {abc}\n", expected)

    def test_same_bytes_on_a_binary_stream(self) -> None:
        """A byte stream gets the UTF-8 of the same text, as Twisted writes it."""
        event = {"log_format": "caf\u00e9", "log_time": 1.5e9, "log_namespace": "n"}
        ours, theirs = io.BytesIO(), io.BytesIO()
        fast_text_file_observer(ours)(event)
        textFileLogObserver(theirs)(event)
        self.assertEqual(ours.getvalue(), theirs.getvalue())

    def test_time_format_none_and_other_formats(self) -> None:
        """Other time formats (``%f`` too) and none at all give Twisted's text."""
        events = self.events()[:3]
        for time_format in (None, "%Y/%W", "%H:%M:%S.%f"):
            self.assertEqual(
                self.render(partial(fast_text_file_observer, timeFormat=time_format), events),
                self.render(partial(textFileLogObserver, timeFormat=time_format), events),
            )

    def test_time_at_many_instants(self) -> None:
        """The cached timestamp is ``formatTime``'s at thousands of instants, in order
        and out of order, fractions next to the second's end included."""
        formatter = TextFormatter(timeFormatRFC3339)
        rng = random.Random(13)
        now = time.time()
        instants = [now + i * 0.137 for i in range(2000)]
        instants += [now + rng.uniform(-4e7, 4e7) for _ in range(2000)]
        for moment in (now, 0.0, 1e9, 2**31 + 0.5):
            instants += _instants_around(moment)
        for moment in instants:
            self.assertEqual(formatter.time(moment), formatTime(moment), moment)
        self.assertEqual(formatter.time(None), "-")

    def test_time_across_daylight_saving_changes(self) -> None:
        """In zones with daylight saving (a half-hour one too), around each change,
        the cached timestamp is ``formatTime``'s (a process per ``TZ``)."""
        checked = 0
        for zone, moments in _TRANSITIONS.items():
            if zone != "UTC" and not Path("/usr/share/zoneinfo", zone).exists():
                continue
            instants = [t for moment in moments for t in _instants_around(moment)]
            env = {**os.environ, "TZ": zone, "PYTHONPATH": os.pathsep.join(sys.path)}
            result = subprocess.run(
                [sys.executable, "-c", _DST_SCRIPT, json.dumps(instants)],
                capture_output=True,
                env=env,
                check=True,
                text=True,
                timeout=60,
            )
            pairs = json.loads(result.stdout)
            for (ours, theirs), moment in zip(pairs, instants, strict=True):
                self.assertEqual(ours, theirs, f"{zone} at {moment}")
            offsets = {theirs[-5:] for _, theirs in pairs}
            if zone != "UTC":
                self.assertEqual(len(offsets), 2, f"{zone}: no change seen: {offsets}")
            checked += 1
        if checked < 2:
            raise SkipTest("no time zone data")

    def test_iso_time_at_many_instants(self) -> None:
        """The JSON time is ``datetime``'s at many instants, microsecond rounding included."""
        rng = random.Random(31)
        now = time.time()
        instants = [now + i * 0.0731 for i in range(2000)]
        instants += [rng.uniform(-2e9, 4e9) for _ in range(2000)]
        for moment in (now, 0.0, -1.0, 1e9, 1.7e9):
            instants += _instants_around(moment)
            instants += [moment + 0.0000005, moment - 0.0000005, moment + 0.9999985]
        for moment in instants:
            self.assertEqual(_iso_time(moment), _slow_iso_time(moment), moment)
        self.assertEqual(_iso_time(7), _slow_iso_time(7))


class _FakeReactor(Clock):
    """A ``Clock`` that says it is running and records its system event triggers."""

    running = True

    def __init__(self) -> None:
        super().__init__()
        self.triggers: list[tuple[str, str, Any]] = []

    def addSystemEventTrigger(self, phase: str, event: str, call: Any) -> None:
        self.triggers.append((phase, event, call))


class _CountingStream(io.StringIO):
    """A text stream that counts its writes and flushes."""

    writes = 0
    flushes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1


class TurnBufferTests(SynchronousTestCase):
    """Writes are flushed once per reactor turn, bounded, and never lost."""

    def setUp(self) -> None:
        self.reactor = _FakeReactor()
        self.stream = _CountingStream()
        self.buffer = TurnBuffer(
            self.stream,
            self.reactor,
            lambda: threading.current_thread() is threading.main_thread(),
        )

    def test_one_write_per_turn(self) -> None:
        """Lines of one turn are written together, once the turn is over."""
        observer = TextLineObserver(self.buffer, TextFormatter(timeFormatRFC3339))
        for n in range(50):
            observer({"log_format": f"line {n}", "log_time": 1.5e9, "log_namespace": "x"})
        self.assertEqual(self.stream.getvalue(), "")
        self.reactor.advance(0)
        self.assertEqual(len(self.stream.getvalue().splitlines()), 50)
        self.assertEqual((self.stream.writes, self.stream.flushes), (1, 1))
        self.buffer.write("next turn\n")
        self.reactor.advance(0)
        self.assertEqual((self.stream.writes, self.stream.flushes), (2, 2))
        self.assertEqual(len(self.reactor.triggers), 1)

    def test_default_thread_check_is_twisteds(self) -> None:
        """``in_io_thread`` says what ``threadable.isInIOThread`` says, here and in a thread."""
        seen = [(in_io_thread(), threadable.isInIOThread())]
        other = threading.Thread(
            target=lambda: seen.append((in_io_thread(), threadable.isInIOThread()))
        )
        other.start()
        other.join()
        self.assertEqual(seen[0][0], seen[0][1])
        self.assertEqual(seen[1], (False, False))
        self.assertIs(TurnBuffer(io.StringIO())._in_reactor_thread, in_io_thread)

    def test_bounded(self) -> None:
        """Past ``BUFFER_LIMIT`` characters the buffer is written at once."""
        line = "x" * 999 + "\n"
        for _ in range(BUFFER_LIMIT // len(line) + 1):
            self.buffer.write(line)
        self.assertEqual(self.stream.writes, 1)
        self.assertGreaterEqual(len(self.stream.getvalue()), BUFFER_LIMIT)

    def test_not_running_writes_at_once(self) -> None:
        """With the reactor stopped (before start, after shutdown) every line goes at once."""
        self.buffer.write("a\n")
        self.reactor.running = False
        self.buffer.write("b\n")
        self.assertEqual(self.stream.getvalue(), "a\nb\n")
        self.assertEqual(self.stream.writes, 1)

    def test_other_thread_writes_at_once(self) -> None:
        """A line logged by another thread is written before the call returns, after
        what the reactor thread had buffered."""
        self.buffer.write("reactor\n")
        thread = threading.Thread(target=self.buffer.write, args=("pool\n",))
        thread.start()
        thread.join()
        self.assertEqual(self.stream.getvalue(), "reactor\npool\n")

    def test_shutdown_and_exit_flush(self) -> None:
        """The 'after shutdown' trigger, and ``flush_all`` (at exit), write what waits."""
        self.buffer.write("a\n")
        [(phase, event, call)] = self.reactor.triggers
        self.assertEqual((phase, event), ("after", "shutdown"))
        call()
        self.assertEqual(self.stream.getvalue(), "a\n")
        self.buffer.write("b\n")
        flush_all()
        self.assertEqual(self.stream.getvalue(), "a\nb\n")

    def test_stream_logging_itself_is_dropped(self) -> None:
        """A line the stream logs while it is written is dropped, not looped."""
        buffer = self.buffer

        class Echo(io.StringIO):
            def write(self, text: str) -> int:
                buffer.write("echo\n")
                return super().write(text)

        echo = Echo()
        buffer._stream = echo  # noqa: SLF001
        buffer.write("a\n")
        buffer.flush()
        self.assertEqual(echo.getvalue(), "a\n")

    def test_broken_stream_does_not_raise(self) -> None:
        """A stream that fails loses its lines (said on stderr) but never raises."""
        self.stream.close()
        self.reactor.running = False
        self.buffer.write("lost\n")

    def test_json_observer_buffers(self) -> None:
        """``json_observer`` writes through the same buffer."""
        observer = json_observer(self.stream, level="info")
        observer(
            {"log_format": "x", "log_time": 1.5e9, "log_level": LogLevel.info, "log_namespace": "n"}
        )
        observer(
            {"log_format": "y", "log_time": 1.5e9, "log_level": LogLevel.info, "log_namespace": "n"}
        )
        self.assertEqual(len(self.stream.getvalue().splitlines()), 2)


class DefaultObserverTests(SynchronousTestCase):
    """``filter_observers_at_begin`` has twistd build its default observer here."""

    def test_text_file_observer_replaced_until_begin(self) -> None:
        """Until logging begins, ``twisted.logger.textFileLogObserver`` is ours; after,
        Twisted's again."""
        import twisted.logger

        original = twisted.logger.textFileLogObserver
        self.addCleanup(setattr, twisted.logger, "textFileLogObserver", original)
        beginner = LogBeginner(LogPublisher(), io.StringIO(), sys, _Warnings())
        filter_observers_at_begin(beginner)
        self.assertIs(twisted.logger.textFileLogObserver, fast_text_file_observer)
        stream = io.StringIO()
        observer = twisted.logger.textFileLogObserver(stream)
        beginner.beginLoggingTo([observer], redirectStandardIO=False)
        self.assertIs(twisted.logger.textFileLogObserver, original)


class FilteredTests(SynchronousTestCase):
    """``_Filtered`` passes what ``FilteringLogObserver`` with the same predicate passes."""

    def test_same_verdicts(self) -> None:
        """For every level and namespace setting, the same events get through."""
        predicate = make_log_filter("warn")
        predicate.setLogLevelForNamespace("loud", LogLevel.debug)  # type: ignore[attr-defined]
        events = [
            {"log_level": level, "log_namespace": namespace, "n": i}
            for i, (level, namespace) in enumerate(
                (level, namespace)
                for level in LogLevel.iterconstants()
                for namespace in ("loud", "loud.x", "quiet", "")
            )
        ]
        events.append({"log_format": "no level"})
        ours: list[LogEvent] = []
        theirs: list[LogEvent] = []
        lean = _Filtered(ours.append, predicate)
        reference = FilteringLogObserver(theirs.append, [predicate])
        for event in events:
            lean(dict(event))
            reference(dict(event))
        self.assertEqual(ours, theirs)
        self.assertTrue(ours)
        self.assertLess(len(ours), len(events))


class JsonFastPathTests(SynchronousTestCase):
    """``_event_to_json`` writes what ``_slow_event_to_json`` (the reference) writes."""

    def test_same_text(self) -> None:
        """Plain, pre-formatted, legacy, failing, secret-carrying and odd events."""
        events = FastTextTests().events()
        base = {"log_namespace": "n", "log_level": LogLevel.info, "log_time": 1.7e9}
        events += [
            {**base, "log_format": "{uaid} x", "uaid": UAID, "other": f"has {UAID}"},
            {**base, "log_format": "f", "namespace": 1, "traceback": "t", "level": 2},
            {**base, "log_format": "f", "field_level": 9, "level": 3},
            {**base, "log_format": "f", "nested": {"a": [1, (2, 3)], "b": float("inf")}},
            {**base, "log_format": "f", "obj": _Unserialisable(), "none": None},
            {**base, "log_format": "f", 7: "non-str key"},
            {**base, "log_format": "f", "time": 5, "message": "legacy", "system": "s"},
            {**base, "log_format": "caf\u00e9 \u2603"},
        ]
        for event in events:
            if "log_time" not in event:
                continue  # "now" differs from one call to the next
            try:
                expected = _slow_event_to_json(event)
            except Exception as e:
                self.assertRaises(type(e), _event_to_json, event)
                continue
            self.assertEqual(_event_to_json(event), expected, event)
