"""Tests for ``pushtwisted.cluster.signing``: HMAC vectors, round trips, refusals."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pushtwisted.cluster.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    RequestSigner,
    SignatureError,
    canonical_request,
    compute_signature,
)

SECRET = b"cluster-secret"
NOW = 1_700_000_000.0
UAID = "0123456789abcdef0123456789abcdef"
PUSH_BODY = b'{"channelID":"a","version":1,"data":null}'

#: Checked independently with ``openssl dgst -sha256 -hmac cluster-secret``.
PUSH_VECTOR = b"3ee57d3b3eb6289f8e9d9107dadc6d7680f0d85adeeafb06225cc7b4040ed709"
KICK_VECTOR = b"d95405a2f31cf252011cf1c2c0af3b9e3ba607bd830e3998f9f4b9c9046565b0"


class VectorTests(SynchronousTestCase):
    """The signature is HMAC-SHA256 over METHOD, PATH, TIMESTAMP and BODY."""

    def test_canonical_form(self) -> None:
        """The signed bytes are the four parts joined by newlines, the method upper-cased."""
        self.assertEqual(canonical_request(b"put", b"/p", b"1", b"body"), b"PUT\n/p\n1\nbody")

    def test_push_vector(self) -> None:
        """A PUT with a JSON body signs to the known HMAC."""
        signature = compute_signature(
            SECRET, b"PUT", f"/push/{UAID}".encode(), b"1700000000", PUSH_BODY
        )
        self.assertEqual(signature, PUSH_VECTOR)

    def test_kick_vector(self) -> None:
        """A DELETE without a body signs to the known HMAC (empty body last)."""
        path = f"/notif/{UAID}/1700000000000".encode()
        signature = compute_signature(SECRET, b"DELETE", path, b"1700000000", b"")
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
        """``sign`` returns the whole-second timestamp and the vector signature."""
        self.clock.advance(0.75)
        headers = self.sign()
        self.assertEqual(headers[TIMESTAMP_HEADER], b"1700000000")
        self.assertEqual(headers[SIGNATURE_HEADER], PUSH_VECTOR)

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
        headers = self.sign()
        self.clock.advance(30)
        self.verify(headers)
        self.clock.advance(-60)
        self.verify(headers)

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
        """No headers, or only one of the two, is refused."""
        self.assertIn("unsigned", self.assertRefused({}))
        headers = self.sign()
        self.assertRefused({TIMESTAMP_HEADER: headers[TIMESTAMP_HEADER]})
        self.assertRefused({SIGNATURE_HEADER: headers[SIGNATURE_HEADER]})
        self.assertRefused({TIMESTAMP_HEADER: b"", SIGNATURE_HEADER: headers[SIGNATURE_HEADER]})

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
