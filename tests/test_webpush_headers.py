"""Tests for ``pushtwisted.webpush.headers``: TTL, Topic, Urgency, body size and crypto
headers of a push request, and the headers forwarded to the device."""

from __future__ import annotations

import py_vapid
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from pushtwisted.webpush.errors import WebPushError
from pushtwisted.webpush.headers import (
    TTL_CEILING,
    PushHeaders,
    Urgency,
    check_body_size,
    check_push,
    crypto_headers,
    is_valid_topic,
    parse_topic,
    parse_ttl,
    parse_urgency,
    sanitize,
)
from tests._webpush_refs import Device, b64url, public_key_bytes, pywebpush_request

_DAY30 = 30 * 86400
_DH = b64url(public_key_bytes(Device().private_key))
_SALT = "9t9hjw0MtT0OvZcGIzF_OA"


def _headers(**values: str | list[str]) -> Headers:
    """Build request headers; ``content_encoding`` means ``Content-Encoding``."""
    raw = {}
    for name, value in values.items():
        items = value if isinstance(value, list) else [value]
        raw[name.replace("_", "-").encode()] = [v.encode("latin-1") for v in items]
    return Headers(raw)


class TTLTests(SynchronousTestCase):
    """The TTL header (section 6.7, 6.16)."""

    def assertErrno(self, errno: int, values: list[str] | None) -> None:
        e = self.assertRaises(WebPushError, parse_ttl, values, max_ttl=_DAY30)
        self.assertEqual((e.status, e.errno), (400, errno))

    def test_digits(self) -> None:
        """``1*DIGIT`` values are the TTL, leading zeros and surrounding spaces allowed."""
        for value, ttl in [("0", 0), ("60", 60), ("0060", 60), (" 42 ", 42), ("000", 0)]:
            self.assertEqual(parse_ttl([value], max_ttl=_DAY30), ttl)

    def test_missing_is_111(self) -> None:
        """No TTL header (or an empty list of values) is 400 errno 111."""
        self.assertErrno(111, None)
        self.assertErrno(111, [])

    def test_not_digits_is_114(self) -> None:
        """Empty, decimal, signed, alphabetic and non-ASCII digits are 400 errno 114."""
        for value in ["", "1.5", "abc", "-1", "+1", "1e3", "0x10", "1 2", "\u0661\u0662", "60,60"]:
            self.assertErrno(114, [value])

    def test_several_headers_is_114(self) -> None:
        """A TTL header sent twice is 400 errno 114, even with equal values."""
        self.assertErrno(114, ["60", "60"])

    def test_capped_at_max_ttl(self) -> None:
        """A TTL over ``max_ttl`` is brought down to it."""
        self.assertEqual(parse_ttl(["2592001"], max_ttl=_DAY30), _DAY30)
        self.assertEqual(parse_ttl(["100"], max_ttl=10), 10)
        self.assertEqual(parse_ttl(["10"], max_ttl=10), 10)

    def test_huge_values_count_as_2_31(self) -> None:
        """Values of 2**31 and above, however long, count as 2**31 before the cap."""
        uncapped = 2**40
        self.assertEqual(parse_ttl([str(2**31 - 1)], max_ttl=uncapped), 2**31 - 1)
        self.assertEqual(parse_ttl([str(2**31)], max_ttl=uncapped), TTL_CEILING)
        self.assertEqual(parse_ttl(["9" * 11], max_ttl=uncapped), TTL_CEILING)
        self.assertEqual(parse_ttl(["9" * 100_000], max_ttl=uncapped), TTL_CEILING)
        self.assertEqual(parse_ttl(["0" * 50 + "7"], max_ttl=uncapped), 7)
        self.assertEqual(parse_ttl(["9" * 100_000], max_ttl=_DAY30), _DAY30)


class TopicTests(SynchronousTestCase):
    """The Topic header (section 6.11)."""

    def test_absent(self) -> None:
        """No Topic header is None."""
        self.assertIsNone(parse_topic(None))

    def test_valid(self) -> None:
        """1 to 32 base64url characters are a topic."""
        for topic in ["a", "A-z_09", "x" * 32, "-_-"]:
            self.assertEqual(parse_topic([topic]), topic)
            self.assertTrue(is_valid_topic(topic))

    def test_invalid_is_113(self) -> None:
        """Empty, too long, padded, standard-base64 or spaced topics are 400 errno 113."""
        for topic in ["", "x" * 33, "abc=", "a+b", "a/b", "a b", "caf\u00e9", "a.b"]:
            e = self.assertRaises(WebPushError, parse_topic, [topic])
            self.assertEqual((e.status, e.errno), (400, 113))
        e = self.assertRaises(WebPushError, parse_topic, ["a", "b"])
        self.assertEqual(e.errno, 113)


