"""Tests for the WebPush session (``pushtwisted.wpsession``): hello and the command cells.

Delivery (the window, the retry timer, TTL 0) is in ``tests.test_wpsession_delivery``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.logger import Logger

from pushtwisted.config import ClientConfig, Config
from pushtwisted.ids import is_valid_id, normalize_id
from pushtwisted.session import CloseCode, Session, State
from pushtwisted.storage.interface import Mode, NewMessage, StoredMessage, StoreOutcome
from pushtwisted.testing import FailingStorage, HoldingStorage
from tests.test_session import SessionCase

UAID = "9f3a2a6c2d3b4f0e8a1b2c3d4e5f6a7b"
UAID_DASHED = "9F3A2A6C-2D3B-4F0E-8A1B-2C3D4E5F6A7B"
UAID_OTHER = "0" * 31 + "1"
CHID = "01234567-89ab-cdef-0123-456789abcdef"
CHID_N = normalize_id(CHID)
CHID2 = "fedcba98-7654-3210-fedc-ba9876543210"
CHID2_N = normalize_id(CHID2)
ERROR = "Invalid Command"
PUBLIC_URL = "https://push.example.com"


def webpush_config(**changes: Any) -> Config:
    """Return a config with ``[endpoint] public_url`` set and ``[client]`` keys changed."""
    base = Config()
    return dataclasses.replace(
        base,
        client=dataclasses.replace(ClientConfig(), **changes),
        endpoint=dataclasses.replace(base.endpoint, public_url=PUBLIC_URL),
    )


def application_server_key(padded: bool = False) -> tuple[str, bytes]:
    """Return a fresh P-256 public key as base64url text, and its 65 raw octets."""
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    raw = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    text = base64.urlsafe_b64encode(raw).decode("ascii")
    return (text if padded else text.rstrip("=")), raw


class WebPushCase(SessionCase):
    """A session on a recording sender, memory storage and a Clock; WebPush helpers.

    ``build`` uses ``config`` (or ``webpush_config()``) unless given another.
    """

    config: Config | None = None

    def build(self, config: Config | None = None, storage: Any = None) -> None:
        super().build(config or self.config or webpush_config(), storage)

    def hello(self, uaid: str = "", **extra: Any) -> str:
        """Send a WebPush hello; check the reply; return its uaid; clear the sender."""
        message = {"messageType": "hello", "use_webpush": True, **extra}
        if uaid:
            message["uaid"] = uaid
        self.send(message)
        sender = self.sender
        reply = sender.replies[0]
        self.assertEqual(
            reply,
            {
                "messageType": "hello",
                "uaid": reply["uaid"],
                "status": 200,
                "use_webpush": True,
                "broadcasts": {},
            },
        )
        sender.clear()
        return str(reply["uaid"])

    def ready(self) -> None:
        """Make ``UAID`` a WebPush user with ``CHID`` and say hello with it."""
        self.register_channel(UAID)
        self.assertEqual(self.hello(UAID), UAID)

    def register_channel(self, uaid: str, chid: str = CHID) -> None:
        """Register ``chid`` (client spelling) for ``uaid`` as a WebPush user, in storage."""
        self.successResultOf(
            self.memory.register(normalize_id(uaid), normalize_id(chid), chid, 0, Mode.WEBPUSH)
        )

    def store(
        self,
        uaid: str,
        chid: str = CHID,
        *,
        ttl: int = 3600,
        topic: str | None = None,
        data: str | None = "aGVsbG8",
    ) -> StoredMessage:
        """Store a message (the channel registered first); return it as stored."""
        self.register_channel(uaid, chid)
        headers = {"encoding": "aes128gcm"} if data else {}
        new = NewMessage(chid=normalize_id(chid), ttl=ttl, topic=topic, data=data, headers=headers)
        result = self.successResultOf(self.memory.store_message(normalize_id(uaid), new, 0))
        self.assertEqual(result.outcome, StoreOutcome.STORED)
        assert result.message is not None
        return result.message

    def message_id(self, message: StoredMessage, uaid: str = UAID) -> str:
        """Return the id of a stored message (what the session sends as ``version``)."""
        return self.node.crypto.message_ids.seal(
            normalize_id(uaid), message.chid, seq=message.seq, topic=message.topic
        )

    def ack(self, *versions: str, code: int = 100) -> None:
        """Ack the messages of ``versions`` (one entry each)."""
        updates = [{"channelID": CHID, "version": v, "code": code} for v in versions]
        self.send({"messageType": "ack", "updates": updates})

    def stored_seqs(self, uaid: str = UAID) -> list[int]:
        """Return the seqs storage holds for ``uaid``, in delivery order."""
        return [m.seq for m in self.successResultOf(self.memory.fetch_messages(uaid))]

    def versions(self) -> list[str]:
        """Return the ``version`` of every notification sent, in order."""
        return [r["version"] for r in self.sender.replies if r.get("messageType") == "notification"]


class HelloTests(WebPushCase):
    """A hello with ``use_webpush: true`` (WEBPUSH.md 6.1)."""

    def test_fresh_uaid(self) -> None:
        """When the hello has no uaid, the reply has a fresh one, use_webpush and broadcasts."""
        uaid = self.hello()
        self.assertTrue(is_valid_id(uaid))
        self.assertIs(self.session.state, State.WEBPUSH_READY)
        self.assertIs(self.node.registry.get(normalize_id(uaid)), self.session)
        self.assertEqual(self.metrics.total("hellos"), 1)

    def test_channel_ids_optional_and_ignored(self) -> None:
        """channelIDs may be missing, not a list or longer than max_channels: all ignored."""
        for channel_ids in (None, "junk", [CHID] * 300, [5]):
            self.build(webpush_config(max_channels=2))
            extra = {} if channel_ids is None else {"channelIDs": channel_ids}
            self.assertTrue(is_valid_id(self.hello(**extra)))

    def test_broadcasts_accepted(self) -> None:
        """broadcasts in the hello (any object) is accepted; the reply's is empty."""
        self.hello(broadcasts={"remote-settings/monitor_changes": '"1"', "x": {"y": [1]}})
        self.assertIs(self.session.state, State.WEBPUSH_READY)

    def test_known_webpush_uaid_kept(self) -> None:
        """A UAID storage knows as a WebPush user is kept, in the client's spelling."""
        self.register_channel(UAID)
        self.assertEqual(self.hello(UAID_DASHED), UAID_DASHED)
        self.assertEqual(self.session.uaid, UAID)

    def test_unknown_uaid_reset(self) -> None:
        """A well-formed UAID storage does not know gets a fresh UAID, even without channels."""
        new = self.hello(UAID)
        self.assertNotEqual(normalize_id(new), UAID)
        self.assertTrue(is_valid_id(new))

    def test_simplepush_uaid_reset(self) -> None:
        """A UAID storage knows as a SimplePush user gets a fresh UAID (one UAID, one mode)."""
        self.successResultOf(self.memory.register(UAID, CHID_N, CHID, 0))
        self.assertNotEqual(normalize_id(self.hello(UAID)), UAID)

    def test_invalid_uaid_string(self) -> None:
        """A uaid string that is not a valid ID is answered 503; the session keeps waiting."""
        message = {"messageType": "hello", "use_webpush": True, "uaid": "0"}
        self.send(message)
        self.assertOnlyError(503, message)
        self.assertIs(self.session.state, State.AWAIT_HELLO)

    def test_uaid_not_a_string(self) -> None:
        """A uaid that is not a string is a malformed command: 401 and close 1002."""
        message = {"messageType": "hello", "use_webpush": True, "uaid": 7}
        self.send(message)
        self.assertOnlyError(401, message)
        self.assertClosed(CloseCode.PROTOCOL_ERROR)

    def test_use_webpush_must_be_true(self) -> None:
        """use_webpush other than JSON true is a SimplePush hello (channelIDs required)."""
        for flag in (False, 1, "true", None):
            self.build()
            message = {"messageType": "hello", "use_webpush": flag}
            self.send(message)
            self.assertOnlyError(401, message)
            self.assertIs(self.session.state, State.AWAIT_HELLO)
            self.sender.clear()
            self.send({"messageType": "hello", "use_webpush": flag, "channelIDs": []})
            self.assertEqual(set(self.sender.replies[0]), {"messageType", "uaid", "status"})
            self.assertIs(self.session.state, State.READY)

    def test_key_case_insensitive(self) -> None:
        """The use_webpush key matches in any case, like every key."""
        self.send({"messageType": "hello", "USE_WEBPUSH": True})
        self.assertIs(self.session.state, State.WEBPUSH_READY)
        self.assertIs(self.sender.replies[0]["use_webpush"], True)

    def test_storage_error(self) -> None:
        """A storage error reading the user's mode is 503; the session keeps waiting."""
        self.build(storage=FailingStorage(self.memory, ["user_mode"]))
        message = {"messageType": "hello", "use_webpush": True, "uaid": UAID}
        self.send(message)
        self.assertOnlyError(503, message)
        self.assertIs(self.session.state, State.AWAIT_HELLO)

    def test_stored_messages_follow_reply(self) -> None:
        """Stored messages are sent right after the hello reply, one notification each."""
        first = self.store(UAID)
        second = self.store(UAID, CHID2, data=None)
        self.send({"messageType": "hello", "use_webpush": True, "uaid": UAID})
        self.assertEqual(self.sender.replies[0]["messageType"], "hello")
        self.assertEqual(
            self.sender.replies[1:],
            [
                {
                    "messageType": "notification",
                    "channelID": CHID,
                    "version": self.message_id(first),
                    "data": "aGVsbG8",
                    "headers": {"encoding": "aes128gcm"},
                },
                {
                    "messageType": "notification",
                    "channelID": CHID2,
                    "version": self.message_id(second),
                },
            ],
        )
        self.assertEqual(self.metrics.count("webpush_messages", outcome="delivered"), 2)

    def test_expired_messages_not_sent(self) -> None:
        """A stored message whose TTL ran out before the hello is not sent (clock-driven)."""
        self.store(UAID, ttl=30)
        kept = self.store(UAID, ttl=31)
        self.clock.advance(30)
        self.sender, self.session = self.new_session()  # the device connects only now
        self.send({"messageType": "hello", "use_webpush": True, "uaid": UAID})
        self.assertEqual(self.versions(), [self.message_id(kept)])
        self.assertEqual(self.stored_seqs(), [kept.seq])

    def test_topic_messages_first(self) -> None:
        """Stored messages go out in storage's order: topic messages first, then by arrival."""
        plain = self.store(UAID)
        topical = self.store(UAID, topic="news")
        self.send({"messageType": "hello", "use_webpush": True, "uaid": UAID})
        self.assertEqual(self.versions(), [self.message_id(topical), self.message_id(plain)])
        opened = self.node.crypto.message_ids.open(self.versions()[0])
        self.assertEqual((opened.uaid, opened.chid, opened.topic), (UAID, CHID_N, "news"))

    def test_fetch_failure_retried(self) -> None:
        """When the fetch after the hello fails, it is retried on the clock until it works."""
        failing = FailingStorage(self.memory, ["fetch_messages"])
        self.build(storage=failing)
        message = self.store(UAID)
        self.send({"messageType": "hello", "use_webpush": True, "uaid": UAID})
        self.assertEqual(self.sender.replies[0]["messageType"], "hello")
        self.assertEqual(self.versions(), [])
        failing.failing.clear()
        self.clock.advance(1)
        self.assertEqual(self.versions(), [self.message_id(message)])


