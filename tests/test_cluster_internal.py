"""Tests for ``pushtwisted.web.internal``: the router listener over ``StubTreq``.

Requests are signed like a peer node signs them; the unsigned, stale and
wrongly signed ones must get a bare 401 whatever their path.
"""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import fail
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from pushtwisted.cluster.pushes import message_body
from pushtwisted.cluster.signing import REFUSAL_LOG_INTERVAL, RequestSigner
from pushtwisted.errors import StorageUnavailable
from pushtwisted.registry import ClientRegistry
from pushtwisted.storage.interface import StoredMessage
from pushtwisted.testing import FakeSession, RecordingMetrics
from pushtwisted.testing.cluster import SECRET
from pushtwisted.web._site import ListenerSite
from pushtwisted.web.internal import InternalResource, build_internal_site

NODE = "http://10.0.0.9:3000"
NOW = 1_700_000_000.0


class InternalTestCase(SynchronousTestCase):
    """A node's router listener resource with a registry of fake sessions."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.registry: ClientRegistry[Any] = ClientRegistry()
        self.metrics = RecordingMetrics()
        self.signer = RequestSigner(SECRET, clock=self.clock, max_skew=30)
        self.resource = InternalResource(self.registry, self.signer, self.metrics, self.clock)
        self.stub = StubTreq(self.resource)
        self.uaid = uuid.uuid4().hex

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        signer: RequestSigner | None = None,
        signed: bool = True,
        headers: dict[bytes, bytes] | None = None,
    ) -> tuple[int, Any, Any]:
        """Send one request; return (status, decoded JSON body, response headers)."""
        all_headers: dict[bytes, bytes] = {}
        if signed:
            all_headers.update((signer or self.signer).sign(method.encode(), path.encode(), body))
        all_headers.update(headers or {})
        kwargs: dict[str, Any] = {"headers": all_headers}
        if body:
            kwargs["data"] = body
        d = self.stub.request(method, NODE + path, **kwargs)
        self.stub.flush()
        response = self.successResultOf(d)
        content = self.successResultOf(self.stub.content(response))
        return response.code, json.loads(content), response.headers

    def push_body(self, **fields: Any) -> bytes:
        body = {"channelID": "chan", "version": 7, "data": "payload"}
        body.update(fields)
        return json.dumps(body).encode()

    def connect(self, session: FakeSession) -> FakeSession:
        self.registry.add(self.uaid, session)
        return session


class SignatureTests(InternalTestCase):
    """Every request needs a good signature; the 401 says nothing more."""

    def assertUnauthorized(self, status: int, body: Any) -> None:
        self.assertEqual(status, 401)
        self.assertEqual(
            body, {"code": 401, "errno": 109, "error": "Unauthorized", "message": "Unauthorized"}
        )

    def test_unsigned(self) -> None:
        """An unsigned request is 401, even for a connected UAID; nothing is delivered."""
        session = self.connect(FakeSession())
        status, body, _ = self.request("PUT", f"/push/{self.uaid}", self.push_body(), signed=False)
        self.assertUnauthorized(status, body)
        self.assertEqual(session.delivered, [])
        self.assertEqual(
            self.metrics.count("router_received", kind="unauthorized", status="401"), 1
        )

    def test_unsigned_unknown_path(self) -> None:
        """Unknown paths are 401 too when unsigned: the listener reveals nothing."""
        for method, path in (("GET", "/"), ("GET", "/status"), ("POST", "/push/x")):
            status, body, _ = self.request(method, path, signed=False)
            self.assertUnauthorized(status, body)

    def test_stale(self) -> None:
        """A request signed more than ``max_skew`` seconds ago is 401."""
        session = self.connect(FakeSession())
        old_clock = Clock()
        old_clock.advance(NOW - 31)
        old = RequestSigner(SECRET, clock=old_clock)
        status, body, _ = self.request("PUT", f"/push/{self.uaid}", self.push_body(), signer=old)
        self.assertUnauthorized(status, body)
        self.assertEqual(session.delivered, [])

    def test_wrong_secret(self) -> None:
        """A request signed with another secret is 401."""
        other = RequestSigner("not-the-secret", clock=self.clock)
        status, body, _ = self.request("PUT", f"/notif/{self.uaid}", signer=other)
        self.assertUnauthorized(status, body)

    def test_body_swapped(self) -> None:
        """A signature of another body is 401 (the body is signed)."""
        session = self.connect(FakeSession())
        headers = self.signer.sign(b"PUT", f"/push/{self.uaid}".encode(), self.push_body())
        status, body, _ = self.request(
            "PUT", f"/push/{self.uaid}", self.push_body(version=8), signed=False, headers=headers
        )
        self.assertUnauthorized(status, body)
        self.assertEqual(session.delivered, [])

    def test_path_swapped(self) -> None:
        """A signature for another UAID's path is 401 (the path is signed)."""
        headers = self.signer.sign(b"PUT", b"/notif/" + b"f" * 32, b"")
        status, body, _ = self.request("PUT", f"/notif/{self.uaid}", signed=False, headers=headers)
        self.assertUnauthorized(status, body)

    def test_replayed(self) -> None:
        """A signed request sent again (a captured one replayed within the skew window)
        is 401; the session took the update once."""
        session = self.connect(FakeSession())
        path = f"/push/{self.uaid}"
        headers = self.signer.sign(b"PUT", path.encode(), self.push_body())
        status, _, _ = self.request("PUT", path, self.push_body(), signed=False, headers=headers)
        self.assertEqual(status, 200)
        self.clock.advance(20)
        status, body, _ = self.request("PUT", path, self.push_body(), signed=False, headers=headers)
        self.assertUnauthorized(status, body)
        self.assertEqual(session.delivered, [("chan", 7, "payload")])

    def test_refusals_logged_in_aggregate(self) -> None:
        """A flood of unsigned requests makes one warning per interval, with the count."""
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def warnings() -> list[str]:
            return [formatEvent(e) for e in events if e.get("log_level") is LogLevel.warn]

        for _ in range(200):
            self.request("PUT", f"/notif/{self.uaid}", signed=False)
        self.assertEqual(len(warnings()), 1)
        self.clock.advance(REFUSAL_LOG_INTERVAL)
        self.request("PUT", f"/notif/{self.uaid}", signed=False)
        self.assertEqual(len(warnings()), 2)
        self.assertIn("refused 200 node request(s)", warnings()[1])
        self.assertEqual(
            self.metrics.count("router_received", kind="unauthorized", status="401"), 201
        )


