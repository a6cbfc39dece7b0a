"""Tests for ``pushtwisted.cluster.signing``: HMAC vectors, round trips, refusals."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.cluster.signing import (
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    NonceWindow,
    RefusalLog,
    RequestSigner,
    SignatureError,
    canonical_request,
    compute_signature,
)

SECRET = b"cluster-secret"
NOW = 1_700_000_000.0
UAID = "0123456789abcdef0123456789abcdef"
PUSH_BODY = b'{"channelID":"a","version":1,"data":null}'
NONCE = b"00112233445566778899aabbccddeeff"

#: Checked independently with ``openssl dgst -sha256 -hmac cluster-secret``.
PUSH_VECTOR = b"7e618d1ae5ccdb45f25db747d7da469557bf50df8dfb02380fdfe091fc66712c"
KICK_VECTOR = b"5106d7974bd0d66bf9241daa6af8f33ed1144afff3dae67a81ae956b25cd8e48"


class VectorTests(SynchronousTestCase):
    """The signature is HMAC-SHA256 over METHOD, PATH, TIMESTAMP, NONCE and BODY."""

    def test_canonical_form(self) -> None:
        """The signed bytes are the five parts joined by newlines, the method upper-cased."""
        self.assertEqual(
            canonical_request(b"put", b"/p", b"1", b"ab", b"body"), b"PUT\n/p\n1\nab\nbody"
        )

    def test_push_vector(self) -> None:
        """A PUT with a JSON body signs to the known HMAC."""
        signature = compute_signature(
            SECRET, b"PUT", f"/push/{UAID}".encode(), b"1700000000", NONCE, PUSH_BODY
        )
        self.assertEqual(signature, PUSH_VECTOR)

    def test_kick_vector(self) -> None:
        """A DELETE without a body signs to the known HMAC (empty body last)."""
        path = f"/notif/{UAID}/1700000000000".encode()
        signature = compute_signature(SECRET, b"DELETE", path, b"1700000000", NONCE, b"")
        self.assertEqual(signature, KICK_VECTOR)


class SignerTests(SynchronousTestCase):
    """``RequestSigner`` signs with the clock's time and verifies strictly."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.signer = RequestSigner(SECRET, clock=self.clock, max_skew=30.0)

    def sign(self, body: bytes = PUSH_BODY) -> dict[bytes, bytes | None]:
        return dict(self.signer.sign(b"PUT", f"/push/{UAID}".encode(), body))

    def verify(self, headers: dict[bytes, bytes | None], body: bytes = PUSH_BODY) -> None:
        self.signer.verify(b"PUT", f"/push/{UAID}".encode(), headers, body)

    def assertRefused(self, headers: dict[bytes, bytes | None], body: bytes = PUSH_BODY) -> str:
        with self.assertRaises(SignatureError) as caught:
            self.verify(headers, body)
        return str(caught.exception)

    def test_sign_headers(self) -> None:
        """``sign`` returns the whole-second timestamp, a fresh nonce and its signature."""
        self.clock.advance(0.75)
        headers = self.sign()
        self.assertEqual(headers[TIMESTAMP_HEADER], b"1700000000")
        nonce = headers[NONCE_HEADER]
        assert nonce is not None
        self.assertRegex(nonce, b"^[0-9a-f]{32}$")
        expected = compute_signature(
            SECRET, b"PUT", f"/push/{UAID}".encode(), b"1700000000", nonce, PUSH_BODY
        )
        self.assertEqual(headers[SIGNATURE_HEADER], expected)
        self.assertNotEqual(self.sign()[NONCE_HEADER], nonce)

    def test_vector_verifies(self) -> None:
        """The known vector, sent with its headers, is accepted."""
        headers: dict[bytes, bytes | None] = {
            TIMESTAMP_HEADER: b"1700000000",
            NONCE_HEADER: NONCE,
            SIGNATURE_HEADER: PUSH_VECTOR,
        }
        self.verify(headers)

    def test_round_trip(self) -> None:
        """A request signed by one signer verifies with another holding the same secret."""
        other = RequestSigner(SECRET.decode(), clock=self.clock)
        other.verify(b"PUT", f"/push/{UAID}".encode(), self.sign(), PUSH_BODY)

    def test_upper_case_hex_accepted(self) -> None:
        """The hex signature is compared case-insensitively."""
        headers = self.sign()
        signature = headers[SIGNATURE_HEADER]
        assert signature is not None
        headers[SIGNATURE_HEADER] = signature.upper()
        self.verify(headers)

    def test_within_skew(self) -> None:
        """A timestamp up to ``max_skew`` seconds old or ahead is accepted."""
        self.clock.advance(30)
        self.verify(self.sign())
        headers = self.sign()
        self.clock.advance(-30)
        self.verify(headers)
        self.clock.advance(-30)
        self.verify(self.sign())
        self.clock.advance(30)
        self.verify(self.sign())

    def test_replay_refused(self) -> None:
        """The same signed request a second time is refused, for as long as its
        timestamp is in the window; a new signature of the same request is fine."""
        headers = self.sign()
        self.verify(headers)
        self.assertIn("replayed", self.assertRefused(headers))
        self.clock.advance(29)
        self.assertIn("replayed", self.assertRefused(headers))
        self.verify(self.sign())
        self.clock.advance(2)
        self.assertIn("stale", self.assertRefused(headers))

    def test_refused_nonce_not_kept(self) -> None:
        """A request refused for its signature leaves its nonce free for the real one."""
        headers = self.sign()
        self.assertRefused(headers, body=b"forged")
        self.verify(headers)

    def test_nonce_signed(self) -> None:
        """Another nonce on a captured request breaks the signature."""
        headers = self.sign()
        headers[NONCE_HEADER] = b"f" * 32
        self.assertIn("bad signature", self.assertRefused(headers))

    def test_malformed_nonce(self) -> None:
        """A nonce that is not 32 lower-case hex digits is refused."""
        headers = self.sign()
        for bad in (b"00", b"Z" * 32, NONCE.upper(), NONCE + b"0"):
            headers[NONCE_HEADER] = bad
            self.assertIn("malformed nonce", self.assertRefused(headers))

    def test_stale(self) -> None:
        """A timestamp more than ``max_skew`` seconds old is refused."""
        headers = self.sign()
        self.clock.advance(31)
        self.assertIn("stale", self.assertRefused(headers))

    def test_future(self) -> None:
        """A timestamp more than ``max_skew`` seconds ahead is refused."""
        headers = self.sign()
        self.clock.advance(-31)
        self.assertIn("stale", self.assertRefused(headers))

    def test_unsigned(self) -> None:
        """No headers, or any of the three missing or empty, is refused."""
        self.assertIn("unsigned", self.assertRefused({}))
        headers = self.sign()
        for name in (TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER):
            for value in (None, b""):
                self.assertIn("unsigned", self.assertRefused({**headers, name: value}))

    def test_malformed_timestamp(self) -> None:
        """A timestamp that is not a short decimal is refused."""
        headers = self.sign()
        for bad in (b"-1", b"1.5", b"abc", b"1" * 13, "\u0661".encode()):
            headers[TIMESTAMP_HEADER] = bad
            self.assertRefused(headers)

    def test_malformed_signature(self) -> None:
        """A signature that is not 64 hex digits is refused."""
        headers = self.sign()
        for bad in (b"00", b"z" * 64, PUSH_VECTOR + b"00"):
            headers[SIGNATURE_HEADER] = bad
            self.assertIn("malformed", self.assertRefused(headers))

    def test_wrong_secret(self) -> None:
        """A request signed with another secret is refused."""
        other = RequestSigner(b"another-secret", clock=self.clock)
        headers = dict(other.sign(b"PUT", f"/push/{UAID}".encode(), PUSH_BODY))
        self.assertIn("bad signature", self.assertRefused(dict(headers)))

    def test_tampered(self) -> None:
        """Changing the body, the path, the method or the timestamp breaks the signature."""
        headers = self.sign()
        self.assertRefused(headers, body=PUSH_BODY.replace(b"1", b"2"))
        with self.assertRaises(SignatureError):
            self.signer.verify(b"PUT", b"/push/" + b"f" * 32, headers, PUSH_BODY)
        with self.assertRaises(SignatureError):
            self.signer.verify(b"DELETE", f"/push/{UAID}".encode(), headers, PUSH_BODY)
        headers[TIMESTAMP_HEADER] = b"1700000001"
        self.assertRefused(headers)

    def test_bad_arguments(self) -> None:
        """An empty secret or a negative skew is a ``ValueError``."""
        with self.assertRaises(ValueError):
            RequestSigner("", clock=self.clock)
        with self.assertRaises(ValueError):
            RequestSigner(SECRET, clock=self.clock, max_skew=-1)
        with self.assertRaises(ValueError):
            RequestSigner(SECRET, clock=self.clock, max_skew=float("nan"))


