"""Endpoint tokens and WebPush message ids: authenticated encryption of ids.

Every token is ``base64url(version || nonce(12) || AES-256-GCM(key, nonce, plain,
aad=version))`` without padding: URL-safe text that reveals nothing and cannot
be forged or altered without the key.  The version byte is also the GCM
associated data, so a token of one kind never parses as another:

=======  ==================  =====================================  ==========
version  kind                plain                                  characters
=======  ==================  =====================================  ==========
``01``   SimplePush          uaid(16) chid(16)                      82
``02``   WebPush v1          uaid(16) chid(16)                      82
``03``   WebPush v2          uaid(16) chid(16) SHA-256 of key(32)   124
=======  ==================  =====================================  ==========

SimplePush tokens are the same bytes as before WebPush existed.  ``/wpush/v1/{token}``
and ``/wpush/{token}`` take version 02 tokens, ``/wpush/v2/{token}`` version 03
(section 6.2 of the WebPush reference).

WebPush message ids (section 6.3) are ``base64url(04 || AES-SIV(plain,
aad=04))`` with ``plain = uaid(16) chid(16) seq(8, big-endian) [topic]``:
76 characters, or up to 119 with a 32-character topic.  AES-SIV is
deterministic (no nonce to carry, which keeps ids short); its key is derived
from each token key with HKDF-SHA256, so ids and tokens never share a key.
Every id carries the per-UAID sequence number of the stored copy, and the
topic when there is one: two messages on one topic slot (a replacement) get
different ids, so an ack or a ``DELETE`` of the old one cannot remove the new.

Several keys may be configured for rotation: the first issues tokens and ids,
every key is tried when parsing.  An ``EndpointCrypto`` remembers what its
last ``PARSED_TOKENS`` valid tokens hold (an LRU of its own: its keys never
change, so a remembered answer is exactly what decrypting again would give;
another key set is another instance, with an empty memory); a token that
does not parse is not remembered.  Keys are 32 random bytes written as URL-safe
base64 (the Fernet key format), as ``generate_key()`` makes them.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pushtwisted.errors import ConfigError, InvalidToken
from pushtwisted.ids import id_from_bytes, id_to_bytes
from pushtwisted.webpush.headers import is_valid_topic

__all__ = [
    "PARSED_TOKENS",
    "EndpointCrypto",
    "WebPushToken",
    "MessageId",
    "MessageIds",
    "generate_key",
    "decode_key",
    "key_problem",
    "KeyFile",
    "load_or_create_key",
]

_SIMPLEPUSH = b"\x01"
_WEBPUSH_V1 = b"\x02"
_WEBPUSH_V2 = b"\x03"
_MESSAGE_ID = b"\x04"
_NONCE = 12
_IDS = 32
_HASH = 32
_SEQ = 8
_TOPIC_MAX = 32
_SIV = 16
_ID_MIN = 1 + _SIV + _IDS + _SEQ
_MAX_CHARS = 200
_ID_KEY_INFO = b"pushtwisted webpush message id"
KEY_FILE = "endpoint.key"
#: Most valid tokens whose contents one ``EndpointCrypto`` remembers (each
#: costs about 0.5 KB): more than the devices an app server sends to in turn.
PARSED_TOKENS = 16384


def generate_key() -> str:
    """Return a new random token key (32 bytes, URL-safe base64)."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")


