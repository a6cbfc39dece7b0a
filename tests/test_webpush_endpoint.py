"""Tests for ``pushtwisted.web.webpush``: ``POST /wpush/...`` and ``DELETE /m/<id>``.

Requests go through ``StubTreq`` to the endpoint listener's root on a memory
backend; the app server's requests are the ones pywebpush (with py-vapid)
builds (``tests._webpush_refs``), and the device decrypts what it would
receive with http_ece.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any

import py_vapid
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.errors import StorageBusy, StorageUnavailable
from pushtwisted.logs import AccessLog, uaid_hash
from pushtwisted.storage.interface import Mode, Storage, StoredMessage
from pushtwisted.testing import (
    FailingStorage,
    FakeRouter,
    FakeSession,
    HoldingStorage,
)
from pushtwisted.tokens import EndpointCrypto, WebPushToken, generate_key
from pushtwisted.web.endpoint import build_endpoint_root
from pushtwisted.web.webpush import BACKLOG_RETRY_AFTER, MessageResource, WebPushResource
from pushtwisted.webpush.errors import MORE_INFO
from pushtwisted.webpush.vapid import key_hash
from tests._endpoint_fixture import NodeFixture
from tests._webpush_refs import Device, PushRequest, b64url, public_key_bytes, pywebpush_request

BASE = "https://push.example.com"
NOW = 1_900_000_000.0
CLAIMS: dict[str, str | int] = {"sub": "mailto:t@example.com", "exp": int(NOW) + 3600}
PLAIN = b"a push message for the device"


def new_vapid(cls: type[py_vapid.Vapid01] = py_vapid.Vapid) -> py_vapid.Vapid01:
    vapid = cls()
    vapid.generate_keys()
    return vapid


class WebPushTestCase(NodeFixture, SynchronousTestCase):
    """A node with one WebPush channel; pywebpush requests; HTTP helpers."""

    now = NOW
    router: FakeRouter | None

    def setUp(self) -> None:
        super().setUp()
        self.endpoint_config(public_url=BASE + "/")
        self.channel_id = str(uuid.UUID(self.chid))
        self.register(self.storage)
        self.device = Device()
        self.vapid = new_vapid()
        self.v1 = f"/wpush/v1/{self.crypto.make_webpush_token(self.uaid, self.chid)}"
        hashed = key_hash(public_key_bytes(self.vapid.private_key))
        self.v2 = f"/wpush/v2/{self.crypto.make_webpush_token(self.uaid, self.chid, hashed)}"

    def register(self, storage: Storage) -> None:
        self.successResultOf(
            storage.register(self.uaid, self.chid, self.channel_id, 0, Mode.WEBPUSH)
        )

    def webpush_config(self, **changes: Any) -> None:
        self.config = dataclasses.replace(
            self.config, webpush=dataclasses.replace(self.config.webpush, **changes)
        )

    def pywebpush(
        self, path: str, data: bytes = PLAIN, *, vapid: py_vapid.Vapid01 | None = None, **kw: Any
    ) -> PushRequest:
        """Return the request pywebpush sends to ``path``."""
        return pywebpush_request(
            self.mktemp(),
            self.device,
            BASE + path,
            data,
            vapid=vapid,
            claims=None if vapid is None else CLAIMS,
            **kw,
        )

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        stub: StubTreq | None = None,
    ) -> tuple[Any, bytes]:
        """Send one request; return the response and its body."""
        stub = stub or StubTreq(build_endpoint_root(self.node()))
        kwargs: dict[str, Any] = {"headers": {k: [v] for k, v in (headers or {}).items()}}
        if body:
            kwargs["data"] = body
        response = self.successResultOf(stub.request(method, BASE + path, **kwargs))
        return response, self.successResultOf(response.content())

    def send(self, request: PushRequest, path: str, **extra: str) -> tuple[Any, bytes]:
        """POST a pywebpush request (its headers updated with ``extra``) to ``path``."""
        # The transport writes its own Content-Length.
        headers = {k: v for k, v in request.headers.items() if k != "content-length"}
        headers.update({k.lower(): v for k, v in extra.items()})
        return self.request("POST", path, request.body, headers)

    def post(self, path: str | None = None, body: bytes = b"", **headers: str) -> tuple[Any, bytes]:
        """POST ``body`` with ``headers`` (``TTL: 60`` unless given) to ``path`` (v1)."""
        fields = {"ttl": "60"}
        fields.update({k.lower().replace("_", "-"): v for k, v in headers.items()})
        return self.request("POST", path or self.v1, body, fields)

    def messages(self) -> list[StoredMessage]:
        return self.successResultOf(self.storage.fetch_messages(self.uaid))

    def header(self, response: Any, name: str) -> str | None:
        values = response.headers.getRawHeaders(name)
        return None if values is None else str(values[-1])

    def message_id(self, response: Any) -> str:
        location = self.header(response, "location")
        assert location is not None
        self.assertTrue(location.startswith(BASE + "/m/"), location)
        return location[len(BASE + "/m/") :]

    def assertCreated(self, response: Any, body: bytes, ttl: int) -> str:
        """Assert a 201 with an empty body, the given TTL and a Location; return the id."""
        self.assertEqual(response.code, 201, body)
        self.assertEqual(body, b"")
        self.assertEqual(self.header(response, "ttl"), str(ttl))
        return self.message_id(response)

    def assertError(
        self, response: Any, body: bytes, code: int, errno: int | None, **headers: str
    ) -> dict[str, Any]:
        """Assert an autopush-shaped JSON error and its extra headers; return the body."""
        self.assertEqual(response.code, code, body)
        self.assertEqual(self.header(response, "content-type"), "application/json")
        decoded: dict[str, Any] = json.loads(body)
        self.assertEqual(set(decoded), {"code", "errno", "error", "message", "more_info"}, decoded)
        self.assertEqual((decoded["code"], decoded["errno"]), (code, errno))
        self.assertEqual(decoded["more_info"], MORE_INFO)
        for name, value in headers.items():
            self.assertEqual(self.header(response, name.replace("_", "-")), value, name)
        label = "none" if errno is None else str(errno)
        self.assertGreaterEqual(self.metrics.count("webpush_rejected", errno=label), 1)
        return decoded


class PostTests(WebPushTestCase):
    """A POST that passes every check is stored, routed and answered 201."""

    def test_aes128gcm_stored_and_decrypted(self) -> None:
        """A pywebpush aes128gcm POST is stored with its body as unpadded base64url and
        ``encoding``; the device decrypts the plaintext from what it would receive."""
        response, body = self.send(self.pywebpush(self.v1), self.v1)
        message_id = self.assertCreated(response, body, 60)
        [stored] = self.messages()
        self.assertEqual(stored.headers, {"encoding": "aes128gcm"})
        self.assertEqual(
            (stored.chid, stored.channel_id, stored.ttl), (self.chid, self.channel_id, 60)
        )
        assert stored.data is not None
        self.assertNotIn("=", stored.data)
        self.assertEqual(self.device.decrypt(stored.data, dict(stored.headers)), PLAIN)
        opened = self.crypto.message_ids.open(message_id)
        self.assertEqual((opened.uaid, opened.chid, opened.seq), (self.uaid, self.chid, stored.seq))

    def test_aesgcm_stored_and_decrypted(self) -> None:
        """A pywebpush aesgcm POST keeps its salt and dh (padding stripped) for the device."""
        response, body = self.send(self.pywebpush(self.v1, encoding="aesgcm"), self.v1)
        self.assertCreated(response, body, 60)
        [stored] = self.messages()
        self.assertEqual(stored.headers["encoding"], "aesgcm")
        self.assertIn("salt=", stored.headers["encryption"])
        self.assertIn("dh=", stored.headers["crypto_key"])
        assert stored.data is not None
        self.assertEqual(self.device.decrypt(stored.data, dict(stored.headers)), PLAIN)

    def test_v2_with_its_key(self) -> None:
        """A v2 endpoint takes a POST signed (both VAPID forms) with the registered key."""
        for cls in (py_vapid.Vapid, py_vapid.Vapid01):
            vapid = new_vapid(cls)
            hashed = key_hash(public_key_bytes(vapid.private_key))
            path = f"/wpush/v2/{self.crypto.make_webpush_token(self.uaid, self.chid, hashed)}"
            request = self.pywebpush(path, vapid=vapid, encoding="aesgcm")
            response, body = self.send(request, path)
            self.assertCreated(response, body, 60)
        self.assertEqual(len(self.messages()), 2)

    def test_v1_with_vapid(self) -> None:
        """VAPID on a v1 endpoint is verified and then accepted."""
        response, body = self.send(self.pywebpush(self.v1, vapid=self.vapid), self.v1)
        self.assertCreated(response, body, 60)

    def test_unversioned_path_is_v1(self) -> None:
        """``/wpush/<token>`` takes a v1 token."""
        path = self.v1.replace("/v1/", "/")
        response, body = self.send(self.pywebpush(path), path)
        self.assertCreated(response, body, 60)
        self.assertEqual(len(self.messages()), 1)

    def test_delivered_to_connected_session(self) -> None:
        """A connected session gets the stored message (same seq as stored): still 201."""
        session = FakeSession()
        self.registry.add(self.uaid, session)
        response, body = self.send(self.pywebpush(self.v1), self.v1)
        message_id = self.assertCreated(response, body, 60)
        [stored] = self.messages()
        self.assertEqual(session.messages, [stored])
        self.assertEqual(self.crypto.message_ids.open(message_id).seq, stored.seq)

    def test_session_refuses(self) -> None:
        """A session whose window is full refuses: the message waits in storage, 201."""
        session = FakeSession(accept=False)
        self.registry.add(self.uaid, session)
        response, body = self.post(body=b"x", content_encoding="aes128gcm")
        self.assertCreated(response, body, 60)
        self.assertEqual(len(session.messages), 1)
        self.assertEqual(len(self.messages()), 1)

    def test_router_error_is_still_201(self) -> None:
        """A router that raises is logged; the message is stored, 201."""
        self.router = FakeRouter()
        self.router.answer = RuntimeError("boom")
        response, body = self.post(body=b"x", content_encoding="aes128gcm")
        self.assertCreated(response, body, 60)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(self.messages()), 1)

    def test_router_waits(self) -> None:
        """The answer waits for the router (in a cluster: another node)."""
        self.router = FakeRouter()
        held: Deferred[bool] = Deferred()
        self.router.answer = held
        stub = StubTreq(build_endpoint_root(self.node()))
        d = stub.request("POST", BASE + self.v1, headers={"ttl": ["5"]})
        self.assertNoResult(d)
        held.callback(True)
        stub.flush()
        self.assertEqual(self.successResultOf(d).code, 201)
        [(uaid, message)] = self.router.messages
        self.assertEqual((uaid, message.ttl), (self.uaid, 5))

    def test_empty_body(self) -> None:
        """An empty body is a message without data or headers; crypto headers are ignored."""
        response, body = self.post(content_encoding="nonsense", encryption="salt=x")
        self.assertCreated(response, body, 60)
        [stored] = self.messages()
        self.assertEqual((stored.data, dict(stored.headers)), (None, {}))

    def test_ttl_capped(self) -> None:
        """A TTL over ``max_ttl`` is lowered to it, and the TTL header says so."""
        self.webpush_config(max_ttl=3600)
        response, body = self.post(ttl="99999999999999")
        self.assertCreated(response, body, 3600)
        self.assertEqual(self.messages()[0].ttl, 3600)

    def test_metrics(self) -> None:
        """received and stored are counted once; the request by its status."""
        self.post()
        self.assertEqual(self.metrics.count("webpush_messages", outcome="received"), 1)
        self.assertEqual(self.metrics.count("webpush_messages", outcome="stored"), 1)
        self.assertEqual(self.metrics.count("webpush_messages", outcome="dropped"), 0)
        self.assertEqual(self.metrics.count("endpoint_requests", status="201"), 1)
        self.assertEqual(len(self.metrics.observations("endpoint_latency_seconds")), 1)

    def test_answer_after_storage(self) -> None:
        """No answer before storage answers; then 201."""
        holding = HoldingStorage(self.storage, held={"store_message"})
        self.storage = holding
        stub = StubTreq(build_endpoint_root(self.node()))
        d = stub.request("POST", BASE + self.v1, headers={"ttl": ["5"]})
        self.assertNoResult(d)
        holding.next().release()
        stub.flush()
        self.assertEqual(self.successResultOf(d).code, 201)


class TtlZeroTests(WebPushTestCase):
    """TTL 0: never stored, delivered only to a session connected now."""

    def test_online(self) -> None:
        """A connected session gets it with TTL 0 and a transient seq; nothing is stored."""
        session = FakeSession()
        self.registry.add(self.uaid, session)
        response, body = self.send(self.pywebpush(self.v1, ttl=0), self.v1)
        message_id = self.assertCreated(response, body, 0)
        [message] = session.messages
        self.assertEqual(
            (message.ttl, message.stored_at, message.channel_id), (0, NOW, self.channel_id)
        )
        self.assertGreaterEqual(message.seq, 1 << 63)
        self.assertEqual(self.crypto.message_ids.open(message_id).seq, message.seq)
        assert message.data is not None
        self.assertEqual(self.device.decrypt(message.data, dict(message.headers)), PLAIN)
        self.assertEqual(self.messages(), [])
        self.assertEqual(self.metrics.count("webpush_messages", outcome="dropped"), 0)
        self.assertEqual(self.metrics.count("webpush_messages", outcome="stored"), 0)

    def test_offline_dropped(self) -> None:
        """Nobody connected: 201 with TTL 0, nothing stored, counted as dropped."""
        response, body = self.post(ttl="0")
        self.assertCreated(response, body, 0)
        self.assertEqual(self.messages(), [])
        self.assertEqual(self.metrics.count("webpush_messages", outcome="dropped"), 1)

    def test_transient_seqs_differ(self) -> None:
        """Two TTL-0 messages get different ids."""
        first = self.message_id(self.post(ttl="0")[0])
        second = self.message_id(self.post(ttl="0")[0])
        self.assertNotEqual(first, second)

    def test_unregistered_channel(self) -> None:
        """TTL 0 still checks the channel: 410 after unregister."""
        self.successResultOf(self.storage.unregister(self.uaid, self.chid))
        self.assertError(*self.post(ttl="0"), 410, 106)


class TopicAndDeleteTests(WebPushTestCase):
    """Topic replacement, and ``DELETE /m/<id>``."""

    def test_topic_replaces(self) -> None:
        """A second message with the same topic replaces the first; ids differ."""
        first = self.message_id(self.post(body=b"1", content_encoding="aes128gcm", topic="t")[0])
        second = self.message_id(self.post(body=b"2", content_encoding="aes128gcm", topic="t")[0])
        self.assertNotEqual(first, second)
        [stored] = self.messages()
        self.assertEqual((stored.topic, stored.data), ("t", b64url(b"2")))
        self.assertEqual(self.crypto.message_ids.open(second).topic, "t")

    def test_delete(self) -> None:
        """DELETE of a stored message's id removes it: 204, empty body; again: 204."""
        message_id = self.message_id(self.post()[0])
        for _ in range(2):
            response, body = self.request("DELETE", f"/m/{message_id}")
            self.assertEqual((response.code, body), (204, b""))
            self.assertEqual(self.messages(), [])
        self.assertEqual(self.metrics.count("endpoint_requests", status="204"), 2)

    def test_delete_replaced_topic_keeps_new(self) -> None:
        """DELETE of a replaced topic message's id does not remove its replacement."""
        first = self.message_id(self.post(topic="t")[0])
        self.post(topic="t")
        response, _ = self.request("DELETE", f"/m/{first}")
        self.assertEqual(response.code, 204)
        self.assertEqual(len(self.messages()), 1)

    def test_delete_one_of_two(self) -> None:
        """DELETE removes exactly that message."""
        first = self.message_id(self.post()[0])
        self.post()
        self.request("DELETE", f"/m/{first}")
        [left] = self.messages()
        self.assertNotEqual(self.crypto.message_ids.open(first).seq, left.seq)

    def test_delete_bad_ids(self) -> None:
        """An id that does not open, or another path under /m/, is 404 errno 102."""
        good = self.message_id(self.post()[0])
        other = EndpointCrypto([generate_key()]).message_ids.seal(self.uaid, self.chid, seq=1)
        for path in ["/m/", "/m/abc", f"/m/{other}", f"/m/{good}/x", "/m/" + "A" * 300]:
            self.assertError(*self.request("DELETE", path), 404, 102)
        self.assertEqual(len(self.messages()), 1)

    def test_delete_wrong_method(self) -> None:
        """GET, POST, PUT on /m/<id>: 405 with ``Allow: DELETE``, errno null."""
        message_id = self.message_id(self.post()[0])
        for method in ("GET", "POST", "PUT"):
            self.assertError(*self.request(method, f"/m/{message_id}"), 405, None, allow="DELETE")
        self.assertEqual(len(self.messages()), 1)

    def test_delete_storage_down(self) -> None:
        """Storage failing: 503 errno 202 with Retry-After; the message is kept."""
        message_id = self.message_id(self.post()[0])
        self.storage = FailingStorage(self.storage, {"delete_message"})
        response, body = self.request("DELETE", f"/m/{message_id}")
        self.assertError(response, body, 503, 202, retry_after="5")
        self.assertEqual(len(self.successResultOf(self.storage.fetch_messages(self.uaid))), 1)