class PushTests(InternalTestCase):
    """``PUT /push/<uaid>``: 200 delivered, 404 not here, 400 bad body."""

    def test_delivered(self) -> None:
        """A connected session takes the update: 200 ``{}``."""
        session = self.connect(FakeSession())
        status, body, _ = self.request("PUT", f"/push/{self.uaid}", self.push_body())
        self.assertEqual((status, body), (200, {}))
        self.assertEqual(session.delivered, [("chan", 7, "payload")])
        self.assertEqual(self.metrics.count("router_received", kind="push", status="200"), 1)

    def test_empty_data_is_none(self) -> None:
        """``data`` null or empty is delivered as None."""
        session = self.connect(FakeSession())
        self.request("PUT", f"/push/{self.uaid}", self.push_body(data=None))
        self.request("PUT", f"/push/{self.uaid}", self.push_body(data="", version=8))
        self.assertEqual(session.delivered, [("chan", 7, None), ("chan", 8, None)])

    def test_not_here(self) -> None:
        """No session for the UAID: 404."""
        status, body, _ = self.request("PUT", f"/push/{self.uaid}", self.push_body())
        self.assertEqual(status, 404)
        self.assertEqual(body["code"], 404)

    def test_session_refuses(self) -> None:
        """A session that is closing does not take it: 404."""
        self.connect(FakeSession(accept=False))
        status, _, _ = self.request("PUT", f"/push/{self.uaid}", self.push_body())
        self.assertEqual(status, 404)

    def test_session_explodes(self) -> None:
        """A session that raises is logged and answered 404 (the update stays stored)."""
        session = self.connect(FakeSession())
        session.explode = True
        status, _, _ = self.request("PUT", f"/push/{self.uaid}", self.push_body())
        self.assertEqual(status, 404)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_bad_bodies(self) -> None:
        """A body that is not the JSON object with valid fields is 400."""
        self.connect(FakeSession())
        bad = [
            b"not json",
            b"[]",
            self.push_body(channelID=""),
            self.push_body(channelID=5),
            self.push_body(version="7"),
            self.push_body(version=True),
            self.push_body(version=-1),
            self.push_body(version=2**63),
            self.push_body(data=5),
            json.dumps({"version": 1}).encode(),
        ]
        for raw in bad:
            status, body, _ = self.request("PUT", f"/push/{self.uaid}", raw)
            self.assertEqual((status, body["errno"]), (400, 303), raw)

    def test_deeply_nested_json(self) -> None:
        """A signed body of deeply nested JSON is 400, not a RecursionError and a 500."""
        self.connect(FakeSession())
        for raw in (b"[" * 100_000, b'{"a":' * 100_000, b"[" * 100_000 + b"]" * 100_000):
            status, body, _ = self.request("PUT", f"/push/{self.uaid}", raw)
            self.assertEqual((status, body["errno"]), (400, 303))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_empty_body(self) -> None:
        """No body at all is 400."""
        status, _, _ = self.request("PUT", f"/push/{self.uaid}")
        self.assertEqual(status, 400)

    def test_wrong_method(self) -> None:
        """Another method on ``/push/<uaid>`` is 405 with ``Allow: PUT``."""
        status, body, headers = self.request("POST", f"/push/{self.uaid}", self.push_body())
        self.assertEqual((status, body["errno"]), (405, 304))
        self.assertEqual(headers.getRawHeaders(b"Allow"), [b"PUT"])