class UrgencyTests(SynchronousTestCase):
    """The Urgency header (section 6.11, 6.16)."""

    def test_default_normal(self) -> None:
        """No Urgency header is ``normal``."""
        self.assertIs(parse_urgency(None), Urgency.NORMAL)

    def test_values_any_case(self) -> None:
        """The four values are accepted in any case."""
        for value, urgency in [
            ("very-low", Urgency.VERY_LOW),
            ("low", Urgency.LOW),
            ("Normal", Urgency.NORMAL),
            ("HIGH", Urgency.HIGH),
        ]:
            self.assertIs(parse_urgency([value]), urgency)

    def test_bad_or_several_is_112(self) -> None:
        """An unknown value, a list or a repeated header is 400 errno 112."""
        for values in [[""], ["urgent"], ["low,high"], ["very low"], ["low", "low"]]:
            e = self.assertRaises(WebPushError, parse_urgency, values)
            self.assertEqual((e.status, e.errno), (400, 112))


class BodySizeTests(SynchronousTestCase):
    """The body limit (section 6.8)."""

    def test_limit(self) -> None:
        """A body of ``max_bytes`` passes; one octet more is 413 errno 104."""
        check_body_size(0, max_bytes=5630)
        check_body_size(5630, max_bytes=5630)
        e = self.assertRaises(WebPushError, check_body_size, 5631, max_bytes=5630)
        self.assertEqual((e.status, e.errno), (413, 104))


