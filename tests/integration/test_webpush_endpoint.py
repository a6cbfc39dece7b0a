"""End-to-end: WebPush messages from pywebpush to a device, through a real ``twistd``.

The application server is ``pywebpush`` (with ``py-vapid``), unmodified, POSTing to the
pushEndpoint a device obtained over a real WebSocket
(``tests.integration.webpush_client.WebPushDevice``); the device decrypts what it
receives with ``http_ece`` using the keys it generated.  The server runs with the
memory backend; the main cases (``MainTests``: online, offline, topic
replacement, ack one of two, unregister with a pending message) and the backlog
cap (``[webpush] max_pending_messages`` lowered) also run on SQLite and on a real
memcached (``OnSqlite``, ``OnMemcached``).
Requests pywebpush would not send (bad headers, other methods, ``DELETE /m/``) are
made with ``http.client``.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.request
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import py_vapid
import websocket
from pywebpush import WebPushException, webpush
from twisted.trial.unittest import SynchronousTestCase

from tests.integration.memcached_fixture import shared_memcached
from tests.integration.server import ServerProcess
from tests.integration.webpush_client import (
    TIMEOUT,
    Subscription,
    WebPushDevice,
    application_server_key,
)

CLAIMS = {"sub": "mailto:e2e@example.com"}
ENCODINGS = ("aes128gcm", "aesgcm")


def new_vapid() -> py_vapid.Vapid:
    vapid = py_vapid.Vapid()
    vapid.generate_keys()
    return vapid


class Response:
    """A finished HTTP exchange: status, headers (lower-case names), body."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = dict(headers)
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    method: str, url: str, body: bytes = b"", headers: Mapping[str, str] | None = None
) -> Response:
    """Send one request with ``http.client``; return the whole response."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=TIMEOUT)
    try:
        connection.request(method, parts.path, body=body or None, headers=dict(headers or {}))
        response = connection.getresponse()
        found = {k.lower(): v for k, v in response.getheaders()}
        return Response(response.status, found, response.read())
    finally:
        connection.close()


class WebPushEndToEndTests(SynchronousTestCase):
    """pywebpush -> a real pushtwisted process -> a WebPush device over a real WebSocket."""

    config: dict[str, dict[str, object]] = {}
    #: The server's command line (``ServerProcess``'s default when None).
    command: list[str] | None = None

    def storage(self) -> dict[str, object]:
        """The server's ``[storage]`` (besides its path): the backend it runs on."""
        return {"backend": "memory"}

    def setUp(self) -> None:
        config: dict[str, dict[str, object]] = {
            "storage": self.storage(),
            "client": {"min_ping_interval": 0},
        }
        for section, table in self.config.items():
            config.setdefault(section, {}).update(table)
        self.server = ServerProcess(self, config, command=self.command)
        self.server.start()

    def device(self) -> WebPushDevice:
        return WebPushDevice.connect(self, self.server.ws_url)

    def send(
        self,
        subscription: Subscription,
        data: bytes,
        *,
        vapid: py_vapid.Vapid01 | None = None,
        ttl: int = 60,
        encoding: str = "aes128gcm",
        headers: dict[str, str] | None = None,
    ) -> Any:
        """POST with pywebpush; return its ``requests`` response (201 expected)."""
        response = webpush(
            subscription.info,
            data=data,
            vapid_private_key=vapid,
            vapid_claims=dict(CLAIMS) if vapid is not None else None,
            content_encoding=encoding,
            ttl=ttl,
            headers=headers,
            timeout=TIMEOUT,
        )
        self.assertEqual(response.status_code, 201, response.text)
        self.assertEqual(response.headers["TTL"], str(ttl))
        self.assertTrue(
            response.headers["Location"].startswith(self.server.endpoint_url + "/m/"),
            response.headers["Location"],
        )
        return response

    def receive(self, device: WebPushDevice, subscription: Subscription, plain: bytes) -> Any:
        """Receive the next notification; check it decrypts to ``plain``; ack it."""
        message = device.notification()
        self.assertEqual(message["channelID"], subscription.channel_id)
        self.assertEqual(set(message), {"messageType", "channelID", "version", "data", "headers"})
        self.assertEqual(subscription.decrypt(message), plain)
        device.ack(message)
        return message

    def reconnect(self, device: WebPushDevice) -> WebPushDevice:
        """Close ``device`` and say hello again with its UAID on a new socket."""
        uaid = device.uaid
        device.close()
        again = self.device()
        self.assertEqual(again.hello(uaid), uaid)
        return again


