"""Tests for ``pushtwisted.tokens``: endpoint token issue, parse, rotation and key files."""

from __future__ import annotations

import base64
import os
import stat
import string
import uuid
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.errors import ConfigError, InvalidToken
from pushtwisted.tokens import (
    KEY_FILE,
    EndpointCrypto,
    decode_key,
    generate_key,
    load_or_create_key,
)

_URLSAFE = set(string.ascii_letters + string.digits + "-_")


def _decode(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class EndpointCryptoTests(SynchronousTestCase):
    """Issuing and parsing tokens."""

    def setUp(self) -> None:
        self.key = generate_key()
        self.crypto = EndpointCrypto([self.key])
        self.uaid = uuid.uuid4().hex
        self.chid = uuid.uuid4().hex

    def test_round_trip(self) -> None:
        """A token parses back to the UAID and channel ID it was made from."""
        token = self.crypto.make_token(self.uaid, self.chid)
        self.assertEqual(self.crypto.parse(token), (self.uaid, self.chid))

    def test_token_shape(self) -> None:
        """A token is 82 URL-safe characters without padding and hides the IDs."""
        token = self.crypto.make_token(self.uaid, self.chid)
        self.assertEqual(len(token), 82)
        self.assertLessEqual(set(token), _URLSAFE)
        self.assertNotIn(self.uaid, token)
        self.assertNotIn(self.uaid.encode("ascii"), _decode(token))

    def test_tokens_differ_each_time(self) -> None:
        """Two tokens for the same channel differ (random nonce) and both parse."""
        first = self.crypto.make_token(self.uaid, self.chid)
        second = self.crypto.make_token(self.uaid, self.chid)
        self.assertNotEqual(first, second)
        self.assertEqual(self.crypto.parse(second), (self.uaid, self.chid))

    def test_rotation_old_key_second(self) -> None:
        """A token issued with the old key parses when the old key is listed second."""
        token = self.crypto.make_token(self.uaid, self.chid)
        rotated = EndpointCrypto([generate_key(), self.key])
        self.assertEqual(rotated.parse(token), (self.uaid, self.chid))

    def test_rotation_new_key_issues(self) -> None:
        """After rotation the first key issues: the old-key-only parser rejects new tokens."""
        rotated = EndpointCrypto([generate_key(), self.key])
        token = rotated.make_token(self.uaid, self.chid)
        self.assertEqual(rotated.parse(token), (self.uaid, self.chid))
        self.assertRaises(InvalidToken, self.crypto.parse, token)

    def test_other_key_is_invalid(self) -> None:
        """A token made with an unrelated key is ``InvalidToken``."""
        token = EndpointCrypto([generate_key()]).make_token(self.uaid, self.chid)
        self.assertRaises(InvalidToken, self.crypto.parse, token)

    def test_tampered_tokens_are_invalid(self) -> None:
        """Flipping any single bit of the decoded token makes it ``InvalidToken``."""
        raw = _decode(self.crypto.make_token(self.uaid, self.chid))
        for i in range(len(raw)):
            tampered = raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :]
            self.assertRaises(InvalidToken, self.crypto.parse, _encode(tampered))

    def test_garbage_is_invalid(self) -> None:
        """Empty, non-base64, non-ASCII and wrong-length inputs are ``InvalidToken``."""
        for garbage in ["", "!!!!", "not a token", "\u00e9t\u00e9", "abc", "A" * 82, "A" * 81]:
            self.assertRaises(InvalidToken, self.crypto.parse, garbage)

    def test_truncated_and_extended_are_invalid(self) -> None:
        """A valid token with bytes removed or added is ``InvalidToken``."""
        raw = _decode(self.crypto.make_token(self.uaid, self.chid))
        for changed in [raw[:-1], raw + b"\x00", raw[1:]]:
            self.assertRaises(InvalidToken, self.crypto.parse, _encode(changed))

    def test_too_long_is_invalid(self) -> None:
        """A token over 200 characters is ``InvalidToken`` before any decoding."""
        token = self.crypto.make_token(self.uaid, self.chid)
        self.assertRaises(InvalidToken, self.crypto.parse, token + "A" * (201 - len(token)))
        self.assertRaises(InvalidToken, self.crypto.parse, "A" * 100_000)

    def test_wrong_version_is_invalid(self) -> None:
        """A token whose version byte is not 1 is ``InvalidToken``."""
        raw = _decode(self.crypto.make_token(self.uaid, self.chid))
        for version in [b"\x00", b"\x02", b"\xff"]:
            self.assertRaises(InvalidToken, self.crypto.parse, _encode(version + raw[1:]))

    def test_padded_token_parses(self) -> None:
        """A token with its ``=`` padding restored still parses."""
        token = self.crypto.make_token(self.uaid, self.chid)
        padded = token + "=" * (-len(token) % 4)
        self.assertEqual(self.crypto.parse(padded), (self.uaid, self.chid))


