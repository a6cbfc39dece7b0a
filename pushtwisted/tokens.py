"""Endpoint tokens: authenticated encryption of (UAID, channelID).

A token is ``base64url(0x01 || nonce(12) || AES-256-GCM(key, nonce, uaid16 || chid16))``
without padding: 82 URL-safe characters that reveal nothing and cannot be
forged or altered without the key.  Several keys may be configured for
rotation: the first issues tokens, every key is tried when parsing.

Keys are 32 random bytes written as URL-safe base64 (the Fernet key format),
as ``generate_key()`` makes them.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pushtwisted.errors import ConfigError, InvalidToken
from pushtwisted.ids import id_from_bytes, id_to_bytes

__all__ = ["EndpointCrypto", "generate_key", "decode_key", "load_or_create_key"]

_VERSION = b"\x01"
_NONCE = 12
_PLAIN = 32
_TAG = 16
_RAW_LEN = 1 + _NONCE + _PLAIN + _TAG
KEY_FILE = "endpoint.key"


def generate_key() -> str:
    """Return a new random token key (32 bytes, URL-safe base64)."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")


def decode_key(text: str) -> bytes:
    """Decode a configured key; it must be 32 bytes in URL-safe base64.

    :raises ConfigError: when it is not.
    """
    try:
        raw = base64.urlsafe_b64decode(text.strip().encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ConfigError("crypto.keys: a key is not URL-safe base64") from None
    if len(raw) != 32:
        raise ConfigError(f"crypto.keys: a key must be 32 bytes, got {len(raw)}")
    return raw


def load_or_create_key(state_dir: str | Path) -> str:
    """Return the key kept in ``state_dir``, generating and saving it first if absent.

    The file is created with mode 0600 so that endpoints survive a restart.
    """
    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / KEY_FILE
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    key = generate_key()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key + "\n")
    os.replace(tmp, path)
    return key


class EndpointCrypto:
    """Issue and parse endpoint tokens.

    :param keys: one or more keys as ``generate_key()`` makes them; the first
        issues tokens.
    :raises ConfigError: when no key is given or a key is malformed.
    """

    __slots__ = ("_ciphers",)

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ConfigError("crypto.keys: at least one key is needed")
        self._ciphers = [AESGCM(decode_key(k)) for k in keys]

    def make_token(self, uaid: str, chid: str) -> str:
        """Return the token for ``uaid`` and ``chid`` (both in normal form)."""
        nonce = os.urandom(_NONCE)
        sealed = self._ciphers[0].encrypt(nonce, id_to_bytes(uaid) + id_to_bytes(chid), _VERSION)
        raw = _VERSION + nonce + sealed
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def parse(self, token: str) -> tuple[str, str]:
        """Return ``(uaid, chid)`` in normal form.

        :raises InvalidToken: when the token does not decode or authenticate.
        """
        if len(token) > 200:
            raise InvalidToken("token too long")
        try:
            text = token.encode("ascii")
            raw = base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise InvalidToken("token is not base64url") from None
        if len(raw) != _RAW_LEN or raw[:1] != _VERSION:
            raise InvalidToken("token has the wrong length or version")
        nonce, sealed = raw[1 : 1 + _NONCE], raw[1 + _NONCE :]
        for cipher in self._ciphers:
            try:
                plain = cipher.decrypt(nonce, sealed, _VERSION)
            except InvalidTag:
                continue
            return id_from_bytes(plain[:16]), id_from_bytes(plain[16:])
        raise InvalidToken("token does not authenticate with any key")