class RejectionTests(WebPushTestCase):
    """Every refusal, in the processing order."""

    def test_bad_paths(self) -> None:
        """A token that does not open, the wrong version's token, or another path: 404/102."""
        v1_token = self.v1.rsplit("/", 1)[1]
        v2_token = self.v2.rsplit("/", 1)[1]
        simplepush = self.crypto.make_token(self.uaid, self.chid)
        for path in [
            "/wpush/",
            "/wpush/v1/",
            f"/wpush/v3/{v1_token}",
            f"/wpush/v2/{v1_token}",
            f"/wpush/v1/{v2_token}",
            f"/wpush/{v2_token}",
            f"/wpush/v1/{simplepush}",
            f"/wpush/v1/{v1_token}/x",
            f"/wpush/v1/{v1_token[:-2]}",
        ]:
            self.assertError(*self.post(path), 404, 102)
        self.assertEqual(self.messages(), [])

    def test_wrong_method(self) -> None:
        """GET, PUT, DELETE on /wpush/...: 405 with ``Allow: POST``, errno null."""
        for method in ("GET", "PUT", "DELETE", "PATCH"):
            response, body = self.request(method, self.v1, b"", {"ttl": "60"})
            self.assertError(response, body, 405, None, allow="POST")
        self.assertEqual(self.metrics.count("webpush_rejected", errno="none"), 4)
        self.assertEqual(self.messages(), [])

    def test_v2_needs_vapid(self) -> None:
        """A v2 POST without Authorization: 401 errno 109, ``WWW-Authenticate: vapid``."""
        self.assertError(
            *self.send(self.pywebpush(self.v2), self.v2), 401, 109, www_authenticate="vapid"
        )
        self.assertEqual(self.metrics.count("vapid_failures", reason="missing"), 1)
        self.assertEqual(self.messages(), [])

    def test_v2_other_key(self) -> None:
        """A v2 POST signed with another key: 401 (``mismatch``)."""
        request = self.pywebpush(self.v2, vapid=new_vapid())
        self.assertError(*self.send(request, self.v2), 401, 109, www_authenticate="vapid")
        self.assertEqual(self.metrics.count("vapid_failures", reason="mismatch"), 1)

    def test_v1_bad_vapid(self) -> None:
        """VAPID on v1 must verify: expired, wrong audience, unknown scheme: 401."""
        expired = pywebpush_request(
            self.mktemp(),
            self.device,
            BASE + self.v1,
            PLAIN,
            vapid=self.vapid,
            claims={"sub": "mailto:t@example.com", "exp": int(NOW) - 3600},
        )
        self.assertError(*self.send(expired, self.v1), 401, 109)
        other = pywebpush_request(
            self.mktemp(),
            self.device,
            "https://other.example" + self.v1,
            PLAIN,
            vapid=self.vapid,
            claims=CLAIMS,
        )
        self.assertError(*self.send(other, self.v1), 401, 109)
        basic = self.pywebpush(self.v1)
        self.assertError(*self.send(basic, self.v1, authorization="Basic dXNlcjpwdw=="), 401, 109)
        self.assertEqual(
            [self.metrics.count("vapid_failures", reason=r) for r in ("exp", "aud", "scheme")],
            [1, 1, 1],
        )
        self.assertEqual(self.messages(), [])

    def test_repeated_authorization(self) -> None:
        """Two Authorization headers: 401 (``scheme``)."""
        signed = self.pywebpush(self.v1, vapid=self.vapid)
        stub = StubTreq(build_endpoint_root(self.node()))
        headers = {k: [v] for k, v in signed.headers.items() if k != "content-length"}
        headers["authorization"] = [signed.headers["authorization"]] * 2
        response = self.successResultOf(
            stub.request("POST", BASE + self.v1, data=signed.body, headers=headers)
        )
        self.assertError(response, self.successResultOf(response.content()), 401, 109)

    def test_too_large(self) -> None:
        """A body over ``max_message_bytes``: 413 errno 104; at the limit: 201."""
        self.webpush_config(max_message_bytes=100)
        self.assertError(*self.post(body=b"x" * 101, content_encoding="aes128gcm"), 413, 104)
        self.assertCreated(*self.post(body=b"x" * 100, content_encoding="aes128gcm"), 60)

    def test_header_errors(self) -> None:
        """Each bad header gets its errno: TTL 111/114, Topic 113, Urgency 112, crypto 110."""
        cases: list[tuple[dict[str, str], int]] = [
            ({}, 111),
            ({"ttl": ""}, 114),
            ({"ttl": "-1"}, 114),
            ({"ttl": "1.5"}, 114),
            ({"ttl": "abc"}, 114),
            ({"topic": "a" * 33}, 113),
            ({"topic": "no spaces"}, 113),
            ({"urgency": "urgent"}, 112),
            ({"content-encoding": "gzip"}, 110),
            ({"content-encoding": "aesgcm"}, 110),
            ({"content-encoding": "aes128gcm", "encryption": "salt=abc"}, 110),
        ]
        for extra, errno in cases:
            headers = {"ttl": "60", "content-encoding": "aes128gcm"}
            headers.update(extra)
            if "ttl" in extra or errno == 111:
                headers = {k: v for k, v in headers.items() if k != "ttl" or "ttl" in extra}
            response, body = self.request("POST", self.v1, b"payload", headers)
            self.assertError(response, body, 400, errno)
        self.assertEqual(self.messages(), [])

    def test_order(self) -> None:
        """With several faults the first check's answer wins: token, VAPID, size, headers."""
        self.webpush_config(max_message_bytes=10)
        bad_vapid = {"authorization": "Basic x"}
        self.assertError(*self.request("POST", "/wpush/v1/nope", b"x" * 20, bad_vapid), 404, 102)
        self.assertError(*self.request("POST", self.v1, b"x" * 20, bad_vapid), 401, 109)
        self.assertError(*self.request("POST", self.v1, b"x" * 20, {}), 413, 104)
        self.assertError(*self.request("POST", self.v1, b"x", {}), 400, 111)

    def test_gone(self) -> None:
        """After unregister, or for a channel never registered: 410 errno 106, cacheable."""
        other = self.crypto.make_webpush_token(self.uaid, uuid.uuid4().hex)
        self.assertError(*self.post(f"/wpush/v1/{other}"), 410, 106, cache_control="max-age=86400")
        self.successResultOf(self.storage.unregister(self.uaid, self.chid))
        self.assertError(*self.post(), 410, 106, cache_control="max-age=86400")
        self.assertEqual(self.metrics.count("webpush_rejected", errno="106"), 2)

    def test_simplepush_user_is_gone(self) -> None:
        """A WebPush token naming a SimplePush user's channel: 410."""
        uaid = uuid.uuid4().hex
        self.successResultOf(self.storage.register(uaid, self.chid, self.channel_id, 0))
        token = self.crypto.make_webpush_token(uaid, self.chid)
        self.assertError(*self.post(f"/wpush/v1/{token}"), 410, 106)

    def test_backlog_cap(self) -> None:
        """Past ``max_pending_messages``: 429 errno 115 with Retry-After; a topic
        replacement still passes."""
        self.webpush_config(max_pending_messages=2)
        self.assertCreated(*self.post(topic="t"), 60)
        self.assertCreated(*self.post(), 60)
        response, body = self.post()
        self.assertError(response, body, 429, 115, retry_after=str(BACKLOG_RETRY_AFTER))
        self.assertCreated(*self.post(topic="t"), 60)
        self.assertEqual(len(self.messages()), 2)

    def test_storage_unavailable(self) -> None:
        """Storage down: 503 errno 202; busy: errno 201; both with Retry-After."""
        memory = self.storage
        self.storage = FailingStorage(memory, {"store_message"})
        self.assertError(*self.post(), 503, 202, retry_after="5")
        self.storage = FailingStorage(memory, {"store_message"}, StorageBusy("full"))
        self.assertError(*self.post(), 503, 201, retry_after="5")
        self.storage = FailingStorage(
            memory, {"store_message"}, StorageUnavailable("x"), synchronous=True
        )
        self.assertError(*self.post(), 503, 202, retry_after="5")

    def test_storage_unexpected_error(self) -> None:
        """An unexpected storage error is logged and answered 503 (no traceback shown)."""
        self.storage = FailingStorage(self.storage, {"store_message"}, ValueError("secret"))
        _, body = self.post()
        self.assertNotIn(b"secret", body)
        self.assertError(*self.post(), 503, 202)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 2)