class KeyTests(SynchronousTestCase):
    """Key generation, decoding and the key file."""

    def test_generate_key_decodes(self) -> None:
        """A generated key is 32 bytes in URL-safe base64, and keys differ."""
        key = generate_key()
        self.assertEqual(len(decode_key(key)), 32)
        self.assertNotEqual(key, generate_key())

    def test_decode_key_strips_whitespace(self) -> None:
        """Surrounding whitespace (a trailing newline from a file) is ignored."""
        key = generate_key()
        self.assertEqual(decode_key(f"  {key}\n"), decode_key(key))

    def test_no_keys_is_config_error(self) -> None:
        """An empty key list is a ``ConfigError`` naming ``crypto.keys``."""
        e = self.assertRaises(ConfigError, EndpointCrypto, [])
        self.assertIn("crypto.keys", str(e))

    def test_bad_keys_are_config_errors(self) -> None:
        """Keys that are not base64 or not 32 bytes are ``ConfigError``."""
        short = base64.urlsafe_b64encode(os.urandom(16)).decode("ascii")
        long = base64.urlsafe_b64encode(os.urandom(33)).decode("ascii")
        for bad in ["", "not base64 !!", "\u00e9" * 44, short, long]:
            self.assertRaises(ConfigError, EndpointCrypto, [bad])
            self.assertRaises(ConfigError, decode_key, bad)

    def test_one_bad_key_among_good_is_config_error(self) -> None:
        """A bad key anywhere in the list is a ``ConfigError``."""
        self.assertRaises(ConfigError, EndpointCrypto, [generate_key(), "bad"])

    def test_load_or_create_key_persists_0600(self) -> None:
        """The first call creates the directory and a 0600 key file; the next returns the same."""
        state = Path(self.mktemp()) / "state"
        key = load_or_create_key(state)
        self.assertEqual(len(decode_key(key)), 32)
        path = state / KEY_FILE
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertEqual(path.read_text(encoding="ascii").strip(), key)
        self.assertEqual(load_or_create_key(str(state)), key)
        self.assertEqual([p.name for p in state.iterdir()], [KEY_FILE])

    def test_load_or_create_key_reads_existing(self) -> None:
        """An existing key file is used as is."""
        state = Path(self.mktemp())
        state.mkdir()
        key = generate_key()
        (state / KEY_FILE).write_text(key + "\n", encoding="ascii")
        self.assertEqual(load_or_create_key(state), key)

    def test_created_key_issues_parsable_tokens(self) -> None:
        """A key from ``load_or_create_key`` works with ``EndpointCrypto`` across restarts."""
        state = self.mktemp()
        uaid, chid = uuid.uuid4().hex, uuid.uuid4().hex
        token = EndpointCrypto([load_or_create_key(state)]).make_token(uaid, chid)
        self.assertEqual(EndpointCrypto([load_or_create_key(state)]).parse(token), (uaid, chid))
