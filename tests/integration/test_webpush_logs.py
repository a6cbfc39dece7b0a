"""End-to-end: a WebPush session's whole life leaves no secret in the server's log.

A real ``twistd`` with ``log_level = "debug"`` and JSON lines (every field of
every event, not only the formatted text) serves a device through hello,
register (v1 and v2, and two refused), messages from ``pywebpush`` online and offline, ack,
nack, an unknown ack, ``DELETE /m/``, refusals and unregister.  Its log must
then hold none of the UAID, channel IDs, endpoint tokens, message ids,
payloads (plain or as sent) and VAPID JWTs, while it does hold the UAID's
hash (so the lines that would carry them were written).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import py_vapid
from pywebpush import WebPushException

from pushtwisted.logs import uaid_hash
from tests.integration.server import twistd_command
from tests.integration.test_webpush_endpoint import WebPushEndToEndTests, http_request
from tests.integration.webpush_client import (
    Subscription,
    WebPushDevice,
    application_server_key,
)


class NoSecretsInLogTests(WebPushEndToEndTests):
    """Everything a device and an app server do, then a search of the log."""

    config = {"server": {"log_level": "debug"}}
    command = twistd_command(
        "-n", "--pidfile=", "--logger=pushtwisted.logs.json_observer", "simplepush"
    )

    def setUp(self) -> None:
        super().setUp()
        self.secrets: set[str] = set()

    def keep(self, *values: str) -> None:
        """Remember values that must not appear in the log."""
        self.secrets.update(values)

    def subscribe(self, device: WebPushDevice, key: str | None = None) -> Subscription:
        subscription = device.register(key=key)
        token = subscription.endpoint.rsplit("/", 1)[1]
        self.keep(subscription.channel_id, subscription.channel_id.replace("-", ""), token)
        return subscription

    def push(self, subscription: Subscription, plain: bytes, **options: Any) -> str:
        """Send with pywebpush; remember the message id and the JWT; return ``Location``."""
        response = self.send(subscription, plain, **options)
        location: str = response.headers["Location"]
        self.keep(plain.decode(), location.rsplit("/", 1)[1])
        sent = response.request.headers.get("Authorization", "")
        if sent:
            jwt = sent.split("t=", 1)[-1].split(",", 1)[0]
            self.keep(jwt, jwt.split(".")[2])
        return location

    def decrypted(self, device: WebPushDevice, subscription: Subscription, plain: bytes) -> Any:
        """Receive the next notification (not acked); check its plaintext; remember its id."""
        message = device.notification()
        self.assertEqual(subscription.decrypt(message), plain)
        self.keep(message["version"], message["data"], message["data"][:40])
        return message

    def test_no_uaid_token_id_or_payload(self) -> None:
        """The log of a device's whole WebPush life holds none of its secrets."""
        vapid = py_vapid.Vapid()
        vapid.generate_keys()
        device = self.device()
        uaid = device.hello()
        self.keep(uaid, str(uuid.UUID(uaid)))
        v1 = self.subscribe(device)
        v2 = self.subscribe(device, key=application_server_key(vapid.public_key))
        device.send({"messageType": "register", "channelID": "secret-bad-channel"})
        self.assertNotEqual(device.recv()["status"], 200)
        device.send({"messageType": "register", "channelID": str(uuid.uuid4()), "key": "secret"})
        self.assertEqual(device.recv()["status"], 400)
        self.keep("secret-bad-channel")
        self.push(v1, b"secret-online-one", encoding="aesgcm")
        device.ack(self.decrypted(device, v1, b"secret-online-one"))
        self.push(v2, b"secret-online-two", vapid=vapid)
        message = self.decrypted(device, v2, b"secret-online-two")
        device.nack(message)
        device.ack(message, code=101)
        unknown = {"channelID": v1.channel_id, "version": "secret-unknown-id"}
        device.send({"messageType": "ack", "updates": [unknown]})
        self.keep("secret-unknown-id")
        device.sync()
        device.close()
        self.push(v1, b"secret-offline", headers={"Topic": "secrettopic"})
        cancelled = self.push(v1, b"secret-cancelled")
        self.assertEqual(http_request("DELETE", cancelled).status, 204)
        again = self.reconnect(device)
        self.decrypted(again, v1, b"secret-offline")
        again.assert_silent(0.3)
        again.unregister(v1.channel_id)
        with self.assertRaises(WebPushException) as raised:
            self.push(v2, b"secret-without-vapid")
        self.assertEqual(raised.exception.response.status_code, 401)
        bad = http_request("POST", v1.endpoint[:-4] + "AAAA", b"secret-bad", {"TTL": "1"})
        self.assertEqual(bad.status, 404)
        self.assertEqual(http_request("GET", v2.endpoint).status, 405)
        with self.assertRaises(WebPushException) as raised:
            self.push(v1, b"secret-gone")
        self.assertEqual(raised.exception.response.status_code, 410)
        again.sync()
        self.assertEqual(self.server.stop(), 0)
        log = self.server.log
        lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        self.assertGreater(len(lines), 20)
        self.assertIn(uaid_hash(uaid), log)
        self.assertIn("/wpush/", log)
        for secret in sorted(self.secrets):
            self.assertNotIn(secret, log, f"{secret!r} is in the server's log")
