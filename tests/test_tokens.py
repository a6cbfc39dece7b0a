"""Tests for ``pushtwisted.tokens``: endpoint tokens (SimplePush and WebPush), message ids,
rotation and key files."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import string
import uuid
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.errors import ConfigError, InvalidToken
from pushtwisted.tokens import (
    KEY_FILE,
    PARSED_TOKENS,
    EndpointCrypto,
    KeyFile,
    MessageId,
    MessageIds,
    WebPushToken,
    decode_key,
    generate_key,
    key_problem,
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


class RememberedTokenTests(SynchronousTestCase):
    """``EndpointCrypto`` remembers the valid tokens it parsed, per instance."""

    def setUp(self) -> None:
        self.key = generate_key()
        self.crypto = EndpointCrypto([self.key])
        self.uaid = uuid.uuid4().hex
        self.chid = uuid.uuid4().hex
        self.token = self.crypto.make_token(self.uaid, self.chid)

    def test_second_parse_is_remembered(self) -> None:
        """An equal token text (a new string, as each request decodes its own) gets the
        very answer of the first parse, which is what decryption gave."""
        first = self.crypto.parse(self.token)
        again = self.crypto.parse("".join(list(self.token)))
        self.assertEqual(first, (self.uaid, self.chid))
        self.assertIs(again, first)

    def test_removed_key_rejects_a_remembered_token(self) -> None:
        """After the key that made a token is removed (a new instance without it), the
        token is refused, however often the old instance parsed it."""
        for _ in range(3):
            self.crypto.parse(self.token)
        rotated = EndpointCrypto([generate_key()])
        self.assertRaises(InvalidToken, rotated.parse, self.token)
        kept = EndpointCrypto([generate_key(), self.key])
        self.assertEqual(kept.parse(self.token), (self.uaid, self.chid))

    def test_invalid_tokens_are_not_remembered(self) -> None:
        """A token that fails is refused each time, and a flood of them (more than the
        bound) does not push a valid token out."""
        raw = bytearray(_decode(self.token))
        raw[-1] ^= 1
        forged = _encode(bytes(raw))
        first = self.crypto.parse(self.token)
        for _ in range(2):
            self.assertRaises(InvalidToken, self.crypto.parse, forged)
        other = EndpointCrypto([generate_key()])
        for i in range(PARSED_TOKENS + 1):
            token = other.make_token(self.uaid, f"{i:032x}")
            self.assertRaises(InvalidToken, self.crypto.parse, token)
        self.assertIs(self.crypto.parse(self.token), first)

    def test_memory_is_bounded(self) -> None:
        """Past ``PARSED_TOKENS`` other valid tokens, the oldest is decrypted again."""
        first = self.crypto.parse(self.token)
        for i in range(PARSED_TOKENS):
            self.crypto.parse(self.crypto.make_token(self.uaid, f"{i:032x}"))
        again = self.crypto.parse(self.token)
        self.assertEqual(again, first)
        self.assertIsNot(again, first)

    def test_webpush_versions_stay_apart(self) -> None:
        """A remembered v1 token is still refused as v2, and a SimplePush token as WebPush."""
        v1 = self.crypto.make_webpush_token(self.uaid, self.chid)
        parsed = self.crypto.parse_webpush_token(v1, version=1)
        self.assertEqual(parsed, WebPushToken(self.uaid, self.chid))
        self.assertIs(self.crypto.parse_webpush_token("".join(list(v1)), version=1), parsed)
        self.assertRaises(InvalidToken, self.crypto.parse_webpush_token, v1, version=2)
        self.assertRaises(InvalidToken, self.crypto.parse, v1)
        self.crypto.parse(self.token)
        self.assertRaises(InvalidToken, self.crypto.parse_webpush_token, self.token, version=1)


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
        """The first call creates a 0700 directory and a 0600 key file and says it
        generated the key; the next returns the same key, not generated."""
        state = Path(self.mktemp()) / "state"
        first = load_or_create_key(state)
        self.assertEqual(len(decode_key(first.key)), 32)
        path = state / KEY_FILE
        self.assertEqual((first.path, first.generated), (path, True))
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(state.stat().st_mode), 0o700)
        self.assertEqual(path.read_text(encoding="ascii").strip(), first.key)
        self.assertEqual(load_or_create_key(str(state)), KeyFile(first.key, path, False))
        self.assertEqual([p.name for p in state.iterdir()], [KEY_FILE])

    def test_load_or_create_key_reads_existing(self) -> None:
        """An existing key file is used as is."""
        state = Path(self.mktemp())
        state.mkdir()
        key = generate_key()
        (state / KEY_FILE).write_text(key + "\n", encoding="ascii")
        self.assertEqual(load_or_create_key(state), KeyFile(key, state / KEY_FILE, False))

    def test_corrupt_key_file_names_the_file(self) -> None:
        """A key file that holds no valid key is a ``ConfigError`` naming ``storage.path``
        and the file, not ``crypto.keys``; the file is left as it was."""
        state = Path(self.mktemp())
        state.mkdir()
        path = state / KEY_FILE
        for content, reason in (
            (b"c2hvcnQ=\n", "a key must be 32 bytes, got 5"),
            (b"\xff\xfe not ascii\n", "a key is not URL-safe base64"),
            (b"", "a key must be 32 bytes, got 0"),
        ):
            path.write_bytes(content)
            error = self.assertRaises(ConfigError, load_or_create_key, state)
            self.assertEqual(
                str(error),
                f"storage.path: the endpoint key file {path} is corrupt ({reason}): restore"
                " it, or delete it to have a new key generated (every pushEndpoint handed out"
                " with the old key then stops working)",
            )
            self.assertEqual(path.read_bytes(), content)

    def test_key_problem(self) -> None:
        """``key_problem`` says why a text is not a key, without the key, or None."""
        self.assertIsNone(key_problem(generate_key()))
        self.assertEqual(key_problem("c2hvcnQ="), "a key must be 32 bytes, got 5")
        self.assertEqual(key_problem("not base64 !!"), "a key is not URL-safe base64")

    def test_created_key_issues_parsable_tokens(self) -> None:
        """A key from ``load_or_create_key`` works with ``EndpointCrypto`` across restarts."""
        state = self.mktemp()
        uaid, chid = uuid.uuid4().hex, uuid.uuid4().hex
        token = EndpointCrypto([load_or_create_key(state).key]).make_token(uaid, chid)
        self.assertEqual(EndpointCrypto([load_or_create_key(state).key]).parse(token), (uaid, chid))


#: A SimplePush token issued by the code before WebPush tokens (key, uaid, chid, token).
_GOLDEN = (
    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    "0123456789abcdef0123456789abcdef",
    "fedcba9876543210fedcba9876543210",
    "ARlgcpvEioE5mdulrPloD9J7qlgW5otbiRDx3M7jHm9WHkf_mFDGqEBYIlMoVCsgvmnRcRy_EqIwePaTKg",
)


class CompatibilityTests(SynchronousTestCase):
    """SimplePush tokens stay byte-for-byte what the code issued before WebPush."""

    def test_golden_token_parses(self) -> None:
        """A token issued before WebPush tokens existed still parses to its UAID and channel."""
        key, uaid, chid, token = _GOLDEN
        self.assertEqual(EndpointCrypto([key]).parse(token), (uaid, chid))

    def test_layout_by_hand(self) -> None:
        """A new SimplePush token is ``01 || nonce || AES-GCM(uaid || chid, aad=01)``."""
        key, uaid, chid, _ = _GOLDEN
        raw = _decode(EndpointCrypto([key]).make_token(uaid, chid))
        self.assertEqual(raw[:1], b"\x01")
        plain = AESGCM(decode_key(key)).decrypt(raw[1:13], raw[13:], b"\x01")
        self.assertEqual(plain, bytes.fromhex(uaid + chid))


class WebPushTokenTests(SynchronousTestCase):
    """WebPush v1 and v2 endpoint tokens."""

    def setUp(self) -> None:
        self.key = generate_key()
        self.crypto = EndpointCrypto([self.key])
        self.uaid = uuid.uuid4().hex
        self.chid = uuid.uuid4().hex
        self.hash = hashlib.sha256(b"an application server key").digest()

    def test_v1_round_trip(self) -> None:
        """A v1 token is 82 URL-safe characters and parses back with no key hash."""
        token = self.crypto.make_webpush_token(self.uaid, self.chid)
        self.assertEqual(len(token), 82)
        self.assertLessEqual(set(token), _URLSAFE)
        self.assertEqual(
            self.crypto.parse_webpush_token(token, version=1), WebPushToken(self.uaid, self.chid)
        )

    def test_v2_round_trip(self) -> None:
        """A v2 token is 124 URL-safe characters and carries the key hash."""
        token = self.crypto.make_webpush_token(self.uaid, self.chid, self.hash)
        self.assertEqual(len(token), 124)
        self.assertLessEqual(set(token), _URLSAFE)
        self.assertNotIn(self.hash, _decode(token))
        self.assertEqual(
            self.crypto.parse_webpush_token(token, version=2),
            WebPushToken(self.uaid, self.chid, self.hash),
        )

    def test_kinds_never_cross(self) -> None:
        """SimplePush, v1 and v2 tokens only parse as their own kind."""
        simple = self.crypto.make_token(self.uaid, self.chid)
        v1 = self.crypto.make_webpush_token(self.uaid, self.chid)
        v2 = self.crypto.make_webpush_token(self.uaid, self.chid, self.hash)
        self.assertRaises(InvalidToken, self.crypto.parse_webpush_token, simple, version=1)
        self.assertRaises(InvalidToken, self.crypto.parse_webpush_token, simple, version=2)
        self.assertRaises(InvalidToken, self.crypto.parse, v1)
        self.assertRaises(InvalidToken, self.crypto.parse, v2)
        self.assertRaises(InvalidToken, self.crypto.parse_webpush_token, v1, version=2)
        self.assertRaises(InvalidToken, self.crypto.parse_webpush_token, v2, version=1)

    def test_version_byte_is_authenticated(self) -> None:
        """Relabelling a token's version byte (same length) does not make it parse."""
        simple = _decode(self.crypto.make_token(self.uaid, self.chid))
        v1 = _decode(self.crypto.make_webpush_token(self.uaid, self.chid))
        self.assertRaises(
            InvalidToken, self.crypto.parse_webpush_token, _encode(b"\x02" + simple[1:]), version=1
        )
        self.assertRaises(InvalidToken, self.crypto.parse, _encode(b"\x01" + v1[1:]))

    def test_tampered_v2(self) -> None:
        """Flipping any bit of a v2 token makes it ``InvalidToken``."""
        raw = _decode(self.crypto.make_webpush_token(self.uaid, self.chid, self.hash))
        for i in range(len(raw)):
            tampered = raw[:i] + bytes([raw[i] ^ 0x80]) + raw[i + 1 :]
            self.assertRaises(
                InvalidToken, self.crypto.parse_webpush_token, _encode(tampered), version=2
            )

    def test_rotation(self) -> None:
        """WebPush tokens follow key rotation: the old key still parses when listed second."""
        token = self.crypto.make_webpush_token(self.uaid, self.chid, self.hash)
        rotated = EndpointCrypto([generate_key(), self.key])
        self.assertEqual(rotated.parse_webpush_token(token, version=2).key_hash, self.hash)
        self.assertRaises(
            InvalidToken,
            EndpointCrypto([generate_key()]).parse_webpush_token,
            token,
            version=2,
        )

    def test_garbage(self) -> None:
        """Garbage, too-long and padded-garbage inputs are ``InvalidToken`` for both versions."""
        for garbage in ["", "!!", "A" * 82, "A" * 124, "A" * 201, "\u00e9"]:
            for version in (1, 2):
                self.assertRaises(
                    InvalidToken, self.crypto.parse_webpush_token, garbage, version=version
                )

    def test_bad_arguments(self) -> None:
        """A key hash that is not 32 octets, or an API version other than 1 or 2, is refused."""
        self.assertRaises(ValueError, self.crypto.make_webpush_token, self.uaid, self.chid, b"x")
        token = self.crypto.make_webpush_token(self.uaid, self.chid)
        self.assertRaises(ValueError, self.crypto.parse_webpush_token, token, version=3)