class DeliveryTests(WebPushEndToEndTests):
    """The largest message, a forged VAPID signature, SimplePush alongside."""

    def test_largest_message(self) -> None:
        """A 4,096-octet plaintext (pywebpush's largest) arrives whole."""
        device = self.device()
        device.hello()
        subscription = device.register()
        plain = bytes(range(256)) * 16
        self.send(subscription, plain)
        self.receive(device, subscription, plain)

    def test_wrong_vapid_key(self) -> None:
        """pywebpush signing with another key than the v2 subscription's: 401, nothing sent."""
        device = self.device()
        device.hello()
        subscription = device.register(key=application_server_key(new_vapid().public_key))
        with self.assertRaises(WebPushException) as raised:
            webpush(
                subscription.info,
                data=b"forged",
                vapid_private_key=new_vapid(),
                vapid_claims=dict(CLAIMS),
                ttl=60,
                timeout=TIMEOUT,
            )
        response = raised.exception.response
        assert response is not None
        self.assertEqual(response.status_code, 401)
        self.assertEqual(response.headers["WWW-Authenticate"], "vapid")
        self.assertEqual(response.json()["errno"], 109)
        device.assert_silent(0.5)

    def test_draft01_vapid_form(self) -> None:
        """py-vapid's older header form (``WebPush <JWT>`` and ``Crypto-Key: p256ecdsa=``)
        on a v2 subscription: both encodings arrive, without ``p256ecdsa`` in the
        forwarded headers; signed with another key it is refused with 401."""
        device = self.device()
        device.hello()
        vapid = py_vapid.Vapid01()
        vapid.generate_keys()
        subscription = device.register(key=application_server_key(vapid.public_key))
        for encoding in ENCODINGS:
            plain = f"draft-01 {encoding}".encode()
            self.send(subscription, plain, vapid=vapid, encoding=encoding)
            message = self.receive(device, subscription, plain)
            self.assertNotIn("p256ecdsa", message["headers"].get("crypto_key", ""))
        other = py_vapid.Vapid01()
        other.generate_keys()
        with self.assertRaises(WebPushException) as raised:
            webpush(
                subscription.info,
                data=b"forged",
                vapid_private_key=other,
                vapid_claims=dict(CLAIMS),
                content_encoding="aesgcm",
                ttl=60,
                timeout=TIMEOUT,
            )
        response = raised.exception.response
        assert response is not None
        self.assertEqual((response.status_code, response.json()["errno"]), (401, 109))
        device.assert_silent(0.5)

    def test_simplepush_and_webpush_at_once(self) -> None:
        """A SimplePush client and a WebPush device on one server both get their messages."""
        simple = websocket.create_connection(self.server.ws_url, timeout=TIMEOUT)
        self.addCleanup(simple.close)
        simple.send(json.dumps({"messageType": "hello", "uaid": "", "channelIDs": []}))
        self.assertEqual(json.loads(simple.recv())["status"], 200)
        chid = str(uuid.uuid4())
        simple.send(json.dumps({"messageType": "register", "channelID": chid}))
        endpoint = json.loads(simple.recv())["pushEndpoint"]
        device = self.device()
        device.hello()
        subscription = device.register()
        self.send(subscription, b"to the WebPush device")
        request = urllib.request.Request(endpoint, data=b"version=7", method="PUT")
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            self.assertEqual(response.status, 200)
        self.receive(device, subscription, b"to the WebPush device")
        self.assertEqual(
            json.loads(simple.recv()),
            {"messageType": "notification", "updates": [{"channelID": chid, "version": 7}]},
        )
        device.assert_silent(0.3)


