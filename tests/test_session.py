"""Tests for ``pushtwisted.session``: the SimplePush state machine, one cell at a time."""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.config import ClientConfig, Config
from pushtwisted.ids import is_valid_id, normalize_id
from pushtwisted.logs import set_log_level, uaid_hash
from pushtwisted.node import Node
from pushtwisted.session import FETCH_RETRY_FIRST, FETCH_RETRY_MAX, CloseCode, Session, State
from pushtwisted.storage.interface import Mode, UpdateOutcome
from pushtwisted.storage.memory import MemoryStorage
from pushtwisted.testing import (
    FailingStorage,
    HoldingStorage,
    RecordingMetrics,
    RecordingSender,
    make_node,
)

UAID = "9f3a2a6c2d3b4f0e8a1b2c3d4e5f6a7b"
UAID_DASHED = "9F3A2A6C-2D3B-4F0E-8A1B-2C3D4E5F6A7B"
CHID = "01234567-89ab-cdef-0123-456789abcdef"
CHID_N = normalize_id(CHID)
CHID2 = "fedcba98-7654-3210-fedc-ba9876543210"
CHID2_N = normalize_id(CHID2)
ERROR = "Invalid Command"


def client_config(**changes: Any) -> Config:
    """Return the default config with ``[client]`` keys changed."""
    return dataclasses.replace(Config(), client=dataclasses.replace(ClientConfig(), **changes))