class ExplodingCrypto(EndpointCrypto):
    """An ``EndpointCrypto`` whose token parsing fails unexpectedly."""

    def _parse_webpush_token(self, token: str, *, version: int) -> WebPushToken:
        raise RuntimeError("secret-detail-xyzzy")


class UnexpectedErrorTests(WebPushTestCase):
    """An unexpected error is logged with its traceback and answered 500 errno 999."""

    def test_500(self) -> None:
        """The answer is the JSON shape without the exception's text."""
        self.crypto = ExplodingCrypto([generate_key()])
        response, body = self.post()
        decoded = self.assertError(response, body, 500, 999)
        self.assertNotIn("xyzzy", json.dumps(decoded))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class CorsAndLogTests(WebPushTestCase):
    """CORS when configured, and the one access line per request."""

    def test_cors(self) -> None:
        """With ``cors``: OPTIONS 200, and every answer carries the WebPush CORS headers."""
        self.endpoint_config(cors=True)
        for path, allow in [(self.v1, "POST, OPTIONS"), ("/m/x", "DELETE, OPTIONS")]:
            response, body = self.request("OPTIONS", path)
            self.assertEqual((response.code, body), (200, b""))
            self.assertEqual(self.header(response, "allow"), allow)
        for response, _ in [self.post(), self.post(ttl="x"), self.request("DELETE", "/m/x")]:
            self.assertEqual(self.header(response, "access-control-allow-origin"), "*")
            self.assertEqual(self.header(response, "access-control-allow-methods"), "POST, DELETE")
            self.assertEqual(
                self.header(response, "access-control-expose-headers"),
                "Location, TTL, WWW-Authenticate",
            )
            allowed = self.header(response, "access-control-allow-headers") or ""
            for name in ("authorization", "content-encoding", "crypto-key", "ttl", "topic"):
                self.assertIn(name, allowed)

    def test_no_cors_by_default(self) -> None:
        """Without ``cors`` no CORS header is sent."""
        response, _ = self.post()
        self.assertIsNone(self.header(response, "access-control-allow-origin"))

    def test_access_lines(self) -> None:
        """One line per request with the UAID's hash and a refusal's errno; never a token,
        id or payload."""
        events: list[dict[str, Any]] = []
        root = build_endpoint_root(self.node())
        wpush = root.getStaticEntity(b"wpush")
        m = root.getStaticEntity(b"m")
        assert isinstance(wpush, WebPushResource) and isinstance(m, MessageResource)
        for resource in (wpush, m):
            resource.access_log = AccessLog(resource.access_log.namespace, events.append)
        stub = StubTreq(root)
        response, _ = self.request(
            "POST",
            self.v1,
            b"secret-payload",
            {"ttl": "60", "content-encoding": "aes128gcm"},
            stub=stub,
        )
        message_id = self.message_id(response)
        self.request("POST", self.v1, b"", {"ttl": "-1"}, stub=stub)
        self.request("DELETE", f"/m/{message_id}", stub=stub)
        lines = [e["log_format"] for e in events]
        self.assertEqual(len(lines), 3, lines)
        self.assertTrue(lines[0].startswith("POST /wpush/ 201 in "), lines[0])
        self.assertIn("POST /wpush/ 400 errno 114 (Invalid TTL header) in ", lines[1])
        self.assertTrue(lines[2].startswith("DELETE /m/ 204 in "), lines[2])
        token = self.v1.rsplit("/", 1)[1]
        for line in lines:
            self.assertTrue(line.endswith(uaid_hash(self.uaid)), line)
            for secret in (token, message_id, self.uaid, "secret-payload"):
                self.assertNotIn(secret, line)