class MainTests(WebPushEndToEndTests):
    """The plaintext arrives (both encodings, online and offline, v1 and v2); topics,
    acks and unregister behave as WEBPUSH.md section 6 says."""

    def subscriptions(
        self, device: WebPushDevice
    ) -> list[tuple[str, Subscription, py_vapid.Vapid | None]]:
        """A v1 subscription (no VAPID) and a v2 one (restricted to a VAPID key)."""
        vapid = new_vapid()
        v1 = device.register()
        v2 = device.register(key=application_server_key(vapid.public_key))
        self.assertIn("/wpush/v1/", v1.endpoint)
        self.assertIn("/wpush/v2/", v2.endpoint)
        return [("v1", v1, None), ("v2", v2, vapid)]

    def test_online(self) -> None:
        """A connected device decrypts each message: aes128gcm and aesgcm, v1 and v2."""
        device = self.device()
        device.hello()
        for name, subscription, vapid in self.subscriptions(device):
            for encoding in ENCODINGS:
                plain = f"online {name} {encoding}".encode()
                self.send(subscription, plain, vapid=vapid, encoding=encoding)
                message = self.receive(device, subscription, plain)
                self.assertEqual(message["headers"]["encoding"], encoding)

    def test_offline(self) -> None:
        """Messages sent while the device is away arrive, in order, after its next hello."""
        device = self.device()
        device.hello()
        subscriptions = self.subscriptions(device)
        device.close()
        sent = []
        for name, subscription, vapid in subscriptions:
            for encoding in ENCODINGS:
                plain = f"offline {name} {encoding}".encode()
                self.send(subscription, plain, vapid=vapid, encoding=encoding)
                sent.append((subscription, plain))
        again = self.device()
        again.hello(device.uaid)
        for subscription, plain in sent:
            self.receive(again, subscription, plain)
        again.assert_silent(0.5)

    def test_topic_replacement(self) -> None:
        """Of two messages with one topic sent while away, only the second arrives."""
        device = self.device()
        device.hello()
        subscription = device.register()
        device.close()
        self.send(subscription, b"first", headers={"Topic": "score"})
        self.send(subscription, b"second", headers={"Topic": "score"})
        again = self.device()
        again.hello(device.uaid)
        self.receive(again, subscription, b"second")
        again.assert_silent(0.5)

    def test_ack_one_of_two(self) -> None:
        """Of two delivered messages only the acked one is gone: the other comes back."""
        device = self.device()
        device.hello()
        subscription = device.register()
        self.send(subscription, b"one")
        self.send(subscription, b"two")
        first = device.notification()
        second = device.notification()
        self.assertEqual(subscription.decrypt(first), b"one")
        self.assertEqual(subscription.decrypt(second), b"two")
        device.ack(first)
        device.sync()
        again = self.reconnect(device)
        self.receive(again, subscription, b"two")
        again.assert_silent(0.5)

    def test_unregister_with_pending_message(self) -> None:
        """Unregister drops the channel's unacked message; later POSTs are 410."""
        device = self.device()
        device.hello()
        subscription = device.register()
        self.send(subscription, b"pending")
        device.notification()  # not acked
        device.unregister(subscription.channel_id)
        again = self.reconnect(device)
        again.assert_silent(0.5)
        with self.assertRaises(WebPushException) as raised:
            webpush(subscription.info, data=b"late", ttl=60, timeout=TIMEOUT)
        response = raised.exception.response
        assert response is not None
        self.assertEqual(response.status_code, 410)
        self.assertEqual(response.headers["Cache-Control"], "max-age=86400")
        self.assertEqual(response.json()["errno"], 106)


class LifecycleTests(WebPushEndToEndTests):
    """TTL 0 and expiry, cancel."""

    def test_ttl_zero(self) -> None:
        """TTL 0 reaches a connected device; sent while it is away, it never arrives."""
        device = self.device()
        device.hello()
        subscription = device.register()
        self.send(subscription, b"now", ttl=0)
        self.receive(device, subscription, b"now")
        device.close()
        self.send(subscription, b"lost", ttl=0)
        again = self.reconnect(device)
        again.assert_silent(0.5)

    def test_ttl_expiry(self) -> None:
        """A message with TTL 1 is gone once its second has passed."""
        device = self.device()
        device.hello()
        subscription = device.register()
        device.close()
        self.send(subscription, b"short", ttl=1)
        self.send(subscription, b"long", ttl=60)
        time.sleep(1.5)
        again = self.device()
        again.hello(device.uaid)
        self.receive(again, subscription, b"long")
        again.assert_silent(0.5)

    def test_delete(self) -> None:
        """``DELETE`` of a stored message's Location cancels it: 204, it never arrives."""
        device = self.device()
        device.hello()
        subscription = device.register()
        device.close()
        cancelled = self.send(subscription, b"cancelled")
        self.send(subscription, b"kept")
        location = cancelled.headers["Location"]
        self.assertEqual(http_request("DELETE", location).status, 204)
        again = self.device()
        again.hello(device.uaid)
        self.receive(again, subscription, b"kept")
        again.assert_silent(0.5)
        self.assertEqual(http_request("DELETE", location).status, 204)
        bad = http_request("DELETE", self.server.endpoint_url + "/m/not-an-id")
        self.assertEqual((bad.status, bad.json()["errno"]), (404, 102))