class CryptoHeadersTests(SynchronousTestCase):
    """Content-Encoding and the crypto headers of a non-empty body (section 6.9)."""

    def assertRejected(
        self, encoding: list[str] | None, encryption: list[str] | None, key: list[str] | None
    ) -> None:
        e = self.assertRaises(WebPushError, crypto_headers, encoding, encryption, key)
        self.assertEqual((e.status, e.errno), (400, 110))

    def test_aes128gcm_alone(self) -> None:
        """aes128gcm needs no other header and forwards only the encoding."""
        self.assertEqual(crypto_headers(["aes128gcm"], None, None), {"encoding": "aes128gcm"})

    def test_aes128gcm_rejects_salt_and_dh(self) -> None:
        """aes128gcm with a ``salt`` in Encryption or a ``dh`` in Crypto-Key is 110."""
        self.assertRejected(["aes128gcm"], [f"salt={_SALT}"], None)
        self.assertRejected(["aes128gcm"], None, [f"dh={_DH}"])
        self.assertRejected(["aes128gcm"], None, [f"p256ecdsa={_DH};DH={_DH}"])

    def test_aes128gcm_vapid_key_removed(self) -> None:
        """With aes128gcm a Crypto-Key holding only ``p256ecdsa`` is not forwarded."""
        self.assertEqual(
            crypto_headers(["aes128gcm"], None, [f"p256ecdsa={_DH}"]), {"encoding": "aes128gcm"}
        )

    def test_aesgcm_needs_salt_and_dh(self) -> None:
        """aesgcm without a salt, without a dh, or with empty ones is 110."""
        self.assertRejected(["aesgcm"], None, [f"dh={_DH}"])
        self.assertRejected(["aesgcm"], [f"salt={_SALT}"], None)
        self.assertRejected(["aesgcm"], ["salt="], [f"dh={_DH}"])
        self.assertRejected(["aesgcm"], [f"salt={_SALT}"], ["dh=;p256ecdsa=x"])
        self.assertRejected(["aesgcm"], ["rs=4096"], [f"p256ecdsa={_DH}"])

    def test_aesgcm_forwarded(self) -> None:
        """aesgcm forwards encryption and crypto_key sanitised, without ``p256ecdsa``."""
        forward = crypto_headers(
            ["aesgcm"], [f'salt="{_SALT}=="; rs=4096'], [f'dh="{_DH}=";p256ecdsa={_DH}']
        )
        self.assertEqual(
            forward,
            {
                "encoding": "aesgcm",
                "encryption": f"salt={_SALT}; rs=4096",
                "crypto_key": f"dh={_DH}",
            },
        )

    def test_p256ecdsa_removed_in_any_position(self) -> None:
        """``p256ecdsa`` goes whether first, last, ``,``- or ``;``-separated, any case."""
        for value in [
            f"p256ecdsa={_DH};dh={_DH}",
            f"dh={_DH};p256ecdsa={_DH}",
            f"dh={_DH}, p256ecdsa={_DH}",
            f"P256ECDSA={_DH} ; dh={_DH}",
        ]:
            forward = crypto_headers(["aesgcm"], [f"salt={_SALT}"], [value])
            self.assertEqual(forward["crypto_key"], f"dh={_DH}", value)

    def test_repeated_list_headers_are_joined(self) -> None:
        """Encryption or Crypto-Key sent twice are joined with ``,``."""
        forward = crypto_headers(["aesgcm"], [f"salt={_SALT}"], [f"dh={_DH}", f"p256ecdsa={_DH}"])
        self.assertEqual(forward["crypto_key"], f"dh={_DH}")
        forward = crypto_headers(["aesgcm"], ["rs=4096", f"salt={_SALT}"], [f"dh={_DH}"])
        self.assertEqual(forward["encryption"], f"rs=4096,salt={_SALT}")

    def test_encoding_any_case_forwarded_lower(self) -> None:
        """The encoding name is matched in any case and forwarded in lower case."""
        self.assertEqual(crypto_headers(["AES128GCM"], None, None), {"encoding": "aes128gcm"})

    def test_unknown_or_missing_encoding(self) -> None:
        """A missing, unknown, retired, repeated or listed encoding is 110."""
        for encoding in [None, [""], ["gzip"], ["aesgcm128"], ["aes128gcm", "aes128gcm"]]:
            self.assertRejected(encoding, None, None)
        self.assertRejected(["aes128gcm, gzip"], None, None)

    def test_non_printable_values(self) -> None:
        """A crypto header value with control or non-ASCII characters is 110."""
        self.assertRejected(["aesgcm"], [f"salt={_SALT}\u00e9"], [f"dh={_DH}"])
        self.assertRejected(["aesgcm"], [f"salt={_SALT}"], [f"dh={_DH}\x00"])

    def test_sanitize(self) -> None:
        """Quotes go everywhere; ``=`` runs go only before ``,``, ``;`` or the end."""
        self.assertEqual(sanitize('salt="abc=="'), "salt=abc")
        self.assertEqual(sanitize("a=b=;c=d==,e=f="), "a=b;c=d,e=f")
        self.assertEqual(sanitize("a=b= ;c=d"), "a=b ;c=d")
        self.assertEqual(sanitize("keyid=p256dh;dh=x"), "keyid=p256dh;dh=x")


class CheckPushTests(SynchronousTestCase):
    """``check_push``: the whole request, in the order of the decision table."""

    def check(self, headers: Headers, length: int = 10) -> PushHeaders:
        return check_push(headers, length, max_ttl=_DAY30, max_bytes=5630)

    def assertErrno(self, status: int, errno: int, headers: Headers, length: int = 10) -> None:
        e = self.assertRaises(WebPushError, self.check, headers, length)
        self.assertEqual((e.status, e.errno), (status, errno))

    def test_full_request(self) -> None:
        """Every header is read: TTL, Topic, Urgency and the forwarded ones."""
        result = self.check(
            _headers(ttl="120", topic="news", urgency="high", content_encoding="aes128gcm")
        )
        self.assertEqual(
            result,
            PushHeaders(
                ttl=120, topic="news", urgency=Urgency.HIGH, forward={"encoding": "aes128gcm"}
            ),
        )

    def test_empty_body_ignores_crypto(self) -> None:
        """An empty body needs no crypto headers; any sent are ignored and not forwarded."""
        self.assertEqual(self.check(_headers(ttl="0"), 0).forward, {})
        bad = _headers(ttl="5", content_encoding="gzip", encryption="salt=x", crypto_key="dh=y")
        self.assertEqual(self.check(bad, 0), PushHeaders(ttl=5, topic=None, urgency=Urgency.NORMAL))

    def test_non_empty_body_needs_encoding(self) -> None:
        """A non-empty body without Content-Encoding is 400 errno 110."""
        self.assertErrno(400, 110, _headers(ttl="5"), 1)

    def test_order_of_checks(self) -> None:
        """The body limit comes first, then TTL, Topic, Urgency and the crypto headers."""
        everything_bad = dict(ttl="x", topic="=", urgency="now", content_encoding="gzip")
        self.assertErrno(413, 104, _headers(**everything_bad), 5631)
        self.assertErrno(400, 114, _headers(**everything_bad))
        self.assertErrno(400, 111, _headers(topic="=", urgency="now", content_encoding="gzip"))
        self.assertErrno(400, 113, _headers(**{**everything_bad, "ttl": "1"}))
        self.assertErrno(400, 112, _headers(ttl="1", urgency="now", content_encoding="gzip"))
        self.assertErrno(400, 110, _headers(ttl="1", content_encoding="gzip"))

    def test_header_names_any_case(self) -> None:
        """Header names are case-insensitive, as HTTP says."""
        headers = Headers({b"TTL": [b"7"], b"Content-Encoding": [b"aes128gcm"], b"TOPIC": [b"t"]})
        result = self.check(headers)
        self.assertEqual((result.ttl, result.topic), (7, "t"))

    def test_non_utf8_bytes_are_rejected_not_raised(self) -> None:
        """Header bytes that are not UTF-8 give the header's 400, never a decoding error."""
        self.assertErrno(400, 114, Headers({b"ttl": [b"\xff"]}))
        self.assertErrno(
            400, 110, Headers({b"ttl": [b"1"], b"content-encoding": [b"aes128gcm\xff"]})
        )