class NonceWindowTests(SynchronousTestCase):
    """Accepted nonces are kept until their time, in bounded room."""

    def test_expiry(self) -> None:
        """A nonce is refused until its time has passed, then forgotten."""
        window = NonceWindow()
        window.add(b"a", 130.0, 100.0)
        with self.assertRaises(SignatureError):
            window.add(b"a", 131.0, 130.0)
        window.add(b"b", 200.0, 130.5)  # drops "a": its time has passed
        self.assertEqual(len(window), 1)
        window.add(b"a", 161.0, 131.0)

    def test_later_behind_earlier(self) -> None:
        """When a long-kept nonce arrived first, the ones behind it are kept until it
        goes (never dropped early), and all go together."""
        window = NonceWindow()
        window.add(b"long", 200.0, 100.0)
        window.add(b"short", 110.0, 100.0)
        window.add(b"c", 300.0, 150.0)
        with self.assertRaises(SignatureError):
            window.add(b"short", 300.0, 150.0)
        window.add(b"d", 300.0, 201.0)
        self.assertEqual(len(window), 2)  # c and d

    def test_limit(self) -> None:
        """When ``limit`` nonces are kept, a new one is refused until some expire."""
        window = NonceWindow(limit=3)
        for nonce in (b"a", b"b", b"c"):
            window.add(nonce, 110.0, 100.0)
        with self.assertRaises(SignatureError) as caught:
            window.add(b"d", 110.0, 100.0)
        self.assertIn("more than 3", str(caught.exception))
        window.add(b"d", 120.0, 111.0)
        self.assertEqual(len(window), 1)


class RefusalLogTests(SynchronousTestCase):
    """Refusals are logged at most once per interval, with counts."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self) -> list[str]:
        return [formatEvent(e) for e in self.events if "RefusalLog" in e.get("log_namespace", "")]

    def test_aggregated(self) -> None:
        """The first refusal is logged at once; the next 1,000 within 10 s make one line
        with their counts by reason, written at the first refusal after the interval."""
        log = RefusalLog(self.clock, interval=10.0)
        log.refused(SignatureError("unsigned request"))
        first = "refused 1 node request(s) since the last such line: unsigned request x1"
        self.assertEqual(self.lines(), [first])
        for i in range(1000):
            reason = "unsigned request" if i % 4 else "stale timestamp (40 s away)"
            log.refused(SignatureError(reason))
            self.clock.advance(0.005)
        self.assertEqual(len(self.lines()), 1)
        self.clock.advance(5.5)
        log.refused(SignatureError("bad signature"))
        [_, line] = self.lines()
        self.assertEqual(
            line,
            "refused 1001 node request(s) since the last such line:"
            " unsigned request x750, stale timestamp x250, bad signature x1",
        )