class BacklogTests(WebPushEndToEndTests):
    """The per-UAID backlog cap."""

    config = {"webpush": {"max_pending_messages": 2}}

    def assertFull(self, subscription: Subscription) -> None:
        with self.assertRaises(WebPushException) as raised:
            webpush(subscription.info, data=b"over", ttl=60, timeout=TIMEOUT)
        response = raised.exception.response
        assert response is not None
        self.assertEqual(response.status_code, 429)
        self.assertEqual(response.json()["errno"], 115)
        self.assertTrue(response.headers["Retry-After"].isdigit())

    def test_cap(self) -> None:
        """Past ``max_pending_messages`` stored messages: 429 with Retry-After; an ack frees
        a place, a message sent but not acked keeps its place."""
        device = self.device()
        device.hello()
        subscription = device.register()
        device.close()
        self.send(subscription, b"1")
        self.send(subscription, b"2")
        self.assertFull(subscription)
        again = self.device()
        again.hello(device.uaid)
        self.receive(again, subscription, b"1")
        self.assertEqual(subscription.decrypt(again.notification()), b"2")  # not acked
        again.sync()
        self.send(subscription, b"3")
        self.assertFull(subscription)


class OnSqlite(WebPushEndToEndTests):
    """The server keeps its state in SQLite (in its state directory)."""

    def storage(self) -> dict[str, object]:
        return {"backend": "sqlite"}


class OnMemcached(WebPushEndToEndTests):
    """The server keeps its state in the run's real memcached, under a prefix of its own."""

    def storage(self) -> dict[str, object]:
        prefix = f"wp-{uuid.uuid4().hex[:8]}:"
        return {"backend": "memcached", "servers": [shared_memcached()], "key_prefix": prefix}


class SqliteMainTests(OnSqlite, MainTests):
    """``MainTests`` on SQLite."""


class MemcachedMainTests(OnMemcached, MainTests):
    """``MainTests`` on memcached."""


class SqliteBacklogTests(OnSqlite, BacklogTests):
    """``BacklogTests`` on SQLite."""


class MemcachedBacklogTests(OnMemcached, BacklogTests):
    """``BacklogTests`` on memcached."""


class RefusalTests(WebPushEndToEndTests):
    """Each refusal of the endpoint, in the autopush JSON shape, over real HTTP."""

    def assertRefused(
        self, response: Response, status: int, errno: int | None, **headers: str
    ) -> None:
        self.assertEqual(response.status, status, response.body)
        self.assertEqual(response.headers["content-type"], "application/json")
        body = response.json()
        self.assertEqual((body["code"], body["errno"]), (status, errno))
        self.assertEqual(set(body), {"code", "errno", "error", "message", "more_info"})
        for name, value in headers.items():
            self.assertEqual(response.headers[name.replace("_", "-")], value)

    def post(self, endpoint: str, body: bytes = b"x", **headers: str) -> Response:
        """POST ``body`` with TTL 60, aes128gcm and ``headers`` (``_`` for ``-`` in names)."""
        sent = {"TTL": "60", "Content-Encoding": "aes128gcm"}
        sent.update({k.replace("_", "-"): v for k, v in headers.items()})
        return http_request("POST", endpoint, body, sent)

    def test_refusals(self) -> None:
        """404, 405, 400 (each errno), 401, 413 and 410, as a raw HTTP client sees them."""
        device = self.device()
        device.hello()
        endpoint = device.register().endpoint
        self.assertRefused(self.post(endpoint[:-3]), 404, 102)
        self.assertRefused(self.post(self.server.endpoint_url + "/wpush/v9/x"), 404, 102)
        self.assertRefused(http_request("GET", endpoint), 405, None, allow="POST")
        self.assertRefused(http_request("PUT", endpoint, b"x"), 405, None, allow="POST")
        no_ttl = http_request("POST", endpoint, b"x", {"Content-Encoding": "aes128gcm"})
        self.assertRefused(no_ttl, 400, 111)
        self.assertRefused(self.post(endpoint, TTL="-1"), 400, 114)
        self.assertRefused(self.post(endpoint, TTL="soon"), 400, 114)
        self.assertRefused(self.post(endpoint, Topic="not/base64url"), 400, 113)
        self.assertRefused(self.post(endpoint, Urgency="asap"), 400, 112)
        self.assertRefused(self.post(endpoint, Content_Encoding="gzip"), 400, 110)
        self.assertRefused(self.post(endpoint, Content_Encoding="aesgcm"), 400, 110)
        self.assertRefused(self.post(endpoint, b"x" * 5631), 413, 104)
        self.assertRefused(
            self.post(endpoint, Authorization="vapid t=x.y.z,k=nonsense"),
            401,
            109,
            www_authenticate="vapid",
        )
        gone = device.register()
        device.unregister(gone.channel_id)
        self.assertRefused(self.post(gone.endpoint), 410, 106, cache_control="max-age=86400")
        device.assert_silent(0.3)