class SessionCase(SynchronousTestCase):
    """A session on a recording sender, memory storage and a Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.memory = MemoryStorage(self.clock)
        self.metrics = RecordingMetrics()
        self.build()

    def build(self, config: Config | None = None, storage: Any = None) -> None:
        """(Re)build the node and an opened session (dropping any previous one)."""
        if getattr(self, "session", None) is not None:
            self.session.connection_lost()
        self.node = make_node(
            config=config,
            storage=storage if storage is not None else self.memory,
            clock=self.clock,
            metrics=self.metrics,
        )
        self.sender, self.session = self.new_session()

    def new_session(self, node: Node | None = None) -> tuple[RecordingSender, Session]:
        sender = RecordingSender()
        session = Session(sender, node or self.node)
        session.opened()
        return sender, session

    def send(self, message: object, session: Session | None = None) -> None:
        """Give ``message`` (JSON-encoded unless it is text) to the session."""
        text = message if isinstance(message, str) else json.dumps(message)
        (session or self.session).receive(text)

    def hello(self, uaid: object = "", channel_ids: object = None) -> str:
        """Send a hello; return the uaid the server answered; clear the sender."""
        self.send(
            {
                "messageType": "hello",
                "uaid": uaid,
                "channelIDs": [] if channel_ids is None else channel_ids,
            }
        )
        reply = self.sender.replies[0]
        self.assertEqual(reply["status"], 200, reply)
        self.sender.clear()
        return str(reply["uaid"])

    def store(self, uaid: str, chid: str, version: int, data: str | None = None) -> None:
        """Register ``chid`` (client spelling) for ``uaid`` and store an update for it."""
        self.memory.register(normalize_id(uaid), normalize_id(chid), chid, 0)
        result = self.successResultOf(
            self.memory.update(normalize_id(uaid), normalize_id(chid), version, data)
        )
        self.assertEqual(result.outcome, UpdateOutcome.STORED)

    def pending(self, uaid: str) -> list[tuple[str, int]]:
        """Return the pending updates of ``uaid`` as (channel_id, version)."""
        found = self.successResultOf(self.memory.fetch_pending(normalize_id(uaid)))
        return [(p.channel_id, p.version) for p in found]

    def assertOnlyError(self, status: int, echo: dict[str, Any]) -> None:
        """Assert the only message sent is an error reply echoing ``echo``."""
        expected = {k: v for k, v in echo.items() if k != "messageType"}
        if "messageType" in echo:
            expected["messageType"] = echo["messageType"].lower()
        expected.update(status=status, error=ERROR)
        self.assertEqual(self.sender.replies, [expected])

    def assertClosed(self, code: int, reason: str | None = None) -> None:
        self.assertEqual(len(self.sender.closes), 1)
        self.assertEqual(self.sender.closes[0][0], code)
        if reason is not None:
            self.assertEqual(self.sender.closes[0][1], reason)
        self.assertIs(self.session.state, State.CLOSED)

    def assertOpen(self) -> None:
        self.assertEqual(self.sender.closes, [])
        self.assertIsNot(self.session.state, State.CLOSED)


class DispatchTests(SessionCase):
    """Frames that are not valid commands."""

    def test_empty_frame(self) -> None:
        """When the frame is empty, the session ignores it."""
        self.send("")
        self.assertEqual(self.sender.events, [])
        self.assertIs(self.session.state, State.AWAIT_HELLO)

    def test_invalid_json(self) -> None:
        """When the text is not JSON, the session closes with 1002 and sends nothing."""
        self.send("{nope")
        self.assertEqual(self.sender.texts, [])
        self.assertClosed(CloseCode.PROTOCOL_ERROR)
        self.assertEqual(self.metrics.count("protocol_errors", reason="invalid_json"), 1)

    def test_not_an_object(self) -> None:
        """When the JSON is not an object, the session closes with 1002 and sends nothing."""
        self.send("[1]")
        self.assertEqual(self.sender.texts, [])
        self.assertClosed(CloseCode.PROTOCOL_ERROR)

    def test_message_type_missing(self) -> None:
        """When messageType is missing, the session echoes a 401 and closes with 1002."""
        self.send({"uaid": "", "x": 1})
        self.assertOnlyError(401, {"uaid": "", "x": 1})
        self.assertClosed(CloseCode.PROTOCOL_ERROR)

    def test_message_type_not_string(self) -> None:
        """When messageType is not a string, the session echoes a 401 and closes with 1002."""
        self.send({"messageType": 5})
        self.assertEqual(self.sender.replies, [{"messageType": 5, "status": 401, "error": ERROR}])
        self.assertClosed(CloseCode.PROTOCOL_ERROR)

    def test_message_type_unknown(self) -> None:
        """When messageType is unknown, the reply carries it lower-cased and the session closes."""
        self.send({"MessageType": "HI", "k": "v"})
        self.assertEqual(
            self.sender.replies, [{"messageType": "hi", "k": "v", "status": 401, "error": ERROR}]
        )
        self.assertClosed(CloseCode.PROTOCOL_ERROR)

    def test_webpush_commands_unknown(self) -> None:
        """nack and broadcast_subscribe, before or after a SimplePush hello, are unknown
        commands: the reply carries the type lower-cased and the session closes."""
        for ready in (False, True):
            for kind in ("NACK", "broadcast_subscribe"):
                self.build()
                if ready:
                    self.hello()
                self.send({"messageType": kind, "version": "v", "code": 301})
                self.assertEqual(
                    self.sender.replies,
                    [
                        {
                            "messageType": kind.lower(),
                            "version": "v",
                            "code": 301,
                            "status": 401,
                            "error": ERROR,
                        }
                    ],
                )
                self.assertClosed(CloseCode.PROTOCOL_ERROR, "Invalid command")
        self.assertEqual(self.metrics.count("protocol_errors", reason="invalid_message_type"), 4)

    def test_message_type_padded(self) -> None:
        """When messageType is padded with spaces, it is unknown: 401 and close."""
        self.send({"messageType": " hello ", "uaid": "", "channelIDs": []})
        self.assertEqual(self.sender.replies[0]["status"], 401)
        self.assertClosed(CloseCode.PROTOCOL_ERROR)

    def test_padded_key(self) -> None:
        """When the messageType key has spaces, it is not the key: 401 and close."""
        self.send({" messageType ": "hello", "uaid": "", "channelIDs": []})
        self.assertEqual(self.sender.replies[0]["status"], 401)
        self.assertClosed(CloseCode.PROTOCOL_ERROR)

    def test_case_insensitive_keys_and_type(self) -> None:
        """When keys and messageType use any case, the session understands the command."""
        self.send({"MESSAGETYPE": "HeLLo", "UAID": UAID, "ChannelIds": []})
        self.assertEqual(
            self.sender.replies, [{"messageType": "hello", "uaid": UAID, "status": 200}]
        )
        self.assertIs(self.session.state, State.READY)

    def test_error_reply_replaces_status_and_error(self) -> None:
        """When the client sent status/error keys in any case, the error reply replaces them."""
        self.send({"messageType": "REGISTER", "Status": 5, "ERROR": "x", "extra": [1]})
        self.assertEqual(
            self.sender.replies,
            [{"messageType": "register", "extra": [1], "status": 401, "error": ERROR}],
        )

    def test_after_close(self) -> None:
        """When a message arrives after the session closed, the session ignores it."""
        self.session.connection_lost()
        self.send("{}")
        self.send("{nope")
        self.assertEqual(self.sender.events, [])

    def test_unexpected_error(self) -> None:
        """When a handler fails unexpectedly, the session logs it and closes with 1011."""
        self.node.registry.add = None  # type: ignore[method-assign, assignment]
        self.send({"messageType": "hello", "uaid": "", "channelIDs": []})
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        self.assertClosed(CloseCode.INTERNAL_ERROR)


class HelloTests(SessionCase):
    """hello in AWAIT_HELLO."""

    def test_fresh_uaid_when_missing(self) -> None:
        """When hello has no uaid, the session issues a fresh one and replies exactly."""
        self.send({"messageType": "hello", "channelIDs": []})
        [text] = self.sender.texts
        uaid = json.loads(text)["uaid"]
        self.assertEqual(text, f'{{"messageType":"hello","uaid":"{uaid}","status":200}}')
        self.assertTrue(is_valid_id(uaid) and len(uaid) == 32 and uaid == uaid.lower())
        self.assertEqual(self.session.uaid, uaid)
        self.assertIs(self.session.state, State.READY)

    def test_hello_debug_line_only_at_debug(self) -> None:
        """The per-connection hello line is a debug event, with the UAID hashed; below
        debug there is none."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.addCleanup(set_log_level, "info")

        def hellos() -> list[dict[str, Any]]:
            return [e for e in events if e.get("log_format") == "hello {uaid_hash}"]

        uaid = self.hello()
        self.assertEqual(hellos(), [])
        set_log_level("debug")
        _, session = self.new_session()
        self.send({"messageType": "hello", "uaid": uaid, "channelIDs": []}, session)
        [event] = hellos()
        self.assertEqual(event["log_level"], LogLevel.debug)
        self.assertEqual(
            (event["uaid_hash"], event["reset"], event["channels"], event["webpush"]),
            (uaid_hash(uaid), False, 0, False),
        )

    def test_fresh_uaid_when_null_or_empty(self) -> None:
        """When hello's uaid is null or empty, the session issues a fresh one."""
        for uaid in (None, ""):
            self.build()
            new = self.hello(uaid)
            self.assertTrue(is_valid_id(new))

    def test_known_form_accepted_without_channels(self) -> None:
        """When a valid uaid comes with no channelIDs, it is accepted and echoed as sent."""
        self.assertEqual(self.hello(UAID_DASHED), UAID_DASHED)
        self.assertEqual(self.session.uaid, UAID)
        self.assertIs(self.node.registry.get(UAID), self.session)

    def test_known_uaid_with_channels(self) -> None:
        """When a valid uaid the storage knows comes with channelIDs, it is accepted."""
        self.store(UAID, CHID, 1)
        self.send({"messageType": "hello", "uaid": UAID, "channelIDs": [CHID]})
        self.assertEqual(self.sender.replies[0]["uaid"], UAID)

    def test_unknown_uaid_with_channels(self) -> None:
        """When a valid uaid the storage does not know comes with channelIDs, it is reset."""
        new = self.hello(UAID, [CHID])
        self.assertNotEqual(new, UAID)
        self.assertTrue(is_valid_id(new))
        self.assertEqual(self.session.uaid, new)

    def test_uaid_not_a_string(self) -> None:
        """When hello's uaid is not a string, it is a malformed command: the session
        echoes a 401 and closes with 1002 (PROTOCOL.md 16.3)."""
        for uaid in (12345, True, ["x"], {}):
            self.build()
            message = {"messageType": "hello", "uaid": uaid, "channelIDs": []}
            self.send(message)
            self.assertOnlyError(401, message)
            self.assertClosed(CloseCode.PROTOCOL_ERROR)
            self.assertIsNone(self.session.uaid)
            self.assertEqual(len(self.node.registry), 0)

    def test_webpush_uaid_refused(self) -> None:
        """A UAID that storage knows as a WebPush user gets a fresh UAID, even without
        channelIDs (one UAID is one mode, WEBPUSH.md 6.1)."""
        self.successResultOf(self.memory.register(UAID, CHID, CHID, 0, Mode.WEBPUSH))
        for channel_ids in ([], [CHID]):
            self.build()
            new = self.hello(UAID, channel_ids)
            self.assertNotEqual(new, UAID)
            self.assertTrue(is_valid_id(new))

    def test_known_simplepush_uaid_kept_without_channel_ids(self) -> None:
        """A SimplePush UAID storage knows is kept when the hello lists no channel."""
        self.successResultOf(self.memory.register(UAID, CHID, CHID, 0))
        self.assertEqual(self.hello(UAID, []), UAID)

    def test_invalid_uaid(self) -> None:
        """When hello's uaid string is not a valid ID, the session answers 503 and keeps
        waiting."""
        for uaid in ("0", "true", "null", UAID + "0", "a" * 64000, " " + UAID):
            self.sender.clear()
            message = {"messageType": "hello", "uaid": uaid, "channelIDs": []}
            self.send(message)
            self.assertOnlyError(503, message)
            self.assertOpen()
            self.assertIs(self.session.state, State.AWAIT_HELLO)
        self.sender.clear()
        self.assertEqual(self.hello(UAID), UAID)

    def test_channel_ids_missing(self) -> None:
        """When hello has no channelIDs list, the session answers 401 and stays open."""
        for message in (
            {"messageType": "hello", "uaid": ""},
            {"messageType": "hello", "uaid": "", "channelIDs": None},
            {"messageType": "hello", "uaid": "", "channelIDs": "x"},
        ):
            self.sender.clear()
            self.send(message)
            self.assertOnlyError(401, message)
            self.assertOpen()
            self.assertIs(self.session.state, State.AWAIT_HELLO)

    def test_too_many_channel_ids(self) -> None:
        """When hello lists more than max_channels channelIDs, the session answers 503."""
        self.build(client_config(max_channels=2))
        message = {"messageType": "hello", "uaid": UAID, "channelIDs": [1, 2, 3]}
        self.send(message)
        self.assertOnlyError(503, message)
        self.assertIs(self.session.state, State.AWAIT_HELLO)

    def test_no_channel_limit(self) -> None:
        """When max_channels is 0, hello accepts any number of channelIDs."""
        self.build(client_config(max_channels=0))
        self.hello("", list(range(500)))
        self.assertIs(self.session.state, State.READY)

    def test_storage_unavailable(self) -> None:
        """When storage fails during hello, the session answers 503 and keeps the UAID."""
        failing = FailingStorage(self.memory, ["user_mode"])
        self.build(storage=failing)
        message = {"messageType": "hello", "uaid": UAID, "channelIDs": [CHID]}
        self.send(message)
        self.assertOnlyError(503, message)
        self.assertOpen()
        self.assertIs(self.session.state, State.AWAIT_HELLO)
        self.assertIsNone(self.node.registry.get(UAID))
        failing.failing.clear()
        self.store(UAID, CHID, 1)
        self.sender.clear()
        self.send(message)
        self.assertEqual(self.sender.replies[0]["uaid"], UAID)

    def test_storage_unavailable_without_channels(self) -> None:
        """A hello with a UAID and no channelIDs keeps its UAID while storage fails (200)."""
        self.build(storage=FailingStorage(self.memory, ["user_mode"]))
        self.send({"messageType": "hello", "uaid": UAID, "channelIDs": []})
        self.assertEqual(
            (self.sender.replies[0]["status"], self.sender.replies[0]["uaid"]), (200, UAID)
        )
        self.assertIs(self.session.state, State.READY)

    def test_storage_unexpected_failure(self) -> None:
        """When storage raises an unexpected error in hello, the session logs it and answers 503."""
        self.build(storage=FailingStorage(self.memory, ["user_mode"], RuntimeError("bug")))
        self.send({"messageType": "hello", "uaid": UAID, "channelIDs": [CHID]})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.sender.replies[0]["status"], 503)
        self.assertOpen()

    def test_flush_after_hello(self) -> None:
        """When updates are pending, the session sends them in one notification after the reply."""
        self.store(UAID, CHID, 5, "hi")
        self.store(UAID, CHID2, 7)
        self.send({"messageType": "hello", "uaid": UAID, "channelIDs": [CHID, CHID2]})
        replies = self.sender.replies
        self.assertEqual(replies[0], {"messageType": "hello", "uaid": UAID, "status": 200})
        self.assertEqual(replies[1]["messageType"], "notification")
        self.assertEqual(
            sorted(replies[1]["updates"], key=lambda u: u["channelID"]),
            [
                {"channelID": CHID, "version": 5, "data": "hi"},
                {"channelID": CHID2, "version": 7},
            ],
        )
        self.assertEqual(len(replies), 2)
        self.assertEqual(self.metrics.total("notifications_delivered"), 2)

    def test_no_flush_when_nothing_pending(self) -> None:
        """When nothing is pending, the session sends only the hello reply."""
        self.send({"messageType": "hello", "uaid": UAID, "channelIDs": []})
        self.assertEqual(len(self.sender.texts), 1)

    def test_hello_reads_once_then_replies(self) -> None:
        """A hello naming a known UAID reads mode and pending updates before it answers;
        the reply comes first, then the stored update, and nothing is read again."""
        self.store(UAID, CHID, 5)
        holding = HoldingStorage(self.memory, ["fetch_pending"])
        self.build(storage=holding)
        self.send({"messageType": "hello", "uaid": UAID, "channelIDs": [CHID]})
        call = holding.next()
        self.assertEqual(self.sender.replies, [])
        self.assertIs(self.session.state, State.HELLO_PENDING)
        call.release()
        self.assertEqual([r["messageType"] for r in self.sender.replies], ["hello", "notification"])
        self.assertEqual(holding.calls, ["user_mode", "fetch_pending"])

    def test_update_routed_during_hello_read_is_fetched_again(self) -> None:
        """An update stored and routed while the hello reads storage (no session takes it)
        is fetched again after the reply and sent once."""
        self.store(UAID, CHID, 5)
        holding = HoldingStorage(self.memory, ["user_mode"])
        self.build(storage=holding)
        self.send({"messageType": "hello", "uaid": UAID, "channelIDs": [CHID]})
        call = holding.next()
        self.assertFalse(self.node.registry.get(normalize_id(UAID)))  # the route finds nobody
        call.release()
        self.assertEqual(holding.calls, ["user_mode", "fetch_pending", "fetch_pending"])
        self.assertEqual([r["messageType"] for r in self.sender.replies], ["hello", "notification"])

    def test_no_second_read_without_a_route(self) -> None:
        """Without a look-up of the UAID during the hello's read, it is read once."""
        holding = HoldingStorage(self.memory, ["user_mode"])
        self.build(storage=holding)
        self.send({"messageType": "hello", "uaid": UAID, "channelIDs": []})
        self.assertIsNone(self.node.registry.get("0" * 32))  # another UAID
        holding.next().release()
        self.assertEqual(holding.calls, ["user_mode"])  # no user: nothing to fetch
        self.assertIs(self.session.state, State.READY)

    def test_hello_read_failed_parts_run_again(self) -> None:
        """When the hello's read fails, its parts run again one by one: the reply
        goes first and a slow fetch after it does not hold it."""
        self.store(UAID, CHID, 5)
        holding = HoldingStorage(self.memory, ["fetch_pending"])
        self.build(storage=holding)
        self.send({"messageType": "hello", "uaid": UAID, "channelIDs": [CHID]})
        holding.next().fail()
        self.assertEqual([r["messageType"] for r in self.sender.replies], ["hello"])
        self.assertEqual(
            holding.calls, ["user_mode", "fetch_pending", "user_mode", "fetch_pending"]
        )
        holding.next().release()
        self.assertEqual([r["messageType"] for r in self.sender.replies], ["hello", "notification"])

    def test_fresh_uaid_reads_nothing(self) -> None:
        """A hello without a UAID gets a new one; nothing is stored for it, nothing is read."""
        calls = FailingStorage(self.memory)
        self.build(storage=calls)
        self.hello()
        self.assertEqual(calls.calls, [])

    def test_live_delivery_during_flush_not_repeated(self) -> None:
        """When a live update arrives while a flush is fetching, the flush does not repeat it."""
        holding = HoldingStorage(self.memory, ["fetch_pending"])
        self.build(storage=holding)
        self.hello(UAID, [CHID])
        self.store(UAID, CHID, 5)
        self.session.check_storage()
        self.assertTrue(self.session.deliver(CHID, 5, None))
        holding.next().release()
        self.assertEqual(len(self.sender.texts), 1)

    def test_flush_storage_failure(self) -> None:
        """When fetching pending updates fails, hello still succeeds and nothing more is sent."""
        self.store(UAID, CHID, 5)
        self.build(storage=FailingStorage(self.memory, ["fetch_pending"]))
        self.send({"messageType": "hello", "uaid": UAID, "channelIDs": []})
        self.assertEqual(len(self.sender.texts), 1)
        self.assertIs(self.session.state, State.READY)

    def test_flush_retried_once_storage_is_back(self) -> None:
        """When fetching pending updates failed at hello, the session fetches again on
        the clock and sends the stored updates once storage answers, without a new hello."""
        self.store(UAID, CHID, 5, "kept")
        failing = FailingStorage(self.memory, ["fetch_pending"])
        self.build(storage=failing)
        self.send({"messageType": "hello", "uaid": UAID, "channelIDs": []})
        self.assertEqual([r["messageType"] for r in self.sender.replies], ["hello"])
        self.clock.advance(FETCH_RETRY_FIRST)  # still down: the next try waits twice as long
        # The hello's read, the fetch after its reply, the first retry.
        self.assertEqual(failing.calls.count("fetch_pending"), 3)
        failing.failing.clear()
        self.clock.advance(2 * FETCH_RETRY_FIRST - 0.001)
        self.assertEqual(len(self.sender.replies), 1)
        self.clock.advance(0.001)
        self.assertEqual(
            self.sender.replies[1],
            {
                "messageType": "notification",
                "updates": [{"channelID": CHID, "version": 5, "data": "kept"}],
            },
        )
        self.assertOpen()
        self.clock.advance(FETCH_RETRY_MAX)  # a fetch that succeeded is not repeated
        self.assertEqual(failing.calls.count("fetch_pending"), 4)

    def test_flush_retry_backs_off_to_a_bound(self) -> None:
        """While fetching keeps failing, the delay doubles from FETCH_RETRY_FIRST up to
        FETCH_RETRY_MAX, one timer at a time; a success starts again from the first delay."""
        self.memory.register(normalize_id(UAID), CHID_N, CHID, 0)  # a user, nothing stored
        failing = FailingStorage(self.memory, ["fetch_pending"])
        self.build(storage=failing)
        self.send({"messageType": "hello", "uaid": UAID, "channelIDs": []})
        delays = []
        for _ in range(8):
            [call] = self.clock.getDelayedCalls()
            delays.append(call.getTime() - self.clock.seconds())
            self.clock.advance(delays[-1])
        self.assertEqual(delays, [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0])
        self.assertEqual(failing.calls.count("fetch_pending"), 10)
        failing.failing.clear()
        self.clock.advance(30.0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        failing.failing.add("fetch_pending")
        self.send({"messageType": "hello", "uaid": "", "channelIDs": []})  # a second hello
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime() - self.clock.seconds(), FETCH_RETRY_FIRST)

    def test_flush_retry_stops_at_close(self) -> None:
        """When the connection closes, the next fetch is cancelled."""
        self.store(UAID, CHID, 5)
        failing = FailingStorage(self.memory, ["fetch_pending"])
        self.build(storage=failing)
        self.send({"messageType": "hello", "uaid": UAID, "channelIDs": []})
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.session.connection_lost()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_report_expired(self) -> None:
        """When report_expired is on, the session lists unregistered channels after the reply."""
        self.build(client_config(report_expired=True))
        self.store(UAID, CHID, 5)
        self.successResultOf(self.memory.ack(UAID, CHID_N, 5))
        self.successResultOf(self.memory.unregister(UAID, CHID_N))
        self.store(UAID, CHID2, 1)
        self.send({"messageType": "hello", "uaid": UAID, "channelIDs": [CHID.upper(), CHID2, 3]})
        replies = self.sender.replies
        self.assertEqual(replies[0]["messageType"], "hello")
        self.assertIn("updates", replies[1])
        self.assertEqual(replies[2], {"messageType": "notification", "expired": [CHID.upper()]})
        self.assertEqual(len(replies), 3)

    def test_report_expired_nothing(self) -> None:
        """When report_expired is on but no listed channel is a tombstone, nothing more is sent."""
        self.build(client_config(report_expired=True))
        self.store(UAID, CHID, 5)
        self.successResultOf(self.memory.ack(UAID, CHID_N, 5))
        self.send({"messageType": "hello", "uaid": UAID, "channelIDs": [CHID, "junk"]})
        self.assertEqual(len(self.sender.texts), 1)

    def test_report_expired_off(self) -> None:
        """When report_expired is off (the default), the session never sends expired."""
        self.store(UAID, CHID, 5)
        self.successResultOf(self.memory.unregister(UAID, CHID_N))
        self.store(UAID, CHID2, 1)
        self.send({"messageType": "hello", "uaid": UAID, "channelIDs": [CHID, CHID2]})
        self.assertFalse(any("expired" in r for r in self.sender.replies))

    def test_metrics(self) -> None:
        """When hello succeeds, the session counts it and sets the connections gauge."""
        self.hello()
        self.assertEqual(self.metrics.total("hellos"), 1)
        self.assertEqual(self.metrics.gauges("connections")[-1], 1)