MESSAGE = StoredMessage(
    chid="fedcba9876543210fedcba9876543210",
    channel_id="fedcba98-7654-3210-fedc-ba9876543210",
    seq=2**64 - 1,
    ttl=0,
    stored_at=NOW + 0.5,
    topic="news",
    data="ZGF0YQ",
    headers={"encoding": "aes128gcm"},
)


class WebPushPushTests(InternalTestCase):
    """``PUT /push/<uaid>`` with a WebPush message (``kind: webpush``)."""

    def message_body(self, **fields: Any) -> bytes:
        body = json.loads(message_body(MESSAGE))
        body.update(fields)
        return json.dumps(body).encode()

    def test_delivered(self) -> None:
        """A connected session gets the message as sent, field for field: 200."""
        session = self.connect(FakeSession())
        status, body, _ = self.request("PUT", f"/push/{self.uaid}", message_body(MESSAGE))
        self.assertEqual((status, body), (200, {}))
        self.assertEqual((session.messages, session.delivered), ([MESSAGE], []))

    def test_refused_or_absent(self) -> None:
        """A session that refuses (window full), or none: 404."""
        status, _, _ = self.request("PUT", f"/push/{self.uaid}", message_body(MESSAGE))
        self.assertEqual(status, 404)
        session = self.connect(FakeSession(accept=False))
        status, _, _ = self.request("PUT", f"/push/{self.uaid}", message_body(MESSAGE))
        self.assertEqual((status, len(session.messages)), (404, 1))

    def test_bad_bodies(self) -> None:
        """A WebPush body with a missing or ill-typed field, or another kind, is 400."""
        session = self.connect(FakeSession())
        bad = [
            self.message_body(kind="other"),
            self.message_body(chid="FEDCBA9876543210FEDCBA9876543210"),
            self.message_body(chid="fedcba98-7654-3210-fedc-ba9876543210"),
            self.message_body(channel_id=""),
            self.message_body(seq=-1),
            self.message_body(seq=2**64),
            self.message_body(seq=True),
            self.message_body(ttl=-1),
            self.message_body(ttl=1.5),
            self.message_body(stored_at="now"),
            self.message_body(stored_at=None),
            self.message_body(topic="not a topic"),
            self.message_body(topic=5),
            self.message_body(data=5),
            self.message_body(headers=[]),
            self.message_body(headers={"encoding": 5}),
        ]
        for raw in bad:
            status, body, _ = self.request("PUT", f"/push/{self.uaid}", raw)
            self.assertEqual((status, body["errno"]), (400, 303), raw)
        self.assertEqual(session.messages, [])


class NotifTests(InternalTestCase):
    """``PUT /notif/<uaid>``: the local session reads storage again."""

    def test_check_storage(self) -> None:
        """A connected session is told to check storage: 200."""
        session = self.connect(FakeSession())
        status, body, _ = self.request("PUT", f"/notif/{self.uaid}")
        self.assertEqual((status, body), (200, {}))
        self.assertEqual(session.checks, 1)

    def test_check_storage_fails_later(self) -> None:
        """A check that fails afterwards is logged (the answer was already 200)."""
        session = self.connect(FakeSession())
        session.check_result = fail(StorageUnavailable("down"))
        status, _, _ = self.request("PUT", f"/notif/{self.uaid}")
        self.assertEqual(status, 200)
        self.assertEqual(len(self.flushLoggedErrors(StorageUnavailable)), 1)

    def test_check_storage_explodes(self) -> None:
        """A session that raises at once is 404."""
        session = self.connect(FakeSession())
        session.explode = True
        status, _, _ = self.request("PUT", f"/notif/{self.uaid}")
        self.assertEqual(status, 404)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_not_here(self) -> None:
        """No session: 404."""
        status, _, _ = self.request("PUT", f"/notif/{self.uaid}")
        self.assertEqual(status, 404)

    def test_wrong_method(self) -> None:
        """DELETE on ``/notif/<uaid>`` (no connected_at) is 405 ``Allow: PUT``."""
        status, _, headers = self.request("DELETE", f"/notif/{self.uaid}")
        self.assertEqual(status, 405)
        self.assertEqual(headers.getRawHeaders(b"Allow"), [b"PUT"])


