"""A small blocking WebPush device for end-to-end tests, over ``websocket-client``.

It speaks the ``use_webpush`` client protocol as Firefox does (WEBPUSH.md
section 1) and does the device's half of the encryption (section 5): each
subscription has its own P-256 key pair and 16-octet auth secret, given to
the application server as ``Subscription.info`` (pywebpush's
``subscription_info``) and used by ``Subscription.decrypt`` (``http_ece``) to
read a received notification::

    device = WebPushDevice.connect(self, server.ws_url)
    uaid = device.hello()
    subscription = device.register(key=application_server_key(vapid.public_key))
    pywebpush.webpush(subscription.info, data=b"hi", vapid_private_key=vapid, ...)
    message = device.notification()
    self.assertEqual(subscription.decrypt(message), b"hi")
    device.ack(message)

Every receive has a timeout, so a missing message fails the test instead of
hanging; the socket is closed at the test's cleanup.
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import http_ece
import websocket
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.trial.unittest import SynchronousTestCase

from tests.integration.ws_client import TIMEOUT, JsonClient

__all__ = ["TIMEOUT", "Subscription", "WebPushDevice", "application_server_key", "b64url"]


def b64url(raw: bytes) -> str:
    """Return ``raw`` as base64url without padding."""
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _point(public_key: ec.EllipticCurvePublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def application_server_key(public_key: ec.EllipticCurvePublicKey, padded: bool = False) -> str:
    """Return the register ``key`` for an application server's VAPID public key.

    :param padded: with ``=`` padding, as Firefox sends it.
    """
    text = b64url(_point(public_key))
    return text + "=" * (-len(text) % 4) if padded else text


def _parameter(header: str, name: str) -> str:
    """Return the value of ``name=`` in a forwarded ``encryption``/``crypto_key`` header."""
    for part in header.replace(",", ";").split(";"):
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == name:
            return value.strip()
    raise KeyError(name)


@dataclass
class Subscription:
    """One registered channel and the device's keys for it.

    :ivar channel_id: the channelID sent at register.
    :ivar endpoint: the pushEndpoint the server answered.
    :ivar private_key: the device's ECDH key for this subscription.
    :ivar auth: the 16-octet auth secret.
    """

    channel_id: str
    endpoint: str
    private_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    auth: bytes = field(default_factory=lambda: os.urandom(16))

    @property
    def info(self) -> dict[str, Any]:
        """The W3C ``PushSubscription.toJSON()`` shape: pywebpush's ``subscription_info``."""
        return {
            "endpoint": self.endpoint,
            "keys": {
                "p256dh": b64url(_point(self.private_key.public_key())),
                "auth": b64url(self.auth),
            },
        }

    def decrypt(self, notification: Mapping[str, Any]) -> bytes:
        """Return the plaintext of a received notification (``aes128gcm`` or ``aesgcm``)."""
        headers = notification["headers"]
        encoding = headers["encoding"]
        extra: dict[str, bytes] = {}
        if encoding == "aesgcm":
            extra["salt"] = _unb64url(_parameter(headers["encryption"], "salt"))
            extra["dh"] = _unb64url(_parameter(headers["crypto_key"], "dh"))
        plain: bytes = http_ece.decrypt(
            _unb64url(notification["data"]),
            private_key=self.private_key,
            auth_secret=self.auth,
            version=encoding,
            **extra,
        )
        return plain


class WebPushDevice(JsonClient):
    """A WebPush client on one WebSocket (``send``, ``recv``, ``sync``... from ``JsonClient``).

    :param testcase: the test (for assertions and failures).
    :param ws: an open ``websocket.WebSocket`` to the server.
    :ivar uaid: the UAID of the last hello reply.
    """

    def __init__(self, testcase: SynchronousTestCase, ws: websocket.WebSocket) -> None:
        super().__init__(testcase, ws)
        self.uaid: str | None = None

    @classmethod
    def connect(cls, testcase: SynchronousTestCase, url: str) -> WebPushDevice:
        """Open a WebSocket to ``url`` offering ``push-notification`` (closed at cleanup)."""
        ws = websocket.create_connection(url, timeout=TIMEOUT, subprotocols=["push-notification"])
        testcase.addCleanup(ws.close)
        return cls(testcase, ws)

    def hello(self, uaid: str | None = None) -> str:
        """Say hello as Firefox does (a UAID only when given); check the reply; return the UAID."""
        message: dict[str, Any] = {"messageType": "hello", "use_webpush": True, "broadcasts": {}}
        if uaid is not None:
            message["uaid"] = uaid
        self.send(message)
        reply = self.recv()
        self.testcase.assertEqual(
            {k: reply.get(k) for k in ("messageType", "status", "use_webpush", "broadcasts")},
            {"messageType": "hello", "status": 200, "use_webpush": True, "broadcasts": {}},
            reply,
        )
        self.uaid = str(reply["uaid"])
        return self.uaid

    def register(self, key: str | None = None, channel_id: str | None = None) -> Subscription:
        """Register a channel (a fresh one unless given), with the app server's ``key`` if any.

        Checks the 200 reply and returns the subscription with fresh device keys.
        """
        channel_id = channel_id or str(uuid.uuid4())
        message: dict[str, Any] = {"messageType": "register", "channelID": channel_id}
        if key is not None:
            message["key"] = key
        self.send(message)
        reply = self.recv()
        self.testcase.assertEqual(
            (reply.get("messageType"), reply.get("status"), reply.get("channelID")),
            ("register", 200, channel_id),
            reply,
        )
        return Subscription(channel_id=channel_id, endpoint=str(reply["pushEndpoint"]))

    def notification(self, timeout: float = TIMEOUT) -> Any:
        """Return the next message, checked to be a WebPush notification."""
        message = self.recv(timeout)
        self.testcase.assertEqual(message.get("messageType"), "notification", message)
        self.testcase.assertIsInstance(message.get("version"), str, message)
        return message

    def ack(self, notification: Mapping[str, Any], code: int = 100) -> None:
        """Acknowledge one notification, as Firefox does (one ack per message)."""
        entry = {"channelID": notification["channelID"], "version": notification["version"]}
        self.send({"messageType": "ack", "updates": [{**entry, "code": code}]})

    def nack(self, notification: Mapping[str, Any], code: int = 301) -> None:
        """Report a delivery error for one notification."""
        self.send({"messageType": "nack", "version": notification["version"], "code": code})

    def unregister(self, channel_id: str, code: int = 200) -> None:
        """Unregister a channel; check the 200 reply."""
        self.send({"messageType": "unregister", "channelID": channel_id, "code": code})
        reply = self.recv()
        self.testcase.assertEqual(
            reply, {"messageType": "unregister", "channelID": channel_id, "status": 200}
        )