class SecondHelloTests(WebPushCase):
    """A second hello on a WebPush connection."""

    def test_same_uaid(self) -> None:
        """The same UAID (or none) is answered with the WebPush reply; unacked ones are re-sent."""
        message = self.store(UAID)
        self.send({"messageType": "hello", "use_webpush": True, "uaid": UAID})
        self.sender.clear()
        self.send({"messageType": "hello", "uaid": UAID_DASHED})
        self.assertEqual(
            self.sender.replies,
            [
                {
                    "messageType": "hello",
                    "uaid": UAID,
                    "status": 200,
                    "use_webpush": True,
                    "broadcasts": {},
                },
                {
                    "messageType": "notification",
                    "channelID": CHID,
                    "version": self.message_id(message),
                    "data": "aGVsbG8",
                    "headers": {"encoding": "aes128gcm"},
                },
            ],
        )
        self.assertEqual(self.metrics.count("webpush_messages", outcome="resent"), 1)
        self.assertEqual(self.metrics.count("webpush_messages", outcome="delivered"), 1)
        self.assertIs(self.session.state, State.WEBPUSH_READY)

    def test_other_uaid(self) -> None:
        """Another UAID is a protocol violation: 503 and close 1002."""
        self.hello()
        message = {"messageType": "hello", "use_webpush": True, "uaid": UAID}
        self.send(message)
        self.assertOnlyError(503, message)
        self.assertClosed(CloseCode.PROTOCOL_ERROR)