class SecondHelloTests(SessionCase):
    """hello in READY."""

    def test_empty_uaid(self) -> None:
        """When a second hello has an empty uaid, the session answers 200 with the current UAID."""
        self.hello(UAID_DASHED)
        self.send({"messageType": "hello", "uaid": "", "channelIDs": []})
        self.assertEqual(
            self.sender.replies, [{"messageType": "hello", "uaid": UAID_DASHED, "status": 200}]
        )
        self.assertIs(self.session.state, State.READY)

    def test_same_uaid_other_spelling(self) -> None:
        """When a second hello spells the same UAID otherwise, the reply uses the first spelling."""
        self.hello(UAID_DASHED)
        self.send({"messageType": "hello", "uaid": UAID, "channelIDs": []})
        self.assertEqual(self.sender.replies[0]["uaid"], UAID_DASHED)

    def test_pending_sent_again(self) -> None:
        """When a second hello arrives, the session sends the pending updates again."""
        self.store(UAID, CHID, 5)
        self.send({"messageType": "hello", "uaid": UAID, "channelIDs": [CHID]})
        self.sender.clear()
        self.send({"messageType": "hello", "uaid": UAID, "channelIDs": [CHID]})
        self.assertEqual(
            self.sender.replies[1],
            {"messageType": "notification", "updates": [{"channelID": CHID, "version": 5}]},
        )

    def test_different_uaid(self) -> None:
        """When a second hello names another UAID, the session answers 503 and closes."""
        self.hello(UAID)
        message = {"messageType": "hello", "uaid": CHID, "channelIDs": []}
        self.send(message)
        self.assertOnlyError(503, message)
        self.assertClosed(CloseCode.PROTOCOL_ERROR)
        self.assertIsNone(self.node.registry.get(UAID))

    def test_junk_uaid(self) -> None:
        """When a second hello has a junk uaid string, it counts as another UAID: 503
        and close."""
        self.hello(UAID)
        self.send({"messageType": "hello", "uaid": "5", "channelIDs": []})
        self.assertEqual(self.sender.replies[0]["status"], 503)
        self.assertClosed(CloseCode.PROTOCOL_ERROR)

    def test_uaid_not_a_string(self) -> None:
        """When a second hello's uaid is not a string, it is a malformed command: 401
        and close."""
        self.hello(UAID)
        message = {"messageType": "hello", "uaid": 5, "channelIDs": []}
        self.send(message)
        self.assertOnlyError(401, message)
        self.assertClosed(CloseCode.PROTOCOL_ERROR)