class MessageIdTests(SynchronousTestCase):
    """WebPush message ids."""

    def setUp(self) -> None:
        self.key = generate_key()
        self.ids = EndpointCrypto([self.key]).message_ids
        self.uaid = uuid.uuid4().hex
        self.chid = uuid.uuid4().hex

    def test_round_trip(self) -> None:
        """An id opens to the uaid, chid, seq and topic it was sealed from."""
        for seq, topic in [(0, None), (1, None), (2**64 - 1, None), (7, "a"), (8, "t" * 32)]:
            text = self.ids.seal(self.uaid, self.chid, seq=seq, topic=topic)
            self.assertEqual(self.ids.open(text), MessageId(self.uaid, self.chid, seq, topic))

    def test_shape(self) -> None:
        """Ids are unpadded URL-safe text: 76 characters, up to 119 with a topic."""
        plain = self.ids.seal(self.uaid, self.chid, seq=5)
        longest = self.ids.seal(self.uaid, self.chid, seq=5, topic="t" * 32)
        self.assertEqual((len(plain), len(longest)), (76, 119))
        for text in (plain, longest):
            self.assertLessEqual(set(text), _URLSAFE)
            self.assertNotIn(self.uaid, text)

    def test_deterministic_and_distinct(self) -> None:
        """The same inputs give the same id; any other seq, topic or channel another one."""
        base = self.ids.seal(self.uaid, self.chid, seq=5, topic="news")
        self.assertEqual(base, self.ids.seal(self.uaid, self.chid, seq=5, topic="news"))
        others = {
            self.ids.seal(self.uaid, self.chid, seq=6, topic="news"),
            self.ids.seal(self.uaid, self.chid, seq=5, topic="sport"),
            self.ids.seal(self.uaid, self.chid, seq=5),
            self.ids.seal(self.uaid, uuid.uuid4().hex, seq=5, topic="news"),
        }
        self.assertEqual(len(others), 4)
        self.assertNotIn(base, others)

    def test_tokens_are_not_ids(self) -> None:
        """No endpoint token opens as a message id, and no id parses as a token."""
        crypto = EndpointCrypto([self.key])
        for token in [
            crypto.make_token(self.uaid, self.chid),
            crypto.make_webpush_token(self.uaid, self.chid),
            crypto.make_webpush_token(self.uaid, self.chid, bytes(32)),
        ]:
            self.assertRaises(InvalidToken, self.ids.open, token)
        text = self.ids.seal(self.uaid, self.chid, seq=1)
        self.assertRaises(InvalidToken, crypto.parse, text)
        self.assertRaises(InvalidToken, crypto.parse_webpush_token, text, version=1)

    def test_tampered(self) -> None:
        """Flipping any bit of an id, or cutting or extending it, is ``InvalidToken``."""
        raw = _decode(self.ids.seal(self.uaid, self.chid, seq=3, topic="abc"))
        for i in range(len(raw)):
            tampered = raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :]
            self.assertRaises(InvalidToken, self.ids.open, _encode(tampered))
        for changed in [raw[:-1], raw + b"\x00", raw[1:]]:
            self.assertRaises(InvalidToken, self.ids.open, _encode(changed))

    def test_garbage(self) -> None:
        """Anything that does not decode is ``InvalidToken``, never another error."""
        for garbage in ["", "!", "abc", "A" * 76, "A" * 119, "A" * 5000, "\u00e9" * 76, "a=b"]:
            self.assertRaises(InvalidToken, self.ids.open, garbage)

    def test_rotation_and_key_separation(self) -> None:
        """Ids follow key rotation; another key set cannot open them."""
        text = self.ids.seal(self.uaid, self.chid, seq=9)
        rotated = MessageIds([generate_key(), self.key])
        self.assertEqual(rotated.open(text).seq, 9)
        self.assertNotEqual(rotated.seal(self.uaid, self.chid, seq=9), text)
        self.assertRaises(InvalidToken, MessageIds([generate_key()]).open, text)

    def test_bad_arguments(self) -> None:
        """A seq out of range or a topic that is not 1-32 base64url characters is refused."""
        for seq in (-1, 2**64):
            self.assertRaises(ValueError, self.ids.seal, self.uaid, self.chid, seq=seq)
        for topic in ("", "t" * 33, "a b", "x="):
            self.assertRaises(ValueError, self.ids.seal, self.uaid, self.chid, seq=1, topic=topic)
        self.assertRaises(ConfigError, MessageIds, [])
