"""Independent WebPush references for unit tests: a device's keys, and the exact
requests that pywebpush (with py-vapid) would send, built without any network."""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import http_ece
import py_vapid
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pywebpush import webpush
from twisted.web.http_headers import Headers

__all__ = [
    "Device",
    "PushRequest",
    "b64url",
    "b64url_decode",
    "public_key_bytes",
    "pywebpush_request",
]

_HEADER_RE = re.compile(r'-H "([^:"]+): ([^"]*)"')


def b64url(raw: bytes) -> str:
    """Return unpadded base64url text."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode base64url text, padded or not."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_key_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Return the 65-octet uncompressed point of a private key's public half."""
    return key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


@dataclass
class Device:
    """A user agent's keys for one subscription (RFC 8291 section 2.1)."""

    private_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    auth: bytes = field(default_factory=lambda: os.urandom(16))

    def subscription(self, endpoint: str) -> dict[str, object]:
        """Return the ``PushSubscription.toJSON()`` shape pywebpush takes."""
        return {
            "endpoint": endpoint,
            "keys": {
                "p256dh": b64url(public_key_bytes(self.private_key)),
                "auth": b64url(self.auth),
            },
        }

    def decrypt(self, data: str, headers: dict[str, str]) -> bytes:
        """Decrypt a notification's ``data`` with the forwarded ``headers``, as a device does."""
        kwargs: dict[str, object] = {}
        if headers["encoding"] == "aesgcm":
            salt = re.search(r"salt=([^;,]+)", headers["encryption"])
            dh = re.search(r"dh=([^;,]+)", headers["crypto_key"])
            assert salt is not None and dh is not None
            kwargs = {"salt": b64url_decode(salt.group(1)), "dh": b64url_decode(dh.group(1))}
        plain: bytes = http_ece.decrypt(
            b64url_decode(data),
            private_key=self.private_key,
            auth_secret=self.auth,
            version=headers["encoding"],
            **kwargs,
        )
        return plain


@dataclass
class PushRequest:
    """The headers (lower-case names) and body of one request pywebpush built."""

    headers: dict[str, str]
    body: bytes

    def twisted_headers(self) -> Headers:
        """Return the headers as twisted.web received them."""
        return Headers(
            {k.encode("latin-1"): [v.encode("latin-1")] for k, v in self.headers.items()}
        )


def pywebpush_request(
    workdir: str,
    device: Device,
    endpoint: str,
    data: bytes,
    *,
    encoding: str = "aes128gcm",
    ttl: int = 60,
    vapid: py_vapid.Vapid01 | None = None,
    claims: dict[str, str | int] | None = None,
) -> PushRequest:
    """Return the request ``pywebpush.webpush`` would POST, from its ``curl=True`` output.

    :param workdir: an empty directory; pywebpush's curl form writes the body
        there as ``encrypted.data``.
    :param vapid: the application server's key: a ``py_vapid.Vapid`` (RFC 8292
        ``vapid t=,k=`` form) or ``py_vapid.Vapid01`` (``WebPush`` + ``Crypto-Key``).
    """
    here = Path.cwd()
    Path(workdir).mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    try:
        curl = webpush(
            device.subscription(endpoint),
            data=data,
            content_encoding=encoding,
            ttl=ttl,
            vapid_private_key=vapid,
            vapid_claims=None if claims is None else dict(claims),
            curl=True,
        )
        assert isinstance(curl, str)
        body = Path("encrypted.data").read_bytes() if data else b""
    finally:
        os.chdir(here)
    headers = {name.lower(): value for name, value in _HEADER_RE.findall(curl)}
    return PushRequest(headers, body)