def _raw_key(text: str) -> bytes | str:
    """Return the 32 bytes of a key, or why ``text`` is not one (never the key)."""
    try:
        raw = base64.urlsafe_b64decode(text.strip().encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return "a key is not URL-safe base64"
    if len(raw) != 32:
        return f"a key must be 32 bytes, got {len(raw)}"
    return raw


def key_problem(text: str) -> str | None:
    """Say why ``text`` is not a key (32 bytes in URL-safe base64), or None."""
    raw = _raw_key(text)
    return raw if isinstance(raw, str) else None


def decode_key(text: str) -> bytes:
    """Decode a configured key; it must be 32 bytes in URL-safe base64.

    :raises ConfigError: naming ``crypto.keys``, when it is not.
    """
    raw = _raw_key(text)
    if isinstance(raw, str):
        raise ConfigError(f"crypto.keys: {raw}")
    return raw


@dataclass(frozen=True, slots=True)
class KeyFile:
    """The endpoint key kept in the state directory.

    :ivar key: the key, as text.
    :ivar path: the file it is kept in.
    :ivar generated: True when it was generated (and written) just now.
    """

    key: str
    path: Path
    generated: bool


def load_or_create_key(state_dir: str | Path) -> KeyFile:
    """Return the key kept in ``state_dir``, generating and saving it first if absent.

    The directory is created with mode 0700 if missing, the file with mode
    0600, so that endpoints survive a restart and no other user reads the key.

    :raises ConfigError: naming ``storage.path`` and the file, when the file
        holds no valid key (it is never overwritten: endpoints handed out
        with it would stop working).
    :raises OSError: when the directory or the file cannot be read or written.
    """
    directory = Path(state_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / KEY_FILE
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        pass
    else:
        problem = key_problem(text)
        if problem is not None:
            raise ConfigError(
                f"storage.path: the endpoint key file {path} is corrupt ({problem}):"
                " restore it, or delete it to have a new key generated (every pushEndpoint"
                " handed out with the old key then stops working)"
            )
        return KeyFile(text, path, generated=False)
    key = generate_key()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key + "\n")
    os.replace(tmp, path)
    return KeyFile(key, path, generated=True)


def _encode(raw: bytes) -> str:
    """Return unpadded base64url text."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode(token: str) -> bytes:
    """Decode unpadded or padded base64url text.

    :raises InvalidToken: when it is too long or not base64url.
    """
    if len(token) > _MAX_CHARS:
        raise InvalidToken("token too long")
    try:
        text = token.encode("ascii")
        return base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise InvalidToken("token is not base64url") from None


@dataclass(frozen=True, slots=True)
class WebPushToken:
    """What a WebPush endpoint token holds.

    :ivar uaid: the UAID in normal form.
    :ivar chid: the channel ID in normal form.
    :ivar key_hash: the SHA-256 of the application server's key (v2), or None (v1).
    """

    uaid: str
    chid: str
    key_hash: bytes | None = None


class _ParseWebPush(Protocol):
    def __call__(self, token: str, *, version: int) -> WebPushToken: ...


class EndpointCrypto:
    """Issue and parse endpoint tokens (SimplePush and WebPush).

    :param keys: one or more keys as ``generate_key()`` makes them; the first
        issues tokens.
    :raises ConfigError: when no key is given or a key is malformed.
    """

    __slots__ = ("_ciphers", "message_ids", "parse", "parse_webpush_token")

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ConfigError("crypto.keys: at least one key is needed")
        self._ciphers = tuple(AESGCM(decode_key(k)) for k in keys)
        #: The message ids sealed with the same keys.
        self.message_ids = MessageIds(keys)
        # Per instance, so that a remembered token is one these keys opened.
        # lru_cache keeps no exception: a token that fails is decrypted again.
        remember = functools.lru_cache(maxsize=PARSED_TOKENS)
        self.parse: Callable[[str], tuple[str, str]] = remember(self._parse)
        self.parse_webpush_token: _ParseWebPush = remember(self._parse_webpush_token)

    def _seal(self, version: bytes, plain: bytes) -> str:
        nonce = os.urandom(_NONCE)
        return _encode(version + nonce + self._ciphers[0].encrypt(nonce, plain, version))

    def _open(self, token: str, version: bytes, plain_len: int) -> bytes:
        raw = _decode(token)
        if len(raw) != 1 + _NONCE + plain_len + 16 or raw[:1] != version:
            raise InvalidToken("token has the wrong length or version")
        nonce, sealed = raw[1 : 1 + _NONCE], raw[1 + _NONCE :]
        for cipher in self._ciphers:
            try:
                return cipher.decrypt(nonce, sealed, version)
            except InvalidTag:
                continue
        raise InvalidToken("token does not authenticate with any key")

    def make_token(self, uaid: str, chid: str) -> str:
        """Return the SimplePush token for ``uaid`` and ``chid`` (both in normal form)."""
        return self._seal(_SIMPLEPUSH, id_to_bytes(uaid) + id_to_bytes(chid))

    def _parse(self, token: str) -> tuple[str, str]:
        """Return the ``(uaid, chid)`` of a SimplePush token, in normal form.

        ``parse`` is this, remembered for the last ``PARSED_TOKENS`` tokens.

        :raises InvalidToken: when the token does not decode or authenticate.
        """
        plain = self._open(token, _SIMPLEPUSH, _IDS)
        return id_from_bytes(plain[:16]), id_from_bytes(plain[16:])

    def make_webpush_token(self, uaid: str, chid: str, key_hash: bytes | None = None) -> str:
        """Return a WebPush token: v2 when ``key_hash`` is given, else v1.

        :param key_hash: the SHA-256 (32 octets) of the decoded ``key`` of the register.
        :raises ValueError: when ``key_hash`` is not 32 octets.
        """
        ids = id_to_bytes(uaid) + id_to_bytes(chid)
        if key_hash is None:
            return self._seal(_WEBPUSH_V1, ids)
        if len(key_hash) != _HASH:
            raise ValueError("key_hash must be 32 octets")
        return self._seal(_WEBPUSH_V2, ids + key_hash)

    def _parse_webpush_token(self, token: str, *, version: int) -> WebPushToken:
        """Return what a WebPush token of the given API version holds.

        ``parse_webpush_token`` is this, remembered for the last ``PARSED_TOKENS``
        (token, version) pairs.

        :param version: 1 for ``/wpush/v1/`` and ``/wpush/``, 2 for ``/wpush/v2/``.
        :raises InvalidToken: when the token does not decode or authenticate, or
            is of the other version.
        :raises ValueError: when ``version`` is neither 1 nor 2.
        """
        if version == 1:
            plain = self._open(token, _WEBPUSH_V1, _IDS)
            return WebPushToken(id_from_bytes(plain[:16]), id_from_bytes(plain[16:32]))
        if version == 2:
            plain = self._open(token, _WEBPUSH_V2, _IDS + _HASH)
            return WebPushToken(id_from_bytes(plain[:16]), id_from_bytes(plain[16:32]), plain[32:])
        raise ValueError("version must be 1 or 2")


@dataclass(frozen=True, slots=True)
class MessageId:
    """What a WebPush message id holds.

    :ivar uaid: the UAID in normal form.
    :ivar chid: the channel ID in normal form.
    :ivar seq: the per-UAID sequence number of the stored copy.
    :ivar topic: the Topic, or None.
    """

    uaid: str
    chid: str
    seq: int
    topic: str | None = None


def _id_key(key: str) -> bytes:
    """Derive the 64-octet AES-SIV key of message ids from a token key."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=_ID_KEY_INFO)
    return hkdf.derive(decode_key(key))


class MessageIds:
    """Seal and open WebPush message ids.

    :param keys: the token keys (the first seals); see ``EndpointCrypto``.
    :raises ConfigError: when no key is given or a key is malformed.
    """

    __slots__ = ("_ciphers",)

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ConfigError("crypto.keys: at least one key is needed")
        self._ciphers = [AESSIV(_id_key(k)) for k in keys]

    def seal(self, uaid: str, chid: str, *, seq: int, topic: str | None = None) -> str:
        """Return the id of a message (the same inputs always give the same id).

        :param seq: the per-UAID sequence number, 0 to 2**64 - 1.
        :param topic: the Topic (1 to 32 base64url characters), or None.
        :raises ValueError: when ``seq`` or ``topic`` is out of range.
        """
        if not 0 <= seq < 2**64:
            raise ValueError("seq must be 0 to 2**64 - 1")
        plain = id_to_bytes(uaid) + id_to_bytes(chid) + seq.to_bytes(_SEQ, "big")
        if topic is not None:
            if not is_valid_topic(topic):
                raise ValueError("topic must be 1 to 32 base64url characters")
            plain += topic.encode("ascii")
        return _encode(_MESSAGE_ID + self._ciphers[0].encrypt(plain, [_MESSAGE_ID]))

    def open(self, text: str) -> MessageId:
        """Return what a message id holds.

        :raises InvalidToken: when it does not decode or authenticate.
        """
        raw = _decode(text)
        if raw[:1] != _MESSAGE_ID or not _ID_MIN <= len(raw) <= _ID_MIN + _TOPIC_MAX:
            raise InvalidToken("message id has the wrong length or version")
        for cipher in self._ciphers:
            try:
                plain = cipher.decrypt(raw[1:], [_MESSAGE_ID])
            except InvalidTag:
                continue
            topic = plain[_IDS + _SEQ :].decode("ascii") or None
            return MessageId(
                id_from_bytes(plain[:16]),
                id_from_bytes(plain[16:32]),
                int.from_bytes(plain[_IDS : _IDS + _SEQ], "big"),
                topic,
            )
        raise InvalidToken("message id does not authenticate with any key")