class PywebpushRequestTests(SynchronousTestCase):
    """Requests built by pywebpush (with py-vapid) pass unchanged, and the forwarded
    headers let the device decrypt the body with http_ece."""

    endpoint = "http://127.0.0.1:8082/wpush/v1/token"

    def roundtrip(self, encoding: str, vapid: py_vapid.Vapid01 | None) -> None:
        device = Device()
        plain = b"pushtwisted says hello " * 10
        claims = None if vapid is None else {"sub": "mailto:t@example.com", "exp": 4_000_000_000}
        request = pywebpush_request(
            self.mktemp(),
            device,
            self.endpoint,
            plain,
            encoding=encoding,
            vapid=vapid,
            claims=claims,
        )
        self.assertEqual(int(request.headers["content-length"]), len(request.body))
        result = check_push(
            request.twisted_headers(), len(request.body), max_ttl=_DAY30, max_bytes=5630
        )
        self.assertEqual((result.ttl, result.topic, result.urgency), (60, None, Urgency.NORMAL))
        self.assertEqual(result.forward["encoding"], encoding)
        for value in result.forward.values():
            self.assertNotIn("p256ecdsa", value)
            self.assertNotIn('"', value)
        data = b64url(request.body)
        self.assertEqual(device.decrypt(data, dict(result.forward)), plain)

    def test_aes128gcm(self) -> None:
        """aes128gcm without VAPID: only the encoding is forwarded, and it decrypts."""
        self.roundtrip("aes128gcm", None)

    def test_aes128gcm_vapid(self) -> None:
        """aes128gcm with RFC 8292 VAPID (``vapid t=,k=``) passes and decrypts."""
        vapid = py_vapid.Vapid()
        vapid.generate_keys()
        self.roundtrip("aes128gcm", vapid)

    def test_aes128gcm_vapid01(self) -> None:
        """aes128gcm with draft VAPID (``Crypto-Key: p256ecdsa=``) passes; the key is dropped."""
        vapid = py_vapid.Vapid01()
        vapid.generate_keys()
        self.roundtrip("aes128gcm", vapid)

    def test_aesgcm(self) -> None:
        """aesgcm: salt and dh are forwarded and the device decrypts with them."""
        self.roundtrip("aesgcm", None)

    def test_aesgcm_vapid01(self) -> None:
        """aesgcm with ``dh`` and ``p256ecdsa`` in one Crypto-Key: only ``dh`` is forwarded."""
        vapid = py_vapid.Vapid01()
        vapid.generate_keys()
        self.roundtrip("aesgcm", vapid)

    def test_largest_pywebpush_payload_fits(self) -> None:
        """A 4096-octet plaintext from pywebpush fits the default 5630-octet limit."""
        request = pywebpush_request(self.mktemp(), Device(), self.endpoint, b"x" * 4096)
        self.assertGreater(len(request.body), 4096)
        check_push(request.twisted_headers(), len(request.body), max_ttl=_DAY30, max_bytes=5630)