class KickTests(InternalTestCase):
    """``DELETE /notif/<uaid>/<connected_at>``: close an older local socket."""

    def test_kick_same(self) -> None:
        """The session connected at exactly that time is closed as replaced: 200."""
        session = self.connect(FakeSession(1000))
        status, body, _ = self.request("DELETE", f"/notif/{self.uaid}/1000")
        self.assertEqual((status, body), (200, {}))
        self.assertEqual(session.replaced_count, 1)
        self.assertEqual(self.metrics.count("router_received", kind="kick", status="200"), 1)

    def test_kick_older(self) -> None:
        """A session older than ``connected_at`` is closed too."""
        session = self.connect(FakeSession(900))
        status, _, _ = self.request("DELETE", f"/notif/{self.uaid}/1000")
        self.assertEqual(status, 200)
        self.assertEqual(session.replaced_count, 1)

    def test_newer_kept(self) -> None:
        """A session newer than ``connected_at`` stays open: 404."""
        session = self.connect(FakeSession(1001))
        status, _, _ = self.request("DELETE", f"/notif/{self.uaid}/1000")
        self.assertEqual(status, 404)
        self.assertEqual(session.replaced_count, 0)

    def test_not_ready_kept(self) -> None:
        """A session without ``connected_at`` (not through hello) stays open: 404."""
        session = self.connect(FakeSession(None))
        status, _, _ = self.request("DELETE", f"/notif/{self.uaid}/1000")
        self.assertEqual(status, 404)
        self.assertEqual(session.replaced_count, 0)

    def test_not_here(self) -> None:
        """No session: 404."""
        status, _, _ = self.request("DELETE", f"/notif/{self.uaid}/1000")
        self.assertEqual(status, 404)

    def test_bad_connected_at(self) -> None:
        """A ``connected_at`` that is not a decimal integer is 400."""
        self.connect(FakeSession(1000))
        for bad in ("abc", "-1", "1.5", "9" * 19):
            status, _, _ = self.request("DELETE", f"/notif/{self.uaid}/{bad}")
            self.assertEqual(status, 400, bad)

    def test_wrong_method(self) -> None:
        """PUT on the kick path is 405 ``Allow: DELETE``."""
        status, _, headers = self.request("PUT", f"/notif/{self.uaid}/1000")
        self.assertEqual(status, 405)
        self.assertEqual(headers.getRawHeaders(b"Allow"), [b"DELETE"])

    def test_session_explodes(self) -> None:
        """A session whose close raises is logged and answered 404."""

        class Exploding(FakeSession):
            def replaced(self) -> None:
                raise RuntimeError("boom")

        self.connect(Exploding(1000))
        status, _, _ = self.request("DELETE", f"/notif/{self.uaid}/1000")
        self.assertEqual(status, 404)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class PathTests(InternalTestCase):
    """Signed requests to paths the listener does not serve are 404."""

    def test_unknown_paths(self) -> None:
        """Other paths, extra segments and non-normal UAIDs are 404."""
        dashed = str(uuid.UUID(self.uaid))
        for path in (
            "/",
            "/status",
            "/push",
            "/push/",
            f"/route/{self.uaid}",
            f"/notif/{self.uaid}/1/2",
            f"/push/{self.uaid}/1",
            f"/push/{self.uaid.upper()}",
            f"/push/{dashed}",
            "/push/not-a-uaid",
        ):
            status, body, _ = self.request("PUT", path, self.push_body())
            self.assertEqual(status, 404, path)
            self.assertEqual(body["code"], 404)


class SiteTests(SynchronousTestCase):
    """``build_internal_site`` wraps the resource in a ``ListenerSite``."""

    def test_site(self) -> None:
        """The site limits bodies, writes no access log, counts no connections and adds
        no CORS header to its early 413."""
        clock = Clock()
        signer = RequestSigner(SECRET, clock=clock)
        site = build_internal_site(
            ClientRegistry(), signer, RecordingMetrics(), clock, max_body=1234
        )
        self.assertIsInstance(site, ListenerSite)
        self.assertIsInstance(site.resource, InternalResource)
        self.assertEqual(site.max_body, 1234)
        self.assertIsNone(site.limit)
        buffer = io.StringIO()
        site.logFile = buffer
        site.log(DummyRequest([b"push", b"x"]))
        self.assertEqual(buffer.getvalue(), "")
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"PUT /push/x HTTP/1.1\r\nHost: n\r\nContent-Length: 2000\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "), transport.value())
        self.assertNotIn(b"Access-Control", transport.value())