class BeforeHelloTests(WebPushCase):
    """WebPush commands before any hello (nack and broadcast_subscribe: tests.test_session)."""

    def test_ack_with_message_id(self) -> None:
        """A WebPush ack before hello is a command before hello: 401 and close."""
        message = {"messageType": "ack", "updates": [{"channelID": CHID, "version": "abc"}]}
        self.send(message)
        self.assertOnlyError(401, message)
        self.assertClosed(CloseCode.PROTOCOL_ERROR)


class PendingAndClosedTests(WebPushCase):
    """Messages while the WebPush hello waits on storage, and after close."""

    def test_queued_behind_hello(self) -> None:
        """A register sent while the hello waits on storage is answered after the hello."""
        self.register_channel(UAID)
        holding = HoldingStorage(self.memory, ["user_mode"])
        self.build(storage=holding)
        self.send({"messageType": "hello", "use_webpush": True, "uaid": UAID})
        self.send({"messageType": "register", "channelID": CHID2})
        self.assertIs(self.session.state, State.HELLO_PENDING)
        self.assertEqual(self.sender.texts, [])
        holding.next().release()
        self.assertEqual(
            [(r["messageType"], r["status"]) for r in self.sender.replies],
            [("hello", 200), ("register", 200)],
        )
        self.assertIn("/wpush/v1/", self.sender.replies[1]["pushEndpoint"])

    def test_closed_ignores_everything(self) -> None:
        """After close, a WebPush session sends nothing and holds no timer."""
        message = self.store(UAID)
        self.hello(UAID)
        self.session.connection_lost()
        self.sender.clear()
        for kind in ("register", "unregister", "ack", "nack", "broadcast_subscribe", "hello"):
            self.send({"messageType": kind, "channelID": CHID, "updates": [{"version": "x"}]})
        self.assertFalse(self.session.deliver_message(message))
        self.assertEqual(self.sender.events, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIsNone(self.node.registry.get(UAID))


class SimplePushReadyTests(WebPushCase):
    """WebPush on a SimplePush connection (nack and broadcast_subscribe: tests.test_session)."""

    def test_deliver_message_refused(self) -> None:
        """A SimplePush session does not take WebPush messages."""
        self.send({"messageType": "hello", "channelIDs": []})
        message = self.store(UAID)
        self.assertFalse(self.session.deliver_message(message))


class RegisterTests(WebPushCase):
    """register in WEBPUSH_READY."""

    def setUp(self) -> None:
        super().setUp()
        self.uaid = normalize_id(self.hello())

    def register(self, **extra: Any) -> Any:
        self.send({"messageType": "register", "channelID": CHID, **extra})
        self.assertEqual(len(self.sender.replies), 1)
        reply = self.sender.replies[0]
        self.sender.clear()
        return reply

    def test_v1(self) -> None:
        """Without a key the endpoint is /wpush/v1/ with a token naming the UAID and channel."""
        reply = self.register()
        endpoint = reply.pop("pushEndpoint")
        self.assertEqual(reply, {"messageType": "register", "channelID": CHID, "status": 200})
        prefix = PUBLIC_URL + "/wpush/v1/"
        self.assertTrue(endpoint.startswith(prefix), endpoint)
        token = self.node.crypto.parse_webpush_token(endpoint[len(prefix) :], version=1)
        self.assertEqual((token.uaid, token.chid, token.key_hash), (self.uaid, CHID_N, None))
        self.assertIs(self.successResultOf(self.memory.user_mode(self.uaid)), Mode.WEBPUSH)
        self.assertEqual(self.metrics.total("registers"), 1)

    def test_v2_padded_and_unpadded_key(self) -> None:
        """A key (padded as Firefox sends it, or not) gives /wpush/v2/ bound to its SHA-256."""
        for padded in (True, False):
            text, raw = application_server_key(padded)
            endpoint = self.register(key=text)["pushEndpoint"]
            prefix = PUBLIC_URL + "/wpush/v2/"
            self.assertTrue(endpoint.startswith(prefix), endpoint)
            token = self.node.crypto.parse_webpush_token(endpoint[len(prefix) :], version=2)
            self.assertEqual(token.key_hash, hashlib.sha256(raw).digest())
            self.assertEqual((token.uaid, token.chid), (self.uaid, CHID_N))

    def test_null_key_is_v1(self) -> None:
        """A null key is no key: a v1 endpoint."""
        self.assertIn("/wpush/v1/", self.register(key=None)["pushEndpoint"])

    def test_bad_key(self) -> None:
        """A key that is not a 65-octet P-256 point: status 400, connection open, no channel."""
        text, raw = application_server_key()
        off_curve = base64.urlsafe_b64encode(raw[:-1] + bytes([raw[-1] ^ 1])).decode().rstrip("=")
        for key in ("", "not base64!", text[:-4], off_curve, 5, ["x"]):
            message = {"messageType": "register", "channelID": CHID, "key": key}
            self.send(message)
            self.assertOnlyError(400, message)
            self.assertOpen()
            self.sender.clear()
        self.assertIsNone(self.successResultOf(self.memory.user_mode(self.uaid)))
        self.assertEqual(self.metrics.total("registers"), 0)

    def test_bad_channel_id(self) -> None:
        """A channelID that is not a valid ID: 401, connection open."""
        message = {"messageType": "register", "channelID": "nope"}
        self.send(message)
        self.assertOnlyError(401, message)
        self.assertOpen()

    def test_too_many_channels(self) -> None:
        """Past max_channels: 413, connection open."""
        self.build(webpush_config(max_channels=1))
        self.hello()
        self.register()
        message = {"messageType": "register", "channelID": CHID2}
        self.send(message)
        self.assertOnlyError(413, message)
        self.assertOpen()

    def test_storage_failure(self) -> None:
        """A storage failure: 503, connection open."""
        self.build(storage=FailingStorage(self.memory, ["register"]))
        self.hello()
        message = {"messageType": "register", "channelID": CHID}
        self.send(message)
        self.assertOnlyError(503, message)
        self.assertOpen()

    def test_fresh_only_first_of_new_uaid(self) -> None:
        """The first register after a hello that made the UAID is fresh; later ones are not."""
        recording = FailingStorage(self.memory)
        self.build(storage=recording)
        uaid = normalize_id(self.hello())
        for chid in (CHID, CHID2):
            self.send({"messageType": "register", "channelID": chid})
        self.assertEqual(recording.registers, [(CHID_N, True), (CHID2_N, False)])
        self.assertEqual([r["status"] for r in self.sender.replies], [200, 200])
        self.assertEqual(self.successResultOf(self.memory.user_mode(uaid)), Mode.WEBPUSH)
        # A hello that keeps a stored WebPush UAID makes no register fresh.
        self.build(storage=recording)
        self.hello(uaid)
        self.send({"messageType": "register", "channelID": CHID})
        self.assertEqual(recording.registers[2:], [(CHID_N, False)])

    def test_again_gives_new_url_keeps_messages(self) -> None:
        """Registering a channel again gives another URL and keeps its pending messages."""
        first = self.register()["pushEndpoint"]
        new = NewMessage(chid=CHID_N, ttl=60)
        self.successResultOf(self.memory.store_message(self.uaid, new, 0))
        second = self.register()["pushEndpoint"]
        self.assertNotEqual(first, second)
        self.assertEqual(len(self.stored_seqs(self.uaid)), 1)


class UnregisterTests(WebPushCase):
    """unregister in WEBPUSH_READY."""

    def test_deletes_channel_and_messages(self) -> None:
        """The reply is status 200; the channel's stored and unacked messages are gone."""
        self.store(UAID)
        other = self.store(UAID, CHID2)
        self.hello(UAID)
        self.send({"messageType": "unregister", "channelID": CHID, "code": 200})
        self.assertEqual(
            self.sender.replies, [{"messageType": "unregister", "channelID": CHID, "status": 200}]
        )
        self.assertEqual(self.stored_seqs(), [other.seq])
        self.assertEqual(self.metrics.total("unregisters"), 1)
        self.sender.clear()
        self.clock.advance(60)  # the retry timer re-sends only the other channel's
        self.assertEqual(self.versions(), [self.message_id(other)])

    def test_unregister_frees_room(self) -> None:
        """Messages of an unregistered channel leave the window: waiting ones go out."""
        self.build(webpush_config(webpush_batch=1))
        self.store(UAID)
        waiting = self.store(UAID, CHID2)
        self.hello(UAID)
        self.send({"messageType": "unregister", "channelID": CHID})
        self.assertEqual(self.versions(), [self.message_id(waiting)])

    def test_invalid_and_missing_channel_id(self) -> None:
        """An invalid channelID string is answered 200; a missing one 401; both stay open."""
        self.hello()
        self.send({"messageType": "unregister", "channelID": "junk"})
        self.assertEqual(self.sender.replies[0]["status"], 200)
        self.sender.clear()
        message = {"messageType": "unregister"}
        self.send(message)
        self.assertOnlyError(401, message)
        self.assertOpen()

    def test_storage_failure(self) -> None:
        """A storage failure: 503, connection open."""
        self.build(storage=FailingStorage(self.memory, ["unregister"]))
        self.hello()
        message = {"messageType": "unregister", "channelID": CHID}
        self.send(message)
        self.assertOnlyError(503, message)
        self.assertOpen()


class AckTests(WebPushCase):
    """ack in WEBPUSH_READY."""

    def test_deletes_exactly_that_message(self) -> None:
        """An ack deletes the message its id names, counts its code, and sends nothing."""
        first = self.store(UAID)
        second = self.store(UAID)
        self.hello(UAID)
        self.sender.clear()
        self.ack(self.message_id(first), code=102)
        self.assertEqual(self.sender.texts, [])
        self.assertEqual(self.stored_seqs(), [second.seq])
        self.assertEqual(self.metrics.count("webpush_acks", code="102"), 1)
        self.assertEqual(self.metrics.total("acks"), 1)

    def test_codes(self) -> None:
        """Codes 100, 101, 102 are counted by value; anything else (or none) as other."""
        self.hello()
        updates = [{"version": "x", "code": c} for c in (100, 101, 102, 103, "100", True)]
        updates.append({"version": "x"})
        self.send({"messageType": "ack", "updates": updates})
        counts = {c: self.metrics.count("webpush_acks", code=c) for c in ("100", "101", "102")}
        self.assertEqual(counts, {"100": 1, "101": 1, "102": 1})
        self.assertEqual(self.metrics.count("webpush_acks", code="other"), 4)

    def test_unknown_ids_ignored(self) -> None:
        """Ids that do not open, or name another UAID, are ignored and counted."""
        message = self.store(UAID)
        other = self.store(UAID_OTHER)
        self.hello(UAID)
        self.ack("garbage", self.message_id(other, UAID_OTHER))
        self.assertEqual(self.metrics.count("protocol_errors", reason="unknown_message_id"), 2)
        self.assertEqual(self.stored_seqs(), [message.seq])
        self.assertEqual(self.stored_seqs(UAID_OTHER), [other.seq])
        self.assertOpen()

    def test_malformed_entries(self) -> None:
        """Malformed entries are answered 401 after the good ones are done; it stays open."""
        first = self.store(UAID)
        self.hello(UAID)
        self.sender.clear()
        message = {
            "messageType": "ack",
            "updates": [{"version": self.message_id(first), "code": 100}, {"version": 5}, "x"],
        }
        self.send(message)
        self.assertOnlyError(401, message)
        self.assertEqual(self.stored_seqs(), [])
        self.assertOpen()

    def test_without_updates(self) -> None:
        """An ack without updates (missing, empty, not a list) is answered 401; it stays open."""
        self.hello()
        for updates in (None, [], {"version": "x"}):
            message: dict[str, Any] = {"messageType": "ack"}
            if updates is not None:
                message["updates"] = updates
            self.send(message)
            self.assertOnlyError(401, message)
            self.assertOpen()
            self.sender.clear()

    def test_delete_failure_keeps_it(self) -> None:
        """When storage fails the delete, the message stays stored and is re-sent on the timer."""
        failing = FailingStorage(self.memory, ["delete_message"])
        self.build(storage=failing)
        message = self.store(UAID)
        self.hello(UAID)
        self.sender.clear()
        self.ack(self.message_id(message))
        self.assertEqual(self.sender.texts, [])
        self.assertEqual(self.stored_seqs(), [message.seq])
        self.clock.advance(60)
        self.assertEqual(self.versions(), [self.message_id(message)])
        failing.failing.clear()
        self.ack(self.message_id(message))
        self.assertEqual(self.stored_seqs(), [])

    def test_ack_of_one_of_two(self) -> None:
        """Ack one of two messages and reconnect: only the other comes back."""
        first = self.store(UAID)
        second = self.store(UAID)
        self.hello(UAID)
        self.ack(self.message_id(first))
        self.session.connection_lost()
        self.sender, self.session = self.new_session()
        self.send({"messageType": "hello", "use_webpush": True, "uaid": UAID})
        self.assertEqual(self.versions(), [self.message_id(second)])


class NackAndBroadcastTests(WebPushCase):
    """nack and broadcast_subscribe in WEBPUSH_READY."""

    def test_nack(self) -> None:
        """A nack is counted by code and logged; no reply, no state change."""
        message = self.store(UAID)
        self.hello(UAID)
        self.sender.clear()
        logged: list[dict[str, Any]] = []
        self.patch(Session, "log", Logger(observer=logged.append))
        version = self.message_id(message)
        for code in (301, 302, 303, 999):
            self.send({"messageType": "nack", "version": version, "code": code})
        self.send({"messageType": "nack"})
        self.assertEqual(self.sender.events, [])
        counts = [self.metrics.count("webpush_nacks", code=c) for c in ("301", "302", "303")]
        self.assertEqual(counts, [1, 1, 1])
        self.assertEqual(self.metrics.count("webpush_nacks", code="other"), 2)
        self.assertEqual(self.stored_seqs(), [message.seq])
        nacks = [e for e in logged if e.get("log_format", "").startswith("nack")]
        self.assertEqual(len(nacks), 5)
        self.assertNotIn(version, repr(nacks))
        self.assertNotIn(UAID, repr(nacks))

    def test_broadcast_subscribe(self) -> None:
        """broadcast_subscribe is ignored: no reply, the connection stays open."""
        self.hello()
        self.send({"messageType": "broadcast_subscribe", "broadcasts": {"a": "v1"}})
        self.assertEqual(self.sender.events, [])
        self.assertOpen()

    def test_ping_and_purge(self) -> None:
        """ping and purge are answered {} as in SimplePush."""
        self.build(webpush_config(min_ping_interval=0))
        self.hello()
        self.send("{}")
        self.send({"messageType": "ping"})
        self.send({"messageType": "purge"})
        self.assertEqual(self.sender.texts, ["{}", "{}", "{}"])


class MixedTests(WebPushCase):
    """SimplePush and WebPush on one node."""

    def test_both_at_once(self) -> None:
        """A SimplePush and a WebPush session on one node each get their own protocol."""
        simple_sender, simple = self.new_session()
        self.send({"messageType": "hello", "channelIDs": []}, simple)
        simple_uaid = normalize_id(simple_sender.replies[0]["uaid"])
        self.send({"messageType": "register", "channelID": CHID2}, simple)
        self.assertIn("/update/", simple_sender.replies[1]["pushEndpoint"])
        self.assertIn("uaid", simple_sender.replies[1])
        uaid = normalize_id(self.hello())
        self.send({"messageType": "register", "channelID": CHID})
        self.assertIn("/wpush/v1/", self.sender.replies[0]["pushEndpoint"])
        self.assertNotIn("uaid", self.sender.replies[0])
        self.sender.clear()
        simple_sender.clear()
        self.assertTrue(simple.deliver(CHID2, 5, None))
        new = NewMessage(chid=CHID_N, ttl=60, data="ZGF0YQ", headers={"encoding": "aes128gcm"})
        stored = self.successResultOf(self.memory.store_message(uaid, new, 0)).message
        assert stored is not None
        self.assertTrue(self.session.deliver_message(stored))
        self.assertFalse(self.session.deliver(CHID, 6, None))
        self.assertFalse(simple.deliver_message(stored))
        self.assertEqual(
            simple_sender.replies,
            [{"messageType": "notification", "updates": [{"channelID": CHID2, "version": 5}]}],
        )
        self.assertEqual(self.versions(), [self.message_id(stored, uaid)])
        self.assertEqual(len(self.node.registry), 2)
        self.assertIs(self.node.registry.get(simple_uaid), simple)

    def test_webpush_uaid_in_simplepush_hello(self) -> None:
        """A WebPush user's UAID in a SimplePush hello gets a fresh UAID (and vice versa)."""
        self.register_channel(UAID)
        self.send({"messageType": "hello", "uaid": UAID, "channelIDs": []})
        self.assertNotEqual(normalize_id(self.sender.replies[0]["uaid"]), UAID)
        simple = "1" * 32
        self.successResultOf(self.memory.register(simple, CHID_N, CHID, 0))
        self.build()
        self.assertNotEqual(normalize_id(self.hello(simple)), simple)