class HelloTimerTests(SessionCase):
    """The hello timeout."""

    def test_timeout(self) -> None:
        """When no hello succeeds in hello_timeout seconds, the session silently closes (1000)."""
        self.clock.advance(29.9)
        self.assertOpen()
        self.clock.advance(0.1)
        self.assertEqual(self.sender.texts, [])
        self.assertClosed(CloseCode.NORMAL, "Hello timeout")

    def test_pings_do_not_extend(self) -> None:
        """When the client only pings, the hello timeout still fires on time."""
        self.send("{}")
        self.clock.advance(25)
        self.send("{}")
        self.clock.advance(5)
        self.assertClosed(CloseCode.NORMAL, "Hello timeout")

    def test_failed_hello_does_not_stop(self) -> None:
        """When a hello is refused, the hello timeout keeps running."""
        self.send({"messageType": "hello", "uaid": "0", "channelIDs": []})
        self.clock.advance(30)
        self.assertClosed(CloseCode.NORMAL, "Hello timeout")

    def test_hello_cancels(self) -> None:
        """When hello succeeds, the hello timer is cancelled."""
        self.hello()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        self.assertOpen()

    def test_off(self) -> None:
        """When hello_timeout is 0, there is no hello timer."""
        self.build(client_config(hello_timeout=0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timeout_while_hello_pending(self) -> None:
        """When the timeout fires while hello awaits storage, the late answer changes nothing."""
        holding = HoldingStorage(self.memory, ["user_mode"])
        self.build(storage=holding)
        self.store(UAID, CHID, 1)
        self.send({"messageType": "hello", "uaid": UAID, "channelIDs": [CHID]})
        self.assertIs(self.session.state, State.HELLO_PENDING)
        self.clock.advance(30)
        self.assertClosed(CloseCode.NORMAL, "Hello timeout")
        holding.next().release()
        self.assertEqual(self.sender.texts, [])
        self.assertIsNone(self.node.registry.get(UAID))


class BeforeHelloTests(SessionCase):
    """register, unregister and ack in AWAIT_HELLO."""

    def test_register(self) -> None:
        """When register comes before hello, the session echoes a 401 and closes."""
        message = {"messageType": "register", "channelID": CHID}
        self.send(message)
        self.assertOnlyError(401, message)
        self.assertClosed(CloseCode.PROTOCOL_ERROR)
        self.assertEqual(self.metrics.count("protocol_errors", reason="before_hello"), 1)

    def test_register_invalid_chid(self) -> None:
        """When an invalid register comes before hello, it is still 401 and close."""
        self.send({"messageType": "register", "channelID": "junk"})
        self.assertClosed(CloseCode.PROTOCOL_ERROR)

    def test_unregister(self) -> None:
        """When unregister comes before hello, the session echoes a 401 and closes."""
        message = {"messageType": "UNREGISTER", "channelID": CHID}
        self.send(message)
        self.assertOnlyError(401, message)
        self.assertClosed(CloseCode.PROTOCOL_ERROR)

    def test_ack(self) -> None:
        """When ack comes before hello, the 401 reply echoes its updates and the session closes."""
        message = {"messageType": "ack", "updates": [{"channelID": CHID, "version": 1}]}
        self.send(message)
        self.assertOnlyError(401, message)
        self.assertClosed(CloseCode.PROTOCOL_ERROR)


class RegisterTests(SessionCase):
    """register in READY."""

    def setUp(self) -> None:
        super().setUp()
        self.uaid = self.hello(UAID_DASHED)

    def test_success(self) -> None:
        """When register succeeds, the reply has the keys in order and a working endpoint."""
        self.send({"messageType": "Register", "channelID": CHID.upper()})
        [text] = self.sender.texts
        reply = json.loads(text)
        self.assertEqual(
            list(reply), ["messageType", "uaid", "status", "channelID", "pushEndpoint"]
        )
        self.assertEqual(reply["messageType"], "register")
        self.assertEqual(reply["uaid"], UAID_DASHED)
        self.assertEqual(reply["status"], 200)
        self.assertEqual(reply["channelID"], CHID.upper())
        prefix = "http://127.0.0.1:8081/update/"
        self.assertTrue(reply["pushEndpoint"].startswith(prefix))
        token = reply["pushEndpoint"][len(prefix) :]
        self.assertEqual(self.node.crypto.parse(token), (UAID, CHID_N))
        self.assertEqual(self.metrics.total("registers"), 1)
        result = self.successResultOf(self.memory.update(UAID, CHID_N, 1, None))
        self.assertEqual(result.channel_id, CHID.upper())

    def test_invalid_chid(self) -> None:
        """When register's channelID is missing or invalid, the session answers 401, stays open."""
        for message in (
            {"messageType": "register"},
            {"messageType": "register", "channelID": ""},
            {"messageType": "register", "channelID": 5},
            {"messageType": "register", "channelID": "a" * 64},
            {"messageType": "register", "channelIDs": [CHID]},
        ):
            self.sender.clear()
            self.send(message)
            self.assertOnlyError(401, message)
            self.assertOpen()

    def test_case_insensitive_key(self) -> None:
        """When the channelID key has another case, register still finds it."""
        self.send({"messageType": "register", "CHANNELID": CHID})
        self.assertEqual(self.sender.replies[0]["status"], 200)

    def test_too_many_channels(self) -> None:
        """When the UAID holds max_channels channels already, register answers 413, stays open."""
        self.build(client_config(max_channels=1))
        self.hello(UAID)
        self.send({"messageType": "register", "channelID": CHID})
        self.sender.clear()
        message = {"messageType": "register", "channelID": CHID2}
        self.send(message)
        self.assertOnlyError(413, message)
        self.assertOpen()

    def test_storage_failure(self) -> None:
        """When storage fails on register, the session answers 503 and stays open."""
        self.build(storage=FailingStorage(self.memory, ["register"]))
        self.hello(UAID)
        message = {"messageType": "register", "channelID": CHID}
        self.send(message)
        self.assertOnlyError(503, message)
        self.assertOpen()

    def test_idempotent(self) -> None:
        """When a channel is registered again, register answers 200 and keeps its pending update."""
        self.send({"messageType": "register", "channelID": CHID})
        self.successResultOf(self.memory.update(UAID, CHID_N, 9, None))
        self.send({"messageType": "register", "channelID": CHID})
        self.assertEqual([r["status"] for r in self.sender.replies], [200, 200])
        self.assertEqual(self.pending(UAID), [(CHID, 9)])

    def test_fresh_only_first_of_new_uaid(self) -> None:
        """Only the first register after a hello that made the UAID tells storage it is fresh."""
        recording = FailingStorage(self.memory)
        self.build(storage=recording)
        self.hello()
        for chid in (CHID, CHID2):
            self.send({"messageType": "register", "channelID": chid})
        self.assertEqual(recording.registers, [(CHID_N, True), (CHID2_N, False)])
        self.assertEqual([r["status"] for r in self.sender.replies], [200, 200])

    def test_fresh_spent_by_failed_register(self) -> None:
        """A failed first register spends it: the next one may find what the failed one wrote."""
        recording = FailingStorage(self.memory, ["register"])
        self.build(storage=recording)
        self.hello()
        self.send({"messageType": "register", "channelID": CHID})
        recording.failing.clear()
        self.send({"messageType": "register", "channelID": CHID})
        self.assertEqual(recording.registers, [(CHID_N, True), (CHID_N, False)])
        self.assertEqual([r["status"] for r in self.sender.replies], [503, 200])

    def test_not_fresh_for_kept_uaid(self) -> None:
        """A hello that keeps the UAID it names, stored or not, makes no register fresh."""
        self.store(UAID, CHID2, 1)
        recording = FailingStorage(self.memory)
        for uaid in (UAID, uuid.uuid4().hex):
            self.build(storage=recording)
            self.assertEqual(normalize_id(self.hello(uaid)), normalize_id(uaid))
            self.send({"messageType": "register", "channelID": CHID})
        self.assertEqual(recording.registers, [(CHID_N, False), (CHID_N, False)])


class UnregisterTests(SessionCase):
    """unregister in READY."""

    def setUp(self) -> None:
        super().setUp()
        self.hello(UAID)
        self.send({"messageType": "register", "channelID": CHID})
        self.sender.clear()

    def test_success(self) -> None:
        """When unregister succeeds, the session replies 200 and the channel is a tombstone."""
        self.send({"messageType": "unregister", "channelID": CHID})
        self.assertEqual(
            self.sender.texts,
            [f'{{"messageType":"unregister","status":200,"channelID":"{CHID}"}}'],
        )
        result = self.successResultOf(self.memory.update(UAID, CHID_N, 1, None))
        self.assertEqual(result.outcome, UpdateOutcome.GONE)
        self.assertEqual(self.metrics.total("unregisters"), 1)

    def test_missing_chid(self) -> None:
        """When unregister's channelID is missing, empty or not a string, it is 401, stays open."""
        for message in (
            {"messageType": "unregister"},
            {"messageType": "unregister", "channelID": ""},
            {"messageType": "unregister", "channelID": 7},
        ):
            self.sender.clear()
            self.send(message)
            self.assertOnlyError(401, message)
            self.assertOpen()

    def test_invalid_chid(self) -> None:
        """When unregister's channelID is an invalid string, the reply is 200 without storage."""
        failing = FailingStorage(self.memory, ["unregister"])
        self.build(storage=failing)
        self.hello(UAID)
        self.send({"messageType": "unregister", "channelID": "junk"})
        self.assertEqual(
            self.sender.replies,
            [{"messageType": "unregister", "status": 200, "channelID": "junk"}],
        )
        self.assertNotIn("unregister", failing.calls)

    def test_unknown_chid(self) -> None:
        """When unregister names an unknown channel, the session replies 200."""
        self.send({"messageType": "unregister", "channelID": CHID2})
        self.assertEqual(self.sender.replies[0]["status"], 200)

    def test_storage_failure(self) -> None:
        """When storage fails on unregister, the session answers 503 and stays open."""
        self.build(storage=FailingStorage(self.memory, ["unregister"]))
        self.hello(UAID)
        message = {"messageType": "unregister", "channelID": CHID}
        self.send(message)
        self.assertOnlyError(503, message)
        self.assertOpen()

    def test_forgets_sent(self) -> None:
        """When a channel with an unacked update is unregistered, the retry timer skips it."""
        self.assertTrue(self.session.deliver(CHID, 3, None))
        self.send({"messageType": "unregister", "channelID": CHID.upper()})
        self.sender.clear()
        self.clock.advance(60)
        self.assertEqual(self.sender.texts, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class AckTests(SessionCase):
    """ack in READY."""

    def setUp(self) -> None:
        super().setUp()
        self.store(UAID, CHID, 5)
        self.send({"messageType": "hello", "uaid": UAID, "channelIDs": [CHID]})
        self.sender.clear()

    def test_clears(self) -> None:
        """When an ack matches the stored version, storage clears it and nothing is sent."""
        self.send({"messageType": "ack", "updates": [{"channelID": CHID.upper(), "version": 5}]})
        self.assertEqual(self.sender.events, [])
        self.assertEqual(self.pending(UAID), [])
        self.assertEqual(self.metrics.total("acks"), 1)

    def test_older_version(self) -> None:
        """When an ack names an older version, the newer stored update stays."""
        self.successResultOf(self.memory.update(UAID, CHID_N, 6, None))
        self.send({"messageType": "ack", "updates": [{"channelID": CHID, "version": 5}]})
        self.assertEqual(self.pending(UAID), [(CHID, 6)])
        self.assertEqual(self.sender.events, [])

    def test_empty(self) -> None:
        """When updates and expired are both missing or empty, the answer is 401, open."""
        for message in (
            {"messageType": "ack"},
            {"messageType": "ack", "updates": []},
            {"messageType": "ack", "updates": [], "expired": []},
        ):
            self.sender.clear()
            self.send(message)
            self.assertOnlyError(401, message)
            self.assertOpen()

    def test_malformed_after_valid(self) -> None:
        """When some entries are malformed, the valid ones are processed and then 401 is sent."""
        message = {
            "messageType": "ack",
            "updates": [
                {"channelID": CHID, "version": True},
                {"channelID": CHID, "version": 5},
                {"channelID": CHID, "version": -1},
                {"channelID": CHID, "version": "5"},
                {"channelID": "junk", "version": 5},
            ],
        }
        self.send(message)
        self.assertEqual(self.pending(UAID), [])
        self.assertOnlyError(401, message)
        self.assertOpen()

    def test_expired_only(self) -> None:
        """When an ack has only expired entries, they are accepted silently."""
        self.send({"messageType": "ack", "expired": [CHID]})
        self.assertEqual(self.sender.events, [])
        self.assertEqual(self.pending(UAID), [(CHID, 5)])

    def test_no_immediate_resend(self) -> None:
        """When an ack leaves other updates pending, the session does not re-send them at once."""
        self.store(UAID, CHID2, 1)
        self.send({"messageType": "ack", "updates": [{"channelID": CHID, "version": 5}]})
        self.assertEqual(self.sender.events, [])

    def test_storage_failure(self) -> None:
        """When storage fails on ack, nothing is sent and the retry timer re-sends the update."""
        self.build(storage=FailingStorage(self.memory, ["ack"]))
        self.send({"messageType": "hello", "uaid": UAID, "channelIDs": [CHID]})
        self.sender.clear()
        self.send({"messageType": "ack", "updates": [{"channelID": CHID, "version": 5}]})
        self.assertEqual(self.sender.events, [])
        self.clock.advance(60)
        self.assertEqual(self.sender.replies[0]["updates"], [{"channelID": CHID, "version": 5}])


class RateLimitTests(SessionCase):
    """``[client] max_messages_per_second`` and ``max_messages_burst``."""

    def setUp(self) -> None:
        super().setUp()
        self.build(client_config(max_messages_per_second=2.0, max_messages_burst=3))
        self.hello(UAID)  # one token

    def ack(self) -> None:
        self.send({"messageType": "ack", "updates": []})

    def test_burst_allowed(self) -> None:
        """When a client sends up to the burst at once, every message is handled."""
        self.ack()
        self.ack()
        self.assertOpen()

    def test_over_rate_closes_1008(self) -> None:
        """When a client sends past the burst, the session closes with 1008 and logs it."""
        events: list[dict[str, Any]] = []
        self.patch(Session, "log", Logger(observer=events.append))
        self.ack()
        self.ack()
        self.ack()
        self.assertClosed(CloseCode.POLICY_VIOLATION, "Too many messages")
        self.assertEqual(self.metrics.count("protocol_errors", reason="too_many_messages"), 1)
        self.assertTrue(any("too fast" in e.get("log_format", "") for e in events), events)

    def test_refills_with_time(self) -> None:
        """When the client slows to the rate, it may go on sending forever."""
        for _ in range(20):
            self.clock.advance(0.5)
            self.ack()
        self.ack()
        self.ack()
        self.assertOpen()

    def test_off(self) -> None:
        """When max_messages_per_second is 0, there is no limit."""
        self.build(client_config(max_messages_per_second=0.0, max_messages_burst=1))
        self.hello(UAID)
        for _ in range(100):
            self.ack()
        self.assertOpen()

    def test_defaults_pass_a_full_lock_step_registration(self) -> None:
        """With the defaults, a hello, max_channels registers and as many acks, each
        sent as soon as the previous reply arrived (one clock tick), all pass."""
        self.build()
        config = self.node.config.client
        self.hello(UAID)
        channels = [str(uuid.UUID(int=n + 1)) for n in range(config.max_channels)]
        for chid in channels:
            self.send({"messageType": "register", "channelID": chid})
            self.assertEqual(self.sender.replies[-1]["status"], 200)
        for chid in channels:
            self.send({"messageType": "ack", "updates": [{"channelID": chid, "version": 1}]})
        self.assertOpen()
        self.assertEqual([reply["channelID"] for reply in self.sender.replies], channels)
        # What the burst must cover: the hello, every register and every ack.
        self.assertGreaterEqual(config.max_messages_burst, 2 * config.max_channels + 1)

    def test_defaults_still_limit_a_flood(self) -> None:
        """With the defaults, a client that goes on sending past the burst is cut off."""
        self.build()
        self.hello(UAID)
        for _ in range(ClientConfig().max_messages_burst):
            self.ack()
        self.assertClosed(CloseCode.POLICY_VIOLATION, "Too many messages")


class PingTests(SessionCase):
    """ping and purge, before and after hello."""

    def test_bare_ping(self) -> None:
        """When the client sends {}, the session answers exactly {}."""
        self.send("{}")
        self.assertEqual(self.sender.texts, ["{}"])
        self.assertEqual(self.metrics.total("pings"), 1)

    def test_object_ping_before_and_after_hello(self) -> None:
        """When the client sends a ping object in any case with extra keys, the answer is {}."""
        self.send({"messageType": "PING", "extra": [1]})
        self.assertEqual(self.sender.texts, ["{}"])
        self.sender.clear()
        self.clock.advance(20)
        self.hello()
        self.send({"MessageType": "ping"})
        self.assertEqual(self.sender.texts, ["{}"])

    def test_purge(self) -> None:
        """When the client sends purge, the session answers {} and does not count it as a ping."""
        self.send("{}")
        self.send({"messageType": "purge"})
        self.send({"messageType": "Purge"})
        self.assertEqual(self.sender.texts, ["{}", "{}", "{}"])
        self.assertOpen()
        self.assertEqual(self.metrics.total("pings"), 1)

    def test_too_many_bare(self) -> None:
        """When {} comes sooner than min_ping_interval after the last ping, 401 then close 4774."""
        self.send("{}")
        self.clock.advance(19)
        self.send("{ }")
        self.assertEqual(self.sender.texts, ["{}", '{"status":401,"error":"Invalid Command"}'])
        self.assertClosed(CloseCode.TOO_MANY_PINGS)
        self.assertEqual(self.metrics.total("too_many_pings"), 1)

    def test_too_many_object(self) -> None:
        """When a ping object comes too soon, the error echoes it with messageType ping."""
        self.send({"messageType": "ping"})
        self.sender.clear()
        self.send({"MESSAGETYPE": "PING", "x": 1})
        self.assertEqual(
            self.sender.replies, [{"messageType": "ping", "x": 1, "status": 401, "error": ERROR}]
        )
        self.assertClosed(CloseCode.TOO_MANY_PINGS)

    def test_interval_respected(self) -> None:
        """When pings are min_ping_interval apart, each is answered."""
        self.send("{}")
        self.clock.advance(20)
        self.send("{}")
        self.assertEqual(self.sender.texts, ["{}", "{}"])
        self.assertOpen()

    def test_no_limit(self) -> None:
        """When min_ping_interval is 0, pings are never limited."""
        self.build(client_config(min_ping_interval=0))
        for _ in range(5):
            self.send("{}")
        self.assertEqual(self.sender.texts, ["{}"] * 5)


class DeliverTests(SessionCase):
    """deliver(), the live path from the endpoint."""

    def test_before_hello(self) -> None:
        """When the session is not READY, deliver returns False and sends nothing."""
        self.assertFalse(self.session.deliver(CHID, 1, None))
        self.assertEqual(self.sender.events, [])

    def test_ready(self) -> None:
        """When the session is READY, deliver sends one notification and returns True."""
        self.hello()
        self.assertTrue(self.session.deliver(CHID, 3, "payload"))
        self.assertEqual(
            self.sender.replies,
            [
                {
                    "messageType": "notification",
                    "updates": [{"channelID": CHID, "version": 3, "data": "payload"}],
                }
            ],
        )
        self.assertEqual(self.metrics.total("notifications_delivered"), 1)

    def test_empty_data(self) -> None:
        """When data is empty, the notification has no data key."""
        self.hello()
        self.session.deliver(CHID, 3, "")
        self.assertEqual(self.sender.replies[0]["updates"], [{"channelID": CHID, "version": 3}])

    def test_duplicate_suppressed(self) -> None:
        """When the same unacked version is delivered twice, it is sent once and True both times."""
        self.hello()
        self.assertTrue(self.session.deliver(CHID, 3, None))
        self.assertTrue(self.session.deliver(CHID.upper(), 3, None))
        self.assertEqual(len(self.sender.texts), 1)

    def test_other_versions_sent(self) -> None:
        """When another version (even an older one) is delivered, it is sent."""
        self.hello()
        self.session.deliver(CHID, 3, None)
        self.session.deliver(CHID, 2, None)
        self.session.deliver(CHID, 4, None)
        self.assertEqual([r["updates"][0]["version"] for r in self.sender.replies], [3, 2, 4])

    def test_after_ack(self) -> None:
        """When a version was acked, delivering it again sends it again."""
        self.hello()
        self.session.deliver(CHID, 3, None)
        self.send({"messageType": "ack", "updates": [{"channelID": CHID, "version": 3}]})
        self.session.deliver(CHID, 3, None)
        self.assertEqual(len(self.sender.texts), 2)

    def test_closed(self) -> None:
        """When the session is closed, deliver returns False."""
        self.hello()
        self.session.connection_lost()
        self.assertFalse(self.session.deliver(CHID, 1, None))
        self.assertEqual(self.sender.events, [])

    def test_write_refused(self) -> None:
        """When the connection is already closing, deliver returns False."""
        self.hello()
        self.sender.is_open = False
        self.assertFalse(self.session.deliver(CHID, 1, None))


class RetryTests(SessionCase):
    """The retry timer for unacked updates."""

    def test_resend_once_per_interval(self) -> None:
        """When updates stay unacked, the session re-sends them all in one message each interval."""
        self.hello()
        self.session.deliver(CHID, 3, "d")
        self.session.deliver(CHID2, 4, None)
        self.sender.clear()
        self.clock.advance(59)
        self.assertEqual(self.sender.texts, [])
        self.clock.advance(1)
        self.assertEqual(
            self.sender.replies,
            [
                {
                    "messageType": "notification",
                    "updates": [
                        {"channelID": CHID, "version": 3, "data": "d"},
                        {"channelID": CHID2, "version": 4},
                    ],
                }
            ],
        )
        self.clock.advance(60)
        self.assertEqual(len(self.sender.texts), 2)
        self.assertEqual(self.metrics.total("notifications_resent"), 4)

    def test_stops_after_ack(self) -> None:
        """When every update is acked, nothing is re-sent; the retry timer stops when due."""
        self.hello()
        self.session.deliver(CHID, 3, None)
        self.send({"messageType": "ack", "updates": [{"channelID": CHID, "version": 3}]})
        self.sender.clear()
        self.clock.advance(60)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(60)
        self.assertEqual(self.sender.texts, [])

    def test_older_ack_keeps_retrying(self) -> None:
        """When an ack names an older version than the one sent, the update is still re-sent."""
        self.hello()
        self.session.deliver(CHID, 3, None)
        self.send({"messageType": "ack", "updates": [{"channelID": CHID, "version": 2}]})
        self.sender.clear()
        self.clock.advance(60)
        self.assertEqual(self.sender.replies[0]["updates"], [{"channelID": CHID, "version": 3}])

    def test_flushed_updates(self) -> None:
        """When updates were flushed at hello, the retry timer re-sends them too."""
        self.store(UAID, CHID, 5)
        self.send({"messageType": "hello", "uaid": UAID, "channelIDs": [CHID]})
        self.sender.clear()
        self.clock.advance(60)
        self.assertEqual(self.sender.replies[0]["updates"], [{"channelID": CHID, "version": 5}])

    def test_off(self) -> None:
        """When retry_interval is 0, nothing is re-sent."""
        self.build(client_config(retry_interval=0))
        self.hello()
        self.session.deliver(CHID, 3, None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_idle_has_no_timer(self) -> None:
        """When nothing is unacked, a READY session holds no timer."""
        self.hello()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RegistryTests(SessionCase):
    """Newest connection wins; connection_lost."""

    def test_newest_wins(self) -> None:
        """When a second connection says hello with the same UAID, the older one is closed."""
        self.hello(UAID)
        sender2, session2 = self.new_session()
        session2.receive(json.dumps({"messageType": "hello", "uaid": UAID, "channelIDs": []}))
        self.assertClosed(CloseCode.NORMAL, "Replaced by a newer connection")
        self.assertIs(self.node.registry.get(UAID), session2)
        self.session.connection_lost()
        self.assertIs(self.node.registry.get(UAID), session2)
        self.assertFalse(self.session.deliver(CHID, 1, None))
        self.assertTrue(session2.deliver(CHID, 1, None))

    def test_connection_lost(self) -> None:
        """When the connection is lost, the session leaves the registry, stops timers, is CLOSED."""
        self.hello(UAID)
        self.session.deliver(CHID, 1, None)
        self.session.connection_lost()
        self.assertIs(self.session.state, State.CLOSED)
        self.assertIsNone(self.node.registry.get(UAID))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.sender.closes, [])
        self.session.connection_lost()

    def test_connection_lost_before_hello(self) -> None:
        """When the connection is lost before hello, the hello timer is cancelled."""
        self.session.connection_lost()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_lost_during_storage(self) -> None:
        """When the connection is lost while storage is pending, the late answer sends nothing."""
        holding = HoldingStorage(self.memory, ["register"])
        self.build(storage=holding)
        self.hello(UAID)
        self.send({"messageType": "register", "channelID": CHID})
        self.send("{}")
        call = holding.next()
        self.session.connection_lost()
        call.release()
        self.assertEqual(self.sender.events, [])

    def test_lost_during_failing_storage(self) -> None:
        """When the connection is lost and storage then fails, nothing is sent or raised."""
        holding = HoldingStorage(self.memory, ["register"])
        self.build(storage=holding)
        self.hello(UAID)
        self.send({"messageType": "register", "channelID": CHID})
        call = holding.next()
        self.session.connection_lost()
        call.fail()
        self.assertEqual(self.sender.events, [])

    def test_lost_during_hello(self) -> None:
        """When the connection is lost while hello awaits storage, the UAID is never registered."""
        holding = HoldingStorage(self.memory, ["user_mode"])
        self.build(storage=holding)
        self.store(UAID, CHID, 1)
        self.send({"messageType": "hello", "uaid": UAID, "channelIDs": [CHID]})
        self.session.connection_lost()
        holding.next().release()
        self.assertEqual(self.sender.events, [])
        self.assertIsNone(self.node.registry.get(UAID))


class OrderingTests(SessionCase):
    """One message at a time, in arrival order."""

    def test_queued_behind_storage(self) -> None:
        """When messages arrive while storage is pending, they are handled after it in order."""
        holding = HoldingStorage(self.memory, ["register", "unregister"])
        self.build(storage=holding)
        self.hello(UAID)
        self.send({"messageType": "register", "channelID": CHID})
        self.send("{}")
        self.send({"messageType": "unregister", "channelID": CHID})
        self.send({"messageType": "purge"})
        register = holding.next()
        self.assertNoResult(register.deferred)
        self.assertEqual(self.sender.events, [])
        self.assertEqual(holding.pending, [])
        register.release()
        self.assertEqual([r.get("messageType") for r in self.sender.replies], ["register", None])
        unregister = holding.next()
        self.assertNoResult(unregister.deferred)
        self.send({"messageType": "PURGE"})
        unregister.release()
        self.assertEqual(
            [r.get("messageType") for r in self.sender.replies],
            ["register", None, "unregister", None, None],
        )

    def test_hello_then_register_pipelined(self) -> None:
        """When register is sent right behind a slow hello, it is handled as after the hello."""
        holding = HoldingStorage(self.memory, ["user_mode"])
        self.build(storage=holding)
        self.store(UAID, CHID, 1)
        self.send({"messageType": "hello", "uaid": UAID, "channelIDs": [CHID]})
        self.send({"messageType": "register", "channelID": CHID2})
        self.assertEqual(self.sender.events, [])
        holding.next().release()
        kinds = [r["messageType"] for r in self.sender.replies]
        self.assertEqual(kinds, ["hello", "notification", "register"])

    def test_late_storage_failure_resumes_queue(self) -> None:
        """When storage fails after a wait, the reply is 503 and the session and its queue go on."""
        holding = HoldingStorage(self.memory, ["register"])
        self.build(storage=holding)
        self.hello(UAID)
        self.send({"messageType": "register", "channelID": CHID})
        self.send("{}")
        holding.next().fail()
        self.assertEqual(
            self.sender.replies,
            [
                {"messageType": "register", "channelID": CHID, "status": 503, "error": ERROR},
                {},
            ],
        )
        self.assertOpen()

    def test_late_crash_closes(self) -> None:
        """When a handler fails unexpectedly after a storage wait, the session closes with 1011."""
        holding = HoldingStorage(self.memory, ["register"])
        self.build(storage=holding)
        self.hello(UAID)
        self.send({"messageType": "register", "channelID": CHID})
        self.send("{}")
        self.metrics.increment = None  # type: ignore[method-assign, assignment]
        holding.next().release()
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        self.assertClosed(CloseCode.INTERNAL_ERROR)
        self.assertEqual(self.sender.texts, [])

    def test_synchronous_handlers_need_no_deferred(self) -> None:
        """When storage answers at once, whole exchanges complete within receive()."""
        self.hello(UAID)
        self.send({"messageType": "register", "channelID": CHID})
        self.send({"messageType": "unregister", "channelID": CHID})
        self.send("{}")
        kinds = [r.get("messageType") for r in self.sender.replies]
        self.assertEqual(kinds, ["register", "unregister", None])
        self.assertFalse(self.session._busy)

    def test_queue_overflow(self) -> None:
        """When too many messages pile up behind a pending one, the session closes with 1008."""
        holding = HoldingStorage(self.memory, ["register"])
        self.build(storage=holding)
        self.hello(UAID)
        self.send({"messageType": "register", "channelID": CHID})
        for _ in range(51):
            self.send({"messageType": "purge"})
        self.assertClosed(CloseCode.POLICY_VIOLATION)
        holding.next().release()
        self.assertEqual(self.sender.texts, [])


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)
_TYPES = st.sampled_from(["hello", "register", "unregister", "ack", "ping", "purge", "x"]).map(
    lambda t: t.upper() if len(t) % 2 else t
)
_KEYS = st.sampled_from(["uaid", "channelIDs", "channelID", "updates", "expired", "UAID"])
_OBJECTS = st.builds(
    lambda fixed, extra, message_type: {**extra, **fixed, "messageType": message_type},
    st.dictionaries(_KEYS, _JSON | st.just(CHID) | st.just([{"channelID": CHID, "version": 1}])),
    st.dictionaries(st.text(max_size=8), _JSON, max_size=3),
    _TYPES | _JSON,
)


class PropertyTests(SynchronousTestCase):
    """Arbitrary input never breaks the session."""

    @settings(max_examples=300, deadline=None)
    @given(message=_OBJECTS, ready=st.booleans())
    def test_any_object(self, message: dict[str, Any], ready: bool) -> None:
        """When any JSON object arrives, the session never raises and answers or closes
        (only a valid ack in READY may be silent)."""
        clock = Clock()
        node = make_node(clock=clock, config=client_config(min_ping_interval=0))
        sender = RecordingSender()
        session = Session(sender, node)
        session.opened()
        if ready:
            session.receive('{"messageType":"hello","channelIDs":[]}')
            sender.clear()
        session.receive(json.dumps(message))
        for text in sender.texts:
            self.assertIsInstance(json.loads(text), dict)
        silent_ok = (
            ready
            and isinstance(message["messageType"], str)
            and message["messageType"].lower() == "ack"
        )
        if not silent_ok:
            self.assertTrue(sender.events, message)
        self.assertLessEqual(len(sender.closes), 1)
